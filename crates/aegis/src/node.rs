//! `Node` and `NodeBuilder`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aegis_peer::transport::{Credentials, CredentialsWatcher, RenewalConfig, RoutesLayer};
use aegis_peer::{
    Health, HealthChecker, HealthInfo, HealthResponse, HealthStatus, MeshServer, MeshServerConfig,
    NodeInfoResponse, Peer, PeerConfig, PeerInfo, PeerManager, PingResponse, Registrar,
    ServerHandle, SharedLiveness, SyncReport,
};
use aegis_pool::ServiceClientPool;
use aegis_tls::{CertInfo, TlsConfig, TlsOptions};
use aegis_topology::{NodeId, NodeInfo, NodeType, ServiceInfo, Topology, TopologyConfig};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::service::RoutesBuilder;

use crate::membership::Hub;
use crate::{Error, MeshConfig, mesh};
use aegis_mesh::{Liveness, Member, MemberEvent};
use aegis_topology::Providers;

/// Builds a [`Node`]. Defaults: type `generic`, certificate directory
/// `./certs`, the mesh loop on.
#[must_use]
pub struct NodeBuilder {
    id: Option<String>,
    name: Option<String>,
    node_type: NodeType,
    address: Option<String>,
    advertise: Option<String>,
    services: Vec<ServiceInfo>,
    registrars: Vec<Registrar>,
    layers: Vec<RoutesLayer>,
    grpc_services: Vec<&'static str>,
    seeds: Vec<String>,
    discovery: crate::Discovery,
    admin: Option<String>,
    allow_remote_admin: bool,
    require_ca: bool,
    cert_dir: PathBuf,
    tls_options: Option<TlsOptions>,
    renewal: RenewalConfig,
    strict_modes: bool,
    mesh: MeshConfig,
    peer_config: PeerConfig,
    server_config: MeshServerConfig,
    shutdown_grace: Duration,
}

impl Default for NodeBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for NodeBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeBuilder")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("address", &self.address)
            .finish_non_exhaustive()
    }
}

impl NodeBuilder {
    /// A builder with the reference's defaults.
    pub fn new() -> Self {
        Self {
            id: None,
            name: None,
            node_type: NodeType::GENERIC,
            address: None,
            advertise: None,
            services: Vec::new(),
            registrars: Vec::new(),
            layers: Vec::new(),
            grpc_services: Vec::new(),
            seeds: Vec::new(),
            discovery: crate::Discovery::default(),
            admin: None,
            allow_remote_admin: false,
            require_ca: false,
            cert_dir: PathBuf::from("./certs"),
            tls_options: None,
            renewal: RenewalConfig::default(),
            strict_modes: false,
            mesh: MeshConfig::default(),
            peer_config: PeerConfig::default(),
            server_config: MeshServerConfig::default(),
            shutdown_grace: Duration::from_secs(5),
        }
    }

    /// The node ID (required): its certificate's CN and its key in the topology.
    pub fn with_id(mut self, id: impl Into<String>) -> Self {
        self.id = Some(id.into());
        self
    }

    /// The node's name (required).
    pub fn with_name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// The node's type (default `generic`).
    pub fn with_type(mut self, node_type: impl Into<NodeType>) -> Self {
        self.node_type = node_type.into();
        self
    }

    /// Where the node listens, `host:port` (required; port 0 picks one).
    pub fn with_address(mut self, address: impl Into<String>) -> Self {
        self.address = Some(address.into());
        self
    }

    /// The address other nodes dial (`host:port`), when it is not the one
    /// the node binds: behind NAT or port mapping, or when binding
    /// `0.0.0.0` (which nobody can dial). Port 0 takes the bound port.
    /// Default: the bind address.
    pub fn with_advertise_address(mut self, address: impl Into<String>) -> Self {
        self.advertise = Some(address.into());
        self
    }

    /// Services the node offers.
    pub fn with_services(mut self, services: impl IntoIterator<Item = ServiceInfo>) -> Self {
        self.services.extend(services);
        self
    }

    /// Declares `info` in the mesh and serves `service` for it, in one
    /// step: the service is registered on the server, the node is listed as
    /// a provider of `info`, and `grpc.health.v1` reports the service under
    /// its gRPC name (serving once the server runs; change it with
    /// [`Node::set_service_health`]).
    ///
    /// ```no_run
    /// # fn run<S>(greeter: S) -> Result<(), aegis::Error>
    /// # where S: aegis::tonic::codegen::Service<
    /// #     aegis::tonic::codegen::http::Request<aegis::tonic::body::Body>,
    /// #     Response = aegis::tonic::codegen::http::Response<aegis::tonic::body::Body>,
    /// #     Error = std::convert::Infallible> + aegis::tonic::server::NamedService
    /// #     + Clone + Send + Sync + 'static, S::Future: Send + 'static {
    /// use aegis::{Node, ServiceInfo};
    /// // `greeter` is a generated server, e.g. `GreeterServer::new(MyGreeter)`.
    /// let node = Node::builder()
    ///     .with_id("greeter-1")
    ///     .with_name("greeter")
    ///     .with_address("127.0.0.1:7101")
    ///     .with_grpc_service(ServiceInfo::new("greeter", "v1"), greeter)
    ///     .build()?;
    /// # let _ = node; Ok(()) }
    /// ```
    pub fn with_grpc_service<S>(mut self, info: ServiceInfo, service: S) -> Self
    where
        S: tonic::codegen::Service<
                tonic::codegen::http::Request<tonic::body::Body>,
                Response = tonic::codegen::http::Response<tonic::body::Body>,
                Error = std::convert::Infallible,
            > + tonic::server::NamedService
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
    {
        self.services.push(info);
        self.grpc_services.push(S::NAME);
        self.registrars
            .push(Arc::new(move |routes: &mut RoutesBuilder| {
                routes.add_service(service.clone());
            }));
        self
    }

