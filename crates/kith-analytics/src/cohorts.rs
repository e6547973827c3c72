//! Cohorts and retention: profiles grouped by when they first did something (first seen, first
//! purchase, or any chosen event), and how many come back in each later period — classic
//! (active in that period) or rolling (active in that period or any later one) — with the
//! revenue and cumulative value per profile of each cohort, and whether newer cohorts retain
//! better or worse than older ones.

use std::collections::BTreeMap;

use chrono::{DateTime, Datelike, NaiveDate, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{Float64Type, Int64Type};
use hashbrown::HashMap;

use crate::funnel::strings;
use crate::identities::OwnerNumbers;
use crate::interner::Interner;
use crate::scope::{FieldRef, Scope, sql_string};
use crate::trends::interval;
use crate::{AnalyticsError, Data};

#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct CohortDefinition {
    #[serde(flatten)]
    pub scope: Scope,
    /// A profile's cohort starts with its first such event [default: its first event of any
    /// kind]. `from`/`to` select cohorts by that start; activity counts until the data ends.
    #[serde(default)]
    pub cohort_event: Option<String>,
    /// What counts as coming back [default: any event].
    #[serde(default)]
    pub return_event: Option<String>,
    /// day, week or month [default: month].
    #[serde(default = "default_interval")]
    pub interval: String,
    /// Periods after the cohort's own to show [default: 12].
    #[serde(default = "default_periods")]
    pub periods: usize,
    /// classic or rolling [default: classic].
    #[serde(default = "default_retention")]
    pub retention: String,
    /// The purchase event whose value makes the cohort's revenue [default: Order Completed].
    #[serde(default = "default_purchase")]
    pub purchase_event: String,
    /// The purchase's value [default: revenue].
    #[serde(default = "default_value")]
    pub value: String,
}

fn default_interval() -> String {
    "month".into()
}
fn default_periods() -> usize {
    12
}
fn default_retention() -> String {
    "classic".into()
}
fn default_purchase() -> String {
    "Order Completed".into()
}
fn default_value() -> String {
    "revenue".into()
}

pub const FIELDS: &[&str] = &[
    "cohort_event",
    "return_event",
    "interval",
    "periods",
    "retention",
    "purchase_event",
    "value",
];

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct CohortReport {
    pub interval: String,
    pub retention: String,
    /// The period the data ends in: cells after it are `null`, not zero, and its own cells
    /// count what happened up to the last event (on live data, the period still going).
    pub data_until: String,
    pub cohorts: Vec<Cohort>,
    /// Whether newer cohorts come back more or less often than older ones.
    pub trend: Option<CohortTrend>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Cohort {
    /// The cohort's first period, in the scope's zone.
    pub cohort: String,
    /// The breakdown value of each profile's cohort-starting event.
    pub breakdown: String,
    pub size: u64,
    /// Profiles retained in period 0, 1, … (`None` where the period has not ended… begun yet).
    pub retained: Vec<Option<u64>>,
    pub retention_rate: Vec<Option<f64>>,
    /// Purchase value in each period.
    pub revenue: Vec<Option<f64>>,
    /// Cumulative purchase value per cohort member up to each period.
    pub cumulative_value_per_profile: Vec<Option<f64>>,
}

/// A weighted least-squares line through period-1 retention against cohort order (weights:
/// cohort sizes).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct CohortTrend {
    pub metric: String,
    /// Change in the retention rate from one cohort to the next.
    pub slope_per_cohort: f64,
    pub standard_error: f64,
    /// `improving`, `worsening`, or `no clear trend` (slope within two standard errors of 0).
    pub verdict: String,
    pub cohorts_compared: usize,
}

/// `event = 'name'`, or `TRUE` for any event.
fn event_is(event: &Option<String>) -> String {
    match event {
        Some(name) => format!("event = {}", sql_string(name)),
        None => "TRUE".to_string(),
    }
}

/// Calendar periods (days, weeks from Monday, or months) in one time zone, numbered so that
/// consecutive periods differ by one: the difference of two numbers is the whole periods
/// between them, whatever the lengths of the months or daylight-saving changes in between.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Calendar {
    unit: Unit,
    zone: Tz,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Unit {
    Day,
    Week,
    Month,
}

