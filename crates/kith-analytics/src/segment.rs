//! Segments in analyses: which profiles an analysis counts (`segment`, conditions on the profile
//! as `GET /v1/profiles/{id}` shows it) and a breakdown by a field of the profile (`breakdown:
//! "profile.model_traits.rfm_segment"`).
//!
//! Profiles are judged once per analysis, before its events are read: each profile number of
//! the [`IdentityIndex`] gets its breakdown value, or is left out. Analyses that attribute
//! events in Rust ask the [`Segment`] per event; those that attribute in SQL join the same
//! answer as the table [`SEGMENT_TABLE`].

use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch, StringBuilder};
use arrow::datatypes::{DataType, Field, Schema};
use hashbrown::HashMap;
use kith_lake::ExtraTable;
use serde_json::Value;

use crate::AnalyticsError;
use crate::identities::IdentityIndex;
use crate::interner::Interner;
use crate::scope::{Comparison, Condition, Resolved};

/// How fields of the profile are written, to tell them from fields of the event.
pub const PROFILE_PREFIX: &str = "profile.";

/// The table SQL analyses read the segment from: `profile_id`, `label` (the profile's
/// breakdown value), one row per profile the segment counts.
pub const SEGMENT_TABLE: &str = "analysis_segment";

/// The parts of a profile fields can be read from.
const SECTIONS: &[&str] = &[
    "profile_id",
    "traits",
    "computed_traits",
    "model_traits",
    "consent",
];

/// Where a value lies in a profile: `profile.traits.plan` is `traits` → `plan`.
#[derive(Debug, Clone, PartialEq)]
pub struct ProfilePath(Vec<String>);

impl ProfilePath {
    /// The top-level part of the profile the path reads (`traits`, `model_traits`…).
    pub fn section(&self) -> &str {
        self.0.first().map_or("", String::as_str)
    }

    /// The path's keys, the section first (`["traits", "plan"]`).
    pub fn parts(&self) -> &[String] {
        &self.0
    }

    /// Reads `profile.SECTION.NAME…`; `at` names the definition's field for errors.
    pub fn parse(text: &str, at: &str) -> Result<ProfilePath, AnalyticsError> {
        let text = text.trim();
        let wrong = || {
            AnalyticsError::invalid(
                at,
                format!(
                    "`{text}` is not a field of profiles; use profile.profile_id or a path into one of {} (e.g. profile.traits.plan, profile.model_traits.rfm_segment, profile.computed_traits.order_count)",
                    SECTIONS[1..].join(", ")
                ),
            )
        };
        let rest = text.strip_prefix(PROFILE_PREFIX).ok_or_else(wrong)?;
        let parts: Vec<String> = rest.split('.').map(str::to_string).collect();
        let fits = match parts.first().map(String::as_str) {
            Some("profile_id") => parts.len() == 1,
            Some(section) if SECTIONS.contains(&section) => {
                parts.len() > 1 && parts.iter().all(|p| !p.is_empty())
            }
            _ => false,
        };
        if fits {
            Ok(ProfilePath(parts))
        } else {
            Err(wrong())
        }
    }

    /// The value at this path of `profile`, if it has one.
    pub fn get<'v>(&self, profile: &'v Value) -> Option<&'v Value> {
        self.0
            .iter()
            .try_fold(profile, |value, key| value.as_object()?.get(key))
    }
}

/// A condition a profile must pass to be in a segment.
#[derive(Debug, Clone, PartialEq)]
pub struct ProfileCondition {
    path: ProfilePath,
    test: Comparison,
}

impl ProfileCondition {
    /// Reads one condition of a segment; `at` names it (`segment[0]`).
    pub fn parse(condition: &Condition, at: &str) -> Result<ProfileCondition, AnalyticsError> {
        let field = condition.field.trim();
        if !field.starts_with(PROFILE_PREFIX) {
            return Err(AnalyticsError::invalid(
                &format!("{at}.field"),
                format!(
                    "`{field}` is not a field of profiles: a segment tests profiles (e.g. profile.traits.plan); conditions on events go in `where`"
                ),
            ));
        }
        Ok(ProfileCondition {
            path: ProfilePath::parse(field, &format!("{at}.field"))?,
            test: Comparison::parse(&condition.op, &condition.value, at)?,
        })
    }

