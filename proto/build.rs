//! Compiles the vpccni.v1 protos with protox (pure Rust), so a fresh machine needs no system protoc.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = ["vpccni/v1/ipam.proto", "vpccni/v1/introspection.proto"];
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["."])?;
    // Server stubs only for ipamd: the plugin and vpcctl link the client side alone.
    let server = std::env::var_os("CARGO_FEATURE_SERVER").is_some();
    tonic_prost_build::configure().build_server(server).compile_fds(fds)?;
    Ok(())
}
