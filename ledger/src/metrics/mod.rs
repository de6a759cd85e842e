//! Metrics: what a node measures and how an operator reads it.
//!
//! Two halves at two heights of the layering. [`instruments`] sits at the bottom: counters and
//! histograms (atomics) that storage, the Raft glue, the state-machine adapter and the server
//! record into on their hot paths; it knows nothing of the node. [`scrape`], [`readiness`] and
//! the admin HTTP endpoint (`endpoint`, real processes only) sit at the top: at each scrape they
//! read the node (Raft metrics, status, admission, those instruments) and write the Prometheus
//! text. Gauges are read at scrape time, never pushed, so an idle node costs nothing.
//!
//! Every metric name and label is listed in docs/operations.md ("Metrics"); the lead's alert
//! rules and dashboard depend on them.

#[cfg(not(madsim))]
pub mod endpoint;
pub mod instruments;
#[cfg(not(madsim))]
pub mod process;
pub mod readiness;
pub mod scrape;
