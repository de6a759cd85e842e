//! The admin endpoint of real `ledger serve` processes: /metrics scraped on every node again
//! and again while buyers purchase (counters move, every scrape parses, nothing panics),
//! replicas' applied indexes agree afterwards, /healthz and /readyz answer, a node whose shards
//! lost their quorum says it is not ready and why, and garbage, oversized or wrong requests get
//! an HTTP error while the node keeps serving.

#![cfg(not(madsim))]

mod metrics_support;
mod process_support;

use std::io::Read;
use std::io::Write;
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::time::Duration;
use std::time::Instant;

use flashledger_client::Client;
use flashledger_client::ClientOptions;
use flashledger_client::Outcome;
use flashledger_client::SaleRules;
use metrics_support::Sample;
use process_support::ProcessCluster;
use process_support::client_runtime;

/// Sends `request` as is to `addr` and reads the answer until the server closes: (status code,
/// body). Status 0 when the server closed without answering.
fn exchange(addr: &str, request: &[u8]) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    stream.set_read_timeout(Some(Duration::from_secs(20))).expect("timeout");
    // The server may answer (and close) before it has read all of an oversized request.
    let _ = stream.write_all(request);
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let status = answer
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or_default();
    (status, body)
}

fn get(addr: &str, path: &str) -> (u16, String) {
    exchange(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: ledger\r\nConnection: close\r\n\r\n").as_bytes(),
    )
}

fn scrape(addr: &str) -> Vec<Sample> {
    let (status, body) = get(addr, "/metrics");
    assert_eq!(status, 200, "{addr}/metrics: {body}");
    assert!(body.ends_with("# EOF\n"), "{addr}: a cut-off scrape: {body}");
    metrics_support::parse(&body)
}

/// What one scrape says of the load: operations committed (all shards), fdatasyncs, requests.
fn progress(samples: &[Sample]) -> [f64; 3] {
    [
        metrics_support::sum(samples, "flashledger_shard_ops_committed_total"),
        metrics_support::sum(samples, "flashledger_wal_fdatasync_duration_seconds_count"),
        metrics_support::sum(samples, "flashledger_request_duration_seconds_count"),
    ]
}

