//! `ledger backup` and `ledger restore` (see `ledger::backup` and docs/operations.md, "Backup and restore").
//!
//! `backup --out DIR` asks each shard's leader for its state (`Cluster/Backup`), writes
//! `DIR/shard-<id>.snap` as it arrives, checks each file the way restore will (SHA-256, frame,
//! image, index, digest), and writes `DIR/manifest.json` last (temporary file, fsync, rename):
//! a backup cut short has no manifest. `restore --from DIR --config NEW.toml` checks the whole
//! backup against the new config before it writes anything, then seeds the data directories.

use std::io::Write;
use std::path::Path;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use std::time::Instant;

use anyhow::Context;
use anyhow::bail;
use clap::Args;
use flashledger_client::Credentials;
use flashledger_proto::metadata;
use flashledger_proto::v1 as pb;
use flashledger_proto::v1::cluster_client::ClusterClient;
use ledger::backup::ShardBackup;
use ledger::backup::manifest::FORMAT_VERSION;
use ledger::backup::manifest::MANIFEST_FILE;
use ledger::backup::manifest::Manifest;
use ledger::backup::manifest::ShardEntry;
use ledger::backup::read_shard_file;
use ledger::backup::restore::RestorePlan;
use ledger::backup::shard_file_name;
use ledger::config::ClusterConfig;
use ledger::security::tokens::hex;
use ledger::security::tokens::sha256;
use serde_json::json;

use crate::cli::Target;

#[derive(Debug, Args)]
pub struct BackupArgs {
    /// The directory to write the backup into (created; must be empty if it exists).
    #[arg(long)]
    pub out: PathBuf,
    #[command(flatten)]
    pub target: Target,
}

#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// The backup directory (`ledger backup --out`).
    #[arg(long)]
    pub from: PathBuf,
    /// The new cluster's config: its nodes' data directories are seeded; its shards must be
    /// the backup's (same ids and ranges).
    #[arg(long)]
    pub config: PathBuf,
    /// Seed only this node's data directory (one host of a multi-host cluster).
    #[arg(long)]
    pub node: Option<u64>,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// How long one shard's backup may take, from the request to its last byte.
const SHARD_BACKUP_TIMEOUT: Duration = Duration::from_secs(300);
/// Nodes asked for one shard before giving up (each redirect to the leader counts).
const SHARD_ATTEMPTS_MAX: usize = 6;
/// Largest chunk accepted from a node (the node sends at most its `server.message_bytes_max`).
const CHUNK_BYTES_MAX: usize = 64 * 1024 * 1024;

