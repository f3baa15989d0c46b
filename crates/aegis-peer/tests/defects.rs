//! Defects found by attacking live v1 nodes with a client that holds an
//! ordinary mesh certificate; each test failed on the code that had it.

mod support;

use std::sync::Arc;

use aegis_peer::proto::mesh as pb;
use aegis_peer::proto::mesh::mesh_service_client::MeshServiceClient;
use aegis_peer::{PeerError, PeerInfo};
use aegis_topology::{Entry, NodeInfo, NodeState, ServiceInfo, Stamp};
use support::{Mesh, raw_channel, start_node};
use tonic::Code;

/// A client of `node-a`'s mesh service holding `tls`.
fn mesh_client(
    tls: &aegis_tls::TlsConfig,
    server_id: &str,
    address: &str,
) -> MeshServiceClient<tonic::transport::Channel> {
    let channel = aegis_peer::transport::mtls_channel(
        tls,
        &aegis_tls::NodeId::new(server_id).unwrap(),
        address,
        &aegis_peer::transport::ChannelOptions::default(),
    )
    .unwrap();
    MeshServiceClient::new(channel).max_decoding_message_size(64 * 1024 * 1024)
}

fn wire_node(id: &str) -> pb::TopologyNode {
    pb::TopologyNode {
        id: id.into(),
        name: id.into(),
        r#type: "generic".into(),
        address: "127.0.0.1:9".into(),
        joined_at: 1_700_000_000,
        updated_at: 1_700_000_000,
        ..Default::default()
    }
}

/// A step-2 sync request from `sender` that pushes `nodes` and wants nothing.
fn push_from(sender: &str, nodes: Vec<pb::TopologyNode>) -> pb::TopologySyncRequest {
    pb::TopologySyncRequest {
        sender_id: sender.into(),
        delta: true,
        push: nodes,
        ..Default::default()
    }
}

