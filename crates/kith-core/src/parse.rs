//! From request bodies to events. Two steps, because the write key may be inside the body:
//! [`parse_batch_request`] / [`parse_single_request`] read the envelope (and the key) without
//! judging the events; [`RawRequest::normalize`] then checks each event on its own, so one bad
//! event never costs its valid neighbours.

use chrono::{DateTime, Utc};
use std::borrow::Cow;

use serde::Deserialize;
use serde::de::{Deserializer as _, MapAccess, Visitor};
use serde_json::Value;
use serde_json::value::RawValue;
use thiserror::Error;
use xxhash_rust::xxh3::Xxh3;

use crate::event::{Event, MessageType, Rejection, TypedFields};
use crate::limits::{
    MANUAL_MERGE_ID_PREFIX, MAX_BATCH_EVENTS, MAX_EVENT_BYTES, MAX_MESSAGE_ID_CHARS,
};
use crate::time::{event_time, parse_timestamp};

mod batch_object;
mod context_view;
mod lenient;
mod non_json;
use batch_object::BatchObject;
use context_view::ContextView;
pub use context_view::context_identity;
pub(crate) use lenient::field_names;
pub use lenient::readable_fields;

/// Why a whole request was refused (the events in it were never looked at).
#[derive(Debug, Error, PartialEq)]
pub enum RequestError {
    #[error("the body is not valid JSON: {0}")]
    InvalidJson(String),
    #[error("the body must be a JSON object, found {0}")]
    NotAnObject(&'static str),
    #[error("the body has no `batch` array; send {{\"batch\": [ ... ]}}")]
    MissingBatch,
    #[error("`batch` must be an array of events, found {0}")]
    BatchNotArray(&'static str),
    #[error("the batch holds {0} events; at most {MAX_BATCH_EVENTS} are allowed per request")]
    TooManyEvents(usize),
    /// A batch-level object larger than an event may be, which every event would take on.
    #[error(
        "the batch's `{field}` is {size} bytes, and it is merged into every event, which may be \
         at most {} KB: send the larger parts in each event's own `{field}`, or less",
        MAX_EVENT_BYTES / 1024
    )]
    BatchFieldTooLarge { field: &'static str, size: usize },
    /// A batch-level field every event takes on, of the wrong type: refused rather than
    /// dropped, since each event would silently lose it.
    #[error("the batch's `{field}` must be {expected} ({why}), found {found}")]
    BatchFieldType {
        field: &'static str,
        expected: &'static str,
        why: &'static str,
        found: &'static str,
    },
}

/// A request's envelope, read but not yet judged.
pub struct RawRequest<'a> {
    /// `writeKey` given in the body, if any.
    pub write_key: Option<String>,
    /// What the body's `writeKey` was when it was not text (`"a number"`): a key sent in a form
    /// no key has, which the caller refuses rather than pass over.
    pub write_key_not_text: Option<&'static str>,
    items: Vec<Item<'a>>,
    /// The type the path implies (`/v1/track`), which wins over the body's `type`.
    implied_type: Option<MessageType>,
    batch_context: Option<BatchObject>,
    batch_integrations: Option<BatchObject>,
    batch_sent_at: Option<String>,
    /// Events of a file, read long after a server received them: their device clocks are
    /// corrected against the `receivedAt` each recorded, never against the time of reading.
    from_file: bool,
}

/// One event of a request, as text.
enum Item<'a> {
    /// As sent, borrowed from the body.
    Sent(&'a RawValue),
    /// A copy, from a body that held values JSON does not allow elsewhere (see [`non_json`]).
    Copied(Box<RawValue>),
    /// An event holding a value JSON does not allow: refused on its own.
    NotJson {
        /// The event as sent.
        text: String,
        /// What `rejected_events.raw` keeps of it (see [`kept_raw`]).
        kept: String,
        refusal: String,
        message_id: Option<String>,
    },
}

impl Item<'_> {
    fn text(&self) -> &str {
        match self {
            Item::Sent(raw) => raw.get(),
            Item::Copied(raw) => raw.get(),
            Item::NotJson { text, .. } => text,
        }
    }
}

/// The outcome of judging every event in a request.
#[derive(Debug, Default)]
pub struct IngestBatch {
    pub events: Vec<Event>,
    pub rejections: Vec<Rejection>,
}

#[derive(Deserialize)]
struct BatchEnvelope<'a> {
    #[serde(borrow, default)]
    batch: Option<BatchItems<'a>>,
    #[serde(borrow, default)]
    context: Option<&'a RawValue>,
    #[serde(borrow, default)]
    integrations: Option<&'a RawValue>,
    #[serde(rename = "writeKey", default)]
    write_key: Option<Value>,
    #[serde(rename = "sentAt", default)]
    sent_at: Option<Value>,
}

