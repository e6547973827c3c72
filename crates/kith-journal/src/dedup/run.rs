//! A run: the dedup keys of a range of retired journal segments, sorted, in one immutable file.
//!
//! File `SSSSSSSSSSSSSSSSSSSS-LLLLLLLLLLLLLLLLLLLL.run` (the range of journal seqs its keys came
//! from): an 8-byte magic, then the keys as 16-byte little-endian integers, ascending, without
//! repeats. A run is written under a temporary name, synced, and renamed, so a file with a run's
//! name is always complete. Memory per run: its [`KeyFilter`] and one fence key per block of
//! [`BLOCK_KEYS`]; the keys stay on disk (in the page cache when hot) and are read with `pread`.

use std::fs::{self, File};
use std::io::{BufReader, BufWriter, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::filter::KeyFilter;
use crate::JournalError;

const MAGIC: &[u8; 8] = b"KITHDDK1";
const KEY_BYTES: u64 = 16;
/// Keys per fence: one 4 KiB read settles a lookup the filter let through.
pub(crate) const BLOCK_KEYS: u64 = 256;
const RUN_SUFFIX: &str = ".run";
pub(crate) const TEMP_SUFFIX: &str = ".run.tmp";
/// Buffer for streaming whole runs (load and merge).
const STREAM_BYTES: usize = 1 << 20;

/// The journal seqs a run's keys came from, inclusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct SeqRange {
    pub first: u64,
    pub last: u64,
}

impl SeqRange {
    pub(crate) fn covers(&self, other: &SeqRange) -> bool {
        self.first <= other.first && other.last <= self.last
    }

    pub(crate) fn file_name(&self) -> String {
        format!("{:020}-{:020}{RUN_SUFFIX}", self.first, self.last)
    }

    pub(crate) fn parse(file_name: &str) -> Option<SeqRange> {
        let stem = file_name.strip_suffix(RUN_SUFFIX)?;
        let (first, last) = stem.split_once('-')?;
        let range = SeqRange {
            first: first.parse().ok()?,
            last: last.parse().ok()?,
        };
        (range.first <= range.last).then_some(range)
    }
}

#[derive(Debug)]
pub(crate) struct Run {
    pub range: SeqRange,
    pub path: PathBuf,
    file: File,
    pub count: u64,
    filter: KeyFilter,
    /// The first key of each block of [`BLOCK_KEYS`] keys.
    fences: Vec<u128>,
}

/// Writes keys (ascending, no repeats) to a run file, building the filter and fences on the way.
struct RunWriter {
    temp: PathBuf,
    out: BufWriter<File>,
    count: u64,
    fences: Vec<u128>,
    filter: KeyFilter,
}

impl RunWriter {
    /// `expected`: at least the number of keys that will be pushed (sizes the filter).
    fn create(dir: &Path, range: SeqRange, expected: u64) -> Result<RunWriter, JournalError> {
        let temp = dir.join(format!(
            "{:020}-{:020}{TEMP_SUFFIX}",
            range.first, range.last
        ));
        // Readable too: the finished run answers lookups through this handle.
        let file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&temp)
            .map_err(|e| JournalError::io(&temp, e))?;
        let mut out = BufWriter::with_capacity(STREAM_BYTES, file);
        out.write_all(MAGIC)
            .map_err(|e| JournalError::io(&temp, e))?;
        Ok(RunWriter {
            temp,
            out,
            count: 0,
            fences: Vec::new(),
            filter: KeyFilter::with_capacity(expected),
        })
    }

    fn push(&mut self, key: u128) -> Result<(), JournalError> {
        self.out
            .write_all(&key.to_le_bytes())
            .map_err(|e| JournalError::io(&self.temp, e))?;
        if self.count.is_multiple_of(BLOCK_KEYS) {
            self.fences.push(key);
        }
        self.filter.insert(key);
        self.count += 1;
        Ok(())
    }

    /// Syncs the file and renames it into place.
    fn finish(self, dir: &Path, range: SeqRange) -> Result<Run, JournalError> {
        let RunWriter {
            temp,
            out,
            count,
            fences,
            filter,
        } = self;
        let file = out
            .into_inner()
            .map_err(|e| JournalError::io(&temp, e.into_error()))?;
        file.sync_all().map_err(|e| JournalError::io(&temp, e))?;
        let path = dir.join(range.file_name());
        fs::rename(&temp, &path).map_err(|e| JournalError::io(&path, e))?;
        Ok(Run {
            range,
            path,
            file,
            count,
            filter,
            fences,
        })
    }
}

