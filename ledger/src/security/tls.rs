//! TLS material from `cluster.toml`, read once when a node starts: the server side (this
//! node's certificate, and the CA that client certificates must chain to) and the client
//! side this node uses to reach its peers (the same certificate, proving it is this node).

use std::path::Path;
use std::time::Duration;

use tonic::transport::Certificate;
use tonic::transport::ClientTlsConfig;
use tonic::transport::Identity;
use tonic::transport::ServerTlsConfig;

use crate::config::ClusterConfig;
use crate::types::NodeId;

/// A node's TLS material.
#[derive(Clone)]
pub struct NodeTls {
    ca: Certificate,
    identity: Identity,
    handshake_timeout: Duration,
}

impl NodeTls {
    /// The material of node `node_id`; `None` when the cluster runs insecure. Every file is
    /// read here, so a missing or unreadable one stops the node at start, named.
    pub fn load(config: &ClusterConfig, node_id: NodeId) -> Result<Option<NodeTls>, String> {
        if config.security.insecure {
            return Ok(None);
        }
        let node = config
            .node(node_id)
            .ok_or_else(|| format!("node {node_id} is not in the config"))?;
        let (Some(ca_file), Some(cert_file), Some(key_file)) =
            (&config.security.ca_file, &node.cert_file, &node.key_file)
        else {
            return Err(format!(
                "node {node_id}: TLS files are missing (the config was not validated)"
            ));
        };
        let ca = read_pem(ca_file, "CERTIFICATE", "security.ca_file")?;
        let cert = read_pem(cert_file, "CERTIFICATE", "cert_file")?;
        let key = read_pem(key_file, "PRIVATE KEY", "key_file")?;
        Ok(Some(NodeTls {
            ca: Certificate::from_pem(ca),
            identity: Identity::from_pem(cert, key),
            handshake_timeout: Duration::from_millis(config.security.tls_handshake_timeout_ms),
        }))
    }

    /// Accepts clients with or without a certificate (a token will do), but a certificate
    /// offered must chain to the cluster's CA.
    pub fn server(&self) -> ServerTlsConfig {
        ServerTlsConfig::new()
            .identity(self.identity.clone())
            .client_ca_root(self.ca.clone())
            .client_auth_optional(true)
            .timeout(self.handshake_timeout)
    }

    /// How this node connects to a peer: the peer's certificate must chain to the cluster's
    /// CA, and this node proves itself with its own.
    pub fn peer_client(&self) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .ca_certificate(self.ca.clone())
            .identity(self.identity.clone())
            .timeout(self.handshake_timeout)
    }
}

/// Reads a PEM file and checks it holds a block of the expected kind (`PRIVATE KEY` matches
/// `RSA PRIVATE KEY` and `EC PRIVATE KEY` too), so a swapped or empty file fails here, named,
/// rather than as an opaque handshake error later.
pub fn read_pem(path: &Path, kind: &str, field: &str) -> Result<Vec<u8>, String> {
    let shown = path.display();
    let bytes = std::fs::read(path).map_err(|e| format!("{field} {shown}: {e}"))?;
    let text = String::from_utf8_lossy(&bytes);
    let holds_kind = text
        .lines()
        .any(|line| line.starts_with("-----BEGIN ") && line.contains(kind) && line.ends_with("-----"));
    if !holds_kind {
        return Err(format!("{field} {shown}: no PEM \"{kind}\" block in it"));
    }
    Ok(bytes)
}
