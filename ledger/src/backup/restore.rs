//! `ledger restore`: seeds the empty data directories of a new cluster from a backup, so that
//! on `ledger serve` each shard starts from the backup's state and takes writes.
//!
//! Two steps, so that nothing is written unless everything checks: [`RestorePlan::check`]
//! reads and verifies the whole backup (manifest; per shard the file's length, SHA-256, frame,
//! image, index and digest) against the new config (same shard ids and ranges; every data
//! directory to seed empty or absent); [`RestorePlan::seed`] then writes, per node and hosted
//! shard, the image as the shard's snapshot.
//!
//! The new cluster is a new Raft group per shard: the seeded snapshot carries the new config's
//! replicas and addresses as its membership, and the log id of the backup's index at term 0 —
//! a log of the new group begins there, the replicas agree on it, and the first leader's term
//! (1 or later) orders after it. The state digest does not depend on the log id.

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::io::Read;
use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;

use openraft::BasicNode;
use openraft::Membership;
use openraft::vote::RaftLeaderIdExt;

use crate::applied::AppliedStore;
use crate::applied::FileSnapshots;
use crate::applied::ShardImage;
use crate::applied::snapshot_dir;
use crate::backup::manifest::MANIFEST_BYTES_MAX;
use crate::backup::manifest::MANIFEST_FILE;
use crate::backup::manifest::Manifest;
use crate::backup::manifest::ManifestError;
use crate::backup::manifest::ShardEntry;
use crate::backup::read_shard_file;
use crate::config::ClusterConfig;
use crate::security::tokens::hex;
use crate::security::tokens::sha256;
use crate::types::LogId;
use crate::types::NodeId;
use crate::types::ShardId;
use crate::types::SnapshotMeta;
use crate::types::StoredMembership;
use crate::types::TypeConfig;

/// Why a restore was refused (nothing was written) or failed while seeding.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("{path}: no manifest.json: not a backup directory, or a backup that did not finish")]
    NoManifest { path: PathBuf },
    #[error("{path}: {message}")]
    Unreadable { path: PathBuf, message: String },
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error("shard {shard_id} ({path}): {message}")]
    ShardFile {
        shard_id: ShardId,
        path: PathBuf,
        message: String,
    },
    #[error("the config does not match the backup: {0}")]
    ConfigMismatch(String),
    #[error("node {node_id}'s data directory {path} is not empty: restore seeds empty data directories only")]
    DataDirNotEmpty { node_id: NodeId, path: PathBuf },
    #[error("seeding node {node_id}'s data directory {path}: {message}")]
    Seed {
        node_id: NodeId,
        path: PathBuf,
        message: String,
    },
}

/// A checked backup and where it will go.
pub struct RestorePlan {
    pub manifest: Manifest,
    /// Every shard's image, checked.
    images: BTreeMap<ShardId, ShardImage>,
    /// The nodes to seed, with the shards each hosts.
    pub targets: Vec<SeedTarget>,
}

/// One node's data directory to seed.
#[derive(Debug, Clone)]
pub struct SeedTarget {
    pub node_id: NodeId,
    pub data_dir: PathBuf,
    pub shards: Vec<ShardId>,
}

impl RestorePlan {
    /// Reads and checks the backup in `from` against `config`, for every node of `config` or
    /// only `only_node`. Writes nothing.
    pub fn check(from: &Path, config: &ClusterConfig, only_node: Option<NodeId>) -> Result<RestorePlan, RestoreError> {
        let manifest = read_manifest(from)?;
        check_ranges(&manifest, config)?;
        let targets = seed_targets(config, only_node)?;
        let hosted: BTreeSet<ShardId> = targets.iter().flat_map(|t| t.shards.iter().copied()).collect();
        let mut images = BTreeMap::new();
        // Every shard's file is checked, also those the nodes seeded now do not host: a backup
        // is whole or refused.
        for entry in &manifest.shards {
            let image = check_shard_file(from, entry)?;
            if hosted.contains(&entry.shard_id) {
                images.insert(entry.shard_id, image);
            }
        }
        Ok(RestorePlan {
            manifest,
            images,
            targets,
        })
    }

