//! `MeshServer`: tonic over our own rustls acceptor.

use std::sync::Arc;
use std::time::Duration;

use aegis_mesh::{SyncConfig, SyncError, SyncRequest};
use aegis_tls::NodeId;
#[cfg(doc)]
use aegis_tls::TlsConfig;
use aegis_topology::Topology;
use aegis_transport::{Credentials, RoutesLayer, ServerConfig, ServerHandle, serve_routes};
use tokio::sync::watch;
use tonic::service::RoutesBuilder;
use tonic::{Request, Response, Status};
use tonic_health::ServingStatus;

use crate::convert::{
    entry_to_wire, health_to_wire, now_ms, now_unix, piggyback_to_wire, request_from_wire,
    response_to_wire,
};
use crate::health::{Health, HealthStatus};
use crate::peer::{lock_liveness, take_piggyback};
use crate::proto::mesh as pb;
use crate::proto::mesh::mesh_service_server::{MeshService, MeshServiceServer};
use crate::{PeerError, PeerInfo, PeerManager};
use aegis_transport::caller_from_request;

/// A callback that adds the user's gRPC services to the server.
pub type Registrar = Arc<dyn Fn(&mut RoutesBuilder) + Send + Sync>;

/// Limits of a [`MeshServer`]: the transport's (connections, handshakes,
/// timeouts) and the mesh protocol's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MeshServerConfig {
    /// Largest message accepted or sent, in bytes (a full 10,000-node
    /// topology is about 1.5 MB).
    pub max_message_size: usize,
    /// Bounds of the sync exchange (answers are paged to fit them).
    pub sync: SyncConfig,
    /// The accept loop's and HTTP/2 server's limits.
    pub transport: ServerConfig,
}

impl Default for MeshServerConfig {
    fn default() -> Self {
        Self {
            max_message_size: 16 * 1024 * 1024,
            sync: SyncConfig::default(),
            transport: ServerConfig::default(),
        }
    }
}

impl From<MeshServerConfig> for ServerConfig {
    fn from(config: MeshServerConfig) -> Self {
        config.transport
    }
}

/// The mesh gRPC server of one node: `aegis.MeshService`, the standard
/// `grpc.health.v1.Health`, and the user's services, over mutual TLS (a
/// client certificate from the mesh CA is required).
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use aegis_peer::{Health, MeshServer};
/// use aegis_topology::Topology;
/// let tls = aegis_tls::load_or_generate_tls("node-1", "./certs")?;
/// let server = MeshServer::new(tls, Topology::new(), Health::new())
///     .serve("127.0.0.1:0")
///     .await?;
/// println!("listening on {}", server.local_addr());
/// server.shutdown(std::time::Duration::from_secs(5)).await?;
/// # Ok(()) }
/// ```
pub struct MeshServer {
    credentials: Credentials,
    topology: Topology,
    health: Health,
    config: MeshServerConfig,
    registrars: Vec<Registrar>,
    layers: Vec<RoutesLayer>,
    peers: Option<Arc<PeerManager>>,
}

impl MeshServer {
    /// A server for the node named by `credentials` (a [`TlsConfig`], or
    /// [`Credentials`] that change at run time), answering from `topology`
    /// and `health`.
    pub fn new(credentials: impl Into<Credentials>, topology: Topology, health: Health) -> Self {
        Self {
            credentials: credentials.into(),
            topology,
            health,
            config: MeshServerConfig::default(),
            registrars: Vec::new(),
            layers: Vec::new(),
            peers: None,
        }
    }

    /// Lets the server ping members for others (`IndirectPing`) through
    /// these peers. Without them it answers that RPC `Unimplemented`, as a
    /// reference node does.
    pub fn with_peers(mut self, peers: Arc<PeerManager>) -> Self {
        self.peers = Some(peers);
        self
    }

    /// Other limits.
    pub fn with_config(mut self, config: MeshServerConfig) -> Self {
        self.config = config;
        self
    }

    /// Adds user services when the server starts.
    pub fn with_registrar(mut self, registrar: Registrar) -> Self {
        self.registrars.push(registrar);
        self
    }

    /// Wraps every service of the server (the mesh protocol, health and
    /// the user's) in `layer`. Layers added later wrap those added before.
    pub fn with_layer(mut self, layer: RoutesLayer) -> Self {
        self.layers.push(layer);
        self
    }

