//! Segment files: listing, crash recovery and reading.

use std::fs::{self, File, OpenOptions};
use std::io::Read;
use std::path::{Path, PathBuf};

use crate::JournalError;
use crate::dedup::LiveKeys;
use crate::record::{Decoded, HEADER_BYTES, Record, decode};

const SEGMENT_SUFFIX: &str = ".seg";
/// A retired segment's file kept for reuse (see [`crate::writer`]): not a segment, so listing,
/// recovery and readers never look at it.
const SPARE_SUFFIX: &str = ".spare";

#[derive(Debug, Clone)]
pub(crate) struct SegmentInfo {
    pub path: PathBuf,
    /// The seq its name carries: its first record's, or the next one's when empty.
    pub first_seq: u64,
    /// Highest seq in the segment; `first_seq - 1` when empty.
    pub last_seq: u64,
    pub len: u64,
    /// Dedup keys written to this segment by this process, so retiring it needs no re-read;
    /// `None` for segments found at startup.
    pub keys: Option<Vec<u128>>,
}

pub(crate) struct Recovered {
    pub segments: Vec<SegmentInfo>,
    /// The dedup keys of the records in `segments`.
    pub keys: LiveKeys,
    pub last_seq: u64,
}

pub(crate) fn segment_path(dir: &Path, first_seq: u64) -> PathBuf {
    dir.join(format!("{first_seq:020}{SEGMENT_SUFFIX}"))
}

/// Where a retired segment's file waits to be reused.
pub(crate) fn spare_path(segment: &Path) -> PathBuf {
    segment.with_extension(&SPARE_SUFFIX[1..])
}

/// Spare files left in `dir` by an earlier run.
pub(crate) fn list_spares(dir: &Path) -> Result<Vec<PathBuf>, JournalError> {
    let mut spares = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| JournalError::io(dir, e))? {
        let entry = entry.map_err(|e| JournalError::io(dir, e))?;
        if entry
            .file_name()
            .to_str()
            .is_some_and(|n| n.ends_with(SPARE_SUFFIX))
        {
            spares.push(entry.path());
        }
    }
    spares.sort();
    Ok(spares)
}

/// Why reading a segment stopped before the end of its bytes.
pub(crate) enum Stop {
    /// A record that was never finished: a write a crash interrupted.
    Truncated,
    Corrupt(String),
    /// A well-formed record out of sequence: what a reused file held before (every record in a
    /// segment carries the seq after the one before it, the first the seq its name carries, and
    /// a reused file's old records all have lower seqs).
    Stale {
        found: u64,
        expected: u64,
    },
}

impl Stop {
    fn reason(&self) -> String {
        match self {
            Stop::Truncated => "a record ends past the end of the file".into(),
            Stop::Corrupt(reason) => reason.clone(),
            Stop::Stale { found, expected } => {
                format!("record seq {found} where {expected} was due")
            }
        }
    }
}

/// Visits the valid records at the start of a segment's bytes, in order. Returns where they end
/// and, when that is before the end of `bytes`, why.
pub(crate) fn scan(
    bytes: &[u8],
    first_seq: u64,
    mut visit: impl FnMut(Record) -> Result<(), JournalError>,
) -> Result<(usize, Option<Stop>), JournalError> {
    let mut offset = 0usize;
    let mut expected = first_seq;
    while offset < bytes.len() {
        match decode(&bytes[offset..]) {
            Decoded::Record { record, .. } if record.seq != expected => {
                let found = record.seq;
                return Ok((offset, Some(Stop::Stale { found, expected })));
            }
            Decoded::Record { record, len } => {
                expected += 1;
                offset += len;
                visit(record)?;
            }
            Decoded::Truncated => return Ok((offset, Some(Stop::Truncated))),
            Decoded::Corrupt(reason) => return Ok((offset, Some(Stop::Corrupt(reason)))),
        }
    }
    Ok((offset, None))
}

/// Segment files sorted by first sequence number.
fn list_segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>, JournalError> {
    let mut segments = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| JournalError::io(dir, e))? {
        let entry = entry.map_err(|e| JournalError::io(dir, e))?;
        let name = entry.file_name();
        let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(SEGMENT_SUFFIX)) else {
            continue;
        };
        if let Ok(first_seq) = stem.parse::<u64>() {
            segments.push((first_seq, entry.path()));
        }
    }
    segments.sort();
    Ok(segments)
}

fn read_file(path: &Path) -> Result<Option<Vec<u8>>, JournalError> {
    let mut file = match fs::File::open(path) {
        Ok(file) => file,
        // A segment retired between listing and opening: its records are in the event tables.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(JournalError::io(path, e)),
    };
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)
        .map_err(|e| JournalError::io(path, e))?;
    Ok(Some(bytes))
}

