//! Bearer tokens: `security.tokens_file` lists each token's SHA-256 digest (never the token),
//! its role and a name. The file is checked for changes at most once a second when a token
//! is presented, so adding, removing or rotating a token needs no restart; a file that no
//! longer parses leaves the last good set in force, with an error in the log.
//!
//! ```toml
//! [[tokens]]
//! name = "checkout"
//! role = "buyer-service"
//! sha256 = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
//! ```
//!
//! `ledger token new --role buyer-service --name checkout` prints a fresh token and its entry.

use std::collections::HashMap;
use std::path::Path;
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::PoisonError;
use std::time::Duration;
use std::time::Instant;
use std::time::SystemTime;

use serde::Deserialize;

use super::Role;

/// How often a presented token may make the node look at the file again.
const RECHECK_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokensFile {
    #[serde(default)]
    tokens: Vec<TokenEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenEntry {
    name: String,
    role: String,
    sha256: String,
}

/// The tokens in force, by digest.
type Tokens = HashMap<[u8; 32], (Role, String)>;

pub struct TokenStore {
    path: PathBuf,
    state: Mutex<Loaded>,
}

struct Loaded {
    tokens: Tokens,
    /// The file's modification time and length when `tokens` were read.
    version: Option<(SystemTime, u64)>,
    checked_at: Instant,
}

impl TokenStore {
    /// Reads `path`; fails (naming the problem) if it cannot be read or parsed.
    pub fn open(path: &Path) -> Result<TokenStore, String> {
        let version = file_version(path);
        let tokens = read_tokens(path)?;
        Ok(TokenStore {
            path: path.to_path_buf(),
            state: Mutex::new(Loaded {
                tokens,
                version,
                checked_at: Instant::now(),
            }),
        })
    }

    /// The role and name of `token`, if it is in force.
    pub fn lookup(&self, token: &str) -> Option<(Role, String)> {
        let digest = sha256(token.as_bytes());
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if state.checked_at.elapsed() >= RECHECK_INTERVAL {
            state.checked_at = Instant::now();
            let version = file_version(&self.path);
            if version != state.version {
                match read_tokens(&self.path) {
                    Ok(tokens) => {
                        tracing::info!(path = %self.path.display(), tokens = tokens.len(), "tokens file reloaded");
                        state.tokens = tokens;
                        state.version = version;
                    }
                    Err(error) => {
                        tracing::error!(%error, "tokens file changed but is unusable; keeping the last good tokens")
                    }
                }
            }
        }
        state.tokens.get(&digest).cloned()
    }
}

fn file_version(path: &Path) -> Option<(SystemTime, u64)> {
    let metadata = std::fs::metadata(path).ok()?;
    Some((metadata.modified().ok()?, metadata.len()))
}

fn read_tokens(path: &Path) -> Result<Tokens, String> {
    let shown = path.display();
    let text = std::fs::read_to_string(path).map_err(|e| format!("tokens file {shown}: {e}"))?;
    let file: TokensFile = toml::from_str(&text).map_err(|e| format!("tokens file {shown}: {e}"))?;
    let mut tokens = Tokens::new();
    for entry in file.tokens {
        let role = Role::parse(&entry.role).ok_or_else(|| {
            format!(
                "tokens file {shown}: token {:?} has unknown role {:?} (reader, buyer-service, admin)",
                entry.name, entry.role
            )
        })?;
        let digest = parse_digest(&entry.sha256).ok_or_else(|| {
            format!(
                "tokens file {shown}: token {:?}: sha256 must be 64 hex digits",
                entry.name
            )
        })?;
        tokens.insert(digest, (role, entry.name));
    }
    Ok(tokens)
}

pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    let mut out = [0; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn parse_digest(text: &str) -> Option<[u8; 32]> {
    let text = text.trim();
    if text.len() != 64 || !text.is_ascii() {
        return None;
    }
    let mut out = [0; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// A new random token (256 bits from the OS, hex): what `ledger token new` hands out.
pub fn new_token() -> Result<String, String> {
    let mut bytes = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .map_err(|_| "the OS random number generator failed".to_string())?;
    Ok(hex(&bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str, role: &str, token: &str) -> String {
        format!(
            "[[tokens]]\nname = \"{name}\"\nrole = \"{role}\"\nsha256 = \"{}\"\n",
            hex(&sha256(token.as_bytes()))
        )
    }

    #[test]
    fn sha256_is_the_standard_one() {
        assert_eq!(
            hex(&sha256(b"test")),
            "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
        );
    }

    #[test]
    fn a_token_is_found_by_its_digest_and_rotation_needs_no_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.toml");
        std::fs::write(&path, entry("checkout", "buyer-service", "old-secret")).unwrap();
        let store = TokenStore::open(&path).unwrap();
        assert_eq!(
            store.lookup("old-secret"),
            Some((Role::BuyerService, "checkout".into()))
        );
        assert_eq!(store.lookup("wrong"), None);

        // Rotate: the new token replaces the old one (a different length, so the change is
        // seen even within the file system's timestamp granularity).
        std::fs::write(&path, entry("checkout-rotated", "buyer-service", "new-secret")).unwrap();
        std::thread::sleep(RECHECK_INTERVAL + Duration::from_millis(50));
        assert_eq!(
            store.lookup("new-secret"),
            Some((Role::BuyerService, "checkout-rotated".into()))
        );
        assert_eq!(store.lookup("old-secret"), None);

        // A broken file keeps the last good tokens.
        std::fs::write(&path, "[[tokens]]\nname = 1\n").unwrap();
        std::thread::sleep(RECHECK_INTERVAL + Duration::from_millis(50));
        assert!(store.lookup("new-secret").is_some());
    }

    #[test]
    fn bad_files_are_refused_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.toml");
        assert!(TokenStore::open(&path).err().unwrap().contains("tokens file"));
        std::fs::write(&path, entry("x", "root", "t")).unwrap();
        assert!(TokenStore::open(&path).err().unwrap().contains("unknown role"));
        std::fs::write(&path, "[[tokens]]\nname = \"x\"\nrole = \"admin\"\nsha256 = \"abc\"\n").unwrap();
        assert!(TokenStore::open(&path).err().unwrap().contains("64 hex digits"));
    }

    #[test]
    fn new_tokens_differ() {
        let (a, b) = (new_token().unwrap(), new_token().unwrap());
        assert_eq!(a.len(), 64);
        assert_ne!(a, b);
    }
}
