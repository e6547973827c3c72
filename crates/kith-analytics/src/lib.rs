//! The questions customer teams ask, answered from the events Kith holds.
//!
//! Each analysis takes a JSON-shaped definition (its own fields plus a [`Scope`]: time range,
//! time zone, property filters, breakdown), builds DataFusion SQL over `events` joined to
//! `profile_identities` — so every event counts for the profile it belongs to now, merges
//! included — and returns typed results. The SQL does the heavy work (scans, joins,
//! aggregation); Rust only shapes the answers.

pub mod clv;
pub mod cohorts;
pub mod funnel;
pub mod identities;
mod interner;
pub mod paths;
pub mod preferences;
pub mod profile_models;
pub mod rfm;
pub mod risk;
pub mod scope;
pub mod segment;
pub mod stats;
pub mod trends;
mod unseen_events;

use std::sync::{Arc, OnceLock};

use identities::IdentityIndex;
use kith_lake::{ExtraTable, Lake, QueryError, QueryLimits, output};
use serde_json::Value;
use thiserror::Error;

pub use clv::{ClvDefinition, ClvReport, ClvRun};
pub use cohorts::{CohortDefinition, CohortReport};
pub use funnel::{FunnelDefinition, FunnelReport};
pub use paths::{PathDefinition, PathReport};
pub use preferences::{PreferenceDefinition, PreferenceReport};
pub use profile_models::{PROFILE_MODELS, ProfileModel, ProfileModelRun};
pub use rfm::{RfmDefinition, RfmReport};
pub use risk::{RiskDefinition, RiskReport};
pub use scope::{Condition, Scope};
pub use segment::{ProfileSource, Segment};
pub use trends::{TrendDefinition, TrendReport};

#[derive(Debug, Error)]
pub enum AnalyticsError {
    /// The definition is wrong: which field, and why.
    #[error("`{field}` {message}")]
    Invalid { field: String, message: String },
    #[error(transparent)]
    Query(#[from] QueryError),
    /// The model cannot be fitted on this data (it does not converge, the data breaks the
    /// model's assumptions): what and why.
    #[error("{0}")]
    Model(String),
    /// There is not enough data for the model yet: no purchases, too few repeat buyers.
    #[error("{0}")]
    NotEnoughData(String),
    /// The profiles a segment is judged on could not be read.
    #[error("reading the profiles failed: {0}")]
    Profiles(String),
}

impl AnalyticsError {
    pub fn invalid(field: &str, message: impl Into<String>) -> AnalyticsError {
        AnalyticsError::Invalid {
            field: field.to_string(),
            message: message.into(),
        }
    }

    /// The definition's field at fault, for an invalid definition.
    pub fn field(&self) -> Option<&str> {
        match self {
            AnalyticsError::Invalid { field, .. } => Some(field),
            AnalyticsError::Query(_)
            | AnalyticsError::Model(_)
            | AnalyticsError::NotEnoughData(_)
            | AnalyticsError::Profiles(_) => None,
        }
    }
}

/// What analyses read: the event tables, the identity table that attributes events to
/// profiles, the profiles segments are judged on, and the bounds each query runs under.
#[derive(Clone)]
pub struct Data<'a> {
    pub lake: &'a Lake,
    /// `profile_identities` (and any other table the caller registers).
    pub tables: Vec<ExtraTable>,
    pub limits: QueryLimits,
    /// `profile_identities` as a hash index, built on first use; a caller that keeps the table
    /// between analyses (the server) keeps this with it.
    pub identities: Arc<OnceLock<IdentityIndex>>,
    /// The profiles, for definitions with a segment or a breakdown by a profile's field.
    pub profiles: Option<Arc<dyn ProfileSource + 'a>>,
}

