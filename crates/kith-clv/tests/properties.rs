//! Property tests: no panics and no silent NaNs on arbitrary positive inputs, plus parameter
//! recovery from data simulated with a known BG/NBD.

use kith_clv::hyp2f1::{hyp2f1, ln_hyp2f1};
use kith_clv::{
    BgBb, BgBbRecord, BgNbd, FitOptions, GammaGamma, ModifiedBgNbd, ParetoNbd, Rfm, Spend,
};
use proptest::prelude::*;

/// A customer history with 0 ≤ t_x ≤ T and t_x = 0 when x = 0.
fn rfm_strategy() -> impl Strategy<Value = Rfm> {
    (0u32..60, 0.0f64..1.0, 0.0f64..200.0).prop_map(|(x, frac, t)| {
        let recency = if x == 0 { 0.0 } else { frac * t };
        Rfm::new(x as f64, recency, t)
    })
}

fn positive() -> impl Strategy<Value = f64> {
    // Log-uniform over 1e-3 … 1e3.
    (-3.0f64..3.0).prop_map(|e| 10f64.powf(e))
}

fn ok_or_err(r: Result<f64, impl std::fmt::Debug>) -> Result<(), TestCaseError> {
    if let Ok(v) = r {
        prop_assert!(v.is_finite(), "Ok but not finite: {v}");
    }
    Ok(())
}

proptest! {
    // 256 cases by default; PROPTEST_CASES=20000 for a deeper search.
    #[test]
    fn hyp2f1_is_finite_or_an_error(
        a in 0.0f64..300.0,
        b in 0.0f64..300.0,
        c in 1e-3f64..600.0,
        z in -20.0f64..1.0,
    ) {
        ok_or_err(hyp2f1(a, b, c, z))?;
        ok_or_err(ln_hyp2f1(a, b, c, z))?;
    }

    #[test]
    fn hyp2f1_in_unit_interval_is_positive(
        a in 1e-3f64..300.0,
        b in 1e-3f64..300.0,
        c in 1e-3f64..600.0,
        z in 0.0f64..0.999,
    ) {
        // All series terms are positive here, so a returned value must be ≥ 1.
        if let Ok(l) = ln_hyp2f1(a, b, c, z) {
            prop_assert!(l >= -1e-12, "ln 2F1 = {l}");
        }
    }

    #[test]
    fn likelihoods_and_predictions_are_finite_or_errors(
        p in (positive(), positive(), positive(), positive()),
        data in prop::collection::vec(rfm_strategy(), 1..20),
        horizon in 0.0f64..200.0,
    ) {
        let bg = BgNbd { r: p.0, alpha: p.1, a: p.2, b: p.3 };
        let mbg = ModifiedBgNbd { r: p.0, alpha: p.1, a: p.2, b: p.3 };
        let pareto = ParetoNbd { r: p.0, alpha: p.1, s: p.2, beta: p.3 };
        ok_or_err(bg.log_likelihood(&data))?;
        ok_or_err(mbg.log_likelihood(&data))?;
        ok_or_err(pareto.log_likelihood(&data))?;
        for c in &data {
            ok_or_err(bg.conditional_expected_purchases(horizon, c))?;
            ok_or_err(mbg.conditional_expected_purchases(horizon, c))?;
            ok_or_err(pareto.conditional_expected_purchases(horizon, c))?;
            let pa = bg.probability_alive(c);
            prop_assert!((0.0..=1.0).contains(&pa));
            let pa = mbg.probability_alive(c);
            prop_assert!((0.0..=1.0).contains(&pa));
            if let Ok(pa) = pareto.probability_alive(c) {
                prop_assert!((0.0..=1.0).contains(&pa), "{pa}");
            }
        }
        ok_or_err(bg.expected_purchases(horizon))?;
        ok_or_err(mbg.expected_purchases(horizon))?;
        ok_or_err(pareto.expected_purchases(horizon))?;
    }

    #[test]
    fn discrete_and_spend_likelihoods_are_finite_or_errors(
        p in (positive(), positive(), positive(), positive()),
        patterns in prop::collection::vec((0u32..30, 0u32..30, 0u32..30), 1..20),
        spends in prop::collection::vec((1u32..50, 1e-2f64..1e4), 1..20),
    ) {
        let bgbb = BgBb { alpha: p.0, beta: p.1, gamma: p.2, delta: p.3 };
        let records: Vec<BgBbRecord> = patterns
            .iter()
            .map(|&(a, b, c)| {
                // Sort into x ≤ t_x ≤ n, with t_x = 0 when x = 0.
                let mut v = [a, b, c];
                v.sort();
                let (x, tx, n) = (v[0], if v[0] == 0 { 0 } else { v[1] }, v[2]);
                BgBbRecord::new(x, tx, n)
            })
            .collect();
        ok_or_err(bgbb.log_likelihood(&records, None))?;
        for r in &records {
            ok_or_err(bgbb.conditional_expected_purchases(5, r))?;
            ok_or_err(bgbb.probability_alive(0, r))?;
        }
        let gg = GammaGamma { p: p.0, q: p.1, gamma: p.2 };
        let data: Vec<Spend> = spends.iter().map(|&(x, m)| Spend::new(x as f64, m)).collect();
        ok_or_err(gg.log_likelihood(&data))?;
    }
}

