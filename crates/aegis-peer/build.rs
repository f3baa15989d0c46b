//! Compiles the mesh protocol with protox (pure Rust), so that building
//! needs no system `protoc`.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let files = [
        proto_root.join("aegis/mesh.proto"),
        proto_root.join("aegis/testing/echo.proto"),
    ];
    for f in &files {
        println!("cargo:rerun-if-changed={}", f.display());
    }
    let fds = protox::compile(&files, [&proto_root])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // Methods a server does not implement answer UNIMPLEMENTED, as a
        // reference node does for this project's extension RPCs.
        .generate_default_stubs(true)
        .compile_fds(fds)?;
    Ok(())
}
