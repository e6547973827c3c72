//! Kith's event tables. Acknowledged events arrive from the journal into an in-memory Arrow
//! buffer (visible to queries at once), and are flushed to Delta Lake tables in large batches.
//! Each commit records the last journal sequence number it holds, so a restart replays exactly
//! what Delta is missing. SQL runs through DataFusion over Delta plus the buffer.

pub mod output;
pub mod parquet_rows;
pub mod query;
pub mod schema;
mod synced_store;
mod table;

use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use arrow::array::RecordBatch;
use kith_core::StoredView;
use thiserror::Error;

pub use query::{ExtraTable, MemoryPurpose, QueryError, QueryLimits, QueryResult, TimelineQuery};
pub use table::{Compacted, EventTable, Housekeeping, JOURNAL_APP_ID, TableView, Tidied};

/// Most rows one sealed Arrow batch holds (DataFusion's own batch size).
const SEAL_BATCH_ROWS: usize = 8192;

#[derive(Debug, Error)]
pub enum LakeError {
    #[error("delta lake error: {0}")]
    Delta(String),
    #[error("i/o error on {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// A durable journal record as [`Lake::ingest`] takes it: its seq and the bytes
/// [`kith_core::Stored::encode`] wrote.
pub type EncodedRecord = (u64, Vec<u8>);

/// Both event tables of a data directory.
pub struct Lake {
    pub events: EventTable,
    pub rejected: EventTable,
    /// Highest journal seq handed to [`Lake::ingest`].
    observed_seq: AtomicU64,
    /// Records ingested but not yet turned into Arrow batches. Ingest only appends here, so the
    /// journal's writer thread (which calls it between fsyncs) does no conversion work; whoever
    /// reads the buffers next (a query, the flusher) seals them first.
    /// Kept as the journal hands them over (encoded, as written to disk), one chunk per group
    /// commit: appending a chunk copies nothing, where one growing vector re-copied every record
    /// at each doubling. Holding the encoded bytes rather than decoded events means an event's
    /// dozen strings are freed on the request thread that made them, and sealing reads each
    /// record from one contiguous buffer.
    unsealed: Mutex<Vec<Vec<EncodedRecord>>>,
    /// Records in `unsealed`, readable without the lock.
    unsealed_rows: AtomicUsize,
    /// Held while sealing, so batches reach the tables in sequence order.
    sealing: Mutex<()>,
    /// DataFusion's caches (Parquet footers and page indexes), shared by every query's session:
    /// each query has its own runtime, but the files are immutable and their metadata need not
    /// be read again for each.
    pub(crate) query_caches:
        std::sync::Arc<datafusion::execution::cache::cache_manager::CacheManager>,
    /// The memory the queries running at once share (see [`query::QueryMemory`]).
    pub(crate) query_memory: query::QueryMemory,
    /// Tables the caller builds for the queries that read them (see [`Lake::query_with`]):
    /// named when a query asks for a table that does not exist, though not registered.
    tables_on_request: std::sync::RwLock<Vec<String>>,
}

impl Lake {
    /// Names the tables the caller builds, on request, for the queries that read them (the
    /// profile tables), so that a query naming a table that does not exist is told of them too.
    pub fn name_tables_built_on_request(&self, names: &[&str]) {
        *self
            .tables_on_request
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) =
            names.iter().map(|n| n.to_string()).collect();
    }