    /// Joins the mesh through a seed known only by its address
    /// (`host:port`): once the server runs, the node asks who answers there
    /// (the seed's certificate must chain to this mesh's CA; its node ID is
    /// read from it), makes it a peer and syncs. A seed that is not up yet
    /// is tried again with back-off; one from another CA is refused with an
    /// error in the log that says so. See also [`Node::join`].
    pub fn with_seed(mut self, address: impl Into<String>) -> Self {
        self.seeds.push(address.into());
        self
    }

    /// Serves the admin HTTP endpoint on `address` (`ip:port`) once the
    /// server starts: `/metrics`, `/healthz`, `/readyz`, `/members` and a
    /// live page at `/` (feature `admin`). Plain HTTP with no
    /// authentication: a loopback address unless
    /// [`NodeBuilder::allow_remote_admin`] says otherwise.
    #[cfg(feature = "admin")]
    pub fn with_admin_address(mut self, address: impl Into<String>) -> Self {
        self.admin = Some(address.into());
        self
    }

    /// Lets the admin endpoint listen on an address that is not loopback
    /// (a cluster-internal network you trust). Default: refused.
    #[cfg(feature = "admin")]
    pub fn allow_remote_admin(mut self, allow: bool) -> Self {
        self.allow_remote_admin = allow;
        self
    }

    /// Registers gRPC services on the server when it starts.
    pub fn with_service_registration(
        mut self,
        register: impl Fn(&mut RoutesBuilder) + Send + Sync + 'static,
    ) -> Self {
        self.registrars.push(Arc::new(register));
        self
    }

    /// Wraps every service the node answers (the mesh protocol, health and
    /// the user's services) in a tower layer: authorization by calling
    /// node, tracing, concurrency limits. Layers added later wrap those
    /// added before. The layer sees each call as an HTTP request;
    /// [`caller_from_extensions`](crate::caller_from_extensions) names the
    /// calling node. See [`RoutesLayer`] for an example.
    pub fn with_layer(mut self, layer: RoutesLayer) -> Self {
        self.layers.push(layer);
        self
    }

