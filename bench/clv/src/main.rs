//! CLV benchmark, Kith's side (`bench/clv/run.sh` runs it beside `lifetimes` on the same files).
//!
//! `kith-clv-bench generate --customers N --out FILE [--seed S]` writes a transaction log
//! (`customer_id,date,amount`) of a population drawn from BG/NBD and Gamma-Gamma with CDNOW's
//! published parameters: first purchases spread over the first 12 weeks of 1997, 78 weeks
//! observed, as in CDNOW.
//!
//! `kith-clv-bench run --transactions FILE --calibration-end YYYY-MM-DD [--repeat N]` times, as
//! `lifetimes_steps.py` does: building the summary (days collapsed, time in weeks), fitting
//! BG/NBD, Pareto/NBD, MBG/NBD and Gamma-Gamma (on repeat customers with a positive mean spend,
//! which `lifetimes` requires), and scoring everyone (expected purchases over 39 weeks, P(alive)
//! and 12-month CLV). Prints one JSON document: median seconds of each step, parameters, checks.
//!
//! With `--profile STEP` (summary, bg_nbd, pareto_nbd, mbg_nbd or gamma_gamma) `run` runs only
//! that step, `--repeat` times, and prints each run's milliseconds: attach a profiler
//! (`perf record -g -- kith-clv-bench run ... --profile bg_nbd --repeat 2000`) or look at the
//! spread.

use std::time::Instant;

use chrono::{NaiveDate, NaiveDateTime};
use kith_clv::summary::{PeriodUnit, SummaryOptions, Transaction, summary_from_transactions};
use kith_clv::{
    BgNbd, ClvOptions, FitOptions, GammaGamma, GammaGammaOptions, ModifiedBgNbd, ParetoNbd, Rfm,
    Spend,
};
use rand::{Rng, SeedableRng};
use rand_distr::{Beta, Distribution, Exp, Gamma};
use serde_json::{Value, json};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let flag = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let result = match args.first().map(String::as_str) {
        Some("generate") => generate(
            flag("--customers").and_then(|c| c.parse().ok()).unwrap_or(1_000_000),
            flag("--seed").and_then(|s| s.parse().ok()).unwrap_or(7),
            flag("--out"),
        ),
        Some("run") => run(
            flag("--transactions"),
            flag("--calibration-end"),
            flag("--repeat").and_then(|r| r.parse().ok()).unwrap_or(3),
            flag("--profile"),
        ),
        _ => Err("usage: kith-clv-bench generate --customers N --out FILE [--seed S]\n       kith-clv-bench run --transactions FILE --calibration-end YYYY-MM-DD [--repeat N] [--profile STEP]".into()),
    };
    if let Err(message) = result {
        eprintln!("{message}");
        std::process::exit(2);
    }
}

/// CDNOW's published BG/NBD and Gamma-Gamma parameters (weeks, dollars).
const TRUTH: (f64, f64, f64, f64) = (0.2426, 4.4136, 0.7929, 2.4259);
const SPEND: (f64, f64, f64) = (6.2488, 3.7446, 15.4478);

fn generate(customers: u64, seed: u64, out: Option<String>) -> Result<(), String> {
    use std::io::Write;
    let out = out.ok_or("--out FILE is required")?;
    let file = std::fs::File::create(&out).map_err(|e| format!("{out}: {e}"))?;
    let mut w = std::io::BufWriter::new(file);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let (r, alpha, a, b) = TRUTH;
    let (p, q, gamma) = SPEND;
    let rate = Gamma::new(r, 1.0 / alpha).map_err(|e| e.to_string())?;
    let dropout = Beta::new(a, b).map_err(|e| e.to_string())?;
    let nu = Gamma::new(q, 1.0 / gamma).map_err(|e| e.to_string())?;
    let start = NaiveDate::from_ymd_opt(1997, 1, 1).ok_or("date")?;
    let weeks_observed = 78.0;
    writeln!(w, "customer_id,date,amount").map_err(|e| e.to_string())?;
    let mut rows = 0u64;
    for customer in 0..customers {
        let lambda: f64 = rate.sample(&mut rng).max(1e-12);
        let p_drop: f64 = dropout.sample(&mut rng);
        let spend =
            Gamma::new(p, 1.0 / nu.sample(&mut rng).max(1e-9)).map_err(|e| e.to_string())?;
        let gap = Exp::new(lambda).map_err(|e| e.to_string())?;
        let mut week = rng.random_range(0.0..12.0);
        let mut first = true;
        loop {
            let day = start + chrono::TimeDelta::days((week * 7.0) as i64);
            let amount: f64 = spend.sample(&mut rng);
            writeln!(w, "c{customer:07},{day},{:.2}", amount.max(0.01))
                .map_err(|e| e.to_string())?;
            rows += 1;
            // BG/NBD: after each repeat purchase the customer leaves with probability p (never
            // right after the first, which is why P(alive | x = 0) = 1).
            if !first && rng.random::<f64>() < p_drop {
                break;
            }
            first = false;
            week += gap.sample(&mut rng);
            if week >= weeks_observed {
                break;
            }
        }
    }
    w.flush().map_err(|e| e.to_string())?;
    eprintln!("{customers} customers, {rows} transactions written to {out}");
    Ok(())
}

