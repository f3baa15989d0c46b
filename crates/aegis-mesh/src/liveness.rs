//! Liveness decisions: whom to probe, what a missed probe means, when the
//! departed are purged. The driver pings and reports; this decides.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, SystemTime};

use aegis_topology::{NodeId, NodeState, Stamp, Topology};

use crate::Rng;

/// How liveness is judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LivenessConfig {
    /// Members probed per round at most, taken from a shuffled round-robin
    /// order of those due (so each is probed within a bounded number of
    /// rounds).
    pub max_probes: usize,
    /// Missed probes in a row (at one stamp) before a member is marked suspect.
    pub suspect_after: u32,
    /// Missed probes in a row (at one stamp) before a member is marked dead.
    pub dead_after: u32,
    /// First wait before probing a dead member again; it doubles on every
    /// miss up to [`LivenessConfig::max_dead_backoff`].
    pub dead_backoff: Duration,
    /// Longest wait between probes of a dead member.
    pub max_dead_backoff: Duration,
    /// How long a dead member is kept (and probed with back-off) before it
    /// is purged. It can come back only with a newer entry.
    pub dead_retention: Duration,
    /// How long the tombstone of a member that left is kept.
    pub tombstone_retention: Duration,
    /// How long a purged member is remembered, so that an old copy of it
    /// held by a partitioned node cannot bring it back.
    pub forget_after: Duration,
    /// Members asked to probe a member whose direct probe failed, before a
    /// miss is counted (0: count it at once). One bad link between this
    /// node and a member, or this node being slow, then does not count
    /// against the member.
    pub indirect_checks: usize,
}

impl Default for LivenessConfig {
    fn default() -> Self {
        Self {
            max_probes: 32,
            suspect_after: 2,
            dead_after: 4,
            dead_backoff: Duration::from_secs(1),
            max_dead_backoff: Duration::from_secs(60),
            dead_retention: Duration::from_secs(300),
            tombstone_retention: Duration::from_secs(600),
            forget_after: Duration::from_secs(24 * 3600),
            indirect_checks: 3,
        }
    }
}

/// A change of a member's liveness as this node judged it: reported once
/// per change, never per probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transition {
    /// The member missed enough probes to be suspect (marked in the topology).
    Suspect {
        /// The member.
        id: NodeId,
        /// Probes missed in a row.
        missed: u32,
    },
    /// The member missed enough probes to be dead (marked in the topology).
    Dead {
        /// The member.
        id: NodeId,
        /// Probes missed in a row.
        missed: u32,
    },
    /// A member this node had marked suspect or dead answered again; it
    /// refutes by raising its stamp once it hears of the mark.
    Answering {
        /// The member.
        id: NodeId,
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
}

/// The liveness state of one node: a miss count per member, and the
/// back-off of dead members.
#[derive(Debug)]
pub struct Liveness {
    config: LivenessConfig,
    local: NodeId,
    tracks: HashMap<NodeId, Track>,
    /// The probe order of members that have answered, and of those that
    /// have not: each a shuffled cycle, taken from the front.
    known_order: VecDeque<NodeId>,
    unknown_order: VecDeque<NodeId>,
}