impl<'a> Data<'a> {
    pub fn new(lake: &'a Lake, tables: Vec<ExtraTable>, limits: QueryLimits) -> Data<'a> {
        Data {
            lake,
            tables,
            limits,
            identities: Arc::default(),
            profiles: None,
        }
    }

    /// The same data with the profiles segments are judged on.
    pub fn with_profiles(self, profiles: Arc<dyn ProfileSource + 'a>) -> Data<'a> {
        Data {
            profiles: Some(profiles),
            ..self
        }
    }

    /// The profiles `scope` counts and their breakdown values ([`Segment`]), for analyses that
    /// attribute events in Rust; everyone when the scope names no profiles.
    pub fn segment(&self, scope: &scope::Resolved) -> Result<Segment, AnalyticsError> {
        if !scope.names_profiles() {
            return Ok(Segment::everyone());
        }
        let Some(profiles) = &self.profiles else {
            return Err(AnalyticsError::invalid(
                if scope.segment.is_empty() {
                    "breakdown"
                } else {
                    "segment"
                },
                "needs the profile store, which this caller did not give the analysis",
            ));
        };
        Segment::judge(scope, self.identity_index(), profiles.as_ref())
    }

    /// The data with the segment of `scope` as [`segment::SEGMENT_TABLE`], for analyses that
    /// attribute events in SQL ([`scope::Resolved::attributed_events`] joins it); the same data
    /// when the scope names no profiles.
    pub fn with_segment(&self, scope: &scope::Resolved) -> Result<Data<'a>, AnalyticsError> {
        let mut data = self.clone();
        if scope.names_profiles() {
            let segment = self.segment(scope)?;
            data.tables.push(segment.table(self.identity_index()));
        }
        Ok(data)
    }

    /// The identifier → profile index of `profile_identities`.
    pub fn identity_index(&self) -> &IdentityIndex {
        self.identities
            .get_or_init(|| IdentityIndex::from_tables(&self.tables))
    }

    /// How many events there are in all: an upper bound for any analysis's rows, answered from
    /// the tables' statistics without a scan. Analyses that gather compact rows reserve this
    /// much up front: pages never written cost no memory, and the vector never doubles (a
    /// doubling briefly holds the old and the new copy: half again the rows' size at the peak).
    pub async fn event_count(&self) -> Result<usize, AnalyticsError> {
        let rows = self.rows("SELECT count(*) FROM events").await?;
        Ok(rows
            .first()
            .and_then(|row| row.first())
            .map_or(0, |value| count(value) as usize))
    }

    /// Runs `sql`; every row as JSON values in column order.
    pub async fn rows(&self, sql: &str) -> Result<Vec<Vec<Value>>, AnalyticsError> {
        let mut limits = self.limits.clone();
        // Analyses aggregate; their own row caps are explicit. Never truncate silently.
        limits.max_rows = 1 << 40;
        let result = self
            .lake
            .query_with(sql, &limits, self.tables.clone())
            .await?;
        let mut rows = Vec::with_capacity(result.num_rows());
        for batch in &result.batches {
            for row in 0..batch.num_rows() {
                rows.push(
                    batch
                        .columns()
                        .iter()
                        .map(|column| output::json_value(column.as_ref(), row))
                        .collect(),
                );
            }
        }
        Ok(rows)
    }

    /// Runs `sql` and hands each row to `each` as JSON values in column order, a batch at a
    /// time, for analyses whose answer is as long as the query's (a trend broken down by a
    /// property of many values, a risk score per profile): the rows as JSON values take about
    /// ten times the memory of the Arrow batches, and are never all held at once this way.
    pub async fn each_row(
        &self,
        sql: &str,
        mut each: impl FnMut(&[Value]) + Send,
    ) -> Result<(), AnalyticsError> {
        let mut row_values = Vec::new();
        self.lake
            .query_each(sql, &self.limits, self.tables.clone(), |batch| {
                for row in 0..batch.num_rows() {
                    row_values.clear();
                    row_values.extend(
                        batch
                            .columns()
                            .iter()
                            .map(|column| output::json_value(column.as_ref(), row)),
                    );
                    each(&row_values);
                }
            })
            .await?;
        Ok(())
    }
}

/// Reads a cell as text ("" for null).
pub(crate) fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

pub(crate) fn number(value: &Value) -> f64 {
    match value {
        Value::Number(n) => n.as_f64().unwrap_or(0.0),
        Value::String(s) => s.parse().unwrap_or(0.0),
        _ => 0.0,
    }
}

pub(crate) fn count(value: &Value) -> u64 {
    match value {
        Value::Number(n) => n.as_u64().unwrap_or(0),
        Value::String(s) => s.parse().unwrap_or(0),
        _ => 0,
    }
}

/// The fields every definition takes besides its own (see [`Scope`]).
pub const SCOPE_FIELDS: &[&str] = &["from", "to", "timezone", "where", "segment", "breakdown"];

/// Reads a definition of `kind` whose own fields are `own` (the [`Scope`]'s are always
/// allowed), naming the field at fault when it is wrong: an unknown field with the list of
/// known ones, or the one field that fails to read.
pub fn parse_definition<T: serde::de::DeserializeOwned>(
    kind: &str,
    own: &[&str],
    definition: &Value,
) -> Result<T, AnalyticsError> {
    let Value::Object(fields) = definition else {
        return Err(AnalyticsError::invalid(
            "definition",
            "must be a JSON object of the analysis's fields",
        ));
    };
    if let Some(unknown) = fields
        .keys()
        .find(|k| !own.contains(&k.as_str()) && !SCOPE_FIELDS.contains(&k.as_str()))
    {
        let mut known: Vec<&str> = own.iter().chain(SCOPE_FIELDS).copied().collect();
        known.sort_unstable();
        return Err(AnalyticsError::invalid(
            unknown,
            format!(
                "is not a field of the `{kind}` definition; its fields are {}",
                known.join(", ")
            ),
        ));
    }
    serde_json::from_value(Value::Object(fields.clone())).map_err(|whole| {
        // serde does not say which field failed; find the one that fails alone.
        let culprit = fields.iter().find_map(|(key, value)| {
            let alone = serde_json::Map::from_iter([(key.clone(), value.clone())]);
            match serde_json::from_value::<T>(Value::Object(alone)) {
                Err(e) if !e.to_string().starts_with("missing field") => {
                    Some((key.clone(), e.to_string()))
                }
                _ => None,
            }
        });
        if let Some((field, message)) = culprit {
            return AnalyticsError::invalid(&field, message);
        }
        // A field that fails only beside the required ones (a funnel's `where` needs its
        // `steps` to be read at all): the one whose absence lets the rest be read.
        let without = fields.keys().find(|key| {
            let mut rest = fields.clone();
            rest.remove(key.as_str());
            serde_json::from_value::<T>(Value::Object(rest)).is_ok()
        });
        if let Some(field) = without {
            return AnalyticsError::invalid(field, whole.to_string());
        }
        let whole = whole.to_string();
        // serde says "missing field `steps`": a field of the definition itself is named as
        // required; one missing inside a field's value (a step without `event`) is blamed on
        // that field.
        let missing = whole
            .strip_prefix("missing field `")
            .and_then(|rest| rest.split_once('`'))
            .map(|(name, _)| name);
        if let Some(name) = missing
            && (own.contains(&name) || SCOPE_FIELDS.contains(&name))
        {
            return AnalyticsError::invalid(
                name,
                format!("is required: a `{kind}` definition must give it"),
            );
        }
        let holder = fields.iter().find_map(|(key, value)| {
            let alone = serde_json::Map::from_iter([(key.clone(), value.clone())]);
            serde_json::from_value::<T>(Value::Object(alone))
                .err()
                .filter(|e| e.to_string() == whole)
                .map(|_| key.clone())
        });
        match holder {
            Some(field) => AnalyticsError::invalid(&field, format!("is incomplete: {whole}")),
            None => AnalyticsError::invalid("definition", whole),
        }
    })
}

/// The analyses, by the name the API and the CLI use.
#[derive(Debug, Clone)]
pub enum Analysis {
    Rfm(RfmDefinition),
    Cohorts(CohortDefinition),
    Funnel(FunnelDefinition),
    Paths(PathDefinition),
    Preferences(PreferenceDefinition),
    Risk(RiskDefinition),
    Trends(TrendDefinition),
}

/// The analyses' names, for messages.
pub const ANALYSES: &str = "rfm, cohorts, funnel, paths, preferences, risk, trends";

impl Analysis {
    /// Reads a definition of analysis `kind`, naming the field at fault when it is wrong.
    pub fn parse(kind: &str, definition: &Value) -> Result<Analysis, AnalyticsError> {
        let own: &[&str] = match kind {
            "rfm" => rfm::FIELDS,
            "cohorts" => cohorts::FIELDS,
            "funnel" => funnel::FIELDS,
            "paths" => paths::FIELDS,
            "preferences" => preferences::FIELDS,
            "risk" => risk::FIELDS,
            "trends" => trends::FIELDS,
            other => {
                return Err(AnalyticsError::invalid(
                    "analysis",
                    format!("`{other}` is not an analysis; use one of {ANALYSES}"),
                ));
            }
        };
        Ok(match kind {
            "rfm" => Analysis::Rfm(parse_definition(kind, own, definition)?),
            "cohorts" => Analysis::Cohorts(parse_definition(kind, own, definition)?),
            "funnel" => Analysis::Funnel(parse_definition(kind, own, definition)?),
            "paths" => Analysis::Paths(parse_definition(kind, own, definition)?),
            "preferences" => Analysis::Preferences(parse_definition(kind, own, definition)?),
            "risk" => Analysis::Risk(parse_definition(kind, own, definition)?),
            _ => Analysis::Trends(parse_definition(kind, own, definition)?),
        })
    }

