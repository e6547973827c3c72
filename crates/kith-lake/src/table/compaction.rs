//! Compaction: merging the small files frequent flushes write into larger ones.
//!
//! Which files are merged matters more than how. Delta OPTIMIZE merges every file under its
//! target size, so the table's one growing compacted file was rewritten at every pass, together
//! with the few new flush files, until it reached the target, and each pass's copy was kept for
//! the retention period: on a quiet server (a 10-event batch every 100 ms, replaced files kept
//! 10 minutes) 52 MiB sat on disk after 14 minutes, 35 MiB of it copies of that one file; 21 MiB
//! with this module's choice. Here a file is merged only with smaller ones
//! that together hold at least half as many rows, so the file holding an event at least grows by
//! half each time the event is rewritten: a few rewrites over its life, not one per pass.
//!
//! Rows, not bytes: a flush of ten events writes an 11 KB file, nearly all of it Parquet's own
//! overhead, which its merged rows then take 1 KB of. Weighed in bytes, fifty such files looked
//! as large as a 1 MiB compacted file holding a hundred times their rows, and it was rewritten
//! with them at every pass.

use std::collections::HashSet;
use std::path::Path;
use std::time::Instant;

use arrow::array::RecordBatch;
use deltalake::datafile::writer::{DeltaWriter, WriterConfig};
use deltalake::kernel::schema::cast::cast_record_batch;
use deltalake::kernel::transaction::{CommitBuilder, CommitProperties};
use deltalake::kernel::{Action, Add, LogicalFileView};
use deltalake::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use deltalake::parquet::basic::{Compression, ZstdLevel};
use deltalake::protocol::DeltaOperation;
use deltalake::table::config::TablePropertiesExt;
use futures::TryStreamExt;

use super::{EventTable, adopt_unless_older, writer_properties};
use crate::LakeError;

/// The most bytes of files compaction merges into one file. Below delta-rs's default target
/// (100 MiB): less held in memory while writing, and a pass (one core, in the background) ends
/// sooner.
pub(crate) const MERGED_INPUT_BYTES: u64 = 32 << 20;

/// Files this large are left as they are, so that any two files a pass chooses fit in one
/// merge. Merged files come out smaller than their inputs (ZSTD against the flushes' LZ4), so a
/// threshold at the merge size itself would leave merged files candidates for ever.
const FINISHED_FILE_BYTES: u64 = MERGED_INPUT_BYTES / 2;

/// A file is merged only when the smaller files merged with it hold at least its rows divided
/// by this.
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
    /// From the file's Delta statistics; Kith always writes them.
    pub rows: Option<u64>,
}

/// What one pass merges: groups of files, each written as one new file. Files are weighed by
/// their rows, or in bytes when one has no row count (written by another engine without
/// statistics).
pub(crate) fn plan(mut files: Vec<LiveFile>) -> Vec<Vec<LiveFile>> {
    files.retain(|file| file.size < FINISHED_FILE_BYTES);
    let by_rows = files.iter().all(|file| file.rows.is_some());
    let weight = |file: &LiveFile| match file.rows {
        Some(rows) if by_rows => rows,
        _ => file.size,
    };
    let mut groups = group(choose(files, &weight));
    // A group may end with a heavy file and only a few of the chosen files beside it: it would
    // be rewritten for little growth, so it waits for a later pass.
    for group in &mut groups {
        let heaviest = group.last().map_or(0, weight);
        let rest: u64 = group.iter().rev().skip(1).map(weight).sum();
        if heaviest > rest.saturating_mul(MERGE_GROWTH) {
            group.pop();
        }
    }
    groups.retain(|group| group.len() > 1);
    groups
}

/// The files one pass merges, lightest first: up to the heaviest one that weighs at most
/// [`MERGE_GROWTH`] times the files before it.
///
/// The walk does not stop at the first file too heavy for what precedes it: one tiny file ahead
/// of many similar ones (a quiet minute between busy ones) must not keep those from merging.
fn choose(mut files: Vec<LiveFile>, weight: &dyn Fn(&LiveFile) -> u64) -> Vec<LiveFile> {
    files.sort_by(|a, b| weight(a).cmp(&weight(b)).then_with(|| a.path.cmp(&b.path)));
    let (mut lighter, mut read) = (0u64, 0u64);
    let mut take = 0;
    for (index, file) in files.iter().enumerate() {
        if read >= PASS_BYTES {
            break;
        }
        if index > 0 && weight(file) <= lighter.saturating_mul(MERGE_GROWTH) {
            take = index + 1;
        }
        lighter = lighter.saturating_add(weight(file));
        read = read.saturating_add(file.size);
    }
    files.truncate(take);
    files
}

