//! Where the write-ahead log's bytes live: a small trait over "a directory of append-only
//! segments" with a real implementation ([`FileBackend`]) and a simulated disk
//! ([`MemoryBackend`]).
//!
//! Invariants every backend keeps:
//! - `append` adds bytes at the end of a segment; they are durable only after `sync` returns.
//! - `create_segment`, `delete_segment` and `truncate_segment` are durable when they return
//!   (the file backend fsyncs the directory or the file), so recovery never sees a segment
//!   reappear or a cut tail grow back.
//! - Segment ids are listed in ascending order.

use std::collections::BTreeMap;
use std::fs::File;
use std::fs::OpenOptions;
use std::io;
use std::io::Write;
use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::MutexGuard;

/// A segment's position in the log; larger ids were created later.
pub type SegmentId = u64;

/// The operations the WAL needs from a disk. Calls for one segment never overlap: the WAL has a
/// single writer.
pub trait WalBackend: Send + Sync + 'static {
    /// Every segment present, in ascending id order.
    fn list_segments(&self) -> io::Result<Vec<SegmentId>>;
    /// Create an empty segment; durable on return. Fails if it exists.
    fn create_segment(&self, segment: SegmentId) -> io::Result<()>;
    /// Append bytes at the end of a segment (not yet durable).
    fn append(&self, segment: SegmentId, bytes: &[u8]) -> io::Result<()>;
    /// Make every byte appended to the segment so far durable (fdatasync).
    fn sync(&self, segment: SegmentId) -> io::Result<()>;
    /// The segment's whole content, as recovery would see it.
    fn read_segment(&self, segment: SegmentId) -> io::Result<Vec<u8>>;
    /// Cut the segment to `length_bytes`; durable on return.
    fn truncate_segment(&self, segment: SegmentId, length_bytes: u64) -> io::Result<()>;
    /// Remove the segment; durable on return.
    fn delete_segment(&self, segment: SegmentId) -> io::Result<()>;
    /// How long the simulated disk takes to sync: under madsim the WAL waits this long (in
    /// simulated time) before each group commit, so a crash loses what was still queued.
    #[cfg(madsim)]
    fn simulated_sync_latency(&self) -> std::time::Duration {
        std::time::Duration::ZERO
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A poisoned lock means a panic mid-update of the disk model: a bug, not a state to continue.
    mutex.lock().expect("backend lock poisoned")
}

/// Segments as files `<id:020>.wal` in one directory.
pub struct FileBackend {
    directory: PathBuf,
    /// Open handles, so the hot path (append + fdatasync) does not reopen files.
    open_files: Mutex<BTreeMap<SegmentId, Arc<File>>>,
}

const SEGMENT_FILE_SUFFIX: &str = ".wal";

impl FileBackend {
    /// Use (and create if missing) `directory` for segments.
    pub fn open(directory: impl AsRef<Path>) -> io::Result<Self> {
        let directory = directory.as_ref().to_path_buf();
        std::fs::create_dir_all(&directory)?;
        Ok(Self {
            directory,
            open_files: Mutex::new(BTreeMap::new()),
        })
    }

    fn path(&self, segment: SegmentId) -> PathBuf {
        self.directory.join(format!("{segment:020}{SEGMENT_FILE_SUFFIX}"))
    }

    /// Make a create, rename or delete in the directory durable.
    fn sync_directory(&self) -> io::Result<()> {
        File::open(&self.directory)?.sync_all()
    }

    fn file(&self, segment: SegmentId) -> io::Result<Arc<File>> {
        let mut files = lock(&self.open_files);
        if let Some(file) = files.get(&segment) {
            return Ok(file.clone());
        }
        let file = Arc::new(OpenOptions::new().append(true).read(true).open(self.path(segment))?);
        files.insert(segment, file.clone());
        Ok(file)
    }
}

