//! A mesh of real `aegis-node` processes on 127.0.0.1, joined through one
//! seed, called through the pool from a fourth node in this process.

mod support;

use std::process::{Child, Command};
use std::time::{Duration, Instant};

use aegis::peer::proto::mesh::GetTopologyRequest;
use aegis::services::identity::ValidateSessionRequest;
use aegis::services::identity::identity_service_client::IdentityServiceClient;
use aegis::{Node, PeerInfo, ServiceClient};
use support::{Proc, spawn};

fn signal(child: &Child, sig: &str) {
    let status = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// Three `aegis-node` processes joined through the first, and an in-process
/// node `me` that knows only the first.
async fn mesh_of_three(
    dir: &std::path::Path,
    ids: [&str; 3],
    services: &[&str],
    me: &str,
) -> (Vec<Proc>, Node) {
    let d = dir.to_str().unwrap();
    let args = |id: &str| {
        let mut a: Vec<String> = [
            "--id",
            id,
            "--name",
            id,
            "--address",
            "127.0.0.1:0",
            "--cert-dir",
            d,
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        for s in services {
            a.extend(["--service".to_owned(), (*s).to_owned()]);
        }
        a
    };
    let seed = spawn(&args(ids[0]));
    let peer = format!("{}@{}", ids[0], seed.address);
    let seed_address = seed.address.clone();
    let mut procs = vec![seed];
    for id in &ids[1..] {
        let mut a = args(id);
        a.extend(["--peer".to_owned(), peer.clone()]);
        procs.push(spawn(&a));
    }
    let node = Node::builder()
        .with_id(me)
        .with_name(me)
        .with_address("127.0.0.1:0")
        .with_cert_dir(dir)
        .build()
        .unwrap();
    node.start_server().await.unwrap();
    node.add_peer(PeerInfo::new(ids[0], seed_address).unwrap())
        .unwrap();
    (procs, node)
}

async fn wait_until(limit: Duration, what: &str, mut f: impl AsyncFnMut() -> bool) {
    let start = Instant::now();
    while !f().await {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_processes_and_a_consumer() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut procs, consumer) =
        mesh_of_three(tmp.path(), ["p1", "p2", "p3"], &["identity/v1"], "consumer").await;

    // Convergence, as every process sees it.
    wait_until(Duration::from_secs(15), "mesh converged", async || {
        if consumer
            .topology()
            .get_service_providers("identity", "v1")
            .len()
            != 3
        {
            return false;
        }
        for id in ["p1", "p2", "p3"] {
            let Some(p) = consumer.get_peer(id) else {
                return false;
            };
            let Ok(mut client) = p.client() else {
                return false;
            };
            match client
                .get_topology(GetTopologyRequest {
                    sender_id: "consumer".into(),
                })
                .await
            {
                Ok(r) if r.get_ref().nodes.len() == 4 => {}
                _ => return false,
            }
        }
        true
    })
    .await;

    let pool = consumer.client_pool();
    let identity = ServiceClient::new(&pool, "identity", "v1", IdentityServiceClient::new);
    let call = async || -> bool {
        match identity.get().await {
            Ok(mut c) => c
                .validate_session(ValidateSessionRequest {
                    token: "token-alice".into(),
                })
                .await
                .is_ok_and(|r| r.get_ref().valid && r.get_ref().user_id == "alice"),
            Err(_) => false,
        }
    };
    for _ in 0..30 {
        assert!(call().await, "call through the pool failed");
    }

    // Kill a provider outright; calls keep succeeding on the others.
    let victim = procs.remove(1);
    signal(&victim.child, "-KILL");
    drop(victim);
    let mut failed = 0;
    for _ in 0..20 {
        failed += usize::from(!call().await);
    }
    assert!(failed <= 3, "{failed} of 20 calls failed after the kill");
    for _ in 0..20 {
        assert!(
            call().await,
            "a call failed once the dead provider was set aside"
        );
    }

    // The others stop gracefully on SIGTERM.
    for mut p in procs {
        signal(&p.child, "-TERM");
        let deadline = Instant::now() + Duration::from_secs(15);
        let status = loop {
            if let Some(s) = p.child.try_wait().unwrap() {
                break s;
            }
            assert!(Instant::now() < deadline, "node did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(status.success(), "{status}");
    }
    consumer.shutdown().await.unwrap();
}

/// A node frozen with SIGSTOP is cut off both ways, like a partitioned (or
/// stalled) node: the others mark it dead. Thawed with SIGCONT, it learns
/// of the claim, refutes it, and the mesh agrees again within 3 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_node_is_marked_dead_and_the_mesh_heals() {
    use aegis::peer::proto::mesh::NodeState as WireState;

    let tmp = tempfile::tempdir().unwrap();
    let (procs, observer) = mesh_of_three(tmp.path(), ["q1", "q2", "q3"], &[], "observer").await;

    // How node `asker` sees node `about`: its state, if it lists it.
    async fn seen_by(observer: &Node, asker: &str, about: &str) -> Option<i32> {
        let mut client = observer.get_peer(asker)?.client().ok()?;
        let r = client
            .get_topology(GetTopologyRequest {
                sender_id: "observer".into(),
            })
            .await
            .ok()?;
        r.get_ref()
            .nodes
            .iter()
            .find(|n| n.id == about)
            .map(|n| n.state)
    }
    wait_until(Duration::from_secs(15), "mesh converged", async || {
        observer.topology().node_count() == 4
            && seen_by(&observer, "q1", "q3").await.is_some()
            && seen_by(&observer, "q2", "q3").await.is_some()
    })
    .await;

    let frozen = &procs[2];
    signal(&frozen.child, "-STOP");
    let cut = Instant::now();
    wait_until(
        Duration::from_secs(5),
        "frozen node marked dead",
        async || {
            observer.topology().state_of("q3") == Some(aegis::NodeState::Dead)
                && seen_by(&observer, "q1", "q3").await.is_none()
                && seen_by(&observer, "q2", "q3").await.is_none()
        },
    )
    .await;
    println!("partitioned node marked dead in {:?}", cut.elapsed());

    signal(&frozen.child, "-CONT");
    let healed = Instant::now();
    wait_until(Duration::from_secs(3), "partition healed", async || {
        observer.topology().state_of("q3") == Some(aegis::NodeState::Alive)
            && seen_by(&observer, "q1", "q3").await == Some(WireState::Alive as i32)
            && seen_by(&observer, "q2", "q3").await == Some(WireState::Alive as i32)
            && seen_by(&observer, "q3", "q3").await == Some(WireState::Alive as i32)
    })
    .await;
    println!("partition healed in {:?}", healed.elapsed());
    observer.shutdown().await.unwrap();
    drop(procs);
}

#[test]
fn bad_flags_get_usage_and_a_nonzero_exit() {
    for args in [
        &["--bogus"][..],
        &["--service", "noslash"],
        &["--peer", "nope"],
        &["--id"],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_aegis-node"))
            .args(args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("usage: aegis node"),
            "{args:?}"
        );
    }
    // Missing required fields: a clear error naming the field.
    let out = Command::new(env!("CARGO_BIN_EXE_aegis-node"))
        .args(["--id", "x"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("name is required"));
}
