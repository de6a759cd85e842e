//! The client's one error type, [`ClientError`].
//!
//! Business answers (sold out, limit exceeded, unknown SKU, ...) are *not* errors: they come
//! back as [`crate::Outcome`] values. `ClientError` is for requests the cluster could not
//! decide, and it tells the caller what it may assume about the write:
//!
//! | variant | was the write applied? | what to do |
//! |---|---|---|
//! | [`ClientError::InvalidArgument`] | **no**, definitely not | fix the request |
//! | [`ClientError::Overloaded`] | **no**, definitely not (the node shed it before proposing) | retry after `retry_after`, or not at all |
//! | [`ClientError::Timeout`], [`ClientError::Unavailable`], [`ClientError::Indeterminate`], [`ClientError::PartlyFailed`] | **unknown** | retry later with the *same* `order_id` (writes are idempotent by it) |
//! | [`ClientError::Server`] | unknown | report; retrying with the same `order_id` is safe |
//! | [`ClientError::Protocol`] | unknown (the node answered something this client cannot read) | report; likely a version mismatch |
//! | [`ClientError::NoSeedReachable`], [`ClientError::Config`] | no (nothing was sent) | fix the seeds / options |

/// Why a call did not produce an answer. See the module docs for what each variant implies
/// about whether a write was applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// The request was malformed (by the client's own check or the node's `INVALID_ARGUMENT`).
    /// Nothing was applied; retrying the same request will fail the same way.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The node was overloaded and shed the call at once (`RESOURCE_EXHAUSTED`): nothing was
    /// proposed, and no earlier attempt of this call may have been applied either. It is not
    /// retried by the client (a retry adds to the load that refused it); the node's hint of when
    /// there may be room is in `retry_after`.
    #[error("overloaded: {message}")]
    Overloaded {
        /// When the node expects room (its `x-retry-after-ms`), if it said.
        retry_after: Option<std::time::Duration>,
        /// The node's message (which budget, how full).
        message: String,
    },
    /// An attempt of the call may have been applied (it timed out or lost its connection), and
    /// a later attempt was refused before proposing (shed, or answered `RATE_LIMITED`): the later
    /// refusal speaks only for itself, so whether the write happened is unknown. Retry with the
    /// same `order_id`: a repeat of an applied write gets its first answer.
    #[error("after {attempts} attempts, some possibly applied, the last was refused: {refusal}")]
    Indeterminate {
        /// RPC attempts made.
        attempts: u32,
        /// What refused the last one.
        refusal: String,
    },
    /// A batch spanning shards failed for one shard's operations (the inner error) while
    /// another shard's were sent: those may have been applied, whatever the inner error says of
    /// its own. Resending the batch is safe for operations with an `order_id`.
    #[error("{0} (for one shard's part of the batch; other shards' operations may have been applied)")]
    PartlyFailed(Box<ClientError>),
    /// The retry budget ran out while nodes were unreachable or not serving the SKU's shard.
    /// The write may or may not have been applied: retry with the same `order_id`.
    #[error("cluster unavailable after {attempts} attempts: {last_error}")]
    Unavailable {
        /// RPC attempts made before giving up.
        attempts: u32,
        /// The last failure seen, for logs.
        last_error: String,
    },
    /// The call's deadline passed (or every attempt timed out). The write may or may not have
    /// been applied: retry with the same `order_id`.
    #[error("timed out after {attempts} attempts")]
    Timeout {
        /// RPC attempts made before giving up.
        attempts: u32,
    },
    /// A node answered with something this client cannot interpret (an unknown outcome code, a
    /// missing field, a reply of the wrong length). The write may have been applied.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// A node answered with a status the protocol does not use for retryable conditions
    /// (`INTERNAL`, `UNIMPLEMENTED`, ...). Not retried; the write may have been applied.
    #[error("server error {code:?}: {message}")]
    Server {
        /// The gRPC status code.
        code: tonic::Code,
        /// The node's message.
        message: String,
    },
    /// No seed (or known node) answered the shard-map request.
    #[error("no seed node reachable (tried {tried} addresses): {last_error}")]
    NoSeedReachable {
        /// How many addresses were tried.
        tried: usize,
        /// The last failure seen, for logs.
        last_error: String,
    },
    /// The cluster does not know this client's credentials (none, an unknown or revoked
    /// token, a certificate it does not accept). Nothing was applied.
    #[error("unauthenticated: {0}")]
    Unauthenticated(String),
    /// The client's role may not make this call (e.g. a reader writing). Nothing was applied.
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    /// A batch's SKUs no longer fall in one shard (a split since it was grouped): the client
    /// regroups and resends it itself; callers see this only if that keeps failing.
    /// `maybe_applied`: an earlier attempt may have been applied.
    #[error("the batch's SKUs now fall in more than one shard (a split); regroup and resend")]
    ShardsChanged { maybe_applied: bool },
    /// The options or seed list given to [`crate::Client::connect`] are unusable.
    #[error("invalid client configuration: {0}")]
    Config(String),
}

impl ClientError {
    /// True when the write was certainly not applied (nothing reached a node, or the node
    /// rejected the request as malformed or its caller as not allowed).
    pub fn definitely_not_applied(&self) -> bool {
        matches!(
            self,
            ClientError::InvalidArgument(_)
                | ClientError::Overloaded { .. }
                | ClientError::NoSeedReachable { .. }
                | ClientError::Config(_)
                | ClientError::Unauthenticated(_)
                | ClientError::PermissionDenied(_)
        )
    }

    /// True when the outcome is unknown and the caller should retry with the same `order_id`.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            ClientError::Unavailable { .. }
                | ClientError::Timeout { .. }
                | ClientError::Indeterminate { .. }
                | ClientError::PartlyFailed(_)
        )
    }
}
