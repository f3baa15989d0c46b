//! What a topology holds is bounded, and the departed leave for good.

use std::time::{Duration, SystemTime};

use aegis_topology::{
    Entry, Limits, NodeInfo, NodeState, ServiceInfo, Stamp, Topology, TopologyConfig, TopologyError,
};

fn node(id: &str) -> NodeInfo {
    NodeInfo::new(id, id, "127.0.0.1:1")
        .unwrap()
        .with_services([ServiceInfo::new("svc", "v1")])
}

fn entry(i: usize) -> Entry {
    Entry::new(node(&format!("n{i}")), Stamp::new(1, 1), NodeState::Alive)
}

#[test]
fn the_member_count_is_bounded_and_the_error_names_the_limit() {
    let t = Topology::with_config(TopologyConfig {
        limits: Limits {
            max_members: 10,
            ..Limits::default()
        },
        ..TopologyConfig::default()
    });
    t.apply((0..8).map(entry).collect()).unwrap();
    // A delta that would pass the bound is refused whole.
    let err = t.apply((8..12).map(entry).collect()).unwrap_err();
    assert_eq!(err, TopologyError::TooManyMembers { count: 12, max: 10 });
    assert!(err.to_string().contains("max_members"), "{err}");
    assert_eq!(t.node_count(), 8);
    // Updates of members already held still go through at the bound.
    t.apply((8..10).map(entry).collect()).unwrap();
    let newer = Entry::new(node("n0"), Stamp::new(1, 2), NodeState::Alive);
    t.apply(vec![newer]).unwrap();
    assert!(matches!(
        t.add_node(node("one-more")),
        Err(TopologyError::TooManyMembers { max: 10, .. })
    ));
}

#[test]
fn dead_members_are_purged_and_stay_gone_until_they_refute() {
    let t = Topology::new();
    t.apply(vec![entry(1)]).unwrap();
    assert!(t.mark("n1", NodeState::Dead).unwrap());
    assert_eq!(t.purge_dead(SystemTime::now() - Duration::from_secs(60)), 0);
    let v = t.version();
    assert_eq!(t.purge_dead(SystemTime::now() + Duration::from_secs(1)), 1);
    assert!(t.version() > v, "a purge is a change readers can see");
    assert_eq!(t.node_count(), 0);
    assert!(t.is_forgotten("n1"));
    // The old alive copy, held by anyone, does not bring it back.
    assert!(t.apply(vec![entry(1)]).unwrap().changed.is_empty());
    assert!(t.get_entry("n1").is_none());
    // Its refutation (a higher stamp) does.
    let refuted = Entry::new(node("n1"), Stamp::new(1, 2), NodeState::Alive);
    t.apply(vec![refuted]).unwrap();
    assert_eq!(t.state_of("n1"), Some(NodeState::Alive));
    assert!(!t.is_forgotten("n1"));
}

#[test]
fn forgotten_members_are_dropped_after_their_retention() {
    let t = Topology::new();
    t.add_node(node("x")).unwrap();
    t.remove_node("x").unwrap();
    t.purge_tombstones(SystemTime::now() + Duration::from_secs(1));
    assert_eq!(t.forgotten_count(), 1);
    assert_eq!(
        t.forget_before(SystemTime::now() - Duration::from_secs(60)),
        0
    );
    assert_eq!(
        t.forget_before(SystemTime::now() + Duration::from_secs(1)),
        1
    );
    assert_eq!(t.forgotten_count(), 0);
}

#[test]
fn a_re_added_node_after_a_purge_gets_a_stamp_above_its_tombstone() {
    let t = Topology::with_config(TopologyConfig {
        generation: 5,
        ..TopologyConfig::default()
    });
    t.add_node(node("x")).unwrap();
    t.update_node(node("x")).unwrap();
    t.remove_node("x").unwrap();
    let tomb = t.get_entry("x").unwrap().stamp;
    t.purge_tombstones(SystemTime::now() + Duration::from_secs(1));
    t.add_node(node("x")).unwrap();
    assert!(t.get_entry("x").unwrap().stamp > tomb);
}
