//! The loop every file import shares: rows in, events out in batches, problems to the
//! rejected-rows file, a progress bar, and after each batch that reached Kith a checkpoint, so an
//! interrupted import continues where it stopped (see `kith_import::checkpoint`).

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use kith_core::Event;
use kith_import::{
    BadRow, Checkpoint, FirstRows, Found, IdBasis, Problem, RejectWriter, Row, RowOutcome,
    RowSource,
};
use kith_profiles::ChangeCounts;

use super::destination::Destination;
use super::import::progress_bar;
use super::import_ledger::{self, LedgerEntry};

/// One import of one file.
pub struct RowImport<'a> {
    pub destination: &'a Destination,
    pub file: &'a Path,
    pub rejected: PathBuf,
    /// Where progress is recorded, with what tells this import from another of the same file
    /// (the command and its mapping); `None` keeps no checkpoint (the demo loader).
    pub checkpoint: Option<(PathBuf, String)>,
    /// Ignore a checkpoint and read the file from its first row.
    pub restart: bool,
    /// What the data directory's import ledger is told; `None` keeps it out (the demo loader,
    /// and contacts, which a corrected file should update).
    pub ledger: Option<LedgerEntry>,
}

/// The totals of an import; for a resumed one, of all its runs together.
#[derive(Debug, Default, Clone)]
pub struct RowTotals {
    pub rows: u64,
    pub stored: u64,
    pub already_imported: u64,
    pub changes: ChangeCounts,
    pub rejected_rows: u64,
    pub dropped_values: u64,
    /// Rows handled by an earlier, interrupted run and skipped by this one.
    pub resumed_after: u64,
    pub rejected_file: Option<String>,
    /// The first few problems of this run.
    pub examples: Vec<Problem>,
}

impl RowTotals {
    fn to_map(&self) -> BTreeMap<String, u64> {
        let c = &self.changes;
        BTreeMap::from([
            ("rows".into(), self.rows),
            ("stored".into(), self.stored),
            ("already_imported".into(), self.already_imported),
            ("rejected_rows".into(), self.rejected_rows),
            ("dropped_values".into(), self.dropped_values),
            ("created".into(), c.created),
            ("updated".into(), c.updated),
            ("merged".into(), c.merged),
            ("conflict".into(), c.conflict),
            ("unchanged".into(), c.unchanged),
            ("unattributed".into(), c.unattributed),
        ])
    }

    fn from_map(map: &BTreeMap<String, u64>) -> RowTotals {
        let get = |key: &str| map.get(key).copied().unwrap_or(0);
        RowTotals {
            rows: get("rows"),
            stored: get("stored"),
            already_imported: get("already_imported"),
            rejected_rows: get("rejected_rows"),
            dropped_values: get("dropped_values"),
            changes: ChangeCounts {
                created: get("created"),
                updated: get("updated"),
                merged: get("merged"),
                conflict: get("conflict"),
                unchanged: get("unchanged"),
                unattributed: get("unattributed"),
            },
            ..RowTotals::default()
        }
    }
}

/// A row's number in its file, read or not.
fn row_number(row: &Result<Row, BadRow>) -> u64 {
    match row {
        Ok(row) => row.number,
        Err(bad) => bad.number,
    }
}

/// `FILE_NAME.import-progress.json` beside the rejected rows (by default the current directory).
pub fn checkpoint_beside(rejected: &Path, file: &Path) -> PathBuf {
    let name = file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "import".into());
    rejected
        .parent()
        .unwrap_or(Path::new(""))
        .join(format!("{name}.import-progress.json"))
}

