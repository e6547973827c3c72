//! The few statistics the analyses need, written out so their assumptions are visible.

/// A two-sided two-proportion z-test (pooled variance).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TestResult {
    pub z: f64,
    pub p_value: f64,
}

/// Tests whether `x1` of `n1` and `x2` of `n2` differ in rate.
pub fn two_proportion_test(x1: u64, n1: u64, x2: u64, n2: u64) -> TestResult {
    if n1 == 0 || n2 == 0 {
        return TestResult {
            z: 0.0,
            p_value: 1.0,
        };
    }
    let (p1, p2) = (x1 as f64 / n1 as f64, x2 as f64 / n2 as f64);
    let pooled = (x1 + x2) as f64 / (n1 + n2) as f64;
    let variance = pooled * (1.0 - pooled) * (1.0 / n1 as f64 + 1.0 / n2 as f64);
    if variance <= 0.0 {
        return TestResult {
            z: 0.0,
            p_value: 1.0,
        };
    }
    let z = (p1 - p2) / variance.sqrt();
    TestResult {
        z,
        p_value: 2.0 * normal_upper_tail(z.abs()),
    }
}

/// P(X ≤ k) for X ~ Poisson(mu), summed in log space so large rates do not underflow.
pub fn poisson_lower_tail(k: u64, mu: f64) -> f64 {
    if mu <= 0.0 {
        return 1.0;
    }
    let ln_mu = mu.ln();
    let mut ln_factorial = 0.0;
    let mut terms = Vec::with_capacity(k as usize + 1);
    for i in 0..=k {
        if i > 0 {
            ln_factorial += (i as f64).ln();
        }
        terms.push(-mu + i as f64 * ln_mu - ln_factorial);
    }
    let top = terms.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let sum: f64 = terms.iter().map(|t| (t - top).exp()).sum();
    (top + sum.ln()).exp().min(1.0)
}

/// P(X ≥ k) for X ~ Poisson(mu).
pub fn poisson_upper_tail(k: u64, mu: f64) -> f64 {
    if k == 0 {
        return 1.0;
    }
    (1.0 - poisson_lower_tail(k - 1, mu)).max(0.0)
}

/// P(Z > z) for a standard normal Z: `erfc(z / √2) / 2`.
pub fn normal_upper_tail(z: f64) -> f64 {
    0.5 * erfc(z / std::f64::consts::SQRT_2)
}

/// The complementary error function, to about 1e-7 relative (Numerical Recipes' erfcc, a
/// Chebyshev fit valid for every real x).
pub fn erfc(x: f64) -> f64 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let polynomial = -z * z - 1.265_512_23
        + t * (1.000_023_68
            + t * (0.374_091_96
                + t * (0.096_784_18
                    + t * (-0.186_288_06
                        + t * (0.278_868_07
                            + t * (-1.135_203_98
                                + t * (1.488_515_87 + t * (-0.822_152_23 + t * 0.170_872_77))))))));
    let tail = t * polynomial.exp();
    if x >= 0.0 { tail } else { 2.0 - tail }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normal_tails_match_tables() {
        // Standard normal table values.
        for (z, tail) in [
            (0.0, 0.5),
            (1.0, 0.158_655_25),
            (1.959_964, 0.025),
            (3.0, 0.001_349_898),
        ] {
            let got = normal_upper_tail(z);
            assert!((got - tail).abs() / tail < 1e-6, "{z}: {got}");
        }
        assert!((normal_upper_tail(-1.0) - 0.841_344_75).abs() < 1e-7);
    }

    #[test]
    fn poisson_tails_match_hand_sums() {
        // P(X ≤ 2 | 3) = e^-3 (1 + 3 + 4.5) = 0.42319008.
        assert!((poisson_lower_tail(2, 3.0) - 0.423_190_08).abs() < 1e-8);
        assert!((poisson_upper_tail(1, 0.5) - (1.0 - (-0.5f64).exp())).abs() < 1e-12);
        // A large rate does not underflow: P(X ≤ 1000 | 1000) is a little over one half.
        let middle = poisson_lower_tail(1000, 1000.0);
        assert!((middle - 0.508_409).abs() < 1e-4, "{middle}");
        assert_eq!(poisson_lower_tail(0, 0.0), 1.0);
    }

    #[test]
    fn a_two_proportion_test_matches_a_hand_computation() {
        // 80/100 vs 60/100: pooled 0.7, se = sqrt(0.21 * 0.02) = 0.0648074, z = 3.0861.
        let test = two_proportion_test(80, 100, 60, 100);
        assert!((test.z - 3.086_067).abs() < 1e-5, "{test:?}");
        assert!((test.p_value - 0.002_028).abs() < 1e-5, "{test:?}");
        assert_eq!(two_proportion_test(0, 0, 5, 10).p_value, 1.0);
    }
}