impl WalBackend for FileBackend {
    fn list_segments(&self) -> io::Result<Vec<SegmentId>> {
        let mut segments = Vec::new();
        for dir_entry in std::fs::read_dir(&self.directory)? {
            let name = dir_entry?.file_name();
            let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(SEGMENT_FILE_SUFFIX)) else {
                continue;
            };
            if let Ok(segment) = stem.parse::<SegmentId>() {
                segments.push(segment);
            }
        }
        segments.sort_unstable();
        Ok(segments)
    }

    fn create_segment(&self, segment: SegmentId) -> io::Result<()> {
        let file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .read(true)
            .open(self.path(segment))?;
        self.sync_directory()?;
        lock(&self.open_files).insert(segment, Arc::new(file));
        Ok(())
    }

    fn append(&self, segment: SegmentId, bytes: &[u8]) -> io::Result<()> {
        (&*self.file(segment)?).write_all(bytes)
    }

    fn sync(&self, segment: SegmentId) -> io::Result<()> {
        self.file(segment)?.sync_data()
    }

    fn read_segment(&self, segment: SegmentId) -> io::Result<Vec<u8>> {
        std::fs::read(self.path(segment))
    }

    fn truncate_segment(&self, segment: SegmentId, length_bytes: u64) -> io::Result<()> {
        let file = self.file(segment)?;
        file.set_len(length_bytes)?;
        file.sync_all()
    }

    fn delete_segment(&self, segment: SegmentId) -> io::Result<()> {
        lock(&self.open_files).remove(&segment);
        std::fs::remove_file(self.path(segment))?;
        self.sync_directory()
    }
}

/// One simulated segment file: a durable prefix and a not-yet-synced tail.
#[derive(Debug, Clone, Default)]
struct MemorySegment {
    synced: Vec<u8>,
    unsynced: Vec<u8>,
}

#[derive(Debug, Default)]
struct MemoryDisk {
    segments: BTreeMap<SegmentId, MemorySegment>,
    /// Test hook: when set, `sync` fails and leaves the bytes unsynced (an fdatasync error).
    fail_syncs: bool,
    syncs: u64,
    /// Simulated time one sync takes (a slow disk), see [`WalBackend::simulated_sync_latency`].
    sync_latency: std::time::Duration,
}

/// A deterministic in-memory disk: clones share it (the "disk" outlives a crashed WAL), it never
/// starts threads or reads clocks, and [`MemoryBackend::crash`] loses exactly the unsynced bytes.
#[derive(Debug, Clone, Default)]
pub struct MemoryBackend {
    disk: Arc<Mutex<MemoryDisk>>,
}

fn not_found(segment: SegmentId) -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, format!("segment {segment} does not exist"))
}

impl MemoryBackend {
    pub fn new() -> Self {
        Self::default()
    }

    /// Power loss: every byte not covered by a sync is gone.
    pub fn crash(&self) {
        self.crash_keeping_unsynced_bytes(0);
    }

    /// Power loss in the middle of a write: in each segment, the first `kept_bytes` unsynced
    /// bytes reached the platter and the rest did not (a torn tail).
    pub fn crash_keeping_unsynced_bytes(&self, kept_bytes: usize) {
        for segment in lock(&self.disk).segments.values_mut() {
            let kept = kept_bytes.min(segment.unsynced.len());
            let tail: Vec<u8> = segment.unsynced.drain(..kept).collect();
            segment.synced.extend_from_slice(&tail);
            segment.unsynced.clear();
        }
    }

    /// Make `sync` fail (and keep failing) while set, as a failing disk would.
    pub fn set_fail_syncs(&self, fail: bool) {
        lock(&self.disk).fail_syncs = fail;
    }

    /// Make every later sync take `latency` of simulated time (a slow disk; madsim only).
    pub fn set_sync_latency(&self, latency: std::time::Duration) {
        lock(&self.disk).sync_latency = latency;
    }

    /// How many successful syncs the disk has seen.
    pub fn sync_count(&self) -> u64 {
        lock(&self.disk).syncs
    }

    /// Bit rot: flip every bit of the byte at `offset` (synced or not) in `segment`.
    pub fn flip_byte(&self, segment: SegmentId, offset: usize) -> io::Result<()> {
        let mut disk = lock(&self.disk);
        let data = disk.segments.get_mut(&segment).ok_or_else(|| not_found(segment))?;
        let synced_len = data.synced.len();
        let byte = if offset < synced_len {
            data.synced.get_mut(offset)
        } else {
            data.unsynced.get_mut(offset - synced_len)
        };
        let byte = byte.ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "offset past the end"))?;
        *byte ^= 0xff;
        Ok(())
    }

    /// Bytes appended but not yet synced, over all segments.
    pub fn unsynced_bytes(&self) -> usize {
        lock(&self.disk).segments.values().map(|s| s.unsynced.len()).sum()
    }

    /// Total bytes of a segment, synced or not.
    pub fn segment_len(&self, segment: SegmentId) -> Option<usize> {
        lock(&self.disk)
            .segments
            .get(&segment)
            .map(|s| s.synced.len() + s.unsynced.len())
    }
}