    /// Runs the analysis.
    pub async fn report(&self, data: &Data<'_>) -> Result<Report, AnalyticsError> {
        Ok(match self {
            Analysis::Rfm(d) => Report::Rfm(d.run(data).await?),
            Analysis::Cohorts(d) => Report::Cohorts(d.run(data).await?),
            Analysis::Funnel(d) => Report::Funnel(d.run(data).await?),
            Analysis::Paths(d) => Report::Paths(d.run(data).await?),
            Analysis::Preferences(d) => Report::Preferences(d.run(data).await?),
            Analysis::Risk(d) => Report::Risk(d.run(data).await?),
            Analysis::Trends(d) => Report::Trends(d.run(data).await?),
        })
    }

    /// Runs the analysis; its report, and where the report found nothing, notes on the events
    /// it names that no event has.
    pub async fn answer(&self, data: &Data<'_>) -> Result<Answer, AnalyticsError> {
        let report = self.report(data).await?;
        // Best effort: the report is the answer, and a note that could not be made (its scan of
        // event names out of time or memory) must not take it away.
        let mut notes =
            match unseen_events::notes(data, &self.events_found_in_nothing(&report)).await {
                Ok(notes) => notes,
                Err(e) => {
                    tracing::warn!(error = %e, "the notes on unseen event names could not be made");
                    Vec::new()
                }
            };
        notes.extend(self.breakdown_found_nowhere(&report));
        Ok(Answer { report, notes })
    }

