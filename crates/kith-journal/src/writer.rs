//! The writer thread: group commit, rotation, retirement.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::Receiver;
use std::time::Instant;

use tokio::sync::oneshot;

use crate::dedup::{KeyIndex, SeqRange, sync_dir};
use crate::record::{Decoded, decode, encode};
use crate::segment::{Recovered, SegmentInfo, segment_path};
use crate::{AppendResult, Appended, Command, Durable, Entry, JournalError, JournalOptions, Sink};

pub(crate) struct WriterState<T> {
    dir: PathBuf,
    options: JournalOptions,
    /// Closed segments, oldest first; the active one is separate.
    closed: Vec<SegmentInfo>,
    active: SegmentInfo,
    active_file: File,
    keys: KeyIndex,
    next_seq: u64,
    sink: Sink<T>,
    /// Shared with [`crate::Journal::append`]: payload bytes queued and not yet written.
    queued_bytes: Arc<AtomicUsize>,
}

impl<T: Send + 'static> WriterState<T> {
    pub(crate) fn new(
        dir: PathBuf,
        options: JournalOptions,
        recovered: Recovered,
        sink: Sink<T>,
        queued_bytes: Arc<AtomicUsize>,
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
        let active_file = OpenOptions::new()
            .append(true)
            .open(&active.path)
            .map_err(|e| JournalError::io(&active.path, e))?;
        Ok(WriterState {
            dir,
            options,
            closed: segments,
            active,
            active_file,
            keys,
            next_seq: last_seq + 1,
            sink,
            queued_bytes,
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
                        then(self.next_seq - 1);
                    }
                }
                if group_entries < self.options.max_group_entries {
                    next = commands.try_recv().ok();
                }
            }
            self.commit_group(group, group_bytes, &mut buffer);
        }
        let _ = self.active_file.sync_all();
        if let Err(err) = self.keys.finish_merges() {
            tracing::warn!(error = %err, "a dedup merge did not finish; it is redone at the next start");
        }
    }

    fn commit_group(
        &mut self,
        group: Vec<(Vec<Entry<T>>, oneshot::Sender<AppendResult>)>,
        group_bytes: usize,
        buffer: &mut Vec<u8>,
    ) {
        // Off the queue now: whoever is told the outcome may append again at once.
        self.queued_bytes.fetch_sub(group_bytes, Ordering::AcqRel);
        if group.is_empty() {
            return;
        }
        if let Err(err) = self.rotate_if_full() {
            tracing::error!(error = %err, "journal rotation failed");
            for (_, reply) in group {
                let _ = reply.send(Err(JournalError::io(&self.active.path, io_copy(&err))));
            }
            return;
        }
        buffer.clear();
        let mut outcomes = Vec::with_capacity(group.len());
        let group_entries: usize = group.iter().map(|(entries, _)| entries.len()).sum();
        let mut new_keys = Vec::with_capacity(group_entries);
        let mut seq = self.next_seq;
        let mut lookup_failed = None;
        'entries: for (entries, _) in &group {
            let mut results = Vec::with_capacity(entries.len());
            for entry in entries {
                if let Some(key) = entry.dedup_key {
                    // Inserted now so later entries of the same group see it; taken out
                    // again below if the write fails.
                    match self.keys.insert(key) {
                        Ok(true) => new_keys.push(key),
                        Ok(false) => {
                            results.push(Appended::Duplicate);
                            continue;
                        }
                        Err(err) => {
                            lookup_failed = Some(err);
                            break 'entries;
                        }
                    }
                }
                encode(buffer, seq, entry.dedup_key, &entry.payload);
                results.push(Appended::Stored { seq });
                seq += 1;
            }
            outcomes.push(results);
        }
        if let Some(err) = lookup_failed {
            // Storing without knowing whether a message is a repeat could store it twice.
            tracing::error!(error = %err, "reading the dedup keys failed");
            for key in &new_keys {
                self.keys.forget(*key);
            }
            let message = err.to_string();
            for (_, reply) in group {
                let _ = reply.send(Err(JournalError::io(
                    &self.dir,
                    std::io::Error::other(message.clone()),
                )));
            }
            return;
        }
        let duplicates: usize = outcomes
            .iter()
            .flatten()
            .filter(|o| **o == Appended::Duplicate)
            .count();
        if duplicates > 0 {
            metrics::counter!("kith_events_deduplicated_total").increment(duplicates as u64);
        }

        if !buffer.is_empty() {
            let started = Instant::now();
            let written = self
                .active_file
                .write_all(buffer)
                .and_then(|()| self.active_file.sync_data());
            if let Err(err) = written {
                tracing::error!(error = %err, path = %self.active.path.display(), "journal write failed");
                metrics::counter!("kith_journal_write_errors_total").increment(1);
                // Cut off whatever part of the group reached the file: it was never acknowledged.
                let _ = self.active_file.set_len(self.active.len);
                for key in &new_keys {
                    self.keys.forget(*key);
                }
                for (_, reply) in group {
                    let _ = reply.send(Err(JournalError::io(&self.active.path, io_copy(&err))));
                }
                return;
            }
            metrics::counter!("kith_journal_fsyncs_total").increment(1);
            metrics::counter!("kith_journal_bytes_written_total").increment(buffer.len() as u64);
            metrics::histogram!("kith_journal_commit_seconds")
                .record(started.elapsed().as_secs_f64());
            self.active.len += buffer.len() as u64;
            self.active.last_seq = seq - 1;
            self.next_seq = seq;
            if let Some(segment_keys) = &mut self.active.keys {
                segment_keys.extend_from_slice(&new_keys);
            }
        }

        for ((entries, reply), results) in group.into_iter().zip(outcomes) {
            let mut stored_items = Vec::with_capacity(entries.len());
            for (entry, result) in entries.into_iter().zip(&results) {
                if let Appended::Stored { seq } = result {
                    stored_items.push(Durable {
                        seq: *seq,
                        payload: entry.payload,
                        item: entry.item,
                    });
                }
            }
            // The sink must see an entry before its append is acknowledged.
            if !stored_items.is_empty() {
                (self.sink)(stored_items);
            }
            let _ = reply.send(Ok(results));
        }
    }

    fn rotate_if_full(&mut self) -> std::io::Result<()> {
        if self.active.len < self.options.segment_bytes {
            return Ok(());
        }
        self.active_file.sync_all()?;
        let path = segment_path(&self.dir, self.next_seq);
        let file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(&path)?;
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
        self.active_file = file;
        Ok(())
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
                None => keys.extend(keys_in_segment_file(&segment.path)?),
            }
        }
        self.keys.retire(range, keys)?;
        for segment in self.closed.drain(..retirable) {
            fs::remove_file(&segment.path).map_err(|e| JournalError::io(&segment.path, e))?;
        }
        sync_dir(&self.dir)?;
        metrics::counter!("kith_journal_segments_retired_total").increment(retirable as u64);
        metrics::gauge!("kith_dedup_index_bytes").set(self.keys.memory_bytes() as f64);
        Ok(retirable)
    }
}

/// The dedup keys of a segment this process did not write (found at startup).
fn keys_in_segment_file(path: &std::path::Path) -> Result<Vec<u128>, JournalError> {
    let mut bytes = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .map_err(|e| JournalError::io(path, e))?;
    let mut keys = Vec::new();
    let mut offset = 0;
    while let Decoded::Record { record, len } = decode(&bytes[offset..]) {
        if let Some(key) = record.dedup_key {
            keys.push(key);
        }
        offset += len;
    }
    Ok(keys)
}

fn io_copy(err: &std::io::Error) -> std::io::Error {
    std::io::Error::new(err.kind(), err.to_string())
}
