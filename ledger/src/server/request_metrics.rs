//! The tower layer that times every gRPC request into
//! `flashledger_request_duration_seconds{rpc, outcome}`. It sits outside authentication, so
//! refused callers are counted too. The time runs to the response's head: the whole call for a
//! unary RPC (tonic answers once the handler returns), the setup for a stream (Watch).
//!
//! The outcome comes from the `grpc-status` a refusal carries in the head (a success carries
//! it in the trailers: no status in the head means OK), or from [`AnsweredAs`], which a handler
//! puts in a successful response whose answer was a business rejection or a rate limit.

use std::future::Future;
use std::pin::Pin;
use std::task::Context;
use std::task::Poll;

use flashledger_proto::metadata;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use tokio::time::Instant;

use crate::metrics::instruments::AnsweredAs;
use crate::metrics::instruments::RequestLabels;
use crate::metrics::instruments::RequestOutcome;

type Durations = Family<RequestLabels, Histogram, fn() -> Histogram>;

#[derive(Clone)]
pub struct RecordRequests {
    durations: Durations,
}

impl RecordRequests {
    pub fn new(durations: Durations) -> Self {
        RecordRequests { durations }
    }
}

impl<S> tower_layer::Layer<S> for RecordRequests {
    type Service = RecordRequestsService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RecordRequestsService {
            inner,
            durations: self.durations.clone(),
        }
    }
}

#[derive(Clone)]
pub struct RecordRequestsService<S> {
    inner: S,
    durations: Durations,
}

impl<S, B, ResponseBody> tower_service::Service<http::Request<B>> for RecordRequestsService<S>
where
    S: tower_service::Service<http::Request<B>, Response = http::Response<ResponseBody>>,
    S::Future: Send + 'static,
    S::Error: 'static,
    ResponseBody: 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let started = Instant::now();
        let rpc = rpc_name(request.uri().path());
        let answer = self.inner.call(request);
        let durations = self.durations.clone();
        Box::pin(async move {
            let answer = answer.await;
            let outcome = match &answer {
                Ok(response) => outcome_of(response),
                Err(_) => RequestOutcome::error,
            };
            durations
                .get_or_create(&RequestLabels { rpc, outcome })
                .observe(started.elapsed().as_secs_f64());
            answer
        })
    }
}

/// The method name of `path` if the node serves it (`security::RPC_ACCESS`), else `unknown`:
/// a path is the caller's to choose, a label must be from a closed set.
fn rpc_name(path: &str) -> &'static str {
    crate::security::RPC_ACCESS
        .iter()
        .find(|(known, _)| *known == path)
        .and_then(|(known, _)| known.rsplit_once('/'))
        .map_or("unknown", |(_, method)| method)
}

fn outcome_of<ResponseBody>(response: &http::Response<ResponseBody>) -> RequestOutcome {
    if !response.status().is_success() {
        return RequestOutcome::error;
    }
    let headers = response.headers();
    let code = headers
        .get("grpc-status")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<i32>().ok());
    match code {
        None | Some(0) => response
            .extensions()
            .get::<AnsweredAs>()
            .map_or(RequestOutcome::ok, |answered| answered.0),
        Some(code) => RequestOutcome::of_grpc_status(code, headers.contains_key(metadata::LEADER_ADDR)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rpc_labels_come_from_the_table_of_served_rpcs_only() {
        assert_eq!(rpc_name("/flashledger.v1.Inventory/Purchase"), "Purchase");
        assert_eq!(rpc_name("/flashledger.v1.Raft/AppendEntries"), "AppendEntries");
        assert_eq!(rpc_name("/flashledger.v1.Inventory/Purchase2"), "unknown");
        assert_eq!(rpc_name("/x/sneaker-42"), "unknown");
    }

    #[test]
    fn outcomes_fold_statuses_and_business_answers() {
        let with_status = |code: &str, leader: bool| {
            let mut response = http::Response::new(());
            response
                .headers_mut()
                .insert("grpc-status", code.parse().expect("value"));
            if leader {
                response
                    .headers_mut()
                    .insert(metadata::LEADER_ADDR, "127.0.0.1:7101".parse().expect("value"));
            }
            outcome_of(&response)
        };
        assert_eq!(outcome_of(&http::Response::new(())), RequestOutcome::ok);
        assert_eq!(with_status("0", false), RequestOutcome::ok);
        assert_eq!(with_status("14", true), RequestOutcome::not_leader);
        assert_eq!(with_status("14", false), RequestOutcome::error);
        assert_eq!(with_status("8", false), RequestOutcome::overloaded);
        assert_eq!(with_status("3", false), RequestOutcome::invalid);
        assert_eq!(with_status("16", false), RequestOutcome::unauthenticated);
        assert_eq!(with_status("4", false), RequestOutcome::deadline);
        assert_eq!(with_status("5", false), RequestOutcome::rejected);
        let mut sold_out = http::Response::new(());
        sold_out.extensions_mut().insert(AnsweredAs(RequestOutcome::rejected));
        assert_eq!(outcome_of(&sold_out), RequestOutcome::rejected);
        let mut broken = http::Response::new(());
        *broken.status_mut() = http::StatusCode::BAD_REQUEST;
        assert_eq!(outcome_of(&broken), RequestOutcome::error);
    }
}
