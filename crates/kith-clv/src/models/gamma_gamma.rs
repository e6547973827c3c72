//! Gamma-Gamma spend model (Fader, Hardie & Lee 2005, "RFM and CLV"): a customer's transaction
//! values are Gamma(p, ν) with ν ~ Gamma(q, γ) across customers, independent of the purchase
//! process. It is fitted on repeat buyers only and combined with a transaction model for CLV.
//!
//! Independence of spend and frequency is an assumption, not something the fit can detect, so
//! the fit reports the Pearson correlation between frequency and average spend and, by default,
//! refuses to fit when |r| exceeds 0.3 ([`GammaGammaOptions::max_abs_correlation`]; set it to
//! `None` to fit anyway and just read the reported value).

use serde::{Deserialize, Serialize};

use crate::data::{
    Rfm, RowCost, Spend, check_weights, clip_groups, every_step_in_groups, merge_rows, rank_values,
    split_sum, stable_sort_by_rank,
};
use crate::error::{FitError, NumericError};
use crate::fit::{
    FitOptions, Fitted, NaturalDerivatives, ParamVector, fit_model_exact, warm_start,
};
use crate::models::{TransactionModel, finite};
use crate::special::{digamma_trigamma, ln_gamma};

/// Gamma-Gamma parameters.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct GammaGamma {
    /// Shape of the per-transaction spend distribution.
    pub p: f64,
    /// Shape of the gamma distribution of the per-customer scale.
    pub q: f64,
    /// Rate of the gamma distribution of the per-customer scale (`v` in `lifetimes`).
    #[serde(alias = "v")]
    pub gamma: f64,
}

impl ParamVector<3> for GammaGamma {
    const NAMES: [&'static str; 3] = ["p", "q", "gamma"];
    fn to_array(&self) -> [f64; 3] {
        [self.p, self.q, self.gamma]
    }
    fn from_array(v: [f64; 3]) -> Self {
        GammaGamma {
            p: v[0],
            q: v[1],
            gamma: v[2],
        }
    }
}

/// Options for [`GammaGamma::fit`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GammaGammaOptions {
    /// Optimizer options; `min_repeat_customers` counts customers with frequency > 0.
    pub fit: FitOptions<GammaGamma>,
    /// Reject the fit with [`FitError::SpendCorrelated`] when |corr(frequency, monetary value)|
    /// exceeds this; `None` disables the check (the correlation is still reported).
    pub max_abs_correlation: Option<f64>,
}

impl Default for GammaGammaOptions {
    fn default() -> Self {
        GammaGammaOptions {
            fit: FitOptions::default(),
            max_abs_correlation: Some(0.3),
        }
    }
}

/// Result of a Gamma-Gamma fit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GammaGammaFit {
    /// The fitted model.
    pub model: Fitted<GammaGamma>,
    /// Pearson correlation between frequency and monetary value over the (weighted) repeat
    /// customers used in the fit. Values far from 0 undermine the model's independence assumption.
    pub frequency_spend_correlation: f64,
}

/// How CLV sums expected purchases: over whole months, with the transaction model's time unit
/// converted by `periods_per_month`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ClvOptions {
    /// Horizon in months.
    pub months: u32,
    /// Monthly discount rate d: month i is discounted by (1 + d)^i.
    pub monthly_discount_rate: f64,
    /// Model time units per month: 4.345 for weeks, 30 for days, 1 for months
    /// (the factors `lifetimes` uses).
    pub periods_per_month: f64,
}

impl ClvOptions {
    /// Weeks per month as used by `lifetimes` (`freq="W"`).
    pub const WEEKS_PER_MONTH: f64 = 4.345;
    /// Days per month as used by `lifetimes` (`freq="D"`).
    pub const DAYS_PER_MONTH: f64 = 30.0;

    /// Options for a model fitted in weeks.
    pub fn weekly(months: u32, monthly_discount_rate: f64) -> Self {
        ClvOptions {
            months,
            monthly_discount_rate,
            periods_per_month: Self::WEEKS_PER_MONTH,
        }
    }

