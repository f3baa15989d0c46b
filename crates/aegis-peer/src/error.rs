//! The one error type of this crate.

use std::time::Duration;

use aegis_topology::TopologyError;

/// What can go wrong serving or calling the mesh protocol. Variants name the
/// peer or the address involved.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PeerError {
    /// No TLS configuration: the mesh only speaks mutual TLS.
    #[error("TLS is not configured: the mesh only speaks mutual TLS")]
    NoTlsConfig,
    /// `add_peer` for an ID that is already a peer.
    #[error("peer {0} is already added")]
    AlreadyExists(String),
    /// A call for an ID that is not a peer.
    #[error("peer {0} is not known")]
    NotFound(String),
    /// A peer ID that is not a valid node ID.
    #[error("invalid peer ID {id:?}: {reason}")]
    InvalidPeerId {
        /// The ID as given.
        id: String,
        /// What is wrong with it.
        reason: String,
    },
    /// An address that is not `host:port`.
    #[error("invalid address {address:?}: {reason}")]
    InvalidAddress {
        /// The address as given.
        address: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The listening socket could not be set up.
    #[error("cannot listen on {address}: {source}")]
    Bind {
        /// The address.
        address: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The peer did not answer within the deadline.
    #[error("peer {peer} did not answer {rpc} within {after:?}")]
    Timeout {
        /// The peer.
        peer: String,
        /// The call.
        rpc: &'static str,
        /// The deadline.
        after: Duration,
    },
    /// The call failed: transport error (connection refused, handshake
    /// refused, ...) or an error status from the peer.
    #[error("{rpc} to peer {peer} failed: {}", describe(status))]
    Rpc {
        /// The peer.
        peer: String,
        /// The call.
        rpc: &'static str,
        /// The gRPC status (code `Unavailable` for transport failures).
        status: Box<tonic::Status>,
    },
    /// The peer sent topology entries that break a rule; none were applied.
    #[error("peer {peer} sent a topology that was rejected: {source}")]
    BadTopology {
        /// The peer.
        peer: String,
        /// Which rule.
        #[source]
        source: TopologyError,
    },
    /// The peer answered with something that makes no sense.
    #[error("peer {peer} answered {rpc} with an invalid response: {reason}")]
    BadResponse {
        /// The peer.
        peer: String,
        /// The call.
        rpc: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// Called outside a Tokio runtime, which channels need.
    #[error("no Tokio runtime: peer channels must be used inside one")]
    NoRuntime,
    /// The manager was closed.
    #[error("the peer manager is closed")]
    Closed,
    /// The gRPC server failed.
    #[error("the mesh server failed: {0}")]
    Server(#[source] tonic::transport::Error),
    /// A seed address did not lead to a member of this mesh.
    #[error("cannot join through {address}: {reason}")]
    Seed {
        /// The seed's address.
        address: String,
        /// Why, and what to check.
        reason: String,
    },
    /// Another failure of the transport (new credentials refused, say).
    #[error(transparent)]
    Transport(aegis_transport::TransportError),
}

/// A status as one line: its code in words, then its message (tonic's own
/// `Display` dumps metadata and details as well).
pub fn describe(status: &tonic::Status) -> String {
    let message = status.message();
    let code = status.code().description();
    if message.is_empty() {
        code.to_owned()
    } else {
        format!("{message} ({code})")
    }
}

impl PeerError {
    /// The gRPC status code of a failed call, if this is one.
    pub fn code(&self) -> Option<tonic::Code> {
        match self {
            PeerError::Rpc { status, .. } => Some(status.code()),
            PeerError::Timeout { .. } => Some(tonic::Code::DeadlineExceeded),
            _ => None,
        }
    }
}

impl From<aegis_transport::TransportError> for PeerError {
    fn from(e: aegis_transport::TransportError) -> Self {
        use aegis_transport::TransportError as T;
        match e {
            T::InvalidAddress { address, reason } => PeerError::InvalidAddress { address, reason },
            T::Bind { address, source } => PeerError::Bind { address, source },
            T::Server(e) => PeerError::Server(e),
            T::Seed { address, reason } => PeerError::Seed { address, reason },
            other => PeerError::Transport(other),
        }
    }
}
