//! What Kith knows about one identifier beyond the graph: traits (last write wins by event time),
//! consent, and running figures for the built-in computed traits. A profile's view folds the facts
//! of its identifiers, so merges (and rebuilt clusters) never need the facts rewritten.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::computed::{ComputedTraitDef, TraitState};
use crate::extract::EventFacts;

/// A trait's value and the event that set it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TraitValue {
    /// JSON text.
    pub json: String,
    pub time_micros: i64,
    pub message_id: String,
}

impl TraitValue {
    fn order(&self) -> (i64, &str) {
        (self.time_micros, &self.message_id)
    }
}

/// Running figures for the built-in computed traits.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    pub event_count: u64,
    pub first_seen_micros: Option<i64>,
    pub last_seen_micros: Option<i64>,
    pub order_count: u64,
    pub revenue: f64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct IdentifierFacts {
    #[serde(default)]
    pub traits: BTreeMap<String, TraitValue>,
    #[serde(default)]
    pub consent: Option<TraitValue>,
    #[serde(default)]
    pub stats: Stats,
    /// Declared computed traits' states, by trait name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub computed: BTreeMap<String, TraitState>,
}

/// A trait change worth keeping in the history.
#[derive(Debug, Clone, PartialEq)]
pub struct TraitChange {
    pub name: String,
    pub value: TraitValue,
}

impl IdentifierFacts {
    /// Adds an event attributed to this identifier. Returns the trait values it changed.
    pub fn absorb(&mut self, facts: &EventFacts, defs: &[ComputedTraitDef]) -> Vec<TraitChange> {
        for (name, observed) in &facts.computed {
            if let Some(def) = defs.iter().find(|d| &d.name == name) {
                let state = self.computed.entry(name.clone()).or_default();
                state.add(def, facts.key.time_micros, &facts.key.message_id, observed);
                // Day buckets older than the window can never count again.
                state.prune(def, chrono::Utc::now().timestamp_micros());
            }
        }
        let time = facts.key.time_micros;
        let stats = &mut self.stats;
        stats.event_count += 1;
        stats.first_seen_micros = Some(stats.first_seen_micros.map_or(time, |t| t.min(time)));
        stats.last_seen_micros = Some(stats.last_seen_micros.map_or(time, |t| t.max(time)));
        if facts.is_order {
            stats.order_count += 1;
            stats.revenue += facts.revenue.unwrap_or(0.0);
        }
        let setter = |json: &str| TraitValue {
            json: json.to_string(),
            time_micros: time,
            message_id: facts.key.message_id.clone(),
        };
        let mut changes = Vec::new();
        for (name, json) in &facts.traits {
            let candidate = setter(json);
            let current = self.traits.get(name);
            if current.is_some_and(|c| c.json == candidate.json && c.order() <= candidate.order()) {
                continue;
            }
            changes.push(TraitChange {
                name: name.clone(),
                value: candidate.clone(),
            });
            if current.is_none_or(|c| c.order() < candidate.order()) {
                self.traits.insert(name.clone(), candidate);
            }
        }
        if let Some(consent) = &facts.consent {
            let candidate = setter(consent);
            if self
                .consent
                .as_ref()
                .is_none_or(|c| c.order() < candidate.order())
            {
                self.consent = Some(candidate);
            }
        }
        changes
    }
}

/// The facts of a whole profile: traits by last write across its identifiers, figures summed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProfileFacts {
    pub traits: BTreeMap<String, TraitValue>,
    pub consent: Option<TraitValue>,
    pub stats: Stats,
    pub computed: BTreeMap<String, TraitState>,
}

impl ProfileFacts {
    pub fn fold<'a>(all: impl IntoIterator<Item = &'a IdentifierFacts>) -> ProfileFacts {
        let mut out = ProfileFacts::default();
        for facts in all {
            for (name, value) in &facts.traits {
                if out
                    .traits
                    .get(name)
                    .is_none_or(|v| v.order() < value.order())
                {
                    out.traits.insert(name.clone(), value.clone());
                }
            }
            if let Some(consent) = &facts.consent
                && out
                    .consent
                    .as_ref()
                    .is_none_or(|c| c.order() < consent.order())
            {
                out.consent = Some(consent.clone());
            }
            for (name, state) in &facts.computed {
                out.computed.entry(name.clone()).or_default().merge(state);
            }
            let (s, o) = (&facts.stats, &mut out.stats);
            o.event_count += s.event_count;
            o.order_count += s.order_count;
            o.revenue += s.revenue;
            o.first_seen_micros = min_option(o.first_seen_micros, s.first_seen_micros);
            o.last_seen_micros = max_option(o.last_seen_micros, s.last_seen_micros);
        }
        out
    }

    pub fn average_order_value(&self) -> Option<f64> {
        (self.stats.order_count > 0).then(|| self.stats.revenue / self.stats.order_count as f64)
    }
}

fn min_option(a: Option<i64>, b: Option<i64>) -> Option<i64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

fn max_option(a: Option<i64>, b: Option<i64>) -> Option<i64> {
    a.max(b)
}
