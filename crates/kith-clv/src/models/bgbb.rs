//! BG/BB (Fader, Hardie & Shang 2010), the discrete-time analogue of the BG/NBD: at each of n
//! transaction opportunities an active customer transacts with probability p ~ Beta(α, β), and
//! becomes inactive before the next opportunity with probability θ ~ Beta(γ, δ).

use serde::{Deserialize, Serialize};

use crate::data::{BgBbRecord, check_weights};
use crate::error::{FitError, NumericError};
use crate::fit::{FitOptions, Fitted, ParamVector, fit_model};
use crate::models::finite;
use crate::special::{digamma, ln_gamma, log_add_exp};
use statrs::function::beta::ln_beta;

/// BG/BB parameters.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct BgBb {
    /// First shape of the transaction-probability beta distribution.
    pub alpha: f64,
    /// Second shape of the transaction-probability beta distribution.
    pub beta: f64,
    /// First shape of the dropout-probability beta distribution.
    pub gamma: f64,
    /// Second shape of the dropout-probability beta distribution.
    pub delta: f64,
}

impl ParamVector<4> for BgBb {
    const NAMES: [&'static str; 4] = ["alpha", "beta", "gamma", "delta"];
    fn to_array(&self) -> [f64; 4] {
        [self.alpha, self.beta, self.gamma, self.delta]
    }
    fn from_array(v: [f64; 4]) -> Self {
        BgBb {
            alpha: v[0],
            beta: v[1],
            gamma: v[2],
            delta: v[3],
        }
    }
}

/// ln L for (x, t_x, n) given ln B(α,β) and ln B(γ,δ):
/// L = B(α+x, β+n−x)/B(α,β) · B(γ, δ+n)/B(γ,δ)
///   + Σ_{i=0}^{n−t_x−1} B(α+x, β+t_x−x+i)/B(α,β) · B(γ+1, δ+t_x+i)/B(γ,δ).
fn ln_lik(p: &BgBb, lb_ab: f64, lb_gd: f64, rec: &BgBbRecord) -> f64 {
    let BgBb {
        alpha,
        beta,
        gamma,
        delta,
    } = *p;
    let x = rec.frequency as f64;
    let tx = rec.recency as f64;
    let n = rec.n_periods as f64;
    let mut acc = ln_beta(alpha + x, beta + n - x) - lb_ab + ln_beta(gamma, delta + n) - lb_gd;
    for i in 0..rec.n_periods.saturating_sub(rec.recency) {
        let i = i as f64;
        let term = ln_beta(alpha + x, beta + tx - x + i) - lb_ab
            + ln_beta(gamma + 1.0, delta + tx + i)
            - lb_gd;
        acc = log_add_exp(acc, term);
    }
    acc
}

fn validate(
    records: &[BgBbRecord],
    weights: Option<&[f64]>,
    min_repeat: usize,
) -> Result<(), FitError> {
    check_weights(records.len(), weights)?;
    let mut total = 0.0;
    let mut repeat = 0;
    for (row, r) in records.iter().enumerate() {
        let bad = |reason: &str| FitError::InvalidData {
            row,
            reason: reason.to_string(),
        };
        if r.recency > r.n_periods {
            return Err(bad("recency exceeds the number of periods"));
        }
        if r.frequency > r.recency {
            return Err(bad("frequency exceeds recency"));
        }
        if r.frequency == 0 && r.recency != 0 {
            return Err(bad("non-zero recency with zero frequency"));
        }
        let w = weights.map_or(1.0, |w| w[row]);
        total += w;
        if r.frequency > 0 && w > 0.0 {
            repeat += 1;
        }
    }
    if records.is_empty() || total <= 0.0 {
        return Err(FitError::EmptyInput);
    }
    if repeat < min_repeat {
        return Err(FitError::TooFewRepeatCustomers {
            found: repeat,
            required: min_repeat,
        });
    }
    Ok(())
}

impl BgBb {
    /// Fits the model on one record per customer.
    pub fn fit(
        records: &[BgBbRecord],
        options: &FitOptions<BgBb>,
    ) -> Result<Fitted<BgBb>, FitError> {
        Self::fit_impl(records, None, options)
    }

