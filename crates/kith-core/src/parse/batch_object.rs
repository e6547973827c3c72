//! A batch's own `context` and `integrations`, merged into each of its events key by key, under
//! the event's own keys.
//!
//! Kept as sent, field by field: read into `serde_json` values and written again, their numbers
//! lost digits (`12345678901234567890` became `1.2345678901234567e19`), their keys were sorted,
//! and a value an event may hold in its own `context` (`1e400`, half a UTF-16 pair) failed the
//! whole request as "not valid JSON".

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::fmt;

use serde::de::{Deserializer as _, MapAccess, Visitor};
use serde_json::value::RawValue;

use super::{RequestError, field_names};
use crate::limits::MAX_EVENT_BYTES;

/// A batch-level object with at least one field.
pub(super) struct BatchObject {
    /// As sent: part of the id given to an event sent without a `messageId`, since it is part
    /// of what is stored.
    text: Box<RawValue>,
    /// Its fields as sent, in order; of a name given twice, the last value (as JavaScript's
    /// `JSON.parse`, and so the SDKs, read it) in the first one's place.
    fields: Vec<(String, Box<RawValue>)>,
}

impl BatchObject {
    /// Reads the batch's `field`; absent, null or `{}` is none. It becomes part of every event,
    /// so it may hold no more than an event may: larger, one request of 500 KB could store a
    /// gigabyte.
    pub(super) fn read(
        field: &'static str,
        value: Option<&RawValue>,
    ) -> Result<Option<BatchObject>, RequestError> {
        let Some(value) = value else {
            return Ok(None);
        };
        let text = value.get();
        let found = kind_of(text);
        if found == "null" {
            return Ok(None);
        }
        if found != "an object" {
            return Err(RequestError::BatchFieldType {
                field,
                expected: "an object",
                why: "it is merged into each event",
                found,
            });
        }
        if text.len() > MAX_EVENT_BYTES {
            return Err(RequestError::BatchFieldTooLarge {
                field,
                size: text.len(),
            });
        }
        // Valid JSON, so only a name that is no text (half a UTF-16 pair) fails here.
        let fields = serde_json::Deserializer::from_str(text)
            .deserialize_map(Fields)
            .map_err(|_| RequestError::BatchFieldType {
                field,
                expected: "an object whose names are text",
                why: "its fields are merged into each event by name",
                found: "a name holding half a UTF-16 surrogate pair",
            })?;
        Ok((!fields.is_empty()).then(|| BatchObject {
            text: value.to_owned(),
            fields,
        }))
    }

    /// The object as sent.
    pub(super) fn text(&self) -> &str {
        self.text.get()
    }

    /// An event's own object (as sent) with this one's fields it lacks appended, in their
    /// order. The event's text is kept as sent: read and written again it would lose its key
    /// order and number forms. One whose names cannot be read is kept as it is.
    pub(super) fn merged_under(&self, own: Option<String>) -> Option<String> {
        let Some(own) = own else {
            let mut text = String::with_capacity(self.text().len());
            text.push('{');
            push_fields(&mut text, self.fields.iter());
            text.push('}');
            return Some(text);
        };
        let Some(names) = field_names(&own) else {
            return Some(own);
        };
        // The usual few names are compared one by one; many are looked up: an event's
        // thousands of names against a batch's thousands, in each of 2,500 events, would be
        // billions of comparisons.
        let looked_up: Option<std::collections::HashSet<&str>> =
            (names.len().saturating_mul(self.fields.len()) > 256)
                .then(|| names.iter().map(String::as_str).collect());
        let held = |key: &str| match &looked_up {
            Some(set) => set.contains(key),
            None => names.iter().any(|name| name == key),
        };
        let mut missing = self.fields.iter().filter(|(key, _)| !held(key)).peekable();
        if missing.peek().is_none() {
            return Some(own);
        }
        let Some(body) = own.trim_end().strip_suffix('}') else {
            return Some(own);
        };
        let mut merged = String::with_capacity(own.len() + self.text().len());
        merged.push_str(body);
        if !names.is_empty() {
            merged.push(',');
        }
        push_fields(&mut merged, missing);
        merged.push('}');
        Some(merged)
    }
}

/// `fields` as `"name":value` pairs, separated by commas.
fn push_fields<'a>(text: &mut String, fields: impl Iterator<Item = &'a (String, Box<RawValue>)>) {
    for (i, (name, value)) in fields.enumerate() {
        if i > 0 {
            text.push(',');
        }
        // A name read from JSON writes as JSON again, escaped as it needs.
        match serde_json::to_string(name) {
            Ok(name) => text.push_str(&name),
            Err(_) => text.push_str("\"\""),
        }
        text.push(':');
        text.push_str(value.get());
    }
}

/// A JSON value's kind, with its article, from its first character (the value is valid JSON).
fn kind_of(text: &str) -> &'static str {
    match text.trim_start().as_bytes().first() {
        Some(b'{') => "an object",
        Some(b'[') => "an array",
        Some(b'"') => "a string",
        Some(b't' | b'f') => "a boolean",
        Some(b'n') => "null",
        _ => "a number",
    }
}

/// An object's fields as sent, the last value of a name given twice in the first one's place.
struct Fields;

impl<'de> Visitor<'de> for Fields {
    type Value = Vec<(String, Box<RawValue>)>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut fields: Vec<(String, Box<RawValue>)> = Vec::new();
        let mut places: HashMap<String, usize> = HashMap::new();
        while let Some(name) = map.next_key::<String>()? {
            let value = map.next_value::<&'de RawValue>()?.to_owned();
            match places.entry(name) {
                Entry::Occupied(place) => fields[*place.get()].1 = value,
                Entry::Vacant(place) => {
                    fields.push((place.key().clone(), value));
                    place.insert(fields.len() - 1);
                }
            }
        }
        Ok(fields)
    }
}
