//! Compiles the vpccni.v1 protos with protox (pure Rust), so a fresh machine needs no system protoc.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = ["vpccni/v1/ipam.proto", "vpccni/v1/introspection.proto"];
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["."])?;
    tonic_prost_build::configure().compile_fds(fds)?;
    Ok(())
}