    /// Writes each target node's shards as their initial snapshots, with `config`'s membership.
    pub fn seed(&self, config: &ClusterConfig) -> Result<(), RestoreError> {
        for target in &self.targets {
            let failed = |message: String| RestoreError::Seed {
                node_id: target.node_id,
                path: target.data_dir.clone(),
                message,
            };
            for shard_id in &target.shards {
                let shard = config
                    .shards
                    .iter()
                    .find(|shard| shard.id == *shard_id)
                    .expect("targets name config shards");
                let image = self.images.get(shard_id).expect("checked images of every hosted shard");
                let seeded = with_new_membership(image, config, &shard.replicas).map_err(failed)?;
                let meta = SnapshotMeta {
                    last_log_id: seeded.meta.applied,
                    last_membership: seeded.meta.membership.clone(),
                };
                let snapshots = FileSnapshots::open(&snapshot_dir(&target.data_dir), *shard_id)
                    .map_err(|e| failed(e.to_string()))?;
                AppliedStore::new(Arc::new(snapshots))
                    .save_image(&meta, &seeded.frozen())
                    .map_err(|e| failed(format!("shard {shard_id}: {e}")))?;
            }
        }
        Ok(())
    }
}

/// `image` as the first state of a new Raft group of `replicas`: applied up to the same index,
/// with the membership of the new cluster.
fn with_new_membership(image: &ShardImage, config: &ClusterConfig, replicas: &[NodeId]) -> Result<ShardImage, String> {
    let index = image.meta.applied.map_or(0, |id| id.index);
    let first_replica = replicas.iter().copied().min().unwrap_or_default();
    let log_id = LogId::new(
        <TypeConfig as openraft::RaftTypeConfig>::LeaderId::new_committed(0, first_replica),
        index,
    );
    let nodes: BTreeMap<NodeId, BasicNode> = replicas
        .iter()
        .map(|id| {
            let addr = config.node(*id).map(|node| node.addr.clone()).unwrap_or_default();
            (*id, BasicNode::new(addr))
        })
        .collect();
    let voters: BTreeSet<NodeId> = replicas.iter().copied().collect();
    let membership = Membership::new(vec![voters], nodes).map_err(|e| format!("membership: {e}"))?;
    let mut seeded = image.clone();
    seeded.meta.applied = Some(log_id);
    seeded.meta.membership = StoredMembership::new(Some(log_id), membership);
    Ok(seeded)
}

fn read_manifest(from: &Path) -> Result<Manifest, RestoreError> {
    let path = from.join(MANIFEST_FILE);
    let unreadable = |message: String| RestoreError::Unreadable {
        path: path.clone(),
        message,
    };
    let file = match std::fs::File::open(&path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(RestoreError::NoManifest {
                path: from.to_path_buf(),
            });
        }
        Err(e) => return Err(unreadable(e.to_string())),
    };
    let mut text = String::new();
    file.take(MANIFEST_BYTES_MAX + 1)
        .read_to_string(&mut text)
        .map_err(|e| unreadable(e.to_string()))?;
    if text.len() as u64 > MANIFEST_BYTES_MAX {
        return Err(unreadable(format!("larger than {MANIFEST_BYTES_MAX} bytes")));
    }
    Ok(Manifest::parse(&text)?)
}

/// The image in `entry`'s file, after checking the file is the one the manifest describes.
fn check_shard_file(from: &Path, entry: &ShardEntry) -> Result<ShardImage, RestoreError> {
    let path = from.join(&entry.file);
    let refuse = |message: String| RestoreError::ShardFile {
        shard_id: entry.shard_id,
        path: path.clone(),
        message,
    };
    let length = std::fs::metadata(&path)
        .map_err(|e| refuse(format!("missing or unreadable: {e}")))?
        .len();
    if length != entry.bytes {
        return Err(refuse(format!(
            "truncated or grown: {length} bytes, the manifest says {}",
            entry.bytes
        )));
    }
    let bytes = std::fs::read(&path).map_err(|e| refuse(format!("unreadable: {e}")))?;
    if bytes.len() as u64 != entry.bytes {
        return Err(refuse(format!("changed while being read ({} bytes)", bytes.len())));
    }
    let checksum = hex(&sha256(&bytes));
    if checksum != entry.sha256 {
        return Err(refuse(format!(
            "altered: its SHA-256 is {checksum}, the manifest says {}",
            entry.sha256
        )));
    }
    let (_, image) = read_shard_file(&bytes).map_err(|e| refuse(e.to_string()))?;
    let index = image.meta.applied.map_or(0, |id| id.index);
    if index != entry.log_index {
        return Err(refuse(format!(
            "holds the state at index {index}, the manifest says {}",
            entry.log_index
        )));
    }
    let digest = format!("{:016x}", image.ledger.digest());
    if digest != entry.state_digest {
        return Err(refuse(format!(
            "its state digest is {digest}, the manifest says {}",
            entry.state_digest
        )));
    }
    Ok(image)
}

