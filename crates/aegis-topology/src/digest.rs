//! Order-independent digests of a topology, for "are we equal?" in constant
//! size, and per-entry digests for when the answer is no.

use aegis_id::NodeId;

use crate::types::{NodeInfo, NodeState, Stamp};

/// A digest of a whole topology: the number of entries and the wrapping sum
/// of a 128-bit hash of each entry's `(id, stamp, state, content)`. Two
/// topologies with the same entries have the same digest whatever the order
/// they learnt them in, and one entry changing updates it in O(1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Digest {
    /// Entries counted, tombstones included.
    pub count: u64,
    /// Sum of the entry hashes.
    pub sum: u128,
}

impl Digest {
    /// Size on the wire, in bytes (for accounting).
    pub const ENCODED_LEN: usize = 24;

    pub(crate) fn add(&mut self, term: u128) {
        self.count = self.count.wrapping_add(1);
        self.sum = self.sum.wrapping_add(term);
    }

    pub(crate) fn remove(&mut self, term: u128) {
        self.count = self.count.wrapping_sub(1);
        self.sum = self.sum.wrapping_sub(term);
    }
}

/// What one side holds of one node: enough to decide who has the newer
/// entry without sending it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct EntryDigest {
    /// The node.
    pub id: NodeId,
    /// The entry's stamp.
    pub stamp: Stamp,
    /// The entry's state.
    pub state: NodeState,
    /// A hash of the entry's content, for the deterministic tie-break.
    pub content: u64,
}

impl EntryDigest {
    /// The precedence of the entry: higher wins a merge.
    pub fn precedence(&self) -> Precedence {
        Precedence {
            stamp: self.stamp,
            state: self.state,
            content: self.content,
        }
    }

    /// Approximate size on the wire, in bytes (for accounting).
    pub fn encoded_len(&self) -> usize {
        self.id.as_str().len() + 2 + 8 + 8 + 1 + 8
    }
}

/// The total order by which merges pick an entry: stamp first, then state
/// (left > dead > suspect > alive), then content hash, so that equal stamps
/// with different content resolve the same way on every node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Precedence {
    /// The stamp.
    pub stamp: Stamp,
    /// The state.
    pub state: NodeState,
    /// The content hash.
    pub content: u64,
}

/// A fixed, portable 64-bit hash (FNV-1a, then a strong finaliser). It must
/// be the same on every node and every build, so std's randomly keyed
/// hashers will not do.
#[derive(Clone, Copy)]
pub(crate) struct Hasher64(u64);

impl Hasher64 {
    pub(crate) const fn new(seed: u64) -> Self {
        Self(0xcbf2_9ce4_8422_2325 ^ seed)
    }

    pub(crate) fn bytes(&mut self, data: &[u8]) -> &mut Self {
        // Length first, so that ("ab", "c") and ("a", "bc") differ.
        self.u64(data.len() as u64);
        for &b in data {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        self
    }

    pub(crate) fn u64(&mut self, v: u64) -> &mut Self {
        for b in v.to_le_bytes() {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        self
    }

    pub(crate) fn finish(&self) -> u64 {
        // splitmix64's finaliser: every input bit affects every output bit.
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// Hash of everything a node's entry says.
pub(crate) fn content_hash(info: &NodeInfo) -> u64 {
    let mut h = Hasher64::new(0);
    h.bytes(info.id.as_str().as_bytes())
        .bytes(info.name.as_bytes())
        .bytes(info.node_type.as_str().as_bytes())
        .bytes(info.address.as_bytes())
        .u64(info.joined_at as u64)
        .u64(info.updated_at as u64)
        .bytes(info.health.as_str().as_bytes())
        .u64(info.services.len() as u64);
    for s in &info.services {
        h.bytes(s.name.as_bytes()).bytes(s.version.as_bytes());
    }
    h.finish()
}

/// The term an entry adds to the topology digest.
pub(crate) fn digest_term(id: &NodeId, p: Precedence) -> u128 {
    let part = |seed| {
        let mut h = Hasher64::new(seed);
        h.bytes(id.as_str().as_bytes())
            .u64(p.stamp.generation)
            .u64(p.stamp.version)
            .u64(p.state as u64)
            .u64(p.content);
        h.finish()
    };
    (u128::from(part(0x5151_5151)) << 64) | u128::from(part(0xa3a3_a3a3))
}

/// How many buckets entries are spread over for [`crate::Topology::bucket_digests`].
pub const BUCKETS: usize = 256;

/// A topology with more entries than this answers "we differ" with bucket
/// digests first, rather than all its entry digests (below it, the entry
/// digests are smaller than the bucket digests).
pub const BUCKETED_ABOVE: u64 = BUCKETS as u64;

/// The bucket of a node ID: a fixed hash, the same on every node.
pub(crate) fn bucket_of(id: &NodeId) -> usize {
    let mut h = Hasher64::new(0xb0c4_e75e);
    h.bytes(id.as_str().as_bytes());
    (h.finish() % BUCKETS as u64) as usize
}
