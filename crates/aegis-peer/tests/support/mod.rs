//! Shared fixtures: one mesh CA in a temporary directory, nodes with real
//! servers on 127.0.0.1:0, and a small echo service that reports the caller.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use aegis_peer::proto::mesh as pb;
use aegis_peer::proto::mesh::mesh_service_server::{MeshService, MeshServiceServer};
use aegis_peer::proto::testing::echo_client::EchoClient;
use aegis_peer::proto::testing::echo_server::{Echo, EchoServer};
use aegis_peer::proto::testing::{SlowRequest, WhoAmIRequest, WhoAmIResponse};
use aegis_peer::transport::{ChannelOptions, mtls_channel};
use aegis_peer::{
    Health, MeshServer, MeshServerConfig, PeerManager, Registrar, ServerHandle,
    caller_from_request, serve_routes,
};
use aegis_tls::TlsConfig;
use aegis_topology::{NodeId, NodeInfo, Topology, TopologyConfig};
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

pub struct Mesh {
    pub dir: tempfile::TempDir,
}

impl Mesh {
    pub fn new() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    pub fn tls(&self, id: &str) -> TlsConfig {
        aegis_tls::load_or_generate_tls(id, self.dir.path()).unwrap()
    }
}

pub struct Node {
    pub id: NodeId,
    pub tls: TlsConfig,
    pub topology: Topology,
    pub health: Health,
    pub server: ServerHandle,
    pub peers: PeerManager,
}

impl Node {
    pub fn address(&self) -> String {
        self.server.local_addr().to_string()
    }

    pub fn add_peer(&self, other: &Node) {
        self.peers
            .add_peer(aegis_peer::PeerInfo::new(other.id.as_str(), other.address()).unwrap())
            .unwrap();
    }
}

pub fn topology_for(id: &str) -> Topology {
    Topology::with_config(TopologyConfig {
        local_id: Some(NodeId::new(id).unwrap()),
        generation: 1,
        ..TopologyConfig::default()
    })
}

pub async fn start_node(mesh: &Mesh, id: &str) -> Node {
    start_node_with(mesh, id, |s| s).await
}

/// A node whose topology takes at most `max_delta_entries` entries (and
/// wanted IDs) per request.
pub async fn start_node_limited(mesh: &Mesh, id: &str, max_delta_entries: usize) -> Node {
    let topology = Topology::with_config(TopologyConfig {
        local_id: Some(NodeId::new(id).unwrap()),
        generation: 1,
        limits: aegis_topology::Limits {
            max_delta_entries,
            ..aegis_topology::Limits::default()
        },
        ..TopologyConfig::default()
    });
    start_node_on(mesh, id, topology, |s| s).await
}

pub async fn start_node_with(
    mesh: &Mesh,
    id: &str,
    f: impl FnOnce(MeshServer) -> MeshServer,
) -> Node {
    start_node_on(mesh, id, topology_for(id), f).await
}

pub async fn start_node_on(
    mesh: &Mesh,
    id: &str,
    topology: Topology,
    f: impl FnOnce(MeshServer) -> MeshServer,
) -> Node {
    let tls = mesh.tls(id);
    let health = Health::new();
    let server = f(
        MeshServer::new(tls.clone(), topology.clone(), health.clone())
            .with_registrar(echo_registrar()),
    )
    .serve("127.0.0.1:0")
    .await
    .unwrap();
    topology
        .add_node(NodeInfo::new(id, format!("{id}-name"), server.local_addr().to_string()).unwrap())
        .unwrap();
    let peers = PeerManager::new(tls.node_id().clone(), Some(tls.clone()), topology.clone());
    Node {
        id: NodeId::new(id).unwrap(),
        tls,
        topology,
        health,
        server,
        peers,
    }
}

#[derive(Default)]
pub struct EchoService;

#[tonic::async_trait]
impl Echo for EchoService {
    async fn who_am_i(
        &self,
        req: Request<WhoAmIRequest>,
    ) -> Result<Response<WhoAmIResponse>, Status> {
        let caller =
            caller_from_request(&req).map_err(|e| Status::unauthenticated(e.to_string()))?;
        Ok(Response::new(WhoAmIResponse {
            caller_id: caller.node_id.to_string(),
        }))
    }

    async fn slow(&self, req: Request<SlowRequest>) -> Result<Response<WhoAmIResponse>, Status> {
        let caller =
            caller_from_request(&req).map_err(|e| Status::unauthenticated(e.to_string()))?;
        tokio::time::sleep(Duration::from_millis(req.get_ref().millis)).await;
        Ok(Response::new(WhoAmIResponse {
            caller_id: caller.node_id.to_string(),
        }))
    }
}