/// Polls `path` on `addr` until it answers `status`, for at most 30 s; the last body.
fn wait_for_status(addr: &str, path: &str, status: u16) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (got, body) = get(addr, path);
        if got == status {
            return body;
        }
        assert!(Instant::now() < deadline, "{addr}{path} still answers {got}: {body}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn metrics_move_under_load_and_readiness_follows_quorum() {
    let mut cluster = ProcessCluster::start(3);
    let runtime = client_runtime();
    let client = runtime
        .block_on(Client::connect(cluster.addrs.clone(), ClientOptions::default()))
        .expect("connect");
    for sku in ["apple", "zebra"] {
        let put = runtime
            .block_on(client.put_sku(sku, 1_000_000, SaleRules::default()))
            .expect("put");
        assert_eq!(put, Outcome::Ok);
    }

    eprintln!("--- buyers purchase while every node is scraped");
    let stop = Arc::new(AtomicBool::new(false));
    let confirmed = Arc::new(AtomicU64::new(0));
    let buyers: Vec<_> = (0..8)
        .map(|buyer| {
            let (client, stop, confirmed) = (client.clone(), stop.clone(), confirmed.clone());
            runtime.spawn(async move {
                let sku = if buyer % 2 == 0 { "apple" } else { "zebra" };
                let mut attempt = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    attempt += 1;
                    let order = format!("b{buyer}-{attempt}");
                    if let Ok(Outcome::Confirmed) = client.purchase(sku, 1, &format!("u{buyer}"), &order).await {
                        confirmed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    let mut history: Vec<Vec<[f64; 3]>> = vec![Vec::new(); cluster.admin_addrs.len()];
    let load_until = Instant::now() + Duration::from_secs(4);
    while Instant::now() < load_until {
        for (position, addr) in cluster.admin_addrs.iter().enumerate() {
            history[position].push(progress(&scrape(addr)));
        }
        // A hostile request in the middle of the load changes nothing for the next scrape.
        let (status, _) = exchange(&cluster.admin_addrs[0], b"\x16\x03\x01garbage\r\n\r\n");
        assert_eq!(status, 400, "garbage is a bad request");
    }
    stop.store(true, Ordering::Relaxed);
    for buyer in buyers {
        runtime.block_on(buyer).expect("buyer task");
    }
    let confirmed = confirmed.load(Ordering::Relaxed);
    eprintln!(
        "{confirmed} purchases confirmed; scrapes per node: {}",
        history[0].len()
    );
    assert!(confirmed > 0, "the load made progress");
    for (position, scrapes) in history.iter().enumerate() {
        assert!(
            scrapes.len() >= 3,
            "node {} scraped {} times",
            position + 1,
            scrapes.len()
        );
        for pair in scrapes.windows(2) {
            for metric in 0..3 {
                assert!(
                    pair[1][metric] >= pair[0][metric],
                    "node {}: a counter went back: {pair:?}",
                    position + 1
                );
            }
        }
        let (first, last) = (scrapes[0], scrapes[scrapes.len() - 1]);
        for (metric, name) in ["ops_committed_total", "fdatasync count", "request_duration count"]
            .iter()
            .enumerate()
        {
            assert!(
                last[metric] > first[metric],
                "node {}: {name} did not move: {first:?} -> {last:?}",
                position + 1
            );
        }
    }

    eprintln!("--- after the load every replica's applied index agrees");
    cluster.wait_converged();
    let applied: Vec<Vec<(String, f64)>> = cluster
        .admin_addrs
        .iter()
        .map(|addr| {
            scrape(addr)
                .into_iter()
                .filter(|s| s.name == "flashledger_shard_applied_index")
                .map(|s| (s.labels["shard"].clone(), s.value))
                .collect()
        })
        .collect();
    assert_eq!(applied[0].len(), 2, "{applied:?}");
    assert!(applied.iter().all(|node| *node == applied[0]), "{applied:?}");

    eprintln!("--- health and readiness; errors for what is not served");
    for addr in &cluster.admin_addrs {
        assert_eq!(get(addr, "/healthz"), (200, "ok\n".to_string()));
        wait_for_status(addr, "/readyz", 200);
    }
    let addr = &cluster.admin_addrs[0].clone();
    assert_eq!(get(addr, "/nothing-here").0, 404);
    let post = exchange(
        addr,
        b"POST /metrics HTTP/1.1\r\nHost: ledger\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(post.0, 405);
    let oversized = format!(
        "GET /metrics HTTP/1.1\r\nHost: ledger\r\nX-Filler: {}\r\nConnection: close\r\n\r\n",
        "x".repeat(64 * 1024)
    );
    assert_eq!(
        exchange(addr, oversized.as_bytes()).0,
        431,
        "an oversized head is refused"
    );
    let (status, _) = exchange(addr, &[0u8; 512]);
    assert_eq!(status, 400, "binary zeros are a bad request");
    // An idle connection that never sends a request is closed by the node, not kept.
    let idle = TcpStream::connect(addr).expect("connect");
    idle.set_read_timeout(Some(Duration::from_secs(30))).expect("timeout");
    assert_eq!(get(addr, "/healthz").0, 200, "the node serves on after all that");

    eprintln!("--- two of three nodes gone: the survivor is alive but not ready");
    cluster.kill(2);
    cluster.kill(3);
    let reasons = wait_for_status(addr, "/readyz", 503);
    assert!(reasons.contains("shard 1") && reasons.contains("shard 2"), "{reasons}");
    assert_eq!(get(addr, "/healthz").0, 200);
    let samples = scrape(addr);
    assert_eq!(
        metrics_support::value(&samples, "flashledger_shard_voters", &[("shard", "1")]),
        Some(3.0)
    );
    // Its read timeout (30 s) is past the node's head timeout (10 s): end of stream, not a timeout.
    let mut idle = idle;
    let mut byte = [0u8; 1];
    let read = idle.read(&mut byte);
    assert!(
        matches!(read, Ok(0)),
        "the idle connection was closed by the node: {read:?}"
    );
}
