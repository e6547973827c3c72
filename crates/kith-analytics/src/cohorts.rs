//! Cohorts and retention: profiles grouped by when they first did something (first seen, first
//! purchase, or any chosen event), and how many come back in each later period — classic
//! (active in that period) or rolling (active in that period or any later one) — with the
//! revenue and cumulative value per profile of each cohort, and whether newer cohorts retain
//! better or worse than older ones.

use std::collections::BTreeMap;

use chrono::{Datelike, NaiveDate};
use serde::{Deserialize, Serialize};

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{Float64Type, Int64Type};
use hashbrown::{HashMap, HashSet};
use kith_lake::output;

use crate::funnel::strings;
use crate::identities::{KeyType, Owner};
use crate::scope::{FieldRef, Resolved, Scope, sql_string};
use crate::trends::{bucket_label, interval};
use crate::{AnalyticsError, Data, count, number, text};

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
    /// The last period with data: cells after it are `null`, not zero.
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

/// The cohort queries' common ground: the events keyed by identifier
/// ([`Resolved::keyed_events`], available to each query as `base`), and the identity index
/// that attributes each key.
struct Keyed<'a, 'd> {
    data: &'a Data<'d>,
    events: String,
}

impl Keyed<'_, '_> {
    /// Runs `query` (over `base`, its first two columns the key: `id_type`, `id_value`) and
    /// hands each row whose key belongs to a profile (or to no profile yet) to `each`, with
    /// its owner.
    async fn each_row(
        &self,
        query: &str,
        mut each: impl FnMut(&RecordBatch, usize, Owner) + Send,
    ) -> Result<(), AnalyticsError> {
        let identities = self.data.identity_index();
        self.data
            .lake
            .query_each(
                &format!("WITH base AS ({}) {query}", self.events),
                &self.data.limits,
                self.data.tables.clone(),
                |batch| {
                    let id_type = strings(batch.column(0).as_ref());
                    let id_value = strings(batch.column(1).as_ref());
                    for row in 0..batch.num_rows() {
                        if let Some(owner) = KeyType::parse(id_type(row))
                            .and_then(|t| identities.owner(t, id_value(row)))
                        {
                            each(batch, row, owner);
                        }
                    }
                },
            )
            .await?;
        Ok(())
    }
}

/// Every profile with a qualifying event, numbered.
#[derive(Default)]
struct Members {
    of: HashMap<Owner, usize>,
    list: Vec<Member>,
}

impl Members {
    /// The member `owner` is, when its cohort is one of those counted: its number, the start
    /// of its cohort (µs) and its cell.
    fn counted(&self, owner: &Owner) -> Option<(usize, i64, usize)> {
        let &m = self.of.get(owner)?;
        let member = &self.list[m];
        Some((m, member.first_micros, member.cell?))
    }
}

/// Which members returned in which periods (µs keys), each period's bucket as the query gave
/// it, and each member's last period with its bucket.
#[derive(Default)]
struct Returns {
    returned: HashSet<(usize, i64)>,
    periods: HashMap<i64, serde_json::Value>,
    last: HashMap<usize, (i64, serde_json::Value)>,
}

/// A member of a cohort: when its cohort starts (µs), the cohort's bucket and breakdown, and the
/// cell it counts in (`None`: its cohort starts outside the range asked for).
struct Member {
    first_micros: i64,
    cohort: serde_json::Value,
    breakdown: String,
    cell: Option<usize>,
}

/// The cohorts (bucket × breakdown) members fall into, numbered, with their sizes.
#[derive(Default)]
struct Cells {
    index: HashMap<(String, String), usize>,
    cells: Vec<(serde_json::Value, String, u64)>,
}

impl Cells {
    /// Counts `member` in its cell; the cell's number.
    fn join(&mut self, member: &Member) -> usize {
        let key = (text(&member.cohort), member.breakdown.clone());
        let cell = *self.index.entry(key).or_insert_with(|| {
            self.cells
                .push((member.cohort.clone(), member.breakdown.clone(), 0));
            self.cells.len() - 1
        });
        self.cells[cell].2 += 1;
        cell
    }

    /// `[cohort, breakdown, size]` per cell.
    fn size_rows(&self) -> Vec<Vec<serde_json::Value>> {
        self.cells
            .iter()
            .map(|(cohort, breakdown, size)| {
                vec![cohort.clone(), breakdown.as_str().into(), (*size).into()]
            })
            .collect()
    }

