//! Computed traits a workspace declares: counts, sums, averages, extremes, first and last values,
//! most frequent and unique values, first/last seen and days since — optionally over a rolling
//! window of days.
//!
//! Each identifier keeps a small state per trait (one bucket per UTC day, plus the first and last
//! value), updated as events arrive; a profile's value folds its identifiers' states at read time.
//! The same definitions compile to SQL ([`ComputedTraitDef::batch_sql`]) so a batch recomputation
//! over `events` gives the same answers — the tests hold the two to that.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use thiserror::Error;

const MICROS_PER_DAY: i64 = 86_400_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Count,
    Sum,
    Avg,
    Min,
    Max,
    FirstValue,
    LastValue,
    MostFrequent,
    UniqueValues,
    UniqueCount,
    FirstSeen,
    LastSeen,
    DaysSince,
}

impl Kind {
    fn needs_property(self) -> bool {
        matches!(
            self,
            Kind::Sum
                | Kind::Avg
                | Kind::Min
                | Kind::Max
                | Kind::FirstValue
                | Kind::LastValue
                | Kind::MostFrequent
                | Kind::UniqueValues
                | Kind::UniqueCount
        )
    }

    /// Kinds a rolling window makes sense for (first/last sightings are about all time).
    fn takes_window(self) -> bool {
        !matches!(
            self,
            Kind::FirstValue | Kind::LastValue | Kind::FirstSeen | Kind::LastSeen | Kind::DaysSince
        )
    }
}

/// A computed trait as a user declares it (in `kith.toml` or through the API).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ComputedTraitDef {
    /// The trait's name on profiles, e.g. `orders_last_30_days`.
    pub name: String,
    pub kind: Kind,
    /// Only events of this name (a track event, or a page/screen name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<String>,
    /// Only messages of this type (`track`, `page`, `identify`, ...).
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub message_type: Option<String>,
    /// The `properties` field the value is read from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub property: Option<String>,
    /// Only the last N days (UTC calendar days, today included).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window_days: Option<u32>,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum DefinitionError {
    #[error("`name` must be 1–64 characters of letters, digits and `_`, got `{0}`")]
    BadName(String),
    #[error("`{name}`: kind `{kind}` needs `property` (the properties field to read)")]
    MissingProperty { name: String, kind: String },
    #[error("`{name}`: kind `{kind}` does not take `property`")]
    UnusedProperty { name: String, kind: String },
    #[error("`{name}`: kind `{kind}` is about all time and does not take `window_days`")]
    UnusedWindow { name: String, kind: String },
    #[error("`{name}`: `window_days` must be between 1 and 3650")]
    BadWindow { name: String },
    #[error("`{name}`: `type` must be one of identify, track, page, screen, group, alias")]
    BadType { name: String },
    #[error("`{name}` is a built-in trait name; choose another")]
    Reserved { name: String },
    /// `property` written as an analysis's path (`properties.revenue`): it names a key of the
    /// event's `properties`, and read as one, such a name would match no event.
    #[error(
        "`{name}`: `property` names a key of the event's `properties` (such as `revenue`), not a \
         path; {advice}"
    )]
    PropertyPath { name: String, advice: String },
    /// An event name or property path no event can match: empty, longer than an event may be,
    /// or holding a control character.
    #[error(
        "`{name}`: `{field}` must be 1–{MOST_MATCHED_CHARS} characters without control characters, as event names and property names are"
    )]
    BadText { name: String, field: &'static str },
}

/// The longest event name or property path a definition may name (an event is at most 32 KB).
const MOST_MATCHED_CHARS: usize = 1024;

const BUILT_IN: &[&str] = &[
    "first_seen",
    "last_seen",
    "event_count",
    "order_count",
    "total_revenue",
    "average_order_value",
];

