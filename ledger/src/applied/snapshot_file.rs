//! The [`SnapshotBackend`] of a real node: one file per shard, `<dir>/shard-<id>.snap`.
//!
//! A save writes `shard-<id>.snap.tmp`, fdatasyncs it, links the old file as
//! `shard-<id>.snap.prev`, renames the new one over it and fsyncs the directory, so a crash at
//! any point leaves the old snapshot or the new one, and the one before stays as a fallback.
//! The file is framed (magic, length, CRC-32 of the payload), so a damaged file is reported,
//! never loaded.
//!
//! The payload is written and flushed to disk a few MiB at a time (`sync_file_range`), not left
//! to one fdatasync at the end: on ext4 (data=ordered) a journal commit first writes the data of
//! the blocks it allocates, so a 90 MB snapshot flushed at once can hold up the WAL's next
//! fdatasync, which every write waits for (docs/storage.md).

use std::fs::File;
use std::io::Read;
use std::io::Seek;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::path::PathBuf;

use crate::applied::AppliedStoreError;
use crate::applied::SnapshotBackend;
use crate::applied::StreamWriter;
use crate::applied::frame::CRC_OFFSET;
use crate::applied::frame::HEADER_BYTES;
use crate::applied::frame::check_header;
use crate::applied::frame::header;
use crate::types::ShardId;

/// The payload is written and flushed in chunks of this many bytes.
const WRITE_CHUNK_BYTES: usize = 4 * 1024 * 1024;

pub struct FileSnapshots {
    directory: PathBuf,
    path: PathBuf,
    temporary: PathBuf,
    previous: PathBuf,
    /// Order chunks are `<prefix><id>` beside the snapshot file.
    chunk_prefix: String,
}

impl FileSnapshots {
    /// The snapshot file of `shard_id` in `directory` (created if needed).
    pub fn open(directory: &Path, shard_id: ShardId) -> Result<Self, AppliedStoreError> {
        std::fs::create_dir_all(directory).map_err(|e| io_error(directory, e))?;
        Ok(FileSnapshots {
            directory: directory.to_path_buf(),
            path: directory.join(format!("shard-{shard_id}.snap")),
            temporary: directory.join(format!("shard-{shard_id}.snap.tmp")),
            previous: directory.join(format!("shard-{shard_id}.snap.prev")),
            chunk_prefix: format!("shard-{shard_id}.chunk-"),
        })
    }

    fn chunk_path(&self, id: u64) -> PathBuf {
        self.directory.join(format!("{}{id}", self.chunk_prefix))
    }
}

/// Writes `length` bytes at `offset` to disk and waits for them (Linux `sync_file_range`; no
/// metadata, no durability guarantee by itself).
fn flush_range(file: &File, offset: usize, length: usize) -> std::io::Result<()> {
    let flags = libc::SYNC_FILE_RANGE_WAIT_BEFORE | libc::SYNC_FILE_RANGE_WRITE | libc::SYNC_FILE_RANGE_WAIT_AFTER;
    // SAFETY: a syscall on a file descriptor `file` owns and keeps open for the call; no memory
    // is passed.
    let result = unsafe {
        libc::sync_file_range(
            file.as_raw_fd(),
            offset as libc::off64_t,
            length as libc::off64_t,
            flags,
        )
    };
    if result == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// The payload on its way to the file: buffered, written and flushed a chunk at a time, its
/// CRC computed as it goes.
struct PayloadWriter<'a> {
    file: &'a File,
    buffer: Vec<u8>,
    /// Bytes of the file written so far (header included).
    written: usize,
    crc: crc32fast::Hasher,
}

impl PayloadWriter<'_> {
    fn write_buffered(&mut self) -> std::io::Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let mut file = self.file;
        file.write_all(&self.buffer)?;
        flush_range(self.file, self.written, self.buffer.len())?;
        self.written += self.buffer.len();
        self.buffer.clear();
        Ok(())
    }
}

impl Write for PayloadWriter<'_> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.crc.update(bytes);
        self.buffer.extend_from_slice(bytes);
        if self.buffer.len() >= WRITE_CHUNK_BYTES {
            self.write_buffered()?;
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.write_buffered()
    }
}

