//! What every analysis shares: the time range, the time zone buckets are cut in, property
//! filters, the breakdown, and the events attributed to the profile they belong to now.

use chrono::{DateTime, NaiveDate, NaiveDateTime, TimeZone, Utc};
use chrono_tz::Tz;
use serde::Deserialize;
use serde_json::Value;

use crate::AnalyticsError;
use crate::segment::{PROFILE_PREFIX, ProfileCondition, ProfilePath};

/// A value read from each event: one of its columns, or a path into one of its JSON objects
/// (`properties.payment_method`, `context.device.type`, `traits.plan`).
#[derive(Debug, Clone, PartialEq)]
pub enum FieldRef {
    Column(&'static str),
    Json {
        column: &'static str,
        path: Vec<String>,
    },
}

const TEXT_COLUMNS: &[&str] = &[
    "event",
    "type",
    "source",
    "user_id",
    "anonymous_id",
    "group_id",
    "currency",
    "order_id",
    "page_url",
    "page_path",
    "referrer",
    "email",
    "library_name",
    "message_id",
];
const JSON_COLUMNS: &[&str] = &["properties", "context", "traits"];

impl FieldRef {
    /// Parses `event`, `revenue`, `properties.NAME`, `context.a.b`, `traits.NAME`; `at` names
    /// the definition's field for errors.
    pub fn parse(text: &str, at: &str) -> Result<FieldRef, AnalyticsError> {
        let text = text.trim();
        if text == "revenue" {
            return Ok(FieldRef::Column("revenue"));
        }
        if let Some(column) = TEXT_COLUMNS.iter().find(|c| **c == text) {
            return Ok(FieldRef::Column(column));
        }
        let mut parts = text.split('.');
        let head = parts.next().unwrap_or_default();
        let path: Vec<String> = parts.map(str::to_string).collect();
        match JSON_COLUMNS.iter().find(|c| **c == head) {
            Some(column) if !path.is_empty() && path.iter().all(|p| !p.is_empty()) => {
                Ok(FieldRef::Json { column, path })
            }
            _ => Err(AnalyticsError::invalid(
                at,
                format!(
                    "`{text}` is not a field of events; use a column ({}, revenue) or a path such as properties.NAME, context.device.type or traits.NAME",
                    TEXT_COLUMNS.join(", ")
                ),
            )),
        }
    }

    /// A field that holds numbers: `revenue`, or a path into the JSON columns. The other
    /// columns hold text, which reads as no number at all: a `value` of `email` would make
    /// every amount 0 without a word.
    pub fn parse_number(text: &str, at: &str) -> Result<FieldRef, AnalyticsError> {
        match FieldRef::parse(text, at)? {
            FieldRef::Column(column) if column != "revenue" => Err(AnalyticsError::invalid(
                at,
                format!(
                    "`{column}` is a column of text, not of numbers; use `revenue` or the path \
                     to a number, such as properties.total"
                ),
            )),
            number => Ok(number),
        }
    }

    /// The field as SQL text over the events table aliased `alias`.
    pub fn text_sql(&self, alias: &str) -> String {
        match self {
            FieldRef::Column("revenue") => format!("CAST({alias}.revenue AS VARCHAR)"),
            FieldRef::Column(column) => format!("{alias}.{column}"),
            FieldRef::Json { column, path } => {
                format!("json_get_str({alias}.{column}, {})", path_args(path))
            }
        }
    }

