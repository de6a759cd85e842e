//! End-to-end tests through real `ledger serve` processes: the operator CLI against a live
//! cluster, bad input through the CLI, and the crash test (SIGKILL a node at random points
//! under load, restart it, and check every replica converges to the same state without losing
//! an acknowledged purchase or overselling).

#![cfg(not(madsim))]

use std::process::Command;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::time::Duration;

use flashledger_client::Client;
use flashledger_client::ClientOptions;
use flashledger_client::Consistency;
use flashledger_client::Outcome;
use flashledger_client::SaleRules;
use rand::Rng;
use rand::SeedableRng;
use serde_json::Value;

mod process_support;

use process_support::LEDGER;
use process_support::ProcessCluster;
use process_support::client_runtime;
use process_support::stderr;
use process_support::stdout;

#[test]
fn the_cli_drives_a_live_cluster() {
    let cluster = ProcessCluster::start(3);

    let put = cluster.cli(&["put-sku", "sneaker", "--total", "5", "--per-user-limit", "2"]);
    assert!(put.status.success(), "{}", stderr(&put));
    assert_eq!(stdout(&put).trim(), "Ok");

    let reserve = cluster.cli(&["reserve", "sneaker", "2", "--user", "alice", "--order", "o-1"]);
    assert!(
        stdout(&reserve).starts_with("Reserved"),
        "{}{}",
        stdout(&reserve),
        stderr(&reserve)
    );
    let over_limit = cluster.cli(&["purchase", "sneaker", "1", "--user", "alice", "--order", "o-2"]);
    assert_eq!(stdout(&over_limit).trim(), "LimitExceeded { held: 2, limit: 2 }");
    let confirm = cluster.cli(&["confirm", "sneaker", "--order", "o-1"]);
    assert_eq!(stdout(&confirm).trim(), "Confirmed");
    let cancel_late = cluster.cli(&["cancel", "sneaker", "--order", "o-1"]);
    assert_eq!(stdout(&cancel_late).trim(), "AlreadyConfirmed");
    let too_many = cluster.cli(&["purchase", "sneaker", "3", "--user", "bob", "--order", "o-3"]);
    assert_eq!(stdout(&too_many).trim(), "LimitExceeded { held: 0, limit: 2 }");
    for (user, order) in [("bob", "o-3b"), ("carol", "o-3c")] {
        let qty = if user == "bob" { "2" } else { "1" };
        let buy = cluster.cli(&["purchase", "sneaker", qty, "--user", user, "--order", order]);
        assert_eq!(stdout(&buy).trim(), "Confirmed", "{user}");
    }
    let sold_out = cluster.cli(&["purchase", "sneaker", "1", "--user", "dave", "--order", "o-4"]);
    assert_eq!(stdout(&sold_out).trim(), "SoldOut { available: 0 }");
    let restock = cluster.cli(&["restock", "sneaker", "-1"]);
    assert!(
        stdout(&restock).starts_with("Rejected"),
        "cannot shrink below what is sold: {}",
        stdout(&restock)
    );

    let get = cluster.cli(&["get", "sneaker", "--json"]);
    let stock: Value = serde_json::from_slice(&get.stdout).expect("json");
    assert_eq!(
        (
            stock["total"].as_i64(),
            stock["sold"].as_i64(),
            stock["available"].as_i64()
        ),
        (Some(5), Some(5), Some(0))
    );
    let unknown = cluster.cli(&["get", "no-such-sku", "--json"]);
    let unknown: Value = serde_json::from_slice(&unknown.stdout).expect("json");
    assert_eq!(unknown["known"], Value::Bool(false));
    let buy_unknown = cluster.cli(&["purchase", "no-such-sku", "1", "--user", "u", "--order", "o-5"]);
    assert_eq!(stdout(&buy_unknown).trim(), "UnknownSku");

    let status = cluster.wait_converged();
    let nodes = status["nodes"].as_array().expect("nodes");
    assert_eq!(nodes.len(), 3);
    for node in nodes {
        assert_eq!(node["shards"].as_array().map(Vec::len), Some(2), "{node}");
    }
    let text = cluster.cli(&["status"]);
    assert!(stdout(&text).contains("leader"), "{}", stdout(&text));
    assert!(text.status.success(), "every node answered: {:?}", text.status);
    let one_silent = format!("{},{}", cluster.addrs[0], address_where_nothing_listens());
    let partial = cluster.cli(&["status", "--seeds", &one_silent]);
    assert_eq!(
        partial.status.code(),
        Some(2),
        "one node did not answer: {}",
        stderr(&partial)
    );
    assert!(
        stdout(&partial).contains("leader"),
        "the other is printed: {}",
        stdout(&partial)
    );
}

