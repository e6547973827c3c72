//! Pareto/NBD (Schmittlein, Morrison & Colombo 1987): Poisson purchasing with rate
//! λ ~ Gamma(r, α) and an exponential lifetime with rate μ ~ Gamma(s, β).
//!
//! The likelihood involves A₀, a difference of two ₂F₁ terms. It is evaluated in the form
//! `lifetimes` uses (Fader & Hardie's note on the Pareto/NBD): the hypergeometric argument is
//! |α−β| / (max(α,β) + t), which lies in [0, 1), with the second parameter r+x when α < β and
//! s+1 otherwise, and the difference is taken in log space.

use serde::{Deserialize, Serialize};

use crate::data::{Rfm, RfmGroups};
use crate::error::{FitError, NumericError};
use crate::fit::{FitOptions, Fitted, ParamVector, fit_model, warm_start};
use crate::hyp2f1::{LANES, horner_lanes, ln_hyp2f1};
use crate::models::{TransactionModel, check_horizon, finite, inv_one_plus_exp};
use crate::special::{ln_gamma, log_add_exp, log1m_exp};

/// Pareto/NBD parameters.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ParetoNbd {
    /// Shape of the purchase-rate gamma distribution.
    pub r: f64,
    /// Rate of the purchase-rate gamma distribution.
    pub alpha: f64,
    /// Shape of the dropout-rate gamma distribution.
    pub s: f64,
    /// Rate of the dropout-rate gamma distribution.
    pub beta: f64,
}

impl ParamVector<4> for ParetoNbd {
    const NAMES: [&'static str; 4] = ["r", "alpha", "s", "beta"];
    fn to_array(&self) -> [f64; 4] {
        [self.r, self.alpha, self.s, self.beta]
    }
    fn from_array(v: [f64; 4]) -> Self {
        ParetoNbd {
            r: v[0],
            alpha: v[1],
            s: v[2],
            beta: v[3],
        }
    }
}

/// ln A₀ for one customer; −∞ when t_x = T (the two terms coincide).
fn ln_a0(p: &ParetoNbd, x: f64, t_x: f64, big_t: f64) -> Result<f64, NumericError> {
    let ParetoNbd { r, alpha, s, beta } = *p;
    // Branch on α vs β so that the argument is non-negative and below one.
    let (min_ab, max_ab, second) = if alpha < beta {
        (alpha, beta, r + x)
    } else {
        (beta, alpha, s + 1.0)
    };
    let d = max_ab - min_ab;
    let rsx = r + s + x;
    let q1 = max_ab + t_x;
    let q2 = max_ab + big_t;
    let l1 = ln_hyp2f1(rsx, second, rsx + 1.0, d / q1)? - rsx * q1.ln();
    let l2 = ln_hyp2f1(rsx, second, rsx + 1.0, d / q2)? - rsx * q2.ln();
    if l2 >= l1 {
        return Ok(f64::NEG_INFINITY);
    }
    Ok(l1 + log1m_exp(l2 - l1))
}

/// ln L − (terms depending only on x), i.e. A₂ of the likelihood.
fn ln_a2(p: &ParetoNbd, x: f64, t_x: f64, big_t: f64) -> Result<f64, NumericError> {
    let ParetoNbd { r, alpha, s, beta } = *p;
    let alive = -(r + x) * (alpha + big_t).ln() - s * (beta + big_t).ln();
    let a0 = ln_a0(p, x, t_x, big_t)?;
    Ok(log_add_exp(alive, s.ln() + a0 - (r + s + x).ln()))
}

/// Grouped data plus, per frequency group, the distinct time values (recencies and ages)
/// its customers use: the hypergeometric term of A₀ depends on the customer only through
/// (x, time), so it is evaluated once per distinct pair rather than twice per customer.
struct ParetoData {
    g: RfmGroups,
    /// Per group: range into `times`.
    time_bounds: Vec<(usize, usize)>,
    /// Distinct time values per group, ascending.
    times: Vec<f64>,
    /// Per row: positions of its recency and of its T in `times`.
    recency_at: Vec<usize>,
    t_at: Vec<usize>,
    /// Per distinct time: [ln F/q^{r+s+x}, ln(α+t), ln(β+t)] for the current parameters.
    scratch: std::cell::RefCell<Vec<[f64; 3]>>,
    /// Series coefficients shared by a group (see `mean_nll`).
    coefficients: std::cell::RefCell<Vec<f64>>,
}

/// Largest argument for which the shared-coefficient series is used; above it the general
/// 2F1 (with its transformations) takes over.
const SHARED_SERIES_MAX_Z: f64 = 0.95;

impl ParetoData {
    fn new(g: RfmGroups) -> Self {
        let mut time_bounds = Vec::with_capacity(g.frequency.len());
        let mut times = Vec::new();
        let mut recency_at = vec![0; g.t.len()];
        let mut t_at = vec![0; g.t.len()];
        for &(lo, hi) in &g.bounds {
            let start = times.len();
            let mut local: Vec<f64> = g.recency[lo..hi]
                .iter()
                .chain(&g.t[lo..hi])
                .copied()
                .collect();
            local.sort_by(f64::total_cmp);
            local.dedup();
            times.extend_from_slice(&local);
            for i in lo..hi {
                // Present by construction, so the search always succeeds.
                recency_at[i] = start + local.partition_point(|v| *v < g.recency[i]);
                t_at[i] = start + local.partition_point(|v| *v < g.t[i]);
            }
            time_bounds.push((start, times.len()));
        }
        let scratch = std::cell::RefCell::new(vec![[0.0; 3]; times.len()]);
        ParetoData {
            g,
            time_bounds,
            times,
            recency_at,
            t_at,
            scratch,
            coefficients: std::cell::RefCell::new(Vec::with_capacity(1024)),
        }
    }