/// `customer_id,date,amount` CSV with a header, or CDNOW's whitespace-separated master log
/// (`customer date quantity amount`, optionally with a header line).
fn read(path: &str) -> Result<Vec<Transaction<String>>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?;
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let fields: Vec<&str> = if line.contains(',') {
            line.split(',').map(str::trim).collect()
        } else {
            line.split_whitespace().collect()
        };
        if fields.len() < 3 {
            continue;
        }
        let (date, amount) = if fields.len() >= 4 {
            (fields[1], fields[3])
        } else {
            (fields[1], fields[2])
        };
        let date = NaiveDate::parse_from_str(date, "%Y-%m-%d")
            .or_else(|_| NaiveDate::parse_from_str(date, "%Y%m%d"));
        let (Ok(date), Ok(amount)) = (date, amount.parse::<f64>()) else {
            if n == 0 {
                continue; // the header
            }
            return Err(format!("{path}:{}: cannot read `{line}`", n + 1));
        };
        out.push(Transaction::on_date(fields[0].to_string(), date, amount));
    }
    Ok(out)
}

/// Distinct (x, t_x, T) rows: what the fits loop over.
fn distinct_rows(rfm: &[Rfm]) -> usize {
    let mut keys: Vec<(u64, u64, u64)> = rfm
        .iter()
        .map(|r| (r.frequency.to_bits(), r.recency.to_bits(), r.t.to_bits()))
        .collect();
    keys.sort_unstable();
    keys.dedup();
    keys.len()
}

