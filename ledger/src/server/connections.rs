//! Bounds on the connections a node accepts, against clients that open many and use none:
//! at most `server.connections_per_address_max` open connections from one IP address (the
//! next is closed at once), and a connection that sends nothing for
//! `server.connection_idle_timeout_ms` is closed — the server pings every live HTTP/2
//! connection well within that time, so a client that is merely quiet answers the ping and
//! stays, while a half-open or silent one (no TLS or HTTP/2 handshake ever sent) goes.

use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::PoisonError;
use std::task::Context;
use std::task::Poll;
use std::time::Duration;

use futures::Stream;
use futures::StreamExt;
use tokio::io::AsyncRead;
use tokio::io::AsyncWrite;
use tokio::io::ReadBuf;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio::time::Sleep;
use tonic::transport::server::Connected;
use tonic::transport::server::TcpConnectInfo;

/// Open connections per client address, shared by the accept loop and every connection.
#[derive(Clone, Default)]
struct OpenPerAddress(Arc<Mutex<HashMap<IpAddr, usize>>>);

impl OpenPerAddress {
    /// Counts a new connection from `ip`, unless `max` are already open.
    fn admit(&self, ip: IpAddr, max: usize) -> Option<AddressSlot> {
        let mut open = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let count = open.entry(ip).or_insert(0);
        if *count >= max {
            return None;
        }
        *count += 1;
        Some(AddressSlot { open: self.clone(), ip })
    }
}

/// One counted connection; uncounted when the connection is dropped.
struct AddressSlot {
    open: OpenPerAddress,
    ip: IpAddr,
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut open = self.open.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = open.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// The accepted connections of `listener`, bounded per address, each closed when idle, with
/// Nagle's algorithm off (tonic ignores its own `tcp_nodelay` for a caller's listener; with
/// Nagle on, a small reply waits for the client's delayed ACK).
pub fn bounded(
    listener: tokio::net::TcpListener,
    per_address_max: usize,
    idle_timeout: Duration,
) -> impl Stream<Item = io::Result<GuardedStream>> {
    let open = OpenPerAddress::default();
    tokio_stream::wrappers::TcpListenerStream::new(listener).filter_map(move |accepted| {
        let open = open.clone();
        async move {
            let stream = match accepted {
                Ok(stream) => stream,
                Err(error) => return Some(Err(error)),
            };
            let ip = match stream.peer_addr() {
                Ok(addr) => addr.ip(),
                Err(error) => return Some(Err(error)),
            };
            let Some(slot) = open.admit(ip, per_address_max) else {
                tracing::debug!(%ip, per_address_max, "connection refused: too many open from this address");
                return None;
            };
            if let Err(error) = stream.set_nodelay(true) {
                tracing::warn!(%error, "could not disable Nagle's algorithm on a connection");
            }
            Some(Ok(GuardedStream {
                inner: stream,
                _slot: slot,
                idle_timeout,
                last_read: Instant::now(),
                idle: Box::pin(tokio::time::sleep(idle_timeout)),
            }))
        }
    })
}

/// A TCP connection that fails its reads once nothing has arrived for `idle_timeout`.
pub struct GuardedStream {
    inner: TcpStream,
    _slot: AddressSlot,
    idle_timeout: Duration,
    last_read: Instant,
    /// Fires at the earliest time the connection may be idle; re-armed from `last_read`
    /// when it fires early (cheaper than resetting a timer on every read).
    idle: Pin<Box<Sleep>>,
}

impl AsyncRead for GuardedStream {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(result) => {
                if buf.filled().len() > before {
                    this.last_read = Instant::now();
                }
                Poll::Ready(result)
            }
            Poll::Pending => loop {
                if this.idle.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                let deadline = this.last_read + this.idle_timeout;
                if Instant::now() >= deadline {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "connection idle: nothing received within server.connection_idle_timeout_ms",
                    )));
                }
                this.idle.as_mut().reset(deadline);
            },
        }
    }
}

impl AsyncWrite for GuardedStream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl Connected for GuardedStream {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_gets_at_most_its_share_and_slots_come_back() {
        let open = OpenPerAddress::default();
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let other: IpAddr = "10.0.0.2".parse().unwrap();
        let first = open.admit(ip, 2).expect("first");
        let _second = open.admit(ip, 2).expect("second");
        assert!(open.admit(ip, 2).is_none(), "a third from the same address");
        assert!(open.admit(other, 2).is_some(), "another address is not affected");
        drop(first);
        assert!(open.admit(ip, 2).is_some(), "a closed connection frees its slot");
    }
}
