//! Compiles our own minimal wire-compatible protos with `protox` (pure Rust), so building
//! the service never needs a system `protoc`: Envoy's RLS, and the xDS messages and
//! `RateLimitConfig` resource of the xDS configuration source.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let rls = ["proto/envoy/service/ratelimit/v3/rls.proto"];
    let xds = [
        "proto/envoy/service/discovery/v3/discovery.proto",
        "proto/ratelimit/config/ratelimit/v3/rls_conf.proto",
        "proto/ratelimit/service/ratelimit/v3/rls_conf_ds.proto",
    ];

    // Kept for gRPC server reflection, so `grpcurl` works without proto files. Only the
    // services the server serves: the xDS ones are a client's.
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    let served = protox::compile(rls, ["proto"])?;
    std::fs::write(
        out.join("rls_descriptor.bin"),
        prost::Message::encode_to_vec(&served),
    )?;

    let all = protox::compile(rls.iter().chain(xds.iter()), ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(all)?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
