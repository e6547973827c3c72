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

/// The start of every id an import makes ([`message_id`], [`order_line_id`]), as opposed to
/// those a file gives.
const MADE_ID_PREFIX: &str = "import-";
/// The start of an order line's id ([`order_line_id`]).
const ORDER_ID_PREFIX: &str = "import-order-";

/// What an imported event's id follows, from the least to the most.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum IdBasis {
    /// The file gives it: the same whatever the settings.
    File,
    /// An order line's ([`order_line_id`]): its customer, order, amount, event and source.
    OrderLine,
    /// The row and every setting ([`message_id`]): another time zone, currency or mapping makes
    /// another event of the same row.
    Settings,
}

impl IdBasis {
    pub fn of(message_id: &str) -> IdBasis {
        if message_id.starts_with(ORDER_ID_PREFIX) {
            IdBasis::OrderLine
        } else if message_id.starts_with(MADE_ID_PREFIX) {
            IdBasis::Settings
        } else {
            IdBasis::File
        }
    }
}

/// One line of an order, as its id is made from it.
#[derive(Debug, Clone, Copy)]
pub struct OrderLine<'a> {
    pub customer: &'a str,
    pub order_id: &'a str,
    pub amount: Option<f64>,
    /// The event the line is recorded as (`Order Completed`, or `--event`'s: a refund of the
    /// same order is another event).
    pub event: &'a str,
    pub source: &'a str,
}

impl OrderLine<'_> {
    fn hash(&self, hasher: &mut xxhash_rust::xxh3::Xxh3) {
        for part in [self.customer, self.order_id, self.event, self.source] {
            hasher.update(part.as_bytes());
            hasher.update(&[0]);
        }
        hasher.update(&self.amount.map_or(u64::MAX, f64::to_bits).to_le_bytes());
    }

    /// What tells this line from other lines: lines with the same key are counted
    /// ([`order_line_id`]'s `repeat`).
    pub fn key(&self) -> u64 {
        let mut hasher = xxhash_rust::xxh3::Xxh3::new();
        self.hash(&mut hasher);
        hasher.digest()
    }
}

/// The id of an order's line: who ordered, the order id, the amount, the event and source, and
/// how many lines just like it came before it in the file (`repeat`; two identical lines are
/// two). An order imported again is stored once, whatever else changed around it: rows added,
/// removed or reordered, columns renamed or added, another time zone (which the import ledger
/// then questions).
pub fn order_line_id(line: &OrderLine, repeat: u32) -> String {
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    line.hash(&mut hasher);
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
    format!("{MADE_ID_PREFIX}{kind}-{:032x}", hasher.digest128())
}