    /// Binds `address` (`host:port`; port 0 picks a free port) and serves
    /// until [`ServerHandle::shutdown`] or the handle is dropped.
    ///
    /// # Errors
    /// [`PeerError::InvalidAddress`] for an address that is not `host:port`,
    /// [`PeerError::Bind`] naming the address when it cannot be bound.
    pub async fn serve(self, address: &str) -> Result<ServerHandle, PeerError> {
        let (reporter, health_service) = tonic_health::server::health_reporter();
        let handler = MeshHandler {
            node_id: self.credentials.node_id(),
            topology: self.topology,
            health: self.health.clone(),
            sync: self.config.sync,
            peers: self.peers,
        };
        let limit = self.config.max_message_size;
        let mut routes = RoutesBuilder::default();
        routes.add_service(
            MeshServiceServer::new(handler)
                .max_decoding_message_size(limit)
                .max_encoding_message_size(limit),
        );
        routes.add_service(health_service);
        for registrar in &self.registrars {
            registrar(&mut routes);
        }
        let routes = self
            .layers
            .iter()
            .fold(routes.routes(), |routes, layer| layer.apply(routes));
        let mut handle = serve_routes(self.credentials, address, routes, self.config).await?;
        let shutdown = handle.stopping();
        handle.attach(tokio::spawn(follow_health(self.health, reporter, shutdown)));
        Ok(handle)
    }
}

/// Keeps the standard gRPC health service in step with the node's health
/// and with each of its own services' (a service is not serving whenever
/// the node is not).
async fn follow_health(
    health: Health,
    reporter: tonic_health::server::HealthReporter,
    mut shutdown: watch::Receiver<bool>,
) {
    let serving = |s: HealthStatus| match s {
        HealthStatus::Healthy => ServingStatus::Serving,
        HealthStatus::Unhealthy => ServingStatus::NotServing,
        HealthStatus::Unknown => ServingStatus::Unknown,
    };
    let mut rx = health.subscribe();
    let mut services = health.subscribe_services();
    loop {
        let node = rx.borrow_and_update().status;
        reporter.set_service_status("", serving(node)).await;
        reporter
            .set_service_status("aegis.MeshService", serving(node))
            .await;
        let own = services.borrow_and_update().clone();
        for (name, status) in own {
            let status = if node == HealthStatus::Healthy {
                status
            } else {
                node
            };
            reporter.set_service_status(&name, serving(status)).await;
        }
        tokio::select! {
            _ = shutdown.wait_for(|stop| *stop) => return,
            changed = rx.changed() => if changed.is_err() { return },
            changed = services.changed() => if changed.is_err() { return },
        }
    }
}

struct MeshHandler {
    node_id: NodeId,
    topology: Topology,
    health: Health,
    sync: SyncConfig,
    peers: Option<Arc<PeerManager>>,
}

/// The longest an indirect ping may take here, whatever the asker says.
const MAX_INDIRECT_PING: Duration = Duration::from_secs(2);

fn invalid(what: &str, e: impl std::fmt::Display) -> Status {
    Status::invalid_argument(format!("{what}: {e}"))
}

fn sync_status(e: &SyncError) -> Status {
    match e {
        SyncError::InvalidRequest { .. }
        | SyncError::StampTooHigh { .. }
        | SyncError::Unexpected { .. } => Status::invalid_argument(e.to_string()),
        // A limit of ours (the member bound, say): the request was fine.
        _ => Status::failed_precondition(e.to_string()),
    }
}

/// Mesh RPCs come only from members: the caller's certificate must name a
/// valid node ID, and a request that names its sender must name the caller.
fn authorize<T>(req: &Request<T>, sender_id: &str) -> Result<NodeId, Status> {
    let caller = caller_from_request(req)
        .map_err(|e| Status::unauthenticated(format!("mesh RPCs need a node certificate: {e}")))?;
    if !sender_id.is_empty() {
        let claimed = NodeId::new(sender_id).map_err(|e| invalid("sender_id", e))?;
        if claimed != caller.node_id {
            return Err(Status::permission_denied(format!(
                "sender_id {claimed} is not the caller {}",
                caller.node_id
            )));
        }
    }
    Ok(caller.node_id.clone())
}

impl MeshHandler {
    fn version(&self) -> i64 {
        i64::try_from(self.topology.version()).unwrap_or(i64::MAX)
    }

    /// What a reference peer may see, bounded like every answer.
    fn full_topology(&self) -> Vec<pb::TopologyNode> {
        aegis_mesh::full_answer(&self.topology, &self.sync)
            .iter()
            .map(entry_to_wire)
            .collect()
    }
}

#[tonic::async_trait]
impl MeshService for MeshHandler {
    async fn ping(
        &self,
        req: Request<pb::PingRequest>,
    ) -> Result<Response<pb::PingResponse>, Status> {
        let caller = authorize(&req, &req.get_ref().sender_id)?;
        tracing::trace!(caller = %caller, "ping");
        let req = req.into_inner();
        // The ping is answered whatever its piggyback holds: liveness does
        // not depend on gossip. A bad piggyback is skipped, naming why.
        let (updates, suspicions) = match self.peers.as_ref().and_then(|p| p.liveness()) {
            Some(l) => {
                let incoming =
                    take_piggyback(l, &self.topology, req.updates, req.suspicions, &self.sync);
                if let Err(e) = incoming {
                    tracing::warn!(caller = %caller, error = %e, "ignored the piggyback of a ping");
                }
                piggyback_to_wire(&lock_liveness(l).piggyback(&self.topology, &caller))
            }
            None => (Vec::new(), Vec::new()),
        };
        Ok(Response::new(pb::PingResponse {
            receiver_id: self.node_id.to_string(),
            timestamp: now_unix(),
            success: true,
            updates,
            suspicions,
        }))
    }

