//! What the typed columns, identity resolution and the client-address policy need from an
//! event's `context`, read in one pass over its text.
//!
//! Read by hand rather than derived: a derived reader fails as a whole when the client names a
//! field twice or gives `page` a type it should not have, and every typed field of the event
//! would be lost with it. Here a repeated field counts once more (the last one wins, as in
//! JavaScript), a part that is not an object is simply not read, and inside `page`, `library`
//! and `consent` each field is read on its own (see [`super::lenient`]).

use std::fmt;

use serde::Deserialize;
use serde::de::{IgnoredAny, MapAccess, Visitor};
use serde_json::Value;
use serde_json::value::RawValue;

use super::lenient::{NamedFields, value_of};
use crate::event::ContextIdentity;

#[derive(Default)]
pub(super) struct ContextView<'a> {
    /// Whether the client named `ip` (even as `null`).
    pub names_ip: bool,
    pub page: Option<PageView>,
    pub traits: Option<&'a RawValue>,
    pub library: Option<LibraryView>,
    pub external_ids: Option<&'a RawValue>,
    pub consent: Option<ConsentView<'a>>,
}

impl ContextView<'_> {
    /// The parts identity resolution reads, as the client's JSON text, each only when it is of
    /// the kind it should be (`traits` and the consent preferences objects, `externalIds` an
    /// array).
    pub(super) fn identity(&self) -> ContextIdentity {
        let text_of = |raw: Option<&RawValue>, open: char| {
            raw.map(|r| r.get().to_string())
                .filter(|text| text.starts_with(open))
        };
        ContextIdentity {
            traits: text_of(self.traits, '{'),
            external_ids: text_of(self.external_ids, '['),
            consent_preferences: text_of(
                self.consent.as_ref().and_then(|c| c.category_preferences),
                '{',
            ),
        }
    }
}

/// The identity parts of a `context` object's text, for events that did not come through the
/// parser just now (read back from the journal or the tables); nothing when it is not an object.
pub fn context_identity(text: &str) -> ContextIdentity {
    serde_json::from_str::<ContextView<'_>>(text)
        .map(|view| view.identity())
        .unwrap_or_default()
}

#[derive(Default)]
pub(super) struct ConsentView<'a> {
    pub category_preferences: Option<&'a RawValue>,
}

#[derive(Default)]
pub(super) struct PageView {
    pub url: Option<Value>,
    pub path: Option<Value>,
    pub referrer: Option<Value>,
}

#[derive(Default)]
pub(super) struct LibraryView {
    pub name: Option<Value>,
}

/// The fields of `context` something reads.
enum Field {
    Ip,
    Page,
    Traits,
    Library,
    ExternalIds,
    Consent,
    Other,
}

impl<'de> Deserialize<'de> for Field {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct FieldVisitor;
        impl Visitor<'_> for FieldVisitor {
            type Value = Field;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a field name")
            }
            fn visit_str<E: serde::de::Error>(self, name: &str) -> Result<Field, E> {
                Ok(match name {
                    "ip" => Field::Ip,
                    "page" => Field::Page,
                    "traits" => Field::Traits,
                    "library" => Field::Library,
                    "externalIds" => Field::ExternalIds,
                    "consent" => Field::Consent,
                    _ => Field::Other,
                })
            }
        }
        deserializer.deserialize_identifier(FieldVisitor)
    }
}

impl<'de> Deserialize<'de> for ContextView<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ContextVisitor;
        impl<'de> Visitor<'de> for ContextVisitor {
            type Value = ContextView<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a context object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut view = ContextView::default();
                while let Some(field) = map.next_key::<Field>()? {
                    match field {
                        Field::Ip => {
                            map.next_value::<IgnoredAny>()?;
                            view.names_ip = true;
                        }
                        Field::Page => {
                            view.page = map
                                .next_value_seed(NamedFields(["url", "path", "referrer"]))?
                                .map(|[url, path, referrer]| PageView {
                                    url: value_of(url),
                                    path: value_of(path),
                                    referrer: value_of(referrer),
                                });
                        }
                        Field::Traits => view.traits = Some(map.next_value()?),
                        Field::Library => {
                            view.library =
                                map.next_value_seed(NamedFields(["name"]))?.map(|[name]| {
                                    LibraryView {
                                        name: value_of(name),
                                    }
                                });
                        }
                        Field::ExternalIds => view.external_ids = Some(map.next_value()?),
                        Field::Consent => {
                            view.consent = map
                                .next_value_seed(NamedFields(["categoryPreferences"]))?
                                .map(|[preferences]| ConsentView {
                                    category_preferences: preferences,
                                });
                        }
                        Field::Other => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(view)
            }
        }
        deserializer.deserialize_map(ContextVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(text: &str) -> ContextView<'_> {
        serde_json::from_str(text).unwrap()
    }

    #[test]
    fn every_part_is_read_in_one_pass() {
        let view = read(
            r#"{"ip":null,"page":{"url":"https://t.mx/a","title":"A"},"traits":{"email":"a@t.mx"},
                "library":{"name":"analytics.js"},"externalIds":[{"id":"1"}],
                "consent":{"categoryPreferences":{"ads":false}},"locale":"es-MX"}"#,
        );
        assert!(view.names_ip);
        assert_eq!(view.page.unwrap().url, Some(Value::from("https://t.mx/a")));
        assert_eq!(view.traits.unwrap().get(), r#"{"email":"a@t.mx"}"#);
        assert_eq!(
            view.library.unwrap().name,
            Some(Value::from("analytics.js"))
        );
        assert_eq!(view.external_ids.unwrap().get(), r#"[{"id":"1"}]"#);
        let consent = view.consent.unwrap().category_preferences.unwrap();
        assert_eq!(consent.get(), r#"{"ads":false}"#);
        assert!(!read(r#"{"locale":"es-MX"}"#).names_ip);
    }

    #[test]
    fn a_repeated_field_or_a_part_that_is_not_an_object_costs_nothing_else() {
        let view = read(
            r#"{"ip":"1.1.1.1","ip":"2.2.2.2","page":"not an object","library":{"name":"x"},
                "consent":[1,{"a":2}],"page":{"path":"/b"},"library":7}"#,
        );
        assert!(view.names_ip);
        // The last `page` is an object; the last `library` is not.
        assert_eq!(view.page.unwrap().path, Some(Value::from("/b")));
        assert!(view.library.is_none());
        assert!(view.consent.is_none());
        let escaped = read(r#"{"\u0069p":1,"p\u0061ge":{"url":"u"}}"#);
        assert!(escaped.names_ip);
        assert_eq!(escaped.page.unwrap().url, Some(Value::from("u")));
    }
}
