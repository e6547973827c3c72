//! One event table: the Delta table on disk plus the in-memory buffer of rows the journal holds
//! but the Delta table does not have yet.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Instant;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use deltalake::kernel::Transaction;
use deltalake::kernel::engine::arrow_conversion::TryIntoKernel as _;
use deltalake::kernel::transaction::CommitProperties;
use deltalake::parquet::basic::Compression;
use deltalake::parquet::file::properties::{EnabledStatistics, WriterProperties};
use deltalake::parquet::schema::types::ColumnPath;
use deltalake::protocol::SaveMode;
use deltalake::{DeltaTable, DeltaTableBuilder, DeltaTableError};

use crate::LakeError;
use crate::synced_store::SyncedLocalStore;

mod compaction;
mod housekeeping;
pub use compaction::Compacted;
pub use housekeeping::{Housekeeping, Tidied};

/// The Delta application-transaction id under which Kith records the last journal sequence number
/// a commit contains: after a crash, replay starts right after it, so nothing is written twice.
pub const JOURNAL_APP_ID: &str = "kith-journal";

/// A consistent view for one query: the Delta snapshot and the rows not in it yet.
#[derive(Clone)]
pub struct TableView {
    pub delta: Option<DeltaTable>,
    pub buffered: Vec<RecordBatch>,
}

struct Buffer {
    /// Batches not yet in Delta, each with the highest journal seq it holds.
    batches: Vec<(u64, RecordBatch)>,
    rows: usize,
    oldest: Option<Instant>,
}

impl Buffer {
    /// Takes the first `count` batches out; returns how many rows they held.
    fn drain_front(&mut self, count: usize) -> usize {
        let drained: usize = self
            .batches
            .drain(..count)
            .map(|(_, batch)| batch.num_rows())
            .sum();
        self.rows -= drained;
        if self.batches.is_empty() {
            self.oldest = None;
        }
        drained
    }
}

struct Inner {
    delta: Option<DeltaTable>,
    committed_seq: u64,
    buffer: Buffer,
    /// A flush failed without learning whether its commit landed: the next one reads the log
    /// first (see [`EventTable::settle_unknown_commit`]).
    commit_unknown: bool,
}

pub struct EventTable {
    pub name: &'static str,
    path: PathBuf,
    schema: SchemaRef,
    stats_columns: &'static str,
    /// Whether flushes write their rows ordered by event name ([`EventTable::cluster_flushes`]).
    clustered: AtomicBool,
    inner: RwLock<Inner>,
    /// Held by a compacting pass ([`EventTable::compact`]).
    compacting: tokio::sync::Mutex<()>,
    /// What the table's files are written through: every file on disk before its write returns.
    store: SyncedLocalStore,
}

impl EventTable {
    /// Opens the table at `path` (created by [`EventTable::create_if_missing`] or the first
    /// flush), written through `store`.
    pub(crate) async fn open(
        name: &'static str,
        path: PathBuf,
        schema: SchemaRef,
        stats_columns: &'static str,
        store: SyncedLocalStore,
    ) -> Result<EventTable, LakeError> {
        let (delta, committed_seq) = load_delta(&path, &store).await?;
        Ok(EventTable {
            name,
            path,
            schema,
            stats_columns,
            clustered: AtomicBool::new(false),
            inner: RwLock::new(Inner {
                delta,
                committed_seq,
                buffer: Buffer {
                    batches: Vec::new(),
                    rows: 0,
                    oldest: None,
                },
                commit_unknown: false,
            }),
            compacting: tokio::sync::Mutex::new(()),
            store,
        })
    }

    /// The table as its log says now, read afresh.
    async fn reload(&self) -> Result<DeltaTable, LakeError> {
        Ok(delta_builder(&self.path, &self.store)?.load().await?)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(|p| p.into_inner())
    }

    /// The last journal seq held by the Delta table.
    pub fn committed_seq(&self) -> u64 {
        self.read().committed_seq
    }

    /// Rows waiting for a flush, and how long the oldest has waited.
    pub fn pending(&self) -> (usize, Option<Instant>) {
        let inner = self.read();
        (inner.buffer.rows, inner.buffer.oldest)
    }

    /// Adds a batch whose highest journal seq is `max_seq`. Ignores rows Delta already has.
    pub fn push(&self, max_seq: u64, batch: RecordBatch) {
        if batch.num_rows() == 0 {
            return;
        }
        let mut inner = self.write();
        if max_seq <= inner.committed_seq {
            return;
        }
        inner.buffer.rows += batch.num_rows();
        inner.buffer.oldest.get_or_insert_with(Instant::now);
        inner.buffer.batches.push((max_seq, batch));
    }

