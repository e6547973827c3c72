//! API keys. A key is shown once, at creation; only its SHA-256 is stored. Keys are long random
//! tokens, so a fast hash is enough (no password stretching needed).

use chrono::{DateTime, Utc};
use rand::RngCore;
use rusqlite::{OptionalExtension, params};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::{StateError, StateStore};

/// What a key may do. Admin implies read; read does not imply ingest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyScope {
    /// A Segment "write key" bound to a source: may only send events.
    Ingest,
    /// May query.
    Read,
    /// May query and manage.
    Admin,
}

impl KeyScope {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyScope::Ingest => "ingest",
            KeyScope::Read => "read",
            KeyScope::Admin => "admin",
        }
    }

    pub fn parse(text: &str) -> Option<KeyScope> {
        match text {
            "ingest" => Some(KeyScope::Ingest),
            "read" => Some(KeyScope::Read),
            "admin" => Some(KeyScope::Admin),
            _ => None,
        }
    }

    /// The scope with its article, for messages: "a read", "an ingest", "an admin".
    pub fn with_article(self) -> &'static str {
        match self {
            KeyScope::Ingest => "an ingest",
            KeyScope::Read => "a read",
            KeyScope::Admin => "an admin",
        }
    }

    /// Whether a key of this scope may do what `required` allows.
    pub fn allows(self, required: KeyScope) -> bool {
        match required {
            KeyScope::Ingest => self == KeyScope::Ingest,
            KeyScope::Read => matches!(self, KeyScope::Read | KeyScope::Admin),
            KeyScope::Admin => self == KeyScope::Admin,
        }
    }
}

/// A stored key, without its secret.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ApiKey {
    pub id: String,
    pub scope: KeyScope,
    pub source: Option<String>,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// A key just created: the only time its secret exists outside the holder's hands.
#[derive(Debug, Clone)]
pub struct NewKey {
    pub key: ApiKey,
    pub secret: String,
}

/// What a presented secret turned out to be.
/// A key after [`StateStore::revoke_key`].
#[derive(Debug, Clone, PartialEq)]
pub struct Revocation {
    pub key: ApiKey,
    /// It was revoked before this call (`key.revoked_at` says when).
    pub already: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub enum KeyCheck {
    Valid(ApiKey),
    Revoked(ApiKey),
    Unknown,
}

fn hash_secret(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

fn parse_time(text: String) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(&text)
        .map(|t| t.with_timezone(&Utc))
        .unwrap_or_default()
}

/// The source of events Kith writes itself (manual merges); no key may claim it.
pub const RESERVED_SOURCE: &str = "kith";

/// The longest source name: it is stored with every event its key sends, and shown in
/// `kith key list`.
pub const MOST_SOURCE_CHARS: usize = 100;

/// Refuses a source name no one means: Kith's own, one that would weigh on every event, or one
/// that would break the lines of `kith key list` and the terminals that show it. Keys' sources
/// and imports' `--source` are held to it alike.
pub fn check_source_name(source: &str) -> Result<(), StateError> {
    if source.eq_ignore_ascii_case(RESERVED_SOURCE) {
        return Err(StateError::ReservedSource(source.to_string()));
    }
    let length = source.chars().count();
    if length > MOST_SOURCE_CHARS {
        return Err(StateError::SourceTooLong(length));
    }
    match source
        .chars()
        .position(|c| c.is_control() || is_invisible_or_a_line_break(c))
    {
        Some(at) => Err(StateError::SourceWithControl(at + 1)),
        None => Ok(()),
    }
}

/// Characters that show as nothing, turn the text around them, or break its line, without
/// being control characters: `kith` with a zero-width space after it shows as Kith's own
/// source, and a right-to-left override reorders the lines of `kith key list`. Unicode's
/// format characters (Cf), line and paragraph separators, variation selectors, Hangul fillers
/// and tags.
fn is_invisible_or_a_line_break(c: char) -> bool {
    matches!(
        c,
        '\u{00AD}'
            | '\u{034F}'
            | '\u{0600}'..='\u{0605}'
            | '\u{061C}'
            | '\u{06DD}'
            | '\u{070F}'
            | '\u{115F}'..='\u{1160}'
            | '\u{17B4}'..='\u{17B5}'
            | '\u{180B}'..='\u{180F}'
            | '\u{200B}'..='\u{200F}'
            | '\u{2028}'..='\u{202E}'
            | '\u{2060}'..='\u{206F}'
            | '\u{3164}'
            | '\u{FE00}'..='\u{FE0F}'
            | '\u{FEFF}'
            | '\u{FFA0}'
            | '\u{FFF9}'..='\u{FFFB}'
            | '\u{110BD}'
            | '\u{110CD}'
            | '\u{13430}'..='\u{1343F}'
            | '\u{1BCA0}'..='\u{1BCA3}'
            | '\u{1D173}'..='\u{1D17A}'
            | '\u{E0000}'..='\u{E0FFF}'
    )
}

impl StateStore {
    /// Creates a key. Ingest keys must name their source.
    pub fn create_key(&self, scope: KeyScope, source: Option<&str>) -> Result<NewKey, StateError> {
        let source = source.map(str::trim).filter(|s| !s.is_empty());
        if scope == KeyScope::Ingest && source.is_none() {
            return Err(StateError::MissingSource);
        }
        if let Some(source) = source {
            check_source_name(source)?;
        }
        let mut random = [0u8; 20];
        rand::rng().fill_bytes(&mut random);
        let token = hex::encode(random);
        let secret = format!("kith_{}_{token}", scope.as_str());
        let id = token[..10].to_string();
        let created_at = Utc::now();
        self.with_conn(|conn| {
            conn.execute(
                "INSERT INTO api_keys (id, hash, scope, source, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![id, hash_secret(&secret), scope.as_str(), source, created_at.to_rfc3339()],
            )?;
            Ok(())
        })?;
        Ok(NewKey {
            key: ApiKey {
                id,
                scope,
                source: source.map(str::to_string),
                created_at,
                revoked_at: None,
            },
            secret,
        })
    }

