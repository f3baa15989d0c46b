//! The one error type of this crate.

/// What can go wrong dialling, listening or changing credentials. Variants
/// name the address or node involved.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
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
    /// The gRPC server failed.
    #[error("the server failed: {0}")]
    Server(#[source] tonic::transport::Error),
    /// A seed address did not lead to a member of this mesh.
    #[error("cannot join through {address}: {reason}")]
    Seed {
        /// The seed's address.
        address: String,
        /// Why, and what to check.
        reason: String,
    },
    /// New credentials name another node than the ones they replace.
    #[error(
        "the new certificate names node {new}, but this node is {current}; credentials of another node are refused"
    )]
    OtherNode {
        /// This node.
        current: String,
        /// What the new certificate names.
        new: String,
    },
}
