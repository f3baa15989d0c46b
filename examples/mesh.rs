//! N nodes in one process: convergence, a provider killed, calls moving.
//!
//! `cargo run --example mesh -- [N]` (default 5; node-0 consumes, the
//! others provide identity v1).

use std::time::{Duration, Instant};

use aegis::services::identity::ValidateSessionRequest;
use aegis::services::identity::identity_service_client::IdentityServiceClient;
use aegis::services::identity::identity_service_server::IdentityServiceServer;
use aegis::{Node, NodeState, PeerInfo, ServiceClient, ServiceInfo};
use aegis_examples::ToyIdentity;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(5)
        .max(3);
    let certs = std::env::temp_dir().join(format!("aegis-mesh-{}", std::process::id()));
    let result = run(n, &certs).await;
    let _ = std::fs::remove_dir_all(&certs);
    result
}

async fn run(n: usize, certs: &std::path::Path) -> Result<(), Box<dyn std::error::Error>> {
    let mut nodes = Vec::new();
    let mut services = Vec::new();
    for i in 0..n {
        let id = format!("node-{i}");
        let identity = ToyIdentity::new(&id);
        let mut b = Node::builder()
            .with_id(&id)
            .with_name(&id)
            .with_address("127.0.0.1:0")
            .with_cert_dir(certs);
        if i > 0 {
            let svc = identity.clone();
            b = b
                .with_services([ServiceInfo::new("identity", "v1")])
                .with_service_registration(move |r| {
                    r.add_service(IdentityServiceServer::new(svc.clone()));
                });
        }
        let node = b.build()?;
        node.start_server().await?;
        if i > 0 {
            // Every node knows only node-0, the seed.
            let seed: &Node = &nodes[0];
            node.add_peer(PeerInfo::new("node-0", seed.address())?)?;
        }
        nodes.push(node);
        services.push(identity);
    }

    let start = Instant::now();
    wait(Duration::from_secs(10), || {
        nodes.iter().all(|x| x.topology().node_count() == n)
    })
    .await?;
    println!("step 1: {n} nodes converged in {:?}", start.elapsed());
    table(&nodes);

    let pool = nodes[0].client_pool();
    let client = ServiceClient::new(&pool, "identity", "v1", IdentityServiceClient::new);
    let calls = |count: usize| {
        let client = client.clone();
        async move {
            let mut failed = 0;
            for _ in 0..count {
                let ok = match client.get().await {
                    Ok(mut c) => c
                        .validate_session(ValidateSessionRequest {
                            token: "token-bob".into(),
                        })
                        .await
                        .is_ok(),
                    Err(_) => false,
                };
                failed += usize::from(!ok);
            }
            failed
        }
    };
    let failed = calls(10 * (n - 1)).await;
    println!(
        "step 2: {} calls, {failed} failed; calls per provider:",
        10 * (n - 1)
    );
    counts(&services);

    let victim = nodes.remove(1);
    let victim_id = victim.id().to_string();
    drop(victim); // killed: no goodbye, its server stops at once
    let start = Instant::now();
    wait(Duration::from_secs(10), || {
        nodes
            .iter()
            .all(|x| x.topology().state_of(&victim_id) == Some(NodeState::Dead))
    })
    .await?;
    println!(
        "step 3: {victim_id} killed; marked dead everywhere in {:?}",
        start.elapsed()
    );
    table(&nodes);
    let before: Vec<usize> = services
        .iter()
        .map(|s| s.calls.load(std::sync::atomic::Ordering::Relaxed))
        .collect();
    let failed = calls(10 * (n - 2)).await;
    println!(
        "step 4: {} more calls, {failed} failed; new calls per provider:",
        10 * (n - 2)
    );
    for (s, b) in services.iter().zip(before) {
        if s.node_id() != "node-0" {
            println!(
                "  {:<8} {:>4}",
                s.node_id(),
                s.calls.load(std::sync::atomic::Ordering::Relaxed) - b
            );
        }
    }
    for node in &nodes {
        node.shutdown().await?;
    }
    println!("done");
    Ok(())
}

async fn wait(
    limit: Duration,
    mut f: impl FnMut() -> bool,
) -> Result<(), Box<dyn std::error::Error>> {
    let end = Instant::now() + limit;
    while !f() {
        if Instant::now() > end {
            return Err(format!("not reached within {limit:?}").into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

fn table(nodes: &[Node]) {
    println!("  {:<8} {:>6} {:>8}", "node", "knows", "dead");
    for node in nodes {
        let dead = node
            .topology()
            .entries()
            .iter()
            .filter(|e| e.state == NodeState::Dead)
            .count();
        println!(
            "  {:<8} {:>6} {:>8}",
            node.id(),
            node.topology().node_count(),
            dead
        );
    }
}

fn counts(services: &[ToyIdentity]) {
    for s in services.iter().filter(|s| s.node_id() != "node-0") {
        println!(
            "  {:<8} {:>4}",
            s.node_id(),
            s.calls.load(std::sync::atomic::Ordering::Relaxed)
        );
    }
}