    pub fn view(&self) -> TableView {
        let inner = self.read();
        TableView {
            delta: inner.delta.clone(),
            buffered: inner
                .buffer
                .batches
                .iter()
                .map(|(_, b)| b.clone())
                .collect(),
        }
    }

    /// Makes later flushes write their rows ordered by event name (ties in journal order), for
    /// tables that have an `event` column.
    ///
    /// Analyses read the events of a few names: purchases for RFM and CLV, a funnel's steps.
    /// With each file's names in runs, the Parquet page index lets a scan skip the pages of
    /// every other name (RFM over ten million imported events: 0.39 → 0.20 s; the scan alone
    /// 0.8 → 0.16 s of CPU). The ordering copies the flushed rows once, which a bulk load
    /// hardly notices (139 → 143 s for those ten million events) but the server's ingest path
    /// would: 1.2 µs more an event, a seventh of its cost, so it is for bulk loads.
    pub fn cluster_flushes(&self, on: bool) {
        self.clustered.store(on, Ordering::Relaxed);
    }

    /// `batches` as one batch ordered by (event, ingest_seq); as they are without those columns.
    fn ordered_by_event(&self, batches: &[RecordBatch]) -> Result<Vec<RecordBatch>, LakeError> {
        use arrow::compute::{SortColumn, concat_batches, lexsort_to_indices, take_record_batch};
        let failed = |e: arrow::error::ArrowError| {
            LakeError::Delta(format!("ordering the rows of {} by event: {e}", self.name))
        };
        let all = concat_batches(&self.schema, batches).map_err(failed)?;
        let (Some(event), Some(seq)) = (
            all.column_by_name("event"),
            all.column_by_name("ingest_seq"),
        ) else {
            return Ok(vec![all]);
        };
        let keys = [event, seq].map(|values| SortColumn {
            values: values.clone(),
            options: None,
        });
        let order = lexsort_to_indices(&keys, None).map_err(failed)?;
        Ok(vec![take_record_batch(&all, &order).map_err(failed)?])
    }

    /// Creates the table with no rows unless it exists. Then, from the server's first start on,
    /// other engines find a Delta table at the table's path (empty until the first flush), not a
    /// directory that is not one yet, also after a power cut during the first flush.
    pub async fn create_if_missing(&self) -> Result<(), LakeError> {
        if self.read().delta.is_some() {
            return Ok(());
        }
        let schema: deltalake::kernel::StructType =
            self.schema.as_ref().try_into_kernel().map_err(|e| {
                LakeError::Delta(format!("the {} schema in Delta terms: {e}", self.name))
            })?;
        let created = self
            .unloaded()?
            .create()
            .with_columns(schema.fields().cloned())
            .with_table_name(self.name)
            .with_configuration(self.configuration())
            // Another process may have created it meanwhile: then it is taken as it is.
            .with_save_mode(SaveMode::Ignore)
            .await?;
        adopt_unless_older(&mut self.write().delta, created);
        Ok(())
    }

    /// The table's handle before its log is read, its directory created durably like everything
    /// in it: a power cut must not take the directory once the journal has let go of its events.
    fn unloaded(&self) -> Result<DeltaTable, LakeError> {
        self.store
            .create_dir_all(&self.path)
            .map_err(|e| LakeError::Io {
                path: self.path.display().to_string(),
                source: std::io::Error::other(e),
            })?;
        Ok(delta_builder(&self.path, &self.store)?.build()?)
    }

    /// Table properties set when the table is created.
    fn configuration(&self) -> HashMap<String, Option<String>> {
        HashMap::from([(
            "delta.dataSkippingStatsColumns".to_string(),
            Some(self.stats_columns.to_string()),
        )])
    }

