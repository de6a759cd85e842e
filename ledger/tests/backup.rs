//! Backup and restore end to end, through real `ledger serve` processes: back up a secured
//! 3-node cluster while buyers write, restore into a fresh cluster on other ports, check every
//! shard's state digest against the backup's, write to the restored cluster, and see damaged,
//! partial or mismatched backups refused with nothing written.

#![cfg(not(madsim))]

use std::path::Path;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::time::Duration;
use std::time::Instant;

use flashledger_client::Client;
use flashledger_client::ClientOptions;
use flashledger_client::Credentials;
use flashledger_client::Outcome;
use serde_json::Value;

mod process_support;

use process_support::LEDGER;
use process_support::ProcessCluster;
use process_support::stderr;
use process_support::stdout;

/// One SKU in each of the harness's two shards (`[.., "m")` and `["m", ..)`).
const SKUS: [&str; 2] = ["a-sneaker", "z-sneaker"];

/// What the buyers saw: purchases confirmed, and when each write completed with how long it took.
#[derive(Default)]
struct Load {
    confirmed: AtomicU64,
    /// (completed at, latency) of every purchase.
    writes: Mutex<Vec<(Instant, Duration)>>,
}

impl Load {
    /// The longest a purchase took among those that were in flight during `window`, and how
    /// many completed inside it.
    fn during(&self, window: (Instant, Instant)) -> (Duration, usize) {
        let writes = self.writes.lock().expect("lock");
        let overlapping = writes
            .iter()
            .filter(|(done, latency)| *done >= window.0 && *done - *latency <= window.1);
        let longest = overlapping
            .clone()
            .map(|(_, latency)| *latency)
            .max()
            .unwrap_or_default();
        let inside = writes
            .iter()
            .filter(|(done, _)| *done >= window.0 && *done <= window.1)
            .count();
        (longest, inside)
    }
}

fn buyer_options(cluster: &ProcessCluster) -> ClientOptions {
    let certs = cluster.certs.as_ref().expect("a secured cluster");
    ClientOptions {
        credentials: Credentials {
            ca_pem: Some(std::fs::read(certs.join("ca.pem")).expect("ca")),
            client_cert: None,
            token: Some(std::fs::read_to_string(certs.join("buyer-service.token")).expect("token")),
        },
        ..ClientOptions::default()
    }
}

/// Buyers purchasing one unit at a time on both SKUs, 8 at once, until `stop` is set.
fn start_load(cluster: &ProcessCluster, stop: Arc<AtomicBool>, load: Arc<Load>) -> std::thread::JoinHandle<()> {
    let (seeds, options) = (cluster.addrs.clone(), buyer_options(cluster));
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Runtime::new().expect("runtime");
        runtime.block_on(async move {
            let client = Arc::new(Client::connect(seeds, options).await.expect("buyer connects"));
            let buyers = (0..8u64).map(|buyer| {
                let (client, stop, load) = (client.clone(), stop.clone(), load.clone());
                tokio::spawn(async move {
                    let mut n = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        let sku = SKUS[(n % 2) as usize];
                        let started = Instant::now();
                        let outcome = client
                            .purchase(sku, 1, &format!("buyer-{buyer}"), &format!("load-{buyer}-{n}"))
                            .await;
                        let latency = started.elapsed();
                        if matches!(outcome, Ok(Outcome::Confirmed)) {
                            load.confirmed.fetch_add(1, Ordering::Relaxed);
                        }
                        load.writes.lock().expect("lock").push((Instant::now(), latency));
                        n += 1;
                    }
                })
            });
            for buyer in buyers.collect::<Vec<_>>() {
                buyer.await.expect("buyer");
            }
        });
    })
}

/// Per shard id: (applied index, state digest) of every replica in a `status --json` answer.
fn replicas_by_shard(status: &Value) -> std::collections::BTreeMap<u64, Vec<(u64, String)>> {
    let mut shards: std::collections::BTreeMap<u64, Vec<(u64, String)>> = Default::default();
    for node in status["nodes"].as_array().into_iter().flatten() {
        for shard in node["shards"].as_array().into_iter().flatten() {
            shards
                .entry(shard["shard_id"].as_u64().expect("id"))
                .or_default()
                .push((
                    shard["applied_index"].as_u64().expect("applied"),
                    shard["state_digest"].as_str().expect("digest").to_string(),
                ));
        }
    }
    shards
}

