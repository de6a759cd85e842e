//! The tower layer that stamps each request's [`Arrival`] into its extensions before anything
//! else of the node runs, so that its deadline (`grpc-timeout`) counts from when the node got it,
//! as tonic's own timeout does, not from when its handler began.

use std::task::Context;
use std::task::Poll;

use tokio::time::Instant;

use crate::admission::deadline::Arrival;

#[derive(Debug, Clone, Copy, Default)]
pub struct StampArrival;

impl<S> tower_layer::Layer<S> for StampArrival {
    type Service = StampArrivalService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        StampArrivalService { inner }
    }
}

#[derive(Debug, Clone)]
pub struct StampArrivalService<S> {
    inner: S,
}

impl<S, B> tower_service::Service<http::Request<B>> for StampArrivalService<S>
where
    S: tower_service::Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        request.extensions_mut().insert(Arrival(Instant::now()));
        self.inner.call(request)
    }
}
