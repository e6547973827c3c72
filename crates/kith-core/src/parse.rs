//! From request bodies to events. Two steps, because the write key may be inside the body:
//! [`parse_batch_request`] / [`parse_single_request`] read the envelope (and the key) without
//! judging the events; [`RawRequest::normalize`] then checks each event on its own, so one bad
//! event never costs its valid neighbours.

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use thiserror::Error;
use xxhash_rust::xxh3::xxh3_128;

use crate::event::{Event, MessageType, Rejection};
use crate::limits::{MAX_BATCH_EVENTS, MAX_EVENT_BYTES, MAX_MESSAGE_ID_CHARS};
use crate::time::{event_time, parse_timestamp};

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
}

/// A request's envelope, read but not yet judged.
pub struct RawRequest<'a> {
    /// `writeKey` given in the body, if any.
    pub write_key: Option<String>,
    items: Vec<&'a RawValue>,
    /// The type the path implies (`/v1/track`), which wins over the body's `type`.
    implied_type: Option<MessageType>,
    batch_context: Option<Map<String, Value>>,
    batch_integrations: Option<Map<String, Value>>,
    batch_sent_at: Option<String>,
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
    batch: Option<&'a RawValue>,
    #[serde(default)]
    context: Option<Value>,
    #[serde(default)]
    integrations: Option<Value>,
    #[serde(rename = "writeKey", default)]
    write_key: Option<Value>,
    #[serde(rename = "sentAt", default)]
    sent_at: Option<Value>,
}

#[derive(Deserialize)]
struct SingleEnvelope {
    #[serde(rename = "writeKey", default)]
    write_key: Option<Value>,
}

fn json_kind(value: &Value) -> &'static str {
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
    let envelope: BatchEnvelope<'_> =
        serde_json::from_str(body).map_err(|err| envelope_error(body, err))?;
    let batch = envelope.batch.ok_or(RequestError::MissingBatch)?;
    let items: Vec<&RawValue> = match serde_json::from_str(batch.get()) {
        Ok(items) => items,
        Err(_) => {
            let value: Value = serde_json::from_str(batch.get())
                .map_err(|err| RequestError::InvalidJson(err.to_string()))?;
            return Err(RequestError::BatchNotArray(json_kind(&value)));
        }
    };
    if items.len() > MAX_BATCH_EVENTS {
        return Err(RequestError::TooManyEvents(items.len()));
    }
    Ok(RawRequest {
        write_key: envelope.write_key.as_ref().and_then(value_as_text),
        items,
        implied_type: None,
        batch_context: envelope.context.and_then(into_object),
        batch_integrations: envelope.integrations.and_then(into_object),
        batch_sent_at: envelope.sent_at.as_ref().and_then(value_as_text),
    })
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
    let raw: &RawValue = serde_json::from_str(body).map_err(|err| envelope_error(body, err))?;
    let envelope: SingleEnvelope =
        serde_json::from_str(raw.get()).map_err(|err| envelope_error(body, err))?;
    Ok(RawRequest {
        write_key: envelope.write_key.as_ref().and_then(value_as_text),
        items: vec![raw],
        implied_type: Some(implied_type),
        batch_context: None,
        batch_integrations: None,
        batch_sent_at: None,
    })
}

fn into_object(value: Value) -> Option<Map<String, Value>> {
    match value {
        Value::Object(map) => Some(map),
        _ => None,
    }
}

