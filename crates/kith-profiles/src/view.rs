//! A profile as the API, the CLI and the `profiles` table show it.

use std::collections::BTreeMap;

use chrono::{DateTime, SecondsFormat, Utc};
use kith_identity::{ObservationKey, ProfileRef, Resolver};
use serde::Serialize;
use serde_json::Value;

use crate::computed::ComputedTraitDef;
use crate::extract::MANUAL_MERGE_ID_PREFIX;
use crate::facts::ProfileFacts;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct IdentifierView {
    #[serde(rename = "type")]
    pub id_type: String,
    pub value: String,
    pub first_seen: String,
    pub first_message_id: String,
    #[serde(skip)]
    pub first_seen_micros: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ComputedTraits {
    pub first_seen: Option<String>,
    pub last_seen: Option<String>,
    pub event_count: u64,
    pub order_count: u64,
    pub total_revenue: f64,
    pub average_order_value: Option<f64>,
    #[serde(skip)]
    pub first_seen_micros: Option<i64>,
    #[serde(skip)]
    pub last_seen_micros: Option<i64>,
    /// The declared computed traits, by name, evaluated now.
    #[serde(flatten)]
    pub declared: BTreeMap<String, Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ConsentView {
    /// `context.consent.categoryPreferences` of the latest event that carried it.
    pub preferences: Value,
    pub updated_at: String,
    pub message_id: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MergeView {
    pub at: String,
    pub message_id: String,
    /// `alias`, `shared_identifier` or `manual` (a person confirmed it).
    pub reason: &'static str,
    /// The message's identifier that brought the other profile in.
    pub via: String,
    /// What the absorbed profile held (up to 20 listed).
    pub absorbed: Vec<String>,
    pub absorbed_count: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ConflictView {
    pub at: String,
    pub message_id: String,
    pub reason: String,
    pub identifiers: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProfileView {
    pub profile_id: String,
    pub identifiers: Vec<IdentifierView>,
    /// Last write wins by event time, across the profile's identifiers.
    pub traits: BTreeMap<String, Value>,
    pub computed_traits: ComputedTraits,
    /// Scores Kith's models and analyses wrote (CLV, RFM, risk, preferences), by trait name.
    pub model_traits: BTreeMap<String, Value>,
    pub consent: Option<ConsentView>,
    pub merges: Vec<MergeView>,
    pub conflicts: Vec<ConflictView>,
}

/// RFC 3339 with microseconds, UTC.
pub fn format_micros(micros: i64) -> String {
    DateTime::<Utc>::from_timestamp_micros(micros)
        .unwrap_or_default()
        .to_rfc3339_opts(SecondsFormat::Micros, true)
}

fn at(key: &ObservationKey) -> String {
    format_micros(key.time_micros)
}

impl ProfileView {
    pub(crate) fn build(
        resolver: &Resolver,
        profile: ProfileRef,
        facts: ProfileFacts,
        defs: &[ComputedTraitDef],
        now_micros: i64,
    ) -> ProfileView {
        let identifiers = resolver
            .identifiers(profile)
            .into_iter()
            .map(|(identifier, key)| IdentifierView {
                id_type: identifier.id_type.name().to_string(),
                first_seen: at(&key),
                first_seen_micros: key.time_micros,
                first_message_id: key.message_id,
                value: identifier.value,
            })
            .collect();
        let average_order_value = facts.average_order_value();
        let traits = facts
            .traits
            .iter()
            .map(|(name, value)| (name.clone(), value.parsed()))
            .collect();
        let consent = facts.consent.as_ref().map(|c| ConsentView {
            preferences: serde_json::from_str(&c.json).unwrap_or(Value::Null),
            updated_at: format_micros(c.time_micros),
            message_id: c.message_id.clone(),
        });
        let stats = &facts.stats;
        ProfileView {
            profile_id: resolver.profile_id(profile),
            identifiers,
            traits,
            computed_traits: ComputedTraits {
                first_seen: stats.first_seen_micros.map(format_micros),
                last_seen: stats.last_seen_micros.map(format_micros),
                event_count: stats.event_count,
                order_count: stats.order_count,
                total_revenue: stats.revenue,
                average_order_value,
                first_seen_micros: stats.first_seen_micros,
                last_seen_micros: stats.last_seen_micros,
                declared: defs
                    .iter()
                    .map(|def| {
                        let state = facts.computed.get(&def.name).cloned().unwrap_or_default();
                        (def.name.clone(), state.value(def, now_micros))
                    })
                    .collect(),
            },
            model_traits: BTreeMap::new(),
            consent,
            merges: resolver
                .merges(profile)
                .into_iter()
                .map(|m| MergeView {
                    at: at(&m.key),
                    message_id: m.key.message_id.clone(),
                    reason: if m.key.message_id.starts_with(MANUAL_MERGE_ID_PREFIX) {
                        "manual"
                    } else {
                        m.reason.as_str()
                    },
                    via: m.via.to_string(),
                    absorbed: m.absorbed.iter().map(|i| i.to_string()).collect(),
                    absorbed_count: m.absorbed_count,
                })
                .collect(),
            conflicts: resolver
                .conflicts(profile)
                .into_iter()
                .map(|c| ConflictView {
                    at: at(&c.key),
                    message_id: c.key.message_id.clone(),
                    reason: c.reason.clone(),
                    identifiers: c.identifiers.iter().map(|i| i.to_string()).collect(),
                })
                .collect(),
        }
    }
}
