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

/// One accepted event, normalised. The JSON objects (`properties`, `context`, `traits`,
/// `integrations`, and `extra` for any other top-level field) are kept as the JSON text the client
/// sent: copying text is far cheaper than rebuilding and re-encoding maps, and nothing is lost. The
/// fields analysis uses most are lifted into [`TypedFields`] while parsing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub message_id: String,
    pub kind: MessageType,
    /// Track: the event name. Page and screen: the page or screen name.
    pub event: Option<String>,
    pub user_id: Option<String>,
    pub anonymous_id: Option<String>,
    pub group_id: Option<String>,
    pub previous_id: Option<String>,
    /// The source bound to the write key that delivered the event.
    pub source: String,
    #[serde(with = "chrono::serde::ts_microseconds")]
    pub timestamp: DateTime<Utc>,
    #[serde(with = "chrono::serde::ts_microseconds_option")]
    pub original_timestamp: Option<DateTime<Utc>>,
    #[serde(with = "chrono::serde::ts_microseconds_option")]
    pub sent_at: Option<DateTime<Utc>>,
    #[serde(with = "chrono::serde::ts_microseconds")]
    pub received_at: DateTime<Utc>,
    /// JSON object text.
    pub properties: Option<String>,
    pub context: Option<String>,
    pub traits: Option<String>,
    pub integrations: Option<String>,
    /// Top-level fields outside the spec (page `category`, `_metadata`, custom keys), as a JSON
    /// object, so nothing the client sent is lost.
    pub extra: Option<String>,
    pub typed: TypedFields,
}

impl Event {
    /// The deduplication key: a 128-bit hash of `messageId`.
    pub fn dedup_key(&self) -> u128 {
        xxhash_rust::xxh3::xxh3_128(self.message_id.as_bytes())
    }

    /// What is wrong with an event built outside the parser (imports arrive in this stored
    /// shape) that the parser would have refused, named by its field; `None` when it may be
    /// stored. Times out of range would make whole-table time functions fail; text that is
    /// not a JSON object would make the JSON columns lie.
    pub fn unstorable(&self) -> Option<String> {
        let id_chars = self.message_id.chars().count();
        if id_chars == 0 || id_chars >= crate::limits::MAX_MESSAGE_ID_CHARS {
            return Some(format!(
                "`message_id` must have 1 to {} characters; it has {id_chars}",
                crate::limits::MAX_MESSAGE_ID_CHARS - 1
            ));
        }
        if self
            .message_id
            .starts_with(crate::limits::MANUAL_MERGE_ID_PREFIX)
        {
            return Some(format!(
                "`message_id` starts with `{}`, which is reserved for merges confirmed in Kith",
                crate::limits::MANUAL_MERGE_ID_PREFIX
            ));
        }
        if self.source.is_empty() {
            return Some("`source` is empty".into());
        }
        if self.kind == MessageType::Track && self.event.as_deref().is_none_or(str::is_empty) {
            return Some("a track event needs `event`, its name".into());
        }
        let times = [
            ("timestamp", Some(self.timestamp)),
            ("original_timestamp", self.original_timestamp),
            ("sent_at", self.sent_at),
            ("received_at", Some(self.received_at)),
        ];
        for (field, time) in times {
            if let Some(time) = time.filter(|t| !crate::time::is_storable(*t)) {
                return Some(format!(
                    "`{field}` ({}) is outside the years {}, the times Kith stores",
                    time.to_rfc3339(),
                    crate::time::storable_years()
                ));
            }
        }
        let texts = [
            ("properties", &self.properties),
            ("context", &self.context),
            ("traits", &self.traits),
            ("integrations", &self.integrations),
            ("extra", &self.extra),
        ];
        for (field, text) in texts {
            if let Some(text) = text
                && crate::parse::field_names(text).is_none()
            {
                return Some(format!("`{field}` is not the text of a JSON object"));
            }
        }
        None
    }

    /// A JSON column parsed back into a map (for callers that need more than the typed fields).
    pub fn json_object(text: &Option<String>) -> Option<Map<String, Value>> {
        text.as_deref().and_then(crate::parse::readable_fields)
    }
}