    fn scope(&self) -> &Scope {
        match self {
            Analysis::Rfm(d) => &d.scope,
            Analysis::Cohorts(d) => &d.scope,
            Analysis::Funnel(d) => &d.scope,
            Analysis::Paths(d) => &d.scope,
            Analysis::Preferences(d) => &d.scope,
            Analysis::Risk(d) => &d.scope,
            Analysis::Trends(d) => &d.scope,
        }
    }

    /// A note when the breakdown put everything under `(none)`: the field is misspelt (`context
    /// .devise.type`), or holds nothing in scope; either way the split says nothing.
    fn breakdown_found_nowhere(&self, report: &Report) -> Option<String> {
        let field = self.scope().breakdown.as_deref()?.trim();
        let values = report.breakdown_values();
        if values.is_empty() || values.iter().any(|value| *value != segment::NONE) {
            return None;
        }
        let whose = if field.starts_with(segment::PROFILE_PREFIX) {
            "profile"
        } else {
            "event"
        };
        Some(format!(
            "no {whose} in scope has a value at `{field}` (the breakdown), so all are under \
             {}; check the path, e.g. against `SELECT properties, context FROM events LIMIT 1` \
             or a profile from /v1/profiles",
            segment::NONE
        ))
    }

    /// Runs the analysis; its answer as JSON values.
    pub async fn run(&self, data: &Data<'_>) -> Result<Value, AnalyticsError> {
        serde_json::to_value(self.answer(data).await?).map_err(unwritable_report)
    }

