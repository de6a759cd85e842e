//! Hooks for the deterministic simulator (`sim/`), compiled only with `--cfg madsim`: a
//! production build contains none of this.
//!
//! - Clock skew: each simulated node's wall clock can run ahead of or behind the others
//!   ([`set_clock_skew_ms`]); [`crate::node::now_ms`] adds it, so leaders stamp entries with
//!   skewed times exactly as a badly synchronised machine would.
//! - Planted bugs ([`plant`]): known defects switched on by the simulator's own tests to prove
//!   that its checkers catch them. Never set outside those tests.
//!
//! Both are per thread: madsim runs a whole simulated world on the one thread that calls
//! `block_on`, so parallel runs (one per thread) do not see each other's settings.

use std::cell::Cell;
use std::cell::RefCell;
use std::collections::BTreeMap;

/// A defect the simulator can plant to show its checkers bite.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlantedBug {
    /// Confirm succeeds on a reservation that was already released or expired, selling units
    /// that went back to `available` (an oversell).
    ConfirmWithoutReservation,
    /// The WAL tells Raft an append is durable when it is queued, before the (slow) disk
    /// synced it; a crash then loses entries a majority "had".
    AckBeforeDurable,
    /// A linearizable read is served by any replica that believes it leads, without
    /// confirming its leadership with a quorum (a deposed leader answers from old state).
    StaleLeaderRead,
    /// Pruning forgets confirmed orders whose events were not shipped yet (lost to Postgres).
    PruneUnshipped,
    /// Pruning forgets orders a tenth of the way into the idempotency window, so a retry inside
    /// the window is decided afresh (a second purchase).
    PruneInsideWindow,
    /// Admission sheds a write after proposing it: the caller hears RESOURCE_EXHAUSTED with
    /// `x-not-applied` for a write that was applied.
    ShedAfterPropose,
    /// A replica the shard map gives a node later bootstraps a group of its own (itself the
    /// only voter) instead of waiting for its leader's first append: it elects itself and takes
    /// writes apart from the shard's real group.
    JoinerBootstraps,
    /// A split leaves the old shard's range and epoch as they were (its state still loses the
    /// SKUs that moved): an operation routed by an older map is applied there, against a state
    /// that no longer holds its SKU, instead of being sent on to the new shard.
    SplitKeepsRange,
    /// A shard frozen for a merge goes on applying operations: what it applies after the left
    /// shard took its state is lost when it retires.
    FrozenShardServes,
}

impl PlantedBug {
    pub const ALL: [PlantedBug; 9] = [
        PlantedBug::ConfirmWithoutReservation,
        PlantedBug::AckBeforeDurable,
        PlantedBug::StaleLeaderRead,
        PlantedBug::PruneUnshipped,
        PlantedBug::PruneInsideWindow,
        PlantedBug::ShedAfterPropose,
        PlantedBug::JoinerBootstraps,
        PlantedBug::SplitKeepsRange,
        PlantedBug::FrozenShardServes,
    ];

    /// The name the simulator's command line uses.
    pub fn name(self) -> &'static str {
        match self {
            PlantedBug::ConfirmWithoutReservation => "confirm-without-reservation",
            PlantedBug::AckBeforeDurable => "ack-before-durable",
            PlantedBug::StaleLeaderRead => "stale-leader-read",
            PlantedBug::PruneUnshipped => "prune-unshipped",
            PlantedBug::PruneInsideWindow => "prune-inside-window",
            PlantedBug::ShedAfterPropose => "shed-after-propose",
            PlantedBug::JoinerBootstraps => "joiner-bootstraps",
            PlantedBug::SplitKeepsRange => "split-keeps-range",
            PlantedBug::FrozenShardServes => "frozen-shard-serves",
        }
    }

    pub fn from_name(name: &str) -> Option<PlantedBug> {
        PlantedBug::ALL.into_iter().find(|bug| bug.name() == name)
    }

    fn code(self) -> u8 {
        match self {
            PlantedBug::ConfirmWithoutReservation => 1,
            PlantedBug::AckBeforeDurable => 2,
            PlantedBug::StaleLeaderRead => 3,
            PlantedBug::PruneUnshipped => 4,
            PlantedBug::PruneInsideWindow => 5,
            PlantedBug::ShedAfterPropose => 6,
            PlantedBug::JoinerBootstraps => 7,
            PlantedBug::SplitKeepsRange => 8,
            PlantedBug::FrozenShardServes => 9,
        }
    }
}

thread_local! {
    static PLANTED: Cell<u8> = const { Cell::new(0) };
    static CLOCK_SKEW_MS: RefCell<BTreeMap<madsim::task::NodeId, i64>> = const { RefCell::new(BTreeMap::new()) };
}

/// Plants `bug` (or none) for every node of the simulation running on this thread.
pub fn plant(bug: Option<PlantedBug>) {
    PLANTED.with(|planted| planted.set(bug.map_or(0, PlantedBug::code)));
}

/// Whether `bug` is planted.
pub fn planted(bug: PlantedBug) -> bool {
    PLANTED.with(|planted| planted.get() == bug.code())
}

/// Makes the wall clock of simulated node `sim_node` (madsim's node id) run `skew_ms` off.
pub fn set_clock_skew_ms(sim_node: madsim::task::NodeId, skew_ms: i64) {
    CLOCK_SKEW_MS.with(|skews| skews.borrow_mut().insert(sim_node, skew_ms));
}

/// Forgets every skew (between simulation runs on one thread).
pub fn clear_clock_skews() {
    CLOCK_SKEW_MS.with(|skews| skews.borrow_mut().clear());
}

/// The skew of the node the calling task runs on.
pub fn clock_skew_ms() -> i64 {
    let node = madsim::plugin::node();
    CLOCK_SKEW_MS.with(|skews| skews.borrow().get(&node).copied().unwrap_or(0))
}