    /// The certificate directory (default `./certs`); certificates are
    /// generated there if missing: the mesh CA (valid 365 days,
    /// [`aegis_tls::CA_VALIDITY`]) once, and this node's certificate (valid
    /// 90 days, [`aegis_tls::NODE_VALIDITY`]), named after its ID. Nodes of
    /// one mesh must share the CA: point them at the same directory, or copy
    /// `ca-cert.pem` and `ca-key.pem`.
    pub fn with_cert_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.cert_dir = dir.into();
        self
    }

    /// Refuses to create a mesh CA in the certificate directory: a
    /// directory without one (a typo in its path, say) is an error naming
    /// the missing file, instead of the start of a mesh of its own.
    /// Default: a missing CA is created, with a warning naming the
    /// directory.
    pub fn require_existing_ca(mut self, require: bool) -> Self {
        self.require_ca = require;
        self
    }

    /// Refuses to start when the node's key or the CA key is readable by
    /// others, or the certificate directory writable by others; the error
    /// names each with the `chmod` that fixes it. Default: a warning each.
    pub fn refuse_loose_permissions(mut self, refuse: bool) -> Self {
        self.strict_modes = refuse;
        self
    }

    /// Loads TLS from these options instead of the certificate directory.
    /// Files given this way are watched like the directory's: replaced
    /// files are loaded without a restart (the node renews nothing itself).
    pub fn with_tls_options(mut self, options: TlsOptions) -> Self {
        self.tls_options = Some(options);
        self
    }

    /// When the running node renews its certificate and reloads changed
    /// files (see [`RenewalConfig`]; defaults: files looked at every second,
    /// renewal at 2/3 of the certificate's life when the certificate
    /// directory holds the CA key, a warning at 80 % when it does not).
    pub fn with_renewal(mut self, renewal: RenewalConfig) -> Self {
        self.renewal = renewal;
        self
    }

    /// Where the node learns the membership from: gossip between the nodes
    /// (the default), or etcd (feature `etcd`:
    /// `Discovery::etcd(["127.0.0.1:2379"], "/my-mesh")`), in which case the
    /// mesh loop is off and seeds are refused (members come from etcd).
    pub fn with_discovery(mut self, discovery: crate::Discovery) -> Self {
        self.discovery = discovery;
        self
    }

    /// Configures (or, with [`MeshConfig::disabled`], turns off) the mesh loop.
    pub fn with_mesh_loop(mut self, mesh: MeshConfig) -> Self {
        self.mesh = mesh;
        self
    }

    /// Deadlines of peer calls.
    pub fn with_peer_config(mut self, config: PeerConfig) -> Self {
        self.peer_config = config;
        self
    }

    /// Server limits.
    pub fn with_server_config(mut self, config: MeshServerConfig) -> Self {
        self.server_config = config;
        self
    }

    /// How long `shutdown` lets in-flight calls finish (default 5 s).
    pub fn with_shutdown_grace(mut self, grace: Duration) -> Self {
        self.shutdown_grace = grace;
        self
    }

    /// Validates the fields, loads or generates the certificates, and puts
    /// the node's own entry in its topology.
    ///
    /// # Errors
    /// [`Error::MissingField`] or [`Error::InvalidField`] naming the field;
    /// [`Error::Tls`] with the cause when certificates fail.
    pub fn build(mut self) -> Result<Node, Error> {
        if !matches!(self.discovery, crate::Discovery::Gossip) {
            if let Some(seed) = self.seeds.first() {
                return Err(Error::InvalidField {
                    field: "seed",
                    reason: format!(
                        "{seed}: seeds are for gossip; with etcd discovery the members come from etcd"
                    ),
                });
            }
            // No probing, no anti-entropy: the source is authoritative.
            self.mesh.enabled = false;
        }
        let id = self.id.ok_or(Error::MissingField("id"))?;
        let id = NodeId::new(&id).map_err(|e| Error::InvalidField {
            field: "id",
            reason: e.to_string(),
        })?;
        let name = self.name.ok_or(Error::MissingField("name"))?;
        if name.trim().is_empty() {
            return Err(Error::InvalidField {
                field: "name",
                reason: "it is empty".into(),
            });
        }
        let bind = self.address.ok_or(Error::MissingField("address"))?;
        aegis_peer::transport::check_address(&bind).map_err(|e| Error::InvalidField {
            field: "address",
            reason: e.to_string(),
        })?;
        let address = match &self.advertise {
            Some(a) => {
                aegis_peer::transport::check_address(a).map_err(|e| Error::InvalidField {
                    field: "advertise address",
                    reason: e.to_string(),
                })?;
                if unspecified_host(a) {
                    return Err(Error::InvalidField {
                        field: "advertise address",
                        reason: format!("{a} is not an address other nodes can dial"),
                    });
                }
                a.clone()
            }
            None if unspecified_host(&bind) => {
                let port = bind.rsplit_once(':').map_or("PORT", |(_, p)| p);
                return Err(Error::InvalidField {
                    field: "address",
                    reason: format!(
                        "{bind} listens on every interface, which no other node can dial: \
                         also give with_advertise_address(\"HOST:{port}\") with an address \
                         the other nodes reach"
                    ),
                });
            }
            None => bind.clone(),
        };
        let admin = match &self.admin {
            None => None,
            Some(a) => {
                let addr: SocketAddr = a.parse().map_err(|_| Error::InvalidField {
                    field: "admin address",
                    reason: format!("{a:?} is not ip:port (for example 127.0.0.1:9100)"),
                })?;
                if !addr.ip().is_loopback() && !self.allow_remote_admin {
                    return Err(Error::InvalidField {
                        field: "admin address",
                        reason: format!(
                            "{addr} is not a loopback address, and the admin endpoint has no \
                             authentication: use allow_remote_admin(true) to serve it on a \
                             network you trust"
                        ),
                    });
                }
                Some(addr)
            }
        };
        for seed in &self.seeds {
            aegis_peer::transport::check_address(seed).map_err(|e| Error::InvalidField {
                field: "seed",
                reason: e.to_string(),
            })?;
        }
        // Everything is checked before anything touches the disk: a refused
        // build leaves no key or certificate behind.
        let own = NodeInfo::new(id.as_str(), name.clone(), address)?
            .with_type(self.node_type.clone())
            .with_services(self.services.clone());
        let limits = aegis_topology::Limits::default();
        limits.check(&own)?;
        let cert_dir = aegis_tls::CertDir::new(&self.cert_dir)
            .require_existing_ca(self.require_ca)
            .refuse_loose_permissions(self.strict_modes);
        let tls = match &self.tls_options {
            Some(opts) => aegis_tls::load_tls_config(opts)?,
            None => {
                cert_dir.ensure_node(id.as_str())?;
                aegis_tls::load_tls_config(&TlsOptions::from_cert_dir(&self.cert_dir, id.as_str()))?
            }
        };
        if *tls.node_id() != id {
            return Err(Error::InvalidField {
                field: "id",
                reason: format!("the certificate names node {}, not {id}", tls.node_id()),
            });
        }
        // A restarted node's entries must win over those of its previous life.
        let generation = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(1)
            .max(1);
        let topology = Topology::with_config(TopologyConfig {
            local_id: Some(id.clone()),
            generation,
            ..TopologyConfig::default()
        });
        topology.add_node(own)?;
        // Membership events are made only once someone asks for them.
        let membership = Hub::new(&topology);
        // The liveness state is shared by the mesh loop, this node's pings
        // and its server (piggybacks travel on probes and their answers).
        let liveness: SharedLiveness = Arc::new(std::sync::Mutex::new(Liveness::new(
            id.clone(),
            self.mesh.liveness(),
        )));
        let credentials = Credentials::new(tls);
        let watcher = match self.tls_options {
            Some(opts) => CredentialsWatcher::new(credentials.clone(), opts),
            None => CredentialsWatcher::for_cert_dir(credentials.clone(), cert_dir),
        }
        .with_config(self.renewal);
        // The share of its life at which the certificate is renewed (or,
        // when this node cannot renew it, warned about).
        let renewal_share = watcher.renewal_share();
        let mut peers = PeerManager::new(id.clone(), Some(&credentials), topology.clone())
            .with_config(self.peer_config);
        if self.mesh.enabled {
            peers = peers.with_liveness(Arc::clone(&liveness));
        }
        let peers = Arc::new(peers);
        Ok(Node {
            inner: Arc::new(NodeInner {
                id,
                name,
                node_type: self.node_type,
                services: self.services,
                credentials,
                watcher: std::sync::Mutex::new(Some(watcher)),
                renewal_share,
                topology,
                health: Health::new(),
                peers,
                liveness,
                pool: OnceLock::new(),
                membership,
                registrars: self.registrars,
                layers: self.layers,
                bind,
                admin,
                grpc_services: self.grpc_services,
                seeds: self.seeds,
                discovery: self.discovery,
                mesh: self.mesh,
                server_config: self.server_config,
                shutdown_grace: self.shutdown_grace,
                generation,
                running: tokio::sync::Mutex::new(None),
                shut_down: std::sync::atomic::AtomicBool::new(false),
            }),
        })
    }
}

