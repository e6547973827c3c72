//! The data directory's import ledger, consulted before an import writes or removes anything:
//! rows imported before with other settings would be stored a second time beside the first, or
//! keep what the first import read (see `kith_import::ledger`).

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::bail;
use kith_import::{Earlier, FirstRows, IdBasis, ImportRecord, Ledger};

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

/// An import the ledger has checked, to be recorded as its first events are written.
pub struct PendingRecord {
    ledger: Ledger,
    key: String,
    record: ImportRecord,
}

impl PendingRecord {
    /// Records the import, just before its first write: an import killed as it wrote is then
    /// known to a later one, which is refused rather than storing the rows again. (An import
    /// whose every row is refused writes nothing, and is not recorded.) A ledger that cannot be
    /// written does not stop the import: it is said, and only the check of a later import is
    /// lost.
    pub fn record(self) {
        if let Err(e) = self.ledger.record(&self.key, self.record) {
            eprintln!(
                "warning: {e}; a later import of this file with other settings will not be \
                 checked against this one"
            );
        }
    }
}

/// Checks the file's first rows against the ledger of `data_dir`, before
/// anything is written: rows imported before with other settings (or by another command) would
/// be stored again as other events, or keep what the earlier import read. Either is refused
/// unless `--keep-both`.
pub fn check(
    entry: &LedgerEntry,
    data_dir: &Path,
    file: &Path,
    first_rows: &FirstRows,
    id_basis: IdBasis,
) -> anyhow::Result<Option<PendingRecord>> {
    let Some(key) = first_rows.key() else {
        return Ok(None);
    };
    // The command is a setting too: the same rows imported as events and as transactions are
    // two events each.
    let mut settings = entry.settings.clone();
    settings.insert("command".into(), entry.command.clone());
    // Ids made from a row follow its columns' names; others (a file's own, an order's) only
    // what each column is read as.
    if id_basis == IdBasis::Settings {
        settings.remove(kith_import::transactions::FIELDS_SETTING);
    } else {
        settings.remove("columns");
    }
    let setting = |name: &str| settings.get(name).map_or("", String::as_str);
    // What the ids follow: the same means the same events.
    let ids_from = match id_basis {
        IdBasis::Settings => entry.ids_from.clone(),
        IdBasis::OrderLine => format!(
            "order lines of {} from {} ({})",
            setting("event"),
            setting("source"),
            setting(kith_import::transactions::FIELDS_SETTING)
        ),
        IdBasis::File => "the file's message ids".into(),
    };
    let now = ImportRecord {
        file: file.display().to_string(),
        at: chrono::Utc::now().format("%Y-%m-%d %H:%M UTC").to_string(),
        // (A file that gives ids to its first rows only is taken at its first rows' word.)
        first_rows: first_rows.prefixes(),
        ids_from,
        settings,
    };
    let ledger = Ledger::of(data_dir);
    let earlier = match ledger.earlier(&key, &now) {
        Ok(earlier) => earlier,
        Err(e) => {
            // Left as it is for a person to look at, and not written over.
            eprintln!("warning: {e}; this import is not checked against earlier imports");
            return Ok(None);
        }
    };
    let imported_before = |before: &ImportRecord| {
        format!(
            "the first rows of {} were imported into this data directory on {} (from {}) with \
             other settings:\n{}\n",
            file.display(),
            before.at,
            before.file,
            differences(before, &now)
        )
    };
    match earlier {
        Earlier::Nothing => {}
        Earlier::StoredAgain(before) if !entry.keep_both => bail!(
            "{}An imported row's event id follows the settings, so importing them again would \
             store every row a second time, beside the first. Kith cannot take an import back: \
             to correct one, import the files into a new data directory; to store these rows as \
             new events anyway, pass --keep-both",
            imported_before(&before)
        ),
        Earlier::Kept(before) if !entry.keep_both => bail!(
            "{}These rows make the same events as then, so the rows imported then would keep what \
             that import read (their times, amounts, source) while rows it did not have would be \
             read with these settings. Kith cannot take an import back: to correct the rows, \
             import the files into a new data directory; to import only the rows it did not \
             have, pass --keep-both",
            imported_before(&before)
        ),
        Earlier::StoredAgain(before) => eprintln!(
            "storing the rows of {} as new events beside those imported on {} with other \
             settings (--keep-both):\n{}",
            file.display(),
            before.at,
            differences(&before, &now)
        ),
        Earlier::Kept(before) => eprintln!(
            "importing the rows of {} that the import of {} did not have, with other settings \
             (--keep-both); the rows it imported keep what it read:\n{}",
            file.display(),
            before.at,
            differences(&before, &now)
        ),
    }
    Ok(Some(PendingRecord {
        ledger,
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
