//! The one error type of this crate.

use aegis_topology::{NodeId, Stamp, TopologyError};

/// Why a sync message was refused. Nothing of a refused message is applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SyncError {
    /// A request breaks a rule of the protocol.
    #[error("invalid {field}: {reason}")]
    InvalidRequest {
        /// The field (as named in `mesh.proto`).
        field: &'static str,
        /// The rule it breaks.
        reason: String,
    },
    /// An entry's stamp lies further in the future than the allowed clock
    /// skew: accepting it would let a forged claim rise above anything its
    /// owner could answer with.
    #[error(
        "node {id}: stamp {stamp} is beyond the highest acceptable generation {limit} (now plus the allowed clock skew)"
    )]
    StampTooHigh {
        /// The node the entry is about.
        id: NodeId,
        /// Its stamp.
        stamp: Stamp,
        /// The highest generation accepted now.
        limit: u64,
    },
    /// The topology refused the entries.
    #[error(transparent)]
    Topology(#[from] TopologyError),
    /// The peer answered out of turn.
    #[error("expected {expected}, got {got}")]
    Unexpected {
        /// What the session waited for.
        expected: &'static str,
        /// What came.
        got: &'static str,
    },
}
