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

/// The start of an order line's id ([`order_line_id`]).
const ORDER_ID_PREFIX: &str = "import-order-";

/// Whether an imported event's id follows its import's settings ([`message_id`]): another time
/// zone, currency or mapping then makes another event of the same row. Ids a file gives, and
/// those of order lines, do not.
pub fn id_follows_settings(message_id: &str) -> bool {
    message_id.starts_with("import-") && !message_id.starts_with(ORDER_ID_PREFIX)
}

/// The id of an order's line: its order id, its amount, and how many lines of that order with
/// that amount came just before it (`repeat`; two identical lines are two). An order imported
/// again is stored once, whatever else changed around it: rows added, removed or reordered,
/// columns renamed or added, another time zone (which the import ledger then questions).
pub fn order_line_id(order_id: &str, amount: Option<f64>, repeat: u32) -> String {
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    hasher.update(order_id.as_bytes());
    hasher.update(&[0]);
    hasher.update(&amount.map_or(u64::MAX, f64::to_bits).to_le_bytes());
    hasher.update(&repeat.to_le_bytes());
    format!("{ORDER_ID_PREFIX}{:032x}", hasher.digest128())
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
