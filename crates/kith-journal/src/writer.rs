//! The writer thread: the first stage of the journal's pipeline (dedup, encoding, `write`),
//! rotation and retirement. The sync thread ([`crate::syncer`]) makes what it writes durable.
//!
//! Retiring segments (their dedup keys sorted into a run file and synced, then the files deleted)
//! takes tens of milliseconds, so it runs on a thread of its own while the writer goes on
//! writing; the writer takes the result in between groups ([`Retirer`]).

use std::fs::{self, File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::dedup::{KeyIndex, PREFETCH_DISTANCE, Run, SeqRange, sync_dir, write_run};
use crate::record::encode;
use crate::segment::{
    Recovered, SegmentInfo, end_at_records, list_spares, scan, segment_path, spare_path,
};
use crate::syncer::{Handover, Shared, Syncer, WrittenAppend};
use crate::{AppendResult, Appended, Command, Entry, Hooks, JournalError, JournalOptions, Sink};

/// Retired segment files kept to be written over by new segments. Overwriting blocks a file
/// already has lets `fdatasync` write just the data: appending to a new file also changes its
/// size and block map, so every sync commits filesystem metadata too (0.39 against 0.25 ms an
/// `fdatasync` on the ext4 disk measured: `bench/ingest/fsync_latency.py`). Four cover the
/// segments one flush retires at full speed.
/// They hold old records until overwritten, like the segments did.
const MAX_SPARES: usize = 4;
/// Retired keys taken out of the in-memory set after each group (see
/// [`KeyIndex::forget_retired`]): a fraction of a millisecond a group, and several times faster
/// than segments retire at full speed.
const FORGET_PER_GROUP: usize = 512;
/// How long the writer waits for an append before it looks at a retirement under way (or takes
/// retired keys out of memory) while nothing else happens.
const IDLE_POLL: Duration = Duration::from_millis(2);

/// The thread that retires segments, one retirement at a time.
struct Retirer {
    plans: Sender<(RetirePlan, Vec<SegmentInfo>)>,
    outcomes: Receiver<RetireOutcome>,
    thread: JoinHandle<()>,
    /// The reply of the retirement under way, if one is.
    under_way: Option<oneshot::Sender<Result<usize, JournalError>>>,
}

impl Retirer {
    fn start(
        dir: &std::path::Path,
        before_retire: Box<dyn Fn() + Send>,
    ) -> Result<Retirer, JournalError> {
        let (plans, planned) = mpsc::channel::<(RetirePlan, Vec<SegmentInfo>)>();
        let (done, outcomes) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("kith-journal-retire".into())
            .spawn(move || {
                for (plan, segments) in planned {
                    before_retire();
                    if done.send(retire_segments(&plan, segments)).is_err() {
                        return;
                    }
                }
            })
            .map_err(|e| JournalError::io(dir, e))?;
        Ok(Retirer {
            plans,
            outcomes,
            thread,
            under_way: None,
        })
    }
}

/// What a retirement thread did.
struct RetireOutcome {
    /// The run holding the segments' keys (`None` if none was written: one covered them already,
    /// or writing failed).
    run: Option<Run>,
    /// The retired segments' keys once a run holds them durably; empty if none does.
    durable_keys: Vec<u128>,
    /// Files kept for reuse.
    spares: Vec<PathBuf>,
    /// Segments deleted (or kept as spares).
    retired: usize,
    /// Segments still on disk after a failure, oldest first: they stay in the journal and are
    /// retired again later.
    remaining: Vec<SegmentInfo>,
    error: Option<JournalError>,
}

pub(crate) struct WriterState<T> {
    dir: PathBuf,
    options: JournalOptions,
    /// Closed segments, oldest first; the active one is separate.
    closed: Vec<SegmentInfo>,
    active: SegmentInfo,
    /// Shared with the sync thread, which syncs it after each write.
    active_file: Arc<File>,
    /// Cuts a segment being closed to its records and syncs it (see [`crate::Hooks`]).
    end_segment: crate::EndSegment,
    keys: KeyIndex,
    /// Retired segments' files kept for reuse, at most [`MAX_SPARES`].
    spares: Vec<PathBuf>,
    next_seq: u64,
    shared: Arc<Shared>,
    to_syncer: Sender<Handover<T>>,
    syncer: JoinHandle<()>,
    retirer: Retirer,
}

/// A new, empty segment whose first record will be `first_seq`, its name synced.
fn new_segment(dir: &Path, first_seq: u64) -> Result<SegmentInfo, JournalError> {
    let path = segment_path(dir, first_seq);
    File::create(&path).map_err(|e| JournalError::io(&path, e))?;
    sync_dir(dir)?;
    Ok(SegmentInfo {
        path,
        first_seq,
        last_seq: first_seq - 1,
        len: 0,
        keys: Some(Vec::new()),
    })
}

impl<T: Send + 'static> WriterState<T> {
    pub(crate) fn new(
        dir: PathBuf,
        options: JournalOptions,
        recovered: Recovered,
        floor: u64,
        sink: Sink<T>,
        hooks: Hooks,
        shared: Arc<Shared>,
    ) -> Result<Self, JournalError> {
        let Recovered {
            mut segments,
            keys,
            last_seq,
        } = recovered;
        if last_seq < floor {
            tracing::warn!(
                journal_ends_at = last_seq,
                stores_hold_through = floor,
                "the journal ends before the records the event tables or profiles hold (it was \
                 removed or damaged); new records are numbered after theirs"
            );
        }
        let active = match segments.pop() {
            Some(active) if active.last_seq >= floor => active,
            // Numbering goes on after `floor`, in a segment of its own: an empty one is removed,
            // one with records is kept, closed.
            Some(ended) => {
                if ended.len == 0 {
                    fs::remove_file(&ended.path).map_err(|e| JournalError::io(&ended.path, e))?;
                } else {
                    let file = OpenOptions::new()
                        .write(true)
                        .open(&ended.path)
                        .map_err(|e| JournalError::io(&ended.path, e))?;
                    end_at_records(&file, ended.len)
                        .map_err(|e| JournalError::io(&ended.path, e))?;
                    segments.push(ended);
                }
                new_segment(&dir, floor + 1)?
            }
            None => new_segment(&dir, last_seq.max(floor) + 1)?,
        };
        let active_next_seq = active.last_seq + 1;
        let keys = KeyIndex::open(&dir, keys)?;
        let mut spares = list_spares(&dir)?;
        for extra in spares.split_off(spares.len().min(MAX_SPARES)) {
            fs::remove_file(&extra).map_err(|e| JournalError::io(&extra, e))?;
        }
        // Written at `active.len`, not appended: a reused file is longer than what it holds.
        let active_file = OpenOptions::new()
            .write(true)
            .open(&active.path)
            .map_err(|e| JournalError::io(&active.path, e))?;
        let Hooks {
            sync_data,
            end_segment,
            before_retire,
        } = hooks;
        let retirer = Retirer::start(&dir, before_retire)?;
        let (to_syncer, handovers) = mpsc::channel();
        let syncer = Syncer {
            sink,
            sync_data,
            shared: shared.clone(),
        };
        let syncer = std::thread::Builder::new()
            .name("kith-journal-sync".into())
            .spawn(move || syncer.run(handovers))
            .map_err(|e| JournalError::io(&dir, e))?;
        Ok(WriterState {
            dir,
            options,
            closed: segments,
            active,
            active_file: Arc::new(active_file),
            end_segment,
            keys,
            spares,
            next_seq: active_next_seq,
            shared,
            to_syncer,
            syncer,
            retirer,
        })
    }

    pub(crate) fn run(mut self, commands: Receiver<Command<T>>) {
        let mut buffer = Vec::new();
        while let Some(first) = self.next_command(&commands) {
            let mut group = Vec::new();
            let mut group_entries = 0usize;
            let mut group_bytes = 0usize;
            let mut next = Some(first);
            // Take everything already queued: this is the group commit.
            while let Some(command) = next.take() {
                match command {
                    Command::Append {
                        entries,
                        queued_bytes,
                        reply,
                    } => {
                        group_entries += entries.len();
                        group_bytes += queued_bytes;
                        group.push((entries, reply));
                    }
                    Command::Retire { through_seq, reply } => {
                        // Keep order simple: finish the pending group first.
                        self.commit_group(std::mem::take(&mut group), group_bytes, &mut buffer);
                        group_entries = 0;
                        group_bytes = 0;
                        self.start_retirement(through_seq, reply);
                    }
                    Command::Barrier { then } => {
                        self.commit_group(std::mem::take(&mut group), group_bytes, &mut buffer);
                        group_entries = 0;
                        group_bytes = 0;
                        // Ordered behind the groups already handed over, so it runs once they
                        // are in the sink.
                        let last_seq = self.next_seq - 1;
                        if let Err(mpsc::SendError(Handover::Barrier { then, last_seq })) =
                            self.to_syncer.send(Handover::Barrier { then, last_seq })
                        {
                            then(last_seq);
                        }
                    }
                }
                if group_entries < self.options.max_group_entries {
                    next = commands.try_recv().ok();
                }
            }
            self.commit_group(group, group_bytes, &mut buffer);
        }
        self.finish_retirement();
        drop(self.retirer.plans);
        if self.retirer.thread.join().is_err() {
            tracing::error!("the journal's retirement thread panicked");
        }
        // The sync thread answers what is handed over and ends when its channel closes.
        drop(self.to_syncer);
        if self.syncer.join().is_err() {
            tracing::error!("the journal's sync thread panicked");
        }
        // Ended like a closed segment, so that a clean restart has nothing to cut and recovery's
        // warning means a crash.
        if let Err(err) = end_at_records(&self.active_file, self.active.len) {
            tracing::warn!(error = %err, path = %self.active.path.display(), "could not cut the journal's active segment to its records; the next start does it");
        }
        if let Err(err) = self.keys.finish_merges() {
            tracing::warn!(error = %err, "a dedup merge did not finish; it is redone at the next start");
        }
    }

    /// Waits for the next command (`None` once every sender is gone). While a retirement runs or
    /// retired keys wait to leave memory, it wakes now and then to move them on.
    fn next_command(&mut self, commands: &Receiver<Command<T>>) -> Option<Command<T>> {
        loop {
            if self.retirer.under_way.is_none() && !self.keys.forget_retired(FORGET_PER_GROUP) {
                return commands.recv().ok();
            }
            match commands.recv_timeout(IDLE_POLL) {
                Ok(command) => {
                    self.poll_retirement();
                    return Some(command);
                }
                Err(RecvTimeoutError::Timeout) => self.poll_retirement(),
                Err(RecvTimeoutError::Disconnected) => return None,
            }
        }
    }

    /// Deduplicates, encodes and writes one group, then hands it to the sync thread, which
    /// answers it once it is durable. Whatever fails here is answered at once, and leaves
    /// neither records in the file nor keys in the index.
    fn commit_group(
        &mut self,
        group: Vec<(Vec<Entry<T>>, oneshot::Sender<AppendResult>)>,
        group_bytes: usize,
        buffer: &mut Vec<u8>,
    ) {
        if group.is_empty() {
            return;
        }
        if self.shared.failed.load(Ordering::Acquire) {
            let err = self.shared.failed_error(&self.active.path);
            return self.refuse(group.into_iter().map(|(_, reply)| reply), group_bytes, &err);
        }
        if let Err(err) = self.rotate_if_full() {
            tracing::error!(error = %err, "journal rotation failed");
            return self.refuse(group.into_iter().map(|(_, reply)| reply), group_bytes, &err);
        }
        buffer.clear();
        let group_entries: usize = group.iter().map(|(entries, _)| entries.len()).sum();
        let mut new_keys = Vec::with_capacity(group_entries);
        let mut appends = Vec::with_capacity(group.len());
        let mut seq = self.next_seq;
        let mut lookup_failed = None;
        // The dedup set and filters are far bigger than the cache: their lines are requested
        // `PREFETCH_DISTANCE` keys ahead, so the lookups' misses overlap.
        let group_keys: Vec<u128> = group
            .iter()
            .flat_map(|(entries, _)| entries.iter().filter_map(|e| e.dedup_key))
            .collect();
        let mut keys_ahead = group_keys.iter();
        for key in keys_ahead.by_ref().take(PREFETCH_DISTANCE) {
            self.keys.prefetch(*key);
        }
        'appends: for (entries, reply) in group {
            let mut outcomes = Vec::with_capacity(entries.len());
            for entry in &entries {
                if let Some(key) = entry.dedup_key {
                    if let Some(ahead) = keys_ahead.next() {
                        self.keys.prefetch(*ahead);
                    }
                    // Inserted now so later entries see it; taken out again if the write fails.
                    match self.keys.insert(key) {
                        Ok(true) => new_keys.push(key),
                        Ok(false) => {
                            outcomes.push(Appended::Duplicate);
                            continue;
                        }
                        Err(err) => {
                            lookup_failed = Some(err);
                            appends.push(WrittenAppend {
                                entries,
                                outcomes,
                                reply,
                            });
                            break 'appends;
                        }
                    }
                }
                encode(buffer, seq, entry.dedup_key, &entry.payload);
                outcomes.push(Appended::Stored { seq });
                seq += 1;
            }
            appends.push(WrittenAppend {
                entries,
                outcomes,
                reply,
            });
        }
        if let Some(err) = lookup_failed {
            // Storing without knowing whether a message is a repeat could store it twice.
            tracing::error!(error = %err, "reading the dedup keys failed");
            for key in &new_keys {
                self.keys.forget(*key);
            }
            let err = JournalError::io(&self.dir, std::io::Error::other(err.to_string()));
            return self.refuse(appends.into_iter().map(|a| a.reply), group_bytes, &err);
        }
        let duplicates = appends
            .iter()
            .flat_map(|a| &a.outcomes)
            .filter(|o| **o == Appended::Duplicate)
            .count();
        if duplicates > 0 {
            metrics::counter!("kith_events_deduplicated_total").increment(duplicates as u64);
        }

        let written_at = Instant::now();
        if !buffer.is_empty() {
            if let Err(err) = self.active_file.write_all_at(buffer, self.active.len) {
                tracing::error!(error = %err, path = %self.active.path.display(), "journal write failed");
                metrics::counter!("kith_journal_write_errors_total").increment(1);
                // Cut off whatever part of the group reached the file: it was never acknowledged.
                // Earlier groups end where `active.len` says and are still being synced.
                let _ = self.active_file.set_len(self.active.len);
                for key in &new_keys {
                    self.keys.forget(*key);
                }
                let err = JournalError::io(&self.active.path, err);
                if err.is_disk_full() {
                    let needed = buffer.len() as u64;
                    self.shared
                        .refused_for_room
                        .store(needed, Ordering::Release);
                }
                return self.refuse(appends.into_iter().map(|a| a.reply), group_bytes, &err);
            }
            metrics::counter!("kith_journal_bytes_written_total").increment(buffer.len() as u64);
            // Loaded first: a store on every group would bounce the line between threads.
            if self.shared.refused_for_room.load(Ordering::Relaxed) != 0 {
                self.shared.refused_for_room.store(0, Ordering::Release);
            }
            self.active.len += buffer.len() as u64;
            self.active.last_seq = seq - 1;
            self.next_seq = seq;
            if let Some(segment_keys) = &mut self.active.keys {
                segment_keys.extend_from_slice(&new_keys);
            }
        }
        let handover = Handover::Written {
            file: self.active_file.clone(),
            path: self.active.path.clone(),
            wrote_records: !buffer.is_empty(),
            appends,
            queued_bytes: group_bytes,
            written_at,
        };
        if let Err(mpsc::SendError(Handover::Written { appends, .. })) =
            self.to_syncer.send(handover)
        {
            // Only if the sync thread died (a panicking sink): nothing can be acknowledged.
            self.refuse(
                appends.into_iter().map(|a| a.reply),
                group_bytes,
                &JournalError::Stopped,
            );
        }
        // While the sync thread syncs this group.
        self.keys.forget_retired(FORGET_PER_GROUP);
    }

    /// Answers appends that will not be stored with `err`, and takes their bytes off the queue.
    fn refuse(
        &self,
        replies: impl IntoIterator<Item = oneshot::Sender<AppendResult>>,
        group_bytes: usize,
        err: &JournalError,
    ) {
        if err.is_disk_full() {
            // A new segment's file, or its name, found no room: one page is the least it needs.
            let page = 4096;
            self.shared
                .refused_for_room
                .fetch_max(page, Ordering::AcqRel);
        }
        self.shared
            .queued_bytes
            .fetch_sub(group_bytes, Ordering::AcqRel);
        for reply in replies {
            let _ = reply.send(Err(err.copy()));
        }
    }

    fn rotate_if_full(&mut self) -> Result<(), JournalError> {
        if self.active.len < self.options.segment_bytes {
            return Ok(());
        }
        // This sync may be the one the kernel tells of a lost write in groups the sync thread
        // has yet to sync and answer: failing it fails the journal, as the sync thread's would.
        let closing = &self.active_file;
        let records = self.active.len;
        self.shared
            .sync_or_fail(&self.active.path, || (self.end_segment)(closing, records))?;
        let path = segment_path(&self.dir, self.next_seq);
        let file = self
            .reuse_spare(&path)
            .map_err(|e| JournalError::io(&path, e))?;
        sync_dir(&self.dir)?;
        let new_active = SegmentInfo {
            path,
            first_seq: self.next_seq,
            last_seq: self.next_seq - 1,
            len: 0,
            keys: Some(Vec::new()),
        };
        let old = std::mem::replace(&mut self.active, new_active);
        self.closed.push(old);
        self.active_file = Arc::new(file);
        Ok(())
    }

    /// The file for a new segment at `path`: a spare renamed there when there is one (its old
    /// records have lower seqs than any this segment will hold, so readers stop at them), else
    /// a new file. A file already at `path` (a spare renamed there by a rotation whose `open`
    /// then failed) is taken as it is, for the same reason: refusing it would fail every later
    /// rotation too.
    fn reuse_spare(&mut self, path: &std::path::Path) -> std::io::Result<File> {
        while let Some(spare) = self.spares.pop() {
            match fs::rename(&spare, path) {
                Ok(()) => {
                    metrics::counter!("kith_journal_segments_reused_total").increment(1);
                    return OpenOptions::new().write(true).open(path);
                }
                Err(err) => {
                    tracing::warn!(error = %err, spare = %spare.display(), "a spare journal file could not be reused");
                }
            }
        }
        OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
    }

    /// Retires closed segments fully at or below `through_seq` on a thread of its own (see
    /// [`retire_segments`]); `reply` is answered once they are gone. One retirement at a time, in
    /// order: one still under way is waited for first.
    fn start_retirement(
        &mut self,
        through_seq: u64,
        reply: oneshot::Sender<Result<usize, JournalError>>,
    ) {
        self.finish_retirement();
        if let Err(err) = self.keys.poll() {
            let _ = reply.send(Err(err));
            return;
        }
        let retirable = self
            .closed
            .iter()
            .take_while(|s| s.last_seq <= through_seq)
            .count();
        if retirable == 0 {
            let _ = reply.send(Ok(0));
            return;
        }
        let segments: Vec<SegmentInfo> = self.closed.drain(..retirable).collect();
        let range = SeqRange {
            first: segments[0].first_seq,
            last: segments[retirable - 1].last_seq.max(segments[0].first_seq),
        };
        let plan = RetirePlan {
            runs_dir: self.keys.dir().to_path_buf(),
            journal_dir: self.dir.clone(),
            range,
            write_run: !self.keys.covers(&range),
            spare_slots: MAX_SPARES.saturating_sub(self.spares.len()),
            spare_min_len: self.options.segment_bytes,
        };
        match self.retirer.plans.send((plan, segments)) {
            Ok(()) => self.retirer.under_way = Some(reply),
            Err(mpsc::SendError((plan, segments))) => {
                // The thread is gone (it panicked): retire here, as before there was one.
                self.retirer.under_way = Some(reply);
                self.install_retirement(retire_segments(&plan, segments));
            }
        }
    }

    /// Installs a retirement that has finished, if any.
    fn poll_retirement(&mut self) {
        if self.retirer.under_way.is_none() {
            return;
        }
        match self.retirer.outcomes.try_recv() {
            Ok(outcome) => self.install_retirement(outcome),
            Err(mpsc::TryRecvError::Empty) => {}
            Err(mpsc::TryRecvError::Disconnected) => self.finish_retirement(),
        }
    }

    /// Waits for the retirement under way, if any, and installs it.
    fn finish_retirement(&mut self) {
        if self.retirer.under_way.is_none() {
            return;
        }
        let outcome = self.retirer.outcomes.recv().unwrap_or_else(|_| {
            // The thread panicked: which files it deleted is unknown, so none of its segments
            // are tracked any more (their keys stay in memory; a restart finds what is left).
            RetireOutcome::failed(
                Vec::new(),
                JournalError::io(
                    &self.dir,
                    std::io::Error::other("the thread retiring journal segments panicked"),
                ),
            )
        });
        self.install_retirement(outcome);
    }

    /// Takes in what the retirement under way did, and answers it.
    fn install_retirement(&mut self, outcome: RetireOutcome) {
        let RetireOutcome {
            run,
            durable_keys,
            spares,
            retired,
            remaining,
            error,
        } = outcome;
        self.spares.extend(spares);
        // Segments that could not go are still the oldest closed ones.
        self.closed.splice(0..0, remaining);
        let installed = self.keys.add_retired(run, durable_keys);
        if retired > 0 {
            metrics::counter!("kith_journal_segments_retired_total").increment(retired as u64);
        }
        metrics::gauge!("kith_dedup_index_bytes").set(self.keys.memory_bytes() as f64);
        let answer = match (error, installed) {
            (Some(err), _) | (None, Err(err)) => Err(err),
            (None, Ok(())) => Ok(retired),
        };
        if let Some(reply) = self.retirer.under_way.take() {
            let _ = reply.send(answer);
        }
    }
}