struct Running {
    server: Option<ServerHandle>,
    stop: watch::Sender<bool>,
    mesh: Option<JoinHandle<()>>,
    seeds: Vec<JoinHandle<()>>,
    admin: Option<(SocketAddr, JoinHandle<()>)>,
    /// Renews and reloads the certificate while the node runs.
    watcher: Option<JoinHandle<()>>,
    /// Registers with and watches the discovery source (etcd).
    discovery: Option<JoinHandle<()>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.watcher.take() {
            task.abort();
        }
        if let Some(task) = self.discovery.take() {
            task.abort();
        }
        if let Some(task) = self.mesh.take() {
            task.abort();
        }
        for task in &self.seeds {
            task.abort();
        }
        if let Some((_, task)) = &self.admin {
            task.abort();
        }
    }
}

pub(crate) struct NodeInner {
    id: NodeId,
    name: String,
    node_type: NodeType,
    services: Vec<ServiceInfo>,
    credentials: Credentials,
    /// Taken when the node starts.
    watcher: std::sync::Mutex<Option<CredentialsWatcher>>,
    renewal_share: f64,
    topology: Topology,
    health: Health,
    peers: Arc<PeerManager>,
    liveness: SharedLiveness,
    pool: OnceLock<ServiceClientPool>,
    membership: Arc<Hub>,
    registrars: Vec<Registrar>,
    layers: Vec<RoutesLayer>,
    /// The address the server binds (the advertised one is in the entry).
    bind: String,
    /// Where the admin endpoint listens, if anywhere.
    #[cfg_attr(not(feature = "admin"), allow(dead_code))]
    admin: Option<SocketAddr>,
    grpc_services: Vec<&'static str>,
    seeds: Vec<String>,
    #[cfg_attr(not(feature = "etcd"), allow(dead_code))]
    discovery: crate::Discovery,
    mesh: MeshConfig,
    server_config: MeshServerConfig,
    shutdown_grace: Duration,
    generation: u64,
    running: tokio::sync::Mutex<Option<Running>>,
    shut_down: std::sync::atomic::AtomicBool,
}

impl NodeInner {
    /// Changes the node's own topology entry (a new stamp: it spreads).
    fn update_own(&self, change: impl FnOnce(&mut NodeInfo)) -> Result<(), Error> {
        let me = self.topology.get_node(self.id.as_str());
        let mut info = me
            .map(|n| (*n).clone())
            .ok_or_else(|| Error::ShutDown(self.id.to_string()))?;
        change(&mut info);
        info.updated_at = 0;
        self.topology.update_node(info)?;
        Ok(())
    }