    pub fn passes(&self, profile: &Value) -> bool {
        self.test.passes(self.path.get(profile))
    }
}

/// Where analyses read profiles from: every profile as `GET /v1/profiles/{id}` shows it
/// (`profile_id`, `traits`, `computed_traits`, `model_traits`, `consent`…).
pub trait ProfileSource: Send + Sync {
    /// Visits every profile with its id. Only the `fields` are read (the rest of the profile
    /// may be missing): a source may skip the costly parts no condition looks at.
    fn for_each_profile(
        &self,
        fields: &[&ProfilePath],
        visit: &mut dyn FnMut(&str, &Value),
    ) -> Result<(), String>;
}

/// A profile number the segment leaves out.
const LEFT_OUT: u32 = u32::MAX;

/// The profiles a scope counts and each one's breakdown value, by profile number of the
/// [`IdentityIndex`] (the numbers [`crate::identities::OwnerNumbers`] gives profiles).
#[derive(Debug, Default)]
pub struct Segment {
    /// Per profile number: the number of its breakdown value in `labels`, or [`LEFT_OUT`].
    label_of: Vec<u32>,
    labels: Vec<String>,
    /// Whether profiles are left out (a segment was given); events of no profile then are too.
    filters: bool,
    /// Whether the breakdown is the profile's (`labels`) rather than the event's.
    breaks_down: bool,
}

/// The breakdown value of events whose profile has none (or that have no profile yet).
pub(crate) const NONE: &str = "(none)";

impl Segment {
    /// Every profile, and the event's own breakdown: a scope that names no profiles.
    pub fn everyone() -> Segment {
        Segment::default()
    }

    /// Judges every profile `source` gives against `scope`'s segment, and reads its breakdown
    /// value when the breakdown is a field of the profile.
    pub fn judge(
        scope: &Resolved,
        index: &IdentityIndex,
        source: &dyn ProfileSource,
    ) -> Result<Segment, AnalyticsError> {
        let filters = !scope.segment.is_empty();
        let mut labels = Interner::default();
        let none = labels.number(NONE);
        let mut label_of = vec![if filters { LEFT_OUT } else { none }; index.profiles()];
        let numbers: HashMap<&str, u32> = (0..index.profiles() as u32)
            .map(|number| (index.profile_id(number), number))
            .collect();
        let fields: Vec<&ProfilePath> = scope
            .segment
            .iter()
            .map(|c| &c.path)
            .chain(scope.profile_breakdown.iter())
            .collect();
        source
            .for_each_profile(&fields, &mut |profile_id, profile| {
                // A profile born after the identity index was built has no events in it yet.
                let Some(&number) = numbers.get(profile_id) else {
                    return;
                };
                label_of[number as usize] = if scope.segment.iter().all(|c| c.passes(profile)) {
                    match &scope.profile_breakdown {
                        Some(path) => labels.number(&label(path.get(profile))),
                        None => none,
                    }
                } else {
                    LEFT_OUT
                };
            })
            .map_err(AnalyticsError::Profiles)?;
        Ok(Segment {
            label_of,
            labels: labels.into_names(),
            filters,
            breaks_down: scope.profile_breakdown.is_some(),
        })
    }

    /// Whether events of owner `owner` (a number of [`crate::identities::OwnerNumbers`]) count:
    /// profiles by the segment; identifiers of no profile only when there is no segment.
    pub fn admits(&self, owner: u32) -> bool {
        match self.label_of.get(owner as usize) {
            Some(&label) => label != LEFT_OUT,
            None => !self.filters,
        }
    }

