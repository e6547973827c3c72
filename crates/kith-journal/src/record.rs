//! On-disk record format, little-endian:
//!
//! ```text
//! payload_len: u32 | crc32: u32 | seq: u64 | has_key: u8 | key: u128 | payload
//! ```
//! The CRC covers everything after itself, so a torn or corrupted record is recognised.

pub(crate) const HEADER_BYTES: usize = 4 + 4 + 8 + 1 + 16;
/// Refuse absurd lengths from a corrupt header instead of allocating them.
pub(crate) const MAX_PAYLOAD_BYTES: u32 = 64 * 1024 * 1024;

/// A stored record, as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub seq: u64,
    pub dedup_key: Option<u128>,
    pub payload: Vec<u8>,
}

pub(crate) fn encode(out: &mut Vec<u8>, seq: u64, dedup_key: Option<u128>, payload: &[u8]) {
    let start = out.len();
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&seq.to_le_bytes());
    out.push(dedup_key.is_some() as u8);
    out.extend_from_slice(&dedup_key.unwrap_or(0).to_le_bytes());
    out.extend_from_slice(payload);
    let crc = crc32fast::hash(&out[start + 8..]);
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// The outcome of decoding at one position of a segment.
pub(crate) enum Decoded {
    Record {
        record: Record,
        len: usize,
    },
    /// Not enough bytes: a write that never finished (the tail of a crash).
    Truncated,
    Corrupt(String),
}

pub(crate) fn decode(bytes: &[u8]) -> Decoded {
    if bytes.len() < HEADER_BYTES {
        return Decoded::Truncated;
    }
    let payload_len = u32::from_le_bytes(bytes[0..4].try_into().expect("4 bytes"));
    if payload_len > MAX_PAYLOAD_BYTES {
        return Decoded::Corrupt(format!("payload length {payload_len} is implausible"));
    }
    let total = HEADER_BYTES + payload_len as usize;
    if bytes.len() < total {
        return Decoded::Truncated;
    }
    let crc = u32::from_le_bytes(bytes[4..8].try_into().expect("4 bytes"));
    if crc32fast::hash(&bytes[8..total]) != crc {
        return Decoded::Corrupt("checksum mismatch".into());
    }
    let seq = u64::from_le_bytes(bytes[8..16].try_into().expect("8 bytes"));
    let has_key = bytes[16] == 1;
    let key = u128::from_le_bytes(bytes[17..33].try_into().expect("16 bytes"));
    Decoded::Record {
        record: Record {
            seq,
            dedup_key: has_key.then_some(key),
            payload: bytes[HEADER_BYTES..total].to_vec(),
        },
        len: total,
    }
}
