//! The WAL's on-disk format (drawn byte by byte in `docs/storage.md`): a segment header, then
//! length-prefixed, CRC32-checked records.
//!
//! Invariants:
//! - A record is valid only if its whole frame is present and its CRC matches; a record that
//!   fails either check is never decoded.
//! - The CRC covers the length field as well as the payload, so a flipped length bit is caught.
//! - Bodies are bincode 1.3 of openraft's own (serde) types; the kind byte says which.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::storage::backend::SegmentId;
use crate::types::Entry;
use crate::types::LogId;
use crate::types::ShardId;
use crate::types::Vote;

/// "FLWL": identifies a flashledger WAL segment.
pub const SEGMENT_MAGIC: [u8; 4] = *b"FLWL";
/// Bumped on any incompatible change to the header or record layout, or to the encoding of
/// what records hold: 2 since sale rules carry rate limits (an entry that puts a SKU on sale
/// under format 1 does not decode under 2).
pub const FORMAT_VERSION: u8 = 2;
/// magic (4) + version (1) + reserved (3) + segment id (8).
pub const SEGMENT_HEADER_BYTES: usize = 16;
/// length (4) + crc (4).
pub const FRAME_HEADER_BYTES: usize = 8;
/// kind (1) + shard (8), the part of the payload before the body.
pub const PAYLOAD_PREFIX_BYTES: usize = 9;

/// What a record does to one shard's log.
#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    /// Entries with consecutive indexes; each replaces whatever the shard had at its index and
    /// after.
    Append {
        shard: ShardId,
        entries: Vec<Entry>,
    },
    /// Drop every entry after this log id (all of them for `None`).
    TruncateAfter {
        shard: ShardId,
        last_kept: Option<LogId>,
    },
    /// Drop every entry up to and including this log id.
    Purge {
        shard: ShardId,
        upto: LogId,
    },
    SaveVote {
        shard: ShardId,
        vote: Vote,
    },
    SaveCommitted {
        shard: ShardId,
        committed: Option<LogId>,
    },
}

/// The kind byte of each record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Kind {
    Append = 1,
    TruncateAfter = 2,
    Purge = 3,
    SaveVote = 4,
    SaveCommitted = 5,
}

impl Kind {
    fn from_byte(byte: u8) -> Option<Kind> {
        [
            Kind::Append,
            Kind::TruncateAfter,
            Kind::Purge,
            Kind::SaveVote,
            Kind::SaveCommitted,
        ]
        .into_iter()
        .find(|kind| *kind as u8 == byte)
    }
}

/// Why bytes could not become a record (the caller knows where they were).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("record frame incomplete")]
    Torn,
    #[error("record checksum mismatch")]
    ChecksumMismatch,
    #[error("unknown record kind {0}")]
    UnknownKind(u8),
    #[error("record body does not decode: {0}")]
    Body(String),
    #[error("record too large to encode: {0} bytes")]
    TooLarge(usize),
    #[error("encoding a record body failed: {0}")]
    Encode(String),
}

/// The 16-byte header that opens every segment.
pub fn segment_header(segment: SegmentId) -> [u8; SEGMENT_HEADER_BYTES] {
    let mut header = [0u8; SEGMENT_HEADER_BYTES];
    header[..4].copy_from_slice(&SEGMENT_MAGIC);
    header[4] = FORMAT_VERSION;
    header[8..].copy_from_slice(&segment.to_le_bytes());
    header
}

/// The format version a segment's header names, if it begins like a flashledger segment.
pub fn header_version(bytes: &[u8]) -> Option<u8> {
    (bytes.get(..4) == Some(&SEGMENT_MAGIC[..]))
        .then(|| bytes.get(4).copied())
        .flatten()
}

/// Whether `bytes` start with a complete, valid header for `segment`.
pub fn header_is_valid(bytes: &[u8], segment: SegmentId) -> bool {
    bytes.get(..SEGMENT_HEADER_BYTES) == Some(&segment_header(segment)[..])
}

fn encode_body<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, DecodeError> {
    bincode::serialize(value).map_err(|e| DecodeError::Encode(e.to_string()))
}

fn decode_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, DecodeError> {
    bincode::deserialize(body).map_err(|e| DecodeError::Body(e.to_string()))
}

/// Frame an Append record directly from a slice, so callers need not clone their entries.
pub fn encode_append(shard: ShardId, entries: &[Entry]) -> Result<Vec<u8>, DecodeError> {
    frame(Kind::Append, shard, &encode_body(entries)?)
}

/// Frame any record.
pub fn encode(record: &Record) -> Result<Vec<u8>, DecodeError> {
    match record {
        Record::Append { shard, entries } => encode_append(*shard, entries),
        Record::TruncateAfter { shard, last_kept } => frame(Kind::TruncateAfter, *shard, &encode_body(last_kept)?),
        Record::Purge { shard, upto } => frame(Kind::Purge, *shard, &encode_body(upto)?),
        Record::SaveVote { shard, vote } => frame(Kind::SaveVote, *shard, &encode_body(vote)?),
        Record::SaveCommitted { shard, committed } => frame(Kind::SaveCommitted, *shard, &encode_body(committed)?),
    }
}

