//! The simulator's own tests (only with `RUSTFLAGS="--cfg madsim"`): seeds that once found a
//! real bug stay fixed, one seed replays identically, and each planted bug is caught by a
//! sweep within the stated number of seeds — proof that the checkers can fail.
#![cfg(madsim)]

use flashledger_sim::scenario::AdmissionPlan;
use flashledger_sim::scenario::SeedReport;
use flashledger_sim::scenario::SimOptions;
use flashledger_sim::scenario::replay_command;
use flashledger_sim::scenario::run_seed;
use ledger::simulation::PlantedBug;

fn assert_passes(seed: u64) {
    assert_passes_with(seed, &SimOptions::default());
}

fn assert_passes_with(seed: u64, options: &SimOptions) {
    let report = run_seed(seed, options);
    assert!(
        report.passed(),
        "seed {seed} failed: {:#?}\nfaults: {:#?}\nreplay: {}",
        report.failures,
        report.fault_log,
        replay_command(seed, options)
    );
}

/// With the placement scheduler moving leaderships, a purchase retried after its first attempt
/// timed out in replication was answered SoldOut from the leader's lease while the first attempt
/// (behind an in-flight restock) still committed and confirmed: a linearizable read then saw a
/// sale nobody was told of. The lease now answers only when the leader has applied its whole log.
#[test]
fn seed_7_with_placement_a_retry_is_not_sold_out_while_its_first_attempt_commits() {
    let options = SimOptions {
        placement: true,
        ..SimOptions::default()
    };
    assert_passes_with(7, &options);
}

/// A restock in flight when its leader died was applied twice: the client resent it after a
/// transport UNAVAILABLE, and the node called a proposed-then-discarded entry "not leader".
#[test]
fn seed_4_a_restock_is_never_applied_twice() {
    assert_passes(4);
}

/// openraft's leader restore let a restarted leader reuse log ids of entries it had lost in
/// the crash but a follower kept: replicas of one shard diverged (ledger: enable_leader_restore
/// is now off).
#[test]
fn seeds_106_and_118_a_restarted_leader_does_not_reuse_log_ids() {
    assert_passes(106);
    assert_passes(118);
}

/// A follower persisted applied state for entries whose local append was still queued; after a
/// crash its log ended in an older term's entries below what it had applied, and it could not
/// start ("inverted log order"). Applying now waits for the WAL first. Found by the 10 000-seed
/// sweep.
#[test]
fn seeds_5403_and_9239_applied_state_never_runs_ahead_of_the_durable_log() {
    assert_passes(5403);
    assert_passes(9239);
}

/// Under tight admission, a buyer's reserve timed out at one attempt (its entry committed
/// later) and was answered RATE_LIMITED at the retry; the client library reported the call as
/// rate limited, i.e. not applied, though the first attempt had reserved. A refusal after an
/// ambiguous attempt is now `ClientError::Indeterminate`.
#[test]
fn seed_822_a_refused_retry_after_an_ambiguous_attempt_is_not_called_unapplied() {
    assert_passes(822);
}

#[test]
fn the_same_seed_replays_the_same_trace() {
    let options = SimOptions::default();
    let first = run_seed(7, &options);
    let second = run_seed(7, &options);
    assert!(first.passed(), "{:#?}", first.failures);
    assert_ne!(first.trace_digest, 0);
    assert_eq!(first.trace_digest, second.trace_digest, "seed 7 is not deterministic");
    assert_eq!(first.fault_log, second.fault_log);
}

/// Runs seeds 1..=`seeds_max` with `bug` planted until one fails; returns that report.
fn sweep_until_caught(bug: PlantedBug, seeds_max: u64) -> SeedReport {
    let options = SimOptions {
        bug: Some(bug),
        ..SimOptions::default()
    };
    for seed in 1..=seeds_max {
        let report = run_seed(seed, &options);
        if !report.passed() {
            return report;
        }
    }
    panic!("planted bug {} survived seeds 1..={seeds_max}", bug.name());
}

fn assert_caught_by(report: &SeedReport, checkers: &[&str]) {
    let caught = report
        .failures
        .iter()
        .any(|(checker, _)| checkers.contains(&checker.as_str()));
    assert!(
        caught,
        "seed {} failed, but not by {checkers:?}: {:#?}",
        report.seed, report.failures
    );
}

/// Measured: every one of seeds 1..=100 catches it (the first seed suffices).
#[test]
fn confirming_without_a_live_reservation_is_caught_as_an_oversell() {
    let report = sweep_until_caught(PlantedBug::ConfirmWithoutReservation, 3);
    assert_caught_by(&report, &["invariant"]);
}