/// A batch's `batch` value: its events, each still raw JSON text, or what was found instead of
/// an array. Read in the same pass as the envelope, so a body is scanned once to find its events.
enum BatchItems<'a> {
    Items(Vec<&'a RawValue>),
    NotArray(&'static str),
}

impl<'de: 'a, 'a> Deserialize<'de> for BatchItems<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ItemsVisitor<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for ItemsVisitor<'a> {
            type Value = BatchItems<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an array of events")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Self::Value, A::Error> {
                let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(64).min(1024));
                while let Some(item) = seq.next_element::<&'de RawValue>()? {
                    items.push(item);
                }
                Ok(BatchItems::Items(items))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                while map
                    .next_entry::<serde::de::IgnoredAny, serde::de::IgnoredAny>()?
                    .is_some()
                {}
                Ok(BatchItems::NotArray("an object"))
            }
            fn visit_str<E: serde::de::Error>(self, _: &str) -> Result<Self::Value, E> {
                Ok(BatchItems::NotArray("a string"))
            }
            fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<Self::Value, E> {
                Ok(BatchItems::NotArray("a boolean"))
            }
            fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<Self::Value, E> {
                Ok(BatchItems::NotArray("a number"))
            }
            fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<Self::Value, E> {
                Ok(BatchItems::NotArray("a number"))
            }
            fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<Self::Value, E> {
                Ok(BatchItems::NotArray("a number"))
            }
            fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
                Ok(BatchItems::NotArray("null"))
            }
        }
        deserializer.deserialize_any(ItemsVisitor(std::marker::PhantomData))
    }
}

#[derive(Deserialize)]
struct SingleEnvelope {
    #[serde(rename = "writeKey", default)]
    write_key: Option<Value>,
}

/// A JSON value's kind, with its article, for messages: "an array", "null".
pub fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn first_non_space(body: &str) -> Option<char> {
    body.chars().find(|c| !c.is_whitespace())
}

fn envelope_error(body: &str, err: serde_json::Error) -> RequestError {
    // serde reports "invalid type" for valid JSON of the wrong shape; say what was found instead.
    if let Ok(value) = serde_json::from_str::<Value>(body)
        && !value.is_object()
    {
        return RequestError::NotAnObject(json_kind(&value));
    }
    RequestError::InvalidJson(err.to_string())
}

/// Reads a batch body: `{"batch": [...], "context": {...}, "integrations": {...}, "sentAt": ...}`.
pub fn parse_batch_request(body: &str) -> Result<RawRequest<'_>, RequestError> {
    if first_non_space(body) != Some('{') {
        return Err(match serde_json::from_str::<Value>(body) {
            Ok(value) => RequestError::NotAnObject(json_kind(&value)),
            Err(err) => RequestError::InvalidJson(err.to_string()),
        });
    }
    match serde_json::from_str::<BatchEnvelope<'_>>(body) {
        Ok(envelope) => batch_request(envelope, Item::Sent),
        Err(err) => rescued_batch(body).unwrap_or_else(|| Err(envelope_error(body, err))),
    }
}

/// A batch request from its envelope; `item` makes each event's [`Item`].
fn batch_request<'a, 'b>(
    envelope: BatchEnvelope<'b>,
    item: impl Fn(&'b RawValue) -> Item<'a>,
) -> Result<RawRequest<'a>, RequestError> {
    let items = match envelope.batch.ok_or(RequestError::MissingBatch)? {
        BatchItems::Items(items) => items,
        BatchItems::NotArray(kind) => return Err(RequestError::BatchNotArray(kind)),
    };
    if items.len() > MAX_BATCH_EVENTS {
        return Err(RequestError::TooManyEvents(items.len()));
    }
    let (write_key, write_key_not_text) = body_key(envelope.write_key.as_ref());
    Ok(RawRequest {
        write_key,
        write_key_not_text,
        items: items.into_iter().map(item).collect(),
        implied_type: None,
        batch_context: BatchObject::read("context", envelope.context)?,
        batch_integrations: BatchObject::read("integrations", envelope.integrations)?,
        batch_sent_at: batch_sent_at(envelope.sent_at.as_ref())?,
        from_file: false,
    })
}

/// A batch body that is not JSON only for values JSON does not allow (`NaN`, `Infinity`; see
/// [`non_json`]): each event holding one is refused on its own, the others are read as usual.
/// `None` when the body holds none, or is not JSON for other reasons too.
fn rescued_batch<'a>(body: &str) -> Option<Result<RawRequest<'a>, RequestError>> {
    let replaced = non_json::Replaced::of(body)?;
    let envelope: BatchEnvelope<'_> = match serde_json::from_str(&replaced.text) {
        Ok(envelope) => envelope,
        // Not JSON for another reason too: that one is told, where the first parse stopped at
        // the first `NaN` (the replaced text has the body's lines and columns).
        Err(err) => return Some(Err(envelope_error(&replaced.text, err))),
    };
    if let Some(BatchItems::Items(items)) = &envelope.batch {
        // Refused before anything else looks at them, as a batch without such values is.
        if items.len() > MAX_BATCH_EVENTS {
            return Some(Err(RequestError::TooManyEvents(items.len())));
        }
        // In body order, as the values found are: each is looked up, never compared with all.
        let spans: Vec<_> = items.iter().map(|item| replaced.span_of(item)).collect();
        let within_an_event = |found: &non_json::Found| {
            let after = spans.partition_point(|span| span.start <= found.at.start);
            after > 0 && spans[after - 1].contains(&found.at.start)
        };
        // One outside the events (in the batch's `context`, say) is every event's.
        if let Some(found) = replaced.found.iter().find(|found| !within_an_event(found)) {
            return Some(Err(RequestError::InvalidJson(format!(
                "`{}` at byte {}, outside the events, is not a JSON value: {}",
                found.value,
                found.at.start,
                non_json::SEND_NULL
            ))));
        }
    }
    Some(batch_request(envelope, |raw| {
        rescued_item(body, &replaced, raw)
    }))
}

