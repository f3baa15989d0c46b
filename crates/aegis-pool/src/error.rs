//! The one error type of this crate.

/// Why the pool could not hand out a channel.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PoolError {
    /// No live node offers this exact service name and version.
    #[error("no node provides {name} {version}")]
    NoProviders {
        /// The service name.
        name: String,
        /// The version.
        version: String,
    },
    /// The pool has no TLS configuration; the mesh only speaks mutual TLS.
    #[error("the pool has no TLS configuration")]
    NoTlsConfig,
    /// A channel to the chosen provider could not be made.
    #[error("cannot connect to provider {node_id} at {address}: {reason}")]
    Connect {
        /// The provider.
        node_id: String,
        /// Its address.
        address: String,
        /// Why.
        reason: String,
    },
    /// The pool was closed.
    #[error("the pool is closed")]
    Closed,
}
