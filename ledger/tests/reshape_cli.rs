//! The reshaping CLI against real `ledger serve` processes with TLS and tokens: `ledger shard
//! list`, `ledger node add`, `ledger shard move --wait`, `ledger shard transfer-leader`,
//! `ledger shard split --wait`, `ledger shard merge --wait`, and bad input, which is refused with a clear message and changes nothing. (The long run under
//! load, with drains and measurements, is `scripts/reshape-demo.sh`.)

#![cfg(not(madsim))]

mod process_support;

use std::time::Duration;
use std::time::Instant;

use process_support::ProcessCluster;
use process_support::stderr;
use process_support::stdout;
use serde_json::Value;

/// Shards on nodes 1-3; node 4 is listed but starts empty. The scheduler is off so the test
/// decides where replicas and leaders go.
const SHARDS: &str = "[[shards]]\nid = 1\nend = \"m\"\nreplicas = [1, 2, 3]\n\
                      [[shards]]\nid = 2\nstart = \"m\"\nreplicas = [1, 2, 3]\n";
const NO_PLACEMENT: &str = "[placement]\nbalance_leaders = false\nbalance_replicas = false\n";

fn shard_list(cluster: &ProcessCluster) -> Value {
    let output = cluster.cli(&["shard", "list", "--json"]);
    assert!(output.status.success(), "shard list: {}", stderr(&output));
    serde_json::from_slice(&output.stdout).expect("shard list --json is JSON")
}

fn shard(map: &Value, id: u64) -> &Value {
    map["shards"]
        .as_array()
        .and_then(|shards| shards.iter().find(|s| s["shard_id"] == id))
        .unwrap_or_else(|| panic!("shard {id} in {map}"))
}

fn ids(value: &Value) -> Vec<u64> {
    value
        .as_array()
        .map(|ids| ids.iter().filter_map(Value::as_u64).collect())
        .unwrap_or_default()
}

