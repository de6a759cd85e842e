//! [`WatchStream`]: the live feed of stock changes from [`crate::Client::watch`].
//!
//! The stream is one server stream from one node; it is not resumed automatically. When it
//! ends or fails, call `watch` again from the last `log_index` seen.

use std::pin::Pin;
use std::task::{Context, Poll};

use flashledger_proto::v1 as wire;
use futures::Stream;
use tonic::codec::Streaming;

use crate::{ClientError, StockChange, convert};

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

impl Stream for WatchStream {
    type Item = Result<StockChange, ClientError>;

    fn poll_next(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        let polled = Pin::new(&mut self.inner).poll_next(context);
        match polled {
            Poll::Pending => Poll::Pending,
            Poll::Ready(None) => {
                self.done = true;
                Poll::Ready(None)
            }
            Poll::Ready(Some(Ok(change))) => {
                let change = convert::stock_change_from_wire(&change);
                if change.is_err() {
                    self.done = true;
                }
                Poll::Ready(Some(change))
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