impl Run {
    /// Writes `keys` (any order, repeats allowed) as the run of `range`. The caller syncs `dir`.
    pub(crate) fn write(dir: &Path, range: SeqRange, keys: &[u128]) -> Result<Run, JournalError> {
        let mut keys = keys.to_vec();
        keys.sort_unstable();
        keys.dedup();
        let mut writer = RunWriter::create(dir, range, keys.len() as u64)?;
        for key in &keys {
            writer.push(*key)?;
        }
        writer.finish(dir, range)
    }

    /// Opens a run file, reading it once to build its filter and fences (and to check it).
    pub(crate) fn open(path: &Path, range: SeqRange) -> Result<Run, JournalError> {
        let file = File::open(path).map_err(|e| JournalError::io(path, e))?;
        let len = file
            .metadata()
            .map_err(|e| JournalError::io(path, e))?
            .len();
        let corrupt = |offset: u64, reason: &str| JournalError::Corrupt {
            path: path.to_path_buf(),
            offset,
            reason: reason.to_string(),
        };
        if len < MAGIC.len() as u64 || !(len - MAGIC.len() as u64).is_multiple_of(KEY_BYTES) {
            return Err(corrupt(
                0,
                "a dedup run's length is not a whole number of keys",
            ));
        }
        let count = (len - MAGIC.len() as u64) / KEY_BYTES;
        let mut filter = KeyFilter::with_capacity(count);
        let mut fences = Vec::with_capacity(count.div_ceil(BLOCK_KEYS) as usize);
        let mut keys = KeyStream::open(path)?;
        let mut previous: Option<u128> = None;
        let mut index = 0u64;
        while let Some(key) = keys.next_key()? {
            if previous.is_some_and(|p| p >= key) {
                return Err(corrupt(
                    MAGIC.len() as u64 + index * KEY_BYTES,
                    "dedup run keys are not in ascending order",
                ));
            }
            if index.is_multiple_of(BLOCK_KEYS) {
                fences.push(key);
            }
            filter.insert(key);
            previous = Some(key);
            index += 1;
        }
        Ok(Run {
            range,
            path: path.to_path_buf(),
            file,
            count,
            filter,
            fences,
        })
    }

    /// Starts loading the part of the filter that `contains(key)` reads first.
    #[inline]
    pub(crate) fn prefetch(&self, key: u128) {
        self.filter.prefetch(key);
    }

