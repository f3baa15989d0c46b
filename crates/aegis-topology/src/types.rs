//! The data of a topology: nodes, services, stamps, states.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use aegis_id::NodeId;

use crate::{HealthStatus, TopologyError};

/// What kind of node this is; free text, `generic` by default.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(transparent))]
pub struct NodeType(Cow<'static, str>);

impl NodeType {
    /// The default type, `"generic"`.
    pub const GENERIC: NodeType = NodeType(Cow::Borrowed("generic"));

    /// A node type with the given name.
    pub fn new(name: impl Into<String>) -> Self {
        Self(Cow::Owned(name.into()))
    }

    /// The type's name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for NodeType {
    fn default() -> Self {
        Self::GENERIC
    }
}

impl fmt::Display for NodeType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for NodeType {
    fn from(s: &str) -> Self {
        Self::new(s)
    }
}

impl From<String> for NodeType {
    fn from(s: String) -> Self {
        Self::new(s)
    }
}

/// A service a node offers: a name and a version, e.g. `identity` / `v1`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct ServiceInfo {
    /// Service name.
    pub name: String,
    /// Service version.
    pub version: String,
}

impl ServiceInfo {
    /// A service `name` at `version`.
    pub fn new(name: impl Into<String>, version: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            version: version.into(),
        }
    }
}

/// One node of the mesh: who it is, where it listens, what it offers.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct NodeInfo {
    /// The node's ID (also its certificate's CN).
    pub id: NodeId,
    /// Human-readable name.
    pub name: String,
    /// The node's type.
    pub node_type: NodeType,
    /// Where it listens, `host:port`.
    pub address: String,
    /// The services it offers.
    pub services: Vec<ServiceInfo>,
    /// When it joined, Unix seconds (0: set on insertion).
    pub joined_at: i64,
    /// When its entry last changed, Unix seconds (0: set on insertion).
    pub updated_at: i64,
    /// Its health as it reports it (unknown for nodes that do not say, such
    /// as reference nodes). Clients prefer nodes that do not report unhealthy.
    pub health: HealthStatus,
}

impl NodeInfo {
    /// A node with no services, type `generic`, timestamps unset.
    ///
    /// # Errors
    /// [`TopologyError::InvalidNodeId`] if `id` is not a valid node ID.
    pub fn new(
        id: impl AsRef<str>,
        name: impl Into<String>,
        address: impl Into<String>,
    ) -> Result<Self, TopologyError> {
        Ok(Self {
            id: NodeId::new(id)?,
            name: name.into(),
            node_type: NodeType::GENERIC,
            address: address.into(),
            services: Vec::new(),
            joined_at: 0,
            updated_at: 0,
            health: HealthStatus::Unknown,
        })
    }

    /// Sets the node type.
    pub fn with_type(mut self, node_type: impl Into<NodeType>) -> Self {
        self.node_type = node_type.into();
        self
    }

    /// Sets the services.
    pub fn with_services(mut self, services: impl IntoIterator<Item = ServiceInfo>) -> Self {
        self.services = services.into_iter().collect();
        self
    }

    /// Whether the node offers `name` at `version`.
    pub fn provides(&self, name: &str, version: &str) -> bool {
        self.services
            .iter()
            .any(|s| s.name == name && s.version == version)
    }
}

/// The version of one entry, raised by its writer on every change.
/// Compared as `(generation, version)`: a node that restarts with a higher
/// generation wins over everything it wrote before.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Stamp {
    /// Epoch of the writer (for example its start time).
    pub generation: u64,
    /// Counter within the generation.
    pub version: u64,
}

impl Stamp {
    /// A stamp.
    pub const fn new(generation: u64, version: u64) -> Self {
        Self {
            generation,
            version,
        }
    }

    /// The next stamp: the next version in the same generation, or the
    /// first version of the next generation once versions run out, so that
    /// `next` is always greater (up to the very last stamp).
    pub const fn next(self) -> Self {
        match self.version.checked_add(1) {
            Some(version) => Self {
                generation: self.generation,
                version,
            },
            None => Self {
                generation: self.generation.saturating_add(1),
                version: 0,
            },
        }
    }
}

impl fmt::Display for Stamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.generation, self.version)
    }
}

/// The state of an entry. At equal stamps the later state in this list wins,
/// so an observer can mark a node suspect or dead without being its writer,
/// and only the node itself can refute it (by raising its stamp).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum NodeState {
    /// Up, as far as anyone knows.
    #[default]
    Alive,
    /// Missed some liveness checks.
    Suspect,
    /// Missed enough liveness checks to be considered gone.
    Dead,
    /// Left the mesh (a tombstone).
    Left,
}

impl NodeState {
    /// Whether the node may be returned as a provider.
    pub fn is_available(self) -> bool {
        matches!(self, NodeState::Alive | NodeState::Suspect)
    }
}

/// An entry as it travels between topologies: the node, its stamp, its state.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Entry {
    /// The node.
    pub info: Arc<NodeInfo>,
    /// Its stamp.
    pub stamp: Stamp,
    /// Its state.
    pub state: NodeState,
}

impl Entry {
    /// An entry.
    pub fn new(info: impl Into<Arc<NodeInfo>>, stamp: Stamp, state: NodeState) -> Self {
        Self {
            info: info.into(),
            stamp,
            state,
        }
    }

    /// The node ID.
    pub fn id(&self) -> &NodeId {
        &self.info.id
    }

    /// Approximate size on the wire, in bytes: field contents plus a few
    /// bytes of framing each (for accounting, not for encoding).
    pub fn encoded_len(&self) -> usize {
        let i = &self.info;
        let text =
            i.id.as_str().len() + i.name.len() + i.node_type.as_str().len() + i.address.len();
        let services: usize = i
            .services
            .iter()
            .map(|s| s.name.len() + s.version.len() + 6)
            .sum();
        text + 8 + services + 4 * 9 + 2
    }
}
