//! The admin HTTP endpoint of a real node (`admin_addr` in cluster.toml): `GET /metrics`
//! (Prometheus text), `GET /healthz` (200 `ok` while the process serves) and `GET /readyz`
//! (200 when every hosted shard can serve, else 503 with one reason per shard).
//!
//! Plain HTTP/1.1 without authentication: it serves no secrets and changes nothing, and
//! operators bind it to a private interface (docs/security.md). It is bounded like the gRPC
//! port: at most [`CONNECTIONS_MAX`] connections (more are closed at once), request heads of at
//! most [`REQUEST_HEAD_BYTES_MAX`] (hyper answers 431 past it, 400 to anything that is not HTTP),
//! a head must arrive within [`HEAD_TIMEOUT`] and a connection lives at most
//! [`CONNECTION_LIFETIME_MAX`]. Anything but GET or HEAD is 405, any other path 404.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper::Method;
use hyper::Request;
use hyper::Response;
use hyper::StatusCode;
use hyper::body::Incoming;
use hyper::header;
use hyper_util::rt::TokioIo;
use hyper_util::rt::TokioTimer;
use tokio::net::TcpListener;

use crate::metrics::readiness;
use crate::metrics::readiness::Readiness;
use crate::metrics::scrape;
use crate::node::Node;
use crate::node::StatusDepth;

/// Open admin connections; a scraper and a few probes need a handful.
pub const CONNECTIONS_MAX: usize = 64;
/// hyper's smallest read buffer: a request head larger than this is refused with 431.
pub const REQUEST_HEAD_BYTES_MAX: usize = 8 * 1024;
/// How long a client may take to send a request head (including an idle kept-alive connection).
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest a connection is kept, however busy.
pub const CONNECTION_LIFETIME_MAX: Duration = Duration::from_secs(120);

/// Serves `node`'s admin endpoint on `listener` until `shutdown` completes.
pub async fn serve(node: Arc<Node>, listener: TcpListener, shutdown: impl Future<Output = ()>) {
    let connections = Arc::new(tokio::sync::Semaphore::new(CONNECTIONS_MAX));
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => return,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _peer)) => stream,
            Err(error) => {
                // Out of descriptors, most likely: wait instead of spinning on the error.
                tracing::warn!(%error, "admin endpoint: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            tracing::debug!("admin endpoint: {CONNECTIONS_MAX} connections open; closing a new one");
            continue;
        };
        let node = node.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let response = respond(&node, &request);
                async move { Ok::<_, Infallible>(response) }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEAD_TIMEOUT)
                .max_buf_size(REQUEST_HEAD_BYTES_MAX)
                .serve_connection(TokioIo::new(stream), service);
            if let Ok(Err(error)) = tokio::time::timeout(CONNECTION_LIFETIME_MAX, connection).await {
                tracing::debug!(%error, "admin endpoint: connection ended");
            }
            drop(permit);
        });
    }
}

/// The answer to one request (its body is never read: no route takes one).
fn respond(node: &Arc<Node>, request: &Request<Incoming>) -> Response<String> {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        let mut response = plain(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD are served\n".into());
        response
            .headers_mut()
            .insert(header::ALLOW, header::HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    match request.uri().path() {
        "/metrics" => {
            let mut response = Response::new(scrape::render(node));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static(scrape::CONTENT_TYPE),
            );
            response
        }
        "/healthz" => plain(StatusCode::OK, "ok\n".into()),
        "/readyz" => {
            let config = &node.config;
            let quorum_ack_ms_max = config.raft.election_timeout_ms_max.saturating_mul(2);
            match readiness::judge(
                &node.status_at(StatusDepth::Cheap),
                config.server.ready_apply_lag_entries_max,
                quorum_ack_ms_max,
            ) {
                Readiness::Ready => plain(StatusCode::OK, "ready\n".into()),
                Readiness::NotReady(reasons) => plain(StatusCode::SERVICE_UNAVAILABLE, reasons.join("\n") + "\n"),
            }
        }
        _ => plain(
            StatusCode::NOT_FOUND,
            "not found: the admin endpoint serves /metrics, /healthz and /readyz\n".into(),
        ),
    }
}

fn plain(status: StatusCode, body: String) -> Response<String> {
    let mut response = Response::new(body);
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
