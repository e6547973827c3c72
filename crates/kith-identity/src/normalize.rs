//! Turning raw identifier values into identities, or refusing them.
//!
//! A value that is not an identity must never merge anything: the classic failure of CDPs is a
//! `userId` of `"null"` or an email of `"test@test.com"` that swallows thousands of customers.

use std::collections::{HashMap, HashSet};

use phonenumber::country;
use thiserror::Error;

use crate::identifier::{IdType, Identifier};

/// Longer than any real identifier; longer values are refused rather than indexed.
pub const MAX_IDENTIFIER_LEN: usize = 256;

/// Values SDKs and forms send when they have no identity to send. Compared trimmed and
/// lower-cased; strings of only zeros (and separators) are refused too.
const PLACEHOLDERS: &[&str] = &[
    "null",
    "undefined",
    "anonymous",
    "guest",
    "0",
    "-1",
    "none",
    "nil",
    "nan",
    "n/a",
    "unknown",
    "[object object]",
];

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum NotAnIdentity {
    #[error("the value is empty")]
    Empty,
    #[error("`{0}` is a placeholder, not an identity")]
    Placeholder(String),
    #[error("`{0}` is on the workspace's block list")]
    Blocked(String),
    #[error("`{0}` is not an email address")]
    InvalidEmail(String),
    #[error("`{0}` is not a valid phone number")]
    InvalidPhone(String),
    #[error("the value is longer than {MAX_IDENTIFIER_LEN} bytes")]
    TooLong,
    #[error(
        "the value holds a control character (a line break, a tab, ...); an identifier is one line of text"
    )]
    ControlCharacter,
    #[error("`{0}` cannot name an external id type: {1}")]
    InvalidType(String, &'static str),
}

impl NotAnIdentity {
    /// A short reason for metrics labels.
    pub fn code(&self) -> &'static str {
        match self {
            NotAnIdentity::Empty => "empty",
            NotAnIdentity::Placeholder(_) => "placeholder",
            NotAnIdentity::Blocked(_) => "blocked",
            NotAnIdentity::InvalidEmail(_) => "invalid_email",
            NotAnIdentity::InvalidPhone(_) => "invalid_phone",
            NotAnIdentity::TooLong => "too_long",
            NotAnIdentity::ControlCharacter => "control_character",
            NotAnIdentity::InvalidType(..) => "invalid_type",
        }
    }
}

/// Why `name` cannot name an external id type (`context.externalIds[].type`, `[identity]
/// identifier_traits`), if it cannot: identifiers are stored as `type:value`, so a `:` in the
/// type would move part of it into the value, and a built-in type's name would make it that type.
pub fn why_not_an_external_type(name: &str) -> Option<&'static str> {
    if name.contains(':') {
        Some("it holds a `:`, which separates an identifier's type from its value")
    } else if name.chars().any(char::is_control) {
        Some("it holds a control character")
    } else if !matches!(IdType::from_name(name), IdType::External(_)) {
        Some(
            "it is a built-in type's name; send the id as `userId`, `anonymousId`, an email or a phone",
        )
    } else {
        None
    }
}

fn check_external_type(name: &str) -> Result<(), NotAnIdentity> {
    match why_not_an_external_type(name) {
        Some(why) => Err(NotAnIdentity::InvalidType(name.to_string(), why)),
        None => Ok(()),
    }
}

#[derive(Debug, Error)]
#[error("`{0}` is not an ISO 3166 country code (e.g. MX, US, BR)")]
pub struct UnknownRegion(pub String);

/// Normalisation settings: the region phone numbers without a country code belong to, and the
/// workspace's own block list (compared trimmed and lower-cased, after normalisation too).
#[derive(Debug, Clone)]
pub struct Normalizer {
    region: country::Id,
    blocked: HashSet<String>,
}