    /// The field as a number (NULL where it is not one).
    pub fn number_sql(&self, alias: &str) -> String {
        match self {
            FieldRef::Column("revenue") => format!("{alias}.revenue"),
            FieldRef::Column(column) => format!("TRY_CAST({alias}.{column} AS DOUBLE)"),
            FieldRef::Json { column, path } => {
                format!("json_get_float({alias}.{column}, {})", path_args(path))
            }
        }
    }
}

fn path_args(path: &[String]) -> String {
    path.iter()
        .map(|p| sql_string(p))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Refuses an event name given as empty text: no event has it, so the answer would be empty or
/// all zeros, as if nobody had done anything. Left out, such a field means every event.
pub fn no_empty_event_name(name: &Option<String>, at: &str) -> Result<(), AnalyticsError> {
    match name {
        Some(text) if text.trim().is_empty() => Err(AnalyticsError::invalid(
            at,
            "is empty; name an event, or leave the field out for every event",
        )),
        _ => Ok(()),
    }
}

/// Refuses purchases none of which has a number at `value`, when `value` was named on purpose
/// (`chosen`): the field named is not where amounts are, and every amount would read as 0. Left
/// at its default, `revenue` may simply be missing from a shop's events, which is no mistake.
pub fn amounts_found(
    chosen: bool,
    purchases: usize,
    with_amounts: usize,
    purchase_event: &str,
    value: &str,
) -> Result<(), AnalyticsError> {
    if chosen && purchases > 0 && with_amounts == 0 {
        return Err(AnalyticsError::invalid(
            "value",
            format!(
                "no `{purchase_event}` event in scope has a number at `{value}`; name the field \
                 that holds each purchase's amount, such as properties.total, or leave `value` \
                 out for `revenue`"
            ),
        ));
    }
    Ok(())
}

/// A SQL string literal: the text with its quotes doubled, so no value can end the literal.
pub fn sql_string(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// A comparison an event must pass.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Condition {
    pub field: String,
    #[serde(default = "default_op")]
    pub op: String,
    #[serde(default)]
    pub value: Value,
}

fn default_op() -> String {
    "eq".into()
}

/// What a [`Condition`] tests its field's value with, checked once and then rendered as SQL over
/// events or applied to a profile's JSON ([`crate::segment`]).
#[derive(Debug, Clone, PartialEq)]
pub enum Comparison {
    Eq(String),
    Ne(String),
    In(Vec<String>),
    NotIn(Vec<String>),
    Contains(String),
    Gt(f64),
    Gte(f64),
    Lt(f64),
    Lte(f64),
    Exists,
    NotExists,
}

impl Comparison {
    /// Reads `op` and `value`; `at` names the condition for errors (`where[2]`).
    pub fn parse(op: &str, value: &Value, at: &str) -> Result<Comparison, AnalyticsError> {
        let at_value = format!("{at}.value");
        let literal = |value: &Value| -> Result<String, AnalyticsError> {
            match value {
                Value::String(s) => Ok(s.clone()),
                Value::Number(n) => Ok(n.to_string()),
                Value::Bool(b) => Ok(b.to_string()),
                _ => Err(AnalyticsError::invalid(
                    &at_value,
                    "must be a string, a number or a boolean",
                )),
            }
        };
        let number = || -> Result<f64, AnalyticsError> {
            value
                .as_f64()
                .or_else(|| value.as_str().and_then(|s| s.trim().parse().ok()))
                .filter(|n: &f64| n.is_finite())
                .ok_or_else(|| AnalyticsError::invalid(&at_value, "must be a number"))
        };
        Ok(match op {
            "eq" | "=" => Comparison::Eq(literal(value)?),
            "ne" | "!=" => Comparison::Ne(literal(value)?),
            "in" | "not_in" => {
                let Value::Array(values) = value else {
                    return Err(AnalyticsError::invalid(
                        &at_value,
                        format!("must be a list for `{op}`"),
                    ));
                };
                let list = values.iter().map(literal).collect::<Result<Vec<_>, _>>()?;
                if list.is_empty() {
                    return Err(AnalyticsError::invalid(&at_value, "must not be empty"));
                }
                if op == "in" {
                    Comparison::In(list)
                } else {
                    Comparison::NotIn(list)
                }
            }
            "contains" => Comparison::Contains(
                value
                    .as_str()
                    .ok_or_else(|| AnalyticsError::invalid(&at_value, "must be a string"))?
                    .to_string(),
            ),
            "gt" | ">" => Comparison::Gt(number()?),
            "gte" | ">=" => Comparison::Gte(number()?),
            "lt" | "<" => Comparison::Lt(number()?),
            "lte" | "<=" => Comparison::Lte(number()?),
            "exists" => Comparison::Exists,
            "not_exists" => Comparison::NotExists,
            other => {
                return Err(AnalyticsError::invalid(
                    &format!("{at}.op"),
                    format!(
                        "`{other}` is not an operator; use eq, ne, in, not_in, contains, gt, gte, lt, lte, exists or not_exists"
                    ),
                ));
            }
        })
    }

    /// The test as SQL over `field` (an event field) of the events aliased `alias`.
    fn sql(&self, field: &FieldRef, alias: &str) -> String {
        let text = field.text_sql(alias);
        let list = |values: &[String]| {
            values
                .iter()
                .map(|v| sql_string(v))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let number = field.number_sql(alias);
        match self {
            Comparison::Eq(v) => format!("{text} = {}", sql_string(v)),
            Comparison::Ne(v) => format!("({text} IS NULL OR {text} <> {})", sql_string(v)),
            Comparison::In(values) => format!("{text} IN ({})", list(values)),
            Comparison::NotIn(values) => {
                format!("({text} IS NULL OR {text} NOT IN ({}))", list(values))
            }
            Comparison::Contains(needle) => format!("strpos({text}, {}) > 0", sql_string(needle)),
            Comparison::Gt(n) => format!("{number} > {n}"),
            Comparison::Gte(n) => format!("{number} >= {n}"),
            Comparison::Lt(n) => format!("{number} < {n}"),
            Comparison::Lte(n) => format!("{number} <= {n}"),
            Comparison::Exists => format!("{text} IS NOT NULL"),
            Comparison::NotExists => format!("{text} IS NULL"),
        }
    }

    /// Whether a JSON value passes (`None`: the field is missing or null). Text comparisons
    /// read a number or a boolean as its text, so `{"op": "eq", "value": 2}` matches `2` and
    /// `"2"`; a value that is a JSON number equals text of the same number (`2` and `"2.0"`),
    /// while text compares as text (`"00123"` is not `"123"`). Number comparisons read text
    /// that is a number. Missing values pass only `ne`, `not_in` and `not_exists`, as in SQL;
    /// lists and objects are neither text nor numbers.
    pub fn passes(&self, value: Option<&Value>) -> bool {
        let value = value.filter(|v| !v.is_null());
        let text = value.and_then(|v| match v {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            Value::Bool(b) => Some(b.to_string()),
            _ => None,
        });
        let number = value.and_then(|v| {
            v.as_f64()
                .or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()))
        });
        let numeric = matches!(value, Some(Value::Number(_)));
        let same = |a: &str, b: &str| {
            a == b
                || numeric
                    && matches!((a.parse::<f64>(), b.parse::<f64>()), (Ok(x), Ok(y)) if x == y)
        };
        match self {
            Comparison::Eq(v) => text.is_some_and(|t| same(&t, v)),
            Comparison::Ne(v) => !text.is_some_and(|t| same(&t, v)),
            Comparison::In(values) => text.is_some_and(|t| values.iter().any(|v| same(&t, v))),
            Comparison::NotIn(values) => !text.is_some_and(|t| values.iter().any(|v| same(&t, v))),
            Comparison::Contains(needle) => text.is_some_and(|t| t.contains(needle.as_str())),
            Comparison::Gt(n) => number.is_some_and(|x| x > *n),
            Comparison::Gte(n) => number.is_some_and(|x| x >= *n),
            Comparison::Lt(n) => number.is_some_and(|x| x < *n),
            Comparison::Lte(n) => number.is_some_and(|x| x <= *n),
            Comparison::Exists => value.is_some(),
            Comparison::NotExists => value.is_none(),
        }
    }
}

impl Condition {
    pub(crate) fn sql(&self, alias: &str, at: &str) -> Result<String, AnalyticsError> {
        if self.field.trim().starts_with(PROFILE_PREFIX) {
            return Err(AnalyticsError::invalid(
                &format!("{at}.field"),
                format!(
                    "`{}` is a field of profiles; conditions on profiles go in `segment`",
                    self.field.trim()
                ),
            ));
        }
        let field = FieldRef::parse(&self.field, &format!("{at}.field"))?;
        Ok(Comparison::parse(&self.op, &self.value, at)?.sql(&field, alias))
    }
}

/// The part of a definition every analysis takes.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Scope {
    /// Events at or after this time: RFC 3339, or a date (midnight in `timezone`).
    #[serde(default)]
    pub from: Option<String>,
    /// Events before this time (exclusive).
    #[serde(default)]
    pub to: Option<String>,
    /// The IANA zone days, weeks and months are cut in [default: UTC].
    #[serde(default)]
    pub timezone: Option<String>,
    /// Only events passing every condition.
    #[serde(default, rename = "where")]
    pub conditions: Vec<Condition>,
    /// Only events of the profiles passing every condition: a segment, with fields of the
    /// profile as `GET /v1/profiles/{id}` shows it (`profile.traits.plan`,
    /// `profile.model_traits.rfm_segment`, `profile.computed_traits.order_count`).
    #[serde(default)]
    pub segment: Vec<Condition>,
    /// A field to split results by: of the event (e.g. `context.device.type`,
    /// `properties.channel`) or of its profile (`profile.model_traits.rfm_segment`).
    #[serde(default)]
    pub breakdown: Option<String>,
}

