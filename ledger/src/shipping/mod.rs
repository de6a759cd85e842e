//! Order shipping: every confirmed order, exactly once, into sharded PostgreSQL.
//!
//! Each ledger shard's committed order events (kept in the replicated state until shipped) are
//! written by one replica's [`shipper`] to the [`sink::ShippingSink`] — PostgreSQL in production
//! ([`postgres::PostgresSink`]), a [`sink::RecordingSink`] in tests and the simulator. An event
//! goes to Postgres shard [`hash::postgres_shard`]`(order_id, N)`.
//!
//! Exactly once rests on one rule: a batch's rows and its (ledger shard, Postgres shard)
//! watermark commit in the same Postgres transaction, and the watermark only moves by
//! compare-and-set from the value the shipper read. A shipper that crashes mid-batch leaves no
//! rows; two shippers racing for the same range cannot both commit it; a new shipper resumes from
//! the watermarks it reads. Once every Postgres shard has an event, the shipper proposes the
//! replicated `Shipped` mark through Raft so replicas prune it ([`crate::state_machine`]).
//!
//! The shipper reads a node through [`source::ShippingSource`], which `node/` implements: shipping
//! sits below the node that starts it and never imports it.
//!
//! Which replica ships is decided by [`designation`]: followers first (the leader is busy with
//! the write path), the leader only when no follower makes progress. The shipper runs beside
//! Raft, never on the write path: a slow or dead Postgres delays shipping, not purchases.
//! The formats and the hash are written down in docs/shipping.md.

pub mod designation;
pub mod hash;
#[cfg(not(madsim))]
pub mod postgres;
pub mod shipper;
pub mod sink;
pub mod source;
