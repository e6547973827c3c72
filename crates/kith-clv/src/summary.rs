//! From a transaction log to the per-customer summaries the models consume, with the semantics
//! of `lifetimes.utils.summary_data_from_transaction_data` and `calibration_and_holdout_data`:
//!
//! * timestamps are bucketed into periods (day, week Monday–Sunday, calendar month) and all
//!   transactions of a customer in the same period collapse into one (values summed);
//! * transactions are kept when their period starts no later than the period of the
//!   observation end (so, as in `lifetimes`, a same-period transaction after the exact end
//!   instant still counts);
//! * `frequency` is the number of periods with a purchase after the first one, `recency` the
//!   time from the first to the last such period and `T` from the first period to the
//!   observation-end period, both measured between period starts in units of one period
//!   (a month is 30.436875 days, numpy's average month, exactly as `lifetimes` divides by
//!   `np.timedelta64(1, 'M')`) divided by `multiplier`;
//! * `monetary_value` is the mean of the per-period sums excluding the first period, 0 when
//!   there is no repeat purchase.

use chrono::{Datelike, NaiveDate, NaiveDateTime, TimeDelta};
use serde::{Deserialize, Serialize};

use crate::data::{Rfm, Spend};
use crate::error::SummaryError;

/// Calendar period used to bucket transactions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum PeriodUnit {
    /// Calendar days (pandas `freq="D"`).
    Day,
    /// Weeks running Monday to Sunday (pandas `freq="W"`, i.e. `W-SUN`).
    Week,
    /// Calendar months (pandas `freq="M"`), measured as 30.436875 days.
    Month,
}

impl PeriodUnit {
    /// First day of the period containing `date`.
    #[inline]
    pub fn period_start(self, date: NaiveDate) -> NaiveDate {
        match self {
            PeriodUnit::Day => date,
            PeriodUnit::Week => {
                date - TimeDelta::days(i64::from(date.weekday().num_days_from_monday()))
            }
            PeriodUnit::Month => date - TimeDelta::days(i64::from(date.day0())),
        }
    }

    /// Length of one unit in days when converting a time difference (numpy's timedelta64 unit).
    pub fn unit_days(self) -> f64 {
        match self {
            PeriodUnit::Day => 1.0,
            PeriodUnit::Week => 7.0,
            PeriodUnit::Month => 30.436875,
        }
    }

    /// Whole periods from the period of `from` to the period of `to` (pandas Period difference).
    pub fn periods_between(self, from: NaiveDate, to: NaiveDate) -> i64 {
        let (a, b) = (self.period_start(from), self.period_start(to));
        match self {
            PeriodUnit::Day => (b - a).num_days(),
            PeriodUnit::Week => (b - a).num_days() / 7,
            PeriodUnit::Month => {
                (i64::from(b.year()) * 12 + i64::from(b.month0()))
                    - (i64::from(a.year()) * 12 + i64::from(a.month0()))
            }
        }
    }

    /// Time between two period starts in units of this period.
    fn span(self, from: NaiveDate, to: NaiveDate) -> f64 {
        // Day numbers, not `to - from`: chrono's duration goes through seconds and 400-year
        // cycles, a sixth of a million-customer summary's time.
        self.days_in_units(to.num_days_from_ce() - from.num_days_from_ce())
    }

    /// A number of days in units of this period.
    fn days_in_units(self, days: i32) -> f64 {
        f64::from(days) / self.unit_days()
    }
}

/// One purchase.
#[derive(Debug, Clone, PartialEq)]
pub struct Transaction<K> {
    /// Customer identifier.
    pub customer_id: K,
    /// When the purchase happened.
    pub at: NaiveDateTime,
    /// Value of the purchase.
    pub monetary_value: f64,
}

impl<K> Transaction<K> {
    /// A transaction at an exact time.
    pub fn new(customer_id: K, at: NaiveDateTime, monetary_value: f64) -> Self {
        Transaction {
            customer_id,
            at,
            monetary_value,
        }
    }

