//! Scoring a whole customer base at once: expected purchases over a horizon, probability of
//! being alive and, with a spend model, expected order value and discounted CLV.
//!
//! Nearly all the cost is the transaction model's (a hypergeometric function per month of the
//! CLV horizon), and it depends on the customer only through (x, t_x, T); spend enters CLV as a
//! factor (CLV = v̄ · Σᵢ ΔE(i)/(1+d)^i, v̄ the expected order value). So customers sharing a
//! history share that work, and a million customers whose purchases are counted in days over a
//! year and a half have about a tenth as many distinct histories.

use std::collections::HashMap;

use serde::Serialize;

use crate::data::Rfm;
use crate::error::NumericError;
use crate::models::{ClvOptions, GammaGamma, TransactionModel};

/// One customer's scores.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct CustomerScore {
    /// Expected repeat purchases over the horizon.
    pub expected_purchases: f64,
    /// Probability the customer is still active.
    pub p_alive: f64,
    /// With a spend model: the expected value of an order ...
    pub expected_order_value: Option<f64>,
    /// ... and the discounted CLV over the options' months.
    pub clv: Option<f64>,
}

/// The transaction model's share of a score: expected purchases over the horizon, and
/// Σᵢ [E(i·f) − E((i−1)·f)] / (1+d)^i, CLV per unit of order value. Either for a customer
/// alive at T (models that factor: multiplied by each customer's P(alive)), or outright.
#[derive(Clone, Copy)]
struct Shared {
    expected_purchases: f64,
    discounted_purchases: f64,
}

fn shared(
    horizon: f64,
    clv: Option<&ClvOptions>,
    expected: impl Fn(&[f64]) -> Result<Vec<f64>, NumericError>,
) -> Result<Shared, NumericError> {
    // The horizon first, then (for the CLV) the start and the end of each month.
    let mut horizons = vec![horizon];
    let mut monthly = None;
    if let Some(&ClvOptions {
        months,
        monthly_discount_rate: d,
        periods_per_month: f,
    }) = clv
    {
        if !(f.is_finite() && f > 0.0 && d.is_finite() && d > -1.0) {
            return Err(NumericError::Domain(format!(
                "invalid clv options: periods_per_month {f}, discount rate {d}"
            )));
        }
        horizons.extend((0..=months).map(|i| i as f64 * f));
        monthly = Some(d);
    }
    let values = expected(&horizons)?;
    let mut discounted_purchases = 0.0;
    if let Some(d) = monthly {
        for (i, pair) in values[1..].windows(2).enumerate() {
            discounted_purchases += (pair[1] - pair[0]) / (1.0 + d).powi(i as i32 + 1);
        }
    }
    Ok(Shared {
        expected_purchases: values[0],
        discounted_purchases,
    })
}

