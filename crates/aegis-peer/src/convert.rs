//! Between the wire messages and the topology's types.

use aegis_mesh::{MAX_PIGGYBACK, Piggyback, Suspicion, SyncRequest, SyncResponse};
use aegis_topology::{
    BUCKETS, Digest, Entry, EntryDigest, NodeId, NodeInfo, NodeState, NodeType, ServiceInfo, Stamp,
    TopologyError,
};

use crate::health::{HealthInfo, HealthStatus};
use crate::proto::mesh as pb;

pub(crate) fn unix_secs(t: std::time::SystemTime) -> i64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

pub(crate) fn now_unix() -> i64 {
    unix_secs(std::time::SystemTime::now())
}

/// The time the protocol core takes as input, now.
pub(crate) fn now_ms() -> u64 {
    aegis_mesh::unix_ms(std::time::SystemTime::now())
}

pub(crate) fn health_to_wire(node_id: &str, h: &HealthInfo) -> pb::HealthResponse {
    pb::HealthResponse {
        node_id: node_id.to_owned(),
        status: h.status.as_str().to_owned(),
        last_checked: unix_secs(h.last_checked),
        message: h.message.clone(),
        error: h.error.clone().unwrap_or_default(),
    }
}

pub(crate) fn health_from_wire(h: pb::HealthResponse) -> (String, HealthInfo) {
    let secs = u64::try_from(h.last_checked).unwrap_or(0);
    let info = HealthInfo {
        status: HealthStatus::from_wire(&h.status),
        last_checked: std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs),
        message: h.message,
        error: (!h.error.is_empty()).then_some(h.error),
    };
    (h.node_id, info)
}

pub(crate) fn state_to_wire(s: NodeState) -> pb::NodeState {
    match s {
        NodeState::Alive => pb::NodeState::Alive,
        NodeState::Suspect => pb::NodeState::Suspect,
        NodeState::Dead => pb::NodeState::Dead,
        NodeState::Left => pb::NodeState::Left,
    }
}

/// Unknown numbers (a newer peer) read as alive rather than failing.
fn state_from_wire(v: i32) -> NodeState {
    match pb::NodeState::try_from(v) {
        Ok(pb::NodeState::Suspect) => NodeState::Suspect,
        Ok(pb::NodeState::Dead) => NodeState::Dead,
        Ok(pb::NodeState::Left) => NodeState::Left,
        _ => NodeState::Alive,
    }
}

pub(crate) fn entry_to_wire(e: &Entry) -> pb::TopologyNode {
    let i = &e.info;
    pb::TopologyNode {
        id: i.id.to_string(),
        name: i.name.clone(),
        r#type: i.node_type.to_string(),
        address: i.address.clone(),
        joined_at: i.joined_at,
        updated_at: i.updated_at,
        services: i
            .services
            .iter()
            .map(|s| pb::Service {
                name: s.name.clone(),
                version: s.version.clone(),
            })
            .collect(),
        generation: Some(e.stamp.generation),
        stamp_version: Some(e.stamp.version),
        state: state_to_wire(e.state) as i32,
        health: i.health.as_str().to_owned(),
    }
}

/// A wire node as an entry. A node of the reference implementation sends no
/// stamp (the field is absent, not 0): its entry is stamped
/// `(0, updated_at)`, so a later update of it wins, and any entry stamped
/// by a node of this project (whose generations are start times) wins over it.
pub(crate) fn entry_from_wire(n: pb::TopologyNode) -> Result<Entry, TopologyError> {
    let stamp = match n.stamp_version {
        None => Stamp::new(0, u64::try_from(n.updated_at).unwrap_or(0)),
        Some(version) => Stamp::new(n.generation.unwrap_or(0), version),
    };
    let state = state_from_wire(n.state);
    let info = NodeInfo {
        id: NodeId::new(&n.id)?,
        name: n.name,
        node_type: if n.r#type.is_empty() {
            NodeType::GENERIC
        } else {
            NodeType::new(n.r#type)
        },
        address: n.address,
        services: n
            .services
            .into_iter()
            .map(|s| ServiceInfo::new(s.name, s.version))
            .collect(),
        joined_at: n.joined_at,
        updated_at: n.updated_at,
        health: HealthStatus::from_wire(&n.health),
    };
    Ok(Entry::new(info, stamp, state))
}

pub(crate) fn entries_from_wire(nodes: Vec<pb::TopologyNode>) -> Result<Vec<Entry>, TopologyError> {
    nodes.into_iter().map(entry_from_wire).collect()
}

pub(crate) fn digest_to_wire(d: Digest) -> pb::SyncDigest {
    pb::SyncDigest {
        count: d.count,
        sum: d.sum.to_be_bytes().to_vec(),
    }
}

pub(crate) fn digest_from_wire(d: &pb::SyncDigest) -> Option<Digest> {
    let sum: [u8; 16] = d.sum.as_slice().try_into().ok()?;
    Some(Digest {
        count: d.count,
        sum: u128::from_be_bytes(sum),
    })
}

