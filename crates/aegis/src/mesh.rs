//! The driver of the mesh protocol: timers and the network around
//! `aegis-mesh`, which makes every decision (whom to probe, what a miss
//! means, whom to sync with, what to purge). The driver holds the topology
//! and a weak reference to the peers, never the node, so dropping the node
//! ends it.

use std::sync::Weak;
use std::time::{Duration, SystemTime};

use aegis_mesh::{Liveness, LivenessConfig, Rng, Transition};
use aegis_peer::util::join_all;
use aegis_peer::{PeerInfo, PeerManager};
use aegis_topology::{NodeId, NodeState, Topology};
use tokio::sync::watch;

/// How the background mesh loop runs. On by default; turn it off with
/// [`MeshConfig::disabled`] to drive `sync_topology` by hand.
///
/// Two presets: [`MeshConfig::lan`] (the default: one data centre, round
/// trips well under 10 ms) and [`MeshConfig::wan`] (members far apart or on
/// lossy links: slower rounds, longer deadlines, more misses before a death).
/// Each field's default below is the LAN value.
///
/// With the defaults, a crashed node is dead everywhere in about 2–3 s
/// (4 missed rounds of 300 ms, each miss confirmed through 3 other members,
/// plus gossip), and a healthy node behind one bad link is never accused.
///
/// ```
/// use std::time::Duration;
/// use aegis::MeshConfig;
///
/// // The defaults documented on each field (this example keeps them true).
/// let lan = MeshConfig::default();
/// assert_eq!(lan, MeshConfig::lan());
/// assert_eq!(
///     (lan.interval, lan.probe_timeout, lan.sync_timeout),
///     (Duration::from_millis(300), Duration::from_millis(250), Duration::from_secs(2))
/// );
/// assert_eq!((lan.fanout, lan.max_probes, lan.indirect_checks), (3, 32, 3));
/// assert_eq!((lan.suspect_after, lan.dead_after), (2, 4));
/// assert_eq!(
///     (lan.tombstone_retention, lan.dead_retention),
///     (Duration::from_secs(600), Duration::from_secs(300))
/// );
/// assert_eq!((lan.leave_fanout, lan.leave_timeout), (32, Duration::from_secs(2)));
///
/// // Far apart: slower, more patient.
/// let wan = MeshConfig::wan();
/// assert!(wan.interval > lan.interval && wan.dead_after > lan.dead_after);
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MeshConfig {
    /// Whether the loop runs. Default: `true`.
    pub enabled: bool,
    /// Time from the start of one round to the start of the next.
    /// Default: 300 ms.
    pub interval: Duration,
    /// Each round's interval is `interval` ± this fraction, so nodes started
    /// together do not move in lockstep (0.0 to 1.0). Default: 0.2.
    pub jitter: f64,
    /// Peers synced with each round, chosen at random. Default: 3.
    pub fanout: usize,
    /// Deadline of each liveness ping, and of each helper's ping when a
    /// failed one is checked through others. Default: 250 ms.
    pub probe_timeout: Duration,
    /// Members pinged per round at most, chosen at random (so a large mesh
    /// is not pinged all-to-all). Default: 32.
    pub max_probes: usize,
    /// Members asked to ping a member whose ping failed, before the miss
    /// counts (0 counts it at once). Default: 3.
    pub indirect_checks: usize,
    /// Deadline of each sync. Default: 2 s.
    pub sync_timeout: Duration,
    /// Missed rounds in a row (at one stamp) before a member is marked
    /// suspect. Default: 2.
    pub suspect_after: u32,
    /// Missed rounds in a row (at one stamp) before a member is marked
    /// dead. Default: 4.
    pub dead_after: u32,
    /// How long tombstones of nodes that left are kept before purging.
    /// Default: 10 min.
    pub tombstone_retention: Duration,
    /// How long dead nodes are kept (and probed with a back-off that grows
    /// from 1 s to 60 s) before purging. Default: 5 min.
    pub dead_retention: Duration,
    /// Members a leaving node tells directly (its peers and the members it
    /// knows, at random up to this many); gossip takes it from there.
    /// Default: 32.
    pub leave_fanout: usize,
    /// How long `shutdown` spends telling them. Default: 2 s.
    pub leave_timeout: Duration,
}

impl Default for MeshConfig {
    fn default() -> Self {
        Self::lan()
    }
}