    /// `[cohort, breakdown, period, figure]` per (cell, period µs) with its figure; `periods`
    /// holds each period's bucket as the queries returned it.
    fn period_rows<N: Into<serde_json::Value>>(
        &self,
        figures: HashMap<(usize, i64), N>,
        periods: &HashMap<i64, serde_json::Value>,
    ) -> Vec<Vec<serde_json::Value>> {
        figures
            .into_iter()
            .filter_map(|((cell, at), figure)| {
                let (cohort, breakdown, _) = self.cells.get(cell)?;
                Some(vec![
                    cohort.clone(),
                    breakdown.as_str().into(),
                    periods.get(&at)?.clone(),
                    figure.into(),
                ])
            })
            .collect()
    }
}

/// Whole periods from `start` to `at` (dates in the scope's zone).
fn periods_between(start: NaiveDate, at: NaiveDate, unit: &str) -> i64 {
    match unit {
        "month" => {
            (at.year() as i64 * 12 + at.month0() as i64)
                - (start.year() as i64 * 12 + start.month0() as i64)
        }
        "week" => (at - start).num_days().div_euclid(7),
        _ => (at - start).num_days(),
    }
}

fn date_of(label: &str) -> Option<NaiveDate> {
    NaiveDate::parse_from_str(label.get(..10)?, "%Y-%m-%d").ok()
}

impl CohortDefinition {
    pub async fn run(&self, data: &Data<'_>) -> Result<CohortReport, AnalyticsError> {
        let scope = self.scope.resolve()?;
        let unit = interval(&self.interval, "interval")?;
        if unit == "hour" {
            return Err(AnalyticsError::invalid(
                "interval",
                "must be day, week or month",
            ));
        }
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
        let value = FieldRef::parse(&self.value, "value")?;
        // Cohorts start at the first-ever occurrence, so activity before `from` still decides
        // who is new: the time range selects cohorts, not events.
        let mut everything = scope.clone();
        everything.from = None;
        everything.to = None;
        let from_micros = scope.from.map(|t| t.timestamp_micros());
        let to_micros = scope.to.map(|t| t.timestamp_micros());
        // Every query groups the events by their attribution key in SQL and the groups are
        // attributed to profiles here, through the identity index, as RFM does: joining every
        // event to the 2.6 million identifiers of a 50-million-event world is a hash join that
        // cannot spill, and it failed or ran for minutes under the query's memory limit.
        let keyed = Keyed {
            data,
            events: everything.keyed_events(
                &[],
                &[],
                &format!("e.event AS event, {} AS value", value.number_sql("e")),
            ),
        };
        let mut members = self.members(&keyed, &scope, unit).await?;
        // Members whose cohort starts in the range get their cell; the others are left out.
        let mut cells = Cells::default();
        for m in &mut members.list {
            if from_micros.is_none_or(|from| m.first_micros >= from)
                && to_micros.is_none_or(|to| m.first_micros < to)
            {
                m.cell = Some(cells.join(m));
            }
        }
        let sizes = cells.size_rows();
        let period = scope.bucket_sql(unit, "ts");
        let returns = self.returns(&keyed, &members, &period).await?;
        let mut counts: HashMap<(usize, i64), u64> = HashMap::new();
        let active = if rolling {
            let mut values: HashMap<i64, serde_json::Value> = HashMap::new();
            for (m, (at, value)) in returns.last {
                if let Some(cell) = members.list[m].cell {
                    *counts.entry((cell, at)).or_default() += 1;
                    values.entry(at).or_insert(value);
                }
            }
            cells.period_rows(counts, &values)
        } else {
            for (m, at) in returns.returned {
                if let Some(cell) = members.list[m].cell {
                    *counts.entry((cell, at)).or_default() += 1;
                }
            }
            cells.period_rows(counts, &returns.periods)
        };
        let (spent, revenue_periods) = self.revenue(&keyed, &members, &period).await?;
        let revenue = cells.period_rows(spent, &revenue_periods);
        let mut filters = scope.filters.clone();
        if filters.is_empty() {
            filters.push("TRUE".into());
        }
        let last = data
            .rows(&format!(
                "SELECT {} FROM events e WHERE {}",
                scope.bucket_sql(unit, "MAX(e.timestamp)"),
                filters.join(" AND ")
            ))
            .await?;
        let data_until = last
            .first()
            .map(|row| bucket_label(&text(&row[0]), unit, scope.zone))
            .unwrap_or_default();
        let until = date_of(&data_until);

        let label = |v: &serde_json::Value| bucket_label(&text(v), unit, scope.zone);
        let mut cohorts: BTreeMap<(String, String), Cohort> = BTreeMap::new();
        for row in &sizes {
            let cohort = label(&row[0]);
            let observable = match (date_of(&cohort), until) {
                (Some(start), Some(until)) => periods_between(start, until, unit).max(-1) + 1,
                _ => 0,
            };
            let cells = |zero| {
                (0..=self.periods)
                    .map(|k| ((k as i64) < observable).then_some(zero))
                    .collect::<Vec<_>>()
            };
            cohorts.insert(
                (cohort.clone(), text(&row[1])),
                Cohort {
                    cohort,
                    breakdown: text(&row[1]),
                    size: count(&row[2]),
                    retained: cells(0),
                    retention_rate: Vec::new(),
                    revenue: cells(0).into_iter().map(|c| c.map(|_| 0.0)).collect(),
                    cumulative_value_per_profile: Vec::new(),
                },
            );
        }
        let offset = |cohort: &Cohort, period: &serde_json::Value| -> Option<usize> {
            let start = date_of(&cohort.cohort)?;
            let at = date_of(&label(period))?;
            usize::try_from(periods_between(start, at, unit)).ok()
        };
        for row in &active {
            let Some(cohort) = cohorts.get_mut(&(label(&row[0]), text(&row[1]))) else {
                continue;
            };
            let Some(k) = offset(cohort, &row[2]) else {
                continue;
            };
            let profiles = count(&row[3]);
            if rolling {
                for cell in cohort.retained.iter_mut().take(k + 1).flatten() {
                    *cell += profiles;
                }
            } else if let Some(Some(cell)) = cohort.retained.get_mut(k) {
                *cell += profiles;
            }
        }
        for row in &revenue {
            let Some(cohort) = cohorts.get_mut(&(label(&row[0]), text(&row[1]))) else {
                continue;
            };
            if let Some(k) = offset(cohort, &row[2])
                && let Some(Some(cell)) = cohort.revenue.get_mut(k)
            {
                *cell += number(&row[3]);
            }
        }
        let mut cohorts: Vec<Cohort> = cohorts.into_values().collect();
        for cohort in &mut cohorts {
            let size = cohort.size.max(1) as f64;
            cohort.retention_rate = cohort
                .retained
                .iter()
                .map(|c| c.map(|n| n as f64 / size))
                .collect();
            let mut total = 0.0;
            cohort.cumulative_value_per_profile = cohort
                .revenue
                .iter()
                .map(|r| {
                    r.map(|value| {
                        total += value;
                        total / size
                    })
                })
                .collect();
        }
        let trend = trend_of(&cohorts, 1);
        Ok(CohortReport {
            interval: unit.into(),
            retention: if rolling { "rolling" } else { "classic" }.into(),
            data_until,
            cohorts,
            trend,
        })
    }

