//! The mesh loop: keeps a node's peers, topology and liveness current.

use std::collections::HashMap;
use std::sync::Weak;
use std::time::Duration;

use aegis_peer::PeerInfo;
use aegis_peer::util::join_all;
use aegis_topology::{NodeId, NodeState};
use tokio::sync::watch;

use crate::node::NodeInner;

/// How the background mesh loop runs. On by default; turn it off with
/// [`MeshConfig::disabled`] to drive `sync_topology` by hand.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MeshConfig {
    /// Whether the loop runs.
    pub enabled: bool,
    /// Time between rounds.
    pub interval: Duration,
    /// Each round waits `interval` ± this fraction, so nodes started
    /// together do not move in lockstep (0.0 to 1.0).
    pub jitter: f64,
    /// Peers synced with each round, chosen at random.
    pub fanout: usize,
    /// Deadline of each liveness ping.
    pub probe_timeout: Duration,
    /// Peers pinged per round: all of them up to this many, else a random
    /// choice of this many (so a large mesh is not pinged all-to-all; the
    /// first of many observers to miss a dead node enough times marks it).
    pub max_probes: usize,
    /// Deadline of each sync.
    pub sync_timeout: Duration,
    /// Missed rounds in a row before a peer is marked suspect.
    pub suspect_after: u32,
    /// Missed rounds in a row before a peer is marked dead.
    pub dead_after: u32,
    /// How long tombstones of nodes that left are kept before purging.
    pub tombstone_retention: Duration,
}

impl Default for MeshConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            interval: Duration::from_millis(300),
            jitter: 0.2,
            fanout: 3,
            probe_timeout: Duration::from_millis(250),
            max_probes: 32,
            sync_timeout: Duration::from_secs(2),
            suspect_after: 2,
            dead_after: 4,
            tombstone_retention: Duration::from_secs(600),
        }
    }
}

impl MeshConfig {
    /// No background loop.
    pub fn disabled() -> Self {
        Self {
            enabled: false,
            ..Self::default()
        }
    }
}

/// xorshift64*: enough to pick peers and jitter, seeded per node.
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        Self(seed | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Runs rounds until `stop` or until the node is gone.
pub(crate) async fn run(
    node: Weak<NodeInner>,
    config: MeshConfig,
    mut stop: watch::Receiver<bool>,
    seed: u64,
) {
    let mut rng = Rng::new(seed);
    let mut misses: HashMap<NodeId, u32> = HashMap::new();
    loop {
        let jitter = config.jitter.clamp(0.0, 1.0);
        let factor = (1.0 + jitter * (2.0 * rng.unit() - 1.0)).max(0.05);
        let wait = Duration::try_from_secs_f64(config.interval.as_secs_f64() * factor)
            .unwrap_or(config.interval);
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            () = tokio::time::sleep(wait) => {}
        }
        let Some(node) = node.upgrade() else { return };
        round(&node, &config, &mut rng, &mut misses).await;
    }
}

/// One round: learn peers from the topology, ping every peer, mark the
/// silent ones, sync with a few.
async fn round(
    node: &NodeInner,
    config: &MeshConfig,
    rng: &mut Rng,
    misses: &mut HashMap<NodeId, u32>,
) {
    learn_peers(node);
    let peers = node.peers.get_all_peers();
    let mut probed = peers.clone();
    while probed.len() > config.max_probes.max(1) {
        probed.swap_remove(rng.below(probed.len()));
    }

    // Liveness: ping the chosen peers at once.
    let pings = probed.iter().map(|p| {
        let id = p.id().clone();
        async move {
            let ok = matches!(
                tokio::time::timeout(config.probe_timeout, node.peers.ping_peer(id.as_str())).await,
                Ok(Ok(_))
            );
            (id, ok)
        }
    });
    let mut alive = Vec::new();
    for (id, ok) in join_all(pings).await {
        if ok {
            misses.remove(&id);
            alive.push(id);
            continue;
        }
        let n = misses.entry(id.clone()).or_insert(0);
        *n += 1;
        let state = if *n >= config.dead_after {
            NodeState::Dead
        } else if *n >= config.suspect_after {
            NodeState::Suspect
        } else {
            continue;
        };
        if let Ok(true) = node.topology.mark(id.as_str(), state) {
            tracing::info!(node_id = %node.id, peer = %id, ?state, missed = *n, "peer liveness changed");
        }
    }
    misses.retain(|id, _| peers.iter().any(|p| p.id() == id));

    // Gossip: sync with up to `fanout` of the peers that answered.
    let mut chosen = Vec::new();
    while chosen.len() < config.fanout.min(alive.len()) {
        let pick = alive.swap_remove(rng.below(alive.len()));
        chosen.push(pick);
    }
    let syncs = chosen.iter().map(|id| async move {
        match tokio::time::timeout(config.sync_timeout, node.peers.sync_topology(id.as_str())).await
        {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                tracing::debug!(node_id = %node.id, peer = %id, error = %e, "sync failed")
            }
            Err(_) => tracing::debug!(node_id = %node.id, peer = %id, "sync timed out"),
        }
    });
    join_all(syncs).await;

    let cutoff = std::time::SystemTime::now().checked_sub(config.tombstone_retention);
    if let Some(cutoff) = cutoff {
        node.topology.purge_tombstones(cutoff);
    }
}

/// Makes a peer of every node the topology knows (and drops peers that
/// left or moved), so that a node that knows one seed ends up knowing the mesh.
pub(crate) fn learn_peers(node: &NodeInner) {
    for entry in node.topology.entries() {
        let id = entry.id();
        if *id == node.id {
            continue;
        }
        let existing = node.peers.get_peer(id.as_str());
        if entry.state == NodeState::Left {
            if existing.is_some() {
                let _ = node.peers.remove_peer(id.as_str());
            }
            continue;
        }
        match existing {
            Some(p) if p.info().address == entry.info.address => {}
            other => {
                if other.is_some() {
                    let _ = node.peers.remove_peer(id.as_str());
                }
                match PeerInfo::new(id.as_str(), entry.info.address.clone()) {
                    Ok(info) => {
                        let info = info.with_type(entry.info.node_type.clone());
                        if node.peers.add_peer(info).is_ok() {
                            tracing::debug!(node_id = %node.id, peer = %id, "learnt peer from topology");
                        }
                    }
                    Err(e) => {
                        tracing::debug!(node_id = %node.id, peer = %id, error = %e, "unusable address")
                    }
                }
            }
        }
    }
}
