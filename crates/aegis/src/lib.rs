//! aegis: an embedded service mesh for Rust services.
//!
//! Link it in and a service gets a node identity, mutual TLS on every
//! connection (certificates generated on first run), a shared and versioned
//! view of the mesh, peer ping, health and topology sync over gRPC, a mesh
//! loop that keeps all of that current by itself (with failure detection),
//! membership events ([`Node::subscribe`], [`Node::wait_for_providers`]),
//! and a client pool that turns "identity v1" into a live channel to a
//! provider. No sidecar, no control plane.
//!
//! # Quickstart
//!
//! ```no_run
//! use aegis::{Node, ServiceClient, ServiceInfo};
//! use aegis::services::identity::identity_service_client::IdentityServiceClient;
//! use aegis::services::identity::ValidateSessionRequest;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! // A node that offers identity v1 (its handlers registered with
//! // `with_service_registration`).
//! let provider = Node::builder()
//!     .with_id("identity-1")
//!     .with_name("identity")
//!     .with_address("127.0.0.1:0")
//!     .with_services([ServiceInfo::new("identity", "v1")])
//!     .build()?;
//! let provider_addr = provider.start_server().await?;
//!
//! // A node that needs it: one seed peer, and the mesh does the rest.
//! let consumer = Node::builder()
//!     .with_id("web-1")
//!     .with_name("web")
//!     .with_address("127.0.0.1:0")
//!     .build()?;
//! consumer.start_server().await?;
//! consumer.add_peer(aegis::PeerInfo::new("identity-1", provider_addr.to_string())?)?;
//! // Ready once the mesh has told it of a provider.
//! consumer
//!     .wait_for_providers("identity", "v1", 1, std::time::Duration::from_secs(5))
//!     .await?;
//!
//! let pool = consumer.client_pool();
//! let identity = ServiceClient::new(&pool, "identity", "v1", IdentityServiceClient::new);
//! let answer = identity
//!     .get()
//!     .await?
//!     .validate_session(ValidateSessionRequest { token: "t".into() })
//!     .await?;
//! println!("valid: {}", answer.into_inner().valid);
//!
//! consumer.shutdown().await?;
//! provider.shutdown().await?;
//! # Ok(()) }
//! ```
//!
//! # Features
//!
//! | feature | brings | networking |
//! |---|---|---|
//! | `tls` | [`tls`] (`aegis-tls`): certificates, rustls configs | no |
//! | `topology` | [`topology`] (`aegis-topology`): the versioned topology | no |
//! | `peer` | [`peer`] (`aegis-peer`): server, peers, health, caller identity | yes |
//! | `pool` | [`pool`] (`aegis-pool`): the client pool | yes |
//! | `node` | [`Node`], [`NodeBuilder`], the mesh loop | yes |
//! | `services` | [`services`]: identity and authorization contracts | yes |
//!
//! `default-features = false, features = ["topology"]` builds the topology
//! alone, without any networking crate.
#![warn(missing_docs)]

#[cfg(feature = "peer")]
pub use aegis_peer as peer;
#[cfg(feature = "pool")]
pub use aegis_pool as pool;
#[cfg(feature = "tls")]
pub use aegis_tls as tls;
#[cfg(feature = "topology")]
pub use aegis_topology as topology;

#[cfg(feature = "peer")]
pub use aegis_peer::{
    Caller, CallerError, FunctionHealthChecker, HealthChecker, HealthInfo, HealthStatus, Peer,
    PeerInfo, caller_from_request, must_caller_from_request,
};
#[cfg(feature = "pool")]
pub use aegis_pool::{PoolError, ServiceClient, ServiceClientPool};
#[cfg(feature = "tls")]
pub use aegis_tls::{
    CertificateSource, TlsConfig, TlsOptions, load_or_generate_tls, load_tls_config,
};
#[cfg(feature = "topology")]
pub use aegis_topology::{NodeId, NodeInfo, NodeState, NodeType, ServiceInfo, Topology};

#[cfg(feature = "node")]
mod error;
#[cfg(feature = "node")]
mod membership;
#[cfg(feature = "node")]
mod mesh;
#[cfg(feature = "node")]
mod node;

#[cfg(feature = "node")]
pub use aegis_mesh::{LivenessConfig, Member, MemberEvent, SyncConfig};
#[cfg(feature = "node")]
pub use error::Error;
#[cfg(feature = "node")]
pub use mesh::MeshConfig;
#[cfg(feature = "node")]
pub use node::{Node, NodeBuilder};

/// Generated clients and servers of the shared domain contracts.
#[cfg(feature = "services")]
pub mod services {
    /// `aegis.identity.v1`: sessions and users.
    #[allow(missing_docs, clippy::all, clippy::pedantic)]
    pub mod identity {
        tonic::include_proto!("aegis.identity.v1");
    }
    /// `aegis.authorization.v1`: tokens and guards.
    #[allow(missing_docs, clippy::all, clippy::pedantic)]
    pub mod authorization {
        tonic::include_proto!("aegis.authorization.v1");
    }
}
