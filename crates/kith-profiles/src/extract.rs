//! What one event tells about a person: its identifiers, the traits it sets, consent, and the
//! figures the built-in computed traits add up.

use std::sync::Arc;

use kith_core::{Event, MessageType, context_identity};
use kith_identity::{IdType, Identifier, Normalizer, ObservationKey};
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::computed::{ComputedTraitDef, Observed};
use crate::tally::ChangeTally;

/// The source of the events Kith itself writes (manual merges). No key may be bound to it, so no
/// client can send such an event.
pub const KITH_SOURCE: &str = "kith";
/// The track event that records a merge a person confirmed (`kith profile merge`,
/// `POST /v1/profiles/merge`); `properties.identifiers` lists one identifier of each profile as
/// `type:value`.
pub const MANUAL_MERGE_EVENT: &str = "Profiles Merged";
/// The message ids of manual merges start with this, so a merge record shows it was confirmed by
/// a person (the parser refuses it from clients).
pub use kith_core::limits::MANUAL_MERGE_ID_PREFIX;

/// Settings for reading identities out of events.
#[derive(Debug, Clone)]
pub struct Extractor {
    pub normalizer: Normalizer,
    /// Traits that are identifiers in this workspace (e.g. `customer_number`).
    pub identifier_traits: Vec<String>,
    /// The event name that counts as a purchase for the built-in order traits.
    pub order_event: String,
    /// Declared computed traits.
    pub computed: Vec<ComputedTraitDef>,
}

/// The facts of one event, already normalised.
#[derive(Debug, Clone, PartialEq)]
pub struct EventFacts {
    pub key: ObservationKey,
    /// Every valid identifier the event carries.
    pub identifiers: Vec<Identifier>,
    /// An `alias` call: an explicit merge of `previousId` into `userId`.
    pub explicit_merge: bool,
    /// An alias call's `previousId`, normalised, when it is not one of the call's own ids: a
    /// user id or an anonymous id, which the identity graph decides when the event is applied
    /// (see [`EventFacts::with_alias_previous`]).
    pub alias_previous: Option<String>,
    /// Position in `identifiers` of the one the event is attributed to (its user id, else its
    /// anonymous id, else the strongest other); see [`EventFacts::primary`].
    pub primary_index: Option<usize>,
    /// Traits set by the event, name → JSON value as text.
    pub traits: Vec<(String, String)>,
    /// `context.consent.categoryPreferences` as JSON text.
    pub consent: Option<String>,
    pub is_order: bool,
    pub revenue: Option<f64>,
    /// Values offered as identifiers that are not identities (reason codes), for metrics.
    pub refused: Vec<&'static str>,
    /// For each declared computed trait this event counts for: its name and the property value.
    pub computed: Vec<(String, Observed)>,
    /// Where to count what applying the event changed, when a writer wants to know (imports).
    pub tally: Option<TallyHandle>,
}

/// A shared [`ChangeTally`]; equal when it is the same tally.
#[derive(Debug, Clone)]
pub struct TallyHandle(pub Arc<ChangeTally>);

impl PartialEq for TallyHandle {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

/// Is this the record of a merge a person confirmed?
pub fn is_manual_merge(event: &Event) -> bool {
    event.source == KITH_SOURCE
        && event.kind == MessageType::Track
        && event.event.as_deref() == Some(MANUAL_MERGE_EVENT)
}

impl EventFacts {
    /// The identifier the event is attributed to.
    pub fn primary(&self) -> Option<&Identifier> {
        self.identifiers.get(self.primary_index?)
    }

