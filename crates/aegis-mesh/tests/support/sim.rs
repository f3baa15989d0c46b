//! A deterministic simulation of a mesh, driving the shipped core: every
//! exchange is a real `SyncSession` against a real `respond`, every probe
//! decision a real `Liveness`. The network between the nodes is simulated:
//! message loss, delay (a session whose messages take longer than its
//! deadline is cut off where the deadline passes), symmetric and one-way
//! partitions, and stalled nodes (which neither answer nor act). All
//! randomness comes from one seed. Shared by the tests (small N) and the
//! `gossip` example (N = 1,000 and 10,000).
#![allow(dead_code)]

use std::cell::Cell;
use std::collections::{HashMap, HashSet};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aegis_mesh::{
    Liveness, LivenessConfig, Probe, Rng, Step, SyncConfig, SyncRequest, SyncSession, respond,
};
use aegis_topology::{NodeId, NodeInfo, ServiceInfo, Topology, TopologyConfig};

/// Unix milliseconds at the start of every simulation.
pub const START_MS: u64 = 1_700_000_000_000;

thread_local! {
    /// The simulated time of the simulation running on this thread (each
    /// test runs on a thread of its own).
    static NOW_MS: Cell<u64> = const { Cell::new(START_MS) };
}

/// The topologies' clock: simulated time.
fn sim_clock() -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(NOW_MS.with(Cell::get))
}

/// The simulated network.
#[derive(Debug, Clone, Default)]
pub struct Net {
    /// Chance that any one message is lost.
    pub loss: f64,
    /// Each message takes up to this long (uniformly).
    pub max_delay_ms: u64,
    /// A session is cut off once its messages took this long in all.
    pub deadline_ms: u64,
    /// Directed links that drop everything: (from, to).
    pub blocked: HashSet<(usize, usize)>,
    /// Nodes that neither act nor answer.
    pub stalled: HashSet<usize>,
}

impl Net {
    /// Cuts both directions between `a` and `b`.
    pub fn partition(&mut self, a: usize, b: usize) {
        self.blocked.insert((a, b));
        self.blocked.insert((b, a));
    }
}

/// What one round cost.
#[derive(Debug, Clone, Copy, Default)]
pub struct RoundStats {
    /// Sessions started.
    pub exchanges: usize,
    /// Sessions that stopped at the digest ("in sync").
    pub equal: usize,
    /// Sessions cut off by loss, a partition, a stall or the deadline.
    pub cut: usize,
    /// Bytes of every message sent (approximate protobuf sizes).
    pub bytes: usize,
    /// Requests made.
    pub requests: usize,
    /// Probes made (with liveness on), indirect ones included.
    pub probes: usize,
    /// Bytes of probes, acks, indirect probes and news, piggybacks included.
    pub probe_bytes: usize,
    /// Pings sent only to carry news.
    pub gossip: usize,
}

/// A ping or ack without piggyback, as protobuf: an ID, a timestamp, a flag.
pub const PING_BYTES: usize = 32;

pub struct Sim {
    pub nodes: Vec<Topology>,
    pub liveness: Option<Vec<Liveness>>,
    pub net: Net,
    pub config: SyncConfig,
    pub fanout: usize,
    pub now_ms: u64,
    pub interval_ms: u64,
    /// Every liveness change any node reported: (observer, transition).
    pub transitions: Vec<(usize, aegis_mesh::Transition)>,
    rng: Rng,
    index: HashMap<NodeId, usize>,
}

pub fn id(i: usize) -> String {
    format!("node-{i}")
}