    async fn join(&self, address: &str) -> Result<NodeId, Error> {
        let id =
            aegis_peer::transport::identify(&self.credentials, address, Duration::from_secs(3))
                .await
                .map_err(|e| match aegis_peer::PeerError::from(e) {
                    aegis_peer::PeerError::InvalidAddress { reason, .. } => Error::InvalidField {
                        field: "seed",
                        reason: format!("{address:?}: {reason}"),
                    },
                    other => Error::Peer(other),
                })?;
        if id == self.id {
            return Err(Error::InvalidField {
                field: "seed",
                reason: format!("{address} is this node itself"),
            });
        }
        if self.peers.get_peer(id.as_str()).is_none() {
            match self.peers.add_peer(PeerInfo::new(id.as_str(), address)?) {
                // Learnt meanwhile from the topology: fine.
                Ok(_) | Err(aegis_peer::PeerError::AlreadyExists(_)) => {}
                Err(other) => return Err(other.into()),
            }
        }
        self.peers.sync_topology(id.as_str()).await?;
        crate::mesh::learn_peers(&self.peers, &self.topology, &self.id);
        Ok(id)
    }

    fn publish_health(&self, status: HealthStatus) {
        let current = self.topology.get_node(self.id.as_str()).map(|n| n.health);
        if current.is_some_and(|h| h != status) {
            // Only fails after shutdown, when the entry is a tombstone.
            let _ = self.update_own(|info| info.health = status);
        }
    }
}

/// One node of the mesh. Cheap to clone; clones are the same node.
#[derive(Clone)]
pub struct Node {
    inner: Arc<NodeInner>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("id", &self.inner.id)
            .field("address", &self.address())
            .finish_non_exhaustive()
    }
}

impl Node {
    /// A [`NodeBuilder`].
    pub fn builder() -> NodeBuilder {
        NodeBuilder::new()
    }

    /// The seed of this node's random choices: different per node and per
    /// life, so nodes started together do not choose alike.
    fn seed(&self) -> u64 {
        self.inner.generation ^ hash(self.inner.id.as_str())
    }

    fn check_open(&self) -> Result<(), Error> {
        if self
            .inner
            .shut_down
            .load(std::sync::atomic::Ordering::Acquire)
        {
            Err(Error::ShutDown(self.inner.id.to_string()))
        } else {
            Ok(())
        }
    }

    /// Binds the address and serves the mesh protocol, the standard gRPC
    /// health service and the registered services; starts the mesh loop.
    /// Returns the bound address (port 0 becomes the real port, which the
    /// node's topology entry then advertises).
    ///
    /// # Errors
    /// [`Error::AlreadyStarted`], [`Error::ShutDown`], or the bind error
    /// naming the address.
    pub async fn start_server(&self) -> Result<SocketAddr, Error> {
        let bound = self.start(true).await?;
        bound.ok_or_else(|| Error::AlreadyStarted(self.inner.id.to_string()))
    }

    /// Starts the node as a **client only**: no server, but the mesh loop
    /// runs (it probes, syncs and joins its seeds), so the node's view and
    /// its pool stay current. Its entry advertises port 0, which marks it
    /// as client-only: other nodes neither dial nor probe it.
    ///
    /// # Errors
    /// [`Error::AlreadyStarted`], [`Error::ShutDown`].
    pub async fn start_client(&self) -> Result<(), Error> {
        self.start(false).await.map(|_| ())
    }

    async fn start(&self, serve: bool) -> Result<Option<SocketAddr>, Error> {
        self.check_open()?;
        let mut running = self.inner.running.lock().await;
        if running.is_some() {
            return Err(Error::AlreadyStarted(self.inner.id.to_string()));
        }
        let (handle, bound) = if serve {
            let configured = self.inner.bind.clone();
            let mut server = MeshServer::new(
                &self.inner.credentials,
                self.inner.topology.clone(),
                self.inner.health.clone(),
            )
            .with_config(self.inner.server_config)
            .with_peers(Arc::clone(&self.inner.peers));
            for r in &self.inner.registrars {
                server = server.with_registrar(Arc::clone(r));
            }
            for layer in &self.inner.layers {
                server = server.with_layer(layer.clone());
            }
            let handle = server.serve(&configured).await?;
            let bound = handle.local_addr();
            // Port 0 (bound or advertised) becomes the port the server got.
            if let Some((host, "0")) = self.address().rsplit_once(':') {
                let advertised = format!("{host}:{}", bound.port());
                self.inner.update_own(|info| info.address = advertised)?;
            }
            (Some(handle), Some(bound))
        } else {
            if let Some((host, port)) = self.address().rsplit_once(':')
                && port != "0"
            {
                let client_only = format!("{host}:0");
                self.inner.update_own(|info| info.address = client_only)?;
            }
            (None, None)
        };
        let (stop, stop_rx) = watch::channel(false);
        let seeds = self
            .inner
            .seeds
            .iter()
            .map(|address| {
                tokio::spawn(join_seed(
                    Arc::downgrade(&self.inner),
                    address.clone(),
                    stop_rx.clone(),
                ))
            })
            .collect();
        let discovery = match &self.inner.discovery {
            #[cfg(feature = "etcd")]
            crate::Discovery::Etcd(config) => Some(tokio::spawn(crate::discovery::etcd::run(
                (**config).clone(),
                self.inner.topology.clone(),
                self.inner.credentials.clone(),
                stop_rx.clone(),
            ))),
            _ => None,
        };
        let mesh = self.inner.mesh.enabled.then(|| {
            let driver = mesh::Driver {
                local: self.inner.id.clone(),
                topology: self.inner.topology.clone(),
                peers: Arc::downgrade(&self.inner.peers),
                liveness: Arc::clone(&self.inner.liveness),
                config: self.inner.mesh,
            };
            tokio::spawn(mesh::run(driver, stop_rx, self.seed()))
        });
        #[cfg(feature = "admin")]
        let admin = match self.inner.admin {
            Some(addr) => {
                crate::admin::install_recorder();
                let listener = tokio::net::TcpListener::bind(addr)
                    .await
                    .map_err(|source| aegis_peer::PeerError::Bind {
                        address: addr.to_string(),
                        source,
                    })?;
                let bound =
                    listener
                        .local_addr()
                        .map_err(|source| aegis_peer::PeerError::Bind {
                            address: addr.to_string(),
                            source,
                        })?;
                tracing::info!(node_id = %self.inner.id, address = %bound, "admin endpoint listening");
                let task = tokio::spawn(crate::admin::serve(
                    self.clone(),
                    listener,
                    stop.subscribe(),
                ));
                Some((bound, task))
            }
            None => None,
        };
        #[cfg(not(feature = "admin"))]
        let admin = None;
        // The watcher's first look (at once) also sets the certificate gauges.
        let watcher = self
            .inner
            .watcher
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
            .map(CredentialsWatcher::spawn);
        self.set_health(HealthStatus::Healthy, "serving", None);
        for name in &self.inner.grpc_services {
            if self.inner.health.service(name).is_none() {
                self.inner.health.set_service(*name, HealthStatus::Healthy);
            }
        }
        match bound {
            Some(address) => {
                tracing::info!(node_id = %self.inner.id, %address, "node started");
            }
            None => tracing::info!(node_id = %self.inner.id, "node started as a client only"),
        }
        *running = Some(Running {
            server: handle,
            stop,
            mesh,
            seeds,
            admin,
            watcher,
            discovery,
        });
        Ok(bound)
    }

