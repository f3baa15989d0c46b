//! Defects of v1's facade, each pinned by a test that failed on the code
//! that had it.

mod support;
use support::builder;

use std::time::Duration;

use aegis::{MeshConfig, NodeState, PeerInfo, ServiceInfo};

/// A rejected build leaves nothing on disk: v1 generated the certificates
/// first and validated the topology fields after.
#[test]
fn a_rejected_build_writes_no_key_or_certificate() {
    let tmp = tempfile::tempdir().unwrap();
    let huge_name = builder(tmp.path(), "n1").with_name("x".repeat(1 << 20));
    assert!(huge_name.build().is_err());
    let many = builder(tmp.path(), "n2")
        .with_services((0..10_000).map(|i| ServiceInfo::new(format!("s{i}"), "v1")));
    let err = many.build().unwrap_err();
    assert!(err.to_string().contains("10000 services"), "{err}");
    let files: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(
        !files.iter().any(|f| f.to_string_lossy().ends_with(".pem")),
        "{files:?}"
    );
}

/// A node that stops before its mesh loop has made peers of the members
/// that joined through it still tells them it left: v1 pushed the
/// tombstone only to its peers, so they later found it dead instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_stops_right_after_others_joined_through_it_is_left_for_them() {
    let tmp = tempfile::tempdir().unwrap();
    let manual = || MeshConfig::disabled();
    let seed = builder(tmp.path(), "seed")
        .with_mesh_loop(manual())
        .build()
        .unwrap();
    seed.start_server().await.unwrap();
    let mut joined = Vec::new();
    for id in ["j1", "j2"] {
        let node = builder(tmp.path(), id)
            .with_mesh_loop(manual())
            .build()
            .unwrap();
        node.start_server().await.unwrap();
        node.add_peer(PeerInfo::new("seed", seed.address()).unwrap())
            .unwrap();
        node.sync_topology("seed").await.unwrap();
        joined.push(node);
    }
    // The seed knows both from their pushes, but has no peers yet.
    assert_eq!(seed.topology().node_count(), 3);
    assert!(seed.get_all_peers().is_empty());
    seed.shutdown().await.unwrap();
    for node in &joined {
        assert_eq!(
            node.topology().state_of("seed"),
            Some(NodeState::Left),
            "{} was not told",
            node.id()
        );
    }
    for node in joined {
        node.shutdown().await.unwrap();
    }
}

/// Shutdown is bounded in time whatever the topology holds: v1 pushed to
/// every peer at once (14–55 s with 60,000 entries).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_is_bounded_with_thousands_of_unreachable_members() {
    let tmp = tempfile::tempdir().unwrap();
    // Members that accept TCP and then say nothing: each push would wait
    // for its whole deadline.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_addr = silent.local_addr().unwrap().to_string();
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            held.push(s);
        }
    });
    let node = builder(tmp.path(), "big")
        .with_mesh_loop(MeshConfig::disabled())
        .build()
        .unwrap();
    node.start_server().await.unwrap();
    let members: Vec<aegis::topology::Entry> = (0..5000)
        .map(|i| {
            aegis::topology::Entry::new(
                aegis::NodeInfo::new(format!("m{i}"), "m", silent_addr.clone()).unwrap(),
                aegis::topology::Stamp::new(1, 1),
                NodeState::Alive,
            )
        })
        .collect();
    node.topology().apply(members).unwrap();
    let limit = MeshConfig::default().leave_timeout + Duration::from_secs(8);
    tokio::time::timeout(limit, node.shutdown())
        .await
        .expect("shutdown is bounded")
        .unwrap();
    hold.abort();
}
