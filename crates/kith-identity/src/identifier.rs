//! What an identifier is: a type and a normalised value.

use std::fmt;

use thiserror::Error;

use crate::normalize::MAX_IDENTIFIER_LEN;

/// The kinds of identifier Kith resolves. `External` covers `context.externalIds` types and the
/// identifier traits a workspace declares (e.g. `customer_number`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum IdType {
    UserId,
    Email,
    Phone,
    External(String),
    AnonymousId,
}

impl IdType {
    /// The name used in APIs, tables and `type:value` paths.
    pub fn name(&self) -> &str {
        match self {
            IdType::UserId => "user_id",
            IdType::Email => "email",
            IdType::Phone => "phone",
            IdType::External(name) => name,
            IdType::AnonymousId => "anonymous_id",
        }
    }

    /// Reads a type name; anything not built in is an external id type.
    pub fn from_name(name: &str) -> IdType {
        match name {
            "user_id" => IdType::UserId,
            "email" => IdType::Email,
            "phone" => IdType::Phone,
            "anonymous_id" => IdType::AnonymousId,
            other => IdType::External(other.to_string()),
        }
    }
}

/// A normalised identifier. Ordered by type first (user id strongest, anonymous id weakest), which
/// is the order the resolver considers a link's identifiers in.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Identifier {
    pub id_type: IdType,
    pub value: String,
}

/// A copy of a borrowed identifier, for maps that look up by reference and insert a key only
/// when it is missing (`hashbrown`'s `entry_ref`).
impl From<&Identifier> for Identifier {
    fn from(identifier: &Identifier) -> Identifier {
        identifier.clone()
    }
}

impl Identifier {
    pub fn new(id_type: IdType, value: impl Into<String>) -> Identifier {
        Identifier {
            id_type,
            value: value.into(),
        }
    }
}

impl fmt::Display for Identifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.id_type.name(), self.value)
    }
}

/// How much of a text a message about it shows: enough to recognise it, never a pasted
/// document.
const SHOWN_CHARS: usize = 80;

/// `text` as a message quotes it: whole up to 80 characters, else its first 80, `…` and its
/// length in bytes.
pub fn excerpt(text: &str) -> String {
    match text.char_indices().nth(SHOWN_CHARS) {
        Some((end, _)) => format!("{}… ({} bytes)", &text[..end], text.len()),
        None => text.to_string(),
    }
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum LookupParseError {
    #[error("expected `type:value` (e.g. `email:ana@example.com`), got `{0}`")]
    MissingColon(String),
    #[error("the identifier type is empty in `{0}`")]
    EmptyType(String),
    #[error("the identifier value is empty in `{0}`")]
    EmptyValue(String),
    /// No identifier is that long, so no profile holds it; the text is shown cut.
    #[error(
        "the identifier value in `{shown}` is {bytes} bytes long; identifiers are at most \
         {MAX_IDENTIFIER_LEN} bytes, so no profile holds it"
    )]
    TooLong { shown: String, bytes: usize },
}

/// A `type:value` lookup as written in `GET /v1/profiles/{type}:{value}` and `kith profile show`.
/// `profile_id` is accepted as a type besides the identifier types.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lookup {
    pub type_name: String,
    pub value: String,
}

impl Lookup {
    pub fn parse(text: &str) -> Result<Lookup, LookupParseError> {
        let Some((type_name, value)) = text.split_once(':') else {
            return Err(LookupParseError::MissingColon(excerpt(text)));
        };
        if type_name.trim().is_empty() {
            return Err(LookupParseError::EmptyType(excerpt(text)));
        }
        if value.is_empty() {
            return Err(LookupParseError::EmptyValue(excerpt(text)));
        }
        // Values only: an external id's type (`context.externalIds`) has no such limit.
        let bytes = value.trim().len();
        if bytes > MAX_IDENTIFIER_LEN {
            return Err(LookupParseError::TooLong {
                shown: excerpt(text),
                bytes,
            });
        }
        Ok(Lookup {
            type_name: type_name.trim().to_string(),
            value: value.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookups_split_at_the_first_colon_and_explain_what_is_wrong() {
        let lookup = Lookup::parse("user_id:abc:def").unwrap();
        assert_eq!(
            (lookup.type_name.as_str(), lookup.value.as_str()),
            ("user_id", "abc:def")
        );
        assert_eq!(
            Lookup::parse("ana@example.com"),
            Err(LookupParseError::MissingColon("ana@example.com".into()))
        );
        assert!(matches!(
            Lookup::parse(":x"),
            Err(LookupParseError::EmptyType(_))
        ));
        assert!(matches!(
            Lookup::parse("email:"),
            Err(LookupParseError::EmptyValue(_))
        ));
    }

    /// A pasted document is refused without being echoed whole: no identifier is that long.
    #[test]
    fn a_lookup_longer_than_any_identifier_is_refused_and_shown_cut() {
        let long = "é".repeat(3000);
        let err = Lookup::parse(&format!("email:{long}")).unwrap_err();
        let message = err.to_string();
        assert!(
            message.starts_with(&format!(
                "the identifier value in `email:{}…",
                "é".repeat(74)
            )),
            "{message}"
        );
        assert!(
            message.ends_with(
                "(6006 bytes)` is 6000 bytes long; identifiers are at most 256 bytes, so no \
                 profile holds it"
            ),
            "{message}"
        );
        assert!(message.len() < 300, "{message}");
        // A long type is a lookup (external id types have no limit); messages about it cut it.
        assert!(Lookup::parse(&format!("{}:x", "t".repeat(300))).is_ok());
        let err = Lookup::parse(&"n".repeat(5000)).unwrap_err();
        assert!(err.to_string().len() < 200, "{err}");
        // The longest identifier there can be is still a lookup.
        let longest = "a".repeat(MAX_IDENTIFIER_LEN);
        assert_eq!(
            Lookup::parse(&format!("user_id:{longest}")).unwrap().value,
            longest
        );
    }

    #[test]
    fn type_names_round_trip() {
        for name in [
            "user_id",
            "email",
            "phone",
            "anonymous_id",
            "customer_number",
        ] {
            assert_eq!(IdType::from_name(name).name(), name);
        }
        assert!(
            IdType::UserId < IdType::Email && IdType::External("x".into()) < IdType::AnonymousId
        );
    }
}
