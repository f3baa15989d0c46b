//! With the `services` feature, compiles the shared identity and
//! authorization contracts with protox (pure Rust: no system `protoc`).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    #[cfg(feature = "services")]
    {
        let root =
            std::path::PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
        let files = [
            root.join("aegis/identity/v1/identity.proto"),
            root.join("aegis/authorization/v1/authorization.proto"),
        ];
        for f in &files {
            println!("cargo:rerun-if-changed={}", f.display());
        }
        let fds = protox::compile(&files, [&root])?;
        tonic_prost_build::configure().compile_fds(fds)?;
    }
    Ok(())
}