/// Scans every segment, cuts a torn tail off the last one (a write the crash interrupted, never
/// acknowledged), salvages what a damaged segment still holds, and collects the segments' dedup
/// keys.
pub(crate) fn recover(dir: &Path) -> Result<Recovered, JournalError> {
    let mut keys = LiveKeys::default();
    let listed = list_segments(dir)?;
    let mut segments = Vec::with_capacity(listed.len());
    let count = listed.len();
    for (position, (first_seq, path)) in listed.iter().cloned().enumerate() {
        let is_last = position + 1 == count;
        // Records salvaged from this segment take seqs below the next one's, so they can never
        // replace it, and a recovery interrupted after salvaging finds them there already.
        let next_first_seq = listed.get(position + 1).map(|(seq, _)| *seq);
        let bytes = read_file(&path)?.unwrap_or_default();
        let mut last_seq = first_seq.saturating_sub(1);
        let (offset, stop) = scan(&bytes, first_seq, |record| {
            if let Some(key) = record.dedup_key {
                keys.insert(key);
            }
            last_seq = record.seq;
            Ok(())
        })?;
        let after_damage = match stop {
            Some(Stop::Corrupt(_)) => {
                readable_after_damage(&bytes, offset, last_seq + 1, next_first_seq)
            }
            _ => Vec::new(),
        };
        match stop {
            None => {}
            Some(Stop::Truncated) if is_last => {
                // What a crash leaves: a record cut short at the end. Records that seem to
                // follow it are not taken back, since the unfinished record's own text (an
                // event a client wrote) can look like records; if there are any, the file is
                // kept as found for whoever looks into it.
                let seeming = readable_after_damage(&bytes, offset, last_seq + 1, None).len();
                if seeming > 0 {
                    keep_unreplayed(&path, &bytes, offset, seeming);
                } else {
                    tracing::warn!(
                        path = %path.display(),
                        offset,
                        dropped_bytes = bytes.len() - offset,
                        "cutting an unfinished write off the journal tail"
                    );
                }
                cut(&path, offset)?;
            }
            Some(stop) if is_last && after_damage.is_empty() => {
                // Cut it off, so nothing unacknowledged can ever follow new records.
                tracing::warn!(
                    path = %path.display(),
                    offset,
                    dropped_bytes = bytes.len() - offset,
                    reason = %stop.reason(),
                    "cutting an unfinished write (or a reused file's old records) off the journal tail"
                );
                cut(&path, offset)?;
            }
            Some(Stop::Stale { .. }) => {
                // A closed segment is cut to its records when it is closed; old records after
                // them can only be a reused file's, never an acknowledged event.
                tracing::warn!(path = %path.display(), offset, "a closed journal segment ends in a reused file's old records; they are ignored");
            }
            Some(stop) => {
                // Damage a crash does not leave: unreadable records inside a closed segment, or
                // followed by the writer's later records. What can be read is kept; what cannot
                // is said loudly, and the file is kept for whoever looks into it.
                for record in &after_damage {
                    if let Some(key) = record.dedup_key {
                        keys.insert(key);
                    }
                }
                let moved = salvage(dir, &path, &bytes, offset, &stop, last_seq, after_damage)?;
                segments.push(SegmentInfo {
                    path,
                    first_seq,
                    last_seq,
                    len: offset as u64,
                    keys: None,
                });
                segments.extend(moved);
                continue;
            }
        }
        segments.push(SegmentInfo {
            path,
            first_seq,
            last_seq,
            len: offset as u64,
            keys: None,
        });
    }
    let last_seq = segments.last().map(|s| s.last_seq).unwrap_or(0);
    Ok(Recovered {
        segments,
        keys,
        last_seq,
    })
}

/// Cuts the segment at `path` to its first `len` bytes, synced.
fn cut(path: &Path, len: usize) -> Result<(), JournalError> {
    let file = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|e| JournalError::io(path, e))?;
    end_at_records(&file, len as u64).map_err(|e| JournalError::io(path, e))
}

/// The records past an unreadable record at `from` that carry on the segment's sequence (seq
/// `expected` or later, and below the next segment's first seq when there is one), in order. A
/// reused file's old records all have lower seqs, so they are never taken for the writer's own.
fn readable_after_damage(
    bytes: &[u8],
    from: usize,
    expected: u64,
    next_first_seq: Option<u64>,
) -> Vec<Record> {
    let mut found = Vec::new();
    let mut expected = expected;
    let mut at = past_damaged_record(bytes, from, expected);
    let below = next_first_seq.unwrap_or(u64::MAX);
    while let Some(start) = next_record_start(bytes, at, expected, below) {
        let first = match decode(&bytes[start..]) {
            Decoded::Record { record, .. } => record.seq,
            _ => break,
        };
        let mut run_ended_early = false;
        // `scan` cannot fail here: the visitor never does.
        let Ok((len, stop)) = scan(&bytes[start..], first, |record| {
            if record.seq < below {
                expected = record.seq + 1;
                found.push(record);
            } else {
                run_ended_early = true;
            }
            Ok(())
        }) else {
            break;
        };
        if run_ended_early {
            break;
        }
        match stop {
            Some(Stop::Corrupt(_)) => at = past_damaged_record(bytes, start + len, expected),
            None | Some(Stop::Truncated | Stop::Stale { .. }) => break,
        }
    }
    found
}