    /// A transaction on a date (at midnight).
    pub fn on_date(customer_id: K, date: NaiveDate, monetary_value: f64) -> Self {
        Transaction {
            customer_id,
            at: date.and_time(chrono::NaiveTime::MIN),
            monetary_value,
        }
    }
}

/// How to summarise a transaction log.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SummaryOptions {
    /// Period used to collapse transactions and measure time.
    pub unit: PeriodUnit,
    /// Divides recency and T (`freq_multiplier`): e.g. `Day` with 7 gives weeks measured in
    /// days, the CDNOW convention.
    pub multiplier: f64,
    /// End of observation; defaults to the latest transaction.
    pub observation_end: Option<NaiveDateTime>,
}

impl SummaryOptions {
    /// Options for a unit with multiplier 1 and the default observation end.
    pub fn new(unit: PeriodUnit) -> Self {
        SummaryOptions {
            unit,
            multiplier: 1.0,
            observation_end: None,
        }
    }
}

/// Per-customer summary (`lifetimes`' frequency, recency, T, monetary_value).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CustomerSummary<K> {
    /// Customer identifier.
    pub customer_id: K,
    /// Repeat purchase periods.
    pub frequency: f64,
    /// First to last purchase period.
    pub recency: f64,
    /// First purchase period to the observation end period.
    pub t: f64,
    /// Mean value of the repeat purchase periods (0 without repeats).
    pub monetary_value: f64,
}

impl<K> CustomerSummary<K> {
    /// The (x, t_x, T) triple for the transaction models.
    pub fn rfm(&self) -> Rfm {
        Rfm::new(self.frequency, self.recency, self.t)
    }

    /// The (x, m̄) pair for the Gamma-Gamma model.
    pub fn spend(&self) -> Spend {
        Spend::new(self.frequency, self.monetary_value)
    }
}

/// Calibration summary joined with what happened in the holdout window
/// (`lifetimes.utils.calibration_and_holdout_data`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CalibrationHoldout<K> {
    /// Customer identifier.
    pub customer_id: K,
    /// Frequency in the calibration window.
    pub frequency_cal: f64,
    /// Recency in the calibration window.
    pub recency_cal: f64,
    /// T at the calibration end.
    pub t_cal: f64,
    /// Mean repeat value in the calibration window.
    pub monetary_value_cal: f64,
    /// Number of distinct periods with a purchase in the holdout window.
    pub frequency_holdout: f64,
    /// Mean value of the individual holdout transactions (not collapsed per period, as in
    /// `lifetimes`); 0 without holdout purchases.
    pub monetary_value_holdout: f64,
    /// Length of the holdout window in periods, divided by the multiplier.
    pub duration_holdout: f64,
}

impl<K> CalibrationHoldout<K> {
    /// Calibration (x, t_x, T).
    pub fn calibration_rfm(&self) -> Rfm {
        Rfm::new(self.frequency_cal, self.recency_cal, self.t_cal)
    }
}

fn check_multiplier(m: f64) -> Result<(), SummaryError> {
    if m.is_finite() && m > 0.0 {
        Ok(())
    } else {
        Err(SummaryError::InvalidMultiplier(m))
    }
}

fn check_values<K>(transactions: &[Transaction<K>]) -> Result<(), SummaryError> {
    match transactions
        .iter()
        .position(|t| !t.monetary_value.is_finite())
    {
        Some(row) => Err(SummaryError::NonFiniteValue { row }),
        None => Ok(()),
    }
}

/// Per-customer purchase periods: (customer, period start, summed value), sorted by customer
/// and period, for transactions passing `keep`.
pub(crate) fn collapse_periods<K: Ord>(
    transactions: &[Transaction<K>],
    unit: PeriodUnit,
    keep: impl Fn(&Transaction<K>, NaiveDate) -> bool,
) -> Vec<(&K, NaiveDate, f64)> {
    let mut rows: Vec<(&K, NaiveDate, f64)> = transactions
        .iter()
        .filter_map(|t| {
            let p = unit.period_start(t.at.date());
            keep(t, p).then_some((&t.customer_id, p, t.monetary_value))
        })
        .collect();
    // Unstable is enough: rows of one customer and period are summed into one.
    rows.sort_unstable_by(|a, b| a.0.cmp(b.0).then(a.1.cmp(&b.1)));
    let mut out: Vec<(&K, NaiveDate, f64)> = Vec::with_capacity(rows.len());
    for (k, p, v) in rows {
        match out.last_mut() {
            Some((lk, lp, lv)) if *lk == k && *lp == p => *lv += v,
            _ => out.push((k, p, v)),
        }
    }
    out
}