    pub(crate) fn tables_on_request(&self) -> Vec<String> {
        self.tables_on_request
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Opens the tables under `DATA_DIR/tables/` (created by [`Lake::create_missing_tables`] or
    /// the first flush).
    pub async fn open(data_dir: &Path) -> Result<Lake, LakeError> {
        Lake::open_with_store(data_dir, synced_store::SyncedLocalStore::new()).await
    }

    /// [`Lake::open`], the tables written through `store` (tests watch its syncs).
    pub(crate) async fn open_with_store(
        data_dir: &Path,
        store: synced_store::SyncedLocalStore,
    ) -> Result<Lake, LakeError> {
        let tables = data_dir.join("tables");
        let events = EventTable::open(
            "events",
            tables.join("events"),
            schema::EVENTS_SCHEMA.clone(),
            schema::EVENTS_STATS_COLUMNS,
            store.clone(),
        )
        .await?;
        let rejected = EventTable::open(
            "rejected_events",
            tables.join("rejected_events"),
            schema::REJECTED_SCHEMA.clone(),
            schema::REJECTED_STATS_COLUMNS,
            store,
        )
        .await?;
        let observed = events.committed_seq().max(rejected.committed_seq());
        Ok(Lake {
            events,
            rejected,
            observed_seq: AtomicU64::new(observed),
            unsealed: Mutex::new(Vec::new()),
            unsealed_rows: AtomicUsize::new(0),
            sealing: Mutex::new(()),
            query_caches: datafusion::execution::cache::cache_manager::CacheManager::try_new(
                &Default::default(),
            )
            .map_err(|e| LakeError::Delta(format!("query caches: {e}")))?,
            query_memory: query::QueryMemory::default(),
            tables_on_request: Default::default(),
        })
    }

    /// Creates each table that does not exist yet, with no rows (see
    /// [`EventTable::create_if_missing`]).
    pub async fn create_missing_tables(&self) -> Result<(), LakeError> {
        for table in self.tables() {
            table.create_if_missing().await?;
        }
        Ok(())
    }

    pub fn tables(&self) -> [&EventTable; 2] {
        [&self.events, &self.rejected]
    }

    /// The highest journal seq a table holds.
    pub fn highest_committed_seq(&self) -> u64 {
        self.tables()
            .iter()
            .map(|table| table.committed_seq())
            .max()
            .unwrap_or(0)
    }

    /// Where replay must start: the lowest seq some table may be missing, minus one.
    pub fn replay_after(&self) -> u64 {
        self.events
            .committed_seq()
            .min(self.rejected.committed_seq())
    }

    /// Adds durable journal records (in seq order): each the bytes [`Stored::encode`] wrote.
    /// Cheap: conversion happens in [`Lake::seal`].
    ///
    /// [`Stored::encode`]: kith_core::Stored::encode
    pub fn ingest(&self, records: Vec<EncodedRecord>) {
        let Some(max_seq) = records.last().map(|(s, _)| *s) else {
            return;
        };
        let rows = records.len();
        self.unsealed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(records);
        self.unsealed_rows.fetch_add(rows, Ordering::SeqCst);
        self.observed_seq.fetch_max(max_seq, Ordering::SeqCst);
    }

    /// Turns the ingested records into Arrow batches in the tables' buffers.
    pub fn seal(&self) {
        let _sealing = self.sealing.lock().unwrap_or_else(|p| p.into_inner());
        let chunks = std::mem::take(&mut *self.unsealed.lock().unwrap_or_else(|p| p.into_inner()));
        if chunks.is_empty() {
            return;
        }
        let rows: usize = chunks.iter().map(Vec::len).sum();
        // On replay after a restart, a table may already hold part of what the journal returns.
        let events_committed = self.events.committed_seq();
        let rejected_committed = self.rejected.committed_seq();
        // Decoded views are a few hundred bytes each: built and turned into Arrow a slice at a
        // time, they stay in cache, where one vector for a whole seal (hundreds of thousands of
        // records between flushes) would be fresh memory every time.
        let mut events = Vec::with_capacity(rows.min(SEAL_BATCH_ROWS));
        let mut rejected = Vec::new();
        for (seq, bytes) in chunks.iter().flatten() {
            match StoredView::decode(bytes) {
                Ok(StoredView::Event(e)) if *seq > events_committed => {
                    events.push((*seq, e));
                    if events.len() == SEAL_BATCH_ROWS {
                        seal_into(&self.events, &mut events, schema::events_batch);
                    }
                }
                Ok(StoredView::Rejected(r)) if *seq > rejected_committed => {
                    rejected.push((*seq, r));
                    if rejected.len() == SEAL_BATCH_ROWS {
                        seal_into(&self.rejected, &mut rejected, schema::rejected_batch);
                    }
                }
                Ok(_) => {}
                Err(err) => {
                    // Only a bug can get here: the journal checksums every record it hands over.
                    metrics::counter!("kith_lake_undecodable_records_total").increment(1);
                    tracing::error!(seq, error = %err, "a journal record could not be decoded; it is left out of the event tables");
                }
            }
        }
        seal_into(&self.events, &mut events, schema::events_batch);
        seal_into(&self.rejected, &mut rejected, schema::rejected_batch);
        self.unsealed_rows.fetch_sub(rows, Ordering::SeqCst);
    }

    /// Rows held in memory that Delta does not have yet: what ingestion must not let grow
    /// without bound when flushes fall behind or fail.
    pub fn unflushed_rows(&self) -> usize {
        self.unsealed_rows.load(Ordering::SeqCst)
            + self.tables().iter().map(|t| t.pending().0).sum::<usize>()
    }

    /// The journal seq through which every record is safely in Delta: journal segments at or
    /// below it may be deleted. A table with nothing buffered is caught up with all it observed.
    pub fn durable_through(&self) -> u64 {
        // Read `observed` first, then seal: everything at or below it is then in a table buffer
        // (or in Delta), and anything ingested later has a higher seq.
        let observed = self.observed_seq.load(Ordering::SeqCst);
        self.seal();
        self.tables()
            .iter()
            .map(|t| match t.pending() {
                (0, _) => observed,
                _ => t.committed_seq(),
            })
            .min()
            .unwrap_or(0)
    }

    /// Flushes every table that has buffered rows. Returns rows written.
    pub async fn flush(&self) -> Result<usize, LakeError> {
        self.seal();
        let mut rows = 0;
        for table in self.tables() {
            rows += table.flush().await?;
        }
        Ok(rows)
    }

    /// Runs a SQL query over `events` and `rejected_events`.
    pub async fn query(&self, sql: &str, limits: &QueryLimits) -> Result<QueryResult, QueryError> {
        query::run(self, sql, limits, Vec::new()).await
    }

    /// Runs a SQL query with more tables beside the event tables (e.g. `profiles`).
    pub async fn query_with(
        &self,
        sql: &str,
        limits: &QueryLimits,
        extra: Vec<ExtraTable>,
    ) -> Result<QueryResult, QueryError> {
        query::run(self, sql, limits, extra).await
    }

    /// Runs a query with extra tables, handing each result batch to `each` as it comes instead
    /// of collecting the answer (see [`query::stream`]).
    pub async fn query_each(
        &self,
        sql: &str,
        limits: &QueryLimits,
        extra: Vec<ExtraTable>,
        each: impl FnMut(&arrow::array::RecordBatch) + Send,
    ) -> Result<(), QueryError> {
        query::stream(self, sql, limits, extra, each).await
    }

    /// Hands every stored event with `ingest_seq <= through_seq` (Delta plus the buffer) to
    /// `each`, a batch at a time and in no particular order, for recomputations that fold each
    /// event into state: however many events are stored, only a few batches of them are held
    /// at once (one being folded, one waiting, one being made).
    pub async fn each_stored_event(
        &self,
        through_seq: u64,
        mut each: impl FnMut(Vec<(u64, kith_core::Event)>) + Send,
    ) -> Result<(), QueryError> {
        // No sort and no join: the scan holds a few batches, whatever the number of events.
        let limits = QueryLimits {
            timeout: std::time::Duration::from_secs(24 * 3600),
            memory_bytes: 256 << 20,
            max_rows: 1 << 40,
            purpose: MemoryPurpose::Recomputations,
        };
        let sql = format!("SELECT * FROM events WHERE ingest_seq <= {through_seq}");
        query::stream(self, &sql, &limits, Vec::new(), |batch| {
            each(schema::events_from_batch(batch))
        })
        .await
    }

    /// One person's events, newest first.
    pub async fn timeline(
        &self,
        query: &TimelineQuery,
        limits: &QueryLimits,
    ) -> Result<QueryResult, QueryError> {
        query::timeline(self, query, limits).await
    }
}

/// Moves decoded rows into `table`'s buffer as one Arrow batch (built by `build`), leaving `rows`
/// empty for the next slice.
fn seal_into<V>(
    table: &EventTable,
    rows: &mut Vec<(u64, V)>,
    build: fn(&[(u64, V)]) -> RecordBatch,
) {
    if let Some((last, _)) = rows.last() {
        table.push(*last, build(rows));
        rows.clear();
    }
}

#[cfg(test)]
mod tests;
