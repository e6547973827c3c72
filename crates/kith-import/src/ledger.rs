//! Which files a data directory has imported, and with which settings.
//!
//! An imported row's message id follows the import's settings (its mapping, time zone, currency,
//! source; see [`crate::message_id`]), so the same file imported again with one setting
//! corrected is stored a second time: every order twice, with nothing to say so. The ledger
//! keeps, for each file imported, a key of its first rows and the settings each import used;
//! an import of rows already imported with other settings is then found before it writes.
//!
//! One JSON file per file's first row, under `DATA_DIR/imports/`, listing the imports that
//! began with it: the keys of their first rows by count (so a file that grew at its end is
//! still known), what their ids followed, and their settings (the command among them). It is
//! written by imports only and read by nothing else.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{BadRow, ImportError, Row};

/// How many rows make a file's key: enough that two different files do not share it, few
/// enough that an import knows it before its first write.
pub const KEY_ROWS: usize = 100;

/// The counts of first rows whose key is kept, besides the count of all the rows keyed: a file
/// that grew or shrank at its end is still known by the rows both have.
const PREFIXES: [usize; 8] = [1, 2, 3, 5, 10, 20, 50, 100];

/// The keys of a file's first rows, built as they are read.
pub struct FirstRows {
    hasher: xxhash_rust::xxh3::Xxh3,
    rows: usize,
    /// The key of the first `n` rows, for each `n` of [`PREFIXES`] read.
    prefixes: Vec<(usize, String)>,
}

impl Default for FirstRows {
    fn default() -> Self {
        FirstRows {
            hasher: xxhash_rust::xxh3::Xxh3::new(),
            rows: 0,
            prefixes: Vec::new(),
        }
    }
}

impl FirstRows {
    /// Adds a row read, until [`KEY_ROWS`] are in.
    pub fn add(&mut self, row: &Result<Row, BadRow>) {
        if self.is_complete() {
            return;
        }
        self.rows += 1;
        match row {
            // Values only: a column renamed in a new export, or named otherwise by
            // `--columns`, leaves the rows what they were.
            Ok(row) => {
                for (_, value) in &row.values {
                    match value {
                        Value::String(text) => self.hasher.update(text.as_bytes()),
                        other => self.hasher.update(other.to_string().as_bytes()),
                    }
                    self.hasher.update(&[0]);
                }
            }
            Err(bad) => self.hasher.update(bad.reason.as_bytes()),
        }
        self.hasher.update(&[1]);
        if PREFIXES.contains(&self.rows) {
            self.prefixes.push((self.rows, self.digest()));
        }
    }

    fn digest(&self) -> String {
        format!("{:032x}", self.hasher.digest128())
    }

    pub fn is_complete(&self) -> bool {
        self.rows >= KEY_ROWS
    }

    /// The key the ledger files the rows under (their first row's), or `None` before any row.
    pub fn key(&self) -> Option<String> {
        self.prefixes.first().map(|(_, key)| key.clone())
    }

    /// The keys of the first rows, by count, the count of all the rows read last.
    pub fn prefixes(&self) -> Vec<(usize, String)> {
        let mut prefixes = self.prefixes.clone();
        if self.rows > 0 && prefixes.last().is_none_or(|(n, _)| *n != self.rows) {
            prefixes.push((self.rows, self.digest()));
        }
        prefixes
    }
}

/// Whether two imports' first rows are the same as far as both go: the keys of the most rows
/// both have a key for are equal.
fn same_first_rows(a: &[(usize, String)], b: &[(usize, String)]) -> bool {
    a.iter()
        .rev()
        .find_map(|(n, key)| {
            b.iter()
                .find(|(m, _)| m == n)
                .map(|(_, other)| other == key)
        })
        .unwrap_or(false)
}

/// One import of a file into a data directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImportRecord {
    /// The file as it was named.
    pub file: String,
    /// When the import began (`2026-12-07 15:00 UTC`).
    pub at: String,
    /// What its message ids followed: the same ids mean the same events.
    pub ids_from: String,
    /// The keys of its first rows, by count ([`FirstRows::prefixes`]).
    #[serde(default)]
    pub first_rows: Vec<(usize, String)>,
    /// Its settings, by name, as a person reads them (`timezone`, `currency`, `columns`…).
    pub settings: BTreeMap<String, String>,
}

impl ImportRecord {
    /// The same rows imported the same way (when and from which file aside).
    fn same_import_as(&self, other: &ImportRecord) -> bool {
        self.ids_from == other.ids_from
            && self.settings == other.settings
            && self.first_rows == other.first_rows
    }