impl RowImport<'_> {
    /// The rejected rows of a run from the file's start: an earlier run's are removed, so a
    /// clean run leaves none behind to be taken for its own.
    fn fresh_rejects(&self) -> anyhow::Result<RejectWriter> {
        match std::fs::remove_file(&self.rejected) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(anyhow::anyhow!(
                    "cannot remove the earlier run's rejected rows, {}: {e}",
                    self.rejected.display()
                ));
            }
            _ => {}
        }
        Ok(RejectWriter::new(&self.rejected))
    }

    /// Reads every row of `reader`, converting each with `convert`, and writes the events.
    pub fn run(
        &self,
        reader: &mut dyn RowSource,
        mut convert: impl FnMut(Result<Row, BadRow>) -> RowOutcome,
    ) -> anyhow::Result<RowTotals> {
        let checkpoint = match &self.checkpoint {
            Some((path, job)) => {
                // The data directory is part of what the import is: a checkpoint of the same
                // file into another directory must not skip rows this one never received.
                let data_dir = self.destination.data_dir();
                let data_dir = std::fs::canonicalize(data_dir).unwrap_or(data_dir.to_path_buf());
                let job = format!("{job} into {}", data_dir.display());
                let (checkpoint, found) = Checkpoint::open(path, self.file, &job)?;
                Some((
                    checkpoint,
                    if self.restart { Found::Nothing } else { found },
                ))
            }
            None => None,
        };
        let resuming = matches!(
            checkpoint.as_ref().map(|(_, found)| found),
            Some(Found::Resume(_))
        );
        // Rows imported before with other settings are found before anything is written or
        // removed (an earlier run's rejected rows included); a resumed import was checked by
        // its first run. The first rows are converted once, here, and written below with the
        // rest.
        let mut first_rows: VecDeque<(u64, RowOutcome)> = VecDeque::new();
        let mut pending_record = None;
        if let Some(entry) = self.ledger.as_ref().filter(|_| !resuming) {
            let mut key = FirstRows::default();
            // Judged on the first rows: what the most of their ids follow.
            let mut id_basis = IdBasis::File;
            while !key.is_complete() {
                let Some(row) = reader.next_row()? else {
                    break;
                };
                key.add(&row);
                let number = row_number(&row);
                let outcome = convert(row);
                if let Some(event) = &outcome.event {
                    id_basis = id_basis.max(IdBasis::of(&event.message_id));
                }
                first_rows.push_back((number, outcome));
            }
            pending_record = import_ledger::check(
                entry,
                self.destination.data_dir(),
                self.file,
                &key,
                id_basis,
            )?;
        }
        let (mut totals, mut rejects) = match checkpoint.as_ref().map(|(_, found)| found) {
            Some(Found::Resume(progress)) => {
                eprintln!(
                    "continuing the interrupted import of {} after row {} (recorded in {}; pass --restart to read the file from its start)",
                    self.file.display(),
                    progress.rows_done,
                    self.checkpoint_path().display()
                );
                let mut totals = RowTotals::from_map(&progress.totals);
                totals.resumed_after = progress.rows_done;
                let rejects = RejectWriter::resume(
                    &self.rejected,
                    totals.rejected_rows,
                    totals.dropped_values,
                );
                (totals, rejects)
            }
            Some(Found::Stale(reason)) => {
                eprintln!("reading {} from its start: {reason}", self.file.display());
                (RowTotals::default(), self.fresh_rejects()?)
            }
            _ => (RowTotals::default(), self.fresh_rejects()?),
        };
        let checkpoint = checkpoint.map(|(c, _)| c);
        let progress = progress_bar(reader.total_bytes());
        let bytes_read = reader.bytes_read();
        // Changes a server reported, on top of those recorded at the checkpoint; in-process
        // changes are counted by the destination as profiles apply them.
        let base_changes = totals.changes;
        let mut reported_changes = ChangeCounts::default();

        let mut skipped = 0u64;
        while skipped < totals.resumed_after {
            let Some(row) = reader.next_row()? else {
                break;
            };
            // Converted and let go: a conversion may count what it has seen (the lines of an
            // order), and the rows after these must be counted as they were the first time.
            drop(convert(row));
            skipped += 1;
            if skipped.is_multiple_of(100_000) {
                progress.set_position(bytes_read.load(Ordering::Relaxed));
                progress.set_message(format!("skipping {skipped} rows already imported"));
            }
        }

        let batch_rows = self.destination.batch_rows();
        let mut batch: Vec<Event> = Vec::with_capacity(batch_rows);
        let mut rows_done = skipped;
        loop {
            let next = match first_rows.pop_front() {
                Some(converted) => Some(converted),
                None => reader
                    .next_row()?
                    .map(|row| (row_number(&row), convert(row))),
            };
            let at_end = next.is_none();
            if let Some((number, outcome)) = next {
                rows_done += 1;
                totals.rows += 1;
                let outcome = outcome.within_event_limit(number);
                for problem in outcome.problems {
                    rejects.record(problem)?;
                }
                if let Some(event) = outcome.event {
                    batch.push(event);
                }
            }
            if batch.len() < batch_rows && !at_end {
                continue;
            }
            if !batch.is_empty() {
                if let Some(pending) = pending_record.take() {
                    pending.record();
                }
                let result = self.destination.write(std::mem::take(&mut batch))?;
                totals.stored += result.stored as u64;
                totals.already_imported += result.duplicates as u64;
                reported_changes += result.changes;
            }
            if at_end {
                break;
            }
            totals.rejected_rows = rejects.rows_skipped();
            totals.dropped_values = rejects.values_dropped();
            progress.set_position(bytes_read.load(Ordering::Relaxed));
            progress.set_message(format!("{} rows", totals.rows));
            if let Some(checkpoint) = &checkpoint {
                // The rows so far are durable and their problems written: record it.
                rejects.finish()?;
                let mut saved = totals.clone();
                saved.changes = base_changes;
                saved.changes += reported_changes;
                saved.changes += self.destination.changes_so_far();
                checkpoint.save(rows_done, saved.to_map())?;
            }
        }
        progress.finish_and_clear();
        rejects.finish()?;
        totals.changes = base_changes;
        totals.changes += reported_changes;
        totals.changes += self.destination.settle();
        if let Some(checkpoint) = &checkpoint {
            checkpoint.clear()?;
        }
        totals.rejected_rows = rejects.rows_skipped();
        totals.dropped_values = rejects.values_dropped();
        totals.rejected_file = rejects
            .written()
            .then(|| self.rejected.display().to_string());
        totals.examples = rejects.examples.clone();
        Ok(totals)
    }

    fn checkpoint_path(&self) -> &Path {
        self.checkpoint
            .as_ref()
            .map_or(Path::new(""), |(path, _)| path.as_path())
    }
}
