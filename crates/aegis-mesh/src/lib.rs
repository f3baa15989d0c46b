//! The aegis mesh protocol as a sans-io state machine.
//!
//! This crate decides; it never does I/O. It owns:
//!
//! - the sync exchange: [`respond`] on the responder's side, [`SyncSession`]
//!   on the requester's, with every message bounded ([`SyncConfig`]) and
//!   every request checked whole before any of it is applied;
//! - the liveness decisions ([`Liveness`], SWIM with Lifeguard's
//!   refinements): whom to probe, when a silent member becomes suspect and
//!   when dead, what to piggyback on probes ([`Piggyback`]), when the
//!   departed are purged;
//! - membership as events ([`MembershipView`], [`MemberEvent`]).
//!
//! Time and randomness are inputs: every call that needs the time takes
//! `now_ms` (Unix milliseconds), and every random choice comes from an
//! [`Rng`] the caller seeds. The gRPC server and client of `aegis-peer`,
//! the facade's driver loop and the gossip simulation in this crate's tests
//! all call this one code, so a protocol change is made once and simulated
//! as shipped.
//!
//! No tokio, tonic or rustls here (CI checks the dependency tree). What an
//! entry means and how two of them merge is [`aegis_topology`]'s business.
//!
//! ```
//! use aegis_mesh::{Step, SyncConfig, SyncSession, respond};
//! use aegis_topology::{NodeInfo, Topology};
//!
//! let (a, b) = (Topology::new(), Topology::new());
//! b.add_node(NodeInfo::new("node-b", "b", "127.0.0.1:7002")?)?;
//! let config = SyncConfig::default();
//! let (mut session, mut request) = SyncSession::start(&a, config);
//! loop {
//!     // Here the request would cross the network; the answer comes back.
//!     let answer = respond(&b, request, &config, 1_700_000_000_000)?.response;
//!     match session.on_response(&a, answer, 1_700_000_000_000)? {
//!         Step::Send(next) => request = next,
//!         Step::Done(_) => break,
//!     }
//! }
//! assert!(a.get_node("node-b").is_some());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![warn(missing_docs)]

mod error;
mod liveness;
mod membership;
mod message;
mod rng;
mod sync;

pub use error::SyncError;
pub use liveness::{Liveness, LivenessConfig, MAX_PIGGYBACK, Probe, Transition};
pub use membership::{Member, MemberEvent, MembershipView};
pub use message::{Piggyback, Suspicion, SyncRequest, SyncResponse};
pub use rng::Rng;
/// A time as the core takes it: Unix milliseconds (0 before the epoch,
/// saturating far after it). Drivers pass `unix_ms(SystemTime::now())`;
/// simulations pass their own clock.
pub fn unix_ms(t: std::time::SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

pub use sync::{
    Responded, Step, SyncConfig, SyncMode, SyncOutcome, SyncSession, check_stamps, full_answer,
    leave_request, respond,
};