/// An event read from a body's [`non_json::Replaced`] text: refused when it held one of the
/// values replaced, else a copy.
fn rescued_item<'a>(body: &str, replaced: &non_json::Replaced, raw: &RawValue) -> Item<'a> {
    let span = replaced.span_of(raw);
    match replaced.first_within(&span) {
        Some(found) => {
            // An event that is nothing but such a value reads as its one-byte replacement.
            let span = span.start..span.end.max(found.at.end);
            let text = body.get(span).unwrap_or_default().to_string();
            // The replaced text reads as JSON where the text as sent does not: whether it holds
            // a `writeKey` (a secret, never kept) is asked of it.
            let kept = match without_write_key(raw.get()) {
                Some(Cow::Borrowed(_)) => truncate_utf8(&text, MAX_EVENT_BYTES).to_string(),
                _ => "(not kept: the event holds a value JSON does not allow, and a writeKey)"
                    .to_string(),
            };
            Item::NotJson {
                text,
                kept,
                refusal: non_json::refusal(found),
                message_id: RawItem::parse(raw.get())
                    .ok()
                    .and_then(|mut item| item.take_id("messageId").ok().flatten()),
            }
        }
        None => Item::Copied(raw.to_owned()),
    }
}

/// The batch-level `sentAt`, each event's unless it has its own; null or empty is none.
fn batch_sent_at(value: Option<&Value>) -> Result<Option<String>, RequestError> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) => Ok((!text.trim().is_empty()).then(|| text.clone())),
        Some(other) => Err(RequestError::BatchFieldType {
            field: "sentAt",
            expected: "an ISO-8601 string",
            why: "the time the batch was sent, which corrects each event's device clock",
            found: json_kind(other),
        }),
    }
}

/// Reads a single-call body (`/v1/track`, `/v1/t`, ...): the body is the event itself.
pub fn parse_single_request(
    body: &str,
    implied_type: MessageType,
) -> Result<RawRequest<'_>, RequestError> {
    if first_non_space(body) != Some('{') {
        return Err(match serde_json::from_str::<Value>(body) {
            Ok(value) => RequestError::NotAnObject(json_kind(&value)),
            Err(err) => RequestError::InvalidJson(err.to_string()),
        });
    }
    let (raw, item) = match serde_json::from_str::<&RawValue>(body) {
        Ok(raw) => (raw.get(), Item::Sent(raw)),
        Err(err) => {
            // The body is the event: one holding `NaN` is refused as an event, and kept.
            let Some(replaced) = non_json::Replaced::of(body) else {
                return Err(envelope_error(body, err));
            };
            let raw = serde_json::from_str::<&RawValue>(&replaced.text)
                .map_err(|other| envelope_error(&replaced.text, other))?;
            let named = serde_json::from_str::<SingleEnvelope>(raw.get())
                .ok()
                .and_then(|envelope| envelope.write_key);
            let (write_key, write_key_not_text) = body_key(named.as_ref());
            return Ok(RawRequest {
                write_key,
                write_key_not_text,
                items: vec![rescued_item(body, &replaced, raw)],
                implied_type: Some(implied_type),
                batch_context: None,
                batch_integrations: None,
                batch_sent_at: None,
                from_file: false,
            });
        }
    };
    let envelope: SingleEnvelope =
        serde_json::from_str(raw).map_err(|err| envelope_error(body, err))?;
    let (write_key, write_key_not_text) = body_key(envelope.write_key.as_ref());
    Ok(RawRequest {
        write_key,
        write_key_not_text,
        items: vec![item],
        implied_type: Some(implied_type),
        batch_context: None,
        batch_integrations: None,
        batch_sent_at: None,
        from_file: false,
    })
}

/// Judges one event written on its own (a line of an events file) as it would be judged as an
/// item of `/v1/batch`: its `type` decides the call, and a fault gives the same rejection. Its
/// time is corrected against the `receivedAt` it recorded, if any, rather than against now
/// (see [`crate::time::event_time`]).
pub fn judge_event(
    text: &str,
    source: &str,
    received_at: DateTime<Utc>,
) -> Result<Event, Box<Rejection>> {
    let rejection = |code: &str, message: String| Rejection {
        index: 0,
        code: code.to_string(),
        message,
        field: None,
        source: source.to_string(),
        received_at,
        message_id: None,
        raw: kept_raw(text),
    };
    let raw: &RawValue = serde_json::from_str(text).map_err(|e| {
        Box::new(rejection(
            "invalid_json",
            format!("the event is not valid JSON: {e}"),
        ))
    })?;
    let request = RawRequest {
        write_key: None,
        write_key_not_text: None,
        items: vec![Item::Sent(raw)],
        implied_type: None,
        batch_context: None,
        batch_integrations: None,
        batch_sent_at: None,
        from_file: true,
    };
    let mut judged = request.normalize(source, received_at);
    match (judged.events.pop(), judged.rejections.pop()) {
        (Some(event), _) => Ok(event),
        (None, Some(rejection)) => Err(Box::new(rejection)),
        (None, None) => Err(Box::new(rejection(
            "invalid_event",
            "the event was not judged".into(),
        ))),
    }
}

