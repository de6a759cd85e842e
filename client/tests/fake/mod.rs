//! An in-process fake cluster for the client's routing and retry tests: real tonic servers on
//! `127.0.0.1:0` implementing `Inventory` and `Cluster`, each answering from a script
//! (`Reply`) and recording every request it saw (`Seen`), sharing one shard map the test can
//! change between calls.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flashledger_client::{ClientOptions, convert};
use flashledger_proto::metadata;
use flashledger_proto::v1::cluster_server::{Cluster, ClusterServer};
use flashledger_proto::v1::inventory_server::{Inventory, InventoryServer};
use flashledger_proto::v1::write_op::Op;
use flashledger_proto::v1::*;
use tokio_stream::Stream;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Code, Request, Response, Status};

/// How a fake node answers one Inventory request.
#[derive(Debug, Clone)]
pub enum Reply {
    /// The natural answer: Reserved{expires_at_ms: qty}, Confirmed, Released, Ok, counts.
    Normal,
    /// A gRPC error, optionally with a not-leader hint `(leader id, leader addr)`.
    Fail {
        code: Code,
        message: String,
        leader: Option<(u64, String)>,
    },
    /// Never answer (until the client gives up).
    Hang,
    /// UNAVAILABLE without the node's not-applied mark, as a connection lost after the request
    /// was sent looks to the client.
    Dropped,
    /// Answer every write with this wire outcome.
    Outcome(Outcome),
}

impl Reply {
    pub fn fail(code: Code, message: &str) -> Reply {
        Reply::Fail {
            code,
            message: message.to_string(),
            leader: None,
        }
    }
}

/// One request a fake node received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub method: &'static str,
    pub skus: Vec<Vec<u8>>,
    /// Empty for requests without one.
    pub order_id: String,
    /// The route epoch the client stamped (0 when none).
    pub epoch: u64,
    /// The first-attempt time the client stamped (0 for writes without an order id).
    pub first_attempt_ms: i64,
    /// The request's `x-client-id` and `grpc-timeout` metadata, and its priority field (a
    /// batch's own).
    pub client_id: Option<String>,
    pub grpc_timeout: Option<String>,
    pub priority: i32,
}

/// The metadata of a request the fake records.
#[derive(Debug, Clone, Default)]
struct Headers {
    client_id: Option<String>,
    grpc_timeout: Option<String>,
}

fn headers<T>(request: &Request<T>) -> Headers {
    let get = |key: &str| {
        request
            .metadata()
            .get(key)
            .and_then(|value| value.to_str().ok())
            .map(str::to_string)
    };
    Headers {
        client_id: get(metadata::CLIENT_ID),
        grpc_timeout: get("grpc-timeout"),
    }
}

/// One fake node's state, shared by its two services.
pub struct FakeNode {
    pub id: u64,
    pub addr: String,
    /// Replies to use first, one per request.
    script: Mutex<VecDeque<Reply>>,
    /// The reply once the script is used up.
    otherwise: Mutex<Reply>,
    seen: Mutex<Vec<Seen>>,
    /// Shared by every node of the cluster.
    map: Arc<Mutex<ShardMapReply>>,
    /// Every ShardMap call this node answered.
    map_calls: Mutex<u32>,
}

impl FakeNode {
    /// Queues replies for the next requests.
    pub fn script(&self, replies: impl IntoIterator<Item = Reply>) {
        self.script.lock().unwrap().extend(replies);
    }