    /// Announces that the node leaves (a tombstone, pushed to its peers so
    /// they drop it at once), stops the mesh loop, stops the server letting
    /// in-flight calls finish, and closes peers and the pool. Idempotent.
    ///
    /// # Errors
    /// [`Error::Peer`] if the server had failed.
    pub async fn shutdown(&self) -> Result<(), Error> {
        if self
            .inner
            .shut_down
            .swap(true, std::sync::atomic::Ordering::AcqRel)
        {
            return Ok(());
        }
        let running = self.inner.running.lock().await.take();
        let mut result = Ok(());
        if let Some(running) = &running {
            let _ = running.stop.send(true);
        }
        let mut running = running;
        if let Some(task) = running.as_mut().and_then(|r| r.mesh.take()) {
            let _ = task.await;
        }
        // Deregisters from the discovery source (bounded: etcd may be away).
        if let Some(mut task) = running.as_mut().and_then(|r| r.discovery.take())
            && tokio::time::timeout(Duration::from_secs(5), &mut task)
                .await
                .is_err()
        {
            task.abort();
        }
        // Tell the mesh, whether or not the server ran: others may know
        // this node from a sync it made by hand.
        if self
            .inner
            .topology
            .remove_node(self.inner.id.as_str())
            .is_ok()
        {
            let told = mesh::announce_leave(
                &self.inner.peers,
                &self.inner.topology,
                &self.inner.id,
                &self.inner.mesh,
                self.seed(),
            )
            .await;
            tracing::debug!(node_id = %self.inner.id, told, "leave announced");
        }
        if let Some(server) = running.as_mut().and_then(|r| r.server.take()) {
            result = server
                .shutdown(self.inner.shutdown_grace)
                .await
                .map_err(Error::from);
        }
        self.inner.peers.close();
        if let Some(pool) = self.inner.pool.get() {
            pool.close().await;
        }
        tracing::info!(node_id = %self.inner.id, "node shut down");
        result
    }

    /// Adds a peer; it is dialled on first use.
    ///
    /// # Errors
    /// As [`PeerManager::add_peer`].
    pub fn add_peer(&self, info: PeerInfo) -> Result<(), Error> {
        self.check_open()?;
        self.inner.peers.add_peer(info)?;
        Ok(())
    }

    /// Joins through a node known only by its address: asks who answers
    /// there (its certificate must chain to this mesh's CA, and names its
    /// node ID), makes it a peer, and syncs with it once. Returns its ID.
    ///
    /// # Errors
    /// [`Error::InvalidField`] (`seed`) for a malformed address or this
    /// node's own; [`Error::Peer`] with [`aegis_peer::PeerError::Seed`]
    /// saying why nothing usable answered (not up, not TLS, another CA).
    pub async fn join(&self, address: &str) -> Result<NodeId, Error> {
        self.check_open()?;
        self.inner.join(address).await
    }

    /// Where the admin endpoint listens (the bound port for port 0), once
    /// the server runs.
    pub async fn admin_address(&self) -> Option<SocketAddr> {
        self.inner
            .running
            .lock()
            .await
            .as_ref()
            .and_then(|r| r.admin.as_ref().map(|(a, _)| *a))
    }

