//! `manifest.json`, the table of contents of a backup directory: format version, cluster name,
//! and per shard its range, log index and term, state digest, and its file's name, length and
//! SHA-256. Written last (temporary file, fsync, rename), so its presence says the backup is
//! whole; read with suspicion, since it is a file an operator may have edited or cut: every
//! field is checked before restore trusts it.

use std::collections::BTreeSet;

use serde::Deserialize;
use serde::Serialize;

use crate::backup::shard_file_name;
use crate::types::ShardId;

/// The manifest's file name in a backup directory.
pub const MANIFEST_FILE: &str = "manifest.json";
/// The manifest format this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// A manifest larger than this is not one this build wrote (a shard entry takes ~400 bytes).
pub const MANIFEST_BYTES_MAX: u64 = 4 * 1024 * 1024;

/// A backup's manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format_version: u32,
    /// `cluster.name` of the cluster backed up (for the operator; restore does not require it).
    pub cluster_name: String,
    /// When the backup finished, by the clock of the machine that took it (ms since the epoch).
    pub created_at_ms: u64,
    pub shards: Vec<ShardEntry>,
}

/// One shard of a backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShardEntry {
    pub shard_id: ShardId,
    /// The shard's SKU range `[start, end)`; an empty `end` is unbounded.
    pub start: String,
    pub end: String,
    /// The last log entry the image reflects.
    pub log_index: u64,
    pub log_term: u64,
    /// The state digest at `log_index` (16 hexadecimal digits, as `ledger status` prints it).
    pub state_digest: String,
    /// The shard file, `shard-<id>.snap`: no other name is accepted (nor a path).
    pub file: String,
    pub bytes: u64,
    /// SHA-256 of the file (64 hexadecimal digits).
    pub sha256: String,
}

/// Why a manifest is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    #[error("manifest.json is not valid: {0}")]
    Malformed(String),
    #[error("manifest.json has format version {found}; this build reads version {FORMAT_VERSION} only")]
    UnknownVersion { found: u64 },
    #[error("manifest.json, shard {shard_id}: {message}")]
    Shard { shard_id: ShardId, message: String },
}

/// Only the version, read before the rest: a manifest of another version is named as such, not
/// reported as a field this build does not know.
#[derive(Deserialize)]
struct VersionOnly {
    format_version: serde_json::Value,
}

impl Manifest {
    /// Parses and checks manifest text.
    pub fn parse(text: &str) -> Result<Manifest, ManifestError> {
        let version: VersionOnly = serde_json::from_str(text).map_err(|e| ManifestError::Malformed(e.to_string()))?;
        match version.format_version.as_u64() {
            Some(found) if found == u64::from(FORMAT_VERSION) => {}
            Some(found) => return Err(ManifestError::UnknownVersion { found }),
            None => {
                return Err(ManifestError::Malformed(format!(
                    "format_version is {}, not a version number",
                    version.format_version
                )));
            }
        }
        let manifest: Manifest = serde_json::from_str(text).map_err(|e| ManifestError::Malformed(e.to_string()))?;
        manifest.check()?;
        Ok(manifest)
    }

    /// The manifest as the text written to disk.
    pub fn to_text(&self) -> String {
        serde_json::to_string_pretty(self).expect("a manifest is plain data") + "\n"
    }

    /// Checks what a well-formed manifest must say beyond its types.
    pub fn check(&self) -> Result<(), ManifestError> {
        if self.shards.is_empty() {
            return Err(ManifestError::Malformed("it lists no shard".into()));
        }
        let mut seen = BTreeSet::new();
        for shard in &self.shards {
            let refuse = |message: String| ManifestError::Shard {
                shard_id: shard.shard_id,
                message,
            };
            if !seen.insert(shard.shard_id) {
                return Err(refuse("listed twice".into()));
            }
            if shard.file != shard_file_name(shard.shard_id) {
                return Err(refuse(format!(
                    "file {:?} is not {:?}",
                    shard.file,
                    shard_file_name(shard.shard_id)
                )));
            }
            if !is_hex(&shard.state_digest, 16) {
                return Err(refuse(format!(
                    "state_digest {:?} is not 16 hexadecimal digits",
                    shard.state_digest
                )));
            }
            if !is_hex(&shard.sha256, 64) {
                return Err(refuse(format!(
                    "sha256 {:?} is not 64 hexadecimal digits",
                    shard.sha256
                )));
            }
            if !shard.end.is_empty() && shard.start >= shard.end {
                return Err(refuse(format!("range [{:?}, {:?}) is empty", shard.start, shard.end)));
            }
        }
        Ok(())
    }

