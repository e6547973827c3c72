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
    /// The value as JSON (`null` if its text is not JSON, which Kith never stores).
    pub fn parsed(&self) -> serde_json::Value {
        serde_json::from_str(&self.json).unwrap_or(serde_json::Value::Null)
    }

    /// Whether this value replaces `held`: the later event wins, ties broken by message id.
    pub(crate) fn supersedes(&self, held: Option<&TraitValue>) -> bool {
        held.is_none_or(|held| held.order() < self.order())
    }

    fn order(&self) -> (i64, &str) {
        (self.time_micros, &self.message_id)
    }
}

/// An identifier's trait values by name: a vector sorted by name and sized exactly.
///
/// Every identifier that ever carried traits keeps one of these in memory for as long as the
/// server runs. A `BTreeMap` gives each map a leaf node sized for eleven entries (about 900
/// bytes), while identifiers usually hold six or seven traits; measured on a 20,000-customer
/// world, those leaves were a sixth of the server's heap at rest. Stored and read as a JSON
/// object, exactly as the map was.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TraitMap {
    by_name: Vec<(String, TraitValue)>,
}

impl TraitMap {
    pub fn get(&self, name: &str) -> Option<&TraitValue> {
        self.position(name).ok().map(|i| &self.by_name[i].1)
    }

    /// Sets `name`, replacing its value if it has one; the name is copied only when new.
    pub fn set(&mut self, name: &str, value: TraitValue) {
        match self.position(name) {
            Ok(i) => self.by_name[i].1 = value,
            Err(i) => {
                // One more slot, not a doubling: these maps live long and rarely grow.
                self.by_name.reserve_exact(1);
                self.by_name.insert(i, (name.to_string(), value));
            }
        }
    }

    /// Moves the time `name`'s value was set to `time_micros`, by `message_id`, keeping the
    /// value: in place, reusing the id's buffer (a repeated identify's traits, many a second).
    pub fn restamp(&mut self, name: &str, time_micros: i64, message_id: &str) {
        if let Ok(i) = self.position(name) {
            let value = &mut self.by_name[i].1;
            value.time_micros = time_micros;
            value.message_id.clear();
            value.message_id.push_str(message_id);
        }
    }

    /// Trait values in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &TraitValue)> {
        self.by_name.iter().map(|(name, value)| (name, value))
    }

    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    /// Sets `name` to `value` unless the value held is later (last write wins by event time).
    pub fn keep_latest(&mut self, name: &str, value: &TraitValue) {
        if value.supersedes(self.get(name)) {
            self.set(name, value.clone());
        }
    }

    pub fn clear(&mut self) {
        self.by_name.clear();
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    fn position(&self, name: &str) -> Result<usize, usize> {
        self.by_name
            .binary_search_by(|(held, _)| held.as_str().cmp(name))
    }
}

impl Serialize for TraitMap {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.iter())
    }
}

impl<'de> Deserialize<'de> for TraitMap {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<TraitMap, D::Error> {
        // Through a `BTreeMap`, freed at once: sorted, and a name given twice keeps its last
        // value, as reading straight into the map always did.
        let map = BTreeMap::<String, TraitValue>::deserialize(deserializer)?;
        let mut by_name = Vec::with_capacity(map.len());
        by_name.extend(map);
        Ok(TraitMap { by_name })
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
    pub traits: TraitMap,
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
            add_saturating(&mut stats.revenue, facts.revenue.unwrap_or(0.0));
        }
        let setter = |json: &str| TraitValue {
            json: json.to_string(),
            time_micros: time,
            message_id: facts.key.message_id.clone(),
        };
        let order = (time, facts.key.message_id.as_str());
        let mut changes = Vec::new();
        for (name, json) in &facts.traits {
            let current = self.traits.get(name);
            // Most identify calls repeat the values already held: decide before building
            // anything, so a repeat costs no allocation on the unify thread.
            if let Some(held) = current.filter(|c| c.json == *json && c.order() <= order) {
                // The same value set again later is no change, but its later time is the one a
                // profile's other identifiers' values are weighed against (last write wins
                // across them): kept at the first sighting, an older value of another
                // identifier would win.
                if held.order() < order {
                    self.traits.restamp(name, time, &facts.key.message_id);
                }
                continue;
            }
            let candidate = setter(json);
            if candidate.supersedes(current) {
                self.traits.set(name, candidate.clone());
            }
            changes.push(TraitChange {
                name: name.clone(),
                value: candidate,
            });
        }
        if let Some(consent) = &facts.consent
            && self
                .consent
                .as_ref()
                .is_none_or(|held| held.order() < order)
        {
            self.consent = Some(setter(consent));
        }
        changes
    }
}