    /// The breakdown value of an event of `owner` whose own value is `event_value`.
    pub fn breakdown<'s>(&'s self, owner: u32, event_value: &'s str) -> &'s str {
        if !self.breaks_down {
            return event_value;
        }
        match self.label_of.get(owner as usize) {
            Some(&label) if label != LEFT_OUT => &self.labels[label as usize],
            _ => NONE,
        }
    }

    /// The segment as [`SEGMENT_TABLE`], for analyses that attribute events in SQL.
    pub fn table(&self, index: &IdentityIndex) -> ExtraTable {
        let schema = Arc::new(Schema::new(vec![
            Field::new("profile_id", DataType::Utf8, false),
            Field::new("label", DataType::Utf8, false),
        ]));
        let mut profile_ids = StringBuilder::new();
        let mut labels = StringBuilder::new();
        for (number, &label) in self.label_of.iter().enumerate() {
            if label != LEFT_OUT {
                profile_ids.append_value(index.profile_id(number as u32));
                labels.append_value(&self.labels[label as usize]);
            }
        }
        let columns: Vec<ArrayRef> =
            vec![Arc::new(profile_ids.finish()), Arc::new(labels.finish())];
        ExtraTable {
            name: SEGMENT_TABLE.into(),
            schema: schema.clone(),
            batches: vec![
                RecordBatch::try_new(schema, columns).expect("columns match the segment schema"),
            ],
            shared: false,
        }
    }
}

