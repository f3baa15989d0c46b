//! `MeshServer`: tonic over our own rustls acceptor.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use aegis_mesh::{SyncConfig, SyncError, SyncRequest};
use aegis_tls::{NodeId, TlsConfig};
use aegis_topology::Topology;
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;
use tonic::service::RoutesBuilder;
use tonic::{Request, Response, Status};
use tonic_health::ServingStatus;

use crate::caller::caller_from_request;
use crate::convert::{
    entry_to_wire, health_to_wire, now_ms, now_unix, piggyback_to_wire, request_from_wire,
    response_to_wire,
};
use crate::health::{Health, HealthStatus};
use crate::peer::{lock_liveness, take_piggyback};
use crate::proto::mesh as pb;
use crate::proto::mesh::mesh_service_server::{MeshService, MeshServiceServer};
use crate::transport::{Connections, MeshStream, check_address};
use crate::{PeerError, PeerInfo, PeerManager};

/// A callback that adds the user's gRPC services to the server.
pub type Registrar = Arc<dyn Fn(&mut RoutesBuilder) + Send + Sync>;

/// Limits and timeouts of a [`MeshServer`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MeshServerConfig {
    /// Largest message accepted or sent, in bytes (a full 10,000-node
    /// topology is about 1.5 MB).
    pub max_message_size: usize,
    /// Concurrent HTTP/2 streams allowed on one connection.
    pub max_concurrent_streams: u32,
    /// Time a client has to finish the TLS handshake.
    pub handshake_timeout: Duration,
    /// Handshakes in progress at once; connections beyond are closed at once.
    pub max_pending_handshakes: usize,
    /// Handshakes in progress at once from one source address; beyond it
    /// that address's new connections are closed at once, so one host's
    /// silent connections cannot lock out the others. Default: 16.
    pub max_pending_handshakes_per_source: usize,
    /// Time a new connection has to send its first byte (the start of its
    /// TLS handshake); a connection that stays silent is closed then,
    /// well before `handshake_timeout`. Default: 1 s.
    pub first_byte_timeout: Duration,
    /// HTTP/2 keep-alive pings to clients, to drop dead connections.
    pub keep_alive_interval: Option<Duration>,
    /// Bounds of the sync exchange (answers are paged to fit them).
    pub sync: SyncConfig,
}

