//! Coalescing: many concurrent callers' writes to one shard travel as one `Batch` RPC, which the
//! node turns into one log entry — the cost of a round trip, an fdatasync and a consensus round is
//! shared by every operation in it (the per-RPC cost dominates, see FACTS.md).
//!
//! One queue and one worker per shard and priority. The worker takes the first waiting operation, waits for
//! a free in-flight slot (at most `coalesce_inflight_max` batches per shard), then takes every
//! operation already queued behind it (up to `coalesce_ops_max`), and sends them without waiting
//! for more: an idle client adds no latency, a busy one batches naturally while earlier batches
//! are in flight. Only operations keyed by an
//! `order_id` are coalesced, so resending a batch after an ambiguous failure is safe. If the node
//! refuses a batch as invalid, every operation is resent alone, so one bad request cannot fail
//! its neighbours.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::Mutex;

use tokio::sync::Semaphore;
use tokio::sync::mpsc;
use tokio::sync::oneshot;

use crate::Client;
use crate::ClientError;
use crate::Outcome;
use crate::WriteOp;
use crate::types::Priority;

/// Operations one shard's queue holds before callers wait for room.
const QUEUE_OPS_MAX: usize = 65_536;

type Reply = oneshot::Sender<Result<Outcome, ClientError>>;

struct Pending {
    op: WriteOp,
    reply: Reply,
}

/// The per-shard queues of one [`Client`].
#[derive(Debug, Default)]
pub(crate) struct Coalescer {
    /// By (shard, priority): a batch is admitted or shed as one, so it carries one priority.
    queues: Mutex<BTreeMap<(u64, Priority), mpsc::Sender<Pending>>>,
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending").field("op", &self.op).finish()
    }
}

impl Coalescer {
    /// Queues `op` for the worker of `queue_key` (shard, priority; started on first use) and waits
    /// for its outcome.
    /// `direct` is a client that sends without coalescing.
    pub(crate) async fn submit(
        &self,
        direct: &Client,
        queue_key: (u64, Priority),
        op: WriteOp,
        ops_max: usize,
        inflight_max: usize,
    ) -> Result<Outcome, ClientError> {
        let queue = {
            let mut queues = self.queues.lock().unwrap_or_else(|p| p.into_inner());
            queues
                .entry(queue_key)
                .or_insert_with(|| {
                    let (sender, receiver) = mpsc::channel(QUEUE_OPS_MAX);
                    tokio::spawn(run_worker(
                        direct.clone(),
                        receiver,
                        ops_max.max(1),
                        inflight_max.max(1),
                    ));
                    sender
                })
                .clone()
        };
        let (reply, answer) = oneshot::channel();
        queue
            .send(Pending { op, reply })
            .await
            .map_err(|_| ClientError::Unavailable {
                attempts: 0,
                last_error: "coalescing worker stopped".into(),
            })?;
        answer.await.map_err(|_| ClientError::Unavailable {
            attempts: 0,
            last_error: "coalescing worker dropped the operation".into(),
        })?
    }
}

async fn run_worker(direct: Client, mut queue: mpsc::Receiver<Pending>, ops_max: usize, inflight_max: usize) {
    let inflight = Arc::new(Semaphore::new(inflight_max));
    while let Some(first) = queue.recv().await {
        // Wait for a free slot before taking the rest of the queue: while every slot is busy,
        // callers keep queueing and the next batch takes them all, instead of leaving with
        // whatever had arrived when the slots filled up.
        let Ok(permit) = inflight.clone().acquire_owned().await else {
            return;
        };
        let mut batch = vec![first];
        while batch.len() < ops_max {
            match queue.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        let direct = direct.clone();
        tokio::spawn(async move {
            send(&direct, batch).await;
            drop(permit);
        });
    }
}

async fn send(direct: &Client, batch: Vec<Pending>) {
    let (ops, replies): (Vec<WriteOp>, Vec<Reply>) = batch.into_iter().map(|p| (p.op, p.reply)).unzip();
    match direct.batch_of(&ops).await {
        Ok(outcomes) => {
            for (reply, outcome) in replies.into_iter().zip(outcomes) {
                let _ = reply.send(Ok(outcome));
            }
        }
        // One invalid operation refuses the whole entry: resend each alone for its own answer.
        Err(ClientError::InvalidArgument(_)) if ops.len() > 1 => {
            for (reply, op) in replies.into_iter().zip(ops) {
                let _ = reply.send(direct.write_direct(op).await);
            }
        }
        Err(error) => {
            for reply in replies {
                let _ = reply.send(Err(error.clone()));
            }
        }
    }
}