fn io_error(path: &Path, error: std::io::Error) -> AppliedStoreError {
    AppliedStoreError::Backend(format!("{}: {error}", path.display()))
}

/// Writes a framed file of `length` payload bytes from `write` at `path` and syncs its data.
fn write_framed(path: &Path, length: u64, write: &mut StreamWriter<'_>) -> Result<(), AppliedStoreError> {
    let mut save = || -> std::io::Result<()> {
        let mut file = File::create(path)?;
        // The CRC is known only at the end: written over this placeholder then.
        file.write_all(&header(length, 0))?;
        let mut payload = PayloadWriter {
            file: &file,
            buffer: Vec::with_capacity(WRITE_CHUNK_BYTES),
            written: HEADER_BYTES,
            crc: crc32fast::Hasher::new(),
        };
        write(&mut payload)?;
        payload.write_buffered()?;
        let (written, crc) = (payload.written - HEADER_BYTES, payload.crc.finalize());
        if written as u64 != length {
            return Err(std::io::Error::other(format!(
                "a snapshot of {length} bytes was announced, {written} written"
            )));
        }
        file.seek(std::io::SeekFrom::Start(CRC_OFFSET))?;
        file.write_all(&crc.to_le_bytes())?;
        // What makes it durable (and the file's size and blocks): the chunks' flushes only
        // spread the writing out.
        file.sync_data()?;
        Ok(())
    };
    save().map_err(|e| io_error(path, e))
}

impl SnapshotBackend for FileSnapshots {
    fn save_streamed(&self, length: u64, write: &mut StreamWriter<'_>) -> Result<(), AppliedStoreError> {
        write_framed(&self.temporary, length, write)?;
        // The snapshot being replaced stays as the previous one (a second name for its file,
        // so there is no moment without a latest snapshot).
        match std::fs::remove_file(&self.previous) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io_error(&self.previous, e)),
            _ => {}
        }
        match std::fs::hard_link(&self.path, &self.previous) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io_error(&self.previous, e)),
            _ => {}
        }
        std::fs::rename(&self.temporary, &self.path).map_err(|e| io_error(&self.path, e))?;
        File::open(&self.directory)
            .and_then(|directory| directory.sync_all())
            .map_err(|e| io_error(&self.directory, e))
    }

    fn load(&self) -> Result<Option<Vec<u8>>, AppliedStoreError> {
        read_framed(&self.path)
    }

    fn load_previous(&self) -> Result<Option<Vec<u8>>, AppliedStoreError> {
        read_framed(&self.previous)
    }

    fn save_chunk(&self, id: u64, bytes: &[u8]) -> Result<(), AppliedStoreError> {
        // Renamed into place: a chunk is never half there under its name. The directory is
        // synced with the snapshot record that names it.
        let path = self.chunk_path(id);
        let temporary = path.with_extension("tmp");
        write_framed(&temporary, bytes.len() as u64, &mut |out: &mut dyn Write| {
            out.write_all(bytes)
        })?;
        std::fs::rename(&temporary, &path).map_err(|e| io_error(&path, e))
    }

    fn load_chunk(&self, id: u64) -> Result<Option<Vec<u8>>, AppliedStoreError> {
        read_framed(&self.chunk_path(id))
    }

    fn keep_chunks(&self, keep: &std::collections::BTreeSet<u64>) -> Result<(), AppliedStoreError> {
        let entries = std::fs::read_dir(&self.directory).map_err(|e| io_error(&self.directory, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| io_error(&self.directory, e))?;
            let name = entry.file_name();
            let Some(id) = name.to_str().and_then(|name| name.strip_prefix(&self.chunk_prefix)) else {
                continue;
            };
            // Leftover temporaries (a crash mid-write) go too.
            if id.parse::<u64>().is_ok_and(|id| keep.contains(&id)) {
                continue;
            }
            std::fs::remove_file(entry.path()).map_err(|e| io_error(&entry.path(), e))?;
        }
        Ok(())
    }
}