/// Measured: 12 of seeds 1..=100 catch it, the first at seed 3 (a power loss while
/// acknowledged entries were still unsynced).
#[test]
fn acknowledging_before_durable_is_caught_as_lost_or_diverged_writes() {
    let report = sweep_until_caught(PlantedBug::AckBeforeDurable, 20);
    assert_caught_by(&report, &["lost-writes", "replicas", "linearizability", "convergence"]);
}

/// Measured: 5 of seeds 1..=100 catch it, the first at seed 8 (a partitioned leader answering
/// reads after its successor took writes).
#[test]
fn a_deposed_leader_serving_linearizable_reads_is_caught() {
    let report = sweep_until_caught(PlantedBug::StaleLeaderRead, 30);
    assert_caught_by(&report, &["linearizability"]);
}

/// Pruning confirmed orders (and their events) before they were shipped loses them for
/// PostgreSQL.
#[test]
fn pruning_an_unshipped_order_is_caught_as_not_shipped() {
    let report = sweep_until_caught(PlantedBug::PruneUnshipped, 20);
    assert_caught_by(&report, &["exactly-once"]);
}

/// A node that sheds a write after proposing it tells the client "not applied" about a write
/// that was: the refused order shows up in the state.
#[test]
fn a_write_answered_not_applied_that_was_applied_is_caught() {
    let report = sweep_until_caught(PlantedBug::ShedAfterPropose, 3);
    assert_caught_by(&report, &["not-applied"]);
}

/// Tight budgets and rate limits: the cluster sheds and rate-limits many writes, premium and
/// standard buyers alike, and none of them is applied (the not-applied checker passes), with
/// every other property intact. Seed 11 found that a batch spanning shards, one of which shed
/// its part, was reported as not applied as a whole though the other shard's part was
/// (`ClientError::PartlyFailed` now).
#[test]
fn under_tight_admission_refused_writes_are_never_applied() {
    let options = SimOptions {
        admission: AdmissionPlan::Tight,
        ..SimOptions::default()
    };
    for seed in [11, 12] {
        let report = run_seed(seed, &options);
        assert!(
            report.passed(),
            "seed {seed} failed: {:#?}\nreplay: {}",
            report.failures,
            replay_command(seed, &options)
        );
        assert!(
            report.refusals.shed > 0 && report.refusals.rate_limited > 0,
            "seed {seed}: {:?} (the plan must overload the cluster)",
            report.refusals
        );
        assert!(
            report.notes.iter().any(|note| note.starts_with("not-applied:")),
            "{:?}",
            report.notes
        );
    }
}

/// Pruning inside the idempotency window forgets orders a retry may still repeat.
#[test]
fn pruning_inside_the_window_is_caught_as_lost_writes() {
    let report = sweep_until_caught(PlantedBug::PruneInsideWindow, 20);
    assert_caught_by(&report, &["lost-writes"]);
}

/// A split that leaves the old shard's range (and epoch) as they were: operations routed by an
/// older map are applied there, against a state that no longer holds their SKUs, and answer
/// "unknown SKU" for a SKU that is on sale. Splits happen in every seed's plan; measured: 41 of
/// seeds 1..=60 catch it, seed 2 first (by linearizability and liveness).
#[test]
fn a_split_that_keeps_the_old_range_is_caught() {
    let report = sweep_until_caught(PlantedBug::SplitKeepsRange, 10);
    assert_caught_by(&report, &["linearizability", "lost-writes", "liveness"]);
}

/// A shard frozen for a merge that goes on applying operations: what it applies after the left
/// shard took its state is lost when it retires. Merges happen in about half of the seeds' plans;
/// measured: 18 of seeds 1..=60 catch it, seed 4 first (lost-writes, exactly-once,
/// linearizability).
#[test]
fn a_frozen_shard_that_goes_on_serving_is_caught() {
    let report = sweep_until_caught(PlantedBug::FrozenShardServes, 10);
    assert_caught_by(&report, &["linearizability", "lost-writes", "exactly-once"]);
}

/// A replica added by a replica move that bootstraps a group of its own (split brain) instead
/// of waiting for its leader. Moves happen only where a node lacks a replica (5-node seeds);
/// measured: seeds 16 and 21 of 1..=30 catch it (replicas diverge, a restart finds a log that
/// does not fit, or a read answers from the rogue group's state).
#[test]
fn a_moved_replica_that_bootstraps_its_own_group_is_caught() {
    let report = sweep_until_caught(PlantedBug::JoinerBootstraps, 60);
    assert_caught_by(
        &report,
        &["replicas", "linearizability", "lost-writes", "restart", "convergence"],
    );
}
