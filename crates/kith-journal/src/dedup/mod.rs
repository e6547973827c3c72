//! Every dedup key ever stored, in memory that does not grow with the events.
//!
//! A `messageId` must be refused however late its retry, so the journal remembers the key of
//! every message it ever stored. Holding them all in a hash set cost about 28 bytes an event (285
//! MiB at ten million events, and the whole file read again at each start). Now:
//! - keys of records still in journal segments are in an exact in-memory set (`live`), bounded by
//!   what the event tables have not taken yet;
//! - keys of retired segments are in sorted, immutable run files under `dedup/` on disk
//!   ([`run`]), each with a Bloom filter ([`filter`], 2 bytes a key) and a fence key per 4 KiB
//!   block in memory. An absent key costs one filter probe per run; a present one (or a rare
//!   false positive) one 4 KiB read.
//! - Runs are merged in the background, two at a time, when the older is no bigger than the newer
//!   in powers of two (a binary counter), so there are about log₂(retired segments) runs and each
//!   key is rewritten about as many times.
//!
//! Crash safety: a run is complete before its segments are deleted (written, synced, renamed,
//! directory synced); a merged run is complete before its inputs are deleted, and at start-up a
//! run whose seq range another run covers is a merge's leftover input and is deleted.

mod filter;
mod live;
mod run;

use std::fs;
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;

use crate::JournalError;
pub(crate) use live::LiveKeys;
use run::TEMP_SUFFIX;
pub(crate) use run::{Run, SeqRange};

/// The directory of run files, inside the journal directory.
pub(crate) const RUNS_DIR: &str = "dedup";
/// Before runs, retired keys were appended, unsorted, to this file; it becomes a run at start-up.
pub(crate) const LEGACY_KEYS_FILE: &str = "dedup.keys";

/// How many keys ahead of the one being looked up [`KeyIndex::prefetch`] is called: enough to keep
/// several cache misses in flight, few enough that the lines are still cached when used.
pub(crate) const PREFETCH_DISTANCE: usize = 16;

pub(crate) struct KeyIndex {
    dir: PathBuf,
    /// Keys of records still in segments, and of retired ones not yet taken out (see
    /// `retired_in_live`).
    live: LiveKeys,
    /// Keys a run on disk now holds that are still in `live`, to be taken out a slice at a time
    /// ([`KeyIndex::forget_retired`]): removing a whole segment's keys at once is a hash-set miss
    /// per key, tens of milliseconds in which the journal would answer nothing. A key in both
    /// places is still found, so the delay costs only memory.
    retired_in_live: Vec<u128>,
    /// Ascending by the seqs they cover.
    runs: Vec<Run>,
    merging: Option<JoinHandle<Result<Run, JournalError>>>,
}

