//! A deterministic gossip simulation over real `Topology` values: every node
//! starts knowing itself and one seed, and each round gossips with `fanout`
//! random nodes it knows, by digest, then entry digests, then deltas
//! (push-pull). Shared by the test (N = 1,000) and the example (N = 10,000).

use aegis_topology::{BUCKETED_ABOVE, Digest, NodeInfo, ServiceInfo, Topology, TopologyConfig};

/// SplitMix64: a tiny seeded generator, enough for picking peers.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

/// What one round cost.
#[derive(Debug, Clone, Copy, Default)]
pub struct RoundStats {
    pub exchanges: usize,
    pub bytes: usize,
    /// Exchanges that stopped after the digests matched.
    pub equal: usize,
}

pub struct Mesh {
    pub nodes: Vec<Topology>,
    rng: Rng,
    fanout: usize,
}

fn id(i: usize) -> String {
    format!("node-{i}")
}

fn info(i: usize) -> NodeInfo {
    NodeInfo::new(id(i), format!("n{i}"), format!("127.0.0.1:{}", 10_000 + i))
        .expect("valid id")
        .with_services([ServiceInfo::new(
            if i.is_multiple_of(2) {
                "identity"
            } else {
                "authorization"
            },
            "v1",
        )])
}

impl Mesh {
    pub fn new(n: usize, fanout: usize, seed: u64) -> Self {
        let nodes: Vec<Topology> = (0..n)
            .map(|i| {
                let t = Topology::with_config(TopologyConfig {
                    local_id: Some(aegis_topology::NodeId::new(id(i)).expect("valid id")),
                    generation: 1,
                    ..TopologyConfig::default()
                });
                t.add_node(info(i)).expect("fresh topology");
                t
            })
            .collect();
        // Everyone knows the seed (node 0), as a node started with one peer address.
        let seed_entry = nodes[0].entries();
        for t in &nodes[1..] {
            t.apply(seed_entry.clone()).expect("valid entry");
        }
        Self {
            nodes,
            rng: Rng::new(seed),
            fanout,
        }
    }

    /// One push-pull exchange from `a` to `b`; returns the bytes it moved.
    pub fn exchange(&self, a: usize, b: usize) -> (usize, bool) {
        let (ta, tb) = (&self.nodes[a], &self.nodes[b]);
        let mut bytes = Digest::ENCODED_LEN; // a → b: digest
        if ta.digest() == tb.digest() {
            return (bytes + 1, true); // b → a: "same"
        }
        let plan = if tb.digest().count > BUCKETED_ABOVE {
            // b → a: bucket digests; a → b: the buckets that differ; b → a:
            // their entry digests.
            let buckets = tb.bucket_digests();
            bytes += buckets.len() * Digest::ENCODED_LEN;
            let differing = ta.differing_buckets(&buckets);
            bytes += differing.len() * 2;
            let theirs = tb.entry_digests_in(&differing);
            bytes += theirs.iter().map(|d| d.encoded_len()).sum::<usize>();
            ta.compare_in(&theirs, &differing)
        } else {
            let theirs = tb.entry_digests(); // b → a: entry digests
            bytes += theirs.iter().map(|d| d.encoded_len()).sum::<usize>();
            ta.compare(&theirs)
        }; // a → b: delta + wants
        bytes += plan.send.iter().map(|e| e.encoded_len()).sum::<usize>();
        bytes += plan
            .want
            .iter()
            .map(|w| w.as_str().len() + 2)
            .sum::<usize>();
        tb.apply(plan.send).expect("valid delta");
        let back = tb.entries_for(&plan.want); // b → a: what a wanted
        bytes += back.iter().map(|e| e.encoded_len()).sum::<usize>();
        ta.apply(back).expect("valid delta");
        (bytes, false)
    }

    pub fn round(&mut self) -> RoundStats {
        let mut stats = RoundStats::default();
        for a in 0..self.nodes.len() {
            let known = self.nodes[a].get_all_nodes();
            for _ in 0..self.fanout {
                let peer = &known[self.rng.below(known.len())].id;
                let Some(b) = peer
                    .as_str()
                    .strip_prefix("node-")
                    .and_then(|s| s.parse().ok())
                else {
                    continue;
                };
                if b == a {
                    continue;
                }
                let (bytes, equal) = self.exchange(a, b);
                stats.exchanges += 1;
                stats.bytes += bytes;
                stats.equal += usize::from(equal);
            }
        }
        stats
    }

    pub fn converged(&self) -> bool {
        let d = self.nodes[0].digest();
        self.nodes.iter().all(|t| t.digest() == d)
    }
}