/// What a retirement thread needs to know.
struct RetirePlan {
    runs_dir: PathBuf,
    journal_dir: PathBuf,
    range: SeqRange,
    /// False when a run already covers `range` (segments back after a crash).
    write_run: bool,
    /// How many retired files may be kept for reuse.
    spare_slots: usize,
    /// Only files at least this long are worth keeping: a new segment grows to that size.
    spare_min_len: u64,
}

impl RetireOutcome {
    fn failed(remaining: Vec<SegmentInfo>, error: JournalError) -> RetireOutcome {
        RetireOutcome {
            run: None,
            durable_keys: Vec::new(),
            spares: Vec::new(),
            retired: 0,
            remaining,
            error: Some(error),
        }
    }
}

/// Retires `segments` (closed, oldest first): first their keys go to a dedup run on disk
/// (synced), then the files are deleted or kept as spares — so a crash in between only leaves a
/// key recorded twice, never a key lost.
fn retire_segments(plan: &RetirePlan, segments: Vec<SegmentInfo>) -> RetireOutcome {
    let mut keys = Vec::new();
    for segment in &segments {
        match &segment.keys {
            Some(written) => keys.extend_from_slice(written),
            None => match keys_in_segment_file(segment) {
                Ok(found) => keys.extend(found),
                Err(err) => return RetireOutcome::failed(segments, err),
            },
        }
    }
    let run = if plan.write_run {
        match write_run(&plan.runs_dir, plan.range, &keys) {
            Ok(run) => Some(run),
            Err(err) => return RetireOutcome::failed(segments, err),
        }
    } else {
        None
    };
    let mut outcome = RetireOutcome {
        run,
        durable_keys: keys,
        spares: Vec::new(),
        retired: 0,
        remaining: Vec::new(),
        error: None,
    };
    let mut segments = segments.into_iter();
    for segment in segments.by_ref() {
        let gone = if outcome.spares.len() < plan.spare_slots && segment.len >= plan.spare_min_len {
            let spare = spare_path(&segment.path);
            fs::rename(&segment.path, &spare).map(|()| outcome.spares.push(spare))
        } else {
            fs::remove_file(&segment.path)
        };
        if let Err(err) = gone {
            outcome.error = Some(JournalError::io(&segment.path, err));
            outcome.remaining.push(segment);
            break;
        }
        outcome.retired += 1;
    }
    outcome.remaining.extend(segments);
    if let Err(err) = sync_dir(&plan.journal_dir) {
        outcome.error.get_or_insert(err);
    }
    outcome
}

/// The dedup keys of a segment this process did not write (found at startup).
fn keys_in_segment_file(segment: &SegmentInfo) -> Result<Vec<u128>, JournalError> {
    let path = &segment.path;
    let mut bytes = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .map_err(|e| JournalError::io(path, e))?;
    let mut keys = Vec::new();
    scan(&bytes, segment.first_seq, |record| {
        keys.extend(record.dedup_key);
        Ok(())
    })?;
    Ok(keys)
}
