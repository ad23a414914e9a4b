//! Code generation only: compiles `proto/credits/v1/*.proto` with protox (a Rust protobuf
//! compiler, so no system `protoc`), generates prost messages and tonic stubs, and writes the
//! encoded descriptor set that server reflection serves.

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["proto/credits/v1/types.proto", "proto/credits/v1/authorizer.proto", "proto/credits/v1/admin.proto"];
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    let descriptors = protox::compile(protos, ["proto"])?;
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("credits_v1_descriptor.bin"), descriptors.encode_to_vec())?;
    // Requests that do not decode are the caller's bad input: see src/api/codec.rs.
    tonic_prost_build::configure().codec_path("crate::api::codec::StrictCodec").compile_fds(descriptors)?;
    Ok(())
}
