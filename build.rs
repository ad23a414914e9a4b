//! Code generation only: compiles `proto/credits/v1/*.proto` with protox (a Rust protobuf
//! compiler, so no system `protoc`), generates prost messages and tonic stubs, and writes the
//! encoded descriptor set that server reflection serves, and serde implementations of the
//! protobuf JSON mapping (pbjson) that the operator commands' `--json` prints.

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["proto/credits/v1/types.proto", "proto/credits/v1/authorizer.proto", "proto/credits/v1/admin.proto"];
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    let descriptors = protox::compile(protos, ["proto"])?;
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    let encoded = descriptors.encode_to_vec();
    std::fs::write(out.join("credits_v1_descriptor.bin"), &encoded)?;
    // Proto field names (`account_id`), as the .proto files and the README spell them.
    pbjson_build::Builder::new()
        .register_descriptors(&encoded)?
        .preserve_proto_field_names()
        .build(&[".credits.v1"])?;
    // Requests that do not decode are the caller's bad input: see src/api/codec.rs.
    tonic_prost_build::configure().codec_path("crate::api::codec::StrictCodec").compile_fds(descriptors)?;
    Ok(())
}