    /// Writes the buffered rows to Delta in one commit, recording the journal position. Rows
    /// added meanwhile stay buffered. Returns the rows written.
    pub async fn flush(&self) -> Result<usize, LakeError> {
        if self.read().commit_unknown {
            self.settle_unknown_commit().await?;
        }
        let (delta, batches, through_seq, taken) = {
            let inner = self.read();
            let Some((through_seq, _)) = inner.buffer.batches.last() else {
                return Ok(0);
            };
            let batches: Vec<RecordBatch> = inner
                .buffer
                .batches
                .iter()
                .map(|(_, b)| b.clone())
                .collect();
            (
                inner.delta.clone(),
                batches,
                *through_seq,
                inner.buffer.batches.len(),
            )
        };
        let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
        let started = Instant::now();
        let batches = if self.clustered.load(Ordering::Relaxed) {
            self.ordered_by_event(&batches)?
        } else {
            batches
        };
        let table = match delta {
            Some(table) => table,
            // The write below creates the table (when `create_if_missing` has not).
            None => self.unloaded()?,
        };
        // No log cleanup after each commit: it lists the whole log, and the server trims the
        // log when it tidies (see `housekeeping`).
        let commit = CommitProperties::default()
            .with_application_transaction(Transaction::new(JOURNAL_APP_ID, through_seq as i64))
            .with_cleanup_expired_logs(Some(false));
        let written = table
            .write(batches)
            .with_save_mode(SaveMode::Append)
            .with_table_name(self.name)
            .with_configuration(self.configuration())
            .with_commit_properties(commit)
            .with_writer_properties(writer_properties(&self.schema, FLUSHED_CODEC))
            .await;
        let table = match written {
            Ok(table) => table,
            Err(err) => {
                // The commit may have landed before something after it failed (a checkpoint, say):
                // then the rows are in Delta and must leave the buffer, or the next flush would
                // write them twice.
                match load_delta(&self.path, &self.store).await {
                    Ok((Some(table), committed)) if committed >= through_seq => {
                        tracing::warn!(table = self.name, error = %err, "write reported an error after its commit landed");
                        table
                    }
                    Ok(_) => return Err(err.into()),
                    Err(reload) => {
                        tracing::warn!(table = self.name, error = %reload, "the log could not be read after a failed write; the next flush reads it first");
                        self.write().commit_unknown = true;
                        return Err(err.into());
                    }
                }
            }
        };
        {
            let mut inner = self.write();
            adopt_unless_older(&mut inner.delta, table);
            inner.committed_seq = through_seq;
            inner.buffer.drain_front(taken);
        }
        metrics::counter!("kith_lake_flushes_total", "table" => self.name).increment(1);
        metrics::counter!("kith_lake_rows_flushed_total", "table" => self.name)
            .increment(rows as u64);
        metrics::histogram!("kith_lake_flush_seconds", "table" => self.name)
            .record(started.elapsed().as_secs_f64());
        tracing::debug!(table = self.name, rows, through_seq, "flushed to delta");
        Ok(rows)
    }

    /// Reads the log after a flush whose commit may or may not have landed, and drops the
    /// buffered rows a commit holds: written again, they would be in the table twice.
    async fn settle_unknown_commit(&self) -> Result<(), LakeError> {
        let (table, committed) = load_delta(&self.path, &self.store).await?;
        let mut inner = self.write();
        if let Some(table) = table {
            adopt_unless_older(&mut inner.delta, table);
        }
        if committed > inner.committed_seq {
            inner.committed_seq = committed;
            let held = inner
                .buffer
                .batches
                .iter()
                .take_while(|(seq, _)| *seq <= committed)
                .count();
            let rows = inner.buffer.drain_front(held);
            tracing::warn!(
                table = self.name,
                rows,
                committed,
                "a flush whose outcome was unknown had committed; its rows leave the buffer"
            );
        }
        inner.commit_unknown = false;
        Ok(())
    }
}

/// Replaces the table handle with `table` unless the handle is already at a later version.
///
/// A flush and a compaction commit concurrently and finish in either order; each one's handle
/// holds every commit up to its own (delta-rs catches up with the log before committing), so
/// the later version always holds all flushed rows, and never going back keeps compaction's
/// next plan from naming files an earlier compaction already replaced. A handle at the same
/// version is the same table: taking it lets a reload after the log was trimmed replace a
/// snapshot built from files that are gone.
fn adopt_unless_older(current: &mut Option<DeltaTable>, table: DeltaTable) {
    let at_least_as_new = match current.as_ref().and_then(DeltaTable::version) {
        Some(held) => table.version().is_some_and(|version| version >= held),
        None => true,
    };
    if at_least_as_new {
        *current = Some(table);
    }
}

/// How flushes compress: LZ4_RAW rather than Snappy, as widely read (DuckDB, Polars, Arrow,
/// Spark) and, in the ingest benchmark, faster to write with smaller files (16 bytes a stored
/// event against 51, together with the dictionary settings below).
const FLUSHED_CODEC: Compression = Compression::LZ4_RAW;

/// Parquet settings for the tables' files: no dictionary or statistics on free text, and no
/// dictionary where values rarely repeat.
fn writer_properties(schema: &SchemaRef, codec: Compression) -> WriterProperties {
    let mut builder = WriterProperties::builder().set_compression(codec);
    for field in schema.fields() {
        let name = field.name().as_str();
        let column = ColumnPath::from(name);
        if crate::schema::FREE_TEXT_COLUMNS.contains(&name) {
            builder = builder
                .set_column_dictionary_enabled(column.clone(), false)
                .set_column_statistics_enabled(column, EnabledStatistics::None);
        } else if crate::schema::UNIQUE_VALUE_COLUMNS.contains(&name) {
            builder = builder.set_column_dictionary_enabled(column, false);
        }
    }
    builder.build()
}

