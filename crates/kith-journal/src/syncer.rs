//! The sync thread: the second stage of the journal's pipeline.
//!
//! The writer thread deduplicates, encodes and `write`s a group, then hands it here and goes on
//! with the next one. This thread makes everything handed to it durable with one `fdatasync`,
//! gives the entries to the sink and answers the appends, in the order they were written. So the
//! writer's CPU work on group N+1 overlaps the disk's work on group N, and one sync covers every
//! group written while the previous sync ran.
//!
//! A failed `fdatasync` is final. After one, the kernel may have dropped the dirty pages and a
//! later sync can succeed without the data (PostgreSQL's "fsyncgate"), so retrying would
//! acknowledge events that are not on disk. The journal is marked failed instead: every append
//! in flight or still to come is refused, and a restart recovers from what the files hold. The
//! writer's own sync of a segment it closes counts the same (see [`Shared::sync_or_fail`]).

use std::fs::File;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::oneshot;

use crate::{AppendResult, Appended, Durable, Entry, JournalError, Sink};

/// How the sync thread makes a file's written data durable; replaced in tests to inject failures.
pub(crate) type SyncData = Box<dyn Fn(&File) -> std::io::Result<()> + Send>;

/// One append as the writer hands it over: its entries, its outcome per entry, its reply.
pub(crate) struct WrittenAppend<T> {
    pub entries: Vec<Entry<T>>,
    pub outcomes: Vec<Appended>,
    pub reply: oneshot::Sender<AppendResult>,
}

/// What the writer hands to the sync thread, in journal order.
pub(crate) enum Handover<T> {
    /// A group whose records were written to `file` (none if every entry was a duplicate).
    Written {
        file: Arc<File>,
        path: PathBuf,
        wrote_records: bool,
        appends: Vec<WrittenAppend<T>>,
        /// Payload bytes the group held against the queue limit; released once it is answered.
        queued_bytes: usize,
        written_at: Instant,
    },
    /// Runs once everything handed over before it is in the sink; `last_seq` is the last seq
    /// written before it.
    Barrier {
        then: Box<dyn FnOnce(u64) + Send>,
        last_seq: u64,
    },
}

/// State shared by the writer and the sync thread.
pub(crate) struct Shared {
    /// Payload bytes queued or in flight and not yet answered (see [`crate::JournalOptions::queue_bytes`]).
    pub queued_bytes: AtomicUsize,
    /// Set once a sync has failed; from then on nothing is acknowledged.
    pub failed: AtomicBool,
    /// Held through every sync of a journal file: see [`Shared::sync_or_fail`].
    pub syncing: Mutex<()>,
    /// Whether the sync thread runs: cleared as it ends, also by a panic (in the sink, say),
    /// after which nothing more is acknowledged.
    pub syncer_running: AtomicBool,
    /// The bytes of the last write refused for a full disk; 0 once a write succeeds again.
    pub refused_for_room: AtomicU64,
}

impl Shared {
    pub(crate) fn new() -> Shared {
        Shared {
            queued_bytes: AtomicUsize::new(0),
            failed: AtomicBool::new(false),
            syncing: Mutex::new(()),
            syncer_running: AtomicBool::new(true),
            refused_for_room: AtomicU64::new(0),
        }
    }

    /// Runs `sync` on the journal file at `path` unless the journal has failed, and fails the
    /// journal if `sync` does. One sync at a time: Linux reports a lost write to the first sync
    /// of the file after it, once, so the sync that sees it must fail the journal before any
    /// other sync of that file (the writer's of a segment it closes, the sync thread's of the
    /// groups written to it) can succeed and let those groups be acknowledged.
    pub(crate) fn sync_or_fail(
        &self,
        path: &std::path::Path,
        sync: impl FnOnce() -> std::io::Result<()>,
    ) -> Result<(), JournalError> {
        let _one_at_a_time = self.syncing.lock().unwrap_or_else(|p| p.into_inner());
        if self.failed.load(Ordering::Acquire) {
            return Err(self.failed_error(path));
        }
        sync().map_err(|err| {
            tracing::error!(error = %err, path = %path.display(), "journal sync failed; the journal refuses appends until restart");
            metrics::counter!("kith_journal_write_errors_total").increment(1);
            self.failed.store(true, Ordering::Release);
            JournalError::io(path, err)
        })
    }

    pub(crate) fn failed_error(&self, path: &std::path::Path) -> JournalError {
        JournalError::io(
            path,
            std::io::Error::other(
                "an earlier fdatasync of the journal failed, so nothing more is acknowledged; \
                 restart the server to recover from what is on disk",
            ),
        )
    }
}

pub(crate) struct Syncer<T> {
    pub sink: Sink<T>,
    pub sync_data: SyncData,
    pub shared: Arc<Shared>,
}

