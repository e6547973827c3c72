//! Keeping an event table's footprint bounded while it grows: compaction of the small files
//! frequent flushes write, deletion of the files compaction replaced, and trimming of the
//! Delta log.
//!
//! A flush commits every couple of seconds while events arrive, so left alone a table gains
//! tens of thousands of log entries a day, and delta-rs lists the whole `_delta_log` directory
//! on every commit (about 35 µs an entry on the 2-core machine: 2,000 entries made each flush
//! 66 ms slower, 100,000 made it take seconds). Replaced data files would stay on disk forever.

use std::collections::HashSet;
use std::time::Duration;

use deltalake::operations::vacuum::VacuumMode;
use deltalake::protocol::checkpoints::{cleanup_expired_logs_for, create_checkpoint};

use super::{EventTable, adopt_unless_older};
use crate::LakeError;
use crate::synced_store::is_staging_name;

/// Staging files are never deleted younger than this, whatever the policy: a write may still be
/// filling one (a large compaction output takes a while).
const STAGING_FILES_KEPT: Duration = Duration::from_secs(60 * 60);

/// How long what no current version of a table needs is kept before it is deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Housekeeping {
    /// Data files compaction replaced, and files no commit refers to (left by a write that was
    /// interrupted), are deleted once this old: a reader still on an older version (a query,
    /// which the server stops at its time limit; a model run; DuckDB or Spark reading the
    /// table) finishes reading them first. It must also outlast any one flush or compaction:
    /// the file it writes is referenced only once its commit lands.
    pub replaced_files_kept: Duration,
    /// Log entries older than the newest checkpoint are deleted once this old. A reader needs
    /// only the newest checkpoint and the entries after it; older ones serve time travel, which
    /// Kith does not offer, and each entry kept makes every commit slower.
    pub log_entries_kept: Duration,
}

impl Default for Housekeeping {
    fn default() -> Self {
        Housekeeping {
            replaced_files_kept: Duration::from_secs(60 * 60),
            log_entries_kept: Duration::from_secs(2 * 60),
        }
    }
}

/// What one [`EventTable::tidy`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tidied {
    /// Small files compaction rewrote into larger ones.
    pub files_compacted: u64,
    /// Data files deleted from disk.
    pub files_deleted: u64,
    /// Log entries (commits and old checkpoints) deleted.
    pub log_entries_deleted: u64,
    /// The steps that failed, each with its error; the others ran anyway.
    pub failed: Vec<String>,
}

