//! Generates the gRPC types from `proto/flashledger.proto` with a vendored `protoc` (none is
//! installed on the build machines), plus the file descriptor set that server reflection serves.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    config.bytes(["."]);
    tonic_build::configure()
        .file_descriptor_set_path(out_dir.join("flashledger_descriptor.bin"))
        .compile_protos_with_config(config, &["proto/flashledger.proto"], &["proto"])?;
    Ok(())
}
