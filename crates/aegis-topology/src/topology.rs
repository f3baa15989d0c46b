//! The shared, versioned topology handle and its service indexes.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ops::Deref;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use aegis_id::NodeId;

use crate::digest::{
    BUCKETS, Digest, EntryDigest, Precedence, bucket_of, content_hash, digest_term,
};
use crate::types::{Entry, NodeInfo, NodeState, Stamp};
use crate::{HealthStatus, TopologyError};

/// Bounds on what a remote peer may make this topology hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Longest name, address, type, service name or service version, in bytes.
    pub max_field_bytes: usize,
    /// Most services one node may list.
    pub max_services: usize,
    /// Most entries one delta may carry.
    pub max_delta_entries: usize,
    /// Most entries the topology holds, tombstones included. A write that
    /// would hold more is refused whole with
    /// [`TopologyError::TooManyMembers`], so that no member can make every
    /// node keep (and probe) an unbounded list.
    pub max_members: usize,
}

impl Limits {
    /// Checks one node against these limits (what [`Topology::add_node`]
    /// and [`Topology::apply`] check), so that a caller can refuse a node
    /// before doing anything else with it.
    ///
    /// # Errors
    /// [`TopologyError::FieldTooLong`] or [`TopologyError::TooManyServices`]
    /// naming the node and the field.
    pub fn check(&self, info: &NodeInfo) -> Result<(), TopologyError> {
        validate(info, self)
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_field_bytes: 1024,
            max_services: 256,
            max_delta_entries: 65_536,
            max_members: 16_384,
        }
    }
}

/// How a [`Topology`] is set up.
#[derive(Debug, Clone, Default)]
pub struct TopologyConfig {
    /// The ID of the node that owns this topology. Its entry can only be
    /// changed locally: a remote entry for it with a higher stamp makes the
    /// topology raise its own stamp above that one instead.
    pub local_id: Option<NodeId>,
    /// The generation of the stamps this topology writes (for example the
    /// process start time), so that a restarted node's entries win over
    /// those of its previous life.
    pub generation: u64,
    /// Bounds on remote input.
    pub limits: Limits,
    /// Where the topology reads the time (timestamps of new entries, when
    /// a node was learnt to be gone, when it was purged): the system clock
    /// when `None`. Simulations set their own, so that purges happen at
    /// simulated times.
    pub clock: Option<fn() -> SystemTime>,
}

/// An immutable, shared list of nodes in ID order; cloning it is one atomic
/// increment.
#[derive(Clone)]
pub struct Providers(Arc<[Arc<NodeInfo>]>);

impl Providers {
    fn from_members<'a>(members: impl Iterator<Item = &'a Arc<NodeInfo>>) -> Self {
        Self(members.cloned().collect())
    }
}

impl Deref for Providers {
    type Target = [Arc<NodeInfo>];
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::fmt::Debug for Providers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|n| &n.id))
            .finish()
    }
}

/// What an [`Topology::apply`] changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApplyReport {
    /// Nodes whose entry changed, in ID order.
    pub changed: Vec<NodeId>,
    /// Entries that were older than or equal to what was held.
    pub ignored: usize,
    /// A remote entry claimed this node's own ID with a newer stamp; the
    /// topology raised its own stamp above it and kept its own content.
    pub refuted: bool,
}

/// What two topologies must exchange, from one side's view.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Comparison {
    /// Entries the other side lacks or holds older.
    pub send: Vec<Entry>,
    /// Nodes for which the other side holds a newer entry, or one this side lacks.
    pub want: Vec<NodeId>,
}

/// One node's entry as held.
#[derive(Clone)]
struct Slot {
    info: Arc<NodeInfo>,
    stamp: Stamp,
    state: NodeState,
    content: u64,
    /// When this topology learnt that the node left or died (for purging).
    gone_at: Option<SystemTime>,
}

impl Slot {
    fn new(info: Arc<NodeInfo>, stamp: Stamp, state: NodeState, now: SystemTime) -> Self {
        let content = content_hash(&info);
        let gone_at = matches!(state, NodeState::Left | NodeState::Dead).then_some(now);
        Self {
            info,
            stamp,
            state,
            content,
            gone_at,
        }
    }

    fn precedence(&self) -> Precedence {
        Precedence {
            stamp: self.stamp,
            state: self.state,
            content: self.content,
        }
    }