    fn mean_nll(&self, v: &[f64; 4]) -> f64 {
        let p = ParetoNbd::from_array(*v);
        let ParetoNbd { r, alpha, s, beta } = p;
        let (min_ab, max_ab, branch_s) = if alpha < beta {
            (alpha, beta, false)
        } else {
            (beta, alpha, true)
        };
        let d = max_ab - min_ab;
        let ln_s = s.ln();
        let base = -ln_gamma(r) + r * alpha.ln() + s * beta.ln();
        let g = &self.g;
        let mut scratch = self.scratch.borrow_mut();
        let mut coef = self.coefficients.borrow_mut();
        let mut total = 0.0;
        for (k, &x) in g.frequency.iter().enumerate() {
            let rsx = r + s + x;
            let second = if branch_s { s + 1.0 } else { r + x };
            let (tlo, thi) = self.time_bounds[k];
            // Within a group every A₀ term is 2F1(r+s+x, b; r+s+x+1; z) with only z varying.
            // After Euler's transformation it is (1−z)^{1−b} Σ cₙ zⁿ with
            // cₙ = Π_{k<n} (c−b+k)/(c+k) (c = r+s+x+1), coefficients that do not depend on z
            // and never exceed one, so they are computed once per group and each time value
            // costs a polynomial evaluation. Also 1−z = (min+t)/(max+t) and q = max+t, so the
            // logarithms of α+t and β+t are all the transcendental work per time value.
            let z_max = if thi > tlo {
                d / (max_ab + self.times[tlo])
            } else {
                0.0
            };
            let shared = z_max <= SHARED_SERIES_MAX_Z;
            if shared {
                let c = rsx + 1.0;
                let cb = c - second;
                coef.clear();
                let (mut cn, mut zn, mut n) = (1.0f64, 1.0f64, 0.0f64);
                // Stop once the remaining tail is below 1e-17 of the sum (which is ≥ 1).
                while cn * zn > 1e-17 * (1.0 - z_max) && coef.len() < 4096 {
                    coef.push(cn);
                    cn *= (cb + n) / (c + n);
                    zn *= z_max;
                    n += 1.0;
                }
            }
            // The series at several time values at once: one Horner chain is bound by the latency
            // of each multiply-add, independent ones keep the core busy (a third of the
            // fit's time went here).
            let mut series = [0.0f64; LANES];
            for j in tlo..thi {
                let t = self.times[j];
                let (la, lb) = ((alpha + t).ln(), (beta + t).ln());
                let (ln_max, ln_min) = if branch_s { (la, lb) } else { (lb, la) };
                let z = d / (max_ab + t);
                let lf = if shared {
                    let lane = (j - tlo) % LANES;
                    if lane == 0 {
                        let z_at = |k: usize| {
                            self.times
                                .get(j + k)
                                .filter(|_| j + k < thi)
                                .map_or(0.0, |t| d / (max_ab + t))
                        };
                        series = horner_lanes(&coef, std::array::from_fn(z_at));
                    }
                    (1.0 - second) * (ln_min - ln_max) + series[lane].ln()
                } else {
                    match ln_hyp2f1(rsx, second, rsx + 1.0, z) {
                        Ok(v) => v,
                        Err(_) => return f64::INFINITY,
                    }
                };
                scratch[j] = [lf - rsx * ln_max, la, lb];
            }
            let a1 = ln_gamma(r + x) + base;
            let ln_s_over = ln_s - rsx.ln();
            let (lo, hi) = g.bounds[k];
            let mut sum = 0.0;
            for i in lo..hi {
                let [l1, _, _] = scratch[self.recency_at[i]];
                let [l2, ln_at, ln_bt] = scratch[self.t_at[i]];
                let alive = -(r + x) * ln_at - s * ln_bt;
                sum += g.weight[i] * ln_alive_plus_a0(alive, ln_s_over + l1, l2 - l1);
            }
            total += sum + a1 * g.group_weight[k];
        }
        -total / g.total_weight
    }
}

/// ln(e^alive + e^c·(1 − e^d)) for d = ln A₀'s two terms' difference (d < 0; d ≥ 0 means the
/// A₀ term vanishes). The same value as `log_add_exp(alive, c + log1m_exp(d))` with one
/// logarithm instead of two: this runs for every customer row at every evaluation of the
/// likelihood, where the two logarithms were a third of the fit's time.
fn ln_alive_plus_a0(alive: f64, c: f64, d: f64) -> f64 {
    if d >= 0.0 || c == f64::NEG_INFINITY {
        return alive;
    }
    // 1 − e^d, without cancellation when d is near 0 (Mächler's switch at −ln 2).
    let one_minus = if d > -std::f64::consts::LN_2 {
        -d.exp_m1()
    } else {
        1.0 - d.exp()
    };
    if alive >= c {
        // ln(1 + y) as ln of the rounded sum: its absolute error stays within 2⁻⁵³ whatever y,
        // and an absolute error is all that matters added to `alive` (ln_1p costs twice as much).
        alive + (1.0 + (c - alive).exp() * one_minus).ln()
    } else {
        c + ((alive - c).exp() + one_minus).ln()
    }
}

impl ParetoNbd {
    /// Fits the model by maximum likelihood. See [`FitOptions`] for the objective.
    pub fn fit(
        data: &[Rfm],
        options: &FitOptions<ParetoNbd>,
    ) -> Result<Fitted<ParetoNbd>, FitError> {
        Self::fit_impl(data, None, options)
    }