    /// The settings of `self` that `other` has otherwise: (name, self's, other's).
    pub fn differences<'a>(&'a self, other: &'a ImportRecord) -> Vec<(&'a str, &'a str, &'a str)> {
        let names: std::collections::BTreeSet<&String> =
            self.settings.keys().chain(other.settings.keys()).collect();
        names
            .into_iter()
            .filter_map(|name| {
                let mine = self.settings.get(name).map_or("(none)", String::as_str);
                let theirs = other.settings.get(name).map_or("(none)", String::as_str);
                (mine != theirs).then_some((name.as_str(), mine, theirs))
            })
            .collect()
    }
}

/// What an import's first rows have met before.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Earlier {
    /// Not imported here before, or only with these very settings.
    Nothing,
    /// Imported with settings whose message ids are others: these rows would be stored again,
    /// as new events.
    StoredAgain(ImportRecord),
    /// Imported with other settings that give the same message ids: these rows are already
    /// imported and keep what the earlier import read.
    Kept(ImportRecord),
}

/// The imports recorded in one data directory.
pub struct Ledger {
    dir: PathBuf,
}

impl Ledger {
    pub fn of(data_dir: &Path) -> Ledger {
        Ledger {
            dir: data_dir.join("imports"),
        }
    }

    fn path(&self, key: &str) -> PathBuf {
        self.dir.join(format!("{key}.json"))
    }

    fn read(&self, key: &str) -> Result<Vec<ImportRecord>, ImportError> {
        let path = self.path(key);
        match std::fs::read_to_string(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(source) => Err(ImportError::Read {
                path: path.display().to_string(),
                source,
            }),
            // Not replaced: what it held is left for a person to look at.
            Ok(text) => serde_json::from_str(&text).map_err(|e| ImportError::Ledger {
                path: path.display().to_string(),
                reason: e.to_string(),
            }),
        }
    }

    /// What the first rows keyed `key` met before, for an import about to write them as `now`
    /// would.
    pub fn earlier(&self, key: &str, now: &ImportRecord) -> Result<Earlier, ImportError> {
        let records: Vec<ImportRecord> = self
            .read(key)?
            .into_iter()
            .filter(|r| same_first_rows(&r.first_rows, &now.first_rows))
            .collect();
        // The same settings make the same events, whoever gave their ids.
        if records.iter().any(|r| r.settings == now.settings) {
            return Ok(Earlier::Nothing);
        }
        // The latest import of the same events is what these rows keep; else the latest one.
        if let Some(same_ids) = records.iter().rev().find(|r| r.ids_from == now.ids_from) {
            return Ok(Earlier::Kept(same_ids.clone()));
        }
        Ok(records
            .last()
            .cloned()
            .map_or(Earlier::Nothing, Earlier::StoredAgain))
    }

    /// Records an import of the first rows keyed `key` (once for the same settings). Written
    /// to a temporary file and renamed, so a crash leaves the earlier list or this one.
    /// Whether it was added (`false`: it was there).
    pub fn record(&self, key: &str, record: ImportRecord) -> Result<bool, ImportError> {
        let mut records = self.read(key)?;
        if records.iter().any(|r| r.same_import_as(&record)) {
            return Ok(false);
        }
        records.push(record);
        self.write(key, &records)?;
        Ok(true)
    }

