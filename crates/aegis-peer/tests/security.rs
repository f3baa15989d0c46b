//! Who may connect, who may answer, and who is calling.

mod support;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aegis_peer::proto::mesh::PingRequest;
use aegis_peer::proto::mesh::mesh_service_client::MeshServiceClient;
use aegis_peer::proto::testing::WhoAmIRequest;
use aegis_peer::{PeerError, PeerInfo};
use aegis_tls::{CertAuthority, NodeId, TlsConfig, TlsOptions, Validity};
use support::{Mesh, echo_client, raw_channel, start_node};

async fn ping_over(channel: tonic::transport::Channel) -> Result<(), tonic::Status> {
    MeshServiceClient::new(channel)
        .ping(PingRequest {
            sender_id: "intruder".into(),
            timestamp: 0,
            ..Default::default()
        })
        .await
        .map(|_| ())
}

/// A peer manager for `tls` with one peer, `id` at `address`.
fn dialler(tls: TlsConfig, id: &str, address: &str) -> aegis_peer::PeerManager {
    let peers = aegis_peer::PeerManager::new(
        tls.node_id().clone(),
        Some(tls),
        aegis_topology::Topology::new(),
    );
    peers.add_peer(PeerInfo::new(id, address).unwrap()).unwrap();
    peers
}

fn ca_pem(mesh: &Mesh) -> String {
    std::fs::read_to_string(mesh.dir.path().join("ca-cert.pem")).unwrap()
}

#[tokio::test]
async fn a_client_without_a_certificate_is_refused() {
    let mesh = Mesh::new();
    let server = start_node(&mesh, "node-a").await;
    let roots = mesh.tls("unused").root_store();
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let result = ping_over(raw_channel(Arc::new(config), "node-a", &server.address())).await;
    // Under TLS 1.3 the refusal surfaces on the first call, with a code
    // that varies; what matters is that the call fails.
    assert!(
        result.is_err(),
        "a client without a certificate got through"
    );
}

#[tokio::test]
async fn a_client_certificate_from_another_ca_is_refused() {
    let mesh = Mesh::new();
    let server = start_node(&mesh, "node-a").await;
    let other = CertAuthority::generate(Validity::from_now(Duration::from_secs(3600))).unwrap();
    let cert = other
        .issue(
            &NodeId::new("node-x").unwrap(),
            Validity::from_now(Duration::from_secs(3600)),
        )
        .unwrap();
    // The client trusts the mesh CA (so it accepts the server) but presents
    // a certificate of another CA.
    let bundle = format!("{}{}", ca_pem(&mesh), other.cert_pem());
    let tls = TlsConfig::from_pem(
        &cert.cert_pem,
        &cert.key_pem,
        &bundle,
        &TlsOptions::default(),
    )
    .unwrap();
    let peers = dialler(tls, "node-a", &server.address());
    let err = peers.ping_peer("node-a").await.unwrap_err();
    assert!(matches!(err, PeerError::Rpc { .. }), "{err}");
}

#[tokio::test]
async fn an_expired_client_certificate_is_refused() {
    let mesh = Mesh::new();
    let server = start_node(&mesh, "node-a").await;
    mesh.tls("anchor");
    let ca = CertAuthority::from_pem(
        &ca_pem(&mesh),
        &std::fs::read_to_string(mesh.dir.path().join("ca-key.pem")).unwrap(),
        "test",
    )
    .unwrap();
    let past = SystemTime::now() - Duration::from_secs(3 * 86_400);
    let cert = ca
        .issue(
            &NodeId::new("old-node").unwrap(),
            Validity {
                not_before: past,
                not_after: past + Duration::from_secs(86_400),
            },
        )
        .unwrap();
    let tls = TlsConfig::from_pem(
        &cert.cert_pem,
        &cert.key_pem,
        &ca_pem(&mesh),
        &TlsOptions::default().with_allow_expired(true),
    )
    .unwrap();
    let peers = dialler(tls, "node-a", &server.address());
    assert!(
        peers.ping_peer("node-a").await.is_err(),
        "an expired certificate got through"
    );

    // The same CA's valid certificate gets through: the refusal was the date.
    let peers = dialler(mesh.tls("fresh-node"), "node-a", &server.address());
    peers.ping_peer("node-a").await.unwrap();
}

#[tokio::test]
async fn an_impostor_server_is_refused() {
    let mesh = Mesh::new();
    // node-x holds a valid mesh certificate, but for node-x.
    let impostor = start_node(&mesh, "node-x").await;
    let client = start_node(&mesh, "node-c").await;
    client
        .peers
        .add_peer(PeerInfo::new("node-y", impostor.address()).unwrap())
        .unwrap();
    let err = client.peers.ping_peer("node-y").await.unwrap_err();
    assert!(matches!(err, PeerError::Rpc { .. }), "{err}");
    assert!(err.to_string().contains("node-y"), "{err}");
    // Dialled under its own name it answers: the refusal was the name.
    client.add_peer(&impostor);
    client.peers.ping_peer("node-x").await.unwrap();
}

#[tokio::test]
async fn a_handler_sees_the_calling_node() {
    let mesh = Mesh::new();
    let server = start_node(&mesh, "node-a").await;
    for caller in ["node-b", "node-c"] {
        let tls = mesh.tls(caller);
        let mut echo = echo_client(&tls, "node-a", &server.address());
        let seen = echo
            .who_am_i(WhoAmIRequest {})
            .await
            .unwrap()
            .into_inner()
            .caller_id;
        assert_eq!(seen, caller);
    }
}

#[tokio::test]
async fn caller_outside_a_mesh_server_is_an_error() {
    let req = tonic::Request::new(());
    assert_eq!(
        aegis_peer::caller_from_request(&req).unwrap_err(),
        aegis_peer::CallerError::NoPeerInfo
    );
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        aegis_peer::must_caller_from_request(&req)
    }));
    assert!(result.is_err());
}
