//! One standalone node, for meshes of processes.
//!
//! ```text
//! cargo run --example node -- --id node-1 --name one --address 127.0.0.1:7001 \
//!     --service identity/v1 [--peer node-2@127.0.0.1:7002] [--cert-dir ./certs] [--type edge]
//! ```
//!
//! Prints `listening on <addr>` once bound; SIGINT or SIGTERM shut it down
//! gracefully. `aegis node --help` lists the flags.

fn main() -> std::process::ExitCode {
    aegis_examples::node_main()
}
