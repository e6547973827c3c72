//! Model checks against data: the calibration/holdout comparison and the cumulative
//! repeat-transaction tracking curve.

use chrono::NaiveDate;
use serde::{Deserialize, Serialize};

use crate::error::NumericError;
use crate::models::TransactionModel;
use crate::summary::{CalibrationHoldout, PeriodUnit, Transaction, collapse_periods};

/// Actual and predicted mean holdout purchases for customers with a given calibration frequency.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HoldoutBucket {
    /// Calibration frequency of the bucket (the last bucket holds this and everything above).
    pub frequency_cal: u32,
    /// Whether this is the capped bucket (frequency ≥ `frequency_cal`).
    pub capped: bool,
    /// Number of customers in the bucket.
    pub customers: usize,
    /// Mean holdout purchases observed.
    pub actual_mean: f64,
    /// Mean holdout purchases the model predicts from the calibration data.
    pub predicted_mean: f64,
}

/// Groups customers by calibration frequency (capped at `max_frequency`) and compares the mean
/// observed holdout frequency with the model's conditional expectation over each customer's
/// holdout duration. Empty buckets are omitted.
pub fn calibration_holdout_table<K, M: TransactionModel + ?Sized>(
    model: &M,
    rows: &[CalibrationHoldout<K>],
    max_frequency: u32,
) -> Result<Vec<HoldoutBucket>, NumericError> {
    let n = max_frequency as usize + 1;
    let mut count = vec![0usize; n];
    let mut actual = vec![0.0; n];
    let mut predicted = vec![0.0; n];
    for r in rows {
        let bucket = (r.frequency_cal.max(0.0).round() as usize).min(n - 1);
        count[bucket] += 1;
        actual[bucket] += r.frequency_holdout;
        predicted[bucket] +=
            model.conditional_expected_purchases(r.duration_holdout, &r.calibration_rfm())?;
    }
    Ok((0..n)
        .filter(|&b| count[b] > 0)
        .map(|b| HoldoutBucket {
            frequency_cal: b as u32,
            capped: b == n - 1,
            customers: count[b],
            actual_mean: actual[b] / count[b] as f64,
            predicted_mean: predicted[b] / count[b] as f64,
        })
        .collect())
}

/// Expected cumulative repeat transactions of a population whose customers made their first
/// purchase at `first_purchase_times`: at each of `times`, Σᵢ E[X(t − sᵢ)] over customers with
/// sᵢ ≤ t, where E[X(·)] is the model's unconditional expectation. Times are in model units.
pub fn expected_cumulative_transactions<M: TransactionModel + ?Sized>(
    model: &M,
    first_purchase_times: &[f64],
    times: &[f64],
) -> Result<Vec<f64>, NumericError> {
    // Customers who started at the same time share one evaluation.
    let mut starts: Vec<f64> = first_purchase_times.to_vec();
    if starts.iter().any(|s| !s.is_finite()) {
        return Err(NumericError::Domain(
            "non-finite first purchase time".into(),
        ));
    }
    starts.sort_by(f64::total_cmp);
    let mut cohorts: Vec<(f64, f64)> = Vec::new();
    for s in starts {
        match cohorts.last_mut() {
            Some((t, n)) if *t == s => *n += 1.0,
            _ => cohorts.push((s, 1.0)),
        }
    }
    times
        .iter()
        .map(|&t| {
            let mut total = 0.0;
            for &(s, n) in cohorts.iter().take_while(|(s, _)| *s <= t) {
                total += n * model.expected_purchases(t - s)?;
            }
            Ok(total)
        })
        .collect()
}

/// Options for [`tracking_from_transactions`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TrackingOptions {
    /// Period used to collapse transactions and step the curve.
    pub unit: PeriodUnit,
    /// Model time units = periods / multiplier (as in the summary the model was fitted on).
    pub multiplier: f64,
    /// First period of the curve; defaults to the earliest transaction. Transactions before it
    /// are ignored.
    pub start: Option<NaiveDate>,
    /// Number of periods to report.
    pub n_periods: u32,
}

/// One point of the tracking curve.
#[derive(Debug, Clone, PartialEq)]
pub struct TrackingPoint {
    /// Period index from the start (0-based).
    pub period: u32,
    /// First day of the period.
    pub period_start: NaiveDate,
    /// Repeat transactions observed in periods 0..=`period` (per-period collapsed, first
    /// purchases excluded).
    pub actual_cumulative: f64,
    /// Repeat transactions the model expects by then for the customers acquired so far.
    pub expected_cumulative: f64,
}

/// Actual versus expected cumulative repeat transactions per period, the "tracking plot".
///
/// A customer's age at period k is measured from the start of their first-purchase period to
/// the start of period k, the same convention as T in the summary (so the curve at the period
/// of the calibration end reproduces the calibration data's ages exactly).
pub fn tracking_from_transactions<K: Ord, M: TransactionModel + ?Sized>(
    model: &M,
    transactions: &[Transaction<K>],
    options: &TrackingOptions,
) -> Result<Vec<TrackingPoint>, NumericError> {
    let unit = options.unit;
    if !(options.multiplier.is_finite() && options.multiplier > 0.0) {
        return Err(NumericError::Domain(format!(
            "tracking multiplier must be positive, got {}",
            options.multiplier
        )));
    }
    let start = match options.start {
        Some(s) => unit.period_start(s),
        None => match transactions.iter().map(|t| t.at.date()).min() {
            Some(d) => unit.period_start(d),
            None => return Ok(Vec::new()),
        },
    };
    let periods = collapse_periods(transactions, unit, |_, p| p >= start);
    let n = options.n_periods as usize;
    let mut repeats_in = vec![0.0; n];
    let mut first_times: Vec<f64> = Vec::new();
    let mut i = 0;
    while i < periods.len() {
        let k = periods[i].0;
        let first = unit.periods_between(start, periods[i].1);
        first_times.push(first as f64 / options.multiplier);
        let mut j = i + 1;
        while j < periods.len() && periods[j].0 == k {
            let idx = unit.periods_between(start, periods[j].1);
            if (idx as usize) < n {
                repeats_in[idx as usize] += 1.0;
            }
            j += 1;
        }
        i = j;
    }
    let times: Vec<f64> = (0..n).map(|k| k as f64 / options.multiplier).collect();
    let expected = expected_cumulative_transactions(model, &first_times, &times)?;
    let mut out = Vec::with_capacity(n);
    let mut cumulative = 0.0;
    let mut period_start = start;
    for k in 0..n {
        cumulative += repeats_in[k];
        out.push(TrackingPoint {
            period: k as u32,
            period_start,
            actual_cumulative: cumulative,
            expected_cumulative: expected[k],
        });
        period_start = next_period(unit, period_start);
    }
    Ok(out)
}

fn next_period(unit: PeriodUnit, p: NaiveDate) -> NaiveDate {
    match unit {
        PeriodUnit::Day => p + chrono::TimeDelta::days(1),
        PeriodUnit::Week => p + chrono::TimeDelta::days(7),
        // Any day in the next month, then back to its first day.
        PeriodUnit::Month => unit.period_start(p + chrono::TimeDelta::days(32)),
    }
}
