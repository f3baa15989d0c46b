//! The aegis mesh protocol as a sans-io state machine.
//!
//! This crate decides; it never does I/O. It owns the sync exchange
//! ([`respond`] on the responder's side, [`SyncSession`] on the
//! requester's), the liveness decisions ([`Liveness`]: whom to probe, when
//! a silent member becomes suspect or dead, when the departed are purged),
//! and the bounds on what a peer may make a node hold. Time and randomness
//! are inputs, and membership changes come out as events
//! ([`MembershipView`], [`MemberEvent`]): every call that needs the time takes `now_ms` (Unix
//! milliseconds), and every random choice comes from a [`Rng`] the caller
//! seeds. The gRPC server and client of `aegis-peer`, the facade's driver
//! loop, and the gossip simulation in this crate's tests all call this one
//! code, so a protocol change is made once and simulated as shipped.
//!
//! No tokio, tonic or rustls here (CI checks the dependency tree).
//!
//! # Scope
//! The exchange moves [`aegis_topology`] entries; what an entry means and
//! how two of them merge is the topology's business.
#![warn(missing_docs)]

mod error;
mod liveness;
mod membership;
mod message;
mod rng;
mod sync;

pub use error::SyncError;
pub use liveness::{Liveness, LivenessConfig, Transition};
pub use membership::{Member, MemberEvent, MembershipView};
pub use message::{SyncRequest, SyncResponse};
pub use rng::Rng;
pub use sync::{
    Responded, Step, SyncConfig, SyncMode, SyncOutcome, SyncSession, check_stamps, leave_request,
    respond,
};