/// The config must have exactly the backup's shards, with the same ranges.
fn check_ranges(manifest: &Manifest, config: &ClusterConfig) -> Result<(), RestoreError> {
    let in_backup: BTreeSet<ShardId> = manifest.shards.iter().map(|s| s.shard_id).collect();
    let in_config: BTreeSet<ShardId> = config.shards.iter().map(|s| s.id).collect();
    if in_backup != in_config {
        return Err(RestoreError::ConfigMismatch(format!(
            "the backup has shards {in_backup:?}, the config {in_config:?}"
        )));
    }
    for shard in &config.shards {
        let entry = manifest.shard(shard.id).expect("same shard ids");
        if (entry.start.as_str(), entry.end.as_str()) != (shard.start.as_str(), shard.end.as_str()) {
            return Err(RestoreError::ConfigMismatch(format!(
                "shard {} covers [{:?}, {:?}) in the backup, [{:?}, {:?}) in the config",
                shard.id, entry.start, entry.end, shard.start, shard.end
            )));
        }
    }
    Ok(())
}

/// The nodes to seed (all of the config's, or `only_node`), each data directory empty or absent.
fn seed_targets(config: &ClusterConfig, only_node: Option<NodeId>) -> Result<Vec<SeedTarget>, RestoreError> {
    if let Some(node_id) = only_node
        && config.node(node_id).is_none()
    {
        return Err(RestoreError::ConfigMismatch(format!(
            "node {node_id} is not in the config"
        )));
    }
    let mut targets = Vec::new();
    for node in config
        .nodes
        .iter()
        .filter(|n| only_node.is_none_or(|only| only == n.id))
    {
        match std::fs::read_dir(&node.data_dir) {
            Ok(mut entries) => {
                if entries.next().is_some() {
                    return Err(RestoreError::DataDirNotEmpty {
                        node_id: node.id,
                        path: node.data_dir.clone(),
                    });
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(RestoreError::Unreadable {
                    path: node.data_dir.clone(),
                    message: e.to_string(),
                });
            }
        }
        targets.push(SeedTarget {
            node_id: node.id,
            data_dir: node.data_dir.clone(),
            shards: config
                .shards
                .iter()
                .filter(|s| s.replicas.contains(&node.id))
                .map(|s| s.id)
                .collect(),
        });
    }
    Ok(targets)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backup::ShardBackup;
    use crate::backup::manifest::FORMAT_VERSION;
    use crate::backup::shard_file_name;
    use crate::backup::tests::sample_image;

    /// A config of 3 nodes with data directories under `root`, shards 1 `[.., m)` and 2 `[m, ..)`.
    fn config(root: &Path, first_end: &str) -> ClusterConfig {
        let mut text = String::from("[security]\ninsecure = true\n");
        for id in 1..=3 {
            text.push_str(&format!(
                "[[nodes]]\nid = {id}\naddr = \"127.0.0.1:{}\"\ndata_dir = \"{}\"\n",
                9100 + id,
                root.join(format!("node{id}")).display()
            ));
        }
        text.push_str(&format!(
            "[[shards]]\nid = 1\nend = \"{first_end}\"\nreplicas = [1, 2, 3]\n[[shards]]\nid = 2\nstart = \"{first_end}\"\nreplicas = [1, 2, 3]\n"
        ));
        ClusterConfig::parse(&text, "test").expect("config")
    }

    /// A backup of two shards (the same sample state) in `dir`, as `ledger backup` writes it.
    fn write_backup(dir: &Path) {
        std::fs::create_dir_all(dir).expect("mkdir");
        let image = sample_image();
        let shards = [(1, "", "m"), (2, "m", "")]
            .into_iter()
            .map(|(shard_id, start, end)| {
                let backup = ShardBackup::of_image(shard_id, &image.frozen()).expect("backup");
                std::fs::write(dir.join(shard_file_name(shard_id)), &backup.file).expect("write");
                ShardEntry {
                    shard_id,
                    start: start.into(),
                    end: end.into(),
                    log_index: backup.log_index,
                    log_term: backup.log_term,
                    state_digest: format!("{:016x}", backup.state_digest),
                    file: shard_file_name(shard_id),
                    bytes: backup.file.len() as u64,
                    sha256: hex(&backup.sha256),
                }
            })
            .collect();
        let manifest = Manifest {
            format_version: FORMAT_VERSION,
            cluster_name: "test".into(),
            created_at_ms: 1,
            shards,
        };
        std::fs::write(dir.join(MANIFEST_FILE), manifest.to_text()).expect("manifest");
    }

    #[test]
    fn a_restored_data_dir_loads_the_backup_state_with_the_new_membership() {
        let root = tempfile::tempdir().expect("tempdir");
        let backup_dir = root.path().join("backup");
        write_backup(&backup_dir);
        let config = config(root.path(), "m");
        let plan = RestorePlan::check(&backup_dir, &config, None).expect("checks");
        assert_eq!(plan.targets.len(), 3);
        plan.seed(&config).expect("seeds");
        let image = sample_image();
        for node in 1..=3 {
            let dir = snapshot_dir(&root.path().join(format!("node{node}")));
            for shard in [1, 2] {
                let snapshots = FileSnapshots::open(&dir, shard).expect("open");
                let loaded = AppliedStore::new(Arc::new(snapshots)).load().expect("loads");
                assert_eq!(loaded.ledger, image.ledger);
                let applied = loaded.meta.applied.expect("applied");
                assert_eq!(applied.index, 2);
                assert_eq!(
                    applied.committed_leader_id().term,
                    0,
                    "a new group's log starts at term 0"
                );
                let membership = loaded.meta.membership.membership();
                let voters: Vec<NodeId> = membership.voter_ids().collect();
                assert_eq!(voters, vec![1, 2, 3]);
                assert_eq!(membership.get_node(&2).map(|n| n.addr.as_str()), Some("127.0.0.1:9102"));
            }
        }
        // Seeded directories are no longer empty: a second restore is refused.
        let error = RestorePlan::check(&backup_dir, &config, Some(2))
            .err()
            .expect("refused");
        assert!(
            matches!(error, RestoreError::DataDirNotEmpty { node_id: 2, .. }),
            "{error}"
        );
    }

    #[test]
    fn a_refused_restore_writes_nothing() {
        let root = tempfile::tempdir().expect("tempdir");
        let backup_dir = root.path().join("backup");
        write_backup(&backup_dir);
        let refused = |config: &ClusterConfig, only: Option<NodeId>| {
            let error = RestorePlan::check(&backup_dir, config, only).err().expect("refused");
            for node in 1..=3 {
                assert!(!root.path().join(format!("node{node}")).exists());
            }
            error.to_string()
        };
        assert!(refused(&config(root.path(), "n"), None).contains("shard 1 covers [\"\", \"m\") in the backup"));
        assert!(refused(&config(root.path(), "m"), Some(9)).contains("node 9 is not in the config"));

        // A manifest that states another digest than the file's image (edited, or another file).
        let manifest_path = backup_dir.join(MANIFEST_FILE);
        let text = std::fs::read_to_string(&manifest_path).expect("read");
        let mut manifest = Manifest::parse(&text).expect("parses");
        manifest.shards[1].state_digest = "0123456789abcdef".into();
        std::fs::write(&manifest_path, manifest.to_text()).expect("write");
        let error = refused(&config(root.path(), "m"), None);
        assert!(
            error.contains("shard 2") && error.contains("the manifest says 0123456789abcdef"),
            "{error}"
        );
        manifest.shards[1].state_digest = format!("{:016x}", sample_image().ledger.digest());
        manifest.shards[1].log_index = 1;
        std::fs::write(&manifest_path, manifest.to_text()).expect("write");
        let error = refused(&config(root.path(), "m"), None);
        assert!(
            error.contains("holds the state at index 2, the manifest says 1"),
            "{error}"
        );

        // A file replaced by another whose SHA-256 the manifest was edited to match, but
        // damaged inside: its frame's CRC catches it.
        manifest.shards[1].log_index = 2;
        let file = backup_dir.join(shard_file_name(2));
        let mut bytes = std::fs::read(&file).expect("read");
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(&file, &bytes).expect("write");
        manifest.shards[1].sha256 = hex(&sha256(&bytes));
        std::fs::write(&manifest_path, manifest.to_text()).expect("write");
        let error = refused(&config(root.path(), "m"), None);
        assert!(error.contains("checksum mismatch"), "{error}");
    }
}
