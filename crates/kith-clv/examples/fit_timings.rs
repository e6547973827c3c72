//! Times each model's fit on the CDNOW fixtures (run with `cargo run --release --example
//! fit_timings`). Reads `tests/fixtures/`; the library itself does no I/O.

use std::time::{Duration, Instant};

use kith_clv::{
    BgBb, BgBbRecord, BgNbd, FitOptions, GammaGamma, GammaGammaOptions, ModifiedBgNbd, ParetoNbd,
    Rfm, Spend,
};

fn fixture(name: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    std::fs::read_to_string(path).expect("fixture readable")
}

/// Median wall time of `runs` calls, plus the objective evaluations of the last one.
fn time<T>(runs: usize, mut f: impl FnMut() -> (T, usize)) -> (Duration, usize) {
    let mut times = Vec::with_capacity(runs);
    let mut evals = 0;
    for _ in 0..runs {
        let start = Instant::now();
        let (out, e) = f();
        times.push(start.elapsed());
        std::hint::black_box(out);
        evals = e;
    }
    times.sort();
    (times[runs / 2], evals)
}

fn main() {
    let text = fixture("cdnow_customers_summary_with_transactions.csv");
    let rows: Vec<Vec<f64>> = text
        .lines()
        .skip(1)
        .map(|l| l.split(',').map(|v| v.parse().unwrap()).collect())
        .collect();
    let rfm: Vec<Rfm> = rows.iter().map(|r| Rfm::new(r[1], r[2], r[3])).collect();
    let spend: Vec<Spend> = rows.iter().map(|r| Spend::new(r[1], r[4])).collect();
    let donations = fixture("donations.csv");
    let (records, weights): (Vec<BgBbRecord>, Vec<f64>) = donations
        .lines()
        .skip(1)
        .map(|l| {
            let v: Vec<f64> = l.split(',').map(|x| x.parse().unwrap()).collect();
            (BgBbRecord::new(v[0] as u32, v[1] as u32, v[2] as u32), v[3])
        })
        .unzip();

    let runs = 21;
    let report = |name: &str, (d, evals): (Duration, usize)| {
        println!(
            "{name:<12} {:>8.2} ms  ({evals} objective evaluations)",
            d.as_secs_f64() * 1e3
        );
    };
    println!("median of {runs} fits, {} CDNOW customers", rfm.len());
    report(
        "BG/NBD",
        time(runs, || {
            let f = BgNbd::fit(&rfm, &FitOptions::default()).unwrap();
            (f.params, f.evaluations)
        }),
    );
    report(
        "MBG/NBD",
        time(runs, || {
            let f = ModifiedBgNbd::fit(&rfm, &FitOptions::default()).unwrap();
            (f.params, f.evaluations)
        }),
    );
    report(
        "Pareto/NBD",
        time(runs, || {
            let f = ParetoNbd::fit(&rfm, &FitOptions::default()).unwrap();
            (f.params, f.evaluations)
        }),
    );
    report(
        "Gamma-Gamma",
        time(runs, || {
            let f = GammaGamma::fit(&spend, &GammaGammaOptions::default()).unwrap();
            (f.model.params, f.model.evaluations)
        }),
    );
    report(
        "BG/BB",
        time(runs, || {
            let f = BgBb::fit_weighted(&records, &weights, &FitOptions::default()).unwrap();
            (f.params, f.evaluations)
        }),
    );
}