/// Where to look for records after an unreadable one at `at`. When its header is sound (the seq
/// due, a valid key flag, a length that fits), only its payload is damaged, and the search
/// starts after it: its payload holds an event's text, which must never be taken for records.
fn past_damaged_record(bytes: &[u8], at: usize, expected: u64) -> usize {
    let Some(header) = bytes.get(at..at + HEADER_BYTES) else {
        return bytes.len();
    };
    let length = u32::from_le_bytes(header[0..4].try_into().unwrap_or_default()) as usize;
    let seq = u64::from_le_bytes(header[8..16].try_into().unwrap_or_default());
    let end = at.saturating_add(HEADER_BYTES).saturating_add(length);
    if seq == expected && header[16] <= 1 && end <= bytes.len() {
        end
    } else {
        at + 1
    }
}

/// The first offset at or after `at` where a whole, valid record with a seq from `expected`
/// (and below `below`) starts. The seq and key flag are checked before the checksum, so trying
/// every offset of a segment stays cheap.
fn next_record_start(bytes: &[u8], at: usize, expected: u64, below: u64) -> Option<usize> {
    // No segment holds more records than it has headers' worth of bytes.
    let highest = expected
        .saturating_add((bytes.len() / HEADER_BYTES) as u64)
        .min(below.saturating_sub(1));
    (at..bytes.len().saturating_sub(HEADER_BYTES - 1)).find(|&start| {
        let header = &bytes[start..start + HEADER_BYTES];
        let seq = u64::from_le_bytes(header[8..16].try_into().unwrap_or_default());
        (expected..=highest).contains(&seq)
            && header[16] <= 1
            && matches!(decode(&bytes[start..]), Decoded::Record { .. })
    })
}

/// `records` (in seq order) split where their seqs skip: a segment holds consecutive seqs.
fn consecutive_runs(records: Vec<Record>) -> Vec<Vec<Record>> {
    let mut runs: Vec<Vec<Record>> = Vec::new();
    for record in records {
        match runs.last_mut() {
            Some(run) if run.last().is_some_and(|last| last.seq + 1 == record.seq) => {
                run.push(record);
            }
            _ => runs.push(vec![record]),
        }
    }
    runs
}

/// A segment holding `run` (consecutive seqs, at least one), named by its first seq. Written
/// to a temporary file that is then renamed into place and synced: a crash leaves either no
/// segment or the whole of it, and a second recovery writes the same file again.
fn write_segment(dir: &Path, run: &[Record]) -> Result<SegmentInfo, JournalError> {
    let first_seq = run.first().map_or(0, |r| r.seq);
    let last_seq = run.last().map_or(0, |r| r.seq);
    let path = segment_path(dir, first_seq);
    let mut bytes = Vec::new();
    for record in run {
        crate::record::encode(&mut bytes, record.seq, record.dedup_key, &record.payload);
    }
    write_synced(&path.with_extension("seg.salvaging"), &bytes, Some(&path))?;
    Ok(SegmentInfo {
        path,
        first_seq,
        last_seq,
        len: bytes.len() as u64,
        keys: None,
    })
}

/// Writes `bytes` to `path` and syncs it, then renames it to `rename_to` when given, and syncs
/// the directory.
fn write_synced(path: &Path, bytes: &[u8], rename_to: Option<&Path>) -> Result<(), JournalError> {
    let file = File::create(path).map_err(|e| JournalError::io(path, e))?;
    std::io::Write::write_all(&mut &file, bytes)
        .and_then(|()| file.sync_all())
        .map_err(|e| JournalError::io(path, e))?;
    if let Some(target) = rename_to {
        fs::rename(path, target).map_err(|e| JournalError::io(target, e))?;
    }
    match path.parent() {
        Some(dir) => crate::dedup::sync_dir(dir),
        None => Ok(()),
    }
}

