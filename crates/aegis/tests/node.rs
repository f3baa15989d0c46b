//! `Node` and `NodeBuilder`: validation, lifecycle, and a mesh that runs itself.

mod support;
use support::{builder, wait_until};

use std::time::{Duration, Instant};

use aegis::{Error, MeshConfig, Node, NodeState, PeerInfo, ServiceInfo};

#[test]
fn build_names_the_missing_or_invalid_field() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let missing = |b: aegis::NodeBuilder| match b.build() {
        Err(Error::MissingField(f)) => f,
        other => panic!("expected MissingField, got {other:?}"),
    };
    assert_eq!(
        missing(Node::builder().with_name("n").with_address("127.0.0.1:0")),
        "id"
    );
    assert_eq!(
        missing(Node::builder().with_id("a").with_address("127.0.0.1:0")),
        "name"
    );
    assert_eq!(
        missing(Node::builder().with_id("a").with_name("n")),
        "address"
    );
    for (b, field) in [
        (builder(d, "a").with_address("no-port"), "address"),
        (builder(d, "a").with_address("host:99999"), "address"),
        (builder(d, "bad/id"), "id"),
        (builder(d, "a").with_name(" "), "name"),
    ] {
        match b.build() {
            Err(Error::InvalidField { field: f, .. }) => assert_eq!(f, field),
            other => panic!("expected InvalidField({field}), got {other:?}"),
        }
    }
    // A TLS failure keeps its cause.
    let err = builder(d, "a")
        .with_tls_options(aegis::TlsOptions::from_files(
            "/nope/c.pem",
            "/nope/k.pem",
            "/nope/ca.pem",
        ))
        .build()
        .unwrap_err();
    assert!(matches!(err, Error::Tls(_)), "{err}");
    assert!(err.to_string().contains("/nope/c.pem"), "{err}");
}

