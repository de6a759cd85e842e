//! etcd (3 members): each purchase is a compare-and-swap in one Txn — if the SKU's value is
//! the stock this client last saw, put it minus 1; else return the current value — retried
//! with the fresh value after a conflict. Every successful swap is one Raft entry committed by
//! a majority, the shape of flashledger's own write path. Clients share a few gRPC connections
//! spread over the members (HTTP/2 multiplexes them), as services sharing a client would.

use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

use anyhow::Context;

use crate::RunArgs;
use crate::cpu;
use crate::etcd_wire::COMPARE_EQUAL;
use crate::etcd_wire::COMPARE_TARGET_VALUE;
use crate::etcd_wire::Compare;
use crate::etcd_wire::Kv;
use crate::etcd_wire::PutRequest;
use crate::etcd_wire::RangeRequest;
use crate::etcd_wire::RequestOp;
use crate::etcd_wire::TxnRequest;
use crate::etcd_wire::TxnResponse;
use crate::measure::Decision;
use crate::measure::Tally;
use crate::measure::Window;
use crate::report::Header;
use crate::report::RunResult;
use crate::report::Verdict;

#[derive(clap::Args, Debug, Clone)]
pub struct EtcdArgs {
    /// The members' client URLs (the runner's own cluster, on 127.0.0.1), comma-separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "http://127.0.0.1:23811,http://127.0.0.1:23812,http://127.0.0.1:23813"
    )]
    pub endpoints: Vec<String>,
    /// gRPC connections the clients share, assigned to the members round-robin.
    #[arg(long, default_value_t = 6)]
    pub connections: u64,
    #[command(flatten)]
    pub run: RunArgs,
}

/// The hot SKU's key; put afresh by every run.
const KEY: &[u8] = b"flashledger-peer-bench/sku/1";

/// A client stops after this many requests without an answer (a cluster that is down would
/// otherwise be retried until the window closes, by every client).
const ERRORS_PER_CLIENT_MAX: u64 = 10;
/// Pause after a request without an answer before the next one.
const ERROR_PAUSE: Duration = Duration::from_millis(10);

pub async fn run(args: &EtcdArgs) -> anyhow::Result<RunResult> {
    let run = &args.run;
    anyhow::ensure!(!args.endpoints.is_empty(), "--endpoints is empty");
    anyhow::ensure!(args.connections >= 1, "--connections must be at least 1");
    let timeout = run.request_timeout();
    let mut setup = Kv::connect(&args.endpoints[0], timeout).await?;
    setup
        .put(KEY, run.stock.to_string().as_bytes())
        .await
        .context("putting the stock")?;
    let mut connections = Vec::new();
    for index in 0..args.connections.min(run.clients) as usize {
        connections.push(Kv::connect(&args.endpoints[index % args.endpoints.len()], timeout).await?);
    }

    let window = Arc::new(Window::new(run));
    let sampler = tokio::spawn(cpu::measure_during(
        window.clone(),
        cpu::Servers::Pids(run.pids.clone()),
    ));
    let mut clients = Vec::new();
    for index in 0..run.clients as usize {
        let (kv, window, stock) = (
            connections[index % connections.len()].clone(),
            window.clone(),
            run.stock,
        );
        clients.push(tokio::spawn(async move { client(kv, stock, &window).await }));
    }
    let mut tally = Tally::new();
    for client in clients {
        tally.merge(&client.await.context("a client panicked")?);
    }
    let secs = window.measured_secs();
    window.stop();
    let cpu = sampler.await.context("the CPU sampler panicked")?;

    let value = setup.get(KEY).await.context("reading the final stock")?;
    let final_stock = parse_stock(value.as_deref()).context("the final stock")?;
    let verdict = Verdict {
        initial_stock: run.stock,
        acknowledged: tally.purchases_total(),
        final_stock,
        unanswered: tally.errors_total(),
    };
    let header = Header {
        system: "etcd",
        label: &run.label,
        runner: &run.runner,
        client: "grpc",
        clients: run.clients,
        stock: run.stock,
    };
    let mut shape = serde_json::Map::new();
    shape.insert("members".into(), serde_json::json!(args.endpoints.len()));
    shape.insert("conns".into(), serde_json::json!(connections.len()));
    Ok(RunResult::new(&header, vec![shape, tally.json(secs), cpu], verdict))
}