    /// Sets the reply used once the script is empty.
    pub fn otherwise(&self, reply: Reply) {
        *self.otherwise.lock().unwrap() = reply;
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    pub fn map_calls(&self) -> u32 {
        *self.map_calls.lock().unwrap()
    }

    fn next_reply(&self) -> Reply {
        let scripted = self.script.lock().unwrap().pop_front();
        scripted.unwrap_or_else(|| self.otherwise.lock().unwrap().clone())
    }

    /// Records the request, then answers `Ok(None)` for the normal reply, `Ok(Some(outcome))`
    /// for a forced outcome, or the scripted error.
    async fn decide(&self, seen: Seen) -> Result<Option<Outcome>, Status> {
        self.seen.lock().unwrap().push(seen);
        match self.next_reply() {
            Reply::Normal => Ok(None),
            Reply::Outcome(outcome) => Ok(Some(outcome)),
            Reply::Hang => {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                Err(Status::internal("hang ended"))
            }
            Reply::Dropped => Err(Status::unavailable("transport error: connection reset")),
            Reply::Fail { code, message, leader } => {
                let mut status = Status::new(code, message);
                // A real node marks every UNAVAILABLE it answers itself; `Reply::Dropped`
                // stands for a transport failure, which carries no mark.
                if code == tonic::Code::Unavailable || code == tonic::Code::ResourceExhausted {
                    status
                        .metadata_mut()
                        .insert(metadata::NOT_APPLIED, "1".parse().unwrap());
                }
                if code == tonic::Code::ResourceExhausted {
                    status
                        .metadata_mut()
                        .insert(metadata::RETRY_AFTER_MS, "25".parse().unwrap());
                }
                if let Some((id, addr)) = leader {
                    let metadata = status.metadata_mut();
                    metadata.insert(metadata::LEADER_ID, id.to_string().parse().unwrap());
                    metadata.insert(metadata::LEADER_ADDR, addr.parse().unwrap());
                }
                Err(status)
            }
        }
    }

    async fn write(&self, method: &'static str, headers: Headers, op: Op) -> Result<Response<WriteReply>, Status> {
        let (sku, order_id, epoch) = describe(&op);
        let seen = Seen {
            method,
            skus: vec![sku],
            order_id,
            epoch,
            first_attempt_ms: first_attempt_of(&op),
            client_id: headers.client_id,
            grpc_timeout: headers.grpc_timeout,
            priority: priority_of(&op),
        };
        let outcome = match self.decide(seen).await? {
            Some(outcome) => outcome,
            None => normal_outcome(&op),
        };
        Ok(Response::new(WriteReply {
            outcome: Some(outcome),
            log_index: 1,
        }))
    }
}

/// (sku, order_id, route epoch) of a write.
fn describe(op: &Op) -> (Vec<u8>, String, u64) {
    let epoch = |route: &Option<RouteEpoch>| route.map(|r| r.epoch).unwrap_or(0);
    match op {
        Op::Reserve(r) => (r.sku.to_vec(), text(&r.order_id), epoch(&r.route)),
        Op::Confirm(r) => (r.sku.to_vec(), text(&r.order_id), epoch(&r.route)),
        Op::Cancel(r) => (r.sku.to_vec(), text(&r.order_id), epoch(&r.route)),
        Op::Purchase(r) => (r.sku.to_vec(), text(&r.order_id), epoch(&r.route)),
        Op::PutSku(r) => (r.sku.to_vec(), String::new(), epoch(&r.route)),
        Op::Restock(r) => (r.sku.to_vec(), String::new(), epoch(&r.route)),
    }
}

/// A request's text field (the wire types hold it as bytes; the client sends only UTF-8).
fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn priority_of(op: &Op) -> i32 {
    match op {
        Op::Reserve(r) => r.priority,
        Op::Confirm(r) => r.priority,
        Op::Cancel(r) => r.priority,
        Op::Purchase(r) => r.priority,
        Op::PutSku(r) => r.priority,
        Op::Restock(r) => r.priority,
    }
}

fn first_attempt_of(op: &Op) -> i64 {
    match op {
        Op::Reserve(r) => r.first_attempt_ms,
        Op::Confirm(r) => r.first_attempt_ms,
        Op::Cancel(r) => r.first_attempt_ms,
        Op::Purchase(r) => r.first_attempt_ms,
        Op::PutSku(_) | Op::Restock(_) => 0,
    }
}

fn normal_outcome(op: &Op) -> Outcome {
    use flashledger_client::Outcome as Domain;
    let outcome = match op {
        Op::Reserve(r) => Domain::Reserved { expires_at_ms: r.qty },
        Op::Confirm(_) | Op::Purchase(_) => Domain::Confirmed,
        Op::Cancel(_) => Domain::Released,
        Op::PutSku(_) | Op::Restock(_) => Domain::Ok,
    };
    convert::outcome_to_wire(&outcome)
}

type ChangeStream = Pin<Box<dyn Stream<Item = Result<StockChange, Status>> + Send>>;

#[tonic::async_trait]
impl Inventory for FakeNode {
    async fn reserve(&self, request: Request<ReserveRequest>) -> Result<Response<WriteReply>, Status> {
        self.write("reserve", headers(&request), Op::Reserve(request.into_inner()))
            .await
    }