/// splitmix64: a tiny, well-mixed, seedable generator (enough for a simulation test).
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform on (0, 1): 53 random bits, shifted off zero.
    fn uniform(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }

    fn normal(&mut self) -> f64 {
        // Box–Muller.
        let (u, v) = (self.uniform(), self.uniform());
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }

    /// Gamma(shape, 1) by Marsaglia & Tsang, boosted for shape < 1.
    fn gamma(&mut self, shape: f64) -> f64 {
        if shape < 1.0 {
            let u = self.uniform();
            return self.gamma(shape + 1.0) * u.powf(1.0 / shape);
        }
        let d = shape - 1.0 / 3.0;
        let c = 1.0 / (9.0 * d).sqrt();
        loop {
            let x = self.normal();
            let v = (1.0 + c * x).powi(3);
            if v <= 0.0 {
                continue;
            }
            let u = self.uniform();
            if u.ln() < 0.5 * x * x + d - d * v + d * v.ln() {
                return d * v;
            }
        }
    }

    fn beta(&mut self, a: f64, b: f64) -> f64 {
        let x = self.gamma(a);
        let y = self.gamma(b);
        x / (x + y)
    }
}

/// One BG/NBD customer observed for `t` time units after the first purchase.
fn simulate_bgnbd(rng: &mut SplitMix64, truth: &BgNbd, t: f64) -> Rfm {
    let lambda = rng.gamma(truth.r) / truth.alpha;
    let p = rng.beta(truth.a, truth.b);
    let (mut now, mut x, mut last) = (0.0, 0u32, 0.0);
    loop {
        now += -rng.uniform().ln() / lambda;
        if now > t {
            break;
        }
        x += 1;
        last = now;
        // Dropout happens right after a repeat purchase.
        if rng.uniform() < p {
            break;
        }
    }
    Rfm::new(x as f64, last, t)
}

#[test]
fn bgnbd_fit_recovers_simulated_parameters() {
    let truth = BgNbd {
        r: 0.25,
        alpha: 4.0,
        a: 0.8,
        b: 2.5,
    };
    let mut rng = SplitMix64(20_240_601);
    // Customers acquired over 12 weeks, observed until week 52.
    let data: Vec<Rfm> = (0..5000)
        .map(|_| {
            let t = 40.0 + 12.0 * rng.uniform();
            simulate_bgnbd(&mut rng, &truth, t)
        })
        .collect();
    let fit = BgNbd::fit(&data, &FitOptions::default()).unwrap();
    let se = fit.standard_errors.unwrap();
    println!(
        "simulated truth {truth:?}\nestimate {:?}\nse {se:?}",
        fit.params
    );
    for (name, est, s, want) in [
        ("r", fit.params.r, se.r, truth.r),
        ("alpha", fit.params.alpha, se.alpha, truth.alpha),
        ("a", fit.params.a, se.a, truth.a),
        ("b", fit.params.b, se.b, truth.b),
    ] {
        let z = (est - want) / s;
        println!("{name}: z = {z:.2}");
        assert!(
            z.abs() < 3.5,
            "{name}: estimate {est} vs truth {want} (se {s})"
        );
    }
}