    /// Fits with per-row weights (counts of identical customers).
    pub fn fit_weighted(
        data: &[Rfm],
        weights: &[f64],
        options: &FitOptions<ParetoNbd>,
    ) -> Result<Fitted<ParetoNbd>, FitError> {
        Self::fit_impl(data, Some(weights), options)
    }

    fn fit_impl(
        data: &[Rfm],
        weights: Option<&[f64]>,
        options: &FitOptions<ParetoNbd>,
    ) -> Result<Fitted<ParetoNbd>, FitError> {
        let g = RfmGroups::validated(data, weights, options.min_repeat_customers)?;
        let options = &warm_start(options, g.recency.len(), g.total_weight, |step, o| {
            Self::fit_groups(g.sample(step), o)
        });
        Self::fit_groups(g, options)
    }

    fn fit_groups(
        g: RfmGroups,
        options: &FitOptions<ParetoNbd>,
    ) -> Result<Fitted<ParetoNbd>, FitError> {
        let m = g.mean_t();
        let init = [1.0, m, 1.0, m];
        let total_weight = g.total_weight;
        let prepared = ParetoData::new(g);
        fit_model(|p| prepared.mean_nll(p), total_weight, init, options)
    }

    /// Log-likelihood of one customer.
    pub fn customer_log_likelihood(&self, c: &Rfm) -> Result<f64, NumericError> {
        let ParetoNbd { r, alpha, s, beta } = *self;
        let x = c.frequency;
        let a1 = ln_gamma(r + x) - ln_gamma(r) + r * alpha.ln() + s * beta.ln();
        finite(
            a1 + ln_a2(self, x, c.recency, c.t)?,
            "pareto/nbd log-likelihood",
        )
    }

    /// Total log-likelihood of a data set.
    pub fn log_likelihood(&self, data: &[Rfm]) -> Result<f64, NumericError> {
        let mut ll = 0.0;
        for c in data {
            ll += self.customer_log_likelihood(c)?;
        }
        finite(ll, "pareto/nbd log-likelihood")
    }

