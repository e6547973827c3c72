//! Compaction: merging the small files frequent flushes write into larger ones.
//!
//! Which files are merged matters more than how. Delta OPTIMIZE merges every file under its
//! target size, so the table's one growing compacted file was rewritten at every pass, together
//! with the few new flush files, until it reached the target: on a quiet server (a 10-event
//! batch every 100 ms) 51 MiB sat on disk at 14 minutes for 1.5 MiB of live data, each pass's
//! copy of that file kept for the retention period. Here a file is merged only with smaller ones
//! that together come to at least half its size, so the file holding an event at least grows by
//! half each time the event is rewritten: a few rewrites over its life, not one per pass.

use std::collections::HashSet;
use std::num::NonZeroU64;
use std::path::Path;
use std::time::Instant;

use arrow::array::RecordBatch;
use deltalake::datafile::writer::{DeltaWriter, WriterConfig};
use deltalake::kernel::schema::cast::cast_record_batch;
use deltalake::kernel::transaction::{CommitBuilder, CommitProperties};
use deltalake::kernel::{Action, LogicalFileView};
use deltalake::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use deltalake::parquet::basic::{Compression, ZstdLevel};
use deltalake::protocol::DeltaOperation;
use deltalake::table::config::TablePropertiesExt;
use futures::TryStreamExt;

use super::{EventTable, adopt_unless_older, writer_properties};
use crate::LakeError;

/// Compaction writes files of up to this size, and files this large are never merged again.
/// Below delta-rs's default (100 MiB): less held in memory while writing, and a compacting
/// pass (one core, in the background) ends sooner.
pub(crate) const COMPACTED_FILE_BYTES: NonZeroU64 = NonZeroU64::new(32 << 20).unwrap();

/// A file is merged only when the smaller files merged with it come to at least its size
/// divided by this.
const MERGE_GROWTH: u64 = 2;

/// One pass reads at most about this much (the smallest files first); the rest waits for the
/// next pass, so a pass over a table with a large backlog (a bulk load) still ends in minutes.
const PASS_BYTES: u64 = 1 << 30;

/// Rows per batch when reading a file back.
const READ_BATCH_ROWS: usize = 8192;

/// A data file of the table's current version, as compaction chooses among them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LiveFile {
    /// Relative to the table's directory, as the log names it (decoded).
    pub path: String,
    pub size: u64,
}

/// The files one pass merges: the smallest files under `target`, up to the largest one that is
/// at most [`MERGE_GROWTH`] times the total of those smaller than it. Empty, or two or more.
///
/// The walk does not stop at the first file too large for what precedes it: one tiny file ahead
/// of many similar ones (a quiet minute between busy ones) must not keep those from merging.
pub(crate) fn files_to_merge(mut files: Vec<LiveFile>, target: u64) -> Vec<LiveFile> {
    files.retain(|file| file.size < target);
    files.sort_by(|a, b| a.size.cmp(&b.size).then_with(|| a.path.cmp(&b.path)));
    let mut smaller = 0u64;
    let mut take = 0;
    for (index, file) in files.iter().enumerate() {
        if smaller >= PASS_BYTES {
            break;
        }
        if index > 0 && file.size <= smaller.saturating_mul(MERGE_GROWTH) {
            take = index + 1;
        }
        smaller = smaller.saturating_add(file.size);
    }
    files.truncate(take);
    files
}

/// How compaction compresses: ZSTD level 1 (delta-rs's own default for it). Compacted files
/// live long and are written in the background, so size matters more than writing speed.
fn compacted_codec() -> Compression {
    Compression::ZSTD(ZstdLevel::try_new(1).unwrap_or_default())
}

/// What one compacting pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Compacted {
    /// Files merged and removed from the table.
    pub files_replaced: u64,
    /// Their bytes, all read and written again.
    pub bytes_rewritten: u64,
    /// Files written in their place.
    pub files_written: u64,
}