/// A refused request changes nothing: v1 stored the push of a request
/// whose `want` it then refused.
#[tokio::test]
async fn a_push_with_an_invalid_want_is_refused_whole() {
    let mesh = Mesh::new();
    let a = start_node(&mesh, "node-a").await;
    let mut client = mesh_client(&mesh.tls("node-b"), "node-a", &a.address());
    let err = client
        .sync_topology(pb::TopologySyncRequest {
            sender_id: "node-b".into(),
            delta: true,
            push: vec![wire_node("fresh")],
            want: vec!["../etc/passwd".into()],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("want"), "{}", err.message());
    assert!(
        a.topology.get_node("fresh").is_none(),
        "the push was stored"
    );
}

/// Large entries: v1 answered with every entry in one message, over the
/// 16 MiB limit, so syncs and `GetTopology` failed for everyone.
#[tokio::test]
async fn forty_half_megabyte_entries_still_sync_and_get_topology_answers() {
    let mesh = Mesh::new();
    let a = start_node(&mesh, "node-a").await;
    let b = start_node(&mesh, "node-b").await;
    let big: Vec<Entry> = (0..40)
        .map(|i| {
            let info = NodeInfo::new(format!("big-{i}"), "x".repeat(1000), "127.0.0.1:9")
                .unwrap()
                .with_services(
                    (0..256).map(|s| ServiceInfo::new(format!("{s:0>1000}"), "v".repeat(1000))),
                );
            Entry::new(info, Stamp::new(1, 1), NodeState::Alive)
        })
        .collect();
    a.topology.apply(big).unwrap();
    b.add_peer(&a);
    let report = b.peers.sync_topology("node-a").await.unwrap();
    assert!(report.complete, "{report:?}");
    assert_eq!(b.topology.digest(), a.topology.digest());

    let mut client = mesh_client(&b.tls, "node-a", &a.address());
    let all = client
        .get_topology(pb::GetTopologyRequest {
            sender_id: "node-b".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!all.nodes.is_empty());
    assert_eq!(all.nodes[0].id, "node-a", "its own entry comes first");
}

/// More IDs than a responder takes at once: v1 refused the `want` for
/// ever, so a node joining a large mesh never joined.
#[tokio::test]
async fn a_topology_past_the_responders_delta_limit_is_synced_in_pages() {
    let mesh = Mesh::new();
    let a = support::start_node_limited(&mesh, "node-a", 200).await;
    let b = start_node(&mesh, "node-b").await;
    let entries: Vec<Entry> = (0..1000)
        .map(|i| {
            Entry::new(
                NodeInfo::new(format!("n{i}"), "n", "127.0.0.1:9").unwrap(),
                Stamp::new(1, 1),
                NodeState::Alive,
            )
        })
        .collect();
    for chunk in entries.chunks(200) {
        a.topology.apply(chunk.to_vec()).unwrap();
    }
    b.add_peer(&a);
    let report = b.peers.sync_topology("node-a").await.unwrap();
    assert!(report.complete, "{report:?}");
    assert_eq!(b.topology.node_count(), 1002);
}

/// Identity by case: an ID has one canonical form, and a peer's answer is
/// checked against the ID that was dialled.
#[tokio::test]
async fn ids_are_one_form_and_an_answer_must_name_the_node_dialled() {
    let mesh = Mesh::new();
    let upper = start_node(&mesh, "upper").await;
    let client = start_node(&mesh, "client").await;
    // `UPPER` is `upper`: one peer, not a second node that answers as it.
    client
        .peers
        .add_peer(PeerInfo::new("UPPER", upper.address()).unwrap())
        .unwrap();
    assert!(client.peers.get_peer("upper").is_some());
    let pong = client.peers.ping_peer("upper").await.unwrap();
    assert_eq!(pong.receiver_id, "upper");

    // A server with node-a's certificate that answers as another node.
    let liar = support::start_double(&mesh, "node-a", "node-z", vec![]).await;
    client
        .peers
        .add_peer(PeerInfo::new("node-a", liar.local_addr().to_string()).unwrap())
        .unwrap();
    let err = client.peers.ping_peer("node-a").await.unwrap_err();
    assert!(matches!(err, PeerError::BadResponse { .. }), "{err}");
    assert!(err.to_string().contains("node-z"), "{err}");
}

/// A client certificate from the mesh CA whose CN is `cn` (or none).
fn client_with_cn(mesh: &Mesh, cn: Option<&str>) -> Arc<rustls::ClientConfig> {
    let roots = mesh.tls("anchor").root_store();
    let ca_cert = std::fs::read_to_string(mesh.dir.path().join("ca-cert.pem")).unwrap();
    let ca_key = std::fs::read_to_string(mesh.dir.path().join("ca-key.pem")).unwrap();
    let issuer =
        rcgen::Issuer::from_ca_cert_pem(&ca_cert, rcgen::KeyPair::from_pem(&ca_key).unwrap())
            .unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    params.distinguished_name = rcgen::DistinguishedName::new();
    if let Some(cn) = cn {
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
    }
    params.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
    ];
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    let key_der = rustls::pki_types::PrivatePkcs8KeyDer::from(key.serialize_der());
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_client_auth_cert(vec![cert.der().clone()], key_der.into())
    .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec()];
    Arc::new(config)
}

