//! [`Client`]: the typed API a checkout service calls. Each method builds one wire request,
//! hands it to the [`Router`] (routing, retries, bounds) and converts the answer back into
//! domain values.

use std::sync::Arc;
use std::time::Duration;

use flashledger_proto::v1 as wire;
use futures::future::join_all;
use wire::write_op::Op;

use crate::coalesce::Coalescer;
use crate::convert;
use crate::router::{Answered, CallKind, Router, Stamp};
use crate::shard_map::ShardMap;
use crate::stock_cache::{StockCache, StockCacheOptions};
use crate::types::Priority;
use crate::watch::{WatchEvents, WatchStream};
use crate::{ClientError, ClientOptions, Consistency, Outcome, SaleRules, Stock, WriteOp};

/// The longest SKU the ledger accepts, in bytes.
pub const SKU_BYTES_MAX: usize = 128;

/// A handle to a flashledger cluster. Cheap to clone; all clones share one shard map and one
/// connection per node, so create one per process and pass it around.
#[derive(Debug, Clone)]
pub struct Client {
    router: Arc<Router>,
    /// Per-shard batching of concurrent writes; `None` when `coalesce_ops_max` is 0 (and in
    /// the client the coalescing workers themselves send with).
    coalescer: Option<Arc<Coalescer>>,
    /// The priority this handle's calls carry (see [`Client::with_priority`]); `None`: writes
    /// STANDARD, reads BACKGROUND.
    priority: Option<Priority>,
}

fn check_sku(sku: &[u8]) -> Result<(), ClientError> {
    if sku.len() > SKU_BYTES_MAX {
        return Err(ClientError::InvalidArgument(format!(
            "sku: {} bytes, at most {SKU_BYTES_MAX}",
            sku.len()
        )));
    }
    Ok(())
}

/// Writes the ledger deduplicates by `order_id` (or that are naturally repeatable, like
/// `PutSku`) may be resent after an ambiguous failure; a restock may not.
fn is_idempotent(op: &WriteOp) -> bool {
    !matches!(op, WriteOp::Restock { .. })
}

/// How many times one batch is regrouped when splits keep moving its SKUs.
const BATCH_REGROUPS_MAX: u32 = 4;

/// This machine's clock in ms since the Unix epoch: a write's first-attempt stamp.
fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as i64)
}

const WRITE: CallKind = CallKind {
    leader_only: true,
    idempotent: true,
};

impl Client {
    /// Discovers the shard map from the first reachable seed (`host:port`) and returns a
    /// client routed by it. Seeds are tried in order, each once.
    pub async fn connect(seeds: Vec<String>, options: ClientOptions) -> Result<Client, ClientError> {
        options.validate()?;
        if seeds.is_empty() {
            return Err(ClientError::Config("no seed addresses".to_string()));
        }
        let coalescing = options.coalesce_ops_max > 1;
        let router = Arc::new(Router::new(seeds, options));
        router.refresh(None).await?;
        let coalescer = coalescing.then(|| Arc::new(Coalescer::default()));
        Ok(Client {
            router,
            coalescer,
            priority: None,
        })
    }

    /// A handle to the same cluster (same connections and shard map) whose calls, writes and
    /// reads, carry `priority`: an overloaded node sheds BACKGROUND first, then STANDARD, and
    /// keeps room for PREMIUM. Without it, writes are STANDARD and reads BACKGROUND (what a
    /// product page reads; a checkout that must read under load asks for STANDARD).
    pub fn with_priority(&self, priority: Priority) -> Client {
        Client {
            priority: Some(priority),
            ..self.clone()
        }
    }

    fn write_priority(&self) -> Priority {
        self.priority.unwrap_or(Priority::Standard)
    }

    /// The shard map as last fetched (with leaders learned since).
    pub fn shard_map(&self) -> Arc<ShardMap> {
        self.router.map()
    }