    /// These facts with the alias call's `previousId` among their identifiers, or `None` when
    /// there is none to add. Segment's `previousId` is "a user id or an anonymous id" without
    /// saying which: it is read as a user id when the identity graph has seen it as one (and not
    /// as an anonymous id) — a user id renamed — and otherwise as an anonymous id: what a
    /// browser's alias retires, and never seen is the visitor's first call. Read as a user id
    /// every time, an alias would give a profile two user ids, which the default limit of one
    /// refuses, and no alias would merge anyone. `seen` says whether the graph knows an
    /// identifier.
    pub fn with_alias_previous(&self, seen: impl Fn(&Identifier) -> bool) -> Option<EventFacts> {
        let value = self.alias_previous.as_ref()?;
        let as_user_id = Identifier::new(IdType::UserId, value.clone());
        let as_anonymous_id = Identifier::new(IdType::AnonymousId, value.clone());
        let previous = if seen(&as_user_id) && !seen(&as_anonymous_id) {
            as_user_id
        } else {
            as_anonymous_id
        };
        let primary = self.primary().cloned();
        let mut facts = self.clone();
        facts.alias_previous = None;
        facts.identifiers.push(previous);
        facts.identifiers.sort();
        facts.identifiers.dedup();
        facts.primary_index =
            primary.and_then(|primary| facts.identifiers.iter().position(|i| *i == primary));
        Some(facts)
    }
}

impl Extractor {
    /// [`Extractor::facts`] of an event its owner is done with (it is encoded already): the
    /// message id and consent the facts keep are moved out of it rather than copied, which
    /// spares two allocations and copies for every event on the ingest path.
    pub fn into_facts(&self, mut event: Event) -> EventFacts {
        let message_id = std::mem::take(&mut event.message_id);
        // Taken out of what the parser read, so `facts` finds none there to copy.
        let consent = event
            .typed
            .context_identity
            .as_mut()
            .map(|found| found.consent_preferences.take());
        let mut facts = self.facts(&event);
        facts.key.message_id = message_id;
        if let Some(consent) = consent
            && !is_manual_merge(&event)
        {
            facts.consent = consent;
        }
        facts
    }

    pub fn facts(&self, event: &Event) -> EventFacts {
        let mut facts = EventFacts {
            key: ObservationKey {
                time_micros: event.timestamp.timestamp_micros(),
                message_id: event.message_id.clone(),
            },
            // user id, anonymous id and a few from traits or context, without regrowing.
            identifiers: Vec::with_capacity(4),
            explicit_merge: event.kind == MessageType::Alias,
            alias_previous: None,
            primary_index: None,
            traits: Vec::new(),
            consent: None,
            is_order: event.kind == MessageType::Track
                && event.event.as_deref() == Some(self.order_event.as_str()),
            revenue: event.typed.revenue,
            refused: Vec::new(),
            computed: Vec::new(),
            tally: None,
        };
        if is_manual_merge(event) {
            self.manual_merge(&mut facts, event);
            return facts;
        }
        self.computed_observations(&mut facts, event);
        let user = self.offer(&mut facts, IdType::UserId, event.user_id.as_deref());
        let anonymous = self.offer(
            &mut facts,
            IdType::AnonymousId,
            event.anonymous_id.as_deref(),
        );
        if event.kind == MessageType::Alias
            && let Some(raw) = event.previous_id.as_deref()
        {
            // Segment's alias: `previousId` is the old id, a user id or an anonymous id (both
            // normalised alike); which one is decided when the event is applied. One of the
            // call's own ids (analytics.js sends the anonymous id it retires as both) adds none.
            match self.normalizer.normalize(IdType::AnonymousId, raw) {
                Ok(previous) => {
                    let own = facts
                        .identifiers
                        .iter()
                        .any(|id| id.value == previous.value);
                    if !own {
                        facts.alias_previous = Some(previous.value);
                    }
                }
                Err(refused) => facts.refused.push(refused.code()),
            }
        }

        // The parser already read the identity parts of `context`; events read back from the
        // journal or tables did not go through it, so their context is read here.
        let parsed_here;
        let context = match &event.typed.context_identity {
            Some(found) => Some(found),
            None => {
                parsed_here = event.context.as_deref().map(context_identity);
                parsed_here.as_ref()
            }
        };
        let context_traits = context
            .and_then(|c| c.traits.as_deref())
            .and_then(kith_core::readable_fields);
        let own_traits = match event.kind {
            // The parser gives an identify sent with only `context.traits` (as RudderStack's
            // SDKs send it) those as its own: read once.
            MessageType::Identify
                if event.traits.as_deref() == context.and_then(|c| c.traits.as_deref()) =>
            {
                None
            }
            MessageType::Identify => event.traits.as_deref().and_then(kith_core::readable_fields),
            _ => None,
        };
        // The call's own traits win over context.traits when both name a trait.
        for traits in [context_traits.as_ref(), own_traits.as_ref()]
            .into_iter()
            .flatten()
        {
            for (name, value) in traits {
                facts.traits.retain(|(n, _)| n != name);
                facts.traits.push((name.clone(), value.to_string()));
            }
            self.identifiers_in_traits(&mut facts, traits);
        }
        if let Some(context) = context {
            if let Some(text) = &context.external_ids {
                self.external_ids(&mut facts, text);
            }
            facts.consent = context.consent_preferences.clone();
        }
        facts.identifiers.sort();
        facts.identifiers.dedup();
        let position = |id_type: IdType, raw: Option<&str>| {
            let value = raw?.trim();
            facts
                .identifiers
                .iter()
                .position(|i| i.id_type == id_type && i.value == value)
        };
        facts.primary_index = user
            .then(|| position(IdType::UserId, event.user_id.as_deref()))
            .flatten()
            .or_else(|| {
                anonymous
                    .then(|| position(IdType::AnonymousId, event.anonymous_id.as_deref()))
                    .flatten()
            })
            .or((!facts.identifiers.is_empty()).then_some(0));
        facts
    }