#[test]
fn an_operator_adds_a_node_moves_a_replica_and_hands_a_leadership_over_from_the_cli() {
    let cluster = ProcessCluster::start_placed(4, true, NO_PLACEMENT, Some(SHARDS));
    let deadline = Instant::now() + Duration::from_secs(30);
    let map = loop {
        let map = shard_list(&cluster);
        if map["version"].as_u64().unwrap_or(0) > 0 || Instant::now() > deadline {
            break map;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(map["version"].as_u64().unwrap_or(0) >= 1, "the map is seeded: {map}");
    assert_eq!(ids(&map["meta"]["replicas"]), vec![1, 2, 3]);
    assert_eq!(
        map["nodes"].as_array().map(Vec::len),
        Some(3),
        "node 4 is not in the map yet"
    );
    assert_eq!(ids(&shard(&map, 1)["replicas"]), vec![1, 2, 3]);
    let version = map["version"].as_u64().unwrap_or(0);

    // Bad input: a clear error, a failing exit status, nothing changed.
    let zero = cluster.cli(&["node", "add", "--id", "0", "--addr", "127.0.0.1:1"]);
    assert!(!zero.status.success());
    assert!(stderr(&zero).contains("node id 0"), "{}", stderr(&zero));
    let unknown = cluster.cli(&["shard", "move", "--shard", "1", "--from", "1", "--to", "9"]);
    assert!(!unknown.status.success());
    assert!(stderr(&unknown).contains("not in the cluster"), "{}", stderr(&unknown));
    let no_shard = cluster.cli(&["shard", "add-replica", "--shard", "42", "--node", "2"]);
    assert!(!no_shard.status.success());
    assert!(stderr(&no_shard).contains("shard 42"), "{}", stderr(&no_shard));
    let same = cluster.cli(&["shard", "move", "--shard", "1", "--from", "2", "--to", "2"]);
    assert!(!same.status.success());
    assert_eq!(
        shard_list(&cluster)["version"].as_u64(),
        Some(version),
        "refused changes change nothing"
    );

    cluster.cli(&["put-sku", "apple", "--total", "100"]);
    let added = cluster.cli(&["node", "add", "--id", "4", "--addr", &cluster.addrs[3]]);
    assert!(added.status.success(), "node add: {}", stderr(&added));
    let moved = cluster.cli(&[
        "shard", "move", "--shard", "1", "--from", "1", "--to", "4", "--wait", "--json",
    ]);
    assert!(moved.status.success(), "shard move: {}", stderr(&moved));
    let moved: Value = serde_json::from_str(&stdout(&moved)).expect("move --json is JSON");
    assert_eq!(moved["queued"].as_array().map(Vec::len), Some(2), "{moved}");
    assert!(moved["done_after_s"].as_f64().is_some(), "{moved}");

    let map = shard_list(&cluster);
    assert_eq!(ids(&shard(&map, 1)["replicas"]), vec![2, 3, 4], "{map}");
    assert!(map["steps"].as_array().is_some_and(Vec::is_empty), "{map}");
    let bought = cluster.cli(&["purchase", "apple", "1", "--user", "u", "--order", "after-move"]);
    assert!(
        bought.status.success(),
        "a purchase after the move: {}",
        stderr(&bought)
    );

    let transferred = cluster.cli(&["shard", "transfer-leader", "--shard", "2", "--to", "3"]);
    assert!(
        transferred.status.success(),
        "transfer-leader: {}",
        stderr(&transferred)
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while shard(&shard_list(&cluster), 2)["leader"] != 3 {
        assert!(Instant::now() < deadline, "node 3 does not lead shard 2");
        std::thread::sleep(Duration::from_millis(100));
    }
    let not_voter = cluster.cli(&["shard", "transfer-leader", "--shard", "1", "--to", "1"]);
    assert!(!not_voter.status.success(), "node 1 no longer replicates shard 1");

    // Split shard 1 at "b": apple stays, banana leaves for a new shard on the same nodes.
    cluster.cli(&["put-sku", "banana", "--total", "100"]);
    let bought = cluster.cli(&["purchase", "banana", "2", "--user", "u", "--order", "before-split"]);
    assert!(bought.status.success(), "{}", stderr(&bought));
    let outside = cluster.cli(&["shard", "split", "--shard", "1", "--at", "zebra"]);
    assert!(!outside.status.success());
    assert!(stderr(&outside).contains("strictly inside"), "{}", stderr(&outside));
    let split = cluster.cli(&["shard", "split", "--shard", "1", "--at", "b", "--wait", "--json"]);
    assert!(split.status.success(), "shard split: {}", stderr(&split));
    let split: Value = serde_json::from_str(&stdout(&split)).expect("split --json is JSON");
    let step = &split["queued"][0];
    assert_eq!(step["change"], "split", "{split}");
    let new_shard = step["new_shard_id"].as_u64().expect("the new shard's id");
    let map = shard_list(&cluster);
    assert_eq!(shard(&map, 1)["end"], "b", "{map}");
    assert_eq!(shard(&map, 1)["epoch"], 2, "{map}");
    assert_eq!(shard(&map, new_shard)["start"], "b", "{map}");
    assert_eq!(shard(&map, new_shard)["end"], "m", "{map}");
    assert_eq!(ids(&shard(&map, new_shard)["replicas"]), vec![2, 3, 4], "{map}");
    for (sku, order) in [("apple", "after-split-a"), ("banana", "after-split-b")] {
        let bought = cluster.cli(&["purchase", sku, "1", "--user", "u", "--order", order]);
        assert!(bought.status.success(), "{sku} after the split: {}", stderr(&bought));
    }
    let stock = cluster.cli(&["get", "banana", "--json"]);
    assert!(stock.status.success(), "{}", stderr(&stock));
    let stock: Value = serde_json::from_str(&stdout(&stock)).expect("get --json is JSON");
    assert_eq!(stock["sold"], 3, "the order before the split went with banana: {stock}");

    // Merge the halves back: banana returns to shard 1, the new shard ends.
    let not_adjacent = cluster.cli(&["shard", "merge", "--left", "1", "--right", "2"]);
    assert!(!not_adjacent.status.success());
    assert!(
        stderr(&not_adjacent).contains("does not end where"),
        "{}",
        stderr(&not_adjacent)
    );
    let merged = cluster.cli(&[
        "shard",
        "merge",
        "--left",
        "1",
        "--right",
        &new_shard.to_string(),
        "--wait",
        "--json",
    ]);
    assert!(merged.status.success(), "shard merge: {}", stderr(&merged));
    let merged: Value = serde_json::from_str(&stdout(&merged)).expect("merge --json is JSON");
    assert_eq!(merged["queued"][0]["change"], "merge", "{merged}");
    assert_eq!(merged["queued"][0]["merge_right_shard_id"], new_shard, "{merged}");
    let map = shard_list(&cluster);
    assert_eq!(shard(&map, 1)["end"], "m", "{map}");
    assert_eq!(shard(&map, 1)["epoch"], 3, "{map}");
    assert!(
        map["shards"]
            .as_array()
            .expect("shards")
            .iter()
            .all(|s| s["shard_id"] != new_shard),
        "{map}"
    );
    let again = cluster.cli(&["purchase", "banana", "1", "--user", "u", "--order", "before-split"]);
    assert!(again.status.success(), "{}", stderr(&again));
    let bought = cluster.cli(&["purchase", "banana", "1", "--user", "u", "--order", "after-merge"]);
    assert!(bought.status.success(), "{}", stderr(&bought));
    let stock: Value = serde_json::from_str(&stdout(&cluster.cli(&["get", "banana", "--json"]))).expect("JSON");
    assert_eq!(
        stock["sold"], 4,
        "the retried order counted once, the new one once: {stock}"
    );
    cluster.wait_converged();
}