impl Default for MeshServerConfig {
    fn default() -> Self {
        Self {
            max_message_size: 16 * 1024 * 1024,
            max_concurrent_streams: 256,
            handshake_timeout: Duration::from_secs(5),
            max_pending_handshakes: 256,
            max_pending_handshakes_per_source: 16,
            first_byte_timeout: Duration::from_secs(1),
            keep_alive_interval: Some(Duration::from_secs(30)),
            sync: SyncConfig::default(),
        }
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
    tls: TlsConfig,
    topology: Topology,
    health: Health,
    config: MeshServerConfig,
    registrars: Vec<Registrar>,
    peers: Option<Arc<PeerManager>>,
}

impl MeshServer {
    /// A server for the node named by `tls`, answering from `topology` and
    /// `health`.
    pub fn new(tls: TlsConfig, topology: Topology, health: Health) -> Self {
        Self {
            tls,
            topology,
            health,
            config: MeshServerConfig::default(),
            registrars: Vec::new(),
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

    /// Binds `address` (`host:port`; port 0 picks a free port) and serves
    /// until [`ServerHandle::shutdown`] or the handle is dropped.
    ///
    /// # Errors
    /// [`PeerError::InvalidAddress`] for an address that is not `host:port`,
    /// [`PeerError::Bind`] naming the address when it cannot be bound.
    pub async fn serve(self, address: &str) -> Result<ServerHandle, PeerError> {
        let (reporter, health_service) = tonic_health::server::health_reporter();
        let handler = MeshHandler {
            node_id: self.tls.node_id().clone(),
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
        let mut handle = serve_routes(&self.tls, address, routes.routes(), self.config).await?;
        let shutdown = handle.shutdown.subscribe();
        handle
            .extra
            .push(tokio::spawn(follow_health(self.health, reporter, shutdown)));
        Ok(handle)
    }
}

/// Serves any tonic routes over mutual TLS with the listener, handshake and
/// shutdown behaviour of [`MeshServer`]: for services that are not the mesh
/// protocol (a provider's own API, a test double).
///
/// # Errors
/// As [`MeshServer::serve`].
pub async fn serve_routes(
    tls: &TlsConfig,
    address: &str,
    routes: tonic::service::Routes,
    config: MeshServerConfig,
) -> Result<ServerHandle, PeerError> {
    check_address(address)?;
    let listener = bind(address).await?;
    let local_addr = listener.local_addr().map_err(|source| PeerError::Bind {
        address: address.to_owned(),
        source,
    })?;
    let node_id = tls.node_id().clone();
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let (conn_tx, conn_rx) = mpsc::channel::<io::Result<MeshStream>>(64);
    let acceptor = TlsAcceptor::from(tls.server_config());
    let connections = Arc::new(Connections::default());
    let accept = tokio::spawn(accept_loop(
        listener,
        acceptor,
        conn_tx,
        shutdown_rx.clone(),
        config,
        Arc::clone(&connections),
    ));
    let mut signal = shutdown_rx;
    let serve = tokio::spawn(
        tonic::transport::Server::builder()
            .max_concurrent_streams(config.max_concurrent_streams)
            .http2_keepalive_interval(config.keep_alive_interval)
            .layer(crate::metrics::RpcMetricsLayer)
            .add_routes(routes)
            .serve_with_incoming_shutdown(ReceiverStream::new(conn_rx), async move {
                let _ = signal.wait_for(|stop| *stop).await;
            }),
    );
    tracing::info!(node_id = %node_id, address = %local_addr, "server listening");
    Ok(ServerHandle {
        local_addr,
        node_id,
        shutdown: shutdown_tx,
        tasks: Some(Tasks { accept, serve }),
        extra: Vec::new(),
        connections,
    })
}

async fn bind(address: &str) -> Result<TcpListener, PeerError> {
    let err = |source| PeerError::Bind {
        address: address.to_owned(),
        source,
    };
    let addr = tokio::net::lookup_host(address)
        .await
        .map_err(err)?
        .next()
        .ok_or_else(|| {
            err(io::Error::new(
                io::ErrorKind::NotFound,
                "the host resolves to no address",
            ))
        })?;
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(err)?;
    // So that a restarted node can bind its port again at once, despite
    // connections of its previous life in TIME_WAIT.
    socket.set_reuseaddr(true).map_err(err)?;
    socket.bind(addr).map_err(err)?;
    socket.listen(1024).map_err(err)
}

/// Pending handshakes per source address.
#[derive(Default)]
struct PendingBySource(std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>);

/// One pending handshake of a source; leaving frees its place.
struct SourceSlot {
    ip: std::net::IpAddr,
    table: Arc<PendingBySource>,
}

impl PendingBySource {
    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<std::net::IpAddr, usize>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A place for one more pending handshake from `ip`, if it has fewer
    /// than `max`.
    fn enter(self: &Arc<Self>, ip: std::net::IpAddr, max: usize) -> Option<SourceSlot> {
        let mut table = self.lock();
        let n = table.entry(ip).or_insert(0);
        if *n >= max.max(1) {
            return None;
        }
        *n += 1;
        Some(SourceSlot {
            ip,
            table: Arc::clone(self),
        })
    }
}

impl Drop for SourceSlot {
    fn drop(&mut self) {
        let mut table = self.table.lock();
        if let Some(n) = table.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                table.remove(&self.ip);
            }
        }
    }
}

/// Accepts TCP connections and runs each TLS handshake in its own task, with
/// a timeout and a cap on how many run at once, so a slow or silent client
/// never holds up the others.
async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    conns: mpsc::Sender<io::Result<MeshStream>>,
    mut shutdown: watch::Receiver<bool>,
    config: MeshServerConfig,
    connections: Arc<Connections>,
) {
    let pending = Arc::new(Semaphore::new(config.max_pending_handshakes));
    let per_source = Arc::new(PendingBySource::default());
    loop {
        let accepted = tokio::select! {
            _ = shutdown.wait_for(|stop| *stop) => break,
            accepted = listener.accept() => accepted,
        };
        let (tcp, remote) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                // Out of file descriptors and the like: back off a little
                // rather than spin.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let Some(source_slot) =
            per_source.enter(remote.ip(), config.max_pending_handshakes_per_source)
        else {
            crate::metrics::handshake("dropped_per_source");
            tracing::debug!(
                remote = %remote,
                limit = config.max_pending_handshakes_per_source,
                "too many pending handshakes from this address (max_pending_handshakes_per_source); connection dropped"
            );
            continue;
        };
        let Ok(permit) = Arc::clone(&pending).try_acquire_owned() else {
            crate::metrics::handshake("dropped_overload");
            tracing::warn!(remote = %remote, limit = config.max_pending_handshakes, "too many pending handshakes (max_pending_handshakes); connection dropped");
            continue;
        };
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(remote = %remote, error = %e, "set_nodelay failed");
        }
        let (acceptor, conns, connections) =
            (acceptor.clone(), conns.clone(), Arc::clone(&connections));
        tokio::spawn(async move {
            let _permit = permit;
            let _source_slot = source_slot;
            // A connection that does not even start its handshake is gone
            // long before the handshake deadline.
            let started = tokio::time::Instant::now();
            if tokio::time::timeout(config.first_byte_timeout, tcp.readable())
                .await
                .is_err()
            {
                crate::metrics::handshake("silent");
                tracing::debug!(remote = %remote, after = ?config.first_byte_timeout, "no first byte (first_byte_timeout); connection closed");
                return;
            }
            let left = config.handshake_timeout.saturating_sub(started.elapsed());
            match tokio::time::timeout(left, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => {
                    crate::metrics::handshake("accepted");
                    let stream = MeshStream::new(tls, Some(remote), &connections);
                    tracing::debug!(remote = %remote, caller = ?stream.caller_id(), "accepted");
                    let _ = conns.send(Ok(stream)).await;
                }
                Ok(Err(e)) => {
                    crate::metrics::handshake("refused");
                    tracing::info!(remote = %remote, error = %e, "TLS handshake refused");
                }
                Err(_) => {
                    crate::metrics::handshake("timed_out");
                    tracing::info!(remote = %remote, "TLS handshake timed out");
                }
            }
        });
    }
    tracing::debug!("accept loop stopped; listener closed");
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

struct Tasks {
    accept: JoinHandle<()>,
    serve: JoinHandle<Result<(), tonic::transport::Error>>,
}

/// A running [`MeshServer`]. Dropping it stops the server at once; call
/// [`ServerHandle::shutdown`] to let in-flight calls finish.
pub struct ServerHandle {
    local_addr: SocketAddr,
    node_id: NodeId,
    shutdown: watch::Sender<bool>,
    tasks: Option<Tasks>,
    /// Helpers that stop with the server (the health follower).
    extra: Vec<JoinHandle<()>>,
    connections: Arc<Connections>,
}

impl std::fmt::Debug for ServerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerHandle")
            .field("node_id", &self.node_id)
            .field("local_addr", &self.local_addr)
            .finish_non_exhaustive()
    }
}

