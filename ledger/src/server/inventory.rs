//! The client-facing `Inventory` gRPC service: validates each request (convert), asks admission
//! (deadline, budgets by priority, rate limits), hands what is admitted to the node as one log
//! entry, and turns the outcomes back into wire replies.

use std::sync::Arc;

use flashledger_proto::metadata;
use flashledger_proto::v1 as pb;
use flashledger_proto::v1::inventory_server::Inventory;
use tonic::Request;
use tonic::Response;
use tonic::Status;

use crate::admission::Priority;
use crate::admission::deadline::Arrival;
use crate::admission::deadline::Deadline;
use crate::metrics::instruments::AnsweredAs;
use crate::metrics::instruments::RequestOutcome;
use crate::node::Node;
use crate::node::NodeError;
use crate::node::ReadConsistency;
use crate::security::Access;
use crate::security::Caller;
use crate::server::convert;
use crate::server::status::from_invalid;
use crate::server::status::from_node_error;
use crate::server::status::from_refused;
use crate::server::watch;
use crate::state_machine::command::Operation;
#[cfg(madsim)]
use crate::state_machine::command::Outcome;

pub struct InventoryService {
    node: Arc<Node>,
    watch_slots: Arc<watch::WatchSlots>,
}

/// What admission needs of a request besides its message, read before the message is taken.
struct Envelope {
    /// Who sent it (see `convert::client_identity`).
    client: String,
    deadline: Deadline,
}

impl Envelope {
    fn of<T>(request: &Request<T>) -> Result<Envelope, Status> {
        let arrived = request
            .extensions()
            .get::<Arrival>()
            .map_or_else(tokio::time::Instant::now, |arrival| arrival.0);
        let timeout = request
            .metadata()
            .get(GRPC_TIMEOUT)
            .and_then(|value| value.to_str().ok());
        let client = convert::client_identity(
            request.metadata().get(metadata::CLIENT_ID),
            request.extensions().get::<Caller>(),
            request.remote_addr(),
        )
        .map_err(from_invalid)?;
        Ok(Envelope {
            client,
            deadline: Deadline::from_header(arrived, timeout),
        })
    }
}

/// The header a gRPC client states its deadline in.
const GRPC_TIMEOUT: &str = "grpc-timeout";

impl InventoryService {
    pub fn new(node: Arc<Node>) -> Self {
        InventoryService {
            node,
            watch_slots: Arc::default(),
        }
    }

    async fn write_one(
        &self,
        envelope: Envelope,
        priority: Result<Priority, convert::InvalidRequest>,
        operation: Result<Operation, convert::InvalidRequest>,
        epoch: u64,
    ) -> Result<Response<pb::WriteReply>, Status> {
        let priority = priority.map_err(from_invalid)?;
        let operation = operation.map_err(from_invalid)?;
        let (mut outcomes, log_index) = self.write(envelope, priority, vec![operation], &[epoch]).await?;
        let mut response = answered(&outcomes);
        let outcome = outcomes.pop();
        *response.get_mut() = pb::WriteReply { outcome, log_index };
        Ok(response)
    }

    /// Admits `operations` (one shard's, one request's), answers those over a rate limit
    /// `RATE_LIMITED` and proposes the rest as one entry; one outcome per operation, in order.
    /// The log index is 0 when nothing was proposed.
    async fn write(
        &self,
        envelope: Envelope,
        priority: Priority,
        operations: Vec<Operation>,
        epochs: &[u64],
    ) -> Result<(Vec<pb::Outcome>, u64), Status> {
        let node = &self.node;
        let shard = node.route(&operations, epochs).map_err(from_node_error)?;
        let _permit = node
            .admission
            .admit(shard.config.id, priority, operations.len(), envelope.deadline)
            .map_err(from_refused)?;
        // Only the leader limits: elsewhere the request is sent on, and would pay twice.
        let limits_apply = shard.raft.is_leader();
        let mut limited: Vec<Option<pb::Outcome>> = Vec::with_capacity(operations.len());
        let mut admitted = Vec::with_capacity(operations.len());
        for operation in operations {
            let takes = matches!(operation, Operation::Reserve { .. } | Operation::Purchase { .. });
            let verdict = if limits_apply && takes {
                let rules = node.sale_rules(operation.sku());
                node.admission.rate_limit(&envelope.client, &operation, rules.as_ref())
            } else {
                Ok(())
            };
            match verdict {
                Ok(()) => {
                    limited.push(None);
                    admitted.push(operation);
                }
                Err(over) => limited.push(Some(convert::rate_limited(over.retry_after))),
            }
        }
        if admitted.is_empty() {
            return Ok((limited.into_iter().flatten().collect(), 0));
        }
        let (outcomes, log_index) = node
            .write_within(admitted, epochs, envelope.deadline)
            .await
            .map_err(from_node_error)?;
        #[cfg(madsim)]
        if crate::simulation::planted(crate::simulation::PlantedBug::ShedAfterPropose)
            && outcomes
                .iter()
                .any(|outcome| matches!(outcome, Outcome::Confirmed | Outcome::Reserved { .. }))
        {
            return Err(from_refused(crate::admission::Refused::Overloaded {
                scope: crate::admission::budget::Scope::Shard,
                shard_id: shard.config.id,
                priority,
                inflight: 0,
                ceiling: 0,
                retry_after: std::time::Duration::from_millis(1),
            }));
        }
        let mut decided = outcomes.iter().map(convert::outcome);
        let merged = limited
            .into_iter()
            .map(|answer| answer.or_else(|| decided.next()))
            .collect::<Option<Vec<pb::Outcome>>>()
            .ok_or_else(|| Status::internal("the node answered fewer outcomes than operations"))?;
        Ok((merged, log_index))
    }
}

