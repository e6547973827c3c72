//! BG/NBD (Fader, Hardie & Lee 2005): while active, a customer buys as a Poisson process with
//! rate λ ~ Gamma(r, α); after each repeat purchase they drop out with probability
//! p ~ Beta(a, b).

use serde::{Deserialize, Serialize};

use crate::data::{Rfm, RfmGroups, RowCost, clip_groups, split_sum};
use crate::error::{FitError, NumericError};
use crate::fit::{
    FitOptions, Fitted, NaturalDerivatives, ParamVector, fit_model_exact, warm_start,
};
use crate::hyp2f1::ln_hyp2f1;
use crate::models::{
    LiveExpectation, TransactionModel, bg_family_derivatives, check_horizon, finite,
    inv_one_plus_exp, ln_nb_pmf, nb_upper_tail,
};
use crate::special::{ln_gamma, log_add_exp};
use statrs::function::beta::ln_beta;

/// BG/NBD parameters.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct BgNbd {
    /// Shape of the purchase-rate gamma distribution.
    pub r: f64,
    /// Rate (inverse time scale) of the purchase-rate gamma distribution.
    pub alpha: f64,
    /// First shape of the dropout-probability beta distribution.
    pub a: f64,
    /// Second shape of the dropout-probability beta distribution.
    pub b: f64,
}

impl ParamVector<4> for BgNbd {
    const NAMES: [&'static str; 4] = ["r", "alpha", "a", "b"];
    fn to_array(&self) -> [f64; 4] {
        [self.r, self.alpha, self.a, self.b]
    }
    fn from_array(v: [f64; 4]) -> Self {
        BgNbd {
            r: v[0],
            alpha: v[1],
            a: v[2],
            b: v[3],
        }
    }
}

/// Mean negative log-likelihood over grouped data (no allocation).
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
        // Terms that depend on the customer only through x.
        let a12 = if starts {
            ln_gamma(rx) - lg_r + r * ln_alpha + lg_ab + ln_gamma(b + x)
                - lg_b
                - ln_gamma(a + b + x)
        } else {
            0.0
        };
        let mut s = 0.0;
        if x > 0.0 {
            let c4 = ln_a - (b + x.max(1.0) - 1.0).ln();
            for i in lo..hi {
                let a3 = -rx * shifted[g.t_at[i] as usize].0;
                let a4 = c4 - rx * shifted[g.recency_at[i] as usize].0;
                s += g.weight[i] * log_add_exp(a3, a4);
            }
        } else {
            for i in lo..hi {
                s += g.weight[i] * (-rx * shifted[g.t_at[i] as usize].0);
            }
        }
        total += s + a12 * g.group_weight[k];
    }
    total
}

/// Gradient and Hessian of [`mean_nll`] in (r, α, a, b).
fn mean_nll_derivatives(p: &[f64; 4], g: &RfmGroups) -> NaturalDerivatives<4> {
    bg_family_derivatives(p, g, 0.0, false)
}

impl BgNbd {
    /// Fits the model by maximum likelihood. See [`FitOptions`] for the objective.
    pub fn fit(data: &[Rfm], options: &FitOptions<BgNbd>) -> Result<Fitted<BgNbd>, FitError> {
        Self::fit_impl(data, None, options)
    }

    /// Fits with per-row weights (counts of identical customers).
    pub fn fit_weighted(
        data: &[Rfm],
        weights: &[f64],
        options: &FitOptions<BgNbd>,
    ) -> Result<Fitted<BgNbd>, FitError> {
        Self::fit_impl(data, Some(weights), options)
    }

    fn fit_impl(
        data: &[Rfm],
        weights: Option<&[f64]>,
        options: &FitOptions<BgNbd>,
    ) -> Result<Fitted<BgNbd>, FitError> {
        let g = RfmGroups::validated(data, weights, options.min_repeat_customers)?;
        let options = &warm_start(options, g.recency.len(), g.total_weight, |step, o| {
            Self::fit_groups(&g.sample(step), o)
        });
        Self::fit_groups(&g, options)
    }

