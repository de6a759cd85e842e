//! The one mapping from node errors to gRPC status codes (see the contract at the top of
//! `proto/flashledger.proto`); the client library follows exactly these codes and metadata.

use flashledger_proto::metadata;
use tonic::Code;
use tonic::Status;
use tonic::metadata::MetadataValue;

use crate::admission::Refused;
use crate::node::NodeError;
use crate::server::convert::InvalidRequest;

pub fn from_invalid(invalid: InvalidRequest) -> Status {
    Status::invalid_argument(invalid.to_string())
}

pub fn from_node_error(error: NodeError) -> Status {
    let message = error.to_string();
    match error {
        NodeError::NotLeader {
            leader_id, leader_addr, ..
        } => {
            let mut status = Status::unavailable(message);
            if let Some(addr) = leader_addr.and_then(|a| MetadataValue::try_from(a.as_str()).ok()) {
                status.metadata_mut().insert(metadata::LEADER_ADDR, addr);
            }
            if let Some(id) = leader_id.and_then(|id| MetadataValue::try_from(id.to_string().as_str()).ok()) {
                status.metadata_mut().insert(metadata::LEADER_ID, id);
            }
            not_applied(status)
        }
        NodeError::SkuNotHosted { .. } | NodeError::ShardNotHosted { .. } => Status::not_found(message),
        NodeError::UnknownSku { .. } => Status::new(Code::NotFound, message),
        NodeError::BatchSpansShards { .. } => Status::invalid_argument(message),
        NodeError::StaleEpoch { current, .. } => {
            let mut status = Status::failed_precondition(message);
            if let Ok(epoch) = MetadataValue::try_from(current.to_string().as_str()) {
                status.metadata_mut().insert(metadata::SHARD_EPOCH, epoch);
            }
            // Refused by the route check or by the state machine: nothing was applied.
            not_applied(status)
        }
        NodeError::Timeout { .. } => Status::deadline_exceeded(message),
        NodeError::DeadlineUnmet { .. } => not_applied(Status::deadline_exceeded(message)),
        NodeError::OutcomeUnknown { .. } => Status::aborted(message),
        // Both are decided before anything is proposed.
        NodeError::TooStale { .. } | NodeError::Unavailable { .. } => not_applied(Status::unavailable(message)),
        NodeError::Storage(_) | NodeError::Raft(_) | NodeError::Security(_) => Status::internal(message),
        NodeError::Refused(_) => Status::permission_denied(message),
        NodeError::Reshape(_) => Status::failed_precondition(message),
    }
}

/// Admission's refusals, both decided before anything was proposed: an overloaded node answers
/// `RESOURCE_EXHAUSTED` with when to retry, a request out of time `DEADLINE_EXCEEDED`.
pub fn from_refused(refused: Refused) -> Status {
    let message = refused.to_string();
    match refused {
        Refused::Overloaded { retry_after, .. } => {
            let mut status = Status::resource_exhausted(message);
            let retry_after_ms = retry_after.as_millis().max(1).to_string();
            if let Ok(value) = MetadataValue::try_from(retry_after_ms.as_str()) {
                status.metadata_mut().insert(metadata::RETRY_AFTER_MS, value);
            }
            not_applied(status)
        }
        Refused::Late { .. } => not_applied(Status::deadline_exceeded(message)),
    }
}

/// Marks a status the node answered without proposing anything (see
/// [`metadata::NOT_APPLIED`]), so the client may resend even a non-idempotent write.
fn not_applied(mut status: Status) -> Status {
    status
        .metadata_mut()
        .insert(metadata::NOT_APPLIED, MetadataValue::from_static("1"));
    status
}
