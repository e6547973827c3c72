//! RFM: how recently, how often and for how much each profile bought in a window, scored 1–5
//! against everyone else, and named with the standard segments.
//!
//! Scores are rank-based quintiles with ties kept together: a profile's score is
//! `1 + floor(5 · (rank − 1) / n)`, where rank is its position in ascending order counting ties
//! as one (SQL `RANK()`); so the most recent, most frequent and highest-spending get 5, and all
//! profiles with one purchase share the same frequency score. Monetary is rounded to cents, so
//! engines that sum in another order rank it the same. Segments come from the recency and
//! frequency scores ([`segment`]).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::scope::{FieldRef, Scope, sql_string};
use crate::{AnalyticsError, Data, count, number, text};

#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct RfmDefinition {
    #[serde(flatten)]
    pub scope: Scope,
    /// The event that is a purchase [default: Order Completed].
    #[serde(default = "default_purchase")]
    pub purchase_event: String,
    /// The purchase's value [default: revenue].
    #[serde(default = "default_value")]
    pub value: String,
    /// Recency is measured back from here [default: `to`, else now].
    #[serde(default)]
    pub as_of: Option<String>,
    /// How many profiles to list, highest value first [default: 20]. The segment table always
    /// covers everyone.
    #[serde(default = "default_limit")]
    pub limit: usize,
}

fn default_purchase() -> String {
    "Order Completed".into()
}
fn default_value() -> String {
    "revenue".into()
}
fn default_limit() -> usize {
    20
}

pub const FIELDS: &[&str] = &["purchase_event", "value", "as_of", "limit"];

/// The standard RFM segments by recency score (rows, 1–5) and frequency score (columns, 1–5).
const GRID: [[&str; 5]; 5] = [
    [
        "Lost",
        "Hibernating",
        "At risk",
        "At risk",
        "Can't lose them",
    ],
    [
        "Hibernating",
        "Hibernating",
        "At risk",
        "At risk",
        "Can't lose them",
    ],
    [
        "About to sleep",
        "About to sleep",
        "Need attention",
        "Loyal",
        "Loyal",
    ],
    [
        "Promising",
        "Potential loyalists",
        "Potential loyalists",
        "Loyal",
        "Loyal",
    ],
    [
        "New",
        "Potential loyalists",
        "Potential loyalists",
        "Champions",
        "Champions",
    ],
];

/// The segment named by recency and frequency scores (each 1–5).
pub fn segment(r: u8, f: u8) -> &'static str {
    GRID[(r.clamp(1, 5) - 1) as usize][(f.clamp(1, 5) - 1) as usize]
}

/// Every segment name, best first.
pub const SEGMENTS: [&str; 11] = [
    "Champions",
    "Loyal",
    "Potential loyalists",
    "New",
    "Promising",
    "Need attention",
    "About to sleep",
    "At risk",
    "Can't lose them",
    "Hibernating",
    "Lost",
];

