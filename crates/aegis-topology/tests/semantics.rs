//! The reference-compatible local API and the indexes behind it.

use std::time::{Duration, SystemTime};

use aegis_topology::{
    Entry, Limits, NodeId, NodeInfo, NodeState, ServiceInfo, Stamp, Topology, TopologyConfig,
    TopologyError,
};

fn node(id: &str, services: &[(&str, &str)]) -> NodeInfo {
    NodeInfo::new(id, id.to_uppercase(), "127.0.0.1:1")
        .unwrap()
        .with_services(services.iter().map(|(n, v)| ServiceInfo::new(*n, *v)))
}

fn ids(list: &[std::sync::Arc<NodeInfo>]) -> Vec<&str> {
    list.iter().map(|n| n.id.as_str()).collect()
}

#[test]
fn add_get_update_remove_readd() {
    let t = Topology::new();
    t.add_node(node("b", &[])).unwrap();
    t.add_node(node("a", &[])).unwrap();
    assert_eq!(
        t.add_node(node("a", &[])),
        Err(TopologyError::AlreadyExists(NodeId::new("a").unwrap()))
    );
    assert_eq!(ids(&t.get_all_nodes()), ["a", "b"], "stable order by ID");
    assert_eq!(t.node_count(), 2);

    let joined = t.get_node("a").unwrap().joined_at;
    assert!(joined > 0);
    let mut changed = node("a", &[("x", "v1")]);
    changed.name = "renamed".into();
    changed.joined_at = 12345;
    t.update_node(changed).unwrap();
    let a = t.get_node("a").unwrap();
    assert_eq!(a.name, "renamed");
    assert_eq!(a.joined_at, joined, "update keeps joined_at");
    assert!(matches!(
        t.update_node(node("zzz", &[])),
        Err(TopologyError::NotFound(_))
    ));

    t.remove_node("a").unwrap();
    assert!(t.get_node("a").is_none());
    assert_eq!(t.state_of("a"), Some(NodeState::Left));
    assert!(matches!(
        t.remove_node("a"),
        Err(TopologyError::NotFound(_))
    ));
    assert!(matches!(
        t.remove_node("nobody"),
        Err(TopologyError::NotFound(_))
    ));
    assert!(matches!(
        t.update_node(node("a", &[])),
        Err(TopologyError::NotFound(_))
    ));
    assert!(t.get_service_providers("x", "v1").is_empty());
    assert_eq!(t.node_count(), 1);

    let tombstone = t.get_entry("a").unwrap().stamp;
    t.add_node(node("a", &[])).unwrap();
    assert!(
        t.get_entry("a").unwrap().stamp > tombstone,
        "re-add outranks the tombstone"
    );
    assert_eq!(t.node_count(), 2);
}

#[test]
fn version_counts_effective_changes_only() {
    let t = Topology::new();
    let v0 = t.version();
    t.add_node(node("a", &[])).unwrap();
    let v1 = t.version();
    assert!(v1 > v0);
    let _ = t.add_node(node("a", &[])); // fails: no change
    assert_eq!(t.version(), v1);
    let entries = t.entries();
    let other = Topology::new();
    other.apply(entries.clone()).unwrap();
    let v = other.version();
    let report = other.apply(entries).unwrap();
    assert!(report.changed.is_empty());
    assert_eq!(report.ignored, 1);
    assert_eq!(
        other.version(),
        v,
        "a no-op merge does not raise the version"
    );
}

#[test]
fn provider_indexes_follow_every_change() {
    let t = Topology::new();
    t.add_node(node("c", &[("identity", "v1")])).unwrap();
    t.add_node(node("a", &[("identity", "v1"), ("identity", "v2")]))
        .unwrap();
    t.add_node(node("b", &[("identity", "v2"), ("auth", "v1")]))
        .unwrap();

    assert_eq!(ids(&t.get_service_providers("identity", "v1")), ["a", "c"]);
    assert_eq!(ids(&t.get_service_providers("identity", "v2")), ["a", "b"]);
    assert_eq!(ids(&t.get_nodes_by_service("identity")), ["a", "b", "c"]);
    assert!(t.get_service_providers("identity", "v3").is_empty());
    assert!(t.get_nodes_by_service("nothing").is_empty());

    t.update_node(node("a", &[("auth", "v1")])).unwrap();
    assert_eq!(ids(&t.get_service_providers("identity", "v1")), ["c"]);
    assert_eq!(ids(&t.get_service_providers("auth", "v1")), ["a", "b"]);

    t.mark("a", NodeState::Suspect).unwrap();
    assert_eq!(
        ids(&t.get_service_providers("auth", "v1")),
        ["a", "b"],
        "suspects are still providers"
    );
    assert_eq!(
        ids(&t.get_preferred_providers("auth", "v1")),
        ["b"],
        "but not preferred while b is alive"
    );
    assert_eq!(ids(&t.get_preferred_providers("identity", "v1")), ["c"]);
    t.mark("b", NodeState::Suspect).unwrap();
    assert_eq!(
        ids(&t.get_preferred_providers("auth", "v1")),
        ["a", "b"],
        "all suspect: all of them"
    );

    // A node reporting itself unhealthy is not preferred either.
    let mut sick = node("c", &[("identity", "v1")]);
    sick.health = aegis_topology::HealthStatus::Unhealthy;
    t.add_node(node("d", &[("identity", "v1")])).unwrap();
    t.update_node(sick).unwrap();
    assert_eq!(ids(&t.get_service_providers("identity", "v1")), ["c", "d"]);
    assert_eq!(ids(&t.get_preferred_providers("identity", "v1")), ["d"]);
    t.remove_node("d").unwrap();

    t.mark("c", NodeState::Dead).unwrap();
    assert!(
        t.get_service_providers("identity", "v1").is_empty(),
        "dead nodes are not providers"
    );
    t.remove_node("b").unwrap();
    assert_eq!(ids(&t.get_service_providers("auth", "v1")), ["a"]);
    assert!(t.get_nodes_by_service("identity").is_empty());
}

