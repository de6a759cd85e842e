//! [`Router`]: shard-map discovery and the bounded retry loop every call goes through.
//!
//! For each attempt the router picks a node for the SKU's shard (a leader hint from the last
//! answer, else the map's leader, else the replicas in order), sends the request there, and
//! classifies the answer by the status-code contract in `flashledger.proto`:
//!
//! | answer | action |
//! |---|---|
//! | `UNAVAILABLE` + `x-leader-addr` / `x-leader-id` | retry at that leader at once, remember it in the map |
//! | `UNAVAILABLE` without hint, transport error, attempt timeout | next replica at once; backoff once every replica failed in a row |
//! | `FAILED_PRECONDITION` (stale epoch), `NOT_FOUND` (no such shard here) | refresh the shard map, retry after backoff |
//! | `DEADLINE_EXCEEDED` | same node, after backoff (ambiguous unless `x-not-applied`) |
//! | `RESOURCE_EXHAUSTED` (the node shed it) | [`ClientError::Overloaded`] with the node's `x-retry-after-ms`, no retry |
//! | `INVALID_ARGUMENT` | [`ClientError::InvalidArgument`], no retry |
//!
//! Failing over is immediate: a node that does not answer (connection refused or lost, attempt
//! timed out) is left for the next replica without a pause, a hint naming a node whose breaker
//! is open is ignored for the next replica, and nodes whose breaker is open are not tried at
//! all ([`crate::breaker`]). Only a full round of the shard's replicas failing in a row (an
//! election under way: nobody leads yet) sleeps the jittered backoff ([`crate::Backoff`]), at
//! least as long as a node's `x-retry-after-ms`.
//!
//! Every call is bounded four ways: at most `retries_max + 1` attempts, each at most
//! `attempt_timeout_ms`, all within `request_timeout_ms`, and every retry after a failure (not
//! a redirect to a named leader) paid from the client's [`RetryBudget`]. Retries resend the same request
//! (same `order_id`), which the ledger deduplicates. A call marked not idempotent (a restock,
//! which has no `order_id`) stops instead of retrying after an *ambiguous* failure (the node
//! may have applied it: attempt timeout, `DEADLINE_EXCEEDED`). A call ends `Overloaded` (not
//! applied) only if no earlier attempt of it was ambiguous; otherwise it ends `Indeterminate`,
//! and so does a write answered `RATE_LIMITED` after an ambiguous attempt (the client layer
//! checks that, see [`Router::call_tracked`]).
//!
//! Every attempt carries its deadline (`grpc-timeout`, so a node drops it rather than propose
//! what nobody will hear) and the client's id (`x-client-id`) when the options name one.

use std::future::Future;
use std::sync::{Arc, PoisonError, RwLock};

use crate::channels::NodeChannel;
use flashledger_proto::metadata;
use flashledger_proto::v1::ShardMapRequest;
use flashledger_proto::v1::cluster_client::ClusterClient;
use flashledger_proto::v1::inventory_client::InventoryClient;
use tokio::time::{Instant, sleep, timeout};
use tonic::{Code, Status};

use crate::backoff::Backoff;
use crate::breaker::Breakers;
use crate::channels::Channels;
use crate::convert;
use crate::retry_budget::RetryBudget;
use crate::shard_map::{NodeId, Shard, ShardMap};
use crate::{ClientError, ClientOptions};

/// How a call may be retried and routed.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CallKind {
    /// The answering node is the shard's leader (writes, linearizable reads): remember it.
    pub(crate) leader_only: bool,
    /// Resending after an ambiguous failure cannot apply the request twice.
    pub(crate) idempotent: bool,
}

/// What to do after a failed attempt.
#[derive(Debug)]
enum Next {
    /// Retry at once at the leader the node named.
    Redirect {
        leader_id: Option<NodeId>,
        leader_addr: Option<String>,
    },
    /// Try the next replica after backoff; `ambiguous` when the node may have applied it.
    OtherReplica { ambiguous: bool },
    /// Refresh the shard map, then retry after backoff.
    Refresh,
    /// Retry the same node after backoff; `ambiguous` when the node may have applied it.
    SameNode { ambiguous: bool },
    /// Give up with this error.
    Fail(ClientError),
    /// The node shed it before proposing: give up, unless an earlier attempt was ambiguous.
    Overloaded(ClientError),
}

/// A call's answer, and what came before it.
pub(crate) struct Answered<Reply> {
    pub(crate) reply: Reply,
    pub(crate) attempts: u32,
    /// Some attempt before the answered one may have been applied (it timed out, or its
    /// connection failed).
    pub(crate) ambiguous_before: bool,
}

