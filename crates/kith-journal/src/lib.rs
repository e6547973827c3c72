//! The journal: where an event becomes durable before Kith acknowledges it.
//!
//! Two threads form a pipeline. The writer owns the files: it takes every queued request at once,
//! deduplicates, encodes and `write`s them as one group. The sync thread makes the groups durable
//! with one `fdatasync` for every group written since its last one (group commit), hands them to
//! the sink and answers the requests, in order. The writer does not wait for the disk, so
//! encoding the next group overlaps syncing the last. A third thread retires segments the event
//! tables hold (their dedup keys to a run file, then the files deleted), so that slow work never
//! holds an append.
//! Deduplication lives here too, because the writer is the only place that sees every append in
//! order: a `messageId` hash that was ever stored is refused, however late the retry.
//!
//! Files under the journal directory:
//! - `NNNNNNNNNNNNNNNNNNNN.seg`: segments of records, named by their first sequence number;
//! - `dedup/*.run`: the dedup keys of segments already retired (their records live in the event
//!   tables now), sorted runs on disk, so a retired segment's ids keep deduplicating after
//!   restarts without holding every key in memory (see [`dedup`]).

mod dedup;
mod record;
mod segment;
mod syncer;
mod writer;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, Sender};
use std::thread::JoinHandle;

use thiserror::Error;
use tokio::sync::oneshot;

pub use record::Record;
pub use syncer::DurableEntries;

#[derive(Debug, Error)]
pub enum JournalError {
    #[error("journal i/o error on {path}: {source}{}", what_to_do(source))]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("journal record at {path} offset {offset} is corrupt: {reason}")]
    Corrupt {
        path: PathBuf,
        offset: u64,
        reason: String,
    },
    #[error("the journal queue is full; retry shortly")]
    Overloaded,
    #[error("the journal writer has stopped")]
    Stopped,
}

/// What a person can do about an I/O error that is theirs to fix; empty for the others.
fn what_to_do(error: &std::io::Error) -> &'static str {
    match error.kind() {
        std::io::ErrorKind::PermissionDenied => {
            "; run Kith as the user that owns the data directory, or give this user read and \
             write access to it"
        }
        std::io::ErrorKind::ReadOnlyFilesystem => {
            "; mount it read-write, or copy the data directory to a writable place"
        }
        std::io::ErrorKind::StorageFull => {
            "; free space on that disk: events are refused until there is room, and nothing \
             acknowledged is lost"
        }
        _ => "",
    }
}

impl JournalError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> JournalError {
        JournalError::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    /// Whether the disk holding the journal had no room for what was written.
    pub fn is_disk_full(&self) -> bool {
        matches!(self, JournalError::Io { source, .. } if source.kind() == std::io::ErrorKind::StorageFull)
    }

    /// The same error again, for each append one failure answers (`std::io::Error` is not
    /// `Clone`).
    pub(crate) fn copy(&self) -> JournalError {
        match self {
            JournalError::Io { path, source } => {
                JournalError::io(path, std::io::Error::new(source.kind(), source.to_string()))
            }
            JournalError::Corrupt {
                path,
                offset,
                reason,
            } => JournalError::Corrupt {
                path: path.clone(),
                offset: *offset,
                reason: reason.clone(),
            },
            JournalError::Overloaded => JournalError::Overloaded,
            JournalError::Stopped => JournalError::Stopped,
        }
    }
}

/// Tuning for the journal.
#[derive(Debug, Clone)]
pub struct JournalOptions {
    /// A segment is closed once it grows past this size.
    pub segment_bytes: u64,
    /// Payload bytes waiting for the writer; an append that would go beyond this answers
    /// `Overloaded` (unless the queue is empty, so one large append always gets through). Bytes,
    /// not requests: a request holds from one event to 500 KB of them.
    pub queue_bytes: usize,
    /// Most entries one group commit takes, to bound latency.
    pub max_group_entries: usize,
}

impl Default for JournalOptions {
    fn default() -> Self {
        JournalOptions {
            segment_bytes: 64 * 1024 * 1024,
            queue_bytes: 256 * 1024 * 1024,
            max_group_entries: 50_000,
        }
    }
}

/// One thing to store. The payload and `item` are handed to the sink once the entry is durable.
pub struct Entry<T> {
    /// Entries with a key already stored are not written again; `None` never deduplicates.
    pub dedup_key: Option<u128>,
    pub payload: Vec<u8>,
    pub item: T,
}

/// What became of one entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Appended {
    Stored { seq: u64 },
    Duplicate,
}

