//! The checkers, one module per property. Each takes the recorded history and/or the cluster's
//! final state and returns `Err` with a description of the first violation; the scenario
//! prefixes it with the checker's name and the seed.

pub mod exactly_once;
pub mod invariant;
pub mod linearizability;
pub mod lost_writes;
pub mod model;
pub mod not_applied;
pub mod replicas;