/// The next member of a round-robin `order` that is in `due` and not taken
/// yet; when the cycle is used up, a new one is shuffled from `due`.
fn next_in_order(
    order: &mut VecDeque<NodeId>,
    due: &[NodeId],
    due_set: &HashSet<&NodeId>,
    taken: &HashSet<NodeId>,
    rng: &mut Rng,
) -> Option<NodeId> {
    for refill in [false, true] {
        if refill {
            let mut cycle: Vec<NodeId> = due.to_vec();
            let n = cycle.len();
            rng.choose(&mut cycle, n);
            *order = cycle.into();
        }
        while let Some(id) = order.pop_front() {
            if due_set.contains(&id) && !taken.contains(&id) {
                return Some(id);
            }
        }
    }
    None
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl Liveness {
    /// Liveness for the node `local` (never probed, never marked).
    pub fn new(local: NodeId, config: LivenessConfig) -> Self {
        Self {
            config,
            local,
            tracks: HashMap::new(),
            known_order: VecDeque::new(),
            unknown_order: VecDeque::new(),
        }
    }

    /// The configuration in force.
    pub fn config(&self) -> &LivenessConfig {
        &self.config
    }

    /// Whom to probe this round: members that have not left, at most
    /// [`LivenessConfig::max_probes`] of them at random, dead members only
    /// when their back-off is over.
    ///
    /// Each probe goes, with even odds, to a member that has answered this
    /// node before or to one that has not (to either when the other side
    /// has none left): so a flood of entries that never answer (a member
    /// can push thousands) cannot crowd out the probes that find a real
    /// member dead, and new members are still probed.
    pub fn probes(&mut self, topology: &Topology, now_ms: u64, rng: &mut Rng) -> Vec<NodeId> {
        let entries = topology.entries();
        let present: HashSet<&NodeId> = entries
            .iter()
            .filter(|e| e.state != NodeState::Left)
            .map(|e| e.id())
            .collect();
        self.tracks.retain(|id, _| present.contains(id));
        let (known, unknown): (Vec<NodeId>, Vec<NodeId>) = entries
            .iter()
            .filter(|e| e.state != NodeState::Left && *e.id() != self.local)
            .filter(|e| {
                e.state != NodeState::Dead
                    || self
                        .tracks
                        .get(e.id())
                        .is_none_or(|t| t.next_probe_ms <= now_ms)
            })
            .map(|e| e.id().clone())
            .partition(|id| self.tracks.get(id).is_some_and(|t| t.answered_once));
        // Each probe goes to either side with even odds while both have
        // members left (so neither starves, even at one probe a round);
        // within a side, members come in a shuffled round-robin order, so
        // each is probed within a bounded number of rounds.
        let max = self.config.max_probes.max(1);
        let (mut from_known, mut from_unknown) = (0, 0);
        for _ in 0..max {
            let known_left = from_known < known.len();
            let unknown_left = from_unknown < unknown.len();
            match (known_left, unknown_left) {
                (true, true) if rng.next_u64() & 1 == 0 => from_known += 1,
                (true, true) | (false, true) => from_unknown += 1,
                (true, false) => from_known += 1,
                (false, false) => break,
            }
        }
        let mut taken = HashSet::new();
        let mut chosen = Vec::with_capacity(from_known + from_unknown);
        for (n, order, due) in [
            (from_known, &mut self.known_order, &known),
            (from_unknown, &mut self.unknown_order, &unknown),
        ] {
            let due_set: HashSet<&NodeId> = due.iter().collect();
            for _ in 0..n {
                match next_in_order(order, due, &due_set, &taken, rng) {
                    Some(id) => {
                        taken.insert(id.clone());
                        chosen.push(id);
                    }
                    None => break,
                }
            }
        }
        chosen
    }

    /// Whom to ask to probe `target` for this node after its own probe
    /// failed: up to [`LivenessConfig::indirect_checks`] available members
    /// that have answered this node before, at random (never the target or
    /// this node). Report the outcome with [`Liveness::on_probe`]: answered
    /// if any helper got an answer.
    pub fn helpers(&self, topology: &Topology, target: &NodeId, rng: &mut Rng) -> Vec<NodeId> {
        let mut candidates: Vec<NodeId> = self
            .tracks
            .iter()
            .filter(|(id, t)| {
                t.answered_once && t.misses == 0 && *id != target && **id != self.local
            })
            .filter(|(id, _)| {
                topology
                    .state_of(id.as_str())
                    .is_some_and(|s| s == NodeState::Alive)
            })
            .map(|(id, _)| id.clone())
            .collect();
        // Hash-map order is not part of the input: sort, so that a seeded
        // run chooses the same helpers every time.
        candidates.sort();
        let k = rng.choose(&mut candidates, self.config.indirect_checks);
        candidates.truncate(k);
        candidates
    }

    /// Takes the outcome of a probe; marks the topology when a threshold is
    /// crossed; returns a transition the first time one happens.
    pub fn on_probe(
        &mut self,
        topology: &Topology,
        id: &NodeId,
        answered: bool,
        now_ms: u64,
    ) -> Option<Transition> {
        let entry = topology.get_entry(id.as_str())?;
        if entry.state == NodeState::Left || *id == self.local {
            return None;
        }
        let track = self.tracks.entry(id.clone()).or_default();
        if track.stamp != entry.stamp {
            // A new stamp is a new life (or a refutation): count afresh.
            track.stamp = entry.stamp;
            track.misses = 0;
            track.backoff_ms = 0;
            if entry.state == NodeState::Alive {
                track.reported = None;
            }
        }
        if answered {
            track.answered_once = true;
            track.misses = 0;
            track.backoff_ms = 0;
            track.next_probe_ms = 0;
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
        let state = if track.misses >= self.config.dead_after {
            NodeState::Dead
        } else if track.misses >= self.config.suspect_after {
            NodeState::Suspect
        } else {
            return None;
        };
        if state == NodeState::Dead {
            track.backoff_ms = ms(self.config.dead_backoff);
            track.next_probe_ms = now_ms.saturating_add(track.backoff_ms);
        }
        let changed = topology.mark(id.as_str(), state).unwrap_or(false);
        if !changed || track.reported == Some(state) {
            return None;
        }
        track.reported = Some(state);
        let missed = track.misses;
        Some(match state {
            NodeState::Dead => Transition::Dead {
                id: id.clone(),
                missed,
            },
            _ => Transition::Suspect {
                id: id.clone(),
                missed,
            },
        })
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
