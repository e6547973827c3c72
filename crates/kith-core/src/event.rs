//! The stored shape of an event, and of an event Kith refused.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The six Segment call types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MessageType {
    Identify,
    Track,
    Page,
    Screen,
    Group,
    Alias,
}

impl MessageType {
    pub const ALL: [MessageType; 6] = [
        MessageType::Identify,
        MessageType::Track,
        MessageType::Page,
        MessageType::Screen,
        MessageType::Group,
        MessageType::Alias,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            MessageType::Identify => "identify",
            MessageType::Track => "track",
            MessageType::Page => "page",
            MessageType::Screen => "screen",
            MessageType::Group => "group",
            MessageType::Alias => "alias",
        }
    }

    pub fn from_name(name: &str) -> Option<MessageType> {
        MessageType::ALL.into_iter().find(|t| t.as_str() == name)
    }

    /// The type a tracking path implies: `/v1/track` and analytics.js's one-letter `/v1/t`.
    pub fn from_path_segment(segment: &str) -> Option<MessageType> {
        match segment {
            "identify" | "i" => Some(MessageType::Identify),
            "track" | "t" => Some(MessageType::Track),
            "page" | "p" => Some(MessageType::Page),
            "screen" | "s" => Some(MessageType::Screen),
            "group" | "g" => Some(MessageType::Group),
            "alias" | "a" => Some(MessageType::Alias),
            _ => None,
        }
    }
}

/// One accepted event, normalised. JSON objects are kept whole (`properties`, `context`, `traits`,
/// `integrations`); the fields analysis uses most are lifted into typed columns by [`Event::typed`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub message_id: String,
    #[serde(rename = "type")]
    pub kind: MessageType,
    /// Track: the event name. Page and screen: the page or screen name.
    pub event: Option<String>,
    pub user_id: Option<String>,
    pub anonymous_id: Option<String>,
    pub group_id: Option<String>,
    pub previous_id: Option<String>,
    /// The source bound to the write key that delivered the event.
    pub source: String,
    pub timestamp: DateTime<Utc>,
    pub original_timestamp: Option<DateTime<Utc>>,
    pub sent_at: Option<DateTime<Utc>>,
    pub received_at: DateTime<Utc>,
    pub properties: Option<Map<String, Value>>,
    pub context: Option<Map<String, Value>>,
    pub traits: Option<Map<String, Value>>,
    pub integrations: Option<Map<String, Value>>,
    /// Top-level fields outside the spec (page `category`, custom keys), kept so nothing is lost.
    pub extra: Option<Map<String, Value>>,
}

impl Event {
    /// The deduplication key: a 128-bit hash of `messageId`.
    pub fn dedup_key(&self) -> u128 {
        xxhash_rust::xxh3::xxh3_128(self.message_id.as_bytes())
    }
}

/// The typed columns lifted out of an event's JSON for fast analysis.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TypedFields {
    pub revenue: Option<f64>,
    pub currency: Option<String>,
    pub order_id: Option<String>,
    pub page_url: Option<String>,
    pub page_path: Option<String>,
    pub referrer: Option<String>,
    pub email: Option<String>,
    pub library_name: Option<String>,
}

impl Event {
    /// Lifts the common fields: revenue and currency from `properties`; page URL and path from
    /// `properties` (page calls) or `context.page`; email from traits, `context.traits` or properties.
    pub fn typed(&self) -> TypedFields {
        let properties = self.properties.as_ref();
        let context = self.context.as_ref();
        let context_page = context
            .and_then(|c| c.get("page"))
            .and_then(Value::as_object);
        let context_traits = context
            .and_then(|c| c.get("traits"))
            .and_then(Value::as_object);
        let revenue = properties
            .and_then(|p| p.get("revenue").or_else(|| p.get("total")))
            .and_then(number_like);
        TypedFields {
            revenue,
            currency: properties.and_then(|p| string_field(p, "currency")),
            order_id: properties
                .and_then(|p| string_field(p, "order_id").or_else(|| string_field(p, "orderId"))),
            page_url: properties
                .and_then(|p| string_field(p, "url"))
                .or_else(|| context_page.and_then(|p| string_field(p, "url"))),
            page_path: properties
                .and_then(|p| string_field(p, "path"))
                .or_else(|| context_page.and_then(|p| string_field(p, "path"))),
            referrer: properties
                .and_then(|p| string_field(p, "referrer"))
                .or_else(|| context_page.and_then(|p| string_field(p, "referrer"))),
            email: self
                .traits
                .as_ref()
                .and_then(|t| string_field(t, "email"))
                .or_else(|| context_traits.and_then(|t| string_field(t, "email")))
                .or_else(|| properties.and_then(|p| string_field(p, "email"))),
            library_name: context
                .and_then(|c| c.get("library"))
                .and_then(Value::as_object)
                .and_then(|l| string_field(l, "name")),
        }
    }
}

fn string_field(map: &Map<String, Value>, key: &str) -> Option<String> {
    match map.get(key)? {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Revenue sometimes arrives as a string ("19.99"); accept both, never NaN or infinity.
fn number_like(value: &Value) -> Option<f64> {
    let number = match value {
        Value::Number(n) => n.as_f64()?,
        Value::String(s) => s.trim().parse::<f64>().ok()?,
        _ => return None,
    };
    number.is_finite().then_some(number)
}

/// One event Kith refused, kept with the reason so nothing is lost silently.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rejection {
    /// Position of the event in its batch (0 for single-event calls).
    pub index: usize,
    /// A stable snake_case reason, e.g. `missing_identity`.
    pub code: String,
    /// What was wrong and how to fix it.
    pub message: String,
    /// The field at fault, when one is.
    pub field: Option<String>,
    pub source: String,
    pub received_at: DateTime<Utc>,
    pub message_id: Option<String>,
    /// The event as it arrived (truncated to the event size limit).
    pub raw: String,
}

/// What the journal holds: an accepted event or a rejected one. Both are kept durably.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
// Most records are events; boxing them would cost an allocation each for no gain.
#[allow(clippy::large_enum_variant)]
pub enum Stored {
    Event(Event),
    Rejected(Rejection),
}