pub(crate) fn entry_digest_to_wire(d: &EntryDigest) -> pb::EntryDigest {
    pb::EntryDigest {
        id: d.id.to_string(),
        generation: d.stamp.generation,
        version: d.stamp.version,
        state: state_to_wire(d.state) as i32,
        content: d.content,
    }
}

pub(crate) fn entry_digest_from_wire(d: &pb::EntryDigest) -> Result<EntryDigest, TopologyError> {
    Ok(EntryDigest {
        id: NodeId::new(&d.id)?,
        stamp: Stamp::new(d.generation, d.version),
        state: state_from_wire(d.state),
        content: d.content,
    })
}

/// A wire field that breaks a rule, named as in `mesh.proto`.
#[derive(Debug)]
pub(crate) struct WireError {
    pub(crate) field: &'static str,
    pub(crate) reason: String,
    /// The topology rule broken, when it is one.
    pub(crate) source: Option<TopologyError>,
}

impl std::fmt::Display for WireError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.reason)
    }
}

fn wire_err(field: &'static str) -> impl Fn(TopologyError) -> WireError {
    move |e| WireError {
        field,
        reason: e.to_string(),
        source: Some(e),
    }
}

fn ids_from_wire(field: &'static str, ids: &[String]) -> Result<Vec<NodeId>, WireError> {
    ids.iter()
        .map(|id| NodeId::new(id).map_err(|e| wire_err(field)(e.into())))
        .collect()
}

fn digests_from_wire(field: &'static str, ds: &[pb::SyncDigest]) -> Result<Vec<Digest>, WireError> {
    ds.iter()
        .map(|d| {
            digest_from_wire(d).ok_or_else(|| WireError {
                field,
                reason: "a digest sum is not 16 bytes".to_owned(),
                source: None,
            })
        })
        .collect()
}

/// The core's request as sent by `sender`.
pub(crate) fn request_to_wire(
    r: &SyncRequest,
    sender: &NodeId,
    version: i64,
) -> pb::TopologySyncRequest {
    let mut w = pb::TopologySyncRequest {
        sender_id: sender.to_string(),
        version,
        ..Default::default()
    };
    match r {
        SyncRequest::Digest(d) => w.digest = Some(digest_to_wire(*d)),
        SyncRequest::Buckets(b) => w.buckets = b.iter().map(|&b| u32::from(b)).collect(),
        SyncRequest::Delta { push, want } => {
            w.delta = true;
            w.push = push.iter().map(entry_to_wire).collect();
            w.want = want.iter().map(ToString::to_string).collect();
        }
        SyncRequest::Full => {}
    }
    w
}

/// A wire request as the core's, checked whole: any bad field refuses it
/// before anything is applied.
pub(crate) fn request_from_wire(w: pb::TopologySyncRequest) -> Result<SyncRequest, WireError> {
    if w.delta {
        let want = ids_from_wire("want", &w.want)?;
        let push = entries_from_wire(w.push).map_err(wire_err("push"))?;
        return Ok(SyncRequest::Delta { push, want });
    }
    if let Some(d) = &w.digest {
        let d = digest_from_wire(d).ok_or_else(|| WireError {
            field: "digest",
            reason: "sum is not 16 bytes".to_owned(),
            source: None,
        })?;
        return Ok(SyncRequest::Digest(d));
    }
    if !w.buckets.is_empty() {
        let buckets = w
            .buckets
            .iter()
            .map(|&b| u16::try_from(b).ok().filter(|&b| usize::from(b) < BUCKETS))
            .collect::<Option<Vec<u16>>>()
            .ok_or_else(|| WireError {
                field: "buckets",
                reason: format!("a bucket number is not below {BUCKETS}"),
                source: None,
            })?;
        return Ok(SyncRequest::Buckets(buckets));
    }
    Ok(SyncRequest::Full)
}

/// The core's answer on the wire.
pub(crate) fn response_to_wire(r: &SyncResponse, version: i64) -> pb::TopologySyncResponse {
    let mut w = pb::TopologySyncResponse {
        version,
        updated_at: now_unix(),
        extended: true,
        ..Default::default()
    };
    match r {
        SyncResponse::InSync => w.in_sync = true,
        SyncResponse::EntryDigests(d) => w.digests = d.iter().map(entry_digest_to_wire).collect(),
        SyncResponse::BucketDigests(b) => {
            w.buckets = b.iter().map(|&d| digest_to_wire(d)).collect();
        }
        SyncResponse::Entries { entries, more } => {
            w.nodes = entries.iter().map(entry_to_wire).collect();
            w.more = *more;
        }
        SyncResponse::Full(entries) => {
            w.extended = false;
            w.nodes = entries.iter().map(entry_to_wire).collect();
        }
    }
    w
}

