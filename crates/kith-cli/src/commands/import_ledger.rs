//! The data directory's import ledger, consulted before an import writes or removes anything:
//! rows imported before with other settings would be stored a second time, beside the first
//! (see `kith_import::ledger`).

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::bail;
use kith_import::{BadRow, Earlier, FirstRows, ImportRecord, Ledger, Row, RowOutcome};

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

/// The beginning of the ids an import makes from a row (`kith_import::message_id`), as opposed
/// to those a file gives. A file exported from Kith gives ids that look made; it is then told
/// its rows would be stored again when they would not, which `--keep-both` answers.
const MADE_ID_PREFIX: &str = "import-";

/// What stands for a file's own message ids in the ledger: they are the same whatever the
/// settings.
const FILE_IDS: &str = "the file's message ids";

/// An import the ledger has checked, to be recorded once its first events are written.
pub struct PendingRecord {
    ledger: Ledger,
    command: String,
    key: String,
    record: ImportRecord,
}

impl PendingRecord {
    /// Records the import. A ledger that cannot be written does not stop an import whose
    /// events are stored: it is said, and only the check of a later import is lost.
    pub fn record(self) {
        if let Err(e) = self.ledger.record(&self.command, &self.key, self.record) {
            eprintln!(
                "warning: {e}; a later import of this file with other settings will not be \
                 checked against this one"
            );
        }
    }
}

/// Checks the file's first rows (read, not yet converted) against the ledger of `data_dir`,
/// converting each once more with `convert` to learn whose ids they carry. Refuses rows
/// imported before with settings that made other events, unless `--keep-both`.
pub fn check(
    entry: &LedgerEntry,
    data_dir: &Path,
    file: &Path,
    first: &[Result<Row, BadRow>],
    convert: &mut impl FnMut(Result<Row, BadRow>) -> RowOutcome,
) -> anyhow::Result<Option<PendingRecord>> {
    let mut first_rows = FirstRows::default();
    let mut made_ids = false;
    for row in first {
        first_rows.add(row);
        if let Some(event) = convert(row.clone()).event {
            made_ids |= event.message_id.starts_with(MADE_ID_PREFIX);
        }
    }
    let Some(key) = first_rows.key() else {
        return Ok(None);
    };
    let now = ImportRecord {
        file: file.display().to_string(),
        at: chrono::Utc::now().format("%Y-%m-%d %H:%M UTC").to_string(),
        // Ids a file gives are the same whatever the settings. (A file that gives them to its
        // first rows only is taken at its first rows' word.)
        ids_from: if made_ids {
            entry.ids_from.clone()
        } else {
            FILE_IDS.into()
        },
        settings: entry.settings.clone(),
    };
    let ledger = Ledger::of(data_dir);
    let earlier = match ledger.earlier(&entry.command, &key, &now) {
        Ok(earlier) => earlier,
        Err(e) => {
            // Left as it is for a person to look at, and not written over.
            eprintln!("warning: {e}; this import is not checked against earlier imports");
            return Ok(None);
        }
    };
    match earlier {
        Earlier::Nothing => {}
        Earlier::StoredAgain(before) if !entry.keep_both => bail!(
            "the first rows of {} were imported into this data directory on {} (from {}) with \
             other settings:\n{}\nAn imported row's event id follows the settings, so importing \
             them again would store every row a second time, beside the first. Kith cannot take \
             an import back: to correct one, import the files into a new data directory; to \
             store these rows as new events anyway, pass --keep-both",
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
            "note: the first rows of {} were imported on {} with other settings that make the \
             same events:\n{}\nRows imported then are already imported and keep what that \
             import read; only rows it did not have are read with these settings",
            file.display(),
            before.at,
            differences(&before, &now)
        ),
    }
    Ok(Some(PendingRecord {
        ledger,
        command: entry.command.clone(),
        key,
        record: now,
    }))
}

/// `  timezone: UTC then, America/Mexico_City now`, a line for each setting that differs.
fn differences(before: &ImportRecord, now: &ImportRecord) -> String {
    before
        .differences(now)
        .into_iter()
        .map(|(name, then, now)| format!("  {name}: {then} then, {now} now"))
        .collect::<Vec<_>>()
        .join("\n")
}
