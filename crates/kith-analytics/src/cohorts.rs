//! Cohorts and retention: profiles grouped by when they first did something (first seen, first
//! purchase, or any chosen event), and how many come back in each later period — classic
//! (active in that period) or rolling (active in that period or any later one) — with the
//! revenue and cumulative value per profile of each cohort, and whether newer cohorts retain
//! better or worse than older ones.

use std::collections::BTreeMap;

use chrono::{Datelike, NaiveDate};
use serde::{Deserialize, Serialize};

use crate::scope::{FieldRef, Scope, instant_sql, sql_string};
use crate::trends::{bucket_label, interval};
use kith_lake::{ExtraTable, QueryLimits};

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

/// `limits` without a row cap: the members table holds one row per profile.
fn unbounded_rows(limits: &QueryLimits) -> QueryLimits {
    QueryLimits {
        max_rows: 1 << 40,
        ..limits.clone()
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
        let all_events = everything.attributed_events(
            &[],
            &format!("e.event AS event, {} AS value", value.number_sql("e")),
        );
        let is = |event: &Option<String>| match event {
            Some(name) => format!("event = {}", sql_string(name)),
            None => "TRUE".to_string(),
        };
        let mut range = Vec::new();
        if let Some(from) = scope.from {
            range.push(format!("first_ts >= {}", instant_sql(from)));
        }
        if let Some(to) = scope.to {
            range.push(format!("first_ts < {}", instant_sql(to)));
        }
        let range = if range.is_empty() {
            "TRUE".to_string()
        } else {
            range.join(" AND ")
        };
        // Each profile's cohort, computed once and handed to the next queries as a table: the
        // events are scanned twice in all (cohorts, then returns and revenue together), not once
        // per figure.
        // Without a breakdown every event's is the same constant, and a plain MIN gives it:
        // DataFusion groups that with its vectorised accumulators, where an ordered
        // `first_value` keeps each profile's ordering state row by row.
        let first_breakdown = if scope.breakdown.is_some() {
            "first_value(breakdown ORDER BY ts)"
        } else {
            "MIN(breakdown)"
        };
        let members = data
            .lake
            .query_with(
                &format!(
                    "WITH all_events AS ({all_events}), \
                     firsts AS (SELECT profile_id, MIN(ts) AS first_ts, \
                                       {first_breakdown} AS cohort_breakdown \
                                FROM all_events WHERE {cohort} GROUP BY profile_id) \
                     SELECT profile_id, first_ts, cohort_breakdown, {bucket} AS cohort \
                     FROM firsts WHERE {range}",
                    cohort = is(&self.cohort_event),
                    bucket = scope.bucket_sql(unit, "first_ts"),
                ),
                &unbounded_rows(&data.limits),
                data.tables.clone(),
            )
            .await?;
        let mut tables = data.tables.clone();
        tables.push(ExtraTable {
            name: "kith_cohort_members".into(),
            schema: members.schema.clone(),
            batches: members.batches,
        });
        let with_members = Data {
            lake: data.lake,
            tables,
            limits: data.limits.clone(),
            identities: data.identities.clone(),
        };
        let sizes = with_members
            .rows(
                "SELECT cohort, cohort_breakdown, COUNT(*) FROM kith_cohort_members GROUP BY 1, 2",
            )
            .await?;
        let period = scope.bucket_sql(unit, "e.ts");
        let joined = format!(
            "WITH all_events AS ({all_events}) SELECT c.profile_id, c.cohort, c.cohort_breakdown, \
                    {period} AS period, e.event, e.value \
             FROM kith_cohort_members c JOIN all_events e ON e.profile_id = c.profile_id \
             WHERE e.ts >= c.first_ts"
        );
        // Classic retention and revenue per period in one pass; rolling needs each member's last
        // return, a pass of its own. Members are first grouped per period (did they return, what
        // did they spend), then counted: a plain grouping can spill to disk when memory runs
        // short, where `COUNT(DISTINCT profile_id)` holds every profile id of every period in
        // memory (at 50 million events it went past the query's 1 GiB).
        let per_period = with_members
            .rows(&format!(
                "WITH j AS ({joined}), \
                 per_member AS (SELECT cohort, cohort_breakdown, period, profile_id, \
                    MAX(CASE WHEN {returning} THEN 1 ELSE 0 END) AS returned, \
                    SUM(CASE WHEN event = {purchase} THEN value END) AS spent \
                    FROM j GROUP BY 1, 2, 3, 4) \
                 SELECT cohort, cohort_breakdown, period, SUM(returned), COALESCE(SUM(spent), 0.0) \
                 FROM per_member GROUP BY 1, 2, 3",
                returning = is(&self.return_event),
                purchase = sql_string(&self.purchase_event),
            ))
            .await?;
        let active = if rolling {
            with_members
                .rows(&format!(
                    "WITH j AS ({joined}) SELECT cohort, cohort_breakdown, last_period, COUNT(*) FROM \
                     (SELECT profile_id, cohort, cohort_breakdown, MAX(period) AS last_period \
                      FROM j WHERE {returning} GROUP BY 1, 2, 3) GROUP BY 1, 2, 3",
                    returning = is(&self.return_event),
                ))
                .await?
        } else {
            per_period.iter().map(|row| row[..4].to_vec()).collect()
        };
        let revenue: Vec<Vec<serde_json::Value>> = per_period
            .iter()
            .map(|row| {
                vec![
                    row[0].clone(),
                    row[1].clone(),
                    row[2].clone(),
                    row[4].clone(),
                ]
            })
            .collect();
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
