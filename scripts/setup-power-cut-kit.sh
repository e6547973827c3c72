#!/usr/bin/env bash
# Prepares (once) what the power-cut test boots: QEMU from Debian's packages, and in
# target/power-cut-kit/ a Debian cloud kernel, the virtio modules it loads and a static busybox.
# The test (crates/kith-cli/tests/power_cut.rs) runs `kith serve` in that virtual machine and
# kills QEMU, which loses whatever the guest kernel had not yet written to its disk, as a power
# cut would. Idempotent: a complete kit is reused.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
kit="${KITH_POWER_CUT_KIT:-$root/target/power-cut-kit}"

# The modules the guest loads, in dependency order (the cloud kernel builds them as modules).
modules=(virtio virtio_ring virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci virtio_blk
  failover net_failover virtio_net)

if ! command -v qemu-system-x86_64 >/dev/null || ! command -v mkfs.ext4 >/dev/null; then
  if [[ "$(id -u)" == 0 ]]; then
    export DEBIAN_FRONTEND=noninteractive
    packages=(qemu-system-x86 e2fsprogs)
    apt-get install -y -q --no-install-recommends "${packages[@]}" >/dev/null ||
      { apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends "${packages[@]}" >/dev/null; }
  else
    # Everything else still runs; the power-cut test alone fails, saying what is missing.
    echo "power-cut test: install the Debian packages qemu-system-x86 and e2fsprogs (as root)" >&2
  fi
fi

if [[ -f "$kit/complete" ]]; then
  exit 0
fi
rm -rf "$kit"
mkdir -p "$kit/debs" "$kit/extracted" "$kit/modules"
cd "$kit/debs"
# `apt-get download` needs no root; the metapackage names the current kernel package.
download() { apt-get download -q "$@" >/dev/null 2>&1 || { apt-get update -q >/dev/null 2>&1 || true; apt-get download -q "$@" >/dev/null; }; }
download linux-image-cloud-amd64 busybox-static
kernel_package="$(dpkg-deb -f linux-image-cloud-amd64_*.deb Depends | sed -E 's/[ (].*//')"
download "$kernel_package"
for deb in "$kernel_package"_*.deb busybox-static_*.deb; do
  dpkg-deb -x "$deb" "$kit/extracted"
done
cp "$kit"/extracted/boot/vmlinuz-* "$kit/vmlinuz"
cp "$kit/extracted/bin/busybox" "$kit/busybox"
for module in "${modules[@]}"; do
  found="$(find "$kit/extracted/lib/modules" -name "$module.ko" | head -n 1)"
  if [[ -z "$found" ]]; then
    echo "power-cut test: module $module.ko is not in $kernel_package" >&2
    exit 1
  fi
  cp "$found" "$kit/modules/"
done
printf '%s\n' "${modules[@]}" >"$kit/modules/order"
rm -rf "$kit/debs" "$kit/extracted"
touch "$kit/complete"
echo "power-cut kit ready at $kit ($kernel_package)" >&2