/// The key a body's `writeKey` names (empty text names none), or, when it is neither text nor
/// null, its kind (`"a number"`): the two fields of [`RawRequest`] it fills.
fn body_key(named: Option<&Value>) -> (Option<String>, Option<&'static str>) {
    match named {
        None | Some(Value::Null) => (None, None),
        Some(Value::String(key)) => ((!key.is_empty()).then(|| key.clone()), None),
        Some(other) => (None, Some(json_kind(other))),
    }
}

impl RawRequest<'_> {
    /// Number of events in the request.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Judges every event: valid ones become [`Event`]s, invalid ones [`Rejection`]s with a reason.
    pub fn normalize(&self, source: &str, received_at: DateTime<Utc>) -> IngestBatch {
        let mut outcome = IngestBatch::default();
        for (index, item) in self.items.iter().enumerate() {
            let judged = match item {
                Item::NotJson {
                    refusal,
                    message_id,
                    ..
                } => Err(Fault::new("invalid_json", None, refusal.clone())
                    .with_message_id(message_id.clone())),
                _ => self.normalize_item(item.text(), source, received_at),
            };
            match judged {
                Ok(event) => outcome.events.push(event),
                Err(fault) => outcome.rejections.push(Rejection {
                    index,
                    code: fault.code.to_string(),
                    message: fault.message,
                    field: fault.field.map(str::to_string),
                    source: source.to_string(),
                    received_at,
                    message_id: fault.message_id,
                    raw: match item {
                        Item::NotJson { kept, .. } => kept.clone(),
                        _ => kept_raw(item.text()),
                    },
                }),
            }
        }
        outcome
    }

    fn normalize_item(
        &self,
        raw: &str,
        source: &str,
        received_at: DateTime<Utc>,
    ) -> Result<Event, Fault> {
        let mut item = RawItem::parse(raw)?;
        let message_id = match item.take_id("messageId")? {
            // Refused ids are kept with the rejection all the same, so it can be found by them.
            Some(id) if id.chars().count() >= MAX_MESSAGE_ID_CHARS => {
                return Err(Fault::new(
                    "invalid_message_id",
                    Some("messageId"),
                    format!("`messageId` must be shorter than {MAX_MESSAGE_ID_CHARS} characters"),
                )
                .with_message_id(Some(id)));
            }
            Some(id) if id.starts_with(MANUAL_MERGE_ID_PREFIX) => {
                return Err(Fault::new(
                    "invalid_message_id",
                    Some("messageId"),
                    format!(
                        "`messageId`s starting with `{MANUAL_MERGE_ID_PREFIX}` are reserved for \
                         merges confirmed in Kith; use another id"
                    ),
                )
                .with_message_id(Some(id)));
            }
            other => other,
        };
        let with_id = |fault: Fault| fault.with_message_id(message_id.clone());

        if raw.len() > MAX_EVENT_BYTES {
            return Err(with_id(Fault::new(
                "event_too_large",
                None,
                format!(
                    "the event is {} bytes; events may be at most {MAX_EVENT_BYTES} bytes",
                    raw.len()
                ),
            )));
        }

        let declared = item.take_string("type").map_err(with_id)?;
        let kind = match (self.implied_type, declared) {
            (Some(kind), _) => kind,
            (None, Some(name)) => MessageType::from_name(&name).ok_or_else(|| {
                with_id(Fault::new(
                    "invalid_type",
                    Some("type"),
                    format!(
                        "unknown event type `{name}`; use identify, track, page, screen, group or alias"
                    ),
                ))
            })?,
            (None, None) => {
                return Err(with_id(Fault::new(
                    "missing_type",
                    Some("type"),
                    "each batch event needs a `type` (identify, track, page, screen, group or alias)"
                        .into(),
                )));
            }
        };
        item.remove("writeKey");
        // When a server received the request: here, now; for a line of a file, the time it
        // recorded, if it can be read (it only serves to correct the device clock).
        let arrived = if self.from_file {
            item.take_time("receivedAt").ok().flatten()
        } else {
            item.remove("receivedAt");
            Some(received_at)
        };

        let user_id = item.take_id("userId").map_err(with_id)?;
        let anonymous_id = item.take_id("anonymousId").map_err(with_id)?;
        if user_id.is_none() && anonymous_id.is_none() {
            return Err(with_id(Fault::new(
                "missing_identity",
                Some("userId"),
                "the event needs a non-empty `userId` or `anonymousId`".into(),
            )));
        }

        let event = match kind {
            MessageType::Track => match item.take_string("event").map_err(with_id)? {
                Some(name) => Some(name),
                None => {
                    return Err(with_id(Fault::new(
                        "missing_event",
                        Some("event"),
                        "a track call needs a non-empty `event` name".into(),
                    )));
                }
            },
            MessageType::Page | MessageType::Screen => item.take_string("name").map_err(with_id)?,
            _ => None,
        };
        if kind != MessageType::Track {
            // RudderStack's browser SDK sends `"event": null` on every call that is not a track:
            // it says nothing, so it is not kept among the call's extra fields.
            item.remove_if_null("event");
        }
        let group_id = item.take_id("groupId").map_err(with_id)?;
        if kind == MessageType::Group && group_id.is_none() {
            return Err(with_id(Fault::new(
                "missing_group_id",
                Some("groupId"),
                "a group call needs a non-empty `groupId`".into(),
            )));
        }
        let previous_id = item.take_id("previousId").map_err(with_id)?;
        if kind == MessageType::Alias && previous_id.is_none() {
            return Err(with_id(Fault::new(
                "missing_previous_id",
                Some("previousId"),
                "an alias call needs a non-empty `previousId`".into(),
            )));
        }

        let properties = item.take_object("properties").map_err(with_id)?;
        let traits = item.take_object("traits").map_err(with_id)?;
        let context = item.take_object("context").map_err(with_id)?;
        let integrations = item.take_object("integrations").map_err(with_id)?;
        let context = merged_under(&self.batch_context, context);
        let integrations = merged_under(&self.batch_integrations, integrations);

        let explicit = item.take_time("timestamp").map_err(with_id)?;
        let original = item.take_time("originalTimestamp").map_err(with_id)?;
        let mut sent_at = item.take_time("sentAt").map_err(with_id)?;
        if sent_at.is_none()
            && let Some(text) = &self.batch_sent_at
        {
            let time = parse_timestamp(text).ok_or_else(|| {
                with_id(Fault::new(
                    "invalid_timestamp",
                    Some("sentAt"),
                    format!("the batch's `sentAt` value `{text}` is not an ISO-8601 date-time"),
                ))
            })?;
            sent_at = Some(storable("sentAt", time, text).map_err(with_id)?);
        }
        // SDKs send the call's device time as `timestamp`; Segment keeps it as the original.
        let original_timestamp = original.or(explicit);
        // Without any time, the event happened when a server received it: for a line of a
        // file, the time it recorded.
        let timestamp = event_time(
            explicit,
            original,
            sent_at,
            arrived,
            arrived.unwrap_or(received_at),
        );
        if !crate::time::is_storable(timestamp) {
            // Each time was storable, but correcting the device clock moved the event out of
            // range: `sentAt` and `originalTimestamp` are centuries apart.
            return Err(with_id(Fault::new(
                "invalid_timestamp",
                Some("sentAt"),
                format!(
                    "correcting the device clock by `sentAt` − `{}` puts the event at {}, outside \
                     the years {} Kith can store; check the device clock, or leave out \
                     `sentAt`",
                    if original.is_some() {
                        "originalTimestamp"
                    } else {
                        "timestamp"
                    },
                    timestamp.to_rfc3339(),
                    crate::time::storable_years()
                ),
            )));
        }

        // A group call's traits are the group's (a company's address is not a person's).
        let persons_traits = traits.as_deref().filter(|_| kind != MessageType::Group);
        let typed = typed_fields(properties.as_deref(), context.as_deref(), persons_traits);
        // RudderStack's SDKs send an identify's traits only in `context.traits`, Segment's at
        // the top: the `traits` column holds them either way, so that "this identify's traits"
        // is one column whichever SDK sent it. `context` keeps them as sent.
        let traits = match traits {
            None if kind == MessageType::Identify => typed
                .context_identity
                .as_ref()
                .and_then(|found| found.traits.clone()),
            traits => traits,
        };
        let message_id = message_id.unwrap_or_else(|| {
            let merged = [&self.batch_context, &self.batch_integrations];
            generated_message_id(
                source,
                kind,
                raw,
                merged.map(|b| b.as_ref().map(BatchObject::text)),
            )
        });
        Ok(Event {
            message_id,
            kind,
            event,
            user_id,
            anonymous_id,
            group_id,
            previous_id,
            source: source.to_string(),
            timestamp,
            original_timestamp,
            sent_at,
            received_at,
            properties,
            context,
            traits,
            integrations,
            // Anything else the client sent (page `category`, `_metadata`, custom fields).
            extra: item.rest_as_object(),
            typed,
        })
    }
}

