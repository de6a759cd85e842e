//! The tower layer in front of every service: finds the RPC's required access, establishes
//! the caller (client certificate, else bearer token), refuses with UNAUTHENTICATED or
//! PERMISSION_DENIED before the request is decoded, and hands the caller on in the request's
//! extensions (`server::raft_service` checks a node's claims against it).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::task::Context;
use std::task::Poll;

use futures::future::Either;
use futures::future::Ready;
use http_body_util::Limited;
use tonic::Status;
use tonic::body::Body;
use tonic::transport::server::TcpConnectInfo;
use tonic::transport::server::TlsConnectInfo;

use super::Access;
use super::Caller;
use super::Refusal;
use super::access_of;
use super::identity::caller_of_certificate;
use super::tokens::TokenStore;
use crate::types::NodeId;

/// What the layer checks against.
#[derive(Clone)]
pub struct Authenticate {
    policy: Arc<Policy>,
}

struct Policy {
    /// `security.insecure`: nobody is asked.
    insecure: bool,
    tokens: Option<TokenStore>,
    /// The configured nodes: a node certificate for any other id is refused.
    nodes: BTreeSet<NodeId>,
}

impl Authenticate {
    pub fn new(insecure: bool, tokens: Option<TokenStore>, nodes: BTreeSet<NodeId>) -> Self {
        Authenticate {
            policy: Arc::new(Policy {
                insecure,
                tokens,
                nodes,
            }),
        }
    }
}

impl<S> tower_layer::Layer<S> for Authenticate {
    type Service = AuthenticateService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthenticateService {
            inner,
            policy: self.policy.clone(),
        }
    }
}

#[derive(Clone)]
pub struct AuthenticateService<S> {
    inner: S,
    policy: Arc<Policy>,
}

impl<S, B> tower_service::Service<http::Request<B>> for AuthenticateService<S>
where
    S: tower_service::Service<http::Request<Limited<B>>, Response = http::Response<Body>>,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = Either<Ready<Result<http::Response<Body>, S::Error>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        match self.policy.admit(&request) {
            Ok(caller) => {
                request.extensions_mut().insert(caller);
                let body_bytes_max = body_bytes_max(request.uri().path());
                Either::Right(self.inner.call(request.map(|body| Limited::new(body, body_bytes_max))))
            }
            Err(status) => Either::Left(futures::future::ready(Ok(status.into_http()))),
        }
    }
}

impl Policy {
    fn admit<B>(&self, request: &http::Request<B>) -> Result<Caller, Status> {
        let path = request.uri().path();
        let Some(access) = access_of(path) else {
            return Err(Status::unimplemented(format!("{path}: no such RPC")));
        };
        if self.insecure {
            return Ok(Caller::Unchecked);
        }
        let caller = match self.caller(request) {
            Ok(caller) => caller,
            Err(_) if access == Access::Public => return Ok(Caller::Unchecked),
            Err(refusal) => return Err(to_status(refusal)),
        };
        caller.check(path, access).map_err(to_status)?;
        Ok(caller)
    }

    /// The caller a certificate names, else the one a bearer token names.
    fn caller<B>(&self, request: &http::Request<B>) -> Result<Caller, Refusal> {
        let certificate = request
            .extensions()
            .get::<TlsConnectInfo<TcpConnectInfo>>()
            .and_then(|info| info.peer_certs())
            .and_then(|chain| chain.first().map(|cert| caller_of_certificate(cert)));
        let certificate_problem = match certificate {
            Some(Ok(Caller::Node(id))) if !self.nodes.contains(&id) => {
                return Err(Refusal::PermissionDenied(format!(
                    "the certificate names node {id}, which is not in this cluster"
                )));
            }
            Some(Ok(caller)) => return Ok(caller),
            Some(Err(problem)) => Some(problem),
            None => None,
        };
        let Some(header) = request.headers().get(http::header::AUTHORIZATION) else {
            return Err(Refusal::Unauthenticated(match certificate_problem {
                Some(problem) => format!("client certificate: {problem}; and no bearer token"),
                None => {
                    "no credentials: present a client certificate or an `authorization: Bearer <token>` header".into()
                }
            }));
        };
        let token = header
            .to_str()
            .ok()
            .and_then(|value| value.strip_prefix("Bearer "))
            .map(str::trim)
            .ok_or_else(|| Refusal::Unauthenticated("the authorization header is not `Bearer <token>`".into()))?;
        let (role, name) = self
            .tokens
            .as_ref()
            .and_then(|tokens| tokens.lookup(token))
            .ok_or_else(|| Refusal::Unauthenticated("unknown or revoked bearer token".into()))?;
        Ok(Caller::Client { role, name })
    }
}

/// The most bytes a request body may carry. Votes and shipped marks are a few dozen bytes;
/// tonic's per-service limit is sized for the Raft service's largest message (an append of
/// many entries) and would let a 500 MB vote be buffered whole. Other RPCs are bounded by
/// tonic's per-service limits (`server.message_bytes_max`).
fn body_bytes_max(path: &str) -> usize {
    match path {
        "/flashledger.v1.Raft/Vote" | "/flashledger.v1.Raft/PreVote" | "/flashledger.v1.Raft/ProposeShipped" => {
            SMALL_RAFT_MESSAGE_BYTES_MAX
        }
        _ => usize::MAX,
    }
}

/// The bound on a vote or a shipped mark.
pub const SMALL_RAFT_MESSAGE_BYTES_MAX: usize = 64 * 1024;

fn to_status(refusal: Refusal) -> Status {
    match refusal {
        Refusal::Unauthenticated(message) => Status::unauthenticated(message),
        Refusal::PermissionDenied(message) => Status::permission_denied(message),
    }
}
