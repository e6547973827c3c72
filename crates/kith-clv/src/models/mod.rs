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

use crate::data::{Rfm, RfmGroups, RowCost, clip_groups, split_sum};
use crate::error::NumericError;
use crate::fit::NaturalDerivatives;
use crate::special::{digamma_trigamma, ln_gamma};

/// A fitted continuous-time model of repeat purchasing.
pub trait TransactionModel {
    /// Expected number of repeat purchases in (T, T + t] for a customer with history `customer`.
    fn conditional_expected_purchases(&self, t: f64, customer: &Rfm) -> Result<f64, NumericError>;

    /// Expected number of repeat purchases in (0, t] for a randomly chosen new customer.
    fn expected_purchases(&self, t: f64) -> Result<f64, NumericError>;

    /// Probability that the customer is still active at T.
    fn probability_alive(&self, customer: &Rfm) -> Result<f64, NumericError>;

    /// Expected repeat purchases in (T, T + t] of a customer still active at T, with `frequency`
    /// repeat purchases and age T (`age`), for models whose conditional expectation is
    /// P(alive) times this (BG/NBD, MBG/NBD): it does not depend on t_x, so batch scoring
    /// shares it between customers with the same x and T. `None` for models that do not factor.
    fn expected_purchases_if_alive(
        &self,
        _t: f64,
        _frequency: f64,
        _age: f64,
    ) -> Option<Result<f64, NumericError>> {
        None
    }

    /// [`TransactionModel::expected_purchases_if_alive`] at several horizons of one history
    /// (scoring needs a dozen: the horizon and each month of the CLV), where a model can share
    /// work between them.
    fn expected_purchases_if_alive_at(
        &self,
        horizons: &[f64],
        frequency: f64,
        age: f64,
    ) -> Option<Result<Vec<f64>, NumericError>> {
        horizons
            .iter()
            .map(|&t| self.expected_purchases_if_alive(t, frequency, age))
            .collect()
    }
}

/// BG/NBD's and MBG/NBD's expected repeat purchases in (T, T+t] of a live customer with x
/// purchases and age T: `first` · (1 − ((α+T)/(α+T+t))^{r+x} · 2F1(r+x, b₂; c₂; t/(α+T+t))).
/// The two models differ only in `b₂`, `c₂` and `first`.
pub(crate) struct LiveExpectation {
    pub alpha: f64,
    pub r_plus_x: f64,
    pub b2: f64,
    pub c2: f64,
    pub first: f64,
}

impl LiveExpectation {
    /// At one horizon.
    pub fn at(&self, t: f64, age: f64) -> Result<f64, NumericError> {
        check_horizon(t)?;
        let z = t / (self.alpha + age + t);
        let ln_hyp = crate::hyp2f1::ln_hyp2f1(self.r_plus_x, self.b2, self.c2, z)?;
        Ok(self.combine(t, age, ln_hyp))
    }

    /// At several horizons, the 2F1 of every one from one series (see
    /// [`crate::hyp2f1::ln_hyp2f1_many`]).
    pub fn at_horizons(&self, horizons: &[f64], age: f64) -> Result<Vec<f64>, NumericError> {
        for &t in horizons {
            check_horizon(t)?;
        }
        let positive: Vec<f64> = horizons.iter().copied().filter(|&t| t > 0.0).collect();
        let zs: Vec<f64> = positive
            .iter()
            .map(|t| t / (self.alpha + age + t))
            .collect();
        let ln_hyps = crate::hyp2f1::ln_hyp2f1_many(self.r_plus_x, self.b2, self.c2, &zs)?;
        // One value per positive horizon, in order; nothing is expected in no time.
        let mut ln_hyps = ln_hyps.into_iter();
        Ok(horizons
            .iter()
            .map(|&t| {
                if t > 0.0 {
                    ln_hyps
                        .next()
                        .map_or(f64::NAN, |ln_hyp| self.combine(t, age, ln_hyp))
                } else {
                    0.0
                }
            })
            .collect())
    }