/// What one attempt sends besides its message: the shard epoch it is routed by, its deadline
/// and who sends it.
#[derive(Debug, Clone)]
pub(crate) struct Stamp {
    pub(crate) epoch: u64,
    timeout: std::time::Duration,
    client_id: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
}

impl Stamp {
    /// `message` as a request with this attempt's deadline and client id.
    pub(crate) fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request.set_timeout(self.timeout);
        if let Some(id) = &self.client_id {
            request.metadata_mut().insert(metadata::CLIENT_ID, id.clone());
        }
        request
    }
}

/// A node chosen for one attempt.
#[derive(Debug, Clone)]
struct Target {
    node: Option<NodeId>,
    addr: String,
}

/// Shared state behind every clone of a [`crate::Client`].
#[derive(Debug)]
pub(crate) struct Router {
    pub(crate) options: ClientOptions,
    /// Where discovery starts when no known node answers.
    seeds: Vec<String>,
    /// Replaced wholesale on refresh and on leader changes; never held across an await.
    map: RwLock<Arc<ShardMap>>,
    channels: Channels,
    /// Per node address: whether calls should route around it.
    breakers: Breakers,
    /// Retries after failures, shared by every call of this client.
    retry_budget: RetryBudget,
    /// Calls made, the salt of each call's backoff jitter (so that concurrent calls that
    /// failed together pause for different times).
    calls: std::sync::atomic::AtomicU64,
    /// `options.client_id` as metadata, checked once.
    client_id: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
}

impl Router {
    pub(crate) fn new(seeds: Vec<String>, options: ClientOptions) -> Self {
        let channels = Channels::new(options.connect_timeout(), options.credentials.clone());
        let client_id = options
            .client_id
            .as_deref()
            .and_then(|id| tonic::metadata::MetadataValue::try_from(id).ok());
        Router {
            breakers: Breakers::new(options.breaker_failures_max, options.breaker_open()),
            retry_budget: RetryBudget::new(
                options.retry_budget_percent,
                options.retry_budget_reserve,
                options.retry_budget_min_per_s,
            ),
            calls: std::sync::atomic::AtomicU64::new(0),
            options,
            seeds,
            map: RwLock::new(Arc::new(ShardMap::default())),
            channels,
            client_id,
        }
    }