pub fn info(i: usize) -> NodeInfo {
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

impl Sim {
    /// `n` nodes, each knowing itself and node 0 (its seed), like nodes
    /// started with one peer address.
    pub fn new(n: usize, fanout: usize, seed: u64) -> Self {
        NOW_MS.with(|t| t.set(START_MS));
        let nodes: Vec<Topology> = (0..n)
            .map(|i| {
                let t = Topology::with_config(TopologyConfig {
                    local_id: Some(NodeId::new(id(i)).expect("valid id")),
                    generation: START_MS,
                    limits: aegis_topology::Limits {
                        max_members: n.max(16) * 2,
                        ..aegis_topology::Limits::default()
                    },
                    clock: Some(sim_clock),
                });
                t.add_node(info(i)).expect("fresh topology");
                t
            })
            .collect();
        let seed_entries = nodes[0].entries();
        for t in &nodes[1..] {
            t.apply(seed_entries.clone()).expect("valid entry");
        }
        let index = (0..n)
            .map(|i| (NodeId::new(id(i)).expect("valid id"), i))
            .collect();
        Self {
            nodes,
            liveness: None,
            net: Net::default(),
            config: SyncConfig::default(),
            fanout,
            now_ms: START_MS,
            interval_ms: 300,
            transitions: Vec::new(),
            rng: Rng::new(seed),
            index,
        }
    }

    /// Turns on probing by the shipped liveness core.
    pub fn with_liveness(mut self, config: LivenessConfig) -> Self {
        self.liveness = Some(
            (0..self.nodes.len())
                .map(|i| Liveness::new(NodeId::new(id(i)).expect("valid id"), config))
                .collect(),
        );
        self
    }

    /// Makes node `i` client-only: it serves nothing (its entry says port
    /// 0), so nobody probes it.
    pub fn serve_nothing(&mut self, i: usize) {
        let mut me = info(i);
        me.address = "127.0.0.1:0".to_owned();
        self.nodes[i]
            .update_node(me)
            .expect("the node is in its own topology");
    }

    pub fn index_of(&self, id: &NodeId) -> Option<usize> {
        self.index.get(id).copied()
    }

    /// Whether one message from `from` to `to` arrives, and its delay.
    fn deliver(&mut self, from: usize, to: usize) -> Option<u64> {
        if self.net.stalled.contains(&to) || self.net.blocked.contains(&(from, to)) {
            return None;
        }
        if self.net.loss > 0.0 && self.rng.unit() < self.net.loss {
            return None;
        }
        Some(if self.net.max_delay_ms > 0 {
            self.rng.next_u64() % (self.net.max_delay_ms + 1)
        } else {
            0
        })
    }

    /// One sync session from `a` to `b`, through the simulated network.
    /// Returns (bytes, requests, in sync at the digest, completed).
    pub fn exchange(&mut self, a: usize, b: usize) -> (usize, usize, bool, bool) {
        let (mut session, mut request) = SyncSession::start(&self.nodes[a], self.config);
        let (mut bytes, mut requests, mut spent) = (0, 0, 0u64);
        loop {
            requests += 1;
            bytes += request.encoded_len();
            let Some(d) = self.deliver(a, b) else {
                return (bytes, requests, false, false);
            };
            spent += d;
            let Ok(responded) = respond(&self.nodes[b], request, &self.config, self.now_ms) else {
                return (bytes, requests, false, false);
            };
            let response = responded.response;
            bytes += response.encoded_len();
            let Some(d) = self.deliver(b, a) else {
                return (bytes, requests, false, false);
            };
            spent += d;
            if self.net.deadline_ms > 0 && spent > self.net.deadline_ms {
                return (bytes, requests, false, false);
            }
            let in_sync = matches!(response, aegis_mesh::SyncResponse::InSync);
            match session.on_response(&self.nodes[a], response, self.now_ms) {
                Ok(Step::Send(next)) => request = next,
                Ok(Step::Done(_)) => return (bytes, requests, in_sync, true),
                Err(_) => return (bytes, requests, false, false),
            }
        }
    }

    /// One probe from `a` to `b`: a ping and its answer.
    fn probe(&mut self, a: usize, b: usize) -> bool {
        self.deliver(a, b).is_some() && self.deliver(b, a).is_some()
    }

    /// A direct probe with liveness on: the ping carries `a`'s piggyback,
    /// the ack `b`'s. Returns (acked, bytes).
    fn probe_with_piggyback(
        &mut self,
        liveness: &mut [Liveness],
        a: usize,
        b: usize,
    ) -> (bool, usize) {
        let to = NodeId::new(id(b)).expect("valid id");
        let outgoing = liveness[a].piggyback(&self.nodes[a], &to);
        let mut bytes = PING_BYTES + outgoing.encoded_len();
        if self.deliver(a, b).is_none() {
            return (false, bytes);
        }
        let _ = liveness[b].on_piggyback(&self.nodes[b], outgoing, &self.config, self.now_ms);
        let from = NodeId::new(id(a)).expect("valid id");
        let back = liveness[b].piggyback(&self.nodes[b], &from);
        bytes += PING_BYTES + back.encoded_len();
        if self.deliver(b, a).is_none() {
            return (false, bytes);
        }
        let _ = liveness[a].on_piggyback(&self.nodes[a], back, &self.config, self.now_ms);
        (true, bytes)
    }

    /// One period of node `a` with liveness on: its clock, its probes (each
    /// failed one checked through helpers), the answers reported. Returns
    /// the members that answered it directly.
    fn probe_round(
        &mut self,
        liveness: &mut [Liveness],
        a: usize,
        stats: &mut RoundStats,
    ) -> Vec<NodeId> {
        for t in liveness[a].tick(&self.nodes[a], self.now_ms) {
            self.transitions.push((a, t));
        }
        let probes = liveness[a].probes(&self.nodes[a], self.now_ms, &mut self.rng);
        let mut answered = Vec::new();
        for id in &probes {
            let Some(b) = self.index_of(id) else { continue };
            stats.probes += 1;
            let (direct, bytes) = self.probe_with_piggyback(liveness, a, b);
            stats.probe_bytes += bytes;
            // A failed probe is checked through helpers first (a request to
            // the helper, its probe, its answer, an ack or not), while the
            // direct probe is tried once more.
            let probe = if direct {
                Probe::Answered
            } else {
                let helpers: Vec<usize> = liveness[a]
                    .helpers(id, &mut self.rng)
                    .iter()
                    .filter_map(|h| self.index_of(h))
                    .collect();
                // The direct probe is tried once more alongside them.
                stats.probes += 1;
                stats.probe_bytes += 2 * PING_BYTES;
                let (mut replied, mut acked) = (0, self.probe(a, b));
                for &h in &helpers {
                    stats.probes += 1;
                    stats.probe_bytes += 4 * PING_BYTES;
                    let reached = self.deliver(a, h).is_some();
                    let ack = reached && self.probe(h, b);
                    if reached && self.deliver(h, a).is_some() {
                        replied += 1;
                        acked |= ack;
                    }
                }
                Probe::after_checks(acked, helpers.len(), replied)
            };
            if let Some(t) = liveness[a].on_probe(&self.nodes[a], id, probe, self.now_ms) {
                self.transitions.push((a, t));
            }
            if direct {
                answered.push(id.clone());
            }
        }
        // News goes to a few more members while there is any.
        for target in liveness[a].gossip_targets(&mut self.rng) {
            let Some(b) = self.index_of(&target) else {
                continue;
            };
            let (_, bytes) = self.probe_with_piggyback(liveness, a, b);
            stats.gossip += 1;
            stats.probe_bytes += bytes;
        }
        answered
    }

    /// Every node that is not stalled acts once: probes (with liveness on),
    /// then syncs with `fanout` nodes.
    pub fn round(&mut self) -> RoundStats {
        let mut stats = RoundStats::default();
        let n = self.nodes.len();
        for a in 0..n {
            if self.net.stalled.contains(&a) {
                continue;
            }
            let targets: Vec<usize> = if let Some(mut liveness) = self.liveness.take() {
                let answered = self.probe_round(&mut liveness, a, &mut stats);
                let chosen = liveness[a].sync_targets(
                    &self.nodes[a],
                    &[],
                    &answered,
                    self.fanout,
                    &mut self.rng,
                );
                self.liveness = Some(liveness);
                chosen.iter().filter_map(|id| self.index_of(id)).collect()
            } else {
                let known = self.nodes[a].get_all_nodes();
                (0..self.fanout)
                    .filter_map(|_| {
                        let pick = &known[self.rng.below(known.len())].id;
                        self.index_of(pick)
                    })
                    .filter(|&b| b != a)
                    .collect()
            };
            for b in targets {
                let (bytes, requests, equal, done) = self.exchange(a, b);
                stats.exchanges += 1;
                stats.bytes += bytes;
                stats.requests += requests;
                stats.equal += usize::from(equal);
                stats.cut += usize::from(!done);
            }
        }
        if let Some(liveness) = &self.liveness {
            for (a, l) in liveness.iter().enumerate() {
                if !self.net.stalled.contains(&a) {
                    l.housekeeping(&self.nodes[a], sim_clock());
                }
            }
        }
        self.now_ms += self.interval_ms;
        NOW_MS.with(|t| t.set(self.now_ms));
        stats
    }

    /// Whether every node that is not stalled holds the same entries.
    pub fn converged(&self) -> bool {
        let live: Vec<&Topology> = (0..self.nodes.len())
            .filter(|i| !self.net.stalled.contains(i))
            .map(|i| &self.nodes[i])
            .collect();
        let d = live[0].digest();
        live.iter().all(|t| t.digest() == d)
    }

    /// Rounds until [`Sim::converged`], at most `limit`.
    pub fn rounds_to_converge(&mut self, limit: usize) -> Option<usize> {
        (1..=limit).find(|_| {
            self.round();
            self.converged()
        })
    }

    /// A leave as the facade does it: the tombstone, pushed in one request
    /// to up to `k` random members.
    pub fn leave(&mut self, a: usize, k: usize) {
        self.nodes[a]
            .remove_node(&id(a))
            .expect("the node is in its own topology");
        let Some(SyncRequest::Delta { push, want }) = aegis_mesh::leave_request(&self.nodes[a])
        else {
            return;
        };
        let mut members: Vec<usize> = self.nodes[a]
            .get_all_nodes()
            .iter()
            .filter_map(|n| self.index_of(&n.id))
            .filter(|&b| b != a)
            .collect();
        let k = self.rng.choose(&mut members, k);
        for &b in &members[..k] {
            if self.deliver(a, b).is_some() {
                let request = SyncRequest::Delta {
                    push: push.clone(),
                    want: want.clone(),
                };
                let _ = respond(&self.nodes[b], request, &self.config, self.now_ms);
            }
        }
        self.net.stalled.insert(a);
    }
}

/// A fault the failure detector must not take for a death.
#[derive(Debug, Clone)]
pub enum Fault {
    /// Every message is lost with this chance.
    Loss(f64),
    /// Nothing from the first node reaches the second (one way).
    OneWay(usize, usize),
    /// The node stalls (neither acts nor answers) for `for_ms` every
    /// `every_ms`.
    Stalls {
        node: usize,
        every_ms: u64,
        for_ms: u64,
    },
}

/// What a run under a fault showed.
#[derive(Debug, Clone, Default)]
pub struct FaultReport {
    /// Suspicions any node raised about a node that was never down.
    pub suspicions: usize,
    /// Deaths any node declared of a node that was never down, described.
    pub deaths: Vec<String>,
    /// Traffic over the run: probe and sync bytes, probes.
    pub probe_bytes: usize,
    pub sync_bytes: usize,
    pub probes: usize,
    pub rounds: usize,
}

impl Sim {
    /// Suspect (or, with `deaths_only`, dead) marks any node made about a
    /// node not in `down`, described.
    pub fn false_accusations(&self, down: &[usize], deaths_only: bool) -> Vec<String> {
        self.transitions
            .iter()
            .filter_map(|(observer, t)| match t {
                aegis_mesh::Transition::Dead { id, .. }
                | aegis_mesh::Transition::Silent { id, .. } => Some((observer, id, t)),
                aegis_mesh::Transition::Suspect { id, .. } if !deaths_only => {
                    Some((observer, id, t))
                }
                _ => None,
            })
            .filter_map(|(observer, id, t)| {
                let target = self.index_of(id)?;
                (!down.contains(&target)).then(|| format!("{observer} accused {id}: {t:?}"))
            })
            .collect()
    }

    /// Runs `duration_ms` of simulated time under `fault` (then lifts it),
    /// counting false suspicions and deaths from now on.
    pub fn run_fault(&mut self, fault: &Fault, duration_ms: u64) -> FaultReport {
        self.transitions.clear();
        let start = self.now_ms;
        let mut report = FaultReport::default();
        match fault {
            Fault::Loss(p) => self.net.loss = *p,
            Fault::OneWay(a, b) => {
                self.net.blocked.insert((*a, *b));
            }
            Fault::Stalls { .. } => {}
        }
        while self.now_ms < start + duration_ms {
            if let Fault::Stalls {
                node,
                every_ms,
                for_ms,
            } = fault
            {
                if (self.now_ms - start) % every_ms < *for_ms {
                    self.net.stalled.insert(*node);
                } else {
                    self.net.stalled.remove(node);
                }
            }
            let s = self.round();
            report.rounds += 1;
            report.probe_bytes += s.probe_bytes;
            report.sync_bytes += s.bytes;
            report.probes += s.probes;
        }
        match fault {
            Fault::Loss(_) => self.net.loss = 0.0,
            Fault::OneWay(a, b) => {
                self.net.blocked.remove(&(*a, *b));
            }
            Fault::Stalls { node, .. } => {
                self.net.stalled.remove(node);
            }
        }
        report.suspicions = self.false_accusations(&[], false).len();
        report.deaths = self.false_accusations(&[], true);
        report
    }

    /// Crashes `victim` (it neither acts nor answers, for good) and runs
    /// until every other node holds it dead; returns the simulated
    /// milliseconds that took, or `None` after `limit_ms`.
    pub fn crash(&mut self, victim: usize, limit_ms: u64) -> Option<u64> {
        self.net.stalled.insert(victim);
        let start = self.now_ms;
        let victim_id = id(victim);
        while self.now_ms < start + limit_ms {
            self.round();
            let everywhere = (0..self.nodes.len())
                .filter(|&i| i != victim && !self.net.stalled.contains(&i))
                .all(|i| {
                    self.nodes[i].state_of(&victim_id) == Some(aegis_topology::NodeState::Dead)
                });
            if everywhere {
                return Some(self.now_ms - start);
            }
        }
        None
    }

    /// One converged round's traffic per node per second: (messages, bytes),
    /// probes and syncs together (protobuf payload sizes).
    pub fn steady_traffic(&mut self) -> (f64, f64) {
        let s = self.round();
        let n = self.nodes.len() as f64;
        let per_second = 1000.0 / self.interval_ms as f64;
        // A probe is two messages (an indirect one four); a sync request
        // and its answer two.
        let messages = (2 * s.probes + 2 * s.gossip + 2 * s.requests) as f64;
        (
            messages / n * per_second,
            (s.bytes + s.probe_bytes) as f64 / n * per_second,
        )
    }
}
