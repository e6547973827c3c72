//! The probability models.
//!
//! Continuous-time transaction models ([`BgNbd`], [`ModifiedBgNbd`], [`ParetoNbd`]) share the
//! [`TransactionModel`] trait, which is what the CLV and the diagnostics are written against.
//! [`BgBb`] is the discrete-time model and [`GammaGamma`] the spend model.

pub mod bgbb;
pub mod bgnbd;
pub mod gamma_gamma;
pub mod mbgnbd;
pub mod pareto;

pub use bgbb::BgBb;
pub use bgnbd::BgNbd;
pub use gamma_gamma::{ClvOptions, GammaGamma, GammaGammaFit, GammaGammaOptions};
pub use mbgnbd::ModifiedBgNbd;
pub use pareto::ParetoNbd;

use crate::data::Rfm;
use crate::error::NumericError;

/// A fitted continuous-time model of repeat purchasing.
pub trait TransactionModel {
    /// Expected number of repeat purchases in (T, T + t] for a customer with history `customer`.
    fn conditional_expected_purchases(&self, t: f64, customer: &Rfm) -> Result<f64, NumericError>;

    /// Expected number of repeat purchases in (0, t] for a randomly chosen new customer.
    fn expected_purchases(&self, t: f64) -> Result<f64, NumericError>;

    /// Probability that the customer is still active at T.
    fn probability_alive(&self, customer: &Rfm) -> Result<f64, NumericError>;
}

/// Rejects a negative or non-finite horizon.
pub(crate) fn check_horizon(t: f64) -> Result<(), NumericError> {
    if t.is_finite() && t >= 0.0 {
        Ok(())
    } else {
        Err(NumericError::Domain(format!(
            "time horizon must be finite and >= 0, got {t}"
        )))
    }
}

/// Turns a non-finite prediction into an error naming where it came from.
pub(crate) fn finite(v: f64, what: &'static str) -> Result<f64, NumericError> {
    if v.is_finite() {
        Ok(v)
    } else {
        Err(NumericError::NonFinite(what))
    }
}

/// 1 / (1 + e^l) without overflow.
pub(crate) fn inv_one_plus_exp(l: f64) -> f64 {
    if l > 0.0 {
        let e = (-l).exp();
        e / (1.0 + e)
    } else {
        1.0 / (1.0 + l.exp())
    }
}

/// Negative binomial upper tail P(N ≥ n) for N with P(N = j) = Γ(r+j)/(Γ(r) j!) p^r q^j:
/// equals the regularised incomplete beta I_q(n, r). Used by the "probability of n purchases"
/// expressions of BG/NBD and MBG/NBD, where 1 − Σ_{j<n} would lose accuracy.
pub(crate) fn nb_upper_tail(n: u32, r: f64, q: f64) -> f64 {
    if n == 0 {
        return 1.0;
    }
    if q <= 0.0 {
        return 0.0;
    }
    if q >= 1.0 {
        return 1.0;
    }
    match statrs::function::beta::checked_beta_reg(n as f64, r, q) {
        Ok(v) if v.is_finite() => v.clamp(0.0, 1.0),
        _ => {
            // Fallback: complement of the finite sum.
            let p = 1.0 - q;
            let mut pmf = p.powf(r);
            let mut s = 0.0;
            for j in 0..n {
                s += pmf;
                pmf *= (r + j as f64) / (j as f64 + 1.0) * q;
            }
            (1.0 - s).clamp(0.0, 1.0)
        }
    }
}

/// ln P(N = n) of the same negative binomial, with p = α/(α+t), q = t/(α+t).
pub(crate) fn ln_nb_pmf(n: u32, r: f64, alpha: f64, t: f64) -> f64 {
    use crate::special::ln_gamma;
    let nf = n as f64;
    let ln_p = -(t / alpha).ln_1p();
    let ln_q_term = if n == 0 {
        0.0
    } else {
        nf * (t / (alpha + t)).ln()
    };
    ln_gamma(r + nf) - ln_gamma(r) - ln_gamma(nf + 1.0) + r * ln_p + ln_q_term
}
