//! Code generation only: compiles `proto/credits/v1/*.proto` with protox (a Rust protobuf
//! compiler, so no system `protoc`) and generates prost messages and tonic stubs.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["proto/credits/v1/types.proto", "proto/credits/v1/authorizer.proto", "proto/credits/v1/admin.proto"];
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    let descriptors = protox::compile(protos, ["proto"])?;
    tonic_prost_build::configure().compile_fds(descriptors)?;
    Ok(())
}