fn kind_name(kind: Kind) -> String {
    serde_json::to_value(kind)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

impl ComputedTraitDef {
    pub fn validate(&self) -> Result<(), DefinitionError> {
        let name = self.name.clone();
        let valid_name = !self.name.is_empty()
            && self.name.len() <= 64
            && self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid_name {
            return Err(DefinitionError::BadName(name));
        }
        if BUILT_IN.contains(&self.name.as_str()) {
            return Err(DefinitionError::Reserved { name });
        }
        let kind = kind_name(self.kind);
        match (self.kind.needs_property(), &self.property) {
            (true, None) => return Err(DefinitionError::MissingProperty { name, kind }),
            (false, Some(_)) => return Err(DefinitionError::UnusedProperty { name, kind }),
            _ => {}
        }
        if let Some(days) = self.window_days {
            if !self.kind.takes_window() {
                return Err(DefinitionError::UnusedWindow { name, kind });
            }
            if !(1..=3650).contains(&days) {
                return Err(DefinitionError::BadWindow { name });
            }
        }
        if let Some(t) = &self.message_type
            && !["identify", "track", "page", "screen", "group", "alias"].contains(&t.as_str())
        {
            return Err(DefinitionError::BadType { name });
        }
        let matchable = |text: &str| {
            !text.is_empty()
                && text.chars().count() <= MOST_MATCHED_CHARS
                && !text.chars().any(char::is_control)
        };
        for (field, text) in [("event", &self.event), ("property", &self.property)] {
            if text.as_deref().is_some_and(|t| !matchable(t)) {
                return Err(DefinitionError::BadText { name, field });
            }
        }
        if let Some(property) = &self.property {
            let advice = match property.split_once('.') {
                Some(("properties", key)) if !key.is_empty() => Some(format!("write `{key}`")),
                Some(("context" | "traits", _)) => Some(
                    "computed traits read `properties` only; analyses read `context` and `traits`"
                        .to_string(),
                ),
                _ => None,
            };
            if let Some(advice) = advice {
                return Err(DefinitionError::PropertyPath { name, advice });
            }
        }
        Ok(())
    }

    /// Whether an event counts for this trait.
    pub fn matches(&self, message_type: &str, event: Option<&str>) -> bool {
        self.message_type
            .as_deref()
            .is_none_or(|t| t == message_type)
            && self.event.as_deref().is_none_or(|e| Some(e) == event)
    }
}

/// A property value as the states keep it: numbers for arithmetic, text for counting values.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Observed {
    /// The value as JSON text (absent when the event lacks the property).
    pub json: Option<String>,
    pub number: Option<f64>,
}

impl Observed {
    pub fn from_property(value: Option<&Value>) -> Observed {
        match value {
            None | Some(Value::Null) => Observed {
                json: None,
                number: None,
            },
            Some(v) => Observed {
                json: Some(v.to_string()),
                number: match v {
                    Value::Number(n) => n.as_f64(),
                    Value::String(s) => s.trim().parse::<f64>().ok().filter(|f| f.is_finite()),
                    _ => None,
                },
            },
        }
    }
}

/// One day's (or, without a window, all time's) aggregate.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Bucket {
    pub count: u64,
    pub numbers: u64,
    pub sum: f64,
    pub min: Option<f64>,
    pub max: Option<f64>,
    /// Value (JSON text) → occurrences.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub values: BTreeMap<String, u64>,
}

impl Bucket {
    fn add(&mut self, observed: &Observed, keep_values: bool) {
        self.count += 1;
        if let Some(n) = observed.number {
            self.numbers += 1;
            crate::facts::add_saturating(&mut self.sum, n);
            self.min = Some(self.min.map_or(n, |m| m.min(n)));
            self.max = Some(self.max.map_or(n, |m| m.max(n)));
        }
        if keep_values && let Some(json) = &observed.json {
            *self.values.entry(json.clone()).or_default() += 1;
        }
    }

    fn merge(&mut self, other: &Bucket) {
        self.count += other.count;
        self.numbers += other.numbers;
        crate::facts::add_saturating(&mut self.sum, other.sum);
        self.min = match (self.min, other.min) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.max = match (self.max, other.max) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        for (value, n) in &other.values {
            *self.values.entry(value.clone()).or_default() += n;
        }
    }
}

/// The value seen at one position of the canonical order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sighting {
    pub time_micros: i64,
    pub message_id: String,
    pub json: Option<String>,
}

impl Sighting {
    fn order(&self) -> (i64, &str) {
        (self.time_micros, &self.message_id)
    }
}

