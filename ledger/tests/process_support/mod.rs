//! Real `ledger serve` processes for end-to-end tests: a cluster in a temporary directory,
//! insecure or secured with TLS material and tokens from scripts/certs.sh, and the CLI run
//! against it.

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Child;
use std::process::Command;
use std::process::Output;
use std::time::Duration;
use std::time::Instant;

use serde_json::Value;

pub const LEDGER: &str = env!("CARGO_BIN_EXE_ledger");
const SCRIPTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts");

/// A cluster of real node processes with its own config and data in a temporary directory.
pub struct ProcessCluster {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub addrs: Vec<String>,
    /// Each node's admin HTTP endpoint (/metrics, /healthz, /readyz), on a port of its own.
    pub admin_addrs: Vec<String>,
    nodes: Vec<Option<Child>>,
    /// With TLS: the directory scripts/certs.sh filled (CA, node and client certificates,
    /// tokens); the CLI runs as admin unless told otherwise.
    pub certs: Option<PathBuf>,
}

impl ProcessCluster {
    /// An insecure cluster (plaintext, no authentication).
    pub fn start(node_count: usize) -> ProcessCluster {
        Self::start_with(node_count, false, "")
    }

    /// A cluster with TLS and tokens, its material made by scripts/certs.sh.
    pub fn start_secure(node_count: usize) -> ProcessCluster {
        Self::start_with(node_count, true, "")
    }

    /// With `extra` appended to the config (whole sections, e.g. `[server]` bounds).
    pub fn start_with(node_count: usize, secure: bool, extra: &str) -> ProcessCluster {
        let mut cluster = Self::prepare_with(node_count, secure, extra);
        cluster.start_all();
        cluster
    }

    /// As [`ProcessCluster::start_with`], with `shards` (`[[shards]]` sections) in place of the
    /// default two shards on every node: a test can give shards different replica sets.
    pub fn start_placed(node_count: usize, secure: bool, extra: &str, shards: Option<&str>) -> ProcessCluster {
        let mut cluster = Self::prepare_placed(node_count, secure, extra, shards);
        cluster.start_all();
        cluster
    }

    /// A cluster's config, data directory paths and TLS material, its nodes not started yet
    /// (a test may seed their data directories first, as `ledger restore` does).
    pub fn prepare_with(node_count: usize, secure: bool, extra: &str) -> ProcessCluster {
        Self::prepare_placed(node_count, secure, extra, None)
    }