    /// Options for a model fitted in days.
    pub fn daily(months: u32, monthly_discount_rate: f64) -> Self {
        ClvOptions {
            months,
            monthly_discount_rate,
            periods_per_month: Self::DAYS_PER_MONTH,
        }
    }
}

/// Merged repeat-buyer data: per distinct frequency, rows of (ln m, m, weight).
struct SpendGroups {
    frequency: Vec<f64>,
    ln_frequency: Vec<f64>,
    bounds: Vec<(usize, usize)>,
    group_weight: Vec<f64>,
    monetary: Vec<f64>,
    ln_monetary: Vec<f64>,
    weight: Vec<f64>,
    total_weight: f64,
}

/// Mean negative log-likelihood of the average spends m̄ given x:
/// ln f = ln Γ(px+q) − ln Γ(px) − ln Γ(q) + q ln γ + (px−1) ln m̄ + px ln x − (px+q) ln(γ + m̄x).
fn mean_nll(v: &[f64; 3], g: &SpendGroups) -> f64 {
    let total = split_sum(
        g.monetary.len(),
        RowCost::Light,
        |lo, hi| ll_rows(v, g, lo, hi),
        |a, b| a + b,
    );
    -total / g.total_weight
}

/// The weighted log-likelihood of rows `from..to` (and of the groups that start there).
fn ll_rows(v: &[f64; 3], g: &SpendGroups, from: usize, to: usize) -> f64 {
    let [p, q, gamma] = *v;
    let base = -ln_gamma(q) + q * gamma.ln();
    let mut total = 0.0;
    for (k, lo, hi, starts) in clip_groups(&g.bounds, from, to) {
        let x = g.frequency[k];
        let px = p * x;
        let c = if starts {
            ln_gamma(px + q) - ln_gamma(px) + base + px * g.ln_frequency[k]
        } else {
            0.0
        };
        let mut s = 0.0;
        for i in lo..hi {
            s += g.weight[i]
                * ((px - 1.0) * g.ln_monetary[i] - (px + q) * (gamma + g.monetary[i] * x).ln());
        }
        total += s + c * g.group_weight[k];
    }
    total
}

impl SpendGroups {
    /// Repeat customers `(x, m̄, weight)` grouped by frequency, identical rows merged.
    fn new(rows: Vec<(f64, f64, f64)>) -> SpendGroups {
        // Identical (x, m̄) merged, then grouped by frequency with a counting sort (linear:
        // sorting each frequency's spends took two thirds of a fit on a million customers). Within
        // a frequency rows keep the order first seen, so a fit gives the same bits every time.
        let expected_rows = rows.len();
        let merged = merge_rows(
            rows.into_iter().map(|(x, m, w)| ((x, m), w)),
            expected_rows,
            |(x, m)| (x.to_bits(), m.to_bits()),
        );
        let (_, frequency_rank) = rank_values(merged.iter().map(|((x, _), _)| *x));
        let buckets = frequency_rank.iter().max().map_or(0, |r| *r as usize + 1);
        let all: Vec<u32> = (0..merged.len() as u32).collect();
        let order = stable_sort_by_rank(&all, &frequency_rank, buckets);
        let distinct = merged.len();
        let rows = order.into_iter().map(|row| {
            let ((x, m), w) = merged[row as usize];
            (x, m, w)
        });
        let mut g = SpendGroups {
            frequency: Vec::new(),
            ln_frequency: Vec::new(),
            bounds: Vec::new(),
            group_weight: Vec::new(),
            monetary: Vec::with_capacity(distinct),
            ln_monetary: Vec::with_capacity(distinct),
            weight: Vec::with_capacity(distinct),
            total_weight: 0.0,
        };
        for (x, m, w) in rows {
            let n = g.monetary.len();
            if g.frequency.last() != Some(&x) {
                g.frequency.push(x);
                g.ln_frequency.push(x.ln());
                g.bounds.push((n, n));
                g.group_weight.push(0.0);
            }
            g.monetary.push(m);
            g.ln_monetary.push(m.ln());
            g.weight.push(w);
            let k = g.frequency.len() - 1;
            g.bounds[k].1 = g.monetary.len();
            g.group_weight[k] += w;
            g.total_weight += w;
        }
        g
    }
}