/// Callers are checked: mesh RPCs need a certificate that names a valid
/// node ID, and a claimed sender must be the caller.
#[tokio::test]
async fn mesh_rpcs_come_only_from_members_speaking_for_themselves() {
    let mesh = Mesh::new();
    let a = start_node(&mesh, "node-a").await;
    let before = a.topology.digest();
    for cn in [Some("../x"), Some("UPPER CASE"), None] {
        let channel = raw_channel(client_with_cn(&mesh, cn), "node-a", &a.address());
        let mut client = MeshServiceClient::new(channel);
        let ping = client
            .ping(pb::PingRequest {
                sender_id: String::new(),
                timestamp: 0,
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(ping.code(), Code::Unauthenticated, "{cn:?}: {ping:?}");
        let push = client
            .sync_topology(push_from("node-q", vec![wire_node("node-q")]))
            .await
            .unwrap_err();
        assert_eq!(push.code(), Code::Unauthenticated, "{cn:?}: {push:?}");
    }
    assert_eq!(a.topology.digest(), before, "a push got through");

    // A member speaking for another member.
    let mut client = mesh_client(&mesh.tls("node-b"), "node-a", &a.address());
    let err = client
        .sync_topology(push_from("node-c", vec![wire_node("node-c")]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(err.message().contains("node-b"), "{}", err.message());
    assert!(a.topology.get_node("node-c").is_none());
    // Speaking for itself, it is heard.
    client
        .sync_topology(push_from("node-b", vec![wire_node("node-b")]))
        .await
        .unwrap();
    assert!(a.topology.get_node("node-b").is_some());
}

/// Stamps: v1 accepted a forged claim at the very last stamp, which its
/// owner could never rise above. Claims beyond the clock-skew bound are
/// refused, so every claim that is accepted can be refuted.
#[tokio::test]
async fn a_claim_no_owner_could_refute_is_refused() {
    let mesh = Mesh::new();
    let a = start_node(&mesh, "node-a").await;
    let held = a.topology.get_entry("node-a").unwrap();
    let mut client = mesh_client(&mesh.tls("node-b"), "node-a", &a.address());
    let forged = pb::TopologyNode {
        generation: Some(u64::MAX),
        stamp_version: Some(u64::MAX),
        state: pb::NodeState::Dead as i32,
        ..wire_node("node-a")
    };
    let err = client
        .sync_topology(push_from("node-b", vec![forged]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("stamp"), "{}", err.message());
    assert_eq!(a.topology.get_entry("node-a").unwrap(), held);
}

/// `IndirectPing`: a helper pings a member for the asker, at the address
/// the helper holds; no help from a node that does not speak it.
#[tokio::test]
async fn a_helper_pings_members_for_others() {
    let mesh = Mesh::new();
    let target = start_node(&mesh, "target").await;
    // The helper serves IndirectPing through its own peers.
    let tls = mesh.tls("helper");
    let topology = support::topology_for("helper");
    let peers = std::sync::Arc::new(aegis_peer::PeerManager::new(
        tls.node_id().clone(),
        Some(tls.clone()),
        topology.clone(),
    ));
    let server = aegis_peer::MeshServer::new(tls, topology.clone(), aegis_peer::Health::new())
        .with_peers(std::sync::Arc::clone(&peers))
        .serve("127.0.0.1:0")
        .await
        .unwrap();
    topology.apply(target.topology.entries()).unwrap();
    let asker = start_node(&mesh, "asker").await;
    asker
        .peers
        .add_peer(PeerInfo::new("helper", server.local_addr().to_string()).unwrap())
        .unwrap();
    let target_id = aegis_tls::NodeId::new("target").unwrap();
    let wait = std::time::Duration::from_secs(2);
    assert!(
        asker
            .peers
            .indirect_ping("helper", &target_id, wait)
            .await
            .unwrap()
    );

    // Not a member of the helper's topology: refused, nothing dialled.
    let stranger = aegis_tls::NodeId::new("stranger").unwrap();
    let err = asker
        .peers
        .indirect_ping("helper", &stranger, wait)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("not a member"), "{err}");

    // A node without the extension (here: no peers to ping with) is no help.
    asker.add_peer(&target);
    assert!(
        !asker
            .peers
            .indirect_ping("target", &stranger, wait)
            .await
            .unwrap()
    );

    // The target gone: the helper's ping fails, no ack.
    drop(target);
    assert!(
        !asker
            .peers
            .indirect_ping("helper", &target_id, wait)
            .await
            .unwrap()
    );
}

/// A node with a liveness state and its server.
async fn live_node(
    mesh: &Mesh,
    id: &str,
) -> (
    std::sync::Arc<aegis_peer::PeerManager>,
    aegis_peer::ServerHandle,
    aegis_peer::SharedLiveness,
) {
    let tls = mesh.tls(id);
    let topology = support::topology_for(id);
    topology
        .add_node(NodeInfo::new(id, id, "127.0.0.1:1").unwrap())
        .unwrap();
    let liveness: aegis_peer::SharedLiveness = std::sync::Arc::new(std::sync::Mutex::new(
        aegis_mesh::Liveness::new(tls.node_id().clone(), aegis_mesh::LivenessConfig::default()),
    ));
    let peers = std::sync::Arc::new(
        aegis_peer::PeerManager::new(tls.node_id().clone(), Some(tls.clone()), topology.clone())
            .with_liveness(std::sync::Arc::clone(&liveness)),
    );
    let server = aegis_peer::MeshServer::new(tls, topology, aegis_peer::Health::new())
        .with_peers(std::sync::Arc::clone(&peers))
        .serve("127.0.0.1:0")
        .await
        .unwrap();
    (peers, server, liveness)
}

/// Probes carry news both ways over real mTLS: a ping tells the pinged
/// node of the pinger (its own entry is news), the answer tells the pinger
/// of the pinged, with no sync at all; a suspicion piggybacked on a ping
/// reaches the suspect, which refutes at once.
#[tokio::test]
async fn probes_and_acks_carry_changes_and_suspicions() {
    let mesh = Mesh::new();
    let (a, _sa, la) = live_node(&mesh, "node-a").await;
    let (b, sb, lb) = live_node(&mesh, "node-b").await;
    a.add_peer(PeerInfo::new("node-b", sb.local_addr().to_string()).unwrap())
        .unwrap();
    a.ping_peer("node-b").await.unwrap();
    assert!(
        b.topology().get_entry("node-a").is_some(),
        "the ping carried a"
    );
    assert!(
        a.topology().get_entry("node-b").is_some(),
        "the ack carried b"
    );

    // a suspects b: the next ping carries the suspicion, b refutes.
    let b_id = aegis_tls::NodeId::new("node-b").unwrap();
    let before = a.topology().get_entry("node-b").unwrap().stamp;
    let missed = aegis_mesh::Probe::Missed {
        asked: 0,
        replied: 0,
    };
    aegis_peer::lock_liveness(&la).on_probe(a.topology(), &b_id, missed, 0);
    assert_eq!(
        a.topology().state_of("node-b"),
        Some(aegis_topology::NodeState::Suspect)
    );
    a.ping_peer("node-b").await.unwrap();
    let refuted = b.topology().get_entry("node-b").unwrap();
    assert!(refuted.stamp > before, "b refuted");
    assert_eq!(aegis_peer::lock_liveness(&lb).health(), 1);
    // The refutation comes back on the answer.
    assert_eq!(
        a.topology().state_of("node-b"),
        Some(aegis_topology::NodeState::Alive)
    );
}

/// A piggyback that breaks a rule is skipped whole, naming why in the log;
/// the ping itself is still answered (liveness does not hang on gossip).
#[tokio::test]
async fn a_bad_piggyback_is_skipped_and_the_ping_answered() {
    let mesh = Mesh::new();
    let (b, sb, _lb) = live_node(&mesh, "node-b").await;
    let channel = raw_channel(
        client_with_cn(&mesh, Some("node-q")),
        "node-b",
        &sb.local_addr().to_string(),
    );
    let mut client = MeshServiceClient::new(channel);
    let before = b.topology().digest();
    for updates in [
        (0..65).map(|i| wire_node(&format!("z{i}"))).collect(),
        vec![wire_node("BAD ID")],
    ] {
        let answer = client
            .ping(pb::PingRequest {
                sender_id: "node-q".into(),
                updates,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert!(answer.success);
    }
    assert_eq!(b.topology().digest(), before, "nothing of it applied");
}
