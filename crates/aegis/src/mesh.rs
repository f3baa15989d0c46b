//! The driver of the mesh protocol: timers and the network around
//! `aegis-mesh`, which makes every decision (whom to probe, what a miss
//! means, whom to sync with, what to purge). The driver holds the topology
//! and a weak reference to the peers, never the node, so dropping the node
//! ends it.

use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};

use aegis_mesh::{LivenessConfig, Probe, Rng, Transition};
use aegis_peer::util::join_all;
use aegis_peer::{PeerInfo, PeerManager, SharedLiveness, lock_liveness};
use aegis_topology::{NodeId, NodeState, Topology};
use tokio::sync::watch;

/// How the background mesh loop runs. On by default; turn it off with
/// [`MeshConfig::disabled`] to drive `sync_topology` by hand.
///
/// The loop is SWIM with Lifeguard's refinements (see [`aegis_mesh::Liveness`]):
/// each protocol period a node probes **one** member (in a shuffled
/// round-robin order), checks a failed probe through `indirect_checks`
/// other members, and only then suspects it. The suspicion travels
/// piggybacked on probes and acks; the suspect refutes as soon as it hears
/// of it; it is declared dead only when its suspicion timeout runs out,
/// which shrinks as other members confirm it. A node that is itself slow
/// (its probes go unanswered by everyone, it has to refute, it misses its
/// own periods) stretches its timeouts instead of accusing others. Digest
/// anti-entropy with `fanout` members per period is the backstop.
///
/// Two presets: [`MeshConfig::lan`] (the default: one data centre, round
/// trips well under 10 ms) and [`MeshConfig::wan`] (members far apart or on
/// lossy links). Each field's default below is the LAN value.
///
/// With the defaults, a crashed member is suspected within a few periods
/// and dead after `suspicion_mult × max(1, log10 N)` periods once two
/// others confirm it (1.2 s up to N = 10, 2.4 s at N = 100), at most
/// `suspicion_max_mult` times that; in all about 2–4 s in small meshes.
/// Each node sends about 13 small messages a second, whatever the mesh size.
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
/// assert_eq!((lan.fanout, lan.max_probes, lan.indirect_checks), (1, 1, 3));
/// assert_eq!(
///     (lan.suspect_after, lan.suspicion_mult, lan.suspicion_max_mult),
///     (1, 4, 6)
/// );
/// assert_eq!(
///     (lan.tombstone_retention, lan.dead_retention),
///     (Duration::from_secs(600), Duration::from_secs(300))
/// );
/// assert_eq!((lan.leave_fanout, lan.leave_timeout), (32, Duration::from_secs(2)));
/// assert_eq!(lan.client_lease, Duration::from_secs(60));
///
/// // Far apart: slower, more patient.
/// let wan = MeshConfig::wan();
/// assert!(wan.interval > lan.interval && wan.suspicion_mult > lan.suspicion_mult);
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MeshConfig {
    /// Whether the loop runs. Default: `true`.
    pub enabled: bool,
    /// The protocol period: from the start of one round to the start of
    /// the next, and the unit of suspicion timeouts. Default: 300 ms.
    pub interval: Duration,
    /// Each round's interval is `interval` ± this fraction, so nodes started
    /// together do not move in lockstep (0.0 to 1.0). Default: 0.2.
    pub jitter: f64,
    /// Members synced with (digest anti-entropy) each round. Default: 1.
    pub fanout: usize,
    /// Deadline of each probe, and of each helper's probe when a failed one
    /// is checked through others (stretched while this node is unhealthy).
    /// Default: 250 ms.
    pub probe_timeout: Duration,
    /// Members probed per round. Default: 1 (SWIM).
    pub max_probes: usize,
    /// Members asked to probe a member whose probe failed, before it counts
    /// (0 counts it at once). Default: 3.
    pub indirect_checks: usize,
    /// Deadline of each sync. Default: 2 s.
    pub sync_timeout: Duration,
    /// Failed probe rounds in a row (at one stamp) before this node
    /// suspects a member. Default: 1.
    pub suspect_after: u32,
    /// The shortest suspicion timeout, in periods, times `max(1, log10 N)`.
    /// Default: 4.
    pub suspicion_mult: u32,
    /// The longest suspicion timeout (no confirmation), as a multiple of
    /// the shortest. Default: 6.
    pub suspicion_max_mult: u32,
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
    /// A node that serves nothing (`start_client`) cannot be probed: it
    /// renews its entry every half of this instead, and the others mark
    /// it dead when they have seen no renewal for this long (a crashed
    /// client-only node used to stay alive in every view). A longer lease
    /// costs less traffic (`LivenessConfig::client_lease`); zero turns it
    /// off. Default: 60 s (WAN: 120 s).
    pub client_lease: Duration,
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
            interval: liveness.period,
            jitter: 0.2,
            fanout: 1,
            probe_timeout: Duration::from_millis(250),
            max_probes: liveness.max_probes,
            indirect_checks: liveness.indirect_checks,
            sync_timeout: Duration::from_secs(2),
            suspect_after: liveness.suspect_after,
            suspicion_mult: liveness.suspicion_mult,
            suspicion_max_mult: liveness.suspicion_max_mult,
            tombstone_retention: liveness.tombstone_retention,
            dead_retention: liveness.dead_retention,
            leave_fanout: 32,
            leave_timeout: Duration::from_secs(2),
            client_lease: liveness.client_lease,
        }
    }

    /// For members far apart or on lossy links: periods of 1 s, probes
    /// given 800 ms, syncs 5 s, suspicion timeouts of 6 periods × max(1,
    /// log10 N) and up (about 8–12 s to find a crashed node), 5 s to
    /// announce a leave.
    pub fn wan() -> Self {
        Self {
            interval: Duration::from_secs(1),
            probe_timeout: Duration::from_millis(800),
            sync_timeout: Duration::from_secs(5),
            suspicion_mult: 6,
            leave_timeout: Duration::from_secs(5),
            client_lease: Duration::from_secs(120),
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
            period: self.interval,
            max_probes: self.max_probes,
            suspect_after: self.suspect_after,
            suspicion_mult: self.suspicion_mult,
            suspicion_max_mult: self.suspicion_max_mult,
            tombstone_retention: self.tombstone_retention,
            dead_retention: self.dead_retention,
            indirect_checks: self.indirect_checks,
            client_lease: self.client_lease,
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
    pub(crate) liveness: SharedLiveness,
    pub(crate) config: MeshConfig,
}

/// Runs rounds until `stop` or until the peers are gone.
pub(crate) async fn run(driver: Driver, mut stop: watch::Receiver<bool>, seed: u64) {
    let mut rng = Rng::new(seed);
    // Rounds start one period apart, not one period after the previous
    // round ended: a round slowed by probes that time out does not stretch
    // the time it takes to find a member dead. Syncs run beside the rounds
    // (one batch at a time), so a slow sync never delays a probe.
    let mut last_round = Duration::ZERO;
    let mut syncing: Option<tokio::task::JoinHandle<()>> = None;
    loop {
        let jitter = driver.config.jitter.clamp(0.0, 1.0);
        let factor = (1.0 + jitter * (2.0 * rng.unit() - 1.0)).max(0.05);
        let interval = lock_liveness(&driver.liveness).scale(driver.config.interval);
        let period =
            Duration::try_from_secs_f64(interval.as_secs_f64() * factor).unwrap_or(interval);
        let wait = period.saturating_sub(last_round);
        tokio::select! {
            _ = stop.wait_for(|s| *s) => break,
            () = tokio::time::sleep(wait) => {}
        }
        let Some(peers) = driver.peers.upgrade() else {
            break;
        };
        let started = tokio::time::Instant::now();
        let targets = round(&driver, &peers, &mut rng).await;
        if syncing.as_ref().is_none_or(|t| t.is_finished()) && !targets.is_empty() {
            syncing = Some(tokio::spawn(sync_with(
                Arc::clone(&peers),
                Arc::clone(&driver.liveness),
                driver.local.clone(),
                targets,
                driver.config.sync_timeout,
            )));
        }
        last_round = started.elapsed();
    }
    if let Some(task) = syncing {
        task.abort();
    }
}

fn log_transition(local: &NodeId, t: Transition) {
    let state = match &t {
        Transition::Suspect { .. } => "suspect",
        Transition::Dead { .. } | Transition::Silent { .. } => "dead",
        Transition::Answering { .. } => "answering",
    };
    metrics::counter!("aegis_member_transitions_total", "to" => state).increment(1);
    match t {
        Transition::Suspect { id, missed } => {
            metrics::counter!("aegis_suspicions_raised_total").increment(1);
            tracing::info!(node_id = %local, peer = %id, missed, "peer suspect");
        }
        Transition::Dead {
            id,
            confirmations,
            suspect_ms,
        } => {
            tracing::warn!(node_id = %local, peer = %id, confirmations, suspect_ms, "peer dead");
        }
        Transition::Answering { id } => {
            tracing::info!(node_id = %local, peer = %id, "peer answers again");
        }
        Transition::Silent { id, silent_ms } => {
            tracing::warn!(node_id = %local, peer = %id, silent_ms, "client-only peer dead: it stopped renewing its entry");
        }
    }
}

/// One round: learn peers, run the core's clock, probe whom it says (a
/// failed probe checked through helpers while the direct probe is tried
/// once more) and send news to whom it says, report the outcomes, purge.
/// Returns whom to sync with.
async fn round(driver: &Driver, peers: &PeerManager, rng: &mut Rng) -> Vec<NodeId> {
    let config = &driver.config;
    let topology = &driver.topology;
    learn_peers(peers, topology, &driver.local);
    let now = now_ms();
    let (transitions, probes, gossip, timeout) = {
        let mut l = lock_liveness(&driver.liveness);
        let transitions = l.tick(topology, now);
        let probes = l.probes(topology, now, rng);
        let gossip = l.gossip_targets(rng);
        (transitions, probes, gossip, l.scale(config.probe_timeout))
    };
    for t in transitions {
        log_transition(&driver.local, t);
    }
    let ping = |id: &NodeId| {
        let id = id.clone();
        async move {
            matches!(
                tokio::time::timeout(timeout, peers.ping_peer(id.as_str())).await,
                Ok(Ok(_))
            )
        }
    };
    // While there is news, a few more members get it on a ping of their
    // own (its answer is not a probe: it counts for nothing).
    let (direct, _) = tokio::join!(
        join_all(probes.iter().map(&ping)),
        join_all(gossip.iter().map(&ping))
    );
    let asks: Vec<(NodeId, Vec<NodeId>)> = probes
        .iter()
        .zip(&direct)
        .filter(|(_, ok)| !**ok)
        .map(|(id, _)| {
            let helpers = lock_liveness(&driver.liveness).helpers(id, rng);
            (id.clone(), helpers)
        })
        .collect();
    let checks = asks.iter().map(|(target, helpers)| {
        let ping = &ping;
        async move {
            let asked = helpers
                .iter()
                .map(|h| peers.indirect_ping(h.as_str(), target, timeout));
            let (again, answers) = tokio::join!(ping(target), join_all(asked));
            let replied = answers.iter().filter(|a| a.is_ok()).count();
            for a in &answers {
                let result = match a {
                    Ok(true) => "ack",
                    Ok(false) => "no_ack",
                    Err(_) => "no_reply",
                };
                metrics::counter!("aegis_indirect_probes_total", "result" => result).increment(1);
            }
            let acked = again || answers.iter().any(|a| matches!(a, Ok(true)));
            (
                target.clone(),
                Probe::after_checks(acked, helpers.len(), replied),
            )
        }
    });
    let checked = join_all(checks).await;
    // Only members this node reached itself are worth syncing with.
    let mut answered = Vec::new();
    let now = now_ms();
    let mut l = lock_liveness(&driver.liveness);
    for (id, ok) in probes.iter().zip(&direct) {
        let probe = if *ok {
            answered.push(id.clone());
            Probe::Answered
        } else {
            checked.iter().find(|(t, _)| t == id).map_or(
                Probe::Missed {
                    asked: 0,
                    replied: 0,
                },
                |(_, p)| *p,
            )
        };
        let result = match (ok, probe) {
            (true, _) => "ack",
            (false, Probe::Answered) => "indirect_ack",
            (false, Probe::Missed { .. }) => "missed",
        };
        metrics::counter!("aegis_probes_total", "result" => result).increment(1);
        if let Some(t) = l.on_probe(topology, id, probe, now) {
            log_transition(&driver.local, t);
        }
    }
    metrics::gauge!("aegis_local_health").set(f64::from(l.health()));
    metrics::counter!("aegis_refutations_total").absolute(l.refutations());
    metrics::counter!("aegis_client_renewals_total").absolute(l.renewals());
    // `aegis_members{state}`: the members this node holds, by state.
    for (state, n) in ["alive", "suspect", "dead", "left"]
        .into_iter()
        .zip(l.members_by_state())
    {
        metrics::gauge!("aegis_members", "state" => state).set(n as f64);
    }
    let seeds: Vec<NodeId> = peers
        .get_all_peers()
        .iter()
        .map(|p| p.id().clone())
        .collect();
    let targets = l.sync_targets(topology, &seeds, &answered, config.fanout, rng);
    let (left, dead) = l.housekeeping(topology, SystemTime::now());
    drop(l);
    if left + dead > 0 {
        tracing::info!(node_id = %driver.local, left, dead, "purged departed members");
    }
    targets
}

/// Digest anti-entropy with `targets`, all at once, each within `timeout`.
async fn sync_with(
    peers: Arc<PeerManager>,
    liveness: SharedLiveness,
    local: NodeId,
    targets: Vec<NodeId>,
    timeout: Duration,
) {
    let syncs = targets.iter().map(|id| {
        let (peers, liveness, local) = (&peers, &liveness, &local);
        async move {
            match tokio::time::timeout(timeout, peers.sync_topology(id.as_str())).await {
                Ok(Ok(report)) => {
                    metrics::counter!("aegis_syncs_total", "result" => "ok").increment(1);
                    for (direction, bytes, entries) in [
                        ("sent", report.bytes_sent, report.sent),
                        ("received", report.bytes_received, report.received),
                    ] {
                        metrics::counter!("aegis_sync_bytes_total", "direction" => direction)
                            .increment(bytes as u64);
                        metrics::counter!("aegis_sync_entries_total", "direction" => direction)
                            .increment(entries as u64);
                    }
                    if report.applied.refuted {
                        lock_liveness(liveness).on_refuted();
                    }
                }
                Ok(Err(e)) => {
                    metrics::counter!("aegis_syncs_total", "result" => "failed").increment(1);
                    tracing::debug!(node_id = %local, peer = %id, error = %e, "sync failed")
                }
                Err(_) => {
                    metrics::counter!("aegis_syncs_total", "result" => "timed_out").increment(1);
                    tracing::debug!(node_id = %local, peer = %id, "sync timed out")
                }
            }
        }
    });
    join_all(syncs).await;
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
        // A client-only node (no server: port 0) is nobody's peer.
        if entry.state == NodeState::Left || entry.info.address.ends_with(":0") {
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
