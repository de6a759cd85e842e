//! Carrying out a [`SalePlan`]: its steps, in order, through a [`PlanExecutor`] that performs
//! one split or one leader transfer on the cluster. The trait keeps the plan independent of how
//! the cluster is reshaped (the meta group's proposals, a test's model). The CLI's executor
//! (`cli/sale_plan.rs`) queues splits and hands leaderships over through the meta leader;
//! [`ReshapingUnsupported`] refuses every step (`ReshapeError::Unsupported`).
//!
//! A failed step stops the run: the error says how many steps were done before it, because a
//! plan is computed for one shard map and the next step may not make sense on another. Plan
//! again from the map as it is.

use std::collections::BTreeMap;
use std::future::Future;

use crate::meta::plan::PlanStep;
use crate::meta::plan::SalePlan;
use crate::types::NodeId;
use crate::types::ShardId;

/// One split or leader transfer, performed on the cluster.
pub trait PlanExecutor {
    /// Splits shard `shard_id` at SKU `at` (strictly inside its range): the shard keeps
    /// `[start, at)`, a new shard on the same replicas takes `[at, end)`, led by the shard's
    /// leader. Returns the new shard's id once the split is committed.
    fn split(&self, shard_id: ShardId, at: &[u8]) -> impl Future<Output = Result<ShardId, ReshapeError>> + Send;

    /// Makes node `to` (a replica of the shard) its leader; returns once it leads.
    fn transfer_leader(&self, shard_id: ShardId, to: NodeId) -> impl Future<Output = Result<(), ReshapeError>> + Send;
}

/// Why one reshaping step did not happen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReshapeError {
    #[error("this executor cannot reshape the cluster: nothing of this step was applied")]
    Unsupported,
    #[error("{0}")]
    Refused(String),
}

/// A plan stopped at a step.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("step {} of {steps} ({step}) failed: {cause}; {}", applied_steps + 1, applied_text(*applied_steps))]
pub struct ExecuteError {
    /// Steps carried out before the failed one.
    pub applied_steps: usize,
    pub steps: usize,
    /// The failed step, as the plan prints it.
    pub step: String,
    /// Why (in the message itself, not as a chained source: the CLI prints it once, followed
    /// by what was applied).
    pub cause: ReshapeError,
}

fn applied_text(applied_steps: usize) -> String {
    match applied_steps {
        0 => "nothing was applied".to_string(),
        1 => "step 1 was applied: plan again from the shard map as it is now".to_string(),
        done => format!("steps 1 to {done} were applied: plan again from the shard map as it is now"),
    }
}

/// Carries out `plan`'s steps in order; returns how many were carried out (all of them).
pub async fn execute<E: PlanExecutor>(plan: &SalePlan, executor: &E) -> Result<usize, ExecuteError> {
    // Range start -> shard id: the ids of now, then each split's new shard.
    let mut shard_at: BTreeMap<Vec<u8>, ShardId> = plan
        .ranges
        .iter()
        .filter_map(|range| range.shard_id.map(|id| (range.start.clone(), id)))
        .collect();
    for (index, step) in plan.steps.iter().enumerate() {
        let failed = |cause| ExecuteError {
            applied_steps: index,
            steps: plan.steps.len(),
            step: step.to_string(),
            cause,
        };
        match step {
            PlanStep::Split { shard_id, at } => {
                let new_shard = executor.split(*shard_id, at).await.map_err(failed)?;
                shard_at.insert(at.clone(), new_shard);
            }
            PlanStep::TransferLeader { range_start, to_node } => {
                let shard = shard_at.get(range_start).copied().ok_or_else(|| {
                    failed(ReshapeError::Refused(
                        "no range starts there: the plan does not match its own splits".to_string(),
                    ))
                })?;
                executor.transfer_leader(shard, *to_node).await.map_err(failed)?;
            }
        }
    }
    Ok(plan.steps.len())
}

/// The executor of a cluster that cannot reshape itself yet: refuses every step.
pub struct ReshapingUnsupported;

impl PlanExecutor for ReshapingUnsupported {
    fn split(&self, _shard_id: ShardId, _at: &[u8]) -> impl Future<Output = Result<ShardId, ReshapeError>> + Send {
        std::future::ready(Err(ReshapeError::Unsupported))
    }

