//! A user's own gRPC service on aegis: declared and served in one step,
//! health per service, joining through an address alone, per-request
//! balancing with failover.

mod support;

use std::time::Duration;

use aegis::peer::proto::testing::echo_client::EchoClient;
use aegis::peer::proto::testing::echo_server::{Echo, EchoServer};
use aegis::peer::proto::testing::{SlowRequest, WhoAmIRequest, WhoAmIResponse};
use aegis::tonic::{Request, Response, Status};
use aegis::{HealthStatus, MeshConfig, NodeState, ServiceInfo};
use support::builder;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// Answers with the provider's own ID.
#[derive(Clone)]
struct Named(String);

#[aegis::tonic::async_trait]
impl Echo for Named {
    async fn who_am_i(
        &self,
        _: Request<WhoAmIRequest>,
    ) -> Result<Response<WhoAmIResponse>, Status> {
        Ok(Response::new(WhoAmIResponse {
            caller_id: self.0.clone(),
        }))
    }

    async fn slow(&self, _: Request<SlowRequest>) -> Result<Response<WhoAmIResponse>, Status> {
        Err(Status::unimplemented("not here"))
    }
}

fn echo_v1() -> ServiceInfo {
    ServiceInfo::new("echo", "v1")
}

const ECHO: &str = "aegis.testing.Echo";

async fn serving(node: &aegis::Node, address: &str, service: &str) -> ServingStatus {
    let channel = aegis::peer::transport::mtls_channel(
        node.tls_config(),
        &aegis::NodeId::new("p1").unwrap(),
        address,
        &Default::default(),
    )
    .unwrap();
    let answer = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await
        .unwrap();
    answer.into_inner().status()
}

/// Declared (the topology lists it), served (a call answers), and reported
/// in grpc.health.v1 under its gRPC name, per service.
#[tokio::test]
async fn a_grpc_service_is_declared_served_and_reported_in_one_step() {
    let dir = tempfile::tempdir().unwrap();
    let provider = builder(dir.path(), "p1")
        .with_grpc_service(echo_v1(), EchoServer::new(Named("p1".into())))
        .build()
        .unwrap();
    assert_eq!(provider.services(), [echo_v1()]);
    let address = provider.start_server().await.unwrap().to_string();
    assert!(
        provider
            .topology()
            .get_node("p1")
            .unwrap()
            .provides("echo", "v1")
    );
    let consumer = builder(dir.path(), "c1").build().unwrap();
    consumer.start_server().await.unwrap();
    assert_eq!(consumer.join(&address).await.unwrap().as_str(), "p1");
    let found = consumer
        .wait_for_providers("echo", "v1", 1, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(found.len(), 1);
    let mut echo = EchoClient::new(consumer.client_pool().balanced("echo", "v1"));
    let answer = echo.who_am_i(WhoAmIRequest {}).await.unwrap();
    assert_eq!(answer.into_inner().caller_id, "p1");

    assert_eq!(
        serving(&consumer, &address, ECHO).await,
        ServingStatus::Serving
    );
    provider.set_service_health(ECHO, HealthStatus::Unhealthy);
    support::wait_until_async(Duration::from_secs(5), "echo not serving", async || {
        serving(&consumer, &address, ECHO).await == ServingStatus::NotServing
    })
    .await;
    // The node as a whole is still serving.
    assert_eq!(
        serving(&consumer, &address, "").await,
        ServingStatus::Serving
    );
    provider.set_service_health(ECHO, HealthStatus::Healthy);
    // A node that is unhealthy as a whole serves none of its services.
    provider.set_health(HealthStatus::Unhealthy, "draining", None);
    support::wait_until_async(
        Duration::from_secs(5),
        "echo follows the node",
        async || serving(&consumer, &address, ECHO).await == ServingStatus::NotServing,
    )
    .await;
    consumer.shutdown().await.unwrap();
    provider.shutdown().await.unwrap();
}

/// `with_seed` joins through an address alone; a seed whose certificate
/// comes from another CA is refused, saying so.
#[tokio::test]
async fn a_node_joins_through_an_address_and_refuses_a_foreign_seed() {
    let dir = tempfile::tempdir().unwrap();
    let seed = builder(dir.path(), "s1").build().unwrap();
    let seed_address = seed.start_server().await.unwrap().to_string();
    let joiner = builder(dir.path(), "j1")
        .with_seed(&seed_address)
        .build()
        .unwrap();
    joiner.start_server().await.unwrap();
    support::wait_until(Duration::from_secs(10), "joined through the seed", || {
        joiner.topology().get_node("s1").is_some() && seed.topology().get_node("j1").is_some()
    })
    .await;

    let other_ca = tempfile::tempdir().unwrap();
    let stranger = builder(other_ca.path(), "x1").build().unwrap();
    let stranger_address = stranger.start_server().await.unwrap().to_string();
    let err = joiner
        .join(&stranger_address)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains(&stranger_address), "{err}");
    assert!(err.contains("not from this mesh's CA"), "{err}");
    assert!(joiner.topology().get_node("x1").is_none());
    // Nothing listens: said plainly.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    let err = joiner.join(&closed).await.unwrap_err().to_string();
    assert!(err.contains("nothing answers there"), "{err}");
    // Not an address at all: the field is named.
    let err = joiner.join("nope").await.unwrap_err().to_string();
    assert!(err.contains("seed"), "{err}");
    for n in [joiner, seed, stranger] {
        n.shutdown().await.unwrap();
    }
}