/// The `fork_us` of every "backup image taken" line the nodes of `cluster` logged so far.
fn fork_micros(cluster: &ProcessCluster) -> Vec<u64> {
    (1..=3)
        .flat_map(|id| {
            let log = std::fs::read_to_string(cluster.dir.path().join(format!("node{id}.log"))).unwrap_or_default();
            without_colors(&log)
                .lines()
                .filter(|line| line.contains("backup image taken"))
                .filter_map(|line| line.split("fork_us=").nth(1)?.split_whitespace().next()?.parse().ok())
                .collect::<Vec<u64>>()
        })
        .collect()
}

/// `text` without terminal color sequences (`ESC [ ... m`), which the nodes' log lines may carry.
fn without_colors(text: &str) -> String {
    let mut plain = String::with_capacity(text.len());
    let mut in_sequence = false;
    for c in text.chars() {
        match (in_sequence, c) {
            (false, '\u{1b}') => in_sequence = true,
            (false, c) => plain.push(c),
            (true, 'm') => in_sequence = false,
            (true, _) => {}
        }
    }
    plain
}

/// Backs up `cluster` into `dir` with the CLI; the manifest it printed.
fn backup(cluster: &ProcessCluster, dir: &Path) -> Value {
    let output = cluster.cli(&["backup", "--out", dir.to_str().expect("utf-8"), "--json"]);
    assert!(
        output.status.success(),
        "backup: {}{}",
        stdout(&output),
        stderr(&output)
    );
    let printed: Value = serde_json::from_slice(&output.stdout).expect("json");
    let written: Value =
        serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).expect("manifest")).expect("manifest json");
    assert_eq!(printed["manifest"], written);
    written
}

/// (shard id, log index, state digest) of every shard in a manifest.
fn manifest_shards(manifest: &Value) -> Vec<(u64, u64, String)> {
    manifest["shards"]
        .as_array()
        .expect("shards")
        .iter()
        .map(|s| {
            (
                s["shard_id"].as_u64().expect("id"),
                s["log_index"].as_u64().expect("index"),
                s["state_digest"].as_str().expect("digest").to_string(),
            )
        })
        .collect()
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("entry");
        std::fs::copy(entry.path(), to.join(entry.file_name())).expect("copy");
    }
}

/// Runs `ledger restore --from from --config config`; its output.
fn restore(from: &Path, config: &Path) -> std::process::Output {
    Command::new(LEDGER)
        .args(["restore", "--from"])
        .arg(from)
        .arg("--config")
        .arg(config)
        .output()
        .expect("run ledger restore")
}

/// Asserts that restoring `from` into `target` is refused naming `reason`, and writes nothing.
fn assert_refused(from: &Path, target: &ProcessCluster, config: &Path, reason: &str) {
    let output = restore(from, config);
    assert!(!output.status.success(), "restore of {} succeeded", from.display());
    let error = stderr(&output);
    assert!(error.contains("nothing was written"), "{error}");
    assert!(error.contains(reason), "expected {reason:?} in: {error}");
    for id in 1..=3 {
        assert!(
            !target.data_dir(id).exists(),
            "node {id}'s data dir was touched: {error}"
        );
    }
}

