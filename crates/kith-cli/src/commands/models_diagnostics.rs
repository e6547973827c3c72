//! `kith models clv fit --diagnostics`: does the fitted model predict what happened after the
//! calibration window? The two checks practitioners read: actual against predicted holdout
//! purchases by calibration frequency, and the tracking curve of cumulative (and per-period)
//! repeat purchases, actual against expected.

use std::fmt::Write;

use anyhow::Context;
use chrono::{NaiveDate, NaiveDateTime};
use kith_clv::BgNbd;
use kith_clv::diagnostics::{
    HoldoutBucket, TrackingOptions, calibration_holdout_table, tracking_from_transactions,
};
use kith_clv::summary::{PeriodUnit, SummaryOptions, Transaction, calibration_and_holdout};
use serde::Serialize;

/// Calibration frequencies from this one up share the last bucket (as `lifetimes` plots them).
const MAX_FREQUENCY: u32 = 7;

#[derive(Debug, Serialize)]
pub struct Diagnostics {
    pub calibration_end: String,
    pub holdout_end: String,
    /// Length of the holdout window in model time units.
    pub holdout_length: f64,
    pub calibration_customers: usize,
    pub holdout_purchases_actual: f64,
    pub holdout_purchases_predicted: f64,
    pub calibration_holdout: Vec<HoldoutBucket>,
    /// One row per model time unit (a week with the defaults).
    pub tracking: Vec<TrackingRow>,
}

#[derive(Debug, Serialize)]
pub struct TrackingRow {
    pub period_start: NaiveDate,
    pub actual_cumulative: f64,
    pub expected_cumulative: f64,
    pub actual_incremental: f64,
    pub expected_incremental: f64,
}

/// Compares `model` (fitted on the purchases up to `calibration_end`) with every purchase.
pub fn diagnose(
    model: &BgNbd,
    transactions: &[Transaction<String>],
    calibration_end: NaiveDateTime,
    options: &SummaryOptions,
) -> anyhow::Result<Diagnostics> {
    let last = transactions
        .iter()
        .map(|t| t.at)
        .max()
        .context("no purchases")?;
    if last <= calibration_end {
        anyhow::bail!(
            "--diagnostics needs purchases after --calibration-end ({calibration_end}) to compare with; the last is {last}"
        );
    }
    let split = calibration_and_holdout(
        transactions,
        calibration_end,
        &SummaryOptions {
            observation_end: Some(last),
            ..*options
        },
    )?;
    let buckets = calibration_holdout_table(model, &split, MAX_FREQUENCY)?;
    let mut predicted = 0.0;
    for row in &split {
        predicted +=
            model.conditional_expected_purchases(row.duration_holdout, &row.calibration_rfm())?;
    }
    let first = transactions
        .iter()
        .map(|t| t.at.date())
        .min()
        .context("no purchases")?;
    let unit = options.unit;
    let start = unit.period_start(first);
    let n_periods = unit.periods_between(start, unit.period_start(last.date())) + 1;
    let points = tracking_from_transactions(
        model,
        transactions,
        &TrackingOptions {
            unit: options.unit,
            multiplier: options.multiplier,
            start: Some(start),
            n_periods: n_periods.clamp(1, i64::from(u32::MAX)) as u32,
        },
    )?;
    // One row per model time unit: with days measured in weeks, every seventh day.
    let step = match unit {
        PeriodUnit::Day => options.multiplier.round().max(1.0) as usize,
        _ => 1,
    };
    let mut tracking = Vec::new();
    let (mut actual_before, mut expected_before) = (0.0, 0.0);
    for chunk in points.chunks(step) {
        let (Some(head), Some(tail)) = (chunk.first(), chunk.last()) else {
            continue;
        };
        tracking.push(TrackingRow {
            period_start: head.period_start,
            actual_cumulative: tail.actual_cumulative,
            expected_cumulative: tail.expected_cumulative,
            actual_incremental: tail.actual_cumulative - actual_before,
            expected_incremental: tail.expected_cumulative - expected_before,
        });
        actual_before = tail.actual_cumulative;
        expected_before = tail.expected_cumulative;
    }
    Ok(Diagnostics {
        calibration_end: calibration_end.date().to_string(),
        holdout_end: last.date().to_string(),
        holdout_length: split.first().map(|r| r.duration_holdout).unwrap_or(0.0),
        calibration_customers: split.len(),
        holdout_purchases_actual: split.iter().map(|r| r.frequency_holdout).sum(),
        holdout_purchases_predicted: predicted,
        calibration_holdout: buckets,
        tracking,
    })
}

impl Diagnostics {
    /// Both checks as text tables.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "calibration to {}, holdout to {} ({:.1} time units): {} customers, {:.0} repeat purchases in the holdout, {:.1} predicted",
            self.calibration_end,
            self.holdout_end,
            self.holdout_length,
            self.calibration_customers,
            self.holdout_purchases_actual,
            self.holdout_purchases_predicted
        );
        let _ = writeln!(
            out,
            "{:>10} {:>10} {:>12} {:>12}",
            "frequency", "customers", "actual", "predicted"
        );
        for b in &self.calibration_holdout {
            let label = if b.capped {
                format!("{}+", b.frequency_cal)
            } else {
                b.frequency_cal.to_string()
            };
            let _ = writeln!(
                out,
                "{label:>10} {:>10} {:>12.3} {:>12.3}",
                b.customers, b.actual_mean, b.predicted_mean
            );
        }
        let _ = writeln!(out, "\nrepeat purchases, actual against expected");
        let _ = writeln!(
            out,
            "{:>12} {:>12} {:>12} {:>12} {:>12}",
            "from", "cumulative", "expected", "in period", "expected"
        );
        for row in &self.tracking {
            let _ = writeln!(
                out,
                "{:>12} {:>12.0} {:>12.1} {:>12.0} {:>12.1}",
                row.period_start.to_string(),
                row.actual_cumulative,
                row.expected_cumulative,
                row.actual_incremental,
                row.expected_incremental
            );
        }
        out
    }
}
