//! What the fuzz targets (`fuzz_targets/`) and the seed generator (`examples/seeds.rs`) share:
//! how one fuzz input is cut into several byte strings, how a WAL segment's record checksums
//! are made to match so that a target gets past them, and the allocator that turns a huge
//! allocation into a crash the fuzzer reports.
//!
//! An input made of parts is a sequence of `u32` little-endian lengths, each followed by that
//! many bytes; a length that runs past the end takes what is left, so every input splits into
//! something and a mutation of a length moves bytes between parts instead of being wasted.

use std::alloc::GlobalAlloc;
use std::alloc::Layout;
use std::alloc::System;

use ledger::storage::record;

/// The largest single allocation a target may make: every input is at most a few hundred KiB,
/// so anything near this is a size read from the input and trusted (a "huge allocation").
pub const ALLOCATION_BYTES_MAX: usize = 64 * 1024 * 1024;

/// The system allocator, refusing any allocation over [`ALLOCATION_BYTES_MAX`]: the program
/// then aborts ("memory allocation of N bytes failed") and libFuzzer saves the input as a crash.
/// Unlike libFuzzer's `-malloc_limit_mb` it needs no sanitizer, and unlike `-rss_limit_mb` it
/// also catches a reservation that is never touched. Each target installs it with
/// `#[global_allocator]`.
pub struct LimitedAllocator;

// SAFETY: forwards to `System`, only refusing (null) allocations over the limit, which the
// `GlobalAlloc` contract allows.
unsafe impl GlobalAlloc for LimitedAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.size() > ALLOCATION_BYTES_MAX {
            return std::ptr::null_mut();
        }
        // SAFETY: the caller's layout, as `GlobalAlloc::alloc` requires.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if layout.size() > ALLOCATION_BYTES_MAX {
            return std::ptr::null_mut();
        }
        // SAFETY: as `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, pointer: *mut u8, layout: Layout) {
        // SAFETY: `pointer` came from `System` with this layout.
        unsafe { System.dealloc(pointer, layout) }
    }

    unsafe fn realloc(&self, pointer: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > ALLOCATION_BYTES_MAX {
            return std::ptr::null_mut();
        }
        // SAFETY: `pointer` came from `System` with this layout.
        unsafe { System.realloc(pointer, layout, new_size) }
    }
}

/// The most parts an input is cut into (the targets need a few; more would only cost time).
pub const PARTS_MAX: usize = 16;

/// `data` cut into at most [`PARTS_MAX`] parts (see the module docs).
pub fn split_parts(data: &[u8]) -> Vec<&[u8]> {
    let mut parts = Vec::new();
    let mut rest = data;
    while !rest.is_empty() && parts.len() < PARTS_MAX {
        let Some((length, after)) = rest.split_first_chunk::<4>() else {
            parts.push(rest);
            break;
        };
        let length = (u32::from_le_bytes(*length) as usize).min(after.len());
        parts.push(&after[..length]);
        rest = &after[length..];
    }
    parts
}

/// The input [`split_parts`] cuts into `parts`.
pub fn join_parts(parts: &[&[u8]]) -> Vec<u8> {
    let mut data = Vec::new();
    for part in parts {
        let length = u32::try_from(part.len()).expect("a part fits in a u32 length");
        data.extend_from_slice(&length.to_le_bytes());
        data.extend_from_slice(part);
    }
    data
}

/// Rewrites the CRC of every record of `segment` (header included, records from its byte 16) whose
/// frame fits, walking record by record until one does not: the records then reach the decoder
/// and the replay instead of stopping at the checksum, which a fuzzer would almost never match.
pub fn fix_record_checksums(segment: &mut [u8]) {
    let mut offset = record::SEGMENT_HEADER_BYTES;
    while let Some(claimed) = segment.get(offset..).and_then(record::claimed_frame_bytes) {
        let Some(end) = offset.checked_add(claimed).filter(|end| *end <= segment.len()) else {
            return;
        };
        let mut hasher = crc32fast::Hasher::new();
        hasher.update(&segment[offset..offset + 4]);
        hasher.update(&segment[offset + record::FRAME_HEADER_BYTES..end]);
        segment[offset + 4..offset + 8].copy_from_slice(&hasher.finalize().to_le_bytes());
        offset = end;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_round_trip_and_any_input_splits() {
        let parts: [&[u8]; 3] = [b"one", b"", b"three"];
        assert_eq!(split_parts(&join_parts(&parts)), parts);
        assert_eq!(split_parts(&[9, 0, 0, 0, 1, 2]), vec![&[1u8, 2][..]]);
        assert_eq!(split_parts(&[1, 2]), vec![&[1u8, 2][..]]);
        assert!(split_parts(&[]).is_empty());
    }
}