impl MeshConfig {
    /// For members in one network: the default.
    pub fn lan() -> Self {
        let liveness = LivenessConfig::default();
        Self {
            enabled: true,
            interval: Duration::from_millis(300),
            jitter: 0.2,
            fanout: 3,
            probe_timeout: Duration::from_millis(250),
            max_probes: liveness.max_probes,
            indirect_checks: liveness.indirect_checks,
            sync_timeout: Duration::from_secs(2),
            suspect_after: liveness.suspect_after,
            dead_after: liveness.dead_after,
            tombstone_retention: liveness.tombstone_retention,
            dead_retention: liveness.dead_retention,
            leave_fanout: 32,
            leave_timeout: Duration::from_secs(2),
        }
    }

    /// For members far apart or on lossy links: rounds of 1 s, pings given
    /// 800 ms, syncs 5 s, six missed rounds before a death (about 6–8 s to
    /// find a crashed node), 5 s to announce a leave.
    pub fn wan() -> Self {
        Self {
            interval: Duration::from_secs(1),
            probe_timeout: Duration::from_millis(800),
            sync_timeout: Duration::from_secs(5),
            suspect_after: 3,
            dead_after: 6,
            leave_timeout: Duration::from_secs(5),
            ..Self::lan()
        }
    }

    /// No background loop.
    pub fn disabled() -> Self {
        Self {
            enabled: false,
            ..Self::default()
        }
    }

    pub(crate) fn liveness(&self) -> LivenessConfig {
        LivenessConfig {
            max_probes: self.max_probes,
            suspect_after: self.suspect_after,
            dead_after: self.dead_after,
            tombstone_retention: self.tombstone_retention,
            dead_retention: self.dead_retention,
            indirect_checks: self.indirect_checks,
            ..LivenessConfig::default()
        }
    }
}

fn now_ms() -> u64 {
    aegis_mesh::unix_ms(SystemTime::now())
}

/// What the driver works on.
pub(crate) struct Driver {
    pub(crate) local: NodeId,
    pub(crate) topology: Topology,
    pub(crate) peers: Weak<PeerManager>,
    pub(crate) config: MeshConfig,
}

/// Runs rounds until `stop` or until the peers are gone.
pub(crate) async fn run(driver: Driver, mut stop: watch::Receiver<bool>, seed: u64) {
    let mut rng = Rng::new(seed);
    let mut liveness = Liveness::new(driver.local.clone(), driver.config.liveness());
    // Rounds start one interval apart (a protocol period), not one interval
    // after the previous round ended: a round slowed by probes that time
    // out does not stretch the time it takes to find a member dead.
    let mut last_round = Duration::ZERO;
    loop {
        let jitter = driver.config.jitter.clamp(0.0, 1.0);
        let factor = (1.0 + jitter * (2.0 * rng.unit() - 1.0)).max(0.05);
        let period = Duration::try_from_secs_f64(driver.config.interval.as_secs_f64() * factor)
            .unwrap_or(driver.config.interval);
        let wait = period.saturating_sub(last_round);
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            () = tokio::time::sleep(wait) => {}
        }
        let Some(peers) = driver.peers.upgrade() else {
            return;
        };
        let started = tokio::time::Instant::now();
        round(&driver, &peers, &mut rng, &mut liveness).await;
        last_round = started.elapsed();
    }
}