/// An empty response marked, for the request metrics, with how `outcomes` went: rate limited
/// when every operation was, rejected when none succeeded, else unmarked (ok).
fn answered<T: Default>(outcomes: &[pb::Outcome]) -> Response<T> {
    use pb::OutcomeCode as Code;
    let code = |outcome: &pb::Outcome| Code::try_from(outcome.code).unwrap_or(Code::OutcomeUnspecified);
    let succeeded = |outcome: &pb::Outcome| {
        matches!(
            code(outcome),
            Code::Reserved | Code::Confirmed | Code::Released | Code::Ok
        )
    };
    let mut response = Response::new(T::default());
    let answered_as = if !outcomes.is_empty() && outcomes.iter().all(|o| code(o) == Code::RateLimited) {
        Some(RequestOutcome::rate_limited)
    } else if !outcomes.iter().any(succeeded) {
        Some(RequestOutcome::rejected)
    } else {
        None
    };
    if let Some(outcome) = answered_as {
        response.extensions_mut().insert(AnsweredAs(outcome));
    }
    response
}

fn epoch(route: &Option<pb::RouteEpoch>) -> u64 {
    route.as_ref().map(|r| r.epoch).unwrap_or(0)
}

#[tonic::async_trait]
impl Inventory for InventoryService {
    async fn reserve(&self, request: Request<pb::ReserveRequest>) -> Result<Response<pb::WriteReply>, Status> {
        let envelope = Envelope::of(&request)?;
        let request = request.into_inner();
        let (epoch, priority) = (epoch(&request.route), convert::priority("priority", request.priority));
        self.write_one(envelope, priority, convert::reserve(request), epoch)
            .await
    }

    async fn confirm(&self, request: Request<pb::ConfirmRequest>) -> Result<Response<pb::WriteReply>, Status> {
        let envelope = Envelope::of(&request)?;
        let request = request.into_inner();
        let (epoch, priority) = (epoch(&request.route), convert::priority("priority", request.priority));
        self.write_one(envelope, priority, convert::confirm(request), epoch)
            .await
    }

    async fn cancel(&self, request: Request<pb::CancelRequest>) -> Result<Response<pb::WriteReply>, Status> {
        let envelope = Envelope::of(&request)?;
        let request = request.into_inner();
        let (epoch, priority) = (epoch(&request.route), convert::priority("priority", request.priority));
        self.write_one(envelope, priority, convert::cancel(request), epoch)
            .await
    }

    async fn purchase(&self, request: Request<pb::PurchaseRequest>) -> Result<Response<pb::WriteReply>, Status> {
        let envelope = Envelope::of(&request)?;
        let request = request.into_inner();
        let (epoch, priority) = (epoch(&request.route), convert::priority("priority", request.priority));
        self.write_one(envelope, priority, convert::purchase(request), epoch)
            .await
    }

    async fn put_sku(&self, request: Request<pb::PutSkuRequest>) -> Result<Response<pb::WriteReply>, Status> {
        let envelope = Envelope::of(&request)?;
        let request = request.into_inner();
        let (epoch, priority) = (epoch(&request.route), convert::priority("priority", request.priority));
        self.write_one(envelope, priority, convert::put_sku(request), epoch)
            .await
    }