/// Saves what a damaged segment at `path` still holds: the records after the damage go to
/// segments of their own, the file as found is copied aside, and only then is the segment cut
/// to its readable records (its first `offset` bytes), so that no step can lose a record a crash
/// interrupts. Says what was lost, and returns the new segments.
fn salvage(
    dir: &Path,
    path: &Path,
    bytes: &[u8],
    offset: usize,
    stop: &Stop,
    last_readable_seq: u64,
    after_damage: Vec<Record>,
) -> Result<Vec<SegmentInfo>, JournalError> {
    let kept_after_damage = after_damage.len();
    let lost_seqs = lost_seqs(last_readable_seq, &after_damage);
    let runs = consecutive_runs(after_damage);
    let moved = runs
        .iter()
        .map(|run| write_segment(dir, run))
        .collect::<Result<Vec<_>, _>>()?;
    let copy = damaged_copy_path(path);
    write_synced(&copy, bytes, None).map_err(|e| JournalError::Corrupt {
        path: path.to_path_buf(),
        offset: offset as u64,
        reason: format!(
            "{}, and a copy of it could not be kept before cutting it ({e}); free some disk \
             space and start again",
            stop.reason()
        ),
    })?;
    tracing::error!(
        path = %path.display(),
        offset,
        reason = %stop.reason(),
        lost_seqs = %lost_seqs,
        kept_after_damage,
        copy = %copy.display(),
        "a journal segment is damaged: the events in records it cannot read are lost unless the \
         event tables already hold them (SELECT max(ingest_seq) FROM events); every readable \
         record is kept, and the damaged file is copied aside"
    );
    metrics::counter!("kith_journal_damaged_segments_total").increment(1);
    cut(path, offset)?;
    Ok(moved)
}

/// Copies aside the newest segment, whose unfinished last record seems to be followed by
/// `seeming` records, and says so: they may be records the writer wrote after a damaged length,
/// or text inside the unfinished record.
fn keep_unreplayed(path: &Path, bytes: &[u8], offset: usize, seeming: usize) {
    let copy = damaged_copy_path(path);
    let copied = write_synced(&copy, bytes, None);
    tracing::error!(
        path = %path.display(),
        offset,
        seeming_records_after = seeming,
        copy = %copy.display(),
        copy_error = copied.as_ref().err().map(|e| e.to_string()),
        "the journal's newest segment ends in a record cut short, followed by what seem to be \
         records; they are not replayed, and the file as found is copied aside"
    );
    metrics::counter!("kith_journal_damaged_segments_total").increment(1);
}

/// The seqs no readable record holds: from the last one read before the damage to the end of
/// the segment, or in the gaps between the records read after it.
fn lost_seqs(last_readable_seq: u64, after_damage: &[Record]) -> String {
    let mut gaps = Vec::new();
    let mut previous = last_readable_seq;
    for record in after_damage {
        if record.seq > previous + 1 {
            gaps.push(if record.seq == previous + 2 {
                format!("{}", previous + 1)
            } else {
                format!("{} to {}", previous + 1, record.seq - 1)
            });
        }
        previous = record.seq;
    }
    if after_damage.is_empty() {
        gaps.push(format!("{} on, to the end of the segment", previous + 1));
    }
    if gaps.is_empty() {
        "none (the damage held no whole record)".to_string()
    } else {
        gaps.join(", ")
    }
}

/// Where a damaged segment's copy goes: beside it, under a name no listing takes for a segment.
fn damaged_copy_path(path: &Path) -> PathBuf {
    let mut copy = path.with_extension("seg.damaged");
    let mut n = 1;
    while copy.exists() {
        n += 1;
        copy = path.with_extension(format!("seg.damaged.{n}"));
    }
    copy
}

pub(crate) fn read_after(
    dir: &Path,
    after_seq: u64,
    mut visit: impl FnMut(Record) -> Result<(), JournalError>,
) -> Result<(), JournalError> {
    if !dir.exists() {
        return Ok(());
    }
    let listed = list_segments(dir)?;
    for (position, (first_seq, path)) in listed.iter().enumerate() {
        // Skip segments that end before `after_seq`: the next one starts at or below it.
        if let Some((next_first, _)) = listed.get(position + 1)
            && *next_first <= after_seq + 1
        {
            continue;
        }
        let Some(bytes) = read_file(path)? else {
            continue;
        };
        // The writer may be mid-append: whatever follows the valid records is not acknowledged.
        scan(&bytes, *first_seq, |record| {
            if record.seq > after_seq {
                visit(record)?;
            }
            Ok(())
        })?;
    }
    Ok(())
}

/// Cuts off whatever a reused file held past a segment's records (`records_len` bytes), and
/// syncs it: a closed segment, the active one at a clean close, and a recovered tail end where
/// their records do.
pub(crate) fn end_at_records(file: &File, records_len: u64) -> std::io::Result<()> {
    if file.metadata()?.len() > records_len {
        file.set_len(records_len)?;
    }
    file.sync_all()
}