    /// Whether the node is ready for traffic: its server runs, and it knows
    /// at least one live member besides itself, or is alone by
    /// configuration (no seed and no peer given). The error says why not.
    pub async fn readiness(&self) -> Result<(), String> {
        if self.inner.running.lock().await.is_none() {
            return Err("the server is not running".into());
        }
        let others_alive = self
            .inner
            .topology
            .entries()
            .iter()
            .filter(|e| *e.id() != self.inner.id && e.state == aegis_topology::NodeState::Alive)
            .count();
        let alone = self.inner.seeds.is_empty() && self.inner.peers.get_all_peers().is_empty();
        if others_alive == 0 && !alone {
            return Err("no live member known yet".into());
        }
        Ok(())
    }

    /// Sets the health of one of this node's gRPC services, by its gRPC
    /// name (`greeter.v1.Greeter`), as `grpc.health.v1` reports it.
    pub fn set_service_health(&self, grpc_name: &str, status: HealthStatus) {
        self.inner.health.set_service(grpc_name, status);
    }

    /// Removes a peer and closes its channel.
    ///
    /// # Errors
    /// As [`PeerManager::remove_peer`].
    pub fn remove_peer(&self, id: &str) -> Result<(), Error> {
        self.inner.peers.remove_peer(id)?;
        Ok(())
    }

    /// A peer by ID.
    pub fn get_peer(&self, id: &str) -> Option<Peer> {
        self.inner.peers.get_peer(id)
    }

    /// Every peer.
    pub fn get_all_peers(&self) -> Vec<Peer> {
        self.inner.peers.get_all_peers()
    }

    /// The peer manager.
    pub fn peers(&self) -> &PeerManager {
        &self.inner.peers
    }

    /// Pings a peer; the response carries the round-trip latency.
    ///
    /// # Errors
    /// As [`PeerManager::ping_peer`].
    pub async fn ping_peer(&self, id: &str) -> Result<PingResponse, Error> {
        Ok(self.inner.peers.ping_peer(id).await?)
    }

    /// A peer's health.
    ///
    /// # Errors
    /// As [`PeerManager::get_peer_health`].
    pub async fn get_peer_health(&self, id: &str) -> Result<HealthResponse, Error> {
        Ok(self.inner.peers.get_peer_health(id).await?)
    }

    /// A peer's identity and health.
    ///
    /// # Errors
    /// As [`PeerManager::get_peer_node_info`].
    pub async fn get_peer_node_info(&self, id: &str) -> Result<NodeInfoResponse, Error> {
        Ok(self.inner.peers.get_peer_node_info(id).await?)
    }

    /// Syncs topologies with one peer, both ways, then makes peers of the
    /// nodes learnt.
    ///
    /// # Errors
    /// As [`PeerManager::sync_topology`].
    pub async fn sync_topology(&self, id: &str) -> Result<SyncReport, Error> {
        let report = self.inner.peers.sync_topology(id).await?;
        mesh::learn_peers(&self.inner.peers, &self.inner.topology, &self.inner.id);
        Ok(report)
    }

    /// Syncs with every peer; fails with the first error after trying all.
    ///
    /// # Errors
    /// The first peer's error, if any failed.
    pub async fn sync_topology_with_all_peers(&self) -> Result<(), Error> {
        let results = self.inner.peers.sync_topology_with_all_peers().await;
        mesh::learn_peers(&self.inner.peers, &self.inner.topology, &self.inner.id);
        for (_, r) in results {
            r?;
        }
        Ok(())
    }

    /// Sets the node's health (served by `GetHealth` and `grpc.health.v1`),
    /// and, when the status changes, puts it in the node's own topology
    /// entry, so that other nodes' pools prefer healthy providers.
    pub fn set_health(
        &self,
        status: HealthStatus,
        message: impl Into<String>,
        error: Option<String>,
    ) {
        self.inner.health.set(status, message, error);
        self.inner.publish_health(status);
    }

    /// Runs a checker and records the outcome either way.
    ///
    /// # Errors
    /// [`Error::HealthCheck`] with what the checker said.
    pub async fn check_health(&self, checker: &dyn HealthChecker) -> Result<(), Error> {
        let result = self.inner.health.check(checker).await;
        self.inner.publish_health(self.inner.health.get().status);
        result.map_err(|e| Error::HealthCheck {
            checker: checker.name().to_owned(),
            reason: e.to_string(),
        })
    }

    /// Whether the node's status is healthy.
    pub fn is_healthy(&self) -> bool {
        self.inner.health.is_healthy()
    }

    /// The node ID.
    pub fn id(&self) -> &NodeId {
        &self.inner.id
    }

    /// The node's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The node's type.
    pub fn node_type(&self) -> &NodeType {
        &self.inner.node_type
    }

    /// The address the node advertises (the bound one once started on port 0).
    pub fn address(&self) -> String {
        // The node's own entry is the one record of it (a tombstone after
        // shutdown keeps the content).
        self.inner
            .topology
            .get_entry(self.inner.id.as_str())
            .map(|e| e.info.address.clone())
            .unwrap_or_default()
    }

