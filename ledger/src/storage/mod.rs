//! Durable storage of a node: one write-ahead log shared by every shard replica on the node,
//! and, over it, openraft's log store for each shard.
//!
//! Layout:
//! - [`backend`]: where the bytes go — real files (fdatasync) or a simulated disk that can crash.
//! - [`record`]: the on-disk format (segment header, CRC-checked records); see `docs/storage.md`.
//! - [`wal`]: the shared log: replay on open, group commit, segment rotation and deletion.
//! - [`log_store`]: `RaftLogStorage` + `RaftLogReader` for one shard over the WAL.
//!
//! Invariant: nothing is acknowledged to openraft as durable before an fdatasync covers it.

pub mod backend;
pub mod log_store;
pub mod record;
pub mod wal;

pub use backend::FileBackend;
pub use backend::MemoryBackend;
pub use backend::WalBackend;
pub use log_store::ShardLogStore;
pub use wal::Wal;
pub use wal::WalError;
pub use wal::WalOptions;

#[cfg(test)]
mod tests;