/// A profile's value as a breakdown value: text as it is, numbers and booleans as text, lists
/// and objects as JSON; missing or null is `(none)`.
fn label(value: Option<&Value>) -> String {
    match value {
        None | Some(Value::Null) => NONE.to_string(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::scope::Scope;

    struct Profiles(Vec<Value>);

    impl ProfileSource for Profiles {
        fn for_each_profile(
            &self,
            _fields: &[&ProfilePath],
            visit: &mut dyn FnMut(&str, &Value),
        ) -> Result<(), String> {
            for profile in &self.0 {
                visit(profile["profile_id"].as_str().unwrap_or_default(), profile);
            }
            Ok(())
        }
    }

    fn index(profile_ids: &[&str]) -> IdentityIndex {
        let schema = Arc::new(Schema::new(vec![
            Field::new("profile_id", DataType::Utf8, false),
            Field::new("id_type", DataType::Utf8, false),
            Field::new("id_value", DataType::Utf8, false),
        ]));
        let column =
            |values: Vec<&str>| Arc::new(arrow::array::StringArray::from(values)) as ArrayRef;
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                column(profile_ids.to_vec()),
                column(vec!["user_id"; profile_ids.len()]),
                column(profile_ids.to_vec()),
            ],
        )
        .unwrap();
        IdentityIndex::from_tables(&[ExtraTable {
            name: "profile_identities".into(),
            schema,
            batches: vec![batch],
            shared: false,
        }])
    }

    fn condition(field: &str, op: &str, value: Value) -> Condition {
        Condition {
            field: field.into(),
            op: op.into(),
            value,
        }
    }

    #[test]
    fn comparisons_read_profile_values_as_text_or_numbers_and_missing_ones_as_sql_does() {
        let passes = |op: &str, value: Value, found: Option<Value>| {
            Comparison::parse(op, &value, "segment[0]")
                .unwrap()
                .passes(found.as_ref())
        };
        assert!(passes("eq", json!("pro"), Some(json!("pro"))));
        assert!(passes("eq", json!("2.0"), Some(json!(2))));
        assert!(passes("eq", json!(2), Some(json!("2"))));
        // Text is compared as text: codes with leading zeros stay apart.
        assert!(!passes("eq", json!("123"), Some(json!("00123"))));
        assert!(!passes("in", json!(["1000"]), Some(json!("1e3"))));
        assert!(passes("eq", json!(true), Some(json!(true))));
        assert!(!passes("eq", json!("pro"), None));
        assert!(passes("ne", json!("pro"), None));
        assert!(passes("ne", json!("pro"), Some(Value::Null)));
        assert!(passes("in", json!(["a", "b"]), Some(json!("b"))));
        assert!(passes("not_in", json!(["a", "b"]), None));
        assert!(!passes("not_in", json!(["a", "b"]), Some(json!("a"))));
        assert!(passes(
            "contains",
            json!("gmail"),
            Some(json!("x@gmail.com"))
        ));
        assert!(passes("gt", json!(100), Some(json!(100.5))));
        assert!(passes("lte", json!("3"), Some(json!("3"))));
        assert!(!passes("lt", json!(3), Some(json!("many"))));
        assert!(passes("exists", Value::Null, Some(json!([]))));
        assert!(passes("not_exists", Value::Null, None));
    }

    #[test]
    fn profile_paths_name_a_section_and_bad_ones_say_which_exist() {
        let profile = json!({"profile_id": "p1", "traits": {"address": {"city": "Puebla"}}});
        let path = ProfilePath::parse("profile.traits.address.city", "breakdown").unwrap();
        assert_eq!(path.get(&profile), Some(&json!("Puebla")));
        let id = ProfilePath::parse(" profile.profile_id ", "breakdown").unwrap();
        assert_eq!(id.get(&profile), Some(&json!("p1")));
        for wrong in [
            "profile.plan",
            "profile.traits",
            "profile.traits..x",
            "traits.plan",
        ] {
            let error = ProfilePath::parse(wrong, "breakdown").unwrap_err();
            assert_eq!(error.field(), Some("breakdown"), "{wrong}");
            assert!(error.to_string().contains("profile.traits.plan"), "{error}");
        }
        let error = ProfileCondition::parse(&condition("event", "eq", json!("x")), "segment[1]")
            .unwrap_err();
        assert_eq!(error.field(), Some("segment[1].field"));
    }

    #[test]
    fn a_segment_admits_its_members_and_labels_each_by_its_profile() {
        let index = index(&["p1", "p2", "p3"]);
        let profiles = Profiles(vec![
            json!({"profile_id": "p1", "traits": {"plan": "pro"}, "model_traits": {"rfm_segment": "Champions"}}),
            json!({"profile_id": "p2", "traits": {"plan": "free"}}),
            json!({"profile_id": "p3", "traits": {}, "model_traits": {"rfm_segment": "Lost"}}),
            // Not in the index yet: ignored.
            json!({"profile_id": "p9", "traits": {"plan": "pro"}}),
        ]);
        let scope = Scope {
            segment: vec![condition("profile.traits.plan", "ne", json!("free"))],
            breakdown: Some("profile.model_traits.rfm_segment".into()),
            ..Scope::default()
        }
        .resolve()
        .unwrap();
        let segment = Segment::judge(&scope, &index, &profiles).unwrap();
        assert_eq!(
            (0..4).map(|n| segment.admits(n)).collect::<Vec<_>>(),
            // p1, p2, p3, and an owner no profile holds (left out with a segment).
            vec![true, false, true, false]
        );
        assert_eq!(segment.breakdown(0, "web"), "Champions");
        assert_eq!(segment.breakdown(2, "web"), "Lost");
        let table = segment.table(&index);
        assert_eq!(table.batches[0].num_rows(), 2);

        // A profile breakdown without a segment: everyone, unknown owners as "(none)".
        let scope = Scope {
            breakdown: Some("profile.traits.plan".into()),
            ..Scope::default()
        }
        .resolve()
        .unwrap();
        let segment = Segment::judge(&scope, &index, &profiles).unwrap();
        assert!(segment.admits(7));
        assert_eq!(segment.breakdown(1, "web"), "free");
        assert_eq!(segment.breakdown(2, "web"), "(none)");
        assert_eq!(segment.breakdown(7, "web"), "(none)");
        // Neither: the event's own value.
        assert_eq!(Segment::everyone().breakdown(0, "web"), "web");
        assert!(Segment::everyone().admits(0));
    }
}
