//! 2F1 against 2,800 mpmath values (40 significant digits) in `tests/fixtures/hyp2f1_reference.csv`.
//!
//! The comparison is made on the logarithm (|ln F − ln F_ref| ≈ relative error) because some
//! reference values exceed the largest `f64`. Each region has its own threshold and the worst
//! case is printed, so `cargo test -- --nocapture` shows the achieved accuracy.

mod common;

use kith_clv::hyp2f1::{hyp2f1, ln_hyp2f1};

#[test]
fn hyp2f1_matches_mpmath_reference_per_region() {
    let (header, rows) = common::read_csv("hyp2f1_reference.csv");
    let (ia, ib, ic, iz) = (
        common::col(&header, "a"),
        common::col(&header, "b"),
        common::col(&header, "c"),
        common::col(&header, "z"),
    );
    let (iv, iln, io) = (
        common::col(&header, "value"),
        common::col(&header, "ln_value"),
        common::col(&header, "origin"),
    );
    assert_eq!(rows.len(), 2800);
    // Thresholds on the relative error per region.
    let regions = [
        ("bgnbd_expectation", 1e-12),
        ("pareto_likelihood", 1e-12),
        ("corner", 1e-11),
    ];
    for (region, threshold) in regions {
        let mut worst = (0.0f64, String::new());
        let mut count = 0;
        for r in rows.iter().filter(|r| r[io] == region) {
            count += 1;
            let p = |i: usize| r[i].parse::<f64>().unwrap();
            let (a, b, c, z) = (p(ia), p(ib), p(ic), p(iz));
            let ln_ref: f64 = r[iln].parse().unwrap();
            let ln = ln_hyp2f1(a, b, c, z)
                .unwrap_or_else(|e| panic!("{region}: ln_hyp2f1({a}, {b}, {c}, {z}) failed: {e}"));
            // exp(Δ) − 1 is the relative error of the value itself.
            let err = (ln - ln_ref).exp_m1().abs();
            if err > worst.0 {
                worst = (err, format!("a={a} b={b} c={c} z={z}"));
            }
            // Where the value fits in an f64, the direct API must agree too.
            let value_ref: f64 = r[iv].parse().unwrap();
            if value_ref.is_finite() && ln_ref < 700.0 {
                let v = hyp2f1(a, b, c, z).unwrap();
                let e = ((v - value_ref) / value_ref).abs();
                assert!(
                    e < threshold * 10.0 + 1e-13,
                    "{region}: value {v} vs {value_ref}"
                );
            }
        }
        println!(
            "{region}: {count} cases, worst relative error {:.3e} at {}",
            worst.0, worst.1
        );
        assert!(
            worst.0 < threshold,
            "{region}: worst relative error {:.3e} at {} exceeds {threshold:e}",
            worst.0,
            worst.1
        );
    }
}
