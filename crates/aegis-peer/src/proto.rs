//! Code generated from `proto/aegis/mesh.proto` (and the test contract).

/// The `aegis` protobuf package: `MeshService`, its messages, and this
/// project's extension messages.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod mesh {
    tonic::include_proto!("aegis");
}

/// `aegis.testing`: a one-call service that answers with the caller's node
/// ID, for tests of caller identity.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod testing {
    tonic::include_proto!("aegis.testing");
}