impl WalBackend for MemoryBackend {
    #[cfg(madsim)]
    fn simulated_sync_latency(&self) -> std::time::Duration {
        lock(&self.disk).sync_latency
    }

    fn list_segments(&self) -> io::Result<Vec<SegmentId>> {
        Ok(lock(&self.disk).segments.keys().copied().collect())
    }

    fn create_segment(&self, segment: SegmentId) -> io::Result<()> {
        let mut disk = lock(&self.disk);
        if disk.segments.contains_key(&segment) {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("segment {segment} exists"),
            ));
        }
        disk.segments.insert(segment, MemorySegment::default());
        Ok(())
    }

    fn append(&self, segment: SegmentId, bytes: &[u8]) -> io::Result<()> {
        let mut disk = lock(&self.disk);
        let data = disk.segments.get_mut(&segment).ok_or_else(|| not_found(segment))?;
        data.unsynced.extend_from_slice(bytes);
        Ok(())
    }

    fn sync(&self, segment: SegmentId) -> io::Result<()> {
        let mut disk = lock(&self.disk);
        if disk.fail_syncs {
            return Err(io::Error::other("injected fdatasync failure"));
        }
        let data = disk.segments.get_mut(&segment).ok_or_else(|| not_found(segment))?;
        let tail = std::mem::take(&mut data.unsynced);
        data.synced.extend_from_slice(&tail);
        disk.syncs += 1;
        Ok(())
    }

    fn read_segment(&self, segment: SegmentId) -> io::Result<Vec<u8>> {
        let disk = lock(&self.disk);
        let data = disk.segments.get(&segment).ok_or_else(|| not_found(segment))?;
        Ok([data.synced.as_slice(), data.unsynced.as_slice()].concat())
    }

    fn truncate_segment(&self, segment: SegmentId, length_bytes: u64) -> io::Result<()> {
        let mut disk = lock(&self.disk);
        let data = disk.segments.get_mut(&segment).ok_or_else(|| not_found(segment))?;
        let mut all = std::mem::take(&mut data.synced);
        all.append(&mut data.unsynced);
        all.truncate(usize::try_from(length_bytes).unwrap_or(usize::MAX));
        data.synced = all;
        Ok(())
    }

    fn delete_segment(&self, segment: SegmentId) -> io::Result<()> {
        lock(&self.disk)
            .segments
            .remove(&segment)
            .map(|_| ())
            .ok_or_else(|| not_found(segment))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_crash_drops_only_unsynced_bytes() -> io::Result<()> {
        let disk = MemoryBackend::new();
        disk.create_segment(1)?;
        disk.append(1, b"durable")?;
        disk.sync(1)?;
        disk.append(1, b"-lost")?;
        disk.crash();
        assert_eq!(disk.read_segment(1)?, b"durable");
        Ok(())
    }

    #[test]
    fn memory_torn_crash_keeps_a_prefix_of_the_tail() -> io::Result<()> {
        let disk = MemoryBackend::new();
        disk.create_segment(1)?;
        disk.append(1, b"abc")?;
        disk.sync(1)?;
        disk.append(1, b"defgh")?;
        disk.crash_keeping_unsynced_bytes(2);
        assert_eq!(disk.read_segment(1)?, b"abcde");
        Ok(())
    }

    #[test]
    fn file_backend_round_trip() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let backend = FileBackend::open(dir.path())?;
        backend.create_segment(7)?;
        backend.create_segment(3)?;
        backend.append(7, b"hello world")?;
        backend.sync(7)?;
        backend.truncate_segment(7, 5)?;
        backend.append(7, b"!")?;
        assert_eq!(backend.read_segment(7)?, b"hello!");
        assert_eq!(backend.list_segments()?, vec![3, 7]);
        backend.delete_segment(3)?;
        assert_eq!(backend.list_segments()?, vec![7]);
        Ok(())
    }
}