    /// A confirmed merge: its identifiers, linked explicitly.
    fn manual_merge(&self, facts: &mut EventFacts, event: &Event) {
        #[derive(Deserialize)]
        struct MergeProperties {
            identifiers: Vec<String>,
        }
        let listed = event
            .properties
            .as_deref()
            .and_then(|text| serde_json::from_str::<MergeProperties>(text).ok())
            .map(|p| p.identifiers)
            .unwrap_or_default();
        for text in &listed {
            if let Some((type_name, value)) = text.split_once(':') {
                self.offer(facts, IdType::from_name(type_name), Some(value));
            }
        }
        facts.identifiers.sort();
        facts.identifiers.dedup();
        facts.explicit_merge = true;
        // The merge is not something the customer did: it counts towards no trait.
        facts.primary_index = None;
    }

    fn identifiers_in_traits(&self, facts: &mut EventFacts, traits: &Map<String, Value>) {
        self.offer(
            facts,
            IdType::Email,
            traits.get("email").and_then(Value::as_str),
        );
        self.offer(
            facts,
            IdType::Phone,
            traits.get("phone").and_then(Value::as_str),
        );
        for name in &self.identifier_traits {
            let value = match traits.get(name) {
                Some(Value::String(s)) => Some(s.clone()),
                Some(Value::Number(n)) => Some(n.to_string()),
                _ => None,
            };
            self.offer(facts, IdType::External(name.clone()), value.as_deref());
        }
    }

    /// The values the declared computed traits read from this event.
    fn computed_observations(&self, facts: &mut EventFacts, event: &Event) {
        let kind = event.kind.as_str();
        let mut properties: Option<Option<Map<String, Value>>> = None;
        for def in &self.computed {
            if !def.matches(kind, event.event.as_deref()) {
                continue;
            }
            let observed = match &def.property {
                None => Observed::from_property(None),
                Some(name) => {
                    let parsed = properties.get_or_insert_with(|| {
                        event
                            .properties
                            .as_deref()
                            .and_then(kith_core::readable_fields)
                    });
                    Observed::from_property(parsed.as_ref().and_then(|p| p.get(name)))
                }
            };
            facts.computed.push((def.name.clone(), observed));
        }
    }

    /// `context.externalIds`: `[{"id": "...", "type": "...", "collection": "users", ...}]`.
    fn external_ids(&self, facts: &mut EventFacts, text: &str) {
        // Each entry read on its own: one with a value `serde_json` cannot hold (`1e400`, half a
        // surrogate pair) costs only itself, not every id beside it.
        let Ok(list) = serde_json::from_str::<Vec<&serde_json::value::RawValue>>(text) else {
            return;
        };
        for entry in list
            .iter()
            .filter_map(|raw| kith_core::readable_fields(raw.get()))
        {
            let id_type = entry.get("type").and_then(Value::as_str).map(str::trim);
            let Some(id_type) = id_type.filter(|t| !t.is_empty()) else {
                continue;
            };
            let value = match entry.get("id") {
                Some(Value::String(s)) => Some(s.clone()),
                Some(Value::Number(n)) => Some(n.to_string()),
                _ => None,
            };
            let id_type = match IdType::from_name(id_type) {
                // An external id typed `email` or `phone` is normalised as one; one typed
                // `user_id` or `anonymous_id` stays external, which the normaliser refuses (only
                // `userId` and `anonymousId` give those).
                IdType::UserId | IdType::AnonymousId => IdType::External(id_type.to_string()),
                other => other,
            };
            self.offer(facts, id_type, value.as_deref());
        }
    }

    /// Normalises a candidate identifier and keeps it if it is an identity.
    fn offer(&self, facts: &mut EventFacts, id_type: IdType, raw: Option<&str>) -> bool {
        let Some(raw) = raw else {
            return false;
        };
        match self.normalizer.normalize(id_type, raw) {
            Ok(identifier) => {
                facts.identifiers.push(identifier);
                true
            }
            Err(refused) => {
                facts.refused.push(refused.code());
                false
            }
        }
    }
}
