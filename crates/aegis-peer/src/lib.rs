//! The network half of an aegis node: the mesh wire protocol over mutual TLS.
//!
//! - [`MeshServer`] serves `aegis.MeshService` (ping, health, node info,
//!   topology), the standard `grpc.health.v1.Health`, and the user's
//!   services, over rustls with client certificates required.
//! - [`PeerManager`] dials peers lazily, checking that each server's
//!   certificate names the peer's node ID, and makes the calls with
//!   deadlines. [`PeerManager::sync_topology`] exchanges digests, then only
//!   what differs; with a reference (Go) node it falls back to the full list.
//! - [`caller_from_request`] tells a handler which node is calling.
//! - [`Health`], [`HealthChecker`]: the node's health model.
//!
//! The wire contract is `proto/aegis/mesh.proto`; its field numbers 1–15
//! are the reference's, and this project's extensions use 16 and up.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use aegis_peer::{Health, MeshServer, PeerInfo, PeerManager};
//! use aegis_topology::Topology;
//!
//! let tls = aegis_tls::load_or_generate_tls("node-1", "./certs")?;
//! let topology = Topology::new();
//! let server = MeshServer::new(tls.clone(), topology.clone(), Health::new())
//!     .serve("127.0.0.1:0")
//!     .await?;
//! let peers = PeerManager::new(tls.node_id().clone(), Some(tls), topology);
//! peers.add_peer(PeerInfo::new("node-2", "127.0.0.1:7002")?)?;
//! let pong = peers.ping_peer("node-2").await?;
//! println!("node-2 answered in {:?}", pong.latency);
//! server.shutdown(std::time::Duration::from_secs(5)).await?;
//! # Ok(()) }
//! ```
#![warn(missing_docs)]

mod convert;
mod error;
mod health;
pub mod metrics;
mod peer;
pub mod proto;
mod server;
/// The mutual-TLS transport this crate runs on (re-exported).
pub use aegis_transport as transport;
#[doc(hidden)]
pub mod util;

pub use aegis_transport::{
    Caller, CallerError, Credentials, MeshConnectInfo, PeerCertificate, RoutesLayer, ServerHandle,
    caller_from_extensions, caller_from_request, must_caller_from_request, serve_routes,
};
pub use error::{PeerError, describe};
pub use health::{
    AlwaysHealthy, CheckFuture, FunctionHealthChecker, Health, HealthCheckError, HealthChecker,
    HealthInfo, HealthStatus, ParseHealthStatusError,
};
pub use peer::{
    HealthResponse, NodeInfoResponse, Peer, PeerConfig, PeerInfo, PeerManager, PingResponse,
    SharedLiveness, SyncMode, SyncReport, lock_liveness,
};
pub use server::{MeshServer, MeshServerConfig, Registrar};