    fn fit_groups(g: &RfmGroups, options: &FitOptions<BgNbd>) -> Result<Fitted<BgNbd>, FitError> {
        fit_model_exact(
            |p| mean_nll(p, g),
            |p| mean_nll_derivatives(p, g),
            g.total_weight,
            [1.0, g.mean_t(), 1.0, 1.0],
            options,
        )
    }

    /// Log-likelihood of one customer.
    pub fn customer_log_likelihood(&self, c: &Rfm) -> f64 {
        let BgNbd { r, alpha, a, b } = *self;
        let x = c.frequency;
        let a12 =
            ln_gamma(r + x) - ln_gamma(r) + r * alpha.ln() + ln_gamma(a + b) + ln_gamma(b + x)
                - ln_gamma(b)
                - ln_gamma(a + b + x);
        let a3 = -(r + x) * (alpha + c.t).ln();
        if x > 0.0 {
            let a4 = a.ln() - (b + x.max(1.0) - 1.0).ln() - (r + x) * (alpha + c.recency).ln();
            a12 + log_add_exp(a3, a4)
        } else {
            a12 + a3
        }
    }

    /// Total log-likelihood of a data set.
    pub fn log_likelihood(&self, data: &[Rfm]) -> Result<f64, NumericError> {
        let ll: f64 = data.iter().map(|c| self.customer_log_likelihood(c)).sum();
        finite(ll, "bg/nbd log-likelihood")
    }

    /// Expected repeat purchases in (T, T+t] given the history (`lifetimes`'
    /// `conditional_expected_number_of_purchases_up_to_time`):
    /// (a+b+x−1)/(a−1) · [1 − ((α+T)/(α+T+t))^{r+x} ₂F₁(r+x, b+x; a+b+x−1; t/(α+T+t))] · P(alive).
    pub fn conditional_expected_purchases(&self, t: f64, c: &Rfm) -> Result<f64, NumericError> {
        let if_alive = self.expected_purchases_if_alive(t, c.frequency, c.t)?;
        finite(
            if_alive * self.probability_alive(c),
            "bg/nbd conditional expectation",
        )
    }

    /// The conditional expectation without its P(alive) factor:
    /// (a+b+x−1)/(a−1) · [1 − ((α+T)/(α+T+t))^{r+x} ₂F₁(r+x, b+x; a+b+x−1; t/(α+T+t))].
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
        let BgNbd { r, alpha, a, b } = *self;
        LiveExpectation {
            alpha,
            r_plus_x: r + x,
            b2: b + x,
            c2: a + b + x - 1.0,
            first: (a + b + x - 1.0) / (a - 1.0),
        }
    }

    /// Probability the customer is still active at T: 1 for x = 0, otherwise
    /// 1 / (1 + a/(b+x−1) · ((α+T)/(α+t_x))^{r+x}).
    pub fn probability_alive(&self, c: &Rfm) -> f64 {
        let BgNbd { r, alpha, a, b } = *self;
        let x = c.frequency;
        if x == 0.0 {
            return 1.0;
        }
        let l = (a / (b + x.max(1.0) - 1.0)).ln()
            + (r + x) * ((alpha + c.t) / (alpha + c.recency)).ln();
        inv_one_plus_exp(l)
    }

    /// Unconditional expected repeat purchases E[X(t)] of a new customer:
    /// (a+b−1)/(a−1) · [1 − (α/(α+t))^r ₂F₁(r, b; a+b−1; t/(α+t))].
    pub fn expected_purchases(&self, t: f64) -> Result<f64, NumericError> {
        check_horizon(t)?;
        let BgNbd { r, alpha, a, b } = *self;
        let ln_hyp = ln_hyp2f1(r, b, a + b - 1.0, t / (alpha + t))?;
        let inner = -(ln_hyp - r * (t / alpha).ln_1p()).exp_m1();
        finite(
            (a + b - 1.0) / (a - 1.0) * inner,
            "bg/nbd expected purchases",
        )
    }

    /// The expected population curve: E[X(t)] at each of `times`.
    pub fn expected_purchases_curve(&self, times: &[f64]) -> Result<Vec<f64>, NumericError> {
        times.iter().map(|&t| self.expected_purchases(t)).collect()
    }

    /// Probability that a new customer makes exactly `n` repeat purchases in (0, t]
    /// (Fader, Hardie & Lee 2005, eq. 8).
    pub fn probability_of_purchases(&self, n: u32, t: f64) -> Result<f64, NumericError> {
        check_horizon(t)?;
        let BgNbd { r, alpha, a, b } = *self;
        let nf = n as f64;
        let ln_b_ab = ln_beta(a, b);
        let alive = (ln_beta(a, b + nf) - ln_b_ab + ln_nb_pmf(n, r, alpha, t)).exp();
        let dropped = if n > 0 {
            (ln_beta(a + 1.0, b + nf - 1.0) - ln_b_ab).exp() * nb_upper_tail(n, r, t / (alpha + t))
        } else {
            0.0
        };
        finite(alive + dropped, "bg/nbd purchase-count probability")
    }
}

