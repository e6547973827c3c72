#!/usr/bin/env bash
# CLV benchmark (issue 6): Kith's kith-clv against Python's lifetimes 0.11.3, same files, same
# machine, same run. Two data sets: CDNOW's full master log (23,570 customers, calibration to
# 1997-09-30) and a generated population of CUSTOMERS (default 1,000,000) drawn from BG/NBD and
# Gamma-Gamma with CDNOW's published parameters. Steps: building the summary, each model's fit,
# scoring everyone (39-week expected purchases, P(alive), 12-month CLV). Prints a table of median
# seconds and ratios, and checks that both tools found the same parameters (1e-3 relative).
#
#   bench/clv/run.sh [CUSTOMERS]
#
# Needs python3.11 (lifetimes wants numpy<2, pandas<2.2, scipy<1.14); the venv is created in
# target/bench-clv-venv on first use. SKIP_PARETO_LARGE=1 leaves lifetimes' Pareto/NBD out on the
# large population (it takes minutes there, three times). Each step's time is the median of 7 runs on
# CDNOW and of 3 on the population, for both tools.
set -euo pipefail
cd "$(dirname "$0")/../.."
customers="${1:-1000000}"
venv=target/bench-clv-venv
if [[ ! -x "$venv/bin/python" ]]; then
    python3.11 -m venv "$venv"
    "$venv/bin/pip" install -q "lifetimes==0.11.3" "numpy<2" "pandas<2.2" "scipy<1.14"
fi
cargo build --release -q -p kith-clv-bench
bench=target/release/kith-clv-bench
work="${TMPDIR:-/tmp}/kith-clv-bench-$$"
mkdir -p "$work"
trap 'rm -rf "$work"' EXIT

population="$work/population.csv"
"$bench" generate --customers "$customers" --seed 7 --out "$population"

run_pair() {  # NAME FILE REPEAT [lifetimes flags]
    local name=$1 file=$2 repeat=$3
    shift 3
    "$bench" run --transactions "$file" --calibration-end 1997-09-30 --repeat "$repeat" > "$work/$name.kith.json"
    "$venv/bin/python" bench/clv/lifetimes_steps.py "$file" 1997-09-30 "$repeat" "$@" > "$work/$name.lifetimes.json"
}
run_pair cdnow crates/kith-clv/tests/fixtures/CDNOW_master.txt 7
large_flags=()
[[ "${SKIP_PARETO_LARGE:-0}" == 1 ]] && large_flags=(--skip=pareto_nbd)
run_pair population "$population" 3 "${large_flags[@]}"

"$venv/bin/python" - "$work" "$(nproc)" <<'PY'
import json, sys
work, cores = sys.argv[1], sys.argv[2]
worst = float("inf")
print(f"| data | step | lifetimes s | kith s | lifetimes / kith |")
print(f"|---|---|---:|---:|---:|")
problems = []
for name, label in [("cdnow", "CDNOW master"), ("population", "generated population")]:
    k = json.load(open(f"{work}/{name}.kith.json"))
    l = json.load(open(f"{work}/{name}.lifetimes.json"))
    label = f"{label} ({k['customers']:,} customers, {k['transactions']:,} purchases)"
    assert k["customers"] == l["customers"] and k["repeat_customers"] == l["repeat_customers"], (k, l)
    for step in ["summary", "bg_nbd", "pareto_nbd", "mbg_nbd", "gamma_gamma", "score"]:
        if step not in l["seconds"]:
            print(f"| {label} | {step} | (skipped) | {k['seconds'][step]:.4f} | |")
            continue
        ratio = l["seconds"][step] / k["seconds"][step]
        worst = min(worst, ratio)
        print(f"| {label} | {step} | {l['seconds'][step]:.4f} | {k['seconds'][step]:.4f} | {ratio:.1f}x |")
        if step in k["params"] and step in l["params"]:
            for p, v in l["params"][step].items():
                rel = abs(k["params"][step][p] - v) / abs(v)
                if rel > 1e-3:
                    problems.append(f"{name} {step}.{p}: kith {k['params'][step][p]} lifetimes {v} ({rel:.1e})")
    for t, v in l["totals"].items():
        rel = abs(k["totals"][t] - v) / abs(v)
        if rel > 1e-3:
            problems.append(f"{name} total {t}: kith {k['totals'][t]} lifetimes {v}")
print(f"\n{cores} cores; slowest step ratio {worst:.1f}x")
if problems:
    print("parameters differ:\n  " + "\n  ".join(problems))
    sys.exit(1)
print("every parameter and score total equal to 1e-3 relative")
PY
