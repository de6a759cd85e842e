//! `ledger serve`: loads the config, starts the node, serves gRPC and the admin HTTP endpoint
//! (`admin_addr`: /metrics, /healthz, /readyz) until SIGTERM or Ctrl-C, then shuts down
//! gracefully (stops accepting, stops every shard's Raft node).

use std::path::Path;

use anyhow::Context;
use ledger::config::ClusterConfig;
use ledger::node::Node;
use ledger::node::NodeOptions;
use ledger::node::storage::Storage;

/// How long a stopping node waits for in-flight requests to finish.
const SHUTDOWN_DRAIN_MAX: std::time::Duration = std::time::Duration::from_secs(10);

pub async fn run(config_path: &Path, node_id: u64) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=warn")),
        )
        .init();
    let config = ClusterConfig::load(config_path)?;
    let node_config = config
        .node(node_id)
        .with_context(|| format!("node {node_id} is not in {}", config_path.display()))?;
    let addr = node_config.addr.clone();
    let admin_addr = node_config.admin_addr()?;
    let listener = tokio::net::TcpListener::bind(&addr)
        .await
        .with_context(|| format!("binding {addr}"))?;
    let admin_listener = tokio::net::TcpListener::bind(&admin_addr)
        .await
        .with_context(|| format!("binding the admin endpoint (admin_addr) {admin_addr}"))?;
    let node = Node::start(NodeOptions {
        node_id,
        config,
        storage: Storage::Disk,
    })
    .await?;
    tracing::info!(node = node_id, %addr, %admin_addr, "serving");
    let (signalled, signal_seen) = tokio::sync::oneshot::channel::<()>();
    let (admin_stop, admin_stopped) = tokio::sync::oneshot::channel::<()>();
    let shutdown = async {
        shutdown_signal().await;
        let _ = signalled.send(());
        let _ = admin_stop.send(());
    };
    // /readyz and /metrics answer while gRPC drains, and stop with it.
    let admin = tokio::spawn(ledger::metrics::endpoint::serve(node.clone(), admin_listener, async {
        let _ = admin_stopped.await;
    }));
    let server = ledger::server::serve(node.clone(), listener, shutdown);
    // A graceful shutdown waits for in-flight requests; bound that wait so a stuck client cannot
    // keep a stopping node alive.
    let drain_deadline = async {
        if signal_seen.await.is_ok() {
            tokio::time::sleep(SHUTDOWN_DRAIN_MAX).await;
        } else {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        served = server => served?,
        () = drain_deadline => tracing::warn!(?SHUTDOWN_DRAIN_MAX, "requests still in flight; closing anyway"),
    }
    tracing::info!(node = node_id, "shutting down");
    admin.abort();
    node.shutdown().await;
    Ok(())
}

/// Completes on SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::warn!(%error, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = terminate => {},
    }
}
