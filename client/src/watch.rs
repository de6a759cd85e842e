//! The live feeds of stock changes: [`WatchStream`] from [`crate::Client::watch`] (changes
//! only) and [`WatchEvents`] from [`crate::Client::watch_events`] (changes and progress marks,
//! what [`crate::StockCache`] is fed by).
//!
//! Either is one server stream from one node; it is not resumed automatically. When it ends or
//! fails, watch again from the last `log_index` seen (the stock cache does this itself).

use std::pin::Pin;
use std::task::{Context, Poll};

use flashledger_proto::v1 as wire;
use futures::{Stream, StreamExt};
use tonic::codec::Streaming;

use crate::{ClientError, StockChange, WatchEvent, convert};

/// A Watch server stream, each message decoded by `decode`. Yields `Err` once (then ends) if
/// the node fails mid-stream.
pub struct WatchFeed<T> {
    /// The gRPC server stream.
    inner: Streaming<wire::StockChange>,
    /// Set after an error so the stream ends instead of polling a failed transport.
    done: bool,
    decode: fn(&wire::StockChange) -> Result<T, ClientError>,
}

/// Stock changes in log order, from [`crate::Client::watch`].
pub type WatchStream = WatchFeed<StockChange>;

/// Stock changes and progress marks in log order (per shard), from
/// [`crate::Client::watch_events`].
pub type WatchEvents = WatchFeed<WatchEvent>;

impl WatchStream {
    pub(crate) fn new(inner: Streaming<wire::StockChange>) -> Self {
        WatchFeed {
            inner,
            done: false,
            decode: convert::stock_change_from_wire,
        }
    }
}

impl WatchEvents {
    pub(crate) fn with_progress(inner: Streaming<wire::StockChange>) -> Self {
        WatchFeed {
            inner,
            done: false,
            decode: convert::watch_event_from_wire,
        }
    }

    /// The next event; `None` once the stream ended.
    pub async fn next_event(&mut self) -> Option<Result<WatchEvent, ClientError>> {
        self.next().await
    }
}

impl<T> std::fmt::Debug for WatchFeed<T> {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_struct("WatchFeed").field("done", &self.done).finish()
    }
}

impl<T> Stream for WatchFeed<T> {
    type Item = Result<T, ClientError>;

    fn poll_next(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        let decode = self.decode;
        match Pin::new(&mut self.inner).poll_next(context) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(None) => {
                self.done = true;
                Poll::Ready(None)
            }
            Poll::Ready(Some(Ok(message))) => {
                let decoded = decode(&message);
                if decoded.is_err() {
                    self.done = true;
                }
                Poll::Ready(Some(decoded))
            }
            Poll::Ready(Some(Err(status))) => {
                self.done = true;
                Poll::Ready(Some(Err(ClientError::Unavailable {
                    attempts: 1,
                    last_error: format!("watch stream: {:?}: {}", status.code(), status.message()),
                })))
            }
        }
    }
}
