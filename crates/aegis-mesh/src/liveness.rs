//! Liveness decisions, after SWIM with Lifeguard's refinements: whom to
//! probe, what a failed probe means, when a suspect becomes dead, what to
//! piggyback on probes, when the departed are purged. The driver pings and
//! reports; this decides.
//!
//! - **One probe per protocol period** (by default), to members in a
//!   shuffled round-robin order, so probe traffic per node does not grow
//!   with the mesh and every member is probed within a bounded number of
//!   periods.
//! - **Indirect probes**: a failed direct probe is retried through
//!   [`LivenessConfig::indirect_checks`] helpers before it counts.
//! - **Suspicion, not instant death**: a failed probe round makes the member
//!   *suspect*; the suspicion travels on probes and acks; the member refutes
//!   as soon as it hears of it. A suspect becomes dead only when its
//!   suspicion timeout runs out. The timeout starts at
//!   `suspicion_max_mult × min` and shrinks towards
//!   `min = suspicion_mult × max(1, log10 N) × period` as independent
//!   members confirm the suspicion (Lifeguard's dynamic suspicion).
//! - **Local health** (Lifeguard): a node whose probes go unanswered by
//!   everyone, that has to refute suspicions about itself, or that misses
//!   its own periods (a stall) raises a health score that stretches its
//!   probe timeouts and periods ([`Liveness::scale`]), so that a slow
//!   observer does not accuse healthy members.
//! - **Dissemination**: every change this node sees in its topology is
//!   piggybacked on its next probes and acks, and sent to
//!   [`LivenessConfig::gossip_fanout`] random members a period while there
//!   is news, each change `retransmit_mult × ceil(log10(N + 1))` times;
//!   a member held suspect is told so on every exchange with it (the
//!   buddy system). Digest anti-entropy is the backstop.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, SystemTime};

use aegis_topology::{ApplyReport, NodeId, NodeState, Stamp, Topology};

use crate::message::{Piggyback, Suspicion};
use crate::sync::{SyncConfig, check_stamps};
use crate::{Rng, SyncError};

/// How liveness is judged. Every default is below, and in the field docs.
///
/// ```
/// use std::time::Duration;
/// use aegis_mesh::LivenessConfig;
///
/// let c = LivenessConfig::default();
/// assert_eq!((c.period, c.max_probes, c.indirect_checks), (Duration::from_millis(300), 1, 3));
/// assert_eq!((c.suspect_after, c.suspicion_mult, c.suspicion_max_mult), (1, 4, 6));
/// assert_eq!((c.max_health, c.retransmit_mult, c.max_piggyback), (8, 4, 8));
/// assert_eq!(c.gossip_fanout, 3);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LivenessConfig {
    /// The protocol period: the time between two probe rounds, and the unit
    /// of suspicion timeouts. Default: 300 ms.
    pub period: Duration,
    /// Members probed per period, taken from a shuffled round-robin order of
    /// those due (so each is probed within a bounded number of periods).
    /// Default: 1 (SWIM).
    pub max_probes: usize,
    /// Failed probe rounds in a row (at one stamp, each after its indirect
    /// checks) before this node suspects a member. Default: 1.
    pub suspect_after: u32,
    /// The shortest suspicion timeout, in periods, times `max(1, log10 N)`.
    /// Default: 4.
    pub suspicion_mult: u32,
    /// The longest suspicion timeout (with no confirmation), as a multiple
    /// of the shortest. Default: 6.
    pub suspicion_max_mult: u32,
    /// The highest local health score; probe timeouts and periods are
    /// stretched by `score + 1`. Default: 8.
    pub max_health: u32,
    /// Each change is piggybacked `retransmit_mult × ceil(log10(N + 1))`
    /// times. Default: 4.
    pub retransmit_mult: u32,
    /// Changes, and suspicions, piggybacked per probe or ack at most (each).
    /// Default: 8.
    pub max_piggyback: usize,
    /// Members sent the news each period besides the probe, while there is
    /// news (nothing is sent for it in steady state). Default: 3.
    pub gossip_fanout: usize,
    /// Members asked to probe a member whose direct probe failed, before a
    /// miss is counted (0: count it at once). One bad link between this
    /// node and a member then does not count against the member.
    /// Default: 3.
    pub indirect_checks: usize,
    /// First wait before probing a dead member again; it doubles on every
    /// miss up to [`LivenessConfig::max_dead_backoff`]. Default: 1 s.
    pub dead_backoff: Duration,
    /// Longest wait between probes of a dead member. Default: 60 s.
    pub max_dead_backoff: Duration,
    /// How long a dead member is kept (and probed with back-off) before it
    /// is purged. It can come back only with a newer entry. Default: 5 min.
    pub dead_retention: Duration,
    /// How long the tombstone of a member that left is kept. Default: 10 min.
    pub tombstone_retention: Duration,
    /// How long a purged member is remembered, so that an old copy of it
    /// held by a partitioned node cannot bring it back. Default: 24 h.
    pub forget_after: Duration,
    /// Members that serve nothing (client-only nodes: their entry says
    /// port 0) cannot be probed. Instead each raises its own stamp every
    /// half of this lease, and a member whose stamp has not risen here for
    /// a whole lease is marked dead ([`Transition::Silent`]); it comes
    /// back with its next renewal. Renewals travel by anti-entropy, not as
    /// news, and still cost: each makes the next syncs differ (in
    /// simulation, N = 300 with 30 client-only nodes: about 1.3 KB/s per
    /// node instead of 0.4). Zero turns both off. Default: 60 s.
    pub client_lease: Duration,
}

