//! Durability under power cuts. `kith serve` runs in a QEMU virtual machine on an ext4 disk
//! image, clients on the host send batches through a forwarded port, and the test kills QEMU
//! with SIGKILL at a different moment each round. A killed QEMU takes the guest's page cache
//! with it, so whatever Kith wrote but did not make durable (a journal record not yet
//! `fdatasync`ed, an unsynced Parquet file or Delta commit, a `profiles.db` transaction) is
//! gone, as after a real power cut. `kill -9` of the server alone (`crash.rs`) cannot show that:
//! the host kernel keeps every write. This test fails, where `crash.rs` passes, with any of
//! these turned off: the journal's `fdatasync` (acknowledged events missing), the syncs of the
//! Delta files (a table whose commit was lost), `profiles.db`'s `synchronous = FULL` (profiles
//! missing events whose journal segments were already retired).
//!
//! Not modelled: the disk's own volatile cache (what the guest wrote to its disk survives even
//! without a flush), and a missing directory sync, which ext4 hides by committing every pending
//! metadata change with any `fsync`.
//!
//! After each cut the disk is read as it is by deltalake, Polars and DuckDB. After the last, the
//! server must start on the disk as it is, take the batches never acknowledged (retried, as SDKs
//! do, so messages stored but unanswered are deduplicated across the cuts), and hold every
//! message exactly once, in the events and in the profiles; a final cut once everything is
//! flushed leaves every message, once, in the files alone.
//!
//! Needs QEMU and a guest kernel, which `scripts/setup-power-cut-kit.sh` prepares (QEMU from
//! Debian's packages needs root), and the test venv for the offline readers. The guest runs
//! under QEMU's emulator (TCG), not KVM, so the test behaves the same on every machine.

mod common;

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::retrying_clients::{Progress, Workload, acknowledged_by};
use common::*;
use serde_json::{Value, json};

const BATCHES: usize = 1500;
const CLIENTS: usize = 4;
/// About 40 KB a batch.
const WORKLOAD: Workload = Workload {
    prefix: "cut",
    events_per_batch: 25,
    users: 97,
    note_bytes: 1500,
    timeout: Duration::from_secs(20),
};
/// How long clients send before each cut: different lengths land the cuts at different points
/// of the flush and profile-persist cycles.
/// Two rounds are long enough for flushes to reach Delta and journal segments to retire under
/// the emulator (the start-up tidy slows the first flush after each boot by seconds there).
const CUT_AFTER: [Duration; 4] = [
    Duration::from_millis(3000),
    Duration::from_millis(9000),
    Duration::from_millis(1500),
    Duration::from_millis(12000),
];
/// Booting the emulated machine and starting a debug build of Kith in it.
const BOOT_TIMEOUT: Duration = Duration::from_secs(300);

/// What `scripts/setup-power-cut-kit.sh` prepared.
struct Kit {
    kernel: PathBuf,
    busybox: PathBuf,
    modules: PathBuf,
}

fn kit() -> Kit {
    // As `python()` does for the venv: prepared once, reused after.
    let setup = repo_root().join("scripts/setup-power-cut-kit.sh");
    let prepared = Command::new("bash").arg(&setup).status();
    assert!(
        prepared.is_ok_and(|s| s.success()),
        "{} failed; it fetches the guest kernel",
        setup.display()
    );
    let dir = std::env::var_os("KITH_POWER_CUT_KIT")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target/power-cut-kit"));
    assert!(
        dir.join("complete").exists() && which("qemu-system-x86_64") && which("mkfs.ext4"),
        "the power-cut test needs QEMU and a guest kernel: run scripts/setup-test-env.sh \
         (it runs scripts/setup-power-cut-kit.sh; installing QEMU needs root)"
    );
    Kit {
        kernel: dir.join("vmlinuz"),
        busybox: dir.join("busybox"),
        modules: dir.join("modules"),
    }
}