impl SpendGroups {
    /// A sample of every `step`-th customer ([`crate::data::every_step`]) for a warm start (see
    /// [`crate::fit::warm_start`]).
    fn sample(&self, step: f64) -> SpendGroups {
        let mut sample = SpendGroups {
            frequency: Vec::new(),
            ln_frequency: Vec::new(),
            bounds: Vec::new(),
            group_weight: Vec::new(),
            monetary: Vec::new(),
            ln_monetary: Vec::new(),
            weight: Vec::new(),
            total_weight: 0.0,
        };
        for (group, i, w) in every_step_in_groups(&self.bounds, &self.weight, step) {
            if sample.frequency.last() != Some(&self.frequency[group]) {
                let n = sample.monetary.len();
                sample.frequency.push(self.frequency[group]);
                sample.ln_frequency.push(self.ln_frequency[group]);
                sample.bounds.push((n, n));
                sample.group_weight.push(0.0);
            }
            sample.monetary.push(self.monetary[i]);
            sample.ln_monetary.push(self.ln_monetary[i]);
            sample.weight.push(w);
            let k = sample.frequency.len() - 1;
            sample.bounds[k].1 = sample.monetary.len();
            sample.group_weight[k] += w;
            sample.total_weight += w;
        }
        sample
    }
}

/// Gradient and Hessian of [`mean_nll`] in (p, q, γ). Per customer,
/// ℓ = lnΓ(px+q) − lnΓ(px) − lnΓ(q) + q ln γ + (px−1) ln m + px ln x − (px+q) ln(γ+mx);
/// the digamma and trigamma terms depend on x only, so they are taken once per frequency.
fn mean_nll_derivatives(v: &[f64; 3], g: &SpendGroups) -> NaturalDerivatives<3> {
    let (ll, grad, hess) = split_sum(
        g.monetary.len(),
        RowCost::Light,
        |lo, hi| derivative_rows(v, g, lo, hi),
        crate::data::add_derivatives,
    );
    // Of the mean negative log-likelihood, symmetric.
    let scale = -1.0 / g.total_weight;
    let grad = grad.map(|v| v * scale);
    let hess = std::array::from_fn(|i| std::array::from_fn(|j| hess[i.min(j)][i.max(j)] * scale));
    (ll * scale, grad, hess)
}

/// Sums of the log-likelihood and its gradient and Hessian (upper triangle) over rows
/// `from..to` and the groups that start there.
fn derivative_rows(v: &[f64; 3], g: &SpendGroups, from: usize, to: usize) -> NaturalDerivatives<3> {
    let [p, q, gamma] = *v;
    let ((psi_q, tri_q), ln_gamma_) = (digamma_trigamma(q), gamma.ln());
    let base = -ln_gamma(q) + q * ln_gamma_;
    let mut ll = 0.0;
    let mut grad = [0.0; 3];
    let mut hess = [[0.0; 3]; 3];
    for (k, lo, hi, starts) in clip_groups(&g.bounds, from, to) {
        let x = g.frequency[k];
        let (a, px) = (p * x + q, p * x);
        if starts {
            let (psi_a, tri_a) = digamma_trigamma(a);
            let (psi_px, tri_px) = digamma_trigamma(px);
            let gw = g.group_weight[k];
            ll += gw * (ln_gamma(a) - ln_gamma(px) + base + px * g.ln_frequency[k]);
            // Terms of the customer's x alone.
            grad[0] += gw * x * (psi_a - psi_px + g.ln_frequency[k]);
            grad[1] += gw * (psi_a - psi_q + ln_gamma_);
            grad[2] += gw * q / gamma;
            hess[0][0] += gw * x * x * (tri_a - tri_px);
            hess[0][1] += gw * x * tri_a;
            hess[1][1] += gw * (tri_a - tri_q);
            hess[1][2] += gw / gamma;
            hess[2][2] -= gw * q / (gamma * gamma);
        }
        // Terms of each customer's mean spend m: (px−1) ln m − (px+q) ln(γ+mx).
        for i in lo..hi {
            let w = g.weight[i];
            let d = gamma + g.monetary[i] * x;
            let ln_d = d.ln();
            ll += w * ((px - 1.0) * g.ln_monetary[i] - a * ln_d);
            grad[0] += w * x * (g.ln_monetary[i] - ln_d);
            grad[1] -= w * ln_d;
            grad[2] -= w * a / d;
            hess[0][2] -= w * x / d;
            hess[1][2] -= w / d;
            hess[2][2] += w * a / (d * d);
        }
    }
    (ll, grad, hess)
}

