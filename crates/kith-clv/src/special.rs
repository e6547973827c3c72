//! Small special-function helpers on top of `statrs`.
//!
//! `statrs::function::gamma::ln_gamma` returns NaN for negative arguments (it takes the log of
//! a negative sine), but the 1 − z connection formulas of 2F1 need Γ at negative non-integers,
//! so the signed variant lives here.

use std::f64::consts::PI;

pub use statrs::function::gamma::{digamma, ln_gamma};

/// ln(π).
const LN_PI: f64 = 1.144_729_885_849_400_2;

/// ψ(x) and ψ'(x) for x > 0 together, sharing one recurrence (ψ(x) = ψ(x+1) − 1/x,
/// ψ'(x) = ψ'(x+1) + 1/x²) up to x ≥ 12 and the asymptotic series there. Exact derivatives
/// need both at the same arguments, once per frequency group in every pass: separately they
/// took as long as a small sample's rows.
pub fn digamma_trigamma(x: f64) -> (f64, f64) {
    if x.is_nan() || x <= 0.0 {
        return (f64::NAN, f64::NAN);
    }
    let (mut x, mut psi, mut tri) = (x, 0.0, 0.0);
    while x < 12.0 {
        let inv = 1.0 / x;
        psi -= inv;
        tri += inv * inv;
        x += 1.0;
    }
    let inv = 1.0 / x;
    let inv2 = inv * inv;
    // ψ ~ ln x − 1/(2x) − Σ B₂ₖ/(2k x²ᵏ);  ψ' ~ 1/x + 1/(2x²) + Σ B₂ₖ/x²ᵏ⁺¹ (k = 1..6).
    // Two terms past where the series' error first drops below 1e-13 at x = 12: below 1e-16.
    let psi_tail = 1.0 / 240.0 - inv2 * (1.0 / 132.0 - inv2 * (691.0 / 32_760.0));
    psi += x.ln()
        - 0.5 * inv
        - inv2 * (1.0 / 12.0 - inv2 * (1.0 / 120.0 - inv2 * (1.0 / 252.0 - inv2 * psi_tail)));
    let tri_tail = 1.0 / 30.0 - inv2 * (5.0 / 66.0 - inv2 * (691.0 / 2_730.0));
    tri += inv
        + inv2 / 2.0
        + inv * inv2 * (1.0 / 6.0 - inv2 * (1.0 / 30.0 - inv2 * (1.0 / 42.0 - inv2 * tri_tail)));
    (psi, tri)
}

/// sin(πx) with the argument reduced first, so large |x| keeps its accuracy.
pub fn sin_pi(x: f64) -> f64 {
    // x - 2·round(x/2) is exact in floating point and lies in [-1, 1].
    let r = x - 2.0 * (x / 2.0).round();
    (PI * r).sin()
}

/// True when `x` is 0, -1, -2, ... (a pole of Γ).
pub fn is_nonpositive_integer(x: f64) -> bool {
    x <= 0.0 && x == x.floor()
}

/// ln|Γ(x)| and the sign of Γ(x). At poles returns (+∞, 0) so that 1/Γ evaluates to zero.
pub fn ln_gamma_signed(x: f64) -> (f64, f64) {
    if x >= 0.5 {
        return (ln_gamma(x), 1.0);
    }
    if is_nonpositive_integer(x) {
        return (f64::INFINITY, 0.0);
    }
    // Reflection: Γ(x) Γ(1 − x) = π / sin(πx), with Γ(1 − x) > 0 because 1 − x > 0.5.
    let s = sin_pi(x);
    (LN_PI - s.abs().ln() - ln_gamma(1.0 - x), s.signum())
}

/// ln(e^a + e^b) without overflow; handles −∞ operands.
///
/// Accurate to an absolute error of about 2⁻⁵² (not relative: a result near 0 from
/// ln(e⁰ + e⁻⁴⁰) comes out as 0): every caller adds log-likelihood terms, whose sums carry
/// that much error anyway. ln(1 + e) rather than log1p(e) for the same reason: glibc's
/// `log1p` took five times as long as `ln`, a third of a BG/NBD fit.
pub fn log_add_exp(a: f64, b: f64) -> f64 {
    if a == f64::NEG_INFINITY {
        return b;
    }
    if b == f64::NEG_INFINITY {
        return a;
    }
    let (hi, lo) = if a >= b { (a, b) } else { (b, a) };
    hi + (1.0 + (lo - hi).exp()).ln()
}

/// ln(1 − e^x) for x ≤ 0, accurate near both ends (Mächler's switch at −ln 2).
pub fn log1m_exp(x: f64) -> f64 {
    if x > -std::f64::consts::LN_2 {
        (-x.exp_m1()).ln()
    } else {
        (-x.exp()).ln_1p()
    }
}

/// A real number stored as sign · exp(ln_abs), so values far beyond the `f64` range
/// (2F1 near z = 1 reaches e^700 and more) can be combined before the caller takes logs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Scaled {
    /// −1, 0 or +1.
    pub sign: f64,
    /// ln|value|; −∞ when the value is zero.
    pub ln_abs: f64,
}

impl Scaled {
    pub const ZERO: Scaled = Scaled {
        sign: 0.0,
        ln_abs: f64::NEG_INFINITY,
    };