impl Calendar {
    /// `unit` is one of day, week or month (checked by the caller).
    fn new(unit: &str, zone: Tz) -> Calendar {
        let unit = match unit {
            "week" => Unit::Week,
            "month" => Unit::Month,
            _ => Unit::Day,
        };
        Calendar { unit, zone }
    }

    /// The number of the period holding the instant `micros` (µs since the epoch, UTC).
    fn period(&self, micros: i64) -> i64 {
        let date = DateTime::from_timestamp_micros(micros)
            .unwrap_or_default()
            .with_timezone(&self.zone)
            .date_naive();
        match self.unit {
            Unit::Month => date.year() as i64 * 12 + date.month0() as i64,
            // Day 1 of the common era is a Monday, so weeks from Monday are whole sevens of days.
            Unit::Week => (date.num_days_from_ce() as i64 - 1).div_euclid(7),
            Unit::Day => date.num_days_from_ce() as i64,
        }
    }

    /// The first day of period `number`, as the report labels it (`2024-05-01`).
    fn label(&self, number: i64) -> String {
        let date = match self.unit {
            Unit::Month => NaiveDate::from_ymd_opt(
                number.div_euclid(12) as i32,
                number.rem_euclid(12) as u32 + 1,
                1,
            ),
            Unit::Week => i32::try_from(number * 7 + 1)
                .ok()
                .and_then(NaiveDate::from_num_days_from_ce_opt),
            Unit::Day => i32::try_from(number)
                .ok()
                .and_then(NaiveDate::from_num_days_from_ce_opt),
        };
        date.map(|d| d.format("%Y-%m-%d").to_string())
            .unwrap_or_default()
    }
}

/// No cohort event seen yet (a first time later than any).
const NEVER: i64 = i64::MAX;
/// Not in a counted cohort.
const NO_CELL: u32 = u32::MAX;

/// Each owner's cohort, by owner number ([`OwnerNumbers`]): when it starts and where it counts.
struct Member {
    /// The first qualifying event (µs), or [`NEVER`].
    first_micros: i64,
    /// The breakdown value (by number) of that event.
    breakdown: u32,
    /// The period the cohort starts in ([`Calendar::period`]).
    cohort: i64,
    /// The cell ([`Cells`]) the member counts in, or [`NO_CELL`]: its cohort starts outside the
    /// range asked for.
    cell: u32,
}

/// The cohorts (starting period × breakdown value) members fall into, numbered, with their
/// sizes.
#[derive(Default)]
struct Cells {
    index: HashMap<(i64, u32), u32>,
    /// Starting period, breakdown value, members.
    cells: Vec<(i64, u32, u64)>,
}

impl Cells {
    /// Counts a member of cohort `period` with breakdown value `breakdown`; the cell's number.
    fn join(&mut self, period: i64, breakdown: u32) -> u32 {
        let cell = *self.index.entry((period, breakdown)).or_insert_with(|| {
            self.cells.push((period, breakdown, 0));
            self.cells.len() as u32 - 1
        });
        self.cells[cell as usize].2 += 1;
        cell
    }
}

/// What members did after their cohort began, per member and per cell, periods counted from
/// each cohort's own (0 = the period it starts in).
struct Activity {
    /// Periods shown: 0 to `shown - 1`.
    shown: usize,
    /// Classic retention: per member, one bit per shown period it returned in.
    returned: Vec<u64>,
    words: usize,
    /// Rolling retention: per member, the last period it returned in (−1: none).
    last: Vec<i64>,
    /// Purchase value per cell and shown period.
    revenue: Vec<f64>,
}

impl Activity {
    fn new(members: usize, cells: usize, shown: usize, rolling: bool) -> Activity {
        let words = shown.div_ceil(64);
        Activity {
            shown,
            returned: if rolling {
                Vec::new()
            } else {
                vec![0; members * words]
            },
            words,
            last: if rolling {
                vec![-1; members]
            } else {
                Vec::new()
            },
            revenue: vec![0.0; cells * shown],
        }
    }