pub fn echo_registrar() -> Registrar {
    Arc::new(|routes| {
        routes.add_service(EchoServer::new(EchoService));
    })
}

pub fn echo_client(tls: &TlsConfig, server_id: &str, address: &str) -> EchoClient<Channel> {
    let id = NodeId::new(server_id).unwrap();
    EchoClient::new(mtls_channel(tls, &id, address, &ChannelOptions::default()).unwrap())
}

/// A channel with an arbitrary rustls client config (for clients the server
/// must refuse).
pub fn raw_channel(config: Arc<rustls::ClientConfig>, server_name: &str, address: &str) -> Channel {
    let name = rustls::pki_types::ServerName::try_from(server_name.to_owned()).unwrap();
    let address = address.to_owned();
    let connector = tokio_rustls::TlsConnector::from(config);
    tonic::transport::Endpoint::from_shared(format!("http://{address}"))
        .unwrap()
        .connect_with_connector_lazy(tower::service_fn(move |_: http::Uri| {
            let (connector, name, address) = (connector.clone(), name.clone(), address.clone());
            async move {
                let tcp = tokio::net::TcpStream::connect(address).await?;
                tcp.set_nodelay(true)?;
                let tls = connector.connect(name, tcp).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls))
            }
        }))
}

/// Polls `check` until it holds or `deadline` passes.
pub async fn eventually(deadline: Duration, mut check: impl FnMut() -> bool) -> bool {
    let end = tokio::time::Instant::now() + deadline;
    loop {
        if check() {
            return true;
        }
        if tokio::time::Instant::now() >= end {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A node of the reference implementation, as the wire sees it: it answers
/// SyncTopology with its whole topology and no extension fields, whatever
/// the request holds.
pub struct ReferenceNode {
    id: String,
    nodes: Vec<pb::TopologyNode>,
}

#[tonic::async_trait]
impl MeshService for ReferenceNode {
    async fn ping(
        &self,
        _: Request<pb::PingRequest>,
    ) -> Result<Response<pb::PingResponse>, Status> {
        Ok(Response::new(pb::PingResponse {
            receiver_id: self.id.clone(),
            timestamp: 1,
            success: true,
            // A reference node knows no piggyback fields: it sends none.
            ..Default::default()
        }))
    }
    async fn get_health(
        &self,
        _: Request<pb::HealthRequest>,
    ) -> Result<Response<pb::HealthResponse>, Status> {
        Err(Status::unimplemented("not needed"))
    }
    async fn get_node_info(
        &self,
        _: Request<pb::NodeInfoRequest>,
    ) -> Result<Response<pb::NodeInfoResponse>, Status> {
        Err(Status::unimplemented("not needed"))
    }
    async fn sync_topology(
        &self,
        _: Request<pb::TopologySyncRequest>,
    ) -> Result<Response<pb::TopologySyncResponse>, Status> {
        Ok(Response::new(pb::TopologySyncResponse {
            version: 42,
            nodes: self.nodes.clone(),
            updated_at: 1_700_000_000,
            ..Default::default()
        }))
    }
    async fn get_topology(
        &self,
        _: Request<pb::GetTopologyRequest>,
    ) -> Result<Response<pb::GetTopologyResponse>, Status> {
        Err(Status::unimplemented("not needed"))
    }
}

pub fn go_node(id: &str, address: &str, updated_at: i64) -> pb::TopologyNode {
    pb::TopologyNode {
        id: id.into(),
        name: id.into(),
        r#type: "generic".into(),
        address: address.into(),
        joined_at: updated_at,
        updated_at,
        services: vec![pb::Service {
            name: "identity".into(),
            version: "v1".into(),
        }],
        ..Default::default()
    }
}

pub async fn start_reference(
    mesh: &Mesh,
    id: &str,
    nodes: Vec<pb::TopologyNode>,
) -> aegis_peer::ServerHandle {
    start_double(mesh, id, id, nodes).await
}

/// A reference-like node serving with `cert_id`'s certificate but
/// answering pings as `answer_as` (a liar when the two differ).
pub async fn start_double(
    mesh: &Mesh,
    cert_id: &str,
    answer_as: &str,
    nodes: Vec<pb::TopologyNode>,
) -> aegis_peer::ServerHandle {
    let svc = MeshServiceServer::new(ReferenceNode {
        id: answer_as.into(),
        nodes,
    });
    let routes = tonic::service::Routes::new(svc);
    serve_routes(
        &mesh.tls(cert_id),
        "127.0.0.1:0",
        routes,
        MeshServerConfig::default(),
    )
    .await
    .unwrap()
}