    async fn confirm(&self, request: Request<ConfirmRequest>) -> Result<Response<WriteReply>, Status> {
        self.write("confirm", headers(&request), Op::Confirm(request.into_inner()))
            .await
    }

    async fn cancel(&self, request: Request<CancelRequest>) -> Result<Response<WriteReply>, Status> {
        self.write("cancel", headers(&request), Op::Cancel(request.into_inner()))
            .await
    }

    async fn purchase(&self, request: Request<PurchaseRequest>) -> Result<Response<WriteReply>, Status> {
        self.write("purchase", headers(&request), Op::Purchase(request.into_inner()))
            .await
    }

    async fn put_sku(&self, request: Request<PutSkuRequest>) -> Result<Response<WriteReply>, Status> {
        self.write("put_sku", headers(&request), Op::PutSku(request.into_inner()))
            .await
    }

    async fn restock(&self, request: Request<RestockRequest>) -> Result<Response<WriteReply>, Status> {
        self.write("restock", headers(&request), Op::Restock(request.into_inner()))
            .await
    }

    async fn batch(&self, request: Request<BatchRequest>) -> Result<Response<BatchReply>, Status> {
        let headers = headers(&request);
        let request = request.into_inner();
        let priority = request.priority;
        let ops: Vec<Op> = request
            .ops
            .into_iter()
            .map(|op| op.op.ok_or_else(|| Status::invalid_argument("ops: empty op")))
            .collect::<Result<_, _>>()?;
        let described: Vec<_> = ops.iter().map(describe).collect();
        let seen = Seen {
            method: "batch",
            skus: described.iter().map(|(sku, _, _)| sku.clone()).collect(),
            order_id: described.first().map(|(_, id, _)| id.clone()).unwrap_or_default(),
            epoch: described.first().map(|(_, _, epoch)| *epoch).unwrap_or(0),
            first_attempt_ms: ops.first().map_or(0, first_attempt_of),
            client_id: headers.client_id,
            grpc_timeout: headers.grpc_timeout,
            priority,
        };
        let forced = self.decide(seen).await?;
        let outcomes = ops
            .iter()
            .map(|op| forced.clone().unwrap_or_else(|| normal_outcome(op)))
            .collect();
        Ok(Response::new(BatchReply { outcomes, log_index: 1 }))
    }

    async fn get_stock(&self, request: Request<GetStockRequest>) -> Result<Response<StockReply>, Status> {
        let headers = headers(&request);
        let request = request.into_inner();
        let seen = Seen {
            method: "get_stock",
            skus: vec![request.sku.to_vec()],
            order_id: String::new(),
            epoch: 0,
            first_attempt_ms: 0,
            client_id: headers.client_id,
            grpc_timeout: headers.grpc_timeout,
            priority: request.priority,
        };
        self.decide(seen).await?;
        Ok(Response::new(StockReply {
            sku: request.sku,
            counts: Some(StockCounts {
                total: 10,
                available: 7,
                reserved: 2,
                sold: 1,
            }),
            log_index: 5,
            served_by: self.id,
        }))
    }

    type WatchStream = ChangeStream;

    async fn watch(&self, request: Request<WatchRequest>) -> Result<Response<ChangeStream>, Status> {
        let request = request.into_inner();
        let seen = Seen {
            method: "watch",
            skus: vec![request.start.to_vec()],
            order_id: String::new(),
            epoch: 0,
            first_attempt_ms: 0,
            client_id: None,
            grpc_timeout: None,
            priority: 0,
        };
        self.decide(seen).await?;
        let from = request.from_index;
        let changes = (1..=2).map(move |step| {
            Ok(StockChange {
                sku: request.start.clone(),
                counts: Some(StockCounts {
                    total: 10,
                    available: 10 - step as i64,
                    reserved: step as i64,
                    sold: 0,
                }),
                log_index: from + step,
                ..Default::default()
            })
        });
        Ok(Response::new(Box::pin(tokio_stream::iter(changes))))
    }
}

#[tonic::async_trait]
impl Cluster for FakeNode {
    async fn shard_map(&self, _: Request<ShardMapRequest>) -> Result<Response<ShardMapReply>, Status> {
        *self.map_calls.lock().unwrap() += 1;
        Ok(Response::new(self.map.lock().unwrap().clone()))
    }

