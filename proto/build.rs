//! Generates the gRPC types from `proto/flashledger.proto` with a vendored `protoc` (none is
//! installed on the build machines), plus the file descriptor set that server reflection serves.
//!
//! The Rust types read every `string` field of a message a service receives as bytes. prost
//! checks UTF-8 while it decodes a `string`, and a failure there is answered `INTERNAL` before
//! the node sees the request, where the contract is `INVALID_ARGUMENT` naming the field; as
//! bytes, the node checks it (`ledger/src/server/convert.rs`). Only the Rust view changes: the
//! encoding of `string` and `bytes` on the wire is the same, and the .proto, the descriptor
//! that reflection serves (so grpcurl's JSON) and every other language keep `string`.

use std::collections::BTreeSet;
use std::path::PathBuf;

use prost::Message;
use prost_types::DescriptorProto;
use prost_types::FileDescriptorSet;
use prost_types::field_descriptor_proto::Type;

const PROTO: &str = "proto/flashledger.proto";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let mut loader = prost_build::Config::new();
    loader
        .protoc_executable(protoc_bin_vendored::protoc_bin_path()?)
        .file_descriptor_set_path(out_dir.join("flashledger_descriptor.bin"));
    let mut descriptors = loader.load_fds(&[PROTO], &["proto"])?;
    read_received_text_as_bytes(&mut descriptors);
    let rust_view = out_dir.join("flashledger_rust_view.bin");
    std::fs::write(&rust_view, descriptors.encode_to_vec())?;
    let mut config = prost_build::Config::new();
    config.bytes(["."]);
    tonic_build::configure()
        .file_descriptor_set_path(&rust_view)
        .skip_protoc_run()
        .compile_protos_with_config(config, &[PROTO], &["proto"])?;
    Ok(())
}

/// Turns into `bytes` the `string` fields of every message some method takes as its input, and
/// of every message those hold (a Batch's operations).
fn read_received_text_as_bytes(descriptors: &mut FileDescriptorSet) {
    let mut received: BTreeSet<String> = descriptors
        .file
        .iter()
        .flat_map(|file| &file.service)
        .flat_map(|service| &service.method)
        .filter_map(|method| method.input_type.clone())
        .collect();
    let mut unvisited: Vec<String> = received.iter().cloned().collect();
    while let Some(name) = unvisited.pop() {
        let Some(message) = find_message(descriptors, &name) else {
            continue;
        };
        for field in &message.field {
            if field.r#type() == Type::Message && received.insert(field.type_name().to_string()) {
                unvisited.push(field.type_name().to_string());
            }
        }
    }
    for file in &mut descriptors.file {
        let scope = format!(".{}", file.package());
        for message in &mut file.message_type {
            text_as_bytes_in(message, &scope, &received);
        }
    }
}

/// The message with the fully qualified name `name` (`.package.Outer.Inner`).
fn find_message<'a>(descriptors: &'a FileDescriptorSet, name: &str) -> Option<&'a DescriptorProto> {
    fn within<'a>(messages: &'a [DescriptorProto], scope: &str, name: &str) -> Option<&'a DescriptorProto> {
        messages.iter().find_map(|message| {
            let full = format!("{scope}.{}", message.name());
            if full == name {
                Some(message)
            } else {
                within(&message.nested_type, &full, name)
            }
        })
    }
    descriptors
        .file
        .iter()
        .find_map(|file| within(&file.message_type, &format!(".{}", file.package()), name))
}

fn text_as_bytes_in(message: &mut DescriptorProto, scope: &str, received: &BTreeSet<String>) {
    let full = format!("{scope}.{}", message.name());
    if received.contains(&full) {
        for field in &mut message.field {
            if field.r#type() == Type::String {
                field.set_type(Type::Bytes);
            }
        }
    }
    for nested in &mut message.nested_type {
        text_as_bytes_in(nested, &full, received);
    }
}