    /// The cached shard map.
    pub(crate) fn map(&self) -> Arc<ShardMap> {
        self.map.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Learns that `leader` leads `shard_id` (at `addr`, if given).
    fn set_leader(&self, shard_id: u64, leader: NodeId, addr: Option<&str>) {
        if !self.map().knows_leader(shard_id, leader, addr) {
            self.update_map(|map| map.set_leader(shard_id, leader, addr));
        }
    }

    fn update_map(&self, update: impl FnOnce(&mut ShardMap) -> bool) {
        let mut guard = self.map.write().unwrap_or_else(PoisonError::into_inner);
        let mut next = ShardMap::clone(&guard);
        if update(&mut next) {
            *guard = Arc::new(next);
        }
    }

    /// Asks the known nodes, then the seeds, for the shard map; installs the first good answer.
    /// Bounded: each address once, each ask at most `attempt_timeout_ms` (and not past
    /// `deadline`).
    pub(crate) async fn refresh(&self, deadline: Option<Instant>) -> Result<Arc<ShardMap>, ClientError> {
        let mut candidates: Vec<String> = self.map().nodes().values().cloned().collect();
        for seed in &self.seeds {
            if !candidates.contains(seed) {
                candidates.push(seed.clone());
            }
        }
        let mut last_error = String::from("no addresses to try");
        let mut tried = 0;
        let mut saw_older = false;
        for addr in &candidates {
            let Some(budget) = self.attempt_budget(deadline) else {
                break;
            };
            tried += 1;
            let channel = match self.channels.get(addr) {
                Ok(channel) => channel,
                Err(error) => {
                    last_error = error;
                    continue;
                }
            };
            let mut cluster = ClusterClient::new(channel);
            let answer = timeout(budget, cluster.shard_map(ShardMapRequest {})).await;
            let reply = match answer {
                Err(_) => {
                    last_error = format!("{addr}: shard map request timed out");
                    continue;
                }
                // Every node checks credentials the same way: asking the next would only
                // repeat the refusal.
                Ok(Err(status)) if status.code() == tonic::Code::Unauthenticated => {
                    return Err(ClientError::Unauthenticated(format!("{addr}: {}", status.message())));
                }
                Ok(Err(status)) if status.code() == tonic::Code::PermissionDenied => {
                    return Err(ClientError::PermissionDenied(format!("{addr}: {}", status.message())));
                }
                Ok(Err(status)) => {
                    last_error = format!("{addr}: {:?}: {}", status.code(), status.message());
                    continue;
                }
                Ok(Ok(reply)) => reply.into_inner(),
            };
            match convert::shard_map_from_wire(&reply) {
                // A node that has not caught up with the meta group yet: its map would route
                // back to where the newer one says a split or move took the SKUs from.
                Ok(map) if map.version() < self.map().version() => {
                    last_error = format!("{addr}: an older shard map (version {})", map.version());
                    saw_older = true;
                    continue;
                }
                Ok(map) => {
                    let map = Arc::new(map);
                    *self.map.write().unwrap_or_else(PoisonError::into_inner) = map.clone();
                    tracing::debug!(addr = %addr, shards = map.shards().len(), "shard map refreshed");
                    return Ok(map);
                }
                Err(error) => last_error = format!("{addr}: {error}"),
            }
        }
        // Nodes answered, but with older maps than ours: keep ours.
        if saw_older {
            return Ok(self.map());
        }
        Err(ClientError::NoSeedReachable { tried, last_error })
    }

    /// The timeout for the next attempt: `attempt_timeout_ms`, cut to what is left before
    /// `deadline`; `None` once the deadline has passed.
    fn attempt_budget(&self, deadline: Option<Instant>) -> Option<std::time::Duration> {
        let per_attempt = self.options.attempt_timeout();
        match deadline {
            None => Some(per_attempt),
            Some(deadline) => {
                let left = deadline.saturating_duration_since(Instant::now());
                (!left.is_zero()).then(|| per_attempt.min(left))
            }
        }
    }

    /// The node to try for `shard`: the leader first when known, then the other replicas in
    /// map order, passing over nodes whose breaker is open and, while another may be tried,
    /// nodes that did not answer this call (`silent`); `cursor` counts the nodes already given
    /// up on in this call and moves past the ones passed over. `None` when no replica may be
    /// tried now.
    fn pick(&self, map: &ShardMap, shard: &Shard, cursor: &mut usize, silent: &[String]) -> Option<Target> {
        let mut order: Vec<NodeId> = shard.leader.into_iter().collect();
        order.extend(shard.replicas.iter().filter(|id| Some(**id) != shard.leader));
        for avoid_silent in [true, false] {
            for _ in 0..order.len() {
                let node = order[*cursor % order.len()];
                if let Some(addr) = map.addr(node)
                    && !(avoid_silent && silent.iter().any(|s| s == addr))
                    && self.breakers.allow(addr)
                {
                    return Some(Target {
                        node: Some(node),
                        addr: addr.to_string(),
                    });
                }
                *cursor += 1;
            }
        }
        None
    }

    /// Sends one request for `sku` until it gets an answer or a bound runs out. `send` builds
    /// and sends the request (the same one every time, stamped with the routed shard epoch, the
    /// attempt's deadline and the client id: see [`Stamp`]).
    pub(crate) async fn call<Reply, Send, Sent>(
        &self,
        sku: &[u8],
        kind: CallKind,
        send: Send,
    ) -> Result<Reply, ClientError>
    where
        Send: FnMut(InventoryClient<NodeChannel>, Stamp) -> Sent,
        Sent: Future<Output = Result<tonic::Response<Reply>, Status>>,
    {
        self.call_tracked(sku, &[], kind, send)
            .await
            .map(|answered| answered.reply)
    }

    /// [`Router::call`], also saying whether an attempt before the one answered may have been
    /// applied: then a refusal in the answer (`RATE_LIMITED`) speaks only for the last attempt.
    pub(crate) async fn call_tracked<Reply, Send, Sent>(
        &self,
        sku: &[u8],
        batch_skus: &[&[u8]],
        kind: CallKind,
        mut send: Send,
    ) -> Result<Answered<Reply>, ClientError>
    where
        Send: FnMut(InventoryClient<NodeChannel>, Stamp) -> Sent,
        Sent: Future<Output = Result<tonic::Response<Reply>, Status>>,
    {
        let deadline = Instant::now() + self.options.request_timeout();
        let attempts_max = self.options.retries_max.saturating_add(1);
        self.retry_budget.on_call();
        let call_number = self.calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut pauses = Pauses {
            backoff: self.options.backoff(call_number),
            taken: 0,
            failed_in_a_row: 0,
        };
        let mut attempts: u32 = 0;
        let mut cursor: usize = 0;
        let mut redirect: Option<Target> = None;
        // The next attempt follows a node's not-leader hint: routing, free of the retry budget.
        let mut following_hint = false;
        let mut last_error = String::from("no attempt made");
        let mut last_was_timeout = false;
        // Whether some attempt may have been applied: then no later refusal proves otherwise.
        let mut any_ambiguous = false;
        // The last failed attempt's `x-retry-after-ms`: the next pause is at least that.
        let mut retry_after: Option<std::time::Duration> = None;
        // Nodes that did not answer this call: a follower that still names one of them as its
        // leader (it has not noticed yet) is not followed there again.
        let mut silent: Vec<String> = Vec::new();
        // Nodes a hint sent this call to since its last pause: hints that lead in a circle (two
        // followers each naming the other, during an election or a leadership hand-over) are
        // not followed round again without a pause, or they would spend every attempt at once.
        let mut hinted: Vec<String> = Vec::new();

        while attempts < attempts_max {
            let Some(budget) = self.attempt_budget(Some(deadline)) else {
                return Err(ClientError::Timeout { attempts });
            };
            // A redirect to the leader a node named is routing; any other attempt after the
            // first is a retry, and the budget may refuse it.
            let free = std::mem::take(&mut following_hint);
            if attempts > 0 && !free && !self.retry_budget.try_retry() {
                last_error = format!("{last_error}; the client's retry budget is spent");
                // No resend, but not a fast failure either: a caller that loops on errors
                // would otherwise spin against the cluster the budget is sparing.
                pauses.pause(retry_after, deadline).await;
                break;
            }
            attempts += 1;
            let map = self.map();
            // A batch whose SKUs this map puts in more than one shard (a split since it was
            // grouped) cannot be sent as one: the caller regroups it. Nothing of this attempt
            // was sent; an earlier one may have been applied.
            if let Some(shard) = map.shard_for(sku)
                && batch_skus
                    .iter()
                    .any(|other| map.shard_for(other).is_none_or(|s| s.shard_id != shard.shard_id))
            {
                return Err(ClientError::ShardsChanged {
                    maybe_applied: any_ambiguous,
                });
            }
            let Some(shard) = map.shard_for(sku).cloned() else {
                last_error = format!("no shard covers sku {:?}", String::from_utf8_lossy(sku));
                last_was_timeout = false;
                if let Err(error) = self.refresh(Some(deadline)).await {
                    last_error = format!("{last_error}; refresh failed: {error}");
                }
                pauses.pause(None, deadline).await;
                continue;
            };
            let target = match redirect.take() {
                Some(target) => target,
                None => match self.pick(&map, &shard, &mut cursor, &silent) {
                    Some(target) => target,
                    None => {
                        last_error = format!(
                            "shard {}: every replica failed recently (circuit breakers open); {last_error}",
                            shard.shard_id
                        );
                        // Nothing was sent: not an attempt. The call waits for a breaker's
                        // probe (bounded by its deadline) or a map naming other replicas.
                        attempts -= 1;
                        self.refresh(Some(deadline)).await.ok();
                        pauses.pause(None, deadline).await;
                        continue;
                    }
                },
            };
            let channel = match self.channels.get(&target.addr) {
                Ok(channel) => channel,
                Err(error) => {
                    last_error = error;
                    cursor += 1;
                    continue;
                }
            };

            let stamp = Stamp {
                epoch: shard.epoch,
                timeout: budget,
                client_id: self.client_id.clone(),
            };
            let answer = timeout(budget, send(InventoryClient::new(channel), stamp)).await;
            let answered = match &answer {
                Ok(Err(status)) => answered_by_node(status),
                Err(_) => false,
                Ok(Ok(_)) => true,
            };
            if answered {
                self.breakers.on_answer(&target.addr);
            } else {
                self.breakers.on_failure(&target.addr);
                if !silent.contains(&target.addr) {
                    silent.push(target.addr.clone());
                }
            }
            retry_after = None;
            let next = match answer {
                Ok(Ok(reply)) => {
                    if let (true, Some(node)) = (kind.leader_only, target.node) {
                        self.set_leader(shard.shard_id, node, None);
                    }
                    return Ok(Answered {
                        reply: reply.into_inner(),
                        attempts,
                        ambiguous_before: any_ambiguous,
                    });
                }
                Ok(Err(status)) => {
                    last_error = format!("{}: {:?}: {}", target.addr, status.code(), status.message());
                    retry_after = metadata_str(&status, metadata::RETRY_AFTER_MS)
                        .and_then(|ms| ms.parse::<u64>().ok())
                        .map(std::time::Duration::from_millis);
                    classify(&status)
                }
                Err(_) => {
                    last_error = format!("{}: attempt timed out after {budget:?}", target.addr);
                    Next::OtherReplica { ambiguous: true }
                }
            };
            tracing::debug!(attempt = attempts, error = %last_error, ?next, "attempt failed");

            if matches!(
                next,
                Next::OtherReplica { ambiguous: true } | Next::SameNode { ambiguous: true }
            ) {
                any_ambiguous = true;
            }
            let pauses_before = pauses.taken;
            match next {
                // An earlier attempt may have been applied: this refusal speaks only for itself
                // (a batch a split cut in two by the node's newer map, say).
                Next::Fail(error) if any_ambiguous => {
                    return Err(ClientError::Indeterminate {
                        attempts,
                        refusal: error.to_string(),
                    });
                }
                Next::Fail(error) => return Err(error),
                Next::Overloaded(refusal) if any_ambiguous => {
                    return Err(ClientError::Indeterminate {
                        attempts,
                        refusal: refusal.to_string(),
                    });
                }
                Next::Overloaded(error) => return Err(error),
                Next::Redirect { leader_id, leader_addr } => {
                    last_was_timeout = false;
                    let hint = self
                        .follow_hint(&shard, &target, leader_id, leader_addr, &silent)
                        .filter(|leader| !hinted.contains(&leader.addr));
                    match hint {
                        // Following a hint does not reset the count of failures in a row: two
                        // followers naming a leader that does not answer as one would otherwise
                        // keep the call from ever pausing.
                        Some(leader) => {
                            hinted.push(leader.addr.clone());
                            following_hint = true;
                            redirect = Some(leader);
                        }
                        // The hint names the node itself, or a node calls route around (a
                        // leader that just died, which its followers still name until they
                        // elect another): ask the next replica.
                        None => {
                            cursor += 1;
                            pauses
                                .after_node_failed(shard.replicas.len(), retry_after, deadline)
                                .await;
                        }
                    }
                }
                Next::OtherReplica { ambiguous } | Next::SameNode { ambiguous } => {
                    last_was_timeout = ambiguous;
                    if ambiguous && !kind.idempotent {
                        return Err(ClientError::Timeout { attempts });
                    }
                    if matches!(next, Next::OtherReplica { .. }) {
                        self.forget_leader(&shard, &target);
                        cursor += 1;
                        pauses
                            .after_node_failed(shard.replicas.len(), retry_after, deadline)
                            .await;
                    } else {
                        redirect = Some(target);
                        pauses.pause(retry_after, deadline).await;
                    }
                }
                Next::Refresh => {
                    last_was_timeout = false;
                    cursor = 0;
                    if let Err(error) = self.refresh(Some(deadline)).await {
                        last_error = format!("{last_error}; refresh failed: {error}");
                    }
                    pauses.pause(retry_after, deadline).await;
                }
            }
            if pauses.taken != pauses_before {
                hinted.clear();
            }
        }
        if last_was_timeout {
            Err(ClientError::Timeout { attempts })
        } else {
            Err(ClientError::Unavailable { attempts, last_error })
        }
    }

    /// Turns a not-leader hint into the next target and remembers the leader. `None` when the
    /// hint is unusable: it points back at the node that sent it, names nothing we can reach,
    /// a node that did not answer this call (`silent`), or one whose breaker is open.
    fn follow_hint(
        &self,
        shard: &Shard,
        from: &Target,
        leader_id: Option<NodeId>,
        leader_addr: Option<String>,
        silent: &[String],
    ) -> Option<Target> {
        let map = self.map();
        let addr = leader_addr.or_else(|| leader_id.and_then(|id| map.addr(id).map(str::to_string)))?;
        let node = leader_id.or_else(|| map.node_at(&addr));
        if addr == from.addr
            || (node.is_some() && node == from.node)
            || silent.contains(&addr)
            || !self.breakers.allow(&addr)
        {
            return None;
        }
        if let Some(node) = node {
            self.set_leader(shard.shard_id, node, Some(&addr));
        }
        Some(Target { node, addr })
    }

    /// After `target` failed to answer, stop sending this shard's calls to it first.
    fn forget_leader(&self, shard: &Shard, target: &Target) {
        if target.node.is_some() && shard.leader == target.node {
            self.update_map(|map| map.clear_leader(shard.shard_id));
        }
    }
}

/// The pauses of one call: a node that failed is left for the next replica at once; the call
/// sleeps only once every replica of the shard has failed in a row, or when told to wait.
struct Pauses {
    backoff: Backoff,
    /// Pauses slept so far: the backoff's exponent.
    taken: u32,
    /// Nodes that failed since the last pause or answer.
    failed_in_a_row: usize,
}

impl Pauses {
    /// A node failed (no answer, or no leader to name): pause only when it was the last of a
    /// round of `replicas`.
    async fn after_node_failed(
        &mut self,
        replicas: usize,
        retry_after: Option<std::time::Duration>,
        deadline: Instant,
    ) {
        self.failed_in_a_row += 1;
        if self.failed_in_a_row >= replicas.max(1) || retry_after.is_some() {
            self.pause(retry_after, deadline).await;
        }
    }

