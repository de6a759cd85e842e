//! [`Channels`]: one shared, lazily connected `tonic` channel per node address.
//!
//! A channel multiplexes every concurrent call to its node over one HTTP/2 connection and
//! reconnects by itself after a failure, so the client never opens more than one connection
//! per node no matter how many tasks share it. The cache is bounded by the number of distinct
//! addresses the cluster ever names. With [`Credentials`] naming a CA the channels are TLS, and
//! every call carries the bearer token, if any.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tonic::transport::{Channel, Endpoint};

use crate::credentials::{AddToken, Credentials};

/// A channel to one node, with the client's token added to every call. Cloning is cheap (a
/// handle).
#[cfg(not(madsim))]
pub type NodeChannel = tonic::service::interceptor::InterceptedService<Channel, AddToken>;
/// The simulator's clusters are insecure: no token to add.
#[cfg(madsim)]
pub type NodeChannel = Channel;

/// The per-address channel cache.
#[derive(Debug)]
pub(crate) struct Channels {
    /// Applied to every new connection attempt.
    connect_timeout: Duration,
    credentials: Credentials,
    /// Address (`host:port`, or a full `http://` URI) → its channel.
    by_addr: Mutex<HashMap<String, NodeChannel>>,
}

impl Channels {
    pub(crate) fn new(connect_timeout: Duration, credentials: Credentials) -> Self {
        Channels {
            connect_timeout,
            credentials,
            by_addr: Mutex::new(HashMap::new()),
        }
    }

    /// The channel to `addr`, created (without connecting) on first use. Fails only on an
    /// address that is not a valid URI authority.
    pub(crate) fn get(&self, addr: &str) -> Result<NodeChannel, String> {
        // A poisoned lock only means another thread panicked while inserting; the map is
        // still a valid cache.
        let mut by_addr = self.by_addr.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(channel) = by_addr.get(addr) {
            return Ok(channel.clone());
        }
        let channel = node_channel(addr, self.connect_timeout, &self.credentials)?;
        by_addr.insert(addr.to_string(), channel.clone());
        Ok(channel)
    }
}

/// A lazily connected channel to the node at `addr` (`host:port` or a URI) under
/// `credentials`: TLS when they name a CA, the bearer token on every call.
pub fn node_channel(addr: &str, connect_timeout: Duration, credentials: &Credentials) -> Result<NodeChannel, String> {
    let scheme = if credentials.ca_pem.is_some() { "https" } else { "http" };
    let uri = if addr.contains("://") {
        addr.to_string()
    } else {
        format!("{scheme}://{addr}")
    };
    let endpoint = Endpoint::from_shared(uri)
        .map_err(|error| format!("bad node address {addr:?}: {error}"))?
        .connect_timeout(connect_timeout);
    #[cfg(not(madsim))]
    let endpoint = match &credentials.ca_pem {
        Some(ca) => {
            let mut tls = tonic::transport::ClientTlsConfig::new()
                .ca_certificate(tonic::transport::Certificate::from_pem(ca))
                .timeout(connect_timeout);
            if let Some((cert, key)) = &credentials.client_cert {
                tls = tls.identity(tonic::transport::Identity::from_pem(cert, key));
            }
            endpoint
                .tls_config(tls)
                .map_err(|error| format!("TLS to {addr}: {error}"))?
        }
        None => endpoint,
    };
    #[cfg(madsim)]
    if credentials.ca_pem.is_some() {
        return Err("TLS is not available in the simulator".into());
    }
    // The simulator's channels carry no token, but a bad one is refused there too.
    #[cfg(madsim)]
    AddToken::new(credentials.token.as_deref())?;
    let channel = endpoint.connect_lazy();
    #[cfg(not(madsim))]
    let channel =
        tonic::service::interceptor::InterceptedService::new(channel, AddToken::new(credentials.token.as_deref())?);
    Ok(channel)
}
