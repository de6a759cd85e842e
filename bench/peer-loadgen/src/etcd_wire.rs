//! The corner of etcd's v3 gRPC API this load generator uses (KV Range, Put and Txn), and a
//! minimal client for it over tonic's generic unary call.
//!
//! The messages are written by hand from etcd's `api/etcdserverpb/rpc.proto` and
//! `api/mvccpb/kv.proto`, with the field numbers there; fields left out are skipped when
//! decoding, as protobuf allows. The one-variant uses of a `oneof` (`Compare.value`,
//! `RequestOp.request_*`, `ResponseOp.response_range`) are `optional` fields with the member's
//! tag, which is the same encoding. This spares the etcd-client crate and a protoc at build
//! time for four messages.

use std::time::Duration;

use anyhow::Context;
use tonic::client::Grpc;
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::Channel;
use tonic::transport::Endpoint;
use tonic_prost::ProstCodec;

/// mvccpb.KeyValue
#[derive(Clone, PartialEq, prost::Message)]
pub struct KeyValue {
    #[prost(bytes = "vec", tag = "1")]
    pub key: Vec<u8>,
    #[prost(bytes = "vec", tag = "5")]
    pub value: Vec<u8>,
}

/// etcdserverpb.RangeRequest: one key, linearizable (the default).
#[derive(Clone, PartialEq, prost::Message)]
pub struct RangeRequest {
    #[prost(bytes = "vec", tag = "1")]
    pub key: Vec<u8>,
}

/// etcdserverpb.RangeResponse
#[derive(Clone, PartialEq, prost::Message)]
pub struct RangeResponse {
    #[prost(message, repeated, tag = "2")]
    pub kvs: Vec<KeyValue>,
}

/// etcdserverpb.PutRequest
#[derive(Clone, PartialEq, prost::Message)]
pub struct PutRequest {
    #[prost(bytes = "vec", tag = "1")]
    pub key: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    pub value: Vec<u8>,
}

/// etcdserverpb.PutResponse (nothing read from it).
#[derive(Clone, PartialEq, prost::Message)]
pub struct PutResponse {}

/// etcdserverpb.Compare, as used here: `value(key) == value`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Compare {
    /// CompareResult: EQUAL = 0.
    #[prost(int32, tag = "1")]
    pub result: i32,
    /// CompareTarget: VALUE = 3.
    #[prost(int32, tag = "2")]
    pub target: i32,
    #[prost(bytes = "vec", tag = "3")]
    pub key: Vec<u8>,
    /// The `value` member of `target_union`.
    #[prost(bytes = "vec", optional, tag = "7")]
    pub value: Option<Vec<u8>>,
}

pub const COMPARE_EQUAL: i32 = 0;
pub const COMPARE_TARGET_VALUE: i32 = 3;

/// etcdserverpb.RequestOp: a range or a put.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RequestOp {
    #[prost(message, optional, tag = "1")]
    pub request_range: Option<RangeRequest>,
    #[prost(message, optional, tag = "2")]
    pub request_put: Option<PutRequest>,
}

/// etcdserverpb.ResponseOp: only a range's answer is read.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ResponseOp {
    #[prost(message, optional, tag = "1")]
    pub response_range: Option<RangeResponse>,
}

/// etcdserverpb.TxnRequest
#[derive(Clone, PartialEq, prost::Message)]
pub struct TxnRequest {
    #[prost(message, repeated, tag = "1")]
    pub compare: Vec<Compare>,
    #[prost(message, repeated, tag = "2")]
    pub success: Vec<RequestOp>,
    #[prost(message, repeated, tag = "3")]
    pub failure: Vec<RequestOp>,
}

/// etcdserverpb.TxnResponse
#[derive(Clone, PartialEq, prost::Message)]
pub struct TxnResponse {
    #[prost(bool, tag = "2")]
    pub succeeded: bool,
    #[prost(message, repeated, tag = "3")]
    pub responses: Vec<ResponseOp>,
}

/// A KV client on one gRPC connection (HTTP/2: clones share it).
#[derive(Clone)]
pub struct Kv {
    grpc: Grpc<Channel>,
}

impl Kv {
    /// Connects to one member; every call then fails after `timeout`.
    pub async fn connect(url: &str, timeout: Duration) -> anyhow::Result<Kv> {
        let channel = Endpoint::from_shared(url.to_string())
            .with_context(|| format!("etcd endpoint {url}"))?
            .connect_timeout(timeout)
            .timeout(timeout)
            .tcp_nodelay(true)
            .connect()
            .await
            .with_context(|| format!("connecting to etcd at {url}"))?;
        Ok(Kv {
            grpc: Grpc::new(channel),
        })
    }

    async fn unary<Request, Response>(
        &mut self,
        path: &'static str,
        request: Request,
    ) -> Result<Response, tonic::Status>
    where
        Request: prost::Message + Send + Sync + 'static,
        Response: prost::Message + Default + Send + Sync + 'static,
    {
        self.grpc
            .ready()
            .await
            .map_err(|error| tonic::Status::unavailable(format!("connection not ready: {error}")))?;
        let codec = ProstCodec::<Request, Response>::default();
        let response = self
            .grpc
            .unary(tonic::Request::new(request), PathAndQuery::from_static(path), codec)
            .await?;
        Ok(response.into_inner())
    }

    pub async fn put(&mut self, key: &[u8], value: &[u8]) -> Result<(), tonic::Status> {
        let request = PutRequest {
            key: key.to_vec(),
            value: value.to_vec(),
        };
        let _: PutResponse = self.unary("/etcdserverpb.KV/Put", request).await?;
        Ok(())
    }

    /// The key's value (linearizable read), `None` if it does not exist.
    pub async fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, tonic::Status> {
        let request = RangeRequest { key: key.to_vec() };
        let response: RangeResponse = self.unary("/etcdserverpb.KV/Range", request).await?;
        Ok(response.kvs.into_iter().next().map(|kv| kv.value))
    }

    pub async fn txn(&mut self, request: TxnRequest) -> Result<TxnResponse, tonic::Status> {
        self.unary("/etcdserverpb.KV/Txn", request).await
    }
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;

    #[test]
    fn a_value_compare_encodes_as_etcd_expects() {
        let compare = Compare {
            result: COMPARE_EQUAL,
            target: COMPARE_TARGET_VALUE,
            key: b"k".to_vec(),
            value: Some(b"5".to_vec()),
        };
        // target = 3 (field 2, varint), key = "k" (field 3), value = "5" (field 7); result = 0
        // is the default and not written.
        assert_eq!(compare.encode_to_vec(), [0x10, 3, 0x1a, 1, b'k', 0x3a, 1, b'5']);
    }

    #[test]
    fn a_failed_txn_carries_the_fresh_value() {
        let fresh = KeyValue {
            key: b"k".to_vec(),
            value: b"7".to_vec(),
        };
        let range = RangeResponse { kvs: vec![fresh] };
        let response = TxnResponse {
            succeeded: false,
            responses: vec![ResponseOp {
                response_range: Some(range),
            }],
        };
        let decoded = TxnResponse::decode(response.encode_to_vec().as_slice()).unwrap();
        assert_eq!(decoded.responses[0].response_range.as_ref().unwrap().kvs[0].value, b"7");
    }
}