fn weighted_pearson(rows: &[(f64, f64, f64)]) -> f64 {
    // One pass over values shifted by the first row's (the shift keeps the sums of squares from
    // cancelling when the values sit far from zero).
    let Some(&(x0, y0, _)) = rows.first() else {
        return 0.0;
    };
    let (mut sw, mut sx, mut sy, mut sxx, mut syy, mut sxy) = (0.0, 0.0, 0.0, 0.0, 0.0, 0.0);
    for &(x, y, w) in rows {
        let (dx, dy) = (x - x0, y - y0);
        sw += w;
        sx += w * dx;
        sy += w * dy;
        sxx += w * dx * dx;
        syy += w * dy * dy;
        sxy += w * dx * dy;
    }
    let (mx, my) = (sx / sw, sy / sw);
    let (cxx, cyy, cxy) = (sxx / sw - mx * mx, syy / sw - my * my, sxy / sw - mx * my);
    if cxx <= 0.0 || cyy <= 0.0 {
        // No variation in one variable: no linear association to speak of.
        return 0.0;
    }
    (cxy / (cxx * cyy).sqrt()).clamp(-1.0, 1.0)
}

impl GammaGamma {
    fn fit_groups(
        g: &SpendGroups,
        options: &FitOptions<GammaGamma>,
    ) -> Result<Fitted<GammaGamma>, FitError> {
        let mean_m = g
            .monetary
            .iter()
            .zip(&g.weight)
            .map(|(m, w)| m * w)
            .sum::<f64>()
            / g.total_weight;
        fit_model_exact(
            |v| mean_nll(v, g),
            |v| mean_nll_derivatives(v, g),
            g.total_weight,
            [1.0, 1.0, mean_m.max(1e-6)],
            options,
        )
    }

    /// Fits the model on customers with `frequency > 0` (rows with frequency 0 carry no spend
    /// information and are skipped). Every repeat customer needs a positive monetary value.
    pub fn fit(data: &[Spend], options: &GammaGammaOptions) -> Result<GammaGammaFit, FitError> {
        Self::fit_impl(data, None, options)
    }

    /// Fits with per-row weights.
    pub fn fit_weighted(
        data: &[Spend],
        weights: &[f64],
        options: &GammaGammaOptions,
    ) -> Result<GammaGammaFit, FitError> {
        Self::fit_impl(data, Some(weights), options)
    }

