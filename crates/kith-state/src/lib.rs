//! Kith's state store. Embedded default: one SQLite file (`state.db`) in WAL mode, so the CLI and a
//! running server can use it at the same time.

pub mod keys;

use std::path::Path;
use std::sync::Mutex;

use rusqlite::Connection;
use thiserror::Error;

pub use keys::{ApiKey, KeyScope, NewKey};

#[derive(Debug, Error)]
pub enum StateError {
    #[error("state store error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("cannot create the data directory {path}: {source}")]
    DataDir {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "no key with id `{0}` in this data directory; `kith key list` shows the ids (the whole key works too)"
    )]
    UnknownKey(String),
    #[error("an ingest key needs a source name (--source)")]
    MissingSource,
    #[error("the source name `{0}` is reserved for events Kith writes itself; choose another")]
    ReservedSource(String),
}

/// The state store. Safe to share across threads.
pub struct StateStore {
    conn: Mutex<Connection>,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS api_keys (
    id          TEXT PRIMARY KEY,
    hash        TEXT NOT NULL UNIQUE,
    scope       TEXT NOT NULL,
    source      TEXT,
    created_at  TEXT NOT NULL,
    revoked_at  TEXT
);
";

impl StateStore {
    /// Opens (or creates) `state.db` in the data directory.
    pub fn open(data_dir: &Path) -> Result<StateStore, StateError> {
        std::fs::create_dir_all(data_dir).map_err(|source| StateError::DataDir {
            path: data_dir.display().to_string(),
            source,
        })?;
        let conn = Connection::open(data_dir.join("state.db"))?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.execute_batch(SCHEMA)?;
        Ok(StateStore {
            conn: Mutex::new(conn),
        })
    }

    pub(crate) fn with_conn<R>(
        &self,
        f: impl FnOnce(&Connection) -> Result<R, StateError>,
    ) -> Result<R, StateError> {
        // A panic while holding the lock cannot leave SQLite inconsistent; keep going.
        let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        f(&conn)
    }
}