#[test]
fn a_held_snapshot_is_immutable() {
    let t = Topology::new();
    t.add_node(node("a", &[("s", "1")])).unwrap();
    let before = t.get_service_providers("s", "1");
    t.add_node(node("b", &[("s", "1")])).unwrap();
    assert_eq!(before.len(), 1);
    assert_eq!(t.get_service_providers("s", "1").len(), 2);
}

#[test]
fn tombstones_win_over_older_live_entries_elsewhere() {
    let a = Topology::new();
    a.add_node(node("x", &[("s", "1")])).unwrap();
    let b = Topology::new();
    b.apply(a.entries()).unwrap();
    a.remove_node("x").unwrap();
    b.apply(a.entries()).unwrap();
    assert!(b.get_node("x").is_none());
    assert!(b.get_service_providers("s", "1").is_empty());
    // The old live entry coming back does not resurrect the node.
    let stale = Entry::new(node("x", &[("s", "1")]), Stamp::new(0, 1), NodeState::Alive);
    let r = b.apply(vec![stale]).unwrap();
    assert_eq!(r.ignored, 1);
    assert!(b.get_node("x").is_none());
}

#[test]
fn tombstones_are_purged_after_retention() {
    let t = Topology::new();
    t.add_node(node("a", &[])).unwrap();
    t.add_node(node("b", &[])).unwrap();
    t.remove_node("a").unwrap();
    assert_eq!(
        t.purge_tombstones(SystemTime::now() - Duration::from_secs(60)),
        0
    );
    assert_eq!(
        t.purge_tombstones(SystemTime::now() + Duration::from_secs(1)),
        1
    );
    assert!(t.get_entry("a").is_none());
    assert_eq!(t.entries().len(), 1);
    let fresh = Topology::new();
    fresh.add_node(node("b", &[])).unwrap();
    // The digest no longer counts the purged tombstone.
    assert_eq!(t.digest().count, 1);
}

#[test]
fn own_entry_cannot_be_overwritten_remotely() {
    let me = NodeId::new("me").unwrap();
    let t = Topology::with_config(TopologyConfig {
        local_id: Some(me),
        generation: 3,
        ..TopologyConfig::default()
    });
    t.add_node(node("me", &[("s", "1")])).unwrap();
    let mine = t.get_entry("me").unwrap();
    assert_eq!(mine.stamp, Stamp::new(3, 1));

    // Someone claims "me" has left, with a higher stamp.
    let mut forged = node("me", &[]);
    forged.address = "10.9.9.9:1".into();
    let claim = Entry::new(forged, Stamp::new(3, 9), NodeState::Left);
    let report = t.apply(vec![claim]).unwrap();
    assert!(report.refuted);
    let now = t.get_entry("me").unwrap();
    assert_eq!(now.state, NodeState::Alive);
    assert_eq!(now.info.address, "127.0.0.1:1");
    assert!(now.stamp > Stamp::new(3, 9));
    assert_eq!(ids(&t.get_service_providers("s", "1")), ["me"]);
    // Observers cannot mark the owner dead locally either.
    assert!(!t.mark("me", NodeState::Dead).unwrap());
}

#[test]
fn suspicion_at_equal_stamp_is_refuted_by_a_higher_stamp() {
    let owner = Topology::with_config(TopologyConfig {
        local_id: Some(NodeId::new("n").unwrap()),
        ..TopologyConfig::default()
    });
    owner.add_node(node("n", &[("s", "1")])).unwrap();
    let observer = Topology::new();
    observer.apply(owner.entries()).unwrap();
    assert!(observer.mark("n", NodeState::Suspect).unwrap());
    assert!(observer.mark("n", NodeState::Dead).unwrap());
    assert!(
        !observer.mark("n", NodeState::Suspect).unwrap(),
        "never back towards alive"
    );
    assert!(observer.get_service_providers("s", "1").is_empty());
    // The owner hears it is dead and refutes; the observer takes the refutation.
    assert!(owner.apply(observer.entries()).unwrap().refuted);
    observer.apply(owner.entries()).unwrap();
    assert_eq!(observer.state_of("n"), Some(NodeState::Alive));
    assert_eq!(observer.get_service_providers("s", "1").len(), 1);
    assert_eq!(owner.digest(), observer.digest());
}