    async fn status(&self, _: Request<StatusRequest>) -> Result<Response<StatusReply>, Status> {
        Err(Status::unimplemented("fake"))
    }

    type BackupStream = Pin<Box<dyn Stream<Item = Result<BackupChunk, Status>> + Send>>;

    async fn backup(&self, _: Request<BackupRequest>) -> Result<Response<Self::BackupStream>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn reshape(&self, _: Request<ReshapeRequest>) -> Result<Response<ReshapeReply>, Status> {
        Err(Status::unimplemented("fake"))
    }
}

/// A set of fake nodes sharing one shard map. Node ids are 1..=n.
pub struct FakeCluster {
    pub nodes: Vec<Arc<FakeNode>>,
    pub map: Arc<Mutex<ShardMapReply>>,
}

impl FakeCluster {
    /// Starts `count` nodes; the map names them all, with no shards yet.
    pub async fn start(count: u64) -> anyhow::Result<FakeCluster> {
        let map = Arc::new(Mutex::new(ShardMapReply::default()));
        let mut nodes = Vec::new();
        for id in 1..=count {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            let addr = listener.local_addr()?.to_string();
            let node = Arc::new(FakeNode {
                id,
                addr: addr.clone(),
                script: Mutex::new(VecDeque::new()),
                otherwise: Mutex::new(Reply::Normal),
                seen: Mutex::new(Vec::new()),
                map: map.clone(),
                map_calls: Mutex::new(0),
            });
            let server = tonic::transport::Server::builder()
                .add_service(InventoryServer::from_arc(node.clone()))
                .add_service(ClusterServer::from_arc(node.clone()))
                .serve_with_incoming(TcpListenerStream::new(listener));
            tokio::spawn(server);
            map.lock().unwrap().nodes.push(NodeInfo { id, addr });
            nodes.push(node);
        }
        Ok(FakeCluster { nodes, map })
    }

    /// Node `id` (1-based).
    pub fn node(&self, id: u64) -> &FakeNode {
        &self.nodes[(id - 1) as usize]
    }

    pub fn addrs(&self) -> Vec<String> {
        self.nodes.iter().map(|node| node.addr.clone()).collect()
    }

    /// Replaces the shards of the map every node serves.
    pub fn set_shards(&self, shards: Vec<ShardInfo>) {
        self.map.lock().unwrap().shards = shards;
    }
}

/// A shard for the map.
pub fn shard(shard_id: u64, start: &[u8], end: &[u8], epoch: u64, replicas: &[u64], leader: u64) -> ShardInfo {
    ShardInfo {
        shard_id,
        start: start.to_vec().into(),
        end: end.to_vec().into(),
        epoch,
        replicas: replicas.to_vec(),
        leader,
        conf_ver: 1,
        learners: Vec::new(),
    }
}

/// An address nothing listens on (bound, then released).
pub async fn dead_addr() -> anyhow::Result<String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    Ok(listener.local_addr()?.to_string())
}

/// Options with short timeouts so failing paths finish fast.
pub fn fast_options() -> ClientOptions {
    ClientOptions {
        request_timeout_ms: 5_000,
        attempt_timeout_ms: 300,
        connect_timeout_ms: 300,
        retries_max: 5,
        backoff_ms_initial: 1,
        backoff_ms_max: 20,
        ..ClientOptions::default()
    }
}

/// A `grpc-timeout` value in whole milliseconds (its unit is the client's choice).
pub fn grpc_timeout_ms(value: &str) -> u64 {
    let (digits, unit) = value.split_at(value.len() - 1);
    let amount: u64 = digits.parse().expect("digits");
    match unit {
        "H" => amount * 3_600_000,
        "M" => amount * 60_000,
        "S" => amount * 1_000,
        "m" => amount,
        "u" => amount / 1_000,
        "n" => amount / 1_000_000,
        other => panic!("unit {other}"),
    }
}
