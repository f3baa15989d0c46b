//! The shared memory of an aegis mesh: who is in it, where they listen,
//! which services they offer.
//!
//! Pure data: no I/O, no async, no network, so a service can depend on this
//! crate alone. The network layer (`aegis-peer`) moves [`Entry`] values and
//! digests between nodes; this crate decides what they mean.
//!
//! # Model
//!
//! Each node is the only writer of its own entry. An entry carries a
//! [`Stamp`] `(generation, version)` that its writer raises on every change,
//! and a [`NodeState`]. Merging keeps, per node ID, the entry of highest
//! [`Precedence`] — stamp, then state, then a content hash — a total order,
//! so merge is commutative, associative and idempotent and any gossip order
//! converges. Tombstones ([`NodeState::Left`]) win over the older live
//! entries they replace, and are purged after a retention the caller picks.
//!
//! # Sync
//!
//! [`Topology::digest`] answers "are we equal?" in 24 bytes; when not,
//! [`Topology::entry_digests`] and [`Topology::compare`] find exactly the
//! entries each side lacks, and [`Topology::apply`] merges them.
//!
//! ```
//! use aegis_topology::{NodeInfo, ServiceInfo, Topology};
//!
//! let a = Topology::new();
//! let b = Topology::new();
//! a.add_node(NodeInfo::new("node-a", "a", "127.0.0.1:7001")?
//!     .with_services([ServiceInfo::new("identity", "v1")]))?;
//! b.add_node(NodeInfo::new("node-b", "b", "127.0.0.1:7002")?)?;
//!
//! // One push-pull exchange: b sends its entry digests, a answers with what
//! // b lacks and asks for what it lacks itself.
//! let plan = a.compare(&b.entry_digests());
//! b.apply(plan.send)?;
//! a.apply(b.entries_for(&plan.want))?;
//!
//! assert_eq!(a.digest(), b.digest());
//! assert_eq!(b.get_service_providers("identity", "v1").len(), 1);
//! # Ok::<(), aegis_topology::TopologyError>(())
//! ```
#![warn(missing_docs)]

mod digest;
mod error;
mod health;
mod topology;
mod types;

pub use aegis_id::{NodeId, NodeIdError};
pub use digest::{BUCKETED_ABOVE, BUCKETS, Digest, EntryDigest, Precedence};
pub use error::TopologyError;
pub use health::{HealthStatus, ParseHealthStatusError};
pub use topology::{ApplyReport, Comparison, Limits, Providers, Topology, TopologyConfig};
pub use types::{Entry, NodeInfo, NodeState, NodeType, ServiceInfo, Stamp};