    /// Fetches the shard map again from the known nodes, then the seeds.
    pub async fn refresh_shard_map(&self) -> Result<Arc<ShardMap>, ClientError> {
        self.router.refresh(None).await
    }

    /// Holds `qty` units of `sku` for `order_id` until `ttl` (or the SKU's default TTL) lapses.
    pub async fn reserve(
        &self,
        sku: impl AsRef<[u8]>,
        qty: i64,
        user: &str,
        order_id: &str,
        ttl: Option<Duration>,
    ) -> Result<Outcome, ClientError> {
        self.write(WriteOp::Reserve {
            sku: sku.as_ref().to_vec(),
            qty,
            user: user.to_string(),
            order_id: order_id.to_string(),
            ttl,
            first_attempt_ms: 0,
        })
        .await
    }

    /// Turns the reservation `order_id` on `sku` into a sale.
    pub async fn confirm(&self, sku: impl AsRef<[u8]>, order_id: &str) -> Result<Outcome, ClientError> {
        self.write(WriteOp::Confirm {
            sku: sku.as_ref().to_vec(),
            order_id: order_id.to_string(),
            first_attempt_ms: 0,
        })
        .await
    }

    /// Releases the reservation `order_id` on `sku`.
    pub async fn cancel(&self, sku: impl AsRef<[u8]>, order_id: &str) -> Result<Outcome, ClientError> {
        self.write(WriteOp::Cancel {
            sku: sku.as_ref().to_vec(),
            order_id: order_id.to_string(),
            first_attempt_ms: 0,
        })
        .await
    }

    /// Reserves and confirms in one step ("buy now").
    pub async fn purchase(
        &self,
        sku: impl AsRef<[u8]>,
        qty: i64,
        user: &str,
        order_id: &str,
    ) -> Result<Outcome, ClientError> {
        self.write(WriteOp::Purchase {
            sku: sku.as_ref().to_vec(),
            qty,
            user: user.to_string(),
            order_id: order_id.to_string(),
            first_attempt_ms: 0,
        })
        .await
    }

    /// Admin: puts `total` units of `sku` on sale under `rules`.
    pub async fn put_sku(&self, sku: impl AsRef<[u8]>, total: i64, rules: SaleRules) -> Result<Outcome, ClientError> {
        self.write(WriteOp::PutSku {
            sku: sku.as_ref().to_vec(),
            total,
            rules,
        })
        .await
    }

    /// Admin: grows (positive `delta`) or shrinks a SKU's total. A restock carries no
    /// `order_id`, so after an ambiguous failure it is *not* retried: the error is
    /// [`ClientError::Timeout`] and the caller must read the stock before trying again.
    pub async fn restock(&self, sku: impl AsRef<[u8]>, delta: i64) -> Result<Outcome, ClientError> {
        self.write(WriteOp::Restock {
            sku: sku.as_ref().to_vec(),
            delta,
        })
        .await
    }

    /// Reads a SKU's counts at the given consistency; `None` when the SKU was never put on sale.
    pub async fn get_stock(
        &self,
        sku: impl AsRef<[u8]>,
        consistency: Consistency,
    ) -> Result<Option<Stock>, ClientError> {
        let sku = sku.as_ref();
        check_sku(sku)?;
        let priority = self.priority.unwrap_or(Priority::Background);
        let request = convert::get_stock_to_wire(sku, consistency, priority);
        let kind = CallKind {
            leader_only: consistency == Consistency::Linearizable,
            idempotent: true,
        };
        let reply = self
            .router
            .call(sku, kind, |mut inventory, stamp| {
                let request = stamp.request(request.clone());
                async move { inventory.get_stock(request).await }
            })
            .await?;
        convert::stock_from_wire(&reply)
    }