/// A [`Scope`] checked and ready to render.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
    pub zone: Tz,
    pub filters: Vec<String>,
    /// The breakdown when it is a field of the event.
    pub breakdown: Option<FieldRef>,
    /// The profiles counted (empty: all of them).
    pub segment: Vec<ProfileCondition>,
    /// The breakdown when it is a field of the profile.
    pub profile_breakdown: Option<ProfilePath>,
}

impl Scope {
    pub fn resolve(&self) -> Result<Resolved, AnalyticsError> {
        let zone: Tz = match &self.timezone {
            None => Tz::UTC,
            // `utc` and `america/mexico_city` are meant as the zones they spell.
            Some(name) => chrono_tz::TZ_VARIANTS
                .iter()
                .find(|zone| zone.name().eq_ignore_ascii_case(name.trim()))
                .copied()
                .ok_or_else(|| {
                    AnalyticsError::invalid(
                        "timezone",
                        format!("`{name}` is not an IANA time zone (e.g. America/Mexico_City)"),
                    )
                })?,
        };
        let from = self
            .from
            .as_deref()
            .map(|t| parse_instant(t, zone, "from"))
            .transpose()?;
        let to = self
            .to
            .as_deref()
            .map(|t| parse_instant(t, zone, "to"))
            .transpose()?;
        if let (Some(from), Some(to)) = (from, to)
            && from >= to
        {
            return Err(AnalyticsError::invalid("to", "must be after `from`"));
        }
        let filters = self
            .conditions
            .iter()
            .enumerate()
            .map(|(i, c)| c.sql("e", &format!("where[{i}]")))
            .collect::<Result<Vec<_>, _>>()?;
        let segment = self
            .segment
            .iter()
            .enumerate()
            .map(|(i, c)| ProfileCondition::parse(c, &format!("segment[{i}]")))
            .collect::<Result<Vec<_>, _>>()?;
        let (breakdown, profile_breakdown) = match self.breakdown.as_deref().map(str::trim) {
            None => (None, None),
            Some(text) if text.starts_with(PROFILE_PREFIX) => {
                (None, Some(ProfilePath::parse(text, "breakdown")?))
            }
            Some(text) => (Some(FieldRef::parse(text, "breakdown")?), None),
        };
        Ok(Resolved {
            from,
            to,
            zone,
            filters,
            breakdown,
            segment,
            profile_breakdown,
        })
    }
}

