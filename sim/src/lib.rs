//! flashledger's deterministic simulation: whole clusters of real nodes (the same
//! [`ledger::node::Node::start`] and options struct the `ledger` binary uses, the real gRPC
//! server over madsim-tonic) under faults drawn from a seed, driven by buyers using the real
//! client crate, then judged by one checker per property.
//!
//! Built with `RUSTFLAGS="--cfg madsim"`; without it only the checkers (pure functions over a
//! recorded history) compile, so their unit tests run in the normal suite.
//!
//! - [`harness`]: the simulated cluster, its in-memory disks and the recording order sink.
//! - [`faults`]: the fault plan drawn from the seed and its execution.
//! - [`workload`]: the buyers and the history they record.
//! - [`scenario`]: one seed from start to verdict; [`scenario::run_seed`] is what the
//!   `flashledger-sim` binary, the tests and `scripts/sim-sweep.sh` call.
//! - [`check`]: never oversell, no lost acknowledged write, linearizability, replica equality,
//!   exactly-once shipping.

pub mod check;
#[cfg(madsim)]
pub mod faults;
#[cfg(madsim)]
pub mod harness;
pub mod history;
#[cfg(madsim)]
pub mod scenario;
#[cfg(madsim)]
pub mod workload;