/// Summarises a transaction log into one [`CustomerSummary`] per customer, sorted by id.
///
/// Summaries borrow their customer ids from the log, as a pandas summary's index refers to the
/// log's own id objects: copying every id took most of the time on CDNOW (an allocation per
/// customer, and on a million customers frees across threads afterwards). `.to_owned()` where
/// an owned id is needed.
pub fn summary_from_transactions<'a, K: Ord + Sync>(
    transactions: &'a [Transaction<K>],
    options: &SummaryOptions,
) -> Result<Vec<CustomerSummary<&'a K>>, SummaryError> {
    check_multiplier(options.multiplier)?;
    let end = match options.observation_end {
        Some(e) => e,
        None => transactions
            .iter()
            .map(|t| t.at)
            .max()
            .ok_or(SummaryError::EmptyInput)?,
    };
    let unit = options.unit;
    let end_period = unit.period_start(end.date());
    if let Some(summary) = summary_of_sorted(transactions, unit, end_period, options.multiplier)? {
        return if summary.is_empty() {
            Err(SummaryError::EmptyInput)
        } else {
            Ok(summary)
        };
    }
    check_values(transactions)?;
    let periods = collapse_periods(transactions, unit, |_, p| p <= end_period);
    if periods.is_empty() {
        return Err(SummaryError::EmptyInput);
    }
    let mut out = Vec::new();
    let mut i = 0;
    while i < periods.len() {
        let k = periods[i].0;
        let mut j = i;
        while j < periods.len() && periods[j].0 == k {
            j += 1;
        }
        let first = periods[i].1;
        let last = periods[j - 1].1;
        let repeats = j - i - 1;
        let monetary_value = if repeats > 0 {
            periods[i + 1..j].iter().map(|r| r.2).sum::<f64>() / repeats as f64
        } else {
            0.0
        };
        out.push(CustomerSummary {
            customer_id: k,
            frequency: repeats as f64,
            recency: unit.span(first, last) / options.multiplier,
            t: unit.span(first, end_period) / options.multiplier,
            monetary_value,
        });
        i = j;
    }
    Ok(out)
}

/// One customer's purchases so far, while a sorted log is read.
struct Running<'a, K> {
    customer: &'a K,
    first: NaiveDate,
    /// The period being summed, and its value so far.
    period: NaiveDate,
    period_value: f64,
    /// Periods closed before `period`, and the value of the repeat ones among them.
    closed: usize,
    repeat_value: f64,
}

impl<'a, K> Running<'a, K> {
    /// The customer's summary; `end_day` is the end period's day number (`num_days_from_ce`).
    fn finish(self, unit: PeriodUnit, end_day: i32, multiplier: f64) -> CustomerSummary<&'a K> {
        // The current period counts too: as a repeat unless it is the first.
        let repeats = self.closed;
        let repeat_value = if self.closed > 0 {
            self.repeat_value + self.period_value
        } else {
            0.0
        };
        let (first, last) = (
            self.first.num_days_from_ce(),
            self.period.num_days_from_ce(),
        );
        CustomerSummary {
            customer_id: self.customer,
            frequency: repeats as f64,
            recency: unit.days_in_units(last - first) / multiplier,
            t: unit.days_in_units(end_day - first) / multiplier,
            monetary_value: if repeats > 0 {
                repeat_value / repeats as f64
            } else {
                0.0
            },
        }
    }
}