impl Default for LivenessConfig {
    fn default() -> Self {
        Self {
            period: Duration::from_millis(300),
            max_probes: 1,
            suspect_after: 1,
            suspicion_mult: 4,
            suspicion_max_mult: 6,
            max_health: 8,
            retransmit_mult: 4,
            max_piggyback: 8,
            gossip_fanout: 3,
            indirect_checks: 3,
            dead_backoff: Duration::from_secs(1),
            max_dead_backoff: Duration::from_secs(60),
            dead_retention: Duration::from_secs(300),
            tombstone_retention: Duration::from_secs(600),
            forget_after: Duration::from_secs(24 * 3600),
            client_lease: Duration::from_secs(60),
        }
    }
}

/// What one probe round found out about a member.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    /// The member answered, directly or through a helper.
    Answered,
    /// No answer. `asked` helpers were asked to probe it and `replied` of
    /// them answered this node (without the member's ack): helpers that
    /// answer show that this node's own links work, so the miss is the
    /// member's; helpers that stay silent count against this node's health.
    Missed {
        /// Helpers asked.
        asked: usize,
        /// Helpers that answered.
        replied: usize,
    },
}

impl Probe {
    /// The outcome of a probe whose direct attempt failed and was checked
    /// through `asked` helpers, `replied` of which answered: answered if
    /// any attempt got the member's ack.
    pub fn after_checks(acked: bool, asked: usize, replied: usize) -> Self {
        if acked {
            Probe::Answered
        } else {
            Probe::Missed { asked, replied }
        }
    }
}

/// A change of a member's liveness as this node judged it: reported once
/// per change, never per probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transition {
    /// This node's probes of the member failed: it suspects it (and marked
    /// it suspect in the topology, unless another member had already).
    Suspect {
        /// The member.
        id: NodeId,
        /// Probe rounds missed in a row.
        missed: u32,
    },
    /// The member's suspicion timed out here: marked dead in the topology.
    Dead {
        /// The member.
        id: NodeId,
        /// Independent members that confirmed the suspicion.
        confirmations: usize,
        /// How long it was suspect here, in milliseconds.
        suspect_ms: u64,
    },
    /// A member this node had suspected or found dead answered again; it
    /// refutes by raising its stamp once it hears of the mark.
    Answering {
        /// The member.
        id: NodeId,
    },
    /// A member that serves nothing (it cannot be probed) did not renew
    /// its entry for a whole [`LivenessConfig::client_lease`]: marked dead
    /// in the topology.
    Silent {
        /// The member.
        id: NodeId,
        /// How long its stamp had not risen here, in milliseconds.
        silent_ms: u64,
    },
}

#[derive(Debug, Clone, Default)]
struct Track {
    /// The stamp the misses were counted at: a new stamp (the member
    /// refuted, or restarted) starts the count again.
    stamp: Stamp,
    misses: u32,
    /// When a dead member is due for its next probe, and the wait after it.
    next_probe_ms: u64,
    backoff_ms: u64,
    /// The last state this node reported for the member.
    reported: Option<NodeState>,
    /// Whether the member ever answered this node.
    answered_once: bool,
    /// A stamp at which the member answered this node while suspect: this
    /// node runs no suspicion timer of its own for it at that stamp.
    cleared_at: Option<Stamp>,
}

/// A running suspicion timer.
#[derive(Debug, Clone)]
struct Timer {
    stamp: Stamp,
    started_ms: u64,
    /// The timer does not fire before this (pushed on after a stall, so
    /// that news held up meanwhile can arrive first).
    not_before_ms: u64,
    /// Distinct members known to suspect the member, the first one first.
    suspectors: Vec<NodeId>,
}

/// A change waiting to be piggybacked, and how often it went out.
#[derive(Debug, Clone)]
struct Queued<T> {
    item: T,
    sends: u32,
}

