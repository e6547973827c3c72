//! MBG/NBD (Batislam, Denizel & Filiztekin 2007): the BG/NBD with an extra dropout opportunity
//! right after the first purchase, so customers with no repeat purchase can also be inactive.

use serde::{Deserialize, Serialize};

use crate::data::{Rfm, RfmGroups, RowCost, clip_groups, split_sum};
use crate::error::{FitError, NumericError};
use crate::fit::{FitOptions, Fitted, ParamVector, fit_model_exact, warm_start};
use crate::hyp2f1::ln_hyp2f1;
use crate::models::{
    LiveExpectation, TransactionModel, bg_family_derivatives, check_horizon, finite,
    inv_one_plus_exp, ln_nb_pmf, nb_upper_tail,
};
use crate::special::{ln_gamma, log_add_exp};
use statrs::function::beta::ln_beta;

/// MBG/NBD parameters (same meaning as for [`crate::BgNbd`]).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ModifiedBgNbd {
    /// Shape of the purchase-rate gamma distribution.
    pub r: f64,
    /// Rate of the purchase-rate gamma distribution.
    pub alpha: f64,
    /// First shape of the dropout-probability beta distribution.
    pub a: f64,
    /// Second shape of the dropout-probability beta distribution.
    pub b: f64,
}

impl ParamVector<4> for ModifiedBgNbd {
    const NAMES: [&'static str; 4] = ["r", "alpha", "a", "b"];
    fn to_array(&self) -> [f64; 4] {
        [self.r, self.alpha, self.a, self.b]
    }
    fn from_array(v: [f64; 4]) -> Self {
        ModifiedBgNbd {
            r: v[0],
            alpha: v[1],
            a: v[2],
            b: v[3],
        }
    }
}

/// Mean negative log-likelihood:
/// ln L = ln Γ(r+x) − ln Γ(r) + r ln α + ln Γ(a+b) + ln Γ(b+x+1) − ln Γ(b) − ln Γ(a+b+x+1)
///        − (r+x) ln(α+T) + ln(1 + a/(b+x) · ((α+T)/(α+t_x))^{r+x}).
fn mean_nll(p: &[f64; 4], g: &RfmGroups) -> f64 {
    let shifted = g.shifted_times(p[1]);
    let total = split_sum(
        g.recency.len(),
        RowCost::Heavy,
        |lo, hi| ll_rows(p, g, &shifted, lo, hi),
        |a, b| a + b,
    );
    -total / g.total_weight
}

/// The weighted log-likelihood of rows `from..to` (and of the groups that start there);
/// `shifted` is [`RfmGroups::shifted_times`] at α.
fn ll_rows(p: &[f64; 4], g: &RfmGroups, shifted: &[(f64, f64)], from: usize, to: usize) -> f64 {
    let [r, alpha, a, b] = *p;
    let (lg_r, lg_b, lg_ab) = (ln_gamma(r), ln_gamma(b), ln_gamma(a + b));
    let (ln_alpha, ln_a) = (alpha.ln(), a.ln());
    let mut total = 0.0;
    for (k, lo, hi, starts) in clip_groups(&g.bounds, from, to) {
        let x = g.frequency[k];
        let rx = r + x;
        let a12 = if starts {
            ln_gamma(rx) - lg_r + r * ln_alpha + lg_ab + ln_gamma(b + x + 1.0)
                - lg_b
                - ln_gamma(a + b + x + 1.0)
        } else {
            0.0
        };
        let c4 = ln_a - (b + x).ln();
        let mut s = 0.0;
        for i in lo..hi {
            let ln_at = shifted[g.t_at[i] as usize].0;
            let a4 = c4 + rx * (ln_at - shifted[g.recency_at[i] as usize].0);
            s += g.weight[i] * (-rx * ln_at + log_add_exp(0.0, a4));
        }
        total += s + a12 * g.group_weight[k];
    }
    total
}

impl ModifiedBgNbd {
    /// Fits the model by maximum likelihood. See [`FitOptions`] for the objective.
    pub fn fit(
        data: &[Rfm],
        options: &FitOptions<ModifiedBgNbd>,
    ) -> Result<Fitted<ModifiedBgNbd>, FitError> {
        Self::fit_impl(data, None, options)
    }

    /// Fits with per-row weights (counts of identical customers).
    pub fn fit_weighted(
        data: &[Rfm],
        weights: &[f64],
        options: &FitOptions<ModifiedBgNbd>,
    ) -> Result<Fitted<ModifiedBgNbd>, FitError> {
        Self::fit_impl(data, Some(weights), options)
    }