    fn fit_impl(
        data: &[Spend],
        weights: Option<&[f64]>,
        options: &GammaGammaOptions,
    ) -> Result<GammaGammaFit, FitError> {
        check_weights(data.len(), weights)?;
        if data.is_empty() {
            return Err(FitError::EmptyInput);
        }
        let mut rows: Vec<(f64, f64, f64)> = Vec::with_capacity(data.len());
        for (row, s) in data.iter().enumerate() {
            for (field, v) in [
                ("frequency", s.frequency),
                ("monetary_value", s.monetary_value),
            ] {
                if !v.is_finite() {
                    return Err(FitError::NonFinite { row, field });
                }
            }
            if s.frequency < 0.0 {
                return Err(FitError::InvalidData {
                    row,
                    reason: format!("negative frequency {}", s.frequency),
                });
            }
            let w = weights.map_or(1.0, |w| w[row]);
            if s.frequency > 0.0 && w > 0.0 {
                if s.monetary_value <= 0.0 {
                    return Err(FitError::InvalidData {
                        row,
                        reason: format!(
                            "repeat customer with non-positive monetary value {}",
                            s.monetary_value
                        ),
                    });
                }
                rows.push((s.frequency, s.monetary_value, w));
            }
        }
        let required = options.fit.min_repeat_customers;
        if rows.len() < required.max(1) {
            return Err(FitError::TooFewRepeatCustomers {
                found: rows.len(),
                required: required.max(1),
            });
        }
        let correlation = weighted_pearson(&rows);
        if let Some(limit) = options.max_abs_correlation
            && correlation.abs() > limit
        {
            return Err(FitError::SpendCorrelated { correlation, limit });
        }

        let g = SpendGroups::new(rows);
        let fit_options = warm_start(&options.fit, g.monetary.len(), g.total_weight, |step, o| {
            Self::fit_groups(&g.sample(step), o)
        });
        let model = Self::fit_groups(&g, &fit_options)?;
        Ok(GammaGammaFit {
            model,
            frequency_spend_correlation: correlation,
        })
    }

    /// Log-likelihood of one repeat customer's average spend (requires x > 0, m̄ > 0).
    pub fn customer_log_likelihood(&self, s: &Spend) -> f64 {
        let GammaGamma { p, q, gamma } = *self;
        let (x, m) = (s.frequency, s.monetary_value);
        let px = p * x;
        ln_gamma(px + q) - ln_gamma(px) - ln_gamma(q)
            + q * gamma.ln()
            + (px - 1.0) * m.ln()
            + px * x.ln()
            - (px + q) * (gamma + m * x).ln()
    }

    /// Total log-likelihood over the repeat customers in `data` (frequency-0 rows skipped).
    pub fn log_likelihood(&self, data: &[Spend]) -> Result<f64, NumericError> {
        let ll: f64 = data
            .iter()
            .filter(|s| s.frequency > 0.0)
            .map(|s| self.customer_log_likelihood(s))
            .sum();
        finite(ll, "gamma-gamma log-likelihood")
    }

    /// Population mean spend per transaction, γp/(q−1) (infinite for q ≤ 1).
    pub fn population_mean_spend(&self) -> f64 {
        self.gamma * self.p / (self.q - 1.0)
    }

    /// E[spend per transaction | x, m̄]: a weighted average of the population mean and the
    /// customer's own mean, weight px/(px+q−1) on the latter (population mean when x = 0).
    pub fn conditional_expected_average_profit(&self, frequency: f64, monetary_value: f64) -> f64 {
        let GammaGamma { p, q, .. } = *self;
        let w = p * frequency / (p * frequency + q - 1.0);
        (1.0 - w) * self.population_mean_spend() + w * monetary_value
    }