impl ServerHandle {
    /// The bound address (with the real port when 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// How many client connections are open.
    pub fn open_connections(&self) -> usize {
        self.connections.count()
    }

    /// Stops accepting, closes the listener (the port can be bound again at
    /// once), lets in-flight calls finish for up to `grace`, then drops what
    /// is left.
    ///
    /// # Errors
    /// [`PeerError::Server`] if the server had failed.
    pub async fn shutdown(mut self, grace: Duration) -> Result<(), PeerError> {
        let _ = self.shutdown.send(true);
        let Some(tasks) = self.tasks.take() else {
            return Ok(());
        };
        let _ = tasks.accept.await;
        for task in self.extra.drain(..) {
            let _ = task.await;
        }
        let mut serve = tasks.serve;
        let result = match tokio::time::timeout(grace, &mut serve).await {
            Ok(Ok(result)) => result.map_err(PeerError::Server),
            Ok(Err(_join)) => Ok(()),
            Err(_) => {
                let dropped = self.connections.close_all();
                tracing::warn!(node_id = %self.node_id, ?grace, dropped, "grace period over; connections closed");
                // The connections end as their sockets close; give the
                // server a moment to see it, then stop waiting.
                if tokio::time::timeout(Duration::from_secs(1), &mut serve)
                    .await
                    .is_err()
                {
                    serve.abort();
                }
                Ok(())
            }
        };
        tracing::info!(node_id = %self.node_id, "server stopped");
        result
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
        if let Some(tasks) = self.tasks.take() {
            tasks.accept.abort();
            tasks.serve.abort();
        }
        for task in &self.extra {
            task.abort();
        }
        self.connections.close_all();
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
