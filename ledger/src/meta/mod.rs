//! Shard 0's shard map, the commands that reshape it, and placement: where ranges and their
//! leaders should be. Today: the pre-sale planner (a demand [`forecast`], a [`plan`] of splits
//! and leader moves that balances the forecast load, and the [`executor`] trait the plan is
//! carried out through).

pub mod executor;
pub mod forecast;
pub mod plan;
