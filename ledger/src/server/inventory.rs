//! The client-facing `Inventory` gRPC service: validates each request (convert), hands it to
//! the node as one log entry, and turns the outcomes back into wire replies.

use std::pin::Pin;
use std::sync::Arc;

use flashledger_proto::v1 as pb;
use flashledger_proto::v1::inventory_server::Inventory;
use futures::Stream;
use tokio::sync::broadcast::error::RecvError;
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
use crate::state_machine::command::Operation;

/// How many stock changes a Watch stream may queue for a slow reader before it is closed.
pub const WATCH_QUEUE_CHANGES_MAX: usize = 1024;

pub struct InventoryService {
    node: Arc<Node>,
}

impl InventoryService {
    pub fn new(node: Arc<Node>) -> Self {
        InventoryService { node }
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

type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::StockChange, Status>> + Send>>;

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

    type WatchStream = WatchStream;

    async fn watch(&self, request: Request<pb::WatchRequest>) -> Result<Response<Self::WatchStream>, Status> {
        let request = request.into_inner();
        let start = request.start.to_vec();
        let end = request.end.to_vec();
        if !end.is_empty() && end <= start {
            return Err(Status::invalid_argument(
                "invalid end: must be after start (or empty for unbounded)",
            ));
        }
        let in_range = move |sku: &[u8]| sku >= start.as_slice() && (end.is_empty() || sku < end.as_slice());
        let (sender, receiver) = tokio::sync::mpsc::channel(WATCH_QUEUE_CHANGES_MAX);
        for shard in self.node.shards.values() {
            // Subscribe before reading the current state so no change falls in between.
            let live = shard.view.subscribe();
            let current: Vec<pb::StockChange> = shard.view.read(|image| {
                image
                    .ledger
                    .skus
                    .iter()
                    .filter(|(sku, record)| in_range(sku) && record.changed_at_index > request.from_index)
                    .filter_map(|(sku, _)| {
                        image.ledger.stock(sku).map(|counts| pb::StockChange {
                            sku: sku.clone().into(),
                            counts: Some(convert::counts(counts)),
                            log_index: image.meta.applied.map(|id| id.index).unwrap_or(0),
                        })
                    })
                    .collect()
            });
            let sender = sender.clone();
            let in_range = in_range.clone();
            let node = self.node.clone();
            tokio::spawn(async move {
                tokio::select! {
                    () = node.closing() => {}
                    () = forward_changes(current, live, in_range, sender) => {}
                }
            });
        }
        let stream = futures::stream::unfold(receiver, |mut receiver| async move {
            receiver.recv().await.map(|item| (item, receiver))
        });
        Ok(Response::new(Box::pin(stream)))
    }
}

/// Sends `current`, then every live change in range, until the watcher goes away or lags.
async fn forward_changes(
    current: Vec<pb::StockChange>,
    mut live: tokio::sync::broadcast::Receiver<crate::raft::state_store::StockChange>,
    in_range: impl Fn(&[u8]) -> bool,
    sender: tokio::sync::mpsc::Sender<Result<pb::StockChange, Status>>,
) {
    for change in current {
        if sender.send(Ok(change)).await.is_err() {
            return;
        }
    }
    loop {
        let change = match live.recv().await {
            Ok(change) => change,
            Err(RecvError::Lagged(missed)) => {
                let status = Status::resource_exhausted(format!(
                    "watcher fell {missed} changes behind; resume from the last log_index seen"
                ));
                let _ = sender.send(Err(status)).await;
                return;
            }
            Err(RecvError::Closed) => return,
        };
        if !in_range(&change.sku) {
            continue;
        }
        let wire = pb::StockChange {
            sku: change.sku.into(),
            counts: Some(convert::counts(change.counts)),
            log_index: change.log_index,
        };
        if sender.send(Ok(wire)).await.is_err() {
            return;
        }
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
