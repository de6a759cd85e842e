//! The async runtime openraft runs on: tokio in production, madsim under `--cfg madsim`.
//!
//! openraft 0.10 routes every spawn, sleep, timeout, clock read, random number and channel
//! through its `AsyncRuntime` trait, which is what lets the simulator control all of them.

#[cfg(madsim)]
mod madsim_runtime;

#[cfg(not(madsim))]
pub type Runtime = openraft_rt_tokio::TokioRuntime;

#[cfg(madsim)]
pub type Runtime = madsim_runtime::MadsimRuntime;