/// Purchases per thread below which the sorted pass stays on one thread. A purchase costs about
/// fifteen nanoseconds; a new thread costs far more than its start: its allocator heap is new,
/// so its first copies of customer ids land on fresh pages. Cut in two, CDNOW's 69,659 purchases
/// took 1.4 ms instead of 1.0; a million customers' 2.8 million took half the time.
const PURCHASES_PER_THREAD: usize = 50_000;

/// The summary of a log sorted by customer and time, as exports usually are (no copy, no sort,
/// one comparison per purchase), with the values checked in the same pass; `Ok(None)` as soon as
/// the log turns out not to be sorted, and the general path sorts it. Purchases after
/// `end_period` are skipped, as there. Large logs are cut at customer boundaries into one part
/// per core, summarised side by side.
fn summary_of_sorted<K: Ord + Sync>(
    transactions: &[Transaction<K>],
    unit: PeriodUnit,
    end_period: NaiveDate,
    multiplier: f64,
) -> Result<Option<Vec<CustomerSummary<&K>>>, SummaryError> {
    let parts = crate::data::cores()
        .min(transactions.len() / PURCHASES_PER_THREAD)
        .max(1);
    summary_of_sorted_in_parts(transactions, parts, unit, end_period, multiplier)
}

/// [`summary_of_sorted`] with the log cut into at most `parts` parts.
fn summary_of_sorted_in_parts<K: Ord + Sync>(
    transactions: &[Transaction<K>],
    parts: usize,
    unit: PeriodUnit,
    end_period: NaiveDate,
    multiplier: f64,
) -> Result<Option<Vec<CustomerSummary<&K>>>, SummaryError> {
    let len = transactions.len();
    let mut starts = vec![0];
    for part in 1..parts {
        let mut at = (part * len / parts).max(starts[starts.len() - 1] + 1);
        while at < len && transactions[at].customer_id == transactions[at - 1].customer_id {
            at += 1;
        }
        if at >= len {
            break;
        }
        if transactions[at].customer_id < transactions[at - 1].customer_id {
            return Ok(None);
        }
        starts.push(at);
    }
    starts.push(len);
    let ranges: Vec<(usize, usize)> = starts.windows(2).map(|w| (w[0], w[1])).collect();
    let (first, others) = crate::data::in_parallel(ranges.len(), |part| {
        let (lo, hi) = ranges[part];
        summary_of_sorted_part(&transactions[lo..hi], lo, unit, end_period, multiplier)
    });
    // In order, so the first bad value reported is the log's first.
    let Some(mut out) = first? else {
        return Ok(None);
    };
    let mut rest = Vec::with_capacity(others.len());
    for part in others {
        let Some(part) = part? else { return Ok(None) };
        rest.push(part);
    }
    out.reserve_exact(rest.iter().map(Vec::len).sum());
    for part in rest {
        out.extend(part);
    }
    Ok(Some(out))
}

/// How many customers a sorted log (part) probably holds, from the purchases per customer in its
/// first rows plus a quarter: sized so, the summary is written once and not moved while it grows.
/// A log whose later customers buy less only costs one regrowth.
fn expected_customers<K: PartialEq>(transactions: &[Transaction<K>]) -> usize {
    const SAMPLE: usize = 4096;
    let sample = &transactions[..transactions.len().min(SAMPLE)];
    let changes = sample
        .windows(2)
        .filter(|pair| pair[0].customer_id != pair[1].customer_id)
        .count();
    let purchases_per_customer = sample.len() as f64 / (changes + 1) as f64;
    let expected = transactions.len() as f64 / purchases_per_customer * 1.25;
    (expected as usize + 16).min(transactions.len())
}

