//! The data directory's import ledger, consulted before an import's first write: rows imported
//! before with other settings would be stored a second time, beside the first (see
//! `kith_import::ledger`).

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::bail;
use kith_core::Event;
use kith_import::{BadRow, Earlier, FirstRows, ImportRecord, Ledger, Row};

/// What the ledger is told of one import.
pub struct LedgerEntry {
    /// The command (`transactions`, `events`…): the same rows imported as tickets are others.
    pub command: String,
    /// What the import's message ids follow (its job fingerprint).
    pub ids_from: String,
    /// Its settings, by name, as a person reads them.
    pub settings: BTreeMap<String, String>,
    /// `--keep-both`: store rows imported before with other settings as new events anyway.
    pub keep_both: bool,
}

/// Ids an import makes from a row (see `kith_import::message_id`), as opposed to those a file
/// gives in a column.
const MADE_ID_PREFIX: &str = "import-";

/// One import's dealings with the ledger, from its first rows to its first write.
pub struct LedgerWatch<'a> {
    entry: &'a LedgerEntry,
    ledger: Ledger,
    first_rows: FirstRows,
    /// Whether an event of the first rows has an id the import made (else the file gives them,
    /// and other settings make the same events).
    made_ids: bool,
    checked: bool,
    /// Recorded once the first write has landed.
    pending: Option<(String, ImportRecord)>,
}

impl<'a> LedgerWatch<'a> {
    pub fn new(entry: &'a LedgerEntry, data_dir: &Path) -> LedgerWatch<'a> {
        LedgerWatch {
            entry,
            ledger: Ledger::of(data_dir),
            first_rows: FirstRows::default(),
            made_ids: false,
            checked: false,
            pending: None,
        }
    }

    /// A row read, before it is converted.
    pub fn row(&mut self, row: &Result<Row, BadRow>) {
        self.first_rows.add(row);
    }

    /// The event a row gave.
    pub fn event(&mut self, event: &Event) {
        if !self.checked {
            self.made_ids |= event.message_id.starts_with(MADE_ID_PREFIX);
        }
    }

    /// Whether writes must wait for more of the first rows.
    pub fn waiting(&self) -> bool {
        !self.checked && !self.first_rows.is_complete()
    }

    /// Consults the ledger, once, before the first write: refuses rows imported before with
    /// settings that made other events, unless `--keep-both`.
    pub fn check(&mut self, file: &Path) -> anyhow::Result<()> {
        if std::mem::replace(&mut self.checked, true) {
            return Ok(());
        }
        let Some(key) = self.first_rows.key() else {
            return Ok(());
        };
        let now = ImportRecord {
            file: file.display().to_string(),
            at: chrono::Utc::now().format("%Y-%m-%d %H:%M UTC").to_string(),
            // Ids a file gives are the same whatever the settings.
            ids_from: if self.made_ids {
                self.entry.ids_from.clone()
            } else {
                "the file's message ids".into()
            },
            settings: self.entry.settings.clone(),
        };
        let command = &self.entry.command;
        match self.ledger.earlier(command, &key, &now)? {
            Earlier::Nothing => {}
            Earlier::StoredAgain(before) if !self.entry.keep_both => bail!(
                "the first rows of {} were imported into this data directory on {} (from {}) \
                 with other settings:\n{}\nAn imported row's event id follows the settings, so \
                 importing them again would store every row a second time, beside the first. \
                 Kith cannot take an import back: to correct one, import the files into a new \
                 data directory; to store these rows as new events anyway, pass --keep-both",
                file.display(),
                before.at,
                before.file,
                differences(&before, &now)
            ),
            Earlier::StoredAgain(before) => eprintln!(
                "storing the rows of {} as new events beside those imported on {} with other \
                 settings (--keep-both):\n{}",
                file.display(),
                before.at,
                differences(&before, &now)
            ),
            Earlier::Kept(before) => eprintln!(
                "note: the first rows of {} were imported on {} with other settings that make \
                 the same events:\n{}\nRows imported then are already imported and keep what \
                 that import read; only rows it did not have are read with these settings",
                file.display(),
                before.at,
                differences(&before, &now)
            ),
        }
        self.pending = Some((key, now));
        Ok(())
    }

    /// The first write landed: the ledger records the import.
    pub fn written(&mut self) -> anyhow::Result<()> {
        if let Some((key, record)) = self.pending.take() {
            self.ledger.record(&self.entry.command, &key, record)?;
        }
        Ok(())
    }
}

/// `  timezone: UTC then, America/Mexico_City now`, a line for each setting that differs.
fn differences(before: &ImportRecord, now: &ImportRecord) -> String {
    let lines: Vec<String> = before
        .differences(now)
        .into_iter()
        .map(|(name, then, now)| format!("  {name}: {then} then, {now} now"))
        .collect();
    if lines.is_empty() {
        // The same settings under another fingerprint (a Kith that reads them otherwise).
        "  (the same settings, read by another version of Kith)".into()
    } else {
        lines.join("\n")
    }
}