/// Scores `customers` (history, mean repeat order value) in order. `spend` with `clv` adds the
/// expected order value and CLV (as [`GammaGamma::customer_lifetime_value`] computes it).
///
/// For models whose expectation is P(alive) times a function of (x, T, t) — BG/NBD, MBG/NBD —
/// the hypergeometric work is shared by every customer with the same x and T, however their
/// last purchase differs; for the others by customers with the same (x, t_x, T).
pub fn score_customers<M: TransactionModel + ?Sized>(
    model: &M,
    spend: Option<(&GammaGamma, &ClvOptions)>,
    customers: &[(Rfm, f64)],
    horizon: f64,
) -> Result<Vec<CustomerScore>, NumericError> {
    let clv = spend.map(|(_, options)| options);
    let factors = model.expected_purchases_if_alive(0.0, 0.0, 1.0).is_some();
    let mut cache: HashMap<(u64, u64, u64), Shared> = HashMap::new();
    let mut scores = Vec::with_capacity(customers.len());
    for (customer, monetary_value) in customers {
        let (x, t_x, age) = (customer.frequency, customer.recency, customer.t);
        let p_alive = model.probability_alive(customer)?;
        let key = if factors {
            (x.to_bits(), 0, age.to_bits())
        } else {
            (x.to_bits(), t_x.to_bits(), age.to_bits())
        };
        let share = match cache.get(&key) {
            Some(share) => *share,
            None => {
                let share = if factors {
                    shared(horizon, clv, |horizons| {
                        model
                            .expected_purchases_if_alive_at(horizons, x, age)
                            .unwrap_or(Err(NumericError::NonFinite("expectation")))
                    })?
                } else {
                    shared(horizon, clv, |horizons| {
                        horizons
                            .iter()
                            .map(|&t| model.conditional_expected_purchases(t, customer))
                            .collect()
                    })?
                };
                cache.insert(key, share);
                share
            }
        };
        let (expected_purchases, discounted_purchases) = if factors {
            (
                share.expected_purchases * p_alive,
                share.discounted_purchases * p_alive,
            )
        } else {
            (share.expected_purchases, share.discounted_purchases)
        };
        let (expected_order_value, clv) = match spend {
            Some((gg, _)) => {
                let value =
                    gg.conditional_expected_average_profit(customer.frequency, *monetary_value);
                let clv = value * discounted_purchases;
                if !clv.is_finite() {
                    return Err(NumericError::NonFinite("customer lifetime value"));
                }
                (Some(value), Some(clv))
            }
            None => (None, None),
        };
        if !expected_purchases.is_finite() {
            return Err(NumericError::NonFinite("conditional expectation"));
        }
        scores.push(CustomerScore {
            expected_purchases,
            p_alive,
            expected_order_value,
            clv,
        });
    }
    Ok(scores)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::BgNbd;

    #[test]
    fn batch_scores_equal_one_by_one_scores() {
        let bg = BgNbd {
            r: 0.2426,
            alpha: 4.4136,
            a: 0.7929,
            b: 2.4259,
        };
        let gg = GammaGamma {
            p: 6.2488,
            q: 3.7446,
            gamma: 15.4478,
        };
        let options = ClvOptions::weekly(12, 0.01);
        let customers = [
            (Rfm::new(2.0, 30.43, 38.86), 22.35),
            (Rfm::new(0.0, 0.0, 38.86), 0.0),
            (Rfm::new(2.0, 30.43, 38.86), 80.0),
            (Rfm::new(7.0, 35.0, 38.0), 41.5),
        ];
        let scores = score_customers(&bg, Some((&gg, &options)), &customers, 39.0).unwrap();
        for ((customer, m), score) in customers.iter().zip(&scores) {
            let expected = bg.conditional_expected_purchases(39.0, customer).unwrap();
            // Batch scoring sums each history's series once for every horizon: equal to
            // rounding, not to the bit.
            assert!(
                (score.expected_purchases - expected).abs() <= 1e-13 * expected.abs(),
                "{} vs {expected}",
                score.expected_purchases
            );
            assert_eq!(score.p_alive, bg.probability_alive(customer));
            let clv = gg
                .customer_lifetime_value(&bg, customer, *m, &options)
                .unwrap();
            assert!(
                (score.clv.unwrap() - clv).abs() <= 1e-12 * clv.abs(),
                "{score:?} vs {clv}"
            );
            assert_eq!(
                score.expected_order_value,
                Some(gg.conditional_expected_average_profit(customer.frequency, *m))
            );
        }
        // The published reference customer.
        assert!((scores[0].expected_purchases - 1.226).abs() < 1e-3);
        let without_spend = score_customers(&bg, None, &customers, 39.0).unwrap();
        assert!(without_spend.iter().all(|s| s.clv.is_none()));
        // A model that does not factor through P(alive) is scored per whole history.
        let pareto = crate::models::ParetoNbd {
            r: 0.5533,
            alpha: 10.578,
            s: 0.6062,
            beta: 11.668,
        };
        let scores = score_customers(&pareto, Some((&gg, &options)), &customers, 39.0).unwrap();
        for ((customer, m), score) in customers.iter().zip(&scores) {
            let expected = pareto
                .conditional_expected_purchases(39.0, customer)
                .unwrap();
            assert_eq!(score.expected_purchases, expected);
            let clv = gg
                .customer_lifetime_value(&pareto, customer, *m, &options)
                .unwrap();
            assert!(
                (score.clv.unwrap() - clv).abs() <= 1e-12 * clv.abs(),
                "{score:?} vs {clv}"
            );
        }
    }
}