impl Normalizer {
    pub fn new(
        default_region: &str,
        blocked: impl IntoIterator<Item = String>,
    ) -> Result<Normalizer, UnknownRegion> {
        let region = default_region
            .trim()
            .to_ascii_uppercase()
            .parse::<country::Id>()
            .map_err(|_| UnknownRegion(default_region.to_string()))?;
        Ok(Normalizer {
            region,
            blocked: blocked
                .into_iter()
                .map(|v| v.trim().to_lowercase())
                .collect(),
        })
    }

    pub fn normalize(&self, id_type: IdType, raw: &str) -> Result<Identifier, NotAnIdentity> {
        if let IdType::External(name) = &id_type {
            check_external_type(name)?;
        }
        let trimmed = raw.trim();
        if trimmed.is_empty() {
            return Err(NotAnIdentity::Empty);
        }
        if trimmed.len() > MAX_IDENTIFIER_LEN {
            return Err(NotAnIdentity::TooLong);
        }
        // Identifiers are stored as `type:value` lines: a line break inside one would be read
        // back as identifiers nobody sent.
        if trimmed.chars().any(char::is_control) {
            return Err(NotAnIdentity::ControlCharacter);
        }
        if PLACEHOLDERS.iter().any(|p| p.eq_ignore_ascii_case(trimmed))
            || is_all_zeros(trimmed)
            || is_placeholder_number(trimmed)
        {
            return Err(NotAnIdentity::Placeholder(trimmed.to_string()));
        }
        let value = match id_type {
            IdType::Email => normalize_email(&trimmed.to_lowercase())?,
            IdType::Phone => self.normalize_phone(trimmed)?,
            // Ids are case-sensitive in Segment's model: keep them exact, minus stray whitespace.
            IdType::UserId | IdType::AnonymousId | IdType::External(_) => trimmed.to_string(),
        };
        if !self.blocked.is_empty()
            && (self.blocked.contains(&trimmed.to_lowercase())
                || self.blocked.contains(&value.to_lowercase()))
        {
            return Err(NotAnIdentity::Blocked(trimmed.to_string()));
        }
        Ok(Identifier::new(id_type, value))
    }

    fn normalize_phone(&self, raw: &str) -> Result<String, NotAnIdentity> {
        // libphonenumber's rules run regular expressions: far slower than the rest of an event's
        // handling. The same customers' numbers come back again and again, so each thread
        // remembers the last few thousand answers.
        thread_local! {
            static RECENT: std::cell::RefCell<HashMap<(String, country::Id), Result<String, NotAnIdentity>>> =
                std::cell::RefCell::new(HashMap::new());
        }
        const REMEMBERED: usize = 4096;
        let key = (raw.to_string(), self.region);
        if let Some(known) = RECENT.with(|r| r.borrow().get(&key).cloned()) {
            return known;
        }
        let answer = self.parse_phone(raw);
        RECENT.with(|r| {
            let mut recent = r.borrow_mut();
            if recent.len() >= REMEMBERED {
                recent.clear();
            }
            recent.insert(key, answer.clone());
        });
        answer
    }

    fn parse_phone(&self, raw: &str) -> Result<String, NotAnIdentity> {
        let invalid = || NotAnIdentity::InvalidPhone(raw.to_string());
        let cleaned = strip_legacy_mexican_prefixes(raw, self.region == country::Id::MX);
        let number = phonenumber::parse(Some(self.region), &cleaned).map_err(|_| invalid())?;
        if !phonenumber::is_valid(&number) {
            return Err(invalid());
        }
        Ok(number.format().mode(phonenumber::Mode::E164).to_string())
    }
}

/// A number written another way than `0` or `-1` is the same placeholder: an id sent as a JSON
/// number is kept as the text the client wrote (`-1.0`, `0e0`, `-1E0`). Infinities are no one.
fn is_placeholder_number(value: &str) -> bool {
    value
        .parse::<f64>()
        .is_ok_and(|number| number == 0.0 || number == -1.0 || !number.is_finite())
}