/// The payload of the snapshot file at `path`, checked against its frame.
fn read_framed(path: &Path) -> Result<Option<Vec<u8>>, AppliedStoreError> {
    let mut file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_error(path, e)),
    };
    let damaged = |detail: &str| AppliedStoreError::Decode {
        what: path.display().to_string(),
        message: detail.to_string(),
    };
    let mut header = [0u8; HEADER_BYTES];
    match file.read_exact(&mut header) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            return Err(damaged("not a flashledger snapshot file"));
        }
        Err(e) => return Err(io_error(path, e)),
    }
    // Read into a buffer of the payload's size (the file says how big it is): a growing
    // buffer copied the snapshot up to twice more. A damaged length cannot ask for more
    // than the file holds.
    let file_bytes = file.metadata().map_err(|e| io_error(path, e))?.len();
    let stored = file_bytes.saturating_sub(HEADER_BYTES as u64);
    let (length, crc) = check_header(&header, stored).map_err(|message| damaged(&message))?;
    let mut payload = Vec::with_capacity(length as usize);
    file.take(length)
        .read_to_end(&mut payload)
        .map_err(|e| io_error(path, e))?;
    if payload.len() as u64 != length {
        return Err(damaged("truncated"));
    }
    if crc32fast::hash(&payload) != crc {
        return Err(damaged("checksum mismatch"));
    }
    Ok(Some(payload))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_save_replaces_the_snapshot_and_damage_is_reported() {
        let directory = tempfile::tempdir().expect("tempdir");
        let snapshots = FileSnapshots::open(directory.path(), 7).expect("open");
        assert_eq!(snapshots.load().expect("load"), None);
        snapshots.save(&[b"first"]).expect("save");
        snapshots.save(&[b"second ", b"snap", b"shot"]).expect("save");
        assert_eq!(
            snapshots.load().expect("load").as_deref(),
            Some(&b"second snapshot"[..])
        );
        assert!(!directory.path().join("shard-7.snap.tmp").exists());

        let path = directory.path().join("shard-7.snap");
        let mut bytes = std::fs::read(&path).expect("read");
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        std::fs::write(&path, &bytes).expect("write");
        let error = snapshots.load().expect_err("a flipped byte is caught");
        assert!(error.to_string().contains("checksum mismatch"), "{error}");

        std::fs::write(&path, &bytes[..bytes.len() - 3]).expect("write");
        let error = snapshots.load().expect_err("a cut file is caught");
        assert!(error.to_string().contains("truncated"), "{error}");
        // The snapshot it replaced is still there, whole.
        assert_eq!(
            snapshots.load_previous().expect("previous").as_deref(),
            Some(&b"first"[..])
        );

        // A stream that writes other than it announced is refused and replaces nothing.
        std::fs::write(&path, &bytes).expect("write");
        let short = snapshots.save_streamed(10, &mut |out: &mut dyn Write| out.write_all(b"seven b"));
        assert!(short.is_err());
        assert_eq!(std::fs::read(&path).expect("read"), bytes);
    }

    #[test]
    fn chunks_are_stored_framed_read_back_and_pruned_to_what_is_kept() {
        let directory = tempfile::tempdir().expect("tempdir");
        let snapshots = FileSnapshots::open(directory.path(), 3).expect("open");
        snapshots.save_chunk(1, b"one").expect("save");
        snapshots.save_chunk(2, b"two").expect("save");
        snapshots.save_chunk(2, b"two again").expect("replace");
        assert_eq!(
            snapshots.load_chunk(2).expect("load").as_deref(),
            Some(&b"two again"[..])
        );
        assert_eq!(snapshots.load_chunk(9).expect("load"), None);
        let path = directory.path().join("shard-3.chunk-1");
        let mut bytes = std::fs::read(&path).expect("read");
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(&path, &bytes).expect("write");
        assert!(matches!(snapshots.load_chunk(1), Err(AppliedStoreError::Decode { .. })));
        snapshots.keep_chunks(&[2].into()).expect("prune");
        assert!(!path.exists());
        assert_eq!(
            snapshots.load_chunk(2).expect("load").as_deref(),
            Some(&b"two again"[..])
        );
    }
}
