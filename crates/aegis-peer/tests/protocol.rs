//! The mesh calls between real nodes over mutual TLS on 127.0.0.1.

mod support;

use std::time::Duration;

use aegis_peer::proto::mesh::mesh_service_client::MeshServiceClient;
use aegis_peer::proto::mesh::{GetTopologyRequest, TopologySyncRequest};
use aegis_peer::transport::{ChannelOptions, mtls_channel};
use aegis_peer::{HealthStatus, PeerError, PeerInfo, PeerManager};
use aegis_topology::{NodeId, NodeType, Topology};
use support::{Mesh, start_node};

#[tokio::test]
async fn ping_health_and_node_info() {
    let mesh = Mesh::new();
    let a = start_node(&mesh, "node-a").await;
    let b = start_node(&mesh, "node-b").await;
    a.add_peer(&b);
    assert!(
        !a.peers.is_connected("node-b"),
        "no connection before first use"
    );

    let pong = a.peers.ping_peer("node-b").await.unwrap();
    assert_eq!(pong.receiver_id, "node-b");
    assert!(pong.success);
    assert!(pong.latency > Duration::ZERO && pong.latency < Duration::from_secs(5));
    assert!(a.peers.is_connected("node-b"));

    let h = a.peers.get_peer_health("node-b").await.unwrap();
    assert_eq!(
        (h.node_id.as_str(), h.health.status),
        ("node-b", HealthStatus::Unknown)
    );
    b.health
        .set(HealthStatus::Unhealthy, "disk full", Some("ENOSPC".into()));
    let h = a.peers.get_peer_health("node-b").await.unwrap();
    assert_eq!(h.health.status, HealthStatus::Unhealthy);
    assert_eq!(h.health.message, "disk full");
    assert_eq!(h.health.error.as_deref(), Some("ENOSPC"));

    let info = a.peers.get_peer_node_info("node-b").await.unwrap();
    assert_eq!(info.id, "node-b");
    assert_eq!(info.name, "node-b-name");
    assert_eq!(info.node_type, NodeType::GENERIC);
    assert_eq!(info.address, b.address());
    assert_eq!(info.health.unwrap().health.status, HealthStatus::Unhealthy);
}

#[tokio::test]
async fn peer_manager_bookkeeping() {
    let mesh = Mesh::new();
    let tls = mesh.tls("me");
    let peers = PeerManager::new(tls.node_id().clone(), Some(tls), Topology::new());
    peers
        .add_peer(PeerInfo::new("p2", "127.0.0.1:1").unwrap())
        .unwrap();
    peers
        .add_peer(
            PeerInfo::new("p1", "127.0.0.1:2")
                .unwrap()
                .with_type("edge"),
        )
        .unwrap();
    let again = peers.add_peer(PeerInfo::new("p1", "127.0.0.1:3").unwrap());
    assert!(matches!(again, Err(PeerError::AlreadyExists(id)) if id == "p1"));
    assert_eq!(peers.count(), 2);
    let ids: Vec<_> = peers
        .get_all_peers()
        .iter()
        .map(|p| p.id().to_string())
        .collect();
    assert_eq!(ids, ["p1", "p2"]);
    assert_eq!(peers.get_peers_by_type(&NodeType::new("edge")).len(), 1);
    assert_eq!(peers.get_peer("p2").unwrap().info().address, "127.0.0.1:1");
    peers.remove_peer("p2").unwrap();
    assert!(matches!(
        peers.remove_peer("p2"),
        Err(PeerError::NotFound(_))
    ));
    assert!(matches!(
        peers.ping_peer("nobody").await,
        Err(PeerError::NotFound(_))
    ));
    peers.close();
    assert_eq!(peers.count(), 0);
    assert!(matches!(
        peers.add_peer(PeerInfo::new("p3", "127.0.0.1:4").unwrap()),
        Err(PeerError::Closed)
    ));

    let no_tls = PeerManager::new(
        NodeId::new("x").unwrap(),
        None::<aegis_tls::TlsConfig>,
        Topology::new(),
    );
    assert!(matches!(
        no_tls.add_peer(PeerInfo::new("p", "127.0.0.1:1").unwrap()),
        Err(PeerError::NoTlsConfig)
    ));
    assert!(matches!(
        PeerInfo::new("p", "no-port"),
        Err(PeerError::InvalidAddress { .. })
    ));
    // A bad ID is a bad ID, not a bad address.
    assert!(matches!(
        PeerInfo::new("bad id", "h:1"),
        Err(PeerError::InvalidPeerId { .. })
    ));
}

#[tokio::test]
async fn a_refused_connection_is_an_error_naming_the_peer() {
    let mesh = Mesh::new();
    let tls = mesh.tls("me");
    // A port nothing listens on: bind one, note it, close it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let peers = PeerManager::new(tls.node_id().clone(), Some(tls), Topology::new());
    peers
        .add_peer(PeerInfo::new("gone", format!("127.0.0.1:{port}")).unwrap())
        .unwrap();
    let err = peers.ping_peer("gone").await.unwrap_err();
    assert!(err.to_string().contains("gone"), "{err}");
    assert_eq!(err.code(), Some(tonic::Code::Unavailable), "{err}");
    assert!(!peers.is_connected("gone"));
}