fn is_all_zeros(value: &str) -> bool {
    value.chars().any(|c| c == '0')
        && value
            .chars()
            .all(|c| c == '0' || c == '-' || c == '.' || c == ' ' || c == '_')
}

fn normalize_email(lowered: &str) -> Result<String, NotAnIdentity> {
    let invalid = || NotAnIdentity::InvalidEmail(lowered.to_string());
    let (local, domain) = lowered.split_once('@').ok_or_else(invalid)?;
    let plausible = !local.is_empty()
        && !domain.contains('@')
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !lowered.chars().any(char::is_whitespace);
    if !plausible {
        return Err(invalid());
    }
    Ok(lowered.to_string())
}

/// Mexico dropped its dialling prefixes in 2019, but CRMs and forms still hold numbers written with
/// them: `044`/`045` (mobile) or `01` (long distance) before the ten digits, and `+52 1` before a
/// mobile number. libphonenumber's current metadata no longer strips them, so we do.
fn strip_legacy_mexican_prefixes(raw: &str, region_is_mexico: bool) -> String {
    // An extension (`x12`, `ext. 104`, `#3`) is not part of the number the prefixes are judged
    // on: it is set aside and handed on with the number, for the phone library to read.
    let (number, extension) = split_extension(raw);
    let stripped = strip_prefixes(number, region_is_mexico);
    format!("{stripped}{extension}")
}

/// `raw` split where an extension starts (`x`, `ext`, `#` after seven digits or more), or whole.
fn split_extension(raw: &str) -> (&str, &str) {
    let lower = raw.to_ascii_lowercase();
    for (at, _) in lower.char_indices() {
        let rest = &lower[at..];
        if (rest.starts_with("ext") || rest.starts_with('x') || rest.starts_with('#'))
            && raw[..at].chars().filter(char::is_ascii_digit).count() >= 7
        {
            return (&raw[..at], &raw[at..]);
        }
    }
    (raw, "")
}