    async fn restock(&self, request: Request<pb::RestockRequest>) -> Result<Response<pb::WriteReply>, Status> {
        let envelope = Envelope::of(&request)?;
        let request = request.into_inner();
        let (epoch, priority) = (epoch(&request.route), convert::priority("priority", request.priority));
        self.write_one(envelope, priority, convert::restock(request), epoch)
            .await
    }

    async fn batch(&self, request: Request<pb::BatchRequest>) -> Result<Response<pb::BatchReply>, Status> {
        let envelope = Envelope::of(&request)?;
        let caller = request.extensions().get::<Caller>().cloned();
        let request = request.into_inner();
        check_batch_access(caller.as_ref(), &request)?;
        let priority = convert::batch_priority(&request).map_err(from_invalid)?;
        let epochs: Vec<u64> = request.ops.iter().map(convert::route_epoch).collect();
        let operations = convert::batch(request, self.node.config.server.batch_ops_max).map_err(from_invalid)?;
        let (outcomes, log_index) = self.write(envelope, priority, operations, &epochs).await?;
        let mut response = answered(&outcomes);
        *response.get_mut() = pb::BatchReply { outcomes, log_index };
        Ok(response)
    }

    async fn get_stock(&self, request: Request<pb::GetStockRequest>) -> Result<Response<pb::StockReply>, Status> {
        let envelope = Envelope::of(&request)?;
        let request = request.into_inner();
        crate::state_machine::limits::check_sku(&request.sku).map_err(|e| from_invalid(e.into()))?;
        let priority = convert::priority("priority", request.priority).map_err(from_invalid)?;
        let consistency = match pb::Consistency::try_from(request.consistency) {
            Ok(pb::Consistency::Linearizable) => ReadConsistency::Linearizable,
            Ok(pb::Consistency::Stale) => ReadConsistency::Stale {
                max_lag_entries: request.max_lag_entries,
            },
            Err(_) => {
                return Err(Status::invalid_argument(format!(
                    "invalid consistency: {}",
                    request.consistency
                )));
            }
        };
        let shard = self.node.shard_for_sku(&request.sku).map_err(from_node_error)?;
        let _permit = self
            .node
            .admission
            .admit(shard.config.id, priority, 1, envelope.deadline)
            .map_err(from_refused)?;
        let (counts, log_index) = match self.node.get_stock(&request.sku, consistency).await {
            Ok((counts, log_index)) => (Some(convert::counts(counts)), log_index),
            Err(NodeError::UnknownSku { .. }) => (None, 0),
            Err(error) => return Err(from_node_error(error)),
        };
        Ok(Response::new(pb::StockReply {
            sku: request.sku,
            counts,
            log_index,
            served_by: self.node.id,
        }))
    }

    type WatchStream = watch::WatchStream;

    async fn watch(&self, request: Request<pb::WatchRequest>) -> Result<Response<Self::WatchStream>, Status> {
        let connection = request.remote_addr();
        let request = request.into_inner();
        let range = watch::SkuRange {
            start: request.start.to_vec(),
            end: request.end.to_vec(),
        };
        if !range.end.is_empty() && range.end <= range.start {
            return Err(Status::invalid_argument(
                "invalid end: must be after start (or empty for unbounded)",
            ));
        }
        let limits = &self.node.config.server;
        let slot = self.watch_slots.take(
            connection,
            limits.watch_streams_max,
            limits.watch_streams_per_connection_max,
        )?;
        let options = watch::WatchOptions::new(request.from_index, request.progress_interval_ms);
        Ok(Response::new(watch::start(&self.node, range, options, slot)))
    }
}

/// A batch that puts SKUs on sale or restocks needs the access PutSku and Restock need alone:
/// the layer let the Batch RPC in on `Write` access without seeing its operations.
fn check_batch_access(caller: Option<&Caller>, request: &pb::BatchRequest) -> Result<(), Status> {
    use pb::write_op::Op;
    let administers = request
        .ops
        .iter()
        .any(|op| matches!(op.op, Some(Op::PutSku(_)) | Some(Op::Restock(_))));
    match caller {
        // No caller: no authentication layer runs (the simulator).
        Some(caller) if administers => {
            caller
                .check("/flashledger.v1.Inventory/Batch", Access::Admin)
                .map_err(|refusal| {
                    Status::permission_denied(format!("{refusal} (the batch puts SKUs on sale or restocks)"))
                })
        }
        _ => Ok(()),
    }
}
