//! Topology sync: delta with nodes of this project, full list with
//! reference nodes, and a node's own entry kept its own.

mod support;

use aegis_peer::{PeerError, PeerInfo, SyncMode};
use aegis_topology::{Entry, NodeInfo, NodeState, ServiceInfo, Stamp};
use support::{Mesh, go_node, start_node, start_reference};

fn extra(i: usize) -> NodeInfo {
    NodeInfo::new(
        format!("svc-{i}"),
        format!("service {i}"),
        format!("10.1.0.{}:{}", i % 250, 7000 + i),
    )
    .unwrap()
    .with_services([
        ServiceInfo::new("identity", "v1"),
        ServiceInfo::new("billing", "v2"),
    ])
}

#[tokio::test]
async fn push_pull_delta_then_digests_only() {
    let mesh = Mesh::new();
    let a = start_node(&mesh, "node-a").await;
    let b = start_node(&mesh, "node-b").await;
    a.topology.add_node(extra(1)).unwrap();
    b.topology.add_node(extra(2)).unwrap();
    a.add_peer(&b);

    let first = a.peers.sync_topology("node-b").await.unwrap();
    assert_eq!(first.mode, SyncMode::Delta);
    assert_eq!(
        (first.sent, first.received),
        (2, 2),
        "each side sends what the other lacks"
    );
    for t in [&a.topology, &b.topology] {
        let ids: Vec<_> = t.get_all_nodes().iter().map(|n| n.id.to_string()).collect();
        assert_eq!(ids, ["node-a", "node-b", "svc-1", "svc-2"]);
    }
    assert_eq!(a.topology.digest(), b.topology.digest());

    let second = a.peers.sync_topology("node-b").await.unwrap();
    assert_eq!(second.mode, SyncMode::InSync);
    assert!(second.applied.changed.is_empty());

    // A change on either side travels on the next sync.
    b.topology.remove_node("svc-1").unwrap();
    let third = a.peers.sync_topology("node-b").await.unwrap();
    assert_eq!((third.mode, third.received), (SyncMode::Delta, 1));
    assert!(a.topology.get_node("svc-1").is_none());
}

#[tokio::test]
async fn a_thousand_node_topology_moves_once_then_only_digests() {
    let mesh = Mesh::new();
    let a = start_node(&mesh, "node-a").await;
    let b = start_node(&mesh, "node-b").await;
    let entries: Vec<Entry> = (0..1000)
        .map(|i| Entry::new(extra(i), Stamp::new(1, 1), NodeState::Alive))
        .collect();
    a.topology.apply(entries).unwrap();
    b.add_peer(&a);

    let first = b.peers.sync_topology("node-a").await.unwrap();
    assert_eq!(first.mode, SyncMode::Delta);
    assert_eq!(first.received, 1001);
    assert_eq!(b.topology.node_count(), 1002);
    assert_eq!(
        b.topology.get_service_providers("billing", "v2").len(),
        1000
    );
    let first_bytes = first.bytes_sent + first.bytes_received;

    let mut converged = Vec::new();
    for _ in 0..3 {
        let r = b.peers.sync_topology("node-a").await.unwrap();
        assert_eq!(r.mode, SyncMode::InSync);
        converged.push(r.bytes_sent + r.bytes_received);
    }
    println!("1,000 nodes: first sync {first_bytes} bytes, then {converged:?} bytes per sync");
    assert!(first_bytes > 1000 * 50, "{first_bytes}");
    assert!(
        converged.iter().all(|&b| b == converged[0]),
        "{converged:?}"
    );
    assert!(
        converged[0] < 100,
        "a converged sync is a digest and a flag: {converged:?}"
    );

    // One new entry on a: the next sync finds it through bucket digests and
    // ships the entry digests of one bucket, not of all 1,002 entries.
    a.topology.add_node(extra(5000)).unwrap();
    let r = b.peers.sync_topology("node-a").await.unwrap();
    assert_eq!((r.mode, r.received, r.sent), (SyncMode::Delta, 1, 0));
    let one_change = r.bytes_sent + r.bytes_received;
    let all_digests: usize = a
        .topology
        .entry_digests()
        .iter()
        .map(|d| d.encoded_len())
        .sum();
    println!("one change among 1,000 nodes: {one_change} bytes (all entry digests: {all_digests})");
    assert!(
        one_change * 3 < all_digests,
        "{one_change} vs {all_digests}"
    );
    assert_eq!(a.topology.digest(), b.topology.digest());
}

