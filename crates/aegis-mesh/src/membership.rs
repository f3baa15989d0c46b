//! Membership as events: what changed in the mesh between two looks at a
//! topology, in the terms a user (or a pool) cares about.

use std::collections::BTreeMap;
use std::sync::Arc;

use aegis_topology::{NodeId, NodeInfo, NodeState, Stamp, Topology};

/// A member as last seen: its entry's content, stamp and state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// What the member says of itself.
    pub info: Arc<NodeInfo>,
    /// Its entry's stamp.
    pub stamp: Stamp,
    /// Its state.
    pub state: NodeState,
}

impl Member {
    /// The member's ID.
    pub fn id(&self) -> &NodeId {
        &self.info.id
    }
}

/// One change of the membership.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum MemberEvent {
    /// A node became available (alive or suspect): it joined, restarted,
    /// or refuted its death.
    Up(Member),
    /// An available node changed: its address, services, health, or
    /// alive ↔ suspect.
    Updated(Member),
    /// A node was found dead, or was purged while available.
    Down(Member),
    /// A node announced that it left.
    Left(Member),
}

impl MemberEvent {
    /// The member the event is about.
    pub fn member(&self) -> &Member {
        match self {
            MemberEvent::Up(m)
            | MemberEvent::Updated(m)
            | MemberEvent::Down(m)
            | MemberEvent::Left(m) => m,
        }
    }
}

/// The last membership seen, and the events that lead from it to a
/// topology's current one.
///
/// ```
/// use aegis_mesh::{MemberEvent, MembershipView};
/// use aegis_topology::{NodeInfo, Topology};
///
/// let topology = Topology::new();
/// let mut view = MembershipView::default();
/// topology.add_node(NodeInfo::new("node-1", "one", "127.0.0.1:7001")?)?;
/// let events = view.refresh(&topology);
/// assert!(matches!(&events[..], [MemberEvent::Up(m)] if m.id().as_str() == "node-1"));
/// topology.remove_node("node-1")?;
/// assert!(matches!(&view.refresh(&topology)[..], [MemberEvent::Left(_)]));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Default, Clone)]
pub struct MembershipView {
    members: BTreeMap<NodeId, Member>,
    version: Option<u64>,
}

impl MembershipView {
    /// The events since the last refresh (none if the topology's version
    /// did not move), in ID order; the view then holds the current members.
    pub fn refresh(&mut self, topology: &Topology) -> Vec<MemberEvent> {
        let version = topology.version();
        if self.version == Some(version) {
            return Vec::new();
        }
        self.version = Some(version);
        let mut events = Vec::new();
        let mut now: BTreeMap<NodeId, Member> = BTreeMap::new();
        for e in topology.entries() {
            let member = Member {
                info: Arc::clone(&e.info),
                stamp: e.stamp,
                state: e.state,
            };
            let before = self.members.get(e.id());
            if let Some(event) = event_for(before, &member) {
                events.push(event);
            }
            now.insert(e.id().clone(), member);
        }
        for (id, gone) in &self.members {
            if !now.contains_key(id) && gone.state.is_available() {
                events.push(MemberEvent::Down(gone.clone()));
            }
        }
        self.members = now;
        events
    }

    /// Every member the view holds (tombstones included), in ID order.
    pub fn members(&self) -> impl Iterator<Item = &Member> {
        self.members.values()
    }
}

fn event_for(before: Option<&Member>, now: &Member) -> Option<MemberEvent> {
    let was_up = before.is_some_and(|b| b.state.is_available());
    if before == Some(now) {
        return None;
    }
    let member = now.clone();
    Some(match now.state {
        NodeState::Alive | NodeState::Suspect if was_up => MemberEvent::Updated(member),
        NodeState::Alive | NodeState::Suspect => MemberEvent::Up(member),
        NodeState::Dead if was_up || before.is_none() => MemberEvent::Down(member),
        NodeState::Left if before.is_none_or(|b| b.state != NodeState::Left) => {
            MemberEvent::Left(member)
        }
        // Dead to dead at another stamp, left to left: nothing a user sees.
        NodeState::Dead | NodeState::Left => return None,
    })
}
