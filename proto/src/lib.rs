//! flashledger's wire types: the protobuf messages and gRPC services generated from
//! `proto/flashledger.proto`, for the node (`ledger`), the client library and any other language.
//!
//! One difference from the .proto: the `string` fields of requests (`user`, `order_id`) are
//! `Bytes` here, so a node can answer text that is not UTF-8 with `INVALID_ARGUMENT` naming the
//! field instead of failing to decode (see `build.rs`). Senders put UTF-8 in them.
//!
//! Under `--cfg madsim` the generated services are madsim-tonic's simulated ones, so the same node
//! and client code runs in the deterministic simulator.

#![allow(clippy::all, missing_docs)]

/// Version 1 of the protocol; see the `.proto` file for the status-code contract.
pub mod v1 {
    tonic::include_proto!("flashledger.v1");
}

/// The encoded file descriptor set, for gRPC server reflection (`grpcurl list`).
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/flashledger_descriptor.bin"));

/// Metadata keys the node sets on `UNAVAILABLE` (not leader), `FAILED_PRECONDITION` (stale
/// epoch) and `RESOURCE_EXHAUSTED` (overloaded) answers, which the client library follows, and
/// the one a client sends.
pub mod metadata {
    pub const LEADER_ADDR: &str = "x-leader-addr";
    pub const LEADER_ID: &str = "x-leader-id";
    pub const SHARD_EPOCH: &str = "x-shard-epoch";
    /// Set (to "1") on an `UNAVAILABLE`, `RESOURCE_EXHAUSTED` or `DEADLINE_EXCEEDED` the node
    /// answered without proposing anything: the write was certainly not applied. One without it
    /// (a transport failure, a proposal that timed out) is ambiguous.
    pub const NOT_APPLIED: &str = "x-not-applied";
    /// On `RESOURCE_EXHAUSTED` (overloaded): after how many milliseconds a retry may find room.
    pub const RETRY_AFTER_MS: &str = "x-retry-after-ms";
    /// Sent by a client: who it is, for the node's per-client rate limits (else the caller's
    /// authenticated name, else its IP address). Any text up to 128 bytes.
    pub const CLIENT_ID: &str = "x-client-id";
}

#[cfg(test)]
mod tests {
    use prost::Message;
    use prost_types::field_descriptor_proto::Type;

    /// Reflection serves the .proto as written (grpcurl's JSON and other languages see it):
    /// request text is `string` there, only the Rust types read it as bytes.
    #[test]
    fn reflection_keeps_request_text_as_strings() {
        let descriptors = prost_types::FileDescriptorSet::decode(super::FILE_DESCRIPTOR_SET).expect("decodes");
        let field_type = |message: &str, field: &str| {
            let message = descriptors
                .file
                .iter()
                .flat_map(|file| &file.message_type)
                .find(|m| m.name() == message)
                .expect("message");
            message
                .field
                .iter()
                .find(|f| f.name() == field)
                .expect("field")
                .r#type()
        };
        for (message, field) in [
            ("ReserveRequest", "user"),
            ("ReserveRequest", "order_id"),
            ("PurchaseRequest", "user"),
            ("ConfirmRequest", "order_id"),
            ("CancelRequest", "order_id"),
        ] {
            assert_eq!(field_type(message, field), Type::String, "{message}.{field}");
        }
    }

    /// A `string` as other clients send it decodes into the Rust view's bytes unchanged.
    #[test]
    fn a_request_string_on_the_wire_reads_as_its_bytes() {
        #[derive(Clone, PartialEq, prost::Message)]
        struct AsWritten {
            #[prost(string, tag = "3")]
            user: String,
        }
        let encoded = AsWritten { user: "alice".into() }.encode_to_vec();
        let decoded = super::v1::ReserveRequest::decode(encoded.as_slice()).expect("decodes");
        assert_eq!(decoded.user.as_ref(), b"alice");
    }
}