/// The liveness state of one node: probe orders, miss counts, suspicion
/// timers, the local health score and the piggyback queues.
#[derive(Debug)]
pub struct Liveness {
    config: LivenessConfig,
    local: NodeId,
    tracks: HashMap<NodeId, Track>,
    timers: HashMap<NodeId, Timer>,
    /// The probe order of members that have not answered, and of those
    /// that have: each a shuffled cycle, taken from the front.
    orders: [VecDeque<NodeId>; 2],
    /// Where a side was last found empty (see `next_probe`).
    empty_sides: [Option<(Option<u64>, u64, u64)>; 2],
    /// Members that ever answered this node (a count, for that check).
    answered: u64,
    /// The topology as last seen: its version, each entry's stamp and state.
    seen_version: Option<u64>,
    seen: HashMap<NodeId, (Stamp, NodeState)>,
    /// The IDs of `seen`, sorted (for random choices that do not depend on
    /// hash order).
    members: Vec<NodeId>,
    /// Members that serve nothing (a client-only node advertises port 0;
    /// this node too, when it serves nothing): never probed, never asked
    /// for help, never sent news. Each with the time its stamp last rose
    /// here: the lease it renews.
    unreachable: HashMap<NodeId, u64>,
    /// Renewals of this node's own entry (when it serves nothing).
    renewals: u64,
    /// Members by state (`[alive, suspect, dead, left]`), kept with `seen`.
    by_state: [usize; 4],
    news: Vec<Queued<NodeId>>,
    notes: Vec<Queued<Suspicion>>,
    health: u32,
    last_tick_ms: Option<u64>,
    refutations: u64,
}

/// The time of what is seen before the first tick (which has no clock of
/// its own): the first tick sets it to its own time, and until then
/// nothing counted from it runs out.
const UNTIMED: u64 = u64::MAX;

/// Changes (and suspicions) waiting to be piggybacked, at most; the ones
/// sent most often go first when there are more.
const MAX_QUEUED: usize = 256;

/// Piggybacked changes or suspicions accepted in one message at most.
pub const MAX_PIGGYBACK: usize = 64;