    /// Discounted customer lifetime value over `options.months` months, as `lifetimes`'
    /// `customer_lifetime_value`: Σ_{i=1..months} v̄ · [E(i·f) − E((i−1)·f)] / (1+d)^i, where
    /// E(t) is the transaction model's conditional expected purchases up to t, f is
    /// `periods_per_month` and v̄ the conditional expected average profit.
    pub fn customer_lifetime_value<M: TransactionModel + ?Sized>(
        &self,
        model: &M,
        customer: &Rfm,
        monetary_value: f64,
        options: &ClvOptions,
    ) -> Result<f64, NumericError> {
        let ClvOptions {
            months,
            monthly_discount_rate: d,
            periods_per_month: f,
        } = *options;
        if !(f.is_finite() && f > 0.0 && d.is_finite() && d > -1.0) {
            return Err(NumericError::Domain(format!(
                "invalid clv options: periods_per_month {f}, discount rate {d}"
            )));
        }
        let spend = self.conditional_expected_average_profit(customer.frequency, monetary_value);
        let mut clv = 0.0;
        let mut previous = model.conditional_expected_purchases(0.0, customer)?;
        for i in 1..=months {
            let cumulative = model.conditional_expected_purchases(i as f64 * f, customer)?;
            clv += spend * (cumulative - previous) / (1.0 + d).powi(i as i32);
            previous = cumulative;
        }
        finite(clv, "customer lifetime value")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_derivatives_match_finite_differences() {
        let g = SpendGroups::new(vec![
            (1.0, 12.5, 1.0),
            (1.0, 40.0, 2.0),
            (3.0, 22.0, 1.0),
            (7.0, 18.25, 1.0),
            (12.0, 95.0, 1.0),
        ]);
        crate::fit::assert_derivatives_match(
            |p| mean_nll(p, &g),
            |p| mean_nll_derivatives(p, &g),
            [2.3, 1.7, 9.0],
        );
    }

    #[test]
    fn repeated_customers_weigh_as_weights_and_order_does_not_matter() {
        // Forty distinct customers, each present three times: merged by the grouping.
        let distinct: Vec<Spend> = (0..40)
            .map(|i| Spend {
                frequency: f64::from(1 + i % 6),
                monetary_value: 8.0 + f64::from((i * 37) % 53) + 0.25 * f64::from(i % 4),
            })
            .collect();
        let mut repeated: Vec<Spend> = (0..3).flat_map(|_| distinct.clone()).collect();
        let options = GammaGammaOptions {
            max_abs_correlation: None,
            ..GammaGammaOptions::default()
        };
        let weighted = GammaGamma::fit_weighted(&distinct, &[3.0; 40], &options).unwrap();
        let params = |fit: &GammaGammaFit| {
            let m = &fit.model.params;
            [m.p, m.q, m.gamma, fit.model.log_likelihood]
        };
        let expected = params(&weighted);
        for _ in 0..2 {
            let got = params(&GammaGamma::fit(&repeated, &options).unwrap());
            // The same likelihood; the optimiser stops within its tolerance of the same point.
            for (i, (a, b)) in got.iter().zip(&expected).enumerate() {
                let tolerance = if i == 3 { 1e-12 } else { 1e-4 };
                assert!(
                    (a - b).abs() <= tolerance * b.abs(),
                    "{got:?} vs {expected:?}"
                );
            }
            repeated.reverse();
        }
    }

    #[test]
    fn pearson_basics() {
        let perfect = [(1.0, 2.0, 1.0), (2.0, 4.0, 1.0), (3.0, 6.0, 1.0)];
        assert!((weighted_pearson(&perfect) - 1.0).abs() < 1e-12);
        let flat = [(1.0, 2.0, 1.0), (2.0, 2.0, 1.0)];
        assert_eq!(weighted_pearson(&flat), 0.0);
    }

    #[test]
    fn correlated_spend_is_rejected_unless_disabled() {
        // Spend rising with frequency, with some between-customer heterogeneity.
        let data: Vec<Spend> = (1..=60)
            .map(|i| {
                let x = (i % 10 + 1) as f64;
                let base = 5.0 + ((i * 37) % 23) as f64;
                Spend::new(x, base * (1.0 + 0.5 * x))
            })
            .collect();
        let err = GammaGamma::fit(&data, &GammaGammaOptions::default()).unwrap_err();
        assert!(matches!(err, FitError::SpendCorrelated { .. }), "{err}");
        let fit = GammaGamma::fit(
            &data,
            &GammaGammaOptions {
                max_abs_correlation: None,
                ..Default::default()
            },
        )
        .unwrap();
        assert!(fit.frequency_spend_correlation > 0.3);
    }

    #[test]
    fn no_heterogeneity_reports_a_boundary() {
        // Every customer has the same average spend: q and γ run off to infinity together.
        let data: Vec<Spend> = (1..=30)
            .map(|i| Spend::new((i % 5 + 1) as f64, 20.0))
            .collect();
        match GammaGamma::fit(&data, &GammaGammaOptions::default()) {
            Err(FitError::OptimizerFailed(msg)) => assert!(msg.contains("boundary"), "{msg}"),
            other => panic!("expected a boundary failure, got {other:?}"),
        }
    }
}
