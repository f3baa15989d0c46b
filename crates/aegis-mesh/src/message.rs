//! The messages of the sync exchange, as domain values. The gRPC adapter
//! (`aegis-peer`) maps them to and from `proto/aegis/mesh.proto`; the
//! simulation passes them by value.

use aegis_topology::{Digest, Entry, EntryDigest, NodeId, Stamp};

/// What a requester sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyncRequest {
    /// Step 1: "here is my digest; are we equal?"
    Digest(Digest),
    /// Step 1b: "send me the entry digests of these buckets".
    Buckets(Vec<u16>),
    /// Step 2: entries the responder lacks or holds older, and the IDs of
    /// entries the requester wants back (in ID order).
    Delta {
        /// Entries for the responder.
        push: Vec<Entry>,
        /// Entries the requester wants.
        want: Vec<NodeId>,
    },
    /// A request with no extension fields: a reference node, which expects
    /// the whole topology.
    Full,
}

/// What a responder answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyncResponse {
    /// Step 1: the digests match.
    InSync,
    /// Step 1 (a small topology) or 1b: entry digests.
    EntryDigests(Vec<EntryDigest>),
    /// Step 1 (a large topology): the digest of each bucket.
    BucketDigests(Vec<Digest>),
    /// Step 2: wanted entries, in the order asked; `more` when the
    /// responder stopped at its size budget and the rest must be asked again.
    Entries {
        /// The entries.
        entries: Vec<Entry>,
        /// Whether some wanted entries were left out for size.
        more: bool,
    },
    /// A reference node's answer (its whole topology), or ours to a
    /// reference node (as much of it as fits one message).
    Full(Vec<Entry>),
}

/// Approximate protobuf sizes, for budgets and accounting (the adapter
/// measures real bytes where it has them).
pub(crate) fn entries_len(entries: &[Entry]) -> usize {
    entries.iter().map(Entry::encoded_len).sum()
}

impl SyncRequest {
    /// Approximate size on the wire, in bytes.
    pub fn encoded_len(&self) -> usize {
        let framing = 16;
        framing
            + match self {
                SyncRequest::Digest(_) => Digest::ENCODED_LEN,
                SyncRequest::Buckets(b) => b.len() * 2,
                SyncRequest::Delta { push, want } => {
                    entries_len(push) + want.iter().map(|w| w.as_str().len() + 2).sum::<usize>()
                }
                SyncRequest::Full => 0,
            }
    }
}

impl SyncResponse {
    /// Approximate size on the wire, in bytes.
    pub fn encoded_len(&self) -> usize {
        let framing = 16;
        framing
            + match self {
                SyncResponse::InSync => 1,
                SyncResponse::EntryDigests(d) => d.iter().map(EntryDigest::encoded_len).sum(),
                SyncResponse::BucketDigests(b) => b.len() * Digest::ENCODED_LEN,
                SyncResponse::Entries { entries, .. } | SyncResponse::Full(entries) => {
                    entries_len(entries)
                }
            }
    }
}

/// A member's suspicion of another, as it travels piggybacked: `from`
/// suspects `target` at `stamp`. Counted once per `from` (Lifeguard's
/// independent confirmations).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Suspicion {
    /// The suspected member.
    pub target: NodeId,
    /// The target's stamp the suspicion is about (a refutation raises it).
    pub stamp: Stamp,
    /// The member that suspects it.
    pub from: NodeId,
}

/// What a probe or its ack carries besides the ping: recent changes and
/// suspicions (see [`crate::Liveness::piggyback`]). Empty in steady state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Piggyback {
    /// Entries that changed recently, as the sender holds them.
    pub updates: Vec<Entry>,
    /// Suspicions the sender holds or heard.
    pub suspicions: Vec<Suspicion>,
}

impl Piggyback {
    /// Whether it carries nothing.
    pub fn is_empty(&self) -> bool {
        self.updates.is_empty() && self.suspicions.is_empty()
    }

    /// Approximate size on the wire, in bytes.
    pub fn encoded_len(&self) -> usize {
        entries_len(&self.updates)
            + self
                .suspicions
                .iter()
                .map(|s| s.target.as_str().len() + s.from.as_str().len() + 24)
                .sum::<usize>()
    }
}
