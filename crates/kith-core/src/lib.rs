//! Kith's event model: what a Segment-compatible client sends, checked and normalised into the
//! [`Event`] Kith stores. Pure computation: no I/O, so every rule here is testable on its own.

pub mod event;
pub mod limits;
pub mod parse;
pub mod stored_view;
pub mod time;

pub use event::{ContextIdentity, Event, MessageType, Rejection, Stored, TypedFields};
pub use parse::{
    IngestBatch, REJECTION_CODES, RequestError, context_identity, json_kind, judge_event,
    parse_batch_request, parse_single_request, readable_fields,
};
pub use stored_view::{EventView, RejectionView, StoredView, TypedFieldsView};
