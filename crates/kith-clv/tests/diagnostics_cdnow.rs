//! Calibration/holdout table and tracking curve on the CDNOW sample.

mod common;

use chrono::NaiveDate;
use kith_clv::diagnostics::{
    TrackingOptions, calibration_holdout_table, expected_cumulative_transactions,
    tracking_from_transactions,
};
use kith_clv::summary::{PeriodUnit, SummaryOptions, Transaction, calibration_and_holdout};
use kith_clv::{BgNbd, FitOptions, Rfm};

fn sample() -> Vec<Transaction<u32>> {
    let text = std::fs::read_to_string(common::fixture("CDNOW_sample.txt")).unwrap();
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let d = NaiveDate::parse_from_str(f[2], "%Y%m%d").unwrap();
            Transaction::on_date(f[1].parse().unwrap(), d, f[4].parse().unwrap())
        })
        .collect()
}

fn midnight(y: i32, m: u32, d: u32) -> chrono::NaiveDateTime {
    NaiveDate::from_ymd_opt(y, m, d)
        .unwrap()
        .and_hms_opt(0, 0, 0)
        .unwrap()
}

#[test]
fn bgnbd_calibration_holdout_and_tracking_on_cdnow() {
    let tx = sample();
    let ch = calibration_and_holdout(
        &tx,
        midnight(1997, 9, 30),
        &SummaryOptions {
            unit: PeriodUnit::Day,
            multiplier: 7.0,
            observation_end: Some(midnight(1998, 6, 30)),
        },
    )
    .unwrap();
    let cal: Vec<Rfm> = ch.iter().map(|c| c.calibration_rfm()).collect();
    let fit = BgNbd::fit(&cal, &FitOptions::default()).unwrap();
    // Exact day counts instead of the 2-decimal file: the fit moves only in the 4th digit.
    assert!(
        (fit.params.r / 0.2426 - 1.0).abs() < 2e-3,
        "{:?}",
        fit.params
    );

    let table = calibration_holdout_table(&fit.params, &ch, 7).unwrap();
    for b in &table {
        println!(
            "x_cal={}{:<2} n={:>4} actual={:.3} predicted={:.3}",
            b.frequency_cal,
            if b.capped { "+" } else { "" },
            b.customers,
            b.actual_mean,
            b.predicted_mean
        );
    }
    assert_eq!(table.len(), 8);
    assert!(table[7].capped && !table[6].capped);
    assert_eq!(table.iter().map(|b| b.customers).sum::<usize>(), 2357);
    let actual: f64 = table
        .iter()
        .map(|b| b.actual_mean * b.customers as f64)
        .sum();
    let predicted: f64 = table
        .iter()
        .map(|b| b.predicted_mean * b.customers as f64)
        .sum();
    println!("holdout purchases: actual {actual}, predicted {predicted:.1}");
    // Fader, Hardie & Lee (2005, fig. 4) show the same picture: close for x = 0 and the
    // capped bucket, under-prediction for light buyers, about 12% fewer purchases in total.
    assert!((predicted / actual - 1.0).abs() < 0.15);
    assert!((table[0].predicted_mean / table[0].actual_mean - 1.0).abs() < 0.1);
    assert!((table[7].predicted_mean / table[7].actual_mean - 1.0).abs() < 0.1);
    // Predictions rise with calibration frequency.
    assert!(
        table
            .windows(2)
            .all(|w| w[0].predicted_mean < w[1].predicted_mean)
    );

    // Tracking over the 78 weeks, daily, in weeks.
    let track = tracking_from_transactions(
        &fit.params,
        &tx,
        &TrackingOptions {
            unit: PeriodUnit::Day,
            multiplier: 7.0,
            start: None,
            n_periods: 546,
        },
    )
    .unwrap();
    assert_eq!(track.len(), 546);
    assert_eq!(
        track[0].period_start,
        NaiveDate::from_ymd_opt(1997, 1, 1).unwrap()
    );
    let at_cal = &track[272]; // 1997-09-30
    assert_eq!(
        at_cal.period_start,
        NaiveDate::from_ymd_opt(1997, 9, 30).unwrap()
    );
    let end = &track[545];
    println!(
        "tracking: week 39 actual {} expected {:.1}; week 78 actual {} expected {:.1}",
        at_cal.actual_cumulative,
        at_cal.expected_cumulative,
        end.actual_cumulative,
        end.expected_cumulative
    );
    // In-sample total matches closely; the forecast within a few percent (Fader et al. 2005).
    assert!((at_cal.expected_cumulative / at_cal.actual_cumulative - 1.0).abs() < 0.03);
    assert!((end.expected_cumulative / end.actual_cumulative - 1.0).abs() < 0.05);
    assert!(
        track
            .windows(2)
            .all(|w| w[0].expected_cumulative <= w[1].expected_cumulative)
    );
    // Holdout-period actual repeat purchases agree with the calibration/holdout split.
    assert_eq!(end.actual_cumulative - at_cal.actual_cumulative, actual);
}

#[test]
fn cumulative_expectation_of_one_cohort() {
    let m = BgNbd {
        r: 0.24,
        alpha: 4.4,
        a: 0.79,
        b: 2.4,
    };
    let got = expected_cumulative_transactions(&m, &[0.0, 0.0, 10.0], &[0.0, 5.0, 20.0]).unwrap();
    assert_eq!(got[0], 0.0);
    assert!((got[1] - 2.0 * m.expected_purchases(5.0).unwrap()).abs() < 1e-12);
    let both = 2.0 * m.expected_purchases(20.0).unwrap() + m.expected_purchases(10.0).unwrap();
    assert!((got[2] - both).abs() < 1e-12);
}