    /// Member `m` returned `k` periods after its cohort began.
    fn returned(&mut self, m: usize, k: i64) {
        if let Some(latest) = self.last.get_mut(m) {
            *latest = (*latest).max(k);
        } else if let Ok(k) = usize::try_from(k)
            && k < self.shown
        {
            self.returned[m * self.words + k / 64] |= 1 << (k % 64);
        }
    }

    /// Profiles retained per cell and shown period.
    fn retained(&self, members: &[Member], cells: usize) -> Vec<u64> {
        let mut counts = vec![0u64; cells * self.shown];
        for (m, member) in members.iter().enumerate() {
            if member.cell == NO_CELL {
                continue;
            }
            let row = &mut counts[member.cell as usize * self.shown..][..self.shown];
            if let Some(&latest) = self.last.get(m) {
                // Rolling: counted in every period up to the last it came back in.
                let through = usize::try_from(latest.saturating_add(1)).unwrap_or(0);
                for count in row.iter_mut().take(through) {
                    *count += 1;
                }
            } else {
                for (k, count) in row.iter_mut().enumerate() {
                    *count += (self.returned[m * self.words + k / 64] >> (k % 64)) & 1;
                }
            }
        }
        counts
    }
}

/// Reads an `Int64` column.
fn int64s(batch: &RecordBatch, column: usize) -> &arrow::array::Int64Array {
    batch.column(column).as_primitive::<Int64Type>()
}