    fn term(&self) -> u128 {
        digest_term(&self.info.id, self.precedence())
    }

    fn entry(&self) -> Entry {
        Entry {
            info: Arc::clone(&self.info),
            stamp: self.stamp,
            state: self.state,
        }
    }

    fn digest(&self) -> EntryDigest {
        EntryDigest {
            id: self.info.id.clone(),
            stamp: self.stamp,
            state: self.state,
            content: self.content,
        }
    }
}

/// Published provider lists of one service name.
#[derive(Clone)]
struct Published {
    any_version: Providers,
    by_version: HashMap<String, Listed>,
}

/// The providers of one (name, version).
#[derive(Clone)]
struct Listed {
    /// Alive or suspect.
    available: Providers,
    /// Alive and not reporting unhealthy, or `available` when there are none.
    preferred: Providers,
}

type Members = BTreeMap<NodeId, Arc<NodeInfo>>;

struct State {
    entries: BTreeMap<NodeId, Slot>,
    /// service name → version → available nodes offering it.
    members: HashMap<String, HashMap<String, Members>>,
    /// The snapshots readers get; rebuilt for the names a write touched.
    published: HashMap<String, Published>,
    digest: Digest,
    /// The same digest, split by [`bucket_of`] the node ID.
    buckets: Vec<Digest>,
    version: u64,
    live: usize,
    /// Entries marked dead (so a purge with none to look at costs nothing).
    dead: usize,
    /// Entries purged from `entries` (left or dead long enough), kept so
    /// that an older copy of them held elsewhere cannot bring the node back,
    /// and so that such a copy can be answered with the newer one.
    forgotten: HashMap<NodeId, Forgotten>,
    /// The IDs changed by the last writes, with the version each made:
    /// every change after `log_floor` is here (see [`Topology::changed_since`]).
    log: std::collections::VecDeque<(u64, NodeId)>,
    log_floor: u64,
}

/// Changes remembered for [`Topology::changed_since`].
const LOG_LEN: usize = 4096;

/// A purged entry and when it was purged.
#[derive(Clone)]
struct Forgotten {
    slot: Slot,
    at: SystemTime,
}

impl Default for State {
    fn default() -> Self {
        Self {
            entries: BTreeMap::new(),
            members: HashMap::new(),
            published: HashMap::new(),
            digest: Digest::default(),
            buckets: vec![Digest::default(); BUCKETS],
            version: 0,
            live: 0,
            dead: 0,
            forgotten: HashMap::new(),
            log: std::collections::VecDeque::new(),
            log_floor: 0,
        }
    }
}

impl State {
    fn log_change(&mut self, id: NodeId) {
        self.log.push_back((self.version, id));
        while self.log.len() > LOG_LEN {
            if let Some((v, _)) = self.log.pop_front() {
                self.log_floor = v;
            }
        }
    }

    /// Puts `slot` in place of whatever was held for its ID, keeping the
    /// digest and the member sets right, and notes the service names touched.
    fn install(&mut self, slot: Slot, touched: &mut HashSet<String>) {
        let id = slot.info.id.clone();
        if let Some(old) = self.entries.get(&id) {
            let term = old.term();
            self.digest.remove(term);
            self.buckets[bucket_of(&id)].remove(term);
            if old.state != NodeState::Left {
                self.live -= 1;
            }
            if old.state == NodeState::Dead {
                self.dead -= 1;
            }
            if old.state.is_available() {
                for s in &old.info.services {
                    if let Some(versions) = self.members.get_mut(&s.name) {
                        if let Some(m) = versions.get_mut(&s.version) {
                            m.remove(&id);
                            if m.is_empty() {
                                versions.remove(&s.version);
                            }
                        }
                        if versions.is_empty() {
                            self.members.remove(&s.name);
                        }
                    }
                    touched.insert(s.name.clone());
                }
            }
        }
        let term = slot.term();
        self.digest.add(term);
        self.buckets[bucket_of(&id)].add(term);
        if slot.state != NodeState::Left {
            self.live += 1;
        }
        if slot.state == NodeState::Dead {
            self.dead += 1;
        }
        if slot.state.is_available() {
            for s in &slot.info.services {
                self.members
                    .entry(s.name.clone())
                    .or_default()
                    .entry(s.version.clone())
                    .or_default()
                    .insert(id.clone(), Arc::clone(&slot.info));
                touched.insert(s.name.clone());
            }
        }
        self.entries.insert(id.clone(), slot);
        self.version += 1;
        self.log_change(id);
    }