/// Adds `n` to a running sum of finite values, holding it at the largest finite value instead of
/// letting it overflow: JSON has no infinity, so a sum of `inf` would be written to
/// `profiles.db` as null, and the identifier's facts could never be read again.
pub(crate) fn add_saturating(sum: &mut f64, n: f64) {
    let total = *sum + n;
    *sum = if total.is_finite() {
        total
    } else {
        f64::MAX.copysign(total)
    };
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
            for (name, value) in facts.traits.iter() {
                if value.supersedes(out.traits.get(name)) {
                    out.traits.insert(name.clone(), value.clone());
                }
            }
            if let Some(consent) = &facts.consent
                && consent.supersedes(out.consent.as_ref())
            {
                out.consent = Some(consent.clone());
            }
            for (name, state) in &facts.computed {
                out.computed.entry(name.clone()).or_default().merge(state);
            }
            let (s, o) = (&facts.stats, &mut out.stats);
            o.event_count += s.event_count;
            o.order_count += s.order_count;
            add_saturating(&mut o.revenue, s.revenue);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn value(json: &str, time_micros: i64, message_id: &str) -> TraitValue {
        TraitValue {
            json: json.to_string(),
            time_micros,
            message_id: message_id.to_string(),
        }
    }

    #[test]
    fn trait_maps_read_and_write_the_json_the_btreemap_did() {
        // As `profiles.db` holds facts written before trait maps were vectors.
        let mut before = BTreeMap::new();
        before.insert("plan".to_string(), value("\"pro\"", 2, "m2"));
        before.insert("city".to_string(), value("\"León\"", 1, "m1"));
        before.insert("name".to_string(), value("\"Ana\"", 1, "m1"));
        let stored = serde_json::to_string(&before).unwrap();

        let read: TraitMap = serde_json::from_str(&stored).unwrap();
        assert_eq!(serde_json::to_string(&read).unwrap(), stored);
        let names: Vec<&str> = read.iter().map(|(name, _)| name.as_str()).collect();
        assert_eq!(names, ["city", "name", "plan"]);
        assert_eq!(read.get("plan"), Some(&value("\"pro\"", 2, "m2")));
        assert_eq!(read.get("email"), None);
        // Sized exactly: the point of the type.
        assert_eq!(read.by_name.capacity(), 3);

        // A whole facts record, and one without traits at all.
        let stats = serde_json::to_string(&Stats::default()).unwrap();
        let facts: IdentifierFacts =
            serde_json::from_str(&format!(r#"{{"traits":{stored},"stats":{stats}}}"#)).unwrap();
        assert_eq!(facts.traits, read);
        let bare: IdentifierFacts =
            serde_json::from_str(&format!(r#"{{"stats":{stats}}}"#)).unwrap();
        assert!(bare.traits.is_empty());
    }

    #[test]
    fn inserting_keeps_names_sorted_replaces_values_and_grows_one_slot_at_a_time() {
        let mut map = TraitMap::default();
        for (name, id) in [
            ("plan", "m1"),
            ("city", "m2"),
            ("name", "m3"),
            ("city", "m4"),
        ] {
            map.set(name, value("1", 0, id));
        }
        assert_eq!(map.len(), 3);
        assert_eq!(map.by_name.capacity(), 3);
        let entries: Vec<(&str, &str)> = map
            .iter()
            .map(|(name, v)| (name.as_str(), v.message_id.as_str()))
            .collect();
        assert_eq!(entries, [("city", "m4"), ("name", "m3"), ("plan", "m1")]);
    }

    #[test]
    fn a_profile_folds_each_trait_to_its_latest_value_across_identifiers() {
        let mut by_email = IdentifierFacts::default();
        by_email.traits.set("plan", value("\"free\"", 1, "m1"));
        by_email.traits.set("city", value("\"León\"", 5, "m5"));
        let mut by_user = IdentifierFacts::default();
        by_user.traits.set("plan", value("\"pro\"", 3, "m3"));
        let profile = ProfileFacts::fold([&by_email, &by_user]);
        assert_eq!(profile.traits["plan"], value("\"pro\"", 3, "m3"));
        assert_eq!(profile.traits["city"], value("\"León\"", 5, "m5"));
    }

    fn event_setting(
        traits: &[(&str, &str)],
        consent: Option<&str>,
        time: i64,
        id: &str,
    ) -> EventFacts {
        EventFacts {
            key: kith_identity::ObservationKey {
                time_micros: time,
                message_id: id.to_string(),
            },
            identifiers: Vec::new(),
            explicit_merge: false,
            alias_previous: None,
            primary_index: None,
            traits: traits
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
            consent: consent.map(str::to_string),
            is_order: false,
            revenue: None,
            refused: Vec::new(),
            computed: Vec::new(),
            tally: None,
        }
    }

    #[test]
    fn absorbing_reports_changed_traits_and_keeps_the_latest_value_and_consent() {
        let mut facts = IdentifierFacts::default();
        let first = event_setting(
            &[("plan", "\"free\""), ("city", "\"León\"")],
            Some("{\"a\":true}"),
            10,
            "m10",
        );
        let changed: Vec<String> = facts
            .absorb(&first, &[])
            .into_iter()
            .map(|c| c.name)
            .collect();
        assert_eq!(changed, ["plan", "city"]);

        // The same values seen later are no change, but hold the later time.
        let repeat = event_setting(
            &[("plan", "\"free\""), ("city", "\"León\"")],
            None,
            20,
            "m20",
        );
        assert!(facts.absorb(&repeat, &[]).is_empty());
        assert_eq!(
            facts.traits.get("plan"),
            Some(&value("\"free\"", 20, "m20"))
        );

        // A new value later replaces; an older value arriving late is reported but not kept.
        let upgrade = event_setting(&[("plan", "\"pro\"")], Some("{\"a\":false}"), 30, "m30");
        let changes = facts.absorb(&upgrade, &[]);
        assert_eq!(changes.len(), 1);
        assert_eq!(changes[0].value, value("\"pro\"", 30, "m30"));
        let late = event_setting(&[("plan", "\"basic\"")], Some("{\"a\":true}"), 5, "m5");
        let changes = facts.absorb(&late, &[]);
        assert_eq!(changes.len(), 1);
        assert_eq!(changes[0].value, value("\"basic\"", 5, "m5"));
        assert_eq!(facts.traits.get("plan"), Some(&value("\"pro\"", 30, "m30")));
        assert_eq!(facts.consent, Some(value("{\"a\":false}", 30, "m30")));
        assert_eq!(facts.stats.event_count, 4);
        assert_eq!(facts.stats.first_seen_micros, Some(5));
        assert_eq!(facts.stats.last_seen_micros, Some(30));
    }
}