/// A local address nobody listens on (bound, then closed again).
fn address_where_nothing_listens() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").to_string()
}

#[test]
fn status_of_a_cluster_that_cannot_be_reached_exits_non_zero() {
    let nowhere = address_where_nothing_listens();
    for format in [None, Some("--json")] {
        let output = Command::new(LEDGER)
            .args(["status", "--seeds", &nowhere])
            .args(format)
            .output()
            .expect("run");
        assert_eq!(output.status.code(), Some(1), "{format:?}: {}", stderr(&output));
        assert!(
            stdout(&output).contains("unreachable"),
            "{format:?}: {}",
            stdout(&output)
        );
        assert!(
            stderr(&output).contains("no node answered"),
            "{format:?}: {}",
            stderr(&output)
        );
    }
    let help = Command::new(LEDGER).args(["status", "--help"]).output().expect("run");
    assert!(stdout(&help).contains("Exit status"), "{}", stdout(&help));
}

#[test]
fn bad_input_through_the_cli_is_refused_and_changes_nothing() {
    let cluster = ProcessCluster::start(3);
    assert!(cluster.cli(&["put-sku", "hat", "--total", "3"]).status.success());
    let before = stdout(&cluster.cli(&["get", "hat", "--json"]));
    let long_sku = "x".repeat(200);
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["reserve", "hat", "0", "--user", "u", "--order", "a"], "qty"),
        (vec!["reserve", "hat", "-3", "--user", "u", "--order", "b"], "qty"),
        (
            vec!["purchase", "hat", "99999999999", "--user", "u", "--order", "c"],
            "qty",
        ),
        (vec!["purchase", "hat", "1", "--user", "", "--order", "d"], "user"),
        (vec!["purchase", "hat", "1", "--user", "u", "--order", ""], "order_id"),
        (vec!["purchase", &long_sku, "1", "--user", "u", "--order", "e"], "128"),
        (vec!["put-sku", "hat", "--total", "-1"], "total"),
        (vec!["restock", "hat", "0"], "delta"),
    ];
    for (args, mentions) in cases {
        let output = cluster.cli(&args);
        assert!(!output.status.success(), "{args:?} must fail");
        assert!(stderr(&output).contains(mentions), "{args:?}: {}", stderr(&output));
    }
    assert_eq!(
        stdout(&cluster.cli(&["get", "hat", "--json"])),
        before,
        "nothing changed"
    );

    let broken = cluster.dir.path().join("broken.toml");
    std::fs::write(&broken, "[[nodes]]\nid = 1\n").expect("write");
    let output = Command::new(LEDGER)
        .args(["serve", "--node", "1", "--config"])
        .arg(&broken)
        .output()
        .expect("run");
    assert!(!output.status.success());
    assert!(stderr(&output).contains("missing field"), "{}", stderr(&output));
}

#[test]
fn an_operator_command_piped_into_a_reader_that_stops_ends_without_a_panic() {
    use std::io::Read;
    use std::os::unix::process::ExitStatusExt;

    // Far more output than a pipe buffers: a status line per (unreachable) seed.
    let seeds: Vec<String> = (20_000..22_000).map(|port| format!("127.0.0.1:{port}")).collect();
    let mut child = Command::new(LEDGER)
        .args(["status", "--seeds", &seeds.join(",")])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run");
    let mut first_bytes = [0u8; 16];
    child
        .stdout
        .take()
        .expect("stdout")
        .read_exact(&mut first_bytes)
        .expect("some output");
    // The reader went away (as `ledger status | head -1` does) after dropping stdout above.
    let output = child.wait_with_output().expect("wait");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(
        output.status.signal(),
        Some(libc::SIGPIPE),
        "ends as Unix tools do: {:?}",
        output.status
    );
}