    /// Whether the run holds `key`: the filter first, then one read of the block it would be in.
    pub(crate) fn contains(&self, key: u128) -> Result<bool, JournalError> {
        if !self.filter.may_contain(key) {
            return Ok(false);
        }
        let block = match self.fences.partition_point(|fence| *fence <= key) {
            0 => return Ok(false),
            after => (after - 1) as u64,
        };
        let first = block * BLOCK_KEYS;
        let keys = (self.count - first).min(BLOCK_KEYS);
        // One block on the stack, searched where it lies.
        let mut block_bytes = [0u8; (BLOCK_KEYS * KEY_BYTES) as usize];
        let bytes = &mut block_bytes[..(keys * KEY_BYTES) as usize];
        self.file
            .read_exact_at(bytes, MAGIC.len() as u64 + first * KEY_BYTES)
            .map_err(|e| JournalError::io(&self.path, e))?;
        let at = |i: usize| key_from(&bytes[i * KEY_BYTES as usize..(i + 1) * KEY_BYTES as usize]);
        // Binary search over the block's keys: [lo, hi) may hold `key`.
        let (mut lo, mut hi) = (0usize, keys as usize);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match at(mid).cmp(&key) {
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
                std::cmp::Ordering::Equal => return Ok(true),
            }
        }
        Ok(false)
    }

    /// Merges runs (adjacent in seq order) into one covering all their ranges. The caller syncs
    /// `dir`, then deletes the inputs once the new run is in use.
    pub(crate) fn merge(dir: &Path, runs: &[MergeInput]) -> Result<Run, JournalError> {
        let range = SeqRange {
            first: runs.iter().map(|r| r.range.first).min().unwrap_or(0),
            last: runs.iter().map(|r| r.range.last).max().unwrap_or(0),
        };
        // Sized for every input key: repeats across runs are rare (a crash between writing a run
        // and deleting its segments).
        let expected = runs.iter().map(|r| r.count).sum();
        let mut writer = RunWriter::create(dir, range, expected)?;
        let mut inputs = runs
            .iter()
            .map(|run| KeyStream::open(&run.path))
            .collect::<Result<Vec<_>, _>>()?;
        let mut heads = inputs
            .iter_mut()
            .map(KeyStream::next_key)
            .collect::<Result<Vec<_>, _>>()?;
        let mut last: Option<u128> = None;
        // Few inputs (two, normally): a linear pick of the smallest head is simplest and fast.
        while let Some((index, key)) = heads
            .iter()
            .enumerate()
            .filter_map(|(i, head)| head.map(|k| (i, k)))
            .min_by_key(|(_, key)| *key)
        {
            if last != Some(key) {
                writer.push(key)?;
                last = Some(key);
            }
            heads[index] = inputs[index].next_key()?;
        }
        writer.finish(dir, range)
    }

    /// What a merge (on another thread) needs of this run.
    pub(crate) fn input(&self) -> MergeInput {
        MergeInput {
            path: self.path.clone(),
            range: self.range,
            count: self.count,
        }
    }

    /// Memory held for this run.
    pub(crate) fn memory_bytes(&self) -> usize {
        self.filter.bytes() + self.fences.len() * KEY_BYTES as usize
    }
}

/// A run to merge, named by its file: the merge streams it from disk.
pub(crate) struct MergeInput {
    path: PathBuf,
    range: SeqRange,
    count: u64,
}

fn key_from(bytes: &[u8]) -> u128 {
    let mut key = [0u8; KEY_BYTES as usize];
    key.copy_from_slice(bytes);
    u128::from_le_bytes(key)
}

/// A run file's keys, read sequentially through a buffer.
struct KeyStream {
    path: PathBuf,
    reader: BufReader<File>,
}

impl KeyStream {
    fn open(path: &Path) -> Result<KeyStream, JournalError> {
        let file = File::open(path).map_err(|e| JournalError::io(path, e))?;
        let mut reader = BufReader::with_capacity(STREAM_BYTES, file);
        let mut magic = [0u8; 8];
        reader
            .read_exact(&mut magic)
            .map_err(|e| JournalError::io(path, e))?;
        if &magic != MAGIC {
            return Err(JournalError::Corrupt {
                path: path.to_path_buf(),
                offset: 0,
                reason: "not a dedup run (wrong magic bytes)".into(),
            });
        }
        Ok(KeyStream {
            path: path.to_path_buf(),
            reader,
        })
    }

    fn next_key(&mut self) -> Result<Option<u128>, JournalError> {
        let mut bytes = [0u8; KEY_BYTES as usize];
        match self.reader.read_exact(&mut bytes) {
            Ok(()) => Ok(Some(u128::from_le_bytes(bytes))),
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(None),
            Err(e) => Err(JournalError::io(&self.path, e)),
        }
    }
}