/// One event's top-level fields, each still the raw JSON text it arrived as. Reading only the
/// top level and copying nested objects as text avoids building (and later re-encoding) maps.
struct RawItem<'a> {
    fields: Vec<(Cow<'a, str>, &'a RawValue)>,
}

#[derive(Deserialize, PartialEq, Eq)]
struct Key<'a>(#[serde(borrow)] Cow<'a, str>);

impl<'a> RawItem<'a> {
    fn parse(raw: &'a str) -> Result<RawItem<'a>, Fault> {
        struct FieldsVisitor;
        impl<'de> Visitor<'de> for FieldsVisitor {
            type Value = Vec<(Cow<'de, str>, &'de RawValue)>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut fields: Vec<(Cow<'de, str>, &'de RawValue)> = Vec::with_capacity(16);
                while let Some(Key(key)) = map.next_key::<Key<'de>>()? {
                    let value: &'de RawValue = map.next_value()?;
                    // A repeated key: the last one wins, as in every JSON object reader.
                    fields.retain(|(k, _)| *k != key);
                    fields.push((key, value));
                }
                Ok(fields)
            }
        }
        let mut deserializer = serde_json::Deserializer::from_str(raw);
        match deserializer.deserialize_map(FieldsVisitor) {
            Ok(fields) => Ok(RawItem { fields }),
            Err(err) => {
                let kind = match raw.trim_start().chars().next() {
                    Some('{') | None => None,
                    Some(_) => serde_json::from_str::<Value>(raw)
                        .ok()
                        .map(|v| json_kind(&v)),
                };
                Err(match kind {
                    Some(kind) => Fault::new(
                        "invalid_event",
                        None,
                        format!("each event must be a JSON object, found {kind}"),
                    ),
                    None => Fault::new(
                        "invalid_json",
                        None,
                        format!("the event is not valid JSON: {err}"),
                    ),
                })
            }
        }
    }

    fn remove(&mut self, name: &str) -> Option<&'a RawValue> {
        let position = self.fields.iter().position(|(k, _)| k == name)?;
        Some(self.fields.remove(position).1)
    }

    fn remove_if_null(&mut self, name: &str) {
        self.fields
            .retain(|(k, value)| !(k == name && value.get() == "null"));
    }

    /// Identifiers: strings, or numbers (some SDKs send numeric user ids), never blank.
    fn take_id(&mut self, field: &'static str) -> Result<Option<String>, Fault> {
        let Some(raw) = self.remove(field) else {
            return Ok(None);
        };
        match raw.get().as_bytes().first() {
            Some(b'"') => {
                let text = string_value(field, "a string", raw)?;
                let trimmed = text.trim();
                Ok(if trimmed.is_empty() {
                    None
                } else if trimmed.len() == text.len() {
                    Some(text)
                } else {
                    Some(trimmed.to_string())
                })
            }
            Some(b'n') => Ok(None),
            Some(b'-' | b'0'..=b'9') => Ok(Some(raw.get().to_string())),
            _ => Err(wrong_type_raw(field, "a string", raw)),
        }
    }

    fn take_string(&mut self, field: &'static str) -> Result<Option<String>, Fault> {
        let Some(raw) = self.remove(field) else {
            return Ok(None);
        };
        match raw.get().as_bytes().first() {
            Some(b'"') => {
                let text = string_value(field, "a string", raw)?;
                Ok((!text.trim().is_empty()).then_some(text))
            }
            Some(b'n') => Ok(None),
            _ => Err(wrong_type_raw(field, "a string", raw)),
        }
    }

    /// A nested object, kept as its JSON text.
    fn take_object(&mut self, field: &'static str) -> Result<Option<String>, Fault> {
        let Some(raw) = self.remove(field) else {
            return Ok(None);
        };
        match raw.get().as_bytes().first() {
            Some(b'{') => Ok(Some(raw.get().to_string())),
            Some(b'n') => Ok(None),
            _ => Err(wrong_type_raw(field, "an object", raw)),
        }
    }

    fn take_time(&mut self, field: &'static str) -> Result<Option<DateTime<Utc>>, Fault> {
        let Some(raw) = self.remove(field) else {
            return Ok(None);
        };
        match raw.get().as_bytes().first() {
            Some(b'n') => Ok(None),
            Some(b'"') => {
                let text = string_value(field, "an ISO-8601 string", raw)?;
                // Empty says what null says, as a batch's empty `sentAt` does.
                if text.trim().is_empty() {
                    return Ok(None);
                }
                let time = parse_timestamp(&text).ok_or_else(|| {
                    let hint = if crate::time::offset_lost_its_plus(&text) {
                        "; the offset's `+` became a space, as an unescaped `+` in a URL does: send it as %2B"
                    } else {
                        ""
                    };
                    Fault::new(
                        "invalid_timestamp",
                        Some(field),
                        format!(
                            "`{field}` value `{}` is not an ISO-8601 date-time such as 2024-05-01T10:00:00Z{hint}",
                            truncate_utf8(&text, 64)
                        ),
                    )
                })?;
                storable(field, time, &text).map(Some)
            }
            _ => Err(wrong_type_raw(field, "an ISO-8601 string", raw)),
        }
    }

    /// The fields nobody took, as one JSON object.
    fn rest_as_object(&self) -> Option<String> {
        if self.fields.is_empty() {
            return None;
        }
        let mut out = String::with_capacity(64);
        out.push('{');
        for (index, (key, value)) in self.fields.iter().enumerate() {
            if index > 0 {
                out.push(',');
            }
            out.push_str(&serde_json::to_string(key.as_ref()).unwrap_or_default());
            out.push(':');
            out.push_str(value.get());
        }
        out.push('}');
        Some(out)
    }
}