/// RFC 3339, or a date meaning its midnight in `zone`.
pub fn parse_instant(text: &str, zone: Tz, at: &str) -> Result<DateTime<Utc>, AnalyticsError> {
    let text = text.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Ok(t.with_timezone(&Utc));
    }
    let local = NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .or_else(|| NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S").ok());
    local
        .and_then(|l| zone.from_local_datetime(&l).earliest())
        .map(|t| t.with_timezone(&Utc))
        .ok_or_else(|| {
            AnalyticsError::invalid(
                at,
                format!("`{text}` is not a time; use RFC 3339 (2024-05-01T00:00:00Z) or a date (2024-05-01)"),
            )
        })
}

/// [`parse_instant`] for a field read in UTC: a date is its midnight in UTC.
pub fn parse_utc_instant(text: &str, at: &str) -> Result<DateTime<Utc>, AnalyticsError> {
    parse_instant(text, Tz::UTC, at)
}

/// A timestamp as a SQL expression.
pub fn instant_sql(t: DateTime<Utc>) -> String {
    format!("to_timestamp_micros({})", t.timestamp_micros())
}

impl Resolved {
    /// The moment an analysis is judged at: its `as_of` field (RFC 3339 or a date in the scope's
    /// zone) if given, else the scope's end (`to`), else now.
    pub fn as_of(&self, text: Option<&str>) -> Result<DateTime<Utc>, AnalyticsError> {
        match text {
            Some(text) => parse_instant(text, self.zone, "as_of"),
            None => Ok(self.to.unwrap_or_else(Utc::now)),
        }
    }