    fn fit_impl(
        data: &[Rfm],
        weights: Option<&[f64]>,
        options: &FitOptions<ModifiedBgNbd>,
    ) -> Result<Fitted<ModifiedBgNbd>, FitError> {
        let g = RfmGroups::validated(data, weights, options.min_repeat_customers)?;
        let options = &warm_start(options, g.recency.len(), g.total_weight, |step, o| {
            Self::fit_groups(&g.sample(step), o)
        });
        Self::fit_groups(&g, options)
    }

    fn fit_groups(
        g: &RfmGroups,
        options: &FitOptions<ModifiedBgNbd>,
    ) -> Result<Fitted<ModifiedBgNbd>, FitError> {
        fit_model_exact(
            |p| mean_nll(p, g),
            |p| bg_family_derivatives(p, g, 1.0, true),
            g.total_weight,
            [1.0, g.mean_t(), 1.0, 1.0],
            options,
        )
    }

    /// Log-likelihood of one customer.
    pub fn customer_log_likelihood(&self, c: &Rfm) -> f64 {
        let ModifiedBgNbd { r, alpha, a, b } = *self;
        let x = c.frequency;
        let a12 = ln_gamma(r + x) - ln_gamma(r)
            + r * alpha.ln()
            + ln_gamma(a + b)
            + ln_gamma(b + x + 1.0)
            - ln_gamma(b)
            - ln_gamma(a + b + x + 1.0);
        let ln_at = (alpha + c.t).ln();
        let a4 = (a / (b + x)).ln() + (r + x) * (ln_at - (alpha + c.recency).ln());
        a12 - (r + x) * ln_at + log_add_exp(0.0, a4)
    }

    /// Total log-likelihood of a data set.
    pub fn log_likelihood(&self, data: &[Rfm]) -> Result<f64, NumericError> {
        let ll: f64 = data.iter().map(|c| self.customer_log_likelihood(c)).sum();
        finite(ll, "mbg/nbd log-likelihood")
    }

    /// Expected repeat purchases in (T, T+t] given the history:
    /// (a+b+x)/(a−1) · [1 − ((α+T)/(α+T+t))^{r+x} ₂F₁(r+x, b+x+1; a+b+x; t/(α+T+t))] · P(alive).
    pub fn conditional_expected_purchases(&self, t: f64, c: &Rfm) -> Result<f64, NumericError> {
        let if_alive = self.expected_purchases_if_alive(t, c.frequency, c.t)?;
        finite(
            if_alive * self.probability_alive(c),
            "mbg/nbd conditional expectation",
        )
    }

    /// The conditional expectation without its P(alive) factor:
    /// (a+b+x)/(a−1) · [1 − ((α+T)/(α+T+t))^{r+x} ₂F₁(r+x, b+x+1; a+b+x; t/(α+T+t))].
    pub fn expected_purchases_if_alive(
        &self,
        t: f64,
        x: f64,
        age: f64,
    ) -> Result<f64, NumericError> {
        self.live(x).at(t, age)
    }

    /// This model's terms of [`LiveExpectation`] for a customer with `x` repeat purchases.
    fn live(&self, x: f64) -> LiveExpectation {
        let ModifiedBgNbd { r, alpha, a, b } = *self;
        LiveExpectation {
            alpha,
            r_plus_x: r + x,
            b2: b + x + 1.0,
            c2: a + b + x,
            first: (a + b + x) / (a - 1.0),
        }
    }

    /// Probability the customer is still active at T:
    /// 1 / (1 + a/(b+x) · ((α+T)/(α+t_x))^{r+x}) (also below 1 when x = 0).
    pub fn probability_alive(&self, c: &Rfm) -> f64 {
        let ModifiedBgNbd { r, alpha, a, b } = *self;
        let x = c.frequency;
        let l = (a / (b + x)).ln() + (r + x) * ((alpha + c.t) / (alpha + c.recency)).ln();
        inv_one_plus_exp(l)
    }

    /// Unconditional expected repeat purchases:
    /// b/(a−1) · [1 − (α/(α+t))^r ₂F₁(r, b+1; a+b; t/(α+t))].
    pub fn expected_purchases(&self, t: f64) -> Result<f64, NumericError> {
        check_horizon(t)?;
        let ModifiedBgNbd { r, alpha, a, b } = *self;
        let ln_hyp = ln_hyp2f1(r, b + 1.0, a + b, t / (alpha + t))?;
        let inner = -(ln_hyp - r * (t / alpha).ln_1p()).exp_m1();
        finite(b / (a - 1.0) * inner, "mbg/nbd expected purchases")
    }