impl<T: Send + 'static> Syncer<T> {
    pub(crate) fn run(mut self, handovers: Receiver<Handover<T>>) {
        /// Clears [`Shared::syncer_running`] however the thread ends.
        struct Running(Arc<Shared>);
        impl Drop for Running {
            fn drop(&mut self) {
                self.0.syncer_running.store(false, Ordering::Release);
            }
        }
        let _running = Running(self.shared.clone());
        while let Ok(first) = handovers.recv() {
            let mut batch = vec![first];
            // Everything written while the last sync ran shares the next one.
            batch.extend(handovers.try_iter());
            let synced = self.sync(&batch);
            self.answer(batch, synced);
        }
    }

    /// Syncs each file the batch wrote to, once. Once the journal has failed, every batch fails:
    /// even an all-duplicates answer would claim that an earlier, lost write is stored.
    fn sync(&self, batch: &[Handover<T>]) -> Result<(), JournalError> {
        let mut last_synced: Option<&Arc<File>> = None;
        let mut first_written_at = None;
        for handover in batch {
            let Handover::Written {
                file,
                path,
                wrote_records,
                written_at,
                ..
            } = handover
            else {
                continue;
            };
            if self.shared.failed.load(Ordering::Acquire) {
                return Err(self.shared.failed_error(path));
            }
            // A rotation leaves two files in one batch; the writer synced the older one fully
            // before opening the next, so this is cheap for it.
            if !wrote_records || last_synced.is_some_and(|done| Arc::ptr_eq(done, file)) {
                continue;
            }
            first_written_at.get_or_insert(*written_at);
            self.shared.sync_or_fail(path, || (self.sync_data)(file))?;
            last_synced = Some(file);
        }
        if let Some(written_at) = first_written_at {
            metrics::counter!("kith_journal_fsyncs_total").increment(1);
            metrics::histogram!("kith_journal_commit_seconds")
                .record(written_at.elapsed().as_secs_f64());
        }
        Ok(())
    }

    /// Hands the batch's stored entries to the sink and answers its appends, in order; a
    /// barrier first settles everything before it.
    fn answer(&mut self, batch: Vec<Handover<T>>, synced: Result<(), JournalError>) {
        let mut pending = Vec::new();
        let mut released_bytes = 0;
        for handover in batch {
            match handover {
                Handover::Written {
                    appends,
                    queued_bytes,
                    ..
                } => {
                    released_bytes += queued_bytes;
                    pending.extend(appends);
                }
                Handover::Barrier { then, last_seq } => {
                    self.settle(&mut pending, &mut released_bytes, &synced);
                    then(last_seq);
                }
            }
        }
        self.settle(&mut pending, &mut released_bytes, &synced);
    }

    /// The sink sees the entries before their appends are answered: whatever is acknowledged is
    /// already visible.
    fn settle(
        &mut self,
        pending: &mut Vec<WrittenAppend<T>>,
        released_bytes: &mut usize,
        synced: &Result<(), JournalError>,
    ) {
        if synced.is_ok() {
            let stored = pending
                .iter()
                .flat_map(|append| &append.outcomes)
                .filter(|outcome| matches!(outcome, Appended::Stored { .. }))
                .count();
            if stored > 0 {
                // Entries move straight from the appends into whatever the sink builds.
                let entries = pending.iter_mut().flat_map(|append| {
                    let entries = std::mem::take(&mut append.entries);
                    let outcomes = &append.outcomes;
                    entries
                        .into_iter()
                        .zip(outcomes)
                        .filter_map(|(entry, outcome)| match outcome {
                            Appended::Stored { seq } => Some(Durable {
                                seq: *seq,
                                payload: entry.payload,
                                item: entry.item,
                            }),
                            Appended::Duplicate => None,
                        })
                });
                (self.sink)(DurableEntries {
                    entries: Box::new(entries),
                    remaining: stored,
                });
            }
        }
        // Off the queue now: whoever is told the outcome may append again at once.
        self.shared
            .queued_bytes
            .fetch_sub(std::mem::take(released_bytes), Ordering::AcqRel);
        for append in pending.drain(..) {
            let answer = match synced {
                Ok(()) => Ok(append.outcomes),
                Err(err) => Err(err.copy()),
            };
            let _ = append.reply.send(answer);
        }
    }
}

/// The durable entries the sink receives, in sequence order; it knows how many there are.
pub struct DurableEntries<'a, T> {
    entries: Box<dyn Iterator<Item = Durable<T>> + 'a>,
    remaining: usize,
}

impl<T> Iterator for DurableEntries<'_, T> {
    type Item = Durable<T>;

    fn next(&mut self) -> Option<Durable<T>> {
        let next = self.entries.next()?;
        self.remaining = self.remaining.saturating_sub(1);
        Some(next)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.remaining, Some(self.remaining))
    }
}

impl<T> ExactSizeIterator for DurableEntries<'_, T> {}
