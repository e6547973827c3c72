//! The Segment tracking API's size limits, which real SDKs already respect.

/// Largest serialised event, in bytes.
pub const MAX_EVENT_BYTES: usize = 32 * 1024;
/// Largest request body (after gzip decompression), in bytes.
pub const MAX_REQUEST_BYTES: usize = 500 * 1024;
/// Most events in one batch request.
pub const MAX_BATCH_EVENTS: usize = 2_500;
/// `messageId` must be shorter than this.
pub const MAX_MESSAGE_ID_CHARS: usize = 100;
/// The start of the message ids of merges a person confirmed in Kith (`kith profile merge`):
/// a profile's history calls a merge with such an id manual, so no client may send one.
pub const MANUAL_MERGE_ID_PREFIX: &str = "kith-merge-";