fn segment_case() -> String {
    let mut case = String::from("CASE r * 10 + f");
    for r in 1..=5u8 {
        for f in 1..=5u8 {
            case.push_str(&format!(
                " WHEN {} THEN {}",
                r * 10 + f,
                sql_string(segment(r, f))
            ));
        }
    }
    case.push_str(" END");
    case
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RfmReport {
    pub as_of: String,
    /// Profiles with at least one purchase in the window.
    pub profiles: u64,
    pub segments: Vec<SegmentSummary>,
    /// The highest-value profiles, up to `limit`.
    pub top_profiles: Vec<RfmScore>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SegmentSummary {
    pub segment: String,
    /// The breakdown value of each profile's latest purchase ("all" without a breakdown).
    pub breakdown: String,
    pub profiles: u64,
    /// Share of all scored profiles.
    pub share: f64,
    /// Their purchases' total value in the window.
    pub value: f64,
    pub mean_recency_days: f64,
    pub mean_frequency: f64,
    pub mean_monetary: f64,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RfmScore {
    pub profile_id: String,
    pub recency_days: f64,
    pub frequency: u64,
    pub monetary: f64,
    pub r: u8,
    pub f: u8,
    pub m: u8,
    pub segment: String,
}

impl RfmDefinition {
    /// The per-profile scores as SQL: profile_id, recency_days, frequency, monetary, r, f, m,
    /// segment, breakdown.
    pub fn scores_sql(&self) -> Result<(String, DateTime<Utc>), AnalyticsError> {
        let scope = self.scope.resolve()?;
        let as_of = match &self.as_of {
            Some(text) => crate::scope::parse_instant(text, scope.zone, "as_of")?,
            None => scope.to.unwrap_or_else(Utc::now),
        };
        if self.purchase_event.trim().is_empty() {
            return Err(AnalyticsError::invalid(
                "purchase_event",
                "must not be empty",
            ));
        }
        let value = FieldRef::parse(&self.value, "value")?;
        let base = scope.attributed_events(
            &[
                format!("e.event = {}", sql_string(&self.purchase_event)),
                format!("e.timestamp <= {}", crate::scope::instant_sql(as_of)),
            ],
            &format!("{} AS value", value.number_sql("e")),
        );
        let quintile = |rank: &str| format!("CAST(1 + FLOOR(5.0 * ({rank} - 1) / n) AS BIGINT)");
        let sql = format!(
            "WITH base AS ({base}), \
             per_profile AS ( \
               SELECT profile_id, MAX(ts) AS last_ts, COUNT(*) AS frequency, \
                      ROUND(COALESCE(SUM(value), 0.0), 2) AS monetary, \
                      first_value(breakdown ORDER BY ts DESC) AS breakdown \
               FROM base GROUP BY profile_id), \
             ranked AS ( \
               SELECT *, RANK() OVER (ORDER BY last_ts) AS r_rank, \
                      RANK() OVER (ORDER BY frequency) AS f_rank, \
                      RANK() OVER (ORDER BY monetary) AS m_rank, \
                      COUNT(*) OVER () AS n \
               FROM per_profile), \
             scored AS ( \
               SELECT profile_id, \
                      ({as_of} - CAST(last_ts AS BIGINT)) / 86400000000.0 AS recency_days, \
                      frequency, monetary, {r} AS r, {f} AS f, {m} AS m, breakdown \
               FROM ranked) \
             SELECT profile_id, recency_days, frequency, monetary, r, f, m, {case} AS segment, breakdown \
             FROM scored",
            as_of = as_of.timestamp_micros(),
            r = quintile("r_rank"),
            f = quintile("f_rank"),
            m = quintile("m_rank"),
            case = segment_case(),
        );
        Ok((sql, as_of))
    }

    pub async fn run(&self, data: &Data<'_>) -> Result<RfmReport, AnalyticsError> {
        Ok(self.run_with_scores(data, false).await?.0)
    }

    /// The report, and with `every_profile` every scored profile's scores (for writing them
    /// onto profiles as traits).
    pub async fn run_with_scores(
        &self,
        data: &Data<'_>,
        every_profile: bool,
    ) -> Result<(RfmReport, Vec<RfmScore>), AnalyticsError> {
        let (scores, as_of) = self.scores_sql()?;
        // The scores are computed once (one scan of the events) and both answers read them.
        let mut limits = data.limits.clone();
        limits.max_rows = 1 << 40;
        let scored = data
            .lake
            .query_with(&scores, &limits, data.tables.clone())
            .await?;
        let scores = Data {
            lake: data.lake,
            tables: vec![kith_lake::ExtraTable {
                name: "kith_rfm_scores".into(),
                schema: scored.schema.clone(),
                batches: scored.batches,
            }],
            limits: data.limits.clone(),
        };
        let rows = scores
            .rows(
                "SELECT segment, breakdown, COUNT(*), SUM(monetary), AVG(recency_days), \
                        AVG(frequency), AVG(monetary) \
                 FROM kith_rfm_scores GROUP BY segment, breakdown",
            )
            .await?;
        let profiles: u64 = rows.iter().map(|r| count(&r[2])).sum();
        let mut segments: Vec<SegmentSummary> = rows
            .iter()
            .map(|row| SegmentSummary {
                segment: text(&row[0]),
                breakdown: text(&row[1]),
                profiles: count(&row[2]),
                share: count(&row[2]) as f64 / profiles.max(1) as f64,
                value: number(&row[3]),
                mean_recency_days: number(&row[4]),
                mean_frequency: number(&row[5]),
                mean_monetary: number(&row[6]),
            })
            .collect();
        let order = |name: &str| SEGMENTS.iter().position(|s| *s == name).unwrap_or(99);
        segments.sort_by(|a, b| {
            (order(&a.segment), &a.breakdown).cmp(&(order(&b.segment), &b.breakdown))
        });
        let top = format!(
            "SELECT profile_id, recency_days, frequency, monetary, r, f, m, segment \
             FROM kith_rfm_scores ORDER BY monetary DESC, profile_id LIMIT {}",
            self.limit
        );
        let top_profiles = scores
            .rows(&top)
            .await?
            .iter()
            .map(|row| score_of(row))
            .collect();
        let every = if every_profile {
            scores
                .rows(
                    "SELECT profile_id, recency_days, frequency, monetary, r, f, m, segment \
                     FROM kith_rfm_scores",
                )
                .await?
                .iter()
                .map(|row| score_of(row))
                .collect()
        } else {
            Vec::new()
        };
        let report = RfmReport {
            as_of: as_of.to_rfc3339(),
            profiles,
            segments,
            top_profiles,
        };
        Ok((report, every))
    }
}

fn score_of(row: &[Value]) -> RfmScore {
    let small = |v: &Value| count(v).min(5) as u8;
    RfmScore {
        profile_id: text(&row[0]),
        recency_days: number(&row[1]),
        frequency: count(&row[2]),
        monetary: number(&row[3]),
        r: small(&row[4]),
        f: small(&row[5]),
        m: small(&row[6]),
        segment: text(&row[7]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_score_pair_has_one_of_the_eleven_segments() {
        let mut seen = std::collections::BTreeSet::new();
        for r in 1..=5 {
            for f in 1..=5 {
                let name = segment(r, f);
                assert!(SEGMENTS.contains(&name), "{name}");
                seen.insert(name);
            }
        }
        assert_eq!(seen.len(), SEGMENTS.len());
        assert_eq!(segment(5, 5), "Champions");
        assert_eq!(segment(1, 1), "Lost");
        assert_eq!(segment(1, 5), "Can't lose them");
        assert_eq!(segment(5, 1), "New");
        assert!(segment_case().contains("WHEN 15 THEN 'Can''t lose them'"));
    }
}