    /// The scope's conditions on events: the caller's own, then time, then the `where` filters.
    fn conditions(&self, extra: &[String]) -> Vec<String> {
        let mut conditions: Vec<String> = extra.to_vec();
        if let Some(from) = self.from {
            conditions.push(format!("e.timestamp >= {}", instant_sql(from)));
        }
        if let Some(to) = self.to {
            conditions.push(format!("e.timestamp < {}", instant_sql(to)));
        }
        conditions.extend(self.filters.iter().cloned());
        conditions
    }

    /// The events in scope with the profile each belongs to now (`profile_id`), as a CTE body
    /// over `events` and `profile_identities`: found by the event's `user_id` if it has one, else
    /// its `anonymous_id`, else (records that carry neither, such as CRM contacts) its email.
    /// Events of no profile yet count under their own identifier; events with no identifier at
    /// all are left out. `extra` adds conditions (e.g. the purchase event) and `columns` the
    /// fields to carry.
    ///
    /// One join on one key, with the identities on the build side: events are the many, and
    /// three joins each hashing every event cost three times as much (measured).
    pub fn attributed_events(&self, extra: &[String], columns: &str) -> String {
        let mut conditions = self.conditions(extra);
        conditions.push(
            "(e.user_id IS NOT NULL OR e.anonymous_id IS NOT NULL OR p.profile_id IS NOT NULL)"
                .to_string(),
        );
        // With a segment or a profile breakdown, the identities carry their profile's label —
        // joined on the small side, so events still meet one join — and, with a segment, only
        // the members' identities remain: everyone else's events find no profile and are left
        // out.
        let identities = if self.names_profiles() {
            format!(
                "(SELECT i.profile_id, i.id_type, i.id_value, s.label FROM profile_identities i \
                  {} JOIN {} s ON s.profile_id = i.profile_id)",
                if self.segment.is_empty() {
                    "LEFT"
                } else {
                    "INNER"
                },
                crate::segment::SEGMENT_TABLE
            )
        } else {
            "profile_identities".to_string()
        };
        if !self.segment.is_empty() {
            conditions.push("p.profile_id IS NOT NULL".to_string());
        }
        let breakdown = match (&self.breakdown, &self.profile_breakdown) {
            (Some(field), _) => format!("COALESCE({}, '(none)')", field.text_sql("e")),
            (None, Some(_)) => "COALESCE(p.label, '(none)')".to_string(),
            (None, None) => "'all'".to_string(),
        };
        format!(
            "SELECT COALESCE(p.profile_id, \
                    CONCAT('unattributed:', COALESCE(e.user_id, e.anonymous_id))) AS profile_id, \
                    e.timestamp AS ts, {breakdown} AS breakdown{sep}{columns} \
             FROM {identities} p RIGHT JOIN events e \
               ON p.id_type = CASE WHEN e.user_id IS NOT NULL THEN 'user_id' \
                                   WHEN e.anonymous_id IS NOT NULL THEN 'anonymous_id' \
                                   ELSE 'email' END \
              AND p.id_value = COALESCE(e.user_id, e.anonymous_id, lower(trim(e.email))) \
             WHERE {}",
            conditions.join(" AND "),
            sep = if columns.is_empty() { "" } else { ", " },
        )
    }

    /// For analyses that judge profiles rather than count events (risk, preferences): a
    /// breakdown must be a field of the profile, as no one event speaks for a profile.
    pub fn profile_breakdown_only(&self) -> Result<(), AnalyticsError> {
        match &self.breakdown {
            Some(_) => Err(AnalyticsError::invalid(
                "breakdown",
                "must be a field of the profile here (e.g. profile.model_traits.rfm_segment or profile.traits.plan): this analysis judges profiles, not single events; narrow events with `where`",
            )),
            None => Ok(()),
        }
    }

    /// Whether the scope names profiles: a segment, or a breakdown by a profile's field. Such a
    /// scope needs the profiles' answers ([`crate::Data::segment`]).
    pub fn names_profiles(&self) -> bool {
        !self.segment.is_empty() || self.profile_breakdown.is_some()
    }

