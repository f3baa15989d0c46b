//! From "I need identity v1" to a live mutual-TLS channel to a node that
//! provides it.
//!
//! [`ServiceClientPool::get_conn`] reads the providers of an exact service
//! name and version from the topology's index (no scan), picks one
//! round-robin, and hands out the one channel it keeps per provider (tonic
//! channels multiplex, so every caller shares it). Dialling verifies the
//! provider's certificate against the mesh CA with the provider's **node
//! ID** as the TLS server name — not `host:port`, which no certificate
//! names.
//!
//! Providers whose connection attempts fail are set aside for a back-off
//! period (passive outlier detection) while others remain; providers that
//! left the topology, or moved, have their channels dropped.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use aegis_pool::{ServiceClient, ServiceClientPool};
//! use aegis_topology::Topology;
//!
//! let tls = aegis_tls::load_or_generate_tls("consumer-1", "./certs")?;
//! let topology = Topology::new(); // filled by the mesh
//! let pool = ServiceClientPool::new(topology, Some(tls));
//! let channel = pool.get_conn("identity", "v1").await?;
//! # let _ = channel;
//! // Or typed, with any tonic client constructor:
//! // let identity = ServiceClient::new(&pool, "identity", "v1", IdentityServiceClient::new);
//! // let mut client = identity.get().await?;
//! # let _ = ServiceClient::new(&pool, "identity", "v1", |c| c);
//! # Ok(()) }
//! ```
#![warn(missing_docs)]

mod balanced;
mod error;
mod pool;

pub use balanced::BalancedChannel;
pub use error::PoolError;
pub use pool::{PoolConfig, ServiceClient, ServiceClientPool};
