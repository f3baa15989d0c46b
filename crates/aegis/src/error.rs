//! The facade's error type.

/// What can go wrong building or running a [`crate::Node`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A required builder field was not set.
    #[error("NodeBuilder: {0} is required")]
    MissingField(&'static str),
    /// A builder field has an invalid value.
    #[error("NodeBuilder: invalid {field}: {reason}")]
    InvalidField {
        /// The field.
        field: &'static str,
        /// Why.
        reason: String,
    },
    /// Certificates could not be loaded or generated.
    #[error("TLS setup failed: {0}")]
    Tls(#[from] aegis_tls::TlsError),
    /// A peer or server operation failed.
    #[error(transparent)]
    Peer(#[from] aegis_peer::PeerError),
    /// The transport failed (a server that stopped with an error, say).
    #[error(transparent)]
    Transport(#[from] aegis_peer::transport::TransportError),
    /// A topology operation failed.
    #[error(transparent)]
    Topology(#[from] aegis_topology::TopologyError),
    /// The server is already running.
    #[error("the server of node {0} is already running")]
    AlreadyStarted(String),
    /// The node was shut down.
    #[error("node {0} is shut down")]
    ShutDown(String),
    /// Fewer providers than asked for were known when the wait ended.
    #[error(
        "{found} of the {wanted} providers of {name} {version} wanted were known after {after:?}"
    )]
    NotEnoughProviders {
        /// The service name.
        name: String,
        /// The service version.
        version: String,
        /// How many were wanted.
        wanted: usize,
        /// How many were known.
        found: usize,
        /// How long the wait was.
        after: std::time::Duration,
    },
    /// A health check failed.
    #[error("health check {checker} failed: {reason}")]
    HealthCheck {
        /// The checker's name.
        checker: String,
        /// What it said.
        reason: String,
    },
}