    /// The events of `selective` (conditions that keep few events, such as `e.event = '…'`)
    /// with their attribution key (`id_type`, `id_value`: the `user_id` if there is one, else
    /// the `anonymous_id`, else the email) instead of their profile, for aggregates grouped by
    /// that key and attributed afterwards ([`crate::identities`]); and `keep`, whether the event
    /// is also in the scope (`extra`, time range, `where`), for the aggregates' `FILTER (WHERE
    /// keep)`.
    ///
    /// Why not all in WHERE: the Parquet scan evaluates each pushed-down condition over every
    /// row of the files, decoding its columns, so each extra condition costs a full column
    /// (about 0.1 s per 10M events); as a column it is computed only for the selective few.
    /// Events with no identifier have a NULL `id_value`; callers skip them. A segment and a
    /// breakdown by a profile's field are the caller's to apply, once it knows each event's
    /// profile ([`crate::segment::Segment`]); `breakdown` is then `'all'`.
    pub fn keyed_events(&self, selective: &[String], extra: &[String], columns: &str) -> String {
        let keep = self.conditions(extra);
        let keep = if keep.is_empty() {
            "TRUE".to_string()
        } else {
            format!("({})", keep.join(" AND "))
        };
        let selective = if selective.is_empty() {
            "TRUE".to_string()
        } else {
            selective.join(" AND ")
        };
        let breakdown = match &self.breakdown {
            Some(field) => format!("COALESCE({}, '(none)')", field.text_sql("e")),
            None => "'all'".to_string(),
        };
        format!(
            "SELECT CASE WHEN e.user_id IS NOT NULL THEN 'user_id' \
                         WHEN e.anonymous_id IS NOT NULL THEN 'anonymous_id' \
                         ELSE 'email' END AS id_type, \
                    COALESCE(e.user_id, e.anonymous_id, lower(trim(e.email))) AS id_value, \
                    e.timestamp AS ts, {breakdown} AS breakdown, {keep} AS keep{sep}{columns} \
             FROM events e WHERE {selective}",
            sep = if columns.is_empty() { "" } else { ", " },
        )
    }

    /// `ts` cut to the start of its `unit` in the scope's zone, as a SQL expression.
    pub fn bucket_sql(&self, unit: &str, column: &str) -> String {
        format!(
            "date_trunc({}, {column} AT TIME ZONE {})",
            sql_string(unit),
            sql_string(self.zone.name())
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_and_conditions_render_safely_and_bad_ones_say_where() {
        assert_eq!(
            FieldRef::parse("context.device.type", "breakdown")
                .unwrap()
                .text_sql("e"),
            "json_get_str(e.context, 'device', 'type')"
        );
        let quoted = Condition {
            field: "properties.name".into(),
            op: "eq".into(),
            value: Value::from("O'Brien'); DROP TABLE events; --"),
        };
        assert_eq!(
            quoted.sql("e", "where[0]").unwrap(),
            "json_get_str(e.properties, 'name') = 'O''Brien''); DROP TABLE events; --'"
        );
        let error = FieldRef::parse("colour", "breakdown").unwrap_err();
        assert_eq!(error.field(), Some("breakdown"));
        let error = Condition {
            field: "event".into(),
            op: "like".into(),
            value: Value::Null,
        }
        .sql("e", "where[2]")
        .unwrap_err();
        assert_eq!(error.field(), Some("where[2].op"));
    }

    #[test]
    fn dates_are_midnight_in_the_scope_zone() {
        let scope = Scope {
            from: Some("2024-03-01".into()),
            to: Some("2024-04-01T00:00:00Z".into()),
            timezone: Some("America/Mexico_City".into()),
            ..Scope::default()
        };
        let resolved = scope.resolve().unwrap();
        assert_eq!(
            resolved.from.unwrap().to_rfc3339(),
            "2024-03-01T06:00:00+00:00"
        );
        // A zone's name in any case is that zone.
        let lower = Scope {
            timezone: Some("america/mexico_city".into()),
            ..scope.clone()
        };
        assert_eq!(lower.resolve().unwrap().from, resolved.from);
        let backwards = Scope {
            from: Some("2024-05-01".into()),
            to: Some("2024-04-01".into()),
            ..Scope::default()
        };
        assert_eq!(backwards.resolve().unwrap_err().field(), Some("to"));
        let zone = Scope {
            timezone: Some("Mars/Olympus".into()),
            ..Scope::default()
        };
        assert_eq!(zone.resolve().unwrap_err().field(), Some("timezone"));
    }
}