    /// The expected population curve: E[X(t)] at each of `times`.
    pub fn expected_purchases_curve(&self, times: &[f64]) -> Result<Vec<f64>, NumericError> {
        times.iter().map(|&t| self.expected_purchases(t)).collect()
    }

    /// Probability that a new customer makes exactly `n` repeat purchases in (0, t]: alive
    /// after n+1 dropout opportunities with n purchases, or dropped right after the n-th.
    pub fn probability_of_purchases(&self, n: u32, t: f64) -> Result<f64, NumericError> {
        check_horizon(t)?;
        let ModifiedBgNbd { r, alpha, a, b } = *self;
        let nf = n as f64;
        let ln_b_ab = ln_beta(a, b);
        let alive = (ln_beta(a, b + 1.0 + nf) - ln_b_ab + ln_nb_pmf(n, r, alpha, t)).exp();
        let dropped =
            (ln_beta(a + 1.0, b + nf) - ln_b_ab).exp() * nb_upper_tail(n, r, t / (alpha + t));
        finite(alive + dropped, "mbg/nbd purchase-count probability")
    }
}

impl TransactionModel for ModifiedBgNbd {
    fn conditional_expected_purchases(&self, t: f64, customer: &Rfm) -> Result<f64, NumericError> {
        ModifiedBgNbd::conditional_expected_purchases(self, t, customer)
    }
    fn expected_purchases(&self, t: f64) -> Result<f64, NumericError> {
        ModifiedBgNbd::expected_purchases(self, t)
    }
    fn probability_alive(&self, customer: &Rfm) -> Result<f64, NumericError> {
        Ok(ModifiedBgNbd::probability_alive(self, customer))
    }
    fn expected_purchases_if_alive(
        &self,
        t: f64,
        frequency: f64,
        age: f64,
    ) -> Option<Result<f64, NumericError>> {
        Some(ModifiedBgNbd::expected_purchases_if_alive(
            self, t, frequency, age,
        ))
    }

    fn expected_purchases_if_alive_at(
        &self,
        horizons: &[f64],
        frequency: f64,
        age: f64,
    ) -> Option<Result<Vec<f64>, NumericError>> {
        Some(self.live(frequency).at_horizons(horizons, age))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_derivatives_match_finite_differences() {
        let data = [
            Rfm::new(0.0, 0.0, 30.0),
            Rfm::new(0.0, 0.0, 12.5),
            Rfm::new(1.0, 3.0, 30.0),
            Rfm::new(2.0, 20.0, 28.0),
            Rfm::new(5.0, 25.5, 31.0),
            Rfm::new(11.0, 8.0, 9.0),
        ];
        let g = RfmGroups::new(&data, None);
        crate::fit::assert_derivatives_match(
            |p| mean_nll(p, &g),
            |p| bg_family_derivatives(p, &g, 1.0, true),
            [0.4, 3.5, 0.9, 2.2],
        );
    }

    const M: ModifiedBgNbd = ModifiedBgNbd {
        r: 0.5248377255677019,
        alpha: 6.182988479134203,
        a: 0.8913562809310627,
        b: 1.614000025671838,
    };

    #[test]
    fn grouped_likelihood_matches_per_customer_sum() {
        let data = [
            Rfm::new(0.0, 0.0, 38.86),
            Rfm::new(2.0, 30.43, 38.86),
            Rfm::new(2.0, 30.43, 38.86),
            Rfm::new(5.0, 20.0, 30.0),
        ];
        let g = RfmGroups::new(&data, None);
        let grouped = -mean_nll(&M.to_array(), &g) * g.total_weight;
        let direct = M.log_likelihood(&data).unwrap();
        assert!((grouped - direct).abs() < 1e-10 * direct.abs());
    }

    #[test]
    fn purchase_count_distribution_sums_to_one() {
        let total: f64 = (0..400)
            .map(|n| M.probability_of_purchases(n, 39.0).unwrap())
            .sum();
        assert!((total - 1.0).abs() < 1e-9, "{total}");
        let mean: f64 = (0..400)
            .map(|n| n as f64 * M.probability_of_purchases(n, 39.0).unwrap())
            .sum();
        let expect = M.expected_purchases(39.0).unwrap();
        assert!((mean - expect).abs() < 1e-8 * expect, "{mean} vs {expect}");
    }
}