    fn transfer_leader(
        &self,
        _shard_id: ShardId,
        _to: NodeId,
    ) -> impl Future<Output = Result<(), ReshapeError>> + Send {
        std::future::ready(Err(ReshapeError::Unsupported))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::sync::Mutex;

    use futures::executor::block_on;

    use super::*;
    use crate::meta::plan::CurrentRange;
    use crate::meta::plan::PlanOptions;
    use crate::meta::plan::plan_sale;

    /// A shard map in memory that splits and moves leaders as the trait's contract says, and
    /// refuses what a real cluster would (an unknown shard, a split point outside the range, a
    /// leader that is not a replica). `fail_at` makes the n-th call (from 0) fail.
    struct ModelCluster {
        state: Mutex<ModelState>,
        fail_at: Option<usize>,
    }

    struct ModelState {
        shards: BTreeMap<ShardId, CurrentRange>,
        next_id: ShardId,
        calls: usize,
    }

    impl ModelCluster {
        fn new(ranges: &[CurrentRange], fail_at: Option<usize>) -> Self {
            let shards = ranges.iter().map(|range| (range.shard_id, range.clone())).collect();
            ModelCluster {
                state: Mutex::new(ModelState {
                    shards,
                    next_id: 100,
                    calls: 0,
                }),
                fail_at,
            }
        }

        fn call(
            &self,
            change: impl FnOnce(&mut ModelState) -> Result<ShardId, ReshapeError>,
        ) -> Result<ShardId, ReshapeError> {
            let mut state = self.state.lock().expect("the model's lock");
            let call = state.calls;
            state.calls += 1;
            if self.fail_at == Some(call) {
                return Err(ReshapeError::Refused("the model refuses this call".to_string()));
            }
            change(&mut state)
        }

        /// (start, end, leader) by start.
        fn ranges(&self) -> Vec<(Vec<u8>, Vec<u8>, Option<NodeId>)> {
            let state = self.state.lock().expect("the model's lock");
            let mut ranges: Vec<_> = state
                .shards
                .values()
                .map(|range| (range.start.clone(), range.end.clone(), range.leader))
                .collect();
            ranges.sort();
            ranges
        }
    }

    impl PlanExecutor for ModelCluster {
        fn split(&self, shard_id: ShardId, at: &[u8]) -> impl Future<Output = Result<ShardId, ReshapeError>> + Send {
            std::future::ready(self.call(|state| {
                let refused = || ReshapeError::Refused(format!("no shard {shard_id} holds {at:?} inside"));
                let new_id = state.next_id;
                let shard = state.shards.get_mut(&shard_id).ok_or_else(refused)?;
                if !shard.contains(at) || at == shard.start.as_slice() {
                    return Err(refused());
                }
                let upper = CurrentRange {
                    shard_id: new_id,
                    start: at.to_vec(),
                    ..shard.clone()
                };
                shard.end = at.to_vec();
                state.shards.insert(new_id, upper);
                state.next_id += 1;
                Ok(new_id)
            }))
        }

        fn transfer_leader(
            &self,
            shard_id: ShardId,
            to: NodeId,
        ) -> impl Future<Output = Result<(), ReshapeError>> + Send {
            std::future::ready(
                self.call(|state| {
                    let shard = state
                        .shards
                        .get_mut(&shard_id)
                        .ok_or_else(|| ReshapeError::Refused(format!("no shard {shard_id}")))?;
                    if !shard.replicas.contains(&to) {
                        return Err(ReshapeError::Refused(format!("node {to} is not a replica")));
                    }
                    shard.leader = Some(to);
                    Ok(shard_id)
                })
                .map(|_| ()),
            )
        }
    }

    fn skewed_plan() -> (Vec<CurrentRange>, SalePlan) {
        let ranges = vec![
            CurrentRange {
                shard_id: 1,
                start: Vec::new(),
                end: b"m".to_vec(),
                replicas: vec![1, 2, 3],
                leader: Some(1),
            },
            CurrentRange {
                shard_id: 2,
                start: b"m".to_vec(),
                end: Vec::new(),
                replicas: vec![1, 2, 3],
                leader: Some(1),
            },
        ];
        let demand: BTreeMap<Vec<u8>, f64> = [("a", 400.0), ("c", 200.0), ("d", 30.0), ("n", 300.0), ("o", 40.0)]
            .into_iter()
            .map(|(sku, load)| (sku.as_bytes().to_vec(), load))
            .collect();
        let nodes: BTreeSet<NodeId> = [1, 2, 3].into_iter().collect();
        let plan = plan_sale(&demand, &ranges, &nodes, &PlanOptions::default()).expect("a plan");
        (ranges, plan)
    }

    #[test]
    fn executing_a_plan_leaves_the_cluster_as_planned() {
        let (ranges, plan) = skewed_plan();
        assert!(
            plan.splits() >= 2 && plan.steps.len() > plan.splits(),
            "{:?}",
            plan.steps
        );
        let cluster = ModelCluster::new(&ranges, None);
        assert_eq!(block_on(execute(&plan, &cluster)), Ok(plan.steps.len()));
        let planned: Vec<_> = plan
            .ranges
            .iter()
            .map(|range| (range.start.clone(), range.end.clone(), range.leader_after))
            .collect();
        assert_eq!(cluster.ranges(), planned);
    }

    #[test]
    fn a_cluster_that_cannot_reshape_fails_the_first_step_and_nothing_is_applied() {
        let (_, plan) = skewed_plan();
        let error = block_on(execute(&plan, &ReshapingUnsupported)).expect_err("no reshaping");
        assert_eq!(
            (error.applied_steps, error.cause.clone()),
            (0, ReshapeError::Unsupported)
        );
        let message = error.to_string();
        assert!(message.contains("cannot reshape"), "{message}");
        assert!(message.contains("nothing was applied"), "{message}");
    }

    #[test]
    fn a_failed_step_stops_the_run_and_says_how_far_it_got() {
        let (ranges, plan) = skewed_plan();
        let cluster = ModelCluster::new(&ranges, Some(1));
        let before = cluster.ranges();
        let error = block_on(execute(&plan, &cluster)).expect_err("the second call fails");
        assert_eq!(error.applied_steps, 1);
        assert!(
            error
                .to_string()
                .starts_with(&format!("step 2 of {}", plan.steps.len())),
            "{error}"
        );
        assert!(error.to_string().contains("step 1 was applied"), "{error}");
        // Only the first step happened: one more range than before, no leader moved.
        let after = cluster.ranges();
        assert_eq!(after.len(), before.len() + 1);
        assert!(after.iter().all(|range| range.2 == Some(1)));
    }

    #[test]
    fn an_empty_plan_succeeds_without_touching_the_cluster() {
        let (_, mut plan) = skewed_plan();
        plan.steps.clear();
        assert_eq!(block_on(execute(&plan, &ReshapingUnsupported)), Ok(0));
    }
}