    /// Each profile's cohort: its first qualifying event over all its identifiers.
    async fn members(
        &self,
        keyed: &Keyed<'_, '_>,
        scope: &Resolved,
        unit: &str,
    ) -> Result<Members, AnalyticsError> {
        let first_breakdown = if scope.breakdown.is_some() {
            "first_value(breakdown ORDER BY ts)"
        } else {
            // Without a breakdown every event's is the same constant: a plain MIN gives it,
            // where an ordered `first_value` keeps each group's ordering state row by row.
            "MIN(breakdown)"
        };
        let mut members = Members::default();
        keyed
            .each_row(
                &format!(
                    "SELECT id_type, id_value, CAST(MIN(ts) AS BIGINT) AS first_micros, \
                            {first_breakdown} AS cohort_breakdown, {cohort} AS cohort \
                     FROM base WHERE keep AND id_value IS NOT NULL AND {condition} \
                     GROUP BY id_type, id_value",
                    cohort = scope.bucket_sql(unit, "MIN(ts)"),
                    condition = event_is(&self.cohort_event),
                ),
                |batch, row, owner| {
                    let candidate = Member {
                        first_micros: batch.column(2).as_primitive::<Int64Type>().value(row),
                        breakdown: strings(batch.column(3).as_ref())(row).to_string(),
                        cohort: output::json_value(batch.column(4).as_ref(), row),
                        cell: None,
                    };
                    match members.of.get(&owner) {
                        Some(&m) => {
                            if candidate.first_micros < members.list[m].first_micros {
                                members.list[m] = candidate;
                            }
                        }
                        None => {
                            members.of.insert(owner, members.list.len());
                            members.list.push(candidate);
                        }
                    }
                },
            )
            .await?;
        Ok(members)
    }