/// [`summary_of_sorted`] over one part of the log, whose first purchase is row `offset`.
fn summary_of_sorted_part<K: Ord>(
    transactions: &[Transaction<K>],
    offset: usize,
    unit: PeriodUnit,
    end_period: NaiveDate,
    multiplier: f64,
) -> Result<Option<Vec<CustomerSummary<&K>>>, SummaryError> {
    let end_day = end_period.num_days_from_ce();
    let mut out = Vec::with_capacity(expected_customers(transactions));
    let mut running: Option<Running<'_, K>> = None;
    for (row, t) in transactions.iter().enumerate() {
        if !t.monetary_value.is_finite() {
            return Err(SummaryError::NonFiniteValue { row: offset + row });
        }
        let period = unit.period_start(t.at.date());
        if period > end_period {
            continue;
        }
        match running.as_mut() {
            Some(r) if *r.customer == t.customer_id => {
                if period < r.period {
                    return Ok(None);
                }
                if period == r.period {
                    r.period_value += t.monetary_value;
                } else {
                    if r.closed > 0 {
                        r.repeat_value += r.period_value;
                    }
                    r.closed += 1;
                    r.period = period;
                    r.period_value = t.monetary_value;
                }
            }
            Some(r) if t.customer_id < *r.customer => return Ok(None),
            _ => {
                if let Some(done) = running.take() {
                    out.push(done.finish(unit, end_day, multiplier));
                }
                running = Some(Running {
                    customer: &t.customer_id,
                    first: period,
                    period,
                    period_value: t.monetary_value,
                    closed: 0,
                    repeat_value: 0.0,
                });
            }
        }
    }
    if let Some(done) = running {
        out.push(done.finish(unit, end_day, multiplier));
    }
    Ok(Some(out))
}