impl EventTable {
    /// Merges small files into larger ones (see [`files_to_merge`]) in one commit. Flushes may
    /// run meanwhile: a flush only adds files and this only replaces files no flush touches, so
    /// Delta's conflict check lets both commit.
    pub async fn compact(&self) -> Result<Compacted, LakeError> {
        let Some(mut table) = self.read().delta.clone() else {
            return Ok(Compacted::default());
        };
        let started = Instant::now();
        let log_store = table.log_store();
        let snapshot = table.snapshot()?.snapshot().clone();
        let views: Vec<LogicalFileView> = snapshot
            .file_views(log_store.as_ref(), None)
            .try_collect()
            .await?;
        let live = views
            .iter()
            .map(|view| LiveFile {
                path: view.path().into_owned(),
                size: u64::try_from(view.size()).unwrap_or(0),
            })
            .collect();
        let chosen = files_to_merge(live, COMPACTED_FILE_BYTES.get());
        if chosen.is_empty() {
            return Ok(Compacted::default());
        }

        // The flushes' column settings (no free text, such as emails and ids, in footer
        // statistics), the table's statistics columns, one file at a time.
        let properties = snapshot.table_properties();
        let config = WriterConfig::new(
            self.schema.clone(),
            Vec::new(),
            Some(writer_properties(&self.schema, compacted_codec())),
            Some(COMPACTED_FILE_BYTES),
            None,
            properties.num_indexed_cols(),
            properties
                .data_skipping_stats_columns
                .as_ref()
                .map(|columns| columns.iter().map(ToString::to_string).collect()),
        );
        let mut writer = DeltaWriter::new(table.object_store(), config);
        for file in &chosen {
            if let Err(e) = self.copy_rows(&file.path, &mut writer).await {
                if let Err(abort) = writer.abort().await {
                    tracing::warn!(table = self.name, error = %abort, "abandoning a compacted file failed; it is deleted once unused files are");
                }
                return Err(e);
            }
        }
        let written = writer.close().await?;

        let chosen_paths: HashSet<&str> = chosen.iter().map(|file| file.path.as_str()).collect();
        let removals = views
            .iter()
            .filter(|view| chosen_paths.contains(view.path().as_ref()))
            .map(|view| Action::Remove(view.remove_action(false)));
        let files_written = written.len() as u64;
        let additions = written.into_iter().map(|mut add| {
            add.data_change = false;
            Action::Add(add)
        });
        let actions: Vec<Action> = removals.chain(additions).collect();
        // Like flush commits, no log cleanup: the tidy that runs this trims the log itself.
        let commit =
            CommitBuilder::from(CommitProperties::default().with_cleanup_expired_logs(Some(false)))
                .with_actions(actions)
                .build(
                    Some(&snapshot),
                    log_store,
                    DeltaOperation::Optimize {
                        predicate: None,
                        target_size: COMPACTED_FILE_BYTES.get() as i64,
                    },
                )
                .await?;
        table.state = Some(commit.snapshot());

        let outcome = Compacted {
            files_replaced: chosen.len() as u64,
            bytes_rewritten: chosen.iter().map(|file| file.size).sum(),
            files_written,
        };
        let seconds = started.elapsed().as_secs_f64();
        tracing::info!(
            table = self.name,
            files_replaced = outcome.files_replaced,
            bytes_rewritten = outcome.bytes_rewritten,
            files_written = outcome.files_written,
            seconds,
            "compacted"
        );
        metrics::counter!("kith_lake_compactions_total", "table" => self.name).increment(1);
        metrics::counter!("kith_lake_files_compacted_total", "table" => self.name)
            .increment(outcome.files_replaced);
        metrics::counter!("kith_lake_compacted_bytes_total", "table" => self.name)
            .increment(outcome.bytes_rewritten);
        metrics::histogram!("kith_lake_compaction_seconds", "table" => self.name).record(seconds);
        adopt_unless_older(&mut self.write().delta, table);
        Ok(outcome)
    }

    /// Reads one of the table's files and hands its rows to `writer`, in the table's schema.
    async fn copy_rows(&self, file: &str, writer: &mut DeltaWriter) -> Result<(), LakeError> {
        let path = self.path.join(file);
        let failed =
            |what: String| LakeError::Delta(format!("compacting {}: {what}", shown(&path)));
        let opened = std::fs::File::open(&path).map_err(|source| LakeError::Io {
            path: shown(&path),
            source,
        })?;
        let reader = ParquetRecordBatchReaderBuilder::try_new(opened)
            .and_then(|builder| builder.with_batch_size(READ_BATCH_ROWS).build())
            .map_err(|e| failed(e.to_string()))?;
        for batch in reader {
            let batch: RecordBatch = batch.map_err(|e| failed(e.to_string()))?;
            // Files from before a column was added read back without it: the column is null.
            let batch = cast_record_batch(&batch, self.schema.clone(), false, true)
                .map_err(|e| failed(e.to_string()))?;
            writer.write(&batch).await?;
        }
        Ok(())
    }
}

