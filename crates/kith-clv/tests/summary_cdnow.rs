//! Summary building on the raw CDNOW logs against the published summary of the sample.

mod common;

use chrono::NaiveDate;
use common::{col, read_csv};
use kith_clv::summary::{
    PeriodUnit, SummaryOptions, Transaction, calibration_and_holdout, summary_from_transactions,
};

fn date(s: &str) -> NaiveDate {
    NaiveDate::parse_from_str(s, "%Y%m%d").unwrap()
}

/// CDNOW_sample.txt: `master_id sample_id yyyymmdd cds dollars`, CRLF line ends.
/// Returns (master id, transaction keyed by sample id).
fn sample() -> Vec<(u32, Transaction<u32>)> {
    let text = std::fs::read_to_string(common::fixture("CDNOW_sample.txt")).unwrap();
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let tx = Transaction::on_date(f[1].parse().unwrap(), date(f[2]), f[4].parse().unwrap());
            (f[0].parse().unwrap(), tx)
        })
        .collect()
}

/// CDNOW_master.txt: header, then `customer_id date cds dollars`.
fn master() -> Vec<Transaction<u32>> {
    let text = std::fs::read_to_string(common::fixture("CDNOW_master.txt")).unwrap();
    text.lines()
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            Transaction::on_date(f[0].parse().unwrap(), date(f[1]), f[3].parse().unwrap())
        })
        .collect()
}

fn weeks_in_days(end: NaiveDate) -> SummaryOptions {
    // The CDNOW convention: daily periods, time in weeks, calibration ends 1997-09-30.
    SummaryOptions {
        unit: PeriodUnit::Day,
        multiplier: 7.0,
        observation_end: Some(end.and_hms_opt(0, 0, 0).unwrap()),
    }
}

#[test]
fn sample_summary_matches_published_calibration_summary() {
    let tx: Vec<Transaction<u32>> = sample().into_iter().map(|(_, t)| t).collect();
    assert_eq!(tx.len(), 6919);
    let end = NaiveDate::from_ymd_opt(1997, 9, 30).unwrap();
    let s = summary_from_transactions(&tx, &weeks_in_days(end)).unwrap();
    let (h, rows) = read_csv("cdnow_customers_summary_with_transactions.csv");
    assert_eq!(s.len(), rows.len());
    let (iid, ix, itx, it, iz) = (
        col(&h, "ID"),
        col(&h, "x"),
        col(&h, "t_x"),
        col(&h, "T"),
        col(&h, "zbar"),
    );
    let mut worst = 0.0f64;
    for (c, r) in s.iter().zip(&rows) {
        assert_eq!(*c.customer_id, r[iid].parse::<u32>().unwrap());
        assert_eq!(
            c.frequency,
            r[ix].parse::<f64>().unwrap(),
            "customer {}",
            c.customer_id
        );
        // The published file rounds to two decimals.
        for (got, i) in [(c.recency, itx), (c.t, it), (c.monetary_value, iz)] {
            let want: f64 = r[i].parse().unwrap();
            worst = worst.max((got - want).abs());
            assert!(
                (got - want).abs() <= 0.005 + 1e-9,
                "customer {}: {got} vs {want}",
                c.customer_id
            );
        }
    }
    println!("worst absolute difference to the 2-decimal file: {worst:.4}");
}

#[test]
fn master_log_restricted_to_the_sample_gives_the_same_summary() {
    let sample = sample();
    let master = master();
    assert_eq!(master.len(), 69_659);
    let end = NaiveDate::from_ymd_opt(1998, 6, 30).unwrap();
    let full = summary_from_transactions(&master, &weeks_in_days(end)).unwrap();
    assert_eq!(full.len(), 23_570);

    // Sample customers, keyed by master id, summarised from both files.
    let mut ids: Vec<(u32, u32)> = sample.iter().map(|(m, t)| (*m, t.customer_id)).collect();
    ids.sort();
    ids.dedup();
    let sample_log: Vec<Transaction<u32>> = sample.iter().map(|(_, t)| t.clone()).collect();
    let from_sample = summary_from_transactions(&sample_log, &weeks_in_days(end)).unwrap();
    for (master_id, sample_id) in ids {
        let a = &full[full
            .binary_search_by_key(&master_id, |c| *c.customer_id)
            .unwrap()];
        let b = &from_sample[from_sample
            .binary_search_by_key(&sample_id, |c| *c.customer_id)
            .unwrap()];
        assert_eq!((a.frequency, a.recency, a.t), (b.frequency, b.recency, b.t));
        assert!((a.monetary_value - b.monetary_value).abs() < 1e-9);
    }
}

#[test]
fn sample_calibration_and_holdout() {
    let tx: Vec<Transaction<u32>> = sample().into_iter().map(|(_, t)| t).collect();
    let cal_end = NaiveDate::from_ymd_opt(1997, 9, 30).unwrap();
    let end = NaiveDate::from_ymd_opt(1998, 6, 30).unwrap();
    let ch = calibration_and_holdout(
        &tx,
        cal_end.and_hms_opt(0, 0, 0).unwrap(),
        &weeks_in_days(end),
    )
    .unwrap();
    let cal = summary_from_transactions(&tx, &weeks_in_days(cal_end)).unwrap();
    assert_eq!(ch.len(), 2357);
    for (a, b) in ch.iter().zip(&cal) {
        assert_eq!(a.customer_id, b.customer_id);
        assert_eq!(
            (a.frequency_cal, a.recency_cal, a.t_cal),
            (b.frequency, b.recency, b.t)
        );
        assert_eq!(a.duration_holdout, 39.0); // 273 days
    }
    // Holdout purchases: distinct purchase days after 1997-09-30, per customer.
    let total: f64 = ch.iter().map(|c| c.frequency_holdout).sum();
    let mut days: Vec<(u32, NaiveDate)> = tx
        .iter()
        .filter(|t| t.at.date() > cal_end)
        .map(|t| (t.customer_id, t.at.date()))
        .collect();
    days.sort();
    days.dedup();
    assert_eq!(total, days.len() as f64);
    println!("holdout repeat purchase days: {total}");
}