impl TransactionModel for BgNbd {
    fn conditional_expected_purchases(&self, t: f64, customer: &Rfm) -> Result<f64, NumericError> {
        BgNbd::conditional_expected_purchases(self, t, customer)
    }
    fn expected_purchases(&self, t: f64) -> Result<f64, NumericError> {
        BgNbd::expected_purchases(self, t)
    }
    fn probability_alive(&self, customer: &Rfm) -> Result<f64, NumericError> {
        Ok(BgNbd::probability_alive(self, customer))
    }
    fn expected_purchases_if_alive(
        &self,
        t: f64,
        frequency: f64,
        age: f64,
    ) -> Option<Result<f64, NumericError>> {
        Some(BgNbd::expected_purchases_if_alive(self, t, frequency, age))
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
            |p| mean_nll_derivatives(p, &g),
            [0.4, 3.5, 0.9, 2.2],
        );
    }

    const CDNOW: BgNbd = BgNbd {
        r: 0.2425929074581534,
        alpha: 4.413531604328722,
        a: 0.792886156299813,
        b: 2.4257533770415174,
    };

    #[test]
    fn grouped_likelihood_matches_per_customer_sum() {
        let data = [
            Rfm::new(0.0, 0.0, 38.86),
            Rfm::new(2.0, 30.43, 38.86),
            Rfm::new(2.0, 30.43, 38.86),
            Rfm::new(7.0, 29.0, 32.0),
            Rfm::new(1.0, 1.71, 38.86),
        ];
        let g = RfmGroups::new(&data, None);
        let grouped = -mean_nll(&CDNOW.to_array(), &g) * g.total_weight;
        let direct = CDNOW.log_likelihood(&data).unwrap();
        assert!((grouped - direct).abs() < 1e-10 * direct.abs());
    }

    #[test]
    fn purchase_count_distribution_sums_to_one() {
        let total: f64 = (0..400)
            .map(|n| CDNOW.probability_of_purchases(n, 39.0).unwrap())
            .sum();
        assert!((total - 1.0).abs() < 1e-9, "{total}");
        // Its mean is E[X(t)].
        let mean: f64 = (0..400)
            .map(|n| n as f64 * CDNOW.probability_of_purchases(n, 39.0).unwrap())
            .sum();
        let expect = CDNOW.expected_purchases(39.0).unwrap();
        assert!((mean - expect).abs() < 1e-8 * expect, "{mean} vs {expect}");
    }

    #[test]
    fn zero_horizon_and_bad_horizon() {
        let c = Rfm::new(2.0, 30.43, 38.86);
        assert_eq!(CDNOW.conditional_expected_purchases(0.0, &c).unwrap(), 0.0);
        assert!(CDNOW.conditional_expected_purchases(-1.0, &c).is_err());
        assert_eq!(CDNOW.expected_purchases(0.0).unwrap(), 0.0);
    }
}