fn frame(kind: Kind, shard: ShardId, body: &[u8]) -> Result<Vec<u8>, DecodeError> {
    let payload_len = PAYLOAD_PREFIX_BYTES + body.len();
    let length = u32::try_from(payload_len).map_err(|_| DecodeError::TooLarge(payload_len))?;
    let mut bytes = Vec::with_capacity(FRAME_HEADER_BYTES + payload_len);
    bytes.extend_from_slice(&length.to_le_bytes());
    bytes.extend_from_slice(&[0u8; 4]); // the CRC, filled in below
    bytes.push(kind as u8);
    bytes.extend_from_slice(&shard.to_le_bytes());
    bytes.extend_from_slice(body);
    let crc = checksum(&bytes[..4], &bytes[FRAME_HEADER_BYTES..]);
    bytes[4..8].copy_from_slice(&crc.to_le_bytes());
    Ok(bytes)
}

fn checksum(length: &[u8], payload: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(length);
    hasher.update(payload);
    hasher.finalize()
}

fn read_u32(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
}

fn read_u64(bytes: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(bytes.get(at..at + 8)?.try_into().ok()?))
}

/// Check the frame starting at `bytes[0]` and return its payload and total frame length.
/// `Torn` and `ChecksumMismatch` are the two ways a crash mid-write shows up.
pub fn check_frame(bytes: &[u8]) -> Result<(&[u8], usize), DecodeError> {
    let length = read_u32(bytes, 0).ok_or(DecodeError::Torn)? as usize;
    let stored_crc = read_u32(bytes, 4).ok_or(DecodeError::Torn)?;
    let end = FRAME_HEADER_BYTES.checked_add(length).ok_or(DecodeError::Torn)?;
    let payload = bytes.get(FRAME_HEADER_BYTES..end).ok_or(DecodeError::Torn)?;
    if checksum(&bytes[..4], payload) != stored_crc {
        return Err(DecodeError::ChecksumMismatch);
    }
    Ok((payload, end))
}

/// The bytes of the frame starting at `bytes[0]` (header included) as its length field claims,
/// if the length field is there; the frame need not fit in `bytes`, nor be valid.
pub fn claimed_frame_bytes(bytes: &[u8]) -> Option<usize> {
    Some(FRAME_HEADER_BYTES + read_u32(bytes, 0)? as usize)
}

/// Whether the frame starting at `bytes[0]` could be a record at all (it fits in `bytes`, holds
/// a payload prefix and a known kind byte): a cheap test before the checksum.
pub fn may_be_frame(bytes: &[u8]) -> bool {
    let fits = claimed_frame_bytes(bytes)
        .is_some_and(|claimed| claimed >= FRAME_HEADER_BYTES + PAYLOAD_PREFIX_BYTES && claimed <= bytes.len());
    fits && Kind::from_byte(bytes[FRAME_HEADER_BYTES]).is_some()
}

/// Decode a payload that passed [`check_frame`].
pub fn decode_payload(payload: &[u8]) -> Result<Record, DecodeError> {
    let kind_byte = *payload.first().ok_or(DecodeError::Body("empty payload".into()))?;
    let shard = read_u64(payload, 1).ok_or(DecodeError::Body("payload shorter than its prefix".into()))?;
    let body = &payload[PAYLOAD_PREFIX_BYTES..];
    let record = match Kind::from_byte(kind_byte).ok_or(DecodeError::UnknownKind(kind_byte))? {
        Kind::Append => Record::Append {
            shard,
            entries: decode_body(body)?,
        },
        Kind::TruncateAfter => Record::TruncateAfter {
            shard,
            last_kept: decode_body(body)?,
        },
        Kind::Purge => Record::Purge {
            shard,
            upto: decode_body(body)?,
        },
        Kind::SaveVote => Record::SaveVote {
            shard,
            vote: decode_body(body)?,
        },
        Kind::SaveCommitted => Record::SaveCommitted {
            shard,
            committed: decode_body(body)?,
        },
    };
    Ok(record)
}

#[cfg(test)]
mod tests {
    use openraft::entry::RaftEntry;

    use super::*;

    fn log_id(term: u64, index: u64) -> LogId {
        openraft::testing::log_id::<crate::types::TypeConfig>(term, 1, index)
    }

    fn round_trip(record: Record) {
        let bytes = encode(&record).expect("encodes");
        let (payload, used) = check_frame(&bytes).expect("valid frame");
        assert_eq!(used, bytes.len());
        assert_eq!(decode_payload(payload).expect("decodes"), record);
    }

    #[test]
    fn every_kind_round_trips() {
        round_trip(Record::Append {
            shard: 3,
            entries: vec![Entry::new_blank(log_id(1, 5))],
        });
        round_trip(Record::TruncateAfter {
            shard: 3,
            last_kept: None,
        });
        round_trip(Record::TruncateAfter {
            shard: 3,
            last_kept: Some(log_id(2, 9)),
        });
        round_trip(Record::Purge {
            shard: u64::MAX,
            upto: log_id(2, 9),
        });
        round_trip(Record::SaveVote {
            shard: 0,
            vote: Vote::new(4, 2),
        });
        round_trip(Record::SaveCommitted {
            shard: 0,
            committed: Some(log_id(4, 11)),
        });
    }

    #[test]
    fn a_short_or_flipped_frame_is_rejected() {
        let bytes = encode(&Record::SaveVote {
            shard: 1,
            vote: Vote::new(1, 1),
        })
        .expect("encodes");
        for cut in 0..bytes.len() {
            assert_eq!(
                check_frame(&bytes[..cut]).err(),
                Some(DecodeError::Torn),
                "cut at {cut}"
            );
        }
        for at in 4..bytes.len() {
            let mut flipped = bytes.clone();
            flipped[at] ^= 0x01;
            assert_eq!(
                check_frame(&flipped).err(),
                Some(DecodeError::ChecksumMismatch),
                "flip at {at}"
            );
        }
    }
}