    /// Sleeps the next backoff step (at least `retry_after`), never past `deadline`.
    async fn pause(&mut self, retry_after: Option<std::time::Duration>, deadline: Instant) {
        let pause = self.backoff.delay(self.taken, retry_after);
        self.taken = self.taken.saturating_add(1);
        self.failed_in_a_row = 0;
        let left = deadline.saturating_duration_since(Instant::now());
        sleep(pause.min(left)).await;
    }
}

/// Whether `status` came from the node (it is alive, whatever it said) rather than from the
/// transport failing to reach it. Every refusal a node sends with these codes carries
/// `x-not-applied` (see `ledger::server::status`); a connection refused, reset or lost
/// surfaces as one of them without it.
fn answered_by_node(status: &Status) -> bool {
    let transport_code = matches!(status.code(), Code::Unavailable | Code::Unknown | Code::Cancelled);
    !transport_code || metadata_str(status, metadata::NOT_APPLIED).is_some()
}

/// The status-code contract of `flashledger.proto`, as client actions.
fn classify(status: &Status) -> Next {
    match status.code() {
        Code::InvalidArgument => Next::Fail(ClientError::InvalidArgument(status.message().to_string())),
        // Refused before the request was decoded: retrying cannot help.
        Code::Unauthenticated => Next::Fail(ClientError::Unauthenticated(status.message().to_string())),
        Code::PermissionDenied => Next::Fail(ClientError::PermissionDenied(status.message().to_string())),
        Code::Unavailable => {
            let leader_addr = metadata_str(status, metadata::LEADER_ADDR).map(str::to_string);
            let leader_id = metadata_str(status, metadata::LEADER_ID)
                .and_then(|id| id.parse::<NodeId>().ok())
                .filter(|id| *id != 0);
            // Only the node's own refusal proves nothing was proposed; a transport failure
            // (connection lost after sending) also surfaces as UNAVAILABLE.
            let not_applied = metadata_str(status, metadata::NOT_APPLIED).is_some();
            if (leader_addr.is_some() || leader_id.is_some()) && not_applied {
                Next::Redirect { leader_id, leader_addr }
            } else {
                Next::OtherReplica {
                    ambiguous: !not_applied,
                }
            }
        }
        Code::FailedPrecondition | Code::NotFound => Next::Refresh,
        // With `x-not-applied`, the node dropped it for its deadline before proposing.
        Code::DeadlineExceeded => Next::SameNode {
            ambiguous: metadata_str(status, metadata::NOT_APPLIED).is_none(),
        },
        Code::ResourceExhausted => Next::Overloaded(ClientError::Overloaded {
            retry_after: metadata_str(status, metadata::RETRY_AFTER_MS)
                .and_then(|ms| ms.parse::<u64>().ok())
                .map(std::time::Duration::from_millis),
            message: status.message().to_string(),
        }),
        // Transport failures surface as these on the client side; the node may or may not
        // have seen the request.
        Code::Unknown | Code::Internal | Code::Cancelled | Code::Aborted => Next::OtherReplica { ambiguous: true },
        code => Next::Fail(ClientError::Server {
            code,
            message: status.message().to_string(),
        }),
    }
}

fn metadata_str<'a>(status: &'a Status, key: &str) -> Option<&'a str> {
    status
        .metadata()
        .get(key)
        .and_then(|value| value.to_str().ok())
        .filter(|value| !value.is_empty())
}
