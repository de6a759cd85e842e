//! The frame around every snapshot file and backup file: magic (`FLSNAP05`, its last two bytes
//! the format version), payload length, CRC-32 of the payload, then the payload. A damaged or
//! cut file is reported from its frame before anything decodes its payload.

use crate::applied::AppliedStoreError;

/// The last two bytes are the format version: 02 since sale rules carry rate limits (a SKU
/// record of format 01 does not decode as one of 02), 03 since an image carries the shard map
/// (the meta group's state, `crate::meta::map`), 04 since it carries the shard's bounds (splits),
/// 05 since the bounds say what was merged in (merges).
pub const MAGIC: &[u8; 8] = b"FLSNAP05";
/// What an older format's files begin with, to name them as such.
const OLDER_MAGICS: [&[u8; 8]; 4] = [b"FLSNAP01", b"FLSNAP02", b"FLSNAP03", b"FLSNAP04"];
/// magic (8) + payload length (8) + CRC-32 of the payload (4).
pub const HEADER_BYTES: usize = 8 + 8 + 4;
/// Where the CRC sits in the header (it is written last, once the payload was streamed).
pub const CRC_OFFSET: u64 = 16;

/// The header of a payload of `length` bytes whose CRC-32 is `crc`.
pub fn header(length: u64, crc: u32) -> [u8; HEADER_BYTES] {
    let mut header = [0; HEADER_BYTES];
    header[..8].copy_from_slice(MAGIC);
    header[8..16].copy_from_slice(&length.to_le_bytes());
    header[16..].copy_from_slice(&crc.to_le_bytes());
    header
}

/// Checks a header against the `stored` payload bytes that follow it; the payload's length
/// and CRC-32 as it announces them. Refuses another format and a length other than what is
/// stored, so a damaged length never sizes a buffer.
pub fn check_header(header: &[u8; HEADER_BYTES], stored: u64) -> Result<(u64, u32), String> {
    if OLDER_MAGICS.iter().any(|older| &header[..8] == *older) {
        let version = String::from_utf8_lossy(&header[6..8]).into_owned();
        return Err(format!(
            "written by an older flashledger (snapshot format {version}; this build reads 05): restore \
             this replica from another one, or start it from an empty data directory"
        ));
    }
    if &header[..8] != MAGIC {
        return Err("not a flashledger snapshot file".into());
    }
    let length = u64::from_le_bytes(header[8..16].try_into().expect("8 bytes"));
    let crc = u32::from_le_bytes(header[16..20].try_into().expect("4 bytes"));
    if length != stored {
        return Err(format!(
            "truncated or damaged: the header announces {length} bytes, the file holds {stored}"
        ));
    }
    Ok((length, crc))
}

/// `payload` framed, in memory (a backup's shard file).
pub fn frame(payload: &[u8]) -> Vec<u8> {
    let mut framed = Vec::with_capacity(HEADER_BYTES + payload.len());
    framed.extend_from_slice(&header(payload.len() as u64, crc32fast::hash(payload)));
    framed.extend_from_slice(payload);
    framed
}

/// The payload of the framed bytes `framed` (named `what` in errors), checked against its frame.
pub fn unframe<'a>(what: &str, framed: &'a [u8]) -> Result<&'a [u8], AppliedStoreError> {
    let damaged = |message: String| AppliedStoreError::Decode {
        what: what.to_string(),
        message,
    };
    let Some((header, payload)) = framed.split_first_chunk::<HEADER_BYTES>() else {
        return Err(damaged("not a flashledger snapshot file".into()));
    };
    let (_, crc) = check_header(header, payload.len() as u64).map_err(damaged)?;
    if crc32fast::hash(payload) != crc {
        return Err(damaged("checksum mismatch".into()));
    }
    Ok(payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_framed_payload_reads_back_and_damage_is_named() {
        let framed = frame(b"the payload");
        assert_eq!(unframe("f", &framed).expect("whole"), b"the payload");
        let mut flipped = framed.clone();
        *flipped.last_mut().expect("bytes") ^= 1;
        let error = unframe("f", &flipped).expect_err("flipped");
        assert!(error.to_string().contains("checksum mismatch"), "{error}");
        let error = unframe("f", &framed[..framed.len() - 1]).expect_err("cut");
        assert!(error.to_string().contains("truncated"), "{error}");
        let error = unframe("f", &framed[..5]).expect_err("no header");
        assert!(error.to_string().contains("not a flashledger"), "{error}");
        let mut older = framed.clone();
        older[..8].copy_from_slice(b"FLSNAP01");
        let error = unframe("f", &older).expect_err("older format");
        assert!(error.to_string().contains("format 01"), "{error}");
    }
}
