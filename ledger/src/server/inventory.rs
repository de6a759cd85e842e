//! The client-facing `Inventory` gRPC service: validates each request (convert), hands it to
//! the node as one log entry, and turns the outcomes back into wire replies.

use std::sync::Arc;

use flashledger_proto::v1 as pb;
use flashledger_proto::v1::inventory_server::Inventory;
use tonic::Request;
use tonic::Response;
use tonic::Status;

use crate::node::Node;
use crate::node::NodeError;
use crate::node::ReadConsistency;
use crate::security::Access;
use crate::security::Caller;
use crate::server::convert;
use crate::server::status::from_invalid;
use crate::server::status::from_node_error;
use crate::server::watch;
use crate::state_machine::command::Operation;

pub struct InventoryService {
    node: Arc<Node>,
    watch_slots: Arc<watch::WatchSlots>,
}

impl InventoryService {
    pub fn new(node: Arc<Node>) -> Self {
        InventoryService {
            node,
            watch_slots: Arc::default(),
        }
    }

    async fn write_one(
        &self,
        operation: Result<Operation, convert::InvalidRequest>,
        epoch: u64,
    ) -> Result<Response<pb::WriteReply>, Status> {
        let operation = operation.map_err(from_invalid)?;
        let (outcomes, log_index) = self
            .node
            .write(vec![operation], &[epoch])
            .await
            .map_err(from_node_error)?;
        let outcome = outcomes.first().map(convert::outcome);
        Ok(Response::new(pb::WriteReply { outcome, log_index }))
    }
}

fn epoch(route: &Option<pb::RouteEpoch>) -> u64 {
    route.as_ref().map(|r| r.epoch).unwrap_or(0)
}

#[tonic::async_trait]
impl Inventory for InventoryService {
    async fn reserve(&self, request: Request<pb::ReserveRequest>) -> Result<Response<pb::WriteReply>, Status> {
        let request = request.into_inner();
        let epoch = epoch(&request.route);
        self.write_one(convert::reserve(request), epoch).await
    }

    async fn confirm(&self, request: Request<pb::ConfirmRequest>) -> Result<Response<pb::WriteReply>, Status> {
        let request = request.into_inner();
        let epoch = epoch(&request.route);
        self.write_one(convert::confirm(request), epoch).await
    }

    async fn cancel(&self, request: Request<pb::CancelRequest>) -> Result<Response<pb::WriteReply>, Status> {
        let request = request.into_inner();
        let epoch = epoch(&request.route);
        self.write_one(convert::cancel(request), epoch).await
    }

    async fn purchase(&self, request: Request<pb::PurchaseRequest>) -> Result<Response<pb::WriteReply>, Status> {
        let request = request.into_inner();
        let epoch = epoch(&request.route);
        self.write_one(convert::purchase(request), epoch).await
    }

    async fn put_sku(&self, request: Request<pb::PutSkuRequest>) -> Result<Response<pb::WriteReply>, Status> {
        let request = request.into_inner();
        let epoch = epoch(&request.route);
        self.write_one(convert::put_sku(request), epoch).await
    }

    async fn restock(&self, request: Request<pb::RestockRequest>) -> Result<Response<pb::WriteReply>, Status> {
        let request = request.into_inner();
        let epoch = epoch(&request.route);
        self.write_one(convert::restock(request), epoch).await
    }

    async fn batch(&self, request: Request<pb::BatchRequest>) -> Result<Response<pb::BatchReply>, Status> {
        let caller = request.extensions().get::<Caller>().cloned();
        let request = request.into_inner();
        check_batch_access(caller.as_ref(), &request)?;
        let epochs: Vec<u64> = request.ops.iter().map(convert::route_epoch).collect();
        let operations = convert::batch(request, self.node.config.server.batch_ops_max).map_err(from_invalid)?;
        let (outcomes, log_index) = self.node.write(operations, &epochs).await.map_err(from_node_error)?;
        Ok(Response::new(pb::BatchReply {
            outcomes: outcomes.iter().map(convert::outcome).collect(),
            log_index,
        }))
    }

    async fn get_stock(&self, request: Request<pb::GetStockRequest>) -> Result<Response<pb::StockReply>, Status> {
        let request = request.into_inner();
        crate::state_machine::limits::check_sku(&request.sku).map_err(|e| from_invalid(e.into()))?;
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
        Ok(Response::new(watch::start(&self.node, range, request.from_index, slot)))
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