impl CohortDefinition {
    pub async fn run(&self, data: &Data<'_>) -> Result<CohortReport, AnalyticsError> {
        let scope = self.scope.resolve()?;
        // Cohorts of an hour are not taken, though trends take hours.
        let unit = match self.interval.as_str() {
            "day" | "week" | "month" => interval(&self.interval, "interval")?,
            other => {
                return Err(AnalyticsError::invalid(
                    "interval",
                    format!("`{other}` is not a cohort interval; use day, week or month"),
                ));
            }
        };
        if self.periods == 0 || self.periods > 366 {
            return Err(AnalyticsError::invalid(
                "periods",
                "must be between 1 and 366",
            ));
        }
        let rolling = match self.retention.as_str() {
            "classic" => false,
            "rolling" | "unbounded" => true,
            other => {
                return Err(AnalyticsError::invalid(
                    "retention",
                    format!("`{other}` is not a retention kind; use classic or rolling"),
                ));
            }
        };
        let value = FieldRef::parse_number(&self.value, "value")?;
        crate::scope::no_empty_event_name(&self.cohort_event, "cohort_event")?;
        crate::scope::no_empty_event_name(&self.return_event, "return_event")?;
        let calendar = Calendar::new(unit, scope.zone);
        // Cohorts start at the first-ever occurrence, so activity before `from` still decides
        // who is new: the time range selects cohorts, not events.
        let mut everything = scope.clone();
        everything.from = None;
        everything.to = None;
        let from_micros = scope.from.map(|t| t.timestamp_micros());
        let to_micros = scope.to.map(|t| t.timestamp_micros());
        // Two passes over the events, each attributed to its owner here, one at a time, through
        // the identity index: the first finds each owner's cohort, the second counts what members
        // did from then on into small per-member and per-cell arrays. Grouping in SQL instead
        // (by identifier and period, attributed afterwards) held every identifier's periods at
        // once: at 50 million events that was the largest memory of any analysis.
        let segment = data.segment(&scope)?;
        let mut owners = OwnerNumbers::new(data.identity_index());
        let mut values = Interner::default();
        let mut members: Vec<Member> = Vec::new();
        // Each batch's rows' owners, reused from batch to batch.
        let mut owned: Vec<Option<u32>> = Vec::new();
        let first_events = everything.keyed_events(&[event_is(&self.cohort_event)], &[], "");
        data.lake
            .query_each(
                &format!(
                    "WITH base AS ({first_events}) \
                     SELECT id_type, id_value, CAST(ts AS BIGINT), breakdown FROM base \
                     WHERE keep AND id_value IS NOT NULL"
                ),
                &data.limits,
                data.tables.clone(),
                |batch| {
                    owners.of_rows(batch, &mut owned);
                    let micros = int64s(batch, 2);
                    let breakdown = strings(batch.column(3).as_ref());
                    for (row, owner) in owned.iter().enumerate() {
                        // Owners outside the segment join no cohort.
                        let Some(owner) = owner.filter(|o| segment.admits(*o)) else {
                            continue;
                        };
                        let breakdown = segment.breakdown(owner, breakdown(row));
                        let owner = owner as usize;
                        if members.len() <= owner {
                            members.resize_with(owners.bound().max(owner + 1), || Member {
                                first_micros: NEVER,
                                breakdown: 0,
                                cohort: 0,
                                cell: NO_CELL,
                            });
                        }
                        let at = micros.value(row);
                        if at < members[owner].first_micros {
                            members[owner].first_micros = at;
                            members[owner].breakdown = values.number(breakdown);
                        }
                    }
                },
            )
            .await?;
        // Members whose cohort starts in the range get their cell; the others are left out.
        let mut cells = Cells::default();
        for member in &mut members {
            if member.first_micros != NEVER {
                member.cohort = calendar.period(member.first_micros);
                if from_micros.is_none_or(|from| member.first_micros >= from)
                    && to_micros.is_none_or(|to| member.first_micros < to)
                {
                    member.cell = cells.join(member.cohort, member.breakdown);
                }
            }
        }

        let shown = self.periods + 1;
        let mut activity = Activity::new(members.len(), cells.cells.len(), shown, rolling);
        let returning = event_is(&self.return_event);
        let purchase = format!("event = {}", sql_string(&self.purchase_event));
        let later_events = everything.keyed_events(
            &[format!("(({returning}) OR {purchase})")],
            &[],
            &format!(
                "{returning} AS is_return, {purchase} AS is_purchase, {} AS value",
                value.number_sql("e")
            ),
        );
        data.lake
            .query_each(
                &format!(
                    "WITH base AS ({later_events}) \
                     SELECT id_type, id_value, CAST(ts AS BIGINT), is_return, is_purchase, \
                            CAST(value AS DOUBLE) FROM base \
                     WHERE keep AND id_value IS NOT NULL"
                ),
                &data.limits,
                data.tables.clone(),
                |batch| {
                    owners.of_rows(batch, &mut owned);
                    let micros = int64s(batch, 2);
                    let returning = batch.column(3).as_boolean();
                    let purchase = batch.column(4).as_boolean();
                    let value = batch.column(5).as_primitive::<Float64Type>();
                    for (row, owner) in owned.iter().enumerate() {
                        let Some(m) = owner.map(|o| o as usize) else {
                            continue;
                        };
                        let Some(member) = members.get(m).filter(|m| m.cell != NO_CELL) else {
                            continue;
                        };
                        let at = micros.value(row);
                        // Only what follows the start of the member's cohort counts.
                        if at < member.first_micros {
                            continue;
                        }
                        let k = calendar.period(at) - member.cohort;
                        if returning.is_valid(row) && returning.value(row) {
                            activity.returned(m, k);
                        }
                        if purchase.is_valid(row)
                            && purchase.value(row)
                            && value.is_valid(row)
                            && let Ok(k) = usize::try_from(k)
                            && k < shown
                        {
                            activity.revenue[member.cell as usize * shown + k] += value.value(row);
                        }
                    }
                },
            )
            .await?;
        let retained = activity.retained(&members, cells.cells.len());

        let mut filters = scope.filters.clone();
        if filters.is_empty() {
            filters.push("TRUE".into());
        }
        let last = data
            .rows(&format!(
                "SELECT CAST(MAX(e.timestamp) AS BIGINT) FROM events e WHERE {}",
                filters.join(" AND ")
            ))
            .await?;
        let until = last
            .first()
            .and_then(|row| row.first())
            .and_then(serde_json::Value::as_i64)
            .map(|micros| calendar.period(micros));
        let data_until = until.map(|p| calendar.label(p)).unwrap_or_default();

        let mut cohorts: BTreeMap<(String, String), Cohort> = BTreeMap::new();
        // The period the data ends in is still going when the analysis looks up to a moment
        // inside it (now, or `to`): a cohort whose period 1 it is would read, against whole
        // periods, as a fall in retention.
        let looked_until = scope.to.map_or(Utc::now(), |to| to.min(Utc::now()));
        let going = calendar.period(looked_until.timestamp_micros().saturating_sub(1));
        let unfinished = until.filter(|&until| until >= going);
        let mut period_one_unfinished: Vec<String> = Vec::new();
        for (cell, &(period, breakdown, size)) in cells.cells.iter().enumerate() {
            if unfinished == Some(period + 1) {
                period_one_unfinished.push(calendar.label(period));
            }
            // Periods that have begun by the end of the data; later ones are `null`.
            let observable = until.map_or(0, |until| (until - period).max(-1) + 1);
            let observed = |k: usize| (k as i64) < observable;
            let row = cell * shown..(cell + 1) * shown;
            let retained: Vec<Option<u64>> = retained[row.clone()]
                .iter()
                .enumerate()
                .map(|(k, &n)| observed(k).then_some(n))
                .collect();
            let revenue: Vec<Option<f64>> = activity.revenue[row]
                .iter()
                .enumerate()
                .map(|(k, &v)| observed(k).then_some(v))
                .collect();
            let divisor = size.max(1) as f64;
            let mut total = 0.0;
            let cohort = Cohort {
                cohort: calendar.label(period),
                breakdown: values.names()[breakdown as usize].clone(),
                size,
                retention_rate: retained
                    .iter()
                    .map(|c| c.map(|n| n as f64 / divisor))
                    .collect(),
                cumulative_value_per_profile: revenue
                    .iter()
                    .map(|r| {
                        r.map(|value| {
                            total += value;
                            total / divisor
                        })
                    })
                    .collect(),
                retained,
                revenue,
            };
            cohorts.insert((cohort.cohort.clone(), cohort.breakdown.clone()), cohort);
        }
        let cohorts: Vec<Cohort> = cohorts.into_values().collect();
        let finished: Vec<Cohort> = cohorts
            .iter()
            .filter(|c| !period_one_unfinished.contains(&c.cohort))
            .cloned()
            .collect();
        let trend = trend_of(&finished, 1);
        Ok(CohortReport {
            interval: unit.into(),
            retention: if rolling { "rolling" } else { "classic" }.into(),
            data_until,
            cohorts,
            trend,
        })
    }
}

