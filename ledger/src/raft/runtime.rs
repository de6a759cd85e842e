//! The async runtime openraft runs on: tokio in production, madsim under `--cfg madsim`.

#[cfg(not(madsim))]
pub type Runtime = openraft_rt_tokio::TokioRuntime;

#[cfg(madsim)]
pub type Runtime = openraft_rt_tokio::TokioRuntime;