    /// Fits on records with counts (the usual "recency/frequency pattern × number of
    /// customers" table, as in the donations data).
    pub fn fit_weighted(
        records: &[BgBbRecord],
        weights: &[f64],
        options: &FitOptions<BgBb>,
    ) -> Result<Fitted<BgBb>, FitError> {
        Self::fit_impl(records, Some(weights), options)
    }

    fn fit_impl(
        records: &[BgBbRecord],
        weights: Option<&[f64]>,
        options: &FitOptions<BgBb>,
    ) -> Result<Fitted<BgBb>, FitError> {
        validate(records, weights, options.min_repeat_customers)?;
        // Identical patterns are merged, so the likelihood runs once per distinct pattern.
        let mut rows: Vec<(BgBbRecord, f64)> = records
            .iter()
            .enumerate()
            .map(|(i, r)| (*r, weights.map_or(1.0, |w| w[i])))
            .filter(|(_, w)| *w > 0.0)
            .collect();
        rows.sort_by_key(|(r, _)| (r.frequency, r.recency, r.n_periods));
        let mut merged: Vec<(BgBbRecord, f64)> = Vec::with_capacity(rows.len());
        for (r, w) in rows {
            match merged.last_mut() {
                Some((last, lw)) if *last == r => *lw += w,
                _ => merged.push((r, w)),
            }
        }
        let total: f64 = merged.iter().map(|(_, w)| w).sum();
        let nll = |v: &[f64; 4]| {
            let p = BgBb::from_array(*v);
            let lb_ab = ln_beta(p.alpha, p.beta);
            let lb_gd = ln_beta(p.gamma, p.delta);
            let s: f64 = merged
                .iter()
                .map(|(r, w)| w * ln_lik(&p, lb_ab, lb_gd, r))
                .sum();
            -s / total
        };
        fit_model(nll, total, [1.0; 4], options)
    }

    /// Log-likelihood of one record.
    pub fn record_log_likelihood(&self, rec: &BgBbRecord) -> f64 {
        ln_lik(
            self,
            ln_beta(self.alpha, self.beta),
            ln_beta(self.gamma, self.delta),
            rec,
        )
    }

    /// Total log-likelihood (optionally weighted).
    pub fn log_likelihood(
        &self,
        records: &[BgBbRecord],
        weights: Option<&[f64]>,
    ) -> Result<f64, NumericError> {
        let ll: f64 = records
            .iter()
            .enumerate()
            .map(|(i, r)| weights.map_or(1.0, |w| w[i]) * self.record_log_likelihood(r))
            .sum();
        finite(ll, "bg/bb log-likelihood")
    }

    /// Expected transactions in the next `m_periods` opportunities given the history
    /// (`lifetimes`' `conditional_expected_number_of_purchases_up_to_time`):
    /// B(α+x+1, β+n−x)/B(α,β) · δ/(γ−1) · Γ(γ+δ)/Γ(1+δ)
    /// · [Γ(1+δ+n)/Γ(γ+δ+n) − Γ(1+δ+n+m)/Γ(γ+δ+n+m)] / L.
    pub fn conditional_expected_purchases(
        &self,
        m_periods: u32,
        rec: &BgBbRecord,
    ) -> Result<f64, NumericError> {
        let BgBb {
            alpha,
            beta,
            gamma,
            delta,
        } = *self;
        let x = rec.frequency as f64;
        let n = rec.n_periods as f64;
        let m = m_periods as f64;
        let ll = self.record_log_likelihood(rec);
        let ln_p2 = ln_beta(alpha + x + 1.0, beta + n - x) - ln_beta(alpha, beta);
        let l4 = ln_gamma(1.0 + delta + n) - ln_gamma(gamma + delta + n);
        let l5 = ln_gamma(1.0 + delta + n + m) - ln_gamma(gamma + delta + n + m);
        // δ/(γ−1) · (e^{l4} − e^{l5}) = δ e^{l4} · (1 − e^{l5−l4})/(γ−1), with the γ → 1 limit.
        let gm1 = gamma - 1.0;
        let ratio = if gm1.abs() < 1e-9 {
            digamma(1.0 + delta + n + m) - digamma(1.0 + delta + n)
        } else {
            -(l5 - l4).exp_m1() / gm1
        };
        let ln_rest = -ll + ln_p2 + ln_gamma(gamma + delta) - ln_gamma(1.0 + delta) + l4;
        finite(
            delta * ratio * ln_rest.exp(),
            "bg/bb conditional expectation",
        )
    }