/// One balanced client: calls go to every provider in turn; a provider
/// that cannot be reached fails the call that picked it, naming it —
/// unless retries are on, when the call goes to the next provider.
#[tokio::test]
async fn a_balanced_channel_fails_over_only_with_retries() {
    let dir = tempfile::tempdir().unwrap();
    let live = builder(dir.path(), "b-live")
        .with_grpc_service(echo_v1(), EchoServer::new(Named("b-live".into())))
        .build()
        .unwrap();
    let live_address = live.start_server().await.unwrap().to_string();
    // A provider entry whose address refuses connections (the node is
    // gone, and nobody has noticed yet: the consumer runs no mesh loop).
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    let dead = aegis::topology::Entry::new(
        aegis::NodeInfo::new("a-dead", "a-dead", closed.clone())
            .unwrap()
            .with_services([echo_v1()]),
        aegis::topology::Stamp::new(1, 1),
        NodeState::Alive,
    );
    for retries in [0, 1] {
        let consumer = builder(dir.path(), &format!("c{retries}"))
            .with_mesh_loop(MeshConfig::disabled())
            .build()
            .unwrap();
        consumer.join(&live_address).await.unwrap();
        consumer.topology().apply(vec![dead.clone()]).unwrap();
        let channel = consumer
            .client_pool()
            .balanced("echo", "v1")
            .with_retries(retries);
        let mut echo = EchoClient::new(channel);
        let mut failures = Vec::new();
        for _ in 0..4 {
            match echo.who_am_i(WhoAmIRequest {}).await {
                Ok(r) => assert_eq!(r.into_inner().caller_id, "b-live"),
                Err(status) => failures.push(status),
            }
        }
        if retries == 0 {
            // The dead provider's turn fails once; then it is set aside.
            assert_eq!(failures.len(), 1, "{failures:?}");
            let status = &failures[0];
            assert_eq!(status.code(), aegis::tonic::Code::Unavailable);
            assert!(
                status
                    .message()
                    .starts_with(&format!("echo v1: provider a-dead at {closed}: ")),
                "{}",
                status.message()
            );
        } else {
            assert!(failures.is_empty(), "{failures:?}");
        }
        consumer.shutdown().await.unwrap();
    }
    live.shutdown().await.unwrap();
}

/// Binding every interface needs an address others can dial; given one,
/// the node advertises it (with the bound port for port 0) and is reached
/// there.
#[tokio::test]
async fn a_node_bound_to_every_interface_advertises_what_others_can_dial() {
    let dir = tempfile::tempdir().unwrap();
    let err = builder(dir.path(), "w1")
        .with_address("0.0.0.0:7000")
        .build()
        .unwrap_err()
        .to_string();
    assert!(err.contains("with_advertise_address"), "{err}");
    assert!(err.contains("HOST:7000"), "{err}");
    let err = builder(dir.path(), "w1")
        .with_advertise_address("[::]:7000")
        .build()
        .unwrap_err()
        .to_string();
    assert!(err.contains("advertise address"), "{err}");

    let wide = builder(dir.path(), "w1")
        .with_address("0.0.0.0:0")
        .with_advertise_address("127.0.0.1:0")
        .build()
        .unwrap();
    let bound = wide.start_server().await.unwrap();
    assert_eq!(wide.address(), format!("127.0.0.1:{}", bound.port()));
    let other = builder(dir.path(), "w2").build().unwrap();
    other.start_server().await.unwrap();
    assert_eq!(other.join(&wide.address()).await.unwrap().as_str(), "w1");
    assert_eq!(
        other.topology().get_node("w1").unwrap().address,
        wide.address()
    );
    other.shutdown().await.unwrap();
    wide.shutdown().await.unwrap();
}