fn which(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn run(command: &mut Command) {
    let output = command.output().expect("the command starts");
    assert!(
        output.status.success(),
        "{command:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The guest's initramfs: busybox, the `kith` binary under test with the libraries it links,
/// the virtio modules and `power_cut/init` as PID 1.
fn initramfs(kit: &Kit, work: &Path) -> PathBuf {
    let stage = work.join("initramfs");
    for dir in ["bin", "modules", "proc", "sys", "dev", "data"] {
        std::fs::create_dir_all(stage.join(dir)).unwrap();
    }
    std::fs::copy(&kit.busybox, stage.join("bin/busybox")).unwrap();
    std::fs::copy(kith_bin(), stage.join("bin/kith")).unwrap();
    std::fs::write(stage.join("init"), include_str!("power_cut/init")).unwrap();
    std::fs::set_permissions(stage.join("init"), std::fs::Permissions::from_mode(0o755)).unwrap();
    for module in std::fs::read_dir(&kit.modules).unwrap() {
        let module = module.unwrap().path();
        std::fs::copy(
            &module,
            stage.join("modules").join(module.file_name().unwrap()),
        )
        .unwrap();
    }
    // The dynamic loader and libraries, at the paths the binary asks for.
    let ldd = Command::new("ldd").arg(kith_bin()).output().unwrap();
    for library in String::from_utf8_lossy(&ldd.stdout)
        .split_whitespace()
        .filter(|word| word.starts_with('/'))
    {
        let target = stage.join(library.trim_start_matches('/'));
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        std::fs::copy(library, target).unwrap();
    }
    let archive = work.join("initramfs.cpio");
    run(Command::new("sh").current_dir(&stage).args([
        "-c",
        &format!(
            "find . | {} cpio -o -H newc > {}",
            kit.busybox.display(),
            archive.display()
        ),
    ]));
    std::fs::remove_dir_all(&stage).unwrap();
    archive
}

/// An ext4 disk image holding a data directory with an ingest and a read key, and the
/// arguments the guest passes to `kith serve`. Returns the image and the keys.
fn data_disk(work: &Path) -> (PathBuf, String, String) {
    let contents = work.join("disk-contents");
    let data = contents.join("kith");
    std::fs::create_dir_all(&data).unwrap();
    let write_key = create_key(&data, "ingest", Some("web"));
    let read_key = create_key(&data, "read", None);
    // Flushing often lands cuts in the middle of Delta commits too, and small journal segments
    // in the middle of rotations and retirements (a batch is about 40 KB).
    std::fs::write(
        contents.join("kith.toml"),
        "[ingest]\nflush_interval_ms = 50\njournal_segment_mb = 1\n",
    )
    .unwrap();
    std::fs::write(contents.join("serve-args"), "--config\n/data/kith.toml\n").unwrap();
    let image = work.join("disk.img");
    run(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-d"])
        .arg(&contents)
        .arg(&image)
        .arg("1G"));
    (image, write_key, read_key)
}

/// The events table as a cut left it, read by deltalake, Polars and DuckDB
/// (`tests/python/read_tables.py`): the sorted message ids each engine sees. Read from a copy of
/// the disk whose ext4 journal `e2fsck` replayed, as the next mount would, so the disk the
/// machine boots from next is left exactly as the cut left it.
fn events_read_offline(disk: &Path, work: &Path, round: usize) -> Value {
    let copy = work.join("disk-copy.img");
    run(Command::new("cp")
        .arg("--sparse=always")
        .arg(disk)
        .arg(&copy));
    let checked = Command::new("e2fsck")
        .args(["-f", "-y"])
        .arg(&copy)
        .output()
        .expect("e2fsck runs");
    // 0: clean; 1: errors corrected (replaying the journal counts as one).
    assert!(
        matches!(checked.status.code(), Some(0 | 1)),
        "round {round}: e2fsck of the disk after the cut: {}\n{}",
        checked.status,
        String::from_utf8_lossy(&checked.stdout)
    );
    let out = work.join(format!("after-cut-{round}"));
    std::fs::create_dir_all(&out).unwrap();
    run(Command::new("debugfs")
        .arg("-R")
        .arg(format!("rdump /kith/tables/events {}", out.display()))
        .arg(&copy));
    std::fs::remove_file(&copy).unwrap();
    run_python("read_tables.py", &[out.join("events").to_str().unwrap()])
}

/// A loopback port nobody listens on now, for QEMU to forward to the guest's server.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The virtual machine, running `kith serve`.
struct Machine {
    qemu: Child,
    base: String,
    console: PathBuf,
}

impl Machine {
    fn boot(kit: &Kit, initramfs: &Path, disk: &Path, console: PathBuf) -> Machine {
        let port = free_port();
        let console_file = std::fs::File::create(&console).unwrap();
        let qemu = Command::new("qemu-system-x86_64")
            .args(["-accel", "tcg", "-m", "2048", "-smp", "2"])
            .args(["-nographic", "-no-reboot", "-kernel"])
            .arg(&kit.kernel)
            .arg("-initrd")
            .arg(initramfs)
            .args(["-append", "console=ttyS0 panic=-1 quiet"])
            .arg("-drive")
            .arg(format!(
                "file={},format=raw,if=virtio,cache=writeback",
                disk.display()
            ))
            .args([
                "-netdev",
                &format!("user,id=net0,hostfwd=tcp:127.0.0.1:{port}-:8088"),
                "-device",
                "virtio-net-pci,netdev=net0",
            ])
            .stdin(Stdio::null())
            .stdout(console_file.try_clone().unwrap())
            .stderr(console_file)
            .spawn()
            .expect("qemu-system-x86_64 starts");
        let mut machine = Machine {
            qemu,
            base: format!("http://127.0.0.1:{port}"),
            console,
        };
        machine.wait_until_ready();
        machine
    }

    fn wait_until_ready(&mut self) {
        let started = Instant::now();
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(2)))
            .build()
            .into();
        loop {
            if let Ok(response) = agent.get(format!("{}/readyz", self.base)).call()
                && response.status() == 200
            {
                eprintln!("guest ready after {:?}", started.elapsed());
                return;
            }
            let exited = self.qemu.try_wait().ok().flatten();
            if exited.is_some() || started.elapsed() > BOOT_TIMEOUT {
                panic!(
                    "the guest's server did not become ready ({}); its console:\n{}",
                    exited.map_or("timed out".to_string(), |s| s.to_string()),
                    self.console_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    fn console_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.console).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(60)..].join("\n")
    }

    /// The power cut: QEMU is killed, and the guest's memory with it.
    fn cut_power(mut self) {
        let _ = self.qemu.kill();
        let _ = self.qemu.wait();
    }

    fn query(&self, read_key: &str, sql: &str) -> Value {
        let (status, body) = post_json(
            &format!("{}/v1/query", self.base),
            &[("Authorization", &format!("Bearer {read_key}"))],
            &json!({ "sql": sql }).to_string(),
        );
        assert_eq!(status, 200, "{sql}: {body}\n{}", self.console_tail());
        body
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        let _ = self.qemu.kill();
        let _ = self.qemu.wait();
    }
}

#[test]
fn acknowledged_events_survive_repeated_power_cuts_exactly_once() {
    let kit = kit();
    let work = tempfile::tempdir().unwrap();
    let initramfs = initramfs(&kit, work.path());
    let (disk, write_key, read_key) = data_disk(work.path());
    let progress = Progress::new(BATCHES);

    let mut in_delta = BTreeSet::new();
    for (round, cut_after) in CUT_AFTER.into_iter().enumerate() {
        let console = work.path().join(format!("console-{round}.log"));
        let machine = Machine::boot(&kit, &initramfs, &disk, console);
        let stop = Arc::new(AtomicBool::new(false));
        let acked_before = progress.acked();
        let clients = progress.start_clients(WORKLOAD, CLIENTS, &machine.base, &write_key, &stop);
        // The cut's moment counts from the first answers, so a slower machine still has
        // something acknowledged to lose.
        let deadline = Instant::now() + BOOT_TIMEOUT;
        while progress.acked() == acked_before && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(cut_after);
        stop.store(true, Ordering::SeqCst);
        machine.cut_power();
        let acknowledged = acknowledged_by(clients);
        eprintln!("round {round}: {acknowledged} batches acknowledged before the cut");
        assert!(
            acknowledged > 0,
            "round {round}: the guest acknowledged nothing before the cut"
        );
        assert!(
            progress.pending() > 0,
            "round {round}: the cut must land while batches remain to send"
        );
        // Other engines read the table as the cut left it: no torn file or commit in their
        // way, the same rows for all three, none twice, none that was not sent.
        let read = events_read_offline(&disk, work.path(), round);
        let ids: Vec<&str> = read["deltalake"]
            .as_array()
            .unwrap()
            .iter()
            .map(|id| id.as_str().unwrap())
            .collect();
        eprintln!("round {round}: {} events in Delta after the cut", ids.len());
        assert_eq!(read["polars"], read["deltalake"], "round {round}");
        assert_eq!(read["duckdb"], read["deltalake"], "round {round}");
        assert!(
            ids.windows(2).all(|pair| pair[0] != pair[1]),
            "round {round}: a message is in Delta twice"
        );
        assert!(
            ids.iter().all(|id| id.starts_with("cut-")),
            "round {round}: {ids:?}"
        );
        // What a commit held before an earlier cut is still there: commits are durable.
        let ids: BTreeSet<String> = ids.into_iter().map(str::to_string).collect();
        assert!(
            in_delta.is_subset(&ids),
            "round {round}: {} events in Delta before this round are gone",
            in_delta.difference(&ids).count()
        );
        in_delta = ids;
    }

    // Power back on: the server starts on the disk as the last cut left it and takes the rest.
    let console = work.path().join("console-final.log");
    let machine = Machine::boot(&kit, &initramfs, &disk, console);
    let stop = Arc::new(AtomicBool::new(false));
    let clients = progress.start_clients(WORKLOAD, CLIENTS, &machine.base, &write_key, &stop);
    let deadline = Instant::now() + Duration::from_secs(600);
    while !clients.iter().all(|c| c.is_finished()) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    stop.store(true, Ordering::SeqCst);
    acknowledged_by(clients);
    assert_eq!(
        progress.acked(),
        BATCHES,
        "every batch is acknowledged once the power is back\n{}",
        machine.console_tail()
    );

    // The last boot alone wrote tens of segments: the cuts before it landed among rotations,
    // retirements and reused files, not only appends.
    for counter in [
        "kith_journal_segments_retired_total",
        "kith_journal_segments_reused_total",
    ] {
        let value = metric(&machine.base, counter);
        assert!(
            value.is_some_and(|n| n > 0.0),
            "{counter} must be above 0, is {value:?}"
        );
    }

    let expected = (BATCHES * WORKLOAD.events_per_batch) as u64;
    let counts = machine.query(
        &read_key,
        "SELECT count(*) AS n, count(DISTINCT message_id) AS distinct_ids FROM events",
    );
    assert_eq!(
        counts["rows"],
        json!([[expected, expected]]),
        "every message stored once"
    );
    let foreign = machine.query(
        &read_key,
        "SELECT count(*) FROM events WHERE message_id NOT LIKE 'cut-%'",
    );
    assert_eq!(foreign["rows"], json!([[0]]));
    // Profiles are applied from the journal a moment after the ack: each event counted once.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let profiles = machine.query(
            &read_key,
            "SELECT count(*) AS profiles, sum(event_count) AS events FROM profiles",
        );
        if profiles["rows"] == json!([[WORKLOAD.users, expected]]) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "profiles must count every event once: {profiles}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }

    // One more cut once everything is flushed: the disk alone, read by other engines, holds
    // every message once. (The rounds above cut at whatever point flushes had reached; on a
    // slow machine, before any.)
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let (_, ready) = get(&format!("{}/readyz", machine.base), &[]);
        if ready["buffered_rows"] == json!(0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the guest did not flush everything: {ready}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    machine.cut_power();
    let read = events_read_offline(&disk, work.path(), CUT_AFTER.len());
    let mut every_id: Vec<String> = (0..BATCHES)
        .flat_map(|batch| {
            (0..WORKLOAD.events_per_batch).map(move |i| WORKLOAD.message_id(batch, i))
        })
        .collect();
    every_id.sort();
    for engine in ["deltalake", "polars", "duckdb"] {
        assert!(
            read[engine] == json!(every_id),
            "{engine} does not read every message exactly once after the last cut"
        );
    }
}
