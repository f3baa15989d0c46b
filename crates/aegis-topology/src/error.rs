//! The one error type of this crate.

use aegis_id::{NodeId, NodeIdError};

/// What went wrong with a topology operation. Nothing of a failed operation
/// is applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TopologyError {
    /// `add_node` for an ID that has a live entry.
    #[error("node {0} is already in the topology")]
    AlreadyExists(NodeId),
    /// `remove_node` / `update_node` / `mark` for an ID with no live entry.
    #[error("node {0} is not in the topology")]
    NotFound(NodeId),
    /// An ID is not a valid node ID.
    #[error("invalid node ID: {0}")]
    InvalidNodeId(#[from] NodeIdError),
    /// A field is longer than the limit allows.
    #[error("node {id}: field {field} is {len} bytes, over the limit of {max}")]
    FieldTooLong {
        /// The node.
        id: NodeId,
        /// The field ("name", "address", "type", "service name", ...).
        field: &'static str,
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A node lists more services than allowed.
    #[error("node {id} lists {count} services, over the limit of {max}")]
    TooManyServices {
        /// The node.
        id: NodeId,
        /// How many it lists.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// A delta holds more entries than allowed.
    #[error("delta holds {count} entries, over the limit of {max}")]
    DeltaTooLarge {
        /// How many it holds.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// A write would make the topology hold more entries than allowed.
    #[error(
        "the topology would hold {count} entries, over the limit of {max} (Limits::max_members)"
    )]
    TooManyMembers {
        /// How many it would hold.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// A delta holds two entries for one node.
    #[error("delta holds node {0} twice")]
    DuplicateEntry(NodeId),
}
