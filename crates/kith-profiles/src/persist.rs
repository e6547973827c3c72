//! `profiles.db`: what the in-memory profile state is rebuilt from after a restart.
//!
//! Only inputs are stored (identifiers with their first sighting, links, per-identifier facts,
//! trait history); the grouping is recomputed from them, which is exact because the resolver's
//! result does not depend on order. `applied_seq` is written in the same transaction, so a restart
//! replays exactly the journal records after it.

use std::path::Path;

use kith_identity::{IdType, Identifier, Observation, ObservationKey};
use rusqlite::{Connection, OptionalExtension, params};

use crate::ProfileError;
use crate::computed::ComputedTraitDef;
use crate::facts::{IdentifierFacts, TraitChange};

pub const DB_FILE: &str = "profiles.db";

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS identifiers (
    id_type TEXT NOT NULL, value TEXT NOT NULL,
    first_time INTEGER NOT NULL, first_message TEXT NOT NULL,
    PRIMARY KEY (id_type, value)
);
CREATE TABLE IF NOT EXISTS links (
    identifiers TEXT PRIMARY KEY,
    time INTEGER NOT NULL, message_id TEXT NOT NULL, explicit INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS identifier_facts (
    id_type TEXT NOT NULL, value TEXT NOT NULL, facts TEXT NOT NULL,
    PRIMARY KEY (id_type, value)
);
CREATE TABLE IF NOT EXISTS trait_history (
    id_type TEXT NOT NULL, value TEXT NOT NULL, trait TEXT NOT NULL, json TEXT NOT NULL,
    time INTEGER NOT NULL, message_id TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS trait_history_by_identifier ON trait_history (id_type, value);
CREATE TABLE IF NOT EXISTS computed_defs (name TEXT PRIMARY KEY, definition TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS api_computed_defs (
    name TEXT PRIMARY KEY, definition TEXT NOT NULL, declared_at TEXT NOT NULL
);
";

/// Computed traits declared through the API, in declaration order.
pub fn load_api_defs(conn: &Connection) -> Result<Vec<ComputedTraitDef>, ProfileError> {
    let mut statement =
        conn.prepare("SELECT name, definition FROM api_computed_defs ORDER BY declared_at, name")?;
    let rows = statement
        .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?
        .collect::<Result<Vec<_>, _>>()?;
    let mut defs = Vec::with_capacity(rows.len());
    for (name, json) in rows {
        defs.push(serde_json::from_str(&json).map_err(|e| {
            ProfileError::Corrupt(format!("declared trait `{name}` does not parse: {e}"))
        })?);
    }
    Ok(defs)
}

pub fn insert_api_def(conn: &Connection, def: &ComputedTraitDef) -> Result<(), ProfileError> {
    let json = serde_json::to_string(def).map_err(|e| ProfileError::Corrupt(e.to_string()))?;
    conn.execute(
        "INSERT INTO api_computed_defs (name, definition, declared_at) VALUES (?1, ?2, ?3)",
        params![def.name, json, chrono::Utc::now().to_rfc3339()],
    )?;
    Ok(())
}

pub fn delete_api_def(conn: &Connection, name: &str) -> Result<(), ProfileError> {
    conn.execute(
        "DELETE FROM api_computed_defs WHERE name = ?1",
        params![name],
    )?;
    Ok(())
}

/// Changes since the last write.
#[derive(Debug, Default)]
pub struct Pending {
    pub identifiers: Vec<(Identifier, ObservationKey)>,
    pub links: Vec<Observation>,
    pub facts: Vec<(Identifier, IdentifierFacts)>,
    pub history: Vec<(Identifier, TraitChange)>,
    pub applied_seq: u64,
    /// The computed-trait definitions the stored states now follow (written once they do).
    pub computed_defs: Option<Vec<ComputedTraitDef>>,
}

impl Pending {
    pub fn is_empty(&self) -> bool {
        self.identifiers.is_empty()
            && self.links.is_empty()
            && self.facts.is_empty()
            && self.history.is_empty()
            && self.computed_defs.is_none()
    }
}

pub fn open(data_dir: &Path) -> Result<Connection, ProfileError> {
    std::fs::create_dir_all(data_dir)
        .map_err(|e| ProfileError::Io(data_dir.display().to_string(), e))?;
    let conn = Connection::open(data_dir.join(DB_FILE))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    // FULL: each commit is on disk when it returns (an fsync of the WAL, about once a second).
    // Journal segments are retired once `profiles.db` holds their events; with NORMAL a power
    // cut could take back commits whose events the journal no longer had.
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    conn.execute_batch(SCHEMA)?;
    Ok(conn)
}

/// An empty store in memory, for a reader of a data directory that has no `profiles.db` yet:
/// a reader creates no files.
pub fn open_empty() -> Result<Connection, ProfileError> {
    let conn = Connection::open_in_memory()?;
    conn.execute_batch(SCHEMA)?;
    Ok(conn)
}

/// Link identity as stored: the identifiers, sorted, as `type:value` joined by newlines.
fn link_text(identifiers: &[Identifier]) -> String {
    let mut parts: Vec<String> = identifiers.iter().map(|i| i.to_string()).collect();
    parts.sort();
    parts.join("\n")
}

fn parse_identifier(text: &str) -> Option<Identifier> {
    let (id_type, value) = text.split_once(':')?;
    Some(Identifier::new(IdType::from_name(id_type), value))
}

pub fn write(conn: &mut Connection, pending: &Pending) -> Result<(), ProfileError> {
    let tx = conn.transaction()?;
    {
        let mut identifiers = tx.prepare_cached(
            "INSERT INTO identifiers (id_type, value, first_time, first_message) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (id_type, value) DO UPDATE SET first_time = excluded.first_time,
                 first_message = excluded.first_message
             WHERE (excluded.first_time, excluded.first_message) < (first_time, first_message)",
        )?;
        for (identifier, key) in &pending.identifiers {
            identifiers.execute(params![
                identifier.id_type.name(),
                identifier.value,
                key.time_micros,
                key.message_id
            ])?;
        }
        let mut links = tx.prepare_cached(
            "INSERT INTO links (identifiers, time, message_id, explicit) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (identifiers) DO UPDATE SET time = excluded.time,
                 message_id = excluded.message_id, explicit = excluded.explicit
             WHERE (excluded.time, excluded.message_id) < (time, message_id)",
        )?;
        for link in &pending.links {
            links.execute(params![
                link_text(&link.identifiers),
                link.key.time_micros,
                link.key.message_id,
                link.explicit_merge
            ])?;
        }
        let mut facts = tx.prepare_cached(
            "INSERT INTO identifier_facts (id_type, value, facts) VALUES (?1, ?2, ?3)
             ON CONFLICT (id_type, value) DO UPDATE SET facts = excluded.facts",
        )?;
        for (identifier, identifier_facts) in &pending.facts {
            let json = serde_json::to_string(identifier_facts)
                .map_err(|e| ProfileError::Corrupt(e.to_string()))?;
            facts.execute(params![identifier.id_type.name(), identifier.value, json])?;
        }
        let mut history = tx.prepare_cached(
            "INSERT INTO trait_history (id_type, value, trait, json, time, message_id)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?;
        for (identifier, change) in &pending.history {
            history.execute(params![
                identifier.id_type.name(),
                identifier.value,
                change.name,
                change.value.json,
                change.value.time_micros,
                change.value.message_id
            ])?;
        }
        if let Some(defs) = &pending.computed_defs {
            tx.execute("DELETE FROM computed_defs", [])?;
            let mut insert =
                tx.prepare_cached("INSERT INTO computed_defs (name, definition) VALUES (?1, ?2)")?;
            for def in defs {
                let json =
                    serde_json::to_string(def).map_err(|e| ProfileError::Corrupt(e.to_string()))?;
                insert.execute(params![def.name, json])?;
            }
        }
        tx.execute(
            "INSERT INTO meta (key, value) VALUES ('applied_seq', ?1)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            params![pending.applied_seq as i64],
        )?;
    }
    tx.commit()?;
    Ok(())
}

/// The journal seq `profiles.db` has reached (0 when there is none), without loading anything.
pub fn applied_seq_on_disk(data_dir: &Path) -> Result<u64, ProfileError> {
    let path = data_dir.join(DB_FILE);
    if !path.exists() {
        return Ok(0);
    }
    let conn = Connection::open_with_flags(&path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    let seq: Option<i64> = conn
        .query_row(
            "SELECT value FROM meta WHERE key = 'applied_seq'",
            [],
            |r| r.get(0),
        )
        .optional()?;
    Ok(seq.unwrap_or(0).max(0) as u64)
}

/// What start-up reads besides the identity graph, which [`load`] hands over row by row.
/// Per-identifier facts stay on disk until used (see [`crate::resident`]).
pub struct Loaded {
    pub applied_seq: u64,
    /// The definitions the stored computed-trait states follow.
    pub computed_defs: Vec<ComputedTraitDef>,
}

/// One stored piece of the identity graph, as [`load`] hands it over.
pub enum GraphRow {
    /// An identifier and its first sighting.
    Identifier(Identifier, ObservationKey),
    /// A link between identifiers.
    Link(Observation),
}

/// Reads what the in-memory state is rebuilt from, handing `graph` every identifier first, then
/// every link in canonical order, so rebuilding applies each link directly. Row by row: at ten
/// million events, holding both lists first was a fifth of the start-up peak (104 of 542 MB).
pub fn load(conn: &Connection, mut graph: impl FnMut(GraphRow)) -> Result<Loaded, ProfileError> {
    let applied_seq: i64 = conn
        .query_row(
            "SELECT value FROM meta WHERE key = 'applied_seq'",
            [],
            |r| r.get(0),
        )
        .optional()?
        .unwrap_or(0);
    let mut statement =
        conn.prepare("SELECT id_type, value, first_time, first_message FROM identifiers")?;
    let identifiers = statement.query_map([], |r| {
        Ok((
            Identifier::new(
                IdType::from_name(&r.get::<_, String>(0)?),
                r.get::<_, String>(1)?,
            ),
            ObservationKey {
                time_micros: r.get(2)?,
                message_id: r.get(3)?,
            },
        ))
    })?;
    for row in identifiers {
        let (identifier, key) = row?;
        graph(GraphRow::Identifier(identifier, key));
    }
    let mut statement = conn.prepare(
        "SELECT identifiers, time, message_id, explicit FROM links ORDER BY time, message_id",
    )?;
    let links = statement.query_map([], |r| {
        let text: String = r.get(0)?;
        Ok(Observation {
            identifiers: text.split('\n').filter_map(parse_identifier).collect(),
            key: ObservationKey {
                time_micros: r.get(1)?,
                message_id: r.get(2)?,
            },
            explicit_merge: r.get(3)?,
        })
    })?;
    for row in links {
        graph(GraphRow::Link(row?));
    }
    let mut statement = conn.prepare("SELECT name, definition FROM computed_defs")?;
    let rows = statement
        .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?
        .collect::<Result<Vec<_>, _>>()?;
    let mut computed_defs = Vec::with_capacity(rows.len());
    for (name, json) in rows {
        computed_defs.push(serde_json::from_str(&json).map_err(|e| {
            ProfileError::Corrupt(format!("stored definition of `{name}` does not parse: {e}"))
        })?);
    }
    Ok(Loaded {
        applied_seq: applied_seq.max(0) as u64,
        computed_defs,
    })
}

fn parse_facts(id_type: &str, value: &str, json: &str) -> Result<IdentifierFacts, ProfileError> {
    serde_json::from_str(json)
        .map_err(|e| ProfileError::Corrupt(format!("facts of {id_type}:{value} do not parse: {e}")))
}

/// The facts stored for one identifier, if any.
pub fn load_facts(
    conn: &Connection,
    identifier: &Identifier,
) -> Result<Option<IdentifierFacts>, ProfileError> {
    let mut statement = conn
        .prepare_cached("SELECT facts FROM identifier_facts WHERE id_type = ?1 AND value = ?2")?;
    let json: Option<String> = statement
        .query_row(params![identifier.id_type.name(), identifier.value], |r| {
            r.get(0)
        })
        .optional()?;
    json.map(|json| parse_facts(identifier.id_type.name(), &identifier.value, &json))
        .transpose()
}

/// Rows read at a time by the scans below, so a scan holds one chunk in memory, not the table.
const SCAN_CHUNK: i64 = 10_000;

/// One chunk of stored facts after `after_rowid`, with the last rowid read.
fn facts_chunk(
    conn: &Connection,
    after_rowid: i64,
) -> Result<Vec<(i64, Identifier, IdentifierFacts)>, ProfileError> {
    let mut statement = conn.prepare_cached(
        "SELECT rowid, id_type, value, facts FROM identifier_facts
         WHERE rowid > ?1 ORDER BY rowid LIMIT ?2",
    )?;
    let rows = statement
        .query_map(params![after_rowid, SCAN_CHUNK], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
            ))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    rows.into_iter()
        .map(|(rowid, id_type, value, json)| {
            let facts = parse_facts(&id_type, &value, &json)?;
            Ok((
                rowid,
                Identifier::new(IdType::from_name(&id_type), value),
                facts,
            ))
        })
        .collect()
}

/// Hands `each` every stored facts row (rowid, identifier, facts), a chunk at a time.
fn for_each_chunk(
    conn: &Connection,
    mut each: impl FnMut(Vec<(i64, Identifier, IdentifierFacts)>) -> Result<(), ProfileError>,
) -> Result<(), ProfileError> {
    let mut after = 0;
    loop {
        let chunk = facts_chunk(conn, after)?;
        let Some((last, _, _)) = chunk.last() else {
            return Ok(());
        };
        after = *last;
        each(chunk)?;
    }
}

/// Calls `visit` with every identifier's stored facts, a chunk at a time.
pub fn for_each_facts(
    conn: &Connection,
    mut visit: impl FnMut(Identifier, IdentifierFacts),
) -> Result<(), ProfileError> {
    for_each_chunk(conn, |chunk| {
        for (_, identifier, facts) in chunk {
            visit(identifier, facts);
        }
        Ok(())
    })
}

/// Rewrites, in one transaction, the stored facts `change` changes (it returns whether it did),
/// skipping identifiers `skip` names. Returns how many were rewritten.
pub fn rewrite_facts(
    conn: &mut Connection,
    skip: impl Fn(&Identifier) -> bool,
    mut change: impl FnMut(&mut IdentifierFacts) -> bool,
) -> Result<usize, ProfileError> {
    let tx = conn.transaction()?;
    let mut rewritten = 0;
    for_each_chunk(&tx, |chunk| {
        let mut update =
            tx.prepare_cached("UPDATE identifier_facts SET facts = ?1 WHERE rowid = ?2")?;
        for (rowid, identifier, mut facts) in chunk {
            if skip(&identifier) || !change(&mut facts) {
                continue;
            }
            let json =
                serde_json::to_string(&facts).map_err(|e| ProfileError::Corrupt(e.to_string()))?;
            update.execute(params![json, rowid])?;
            rewritten += 1;
        }
        Ok(())
    })?;
    tx.commit()?;
    Ok(rewritten)
}

/// A trait change as the history shows it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct HistoryEntry {
    pub identifier: String,
    pub name: String,
    pub json: String,
    pub time_micros: i64,
    pub message_id: String,
}

/// The trait history of some identifiers, oldest first.
pub fn history(
    conn: &Connection,
    identifiers: &[Identifier],
) -> Result<Vec<HistoryEntry>, ProfileError> {
    let mut statement = conn.prepare_cached(
        "SELECT trait, json, time, message_id FROM trait_history WHERE id_type = ?1 AND value = ?2",
    )?;
    let mut out = Vec::new();
    for identifier in identifiers {
        let rows =
            statement.query_map(params![identifier.id_type.name(), identifier.value], |r| {
                Ok(HistoryEntry {
                    identifier: identifier.to_string(),
                    name: r.get(0)?,
                    json: r.get(1)?,
                    time_micros: r.get(2)?,
                    message_id: r.get(3)?,
                })
            })?;
        for row in rows {
            out.push(row?);
        }
    }
    out.sort_by(|a, b| {
        (a.time_micros, &a.message_id, &a.name).cmp(&(b.time_micros, &b.message_id, &b.name))
    });
    Ok(out)
}
