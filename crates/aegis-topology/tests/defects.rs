//! Defects found by adversarial testing of v1, each pinned by a test that
//! failed on the code that had it.

use std::sync::{Arc, Barrier};
use std::time::{Duration, SystemTime};

use aegis_topology::{Entry, NodeInfo, NodeState, ServiceInfo, Stamp, Topology};

fn node(id: &str) -> NodeInfo {
    NodeInfo::new(id, id, "127.0.0.1:1")
        .unwrap()
        .with_services([ServiceInfo::new("svc", "v1")])
}

/// Publish race: a reader that sees the version of a write must see the
/// provider lists of that write, never older ones. v1 stored the version
/// first and rebuilt the lists after, so a reader (the pool) could stamp
/// stale lists with the new version and serve them until the next change.
#[test]
fn a_reader_never_sees_a_new_version_with_older_provider_lists() {
    let services: Vec<ServiceInfo> = (0..201)
        .map(|i| ServiceInfo::new(format!("svc-{i}"), "v1"))
        .collect();
    let mut stale_trials = 0;
    for _ in 0..30 {
        let t = Topology::new();
        t.add_node(
            NodeInfo::new("big", "big", "127.0.0.1:1")
                .unwrap()
                .with_services(services.clone()),
        )
        .unwrap();
        let removed_at = t.version() + 1;
        let ready = Arc::new(Barrier::new(2));
        let reader = {
            let (t, ready) = (t.clone(), Arc::clone(&ready));
            std::thread::spawn(move || {
                ready.wait();
                while t.version() < removed_at {
                    std::hint::spin_loop();
                }
                (0..201)
                    .filter(|i| {
                        !t.get_service_providers(&format!("svc-{i}"), "v1")
                            .is_empty()
                    })
                    .count()
            })
        };
        ready.wait();
        t.remove_node("big").unwrap();
        if reader.join().unwrap() > 0 {
            stale_trials += 1;
        }
    }
    assert_eq!(
        stale_trials, 0,
        "a reader saw the removal's version with lists that still held the node"
    );
}

/// Ghosts: after a tombstone is purged, a node that still holds the old
/// alive entry must not bring the departed node back.
#[test]
fn a_purged_node_does_not_come_back_at_an_older_stamp() {
    let a = Topology::new();
    let b = Topology::new();
    a.add_node(node("x")).unwrap();
    b.apply(a.entries()).unwrap();
    let stale = b.get_entry("x").unwrap();
    a.remove_node("x").unwrap();
    assert_eq!(
        a.purge_tombstones(SystemTime::now() + Duration::from_secs(1)),
        1
    );

    // b never saw the tombstone and pushes its old alive copy.
    let report = a.apply(vec![stale.clone()]).unwrap();
    assert!(report.changed.is_empty(), "{report:?}");
    assert!(a.get_node("x").is_none());
    assert!(a.get_service_providers("svc", "v1").is_empty());
    // Nor does a ask for it when comparing; it tells b why x went instead.
    let plan = a.compare(&b.entry_digests());
    assert!(!plan.want.iter().any(|id| id == "x"));
    assert!(
        plan.send
            .iter()
            .any(|e| e.id() == "x" && e.state == NodeState::Left),
        "{plan:?}"
    );
    b.apply(plan.send).unwrap();
    assert!(b.get_node("x").is_none());

    // A newer entry (the node restarted) is welcome.
    let back = Entry::new(
        stale.info.as_ref().clone(),
        Stamp::new(stale.stamp.generation + 1, 1),
        NodeState::Alive,
    );
    a.apply(vec![back]).unwrap();
    assert!(a.get_node("x").is_some());
}

/// The topology had no size bound: one member could make every node hold
/// (and probe) any number of entries. A write past the bound is refused
/// whole, naming the limit.
#[test]
fn a_flood_of_members_is_refused_whole_naming_the_limit() {
    let t = Topology::new();
    let flood: Vec<Entry> = (0..20_000)
        .map(|i| Entry::new(node(&format!("m{i}")), Stamp::new(1, 1), NodeState::Alive))
        .collect();
    let err = match t.apply(flood) {
        Ok(report) => panic!("{} members were taken", report.changed.len()),
        Err(e) => e,
    };
    assert!(err.to_string().contains("max_members"), "{err}");
    assert_eq!(t.node_count(), 0);
}

/// Identity by case: one node whatever the spelling, in entries and lookups.
#[test]
fn a_node_is_found_under_any_spelling_of_its_id() {
    let t = Topology::new();
    t.add_node(node("Node-1")).unwrap();
    assert!(matches!(
        t.add_node(node("NODE-1")),
        Err(aegis_topology::TopologyError::AlreadyExists(_))
    ));
    for spelling in ["node-1", "Node-1", "NODE-1"] {
        assert_eq!(t.get_node(spelling).unwrap().id.as_str(), "node-1");
        assert_eq!(t.state_of(spelling), Some(NodeState::Alive));
    }
    t.remove_node("NODE-1").unwrap();
    assert!(t.get_node("node-1").is_none());
}
