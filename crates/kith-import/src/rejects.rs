//! The rejected-rows file: every row that was skipped, and every value dropped from a row that was
//! imported, with the row number, column and reason.

use std::fs::File;
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
            examples: Vec::new(),
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

    /// True once anything was written.
    pub fn written(&self) -> bool {
        self.writer.is_some()
    }

    pub fn record(&mut self, problem: Problem) -> Result<(), ImportError> {
        let error = |e: std::io::Error, path: &Path| ImportError::Rejects {
            path: path.display().to_string(),
            source: e,
        };
        if self.writer.is_none() {
            let file = File::create(&self.path).map_err(|e| error(e, &self.path))?;
            let mut writer = csv::Writer::from_writer(file);
            writer
                .write_record(["row", "column", "value", "reason", "action"])
                .map_err(|e| error(e.into(), &self.path))?;
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

    /// Flushes the file.
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