impl EventTable {
    /// Compacts, deletes the data files `policy` no longer keeps, then trims the log. Flushes
    /// may run meanwhile; two tidies of one table must not (the server runs them one at a time).
    ///
    /// Every step runs even when one before it failed, and the failures are returned with
    /// what was done: a log left untrimmed because compaction failed would slow every flush.
    pub async fn tidy(&self, policy: &Housekeeping) -> Tidied {
        let mut failed = Vec::new();
        let mut count = |step: &'static str, outcome: Result<u64, LakeError>| match outcome {
            Ok(n) => n,
            Err(e) => {
                failed.push(format!("{step}: {e}"));
                0
            }
        };
        // Checkpoint first: compaction and deletion add young entries, and the trim at the end
        // deletes only entries before a checkpoint older than every young one.
        count("checkpoint", self.checkpoint().await.map(|()| 0));
        let files_compacted = count(
            "compaction",
            self.compact().await.map(|done| done.files_replaced),
        );
        let files_deleted = count(
            "deleting unused files",
            self.delete_unused_files(policy.replaced_files_kept).await,
        ) + count(
            "deleting abandoned staging files",
            self.delete_abandoned_staging_files(policy.replaced_files_kept),
        );
        let log_entries_deleted = count(
            "trimming the log",
            self.trim_log(policy.log_entries_kept).await,
        );
        Tidied {
            files_compacted,
            files_deleted,
            log_entries_deleted,
            failed,
        }
    }

    /// Deletes data files no current version refers to and that are older than `kept` (Delta
    /// VACUUM in full mode: the files compaction replaced, and any an interrupted flush or
    /// compaction left behind without a commit). Returns how many it deleted.
    async fn delete_unused_files(&self, kept: Duration) -> Result<u64, LakeError> {
        let Some(table) = self.read().delta.clone() else {
            return Ok(0);
        };
        // A retention beyond chrono's range (some 290 million years) keeps everything.
        let kept = chrono::Duration::from_std(kept).unwrap_or(chrono::Duration::MAX);
        // Delta's own minimum (7 days, meant for tables many engines write) does not apply: only
        // this process writes here, and `kept` outlasts its readers.
        let vacuum = |table: deltalake::DeltaTable, dry_run: bool| {
            table
                .vacuum()
                .with_mode(VacuumMode::Full)
                .with_retention_period(kept)
                .with_enforce_retention_duration(false)
                .with_dry_run(dry_run)
        };
        // The plan names every file removed more than `kept` ago for as long as the log keeps
        // its removal (Delta's default: a week), deleted or not: delete only when some are still
        // on disk, and count only those (the real run plans again, and may find more).
        let (_, plan) = vacuum(table.clone(), true).await?;
        let gone: HashSet<&String> = plan
            .files_deleted
            .iter()
            .filter(|file| !self.path.join(file.as_str()).exists())
            .collect();
        if gone.len() == plan.files_deleted.len() {
            return Ok(0);
        }
        let (table, done) = vacuum(table, false).await?;
        let deleted = done
            .files_deleted
            .iter()
            .filter(|file| !gone.contains(file))
            .count() as u64;
        tracing::info!(
            table = self.name,
            files = deleted,
            "deleted unused data files"
        );
        metrics::counter!("kith_lake_files_deleted_total", "table" => self.name).increment(deleted);
        adopt_unless_older(&mut self.write().delta, table);
        Ok(deleted)
    }

    /// Deletes the staging files (`NAME#N`) writes interrupted by a crash left in the table's
    /// directory and its log, once older than `kept` and than [`STAGING_FILES_KEPT`]. Listings
    /// skip such names, so Delta's own cleanup never sees them. Returns how many it deleted.
    fn delete_abandoned_staging_files(&self, kept: Duration) -> Result<u64, LakeError> {
        let kept = kept.max(STAGING_FILES_KEPT);
        let io = |path: &std::path::Path, source| LakeError::Io {
            path: path.display().to_string(),
            source,
        };
        let mut deleted = 0;
        for dir in [self.path.clone(), self.path.join("_delta_log")] {
            let entries = match std::fs::read_dir(&dir) {
                Ok(entries) => entries,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io(&dir, e)),
            };
            for entry in entries {
                let entry = entry.map_err(|e| io(&dir, e))?;
                if !is_staging_name(&entry.file_name().to_string_lossy()) {
                    continue;
                }
                let path = entry.path();
                let meta = entry.metadata().map_err(|e| io(&path, e))?;
                let age = meta
                    .modified()
                    .map(|modified| modified.elapsed().unwrap_or_default())
                    .map_err(|e| io(&path, e))?;
                if meta.is_file() && age >= kept {
                    std::fs::remove_file(&path).map_err(|e| io(&path, e))?;
                    deleted += 1;
                }
            }
        }
        if deleted > 0 {
            tracing::info!(
                table = self.name,
                files = deleted,
                "deleted abandoned staging files"
            );
            metrics::counter!("kith_lake_files_deleted_total", "table" => self.name)
                .increment(deleted);
        }
        Ok(deleted)
    }

    /// Writes a checkpoint of the current version.
    async fn checkpoint(&self) -> Result<(), LakeError> {
        let Some(table) = self.read().delta.clone() else {
            return Ok(());
        };
        create_checkpoint(&table, None).await?;
        Ok(())
    }

    /// Deletes the log entries before the newest checkpoint that are older than `kept`, then
    /// reloads the table handle. Returns how many it deleted.
    ///
    /// Entries younger than `kept` stay with everything back to the checkpoint before them, so a
    /// commit that started from a version within `kept` (a flush's, at most seconds old) can
    /// still read what landed since for Delta's conflict check.
    ///
    /// The handle is reloaded afterwards: a snapshot reads what it does not hold in memory (the
    /// removals deleting files works from, for one) from the checkpoint and entries it was built
    /// on, and with the tidy in the other order, trim first, deleting files failed with "checkpoint
    /// not found". A handle that moves on with a commit rebases itself on the newest
    /// checkpoint; this one may see no commit for a long time on a quiet server.
    async fn trim_log(&self, kept: Duration) -> Result<u64, LakeError> {
        let Some(table) = self.read().delta.clone() else {
            return Ok(0);
        };
        let Some(version) = table.version() else {
            return Ok(0);
        };
        let kept_ms = i64::try_from(kept.as_millis()).unwrap_or(i64::MAX);
        let cutoff = chrono::Utc::now()
            .timestamp_millis()
            .saturating_sub(kept_ms);
        let deleted = cleanup_expired_logs_for(version, table.log_store().as_ref(), cutoff, None)
            .await? as u64;
        metrics::counter!("kith_lake_log_entries_deleted_total", "table" => self.name)
            .increment(deleted);
        if deleted > 0 {
            let reloaded = self.reload().await?;
            adopt_unless_older(&mut self.write().delta, reloaded);
        }
        Ok(deleted)
    }
}