impl KeyIndex {
    /// Opens the runs under `journal_dir/dedup` (turning a legacy `dedup.keys` into one); `live`
    /// holds the keys found in the segments.
    pub(crate) fn open(journal_dir: &Path, live: LiveKeys) -> Result<KeyIndex, JournalError> {
        let dir = journal_dir.join(RUNS_DIR);
        create_dir_synced(&dir)?;
        let mut ranges = Vec::new();
        for entry in fs::read_dir(&dir).map_err(|e| JournalError::io(&dir, e))? {
            let entry = entry.map_err(|e| JournalError::io(&dir, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.ends_with(TEMP_SUFFIX) {
                // A run or merge a crash interrupted: its inputs are all still there.
                fs::remove_file(entry.path()).map_err(|e| JournalError::io(&entry.path(), e))?;
            } else if let Some(range) = SeqRange::parse(&name) {
                ranges.push(range);
            }
        }
        let mut runs = Vec::new();
        for range in &ranges {
            let path = dir.join(range.file_name());
            if ranges
                .iter()
                .any(|other| other != range && other.covers(range))
            {
                // Merged into `other` before a crash kept it from being deleted.
                fs::remove_file(&path).map_err(|e| JournalError::io(&path, e))?;
                continue;
            }
            runs.push(Run::open(&path, *range)?);
        }
        runs.sort_by_key(|run| run.range);
        let mut index = KeyIndex {
            dir,
            live,
            retired_in_live: Vec::new(),
            runs,
            merging: None,
        };
        index.migrate_legacy_file(journal_dir)?;
        index.start_merge_if_due();
        tracing::debug!(
            runs = index.runs.len(),
            retired_keys = index.runs.iter().map(|r| r.count).sum::<u64>(),
            memory_bytes = index.memory_bytes(),
            "dedup keys opened"
        );
        Ok(index)
    }

    fn migrate_legacy_file(&mut self, journal_dir: &Path) -> Result<(), JournalError> {
        let path = journal_dir.join(LEGACY_KEYS_FILE);
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(JournalError::io(&path, e)),
        };
        // A torn last key (a crash mid-append) is dropped: its segment was not deleted, so it is
        // among the live keys.
        let keys: Vec<u128> = bytes
            .chunks_exact(16)
            .map(|chunk| {
                let mut key = [0u8; 16];
                key.copy_from_slice(chunk);
                u128::from_le_bytes(key)
            })
            .collect();
        drop(bytes);
        // Every retired segment came before every segment still here: seq 0 sorts first.
        let range = SeqRange { first: 0, last: 0 };
        let run = Run::write(&self.dir, range, &keys)?;
        sync_dir(&self.dir)?;
        self.runs.retain(|r| r.range != range);
        self.runs.insert(0, run);
        fs::remove_file(&path).map_err(|e| JournalError::io(&path, e))?;
        tracing::info!(path = %path.display(), "retired dedup keys moved to a sorted run");
        Ok(())
    }

    /// Whether `key` was ever stored.
    #[cfg(test)]
    pub(crate) fn contains(&self, key: u128) -> Result<bool, JournalError> {
        if self.live.contains(key) {
            return Ok(true);
        }
        // Newest first: a retry is most likely of a recent message.
        for run in self.runs.iter().rev() {
            if run.contains(key)? {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Records `key` as stored; false (and nothing recorded) when it already was.
    pub(crate) fn insert(&mut self, key: u128) -> Result<bool, JournalError> {
        // One probe of the live set both asks and records (every event passes here, and the
        // set is too big for the cache); a key found in a run afterwards is taken out again.
        if !self.live.insert(key) {
            return Ok(false);
        }
        for run in self.runs.iter().rev() {
            match run.contains(key) {
                Ok(false) => {}
                found_or_failed => {
                    self.live.remove(key);
                    return found_or_failed.map(|found| !found);
                }
            }
        }
        Ok(true)
    }

    /// Starts loading the memory that [`KeyIndex::insert`] of `key` reads: its slot in the live
    /// set and its block in each run's filter. The writer calls it a few keys ahead of inserting,
    /// so the cache misses of neighbouring keys overlap.
    #[inline]
    pub(crate) fn prefetch(&self, key: u128) {
        self.live.prefetch(key);
        for run in &self.runs {
            run.prefetch(key);
        }
    }

    /// Forgets a key [`KeyIndex::insert`] recorded for a write that then failed.
    pub(crate) fn forget(&mut self, key: u128) {
        self.live.remove(key);
    }

    /// Moves the keys of retired segments (seqs `range`) from memory to a run on disk, all at
    /// once. The journal's writer does the same in steps ([`write_run`] on another thread, then
    /// [`KeyIndex::add_retired`] and [`KeyIndex::forget_retired`]).
    #[cfg(test)]
    pub(crate) fn retire(&mut self, range: SeqRange, keys: Vec<u128>) -> Result<(), JournalError> {
        let run = if self.covers(&range) {
            None
        } else {
            Some(write_run(&self.dir, range, &keys)?)
        };
        self.add_retired(run, keys)?;
        self.forget_retired(usize::MAX);
        Ok(())
    }

    /// The directory runs are written to (see [`write_run`]).
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether a run already holds every key of `range`: after a crash between writing a run and
    /// deleting its segments, the segments come back, and their keys are on disk already.
    pub(crate) fn covers(&self, range: &SeqRange) -> bool {
        self.runs.iter().any(|run| run.range.covers(range))
    }

    /// Takes in the run [`write_run`] made of retired segments' `keys` (`None` when a run
    /// already covered them). Their keys leave memory over the next calls of
    /// [`KeyIndex::forget_retired`].
    pub(crate) fn add_retired(
        &mut self,
        run: Option<Run>,
        keys: Vec<u128>,
    ) -> Result<(), JournalError> {
        if let Some(run) = run {
            let position = self.runs.partition_point(|r| r.range < run.range);
            self.runs.insert(position, run);
        }
        if self.retired_in_live.is_empty() {
            self.retired_in_live = keys;
        } else {
            self.retired_in_live.extend_from_slice(&keys);
        }
        self.install_finished_merge()?;
        self.start_merge_if_due();
        Ok(())
    }

    /// Takes up to `budget` keys that runs hold out of memory; returns whether any remain.
    pub(crate) fn forget_retired(&mut self, budget: usize) -> bool {
        let keep = self.retired_in_live.len().saturating_sub(budget);
        let forgotten = &self.retired_in_live[keep..];
        for (at, key) in forgotten.iter().enumerate() {
            if let Some(ahead) = forgotten.get(at + PREFETCH_DISTANCE) {
                self.live.prefetch(*ahead);
            }
            self.live.remove(*key);
        }
        self.retired_in_live.truncate(keep);
        if self.retired_in_live.is_empty() {
            // Hand back the list's memory rather than keep a segment's worth for the next one.
            self.retired_in_live = Vec::new();
        }
        !self.retired_in_live.is_empty()
    }

    /// Installs a background merge that has finished, if any, and starts the next one due.
    pub(crate) fn poll(&mut self) -> Result<(), JournalError> {
        self.install_finished_merge()?;
        self.start_merge_if_due();
        Ok(())
    }

    fn install_finished_merge(&mut self) -> Result<(), JournalError> {
        if !self.merging.as_ref().is_some_and(|m| m.is_finished()) {
            return Ok(());
        }
        self.install_merge()
    }

    /// Waits for the merge in progress, if any, and installs it.
    fn install_merge(&mut self) -> Result<(), JournalError> {
        let Some(merging) = self.merging.take() else {
            return Ok(());
        };
        let merged = match merging.join() {
            Ok(result) => result?,
            Err(_) => {
                return Err(JournalError::io(
                    &self.dir,
                    std::io::Error::other("the dedup merge thread panicked"),
                ));
            }
        };
        let (inputs, kept): (Vec<Run>, Vec<Run>) = std::mem::take(&mut self.runs)
            .into_iter()
            .partition(|run| merged.range.covers(&run.range));
        self.runs = kept;
        let position = self.runs.partition_point(|r| r.range < merged.range);
        self.runs.insert(position, merged);
        // The merged run's name is made durable before its inputs go: a power cut must never
        // keep the deletions and lose the rename, which would leave only the `.tmp` file that
        // the next start deletes, and with it every key the inputs held.
        sync_dir(&self.dir)?;
        for input in inputs
            .iter()
            .filter(|input| input.path != self.runs[position].path)
        {
            fs::remove_file(&input.path).map_err(|e| JournalError::io(&input.path, e))?;
        }
        sync_dir(&self.dir)?;
        metrics::counter!("kith_dedup_runs_merged_total").increment(1);
        Ok(())
    }

    /// Starts merging two neighbouring runs where the older is no larger than the newer in
    /// powers of two (the newest such pair), so sizes fall from oldest to newest; one merge at a
    /// time. Runs retired while a merge is under way wait for the next one, wherever they are.
    fn start_merge_if_due(&mut self) {
        if self.merging.is_some() {
            return;
        }
        let Some(older) = (0..self.runs.len().saturating_sub(1))
            .rev()
            .find(|&i| level(self.runs[i].count) <= level(self.runs[i + 1].count))
        else {
            return;
        };
        let (older, newer) = (&self.runs[older], &self.runs[older + 1]);
        let dir = self.dir.clone();
        let inputs = [older.input(), newer.input()];
        let spawned = std::thread::Builder::new()
            .name("kith-dedup-merge".into())
            .spawn(move || Run::merge(&dir, &inputs));
        match spawned {
            Ok(handle) => self.merging = Some(handle),
            Err(e) => tracing::warn!(error = %e, "could not start a dedup merge; will retry"),
        }
    }

    /// Memory held for retired keys (filters and fences).
    pub(crate) fn memory_bytes(&self) -> usize {
        self.runs.iter().map(Run::memory_bytes).sum()
    }

    #[cfg(test)]
    pub(crate) fn run_count(&self) -> usize {
        self.runs.len()
    }

    #[cfg(test)]
    pub(crate) fn live_count(&self) -> usize {
        self.live.len()
    }

    /// Waits for a merge in progress (tests, and a clean close).
    pub(crate) fn finish_merges(&mut self) -> Result<(), JournalError> {
        while self.merging.is_some() {
            self.install_merge()?;
            self.start_merge_if_due();
        }
        Ok(())
    }
}

/// Size class of a run: runs of one class are merged.
fn level(count: u64) -> u32 {
    u64::BITS - count.max(1).leading_zeros()
}

/// Writes the keys of retired segments (seqs `range`) as a durable run in `dir`: once it returns,
/// the segments may be deleted. Runs on whatever thread the caller likes; the run joins the index
/// through [`KeyIndex::add_retired`].
pub(crate) fn write_run(dir: &Path, range: SeqRange, keys: &[u128]) -> Result<Run, JournalError> {
    let run = Run::write(dir, range, keys)?;
    sync_dir(dir)?;
    Ok(run)
}

pub(crate) fn sync_dir(dir: &Path) -> Result<(), JournalError> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| JournalError::io(dir, e))
}

/// Creates `dir` and any missing parents, each synced into its own parent: a journal created
/// just before a power cut must still be found after it.
pub(crate) fn create_dir_synced(dir: &Path) -> Result<(), JournalError> {
    let missing: Vec<&Path> = dir.ancestors().take_while(|d| !d.exists()).collect();
    fs::create_dir_all(dir).map_err(|e| JournalError::io(dir, e))?;
    for created in missing.iter().rev() {
        if let Some(parent) = created.parent() {
            sync_dir(parent)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