    /// Runs the analysis; its answer as JSON text, written straight from the report: a tree of
    /// JSON values on the way takes several times the text (a trend broken down by a property
    /// of many values answers hundreds of thousands of points).
    pub async fn run_to_json_text(&self, data: &Data<'_>) -> Result<Vec<u8>, AnalyticsError> {
        serde_json::to_vec(&self.answer(data).await?).map_err(unwritable_report)
    }

    /// The events the definition names whose part of `report` is empty: every event it names
    /// when it found nothing, a funnel's steps from the first no one reached. A misspelt name
    /// empties its part, as events outside the scope do; these are the names worth checking.
    fn events_found_in_nothing(&self, report: &Report) -> Vec<&str> {
        if let (Analysis::Funnel(d), Report::Funnel(r)) = (self, report) {
            let reached = |step: usize| {
                r.groups
                    .iter()
                    .any(|g| g.steps.get(step).is_some_and(|s| s.profiles > 0))
            };
            let first_unreached = (0..d.steps.len()).find(|&step| !reached(step));
            return first_unreached.map_or_else(Vec::new, |first| {
                d.steps[first..].iter().map(|s| s.event.as_str()).collect()
            });
        }
        if !report.is_empty() {
            return Vec::new();
        }
        match self {
            Analysis::Rfm(d) => vec![d.purchase_event.as_str()],
            Analysis::Cohorts(d) => [&d.cohort_event, &d.return_event]
                .into_iter()
                .flatten()
                .map(String::as_str)
                .collect(),
            Analysis::Funnel(d) => d.steps.iter().map(|s| s.event.as_str()).collect(),
            Analysis::Paths(d) => vec![d.event.as_str()],
            Analysis::Preferences(d) => d.events.keys().map(String::as_str).collect(),
            // The support event only when named: a shop without tickets has none by default.
            Analysis::Risk(d) if d.support_event != risk::default_support() => {
                vec![d.purchase_event.as_str(), d.support_event.as_str()]
            }
            Analysis::Risk(d) => vec![d.purchase_event.as_str()],
            Analysis::Trends(d) => d.event.iter().map(String::as_str).collect(),
        }
    }
}

/// A report, and what its reader should know to read it: why it is empty, when an event it
/// names is one no event has. As JSON, the report's fields and `notes` beside them (left out
/// when there are none).
#[derive(Debug, serde::Serialize)]
pub struct Answer {
    #[serde(flatten)]
    pub report: Report,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

/// A report that cannot be written as JSON is our fault, not the definition's (none can be
/// today: reports hold text, numbers and lists).
fn unwritable_report(e: serde_json::Error) -> AnalyticsError {
    AnalyticsError::Query(QueryError::Internal(format!(
        "writing the report as JSON failed: {e}"
    )))
}

/// An analysis's report, whichever analysis ran; as JSON, the report itself.
#[derive(Debug, serde::Serialize)]
#[serde(untagged)]
pub enum Report {
    Rfm(RfmReport),
    Cohorts(CohortReport),
    Funnel(FunnelReport),
    Paths(PathReport),
    Preferences(PreferenceReport),
    Risk(RiskReport),
    Trends(TrendReport),
}

impl Report {
    /// The breakdown values it lists (`all` without a breakdown).
    fn breakdown_values(&self) -> Vec<&str> {
        match self {
            Report::Rfm(r) => r.segments.iter().map(|s| s.breakdown.as_str()).collect(),
            Report::Cohorts(r) => r.cohorts.iter().map(|c| c.breakdown.as_str()).collect(),
            Report::Funnel(r) => r.groups.iter().map(|g| g.breakdown.as_str()).collect(),
            Report::Paths(r) => r.breakdowns.iter().map(|g| g.breakdown.as_str()).collect(),
            Report::Preferences(r) => r
                .by_breakdown
                .iter()
                .map(|g| g.breakdown.as_str())
                .collect(),
            Report::Risk(r) => r
                .by_breakdown
                .iter()
                .map(|g| g.breakdown.as_str())
                .collect(),
            Report::Trends(r) => r.points.iter().map(|p| p.breakdown.as_str()).collect(),
        }
    }