    async fn get_health(
        &self,
        req: Request<pb::HealthRequest>,
    ) -> Result<Response<pb::HealthResponse>, Status> {
        authorize(&req, &req.get_ref().sender_id)?;
        Ok(Response::new(health_to_wire(
            self.node_id.as_str(),
            &self.health.get(),
        )))
    }

    async fn get_node_info(
        &self,
        req: Request<pb::NodeInfoRequest>,
    ) -> Result<Response<pb::NodeInfoResponse>, Status> {
        authorize(&req, &req.get_ref().sender_id)?;
        let me = self.topology.get_node(self.node_id.as_str());
        Ok(Response::new(pb::NodeInfoResponse {
            id: self.node_id.to_string(),
            name: me.as_ref().map(|n| n.name.clone()).unwrap_or_default(),
            r#type: me
                .as_ref()
                .map_or_else(|| "generic".to_owned(), |n| n.node_type.to_string()),
            address: me.as_ref().map(|n| n.address.clone()).unwrap_or_default(),
            health: Some(health_to_wire(self.node_id.as_str(), &self.health.get())),
        }))
    }

    async fn sync_topology(
        &self,
        req: Request<pb::TopologySyncRequest>,
    ) -> Result<Response<pb::TopologySyncResponse>, Status> {
        let caller = authorize(&req, &req.get_ref().sender_id)?;
        let request =
            request_from_wire(req.into_inner()).map_err(|e| invalid(e.field, &e.reason))?;
        let kind = match &request {
            SyncRequest::Digest(_) => "digest",
            SyncRequest::Buckets(_) => "buckets",
            SyncRequest::Delta { .. } => "delta",
            SyncRequest::Full => "full (reference request)",
        };
        let responded = aegis_mesh::respond(&self.topology, request, &self.sync, now_ms())
            .map_err(|e| {
                tracing::debug!(caller = %caller, error = %e, "sync request refused");
                sync_status(&e)
            })?;
        if responded.applied.refuted
            && let Some(l) = self.peers.as_ref().and_then(|p| p.liveness())
        {
            lock_liveness(l).on_refuted();
        }
        let resp = response_to_wire(&responded.response, self.version());
        tracing::debug!(
            caller = %caller,
            kind,
            applied = responded.applied.changed.len(),
            nodes = resp.nodes.len(),
            "sync answered"
        );
        Ok(Response::new(resp))
    }

    async fn indirect_ping(
        &self,
        req: Request<pb::IndirectPingRequest>,
    ) -> Result<Response<pb::IndirectPingResponse>, Status> {
        let caller = authorize(&req, &req.get_ref().sender_id)?;
        let r = req.into_inner();
        let target = NodeId::new(&r.target_id).map_err(|e| invalid("target_id", e))?;
        let Some(peers) = &self.peers else {
            return Err(Status::unimplemented("this node does not ping for others"));
        };
        if target == self.node_id {
            return Ok(Response::new(pb::IndirectPingResponse { ack: true }));
        }
        // Only members, at the address this node holds for them: the RPC
        // must not become a way to make a node dial anything.
        let Some(node) = self.topology.get_node(target.as_str()) else {
            return Err(Status::not_found(format!("{target} is not a member here")));
        };
        let known = peers
            .get_peer(target.as_str())
            .is_some_and(|p| p.info().address == node.address);
        if !known {
            let _ = peers.remove_peer(target.as_str());
            let info = PeerInfo::new(target.as_str(), node.address.clone())
                .map_err(|e| Status::failed_precondition(e.to_string()))?;
            // Another call may have added it meanwhile; either way it is there.
            let _ = peers.add_peer(info);
        }
        let limit = Duration::from_millis(u64::from(r.timeout_ms))
            .clamp(Duration::from_millis(1), MAX_INDIRECT_PING);
        let ack = matches!(
            tokio::time::timeout(limit, peers.ping_peer(target.as_str())).await,
            Ok(Ok(_))
        );
        tracing::debug!(caller = %caller, target = %target, ack, "indirect ping");
        Ok(Response::new(pb::IndirectPingResponse { ack }))
    }

    async fn get_topology(
        &self,
        req: Request<pb::GetTopologyRequest>,
    ) -> Result<Response<pb::GetTopologyResponse>, Status> {
        authorize(&req, &req.get_ref().sender_id)?;
        Ok(Response::new(pb::GetTopologyResponse {
            version: self.version(),
            nodes: self.full_topology(),
        }))
    }
}