    fn combine(&self, t: f64, age: f64, ln_hyp: f64) -> f64 {
        // ln((α+T)/(α+T+t)) = −ln(1 + t/(α+T)), exact for small t.
        let ln_ratio = -(t / (self.alpha + age)).ln_1p();
        self.first * -(ln_hyp + self.r_plus_x * ln_ratio).exp_m1()
    }
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
    let nf = n as f64;
    let ln_p = -(t / alpha).ln_1p();
    let ln_q_term = if n == 0 {
        0.0
    } else {
        nf * (t / (alpha + t)).ln()
    };
    ln_gamma(r + nf) - ln_gamma(r) - ln_gamma(nf + 1.0) + r * ln_p + ln_q_term
}

/// Gradient and Hessian in (r, α, a, b) of the mean negative log-likelihood of the BG/NBD
/// family, whose customer log-likelihood is A(x) + ln(e^{ℓ₃} + e^{ℓ₄}) where
/// A(x) = lnΓ(r+x) − lnΓ(r) + r ln α + lnΓ(a+b) + lnΓ(b+x+s) − lnΓ(b) − lnΓ(a+b+x+s),
/// ℓ₃ = −(r+x) ln(α+T) and ℓ₄ = ln a − ln(b+x+s−1) − (r+x) ln(α+t_x).
/// BG/NBD has s = 0 and no ℓ₄ term without repeat purchases; MBG/NBD has s = 1 and the ℓ₄ term
/// for everyone (a customer may leave right after the first purchase).
///
/// A(x) is differentiated once per frequency (digamma, trigamma); the log-sum-exp with its
/// softmax weight π = e^{ℓ₄}/(e^{ℓ₃}+e^{ℓ₄}) per customer:
/// ∇ = (1−π)∇ℓ₃ + π∇ℓ₄ and ∇² = (1−π)∇²ℓ₃ + π∇²ℓ₄ + π(1−π)(∇ℓ₄−∇ℓ₃)(∇ℓ₄−∇ℓ₃)ᵀ.
pub(crate) fn bg_family_derivatives(
    p: &[f64; 4],
    g: &RfmGroups,
    s: f64,
    mix_without_repeats: bool,
) -> NaturalDerivatives<4> {
    let shifted = g.shifted_times(p[1]);
    let (ll, grad, hess) = split_sum(
        g.recency.len(),
        RowCost::Heavy,
        |lo, hi| bg_family_rows(p, g, &shifted, s, mix_without_repeats, lo, hi),
        crate::data::add_derivatives,
    );
    let scale = -1.0 / g.total_weight;
    let grad = grad.map(|v| v * scale);
    let hess = std::array::from_fn(|i| std::array::from_fn(|j| hess[i.min(j)][i.max(j)] * scale));
    (ll * scale, grad, hess)
}

/// What [`bg_family_rows`] sums over the customers of one frequency (weights w, softmax π).
#[derive(Default)]
struct GroupSums {
    /// Σ w ln(e^{ℓ₃} + e^{ℓ₄}).
    ll: f64,
    /// Σ w ((1−π) ln(α+T) + π ln(α+t_x)).
    w_ln: f64,
    /// Σ w ((1−π)/(α+T) + π/(α+t_x)).
    w_inv: f64,
    /// Σ w ((1−π)/(α+T)² + π/(α+t_x)²).
    w_inv2: f64,
    /// Σ w π.
    w_pi: f64,
    /// Σ w π(1−π) times 1, d, e, d², de, e², with d = ln(α+T) − ln(α+t_x) and
    /// e = 1/(α+T) − 1/(α+t_x).
    mix: f64,
    mix_d: f64,
    mix_e: f64,
    mix_dd: f64,
    mix_de: f64,
    mix_ee: f64,
}