#[tokio::test]
async fn a_reference_peer_gets_a_full_list_merge_and_cannot_overwrite_us() {
    let mesh = Mesh::new();
    let ours = start_node(&mesh, "rust-node").await;
    let my_address = ours.address();
    // The reference node's view: itself, another Go node, and an old copy
    // of our own entry with a wrong address.
    let go = start_reference(
        &mesh,
        "go-node",
        vec![
            go_node("go-node", "127.0.0.1:7100", 1_700_000_100),
            go_node("go-other", "127.0.0.1:7101", 1_700_000_050),
            go_node("rust-node", "10.9.9.9:1", 1_900_000_000),
        ],
    )
    .await;
    ours.peers
        .add_peer(PeerInfo::new("go-node", go.local_addr().to_string()).unwrap())
        .unwrap();
    let report = ours.peers.sync_topology("go-node").await.unwrap();
    assert_eq!(report.mode, SyncMode::Full);
    assert_eq!(report.received, 3);
    let providers: Vec<_> = ours
        .topology
        .get_service_providers("identity", "v1")
        .iter()
        .map(|n| n.id.to_string())
        .collect();
    assert_eq!(providers, ["go-node", "go-other"]);
    // Our own entry is ours: the stale copy did not replace it.
    assert_eq!(
        ours.topology.get_node("rust-node").unwrap().address,
        my_address
    );
    assert_eq!(ours.topology.node_count(), 3, "merged, not replaced");
}

#[tokio::test]
async fn a_peer_sending_bad_entries_changes_nothing() {
    let mesh = Mesh::new();
    let ours = start_node(&mesh, "rust-node").await;
    let mut huge = go_node("fine-id", "127.0.0.1:1", 5);
    huge.name = "x".repeat(5000);
    let go = start_reference(
        &mesh,
        "go-node",
        vec![go_node("ok-node", "127.0.0.1:2", 5), huge],
    )
    .await;
    ours.peers
        .add_peer(PeerInfo::new("go-node", go.local_addr().to_string()).unwrap())
        .unwrap();
    let before = ours.topology.digest();
    let err = ours.peers.sync_topology("go-node").await.unwrap_err();
    assert!(matches!(err, PeerError::BadTopology { .. }), "{err}");
    assert!(
        err.to_string().contains("go-node") && err.to_string().contains("name"),
        "{err}"
    );
    assert_eq!(ours.topology.digest(), before);
    assert!(ours.topology.get_node("ok-node").is_none());

    let bad_id = start_reference(&mesh, "go-two", vec![go_node("../../etc", "h:1", 1)]).await;
    ours.peers
        .add_peer(PeerInfo::new("go-two", bad_id.local_addr().to_string()).unwrap())
        .unwrap();
    let err = ours.peers.sync_topology("go-two").await.unwrap_err();
    assert!(matches!(err, PeerError::BadTopology { .. }), "{err}");
}

#[tokio::test]
async fn a_forged_own_entry_is_refuted_and_the_truth_spreads() {
    let mesh = Mesh::new();
    let a = start_node(&mesh, "node-a").await;
    let b = start_node(&mesh, "node-b").await;
    // b holds a claim about a, newer than anything a wrote: a has left.
    let forged = NodeInfo::new("node-a", "forged", "10.6.6.6:6").unwrap();
    b.topology
        .apply(vec![Entry::new(forged, Stamp::new(1, 50), NodeState::Left)])
        .unwrap();
    a.add_peer(&b);
    let r = a.peers.sync_topology("node-b").await.unwrap();
    assert!(r.applied.refuted);
    let mine = a.topology.get_entry("node-a").unwrap();
    assert_eq!(mine.state, NodeState::Alive);
    assert_eq!(mine.info.address, a.address());
    assert!(mine.stamp > Stamp::new(1, 50));
    // The refutation reaches b on the next sync.
    a.peers.sync_topology("node-b").await.unwrap();
    let at_b = b.topology.get_entry("node-a").unwrap();
    assert_eq!(
        (at_b.state, at_b.info.address.clone()),
        (NodeState::Alive, a.address())
    );
    assert_eq!(a.topology.digest(), b.topology.digest());
}