/// The typed columns lifted out of an event's JSON for fast analysis.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TypedFields {
    /// `properties.revenue` (or `total`), numbers or numeric strings, never NaN or infinite.
    pub revenue: Option<f64>,
    pub currency: Option<String>,
    pub order_id: Option<String>,
    /// `properties.url` (page calls), else `context.page.url`.
    pub page_url: Option<String>,
    pub page_path: Option<String>,
    pub referrer: Option<String>,
    /// `traits.email` (not a group call's: those are the group's), else `context.traits.email`,
    /// else `properties.email`.
    pub email: Option<String>,
    /// `context.library.name`.
    pub library_name: Option<String>,
    /// What identity resolution needs from `context`, read in the same pass. Not stored: events
    /// read back from the journal or the tables have `None`, and identity reads `context` again.
    #[serde(skip)]
    pub context_identity: Option<ContextIdentity>,
    /// Whether the client's `context` names `ip` (even as `null`), or could not be read: the
    /// server then adds no address of its own. Read in the same pass; not stored.
    #[serde(skip)]
    pub context_names_ip: bool,
}

/// The identity-related parts of `context`, as the client's JSON text.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ContextIdentity {
    /// `context.traits`.
    pub traits: Option<String>,
    /// `context.externalIds`.
    pub external_ids: Option<String>,
    /// `context.consent.categoryPreferences`.
    pub consent_preferences: Option<String>,
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
    #[serde(with = "chrono::serde::ts_microseconds")]
    pub received_at: DateTime<Utc>,
    pub message_id: Option<String>,
    /// The event as it arrived (truncated to the event size limit).
    pub raw: String,
}

/// What the journal holds: an accepted event or a rejected one. Both are kept durably, encoded
/// with [`Stored::encode`] (a compact binary form; JSON-in-JSON escaping cost more than all the rest).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
// Most records are events; boxing them would cost an allocation each for no gain.
#[allow(clippy::large_enum_variant)]
pub enum Stored {
    Event(Event),
    Rejected(Rejection),
}

/// A journal payload that cannot be decoded.
#[derive(Debug, thiserror::Error)]
#[error("journal payload cannot be decoded: {0}")]
pub struct DecodeError(String);

impl DecodeError {
    pub(crate) fn new(reason: String) -> DecodeError {
        DecodeError(reason)
    }
}

/// Room in an encoded record for lengths, timestamps and tags (see [`Stored::encode`]'s sizing).
const FIXED_FIELDS: usize = 128;

/// Bytes a record's texts take encoded, with room for each length prefix.
fn text_size(values: &[Option<&String>]) -> usize {
    values.iter().flatten().map(|v| v.len() + 5).sum()
}

/// [`Stored`] borrowed: encodes to the same bytes without taking the record.
#[derive(Serialize)]
enum StoredRef<'a> {
    Event(&'a Event),
    #[allow(dead_code)]
    Rejected(&'a Rejection),
}

impl Stored {
    pub fn encode(&self) -> Vec<u8> {
        // Sized up front: letting the vector grow re-copies the bytes several times per event.
        let buffer = Vec::with_capacity(self.encoded_size_hint());
        postcard::to_extend(self, buffer).expect("encoding into memory cannot fail")
    }

    /// The bytes `Stored::Event(event.clone()).encode()` would give, without the clone.
    pub fn encode_event(event: &Event) -> Vec<u8> {
        let buffer = Vec::with_capacity(Self::event_size_hint(event));
        postcard::to_extend(&StoredRef::Event(event), buffer)
            .expect("encoding into memory cannot fail")
    }

    /// A close upper estimate of [`Stored::encode`]'s length: the text it holds plus room for
    /// lengths, timestamps and tags.
    fn encoded_size_hint(&self) -> usize {
        match self {
            Stored::Event(e) => Self::event_size_hint(e),
            Stored::Rejected(r) => {
                FIXED_FIELDS
                    + text_size(&[
                        Some(&r.code),
                        Some(&r.message),
                        r.field.as_ref(),
                        Some(&r.source),
                        r.message_id.as_ref(),
                        Some(&r.raw),
                    ])
            }
        }
    }

    fn event_size_hint(e: &Event) -> usize {
        let t = &e.typed;
        FIXED_FIELDS
            + text_size(&[
                Some(&e.message_id),
                e.event.as_ref(),
                e.user_id.as_ref(),
                e.anonymous_id.as_ref(),
                e.group_id.as_ref(),
                e.previous_id.as_ref(),
                Some(&e.source),
                e.properties.as_ref(),
                e.context.as_ref(),
                e.traits.as_ref(),
                e.integrations.as_ref(),
                e.extra.as_ref(),
                t.currency.as_ref(),
                t.order_id.as_ref(),
                t.page_url.as_ref(),
                t.page_path.as_ref(),
                t.referrer.as_ref(),
                t.email.as_ref(),
                t.library_name.as_ref(),
            ])
    }

    pub fn decode(bytes: &[u8]) -> Result<Stored, DecodeError> {
        postcard::from_bytes(bytes).map_err(|e| DecodeError(e.to_string()))
    }
}