/// Splits a log at `calibration_end`: the calibration summary (observation end =
/// `calibration_end`) plus, for each calibration customer, purchases in
/// (`calibration_end`, `options.observation_end`]. Customers first seen in the holdout window
/// are left out, as in `lifetimes`. Rows borrow their customer ids from the log, as
/// [`summary_from_transactions`]'s do.
pub fn calibration_and_holdout<'a, K: Ord + Sync>(
    transactions: &'a [Transaction<K>],
    calibration_end: NaiveDateTime,
    options: &SummaryOptions,
) -> Result<Vec<CalibrationHoldout<&'a K>>, SummaryError> {
    check_multiplier(options.multiplier)?;
    check_values(transactions)?;
    let end = match options.observation_end {
        Some(e) => e,
        None => transactions
            .iter()
            .map(|t| t.at)
            .max()
            .ok_or(SummaryError::EmptyInput)?,
    };
    if calibration_end > end {
        return Err(SummaryError::CalibrationAfterObservation {
            calibration_end: calibration_end.to_string(),
            observation_end: end.to_string(),
        });
    }
    let calibration: Vec<Transaction<&K>> = transactions
        .iter()
        .filter(|t| t.at <= calibration_end)
        .map(|t| Transaction::new(&t.customer_id, t.at, t.monetary_value))
        .collect();
    let cal = summary_from_transactions(
        &calibration,
        &SummaryOptions {
            observation_end: Some(calibration_end),
            ..*options
        },
    )?;
    let in_holdout = |t: &Transaction<K>| t.at > calibration_end && t.at <= end;
    if !transactions.iter().any(in_holdout) {
        return Err(SummaryError::EmptyHoldout);
    }
    // Distinct holdout periods per customer, and the mean of the raw holdout values.
    let periods = collapse_periods(transactions, options.unit, |t, _| in_holdout(t));
    let mut raw: Vec<(&K, f64)> = transactions
        .iter()
        .filter(|t| in_holdout(t))
        .map(|t| (&t.customer_id, t.monetary_value))
        .collect();
    raw.sort_by(|a, b| a.0.cmp(b.0));
    let duration = options
        .unit
        .periods_between(calibration_end.date(), end.date()) as f64
        / options.multiplier;

    let mut out = Vec::with_capacity(cal.len());
    let (mut pi, mut ri) = (0, 0);
    for c in cal {
        // The id as borrowed from `transactions` (the summary's borrows the copy of the
        // reference in `calibration`).
        let customer_id: &'a K = c.customer_id;
        // Both lists are sorted by customer: merge-join.
        while pi < periods.len() && periods[pi].0 < customer_id {
            pi += 1;
        }
        let mut n_periods = 0usize;
        while pi < periods.len() && periods[pi].0 == customer_id {
            n_periods += 1;
            pi += 1;
        }
        while ri < raw.len() && raw[ri].0 < customer_id {
            ri += 1;
        }
        let (mut sum, mut n) = (0.0, 0usize);
        while ri < raw.len() && raw[ri].0 == customer_id {
            sum += raw[ri].1;
            n += 1;
            ri += 1;
        }
        out.push(CalibrationHoldout {
            customer_id,
            frequency_cal: c.frequency,
            recency_cal: c.recency,
            t_cal: c.t,
            monetary_value_cal: c.monetary_value,
            frequency_holdout: n_periods as f64,
            monetary_value_holdout: if n > 0 { sum / n as f64 } else { 0.0 },
            duration_holdout: duration,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(y: i32, m: u32, day: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(y, m, day).unwrap()
    }

    #[test]
    fn a_sorted_log_read_in_one_pass_gives_what_sorting_gives() {
        // Several purchases a day, customers with one purchase, purchases after the end.
        let mut log = Vec::new();
        for customer in 0..40u32 {
            for k in 0..(customer % 7) {
                let day =
                    d(2024, 1, 1) + TimeDelta::days(i64::from((customer * 13 + k * 29) % 400));
                log.push(Transaction::on_date(
                    customer,
                    day,
                    f64::from(customer + k) * 1.25,
                ));
                if k % 3 == 1 {
                    log.push(Transaction::on_date(customer, day, 2.5));
                }
            }
        }
        let mut sorted = log.clone();
        sorted.sort_by_key(|t| (t.customer_id, t.at));
        // Reversed: certainly not sorted, so the general path runs.
        let mut unsorted = sorted.clone();
        unsorted.reverse();
        for unit in [PeriodUnit::Day, PeriodUnit::Week, PeriodUnit::Month] {
            let options = SummaryOptions {
                unit,
                multiplier: 1.0,
                observation_end: Some(d(2024, 12, 1).and_hms_opt(0, 0, 0).unwrap()),
            };
            assert!(
                summary_of_sorted(&unsorted, unit, d(2024, 12, 1), 1.0)
                    .unwrap()
                    .is_none()
            );
            let one_pass = summary_from_transactions(&sorted, &options).unwrap();
            let general = summary_from_transactions(&unsorted, &options).unwrap();
            assert_eq!(one_pass.len(), general.len());
            for (a, b) in one_pass.iter().zip(&general) {
                assert_eq!(
                    (a.customer_id, a.frequency, a.recency, a.t),
                    (b.customer_id, b.frequency, b.recency, b.t)
                );
                assert!(
                    (a.monetary_value - b.monetary_value).abs() < 1e-9,
                    "{a:?} {b:?}"
                );
            }
        }
    }

    #[test]
    fn a_sorted_log_cut_into_parts_gives_what_one_part_gives() {
        // Customers with up to 40 purchases, so the even cut points often fall inside one.
        let mut log = Vec::new();
        for customer in 0..300u32 {
            for k in 0..(customer * 7 % 41) {
                let day = d(2024, 1, 1) + TimeDelta::days(i64::from(k * 3 + customer % 5));
                log.push(Transaction::on_date(customer, day, f64::from(k % 9) + 0.5));
            }
        }
        let end = d(2024, 3, 1);
        let one = summary_of_sorted_in_parts(&log, 1, PeriodUnit::Day, end, 7.0)
            .unwrap()
            .unwrap();
        assert!(one.len() > 250);
        for parts in 2..9 {
            let cut = summary_of_sorted_in_parts(&log, parts, PeriodUnit::Day, end, 7.0)
                .unwrap()
                .unwrap();
            assert_eq!(cut, one, "{parts} parts");
        }
        // Two neighbouring customers swapped: each part alone may look sorted, the whole is not.
        for at in [log.len() / 2, log.len() / 3, log.len() / 4] {
            let mut swapped = log.clone();
            let mut start = at;
            while swapped[start - 1].customer_id == swapped[at].customer_id {
                start -= 1;
            }
            let customer = swapped[at].customer_id;
            let mut after = at;
            while swapped[after].customer_id == customer {
                after += 1;
            }
            let next = swapped[after].customer_id;
            for t in swapped.iter_mut().skip(start) {
                if t.customer_id == customer {
                    t.customer_id = next;
                } else if t.customer_id == next {
                    t.customer_id = customer;
                }
            }
            for parts in 1..9 {
                assert_eq!(
                    summary_of_sorted_in_parts(&swapped, parts, PeriodUnit::Day, end, 7.0),
                    Ok(None),
                    "swapped at {at}, {parts} parts"
                );
            }
            let general = summary_from_transactions(
                &swapped,
                &SummaryOptions {
                    unit: PeriodUnit::Day,
                    multiplier: 7.0,
                    observation_end: Some(end.and_hms_opt(0, 0, 0).unwrap()),
                },
            )
            .unwrap();
            let mut resorted = swapped.clone();
            resorted.sort_by_key(|t| (t.customer_id, t.at));
            let resorted = summary_of_sorted_in_parts(&resorted, 1, PeriodUnit::Day, end, 7.0)
                .unwrap()
                .unwrap();
            assert_eq!(general, resorted, "the general path sorts the swapped log");
        }
        // The first bad value is the one reported, in whichever part it lies.
        let mut bad = log.clone();
        let (first, second) = (bad.len() * 3 / 5, bad.len() * 4 / 5);
        bad[first].monetary_value = f64::NAN;
        bad[second].monetary_value = f64::INFINITY;
        for parts in 1..9 {
            assert_eq!(
                summary_of_sorted_in_parts(&bad, parts, PeriodUnit::Day, end, 7.0),
                Err(SummaryError::NonFiniteValue { row: first })
            );
        }
    }

    #[test]
    fn period_starts() {
        // 1997-01-01 was a Wednesday.
        assert_eq!(
            PeriodUnit::Week.period_start(d(1997, 1, 1)),
            d(1996, 12, 30)
        );
        assert_eq!(
            PeriodUnit::Week.period_start(d(1997, 1, 5)),
            d(1996, 12, 30)
        );
        assert_eq!(PeriodUnit::Week.period_start(d(1997, 1, 6)), d(1997, 1, 6));
        assert_eq!(
            PeriodUnit::Month.period_start(d(1997, 2, 28)),
            d(1997, 2, 1)
        );
        assert_eq!(
            PeriodUnit::Month.periods_between(d(1997, 1, 31), d(1998, 3, 1)),
            14
        );
        assert_eq!(
            PeriodUnit::Week.periods_between(d(1997, 1, 5), d(1997, 1, 6)),
            1
        );
    }

    #[test]
    fn lifetimes_semantics_on_a_small_log() {
        let tx = vec![
            Transaction::on_date("a", d(2020, 1, 1), 10.0),
            Transaction::on_date("a", d(2020, 1, 1), 5.0), // same day: collapsed, summed
            Transaction::on_date("a", d(2020, 1, 4), 20.0),
            Transaction::on_date("a", d(2020, 1, 9), 40.0),
            Transaction::on_date("b", d(2020, 1, 8), 7.0),
            Transaction::on_date("c", d(2020, 1, 12), 1.0), // after the observation end
        ];
        let opts = SummaryOptions {
            observation_end: Some(d(2020, 1, 10).and_hms_opt(0, 0, 0).unwrap()),
            ..SummaryOptions::new(PeriodUnit::Day)
        };
        let s = summary_from_transactions(&tx, &opts).unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(*s[0].customer_id, "a");
        assert_eq!((s[0].frequency, s[0].recency, s[0].t), (2.0, 8.0, 9.0));
        assert_eq!(s[0].monetary_value, 30.0);
        assert_eq!((s[1].frequency, s[1].recency, s[1].t), (0.0, 0.0, 2.0));
        assert_eq!(s[1].monetary_value, 0.0);

        // Weekly: 2020-01-01 (Wed) and 01-04 (Sat) share a week; 01-09 is in the next one.
        let w = summary_from_transactions(
            &tx,
            &SummaryOptions {
                unit: PeriodUnit::Week,
                ..opts
            },
        )
        .unwrap();
        assert_eq!((w[0].frequency, w[0].recency, w[0].t), (1.0, 1.0, 1.0));
        assert_eq!(w[0].monetary_value, 40.0);

        // Monthly with a multiplier.
        let tx2 = vec![
            Transaction::on_date(1, d(2020, 1, 15), 1.0),
            Transaction::on_date(1, d(2020, 3, 2), 1.0),
        ];
        let m = summary_from_transactions(
            &tx2,
            &SummaryOptions {
                unit: PeriodUnit::Month,
                multiplier: 2.0,
                observation_end: Some(d(2020, 4, 30).and_hms_opt(0, 0, 0).unwrap()),
            },
        )
        .unwrap();
        assert!((m[0].recency - 60.0 / 30.436875 / 2.0).abs() < 1e-12);
        assert!((m[0].t - 91.0 / 30.436875 / 2.0).abs() < 1e-12);
    }

    #[test]
    fn calibration_holdout_split() {
        let tx = vec![
            Transaction::on_date(1, d(2020, 1, 1), 10.0),
            Transaction::on_date(1, d(2020, 1, 5), 20.0),
            Transaction::on_date(1, d(2020, 1, 12), 3.0),
            Transaction::on_date(1, d(2020, 1, 12), 5.0),
            Transaction::on_date(1, d(2020, 1, 15), 4.0),
            Transaction::on_date(2, d(2020, 1, 2), 1.0),
            Transaction::on_date(3, d(2020, 1, 11), 9.0), // holdout-only customer: dropped
        ];
        let cal_end = d(2020, 1, 10).and_hms_opt(0, 0, 0).unwrap();
        let opts = SummaryOptions {
            observation_end: Some(d(2020, 1, 20).and_hms_opt(0, 0, 0).unwrap()),
            ..SummaryOptions::new(PeriodUnit::Day)
        };
        let ch = calibration_and_holdout(&tx, cal_end, &opts).unwrap();
        assert_eq!(ch.len(), 2);
        let c1 = &ch[0];
        assert_eq!(
            (c1.frequency_cal, c1.recency_cal, c1.t_cal),
            (1.0, 4.0, 9.0)
        );
        assert_eq!(c1.monetary_value_cal, 20.0);
        assert_eq!(c1.frequency_holdout, 2.0); // two distinct days
        assert_eq!(c1.monetary_value_holdout, 4.0); // mean of 3, 5, 4
        assert_eq!(c1.duration_holdout, 10.0);
        assert_eq!(
            (ch[1].frequency_holdout, ch[1].monetary_value_holdout),
            (0.0, 0.0)
        );

        let late = d(2020, 2, 1).and_hms_opt(0, 0, 0).unwrap();
        assert!(matches!(
            calibration_and_holdout(&tx, late, &opts),
            Err(SummaryError::CalibrationAfterObservation { .. })
        ));
        let no_holdout = d(2020, 1, 19).and_hms_opt(0, 0, 0).unwrap();
        assert_eq!(
            calibration_and_holdout(&tx, no_holdout, &opts),
            Err(SummaryError::EmptyHoldout)
        );
    }

    #[test]
    fn errors() {
        let empty: Vec<Transaction<u32>> = vec![];
        assert_eq!(
            summary_from_transactions(&empty, &SummaryOptions::new(PeriodUnit::Day)),
            Err(SummaryError::EmptyInput)
        );
        let bad = vec![Transaction::on_date(1, d(2020, 1, 1), f64::NAN)];
        assert_eq!(
            summary_from_transactions(&bad, &SummaryOptions::new(PeriodUnit::Day)),
            Err(SummaryError::NonFiniteValue { row: 0 })
        );
        let ok = vec![Transaction::on_date(1, d(2020, 1, 1), 1.0)];
        assert!(matches!(
            summary_from_transactions(
                &ok,
                &SummaryOptions {
                    multiplier: 0.0,
                    ..SummaryOptions::new(PeriodUnit::Day)
                }
            ),
            Err(SummaryError::InvalidMultiplier(_))
        ));
    }
}