/// Groups `chosen` (in its order) into merges of at most [`MERGED_INPUT_BYTES`] each, a file
/// each. A group of one file would only copy it, so none is returned: every merge leaves fewer
/// files than it found, and a table that receives nothing settles.
fn group(chosen: Vec<LiveFile>) -> Vec<Vec<LiveFile>> {
    let mut groups: Vec<Vec<LiveFile>> = Vec::new();
    let mut bytes = 0;
    for file in chosen {
        match groups.last_mut() {
            Some(group) if bytes + file.size <= MERGED_INPUT_BYTES => {
                bytes += file.size;
                group.push(file);
            }
            _ => {
                bytes = file.size;
                groups.push(vec![file]);
            }
        }
    }
    groups.retain(|group| group.len() > 1);
    groups
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
    /// Merges small files into larger ones (see [`plan`]) in one commit. Flushes may
    /// run meanwhile: a flush only adds files and this only replaces files no flush touches, so
    /// Delta's conflict check lets both commit.
    ///
    /// Passes over one table run one at a time: Delta's conflict check lets two commits that
    /// both replace a file with `dataChange: false` land, and each would add a copy of its rows.
    pub async fn compact(&self) -> Result<Compacted, LakeError> {
        let _one_at_a_time = self.compacting.lock().await;
        let Some(mut table) = self.read().delta.clone() else {
            return Ok(Compacted::default());
        };
        // Plan from the newest version, not the handle's: a pass whose commit landed but was
        // reported failed (by a step after it) must not plan its files again.
        table.update_incremental(None).await?;
        let started = Instant::now();
        let log_store = table.log_store();
        let snapshot = table.snapshot()?.snapshot().clone();
        if !snapshot.metadata().partition_columns().is_empty() {
            return Err(LakeError::Delta(format!(
                "compacting {}: the table is partitioned, and Kith's tables never are",
                self.name
            )));
        }
        let views: Vec<LogicalFileView> = snapshot
            .file_views(log_store.as_ref(), None)
            .try_collect()
            .await?;
        // Rows a deletion vector hides would come back in the merged file.
        let live = views
            .iter()
            .filter(|view| view.deletion_vector_descriptor().is_none())
            .map(|view| LiveFile {
                path: view.path().into_owned(),
                size: u64::try_from(view.size()).unwrap_or(0),
                rows: view.num_records().map(|rows| rows as u64),
            })
            .collect();
        let merges = plan(live);
        if merges.is_empty() {
            return Ok(Compacted::default());
        }

        // The flushes' column settings (no free text, such as emails and ids, in footer
        // statistics) and the table's statistics columns.
        let properties = snapshot.table_properties();
        let config = WriterConfig::new(
            self.schema.clone(),
            Vec::new(),
            Some(writer_properties(&self.schema, compacted_codec())),
            // One file a group: the writer's own cut, on its estimate of the uncompressed size,
            // would split it into files compaction would choose again.
            None,
            None,
            properties.num_indexed_cols(),
            properties
                .data_skipping_stats_columns
                .as_ref()
                .map(|columns| columns.iter().map(ToString::to_string).collect()),
        );
        let mut written = Vec::new();
        for group in &merges {
            let writer = DeltaWriter::new(table.object_store(), config.clone());
            written.extend(self.merge_files(writer, group).await?);
        }
        let chosen: HashSet<&str> = merges
            .iter()
            .flatten()
            .map(|file| file.path.as_str())
            .collect();
        let removals = views
            .iter()
            .filter(|view| chosen.contains(view.path().as_ref()))
            .map(|view| Action::Remove(view.remove_action(false)));
        let outcome = Compacted {
            files_replaced: chosen.len() as u64,
            bytes_rewritten: merges.iter().flatten().map(|file| file.size).sum(),
            files_written: written.len() as u64,
        };
        let additions = written.into_iter().map(|mut add| {
            add.data_change = false;
            Action::Add(add)
        });
        let actions: Vec<Action> = removals.chain(additions).collect();
        // Like flush commits, no log cleanup: the tidy that runs this trims the log itself.
        let committed =
            CommitBuilder::from(CommitProperties::default().with_cleanup_expired_logs(Some(false)))
                .with_actions(actions)
                .build(
                    Some(&snapshot),
                    log_store,
                    DeltaOperation::Optimize {
                        predicate: None,
                        target_size: MERGED_INPUT_BYTES as i64,
                    },
                )
                .await;
        match committed {
            Ok(commit) => table.state = Some(commit.snapshot()),
            Err(e) => {
                // The commit may have landed before a step after it failed (a checkpoint): take
                // whatever the log now says, so queries and the next plan see it.
                if let Ok(reloaded) = self.reload().await {
                    adopt_unless_older(&mut self.write().delta, reloaded);
                }
                return Err(e.into());
            }
        }

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

    /// Writes the rows of `group` through `writer` into one new file (not yet committed) and
    /// returns its Add.
    async fn merge_files(
        &self,
        mut writer: DeltaWriter,
        group: &[LiveFile],
    ) -> Result<Vec<Add>, LakeError> {
        for file in group {
            if let Err(e) = self.copy_rows(&file.path, &mut writer).await {
                if let Err(abort) = writer.abort().await {
                    tracing::warn!(table = self.name, error = %abort, "abandoning a merged file failed; it is deleted with unused files");
                }
                return Err(e);
            }
        }
        Ok(writer.close().await?)
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

    /// Files of (bytes, rows).
    fn files(shapes: &[(u64, u64)]) -> Vec<LiveFile> {
        shapes
            .iter()
            .enumerate()
            .map(|(index, &(size, rows))| LiveFile {
                path: format!("part-{index:05}.parquet"),
                size,
                rows: Some(rows),
            })
            .collect()
    }

    /// Every file a pass would merge.
    fn merged(files: Vec<LiveFile>) -> Vec<LiveFile> {
        plan(files).into_iter().flatten().collect()
    }

    fn rows(chosen: &[LiveFile]) -> Vec<u64> {
        chosen.iter().filter_map(|file| file.rows).collect()
    }

    #[test]
    fn a_lone_small_file_is_left_alone() {
        assert!(merged(files(&[])).is_empty());
        assert!(merged(files(&[(5_000, 10)])).is_empty());
        assert!(
            merged(files(&[(5_000, 10), (40 * MIB, 10), (16 * MIB, 10)])).is_empty(),
            "files of half the merge size or more are done"
        );
    }

    #[test]
    fn a_busy_server_s_flush_files_all_merge() {
        let flushed: Vec<(u64, u64)> = (0..50).map(|i| (3 * MIB, 170_000 + i)).collect();
        let groups = plan(files(&flushed));
        assert_eq!(groups.iter().map(Vec::len).collect::<Vec<_>>(), [10; 5]);
    }

    #[test]
    fn a_compacted_file_waits_until_the_new_files_hold_half_its_rows() {
        // Fifty 11 KB flushes of ten events each are larger on disk than the compacted file
        // of 5,000 events, but hold a tenth of its rows.
        let mut shapes = vec![(11_000, 10); 50];
        shapes.push((400_000, 5_000));
        let chosen = merged(files(&shapes));
        assert_eq!(rows(&chosen), vec![10; 50]);
        // With 2,500 rows in newer files it is merged with them.
        shapes.extend([(60_000, 1_000), (60_000, 1_000)]);
        let chosen = merged(files(&shapes));
        assert_eq!(chosen.len(), 53);
        assert_eq!(rows(&chosen).last(), Some(&5_000));
    }

    #[test]
    fn without_row_counts_files_are_weighed_in_bytes() {
        let mut shapes = files(&[(11_000, 10), (11_000, 10), (400_000, 5_000)]);
        shapes[0].rows = None;
        let chosen = merged(shapes);
        assert_eq!(chosen.len(), 2, "400 KB is over twice 22 KB");
    }

    #[test]
    fn one_tiny_file_does_not_hold_back_the_others() {
        let chosen = merged(files(&[(2 * MIB, 100_000), (900, 1), (2 * MIB, 100_010)]));
        assert_eq!(rows(&chosen), [1, 100_000, 100_010]);
    }

    #[test]
    fn a_pass_reads_about_a_gibibyte_at_most() {
        let backlog = vec![(10 * MIB, 1_000_000); 200];
        let chosen = merged(files(&backlog));
        let read: u64 = chosen.iter().map(|file| file.size).sum();
        // The walk stops past a gibibyte; a file left alone in the last group is not merged.
        assert!(
            (PASS_BYTES - 10 * MIB..PASS_BYTES + 10 * MIB).contains(&read),
            "{read}"
        );
    }

    #[test]
    fn every_merge_leaves_fewer_files() {
        // Any two files under the done size fit in one merge, whose input is then done.
        let almost_done = files(&[(15 * MIB, 1_000), (15 * MIB + 1, 1_001), (16 * MIB, 1)]);
        let groups = plan(almost_done);
        assert_eq!(groups.len(), 1);
        assert!(groups[0].iter().map(|f| f.size).sum::<u64>() >= FINISHED_FILE_BYTES);
        // A group is cut where the next file would take it over the merge size, and a file
        // left alone at the end is not copied.
        let groups = group(files(&[
            (10 * MIB, 1),
            (12 * MIB, 2),
            (11 * MIB, 3),
            (MIB, 4),
            (14 * MIB, 5),
        ]));
        let shapes: Vec<Vec<u64>> = groups.iter().map(|group| rows(group)).collect();
        assert_eq!(shapes, [vec![1, 2], vec![3, 4, 5]]);
    }

    #[test]
    fn a_heavy_file_grouped_with_few_light_ones_waits() {
        // Twenty 2 MiB files of 100 rows fill a merge with sixteen; the four left over hold
        // too few rows to merge the 3,000-row file that would close their group.
        let mut shapes = vec![(2 * MIB, 100); 20];
        shapes.push((MIB, 3_000));
        let groups = plan(files(&shapes));
        let sizes: Vec<usize> = groups.iter().map(Vec::len).collect();
        assert_eq!(sizes, [16, 4]);
        assert!(groups.iter().flatten().all(|file| file.rows == Some(100)));
    }

    /// A server's table in the simulation below: flush files of `flush_bytes` and
    /// `flush_rows`, merged into files of `merged_row_bytes` a row.
    struct Simulated {
        flush_bytes: u64,
        flush_rows: u64,
        merged_row_bytes: u64,
    }

    impl Simulated {
        /// Flushes 50 times before each of `passes` compactions planned by `plan`, then keeps
        /// compacting with nothing new; returns (rows rewritten / rows flushed, most files under
        /// the done size at once, passes it took to settle).
        fn run(
            &self,
            plan: fn(Vec<LiveFile>) -> Vec<Vec<LiveFile>>,
            passes: u64,
        ) -> (f64, usize, u64) {
            let mut live: Vec<LiveFile> = Vec::new();
            let (mut flushed, mut rewritten, mut most_small, mut name) = (0u64, 0u64, 0, 0u64);
            let mut file = |size, rows| {
                name += 1;
                LiveFile {
                    path: format!("part-{name:07}.parquet"),
                    size,
                    rows: Some(rows),
                }
            };
            let compact = |live: &mut Vec<LiveFile>, file: &mut dyn FnMut(u64, u64) -> LiveFile| {
                let groups = plan(live.clone());
                let names: HashSet<String> =
                    groups.iter().flatten().map(|f| f.path.clone()).collect();
                live.retain(|f| !names.contains(&f.path));
                let mut merged = 0;
                for group in &groups {
                    let rows: u64 = group.iter().filter_map(|f| f.rows).sum();
                    merged += rows;
                    live.push(file(rows * self.merged_row_bytes, rows));
                }
                merged
            };
            for _ in 0..passes {
                for _ in 0..50 {
                    live.push(file(self.flush_bytes, self.flush_rows));
                    flushed += self.flush_rows;
                }
                most_small =
                    most_small.max(live.iter().filter(|f| f.size < FINISHED_FILE_BYTES).count());
                rewritten += compact(&mut live, &mut file);
            }
            let mut settle = 0;
            while compact(&mut live, &mut file) > 0 {
                settle += 1;
                assert!(settle < 100, "a table that receives nothing settles");
            }
            (rewritten as f64 / flushed as f64, most_small, settle)
        }
    }

    /// Delta OPTIMIZE's choice: every file not done.
    fn everything_small(mut files: Vec<LiveFile>) -> Vec<Vec<LiveFile>> {
        files.retain(|file| file.size < FINISHED_FILE_BYTES);
        group(files)
    }

    #[test]
    fn each_event_is_rewritten_a_few_times_not_once_a_pass() {
        // A quiet server: ten events a flush, 11 KB files, 80 bytes an event once merged,
        // 3,000 passes. OPTIMIZE's choice rewrote the growing file at every pass (207 times
        // each event on average here); now 8.
        let quiet = Simulated {
            flush_bytes: 11_000,
            flush_rows: 10,
            merged_row_bytes: 80,
        };
        let (amplification, most_small, settle) = quiet.run(plan, 3_000);
        let (optimize_amplification, _, _) = quiet.run(everything_small, 3_000);
        assert!(optimize_amplification > 150.0, "{optimize_amplification}");
        assert!(amplification < 10.0, "{amplification}");
        assert!(most_small < 50 + 15, "{most_small}");
        assert!(settle < 10, "{settle}");
        // A busy one: 3 MiB flushes of 170,000 events, 12 bytes an event merged. Each is
        // rewritten once.
        let busy = Simulated {
            flush_bytes: 3 * MIB,
            flush_rows: 170_000,
            merged_row_bytes: 12,
        };
        let (amplification, most_small, settle) = busy.run(plan, 40);
        assert!(amplification < 1.25, "{amplification}");
        assert!(most_small < 50 + 5, "{most_small}");
        assert!(settle < 3, "{settle}");
    }
}
