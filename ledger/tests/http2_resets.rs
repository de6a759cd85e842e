//! The node's HTTP/2 reset limits, with a raw HTTP/2 client written frame by frame: a burst of
//! ordinary cancellations (every call of a healthy client cancelled at its deadline while the
//! node was paused, all arriving at once) leaves the connection open and serving, where h2's
//! default limit of 20 closes it with GOAWAY; a rapid-reset flood (streams opened and reset
//! without end) is still cut off; and a client that keeps breaking the stream limit is cut
//! off after `server.local_reset_streams_max` refusals.
//!
//! Frames are built by hand (RFC 9113) so that the test controls exactly what arrives in one
//! burst; the HPACK header blocks use only static-table names and literals.

#![cfg(not(madsim))]

mod common;

use std::time::Duration;

use common::TestCluster;
use tokio::io::AsyncReadExt;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedReadHalf;

const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const GOAWAY: u8 = 0x7;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const ACK: u8 = 0x1;
const CANCEL: u32 = 0x8;
const ENHANCE_YOUR_CALM: u32 = 0xb;

fn frame(out: &mut Vec<u8>, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
    let length = payload.len() as u32;
    out.extend_from_slice(&length.to_be_bytes()[1..]);
    out.extend_from_slice(&[kind, flags]);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
}

fn string(out: &mut Vec<u8>, text: &str) {
    assert!(text.len() < 127, "one-byte HPACK string lengths only");
    out.push(text.len() as u8);
    out.extend_from_slice(text.as_bytes());
}

/// The HPACK block of a gRPC call of the health check: POST, http, its path and authority,
/// `content-type: application/grpc`, `te: trailers`.
fn grpc_headers(authority: &str) -> Vec<u8> {
    let mut block = vec![0x83, 0x86];
    block.push(0x04); // :path, literal without indexing
    string(&mut block, "/grpc.health.v1.Health/Check");
    block.push(0x01); // :authority
    string(&mut block, authority);
    block.extend_from_slice(&[0x0f, 0x10]); // content-type (static index 31)
    string(&mut block, "application/grpc");
    block.push(0x00); // a new name
    string(&mut block, "te");
    string(&mut block, "trailers");
    block
}

/// An empty HealthCheckRequest as a gRPC message: uncompressed, length 0.
const EMPTY_MESSAGE: [u8; 5] = [0, 0, 0, 0, 0];

/// One complete call on `stream`: its headers, then its message ending the stream.
fn call(out: &mut Vec<u8>, stream: u32, headers: &[u8]) {
    frame(out, HEADERS, END_HEADERS, stream, headers);
    frame(out, DATA, END_STREAM, stream, &EMPTY_MESSAGE);
}

fn reset(out: &mut Vec<u8>, stream: u32) {
    frame(out, RST_STREAM, 0, stream, &CANCEL.to_be_bytes());
}

struct Frame {
    kind: u8,
    flags: u8,
    stream: u32,
    payload: Vec<u8>,
}

async fn read_frame(reader: &mut OwnedReadHalf) -> std::io::Result<Frame> {
    let mut header = [0u8; 9];
    reader.read_exact(&mut header).await?;
    let length = u32::from_be_bytes([0, header[0], header[1], header[2]]) as usize;
    let mut payload = vec![0u8; length];
    reader.read_exact(&mut payload).await?;
    Ok(Frame {
        kind: header[3],
        flags: header[4],
        stream: u32::from_be_bytes([header[5], header[6], header[7], header[8]]) & 0x7fff_ffff,
        payload,
    })
}

/// What ended a connection, or the answer that came instead.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// The response headers of the awaited stream arrived.
    Answered,
    /// The node sent GOAWAY with this error code and debug data.
    GoAway(u32, String),
    /// The connection closed without either.
    Closed,
}

/// Reads frames until the response to `stream` (if any) or a GOAWAY, within the test's wait.
async fn read_until(reader: &mut OwnedReadHalf, stream: Option<u32>) -> Verdict {
    let reading = async {
        loop {
            let Ok(frame) = read_frame(reader).await else {
                return Verdict::Closed;
            };
            if frame.kind == GOAWAY && frame.payload.len() >= 8 {
                let code = u32::from_be_bytes(frame.payload[4..8].try_into().expect("4 bytes"));
                return Verdict::GoAway(code, String::from_utf8_lossy(&frame.payload[8..]).into_owned());
            }
            if frame.kind == HEADERS && Some(frame.stream) == stream {
                return Verdict::Answered;
            }
        }
    };
    tokio::time::timeout(common::WAIT, reading)
        .await
        .expect("the node neither answered nor closed")
}