/// A trait's state for one identifier (or, folded, for a profile).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TraitState {
    /// UTC day number → aggregate; one bucket under `ALL_TIME` when the trait has no window.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub buckets: BTreeMap<i64, Bucket>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first: Option<Sighting>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last: Option<Sighting>,
}

const ALL_TIME: i64 = i64::MIN;

fn day_of(micros: i64) -> i64 {
    micros.div_euclid(MICROS_PER_DAY)
}

impl TraitState {
    pub fn add(
        &mut self,
        def: &ComputedTraitDef,
        time_micros: i64,
        message_id: &str,
        observed: &Observed,
    ) {
        let bucket = if def.window_days.is_some() {
            day_of(time_micros)
        } else {
            ALL_TIME
        };
        let keep_values = matches!(
            def.kind,
            Kind::MostFrequent | Kind::UniqueValues | Kind::UniqueCount
        );
        self.buckets
            .entry(bucket)
            .or_default()
            .add(observed, keep_values);
        let sighting = Sighting {
            time_micros,
            message_id: message_id.to_string(),
            json: observed.json.clone(),
        };
        // First/last value ignore events without the property; first/last seen take any.
        let counts = !def.kind.needs_property() || observed.json.is_some();
        if counts
            && self
                .first
                .as_ref()
                .is_none_or(|f| sighting.order() < f.order())
        {
            self.first = Some(sighting.clone());
        }
        if counts
            && self
                .last
                .as_ref()
                .is_none_or(|l| sighting.order() > l.order())
        {
            self.last = Some(sighting);
        }
    }

    pub fn merge(&mut self, other: &TraitState) {
        for (day, bucket) in &other.buckets {
            self.buckets.entry(*day).or_default().merge(bucket);
        }
        if let Some(f) = &other.first
            && self.first.as_ref().is_none_or(|s| f.order() < s.order())
        {
            self.first = Some(f.clone());
        }
        if let Some(l) = &other.last
            && self.last.as_ref().is_none_or(|s| l.order() > s.order())
        {
            self.last = Some(l.clone());
        }
    }

    /// Drops day buckets that no window reaching back from `now` can use again.
    pub fn prune(&mut self, def: &ComputedTraitDef, now_micros: i64) {
        if let Some(days) = def.window_days {
            let oldest = day_of(now_micros) - i64::from(days) + 1;
            self.buckets.retain(|day, _| *day >= oldest);
        }
    }

    /// The trait's value at `now`.
    pub fn value(&self, def: &ComputedTraitDef, now_micros: i64) -> Value {
        let mut total = Bucket::default();
        let oldest = def
            .window_days
            .map(|days| day_of(now_micros) - i64::from(days) + 1);
        for (day, bucket) in &self.buckets {
            if oldest.is_none_or(|o| *day >= o) {
                total.merge(bucket);
            }
        }
        let number = |n: Option<f64>| n.map_or(Value::Null, Value::from);
        let parse = |json: &str| serde_json::from_str::<Value>(json).unwrap_or(Value::Null);
        match def.kind {
            Kind::Count => Value::from(total.count),
            Kind::Sum => Value::from(total.sum),
            Kind::Avg => number((total.numbers > 0).then(|| total.sum / total.numbers as f64)),
            Kind::Min => number(total.min),
            Kind::Max => number(total.max),
            Kind::FirstValue => self
                .first
                .as_ref()
                .and_then(|s| s.json.as_deref())
                .map_or(Value::Null, parse),
            Kind::LastValue => self
                .last
                .as_ref()
                .and_then(|s| s.json.as_deref())
                .map_or(Value::Null, parse),
            Kind::MostFrequent => total
                .values
                .iter()
                // Highest count; ties go to the smallest value, so the answer is stable.
                .max_by(|a, b| a.1.cmp(b.1).then_with(|| b.0.cmp(a.0)))
                .map_or(Value::Null, |(json, _)| parse(json)),
            Kind::UniqueValues => {
                Value::Array(total.values.keys().map(|json| parse(json)).collect())
            }
            Kind::UniqueCount => Value::from(total.values.len()),
            Kind::FirstSeen => self.first.as_ref().map_or(Value::Null, |s| {
                Value::from(crate::view::format_micros(s.time_micros))
            }),
            Kind::LastSeen => self.last.as_ref().map_or(Value::Null, |s| {
                Value::from(crate::view::format_micros(s.time_micros))
            }),
            Kind::DaysSince => self.last.as_ref().map_or(Value::Null, |s| {
                Value::from((now_micros - s.time_micros).div_euclid(MICROS_PER_DAY))
            }),
        }
    }
}