/// Median seconds of `repeat` runs of `f`, and its last result.
fn timed<T>(repeat: usize, mut f: impl FnMut() -> T) -> (f64, T) {
    let mut times = Vec::with_capacity(repeat);
    let mut last = None;
    for _ in 0..repeat.max(1) {
        // The previous result is freed before the clock starts (lifetimes_steps.py does the same).
        drop(last.take());
        let start = Instant::now();
        last = Some(f());
        times.push(start.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    (times[times.len() / 2], last.expect("ran at least once"))
}

fn params(value: Value) -> Value {
    value
        .get("params")
        .cloned()
        .or_else(|| value.get("model").and_then(|m| m.get("params")).cloned())
        .unwrap_or(value)
}

/// Runs one step `repeat` times and prints each run's milliseconds, one per line, then the
/// median: for a profiler attached to the process, or to see how a step's time spreads.
/// `step` returns false for a step it does not know.
fn profile(name: &str, repeat: usize, mut step: impl FnMut() -> bool) -> Result<(), String> {
    let mut times = Vec::with_capacity(repeat);
    for _ in 0..repeat.max(1) {
        let start = Instant::now();
        if !step() {
            return Err(format!(
                "--profile {name}: one of summary, bg_nbd, pareto_nbd, mbg_nbd, gamma_gamma"
            ));
        }
        let ms = start.elapsed().as_secs_f64() * 1e3;
        println!("{ms:.3}");
        times.push(ms);
    }
    times.sort_by(f64::total_cmp);
    println!("median {:.3} ms", times[times.len() / 2]);
    Ok(())
}

fn run(
    path: Option<String>,
    calibration_end: Option<String>,
    repeat: usize,
    profile_step: Option<String>,
) -> Result<(), String> {
    let path = path.ok_or("--transactions FILE is required")?;
    let end_text = calibration_end.ok_or("--calibration-end YYYY-MM-DD is required")?;
    let end: NaiveDateTime = NaiveDate::parse_from_str(&end_text, "%Y-%m-%d")
        .map_err(|e| format!("--calibration-end: {e}"))?
        .and_time(chrono::NaiveTime::MIN);
    let (read_s, transactions) = timed(1, || read(&path));
    let transactions = transactions?;
    let options = SummaryOptions {
        unit: PeriodUnit::Day,
        multiplier: 7.0,
        observation_end: Some(end),
    };
    let (summary_s, summary) = timed(repeat, || {
        summary_from_transactions(&transactions, &options)
    });
    let summary = summary.map_err(|e| e.to_string())?;
    let rfm: Vec<Rfm> = summary.iter().map(|c| c.rfm()).collect();
    let spend: Vec<Spend> = summary
        .iter()
        .filter(|c| c.frequency > 0.0 && c.monetary_value > 0.0)
        .map(|c| c.spend())
        .collect();
    if let Some(step) = profile_step {
        return profile(&step, repeat, || {
            match step.as_str() {
                "summary" => drop(summary_from_transactions(&transactions, &options)),
                "bg_nbd" => drop(BgNbd::fit(&rfm, &FitOptions::default())),
                "pareto_nbd" => drop(ParetoNbd::fit(&rfm, &FitOptions::default())),
                "mbg_nbd" => drop(ModifiedBgNbd::fit(&rfm, &FitOptions::default())),
                "gamma_gamma" => drop(GammaGamma::fit(
                    &spend,
                    &GammaGammaOptions {
                        max_abs_correlation: None,
                        ..GammaGammaOptions::default()
                    },
                )),
                _ => return false,
            }
            true
        });
    }
    let (bg_s, bg) = timed(repeat, || BgNbd::fit(&rfm, &FitOptions::default()));
    let bg = bg.map_err(|e| format!("BG/NBD: {e}"))?;
    let (pareto_s, pareto) = timed(repeat, || ParetoNbd::fit(&rfm, &FitOptions::default()));
    let pareto = pareto.map_err(|e| format!("Pareto/NBD: {e}"))?;
    let (mbg_s, mbg) = timed(repeat, || ModifiedBgNbd::fit(&rfm, &FitOptions::default()));
    let mbg = mbg.map_err(|e| format!("MBG/NBD: {e}"))?;
    let gg_options = GammaGammaOptions {
        // lifetimes fits regardless of the correlation; so does the benchmark.
        max_abs_correlation: None,
        ..GammaGammaOptions::default()
    };
    let (gg_s, gg) = timed(repeat, || GammaGamma::fit(&spend, &gg_options));
    let gg = gg.map_err(|e| format!("Gamma-Gamma: {e}"))?;
    let clv_options = ClvOptions::weekly(12, 0.01);
    let customers: Vec<(Rfm, f64)> = summary
        .iter()
        .map(|c| (c.rfm(), c.monetary_value))
        .collect();
    let (score_s, totals) = timed(repeat, || {
        let scores = kith_clv::score_customers(
            &bg.params,
            Some((&gg.model.params, &clv_options)),
            &customers,
            39.0,
        )
        .unwrap_or_default();
        let sum = |f: fn(&kith_clv::CustomerScore) -> f64| scores.iter().map(f).sum::<f64>();
        (
            sum(|s| s.expected_purchases),
            sum(|s| s.p_alive),
            sum(|s| s.clv.unwrap_or(f64::NAN)),
        )
    });
    let report = json!({
        "tool": "kith",
        "customers": summary.len(),
        "transactions": transactions.len(),
        "repeat_customers": rfm.iter().filter(|r| r.frequency > 0.0).count(),
        "seconds": {
            "read": read_s,
            "summary": summary_s,
            "bg_nbd": bg_s,
            "pareto_nbd": pareto_s,
            "mbg_nbd": mbg_s,
            "gamma_gamma": gg_s,
            "score": score_s,
        },
        "params": {
            "bg_nbd": params(json!(bg)),
            "pareto_nbd": params(json!(pareto)),
            "mbg_nbd": params(json!(mbg)),
            "gamma_gamma": params(json!(gg)),
        },
        "log_likelihood": {"bg_nbd": bg.log_likelihood, "pareto_nbd": pareto.log_likelihood},
        "evaluations": {
            "bg_nbd": bg.evaluations,
            "pareto_nbd": pareto.evaluations,
            "mbg_nbd": mbg.evaluations,
            "gamma_gamma": gg.model.evaluations,
        },
        "distinct_rows": distinct_rows(&rfm),
        "totals": {"expected_purchases_39w": totals.0, "p_alive": totals.1, "clv_12m": totals.2},
    });
    println!("{report}");
    Ok(())
}
