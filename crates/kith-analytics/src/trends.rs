//! Trends: how many events, how many distinct profiles (exact or approximate), or the sum or
//! mean of a property, per hour, day, week or month, optionally by a breakdown.

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

use crate::scope::{FieldRef, Scope, sql_string};
use crate::{AnalyticsError, Data, number, text};

#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct TrendDefinition {
    #[serde(flatten)]
    pub scope: Scope,
    /// Only this event [default: every event].
    #[serde(default)]
    pub event: Option<String>,
    /// hour, day, week (starting Monday) or month [default: day].
    #[serde(default = "default_interval")]
    pub interval: String,
    /// count, unique_profiles, approx_unique_profiles, sum or mean [default: count].
    #[serde(default = "default_measure")]
    pub measure: String,
    /// The field summed or averaged (sum and mean), e.g. `revenue` or `properties.quantity`.
    #[serde(default)]
    pub property: Option<String>,
}

fn default_interval() -> String {
    "day".into()
}
fn default_measure() -> String {
    "count".into()
}

pub const FIELDS: &[&str] = &["event", "interval", "measure", "property"];

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TrendReport {
    pub interval: String,
    pub measure: String,
    pub points: Vec<TrendPoint>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TrendPoint {
    /// The bucket's start in the scope's zone (`2024-05-01`, or `2024-05-01T13:00` for hours).
    pub bucket: String,
    pub breakdown: String,
    pub value: f64,
}

/// Checks an interval name.
pub fn interval(name: &str, at: &str) -> Result<&'static str, AnalyticsError> {
    match name {
        "hour" => Ok("hour"),
        "day" => Ok("day"),
        "week" => Ok("week"),
        "month" => Ok("month"),
        other => Err(AnalyticsError::invalid(
            at,
            format!("`{other}` is not an interval; use hour, day, week or month"),
        )),
    }
}

/// A bucket start (as the query gives it, in UTC) as its label in `zone`.
pub fn bucket_label(start: &str, unit: &str, zone: Tz) -> String {
    let Ok(t) = DateTime::parse_from_rfc3339(start) else {
        return start.to_string();
    };
    let local = t.with_timezone(&Utc).with_timezone(&zone);
    match unit {
        "hour" => local.format("%Y-%m-%dT%H:00").to_string(),
        _ => local.format("%Y-%m-%d").to_string(),
    }
}

impl TrendDefinition {
    pub async fn run(&self, data: &Data<'_>) -> Result<TrendReport, AnalyticsError> {
        let scope = self.scope.resolve()?;
        let unit = interval(&self.interval, "interval")?;
        crate::scope::no_empty_event_name(&self.event, "event")?;
        let mut extra = Vec::new();
        if let Some(event) = &self.event {
            extra.push(format!("e.event = {}", sql_string(event)));
        }
        let value = match (self.measure.as_str(), &self.property) {
            ("sum" | "mean", Some(property)) => {
                FieldRef::parse_number(property, "property")?.number_sql("e")
            }
            ("sum" | "mean", None) => {
                return Err(AnalyticsError::invalid(
                    "property",
                    format!("is needed to {} (e.g. \"revenue\")", self.measure),
                ));
            }
            _ => "NULL".to_string(),
        };
        let aggregate = match self.measure.as_str() {
            "count" => "CAST(COUNT(*) AS DOUBLE)",
            "unique_profiles" => "CAST(COUNT(DISTINCT profile_id) AS DOUBLE)",
            "approx_unique_profiles" => "CAST(approx_distinct(profile_id) AS DOUBLE)",
            "sum" => "COALESCE(SUM(value), 0.0)",
            "mean" => "AVG(value)",
            other => {
                return Err(AnalyticsError::invalid(
                    "measure",
                    format!(
                        "`{other}` is not a measure; use count, unique_profiles, approx_unique_profiles, sum or mean"
                    ),
                ));
            }
        };
        let base = scope.attributed_events(&extra, &format!("{value} AS value"));
        let sql = format!(
            "WITH base AS ({base}) \
             SELECT {bucket} AS bucket, breakdown, {aggregate} \
             FROM base GROUP BY 1, 2 ORDER BY 1, 2",
            bucket = scope.bucket_sql(unit, "ts"),
        );
        // Events of profiles outside a segment are left out by the SQL (`attributed_events`).
        let mut points = Vec::new();
        data.with_segment(&scope)?
            .each_row(&sql, |row| {
                points.push(TrendPoint {
                    bucket: bucket_label(&text(&row[0]), unit, scope.zone),
                    breakdown: text(&row[1]),
                    value: number(&row[2]),
                })
            })
            .await?;
        Ok(TrendReport {
            interval: unit.into(),
            measure: self.measure.clone(),
            points,
        })
    }
}
