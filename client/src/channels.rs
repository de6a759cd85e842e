//! [`Channels`]: one shared, lazily connected `tonic` channel per node address.
//!
//! A channel multiplexes every concurrent call to its node over one HTTP/2 connection and
//! reconnects by itself after a failure, so the client never opens more than one connection
//! per node no matter how many tasks share it. The cache is bounded by the number of distinct
//! addresses the cluster ever names.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tonic::transport::{Channel, Endpoint};

/// The per-address channel cache. Cloning a `Channel` is cheap (it is a handle).
#[derive(Debug)]
pub(crate) struct Channels {
    /// Applied to every new connection attempt.
    connect_timeout: Duration,
    /// Address (`host:port`, or a full `http://` URI) → its channel.
    by_addr: Mutex<HashMap<String, Channel>>,
}

impl Channels {
    pub(crate) fn new(connect_timeout: Duration) -> Self {
        Channels {
            connect_timeout,
            by_addr: Mutex::new(HashMap::new()),
        }
    }

    /// The channel to `addr`, created (without connecting) on first use. Fails only on an
    /// address that is not a valid URI authority.
    pub(crate) fn get(&self, addr: &str) -> Result<Channel, String> {
        // A poisoned lock only means another thread panicked while inserting; the map is
        // still a valid cache.
        let mut by_addr = self.by_addr.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(channel) = by_addr.get(addr) {
            return Ok(channel.clone());
        }
        let uri = if addr.contains("://") {
            addr.to_string()
        } else {
            format!("http://{addr}")
        };
        let endpoint = Endpoint::from_shared(uri)
            .map_err(|error| format!("bad node address {addr:?}: {error}"))?
            .connect_timeout(self.connect_timeout);
        let channel = endpoint.connect_lazy();
        by_addr.insert(addr.to_string(), channel.clone());
        Ok(channel)
    }
}