/// One round: learn peers, probe whom the core says, report the answers,
/// sync with whom the core says, purge.
async fn round(driver: &Driver, peers: &PeerManager, rng: &mut Rng, liveness: &mut Liveness) {
    let config = &driver.config;
    let topology = &driver.topology;
    learn_peers(peers, topology, &driver.local);
    let probes = liveness.probes(topology, now_ms(), rng);
    let pings = probes.iter().map(|id| async move {
        let ok = matches!(
            tokio::time::timeout(config.probe_timeout, peers.ping_peer(id.as_str())).await,
            Ok(Ok(_))
        );
        (id, ok)
    });
    let direct = join_all(pings).await;
    // A failed direct probe is checked through others before it counts.
    let asks: Vec<(&NodeId, Vec<NodeId>)> = direct
        .iter()
        .filter(|(_, ok)| !ok)
        .map(|(id, _)| (*id, liveness.helpers(topology, id, rng)))
        .collect();
    let indirect = asks.iter().map(|(target, helpers)| async move {
        let asked = helpers
            .iter()
            .map(|h| peers.indirect_ping(h.as_str(), target, config.probe_timeout));
        let answers = join_all(asked).await;
        (*target, answers.into_iter().any(|a| matches!(a, Ok(true))))
    });
    let rescued: Vec<&NodeId> = join_all(indirect)
        .await
        .into_iter()
        .filter_map(|(id, ok)| ok.then_some(id))
        .collect();
    // Only members this node reached itself are worth syncing with.
    let mut answered = Vec::new();
    for (id, direct_ok) in direct {
        if direct_ok {
            answered.push(id.clone());
        }
        let ok = direct_ok || rescued.contains(&id);
        match liveness.on_probe(topology, id, ok, now_ms()) {
            Some(Transition::Suspect { id, missed }) => {
                tracing::info!(node_id = %driver.local, peer = %id, missed, "peer suspect");
            }
            Some(Transition::Dead { id, missed }) => {
                tracing::warn!(node_id = %driver.local, peer = %id, missed, "peer dead");
            }
            Some(Transition::Answering { id }) => {
                tracing::info!(node_id = %driver.local, peer = %id, "peer answers again");
            }
            None => {}
        }
    }
    let seeds: Vec<NodeId> = peers
        .get_all_peers()
        .iter()
        .map(|p| p.id().clone())
        .collect();
    let targets = liveness.sync_targets(topology, &seeds, &answered, config.fanout, rng);
    let syncs = targets.iter().map(|id| async move {
        match tokio::time::timeout(config.sync_timeout, peers.sync_topology(id.as_str())).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                tracing::debug!(node_id = %driver.local, peer = %id, error = %e, "sync failed")
            }
            Err(_) => tracing::debug!(node_id = %driver.local, peer = %id, "sync timed out"),
        }
    });
    join_all(syncs).await;
    let (left, dead) = liveness.housekeeping(topology, SystemTime::now());
    if left + dead > 0 {
        tracing::info!(node_id = %driver.local, left, dead, "purged departed members");
    }
}

/// Makes a peer of every node the topology knows (and drops peers that
/// left, moved or were purged), so that a node that knows one seed ends up
/// knowing the mesh.
pub(crate) fn learn_peers(peers: &PeerManager, topology: &Topology, local: &NodeId) {
    for peer in peers.get_all_peers() {
        if topology.is_forgotten(peer.id().as_str()) {
            let _ = peers.remove_peer(peer.id().as_str());
        }
    }
    for entry in topology.entries() {
        let id = entry.id();
        if id == local {
            continue;
        }
        let existing = peers.get_peer(id.as_str());
        if entry.state == NodeState::Left {
            if existing.is_some() {
                let _ = peers.remove_peer(id.as_str());
            }
            continue;
        }
        match existing {
            Some(p) if p.info().address == entry.info.address => {}
            other => {
                if other.is_some() {
                    let _ = peers.remove_peer(id.as_str());
                }
                add_peer(peers, id, &entry.info.address, &entry.info.node_type);
            }
        }
    }
}

fn add_peer(peers: &PeerManager, id: &NodeId, address: &str, node_type: &aegis_topology::NodeType) {
    match PeerInfo::new(id.as_str(), address) {
        Ok(info) => {
            if peers.add_peer(info.with_type(node_type.clone())).is_ok() {
                tracing::debug!(peer = %id, "learnt peer from topology");
            }
        }
        Err(e) => tracing::debug!(peer = %id, error = %e, "unusable address"),
    }
}

/// Tells members that this node left: its tombstone, in one request each,
/// to its peers and the members it knows (at random, up to `leave_fanout`),
/// all at once and within `leave_timeout` in all. Returns how many took it.
pub(crate) async fn announce_leave(
    peers: &PeerManager,
    topology: &Topology,
    local: &NodeId,
    config: &MeshConfig,
    seed: u64,
) -> usize {
    let mut targets: Vec<NodeId> = peers
        .get_all_peers()
        .iter()
        .map(|p| p.id().clone())
        .collect();
    for e in topology.entries() {
        if e.id() != local && e.state.is_available() && !targets.contains(e.id()) {
            targets.push(e.id().clone());
        }
    }
    let mut rng = Rng::new(seed);
    let k = rng.choose(&mut targets, config.leave_fanout);
    targets.truncate(k);
    for id in &targets {
        if peers.get_peer(id.as_str()).is_none()
            && let Some(n) = topology.get_node(id.as_str())
        {
            add_peer(peers, id, &n.address, &n.node_type);
        }
    }
    let pushes = targets.iter().map(|id| peers.push_leave(id.as_str()));
    match tokio::time::timeout(config.leave_timeout, join_all(pushes)).await {
        Ok(results) => results.iter().filter(|r| r.is_ok()).count(),
        Err(_) => 0,
    }
}