    /// The entry of shard `shard_id`.
    pub fn shard(&self, shard_id: ShardId) -> Option<&ShardEntry> {
        self.shards.iter().find(|shard| shard.shard_id == shard_id)
    }
}

impl ShardEntry {
    /// The state digest as a number (checked by [`Manifest::check`]).
    pub fn digest(&self) -> Option<u64> {
        u64::from_str_radix(&self.state_digest, 16).ok()
    }
}

fn is_hex(text: &str, digits: usize) -> bool {
    text.len() == digits && text.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest() -> Manifest {
        Manifest {
            format_version: FORMAT_VERSION,
            cluster_name: "flashledger".into(),
            created_at_ms: 1,
            shards: vec![
                ShardEntry {
                    shard_id: 1,
                    start: String::new(),
                    end: "m".into(),
                    log_index: 42,
                    log_term: 3,
                    state_digest: "00112233445566ff".into(),
                    file: "shard-1.snap".into(),
                    bytes: 100,
                    sha256: "ab".repeat(32),
                },
                ShardEntry {
                    shard_id: 2,
                    start: "m".into(),
                    end: String::new(),
                    log_index: 7,
                    log_term: 2,
                    state_digest: "0000000000000001".into(),
                    file: "shard-2.snap".into(),
                    bytes: 60,
                    sha256: "cd".repeat(32),
                },
            ],
        }
    }

    fn refused(text: &str) -> String {
        Manifest::parse(text).expect_err("refused").to_string()
    }

    /// The manifest's text with `edit` applied to its JSON value.
    fn edited(edit: impl FnOnce(&mut serde_json::Value)) -> String {
        let mut value = serde_json::to_value(manifest()).expect("to json");
        edit(&mut value);
        value.to_string()
    }

    #[test]
    fn a_manifest_round_trips() {
        let text = manifest().to_text();
        assert_eq!(Manifest::parse(&text).expect("parses"), manifest());
        assert_eq!(manifest().shards[0].digest(), Some(0x0011_2233_4455_66ff));
    }

    #[test]
    fn hostile_manifests_are_refused_with_the_reason() {
        assert!(refused("").contains("not valid"));
        assert!(refused("[1, 2]").contains("not valid"));
        assert!(refused("{\"format_version\": 1").contains("not valid"));
        assert!(refused(&"[".repeat(100_000)).contains("not valid"));
        assert!(refused(&edited(|v| v["format_version"] = 2.into())).contains("format version 2"));
        assert!(refused(&edited(|v| v["format_version"] = "1".into())).contains("not a version number"));
        assert!(refused(&edited(|v| v["format_version"] = (-1).into())).contains("not a version number"));
        assert!(refused(&edited(|v| v["extra"] = 1.into())).contains("unknown field"));
        assert!(refused(&edited(|v| v["shards"] = serde_json::json!([]))).contains("no shard"));
        assert!(refused(&edited(|v| v["shards"][0]["log_index"] = (-5).into())).contains("not valid"));
        assert!(refused(&edited(|v| v["shards"][0]["bytes"] = "many".into())).contains("not valid"));
        assert!(refused(&edited(|v| v["shards"][0]["nonsense"] = 1.into())).contains("unknown field"));
        let missing = edited(|v| {
            v["shards"][0].as_object_mut().expect("object").remove("sha256");
        });
        assert!(refused(&missing).contains("missing field `sha256`"));
        let twice = edited(|v| v["shards"][1]["shard_id"] = 1.into());
        assert!(refused(&twice).contains("listed twice"));
        for file in ["../../etc/passwd", "/etc/passwd", "shard-2.snap", "shard-1.snap/", ""] {
            let error = refused(&edited(|v| v["shards"][0]["file"] = file.into()));
            assert!(error.contains("shard 1: file"), "{file}: {error}");
        }
        for digest in ["", "0011", "00112233445566FF", "00112233445566zz", "00112233445566ff0"] {
            let error = refused(&edited(|v| v["shards"][0]["state_digest"] = digest.into()));
            assert!(error.contains("state_digest"), "{digest}: {error}");
        }
        let error = refused(&edited(|v| v["shards"][0]["sha256"] = "ab".into()));
        assert!(error.contains("sha256"), "{error}");
        let error = refused(&edited(|v| v["shards"][0]["start"] = "n".into()));
        assert!(error.contains("shard 1: range [\"n\", \"m\") is empty"), "{error}");
    }
}