    fn snapshot(&self, name: &str) -> Option<Published> {
        let versions = self.members.get(name)?;
        let mut any: Members = BTreeMap::new();
        let by_version = versions
            .iter()
            .map(|(v, m)| {
                any.extend(m.iter().map(|(k, n)| (k.clone(), Arc::clone(n))));
                let available = Providers::from_members(m.values());
                let alive = m
                    .iter()
                    .filter(|(id, n)| {
                        n.health != HealthStatus::Unhealthy
                            && self
                                .entries
                                .get(*id)
                                .is_some_and(|s| s.state == NodeState::Alive)
                    })
                    .map(|(_, n)| n);
                let alive = Providers::from_members(alive);
                let preferred = if alive.is_empty() || alive.len() == available.len() {
                    available.clone()
                } else {
                    alive
                };
                (
                    v.clone(),
                    Listed {
                        available,
                        preferred,
                    },
                )
            })
            .collect();
        Some(Published {
            any_version: Providers::from_members(any.values()),
            by_version,
        })
    }
}

struct Shared {
    /// Serialises writers, so that a write can prepare its work under a read
    /// lock and hold the write lock only to install it.
    writer: Mutex<()>,
    state: RwLock<State>,
    /// `State::version`, readable without the lock (the pool checks it on
    /// every call).
    version: std::sync::atomic::AtomicU64,
    empty: Providers,
    config: TopologyConfig,
    /// Called after every change (see [`Topology::on_change`]).
    listeners: RwLock<Vec<Listener>>,
}

type Listener = Arc<dyn Fn(u64) + Send + Sync>;

/// The mesh's shared view: who is in it, where, offering what.
///
/// A cheap-to-clone handle (`Send + Sync`); every method takes `&self`.
/// Readers never wait for a write's preparation (validation, hashing,
/// rebuilding provider lists): writers hold the exclusive lock only to swap
/// prepared data in. Provider lookups read an index and clone an `Arc`;
/// they never scan the mesh and never allocate.
///
/// ```
/// use aegis_topology::{NodeInfo, ServiceInfo, Topology};
///
/// let topology = Topology::new();
/// topology.add_node(
///     NodeInfo::new("identity-1", "identity", "127.0.0.1:7001")?
///         .with_services([ServiceInfo::new("identity", "v1")]),
/// )?;
/// let providers = topology.get_service_providers("identity", "v1");
/// assert_eq!(providers[0].id.as_str(), "identity-1");
/// assert!(topology.get_service_providers("identity", "v2").is_empty());
/// # Ok::<(), aegis_topology::TopologyError>(())
/// ```
#[derive(Clone)]
pub struct Topology {
    shared: Arc<Shared>,
}

impl Default for Topology {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for Topology {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.read();
        f.debug_struct("Topology")
            .field("local_id", &self.shared.config.local_id)
            .field("nodes", &s.live)
            .field("version", &s.version)
            .finish_non_exhaustive()
    }
}