/// A JSON string field's value, escapes decoded.
fn string_value(field: &'static str, expected: &str, raw: &RawValue) -> Result<String, Fault> {
    serde_json::from_str(raw.get()).map_err(|e| {
        // A well-formed JSON string that is no text: an escape of half a UTF-16 pair.
        let why = e.to_string();
        let half_a_pair = why.contains("surrogate") || why.contains("end of hex escape");
        if raw.get().starts_with('"') && half_a_pair {
            return Fault::new(
                "invalid_text",
                Some(field),
                format!(
                    "`{field}` holds an escape that is no character (half of a UTF-16 pair, such \
                     as \\ud800, without the other half); send the text as UTF-8, or both halves"
                ),
            );
        }
        wrong_type_raw(field, expected, raw)
    })
}

fn wrong_type_raw(field: &'static str, expected: &str, raw: &RawValue) -> Fault {
    let found = match serde_json::from_str::<Value>(raw.get()) {
        Ok(value) => json_kind(&value),
        // The raw value is well-formed (the body parsed), so only its depth can fail here.
        Err(e) if e.to_string().starts_with("recursion limit exceeded") => {
            "JSON nested deeper than the 128 levels Kith reads"
        }
        Err(_) => "invalid JSON",
    };
    Fault::new(
        "wrong_type",
        Some(field),
        format!("`{field}` must be {expected}, found {found}"),
    )
}