fn value_as_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        _ => None,
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
        for (index, raw) in self.items.iter().enumerate() {
            match self.normalize_item(raw.get(), source, received_at) {
                Ok(event) => outcome.events.push(event),
                Err(fault) => outcome.rejections.push(Rejection {
                    index,
                    code: fault.code.to_string(),
                    message: fault.message,
                    field: fault.field.map(str::to_string),
                    source: source.to_string(),
                    received_at,
                    message_id: fault.message_id,
                    raw: truncate_utf8(raw.get(), MAX_EVENT_BYTES).to_string(),
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
        let value: Value = serde_json::from_str(raw).map_err(|err| {
            Fault::new(
                "invalid_json",
                None,
                format!("the event is not valid JSON: {err}"),
            )
        })?;
        let Value::Object(mut item) = value else {
            return Err(Fault::new(
                "invalid_event",
                None,
                format!(
                    "each event must be a JSON object, found {}",
                    json_kind(&value)
                ),
            ));
        };
        let message_id = match take_id(&mut item, "messageId")? {
            Some(id) if id.chars().count() >= MAX_MESSAGE_ID_CHARS => {
                return Err(Fault::new(
                    "invalid_message_id",
                    Some("messageId"),
                    format!("`messageId` must be shorter than {MAX_MESSAGE_ID_CHARS} characters"),
                ));
            }
            Some(id) => Some(id),
            None => None,
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

        let kind = match self.implied_type {
            Some(kind) => {
                item.remove("type");
                kind
            }
            None => match item.remove("type") {
                Some(Value::String(name)) => MessageType::from_name(&name).ok_or_else(|| {
                    with_id(Fault::new(
                        "invalid_type",
                        Some("type"),
                        format!(
                            "unknown event type `{name}`; use identify, track, page, screen, group or alias"
                        ),
                    ))
                })?,
                None | Some(Value::Null) => {
                    return Err(with_id(Fault::new(
                        "missing_type",
                        Some("type"),
                        "each batch event needs a `type` (identify, track, page, screen, group or alias)".into(),
                    )));
                }
                Some(other) => return Err(with_id(wrong_type("type", "a string", &other))),
            },
        };
        item.remove("writeKey");

        let user_id = take_id(&mut item, "userId").map_err(with_id)?;
        let anonymous_id = take_id(&mut item, "anonymousId").map_err(with_id)?;
        if user_id.is_none() && anonymous_id.is_none() {
            return Err(with_id(Fault::new(
                "missing_identity",
                Some("userId"),
                "the event needs a non-empty `userId` or `anonymousId`".into(),
            )));
        }

        let event = match kind {
            MessageType::Track => match take_string(&mut item, "event").map_err(with_id)? {
                Some(name) => Some(name),
                None => {
                    return Err(with_id(Fault::new(
                        "missing_event",
                        Some("event"),
                        "a track call needs a non-empty `event` name".into(),
                    )));
                }
            },
            MessageType::Page | MessageType::Screen => {
                take_string(&mut item, "name").map_err(with_id)?
            }
            _ => None,
        };
        let group_id = take_id(&mut item, "groupId").map_err(with_id)?;
        if kind == MessageType::Group && group_id.is_none() {
            return Err(with_id(Fault::new(
                "missing_group_id",
                Some("groupId"),
                "a group call needs a non-empty `groupId`".into(),
            )));
        }
        let previous_id = take_id(&mut item, "previousId").map_err(with_id)?;
        if kind == MessageType::Alias && previous_id.is_none() {
            return Err(with_id(Fault::new(
                "missing_previous_id",
                Some("previousId"),
                "an alias call needs a non-empty `previousId`".into(),
            )));
        }

        let properties = take_object(&mut item, "properties").map_err(with_id)?;
        let traits = take_object(&mut item, "traits").map_err(with_id)?;
        let mut context = take_object(&mut item, "context").map_err(with_id)?;
        let mut integrations = take_object(&mut item, "integrations").map_err(with_id)?;
        merge_defaults(&mut context, self.batch_context.as_ref());
        merge_defaults(&mut integrations, self.batch_integrations.as_ref());

        let explicit = take_time(&mut item, "timestamp").map_err(with_id)?;
        let original = take_time(&mut item, "originalTimestamp").map_err(with_id)?;
        let mut sent_at = take_time(&mut item, "sentAt").map_err(with_id)?;
        if sent_at.is_none()
            && let Some(text) = &self.batch_sent_at
        {
            sent_at = Some(parse_timestamp(text).ok_or_else(|| {
                with_id(Fault::new(
                    "invalid_timestamp",
                    Some("sentAt"),
                    format!("the batch's `sentAt` value `{text}` is not an ISO-8601 date-time"),
                ))
            })?);
        }
        // Server-side SDKs send the call time as `timestamp`; keep it as the original time too.
        let original_timestamp = original.or(explicit);
        let timestamp = event_time(explicit, original, sent_at, received_at);

        // Anything else the client sent (page `category`, `version`, custom fields) is kept too.
        item.remove("receivedAt");
        let message_id = message_id.unwrap_or_else(|| generated_message_id(source, raw));
        let event = Event {
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
            extra: (!item.is_empty()).then_some(item),
        };
        Ok(event)
    }
}

/// A deterministic id for events sent without `messageId`: a retry of the same body dedups.
fn generated_message_id(source: &str, raw: &str) -> String {
    let mut bytes = Vec::with_capacity(source.len() + 1 + raw.len());
    bytes.extend_from_slice(source.as_bytes());
    bytes.push(0);
    bytes.extend_from_slice(raw.as_bytes());
    format!("kith-{:032x}", xxh3_128(&bytes))
}

fn merge_defaults(target: &mut Option<Map<String, Value>>, defaults: Option<&Map<String, Value>>) {
    let Some(defaults) = defaults else { return };
    let target = target.get_or_insert_with(Map::new);
    for (key, value) in defaults {
        target.entry(key.clone()).or_insert_with(|| value.clone());
    }
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

fn wrong_type(field: &'static str, expected: &str, found: &Value) -> Fault {
    Fault::new(
        "wrong_type",
        Some(field),
        format!("`{field}` must be {expected}, found {}", json_kind(found)),
    )
}

/// Identifiers: strings, or numbers (some SDKs send numeric user ids), never blank.
fn take_id(item: &mut Map<String, Value>, field: &'static str) -> Result<Option<String>, Fault> {
    match item.remove(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => {
            let trimmed = s.trim();
            if trimmed.is_empty() {
                Ok(None)
            } else if trimmed.len() == s.len() {
                Ok(Some(s))
            } else {
                Ok(Some(trimmed.to_string()))
            }
        }
        Some(Value::Number(n)) => Ok(Some(n.to_string())),
        Some(other) => Err(wrong_type(field, "a string", &other)),
    }
}

fn take_string(
    item: &mut Map<String, Value>,
    field: &'static str,
) -> Result<Option<String>, Fault> {
    match item.remove(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(wrong_type(field, "a string", &other)),
    }
}

fn take_object(
    item: &mut Map<String, Value>,
    field: &'static str,
) -> Result<Option<Map<String, Value>>, Fault> {
    match item.remove(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(map)) => Ok(Some(map)),
        Some(other) => Err(wrong_type(field, "an object", &other)),
    }
}

fn take_time(
    item: &mut Map<String, Value>,
    field: &'static str,
) -> Result<Option<DateTime<Utc>>, Fault> {
    match item.remove(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) => parse_timestamp(&text).map(Some).ok_or_else(|| {
            Fault::new(
                "invalid_timestamp",
                Some(field),
                format!(
                    "`{field}` value `{}` is not an ISO-8601 date-time such as 2024-05-01T10:00:00Z",
                    truncate_utf8(&text, 64)
                ),
            )
        }),
        Some(other) => Err(wrong_type(field, "an ISO-8601 string", &other)),
    }
}

#[cfg(test)]
mod tests;
