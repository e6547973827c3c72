//! Where an import stands, so an interrupted one (Ctrl-C, a crash, a full disk) continues from the
//! last batch that reached Kith instead of reading the whole file again.
//!
//! After each batch is durably written the importer saves how many rows of the file it has
//! handled and its running totals. Running the same import again (same file, unchanged, same
//! command and mapping) skips those rows without sending them (they are converted again, for
//! what a conversion counts, such as the lines of an order); a finished import
//! removes its checkpoint. Resuming is only an optimisation: message ids derive from the rows, so
//! a row sent twice is still stored once.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use serde::{Deserialize, Serialize};

use crate::ImportError;

/// What the checkpoint file holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    /// The file imported, as given, with the size and modification time it had.
    pub file: String,
    pub size: u64,
    pub modified_ns: u128,
    /// The command and mapping, fingerprinted: another mapping is another import.
    pub job: String,
    /// Rows of the file handled: stored, rejected or already imported.
    pub rows_done: u64,
    /// The running totals of the summary (stored, rejected, created, …).
    pub totals: BTreeMap<String, u64>,
}

/// The checkpoint of one import.
pub struct Checkpoint {
    path: PathBuf,
    file: String,
    size: u64,
    modified_ns: u128,
    job: String,
}

/// What [`Checkpoint::open`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// No checkpoint: start at the first row.
    Nothing,
    /// A checkpoint of this very import: continue after its rows.
    Resume(Progress),
    /// A checkpoint of another import, or of the file before it changed; it is replaced.
    Stale(String),
}

impl Checkpoint {
    /// The checkpoint at `path` for importing `file` with `job` (a fingerprint of the command
    /// and its mapping).
    pub fn open(path: &Path, file: &Path, job: &str) -> Result<(Checkpoint, Found), ImportError> {
        let metadata = std::fs::metadata(file).map_err(|source| ImportError::Read {
            path: file.display().to_string(),
            source,
        })?;
        let modified_ns = metadata
            .modified()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos());
        let checkpoint = Checkpoint {
            path: path.to_path_buf(),
            file: file.display().to_string(),
            size: metadata.len(),
            modified_ns,
            job: job.to_string(),
        };
        let found = match std::fs::read_to_string(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Found::Nothing,
            Err(source) => {
                return Err(ImportError::Read {
                    path: path.display().to_string(),
                    source,
                });
            }
            Ok(text) => match serde_json::from_str::<Progress>(&text) {
                Err(_) => Found::Stale(format!(
                    "{} is not an import checkpoint Kith can read",
                    path.display()
                )),
                Ok(progress) => checkpoint.judge(progress),
            },
        };
        Ok((checkpoint, found))
    }

    fn judge(&self, progress: Progress) -> Found {
        if progress.file != self.file || progress.job != self.job {
            Found::Stale(format!(
                "{} belongs to another import ({} with other settings, or into another data \
                 directory)",
                self.path.display(),
                progress.file
            ))
        } else if progress.size != self.size || progress.modified_ns != self.modified_ns {
            Found::Stale(format!(
                "{} changed since the interrupted import",
                self.file
            ))
        } else {
            Found::Resume(progress)
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Records that the first `rows_done` rows are handled. Written to a temporary file and
    /// renamed, so a crash leaves the previous checkpoint or this one, never half of one.
    pub fn save(&self, rows_done: u64, totals: BTreeMap<String, u64>) -> Result<(), ImportError> {
        let progress = Progress {
            file: self.file.clone(),
            size: self.size,
            modified_ns: self.modified_ns,
            job: self.job.clone(),
            rows_done,
            totals,
        };
        let error = |source| ImportError::Checkpoint {
            path: self.path.display().to_string(),
            source,
        };
        let text = serde_json::to_string_pretty(&progress).map_err(std::io::Error::other);
        let temporary = self.path.with_extension("json.tmp");
        std::fs::write(&temporary, text.map_err(error)?).map_err(error)?;
        std::fs::rename(&temporary, &self.path).map_err(error)
    }

    /// Removes the checkpoint once the import is complete.
    pub fn clear(&self) -> Result<(), ImportError> {
        match std::fs::remove_file(&self.path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(ImportError::Checkpoint {
                path: self.path.display().to_string(),
                source: e,
            }),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_checkpoint_resumes_only_the_same_import_of_the_same_file() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("orders.csv");
        std::fs::write(&data, "a,b\n1,2\n").unwrap();
        let at = dir.path().join("orders.csv.import-progress.json");

        let (checkpoint, found) = Checkpoint::open(&at, &data, "transactions v1").unwrap();
        assert_eq!(found, Found::Nothing);
        let totals = BTreeMap::from([("stored".to_string(), 7)]);
        checkpoint.save(1, totals.clone()).unwrap();

        let (_, found) = Checkpoint::open(&at, &data, "transactions v1").unwrap();
        let Found::Resume(progress) = found else {
            panic!("expected a resume, got {found:?}");
        };
        assert_eq!((progress.rows_done, progress.totals), (1, totals));

        let (_, found) = Checkpoint::open(&at, &data, "transactions v2").unwrap();
        assert!(matches!(found, Found::Stale(reason) if reason.contains("another import")));

        std::fs::write(&data, "a,b\n1,2\n3,4\n").unwrap();
        let (checkpoint, found) = Checkpoint::open(&at, &data, "transactions v1").unwrap();
        assert!(matches!(found, Found::Stale(reason) if reason.contains("changed")));

        checkpoint.clear().unwrap();
        assert!(!at.exists());
        checkpoint.clear().unwrap();

        std::fs::write(&at, "not json").unwrap();
        let (_, found) = Checkpoint::open(&at, &data, "transactions v1").unwrap();
        assert!(matches!(found, Found::Stale(_)));
    }
}
