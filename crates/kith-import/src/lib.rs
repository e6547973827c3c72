//! Reading customer files into Kith events.
//!
//! A file is read a row at a time ([`reader`]), whatever its size; each row goes through a column
//! mapping ([`mapping`]) into an event with a message id derived from the row's content
//! ([`message_id`]), so importing the same file twice stores nothing the second time. Rows that
//! cannot be used, and values dropped from rows that can, are written with their row number,
//! column and reason to a rejected-rows file ([`rejects`]). Nothing here writes to Kith: the
//! caller sends the events through the same path as every other event.

pub mod checkpoint;
pub mod contacts;
pub mod events;
pub mod ledger;
pub mod mapping;
pub mod reader;
pub mod rejects;
pub mod time;
pub mod transactions;

use thiserror::Error;

pub use checkpoint::{Checkpoint, Found};
pub use contacts::{ContactImporter, RowOutcome};
pub use events::{EventField, FlatEventImporter, SegmentLineImporter};
pub use ledger::{Earlier, FirstRows, ImportRecord, Ledger};
pub use mapping::{ContactField, ContactMapping, MappingError, MappingFile};
pub use reader::{BadRow, FirstRowRead, Format, Row, RowReader, RowSource};
pub use rejects::{Problem, RejectWriter};
pub use time::{TimeError, TimeParser};
pub use transactions::{LogKind, TransactionField, TransactionImporter};

/// Why a file cannot be imported at all (row-level problems never stop an import).
#[derive(Debug, Error)]
pub enum ImportError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not readable as {format}: {reason}")]
    Unreadable {
        path: String,
        format: &'static str,
        reason: String,
    },
    #[error("cannot write the rejected rows to {path}: {source}")]
    Rejects {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot record the import's progress in {path}: {source}")]
    Checkpoint {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot use the import ledger {path}: {reason}")]
    Ledger { path: String, reason: String },
    #[error(transparent)]
    Mapping(#[from] MappingError),
}

/// A message id that depends only on what is imported: the kind of import, the mapping and the
/// row's values. Re-importing an unchanged row gives the same id, which the journal deduplicates.
pub fn message_id(kind: &str, mapping_fingerprint: &str, row: &Row) -> String {
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    hasher.update(kind.as_bytes());
    hasher.update(&[0]);
    hasher.update(mapping_fingerprint.as_bytes());
    hasher.update(&[0]);
    for (column, value) in &row.values {
        hasher.update(column.as_bytes());
        hasher.update(&[0]);
        hasher.update(value.to_string().as_bytes());
        hasher.update(&[0]);
    }
    format!("import-{kind}-{:032x}", hasher.digest128())
}
