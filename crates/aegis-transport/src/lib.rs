//! The mutual-TLS transport of an aegis node, shared by the mesh protocol
//! (`aegis-peer`) and the client pool (`aegis-pool`):
//!
//! - [`Credentials`]: the node's certificate, key and trusted CAs as a value
//!   that changes at run time. Every new connection, in and out, takes the
//!   current configuration; open connections keep going. [`CredentialsWatcher`]
//!   feeds it from the certificate files: it renews the node certificate
//!   when the directory holds the CA key, and reloads files that change
//!   (certificates managed by another tool).
//! - [`serve_routes`]: tonic routes behind a hardened accept loop (pending
//!   handshakes bounded in total and per source, a first-byte deadline, a
//!   handshake deadline, connection caps); [`RoutesLayer`] wraps every
//!   service of a server in a tower layer.
//! - [`mtls_channel`]: a lazily connecting tonic channel that checks that
//!   the server's certificate names the node ID it dialled.
//! - [`caller_from_request`]: which node is calling, from its verified
//!   client certificate.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use aegis_transport::{ChannelOptions, Credentials, ServerConfig, mtls_channel, serve_routes};
//!
//! let tls = aegis_tls::load_or_generate_tls("node-1", "./certs")?;
//! let credentials = Credentials::new(tls);
//! let routes = tonic::service::Routes::default();
//! let server = serve_routes(&credentials, "127.0.0.1:0", routes, ServerConfig::default()).await?;
//! let id = aegis_tls::NodeId::new("node-1")?;
//! let address = server.local_addr().to_string();
//! let _channel = mtls_channel(&credentials, &id, &address, &ChannelOptions::default())?;
//! server.shutdown(std::time::Duration::from_secs(5)).await?;
//! # Ok(()) }
//! ```
#![warn(missing_docs)]

mod caller;
mod credentials;
mod dial;
mod error;
mod layer;
pub mod metrics;
mod server;

pub use caller::{
    Caller, CallerError, MeshConnectInfo, PeerCertificate, caller_from_extensions,
    caller_from_request, must_caller_from_request,
};
pub use credentials::{Checked, Credentials, CredentialsWatcher, RenewalConfig};
pub use dial::{
    ChannelOptions, ConnectEvent, ConnectObserver, check_address, from_another_ca, identify,
    mtls_channel, mtls_channel_observed, peer_certificate,
};
pub use error::TransportError;
pub use layer::RoutesLayer;
pub use server::{ServerConfig, ServerHandle, serve_routes};