    /// Sends many writes: one `Batch` RPC per shard, all shards concurrently, and returns one
    /// outcome per op in the caller's order. If any shard's batch fails, the error is returned
    /// and other shards' ops may have been applied (an error that says "not applied" of one
    /// shard's part, such as `Overloaded`, comes as [`ClientError::PartlyFailed`] unless every
    /// part was refused); resending the whole batch is safe for ops with an `order_id`.
    pub async fn batch(&self, mut ops: Vec<WriteOp>) -> Result<Vec<Outcome>, ClientError> {
        let now = now_ms();
        for op in &mut ops {
            op.stamp_first_attempt(now);
        }
        self.batch_of(&ops).await
    }

    /// [`Client::batch`] of borrowed operations: the coalescer keeps its callers' operations to
    /// resend them one by one if the node refuses the batch.
    pub(crate) async fn batch_of(&self, ops: &[WriteOp]) -> Result<Vec<Outcome>, ClientError> {
        for op in ops {
            check_sku(op.sku())?;
        }
        self.batch_grouped(ops, BATCH_REGROUPS_MAX).await
    }

    /// Sends `ops` as one batch per shard of the current map; a group a split cut in two on
    /// the way is regrouped by the newer map (at most `regroups_left` more times). Resending is
    /// safe for operations keyed by an order id; a group holding others, once an attempt may
    /// have been applied, ends indeterminate instead.
    fn batch_grouped<'a>(
        &'a self,
        ops: &'a [WriteOp],
        regroups_left: u32,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Vec<Outcome>, ClientError>> + Send + 'a>> {
        Box::pin(async move {
            let groups = self.group_by_shard(ops).await?;
            let sends = groups.iter().map(|indexes| async move {
            let group_ops: Vec<&WriteOp> = indexes.iter().map(|&i| &ops[i]).collect();
            match self.send_batch(group_ops).await {
                Err(ClientError::ShardsChanged { maybe_applied })
                    if regroups_left > 0 && (!maybe_applied || indexes.iter().all(|&i| is_idempotent(&ops[i]))) =>
                {
                    let regrouped: Vec<WriteOp> = indexes.iter().map(|&i| ops[i].clone()).collect();
                    self.batch_grouped(&regrouped, regroups_left - 1).await
                }
                Err(ClientError::ShardsChanged { maybe_applied: true }) => Err(ClientError::Indeterminate {
                    attempts: 0,
                    refusal: "a split moved some of the batch's SKUs to another shard after an attempt that may have been applied".into(),
                }),
                Err(ClientError::ShardsChanged { .. }) => Err(ClientError::Unavailable {
                    attempts: 0,
                    last_error: "the batch's shards kept changing while it was sent".into(),
                }),
                answer => answer,
            }
        });
            let answers = join_all(sends).await;
            // One shard's refusal says nothing of what another shard's part did.
            let spans_shards = groups.len() > 1;
            let all_refused = answers
                .iter()
                .all(|answer| answer.as_ref().is_err_and(ClientError::definitely_not_applied));
            let mut outcomes: Vec<Option<Outcome>> = vec![None; ops.len()];
            for (indexes, answer) in groups.iter().zip(answers) {
                let answer = match answer {
                    Err(error) if spans_shards && !all_refused && error.definitely_not_applied() => {
                        return Err(ClientError::PartlyFailed(Box::new(error)));
                    }
                    answer => answer?,
                };
                for (&index, outcome) in indexes.iter().zip(answer) {
                    outcomes[index] = Some(outcome);
                }
            }
            outcomes
                .into_iter()
                .map(|outcome| outcome.ok_or_else(|| ClientError::Protocol("batch op without an outcome".into())))
                .collect()
        })
    }

    /// Streams changes to SKUs in `[start, end)` (empty `end`: unbounded) applied after
    /// `from_index`. The range must lie within one shard (log indexes are per shard).
    pub async fn watch(
        &self,
        start: impl AsRef<[u8]>,
        end: impl AsRef<[u8]>,
        from_index: u64,
    ) -> Result<WatchStream, ClientError> {
        let stream = self.open_watch(start.as_ref(), end.as_ref(), from_index, 0).await?;
        Ok(WatchStream::new(stream))
    }

    /// [`Client::watch`] with progress marks: after the current state, after each burst of
    /// changes and at least every `progress_interval` while nothing changes, each shard on the
    /// node sends its applied index (every change in range up to it has been sent) and the
    /// leader's time of that entry. The node clamps the interval to [10 ms, 60 s].
    pub async fn watch_events(
        &self,
        start: impl AsRef<[u8]>,
        end: impl AsRef<[u8]>,
        from_index: u64,
        progress_interval: Duration,
    ) -> Result<WatchEvents, ClientError> {
        let interval_ms = u32::try_from(progress_interval.as_millis()).unwrap_or(u32::MAX).max(1);
        let stream = self
            .open_watch(start.as_ref(), end.as_ref(), from_index, interval_ms)
            .await?;
        Ok(WatchEvents::with_progress(stream))
    }

    /// A [`StockCache`] of `[start, end)` fed by this client's Watch streams (see
    /// [`crate::stock_cache`]); the range must lie within one shard.
    pub fn stock_cache(
        &self,
        start: impl AsRef<[u8]>,
        end: impl AsRef<[u8]>,
        options: StockCacheOptions,
    ) -> Result<StockCache, ClientError> {
        StockCache::start(self, start, end, options)
    }

    /// Opens a Watch server stream on a replica of the range's shard (through the router's
    /// node choice and retries).
    async fn open_watch(
        &self,
        start: &[u8],
        end: &[u8],
        from_index: u64,
        progress_interval_ms: u32,
    ) -> Result<tonic::codec::Streaming<wire::StockChange>, ClientError> {
        check_sku(start)?;
        let map = self.router.map();
        if let Some(shard) = map.shard_for(start) {
            let past_shard = !shard.end.is_empty() && (end.is_empty() || end > shard.end.as_slice());
            if past_shard {
                return Err(ClientError::InvalidArgument(format!(
                    "watch range crosses the end of shard {}; watch each shard separately",
                    shard.shard_id
                )));
            }
        }
        let request = wire::WatchRequest {
            start: start.to_vec().into(),
            end: end.to_vec().into(),
            from_index,
            progress_interval_ms,
        };
        let kind = CallKind {
            leader_only: false,
            idempotent: true,
        };
        self.router
            .call(start, kind, |mut inventory, stamp| {
                let request = stamp.request(request.clone());
                async move { inventory.watch(request).await }
            })
            .await
    }

    /// One write through the router.
    async fn write(&self, mut op: WriteOp) -> Result<Outcome, ClientError> {
        check_sku(op.sku())?;
        op.stamp_first_attempt(now_ms());
        if let Some(coalescer) = &self.coalescer {
            let coalescable = matches!(
                op,
                WriteOp::Reserve { .. } | WriteOp::Confirm { .. } | WriteOp::Cancel { .. } | WriteOp::Purchase { .. }
            );
            let shard = self.router.map().shard_for(op.sku()).map(|s| s.shard_id);
            if let (true, Some(shard_id)) = (coalescable, shard) {
                let options = &self.router.options;
                let (ops_max, inflight_max) = (options.coalesce_ops_max, options.coalesce_inflight_max);
                let direct = Client {
                    router: self.router.clone(),
                    coalescer: None,
                    priority: self.priority,
                };
                let queue = (shard_id, self.write_priority());
                return coalescer.submit(&direct, queue, op, ops_max, inflight_max).await;
            }
        }
        self.write_direct(op).await
    }

    /// Sends one write in its own RPC.
    pub(crate) async fn write_direct(&self, op: WriteOp) -> Result<Outcome, ClientError> {
        let kind = CallKind {
            idempotent: is_idempotent(&op),
            ..WRITE
        };
        let priority = self.write_priority();
        let answered = self
            .router
            .call_tracked(op.sku(), &[], kind, |inventory, stamp| {
                let op = convert::write_op_to_wire(&op, stamp.epoch, Some(priority));
                send_write(inventory, stamp, op)
            })
            .await?;
        let outcome = convert::write_reply_from_wire(&answered.reply)?;
        refusal_speaks_for_the_call(&answered, std::slice::from_ref(&outcome))?;
        Ok(outcome)
    }

    /// Indexes of `ops`, grouped by the shard that owns each op's SKU, groups in shard order.
    /// Refreshes the map once if some SKU falls in no known shard.
    async fn group_by_shard(&self, ops: &[WriteOp]) -> Result<Vec<Vec<usize>>, ClientError> {
        let mut map = self.router.map();
        if ops.iter().any(|op| map.shard_for(op.sku()).is_none()) {
            map = self.router.refresh(None).await?;
        }
        let mut groups: std::collections::BTreeMap<u64, Vec<usize>> = Default::default();
        for (index, op) in ops.iter().enumerate() {
            let shard = map.shard_for(op.sku()).ok_or_else(|| ClientError::Unavailable {
                attempts: 0,
                last_error: format!("no shard covers sku {:?}", String::from_utf8_lossy(op.sku())),
            })?;
            groups.entry(shard.shard_id).or_default().push(index);
        }
        Ok(groups.into_values().collect())
    }

    /// One shard's share of a batch, routed by its first op's SKU.
    async fn send_batch(&self, ops: Vec<&WriteOp>) -> Result<Vec<Outcome>, ClientError> {
        let Some(first) = ops.first() else {
            return Ok(Vec::new());
        };
        let kind = CallKind {
            idempotent: ops.iter().all(|op| is_idempotent(op)),
            ..WRITE
        };
        let skus: Vec<&[u8]> = ops.iter().map(|op| op.sku()).collect();
        let answered = self
            .router
            .call_tracked(first.sku(), &skus, kind, |mut inventory, stamp| {
                let ops = ops
                    .iter()
                    .map(|op| wire::WriteOp {
                        op: Some(convert::write_op_to_wire(op, stamp.epoch, None)),
                    })
                    .collect();
                let priority = convert::priority_to_wire(self.write_priority());
                let request = stamp.request(wire::BatchRequest { ops, priority });
                async move { inventory.batch(request).await }
            })
            .await?;
        let outcomes = convert::batch_reply_from_wire(&answered.reply, ops.len())?;
        refusal_speaks_for_the_call(&answered, &outcomes)?;
        Ok(outcomes)
    }
}