#[test]
fn defaults_and_own_entry_from_build() {
    let tmp = tempfile::tempdir().unwrap();
    let node = builder(tmp.path(), "n1")
        .with_services([ServiceInfo::new("identity", "v1")])
        .build()
        .unwrap();
    assert_eq!(node.node_type(), &aegis::NodeType::GENERIC);
    assert_eq!(node.id().as_str(), "n1");
    let me = node
        .topology()
        .get_node("n1")
        .expect("own entry from build on");
    assert_eq!(me.services, [ServiceInfo::new("identity", "v1")]);
    assert_eq!(
        node.topology()
            .get_service_providers("identity", "v1")
            .len(),
        1
    );
    assert!(!node.is_healthy());
    // The reference default certificate directory is ./certs.
    assert!(format!("{:?}", Node::builder()).contains("NodeBuilder"));
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_and_shutdown_in_a_loop_leaks_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let peer = builder(tmp.path(), "steady").build().unwrap();
    let peer_addr = peer.start_server().await.unwrap();
    let metrics = tokio::runtime::Handle::current().metrics();
    let mut baseline = None;
    for i in 0..200 {
        let node = builder(tmp.path(), "cycling").build().unwrap();
        let addr = node.start_server().await.unwrap();
        assert_ne!(addr.port(), 0);
        assert_eq!(node.address(), addr.to_string());
        node.add_peer(PeerInfo::new("steady", peer_addr.to_string()).unwrap())
            .unwrap();
        node.ping_peer("steady").await.unwrap();
        node.shutdown().await.unwrap();
        node.shutdown().await.unwrap(); // idempotent
        assert!(matches!(node.start_server().await, Err(Error::ShutDown(_))));
        drop(node);
        if i == 20 {
            baseline = Some((open_fds(), metrics.num_alive_tasks()));
        }
    }
    let (fds, tasks) = baseline.unwrap();
    // Connections close asynchronously: poll for the counts to settle.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (now_fds, now_tasks) = (open_fds(), metrics.num_alive_tasks());
        if now_fds <= fds + 4 && now_tasks <= tasks + 4 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "leak: fds {fds} -> {now_fds}, tasks {tasks} -> {now_tasks} after 180 more cycles"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    peer.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mesh_runs_itself_joins_deaths_and_departures() {
    let tmp = tempfile::tempdir().unwrap();
    let n = 6;
    let mut nodes = Vec::new();
    for i in 0..n {
        let node = builder(tmp.path(), &format!("m{i}"))
            .with_services([ServiceInfo::new("svc", "v1")])
            .build()
            .unwrap();
        node.start_server().await.unwrap();
        if i > 0 {
            let seed: &Node = &nodes[0];
            node.add_peer(PeerInfo::new("m0", seed.address()).unwrap())
                .unwrap();
        }
        nodes.push(node);
    }
    let took = wait_until(Duration::from_secs(5), "convergence", || {
        nodes
            .iter()
            .all(|x| x.topology().node_count() == n && x.get_all_peers().len() == n - 1)
    })
    .await;
    println!("{n} nodes from one seed converged in {took:?}");

    // A new node, knowing one seed, is known everywhere within 2 s.
    let newcomer = builder(tmp.path(), "late").build().unwrap();
    newcomer.start_server().await.unwrap();
    newcomer
        .add_peer(PeerInfo::new("m3", nodes[3].address()).unwrap())
        .unwrap();
    let took = wait_until(Duration::from_secs(2), "newcomer known everywhere", || {
        nodes
            .iter()
            .all(|x| x.topology().get_node("late").is_some())
    })
    .await;
    println!("newcomer known everywhere in {took:?}");

    // A killed node (no goodbye) is marked dead everywhere within 5 s, and
    // the pools stop offering it.
    let victim = nodes.remove(2);
    drop(victim);
    let took = wait_until(
        Duration::from_secs(5),
        "killed node dead everywhere",
        || {
            nodes
                .iter()
                .all(|x| x.topology().state_of("m2") == Some(NodeState::Dead))
        },
    )
    .await;
    println!("killed node marked dead everywhere in {took:?}");
    for x in &nodes {
        assert!(
            x.topology()
                .get_service_providers("svc", "v1")
                .iter()
                .all(|p| p.id.as_str() != "m2")
        );
    }

    // It comes back (a restart: new generation) and is alive everywhere again.
    let back = builder(tmp.path(), "m2").build().unwrap();
    back.start_server().await.unwrap();
    back.add_peer(PeerInfo::new("m0", nodes[0].address()).unwrap())
        .unwrap();
    let took = wait_until(
        Duration::from_secs(3),
        "restarted node alive everywhere",
        || {
            nodes
                .iter()
                .all(|x| x.topology().state_of("m2") == Some(NodeState::Alive))
        },
    )
    .await;
    println!("restarted node alive everywhere in {took:?}");

    // A graceful shutdown announces the departure: others drop it at once.
    let leaving = nodes.remove(1);
    leaving.shutdown().await.unwrap();
    let took = wait_until(Duration::from_secs(2), "departure known everywhere", || {
        nodes
            .iter()
            .all(|x| x.topology().state_of("m1") == Some(NodeState::Left))
    })
    .await;
    println!("departure known everywhere in {took:?}");
    for x in nodes.iter().chain([&newcomer, &back]) {
        x.shutdown().await.unwrap();
    }
}

#[tokio::test]
async fn manual_sync_with_the_loop_off() {
    let tmp = tempfile::tempdir().unwrap();
    let a = builder(tmp.path(), "a")
        .with_mesh_loop(MeshConfig::disabled())
        .build()
        .unwrap();
    let b = builder(tmp.path(), "b")
        .with_mesh_loop(MeshConfig::disabled())
        .with_services([ServiceInfo::new("x", "1")])
        .build()
        .unwrap();
    a.start_server().await.unwrap();
    b.start_server().await.unwrap();
    a.add_peer(PeerInfo::new("b", b.address()).unwrap())
        .unwrap();
    assert!(a.topology().get_node("b").is_none());
    a.sync_topology_with_all_peers().await.unwrap();
    assert_eq!(a.topology().get_service_providers("x", "1").len(), 1);
    assert!(
        b.topology().get_node("a").is_some(),
        "push-pull: b learnt a"
    );
    let pong = a.ping_peer("b").await.unwrap();
    assert_eq!(pong.receiver_id, "b");
    a.set_health(aegis::HealthStatus::Unhealthy, "draining", None);
    assert!(!a.is_healthy());
    let h = b.peers().get_peer_health("a").await;
    assert!(h.is_err(), "b has no peer a (the loop is off)");
    let checker =
        aegis::FunctionHealthChecker::new("db", || async { Err("connection refused".into()) });
    let err = a.check_health(&checker).await.unwrap_err();
    assert!(err.to_string().contains("connection refused"), "{err}");
    assert_eq!(a.health().status, aegis::HealthStatus::Unhealthy);
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_few_probes_per_round_a_dead_node_is_still_found() {
    let tmp = tempfile::tempdir().unwrap();
    let config = MeshConfig {
        interval: Duration::from_millis(100),
        max_probes: 1,
        ..MeshConfig::default()
    };
    let mut nodes = Vec::new();
    for i in 0..5 {
        let node = builder(tmp.path(), &format!("f{i}"))
            .with_mesh_loop(config)
            .build()
            .unwrap();
        node.start_server().await.unwrap();
        if i > 0 {
            let seed: &Node = &nodes[0];
            node.add_peer(PeerInfo::new("f0", seed.address()).unwrap())
                .unwrap();
        }
        nodes.push(node);
    }
    wait_until(Duration::from_secs(10), "convergence", || {
        nodes.iter().all(|x| x.get_all_peers().len() == 4)
    })
    .await;
    drop(nodes.remove(3));
    let took = wait_until(
        Duration::from_secs(15),
        "dead everywhere with one probe a round",
        || {
            nodes
                .iter()
                .all(|x| x.topology().state_of("f3") == Some(NodeState::Dead))
        },
    )
    .await;
    println!("one probe per round: dead everywhere in {took:?}");
    for x in &nodes {
        x.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unhealthy_provider_is_not_preferred_elsewhere() {
    let tmp = tempfile::tempdir().unwrap();
    let svc = || [ServiceInfo::new("svc", "v1")];
    let a = builder(tmp.path(), "pa")
        .with_services(svc())
        .build()
        .unwrap();
    let b = builder(tmp.path(), "pb")
        .with_services(svc())
        .build()
        .unwrap();
    let c = builder(tmp.path(), "consumer").build().unwrap();
    for n in [&a, &b, &c] {
        n.start_server().await.unwrap();
    }
    b.add_peer(PeerInfo::new("pa", a.address()).unwrap())
        .unwrap();
    c.add_peer(PeerInfo::new("pa", a.address()).unwrap())
        .unwrap();
    let preferred = |n: &Node| -> Vec<String> {
        n.topology()
            .get_preferred_providers("svc", "v1")
            .iter()
            .map(|p| p.id.to_string())
            .collect()
    };
    wait_until(Duration::from_secs(5), "both providers preferred", || {
        preferred(&c) == ["pa", "pb"]
    })
    .await;
    a.set_health(aegis::HealthStatus::Unhealthy, "draining", None);
    assert_eq!(
        a.topology().get_node("pa").unwrap().health,
        aegis::HealthStatus::Unhealthy
    );
    let took = wait_until(
        Duration::from_secs(3),
        "unhealthy provider not preferred",
        || preferred(&c) == ["pb"],
    )
    .await;
    println!("an unhealthy report reached the consumer in {took:?}");
    // It is still a provider, for when nothing better is left.
    assert_eq!(c.topology().get_service_providers("svc", "v1").len(), 2);
    a.set_health(aegis::HealthStatus::Healthy, "back", None);
    wait_until(Duration::from_secs(3), "healthy again", || {
        preferred(&c) == ["pa", "pb"]
    })
    .await;
    for n in [&a, &b, &c] {
        n.shutdown().await.unwrap();
    }
}
