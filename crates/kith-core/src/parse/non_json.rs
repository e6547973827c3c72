//! Values JSON does not allow that some encoders write all the same: Python's `json` module, and
//! so Segment's and RudderStack's Python SDKs, write `float('nan')` and `float('inf')` as `NaN`,
//! `Infinity` and `-Infinity` (pandas data often holds them). A JSON parser refuses the whole
//! body for one of them, which would cost every event beside it. Here they are found, and
//! replaced by a value of the same length, so that the body can be read and each event holding
//! one refused on its own, with its text as it was sent.

use std::ops::Range;

use serde_json::value::RawValue;

/// The values looked for; `-Infinity` before `Infinity`, so the sign goes with it.
const NON_JSON_VALUES: [&str; 3] = ["-Infinity", "Infinity", "NaN"];

/// What to do about one, for messages.
pub(super) const SEND_NULL: &str = "JSON has no NaN or infinity (Python's `json` writes \
    float('nan') and float('inf') this way); send null instead, or leave the field out";

/// A value JSON does not allow, found outside strings.
pub(super) struct Found {
    pub at: Range<usize>,
    pub value: &'static str,
    /// The name of the field holding it, when it is an object's field.
    pub field: Option<String>,
}

/// A body with every value JSON does not allow replaced by `0` and spaces.
pub(super) struct Replaced {
    pub text: String,
    pub found: Vec<Found>,
}

impl Replaced {
    /// `None` when `body` holds no such value outside its strings.
    pub(super) fn of(body: &str) -> Option<Replaced> {
        let bytes = body.as_bytes();
        let mut text = bytes.to_vec();
        let mut found = Vec::new();
        let mut in_string = false;
        let mut at = 0;
        while at < bytes.len() {
            let byte = bytes[at];
            if in_string {
                match byte {
                    b'\\' => at += 1,
                    b'"' => in_string = false,
                    _ => {}
                }
                at += 1;
                continue;
            }
            if byte == b'"' {
                in_string = true;
                at += 1;
                continue;
            }
            // Outside strings, JSON's only words are true, false and null, which none of these
            // can be part of.
            match NON_JSON_VALUES
                .iter()
                .find(|value| bytes[at..].starts_with(value.as_bytes()))
            {
                Some(value) => {
                    let end = at + value.len();
                    text[at] = b'0';
                    text[at + 1..end].fill(b' ');
                    found.push(Found {
                        at: at..end,
                        value,
                        field: field_before(bytes, at),
                    });
                    at = end;
                }
                None => at += 1,
            }
        }
        if found.is_empty() {
            return None;
        }
        // Only ASCII bytes were replaced by ASCII bytes: still UTF-8.
        let text = String::from_utf8(text).ok()?;
        Some(Replaced { text, found })
    }

    /// Where `part`, a value read from [`Replaced::text`], lies in it (and so in the body).
    pub(super) fn span_of(&self, part: &RawValue) -> Range<usize> {
        let start = (part.get().as_ptr() as usize).saturating_sub(self.text.as_ptr() as usize);
        start..start + part.get().len()
    }

    /// The first value found within `span` (found in body order: looked up, not searched).
    pub(super) fn first_within(&self, span: &Range<usize>) -> Option<&Found> {
        let first = self
            .found
            .partition_point(|found| found.at.start < span.start);
        self.found
            .get(first)
            .filter(|found| span.contains(&found.at.start))
    }
}

/// The name of the field whose value starts at `at` (`"score": NaN`), if the value is an
/// object's field and its name has no escapes.
fn field_before(bytes: &[u8], at: usize) -> Option<String> {
    let before = trim_end(&bytes[..at]);
    let before = trim_end(before.strip_suffix(b":")?);
    let name_and_before = before.strip_suffix(b"\"")?;
    let open = name_and_before.iter().rposition(|b| *b == b'"')?;
    let name = &name_and_before[open + 1..];
    if name.contains(&b'\\') {
        return None;
    }
    std::str::from_utf8(name).ok().map(str::to_string)
}

fn trim_end(bytes: &[u8]) -> &[u8] {
    let kept = bytes
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(0, |last| last + 1);
    &bytes[..kept]
}

/// What an event holding `found` is told.
pub(super) fn refusal(found: &Found) -> String {
    match &found.field {
        Some(field) => format!("`{field}` is `{}`: {SEND_NULL}", found.value),
        None => format!("the event holds `{}`: {SEND_NULL}", found.value),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_outside_strings_are_replaced_in_place_and_named_by_their_field() {
        let body = r#"{"a": NaN, "b": [Infinity,-Infinity], "c": "NaN \" Infinity", "d":1}"#;
        let replaced = Replaced::of(body).unwrap();
        assert_eq!(replaced.text.len(), body.len());
        let value: serde_json::Value = serde_json::from_str(&replaced.text).unwrap();
        assert_eq!(value["c"], "NaN \" Infinity", "strings are left alone");
        let found: Vec<(&str, &str, Option<&str>)> = replaced
            .found
            .iter()
            .map(|f| (&body[f.at.clone()], f.value, f.field.as_deref()))
            .collect();
        assert_eq!(
            found,
            [
                ("NaN", "NaN", Some("a")),
                ("Infinity", "Infinity", None),
                ("-Infinity", "-Infinity", None),
            ]
        );
    }

    #[test]
    fn a_body_without_them_is_not_replaced() {
        assert!(Replaced::of(r#"{"a": "NaN", "b": null, "c": 1e5}"#).is_none());
        assert!(Replaced::of(r#"{"a": "\\", "b": "Infinity"}"#).is_none());
    }
}