/// The swap: `value == known` ? put `known - 1` : read the current value.
fn compare_and_swap(known: i64) -> TxnRequest {
    TxnRequest {
        compare: vec![Compare {
            result: COMPARE_EQUAL,
            target: COMPARE_TARGET_VALUE,
            key: KEY.to_vec(),
            value: Some(known.to_string().into_bytes()),
        }],
        success: vec![RequestOp {
            request_put: Some(PutRequest {
                key: KEY.to_vec(),
                value: (known - 1).to_string().into_bytes(),
            }),
            ..RequestOp::default()
        }],
        failure: vec![RequestOp {
            request_range: Some(RangeRequest { key: KEY.to_vec() }),
            ..RequestOp::default()
        }],
    }
}

fn parse_stock(value: Option<&[u8]>) -> anyhow::Result<i64> {
    let value = value.context("the key is missing")?;
    Ok(std::str::from_utf8(value)?.parse()?)
}

/// The value a failed swap's failure branch read.
fn fresh_value(response: &TxnResponse) -> anyhow::Result<i64> {
    let range = response.responses.first().and_then(|op| op.response_range.as_ref());
    parse_stock(range.and_then(|range| range.kvs.first()).map(|kv| kv.value.as_slice()))
}

/// One closed-loop buyer. `known` is the stock it last saw; a purchase retries its swap with
/// the fresh value until it wins or sees the stock at 0, which a linearizable read confirms
/// before the buyer is told "sold out". Every loop ends when the window closes.
async fn client(mut kv: Kv, stock: i64, window: &Window) -> Tally {
    let mut tally = Tally::new();
    let mut known = stock;
    'purchases: while let Some(started) = window.next_start() {
        loop {
            if Instant::now() >= window.measure_end || window.is_stopped() {
                break 'purchases;
            }
            if tally.errors_total() >= ERRORS_PER_CLIENT_MAX {
                eprintln!("etcd: a client stops after {ERRORS_PER_CLIENT_MAX} requests without an answer");
                break 'purchases;
            }
            let attempt_started = Instant::now();
            if known < 1 {
                let read = kv.get(KEY).await;
                let finished = Instant::now();
                match read
                    .map_err(anyhow::Error::from)
                    .and_then(|value| parse_stock(value.as_deref()))
                {
                    Ok(stock) => {
                        tally.attempted(window, attempt_started, finished);
                        known = stock;
                        if known < 1 {
                            tally.decided(window, Decision::SoldOut, started, finished);
                            continue 'purchases;
                        }
                    }
                    Err(error) => failed(&mut tally, "read", &error).await,
                }
                continue;
            }
            let swap = kv.txn(compare_and_swap(known)).await;
            let finished = Instant::now();
            match swap {
                Ok(response) if response.succeeded => {
                    tally.attempted(window, attempt_started, finished);
                    known -= 1;
                    tally.decided(window, Decision::Purchased, started, finished);
                    continue 'purchases;
                }
                Ok(response) => {
                    tally.attempted(window, attempt_started, finished);
                    tally.conflicted();
                    match fresh_value(&response) {
                        Ok(fresh) => known = fresh,
                        Err(error) => failed(&mut tally, "conflict without a value", &error).await,
                    }
                }
                Err(status) => failed(&mut tally, "txn", &status).await,
            }
        }
    }
    tally
}

/// Counts a request without a usable answer (its effect is unknown), says so once per
/// client, and pauses before the next request.
async fn failed(tally: &mut Tally, what: &str, error: &(dyn std::fmt::Display + Sync)) {
    if tally.errors_total() == 0 {
        eprintln!("etcd: {what}: {error}");
    }
    tally.failed();
    tokio::time::sleep(ERROR_PAUSE).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::etcd_wire::KeyValue;
    use crate::etcd_wire::RangeResponse;
    use crate::etcd_wire::ResponseOp;

    #[test]
    fn the_swap_puts_one_less_than_the_value_it_compares() {
        let txn = compare_and_swap(42);
        assert_eq!(txn.compare[0].value.as_deref(), Some(&b"42"[..]));
        assert_eq!(txn.success[0].request_put.as_ref().unwrap().value, b"41");
        assert!(txn.failure[0].request_range.is_some());
    }

    #[test]
    fn a_conflict_yields_the_fresh_value() {
        let kvs = vec![KeyValue {
            key: KEY.to_vec(),
            value: b"17".to_vec(),
        }];
        let response = TxnResponse {
            succeeded: false,
            responses: vec![ResponseOp {
                response_range: Some(RangeResponse { kvs }),
            }],
        };
        assert_eq!(fresh_value(&response).unwrap(), 17);
        assert!(fresh_value(&TxnResponse::default()).is_err());
    }
}