    /// Expected repeat purchases in (T, T+t] given the history:
    /// Γ(r+x) α^r β^s / (Γ(r) (α+T)^{r+x} (β+T)^s) / L · (r+x)(β+T)/((α+T)(s−1))
    /// · [1 − ((β+T)/(β+T+t))^{s−1}].
    pub fn conditional_expected_purchases(&self, t: f64, c: &Rfm) -> Result<f64, NumericError> {
        check_horizon(t)?;
        if t == 0.0 {
            return Ok(0.0);
        }
        let ParetoNbd { r, alpha, s, beta } = *self;
        let x = c.frequency;
        let big_t = c.t;
        let ll = self.customer_log_likelihood(c)?;
        let first = ln_gamma(r + x) - ln_gamma(r) + r * alpha.ln() + s * beta.ln()
            - (r + x) * (alpha + big_t).ln()
            - s * (beta + big_t).ln();
        let second = (r + x).ln() + (beta + big_t).ln() - (alpha + big_t).ln();
        // ln[(1 − u^{s−1})/(s−1)] with ln u = −ln(1 + t/(β+T)); the s → 1 limit is −ln u.
        let ln_u = -(t / (beta + big_t)).ln_1p();
        let sm1 = s - 1.0;
        let ratio = if sm1.abs() < 1e-12 {
            -ln_u
        } else {
            -(sm1 * ln_u).exp_m1() / sm1
        };
        finite(
            (first + second + ratio.ln() - ll).exp(),
            "pareto/nbd conditional expectation",
        )
    }

    /// Probability the customer is still active at T:
    /// 1 / (1 + s/(r+s+x) · (α+T)^{r+x} (β+T)^s A₀).
    pub fn probability_alive(&self, c: &Rfm) -> Result<f64, NumericError> {
        let ParetoNbd { r, alpha, s, beta } = *self;
        let x = c.frequency;
        let a0 = ln_a0(self, x, c.recency, c.t)?;
        let l =
            s.ln() - (r + s + x).ln() + (r + x) * (alpha + c.t).ln() + s * (beta + c.t).ln() + a0;
        finite(inv_one_plus_exp(l), "pareto/nbd probability alive")
    }

    /// Unconditional expected repeat purchases: rβ/(α(s−1)) · [1 − (β/(β+t))^{s−1}]
    /// (r β ln(1 + t/β) / α when s = 1).
    pub fn expected_purchases(&self, t: f64) -> Result<f64, NumericError> {
        check_horizon(t)?;
        let ParetoNbd { r, alpha, s, beta } = *self;
        let ln_u = -(t / beta).ln_1p();
        let sm1 = s - 1.0;
        let ratio = if sm1.abs() < 1e-12 {
            -ln_u
        } else {
            -(sm1 * ln_u).exp_m1() / sm1
        };
        finite(r * beta / alpha * ratio, "pareto/nbd expected purchases")
    }