    /// As [`ProcessCluster::prepare_with`], with `shards` in place of the default two shards.
    pub fn prepare_placed(node_count: usize, secure: bool, extra: &str, shards: Option<&str>) -> ProcessCluster {
        let dir = tempfile::tempdir().expect("temp dir");
        // Free ports (bound, then let go): the default admin port, gRPC's + 1000, may be taken.
        let free_addrs = |count: usize| -> Vec<String> {
            let listeners: Vec<std::net::TcpListener> = (0..count)
                .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("bind"))
                .collect();
            listeners
                .iter()
                .map(|listener| listener.local_addr().expect("addr").to_string())
                .collect()
        };
        let mut addrs = free_addrs(node_count * 2);
        let admin_addrs = addrs.split_off(node_count);
        let mut toml = String::from(
            "[raft]\nelection_timeout_ms_min = 300\nelection_timeout_ms_max = 600\nheartbeat_interval_ms = 50\nsnapshot_ops_since_last = 500\n",
        );
        let certs = dir.path().join("certs");
        if secure {
            toml.push_str(&format!(
                "[security]\nca_file = \"{0}/ca.pem\"\ntokens_file = \"{0}/tokens.toml\"\n",
                certs.display()
            ));
        } else {
            toml.push_str("[security]\ninsecure = true\n");
        }
        for (position, (addr, admin_addr)) in addrs.iter().zip(&admin_addrs).enumerate() {
            let id = position + 1;
            let data = dir.path().join(format!("node{id}"));
            toml.push_str(&format!(
                "[[nodes]]\nid = {id}\naddr = \"{addr}\"\nadmin_addr = \"{admin_addr}\"\ndata_dir = \"{}\"\n",
                data.display()
            ));
            if secure {
                toml.push_str(&format!(
                    "cert_file = \"{0}/node{id}.pem\"\nkey_file = \"{0}/node{id}.key\"\n",
                    certs.display()
                ));
            }
        }
        let replicas: Vec<String> = (1..=node_count).map(|id| id.to_string()).collect();
        let replicas = replicas.join(", ");
        match shards {
            Some(shards) => toml.push_str(shards),
            None => {
                toml.push_str(&format!("[[shards]]\nid = 1\nend = \"m\"\nreplicas = [{replicas}]\n"));
                toml.push_str(&format!("[[shards]]\nid = 2\nstart = \"m\"\nreplicas = [{replicas}]\n"));
            }
        }
        toml.push_str(extra);
        let config = dir.path().join("cluster.toml");
        std::fs::write(&config, toml).expect("write config");
        if secure {
            let made = Command::new(SCRIPTS.to_string() + "/certs.sh")
                .arg(&config)
                .output()
                .expect("run scripts/certs.sh");
            assert!(made.status.success(), "scripts/certs.sh: {}", stderr(&made));
        }
        ProcessCluster {
            dir,
            config,
            addrs,
            admin_addrs,
            nodes: (0..node_count).map(|_| None).collect(),
            certs: secure.then_some(certs),
        }
    }

    /// Starts every node and waits until every shard has a leader.
    pub fn start_all(&mut self) {
        for id in 1..=self.nodes.len() {
            self.spawn(id);
        }
        self.wait_for_leaders();
    }

    /// Node `id`'s data directory.
    pub fn data_dir(&self, id: usize) -> PathBuf {
        self.dir.path().join(format!("node{id}"))
    }

    pub fn spawn(&mut self, id: usize) {
        let log = std::fs::File::create(self.dir.path().join(format!("node{id}.log"))).expect("log file");
        let child = Command::new(LEDGER)
            .args(["serve", "--config"])
            .arg(&self.config)
            .args(["--node", &id.to_string()])
            .env("RUST_LOG", "info,openraft=warn")
            // The node logs to stdout (tracing's default); panics and startup errors go to stderr.
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("spawn ledger serve");
        self.nodes[id - 1] = Some(child);
    }

    /// The process id of node `id`, while it runs.
    pub fn pid(&self, id: usize) -> Option<u32> {
        self.nodes[id - 1].as_ref().map(Child::id)
    }

    pub fn kill(&mut self, id: usize) {
        if let Some(mut child) = self.nodes[id - 1].take() {
            child.kill().expect("SIGKILL");
            child.wait().expect("reap");
        }
    }

    /// Runs the CLI against this cluster (as admin, on a secured one).
    pub fn cli(&self, args: &[&str]) -> Output {
        self.cli_with(args, &[("FLASHLEDGER_TOKEN_FILE", self.token_file("admin"))])
    }

    /// Runs the CLI with these environment variables (and no other credential variable).
    pub fn cli_with(&self, args: &[&str], env: &[(&str, Option<PathBuf>)]) -> Output {
        let mut command = Command::new(LEDGER);
        command.args(args).arg("--config").arg(&self.config);
        for name in [
            "FLASHLEDGER_CA",
            "FLASHLEDGER_TOKEN",
            "FLASHLEDGER_TOKEN_FILE",
            "FLASHLEDGER_CERT",
            "FLASHLEDGER_KEY",
        ] {
            command.env_remove(name);
        }
        for (name, value) in env {
            if let Some(value) = value {
                command.env(name, value);
            }
        }
        command.output().expect("run ledger CLI")
    }

    /// The token file of `role` scripts/certs.sh made (secured clusters only).
    pub fn token_file(&self, role: &str) -> Option<PathBuf> {
        self.certs.as_ref().map(|certs| certs.join(format!("{role}.token")))
    }

    pub fn status(&self) -> Value {
        let output = self.cli(&["status", "--json"]);
        serde_json::from_slice(&output.stdout).unwrap_or(Value::Null)
    }

    pub fn wait_for_leaders(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let status = self.status();
            let shards: Vec<&Value> = status["nodes"]
                .as_array()
                .map(|nodes| {
                    nodes
                        .iter()
                        .flat_map(|n| n["shards"].as_array().into_iter().flatten())
                        .collect()
                })
                .unwrap_or_default();
            let all_up = status["nodes"]
                .as_array()
                .is_some_and(|n| n.iter().all(|n| n["shards"].is_array()));
            if all_up && !shards.is_empty() && shards.iter().all(|s| s["leader"].as_u64().unwrap_or(0) != 0) {
                return;
            }
            assert!(Instant::now() < deadline, "no leaders within 30 s: {status}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until nodes `ids` agree on a leader among them for every shard.
    pub fn wait_for_leaders_among(&self, ids: &[u64]) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let status = self.status();
            let leaders: Vec<u64> = status["nodes"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|n| n["shards"].as_array().into_iter().flatten())
                .map(|s| s["leader"].as_u64().unwrap_or(0))
                .collect();
            if !leaders.is_empty() && leaders.iter().all(|leader| ids.contains(leader)) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "no leader among {ids:?} within 30 s: {status}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until every node reports the same applied index and digest for every shard.
    pub fn wait_converged(&self) -> Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let status = self.status();
            let mut per_shard: std::collections::BTreeMap<u64, Vec<(u64, String, bool)>> = Default::default();
            let mut answered = 0;
            for node in status["nodes"].as_array().into_iter().flatten() {
                let Some(shards) = node["shards"].as_array() else {
                    continue;
                };
                answered += 1;
                for shard in shards {
                    per_shard
                        .entry(shard["shard_id"].as_u64().unwrap_or(0))
                        .or_default()
                        .push((
                            shard["applied_index"].as_u64().unwrap_or(0),
                            shard["state_digest"].as_str().unwrap_or("").to_string(),
                            shard["invariant_ok"].as_bool().unwrap_or(false),
                        ));
                }
            }
            let converged = answered == self.addrs.len()
                && per_shard.values().all(|replicas| {
                    replicas.windows(2).all(|w| w[0].0 == w[1].0 && w[0].1 == w[1].1) && replicas.iter().all(|r| r.2)
                });
            if converged {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "replicas did not converge within 60 s: {status}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for ProcessCluster {
    fn drop(&mut self) {
        for child in self.nodes.iter_mut().flatten() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A tokio runtime for a test's clients (two workers: the nodes need the rest of the machine).
pub fn client_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}