#[test]
fn bad_remote_entries_are_rejected_whole() {
    let t = Topology::with_config(TopologyConfig {
        limits: Limits {
            max_delta_entries: 3,
            ..Limits::default()
        },
        ..TopologyConfig::default()
    });
    t.add_node(node("keep", &[])).unwrap();
    let (digest, version) = (t.digest(), t.version());
    let good = || Entry::new(node("ok", &[]), Stamp::new(0, 1), NodeState::Alive);

    let mut long_name = node("long", &[]);
    long_name.name = "n".repeat(1025);
    let mut long_addr = node("addr", &[]);
    long_addr.address = "a".repeat(2000);
    let many = node("many", &vec![("s", "1"); 257]);
    let cases = [
        (
            vec![
                good(),
                Entry::new(long_name, Stamp::default(), NodeState::Alive),
            ],
            "name",
        ),
        (
            vec![
                good(),
                Entry::new(long_addr, Stamp::default(), NodeState::Alive),
            ],
            "address",
        ),
        (
            vec![Entry::new(many, Stamp::default(), NodeState::Alive)],
            "257 services",
        ),
        (vec![good(), good()], "twice"),
        (vec![good(); 4], "over the limit of 3"),
    ];
    for (entries, what) in cases {
        let err = t.apply(entries).unwrap_err();
        assert!(err.to_string().contains(what), "{what}: {err}");
        assert_eq!(
            (t.digest(), t.version()),
            (digest, version),
            "nothing applied"
        );
        assert!(t.get_node("ok").is_none());
    }
    assert!(matches!(
        NodeInfo::new("", "x", "y"),
        Err(TopologyError::InvalidNodeId(_))
    ));
    assert!(matches!(
        NodeInfo::new("a".repeat(254), "x", "y"),
        Err(TopologyError::InvalidNodeId(_))
    ));
}

#[test]
fn handle_is_shared_across_threads() {
    fn assert_send_sync<T: Send + Sync + Clone>() {}
    assert_send_sync::<Topology>();
    let t = Topology::new();
    std::thread::scope(|s| {
        for w in 0..4 {
            let t = t.clone();
            s.spawn(move || {
                for i in 0..50 {
                    t.add_node(node(&format!("w{w}-{i}"), &[("s", "1")]))
                        .unwrap();
                }
            });
        }
        let r = t.clone();
        s.spawn(move || {
            for _ in 0..200 {
                let p = r.get_service_providers("s", "1");
                // Each snapshot is internally consistent: sorted, no repeats.
                assert!(p.windows(2).all(|w| w[0].id < w[1].id));
            }
        });
    });
    assert_eq!(t.get_service_providers("s", "1").len(), 200);
}

#[test]
fn the_next_stamp_is_always_greater() {
    assert_eq!(Stamp::new(1, 1).next(), Stamp::new(1, 2));
    let last = Stamp::new(4, u64::MAX);
    assert!(last.next() > last);
    assert_eq!(last.next(), Stamp::new(5, 0));
    // So a remote claim with the largest version of a generation is still refuted.
    let t = Topology::with_config(TopologyConfig {
        local_id: Some(NodeId::new("me").unwrap()),
        generation: 4,
        ..TopologyConfig::default()
    });
    t.add_node(node("me", &[])).unwrap();
    let claim = Entry::new(node("me", &[]), last, NodeState::Left);
    assert!(t.apply(vec![claim]).unwrap().refuted);
    assert_eq!(t.state_of("me"), Some(NodeState::Alive));
    assert!(t.get_entry("me").unwrap().stamp > last);
}

/// A reader that keeps its own view follows the topology by its changes:
/// every write and purge after a version is listed, until the log no
/// longer reaches back that far.
#[test]
fn changes_since_a_version_are_listed_while_remembered() {
    let t = Topology::new();
    t.add_node(node("a", &[])).unwrap();
    let v = t.version();
    assert_eq!(t.changed_since(v), Some(vec![]));
    t.add_node(node("b", &[])).unwrap();
    t.mark("a", NodeState::Dead).unwrap();
    t.mark("b", NodeState::Suspect).unwrap();
    let names = |ids: Vec<NodeId>| ids.iter().map(|i| i.to_string()).collect::<Vec<_>>();
    assert_eq!(names(t.changed_since(v).unwrap()), ["a", "b"]);
    let after_marks = t.version();
    t.purge_dead(SystemTime::now() + Duration::from_secs(1));
    assert_eq!(names(t.changed_since(after_marks).unwrap()), ["a"]);
    assert_eq!(t.get_entry("a"), None);
    // Thousands of writes later, the first version is out of reach.
    for i in 0..5_000 {
        t.update_node(node("b", &[("s", &format!("v{i}"))]))
            .unwrap();
    }
    assert_eq!(t.changed_since(v), None);
    assert_eq!(names(t.changed_since(t.version() - 1).unwrap()), ["b"]);
}