/// Kills a random node with SIGKILL at random moments while buyers keep purchasing, restarts
/// it, and checks: replicas converge to one state, the invariant holds, nothing is oversold,
/// and every acknowledged purchase is in the ledger.
#[test]
fn sigkill_under_load_converges_without_losing_acknowledged_writes() {
    let seed: u64 = std::env::var("CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(7);
    eprintln!("crash test seed {seed} (rerun with CRASH_SEED={seed})");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut cluster = ProcessCluster::start(3);
    let runtime = client_runtime();
    let stock = 1_000_000;
    let options = ClientOptions {
        request_timeout_ms: 20_000,
        ..ClientOptions::default()
    };
    let client = runtime
        .block_on(Client::connect(cluster.addrs.clone(), options))
        .expect("connect");
    let put = runtime
        .block_on(client.put_sku("crash-sku", stock, SaleRules::default()))
        .expect("put");
    assert_eq!(put, Outcome::Ok);

    let stop = Arc::new(AtomicBool::new(false));
    let acknowledged = Arc::new(AtomicU64::new(0));
    let ambiguous = Arc::new(AtomicU64::new(0));
    let mut buyers = Vec::new();
    for buyer in 0..16 {
        let (client, stop, acknowledged, ambiguous) =
            (client.clone(), stop.clone(), acknowledged.clone(), ambiguous.clone());
        buyers.push(runtime.spawn(async move {
            let mut attempt = 0u64;
            while !stop.load(Ordering::Relaxed) {
                attempt += 1;
                let order = format!("b{buyer}-{attempt}");
                match client.purchase("crash-sku", 1, &format!("u{buyer}"), &order).await {
                    Ok(Outcome::Confirmed) => {
                        acknowledged.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(other) => panic!("unexpected outcome {other:?}"),
                    Err(_) => {
                        ambiguous.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }

    for round in 0..3 {
        std::thread::sleep(Duration::from_millis(rng.gen_range(300..1500)));
        let victim = rng.gen_range(1..=3);
        eprintln!(
            "round {round}: SIGKILL node {victim} after {} acknowledged",
            acknowledged.load(Ordering::Relaxed)
        );
        cluster.kill(victim);
        std::thread::sleep(Duration::from_millis(rng.gen_range(200..1500)));
        cluster.spawn(victim);
    }
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    for buyer in buyers {
        runtime.block_on(buyer).expect("buyer task");
    }

    let status = cluster.wait_converged();
    // Read with a client of its own: the buyers' client spent its retry budget riding out the
    // kills (as it should: retries are bounded to a share of calls), and the placement scheduler
    // may be handing a leadership back to a restarted node at this very moment, which costs a
    // retry or two.
    let verifier = runtime
        .block_on(Client::connect(cluster.addrs.clone(), ClientOptions::default()))
        .expect("connect");
    let stock_now = runtime
        .block_on(verifier.get_stock("crash-sku", Consistency::Linearizable))
        .expect("read")
        .expect("sku known");
    let acknowledged = acknowledged.load(Ordering::Relaxed) as i64;
    let ambiguous = ambiguous.load(Ordering::Relaxed) as i64;
    eprintln!("acknowledged {acknowledged}, ambiguous {ambiguous}, ledger {stock_now:?}");
    assert!(acknowledged > 0, "the load made progress");
    assert!(
        stock_now.sold >= acknowledged,
        "an acknowledged purchase was lost: {stock_now:?}"
    );
    assert!(
        stock_now.sold <= acknowledged + ambiguous,
        "sold more than was attempted: {stock_now:?}"
    );
    assert_eq!(
        stock_now.available + stock_now.reserved + stock_now.sold,
        stock_now.total
    );
    assert!(status["nodes"].as_array().is_some_and(|n| n.len() == 3));
}
