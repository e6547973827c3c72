//! The rejected-rows file: every row that was skipped, and every value dropped from a row that was
//! imported, with the row number, column and reason.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

use crate::ImportError;

/// What happened to the row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Nothing of the row was imported.
    RowSkipped,
    /// The row was imported without this value.
    ValueDropped,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::RowSkipped => "row skipped",
            Action::ValueDropped => "value dropped",
        }
    }
}

/// One problem with one row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub row: u64,
    pub column: Option<String>,
    pub value: Option<String>,
    pub reason: String,
    pub action: Action,
}

/// Writes problems as CSV (`row,column,value,reason,action`), creating the file at the first one.
pub struct RejectWriter {
    path: PathBuf,
    writer: Option<csv::Writer<File>>,
    rows_skipped: u64,
    values_dropped: u64,
    /// Continuing an interrupted import: add to the file it left instead of starting a new one.
    append: bool,
    /// The first few problems, for the summary.
    pub examples: Vec<Problem>,
}

const EXAMPLES: usize = 5;

impl RejectWriter {
    pub fn new(path: &Path) -> RejectWriter {
        RejectWriter {
            path: path.to_path_buf(),
            writer: None,
            rows_skipped: 0,
            values_dropped: 0,
            append: false,
            examples: Vec::new(),
        }
    }

    /// Continues the file of an interrupted import, which had recorded `rows_skipped` and
    /// `values_dropped` problems.
    pub fn resume(path: &Path, rows_skipped: u64, values_dropped: u64) -> RejectWriter {
        RejectWriter {
            rows_skipped,
            values_dropped,
            append: path.exists(),
            ..RejectWriter::new(path)
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn rows_skipped(&self) -> u64 {
        self.rows_skipped
    }

    pub fn values_dropped(&self) -> u64 {
        self.values_dropped
    }

    /// True once anything was written (by this run or the interrupted one it continues).
    pub fn written(&self) -> bool {
        self.writer.is_some() || self.append
    }

    pub fn record(&mut self, problem: Problem) -> Result<(), ImportError> {
        let error = |e: std::io::Error, path: &Path| ImportError::Rejects {
            path: path.display().to_string(),
            source: e,
        };
        if self.writer.is_none() {
            let writer = if self.append {
                let file = OpenOptions::new()
                    .append(true)
                    .open(&self.path)
                    .map_err(|e| error(e, &self.path))?;
                csv::Writer::from_writer(file)
            } else {
                let file = File::create(&self.path).map_err(|e| error(e, &self.path))?;
                let mut writer = csv::Writer::from_writer(file);
                writer
                    .write_record(["row", "column", "value", "reason", "action"])
                    .map_err(|e| error(e.into(), &self.path))?;
                writer
            };
            self.writer = Some(writer);
        }
        match problem.action {
            Action::RowSkipped => self.rows_skipped += 1,
            Action::ValueDropped => self.values_dropped += 1,
        }
        if let Some(writer) = self.writer.as_mut() {
            writer
                .write_record([
                    problem.row.to_string().as_str(),
                    problem.column.as_deref().unwrap_or(""),
                    problem.value.as_deref().unwrap_or(""),
                    problem.reason.as_str(),
                    problem.action.as_str(),
                ])
                .map_err(|e| error(e.into(), &self.path))?;
        }
        if self.examples.len() < EXAMPLES {
            self.examples.push(problem);
        }
        Ok(())
    }

    /// Writes out what is buffered (at each checkpoint, and at the end).
    pub fn finish(&mut self) -> Result<(), ImportError> {
        if let Some(writer) = self.writer.as_mut() {
            writer.flush().map_err(|e| ImportError::Rejects {
                path: self.path.display().to_string(),
                source: e,
            })?;
        }
        Ok(())
    }
}