fn state_index(s: NodeState) -> usize {
    match s {
        NodeState::Alive => 0,
        NodeState::Suspect => 1,
        NodeState::Dead => 2,
        NodeState::Left => 3,
    }
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Puts `item` in `queue` to be sent afresh (once only), dropping the most
/// sent ones beyond [`MAX_QUEUED`].
fn enqueue<T: PartialEq>(queue: &mut Vec<Queued<T>>, item: T) {
    if let Some(q) = queue.iter_mut().find(|q| q.item == item) {
        q.sends = 0;
        return;
    }
    queue.push(Queued { item, sends: 0 });
    if queue.len() > MAX_QUEUED {
        queue.sort_by_key(|q| q.sends);
        queue.truncate(MAX_QUEUED);
    }
}

/// Takes up to `max` items from `queue`, least sent first, and counts the
/// sending; items sent `limit` times leave the queue.
fn take<T: Clone>(queue: &mut Vec<Queued<T>>, max: usize, limit: u32) -> Vec<T> {
    // A stable sort: among equals, the older change goes first.
    queue.sort_by_key(|q| q.sends);
    let out: Vec<T> = queue
        .iter_mut()
        .take(max)
        .map(|q| {
            q.sends += 1;
            q.item.clone()
        })
        .collect();
    queue.retain(|q| q.sends < limit);
    out
}

impl Liveness {
    /// Liveness for the node `local` (never probed, never marked).
    pub fn new(local: NodeId, config: LivenessConfig) -> Self {
        Self {
            config,
            local,
            tracks: HashMap::new(),
            timers: HashMap::new(),
            orders: [VecDeque::new(), VecDeque::new()],
            empty_sides: [None, None],
            answered: 0,
            seen_version: None,
            seen: HashMap::new(),
            members: Vec::new(),
            unreachable: HashMap::new(),
            renewals: 0,
            by_state: [0; 4],
            news: Vec::new(),
            notes: Vec::new(),
            health: 0,
            last_tick_ms: None,
            refutations: 0,
        }
    }

    /// The configuration in force.
    pub fn config(&self) -> &LivenessConfig {
        &self.config
    }

    /// The local health score, from 0 (healthy) to
    /// [`LivenessConfig::max_health`].
    pub fn health(&self) -> u32 {
        self.health
    }

    /// `base` stretched by the local health score (`base × (score + 1)`):
    /// what the driver waits for a probe, and between periods.
    pub fn scale(&self, base: Duration) -> Duration {
        base.saturating_mul(self.health + 1)
    }

    fn raise_health(&mut self, by: usize) {
        let by = u32::try_from(by).unwrap_or(u32::MAX);
        self.health = self.health.saturating_add(by).min(self.config.max_health);
    }

    /// This node had to refute a suspicion or death about itself: a sign
    /// that it is slow or badly connected, so it becomes more patient.
    pub fn on_refuted(&mut self) {
        self.refutations += 1;
        self.raise_health(1);
    }

    /// How many claims about this node it has refuted.
    pub fn refutations(&self) -> u64 {
        self.refutations
    }

    /// How often this node renewed its own entry because it serves nothing
    /// ([`LivenessConfig::client_lease`]).
    pub fn renewals(&self) -> u64 {
        self.renewals
    }

    /// Members that are neither dead nor gone, this node included (as of
    /// the last look at the topology; at least 1).
    pub fn live_members(&self) -> usize {
        self.live().max(1)
    }

    fn live(&self) -> usize {
        self.by_state[state_index(NodeState::Alive)]
            + self.by_state[state_index(NodeState::Suspect)]
    }

    /// Members by state as of the last look at the topology, this node
    /// included: `[alive, suspect, dead, left]`.
    pub fn members_by_state(&self) -> [usize; 4] {
        self.by_state
    }

    /// Suspicion timers running here.
    pub fn suspicions(&self) -> usize {
        self.timers.len()
    }

    /// The suspicion timeout with `confirmations` independent confirmations:
    /// from `suspicion_max_mult × min` down to `min`, on a logarithmic curve
    /// reaching `min` after `suspicion_mult - 2` confirmations.
    pub fn suspicion_timeout(&self, confirmations: usize) -> Duration {
        let live = self.live();
        let n = live.max(1) as f64;
        let min = f64::from(self.config.suspicion_mult)
            * n.log10().max(1.0)
            * self.config.period.as_secs_f64();
        let max = f64::from(self.config.suspicion_max_mult.max(1)) * min;
        // Confirmations to expect: none in a mesh too small to give them.
        let mut k = self.config.suspicion_mult.saturating_sub(2) as usize;
        if live.saturating_sub(2) < k {
            k = 0;
        }
        let secs = if k == 0 {
            min
        } else {
            let c = confirmations.min(k) as f64;
            let fraction = (c + 1.0).ln() / (k as f64 + 1.0).ln();
            (max - (max - min) * fraction).max(min)
        };
        Duration::try_from_secs_f64(secs).unwrap_or(Duration::MAX)
    }

    fn deadline(&self, timer: &Timer) -> u64 {
        let confirmations = timer.suspectors.len().saturating_sub(1);
        timer
            .started_ms
            .saturating_add(ms(self.suspicion_timeout(confirmations)))
            .max(timer.not_before_ms)
    }

    /// Reads the topology again if it changed since the last look: queues
    /// every changed entry for piggybacking, starts a timer for every
    /// suspect without one, drops the timers of members that refuted.
    /// Costs the changes, not the mesh size, while the topology remembers
    /// them ([`Topology::changed_since`]).
    fn refresh(&mut self, topology: &Topology, now_ms: u64) {
        let version = topology.version();
        if self.seen_version == Some(version) {
            return;
        }
        let changed = self.seen_version.and_then(|v| topology.changed_since(v));
        let first = self.seen_version.is_none();
        self.seen_version = Some(version);
        match changed {
            Some(ids) => {
                for id in ids {
                    match topology.get_entry(id.as_str()) {
                        Some(e) => self.observe(&e, first, now_ms),
                        None => self.forget(&id),
                    }
                }
            }
            None => {
                let entries = topology.entries();
                let present: std::collections::HashSet<&NodeId> =
                    entries.iter().map(|e| e.id()).collect();
                let gone: Vec<NodeId> = self
                    .seen
                    .keys()
                    .filter(|id| !present.contains(id))
                    .cloned()
                    .collect();
                for id in gone {
                    self.forget(&id);
                }
                for e in &entries {
                    self.observe(e, first, now_ms);
                }
            }
        }
    }

    /// Takes one entry as the topology holds it now.
    fn observe(&mut self, e: &aegis_topology::Entry, first: bool, now_ms: u64) {
        let id = e.id();
        let now = (e.stamp, e.state);
        let before = self.seen.insert(id.clone(), now);
        if before == Some(now) {
            return;
        }
        if before.is_none()
            && let Err(at) = self.members.binary_search(id)
        {
            self.members.insert(at, id.clone());
        }
        if e.info.address.ends_with(":0") {
            // A new stamp (a renewal, a refutation, a restart) renews the
            // lease; so does the first sight of the member.
            let renewed = self.unreachable.entry(id.clone()).or_insert(now_ms);
            if before.is_some_and(|(stamp, _)| stamp != e.stamp) {
                *renewed = now_ms;
            }
        } else {
            self.unreachable.remove(id);
        }
        if let Some((_, was)) = before {
            self.by_state[state_index(was)] -= 1;
        }
        self.by_state[state_index(e.state)] += 1;
        // At the first look only this node's own entry is news (it
        // announces itself); later, every change is, but for the renewals
        // of members that serve nothing: a new stamp in the same state
        // travels by anti-entropy alone (as news, each renewal would be
        // piggybacked by every node: with a tenth of the mesh client-only,
        // ten times the steady traffic).
        let renewal =
            self.unreachable.contains_key(id) && before.is_some_and(|(_, s)| s == e.state);
        if (!first && !renewal) || *id == self.local {
            enqueue(&mut self.news, id.clone());
        }
        if self
            .timers
            .get(id)
            .is_some_and(|t| t.stamp != e.stamp || e.state != NodeState::Suspect)
        {
            self.timers.remove(id);
        }
        if e.state == NodeState::Suspect
            && *id != self.local
            && !self.timers.contains_key(id)
            && self.tracks.get(id).and_then(|t| t.cleared_at) != Some(e.stamp)
        {
            self.timers.insert(
                id.clone(),
                Timer {
                    stamp: e.stamp,
                    started_ms: now_ms,
                    not_before_ms: 0,
                    suspectors: Vec::new(),
                },
            );
        }
        if e.state == NodeState::Left {
            self.tracks.remove(id);
        }
    }

    /// Forgets a member the topology no longer holds (purged).
    fn forget(&mut self, id: &NodeId) {
        if let Ok(at) = self.members.binary_search(id) {
            self.members.remove(at);
        }
        self.unreachable.remove(id);
        if let Some((_, was)) = self.seen.remove(id) {
            self.by_state[state_index(was)] -= 1;
        }
        self.timers.remove(id);
        self.tracks.remove(id);
    }

    /// Runs the clock: fires the suspicion timers that ran out (marking those
    /// members dead in the topology), marks dead the members that serve
    /// nothing and did not renew their lease, renews this node's own entry
    /// when it serves nothing, and notices a stall of this node (a tick
    /// more than two periods after the last one), which lowers its health,
    /// gives every running timer at least one more period and every lease
    /// at least half a lease more. Call once per period, before
    /// [`Liveness::probes`].
    pub fn tick(&mut self, topology: &Topology, now_ms: u64) -> Vec<Transition> {
        self.refresh(topology, now_ms);
        if self.last_tick_ms.is_none() {
            for t in self.timers.values_mut() {
                if t.started_ms == UNTIMED {
                    t.started_ms = now_ms;
                }
            }
            for t in self.unreachable.values_mut() {
                if *t == UNTIMED {
                    *t = now_ms;
                }
            }
        }
        let period = ms(self.config.period);
        if let Some(last) = self.last_tick_ms
            && now_ms.saturating_sub(last) > 2 * ms(self.scale(self.config.period))
        {
            self.raise_health(1);
            let resume = now_ms.saturating_add(period);
            for t in self.timers.values_mut() {
                t.not_before_ms = t.not_before_ms.max(resume);
            }
            // Renewals held up meanwhile get time to arrive.
            let floor = now_ms.saturating_sub(ms(self.config.client_lease) / 2);
            for t in self.unreachable.values_mut() {
                *t = (*t).max(floor);
            }
        }
        self.last_tick_ms = Some(now_ms);
        let mut expired: Vec<NodeId> = self
            .timers
            .iter()
            .filter(|(_, t)| now_ms >= self.deadline(t))
            .map(|(id, _)| id.clone())
            .collect();
        expired.sort();
        let mut out = Vec::new();
        for id in expired {
            let Some(timer) = self.timers.remove(&id) else {
                continue;
            };
            if !topology.mark(id.as_str(), NodeState::Dead).unwrap_or(false) {
                continue;
            }
            let track = self.tracks.entry(id.clone()).or_default();
            track.stamp = timer.stamp;
            track.backoff_ms = ms(self.config.dead_backoff);
            track.next_probe_ms = now_ms.saturating_add(track.backoff_ms);
            track.reported = Some(NodeState::Dead);
            out.push(Transition::Dead {
                id,
                confirmations: timer.suspectors.len().saturating_sub(1),
                suspect_ms: now_ms.saturating_sub(timer.started_ms),
            });
        }
        out.extend(self.expire_leases(topology, now_ms));
        self.renew_own(topology, now_ms);
        self.refresh(topology, now_ms);
        out
    }

    /// Marks dead the members that serve nothing and whose stamp has not
    /// risen here for a whole lease.
    fn expire_leases(&mut self, topology: &Topology, now_ms: u64) -> Vec<Transition> {
        let lease = ms(self.config.client_lease);
        if lease == 0 {
            return Vec::new();
        }
        let mut silent: Vec<(NodeId, u64)> = self
            .unreachable
            .iter()
            .filter(|(id, since)| **id != self.local && now_ms.saturating_sub(**since) >= lease)
            .filter(|(id, _)| {
                self.seen
                    .get(*id)
                    .is_some_and(|(_, s)| matches!(s, NodeState::Alive | NodeState::Suspect))
            })
            .map(|(id, since)| (id.clone(), *since))
            .collect();
        silent.sort();
        let mut out = Vec::new();
        for (id, since) in silent {
            if topology.mark(id.as_str(), NodeState::Dead).unwrap_or(false) {
                out.push(Transition::Silent {
                    id,
                    silent_ms: now_ms.saturating_sub(since),
                });
            }
        }
        out
    }

    /// Raises this node's own stamp every half of a lease while it serves
    /// nothing, so that others, which cannot probe it, know it is there.
    fn renew_own(&mut self, topology: &Topology, now_ms: u64) {
        let every = ms(self.config.client_lease) / 2;
        let Some(&last) = self.unreachable.get(&self.local) else {
            return;
        };
        if every == 0 || now_ms.saturating_sub(last) < every {
            return;
        }
        let Some(me) = topology.get_node(self.local.as_str()) else {
            return;
        };
        let mut info = (*me).clone();
        info.updated_at = 0;
        if topology.update_node(info).is_ok() {
            self.renewals += 1;
            self.unreachable.insert(self.local.clone(), now_ms);
        }
    }

    /// Whom to probe this period: members that have not left, at most
    /// [`LivenessConfig::max_probes`] of them, dead members only when their
    /// back-off is over.
    ///
    /// Each probe goes, with even odds, to a member that has answered this
    /// node before or to one that has not (to either when the other side
    /// has none due): so a flood of entries that never answer (a member
    /// can push thousands) cannot crowd out the probes that find a real
    /// member dead, and new members are still probed. Within each side,
    /// members come in a shuffled round-robin order. Constant work per
    /// probe, amortised: a side's order is rebuilt once per cycle.
    pub fn probes(&mut self, topology: &Topology, now_ms: u64, rng: &mut Rng) -> Vec<NodeId> {
        self.refresh(topology, now_ms);
        let max = self.config.max_probes.max(1);
        let mut chosen: Vec<NodeId> = Vec::with_capacity(max);
        for _ in 0..max {
            let known = rng.next_u64() & 1 == 0;
            let next = match self.next_probe(known, now_ms, rng, &chosen) {
                Some(id) => Some(id),
                None => self.next_probe(!known, now_ms, rng, &chosen),
            };
            match next {
                Some(id) => chosen.push(id),
                None => break,
            }
        }
        chosen
    }

    fn is_due(&self, id: &NodeId, now_ms: u64) -> bool {
        *id != self.local
            && !self.unreachable.contains_key(id)
            && self.seen.get(id).is_some_and(|(_, state)| match state {
                NodeState::Left => false,
                NodeState::Dead => self
                    .tracks
                    .get(id)
                    .is_none_or(|t| t.next_probe_ms <= now_ms),
                _ => true,
            })
    }

    fn is_known(&self, id: &NodeId) -> bool {
        self.tracks.get(id).is_some_and(|t| t.answered_once)
    }

    /// The next member due from one side's round-robin order (answered
    /// before, or not), rebuilding the order when it is used up.
    fn next_probe(
        &mut self,
        known: bool,
        now_ms: u64,
        rng: &mut Rng,
        taken: &[NodeId],
    ) -> Option<NodeId> {
        let side = usize::from(known);
        for refill in [false, true] {
            if refill {
                // A side found empty stays empty until the topology, the
                // answered set or the second changes: no rebuild per probe.
                let key = (self.seen_version, self.answered, now_ms / 1000);
                if self.empty_sides[side] == Some(key) {
                    return None;
                }
                let mut cycle: Vec<NodeId> = self
                    .members
                    .iter()
                    .filter(|id| self.is_due(id, now_ms) && self.is_known(id) == known)
                    .cloned()
                    .collect();
                if cycle.is_empty() {
                    self.empty_sides[side] = Some(key);
                    return None;
                }
                let n = cycle.len();
                rng.choose(&mut cycle, n);
                self.orders[side] = cycle.into();
            }
            while let Some(id) = self.orders[side].pop_front() {
                if self.is_due(&id, now_ms) && self.is_known(&id) == known && !taken.contains(&id) {
                    return Some(id);
                }
            }
        }
        None
    }

    /// Whom to ask to probe `target` for this node after its own probe
    /// failed: up to [`LivenessConfig::indirect_checks`] alive members at
    /// random (never the target or this node, nor a member whose own last
    /// probe failed). Report the outcome with [`Liveness::on_probe`].
    pub fn helpers(&self, target: &NodeId, rng: &mut Rng) -> Vec<NodeId> {
        self.sample(self.config.indirect_checks, rng, |id, state| {
            state == NodeState::Alive
                && id != target
                && self.tracks.get(id).is_none_or(|t| t.misses == 0)
        })
    }

    /// Up to `k` distinct members (never this node) that pass `keep`, at
    /// random: by random draws from the sorted member list while they find
    /// enough (constant work in a large mesh), by a full pass otherwise.
    fn sample(
        &self,
        k: usize,
        rng: &mut Rng,
        keep: impl Fn(&NodeId, NodeState) -> bool,
    ) -> Vec<NodeId> {
        let ok = |id: &NodeId| {
            *id != self.local
                && !self.unreachable.contains_key(id)
                && self.seen.get(id).is_some_and(|(_, s)| keep(id, *s))
        };
        let n = self.members.len();
        let mut out: Vec<NodeId> = Vec::with_capacity(k);
        if k == 0 || n == 0 {
            return out;
        }
        if n > 8 * k {
            for _ in 0..4 * k {
                let id = &self.members[rng.below(n)];
                if ok(id) && !out.contains(id) {
                    out.push(id.clone());
                    if out.len() == k {
                        return out;
                    }
                }
            }
        }
        let mut candidates: Vec<NodeId> = self
            .members
            .iter()
            .filter(|id| ok(id) && !out.contains(id))
            .cloned()
            .collect();
        let take = rng.choose(&mut candidates, k - out.len());
        out.extend(candidates.into_iter().take(take));
        out
    }

    /// Takes the outcome of a probe round of `id`; suspects the member when
    /// [`LivenessConfig::suspect_after`] rounds in a row failed (marking it
    /// in the topology and queueing the suspicion for piggybacking);
    /// adjusts the local health. Returns a transition the first time one
    /// happens.
    pub fn on_probe(
        &mut self,
        topology: &Topology,
        id: &NodeId,
        probe: Probe,
        now_ms: u64,
    ) -> Option<Transition> {
        let entry = topology.get_entry(id.as_str())?;
        if entry.state == NodeState::Left || *id == self.local {
            return None;
        }
        match probe {
            Probe::Answered => self.health = self.health.saturating_sub(1),
            Probe::Missed { asked: 0, .. } => self.raise_health(1),
            Probe::Missed { asked, replied } => self.raise_health(asked.saturating_sub(replied)),
        }
        let track = self.tracks.entry(id.clone()).or_default();
        if track.stamp != entry.stamp {
            // A new stamp is a new life (or a refutation): count afresh.
            track.stamp = entry.stamp;
            track.misses = 0;
            track.backoff_ms = 0;
            track.cleared_at = None;
            if entry.state == NodeState::Alive {
                track.reported = None;
            }
        }
        if probe == Probe::Answered {
            if !track.answered_once {
                self.answered += 1;
            }
            track.answered_once = true;
            track.misses = 0;
            track.backoff_ms = 0;
            track.next_probe_ms = 0;
            if entry.state == NodeState::Suspect {
                // It answers: this node will not be the one to declare it
                // dead. The mark stays until the member refutes it.
                track.cleared_at = Some(entry.stamp);
                self.timers.remove(id);
            }
            return match track.reported.take() {
                Some(NodeState::Suspect | NodeState::Dead) => {
                    Some(Transition::Answering { id: id.clone() })
                }
                _ => None,
            };
        }
        track.misses = track.misses.saturating_add(1);
        if entry.state == NodeState::Dead {
            track.backoff_ms = if track.backoff_ms == 0 {
                ms(self.config.dead_backoff)
            } else {
                track
                    .backoff_ms
                    .saturating_mul(2)
                    .min(ms(self.config.max_dead_backoff))
            };
            track.next_probe_ms = now_ms.saturating_add(track.backoff_ms);
            track.reported = Some(NodeState::Dead);
            return None;
        }
        if track.misses < self.config.suspect_after {
            return None;
        }
        track.cleared_at = None;
        let first_report = track.reported != Some(NodeState::Suspect);
        track.reported = Some(NodeState::Suspect);
        let missed = track.misses;
        let _ = topology.mark(id.as_str(), NodeState::Suspect);
        let note = Suspicion {
            target: id.clone(),
            stamp: entry.stamp,
            from: self.local.clone(),
        };
        self.confirm(&note, now_ms);
        first_report.then(|| Transition::Suspect {
            id: id.clone(),
            missed,
        })
    }

    /// Counts `note.from` as a suspector of the member (starting a timer if
    /// none runs); a suspector new here is passed on. Returns whether it
    /// was new.
    fn confirm(&mut self, note: &Suspicion, now_ms: u64) -> bool {
        let timer = self
            .timers
            .entry(note.target.clone())
            .or_insert_with(|| Timer {
                stamp: note.stamp,
                started_ms: now_ms,
                not_before_ms: 0,
                suspectors: Vec::new(),
            });
        if timer.stamp != note.stamp {
            *timer = Timer {
                stamp: note.stamp,
                started_ms: now_ms,
                not_before_ms: 0,
                suspectors: Vec::new(),
            };
        }
        // Past this many suspectors the timeout is at its shortest: more
        // are neither kept nor passed on.
        let enough = self.config.suspicion_mult.saturating_sub(1).max(1) as usize;
        if timer.suspectors.len() > enough || timer.suspectors.contains(&note.from) {
            return false;
        }
        timer.suspectors.push(note.from.clone());
        enqueue(&mut self.notes, note.clone());
        true
    }

    /// Takes a suspicion heard from another member: if this node holds the
    /// member suspect at the same stamp, the suspector counts as a
    /// confirmation (and is passed on). Notes about this node itself are
    /// left to the piggybacked entry, whose merge refutes them.
    pub fn on_suspicion(&mut self, topology: &Topology, note: &Suspicion, now_ms: u64) -> bool {
        if note.target == self.local {
            return false;
        }
        let Some(entry) = topology.get_entry(note.target.as_str()) else {
            return false;
        };
        if entry.stamp != note.stamp || entry.state != NodeState::Suspect {
            return false;
        }
        if self
            .tracks
            .get(&note.target)
            .is_some_and(|t| t.cleared_at == Some(note.stamp))
        {
            return false;
        }
        self.confirm(note, now_ms)
    }

    /// What to piggyback on the next probe or ack sent to `to`: the
    /// least-sent queued changes (as the topology holds them now) and
    /// suspicions, up to [`LivenessConfig::max_piggyback`] each. The entry of
    /// every member a suspicion names goes along, so a receiver can act on
    /// it; and when `to` itself is suspect or dead here, its own entry goes
    /// first, whatever was sent before, so that it refutes at the first
    /// exchange with anyone who holds the claim (Lifeguard's buddy system).
    pub fn piggyback(&mut self, topology: &Topology, to: &NodeId) -> Piggyback {
        self.refresh(topology, self.last_tick_ms.unwrap_or(UNTIMED));
        let limit = self.retransmit_limit();
        let max = self.config.max_piggyback.min(MAX_PIGGYBACK);
        let suspicions = take(&mut self.notes, max, limit);
        let mut ids = Vec::with_capacity(max + 1);
        if self
            .seen
            .get(to)
            .is_some_and(|(_, s)| matches!(s, NodeState::Suspect | NodeState::Dead))
        {
            ids.push(to.clone());
        }
        for id in take(&mut self.news, max, limit) {
            if !ids.contains(&id) {
                ids.push(id);
            }
        }
        for s in &suspicions {
            if !ids.contains(&s.target) {
                ids.push(s.target.clone());
            }
        }
        ids.truncate(MAX_PIGGYBACK);
        Piggyback {
            updates: topology.entries_for(&ids),
            suspicions,
        }
    }

    /// Whether changes or suspicions wait to be piggybacked.
    pub fn has_news(&self) -> bool {
        !(self.news.is_empty() && self.notes.is_empty())
    }

    /// Members to send news to this period besides the probe, when there is
    /// news: up to [`LivenessConfig::gossip_fanout`] alive members at
    /// random (none in steady state, so quiet meshes stay quiet).
    pub fn gossip_targets(&self, rng: &mut Rng) -> Vec<NodeId> {
        if !self.has_news() {
            return Vec::new();
        }
        self.sample(self.config.gossip_fanout, rng, |_, state| {
            state == NodeState::Alive
        })
    }

    /// How often each change is piggybacked: `retransmit_mult ×
    /// ceil(log10(N + 1))`.
    pub fn retransmit_limit(&self) -> u32 {
        let scale = ((self.live() + 1) as f64).log10().ceil().max(1.0);
        (f64::from(self.config.retransmit_mult.max(1)) * scale) as u32
    }

    /// Takes what a probe or ack carried: its changes are checked whole
    /// (count, stamps, fields) and merged, then its suspicions counted.
    /// A merge that refuted a claim about this node lowers its health.
    ///
    /// # Errors
    /// [`SyncError::InvalidRequest`] for more than [`MAX_PIGGYBACK`] of
    /// either, [`SyncError::StampTooHigh`] or a topology error naming the
    /// entry: then nothing of it is applied.
    pub fn on_piggyback(
        &mut self,
        topology: &Topology,
        piggyback: Piggyback,
        config: &SyncConfig,
        now_ms: u64,
    ) -> Result<ApplyReport, SyncError> {
        for (field, count) in [
            ("updates", piggyback.updates.len()),
            ("suspicions", piggyback.suspicions.len()),
        ] {
            if count > MAX_PIGGYBACK {
                return Err(SyncError::InvalidRequest {
                    field,
                    reason: format!("{count} items, more than {MAX_PIGGYBACK}"),
                });
            }
        }
        check_stamps(&piggyback.updates, config, now_ms)?;
        let report = if piggyback.updates.is_empty() {
            ApplyReport::default()
        } else {
            topology.apply(piggyback.updates)?
        };
        if report.refuted {
            self.on_refuted();
        }
        if !piggyback.suspicions.is_empty() {
            self.refresh(topology, now_ms);
            for note in &piggyback.suspicions {
                self.on_suspicion(topology, note, now_ms);
            }
        }
        Ok(report)
    }

    /// Up to `fanout` nodes to sync with: first seeds (nodes the caller was
    /// told of that are not members yet: syncing is how they become so),
    /// then members that answered this round although marked suspect or
    /// dead here (so they learn of it and refute), the rest at random among
    /// those that answered.
    pub fn sync_targets(
        &self,
        topology: &Topology,
        seeds: &[NodeId],
        answered: &[NodeId],
        fanout: usize,
        rng: &mut Rng,
    ) -> Vec<NodeId> {
        let mut first: Vec<NodeId> = seeds
            .iter()
            .filter(|id| **id != self.local && topology.get_entry(id.as_str()).is_none())
            .cloned()
            .collect();
        let k = rng.choose(&mut first, fanout);
        first.truncate(k);
        let (marked, mut rest): (Vec<NodeId>, Vec<NodeId>) =
            answered.iter().cloned().partition(|id| {
                topology
                    .state_of(id.as_str())
                    .is_some_and(|s| matches!(s, NodeState::Suspect | NodeState::Dead))
            });
        first.extend(marked);
        first.truncate(fanout);
        let k = rng.choose(&mut rest, fanout - first.len());
        first.extend(rest.into_iter().take(k));
        first
    }

    /// Purges tombstones and dead members past their retention, and forgets
    /// purged members past theirs. Returns (left purged, dead purged).
    pub fn housekeeping(&self, topology: &Topology, now: SystemTime) -> (usize, usize) {
        let before = |d: Duration| now.checked_sub(d);
        let left =
            before(self.config.tombstone_retention).map_or(0, |c| topology.purge_tombstones(c));
        let dead = before(self.config.dead_retention).map_or(0, |c| topology.purge_dead(c));
        if let Some(c) = before(self.config.forget_after) {
            topology.forget_before(c);
        }
        (left, dead)
    }
}