    pub fn from_f64(v: f64) -> Scaled {
        if v == 0.0 {
            Scaled::ZERO
        } else {
            Scaled {
                sign: v.signum(),
                ln_abs: v.abs().ln(),
            }
        }
    }

    /// Product with sign · exp(ln).
    pub fn mul(self, sign: f64, ln: f64) -> Scaled {
        let s = self.sign * sign;
        if s == 0.0 {
            Scaled::ZERO
        } else {
            Scaled {
                sign: s,
                ln_abs: self.ln_abs + ln,
            }
        }
    }

    /// Sum of two scaled values.
    pub fn add(self, other: Scaled) -> Scaled {
        if self.sign == 0.0 {
            return other;
        }
        if other.sign == 0.0 {
            return self;
        }
        let (hi, lo) = if self.ln_abs >= other.ln_abs {
            (self, other)
        } else {
            (other, self)
        };
        let m = 1.0 + hi.sign * lo.sign * (lo.ln_abs - hi.ln_abs).exp();
        if m == 0.0 {
            return Scaled::ZERO;
        }
        Scaled {
            sign: hi.sign * m.signum(),
            ln_abs: hi.ln_abs + m.abs().ln(),
        }
    }

    pub fn to_f64(self) -> f64 {
        if self.sign == 0.0 {
            0.0
        } else {
            self.sign * self.ln_abs.exp()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trigamma_matches_known_values() {
        // ψ'(1) = π²/6, ψ'(1/2) = π²/2, ψ'(2) = π²/6 − 1, and ψ'(x) ≈ 1/x + 1/(2x²) far out.
        let pi2 = PI * PI;
        for (x, expected) in [(1.0, pi2 / 6.0), (0.5, pi2 / 2.0), (2.0, pi2 / 6.0 - 1.0)] {
            let tri = digamma_trigamma(x).1;
            assert!((tri - expected).abs() < 1e-12, "{x}: {tri}");
        }
        let x = 1e6;
        assert!((digamma_trigamma(x).1 - (1.0 / x + 0.5 / (x * x))).abs() < 1e-18);
    }

    #[test]
    fn signed_gamma_matches_known_values() {
        // Γ(-0.5) = -2√π, Γ(-1.5) = 4√π/3, Γ(0.5) = √π.
        let sqrt_pi = PI.sqrt();
        let (l, s) = ln_gamma_signed(-0.5);
        assert_eq!(s, -1.0);
        assert!((l.exp() - 2.0 * sqrt_pi).abs() < 1e-13);
        let (l, s) = ln_gamma_signed(-1.5);
        assert_eq!(s, 1.0);
        assert!((l.exp() - 4.0 * sqrt_pi / 3.0).abs() < 1e-13);
        let (l, s) = ln_gamma_signed(0.5);
        assert_eq!(s, 1.0);
        assert!((l.exp() - sqrt_pi).abs() < 1e-14);
        assert_eq!(ln_gamma_signed(-3.0), (f64::INFINITY, 0.0));
        // ln Γ(101) = ln(100!)
        let ln_fact: f64 = (1..=100).map(|k| (k as f64).ln()).sum();
        assert!((ln_gamma(101.0) - ln_fact).abs() / ln_fact < 1e-14);
    }

    #[test]
    fn log_helpers() {
        assert!((log_add_exp(1000.0, 1000.0) - (1000.0 + 2f64.ln())).abs() < 1e-12);
        assert_eq!(log_add_exp(f64::NEG_INFINITY, 3.0), 3.0);
        assert!((log1m_exp(-1e-20) - (1e-20f64).ln()).abs() < 1e-9);
        assert!((log1m_exp(-50.0) - (-(-50f64).exp())).abs() < 1e-30);
    }

    #[test]
    fn scaled_arithmetic() {
        let a = Scaled::from_f64(3.0);
        let b = Scaled::from_f64(-5.0);
        assert!((a.add(b).to_f64() + 2.0).abs() < 1e-14);
        assert_eq!(a.add(Scaled::from_f64(-3.0)).to_f64(), 0.0);
        assert!((a.mul(-1.0, 2f64.ln()).to_f64() + 6.0).abs() < 1e-14);
    }

    #[test]
    fn digamma_and_trigamma_match_references() {
        for &x in &[
            1e-3, 0.05, 0.3, 0.5, 1.0, 1.7, 2.5, 6.0, 11.9, 12.0, 40.0, 1e3, 1e7,
        ] {
            let (psi, tri) = digamma_trigamma(x);
            let psi_ref = digamma(x);
            assert!(
                (psi - psi_ref).abs() <= 1e-13 * psi_ref.abs().max(1.0),
                "digamma({x}): {psi} vs {psi_ref}"
            );
            // ψ'(x) = ψ'(x + 1) + 1/x², across the switch to the series at 12 too.
            let next = digamma_trigamma(x + 1.0).1 + 1.0 / (x * x);
            assert!(
                (tri - next).abs() <= 1e-13 * tri,
                "trigamma({x}): {tri} vs {next}"
            );
        }
        // ψ(1) = −γ (ψ' at known points: `trigamma_matches_known_values`).
        let psi = digamma_trigamma(1.0).0;
        assert!((psi + 0.577_215_664_901_532_9).abs() < 1e-14, "{psi}");
        assert!(digamma_trigamma(0.0).0.is_nan() && digamma_trigamma(-1.0).1.is_nan());
    }
}