/// An event's own `context` or `integrations` with the batch's fields it lacks.
fn merged_under(batch: &Option<BatchObject>, own: Option<String>) -> Option<String> {
    match batch {
        Some(batch) => batch.merged_under(own),
        None => own,
    }
}

/// What the typed columns need from `properties`.
#[derive(Deserialize, Default)]
struct PropertiesView {
    revenue: Option<Value>,
    total: Option<Value>,
    currency: Option<Value>,
    order_id: Option<Value>,
    #[serde(rename = "orderId")]
    order_id_camel: Option<Value>,
    url: Option<Value>,
    path: Option<Value>,
    referrer: Option<Value>,
    email: Option<Value>,
}

/// `email` of an object (traits, `context.traits`).
#[derive(Deserialize, Default)]
struct EmailView {
    email: Option<Value>,
}

/// Reads a view of a JSON object in one pass, as nearly every object reads; one that does not
/// (a field named twice, a value `serde_json` cannot hold) is read from its readable fields, so
/// one odd value costs only itself (see [`readable_fields`]).
fn view<T: serde::de::DeserializeOwned + Default>(text: Option<&str>) -> T {
    let Some(text) = text else {
        return T::default();
    };
    serde_json::from_str(text)
        .ok()
        .or_else(|| serde_json::from_value(Value::Object(readable_fields(text)?)).ok())
        .unwrap_or_default()
}