    fn write(&self, key: &str, records: &[ImportRecord]) -> Result<(), ImportError> {
        let path = self.path(key);
        let error = |e: std::io::Error| ImportError::Ledger {
            path: path.display().to_string(),
            reason: e.to_string(),
        };
        std::fs::create_dir_all(&self.dir).map_err(error)?;
        let text = serde_json::to_string_pretty(records).map_err(std::io::Error::other);
        // A name of its own, so two imports at once never rename each other's half-written
        // file; synced before the rename, so a power cut leaves one list or the other.
        let temporary = path.with_extension(format!("json.{}.tmp", std::process::id()));
        let write = |text: String| -> std::io::Result<()> {
            use std::io::Write;
            let mut file = std::fs::File::create(&temporary)?;
            file.write_all(text.as_bytes())?;
            file.sync_all()?;
            std::fs::rename(&temporary, &path)
        };
        write(text.map_err(error)?).map_err(error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(number: u64, cells: &[(&str, &str)]) -> Result<Row, BadRow> {
        Ok(Row {
            number,
            values: cells
                .iter()
                .map(|(c, v)| (c.to_string(), Value::String(v.to_string())))
                .collect(),
        })
    }

    fn record(ids_from: &str, settings: &[(&str, &str)]) -> ImportRecord {
        ImportRecord {
            file: "orders.csv".into(),
            at: "2026-12-07T15:00:00Z".into(),
            ids_from: ids_from.into(),
            first_rows: vec![(1, "a".into()), (3, "abc".into())],
            settings: settings
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    #[test]
    fn a_file_grown_or_shrunk_at_its_end_has_the_same_first_rows() {
        let mut short = FirstRows::default();
        let mut grown = FirstRows::default();
        let mut other = FirstRows::default();
        for n in 1..=8 {
            let cells = [("cliente", format!("C{n}"))];
            let cells: Vec<(&str, &str)> = cells.iter().map(|(c, v)| (*c, v.as_str())).collect();
            if n <= 5 {
                short.add(&row(n, &cells));
                other.add(&row(
                    n,
                    &if n == 4 {
                        vec![("cliente", "X")]
                    } else {
                        cells.clone()
                    },
                ));
            }
            grown.add(&row(n, &cells));
        }
        assert_eq!(short.key(), grown.key());
        assert_eq!(grown.prefixes().last().map(|(n, _)| *n), Some(8));
        assert!(same_first_rows(&short.prefixes(), &grown.prefixes()));
        assert!(same_first_rows(&grown.prefixes(), &short.prefixes()));
        // Another fourth row: the same first row, not the same rows.
        assert_eq!(short.key(), other.key());
        assert!(!same_first_rows(&other.prefixes(), &grown.prefixes()));
    }

    #[test]
    fn the_key_follows_the_first_rows_only() {
        let mut short = FirstRows::default();
        assert_eq!(short.key(), None);
        let mut long = FirstRows::default();
        let mut other = FirstRows::default();
        for n in 1..=(KEY_ROWS as u64 + 5) {
            let cells = [("cliente", "C1"), ("monto", "10")];
            if n <= 3 {
                short.add(&row(n, &cells));
            }
            long.add(&row(n, &cells));
            // A file that differs only after the key's rows has the same key.
            let tail = if n > KEY_ROWS as u64 { "99" } else { "10" };
            other.add(&row(n, &[("cliente", "C1"), ("monto", tail)]));
        }
        assert!(long.is_complete() && !short.is_complete());
        assert_eq!(long.prefixes(), other.prefixes());
        assert_eq!(long.prefixes().last().map(|(n, _)| *n), Some(KEY_ROWS));
        // Three rows that begin the long file are its first rows as far as they go.
        assert!(same_first_rows(&short.prefixes(), &long.prefixes()));
        // A column renamed is the same rows; another value is not.
        let mut renamed = FirstRows::default();
        renamed.add(&row(1, &[("customer", "C1"), ("monto", "10")]));
        let mut first = FirstRows::default();
        first.add(&row(1, &[("cliente", "C1"), ("monto", "10")]));
        assert_eq!(renamed.key(), first.key());
        let mut changed = FirstRows::default();
        changed.add(&row(1, &[("cliente", "C1"), ("monto", "11")]));
        assert_ne!(changed.key(), first.key());
    }

    #[test]
    fn an_import_with_other_settings_is_told_what_the_first_used() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Ledger::of(dir.path());
        let utc = record("zone=UTC", &[("timezone", "UTC"), ("source", "pos")]);
        let mexico = record(
            "zone=America/Mexico_City",
            &[("timezone", "America/Mexico_City"), ("source", "pos")],
        );
        assert_eq!(ledger.earlier("k1", &utc).unwrap(), Earlier::Nothing);
        assert!(ledger.record("k1", utc.clone()).unwrap());
        assert!(!ledger.record("k1", utc.clone()).unwrap());
        assert_eq!(ledger.read("k1").unwrap().len(), 1);
        // The same settings again: nothing to say (the journal keeps each row once).
        assert_eq!(ledger.earlier("k1", &utc).unwrap(), Earlier::Nothing);
        // Other ids: the rows would be stored again.
        assert_eq!(
            ledger.earlier("k1", &mexico).unwrap(),
            Earlier::StoredAgain(utc.clone())
        );
        assert_eq!(
            utc.differences(&mexico),
            vec![("timezone", "UTC", "America/Mexico_City")]
        );
        // Other first rows met nothing.
        assert_eq!(ledger.earlier("k2", &mexico).unwrap(), Earlier::Nothing);
        // Settings that leave the ids alone (a time format): the rows keep the first reading.
        let day_first = record(
            "zone=UTC",
            &[("timezone", "UTC"), ("time_format", "%d/%m/%Y")],
        );
        assert_eq!(
            ledger.earlier("k1", &day_first).unwrap(),
            Earlier::Kept(utc.clone())
        );
        // The same settings with ids given otherwise (a file's own): the same events.
        let file_ids = record("the file's ids", &[("timezone", "UTC"), ("source", "pos")]);
        assert_eq!(ledger.earlier("k1", &file_ids).unwrap(), Earlier::Nothing);
    }

    #[test]
    fn a_ledger_that_cannot_be_read_is_said_and_left_as_it_is() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Ledger::of(dir.path());
        std::fs::create_dir_all(dir.path().join("imports")).unwrap();
        let path = dir.path().join("imports/k1.json");
        std::fs::write(&path, "{ half a list").unwrap();
        let now = record("zone=UTC", &[("timezone", "UTC")]);
        let error = ledger.earlier("k1", &now).unwrap_err();
        assert!(error.to_string().contains("k1.json"), "{error}");
        assert!(ledger.record("k1", now).is_err());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "{ half a list");
    }
}