/// A connection that has exchanged the preface and settings with the node.
async fn connect(addr: &str) -> (OwnedReadHalf, tokio::net::tcp::OwnedWriteHalf) {
    let stream = TcpStream::connect(addr).await.expect("connects");
    stream.set_nodelay(true).expect("nodelay");
    let (mut reader, mut writer) = stream.into_split();
    let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    frame(&mut hello, SETTINGS, 0, 0, &[]);
    writer.write_all(&hello).await.expect("preface");
    loop {
        let frame = read_frame(&mut reader).await.expect("the node's settings");
        if frame.kind == SETTINGS && frame.flags & ACK == 0 {
            break;
        }
    }
    let mut ack = Vec::new();
    frame(&mut ack, SETTINGS, ACK, 0, &[]);
    writer.write_all(&ack).await.expect("settings ack");
    (reader, writer)
}

/// `calls` complete calls each cancelled right after it was sent, all in one write (what a node
/// reads at once when it resumes after a pause), then one more call; what the node answers.
async fn cancelled_burst_then_a_call(addr: &str, calls: u32) -> Verdict {
    let (mut reader, mut writer) = connect(addr).await;
    let headers = grpc_headers(addr);
    let mut burst = Vec::new();
    for n in 0..calls {
        let stream = 2 * n + 1;
        call(&mut burst, stream, &headers);
        reset(&mut burst, stream);
    }
    let last = 2 * calls + 1;
    call(&mut burst, last, &headers);
    writer.write_all(&burst).await.expect("burst written");
    read_until(&mut reader, Some(last)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_ordinary_cancellations_keeps_the_connection_but_h2s_default_would_close_it() {
    let cluster = TestCluster::start(1, |_| {}).await;
    let addr = cluster.config.node(1).expect("node").addr.clone();
    tracing::info!("--- 1000 calls cancelled at once, then a call on the same connection: answered");
    assert_eq!(cancelled_burst_then_a_call(&addr, 1_000).await, Verdict::Answered);
    cluster.stop_all().await;

    tracing::info!("--- with h2's default limit (20) the same burst closes the connection");
    let strict = TestCluster::start(1, |config| config.server.pending_reset_streams_max = 20).await;
    let addr = strict.config.node(1).expect("node").addr.clone();
    match cancelled_burst_then_a_call(&addr, 1_000).await {
        Verdict::GoAway(ENHANCE_YOUR_CALM, debug) => assert_eq!(debug, "too_many_resets"),
        other => panic!("expected GOAWAY too_many_resets, got {other:?}"),
    }
    strict.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rapid_reset_flood_is_cut_off() {
    let cluster = TestCluster::start(1, |_| {}).await;
    let addr = cluster.config.node(1).expect("node").addr.clone();
    let (mut reader, mut writer) = connect(&addr).await;
    let verdict = tokio::spawn(async move { read_until(&mut reader, None).await });
    let headers = grpc_headers(&addr);
    // Streams opened and reset as fast as the socket takes them, in writes of 20 000, for at most
    // 2 million streams (the node's limit is 4096 pending at once).
    let mut stream = 1u32;
    'flood: for _ in 0..100 {
        let mut burst = Vec::new();
        for _ in 0..20_000 {
            frame(&mut burst, HEADERS, END_HEADERS | END_STREAM, stream, &headers);
            reset(&mut burst, stream);
            stream += 2;
        }
        if writer.write_all(&burst).await.is_err() || verdict.is_finished() {
            break 'flood;
        }
    }
    let verdict = verdict.await.expect("reader");
    assert_eq!(verdict, Verdict::GoAway(ENHANCE_YOUR_CALM, "too_many_resets".into()));
    cluster.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_keeps_breaking_the_stream_limit_is_cut_off() {
    let cluster = TestCluster::start(1, |config| {
        config.server.inflight_requests_max = 1;
        config.server.local_reset_streams_max = 10;
    })
    .await;
    let addr = cluster.config.node(1).expect("node").addr.clone();
    let (mut reader, mut writer) = connect(&addr).await;
    let headers = grpc_headers(&addr);
    // Stream 1 stays open (no message yet); every further stream is over the limit of one.
    let mut burst = Vec::new();
    frame(&mut burst, HEADERS, END_HEADERS, 1, &headers);
    for n in 1..=20 {
        frame(&mut burst, HEADERS, END_HEADERS | END_STREAM, 2 * n + 1, &headers);
    }
    writer.write_all(&burst).await.expect("written");
    match read_until(&mut reader, None).await {
        Verdict::GoAway(ENHANCE_YOUR_CALM, debug) => assert_eq!(debug, "too_many_internal_resets"),
        other => panic!("expected GOAWAY too_many_internal_resets, got {other:?}"),
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), writer.shutdown()).await;
    cluster.stop_all().await;
}