fn text_of(value: &Option<Value>) -> Option<String> {
    match value.as_ref()? {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Absent, null, or text of nothing but spaces.
fn says_nothing(value: &Option<Value>) -> bool {
    match value {
        None | Some(Value::Null) => true,
        Some(Value::String(text)) => text.trim().is_empty(),
        Some(_) => false,
    }
}

/// Revenue sometimes arrives as a string ("19.99"); accept both, never NaN or infinity.
fn number_of(value: &Option<Value>) -> Option<f64> {
    let number = match value.as_ref()? {
        Value::Number(n) => n.as_f64()?,
        Value::String(s) => s.trim().parse::<f64>().ok()?,
        _ => return None,
    };
    number.is_finite().then_some(number)
}

/// The typed columns, from an event's objects; `traits` are the person's (not a group call's).
fn typed_fields(
    properties: Option<&str>,
    context: Option<&str>,
    traits: Option<&str>,
) -> TypedFields {
    // One that cannot be read (or is named twice) costs only itself.
    let properties: PropertiesView = view(properties);
    let read_context: Option<ContextView> = context.and_then(|t| serde_json::from_str(t).ok());
    // A context that cannot be read at all (not valid JSON inside) is left exactly as sent: no
    // `ip` is added to it.
    let context_names_ip = match &read_context {
        Some(read) => read.names_ip,
        None => context.is_some(),
    };
    let context = read_context.unwrap_or_default();
    let context_identity = context.identity();
    let page = context.page.unwrap_or_default();
    TypedFields {
        // `total` (which counts shipping and tax) stands in only for a revenue not given: a
        // revenue that is given but no number (`"$12"`) leaves the column empty.
        revenue: if says_nothing(&properties.revenue) {
            number_of(&properties.total)
        } else {
            number_of(&properties.revenue)
        },
        currency: text_of(&properties.currency),
        order_id: text_of(&properties.order_id).or_else(|| text_of(&properties.order_id_camel)),
        page_url: text_of(&properties.url).or_else(|| text_of(&page.url)),
        page_path: text_of(&properties.path).or_else(|| text_of(&page.path)),
        referrer: text_of(&properties.referrer).or_else(|| text_of(&page.referrer)),
        email: text_of(&view::<EmailView>(traits).email)
            .or_else(|| text_of(&view::<EmailView>(context.traits.map(RawValue::get)).email))
            .or_else(|| text_of(&properties.email)),
        library_name: context.library.as_ref().and_then(|l| text_of(&l.name)),
        context_identity: Some(context_identity),
        context_names_ip,
    }
}

/// A deterministic id for events sent without `messageId`: a retry of the same body dedups.
/// The type is part of it: a single call's type is its path, so `{"userId":"u1"}` sent to
/// `/v1/identify` and to `/v1/page` is two events. So is the batch's `context` and
/// `integrations` (`merged`) a batch item takes on: two batches that differ there store two
/// different events.
fn generated_message_id(
    source: &str,
    kind: MessageType,
    raw: &str,
    merged: [Option<&str>; 2],
) -> String {
    // Hashed as it is read (the same digest as of the parts joined), without copying the body.
    let mut hasher = Xxh3::new();
    for part in [source, kind.as_str()] {
        hasher.update(part.as_bytes());
        hasher.update(&[0]);
    }
    hasher.update(raw.as_bytes());
    // Only when there is one: events without keep the ids they had before these counted.
    for (name, text) in ["context", "integrations"].into_iter().zip(merged) {
        if let Some(text) = text {
            for part in [&[0][..], name.as_bytes(), &[0], text.as_bytes()] {
                hasher.update(part);
            }
        }
    }
    format!("kith-{:032x}", hasher.digest128())
}

/// A rejected event's text as it is kept (in `rejected_events.raw`): as sent, without a
/// top-level `writeKey` (a secret, which accepted events do not keep either), cut to the event
/// size limit. Text that cannot be read as a JSON object (a name with half a UTF-16 pair, a
/// line of a file that is not JSON) and may name the key, spelt out or escaped, is not kept.
fn kept_raw(raw: &str) -> String {
    match without_write_key(raw) {
        Some(kept) => truncate_utf8(&kept, MAX_EVENT_BYTES).to_string(),
        None if raw.contains("riteKey") || raw.contains("\\u") => {
            "(not kept: the event could not be read as JSON, and may hold its writeKey)".to_string()
        }
        None => truncate_utf8(raw, MAX_EVENT_BYTES).to_string(),
    }
}

/// `raw` without its top-level `writeKey` field, each other field's text as it was; `raw`
/// itself when it has none or is a JSON value other than an object; `None` when it cannot be
/// read as JSON.
fn without_write_key(raw: &str) -> Option<Cow<'_, str>> {
    /// An object's fields in order, each value its text as sent.
    struct Fields<'a>(Vec<(Cow<'a, str>, &'a RawValue)>);

    impl<'de> Deserialize<'de> for Fields<'de> {
        fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            struct FieldsVisitor;
            impl<'de> Visitor<'de> for FieldsVisitor {
                type Value = Fields<'de>;
                fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                    f.write_str("a JSON object")
                }
                fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Fields<'de>, A::Error> {
                    let mut fields = Vec::new();
                    while let Some(entry) = map.next_entry::<Cow<'de, str>, &'de RawValue>()? {
                        fields.push(entry);
                    }
                    Ok(Fields(fields))
                }
            }
            deserializer.deserialize_map(FieldsVisitor)
        }
    }

    let fields = match serde_json::from_str::<Fields>(raw) {
        Ok(Fields(fields)) => fields,
        // Valid JSON that is not an object holds no field to remove.
        Err(e) if e.is_data() => return Some(Cow::Borrowed(raw)),
        Err(_) => return None,
    };
    if !fields.iter().any(|(name, _)| name == "writeKey") {
        return Some(Cow::Borrowed(raw));
    }
    let mut kept = String::with_capacity(raw.len());
    kept.push('{');
    for (name, value) in fields.iter().filter(|(name, _)| name != "writeKey") {
        if kept.len() > 1 {
            kept.push(',');
        }
        kept.push_str(&Value::String(name.to_string()).to_string());
        kept.push(':');
        kept.push_str(value.get());
    }
    kept.push('}');
    Some(Cow::Owned(kept))
}

/// `time` (read from `field`, written `text`) if Kith can store it (see
/// [`crate::time::is_storable`]).
fn storable(field: &'static str, time: DateTime<Utc>, text: &str) -> Result<DateTime<Utc>, Fault> {
    if crate::time::is_storable(time) {
        return Ok(time);
    }
    Err(Fault::new(
        "invalid_timestamp",
        Some(field),
        format!(
            "`{field}` value `{}` is outside the years {} that Kith can store and query \
             (a default value such as Go's zero time, or a clock far off?); send the time the \
             event happened, or leave `{field}` out",
            truncate_utf8(text, 64),
            crate::time::storable_years()
        ),
    ))
}

fn truncate_utf8(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// Every code an event in a batch can be refused with: `rejected_events.code`, and the `reason`
/// of `kith_events_rejected_total` (whose series start at 0 for each). docs/errors.md says what
/// each means; a test keeps the three in step.
pub const REJECTION_CODES: [&str; 13] = [
    "invalid_json",
    "invalid_event",
    "missing_type",
    "invalid_type",
    "missing_identity",
    "missing_event",
    "missing_group_id",
    "missing_previous_id",
    "invalid_message_id",
    "event_too_large",
    "wrong_type",
    "invalid_text",
    "invalid_timestamp",
];

/// What was wrong with one event.
struct Fault {
    code: &'static str,
    field: Option<&'static str>,
    message: String,
    message_id: Option<String>,
}

impl Fault {
    fn new(code: &'static str, field: Option<&'static str>, message: String) -> Fault {
        Fault {
            code,
            field,
            message,
            message_id: None,
        }
    }

    fn with_message_id(mut self, message_id: Option<String>) -> Fault {
        self.message_id = message_id;
        self
    }
}

#[cfg(test)]
mod fidelity_tests;
#[cfg(test)]
mod tests;