    /// Whether it found nothing to report: no profile scored, no cohort, no step reached.
    pub fn is_empty(&self) -> bool {
        match self {
            Report::Rfm(r) => r.profiles == 0,
            Report::Cohorts(r) => r.cohorts.is_empty(),
            Report::Funnel(r) => r
                .groups
                .iter()
                .all(|g| g.steps.first().is_none_or(|s| s.profiles == 0)),
            Report::Paths(r) => r.profiles == 0,
            Report::Preferences(r) => r.profiles == 0,
            Report::Risk(r) => r.profiles == 0,
            Report::Trends(r) => r.points.is_empty(),
        }
    }
}

#[cfg(test)]
mod definition_tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn definitions_name_the_field_that_is_wrong() {
        let error = Analysis::parse("funnel", &json!({"steps": [{"event": "A"}], "windw": "7d"}))
            .unwrap_err();
        assert_eq!(error.field(), Some("windw"));
        assert!(
            error
                .to_string()
                .contains("its fields are breakdown, breakdown_step"),
            "{error}"
        );
        let error = Analysis::parse("trends", &json!({"interval": 7})).unwrap_err();
        assert_eq!(error.field(), Some("interval"));
        let error = Analysis::parse("funnel", &json!({"window": "7d"})).unwrap_err();
        assert_eq!(
            error.to_string(),
            "`steps` is required: a `funnel` definition must give it"
        );
        assert_eq!(
            Analysis::parse("funnel", &json!({})).unwrap_err().field(),
            Some("steps")
        );
        // Missing inside a field's value: that field is blamed, with what it lacks.
        let error = Analysis::parse("funnel", &json!({"steps": [{"label": "x"}]})).unwrap_err();
        assert_eq!(error.field(), Some("steps"), "{error}");
        assert!(
            error.to_string().contains("missing field `event`"),
            "{error}"
        );
        // Wrong beside a required field, which alone it cannot be read without: still named.
        let error = Analysis::parse(
            "funnel",
            &json!({"steps": [{"event": "A"}], "where": {"field": "event"}}),
        )
        .unwrap_err();
        assert_eq!(error.field(), Some("where"), "{error}");
        let error = Analysis::parse("journeys", &json!({})).unwrap_err();
        assert_eq!(error.field(), Some("analysis"));
        assert!(matches!(
            Analysis::parse(
                "rfm",
                &json!({"from": "2024-01-01", "purchase_event": "Paid"})
            ),
            Ok(Analysis::Rfm(_))
        ));
    }
}
