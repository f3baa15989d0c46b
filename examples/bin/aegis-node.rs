//! The `node` example as a binary, so that this package's process tests
//! can start it: `cargo` builds it for them.

fn main() -> std::process::ExitCode {
    aegis_examples::node_main()
}