    pub fn list_keys(&self) -> Result<Vec<ApiKey>, StateError> {
        self.with_conn(|conn| {
            let mut statement = conn.prepare(
                "SELECT id, scope, source, created_at, revoked_at FROM api_keys ORDER BY created_at, id",
            )?;
            let rows = statement.query_map([], row_to_key)?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }

    /// Revokes the key with id `id` (as `kith key list` shows it), or the key `id` itself when
    /// the whole secret is given. Revoking twice is harmless: the first time is kept.
    pub fn revoke_key(&self, id: &str) -> Result<Revocation, StateError> {
        let id = match self.check_key(id)? {
            KeyCheck::Valid(key) | KeyCheck::Revoked(key) => key.id,
            KeyCheck::Unknown => id.to_string(),
        };
        let id = id.as_str();
        self.with_conn(|conn| {
            let changed = conn.execute(
                "UPDATE api_keys SET revoked_at = ?2 WHERE id = ?1 AND revoked_at IS NULL",
                params![id, Utc::now().to_rfc3339()],
            )?;
            let key = conn
                .query_row(
                    "SELECT id, scope, source, created_at, revoked_at FROM api_keys WHERE id = ?1",
                    params![id],
                    row_to_key,
                )
                .optional()?
                .ok_or_else(|| StateError::UnknownKey(id.to_string()))?;
            Ok(Revocation {
                key,
                already: changed == 0,
            })
        })
    }

    /// Looks up a presented secret.
    pub fn check_key(&self, secret: &str) -> Result<KeyCheck, StateError> {
        let hash = hash_secret(secret);
        self.with_conn(|conn| {
            let key = conn
                .query_row(
                    "SELECT id, scope, source, created_at, revoked_at FROM api_keys WHERE hash = ?1",
                    params![hash],
                    row_to_key,
                )
                .optional()?;
            Ok(match key {
                None => KeyCheck::Unknown,
                Some(key) if key.revoked_at.is_some() => KeyCheck::Revoked(key),
                Some(key) => KeyCheck::Valid(key),
            })
        })
    }
}

fn row_to_key(row: &rusqlite::Row<'_>) -> rusqlite::Result<ApiKey> {
    let scope: String = row.get(1)?;
    Ok(ApiKey {
        id: row.get(0)?,
        scope: KeyScope::parse(&scope).unwrap_or(KeyScope::Read),
        source: row.get(2)?,
        created_at: parse_time(row.get(3)?),
        revoked_at: row.get::<_, Option<String>>(4)?.map(parse_time),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    // A source is stored with every event its key sends and shown by `kith key list`: a name
    // of 100,000 characters, or one with a line break or a terminal escape, is refused.
    #[test]
    fn a_source_name_is_short_and_printable() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open(dir.path()).unwrap();
        assert!(matches!(
            store.create_key(KeyScope::Ingest, Some(&"a".repeat(101))),
            Err(StateError::SourceTooLong(101))
        ));
        assert!(matches!(
            store.create_key(KeyScope::Ingest, Some("we\nb\u{1b}[31m")),
            Err(StateError::SourceWithControl(3))
        ));
        // Characters that show as nothing, turn the line or break it.
        for (name, at) in [
            ("kith\u{200B}", 5),
            ("a\u{2028}b", 2),
            ("a\u{2029}b", 2),
            ("a\u{202E}b", 2),
            ("\u{FEFF}web", 1),
            ("w\u{00AD}eb", 2),
            ("kith\u{E0020}", 5),
            ("web\u{3164}", 4),
            ("we\u{FE0F}b", 3),
        ] {
            assert!(
                matches!(
                    store.create_key(KeyScope::Ingest, Some(name)),
                    Err(StateError::SourceWithControl(found)) if found == at
                ),
                "{name:?}"
            );
        }
        let longest = "ñ".repeat(MOST_SOURCE_CHARS);
        let named = store.create_key(KeyScope::Ingest, Some(&longest)).unwrap();
        assert_eq!(named.key.source.as_deref(), Some(longest.as_str()));
        store
            .create_key(KeyScope::Ingest, Some("tienda móvil / ios"))
            .unwrap();
        assert_eq!(store.list_keys().unwrap().len(), 2);
    }

    #[test]
    fn keys_are_created_checked_listed_and_revoked() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open(dir.path()).unwrap();
        let ingest = store.create_key(KeyScope::Ingest, Some("web")).unwrap();
        assert!(ingest.secret.starts_with("kith_ingest_"));
        assert!(matches!(
            store.create_key(KeyScope::Ingest, None),
            Err(StateError::MissingSource)
        ));
        assert!(matches!(
            store.create_key(KeyScope::Ingest, Some(" Kith ")),
            Err(StateError::ReservedSource(name)) if name == "Kith"
        ));
        let read = store.create_key(KeyScope::Read, None).unwrap();

        // A second handle, as the CLI would open while the server runs.
        let other = StateStore::open(dir.path()).unwrap();
        assert_eq!(
            other.check_key(&ingest.secret).unwrap(),
            KeyCheck::Valid(ingest.key.clone())
        );
        assert_eq!(
            other.check_key("kith_ingest_nope").unwrap(),
            KeyCheck::Unknown
        );
        assert_eq!(other.list_keys().unwrap().len(), 2);

        let revoked = other.revoke_key(&ingest.key.id).unwrap();
        assert!(revoked.key.revoked_at.is_some() && !revoked.already);
        let again = other.revoke_key(&ingest.key.id).unwrap();
        assert_eq!(
            (again.already, again.key.revoked_at),
            (true, revoked.key.revoked_at)
        );
        assert!(matches!(
            store.check_key(&ingest.secret).unwrap(),
            KeyCheck::Revoked(_)
        ));
        assert!(matches!(
            store.check_key(&read.secret).unwrap(),
            KeyCheck::Valid(_)
        ));
        assert!(matches!(
            store.revoke_key("missing"),
            Err(StateError::UnknownKey(_))
        ));
        // The whole key revokes it too, as its id does.
        let another = store.create_key(KeyScope::Read, None).unwrap();
        assert_eq!(
            store.revoke_key(&another.secret).unwrap().key.id,
            another.key.id
        );
        assert!(matches!(
            store.check_key(&another.secret).unwrap(),
            KeyCheck::Revoked(_)
        ));
        assert!(!stored_file_contains(dir.path(), &read.secret));
    }

    fn stored_file_contains(dir: &std::path::Path, needle: &str) -> bool {
        let bytes = std::fs::read(dir.join("state.db")).unwrap_or_default();
        let wal = std::fs::read(dir.join("state.db-wal")).unwrap_or_default();
        [bytes, wal]
            .iter()
            .any(|b| b.windows(needle.len()).any(|w| w == needle.as_bytes()))
    }

    #[test]
    fn scopes_allow_what_they_should() {
        assert!(KeyScope::Admin.allows(KeyScope::Read));
        assert!(KeyScope::Read.allows(KeyScope::Read));
        assert!(!KeyScope::Read.allows(KeyScope::Admin));
        assert!(!KeyScope::Ingest.allows(KeyScope::Read));
        assert!(!KeyScope::Admin.allows(KeyScope::Ingest));
    }
}