    /// The expected population curve: E[X(t)] at each of `times`.
    pub fn expected_purchases_curve(&self, times: &[f64]) -> Result<Vec<f64>, NumericError> {
        times.iter().map(|&t| self.expected_purchases(t)).collect()
    }
}

impl TransactionModel for ParetoNbd {
    fn conditional_expected_purchases(&self, t: f64, customer: &Rfm) -> Result<f64, NumericError> {
        ParetoNbd::conditional_expected_purchases(self, t, customer)
    }
    fn expected_purchases(&self, t: f64) -> Result<f64, NumericError> {
        ParetoNbd::expected_purchases(self, t)
    }
    fn probability_alive(&self, customer: &Rfm) -> Result<f64, NumericError> {
        ParetoNbd::probability_alive(self, customer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: ParetoNbd = ParetoNbd {
        r: 0.553263224649565,
        alpha: 10.577426245610152,
        s: 0.6062205622810606,
        beta: 11.668339187378475,
    };

    #[test]
    fn one_logarithm_gives_what_the_two_logarithm_formula_gives() {
        use crate::special::{log_add_exp, log1m_exp};
        for alive in [-300.0, -40.0, -5.0, -0.3, 0.0, 2.0] {
            for c in [-310.0, -45.0, -5.0, -0.2, 0.0, 3.0] {
                for d in [-800.0, -30.0, -2.0, -0.7, -0.69, -1e-3, -1e-9, -1e-15] {
                    let two_logs = log_add_exp(alive, c + log1m_exp(d));
                    let one_log = ln_alive_plus_a0(alive, c, d);
                    let tolerance = 1e-13 * two_logs.abs().max(1.0);
                    assert!(
                        (one_log - two_logs).abs() <= tolerance,
                        "alive {alive} c {c} d {d}: {one_log} vs {two_logs}"
                    );
                }
                // d ≥ 0: the A₀ term is empty.
                assert_eq!(ln_alive_plus_a0(alive, c, 0.0), alive);
                assert_eq!(ln_alive_plus_a0(alive, c, 0.5), alive);
            }
        }
    }

    #[test]
    fn both_branches_of_a0_agree_with_alpha_equal_beta_limit() {
        // With α = β the hypergeometric terms vanish: A₀ = (α+t_x)^{−(r+s+x)} − (α+T)^{−(r+s+x)}.
        let p = ParetoNbd {
            alpha: 10.0,
            beta: 10.0,
            ..P
        };
        let (x, tx, t) = (3.0, 20.0, 38.0);
        let rsx = p.r + p.s + x;
        let exact = ((10.0f64 + tx).powf(-rsx) - (10.0f64 + t).powf(-rsx)).ln();
        assert!((ln_a0(&p, x, tx, t).unwrap() - exact).abs() < 1e-12);
        // Just above and below α = β the branches switch but the value is continuous.
        let up = ln_a0(
            &ParetoNbd {
                alpha: 10.0 + 1e-7,
                ..p
            },
            x,
            tx,
            t,
        )
        .unwrap();
        let down = ln_a0(
            &ParetoNbd {
                alpha: 10.0 - 1e-7,
                ..p
            },
            x,
            tx,
            t,
        )
        .unwrap();
        assert!((up - exact).abs() < 1e-6 && (down - exact).abs() < 1e-6);
    }

    #[test]
    fn grouped_likelihood_matches_per_customer_sum() {
        let data = [
            Rfm::new(0.0, 0.0, 38.86),
            Rfm::new(2.0, 30.43, 38.86),
            Rfm::new(2.0, 30.43, 38.86),
            Rfm::new(5.0, 38.0, 38.0),
        ];
        let g = RfmGroups::new(&data, None);
        let w = g.total_weight;
        let grouped = -ParetoData::new(g).mean_nll(&P.to_array()) * w;
        let direct = P.log_likelihood(&data).unwrap();
        assert!((grouped - direct).abs() < 1e-10 * direct.abs());
    }

    #[test]
    fn shared_series_matches_general_hypergeometric_in_all_regions() {
        let data: Vec<Rfm> = (0..60)
            .map(|i| {
                let x = (i % 12) as f64;
                let t = 5.0 + (i % 17) as f64 * 3.0;
                let tx = if x == 0.0 {
                    0.0
                } else {
                    t * ((i % 5) as f64 + 1.0) / 6.0
                };
                Rfm::new(x, tx, t)
            })
            .collect();
        for p in [
            P,
            ParetoNbd {
                alpha: 2.0,
                beta: 40.0,
                ..P
            }, // α < β, z up to 0.95
            ParetoNbd {
                alpha: 40.0,
                beta: 2.0,
                ..P
            }, // α > β
            ParetoNbd {
                alpha: 0.1,
                beta: 90.0,
                ..P
            }, // z close to 1: general path
            ParetoNbd {
                r: 3.0,
                s: 0.05,
                ..P
            },
        ] {
            let g = RfmGroups::new(&data, None);
            let w = g.total_weight;
            let grouped = -ParetoData::new(g).mean_nll(&p.to_array()) * w;
            let direct = p.log_likelihood(&data).unwrap();
            assert!(
                (grouped - direct).abs() < 1e-11 * direct.abs(),
                "{p:?}: {grouped} vs {direct}"
            );
        }
    }

    #[test]
    fn expected_purchases_limits() {
        assert_eq!(P.expected_purchases(0.0).unwrap(), 0.0);
        let near_one = ParetoNbd { s: 1.0, ..P };
        let slightly = ParetoNbd { s: 1.0 + 1e-9, ..P };
        let a = near_one.expected_purchases(39.0).unwrap();
        let b = slightly.expected_purchases(39.0).unwrap();
        assert!((a - b).abs() < 1e-7 * a);
    }
}
