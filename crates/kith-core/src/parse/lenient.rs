//! Reading parts of a JSON object that one odd value must not cost.
//!
//! The parser keeps an event's objects as the text the client sent, which only has to be valid
//! JSON. Reading that text into `serde_json` values can still fail on things JSON allows: a
//! number out of `f64`'s range (`1e400`), half of a UTF-16 surrogate pair (`"\ud800"`), nesting
//! deeper than 128 levels, or a field named twice (a derived reader refuses it). Read whole, one
//! such value would lose every field beside it. Here each field is taken as its raw text first
//! and read on its own, so only the odd one is lost; a field named twice counts once more (the
//! last one wins, as in JavaScript, and as the event's own fields and `context` are read).

use std::borrow::Cow;
use std::fmt;

use serde::Deserializer as _;
use serde::de::{DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

/// The values of the fields named `names` in an object, as raw JSON text, by position in
/// `names`. Used as a seed for a nested value (`map.next_value_seed(...)`), a value that is not
/// an object reads as `None`, instead of failing the object around it.
pub(super) struct NamedFields<const N: usize>(pub [&'static str; N]);

impl<'de, const N: usize> DeserializeSeed<'de> for NamedFields<N> {
    type Value = Option<[Option<&'de RawValue>; N]>;

    fn deserialize<D: serde::Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de, const N: usize> Visitor<'de> for NamedFields<N> {
    type Value = Option<[Option<&'de RawValue>; N]>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut found = [None; N];
        while let Some(key) = map.next_key::<Cow<'de, str>>()? {
            match self.0.iter().position(|name| *name == key) {
                Some(at) => found[at] = Some(map.next_value::<&'de RawValue>()?),
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(Some(found))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(None)
    }

    fn visit_str<E: serde::de::Error>(self, _: &str) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
}

/// A raw value read as a JSON value; `None` when it cannot be (see the module's comment).
pub(super) fn value_of(raw: Option<&RawValue>) -> Option<Value> {
    serde_json::from_str(raw?.get()).ok()
}

/// The object in `text`, every field that can be read as a JSON value, the last of a field named
/// twice; `None` when `text` is not a JSON object.
pub fn readable_fields(text: &str) -> Option<Map<String, Value>> {
    // Nearly every object reads whole, in one pass (a repeated name overwrites, as below);
    // only one that does not is read field by field.
    if let Ok(fields) = serde_json::from_str::<Map<String, Value>>(text) {
        return Some(fields);
    }
    struct Fields;
    impl<'de> Visitor<'de> for Fields {
        type Value = Map<String, Value>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut fields = Map::new();
            while let Some(key) = map.next_key::<String>()? {
                let raw = map.next_value::<&'de RawValue>()?;
                match serde_json::from_str::<Value>(raw.get()) {
                    Ok(value) => {
                        fields.insert(key, value);
                    }
                    // An earlier one of the same name would no longer be the last.
                    Err(_) => {
                        fields.remove(&key);
                    }
                }
            }
            Ok(fields)
        }
    }
    serde_json::Deserializer::from_str(text)
        .deserialize_map(Fields)
        .ok()
}

/// The names of the fields of the object in `text` (decoded, so `"\u0069p"` is `ip`); `None`
/// when `text` is not a JSON object.
pub(crate) fn field_names(text: &str) -> Option<Vec<String>> {
    struct Names;
    impl<'de> Visitor<'de> for Names {
        type Value = Vec<String>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut names = Vec::new();
            while let Some(key) = map.next_key::<String>()? {
                map.next_value::<IgnoredAny>()?;
                names.push(key);
            }
            Ok(names)
        }
    }
    serde_json::Deserializer::from_str(text)
        .deserialize_map(Names)
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fields named `names` of the object in `text`, as the seed reads them at top level.
    fn named_fields<'a, const N: usize>(
        text: &'a str,
        names: [&'static str; N],
    ) -> [Option<&'a RawValue>; N] {
        let mut deserializer = serde_json::Deserializer::from_str(text);
        NamedFields(names)
            .deserialize(&mut deserializer)
            .ok()
            .flatten()
            .unwrap_or([None; N])
    }

    /// Values JSON allows that `serde_json` cannot read into a `Value`.
    const ODD: [&str; 3] = ["1e400", r#""\ud800""#, "DEEP"];

    fn odd(value: &str) -> String {
        if value == "DEEP" {
            format!("{}1{}", "[".repeat(200), "]".repeat(200))
        } else {
            value.to_string()
        }
    }

    #[test]
    fn one_odd_value_costs_only_itself() {
        for value in ODD {
            let text = format!(r#"{{"a": 1, "odd": {}, "b": "x"}}"#, odd(value));
            assert!(
                serde_json::from_str::<Map<String, Value>>(&text).is_err(),
                "{value}"
            );
            let fields = readable_fields(&text).unwrap();
            assert_eq!(
                fields,
                serde_json::from_str::<Map<String, Value>>(r#"{"a": 1, "b": "x"}"#).unwrap(),
                "{value}"
            );
            let [a, odd_raw, b] = named_fields(&text, ["a", "odd", "b"]);
            assert_eq!(
                (value_of(a), value_of(b)),
                (Some(Value::from(1)), Some(Value::from("x")))
            );
            assert!(odd_raw.is_some() && value_of(odd_raw).is_none(), "{value}");
            assert_eq!(field_names(&text).unwrap(), ["a", "odd", "b"]);
        }
    }

    #[test]
    fn a_field_named_twice_is_its_last_value() {
        let text = r#"{"revenue": 1, "currency": "USD", "revenue": 2, "currency": 1e400}"#;
        let [revenue, currency] = named_fields(text, ["revenue", "currency"]);
        assert_eq!(value_of(revenue), Some(Value::from(2)));
        // The last `currency` cannot be read: there is none, not the earlier one.
        assert_eq!(value_of(currency), None);
        let fields = readable_fields(text).unwrap();
        assert_eq!(fields.get("revenue"), Some(&Value::from(2)));
        assert_eq!(fields.get("currency"), None);
    }

    #[test]
    fn a_value_that_is_not_an_object_has_no_fields() {
        assert!(named_fields("[1, 2]", ["a"])[0].is_none());
        assert!(named_fields("not json", ["a"])[0].is_none());
        assert_eq!(readable_fields("[1]"), None);
        assert_eq!(field_names("\"text\""), None);
    }
}