/// A wire answer as the core's. Which kind it is follows from the fields
/// set; the session checks that it fits the request.
pub(crate) fn response_from_wire(w: pb::TopologySyncResponse) -> Result<SyncResponse, WireError> {
    if !w.extended {
        // A reference node ignored our extension fields and sent everything.
        let entries = entries_from_wire(w.nodes).map_err(wire_err("nodes"))?;
        return Ok(SyncResponse::Full(entries));
    }
    if w.in_sync {
        return Ok(SyncResponse::InSync);
    }
    if !w.buckets.is_empty() {
        return Ok(SyncResponse::BucketDigests(digests_from_wire(
            "buckets", &w.buckets,
        )?));
    }
    if !w.digests.is_empty() {
        let digests = w
            .digests
            .iter()
            .map(entry_digest_from_wire)
            .collect::<Result<Vec<_>, _>>()
            .map_err(wire_err("digests"))?;
        return Ok(SyncResponse::EntryDigests(digests));
    }
    let entries = entries_from_wire(w.nodes).map_err(wire_err("nodes"))?;
    Ok(SyncResponse::Entries {
        entries,
        more: w.more,
    })
}

/// A probe's or ack's piggyback, for the wire.
pub(crate) fn piggyback_to_wire(p: &Piggyback) -> (Vec<pb::TopologyNode>, Vec<pb::Suspicion>) {
    let updates = p.updates.iter().map(entry_to_wire).collect();
    let suspicions = p
        .suspicions
        .iter()
        .map(|s| pb::Suspicion {
            target_id: s.target.to_string(),
            generation: s.stamp.generation,
            version: s.stamp.version,
            from_id: s.from.to_string(),
        })
        .collect();
    (updates, suspicions)
}

/// A piggyback from the wire: at most [`MAX_PIGGYBACK`] of each (checked
/// before anything is converted), every ID valid.
pub(crate) fn piggyback_from_wire(
    updates: Vec<pb::TopologyNode>,
    suspicions: Vec<pb::Suspicion>,
) -> Result<Piggyback, WireError> {
    for (field, count) in [("updates", updates.len()), ("suspicions", suspicions.len())] {
        if count > MAX_PIGGYBACK {
            return Err(WireError {
                field,
                reason: format!("{count} items, more than {MAX_PIGGYBACK}"),
                source: None,
            });
        }
    }
    let updates = entries_from_wire(updates).map_err(wire_err("updates"))?;
    let suspicions = suspicions
        .into_iter()
        .map(|s| {
            let id = |v: &str| NodeId::new(v).map_err(|e| wire_err("suspicions")(e.into()));
            Ok(Suspicion {
                target: id(&s.target_id)?,
                stamp: Stamp::new(s.generation, s.version),
                from: id(&s.from_id)?,
            })
        })
        .collect::<Result<_, WireError>>()?;
    Ok(Piggyback {
        updates,
        suspicions,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip() {
        let info = NodeInfo::new("n1", "one", "127.0.0.1:1")
            .unwrap()
            .with_type("edge")
            .with_services([ServiceInfo::new("identity", "v1")]);
        let info = NodeInfo {
            health: HealthStatus::Unhealthy,
            ..info
        };
        let e = Entry::new(info, Stamp::new(7, 3), NodeState::Suspect);
        assert_eq!(entry_from_wire(entry_to_wire(&e)).unwrap(), e);
    }

    #[test]
    fn version_zero_is_a_stamp_not_a_reference_node() {
        // A refutation that rolled into a new generation has version 0; v1
        // read it off the wire as a reference node's (0, updated_at), so it
        // never reached anyone and the digests never matched again.
        let info = NodeInfo {
            updated_at: 1_700_000_000,
            ..NodeInfo::new("n1", "one", "127.0.0.1:1").unwrap()
        };
        for stamp in [Stamp::new(8, 0), Stamp::new(0, 0), Stamp::new(0, 1)] {
            let e = Entry::new(info.clone(), stamp, NodeState::Alive);
            assert_eq!(entry_from_wire(entry_to_wire(&e)).unwrap().stamp, stamp);
        }
    }

    #[test]
    fn reference_nodes_get_a_stamp_from_updated_at() {
        let n = pb::TopologyNode {
            id: "go-1".into(),
            updated_at: 1_700_000_000,
            ..Default::default()
        };
        let e = entry_from_wire(n).unwrap();
        assert_eq!(e.stamp, Stamp::new(0, 1_700_000_000));
        assert_eq!(e.state, NodeState::Alive);
        assert_eq!(e.info.node_type, NodeType::GENERIC);
        assert_eq!(e.info.health, HealthStatus::Unknown);
    }

    #[test]
    fn invalid_ids_are_errors() {
        let n = pb::TopologyNode {
            id: "../x".into(),
            ..Default::default()
        };
        assert!(matches!(
            entry_from_wire(n),
            Err(TopologyError::InvalidNodeId(_))
        ));
        assert!(
            digest_from_wire(&pb::SyncDigest {
                count: 1,
                sum: vec![1, 2]
            })
            .is_none()
        );
    }
}
