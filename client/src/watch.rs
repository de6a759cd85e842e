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

/// Stock changes in log order. Yields `Err` once (then ends) if the node fails mid-stream.
pub struct WatchStream {
    /// The gRPC server stream.
    inner: Streaming<wire::StockChange>,
    /// Set after an error so the stream ends instead of polling a failed transport.
    done: bool,
}

impl WatchStream {
    pub(crate) fn new(inner: Streaming<wire::StockChange>) -> Self {
        WatchStream { inner, done: false }
    }
}

impl std::fmt::Debug for WatchStream {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_struct("WatchStream").field("done", &self.done).finish()
    }
}

/// The next message of `inner` through `decode`, or the stream's failure as a client error;
/// sets `done` on anything after which the stream must not be polled again.
fn poll_decoded<T>(
    inner: &mut Streaming<wire::StockChange>,
    done: &mut bool,
    context: &mut Context<'_>,
    decode: impl FnOnce(&wire::StockChange) -> Result<T, ClientError>,
) -> Poll<Option<Result<T, ClientError>>> {
    if *done {
        return Poll::Ready(None);
    }
    match Pin::new(inner).poll_next(context) {
        Poll::Pending => Poll::Pending,
        Poll::Ready(None) => {
            *done = true;
            Poll::Ready(None)
        }
        Poll::Ready(Some(Ok(message))) => {
            let decoded = decode(&message);
            if decoded.is_err() {
                *done = true;
            }
            Poll::Ready(Some(decoded))
        }
        Poll::Ready(Some(Err(status))) => {
            *done = true;
            Poll::Ready(Some(Err(ClientError::Unavailable {
                attempts: 1,
                last_error: format!("watch stream: {:?}: {}", status.code(), status.message()),
            })))
        }
    }
}

impl Stream for WatchStream {
    type Item = Result<StockChange, ClientError>;

    fn poll_next(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        poll_decoded(&mut this.inner, &mut this.done, context, convert::stock_change_from_wire)
    }
}

/// Stock changes and progress marks in log order (per shard). Yields `Err` once (then ends) if
/// the node fails mid-stream.
pub struct WatchEvents {
    inner: Streaming<wire::StockChange>,
    done: bool,
}

impl WatchEvents {
    pub(crate) fn new(inner: Streaming<wire::StockChange>) -> Self {
        WatchEvents { inner, done: false }
    }

    /// The next event; `None` once the stream ended.
    pub async fn next_event(&mut self) -> Option<Result<WatchEvent, ClientError>> {
        self.next().await
    }
}

impl std::fmt::Debug for WatchEvents {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_struct("WatchEvents").field("done", &self.done).finish()
    }
}

impl Stream for WatchEvents {
    type Item = Result<WatchEvent, ClientError>;

    fn poll_next(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        poll_decoded(&mut this.inner, &mut this.done, context, convert::watch_event_from_wire)
    }
}