#[tokio::test]
async fn a_silent_peer_times_out_instead_of_hanging() {
    let mesh = Mesh::new();
    let tls = mesh.tls("me");
    // Accepts TCP and never answers, not even the TLS handshake.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    let peers = PeerManager::new(tls.node_id().clone(), Some(tls), Topology::new()).with_config(
        aegis_peer::PeerConfig {
            rpc_timeout: Duration::from_millis(300),
            channel: ChannelOptions {
                connect_timeout: Duration::from_secs(10),
                ..ChannelOptions::default()
            },
            ..aegis_peer::PeerConfig::default()
        },
    );
    peers
        .add_peer(PeerInfo::new("mute", addr.to_string()).unwrap())
        .unwrap();
    let start = std::time::Instant::now();
    let err = peers.ping_peer("mute").await.unwrap_err();
    assert!(
        matches!(err, PeerError::Timeout { ref peer, .. } if peer == "mute"),
        "{err}"
    );
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );
    hold.abort();
}

#[tokio::test]
async fn reference_shaped_requests_get_the_whole_topology() {
    let mesh = Mesh::new();
    let a = start_node(&mesh, "node-a").await;
    for i in 0..5 {
        a.topology
            .add_node(aegis_topology::NodeInfo::new(format!("n{i}"), "x", "127.0.0.1:9").unwrap())
            .unwrap();
    }
    a.topology.remove_node("n4").unwrap();
    let client_tls = mesh.tls("go-client");
    let channel =
        mtls_channel(&client_tls, &a.id, &a.address(), &ChannelOptions::default()).unwrap();
    let mut client = MeshServiceClient::new(channel);
    // Exactly what a reference node sends: sender and version, nothing else.
    let resp = client
        .sync_topology(TopologySyncRequest {
            sender_id: "go-client".into(),
            version: 0,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!resp.extended && !resp.in_sync && resp.digests.is_empty());
    assert_eq!(resp.version as u64, a.topology.version());
    let mut ids: Vec<_> = resp.nodes.iter().map(|n| n.id.as_str()).collect();
    ids.sort();
    assert_eq!(
        ids,
        ["n0", "n1", "n2", "n3", "node-a"],
        "left nodes are not sent"
    );
    let me = resp.nodes.iter().find(|n| n.id == "node-a").unwrap();
    assert_eq!(me.address, a.address());
    assert!(resp.updated_at > 0);

    let topo = client
        .get_topology(GetTopologyRequest {
            sender_id: "go-client".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(topo.nodes.len(), 5);
}

#[tokio::test]
async fn standard_grpc_health_follows_the_node() {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;

    let mesh = Mesh::new();
    let a = start_node(&mesh, "node-a").await;
    let probe_tls = mesh.tls("probe");
    let channel =
        mtls_channel(&probe_tls, &a.id, &a.address(), &ChannelOptions::default()).unwrap();
    let mut client = HealthClient::new(channel);
    let status = |r: tonic_health::pb::HealthCheckResponse| r.status;
    let check = |service: &str| HealthCheckRequest {
        service: service.into(),
    };

    a.health.set(HealthStatus::Healthy, "ok", None);
    let mut ok = false;
    for _ in 0..200 {
        let s = status(client.check(check("")).await.unwrap().into_inner());
        if s == ServingStatus::Serving as i32 {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(ok, "health service never reported SERVING");
    a.health.set(HealthStatus::Unhealthy, "down", None);
    let mut not_serving = false;
    for _ in 0..200 {
        let s = status(
            client
                .check(check("aegis.MeshService"))
                .await
                .unwrap()
                .into_inner(),
        );
        if s == ServingStatus::NotServing as i32 {
            not_serving = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(not_serving, "health service never reported NOT_SERVING");
}

#[tokio::test]
async fn malformed_sync_requests_are_refused_with_the_reason() {
    let mesh = Mesh::new();
    let a = start_node(&mesh, "node-a").await;
    let tls = mesh.tls("prober");
    let channel = mtls_channel(&tls, &a.id, &a.address(), &ChannelOptions::default()).unwrap();
    let mut client = MeshServiceClient::new(channel);
    let cases = [
        (
            TopologySyncRequest {
                buckets: vec![9999],
                ..Default::default()
            },
            "bucket",
        ),
        (
            TopologySyncRequest {
                digest: Some(aegis_peer::proto::mesh::SyncDigest {
                    count: 1,
                    sum: vec![0; 3],
                }),
                ..Default::default()
            },
            "16 bytes",
        ),
        (
            TopologySyncRequest {
                delta: true,
                want: vec!["../bad".into()],
                ..Default::default()
            },
            "want",
        ),
    ];
    let before = a.topology.digest();
    for (req, what) in cases {
        let status = client.sync_topology(req).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status}");
        assert!(status.message().contains(what), "{what}: {status}");
    }
    assert_eq!(a.topology.digest(), before);
}