/// An entry once it is on disk, as the sink receives it: the payload comes along, so whoever
/// keeps the record needs no copy of its own.
pub struct Durable<T> {
    pub seq: u64,
    pub payload: Vec<u8>,
    pub item: T,
}

/// Receives durable entries, in sequence order, before their appends are acknowledged:
/// whatever the sink makes visible is durable, and every acknowledged entry is already visible.
pub type Sink<T> = Box<dyn FnMut(DurableEntries<'_, T>) + Send>;

pub type AppendResult = Result<Vec<Appended>, JournalError>;

enum Command<T> {
    Append {
        entries: Vec<Entry<T>>,
        /// Payload bytes counted against [`JournalOptions::queue_bytes`] until written.
        queued_bytes: usize,
        reply: oneshot::Sender<AppendResult>,
    },
    Retire {
        through_seq: u64,
        reply: oneshot::Sender<Result<usize, JournalError>>,
    },
    Barrier {
        then: Box<dyn FnOnce(u64) + Send>,
    },
}

/// The parts of the journal's workings tests replace (to inject failures, or to hold a step).
pub(crate) struct Hooks {
    /// How the sync thread makes a file's written data durable.
    pub sync_data: syncer::SyncData,
    /// How the writer cuts a segment it closes to its records and syncs it.
    pub end_segment: EndSegment,
    /// Runs on the retirement thread before each retirement.
    pub before_retire: Box<dyn Fn() + Send>,
}

/// Cuts a segment's file to its first `u64` bytes (its records) and syncs it.
pub(crate) type EndSegment = Box<dyn Fn(&File, u64) -> std::io::Result<()> + Send>;

impl Default for Hooks {
    fn default() -> Self {
        Hooks {
            sync_data: Box::new(File::sync_data),
            end_segment: Box::new(segment::end_at_records),
            before_retire: Box::new(|| {}),
        }
    }
}

/// The durable journal. Cheap to share behind an `Arc`.
pub struct Journal<T: Send + 'static> {
    commands: Sender<Command<T>>,
    shared: Arc<syncer::Shared>,
    queue_limit: usize,
    writer: Option<JoinHandle<()>>,
    last_seq_at_open: u64,
}

/// A journal directory [`recover`]ed and not yet opened for writing.
pub struct RecoveredJournal {
    dir: PathBuf,
    recovered: segment::Recovered,
    /// New records are numbered after this seq at least (see [`RecoveredJournal::number_after`]).
    floor: u64,
}

impl RecoveredJournal {
    /// Numbers new records after `seq` when the journal ends before it. The stores fed from the
    /// journal hold records up to `seq`, and skip any seq they hold: a journal that was removed,
    /// or damaged past what they hold, would otherwise number new events as ones they have, and
    /// every one would be acknowledged and skipped. Numbering then goes on in a segment of its
    /// own.
    pub fn number_after(self, seq: u64) -> RecoveredJournal {
        RecoveredJournal { floor: seq, ..self }
    }
}

/// Makes the journal in `dir` (created if missing) whole again after a crash: cuts a torn tail
/// off, and moves the readable records found past damage into segments of their own.
///
/// Whoever replays the journal into other stores does it between this and
/// [`Journal::open_recovered`], with [`read_after`]: records saved from past damage are readable
/// only once moved, and their keys deduplicate from the moment the journal opens, so a replay
/// that missed them would answer their retries as duplicates of events stored nowhere.
pub fn recover(dir: &Path) -> Result<RecoveredJournal, JournalError> {
    dedup::create_dir_synced(dir)?;
    Ok(RecoveredJournal {
        dir: dir.to_path_buf(),
        recovered: segment::recover(dir)?,
        floor: 0,
    })
}