    /// Probability of being active at opportunity n + `m_periods_in_future` (0: at n) given
    /// the history: B(α+x, β+n−x)/B(α,β) · B(γ, δ+n+m)/B(γ,δ) / L.
    pub fn probability_alive(
        &self,
        m_periods_in_future: u32,
        rec: &BgBbRecord,
    ) -> Result<f64, NumericError> {
        let BgBb {
            alpha,
            beta,
            gamma,
            delta,
        } = *self;
        let x = rec.frequency as f64;
        let n = rec.n_periods as f64;
        let m = m_periods_in_future as f64;
        let l = ln_beta(alpha + x, beta + n - x) - ln_beta(alpha, beta)
            + ln_beta(gamma, delta + n + m)
            - ln_beta(gamma, delta)
            - self.record_log_likelihood(rec);
        finite(l.exp(), "bg/bb probability alive")
    }

    /// Expected transactions of a new customer in the first `n` opportunities:
    /// α/(α+β) · δ/(γ−1) · [1 − Γ(γ+δ)Γ(1+δ+n) / (Γ(γ+δ+n)Γ(1+δ))].
    pub fn expected_purchases(&self, n: u32) -> Result<f64, NumericError> {
        let BgBb {
            alpha,
            beta,
            gamma,
            delta,
        } = *self;
        let n = n as f64;
        let gm1 = gamma - 1.0;
        let l = ln_gamma(gamma + delta) + ln_gamma(1.0 + delta + n)
            - ln_gamma(gamma + delta + n)
            - ln_gamma(1.0 + delta);
        let ratio = if gm1.abs() < 1e-9 {
            digamma(1.0 + delta + n) - digamma(1.0 + delta)
        } else {
            -l.exp_m1() / gm1
        };
        finite(
            alpha / (alpha + beta) * delta * ratio,
            "bg/bb expected purchases",
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: BgBb = BgBb {
        alpha: 1.204,
        beta: 0.750,
        gamma: 0.657,
        delta: 2.783,
    };

    #[test]
    fn unconditional_expectation_matches_direct_sum() {
        // E[X(n)] = E[p] Σ_{i=1..n} P(alive at i) = α/(α+β) Σ B(γ, δ+i)/B(γ, δ).
        for n in [1u32, 5, 11, 30] {
            let direct: f64 = (1..=n)
                .map(|i| (ln_beta(P.gamma, P.delta + i as f64) - ln_beta(P.gamma, P.delta)).exp())
                .sum::<f64>()
                * P.alpha
                / (P.alpha + P.beta);
            let got = P.expected_purchases(n).unwrap();
            assert!((got - direct).abs() < 1e-12 * direct, "n={n}");
        }
        let one = BgBb { gamma: 1.0, ..P };
        let near = BgBb {
            gamma: 1.0 + 1e-7,
            ..P
        };
        let (a, b) = (
            one.expected_purchases(6).unwrap(),
            near.expected_purchases(6).unwrap(),
        );
        assert!((a - b).abs() < 1e-6 * a);
    }

    #[test]
    fn likelihood_sums_to_one_over_patterns() {
        // Over all (x, t_x) patterns for n = 4 the probabilities sum to one.
        let n = 4;
        let mut total = 0.0;
        total += P.record_log_likelihood(&BgBbRecord::new(0, 0, n)).exp();
        for tx in 1..=n {
            for x in 1..=tx {
                // Number of sequences with x transactions, the last at t_x: C(t_x − 1, x − 1).
                let ways = (1..x).fold(1.0, |acc, k| acc * (tx - k) as f64 / k as f64);
                total += ways * P.record_log_likelihood(&BgBbRecord::new(x, tx, n)).exp();
            }
        }
        assert!((total - 1.0).abs() < 1e-12, "{total}");
    }
}