fn unix_secs(now: SystemTime) -> i64 {
    now.duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

impl Topology {
    /// An empty topology with default limits, generation 0 and no owner.
    pub fn new() -> Self {
        Self::with_config(TopologyConfig::default())
    }

    /// An empty topology set up as `config` says.
    pub fn with_config(config: TopologyConfig) -> Self {
        Self {
            shared: Arc::new(Shared {
                writer: Mutex::new(()),
                state: RwLock::new(State::default()),
                version: std::sync::atomic::AtomicU64::new(0),
                empty: Providers(Arc::from(Vec::new())),
                config,
                listeners: RwLock::new(Vec::new()),
            }),
        }
    }

    /// Calls `listener` with the new [`Topology::version`] after every
    /// change, once the change is visible to readers. It runs on the
    /// writer's thread while writes wait, so it must be quick and must not
    /// write to this topology: signal a task (a `Notify`, a `watch`) and do
    /// the work there. This is how membership events are driven without
    /// polling.
    pub fn on_change(&self, listener: impl Fn(u64) + Send + Sync + 'static) {
        self.shared
            .listeners
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Arc::new(listener));
    }

    fn changed(&self, version: u64) {
        let listeners = self
            .shared
            .listeners
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        for listener in listeners {
            listener(version);
        }
    }

    /// The time by the topology's clock ([`TopologyConfig::clock`]).
    pub fn now(&self) -> SystemTime {
        self.shared
            .config
            .clock
            .map_or_else(SystemTime::now, |clock| clock())
    }

    /// The owner's ID, if set.
    pub fn local_id(&self) -> Option<&NodeId> {
        self.shared.config.local_id.as_ref()
    }

    /// The limits on remote input.
    pub fn limits(&self) -> &Limits {
        &self.shared.config.limits
    }

    // A poisoned lock only means a panic elsewhere while holding it; every
    // write installs whole entries, so the data is still consistent.
    fn read(&self) -> RwLockReadGuard<'_, State> {
        self.shared
            .state
            .read()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, State> {
        self.shared
            .state
            .write()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn writer(&self) -> MutexGuard<'_, ()> {
        self.shared
            .writer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Installs prepared slots and republishes the provider lists they touch.
    /// The caller holds the writer lock.
    ///
    /// Order matters: the lists are republished *before* the new version is
    /// made visible, so a reader that sees a version sees lists at least as
    /// new as it (a pool stamps its routes with the version it read first).
    fn commit(&self, slots: Vec<Slot>) {
        if slots.is_empty() {
            return;
        }
        let mut touched = HashSet::new();
        {
            let mut state = self.write();
            for slot in slots {
                state.forgotten.remove(&slot.info.id);
                state.install(slot, &mut touched);
            }
        }
        let fresh: Vec<(String, Option<Published>)> = {
            let state = self.read();
            touched
                .into_iter()
                .map(|name| {
                    let snap = state.snapshot(&name);
                    (name, snap)
                })
                .collect()
        };
        let version = {
            let mut state = self.write();
            for (name, snap) in fresh {
                match snap {
                    Some(p) => {
                        state.published.insert(name, p);
                    }
                    None => {
                        state.published.remove(&name);
                    }
                }
            }
            self.shared
                .version
                .store(state.version, std::sync::atomic::Ordering::Release);
            state.version
        };
        self.changed(version);
    }

    fn check(&self, info: &NodeInfo) -> Result<(), TopologyError> {
        validate(info, &self.shared.config.limits)
    }

    /// Adds a node. Unset timestamps (0) are set to now.
    ///
    /// # Errors
    /// [`TopologyError::AlreadyExists`] if the ID has an entry that is not a
    /// tombstone (re-adding a removed node works); a limit error if a field
    /// is too long.
    pub fn add_node(&self, mut info: NodeInfo) -> Result<(), TopologyError> {
        self.check(&info)?;
        let now = unix_secs(self.now());
        if info.joined_at == 0 {
            info.joined_at = now;
        }
        if info.updated_at == 0 {
            info.updated_at = now;
        }
        let _w = self.writer();
        let first = Stamp::new(self.shared.config.generation, 1);
        let stamp = {
            let state = self.read();
            match state.entries.get(&info.id) {
                Some(old) if old.state != NodeState::Left => {
                    return Err(TopologyError::AlreadyExists(info.id));
                }
                Some(old) => first.max(old.stamp.next()),
                None => {
                    let max = self.shared.config.limits.max_members;
                    if state.entries.len() >= max {
                        return Err(TopologyError::TooManyMembers {
                            count: state.entries.len() + 1,
                            max,
                        });
                    }
                    match state.forgotten.get(&info.id) {
                        Some(f) => first.max(f.slot.stamp.next()),
                        None => first,
                    }
                }
            }
        };
        self.commit(vec![Slot::new(
            Arc::new(info),
            stamp,
            NodeState::Alive,
            self.now(),
        )]);
        Ok(())
    }

    /// Replaces a node's entry, keeping its `joined_at`; marks it alive.
    /// An unset `updated_at` (0) is set to now.
    ///
    /// # Errors
    /// [`TopologyError::NotFound`] if the node is absent or has left.
    pub fn update_node(&self, mut info: NodeInfo) -> Result<(), TopologyError> {
        self.check(&info)?;
        if info.updated_at == 0 {
            info.updated_at = unix_secs(self.now());
        }
        let _w = self.writer();
        let stamp = match self.read().entries.get(&info.id) {
            Some(old) if old.state != NodeState::Left => {
                info.joined_at = old.info.joined_at;
                old.stamp.next()
            }
            _ => return Err(TopologyError::NotFound(info.id)),
        };
        self.commit(vec![Slot::new(
            Arc::new(info),
            stamp,
            NodeState::Alive,
            self.now(),
        )]);
        Ok(())
    }

    /// Removes a node, leaving a tombstone that wins over the older live
    /// entries other topologies hold.
    ///
    /// # Errors
    /// [`TopologyError::NotFound`] if the node is absent or has left already.
    pub fn remove_node(&self, id: &str) -> Result<(), TopologyError> {
        let id = &*aegis_id::canonical(id);
        let _w = self.writer();
        let slot = match self.read().entries.get(id) {
            Some(old) if old.state != NodeState::Left => Slot::new(
                Arc::clone(&old.info),
                old.stamp.next(),
                NodeState::Left,
                self.now(),
            ),
            _ => return Err(TopologyError::NotFound(NodeId::new(id)?)),
        };
        self.commit(vec![slot]);
        Ok(())
    }

    /// Marks a node suspect or dead, as an observer: the stamp stays, so the
    /// node itself refutes by raising it. Returns whether anything changed
    /// (marking only ever moves towards dead).
    ///
    /// # Errors
    /// [`TopologyError::NotFound`] if the node is absent or has left.
    pub fn mark(&self, id: &str, state: NodeState) -> Result<bool, TopologyError> {
        let id = &*aegis_id::canonical(id);
        let _w = self.writer();
        let slot = match self.read().entries.get(id) {
            Some(old) if old.state != NodeState::Left => {
                if state <= old.state || state == NodeState::Left {
                    return Ok(false);
                }
                if self.local_id().is_some_and(|me| me.as_str() == id) {
                    return Ok(false);
                }
                Slot::new(Arc::clone(&old.info), old.stamp, state, self.now())
            }
            _ => return Err(TopologyError::NotFound(NodeId::new(id)?)),
        };
        self.commit(vec![slot]);
        Ok(true)
    }

    /// Merges remote entries: per node, the one with the higher precedence
    /// (stamp, then state, then content hash) stays. All entries are checked
    /// first; if any breaks a rule nothing is applied.
    ///
    /// # Errors
    /// [`TopologyError::DeltaTooLarge`], [`TopologyError::DuplicateEntry`] or
    /// a field limit error naming the node.
    pub fn apply(&self, entries: Vec<Entry>) -> Result<ApplyReport, TopologyError> {
        let limits = &self.shared.config.limits;
        if entries.len() > limits.max_delta_entries {
            return Err(TopologyError::DeltaTooLarge {
                count: entries.len(),
                max: limits.max_delta_entries,
            });
        }
        let mut seen = HashSet::with_capacity(entries.len());
        for e in &entries {
            validate(&e.info, limits)?;
            if !seen.insert(&e.info.id) {
                return Err(TopologyError::DuplicateEntry(e.info.id.clone()));
            }
        }
        drop(seen);
        let now = self.now();
        let incoming: Vec<Slot> = entries
            .into_iter()
            .map(|e| Slot::new(e.info, e.stamp, e.state, now))
            .collect();

        let _w = self.writer();
        let mut report = ApplyReport::default();
        let mut winners = Vec::new();
        {
            let state = self.read();
            let mut added = 0;
            for slot in incoming {
                let held = state.entries.get(&slot.info.id);
                if held.is_some_and(|h| h.precedence() >= slot.precedence()) {
                    report.ignored += 1;
                    continue;
                }
                if held.is_none() {
                    // A purged node comes back only with a newer entry (a
                    // restart or a refutation), never with a copy older than
                    // the tombstone or death that made it go.
                    if let Some(f) = state.forgotten.get(&slot.info.id)
                        && f.slot.precedence() >= slot.precedence()
                    {
                        report.ignored += 1;
                        continue;
                    }
                    added += 1;
                }
                let own = self.local_id().is_some_and(|me| *me == slot.info.id);
                match held {
                    Some(mine) if own => {
                        // Nobody else writes this node's entry: answer with a
                        // stamp above the claim, keeping our own content.
                        let stamp = mine.stamp.max(slot.stamp).next();
                        winners.push(Slot::new(
                            Arc::clone(&mine.info),
                            stamp,
                            NodeState::Alive,
                            self.now(),
                        ));
                        report.refuted = true;
                    }
                    _ => winners.push(slot),
                }
            }
            let max = limits.max_members;
            if added > 0 && state.entries.len() + added > max {
                return Err(TopologyError::TooManyMembers {
                    count: state.entries.len() + added,
                    max,
                });
            }
        }
        report.changed = winners.iter().map(|s| s.info.id.clone()).collect();
        report.changed.sort();
        self.commit(winners);
        Ok(report)
    }

    /// Drops tombstones learnt before `cutoff` (now minus the retention the
    /// caller chooses); returns how many went. A dropped tombstone is
    /// remembered (see [`Topology::forget_before`]), so that an older live
    /// copy of the node held elsewhere cannot bring it back.
    pub fn purge_tombstones(&self, cutoff: SystemTime) -> usize {
        self.purge(cutoff, NodeState::Left)
    }

    /// Drops entries marked dead before `cutoff`; returns how many went.
    /// Like tombstones, they are remembered: the node returns only with a
    /// newer entry (it refutes, or restarts with a new generation).
    pub fn purge_dead(&self, cutoff: SystemTime) -> usize {
        self.purge(cutoff, NodeState::Dead)
    }

    fn purge(&self, cutoff: SystemTime, which: NodeState) -> usize {
        let _w = self.writer();
        let mut state = self.write();
        let held = match which {
            NodeState::Left => state.entries.len() - state.live,
            _ => state.dead,
        };
        if held == 0 {
            return 0;
        }
        let old: Vec<NodeId> = state
            .entries
            .values()
            .filter(|s| s.state == which && s.gone_at.is_some_and(|t| t < cutoff))
            .map(|s| s.info.id.clone())
            .collect();
        let now = self.now();
        for id in &old {
            if let Some(slot) = state.entries.remove(id) {
                let term = slot.term();
                state.digest.remove(term);
                state.buckets[bucket_of(id)].remove(term);
                if slot.state != NodeState::Left {
                    // Dead entries are not available: no provider list
                    // holds them, so only the counts change.
                    state.live -= 1;
                    state.dead -= 1;
                }
                state
                    .forgotten
                    .insert(id.clone(), Forgotten { slot, at: now });
            }
        }
        let max = self.shared.config.limits.max_members;
        if state.forgotten.len() > max {
            // Bounded like the entries: the oldest memories go first.
            let mut by_age: Vec<(SystemTime, NodeId)> = state
                .forgotten
                .iter()
                .map(|(id, f)| (f.at, id.clone()))
                .collect();
            by_age.sort();
            let excess = state.forgotten.len() - max;
            for (_, id) in by_age.into_iter().take(excess) {
                state.forgotten.remove(&id);
            }
        }
        if old.is_empty() {
            return 0;
        }
        state.version += 1;
        for id in &old {
            state.log_change(id.clone());
        }
        let version = state.version;
        self.shared
            .version
            .store(version, std::sync::atomic::Ordering::Release);
        drop(state);
        self.changed(version);
        old.len()
    }

    /// Forgets purged entries purged before `cutoff`, for good; returns how
    /// many went. Keep this retention far above the time a partitioned
    /// node may stay away with an old copy.
    pub fn forget_before(&self, cutoff: SystemTime) -> usize {
        let _w = self.writer();
        let mut state = self.write();
        let before = state.forgotten.len();
        state.forgotten.retain(|_, f| f.at >= cutoff);
        before - state.forgotten.len()
    }

    /// The remembered purged entries that supersede some of `entries`: what
    /// to answer a peer that pushes an old copy of a purged node (that node
    /// itself, if it was only cut off, then refutes).
    pub fn superseding_forgotten(&self, entries: &[Entry]) -> Vec<Entry> {
        let state = self.read();
        entries
            .iter()
            .filter_map(|e| {
                let f = state.forgotten.get(e.id())?;
                let theirs = Precedence {
                    stamp: e.stamp,
                    state: e.state,
                    content: content_hash(&e.info),
                };
                (f.slot.precedence() > theirs).then(|| f.slot.entry())
            })
            .collect()
    }

    /// Whether `id` was purged (and is remembered as such).
    pub fn is_forgotten(&self, id: &str) -> bool {
        let id = &*aegis_id::canonical(id);
        self.read().forgotten.contains_key(id)
    }

    /// How many purged entries are remembered.
    pub fn forgotten_count(&self) -> usize {
        self.read().forgotten.len()
    }

    /// A node by ID, unless it has left.
    pub fn get_node(&self, id: &str) -> Option<Arc<NodeInfo>> {
        let id = &*aegis_id::canonical(id);
        self.read()
            .entries
            .get(id)
            .filter(|s| s.state != NodeState::Left)
            .map(|s| Arc::clone(&s.info))
    }

    /// A node's entry with its stamp and state, tombstones included.
    pub fn get_entry(&self, id: &str) -> Option<Entry> {
        let id = &*aegis_id::canonical(id);
        self.read().entries.get(id).map(Slot::entry)
    }

    /// A node's state, if the topology holds an entry for it.
    pub fn state_of(&self, id: &str) -> Option<NodeState> {
        let id = &*aegis_id::canonical(id);
        self.read().entries.get(id).map(|s| s.state)
    }

    /// Every node that has not left, in ID order.
    pub fn get_all_nodes(&self) -> Vec<Arc<NodeInfo>> {
        self.read()
            .entries
            .values()
            .filter(|s| s.state != NodeState::Left)
            .map(|s| Arc::clone(&s.info))
            .collect()
    }

    /// Every entry, tombstones included, in ID order.
    pub fn entries(&self) -> Vec<Entry> {
        self.read().entries.values().map(Slot::entry).collect()
    }

    /// The entries of the given nodes that this topology holds.
    pub fn entries_for(&self, ids: &[NodeId]) -> Vec<Entry> {
        let state = self.read();
        ids.iter()
            .filter_map(|id| state.entries.get(id).map(Slot::entry))
            .collect()
    }

    /// Nodes offering `name` at exactly `version`, alive or suspect, in ID
    /// order. Answered from an index: no scan, no allocation.
    pub fn get_service_providers(&self, name: &str, version: &str) -> Providers {
        self.listed(name, version, |l| &l.available)
    }

    /// Like [`Topology::get_service_providers`], but leaving out nodes that
    /// are suspect or report themselves unhealthy while any other remains:
    /// what a client should pick from.
    pub fn get_preferred_providers(&self, name: &str, version: &str) -> Providers {
        self.listed(name, version, |l| &l.preferred)
    }

    /// One of the published lists of (name, version): an index probe and an
    /// `Arc` clone.
    fn listed(&self, name: &str, version: &str, list: fn(&Listed) -> &Providers) -> Providers {
        let state = self.read();
        state
            .published
            .get(name)
            .and_then(|p| p.by_version.get(version))
            .map_or(&self.shared.empty, list)
            .clone()
    }

    /// Nodes offering any version of `name`, alive or suspect, in ID order.
    pub fn get_nodes_by_service(&self, name: &str) -> Providers {
        let state = self.read();
        state
            .published
            .get(name)
            .map_or(&self.shared.empty, |p| &p.any_version)
            .clone()
    }

    /// How many nodes have not left.
    pub fn node_count(&self) -> usize {
        self.read().live
    }

    /// A local counter of effective changes: it rises on every local write
    /// and every merge that changed something, never otherwise. For change
    /// detection here, not for comparing with other nodes.
    pub fn version(&self) -> u64 {
        self.shared
            .version
            .load(std::sync::atomic::Ordering::Acquire)
    }

    /// The IDs whose entries changed (or went) after `version`, in no
    /// particular order and without repeats; `None` when changes that far
    /// back are no longer remembered (the last 4,096 are), and the caller
    /// must look at every entry instead. Lets a reader that keeps its own
    /// view follow the topology at the cost of the changes, not of its size.
    pub fn changed_since(&self, version: u64) -> Option<Vec<NodeId>> {
        let state = self.read();
        if version < state.log_floor {
            return None;
        }
        let mut ids: Vec<NodeId> = state
            .log
            .iter()
            .rev()
            .take_while(|(v, _)| *v > version)
            .map(|(_, id)| id.clone())
            .collect();
        ids.sort();
        ids.dedup();
        Some(ids)
    }

    /// The constant-size digest of every entry held.
    pub fn digest(&self) -> Digest {
        self.read().digest
    }

    /// A digest of each entry held, in ID order.
    pub fn entry_digests(&self) -> Vec<EntryDigest> {
        self.read().entries.values().map(Slot::digest).collect()
    }

    /// The entries the holder of `remote` lacks or holds older.
    pub fn delta(&self, remote: &[EntryDigest]) -> Vec<Entry> {
        self.compare(remote).send
    }

    /// The digest of each of the [`BUCKETS`] buckets that entries are
    /// spread over by node ID. Two topologies that differ in a few entries
    /// differ in a few buckets, so exchanging bucket digests (6 KB) and then
    /// the entry digests of the differing buckets costs far less than all
    /// entry digests of a large mesh.
    pub fn bucket_digests(&self) -> Vec<Digest> {
        self.read().buckets.clone()
    }

    /// The buckets whose digest differs from `remote`'s (all of them if
    /// `remote` does not have [`BUCKETS`] entries).
    pub fn differing_buckets(&self, remote: &[Digest]) -> Vec<u16> {
        let state = self.read();
        (0..BUCKETS)
            .filter(|&b| remote.len() != BUCKETS || remote[b] != state.buckets[b])
            .filter_map(|b| u16::try_from(b).ok())
            .collect()
    }

    /// The entry digests of the entries in the given buckets, in ID order.
    pub fn entry_digests_in(&self, buckets: &[u16]) -> Vec<EntryDigest> {
        let mask = bucket_mask(buckets);
        self.read()
            .entries
            .values()
            .filter(|s| mask[bucket_of(&s.info.id)])
            .map(Slot::digest)
            .collect()
    }

    /// Both directions at once: what to send to the holder of `remote`, and
    /// which of its entries to ask for.
    pub fn compare(&self, remote: &[EntryDigest]) -> Comparison {
        self.compare_within(remote, None)
    }

    /// [`Topology::compare`] when `remote` holds only the entry digests of
    /// some buckets: entries of other buckets are not sent.
    pub fn compare_in(&self, remote: &[EntryDigest], buckets: &[u16]) -> Comparison {
        self.compare_within(remote, Some(&bucket_mask(buckets)))
    }

    fn compare_within(&self, remote: &[EntryDigest], mask: Option<&[bool; BUCKETS]>) -> Comparison {
        let theirs: HashMap<&NodeId, Precedence> =
            remote.iter().map(|d| (&d.id, d.precedence())).collect();
        let state = self.read();
        let mut send: Vec<Entry> = state
            .entries
            .values()
            .filter(|s| mask.is_none_or(|m| m[bucket_of(&s.info.id)]))
            .filter(|s| theirs.get(&s.info.id).is_none_or(|p| *p < s.precedence()))
            .map(Slot::entry)
            .collect();
        let mut want: Vec<NodeId> = Vec::new();
        for d in remote {
            match (state.entries.get(&d.id), state.forgotten.get(&d.id)) {
                (Some(s), _) if s.precedence() >= d.precedence() => {}
                (None, Some(f)) if f.slot.precedence() >= d.precedence() => {
                    // They hold an older copy of a purged node: tell them
                    // why it went, so they drop it too (and the node itself,
                    // if it is alive after all, refutes).
                    if f.slot.precedence() > d.precedence() {
                        send.push(f.slot.entry());
                    }
                }
                _ => want.push(d.id.clone()),
            }
        }
        want.sort();
        want.dedup();
        Comparison { send, want }
    }
}

fn bucket_mask(buckets: &[u16]) -> [bool; BUCKETS] {
    let mut mask = [false; BUCKETS];
    for &b in buckets {
        if let Some(m) = mask.get_mut(usize::from(b)) {
            *m = true;
        }
    }
    mask
}

/// Checks one node against the limits.
fn validate(info: &NodeInfo, limits: &Limits) -> Result<(), TopologyError> {
    let field = |field: &'static str, value: &str| {
        if value.len() > limits.max_field_bytes {
            Err(TopologyError::FieldTooLong {
                id: info.id.clone(),
                field,
                len: value.len(),
                max: limits.max_field_bytes,
            })
        } else {
            Ok(())
        }
    };
    field("name", &info.name)?;
    field("address", &info.address)?;
    field("type", info.node_type.as_str())?;
    if info.services.len() > limits.max_services {
        return Err(TopologyError::TooManyServices {
            id: info.id.clone(),
            count: info.services.len(),
            max: limits.max_services,
        });
    }
    for s in &info.services {
        field("service name", &s.name)?;
        field("service version", &s.version)?;
    }
    Ok(())
}
