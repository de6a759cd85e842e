//! Hooks for the deterministic simulator (`sim/`), compiled only with `--cfg madsim`: a
//! production build contains none of this.
//!
//! - Clock skew: each simulated node's wall clock can run ahead of or behind the others
//!   ([`set_clock_skew_ms`]); [`crate::node::now_ms`] adds it, so leaders stamp entries with
//!   skewed times exactly as a badly synchronised machine would.
//! - Planted bugs ([`plant`]): known defects switched on by the simulator's own tests to prove
//!   that its checkers catch them. Never set outside those tests.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::AtomicU8;
use std::sync::atomic::Ordering;

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
}

impl PlantedBug {
    pub const ALL: [PlantedBug; 3] = [
        PlantedBug::ConfirmWithoutReservation,
        PlantedBug::AckBeforeDurable,
        PlantedBug::StaleLeaderRead,
    ];

    /// The name the simulator's command line uses.
    pub fn name(self) -> &'static str {
        match self {
            PlantedBug::ConfirmWithoutReservation => "confirm-without-reservation",
            PlantedBug::AckBeforeDurable => "ack-before-durable",
            PlantedBug::StaleLeaderRead => "stale-leader-read",
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
        }
    }
}

static PLANTED: AtomicU8 = AtomicU8::new(0);

/// Plants `bug` (or none) for every node of the running simulation.
pub fn plant(bug: Option<PlantedBug>) {
    PLANTED.store(bug.map_or(0, PlantedBug::code), Ordering::SeqCst);
}

/// Whether `bug` is planted.
pub fn planted(bug: PlantedBug) -> bool {
    PLANTED.load(Ordering::SeqCst) == bug.code()
}

static CLOCK_SKEW_MS: Mutex<BTreeMap<madsim::task::NodeId, i64>> = Mutex::new(BTreeMap::new());

/// Makes the wall clock of simulated node `sim_node` (madsim's node id) run `skew_ms` off.
pub fn set_clock_skew_ms(sim_node: madsim::task::NodeId, skew_ms: i64) {
    let mut skews = CLOCK_SKEW_MS.lock().unwrap_or_else(|p| p.into_inner());
    skews.insert(sim_node, skew_ms);
}

/// Forgets every skew (between simulation runs in one process).
pub fn clear_clock_skews() {
    CLOCK_SKEW_MS.lock().unwrap_or_else(|p| p.into_inner()).clear();
}

/// The skew of the node the calling task runs on.
pub fn clock_skew_ms() -> i64 {
    let node = madsim::plugin::node();
    let skews = CLOCK_SKEW_MS.lock().unwrap_or_else(|p| p.into_inner());
    skews.get(&node).copied().unwrap_or(0)
}