fn shown(path: &Path) -> String {
    path.display().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;
    const TARGET: u64 = 32 * MIB;

    fn files(sizes: &[u64]) -> Vec<LiveFile> {
        sizes
            .iter()
            .enumerate()
            .map(|(index, &size)| LiveFile {
                path: format!("part-{index:05}.parquet"),
                size,
            })
            .collect()
    }

    fn sizes(chosen: &[LiveFile]) -> Vec<u64> {
        chosen.iter().map(|file| file.size).collect()
    }

    #[test]
    fn a_lone_small_file_is_left_alone() {
        assert!(files_to_merge(files(&[]), TARGET).is_empty());
        assert!(files_to_merge(files(&[5_000]), TARGET).is_empty());
        assert!(
            files_to_merge(files(&[5_000, 40 * MIB, TARGET]), TARGET).is_empty(),
            "files at the target size or over it are done"
        );
    }

    #[test]
    fn a_busy_server_s_flush_files_all_merge() {
        let flushed: Vec<u64> = (0..50).map(|i| 3 * MIB + i * 1_000).collect();
        assert_eq!(files_to_merge(files(&flushed), TARGET).len(), 50);
    }

    #[test]
    fn a_compacted_file_waits_until_the_new_files_come_to_half_its_size() {
        let compacted = 4 * MIB;
        let chosen = files_to_merge(files(&[compacted, 500_000, 500_000, 600_000]), TARGET);
        assert_eq!(sizes(&chosen), [500_000, 500_000, 600_000]);
        let chosen = files_to_merge(files(&[compacted, MIB, MIB, 600_000]), TARGET);
        assert_eq!(sizes(&chosen), [600_000, MIB, MIB, compacted]);
    }

    #[test]
    fn one_tiny_file_does_not_hold_back_the_others() {
        let chosen = files_to_merge(files(&[2 * MIB, 900, 2 * MIB + 10]), TARGET);
        assert_eq!(sizes(&chosen), [900, 2 * MIB, 2 * MIB + 10]);
    }

    #[test]
    fn a_pass_reads_about_a_gibibyte_at_most() {
        let backlog = vec![20 * MIB; 200];
        let chosen = files_to_merge(files(&backlog), TARGET);
        let read: u64 = sizes(&chosen).iter().sum();
        assert!(
            (PASS_BYTES..PASS_BYTES + 20 * MIB).contains(&read),
            "{read}"
        );
    }

    /// Merges `chosen` out of `live` the way a pass does: the bytes go to new files of at most
    /// the target size.
    fn merge(live: &mut Vec<LiveFile>, chosen: &[LiveFile], next_name: &mut u64) -> u64 {
        let names: HashSet<&str> = chosen.iter().map(|file| file.path.as_str()).collect();
        live.retain(|file| !names.contains(file.path.as_str()));
        let mut left: u64 = chosen.iter().map(|file| file.size).sum();
        let rewritten = left;
        while left > 0 {
            let size = left.min(TARGET);
            *next_name += 1;
            live.push(LiveFile {
                path: format!("compacted-{next_name:06}.parquet"),
                size,
            });
            left -= size;
        }
        rewritten
    }

    /// Simulates a server flushing `flush_bytes` per flush and compacting with `plan` after every
    /// 50 flushes; returns (bytes rewritten / bytes flushed, most files under the target seen).
    fn simulate(
        plan: fn(Vec<LiveFile>, u64) -> Vec<LiveFile>,
        flush_bytes: u64,
        passes: u64,
    ) -> (f64, usize) {
        let mut live = Vec::new();
        let (mut flushed, mut rewritten, mut most_small, mut name) = (0u64, 0u64, 0, 0u64);
        for _ in 0..passes {
            for _ in 0..50 {
                name += 1;
                live.push(LiveFile {
                    path: format!("flushed-{name:06}.parquet"),
                    size: flush_bytes,
                });
                flushed += flush_bytes;
            }
            let small = live.iter().filter(|file| file.size < TARGET).count();
            most_small = most_small.max(small);
            let chosen = plan(live.clone(), TARGET);
            rewritten += merge(&mut live, &chosen, &mut name);
        }
        (rewritten as f64 / flushed as f64, most_small)
    }

    /// Delta OPTIMIZE's choice: every file under the target.
    fn everything_under_target(mut files: Vec<LiveFile>, target: u64) -> Vec<LiveFile> {
        files.retain(|file| file.size < target);
        if files.len() < 2 { Vec::new() } else { files }
    }

    #[test]
    fn each_byte_is_rewritten_a_few_times_not_once_a_pass() {
        // A quiet server, 5 KB a flush, over 2,000 passes: what OPTIMIZE's choice rewrote at
        // every pass (68 times on average here, more the quieter the server) is now rewritten
        // when it has grown by half (7 times here).
        let (amplification, most_small) = simulate(files_to_merge, 5_000, 2_000);
        let (optimize_amplification, _) = simulate(everything_under_target, 5_000, 2_000);
        assert!(optimize_amplification > 50.0, "{optimize_amplification}");
        assert!(amplification < 10.0, "{amplification}");
        assert!(most_small < 50 + 10, "{most_small}");
        // A busy one, 3 MiB a flush: each byte is rewritten about once either way.
        let (amplification, most_small) = simulate(files_to_merge, 3 * MIB, 40);
        assert!(amplification < 1.25, "{amplification}");
        assert!(most_small < 50 + 5, "{most_small}");
    }
}