/// Errors say what was wrong with what the user typed.
#[test]
fn mistyped_peers_and_addresses_are_named_plainly() {
    let err = aegis::PeerInfo::new("Bad Id!", "127.0.0.1:1")
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("invalid peer ID \"Bad Id!\""), "{err}");
    let err = aegis::PeerInfo::new("node-1", "http://127.0.0.1:7101")
        .unwrap_err()
        .to_string();
    assert!(err.contains("without a scheme"), "{err}");
    assert!(!err.contains("IPv6"), "{err}");
}

/// A client-only node runs the mesh loop without a server: it joins by
/// address, its view stays current and its calls work, while the others
/// neither dial nor probe it (its entry advertises port 0).
#[tokio::test]
async fn a_client_only_node_follows_the_mesh_and_is_never_dialled() {
    let dir = tempfile::tempdir().unwrap();
    let provider = builder(dir.path(), "p1")
        .with_grpc_service(echo_v1(), EchoServer::new(Named("p1".into())))
        .build()
        .unwrap();
    let address = provider.start_server().await.unwrap().to_string();
    let client = builder(dir.path(), "client")
        .with_address("127.0.0.1:7999")
        .with_seed(&address)
        .build()
        .unwrap();
    client.start_client().await.unwrap();
    assert_eq!(client.address(), "127.0.0.1:0", "client-only: port 0");
    client
        .wait_for_providers("echo", "v1", 1, Duration::from_secs(10))
        .await
        .unwrap();
    let mut echo = EchoClient::new(client.client_pool().balanced("echo", "v1"));
    assert_eq!(
        echo.who_am_i(WhoAmIRequest {})
            .await
            .unwrap()
            .into_inner()
            .caller_id,
        "p1"
    );
    support::wait_until(
        Duration::from_secs(10),
        "the provider knows the client",
        || provider.topology().get_node("client").is_some(),
    )
    .await;
    // Over many of the provider's rounds it never makes a peer of it, and
    // never finds it dead.
    let watch = std::time::Instant::now();
    while watch.elapsed() < Duration::from_millis(1500) {
        assert!(provider.get_peer("client").is_none());
        assert_eq!(
            provider.topology().state_of("client"),
            Some(NodeState::Alive)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A second provider appears: the client's view follows by itself.
    let second = builder(dir.path(), "p2")
        .with_grpc_service(echo_v1(), EchoServer::new(Named("p2".into())))
        .with_seed(&address)
        .build()
        .unwrap();
    second.start_server().await.unwrap();
    client
        .wait_for_providers("echo", "v1", 2, Duration::from_secs(10))
        .await
        .unwrap();
    for n in [client, second, provider] {
        n.shutdown().await.unwrap();
    }
}

/// A client-only node cannot be probed: it renews its entry instead, and
/// once it crashes (dropped without `shutdown`: no leave is announced) the
/// provider marks it dead when its lease runs out. It used to stay alive
/// in every view for ever.
#[tokio::test]
async fn a_crashed_client_only_node_is_found_dead_by_its_lease() {
    let dir = tempfile::tempdir().unwrap();
    let mesh = MeshConfig {
        client_lease: Duration::from_secs(3),
        ..MeshConfig::default()
    };
    let provider = builder(dir.path(), "p1")
        .with_mesh_loop(mesh)
        .build()
        .unwrap();
    let address = provider.start_server().await.unwrap().to_string();
    let client = builder(dir.path(), "client")
        .with_mesh_loop(mesh)
        .with_seed(&address)
        .build()
        .unwrap();
    client.start_client().await.unwrap();
    support::wait_until(
        Duration::from_secs(10),
        "the provider knows the client",
        || provider.topology().get_node("client").is_some(),
    )
    .await;
    let first = provider.topology().get_entry("client").unwrap().stamp;
    // Renewals (a new stamp every second) reach the provider.
    support::wait_until(Duration::from_secs(20), "two renewals arrive", || {
        provider
            .topology()
            .get_entry("client")
            .is_some_and(|e| e.stamp.version >= first.version + 2)
    })
    .await;
    assert_eq!(
        provider.topology().state_of("client"),
        Some(NodeState::Alive)
    );
    drop(client);
    let took = support::wait_until(Duration::from_secs(30), "the client found dead", || {
        provider.topology().state_of("client") == Some(NodeState::Dead)
    })
    .await;
    println!("a crashed client-only node was dead after {took:?} (lease 3 s)");
    provider.shutdown().await.unwrap();
}

/// A certificate directory without a CA (a typo in its path) is refused
/// when the node requires an existing CA, naming the missing file; nothing
/// is written.
#[test]
fn a_node_can_refuse_to_start_a_mesh_of_its_own() {
    let tmp = tempfile::tempdir().unwrap();
    let typo = tmp.path().join("certz");
    let err = builder(&typo, "n1")
        .require_existing_ca(true)
        .build()
        .unwrap_err()
        .to_string();
    assert!(err.contains("ca-cert.pem"), "{err}");
    assert!(err.contains("require_existing_ca"), "{err}");
    assert!(!typo.join("n1-key.pem").exists());
    // Without the option the CA is created (and announced in a warning).
    builder(&typo, "n1").build().unwrap();
    assert!(typo.join("ca-cert.pem").exists());
    builder(&typo, "n2")
        .require_existing_ca(true)
        .build()
        .unwrap();
}

/// A server-wide layer wraps every service of a node, the mesh protocol
/// and health as well as the user's, and knows the calling node: here it
/// admits only nodes named `friend-*` and records what it let through.
#[tokio::test]
async fn a_layer_wraps_every_service_and_knows_the_caller() {
    use std::sync::{Arc, Mutex};

    let dir = tempfile::tempdir().unwrap();
    let admitted: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let log = Arc::clone(&admitted);
    let friends_only = aegis::RoutesLayer::new(axum::middleware::from_fn(
        move |request: axum::extract::Request, next: axum::middleware::Next| {
            let log = Arc::clone(&log);
            async move {
                let caller = match aegis::caller_from_extensions(request.extensions()) {
                    Ok(caller) => caller.node_id.to_string(),
                    Err(e) => return Status::unauthenticated(e.to_string()).into_http(),
                };
                if !caller.starts_with("friend-") {
                    return Status::permission_denied(format!("{caller} is no friend")).into_http();
                }
                let path = request.uri().path().to_owned();
                log.lock().unwrap().push((caller, path));
                next.run(request).await
            }
        },
    ));
    // A second layer, added later, wraps the first: it sees the refused
    // calls too.
    let seen = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = Arc::clone(&seen);
    let counting = aegis::RoutesLayer::new(axum::middleware::from_fn(
        move |request: axum::extract::Request, next: axum::middleware::Next| {
            counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            async move { next.run(request).await }
        },
    ));
    let provider = builder(dir.path(), "p1")
        .with_grpc_service(echo_v1(), EchoServer::new(Named("p1".into())))
        .with_layer(friends_only)
        .with_layer(counting)
        .build()
        .unwrap();
    let address = provider.start_server().await.unwrap().to_string();

    // A friend joins (the mesh protocol passes the layer) and calls the
    // user's service.
    let friend = builder(dir.path(), "friend-1").build().unwrap();
    friend.start_server().await.unwrap();
    assert_eq!(friend.join(&address).await.unwrap().as_str(), "p1");
    let mut echo = EchoClient::new(friend.client_pool().balanced("echo", "v1"));
    friend
        .wait_for_providers("echo", "v1", 1, Duration::from_secs(5))
        .await
        .unwrap();
    let answer = echo.who_am_i(WhoAmIRequest {}).await.unwrap();
    assert_eq!(answer.into_inner().caller_id, "p1");
    {
        let admitted = admitted.lock().unwrap();
        assert!(
            admitted
                .iter()
                .any(|(c, p)| c == "friend-1" && p == "/aegis.testing.Echo/WhoAmI"),
            "{admitted:?}"
        );
        assert!(
            admitted
                .iter()
                .any(|(c, p)| c == "friend-1" && p.starts_with("/aegis.MeshService/")),
            "{admitted:?}"
        );
        assert!(
            admitted.iter().all(|(c, _)| c == "friend-1"),
            "{admitted:?}"
        );
    }

    // Another node of the same mesh is refused on every service, with the
    // layer's own status.
    let stranger = builder(dir.path(), "x1").build().unwrap();
    stranger.start_server().await.unwrap();
    let err = stranger.join(&address).await.unwrap_err().to_string();
    assert!(err.contains("x1 is no friend"), "{err}");
    let channel = aegis::peer::transport::mtls_channel(
        stranger.tls_config(),
        &aegis::NodeId::new("p1").unwrap(),
        &address,
        &Default::default(),
    )
    .unwrap();
    let status = EchoClient::new(channel.clone())
        .who_am_i(WhoAmIRequest {})
        .await
        .unwrap_err();
    assert_eq!(status.code(), aegis::tonic::Code::PermissionDenied);
    assert_eq!(status.message(), "x1 is no friend");
    let status = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), aegis::tonic::Code::PermissionDenied);
    assert!(stranger.topology().get_node("p1").is_none());
    assert!(provider.topology().get_node("x1").is_none());
    // The outer layer counted the refused calls as well as the admitted.
    let admitted_count = admitted.lock().unwrap().len();
    assert!(
        seen.load(std::sync::atomic::Ordering::Relaxed) >= admitted_count + 3,
        "counted {} calls, admitted {admitted_count}",
        seen.load(std::sync::atomic::Ordering::Relaxed)
    );
    for n in [stranger, friend, provider] {
        n.shutdown().await.unwrap();
    }
}
