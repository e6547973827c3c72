//! BG/BB on the donations data (Fader, Hardie & Shang 2010): 11,104 donors, 6 opportunities.

mod common;

use common::{col, read_csv, rel_err};
use kith_clv::{BgBb, BgBbRecord, FitError, FitOptions};

fn donations() -> (Vec<BgBbRecord>, Vec<f64>) {
    let (h, rows) = read_csv("donations.csv");
    let (f, r, n, w) = (
        col(&h, "frequency"),
        col(&h, "recency"),
        col(&h, "periods"),
        col(&h, "weights"),
    );
    rows.iter()
        .map(|row| {
            (
                BgBbRecord::new(
                    row[f].parse().unwrap(),
                    row[r].parse().unwrap(),
                    row[n].parse().unwrap(),
                ),
                row[w].parse::<f64>().unwrap(),
            )
        })
        .unzip()
}

#[test]
fn bgbb_matches_published_donations_fit() {
    let (records, weights) = donations();
    assert_eq!(weights.iter().sum::<f64>(), 11_104.0);
    let fit = BgBb::fit_weighted(&records, &weights, &FitOptions::default()).unwrap();
    let p = fit.params;
    println!(
        "bg/bb {p:?} ll={} se={:?}",
        fit.log_likelihood, fit.standard_errors
    );
    assert!(fit.converged);
    for (name, got, want) in [
        ("alpha", p.alpha, 1.204),
        ("beta", p.beta, 0.750),
        ("gamma", p.gamma, 0.657),
        ("delta", p.delta, 2.783),
    ] {
        assert!(rel_err(got, want) < 1e-3, "{name}: {got} vs {want}");
    }
    assert!(
        (fit.log_likelihood - -33_225.6).abs() < 0.1,
        "{}",
        fit.log_likelihood
    );

    // Expanding the weights into individual rows gives the same fit.
    let expanded: Vec<BgBbRecord> = records
        .iter()
        .zip(&weights)
        .flat_map(|(r, w)| std::iter::repeat_n(*r, *w as usize))
        .collect();
    let again = BgBb::fit(&expanded, &FitOptions::default()).unwrap();
    assert!(rel_err(again.params.alpha, p.alpha) < 1e-6);
    assert!(rel_err(again.log_likelihood, fit.log_likelihood) < 1e-10);

    // Predictions behave: a donor active in all six years is very likely alive and gives more.
    let loyal = BgBbRecord::new(6, 6, 6);
    let lapsed = BgBbRecord::new(1, 1, 6);
    assert!(p.probability_alive(0, &loyal).unwrap() > 0.9);
    assert!(p.probability_alive(0, &lapsed).unwrap() < 0.2);
    let e_loyal = p.conditional_expected_purchases(5, &loyal).unwrap();
    let e_lapsed = p.conditional_expected_purchases(5, &lapsed).unwrap();
    assert!(e_loyal > 3.0 && e_lapsed < 0.5, "{e_loyal} {e_lapsed}");
    // The fitted model reproduces the mean number of repeat donations over the six years.
    let mean_x: f64 = records
        .iter()
        .zip(&weights)
        .map(|(r, w)| r.frequency as f64 * w)
        .sum::<f64>()
        / 11_104.0;
    let e6 = p.expected_purchases(6).unwrap();
    assert!(rel_err(e6, mean_x) < 0.01, "{e6} vs {mean_x}");
}

#[test]
fn bgbb_rejects_bad_records() {
    let err = BgBb::fit(&[BgBbRecord::new(3, 2, 6)], &FitOptions::default()).unwrap_err();
    assert!(matches!(err, FitError::InvalidData { row: 0, .. }));
    let err = BgBb::fit(&[BgBbRecord::new(0, 0, 6); 5], &FitOptions::default()).unwrap_err();
    assert!(matches!(
        err,
        FitError::TooFewRepeatCustomers { found: 0, .. }
    ));
    assert_eq!(
        BgBb::fit(&[], &FitOptions::default()).unwrap_err(),
        FitError::EmptyInput
    );
}