fn strip_prefixes(raw: &str, region_is_mexico: bool) -> String {
    let digits: String = raw.chars().filter(char::is_ascii_digit).collect();
    let international = raw.trim_start().starts_with('+') || digits.starts_with("00");
    let digits_after_00 = digits.strip_prefix("00").unwrap_or(&digits);
    if international {
        let body = if raw.trim_start().starts_with('+') {
            digits.as_str()
        } else {
            digits_after_00
        };
        if let Some(national) = body.strip_prefix("521")
            && national.len() == 10
        {
            return format!("+52{national}");
        }
        return raw.to_string();
    }
    if region_is_mexico {
        for prefix in ["044", "045"] {
            if let Some(national) = digits.strip_prefix(prefix)
                && national.len() == 10
            {
                return national.to_string();
            }
        }
        if let Some(national) = digits.strip_prefix("01")
            && national.len() == 10
        {
            return national.to_string();
        }
    }
    raw.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mx() -> Normalizer {
        Normalizer::new("MX", ["test@test.com".to_string()]).unwrap()
    }

    fn phone(raw: &str) -> Result<String, NotAnIdentity> {
        mx().normalize(IdType::Phone, raw).map(|id| id.value)
    }

    #[test]
    fn mexican_numbers_written_every_common_way_are_one_identity() {
        let expected = Ok("+525512345678".to_string());
        for raw in [
            "55 1234 5678",
            "5512345678",
            "+52 55 1234 5678",
            "+52 1 55 1234 5678",
            "0052 55 1234 5678",
            "044 55 1234 5678",
            "045 55 1234 5678",
            "01 55 1234 5678",
            "(55) 1234-5678",
            // With an extension, after the old mobile prefix too: the number is the same.
            "+52 1 55 1234 5678 x12",
            "+52 1 (55) 1234-5678 ext 12",
            "044 55 1234 5678 ext. 104",
            "55 1234 5678 #3",
        ] {
            assert_eq!(phone(raw), expected, "{raw}");
        }
        assert_eq!(phone("+1 415 555 2671"), Ok("+14155552671".into()));
    }

    #[test]
    fn numbers_that_cannot_be_phones_are_refused() {
        for raw in ["12", "abc", "+52 55", "555"] {
            assert!(
                matches!(phone(raw), Err(NotAnIdentity::InvalidPhone(_))),
                "{raw}"
            );
        }
    }

    #[test]
    fn emails_are_trimmed_and_lowercased_and_checked() {
        let n = mx();
        assert_eq!(
            n.normalize(IdType::Email, "  Ana.Garcia@Example.COM ")
                .unwrap()
                .value,
            "ana.garcia@example.com"
        );
        for bad in [
            "ana",
            "ana@",
            "@example.com",
            "ana@example",
            "a b@example.com",
            "a@b@c.com",
        ] {
            assert!(
                matches!(
                    n.normalize(IdType::Email, bad),
                    Err(NotAnIdentity::InvalidEmail(_))
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn placeholders_zeros_and_blocked_values_are_never_identities() {
        let n = mx();
        for junk in [
            "null",
            "NULL",
            " undefined ",
            "anonymous",
            "Guest",
            "0",
            "-1",
            "",
            "   ",
            "0000",
            "00000000-0000-0000-0000-000000000000",
            "[object Object]",
            "-1.0",
            "0e0",
            "-1E0",
            "-0.0e5",
            "Infinity",
            "-inf",
        ] {
            assert!(n.normalize(IdType::UserId, junk).is_err(), "{junk:?}");
            assert!(n.normalize(IdType::AnonymousId, junk).is_err(), "{junk:?}");
        }
        assert!(matches!(
            n.normalize(IdType::Email, "TEST@test.com"),
            Err(NotAnIdentity::Blocked(_))
        ));
        assert!(matches!(
            n.normalize(IdType::UserId, &"x".repeat(300)),
            Err(NotAnIdentity::TooLong)
        ));
        // Real ids keep their case and survive.
        assert_eq!(
            n.normalize(IdType::UserId, " U-100 ").unwrap().value,
            "U-100"
        );
        assert_eq!(n.normalize(IdType::UserId, "10").unwrap().value, "10");
    }

    #[test]
    fn an_unknown_region_is_a_clear_error() {
        let err = Normalizer::new("Mexico", Vec::new()).unwrap_err();
        assert!(err.to_string().contains("ISO 3166"), "{err}");
        assert!(Normalizer::new("br", Vec::new()).is_ok());
    }
}

#[cfg(test)]
mod fuzz {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(3000))]

        #[test]
        fn arbitrary_values_never_panic(
            raw in "\\PC{0,40}|[+0-9 ()-]{0,30}",
            kind in 0usize..4,
        ) {
            let normalizer = Normalizer::new("MX", Vec::new()).unwrap();
            let id_type = [IdType::UserId, IdType::Email, IdType::Phone, IdType::External("crm".into())][kind].clone();
            let _ = normalizer.normalize(id_type, &raw);
        }
    }
}

/// Spanish and Portuguese accents folded to their base letter (lower case in, lower case out),
/// so names and column headers match however they were typed: `López` and `Lopez`,
/// `Teléfono` and `Telefono`.
pub fn fold_accent(c: char) -> char {
    match c {
        'á' | 'à' | 'â' | 'ã' | 'ä' => 'a',
        'é' | 'è' | 'ê' | 'ë' => 'e',
        'í' | 'ì' | 'î' | 'ï' => 'i',
        'ó' | 'ò' | 'ô' | 'õ' | 'ö' => 'o',
        'ú' | 'ù' | 'û' | 'ü' => 'u',
        'ñ' => 'n',
        'ç' => 'c',
        other => other,
    }
}