    /// Per member, the periods (bucketed by `period`) it returned in and its last one: per
    /// identifier and period, the last returning event; a member returned in a period when one of
    /// its identifiers has a returning event there at or after the start of its cohort.
    async fn returns(
        &self,
        keyed: &Keyed<'_, '_>,
        members: &Members,
        period: &str,
    ) -> Result<Returns, AnalyticsError> {
        let mut returns = Returns::default();
        keyed
            .each_row(
                &format!(
                    "SELECT id_type, id_value, CAST(MAX(ts) AS BIGINT) AS last_micros, \
                            CAST(period AS BIGINT) AS period_key, period \
                     FROM (SELECT id_type, id_value, ts, {period} AS period FROM base \
                           WHERE keep AND id_value IS NOT NULL AND {returning}) \
                     GROUP BY id_type, id_value, period",
                    returning = event_is(&self.return_event),
                ),
                |batch, row, owner| {
                    let Some((m, start, _)) = members.counted(&owner) else {
                        return;
                    };
                    if batch.column(2).as_primitive::<Int64Type>().value(row) < start {
                        return;
                    }
                    let at = batch.column(3).as_primitive::<Int64Type>().value(row);
                    let bucket = || output::json_value(batch.column(4).as_ref(), row);
                    if returns.returned.insert((m, at)) {
                        returns.periods.entry(at).or_insert_with(bucket);
                    }
                    if returns.last.get(&m).is_none_or(|(latest, _)| at > *latest) {
                        returns.last.insert(m, (at, bucket()));
                    }
                },
            )
            .await?;
        Ok(returns)
    }

    /// Revenue per (cell, period) and each period's bucket: purchases per identifier and period.
    /// A group that straddles the start of its member's cohort (purchases before the cohort
    /// event, in the same period) is summed again from its events, so only those at or after
    /// the start count.
    async fn revenue(
        &self,
        keyed: &Keyed<'_, '_>,
        members: &Members,
        period: &str,
    ) -> Result<(HashMap<(usize, i64), f64>, HashMap<i64, serde_json::Value>), AnalyticsError> {
        let purchase = format!("event = {}", sql_string(&self.purchase_event));
        let mut spent: HashMap<(usize, i64), f64> = HashMap::new();
        let mut periods: HashMap<i64, serde_json::Value> = HashMap::new();
        let mut straddling: HashSet<(Owner, i64)> = HashSet::new();
        keyed
            .each_row(
                &format!(
                    "SELECT id_type, id_value, CAST(MIN(ts) AS BIGINT) AS first_micros, \
                            CAST(MAX(ts) AS BIGINT) AS last_micros, \
                            CAST(period AS BIGINT) AS period_key, period, \
                            CAST(SUM(value) AS DOUBLE) AS spent \
                     FROM (SELECT id_type, id_value, ts, value, {period} AS period FROM base \
                           WHERE keep AND id_value IS NOT NULL AND {purchase}) \
                     GROUP BY id_type, id_value, period"
                ),
                |batch, row, owner| {
                    let Some((_, start, cell)) = members.counted(&owner) else {
                        return;
                    };
                    let micros =
                        |column: usize| batch.column(column).as_primitive::<Int64Type>().value(row);
                    let (first, last, at) = (micros(2), micros(3), micros(4));
                    if last < start {
                        return;
                    }
                    periods
                        .entry(at)
                        .or_insert_with(|| output::json_value(batch.column(5).as_ref(), row));
                    let sum = batch.column(6).as_primitive::<Float64Type>();
                    if first < start {
                        straddling.insert((owner, at));
                    } else if !sum.is_null(row) {
                        *spent.entry((cell, at)).or_default() += sum.value(row);
                    }
                },
            )
            .await?;
        if !straddling.is_empty() {
            keyed
                .each_row(
                    &format!(
                        "SELECT id_type, id_value, CAST(ts AS BIGINT) AS micros, \
                                CAST({period} AS BIGINT) AS period_key, \
                                CAST(value AS DOUBLE) AS spent \
                         FROM base WHERE keep AND id_value IS NOT NULL AND {purchase} \
                           AND value IS NOT NULL"
                    ),
                    |batch, row, owner| {
                        let Some((_, start, cell)) = members.counted(&owner) else {
                            return;
                        };
                        let ts = batch.column(2).as_primitive::<Int64Type>().value(row);
                        let at = batch.column(3).as_primitive::<Int64Type>().value(row);
                        if ts >= start && straddling.contains(&(owner, at)) {
                            let value = batch.column(4).as_primitive::<Float64Type>().value(row);
                            *spent.entry((cell, at)).or_default() += value;
                        }
                    },
                )
                .await?;
        }
        Ok((spent, periods))
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
    fn periods_count_calendar_units_in_the_local_zone() {
        let d = |s| NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap();
        assert_eq!(
            periods_between(d("2024-01-01"), d("2024-03-01"), "month"),
            2
        );
        assert_eq!(
            periods_between(d("2023-12-01"), d("2024-01-01"), "month"),
            1
        );
        assert_eq!(periods_between(d("2024-01-01"), d("2024-01-15"), "week"), 2);
        assert_eq!(periods_between(d("2024-03-09"), d("2024-03-11"), "day"), 2);
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