/// Weighted least squares of retention at `period` on cohort order, over the cohorts (of all
/// breakdowns together) where that period has been observed.
pub fn trend_of(cohorts: &[Cohort], period: usize) -> Option<CohortTrend> {
    let mut by_cohort: BTreeMap<&str, (f64, f64)> = BTreeMap::new();
    for cohort in cohorts {
        if let Some(Some(retained)) = cohort.retained.get(period) {
            let entry = by_cohort.entry(&cohort.cohort).or_default();
            entry.0 += *retained as f64;
            entry.1 += cohort.size as f64;
        }
    }
    let points: Vec<(f64, f64, f64)> = by_cohort
        .values()
        .enumerate()
        .filter(|(_, (_, size))| *size > 0.0)
        .map(|(i, (retained, size))| (i as f64, retained / size, *size))
        .collect();
    if points.len() < 3 {
        return None;
    }
    let weight: f64 = points.iter().map(|p| p.2).sum();
    let mean_x = points.iter().map(|p| p.0 * p.2).sum::<f64>() / weight;
    let mean_y = points.iter().map(|p| p.1 * p.2).sum::<f64>() / weight;
    let sxx: f64 = points.iter().map(|p| p.2 * (p.0 - mean_x).powi(2)).sum();
    let sxy: f64 = points
        .iter()
        .map(|p| p.2 * (p.0 - mean_x) * (p.1 - mean_y))
        .sum();
    if sxx <= 0.0 {
        return None;
    }
    let slope = sxy / sxx;
    // Residual variance per unit weight, scaled as in weighted regression with n − 2 degrees of
    // freedom (weights normalised to sum to n).
    let n = points.len() as f64;
    let residual: f64 = points
        .iter()
        .map(|p| p.2 * (p.1 - mean_y - slope * (p.0 - mean_x)).powi(2))
        .sum();
    let standard_error = (residual / (n - 2.0) / sxx).sqrt();
    let verdict = if slope.abs() <= 2.0 * standard_error {
        "no clear trend"
    } else if slope > 0.0 {
        "improving"
    } else {
        "worsening"
    };
    Some(CohortTrend {
        metric: format!("retention in period {period}"),
        slope_per_cohort: slope,
        standard_error,
        verdict: verdict.into(),
        cohorts_compared: points.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cohort(name: &str, size: u64, retained_at_1: u64) -> Cohort {
        Cohort {
            cohort: name.into(),
            breakdown: "all".into(),
            size,
            retained: vec![Some(size), Some(retained_at_1)],
            retention_rate: Vec::new(),
            revenue: Vec::new(),
            cumulative_value_per_profile: Vec::new(),
        }
    }

    #[test]
    fn periods_are_calendar_units_in_the_local_zone() {
        let at = |s: &str| DateTime::parse_from_rfc3339(s).unwrap().timestamp_micros();
        let mexico: Tz = "America/Mexico_City".parse().unwrap();
        let months = Calendar::new("month", mexico);
        // 1 March 03:00 UTC is still 28 February in Mexico City (UTC−6).
        assert_eq!(
            months.label(months.period(at("2024-03-01T03:00:00Z"))),
            "2024-02-01"
        );
        assert_eq!(
            months.period(at("2024-01-01T06:00:00Z")) - months.period(at("2023-12-31T05:59:59Z")),
            1
        );
        assert_eq!(
            months.period(at("2025-02-15T12:00:00Z")) - months.period(at("2024-01-31T12:00:00Z")),
            13
        );
        let weeks = Calendar::new("week", Tz::UTC);
        // Monday 2024-01-01 to Monday 2024-01-15: two weeks; Sunday the 14th is in the week before.
        let monday = weeks.period(at("2024-01-01T00:00:00Z"));
        assert_eq!(weeks.period(at("2024-01-15T00:00:00Z")) - monday, 2);
        assert_eq!(weeks.period(at("2024-01-14T23:59:59Z")) - monday, 1);
        assert_eq!(
            weeks.label(weeks.period(at("2024-01-10T09:00:00Z"))),
            "2024-01-08"
        );
        let days = Calendar::new("day", "Europe/Madrid".parse().unwrap());
        // Across the spring-forward night (31 March 2024, a 23-hour day): still one day a day.
        assert_eq!(
            days.period(at("2024-04-01T10:00:00Z")) - days.period(at("2024-03-30T10:00:00Z")),
            2
        );
        assert_eq!(
            days.label(days.period(at("2024-03-30T23:30:00Z"))),
            "2024-03-31"
        );
    }

    #[test]
    fn a_steady_decline_across_cohorts_is_called_worsening() {
        let cohorts = vec![
            cohort("2024-01-01", 1000, 400),
            cohort("2024-02-01", 1000, 350),
            cohort("2024-03-01", 1000, 310),
            cohort("2024-04-01", 1000, 250),
        ];
        let trend = trend_of(&cohorts, 1).unwrap();
        assert!((trend.slope_per_cohort + 0.049).abs() < 1e-9, "{trend:?}");
        assert_eq!(trend.verdict, "worsening");
        let noisy = vec![
            cohort("2024-01-01", 100, 40),
            cohort("2024-02-01", 100, 20),
            cohort("2024-03-01", 100, 45),
            cohort("2024-04-01", 100, 30),
        ];
        assert_eq!(trend_of(&noisy, 1).unwrap().verdict, "no clear trend");
        assert_eq!(trend_of(&cohorts[..2], 1), None);
    }
}
