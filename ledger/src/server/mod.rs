//! The node's gRPC server: `Inventory` and `Cluster` for clients and operators, `Raft` for
//! peers, plus the standard health and reflection services (so `grpcurl` works).
//!
//! `serve` takes an already-bound listener and a shutdown future (mini-redis style), which makes
//! it testable on port 0 and lets the binary shut down gracefully on SIGTERM. Message sizes,
//! streams per connection and HTTP/2 resets are bounded by the `[server]` config, the work a
//! node takes on by `[admission]` (asked by the services, crate::admission). Outside an insecure
//! cluster every connection is TLS and every request passes `security::layer` first (who, and
//! may they), after its arrival is stamped for its deadline.

pub mod cluster;
#[cfg(not(madsim))]
pub mod connections;
pub mod convert;
pub mod inventory;
pub mod raft_service;
#[cfg(not(madsim))]
pub mod request_metrics;
pub mod status;
pub mod watch;

use std::future::Future;
use std::sync::Arc;

use flashledger_proto::v1::cluster_server::ClusterServer;
use flashledger_proto::v1::inventory_server::InventoryServer;
use flashledger_proto::v1::raft_server::RaftServer;

use crate::node::Node;
#[cfg(not(madsim))]
use crate::raft::network::RAFT_MESSAGE_BYTES_MAX;

/// Serves every service of `node` on `listener` until `shutdown` completes.
#[cfg(not(madsim))]
pub async fn serve(
    node: Arc<Node>,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    let limits = &node.config.server;
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<InventoryServer<inventory::InventoryService>>()
        .await;
    health_reporter
        .set_serving::<ClusterServer<cluster::ClusterService>>()
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(flashledger_proto::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| {
            tracing::error!(error = %e, "reflection service");
            e
        });
    let (inventory, cluster, raft) = services(&node);
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = &node.tls {
        builder = builder.tls_config(tls.server())?;
    }
    let tokens = node
        .tokens
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .take();
    let authenticate = crate::security::layer::Authenticate::new(
        node.config.security.insecure,
        tokens,
        node.config.nodes.iter().map(|n| n.id).collect(),
    );
    let idle_timeout = std::time::Duration::from_millis(limits.connection_idle_timeout_ms);
    // No `concurrency_limit_per_connection`: it queues a connection's calls past the limit
    // (before tonic starts their deadline), where admission answers at once. A connection's
    // calls are bounded by its HTTP/2 streams, every node's and shard's by admission.
    let mut router = builder
        .layer(request_metrics::RecordRequests::new(
            node.instruments.request_duration.clone(),
        ))
        .layer(crate::admission::arrival::StampArrival)
        .layer(authenticate)
        .http2_keepalive_interval(Some(idle_timeout / 3))
        .http2_keepalive_timeout(Some(idle_timeout / 3))
        .http2_max_header_list_size(u32::try_from(limits.header_bytes_max).unwrap_or(u32::MAX))
        .max_concurrent_streams(Some(limits.inflight_requests_max as u32))
        .http2_max_pending_accept_reset_streams(Some(limits.pending_reset_streams_max))
        .http2_max_local_error_reset_streams(Some(limits.local_reset_streams_max))
        .add_service(health_service)
        .add_service(inventory)
        .add_service(cluster)
        .add_service(raft);
    if let Ok(reflection) = reflection {
        router = router.add_service(reflection);
    }
    let incoming = connections::bounded(listener, limits.connections_per_address_max, idle_timeout);
    router
        .serve_with_incoming_shutdown(incoming, close_streams_on(node, shutdown))
        .await
}

/// Serves every service of `node` on `addr` (the simulator's network) until `shutdown`.
#[cfg(madsim)]
pub async fn serve(
    node: Arc<Node>,
    addr: std::net::SocketAddr,
    shutdown: impl Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    let node_for_shutdown = node.clone();
    tonic::transport::Server::builder()
        .add_service(InventoryServer::new(inventory::InventoryService::new(node.clone())))
        .add_service(ClusterServer::new(cluster::ClusterService::new(node.clone())))
        .add_service(RaftServer::new(raft_service::RaftService::new(node)))
        .serve_with_shutdown(addr, close_streams_on(node_for_shutdown, shutdown))
        .await
}

/// Completes with `shutdown`, after telling the node's Watch streams to end: a graceful
/// shutdown waits for every open stream, and a Watch stream would otherwise never end.
async fn close_streams_on(node: Arc<Node>, shutdown: impl Future<Output = ()>) {
    shutdown.await;
    node.begin_shutdown();
}

#[cfg(not(madsim))]
type Services = (
    InventoryServer<inventory::InventoryService>,
    ClusterServer<cluster::ClusterService>,
    RaftServer<raft_service::RaftService>,
);

#[cfg(not(madsim))]
fn services(node: &Arc<Node>) -> Services {
    let message_bytes_max = node.config.server.message_bytes_max;
    (
        InventoryServer::new(inventory::InventoryService::new(node.clone()))
            .max_decoding_message_size(message_bytes_max)
            .max_encoding_message_size(message_bytes_max),
        ClusterServer::new(cluster::ClusterService::new(node.clone()))
            .max_decoding_message_size(message_bytes_max)
            .max_encoding_message_size(message_bytes_max),
        RaftServer::new(raft_service::RaftService::new(node.clone()))
            .max_decoding_message_size(RAFT_MESSAGE_BYTES_MAX)
            .max_encoding_message_size(RAFT_MESSAGE_BYTES_MAX),
    )
}