/// Sums of the log-likelihood and its gradient and Hessian (upper triangle) over rows
/// `from..to` and the groups that start there; `shifted` is [`RfmGroups::shifted_times`] at α.
fn bg_family_rows(
    p: &[f64; 4],
    g: &RfmGroups,
    shifted: &[(f64, f64)],
    s: f64,
    mix_without_repeats: bool,
    from: usize,
    to: usize,
) -> NaturalDerivatives<4> {
    let [r, alpha, a, b] = *p;
    let (psi_r, tri_r) = digamma_trigamma(r);
    let (psi_b, tri_b) = digamma_trigamma(b);
    let (psi_ab, tri_ab) = digamma_trigamma(a + b);
    let ln_alpha = alpha.ln();
    let (lg_r, lg_b, lg_ab) = (ln_gamma(r), ln_gamma(b), ln_gamma(a + b));
    let mut ll = 0.0;
    let mut grad = [0.0; 4];
    // Upper triangle, (r, α, a, b) = (0, 1, 2, 3).
    let mut hess = [[0.0; 4]; 4];
    for (k, lo, hi, starts) in clip_groups(&g.bounds, from, to) {
        let x = g.frequency[k];
        let rx = r + x;
        if starts {
            let gw = g.group_weight[k];
            let (psi_abx, tri_abx) = digamma_trigamma(a + b + x + s);
            let (psi_bx, tri_bx) = digamma_trigamma(b + x + s);
            let (psi_rx, tri_rx) = digamma_trigamma(rx);
            ll += gw
                * (ln_gamma(rx) - lg_r + r * ln_alpha + lg_ab + ln_gamma(b + x + s)
                    - lg_b
                    - ln_gamma(a + b + x + s));
            grad[0] += gw * (psi_rx - psi_r + ln_alpha);
            grad[1] += gw * r / alpha;
            grad[2] += gw * (psi_ab - psi_abx);
            grad[3] += gw * (psi_ab + psi_bx - psi_b - psi_abx);
            hess[0][0] += gw * (tri_rx - tri_r);
            hess[0][1] += gw / alpha;
            hess[1][1] -= gw * r / (alpha * alpha);
            hess[2][2] += gw * (tri_ab - tri_abx);
            hess[2][3] += gw * (tri_ab - tri_abx);
            hess[3][3] += gw * (tri_ab + tri_bx - tri_b - tri_abx);
        }
        if x > 0.0 || mix_without_repeats {
            let bx = b + x.max(1.0 - s) + s - 1.0;
            let c4 = a.ln() - bx.ln();
            let (inv_a, inv_bx) = (1.0 / a, 1.0 / bx);
            // Per customer, ∇ℓ₃ = (−ln(α+T), −(r+x)/(α+T), 0, 0) and ∇ℓ₄ = (−ln(α+t_x),
            // −(r+x)/(α+t_x), 1/a, −1/bx): the last two components and the factor r+x are the
            // group's, so the loop sums only what varies by customer and the group's constants
            // multiply the sums afterwards (a third fewer operations a row).
            let mut sum = GroupSums::default();
            for i in lo..hi {
                let w = g.weight[i];
                // ln(α+T), 1/(α+T) and the same of α+t_x.
                let (ln_at, inv_at) = shifted[g.t_at[i] as usize];
                let (ln_ar, inv_ar) = shifted[g.recency_at[i] as usize];
                let l3 = -rx * ln_at;
                let l4 = c4 - rx * ln_ar;
                // ln(e^{ℓ₃} + e^{ℓ₄}) and π = e^{ℓ₄} / (e^{ℓ₃} + e^{ℓ₄}) from one exponential
                // of the smaller minus the larger (no overflow).
                let smaller = (-(l3 - l4).abs()).exp();
                let (larger, pi) = if l4 >= l3 {
                    (l4, 1.0 / (1.0 + smaller))
                } else {
                    (l3, smaller / (1.0 + smaller))
                };
                let q = 1.0 - pi;
                // ln(1 + e) to an absolute 2⁻⁵², which is all a sum of log-likelihoods keeps
                // (see `log_add_exp`), at a fifth of log1p's cost.
                sum.ll += w * (larger + (1.0 + smaller).ln());
                sum.w_ln += w * (q * ln_at + pi * ln_ar);
                sum.w_inv += w * (q * inv_at + pi * inv_ar);
                sum.w_inv2 += w * (q * inv_at * inv_at + pi * inv_ar * inv_ar);
                sum.w_pi += w * pi;
                // The mixing term π(1−π)(∇ℓ₄−∇ℓ₃)(∇ℓ₄−∇ℓ₃)ᵀ, with ∇ℓ₄−∇ℓ₃ = (d, (r+x)e, 1/a, −1/bx).
                let mix = w * pi * q;
                let (d, e) = (ln_at - ln_ar, inv_at - inv_ar);
                sum.mix += mix;
                sum.mix_d += mix * d;
                sum.mix_e += mix * e;
                sum.mix_dd += mix * d * d;
                sum.mix_de += mix * d * e;
                sum.mix_ee += mix * e * e;
            }
            ll += sum.ll;
            grad[0] -= sum.w_ln;
            grad[1] -= rx * sum.w_inv;
            grad[2] += inv_a * sum.w_pi;
            grad[3] -= inv_bx * sum.w_pi;
            hess[0][0] += sum.mix_dd;
            hess[0][1] += rx * sum.mix_de - sum.w_inv;
            hess[0][2] += inv_a * sum.mix_d;
            hess[0][3] -= inv_bx * sum.mix_d;
            hess[1][1] += rx * rx * sum.mix_ee + rx * sum.w_inv2;
            hess[1][2] += rx * inv_a * sum.mix_e;
            hess[1][3] -= rx * inv_bx * sum.mix_e;
            hess[2][2] += inv_a * inv_a * (sum.mix - sum.w_pi);
            hess[2][3] -= inv_a * inv_bx * sum.mix;
            hess[3][3] += inv_bx * inv_bx * (sum.mix + sum.w_pi);
        } else {
            for i in lo..hi {
                let w = g.weight[i];
                let (ln_at, inv_at) = shifted[g.t_at[i] as usize];
                ll -= w * rx * ln_at;
                grad[0] -= w * ln_at;
                grad[1] -= w * rx * inv_at;
                hess[0][1] -= w * inv_at;
                hess[1][1] += w * rx * inv_at * inv_at;
            }
        }
    }
    (ll, grad, hess)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::Rfm;

    /// A pass split into ranges (as threads split it, cutting frequency groups anywhere) sums
    /// to the pass over everything: per-group terms counted once, per-customer sums folded per
    /// piece.
    #[test]
    fn derivative_passes_split_anywhere_add_up() {
        let data: Vec<Rfm> = (0..40u32)
            .map(|i| {
                let x = f64::from(i % 4);
                let t = 20.0 + f64::from(i % 7);
                let recency = if x == 0.0 {
                    0.0
                } else {
                    t * f64::from(i % 5) / 5.0
                };
                Rfm::new(x, recency, t)
            })
            .collect();
        let g = RfmGroups::new(&data, None);
        let p = [0.7, 4.0, 0.9, 2.5];
        let shifted = g.shifted_times(p[1]);
        let n = g.recency.len();
        for (s, mix) in [(0.0, false), (1.0, true)] {
            let (ll, grad, hess) = bg_family_rows(&p, &g, &shifted, s, mix, 0, n);
            for cut in [1, n / 3, n / 2, n - 1] {
                let (ll_split, grad_split, hess_split) = crate::data::add_derivatives(
                    bg_family_rows(&p, &g, &shifted, s, mix, 0, cut),
                    bg_family_rows(&p, &g, &shifted, s, mix, cut, n),
                );
                let close = |a: f64, b: f64| (a - b).abs() <= 1e-12 * a.abs().max(1.0);
                assert!(close(ll, ll_split), "ll at cut {cut}: {ll} vs {ll_split}");
                for i in 0..4 {
                    assert!(close(grad[i], grad_split[i]), "grad {i} at cut {cut}");
                    for j in i..4 {
                        assert!(
                            close(hess[i][j], hess_split[i][j]),
                            "hess {i},{j} at cut {cut}"
                        );
                    }
                }
            }
        }
    }
}