#[test]
fn a_backup_under_load_restores_into_a_new_cluster_with_the_same_state() {
    let source = ProcessCluster::start_secure(3);
    for sku in SKUS {
        let put = source.cli(&["put-sku", sku, "--total", "1000000"]);
        assert_eq!(stdout(&put).trim(), "Ok", "{}", stderr(&put));
    }
    let work = tempfile::tempdir().expect("temp dir");

    tracing::info!("--- back up while buyers write, and measure the longest write meanwhile");
    let (stop, load) = (Arc::new(AtomicBool::new(false)), Arc::new(Load::default()));
    let buyers = start_load(&source, stop.clone(), load.clone());
    let deadline = Instant::now() + Duration::from_secs(60);
    while load.confirmed.load(Ordering::Relaxed) < 300 {
        assert!(Instant::now() < deadline, "the buyers made no progress");
        std::thread::sleep(Duration::from_millis(20));
    }
    let under_load = work.path().join("under-load");
    let backup_started = Instant::now();
    let manifest = backup(&source, &under_load);
    let window = (backup_started, Instant::now());
    // Some more writes after the backup, so the source moves past its index.
    let confirmed_at_backup = load.confirmed.load(Ordering::Relaxed);
    while load.confirmed.load(Ordering::Relaxed) < confirmed_at_backup + 100 {
        assert!(
            Instant::now() < deadline + Duration::from_secs(60),
            "the buyers stopped"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let before = (Instant::now() - Duration::from_secs(3600), window.0);
    let (longest_before, _) = load.during(before);
    stop.store(true, Ordering::Relaxed);
    buyers.join().expect("buyers");
    let (longest_during, completed_during) = load.during(window);
    println!(
        "backup under load took {} ms; {completed_during} purchases completed meanwhile; longest purchase in \
         flight during the backup {} ms (before it: {} ms)",
        (window.1 - window.0).as_millis(),
        longest_during.as_millis(),
        longest_before.as_millis()
    );
    assert!(completed_during > 0, "writes stopped while the backup ran");
    let forks = fork_micros(&source);
    println!("the leaders' forks of the state (the only pause of writes), µs: {forks:?}");
    assert!(forks.len() >= 2, "every shard's leader logs its backup: {forks:?}");
    let backed_up = manifest_shards(&manifest);
    assert_eq!(backed_up.iter().map(|s| s.0).collect::<Vec<_>>(), vec![1, 2]);
    let source_status = source.wait_converged();
    for (shard_id, index, _) in &backed_up {
        let now = replicas_by_shard(&source_status)[shard_id][0].0;
        assert!(
            *index > 0 && *index < now,
            "shard {shard_id}: backed up at {index}, now at {now}"
        );
    }

    tracing::info!("--- a quiet cluster's backup states the index and digest `ledger status` shows");
    let quiet = work.path().join("quiet");
    let quiet_manifest = backup(&source, &quiet);
    for (shard_id, index, digest) in manifest_shards(&quiet_manifest) {
        for replica in &replicas_by_shard(&source_status)[&shard_id] {
            assert_eq!(replica, &(index, digest.clone()), "shard {shard_id}");
        }
    }

    tracing::info!("--- restore the backup taken under load into a new cluster on other ports");
    let mut target = ProcessCluster::prepare_with(3, true, "");
    assert!(source.addrs.iter().all(|addr| !target.addrs.contains(addr)));
    let restored = restore(&under_load, &target.config);
    assert!(restored.status.success(), "restore: {}", stderr(&restored));
    target.start_all();
    let target_status = target.wait_converged();
    for (shard_id, index, digest) in &backed_up {
        for (applied, replica_digest) in &replicas_by_shard(&target_status)[shard_id] {
            assert!(
                applied >= index,
                "shard {shard_id}: applied {applied}, backed up at {index}"
            );
            assert_eq!(replica_digest, digest, "shard {shard_id}");
        }
    }

    tracing::info!("--- the restored cluster takes writes; an order in the backup answers as before");
    let get_sold = |sku: &str| {
        let get = target.cli(&["get", sku, "--json"]);
        let stock: Value = serde_json::from_slice(&get.stdout).expect("stock json");
        stock["sold"].as_i64().expect("sold")
    };
    let sold_before = get_sold(SKUS[0]);
    let buy = target.cli(&["purchase", SKUS[0], "1", "--user", "after", "--order", "after-restore"]);
    assert_eq!(stdout(&buy).trim(), "Confirmed", "{}", stderr(&buy));
    assert_eq!(get_sold(SKUS[0]), sold_before + 1);
    let again = target.cli(&["purchase", SKUS[0], "1", "--user", "buyer-0", "--order", "load-0-0"]);
    assert_eq!(stdout(&again).trim(), "Confirmed", "{}", stderr(&again));
    assert_eq!(
        get_sold(SKUS[0]),
        sold_before + 1,
        "a retry of a backed-up order bought again"
    );

    tracing::info!("--- damaged, partial or mismatched backups are refused and write nothing");
    let fresh = ProcessCluster::prepare_with(3, false, "");
    let damaged = |name: &str, damage: &dyn Fn(&Path)| -> PathBuf {
        let copy = work.path().join(name);
        copy_dir(&under_load, &copy);
        damage(&copy);
        copy
    };
    let flipped = damaged("flipped", &|dir| {
        let path = dir.join("shard-1.snap");
        let mut bytes = std::fs::read(&path).expect("read");
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0x01;
        std::fs::write(&path, bytes).expect("write");
    });
    assert_refused(&flipped, &fresh, &fresh.config, "altered");
    let truncated = damaged("truncated", &|dir| {
        let path = dir.join("shard-2.snap");
        let bytes = std::fs::read(&path).expect("read");
        std::fs::write(&path, &bytes[..bytes.len() - 100]).expect("write");
    });
    assert_refused(&truncated, &fresh, &fresh.config, "truncated");
    let missing_file = damaged("missing-file", &|dir| {
        std::fs::remove_file(dir.join("shard-2.snap")).expect("rm")
    });
    assert_refused(&missing_file, &fresh, &fresh.config, "missing");
    let no_manifest = damaged("no-manifest", &|dir| {
        std::fs::remove_file(dir.join("manifest.json")).expect("rm")
    });
    assert_refused(&no_manifest, &fresh, &fresh.config, "no manifest.json");
    let newer = damaged("newer", &|dir| {
        let path = dir.join("manifest.json");
        let text = std::fs::read_to_string(&path).expect("read");
        std::fs::write(&path, text.replace("\"format_version\": 1", "\"format_version\": 9")).expect("write");
    });
    assert_refused(&newer, &fresh, &fresh.config, "format version 9");
    let other_ranges = fresh.dir.path().join("other-ranges.toml");
    let text = std::fs::read_to_string(&fresh.config).expect("config");
    std::fs::write(
        &other_ranges,
        text.replace("end = \"m\"", "end = \"n\"")
            .replace("start = \"m\"", "start = \"n\""),
    )
    .expect("write");
    assert_refused(&under_load, &fresh, &other_ranges, "shard 1 covers");
    // The restored cluster's data directories are not empty: refused, and left as they were.
    let output = restore(&under_load, &target.config);
    assert!(stderr(&output).contains("is not empty"), "{}", stderr(&output));
    assert_eq!(get_sold(SKUS[0]), sold_before + 1);
}

#[test]
fn a_follower_names_the_leader_and_an_unknown_shard_is_not_found() {
    use flashledger_proto::metadata;
    use flashledger_proto::v1::BackupRequest;
    use flashledger_proto::v1::cluster_client::ClusterClient;

    let cluster = ProcessCluster::start(3);
    let status = cluster.status();
    let nodes = status["nodes"].as_array().expect("nodes");
    let role_of = |node: &Value| {
        let shard = node["shards"]
            .as_array()
            .expect("shards")
            .iter()
            .find(|s| s["shard_id"] == 1);
        shard.expect("shard 1")["role"].as_str().expect("role").to_string()
    };
    let addr_of = |wanted: &str| {
        nodes
            .iter()
            .find(|node| role_of(node) == wanted)
            .map(|node| node["addr"].as_str().expect("addr").to_string())
            .expect("a replica in that role")
    };
    let (leader, follower) = (addr_of("leader"), addr_of("follower"));
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let mut client = ClusterClient::connect(format!("http://{follower}"))
            .await
            .expect("connect");
        let status = client
            .backup(BackupRequest { shard_id: 1 })
            .await
            .expect_err("a follower");
        assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
        let named = status
            .metadata()
            .get(metadata::LEADER_ADDR)
            .and_then(|v| v.to_str().ok());
        assert_eq!(named, Some(leader.as_str()));
        let status = client
            .backup(BackupRequest { shard_id: 99 })
            .await
            .expect_err("no shard 99");
        assert_eq!(status.code(), tonic::Code::NotFound, "{status:?}");

        let mut client = ClusterClient::connect(format!("http://{leader}"))
            .await
            .expect("connect");
        let mut stream = client
            .backup(BackupRequest { shard_id: 1 })
            .await
            .expect("the leader")
            .into_inner();
        let first = stream.message().await.expect("a chunk").expect("not empty");
        let header = first.header.expect("the first chunk has the header");
        let mut received = first.data.len() as u64;
        while let Some(chunk) = stream.message().await.expect("a chunk") {
            assert!(chunk.header.is_none(), "one header only");
            received += chunk.data.len() as u64;
        }
        assert_eq!((header.shard_id, received), (1, header.file_bytes));
        assert_eq!(header.file_sha256.len(), 32);
    });
}