    /// The services the node offers.
    pub fn services(&self) -> &[ServiceInfo] {
        &self.inner.services
    }

    /// The node's health.
    pub fn health(&self) -> HealthInfo {
        self.inner.health.get()
    }

    /// Membership changes from now on: a member up (joined, restarted,
    /// refuted its death), updated, down (dead or purged), or left. A
    /// subscriber that falls more than 1,024 events behind gets
    /// `RecvError::Lagged` and should read [`Node::members`] afresh.
    ///
    /// Must be called inside a Tokio runtime for events to flow (the node
    /// starts the task that makes them on first use there).
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<MemberEvent> {
        self.inner.membership.ensure_running(&self.inner.topology);
        self.inner.membership.subscribe()
    }

    /// The members as last seen (tombstones included), and every change of
    /// them: `borrow()` for the list, `changed().await` to wait for the next.
    pub fn members(&self) -> watch::Receiver<Arc<[Member]>> {
        self.inner.membership.ensure_running(&self.inner.topology);
        self.inner.membership.watch()
    }

    /// Waits until at least `min` available providers of `name` at
    /// `version` are known, and returns them; for "ready when the mesh
    /// offers what I need", instead of a polling loop.
    ///
    /// # Errors
    /// [`Error::NotEnoughProviders`] with how many were known when
    /// `timeout` ran out.
    pub async fn wait_for_providers(
        &self,
        name: &str,
        version: &str,
        min: usize,
        timeout: Duration,
    ) -> Result<Providers, Error> {
        let mut changes = self.members();
        let topology = &self.inner.topology;
        let enough = async {
            loop {
                let providers = topology.get_service_providers(name, version);
                if providers.len() >= min {
                    return providers;
                }
                if changes.changed().await.is_err() {
                    // The node is gone: nothing will change any more.
                    std::future::pending::<()>().await;
                }
            }
        };
        tokio::time::timeout(timeout, enough)
            .await
            .map_err(|_| Error::NotEnoughProviders {
                name: name.to_owned(),
                version: version.to_owned(),
                wanted: min,
                found: topology.get_service_providers(name, version).len(),
                after: timeout,
            })
    }

    /// The node's view of the mesh.
    pub fn topology(&self) -> &Topology {
        &self.inner.topology
    }

    /// The node's TLS identity as it is now (it changes when the
    /// certificate is renewed or its files are replaced).
    pub fn tls_config(&self) -> TlsConfig {
        self.inner.credentials.current()
    }

    /// The node's credentials: what every new connection, in or out, uses.
    /// Subscribe to see renewals; [`Credentials::replace`] publishes new
    /// ones by hand.
    pub fn credentials(&self) -> &Credentials {
        &self.inner.credentials
    }

    /// What the node's current certificate says (serial, `not_after`, ...).
    pub fn certificate(&self) -> CertInfo {
        self.inner.credentials.cert_info()
    }

    /// When the current certificate is renewed (when the certificate
    /// directory holds the CA key), or else when the node warns that it
    /// runs out (see [`NodeBuilder::with_renewal`]).
    pub fn certificate_renewal_time(&self) -> std::time::SystemTime {
        aegis_tls::renewal_time(&self.certificate(), self.inner.renewal_share)
    }

    /// The node's client pool (one per node, made on first use).
    pub fn client_pool(&self) -> ServiceClientPool {
        self.inner
            .pool
            .get_or_init(|| {
                ServiceClientPool::new(self.inner.topology.clone(), Some(&self.inner.credentials))
            })
            .clone()
    }
}

impl From<&Node> for ServiceClientPool {
    fn from(node: &Node) -> Self {
        node.client_pool()
    }
}

fn hash(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Joins through `address` in the background until it works, the node is
/// gone, or it stops: 200 ms between tries, doubling up to 5 s. The first
/// failure is a warning that says why; later ones are debug lines.
async fn join_seed(
    node: std::sync::Weak<NodeInner>,
    address: String,
    mut stop: watch::Receiver<bool>,
) {
    let mut wait = Duration::from_millis(200);
    let mut warned = false;
    loop {
        let Some(inner) = node.upgrade() else {
            return;
        };
        match inner.join(&address).await {
            Ok(id) => {
                tracing::info!(node_id = %inner.id, seed = %address, peer = %id, "joined through seed");
                return;
            }
            Err(e) if !warned => {
                tracing::warn!(node_id = %inner.id, seed = %address, error = %e, "cannot join through seed yet; retrying");
                warned = true;
            }
            Err(e) => {
                tracing::debug!(node_id = %inner.id, seed = %address, error = %e, "seed still unusable")
            }
        }
        drop(inner);
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            () = tokio::time::sleep(wait) => {}
        }
        wait = (wait * 2).min(Duration::from_secs(5));
    }
}

/// Whether `address` (`host:port`) names no host: every interface.
fn unspecified_host(address: &str) -> bool {
    let host = address.rsplit_once(':').map_or(address, |(h, _)| h);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.parse::<std::net::IpAddr>()
        .is_ok_and(|ip| ip.is_unspecified())
}