/// The SQL quoting of a string literal.
fn quoted(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

impl ComputedTraitDef {
    /// A query over `events` and `profile_identities` giving `(profile_id, value)` for every
    /// profile with matching events, evaluated at `now` — the batch counterpart of the states
    /// kept on ingest. Values: numbers for counts and arithmetic, JSON text for property values,
    /// RFC 3339 text for sightings.
    pub fn batch_sql(&self, now_micros: i64) -> String {
        let mut filters = Vec::new();
        if let Some(t) = &self.message_type {
            filters.push(format!("e.type = {}", quoted(t)));
        }
        if let Some(event) = &self.event {
            filters.push(format!("e.event = {}", quoted(event)));
        }
        if let Some(days) = self.window_days {
            let oldest = (day_of(now_micros) - i64::from(days) + 1) * MICROS_PER_DAY;
            filters.push(format!("e.timestamp >= to_timestamp_micros({oldest})"));
        }
        let property = self.property.as_deref().map(quoted).unwrap_or_default();
        let json = format!("json_get_json(e.properties, {property})");
        let number = format!(
            "coalesce(json_get_float(e.properties, {property}), try_cast(trim(json_get_str(e.properties, {property})) AS DOUBLE))"
        );
        if self.kind.needs_property() {
            filters.push(format!("{json} IS NOT NULL AND {json} <> 'null'"));
        }
        let condition = if filters.is_empty() {
            "TRUE".to_string()
        } else {
            filters.join(" AND ")
        };
        let attributed = format!(
            "SELECT coalesce(u.profile_id, a.profile_id) AS profile_id, e.timestamp AS ts, \
             e.message_id AS mid, {json} AS json_value, {number} AS num \
             FROM events e \
             LEFT JOIN profile_identities u ON u.id_type = 'user_id' AND u.id_value = e.user_id \
             LEFT JOIN profile_identities a ON a.id_type = 'anonymous_id' AND a.id_value = e.anonymous_id \
             WHERE {condition}",
            json = if self.kind.needs_property() {
                json.as_str()
            } else {
                "NULL"
            },
            number = if self.kind.needs_property() {
                number.as_str()
            } else {
                "NULL"
            },
        );
        let value = match self.kind {
            Kind::Count => "count(*)".to_string(),
            Kind::Sum => "coalesce(sum(num), 0.0)".to_string(),
            Kind::Avg => "avg(num)".to_string(),
            Kind::Min => "min(num)".to_string(),
            Kind::Max => "max(num)".to_string(),
            Kind::FirstValue => "first_value(json_value ORDER BY ts, mid)".to_string(),
            Kind::LastValue => "last_value(json_value ORDER BY ts, mid)".to_string(),
            Kind::UniqueCount => "count(DISTINCT json_value)".to_string(),
            Kind::UniqueValues => "array_sort(array_agg(DISTINCT json_value))".to_string(),
            Kind::FirstSeen => "min(ts)".to_string(),
            Kind::LastSeen => "max(ts)".to_string(),
            Kind::DaysSince => format!(
                "floor((CAST({now_micros} AS BIGINT) - CAST(to_unixtime(max(ts)) * 1000000 AS BIGINT)) / {MICROS_PER_DAY}.0)"
            ),
            Kind::MostFrequent => {
                return format!(
                    "SELECT profile_id, json_value AS value FROM ( \
                       SELECT profile_id, json_value, row_number() OVER \
                         (PARTITION BY profile_id ORDER BY n DESC, json_value ASC) AS rank \
                       FROM (SELECT profile_id, json_value, count(*) AS n FROM ({attributed}) \
                             WHERE profile_id IS NOT NULL GROUP BY profile_id, json_value)) \
                     WHERE rank = 1"
                );
            }
        };
        format!(
            "SELECT profile_id, {value} AS value FROM ({attributed}) \
             WHERE profile_id IS NOT NULL GROUP BY profile_id"
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn def(kind: Kind, property: Option<&str>, window_days: Option<u32>) -> ComputedTraitDef {
        ComputedTraitDef {
            name: "t".into(),
            kind,
            event: None,
            message_type: None,
            property: property.map(str::to_string),
            window_days,
        }
    }

    #[test]
    fn definitions_are_checked_with_reasons() {
        assert!(def(Kind::Sum, Some("revenue"), Some(30)).validate().is_ok());
        assert!(matches!(
            def(Kind::Sum, None, None).validate(),
            Err(DefinitionError::MissingProperty { .. })
        ));
        assert!(matches!(
            def(Kind::Count, Some("x"), None).validate(),
            Err(DefinitionError::UnusedProperty { .. })
        ));
        assert!(matches!(
            def(Kind::DaysSince, None, Some(3)).validate(),
            Err(DefinitionError::UnusedWindow { .. })
        ));
        assert!(matches!(
            def(Kind::Count, None, Some(0)).validate(),
            Err(DefinitionError::BadWindow { .. })
        ));
        let mut bad = def(Kind::Count, None, None);
        bad.name = "orders last week".into();
        assert!(matches!(bad.validate(), Err(DefinitionError::BadName(_))));
        bad.name = "event_count".into();
        assert!(matches!(
            bad.validate(),
            Err(DefinitionError::Reserved { .. })
        ));
        // An analysis's path where a key of `properties` is meant would match no event.
        let err = def(Kind::Sum, Some("properties.revenue"), None)
            .validate()
            .unwrap_err();
        assert!(
            err.to_string().ends_with("not a path; write `revenue`"),
            "{err}"
        );
        let err = def(Kind::MostFrequent, Some("context.device.type"), None)
            .validate()
            .unwrap_err();
        assert!(
            err.to_string().ends_with(
                "computed traits read `properties` only; analyses read `context` and `traits`"
            ),
            "{err}"
        );
        // A key that merely has a dot in it is still a key.
        assert!(def(Kind::Sum, Some("price.usd"), None).validate().is_ok());
    }

    #[test]
    fn a_rolling_window_counts_only_its_days_and_states_fold_across_identifiers() {
        let d = def(Kind::Sum, Some("revenue"), Some(7));
        let now = 100 * MICROS_PER_DAY + 5;
        let mut a = TraitState::default();
        let mut b = TraitState::default();
        let n = |v: f64| Observed::from_property(Some(&Value::from(v)));
        a.add(&d, 100 * MICROS_PER_DAY, "m1", &n(10.0)); // today
        a.add(&d, 94 * MICROS_PER_DAY, "m2", &n(5.0)); // 6 days ago: in
        b.add(&d, 93 * MICROS_PER_DAY, "m3", &n(1000.0)); // 7 days ago: out
        b.add(
            &d,
            99 * MICROS_PER_DAY,
            "m4",
            &Observed::from_property(Some(&Value::from("2.5"))),
        );
        let mut folded = a.clone();
        folded.merge(&b);
        assert_eq!(folded.value(&d, now), Value::from(17.5));
        folded.prune(&d, now);
        assert_eq!(folded.buckets.len(), 3);
    }

    #[test]
    fn most_frequent_unique_and_first_last_values() {
        let text = |s: &str| Observed::from_property(Some(&Value::from(s)));
        let mut state = TraitState::default();
        let d = def(Kind::MostFrequent, Some("category"), None);
        state.add(&d, 3, "m3", &text("zapatos"));
        state.add(&d, 1, "m1", &text("bolsas"));
        state.add(&d, 2, "m2", &text("zapatos"));
        state.add(&d, 4, "m4", &Observed::from_property(None));
        assert_eq!(state.value(&d, 10), Value::from("zapatos"));
        let unique = def(Kind::UniqueValues, Some("category"), None);
        assert_eq!(
            state.value(&unique, 10),
            serde_json::json!(["bolsas", "zapatos"])
        );
        let first = def(Kind::FirstValue, Some("category"), None);
        let last = def(Kind::LastValue, Some("category"), None);
        assert_eq!(state.value(&first, 10), Value::from("bolsas"));
        assert_eq!(
            state.value(&last, 10),
            Value::from("zapatos"),
            "m4 lacks the property"
        );
    }
}