impl<T: Send + 'static> Journal<T> {
    /// Opens (or creates) the journal in `dir`, recovering it (see [`recover`]), and starts the
    /// writer thread.
    pub fn open(dir: &Path, options: JournalOptions, sink: Sink<T>) -> Result<Self, JournalError> {
        Self::open_with(recover(dir)?, options, sink, Hooks::default())
    }

    /// Opens a journal [`recover`] made whole, and starts the writer thread. Nothing else may
    /// have written to its directory since.
    pub fn open_recovered(
        journal: RecoveredJournal,
        options: JournalOptions,
        sink: Sink<T>,
    ) -> Result<Self, JournalError> {
        Self::open_with(journal, options, sink, Hooks::default())
    }

    fn open_with(
        journal: RecoveredJournal,
        options: JournalOptions,
        sink: Sink<T>,
        hooks: Hooks,
    ) -> Result<Self, JournalError> {
        let RecoveredJournal {
            dir,
            recovered,
            floor,
        } = journal;
        let dir = dir.as_path();
        let last_seq_at_open = recovered.last_seq.max(floor);
        let (commands, receiver) = mpsc::channel();
        let shared = Arc::new(syncer::Shared::new());
        let queue_limit = options.queue_bytes;
        let state = writer::WriterState::new(
            dir.to_path_buf(),
            options,
            recovered,
            floor,
            sink,
            hooks,
            shared.clone(),
        )?;
        let writer = std::thread::Builder::new()
            .name("kith-journal".into())
            .spawn(move || state.run(receiver))
            .map_err(|e| JournalError::io(dir, e))?;
        Ok(Journal {
            commands,
            shared,
            queue_limit,
            writer: Some(writer),
            last_seq_at_open,
        })
    }

    /// Whether an `fdatasync` has failed: the journal then acknowledges nothing until it is
    /// reopened (see [`syncer`]), and whoever runs it should restart it.
    pub fn has_failed(&self) -> bool {
        self.shared.failed.load(Ordering::Acquire)
    }

    /// The bytes of the last write refused because the journal's disk was full, while no write
    /// has succeeded since: appends are refused until there is that much room, and whoever
    /// serves readiness may compare it with the space free.
    pub fn refused_for_room(&self) -> Option<u64> {
        Some(self.shared.refused_for_room.load(Ordering::Acquire)).filter(|bytes| *bytes > 0)
    }

    /// Whether the writer and sync threads still run: they end when the journal is dropped,
    /// or by a bug (a panicking sink).
    pub fn is_running(&self) -> bool {
        self.writer
            .as_ref()
            .is_some_and(|writer| !writer.is_finished())
            && self.shared.syncer_running.load(Ordering::Acquire)
    }

    /// The highest sequence number on disk when the journal was opened.
    pub fn last_seq_at_open(&self) -> u64 {
        self.last_seq_at_open
    }

    /// Queues entries; the receiver answers once they are durable (or with the reason they are not).
    /// Never blocks: a full queue answers [`JournalError::Overloaded`] at once.
    pub fn append(&self, entries: Vec<Entry<T>>) -> oneshot::Receiver<AppendResult> {
        let (reply, receiver) = oneshot::channel();
        let bytes: usize = entries.iter().map(|e| e.payload.len()).sum();
        let admitted =
            self.shared
                .queued_bytes
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |queued| {
                    (queued == 0 || queued + bytes <= self.queue_limit).then_some(queued + bytes)
                });
        if admitted.is_err() {
            metrics::counter!("kith_journal_overloaded_total").increment(1);
            let _ = reply.send(Err(JournalError::Overloaded));
            return receiver;
        }
        let command = Command::Append {
            entries,
            queued_bytes: bytes,
            reply,
        };
        if let Err(mpsc::SendError(Command::Append { reply, .. })) = self.commands.send(command) {
            let _ = reply.send(Err(JournalError::Stopped));
        }
        receiver
    }

    /// Runs `then` on the journal's sync thread once every append queued before this call is
    /// written and handed to the sink, and before any append queued after it is; `then` gets the
    /// last seq written. Whatever `then` passes on is thereby ordered between the two sets of appends.
    pub fn barrier(&self, then: Box<dyn FnOnce(u64) + Send>) -> Result<(), JournalError> {
        self.commands
            .send(Command::Barrier { then })
            .map_err(|_| JournalError::Stopped)
    }

    /// Deletes closed segments whose records all have `seq <= through_seq` (they are safely in the
    /// event tables), keeping their dedup keys. Returns how many segments were retired.
    pub fn retire_through(
        &self,
        through_seq: u64,
    ) -> oneshot::Receiver<Result<usize, JournalError>> {
        let (reply, receiver) = oneshot::channel();
        if let Err(err) = self.commands.send(Command::Retire { through_seq, reply })
            && let Command::Retire { reply, .. } = err.0
        {
            let _ = reply.send(Err(JournalError::Stopped));
        }
        receiver
    }
}

/// Reads the records of a journal directory with `seq > after_seq` without opening it for writing:
/// safe while a server appends, since only fully written records are returned.
pub fn read_after(
    dir: &Path,
    after_seq: u64,
    visit: impl FnMut(Record) -> Result<(), JournalError>,
) -> Result<(), JournalError> {
    segment::read_after(dir, after_seq, visit)
}

impl<T: Send + 'static> Drop for Journal<T> {
    fn drop(&mut self) {
        // Closing the channel ends the writer loop once queued work is done.
        let (dead, _) = mpsc::channel();
        self.commands = dead;
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

#[cfg(test)]
mod tests;