pub(crate) fn table_url(path: &Path) -> Result<url::Url, LakeError> {
    let absolute = std::path::absolute(path).map_err(|source| LakeError::Io {
        path: path.display().to_string(),
        source,
    })?;
    url::Url::from_directory_path(&absolute).map_err(|()| LakeError::Io {
        path: path.display().to_string(),
        source: std::io::Error::other("not a valid directory path"),
    })
}

/// The table at `path`, written through `store`.
fn delta_builder(path: &Path, store: &SyncedLocalStore) -> Result<DeltaTableBuilder, LakeError> {
    let url = table_url(path)?;
    Ok(
        DeltaTableBuilder::from_url(url.clone())?
            .with_storage_backend(Arc::new(store.clone()), url),
    )
}

async fn load_delta(
    path: &Path,
    store: &SyncedLocalStore,
) -> Result<(Option<DeltaTable>, u64), LakeError> {
    let log = path.join("_delta_log");
    if !log_has_commits(&log)? {
        if log.exists() {
            tracing::warn!(
                table = %path.display(),
                "the table's log holds no commit yet (its first flush did not finish); the next \
                 flush creates it from the journal, which still holds its rows"
            );
        }
        return Ok((None, 0));
    }
    // A log delta-rs cannot read is named, with where to look: its own message ("Json error:
    // Encountered unexpected 'b'") does not say which table or file.
    let unreadable = |e: deltalake::DeltaTableError| {
        // The store's errors come as text: a file this user may not read is found in it.
        let text = e.to_string();
        let cause = if text.contains("Permission denied") || text.contains("os error 13") {
            "this user may not read a file of it: run Kith as the user that owns the data \
             directory, or `chown -R` the directory to the user that runs Kith"
        } else {
            "a file in its _delta_log may be damaged"
        };
        LakeError::Delta(format!(
            "the table at {} cannot be read ({e}); {cause}",
            path.display()
        ))
    };
    let table = delta_builder(path, store)?
        .load()
        .await
        .map_err(unreadable)?;
    let committed = table
        .snapshot()
        .map_err(unreadable)?
        .transaction_version(table.log_store().as_ref(), JOURNAL_APP_ID)
        .await
        .map_err(unreadable)?
        .unwrap_or(0);
    Ok((Some(table), committed.max(0) as u64))
}

/// The table at `path` as it was at `version`: what a query worker reads, the version the server
/// read when the query came (newer commits hold rows the worker is handed as buffered ones).
pub(crate) async fn open_version(path: &Path, version: u64) -> Result<DeltaTable, LakeError> {
    delta_builder(path, &SyncedLocalStore::new())?
        .with_version(version)
        .load()
        .await
        .map_err(|e| {
            LakeError::Delta(format!(
                "version {version} of the table at {} cannot be read: {e}",
                path.display()
            ))
        })
}

/// Whether the Delta log at `log` holds a commit or a checkpoint, that is, whether the table
/// exists. The directory alone does not make one: a server killed while its first flush created
/// the table can leave `_delta_log` empty or holding only a commit still being written (a
/// temporary file), and delta-rs then refuses to load it ("No files in log segment"). Such a
/// table was never created; the journal lets go of rows only once a commit holds them.
fn log_has_commits(log: &Path) -> Result<bool, LakeError> {
    let failed = |source| LakeError::Io {
        path: log.display().to_string(),
        source,
    };
    let entries = match std::fs::read_dir(log) {
        Ok(entries) => entries,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(err) => return Err(failed(err)),
    };
    for entry in entries {
        if is_log_entry(&entry.map_err(failed)?.file_name().to_string_lossy()) {
            return Ok(true);
        }
    }
    Ok(false)
}

/// A commit (`00000000000000000007.json`), a checkpoint (`00000000000000000010.checkpoint.parquet`,
/// or one part of a multi-part one) or the pointer to the last checkpoint.
///
/// Not `deltalake::logstore::extract_version_from_filename`: it parses the 20 digits into a
/// version number with `unwrap`, so a stray `99999999999999999999.json` (past `u64::MAX`) in the
/// directory would panic the server at start, and it does not count `_last_checkpoint`.
pub(crate) fn is_log_entry(name: &str) -> bool {
    if name == "_last_checkpoint" {
        return true;
    }
    let Some((version, rest)) = name.split_at_checked(20) else {
        return false;
    };
    version.bytes().all(|b| b.is_ascii_digit())
        && (rest == ".json" || rest.starts_with(".checkpoint."))
}

impl From<DeltaTableError> for LakeError {
    fn from(err: DeltaTableError) -> Self {
        LakeError::Delta(err.to_string())
    }
}

#[cfg(test)]
mod tests;