pub async fn backup(args: &BackupArgs) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let credentials = args.target.credentials()?;
    let addresses = args.target.addresses()?;
    create_empty_dir(&args.out)?;
    let map = shard_map(&addresses, &credentials).await?;
    let mut entries = Vec::new();
    for shard in &map.shards {
        let shard_started = Instant::now();
        let backup = fetch_shard(shard, &map, &addresses, &credentials).await?;
        let entry = write_shard_file(&args.out, shard, &backup)?;
        if !args.target.json {
            println!(
                "shard {}: index {} term {} digest {} {} bytes ({} ms)",
                entry.shard_id,
                entry.log_index,
                entry.log_term,
                entry.state_digest,
                entry.bytes,
                shard_started.elapsed().as_millis()
            );
        }
        entries.push(entry);
    }
    let manifest = Manifest {
        format_version: FORMAT_VERSION,
        cluster_name: args
            .target
            .config()
            .map_or_else(|| "unknown".to_string(), |config| config.cluster.name),
        created_at_ms: ledger::node::now_ms(),
        shards: entries,
    };
    write_manifest(&args.out, &manifest)?;
    let elapsed_ms = started.elapsed().as_millis() as u64;
    if args.target.json {
        let value = json!({ "dir": args.out, "elapsed_ms": elapsed_ms, "manifest": manifest });
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        println!(
            "backup of {} shards complete in {elapsed_ms} ms: {}",
            manifest.shards.len(),
            args.out.join(MANIFEST_FILE).display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub fn restore(args: &RestoreArgs) -> anyhow::Result<ExitCode> {
    let config = ClusterConfig::load(&args.config)
        .with_context(|| format!("the new cluster's config {} is not usable", args.config.display()))?;
    let plan = RestorePlan::check(&args.from, &config, args.node).context("restore refused; nothing was written")?;
    plan.seed(&config).context("restore failed while seeding")?;
    if args.json {
        let targets: Vec<_> = plan
            .targets
            .iter()
            .map(|t| json!({ "node_id": t.node_id, "data_dir": t.data_dir, "shards": t.shards }))
            .collect();
        let value = json!({ "from": args.from, "seeded": targets, "manifest": plan.manifest });
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        for target in &plan.targets {
            println!(
                "node {}: seeded {} with shards {:?}",
                target.node_id,
                target.data_dir.display(),
                target.shards
            );
        }
        for shard in &plan.manifest.shards {
            println!(
                "shard {}: starts at index {} with digest {}",
                shard.shard_id, shard.log_index, shard.state_digest
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Creates `dir`, or accepts it empty: a backup never mixes with another's files.
fn create_empty_dir(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut entries = std::fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))?;
    if entries.next().is_some() {
        bail!("{} is not empty: back up into a new directory", dir.display());
    }
    Ok(())
}

/// The shard map, from the first node that answers.
async fn shard_map(addresses: &[String], credentials: &Credentials) -> anyhow::Result<pb::ShardMapReply> {
    let mut errors = Vec::new();
    for addr in addresses {
        let asked = async {
            let mut client = ClusterClient::new(flashledger_client::node_channel(
                addr,
                Duration::from_secs(2),
                credentials,
            )?);
            let reply = tokio::time::timeout(Duration::from_secs(5), client.shard_map(pb::ShardMapRequest {}))
                .await
                .map_err(|_| "no answer in 5 s".to_string())?
                .map_err(|status| format!("{:?}: {}", status.code(), status.message()))?;
            Ok::<_, String>(reply.into_inner())
        };
        match asked.await {
            Ok(map) => return Ok(map),
            Err(error) => errors.push(format!("{addr}: {error}")),
        }
    }
    bail!("no node answered with the shard map: {}", errors.join("; "))
}

/// Shard `shard`'s backup from its leader (the map's, else any node, following redirects).
async fn fetch_shard(
    shard: &pb::ShardInfo,
    map: &pb::ShardMapReply,
    addresses: &[String],
    credentials: &Credentials,
) -> anyhow::Result<ShardBackup> {
    let leader = map.nodes.iter().find(|node| node.id == shard.leader);
    let mut candidates: Vec<String> = leader.map(|node| node.addr.clone()).into_iter().collect();
    candidates.extend(addresses.iter().cloned());
    let mut errors = Vec::new();
    let mut next = 0;
    while next < candidates.len() && errors.len() < SHARD_ATTEMPTS_MAX {
        let addr = candidates[next].clone();
        next += 1;
        match tokio::time::timeout(SHARD_BACKUP_TIMEOUT, fetch_from(&addr, shard.shard_id, credentials)).await {
            Ok(Ok(backup)) => return Ok(backup),
            Ok(Err(Fetch::Redirect(leader))) => {
                // The node named the leader: ask it next.
                candidates.insert(next, leader);
                errors.push(format!("{addr}: not the leader"));
            }
            Ok(Err(Fetch::Failed(error))) => errors.push(format!("{addr}: {error}")),
            Err(_) => errors.push(format!(
                "{addr}: no whole answer in {} s",
                SHARD_BACKUP_TIMEOUT.as_secs()
            )),
        }
    }
    bail!("shard {}: no backup: {}", shard.shard_id, errors.join("; "))
}

enum Fetch {
    /// Not the leader; the leader's address.
    Redirect(String),
    Failed(String),
}

/// Shard `shard_id`'s backup streamed from the node at `addr`, checked: the bytes announced,
/// their SHA-256, and the file read back as restore reads it (index and digest as announced).
async fn fetch_from(addr: &str, shard_id: u64, credentials: &Credentials) -> Result<ShardBackup, Fetch> {
    let channel = flashledger_client::node_channel(addr, Duration::from_secs(2), credentials).map_err(Fetch::Failed)?;
    let mut client = ClusterClient::new(channel).max_decoding_message_size(CHUNK_BYTES_MAX);
    let mut stream = match client.backup(pb::BackupRequest { shard_id }).await {
        Ok(stream) => stream.into_inner(),
        Err(status) => {
            let leader = status
                .metadata()
                .get(metadata::LEADER_ADDR)
                .and_then(|v| v.to_str().ok());
            return Err(match leader {
                Some(leader) if status.code() == tonic::Code::Unavailable => Fetch::Redirect(leader.to_string()),
                _ => Fetch::Failed(format!("{:?}: {}", status.code(), status.message())),
            });
        }
    };
    let failed = |message: String| Fetch::Failed(message);
    let mut header: Option<pb::BackupHeader> = None;
    let mut file = Vec::new();
    while let Some(chunk) = stream
        .message()
        .await
        .map_err(|status| failed(format!("{:?}: {}", status.code(), status.message())))?
    {
        if let Some(first) = chunk.header {
            if header.is_some() {
                return Err(failed("a second header in the stream".into()));
            }
            // Sized from the header, but never beyond what a node would send in one backup.
            file.reserve(first.file_bytes.min(1 << 30) as usize);
            header = Some(first);
        }
        let Some(announced) = &header else {
            return Err(failed("the stream did not start with a header".into()));
        };
        if (file.len() + chunk.data.len()) as u64 > announced.file_bytes {
            return Err(failed(format!(
                "more than the {} bytes announced",
                announced.file_bytes
            )));
        }
        file.extend_from_slice(&chunk.data);
    }
    let header = header.ok_or_else(|| failed("an empty stream".into()))?;
    if file.len() as u64 != header.file_bytes {
        return Err(failed(format!(
            "{} bytes of the {} announced",
            file.len(),
            header.file_bytes
        )));
    }
    let checksum = sha256(&file);
    if checksum[..] != header.file_sha256[..] {
        return Err(failed("the file's SHA-256 is not the one announced".into()));
    }
    let (meta, image) = read_shard_file(&file).map_err(|e| failed(e.to_string()))?;
    let index = meta.last_log_id.map_or(0, |id| id.index);
    let digest = image.ledger.digest();
    if (index, digest) != (header.log_index, header.state_digest) {
        return Err(failed(format!(
            "the file holds index {index} digest {digest:016x}, the node announced {} {:016x}",
            header.log_index, header.state_digest
        )));
    }
    Ok(ShardBackup {
        shard_id,
        log_index: header.log_index,
        log_term: header.log_term,
        state_digest: header.state_digest,
        file,
        sha256: checksum,
    })
}

/// Writes shard `shard`'s file into `dir` (synced) and returns its manifest entry.
fn write_shard_file(dir: &Path, shard: &pb::ShardInfo, backup: &ShardBackup) -> anyhow::Result<ShardEntry> {
    let text = |bytes: &[u8], what: &str| {
        String::from_utf8(bytes.to_vec()).with_context(|| format!("shard {}: its {what} is not UTF-8", shard.shard_id))
    };
    let entry = ShardEntry {
        shard_id: shard.shard_id,
        start: text(&shard.start, "start")?,
        end: text(&shard.end, "end")?,
        log_index: backup.log_index,
        log_term: backup.log_term,
        state_digest: format!("{:016x}", backup.state_digest),
        file: shard_file_name(shard.shard_id),
        bytes: backup.file.len() as u64,
        sha256: hex(&backup.sha256),
    };
    write_synced(&dir.join(&entry.file), &backup.file)?;
    Ok(entry)
}

/// Writes the manifest last, atomically: a temporary file, synced, renamed, the directory synced.
fn write_manifest(dir: &Path, manifest: &Manifest) -> anyhow::Result<()> {
    let temporary = dir.join(format!("{MANIFEST_FILE}.tmp"));
    write_synced(&temporary, manifest.to_text().as_bytes())?;
    let path = dir.join(MANIFEST_FILE);
    std::fs::rename(&temporary, &path).with_context(|| format!("cannot rename to {}", path.display()))?;
    std::fs::File::open(dir)
        .and_then(|dir| dir.sync_all())
        .with_context(|| format!("cannot sync {}", dir.display()))
}

fn write_synced(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let mut file = std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cannot write {}", path.display()))
}
