//! The writer thread: the first stage of the journal's pipeline (dedup, encoding, `write`),
//! rotation and retirement. The sync thread ([`crate::syncer`]) makes what it writes durable.

use std::fs::{self, File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, Receiver, Sender};
use std::thread::JoinHandle;
use std::time::Instant;

use tokio::sync::oneshot;

use crate::dedup::{KeyIndex, SeqRange, sync_dir};
use crate::record::encode;
use crate::segment::{Recovered, SegmentInfo, list_spares, scan, segment_path, spare_path};
use crate::syncer::{Handover, Shared, SyncData, Syncer, WrittenAppend};
use crate::{AppendResult, Appended, Command, Entry, JournalError, JournalOptions, Sink};

/// Retired segment files kept to be written over by new segments. Overwriting blocks a file
/// already has lets `fdatasync` write just the data: appending to a new file also changes its
/// size and block map, so every sync commits filesystem metadata too (0.39 against 0.25 ms an
/// `fdatasync` on the ext4 disk measured: `bench/ingest/fsync_latency.py`). Four cover the
/// segments one flush retires at full speed.
/// They hold old records until overwritten, like the segments did.
const MAX_SPARES: usize = 4;

pub(crate) struct WriterState<T> {
    dir: PathBuf,
    options: JournalOptions,
    /// Closed segments, oldest first; the active one is separate.
    closed: Vec<SegmentInfo>,
    active: SegmentInfo,
    /// Shared with the sync thread, which syncs it after each write.
    active_file: Arc<File>,
    keys: KeyIndex,
    /// Retired segments' files kept for reuse, at most [`MAX_SPARES`].
    spares: Vec<PathBuf>,
    next_seq: u64,
    shared: Arc<Shared>,
    to_syncer: Sender<Handover<T>>,
    syncer: JoinHandle<()>,
}

impl<T: Send + 'static> WriterState<T> {
    pub(crate) fn new(
        dir: PathBuf,
        options: JournalOptions,
        recovered: Recovered,
        sink: Sink<T>,
        sync_data: SyncData,
        shared: Arc<Shared>,
    ) -> Result<Self, JournalError> {
        let Recovered {
            mut segments,
            keys,
            last_seq,
        } = recovered;
        let active = match segments.pop() {
            Some(active) => active,
            None => {
                let path = segment_path(&dir, last_seq + 1);
                File::create(&path).map_err(|e| JournalError::io(&path, e))?;
                sync_dir(&dir)?;
                SegmentInfo {
                    path,
                    first_seq: last_seq + 1,
                    last_seq,
                    len: 0,
                    keys: Some(Vec::new()),
                }
            }
        };
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
            keys,
            spares,
            next_seq: last_seq + 1,
            shared,
            to_syncer,
            syncer,
        })
    }

    pub(crate) fn run(mut self, commands: Receiver<Command<T>>) {
        let mut buffer = Vec::new();
        while let Ok(first) = commands.recv() {
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
                        let _ = reply.send(self.retire(through_seq));
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
        // The sync thread answers what is handed over and ends when its channel closes.
        drop(self.to_syncer);
        if self.syncer.join().is_err() {
            tracing::error!("the journal's sync thread panicked");
        }
        let _ = self.active_file.sync_all();
        if let Err(err) = self.keys.finish_merges() {
            tracing::warn!(error = %err, "a dedup merge did not finish; it is redone at the next start");
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
            let err = JournalError::io(&self.active.path, err);
            return self.refuse(group.into_iter().map(|(_, reply)| reply), group_bytes, &err);
        }
        buffer.clear();
        let group_entries: usize = group.iter().map(|(entries, _)| entries.len()).sum();
        let mut new_keys = Vec::with_capacity(group_entries);
        let mut appends = Vec::with_capacity(group.len());
        let mut seq = self.next_seq;
        let mut lookup_failed = None;
        'appends: for (entries, reply) in group {
            let mut outcomes = Vec::with_capacity(entries.len());
            for entry in &entries {
                if let Some(key) = entry.dedup_key {
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
                return self.refuse(appends.into_iter().map(|a| a.reply), group_bytes, &err);
            }
            metrics::counter!("kith_journal_bytes_written_total").increment(buffer.len() as u64);
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
    }

    /// Answers appends that will not be stored with `err`, and takes their bytes off the queue.
    fn refuse(
        &self,
        replies: impl IntoIterator<Item = oneshot::Sender<AppendResult>>,
        group_bytes: usize,
        err: &JournalError,
    ) {
        self.shared
            .queued_bytes
            .fetch_sub(group_bytes, Ordering::AcqRel);
        for reply in replies {
            let _ = reply.send(Err(err.copy()));
        }
    }

    fn rotate_if_full(&mut self) -> std::io::Result<()> {
        if self.active.len < self.options.segment_bytes {
            return Ok(());
        }
        // A reused file may hold old records past this segment's: cut them, so a closed segment
        // ends where its records do.
        if self.active_file.metadata()?.len() > self.active.len {
            self.active_file.set_len(self.active.len)?;
        }
        self.active_file.sync_all()?;
        let path = segment_path(&self.dir, self.next_seq);
        let file = self.reuse_spare(&path)?;
        sync_dir(&self.dir).map_err(|e| std::io::Error::other(e.to_string()))?;
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

    /// Retires closed segments fully at or below `through_seq`: first their keys go to a dedup
    /// run on disk (synced), then the segments are deleted — so a crash in between only leaves a
    /// key recorded twice, never a key lost.
    fn retire(&mut self, through_seq: u64) -> Result<usize, JournalError> {
        self.keys.poll()?;
        let retirable = self
            .closed
            .iter()
            .take_while(|s| s.last_seq <= through_seq)
            .count();
        if retirable == 0 {
            return Ok(0);
        }
        let retiring = &self.closed[..retirable];
        let range = SeqRange {
            first: retiring[0].first_seq,
            last: retiring[retirable - 1].last_seq.max(retiring[0].first_seq),
        };
        let mut keys = Vec::new();
        for segment in retiring {
            match &segment.keys {
                Some(written) => keys.extend_from_slice(written),
                None => keys.extend(keys_in_segment_file(segment)?),
            }
        }
        self.keys.retire(range, keys)?;
        for segment in self.closed.drain(..retirable) {
            // Only full-sized files are worth keeping: a new segment grows to that size.
            if self.spares.len() < MAX_SPARES && segment.len >= self.options.segment_bytes {
                let spare = spare_path(&segment.path);
                fs::rename(&segment.path, &spare)
                    .map_err(|e| JournalError::io(&segment.path, e))?;
                self.spares.push(spare);
            } else {
                fs::remove_file(&segment.path).map_err(|e| JournalError::io(&segment.path, e))?;
            }
        }
        sync_dir(&self.dir)?;
        metrics::counter!("kith_journal_segments_retired_total").increment(retirable as u64);
        metrics::gauge!("kith_dedup_index_bytes").set(self.keys.memory_bytes() as f64);
        Ok(retirable)
    }
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