/// A `RATE_LIMITED` outcome says the answered attempt changed nothing; after an earlier attempt
/// that may have been applied, the write's fate is unknown, and the call says so.
fn refusal_speaks_for_the_call<Reply>(answered: &Answered<Reply>, outcomes: &[Outcome]) -> Result<(), ClientError> {
    let limited = outcomes
        .iter()
        .find(|outcome| matches!(outcome, Outcome::RateLimited { .. }));
    match limited {
        Some(outcome) if answered.ambiguous_before => Err(ClientError::Indeterminate {
            attempts: answered.attempts,
            refusal: format!("{outcome:?}"),
        }),
        _ => Ok(()),
    }
}

/// Sends one write on the RPC matching its kind.
async fn send_write(
    mut inventory: flashledger_proto::v1::inventory_client::InventoryClient<crate::channels::NodeChannel>,
    stamp: Stamp,
    op: Op,
) -> Result<tonic::Response<wire::WriteReply>, tonic::Status> {
    match op {
        Op::Reserve(request) => inventory.reserve(stamp.request(request)).await,
        Op::Confirm(request) => inventory.confirm(stamp.request(request)).await,
        Op::Cancel(request) => inventory.cancel(stamp.request(request)).await,
        Op::Purchase(request) => inventory.purchase(stamp.request(request)).await,
        Op::PutSku(request) => inventory.put_sku(stamp.request(request)).await,
        Op::Restock(request) => inventory.restock(stamp.request(request)).await,
    }
}
