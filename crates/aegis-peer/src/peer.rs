//! Peers: lazily connected channels to other nodes, and the calls on them.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::{Duration, Instant};

#[cfg(doc)]
use aegis_tls::TlsConfig;
use aegis_topology::{ApplyReport, NodeId, NodeType, Topology};
use aegis_transport::Credentials;
use prost::Message;
use tonic::transport::Channel;

use crate::PeerError;
use crate::convert::{
    health_from_wire, now_ms, now_unix, piggyback_from_wire, piggyback_to_wire, request_to_wire,
    response_from_wire,
};
use crate::health::HealthInfo;
use crate::proto::mesh as pb;
use crate::proto::mesh::mesh_service_client::MeshServiceClient;
use crate::transport::{ChannelOptions, check_address, mtls_channel};
use crate::util::join_all;
use aegis_mesh::{Liveness, Step, SyncConfig, SyncRequest, SyncSession};

/// Who a peer is and where it listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerInfo {
    /// The peer's node ID: the name its certificate must carry.
    pub id: NodeId,
    /// Its address, `host:port`.
    pub address: String,
    /// Its node type.
    pub node_type: NodeType,
}

impl PeerInfo {
    /// A generic peer.
    ///
    /// # Errors
    /// [`PeerError::InvalidPeerId`] if `id` is not a node ID,
    /// [`PeerError::InvalidAddress`] if `address` is not `host:port`.
    pub fn new(id: impl AsRef<str>, address: impl Into<String>) -> Result<Self, PeerError> {
        let address = address.into();
        check_address(&address)?;
        let id = NodeId::new(id.as_ref()).map_err(|e| PeerError::InvalidPeerId {
            id: id.as_ref().to_owned(),
            reason: e.to_string(),
        })?;
        Ok(Self {
            id,
            address,
            node_type: NodeType::GENERIC,
        })
    }

    /// Sets the node type.
    pub fn with_type(mut self, node_type: impl Into<NodeType>) -> Self {
        self.node_type = node_type.into();
        self
    }
}

struct PeerInner {
    info: PeerInfo,
    credentials: Credentials,
    channel_options: ChannelOptions,
    /// Made on first use, inside the runtime (tonic's channel spawns a task).
    client: std::sync::OnceLock<MeshServiceClient<Channel>>,
    connected: AtomicBool,
}

/// A peer: its info and a channel that connects on first use. Cheap to clone.
#[derive(Clone)]
pub struct Peer {
    inner: Arc<PeerInner>,
}

impl std::fmt::Debug for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peer")
            .field("id", &self.inner.info.id)
            .field("address", &self.inner.info.address)
            .field("connected", &self.is_connected())
            .finish()
    }
}

impl Peer {
    /// The peer's ID.
    pub fn id(&self) -> &NodeId {
        &self.inner.info.id
    }

    /// The peer's info.
    pub fn info(&self) -> &PeerInfo {
        &self.inner.info
    }

    /// Whether the last call to the peer succeeded.
    pub fn is_connected(&self) -> bool {
        self.inner.connected.load(Ordering::Relaxed)
    }

    /// A client of the peer's `MeshService` on the peer's shared channel,
    /// made on first use.
    ///
    /// # Errors
    /// [`PeerError::NoRuntime`] outside a Tokio runtime (the channel needs
    /// one); [`PeerError::InvalidAddress`] if the channel cannot be made.
    pub fn client(&self) -> Result<MeshServiceClient<Channel>, PeerError> {
        if let Some(c) = self.inner.client.get() {
            return Ok(c.clone());
        }
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(PeerError::NoRuntime);
        }
        let i = &self.inner;
        let channel = mtls_channel(
            &i.credentials,
            &i.info.id,
            &i.info.address,
            &i.channel_options,
        )?;
        let client = MeshServiceClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE);
        Ok(i.client.get_or_init(|| client).clone())
    }
}

/// Largest message a peer call sends or accepts.
const MAX_MESSAGE: usize = 64 * 1024 * 1024;

/// Timeouts of peer calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerConfig {
    /// Deadline of each call (connection included).
    pub rpc_timeout: Duration,
    /// Channel settings.
    pub channel: ChannelOptions,
    /// Bounds of the sync exchange (what one request carries, how many
    /// requests one sync makes).
    pub sync: SyncConfig,
}

impl Default for PeerConfig {
    fn default() -> Self {
        Self {
            rpc_timeout: Duration::from_secs(5),
            channel: ChannelOptions::default(),
            sync: SyncConfig::default(),
        }
    }
}

/// A peer's answer to a ping, with the measured round trip.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PingResponse {
    /// The ID the peer answered with.
    pub receiver_id: String,
    /// The peer's clock, Unix seconds.
    pub timestamp: i64,
    /// Whether the peer said it succeeded.
    pub success: bool,
    /// Round-trip time of the call.
    pub latency: Duration,
}

/// A peer's health.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthResponse {
    /// The ID the peer answered with.
    pub node_id: String,
    /// Its health.
    pub health: HealthInfo,
}

/// A peer's identity and health.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfoResponse {
    /// Its ID.
    pub id: String,
    /// Its name.
    pub name: String,
    /// Its type.
    pub node_type: NodeType,
    /// Its address.
    pub address: String,
    /// Its health, if it sent one.
    pub health: Option<HealthResponse>,
}

pub use aegis_mesh::SyncMode;

/// What a [`PeerManager::sync_topology`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncReport {
    /// Which protocol ran.
    pub mode: SyncMode,
    /// Entries sent to the peer.
    pub sent: usize,
    /// Entries received from the peer.
    pub received: usize,
    /// What merging the received entries changed here.
    pub applied: ApplyReport,
    /// Protobuf bytes of the requests.
    pub bytes_sent: usize,
    /// Protobuf bytes of the responses.
    pub bytes_received: usize,
    /// Requests made.
    pub requests: usize,
    /// False when the sync stopped at its request bound with differences
    /// left for the next one.
    pub complete: bool,
}

/// The peers of one node, and the mesh calls on them.
///
/// Peers are dialled lazily over mutual TLS, expecting a certificate that
/// names the peer's ID. Every call has a deadline ([`PeerConfig`]); a peer
/// that does not answer yields [`PeerError::Timeout`], never a hang.
pub struct PeerManager {
    local_id: NodeId,
    credentials: Option<Credentials>,
    topology: Topology,
    config: PeerConfig,
    peers: RwLock<HashMap<NodeId, Peer>>,
    closed: AtomicBool,
    liveness: Option<SharedLiveness>,
}

/// A node's liveness state, shared by its mesh driver, its pings and its
/// server (which takes and returns piggybacks on probes).
pub type SharedLiveness = Arc<Mutex<Liveness>>;

/// Locks the liveness state; a panic elsewhere while it was held leaves it
/// usable (it holds no invariant a half-done call could break for good).
pub fn lock_liveness(l: &SharedLiveness) -> MutexGuard<'_, Liveness> {
    l.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Merges what a ping or its answer carried (nothing to do when it carried
/// nothing). The error names what was wrong; nothing of it is applied then.
pub(crate) fn take_piggyback(
    liveness: &SharedLiveness,
    topology: &Topology,
    updates: Vec<pb::TopologyNode>,
    suspicions: Vec<pb::Suspicion>,
    sync: &SyncConfig,
) -> Result<(), String> {
    if updates.is_empty() && suspicions.is_empty() {
        return Ok(());
    }
    let piggyback = piggyback_from_wire(updates, suspicions).map_err(|e| e.to_string())?;
    lock_liveness(liveness)
        .on_piggyback(topology, piggyback, sync, now_ms())
        .map(|_| ())
        .map_err(|e| e.to_string())
}

impl std::fmt::Debug for PeerManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerManager")
            .field("local_id", &self.local_id)
            .field("peers", &self.count())
            .finish_non_exhaustive()
    }
}

impl PeerManager {
    /// A manager for the node `local_id`, syncing into `topology`, dialling
    /// with `credentials` (a [`TlsConfig`], or [`Credentials`] that change
    /// at run time: every new connection takes the current ones). Without
    /// them, adding peers fails with [`PeerError::NoTlsConfig`].
    pub fn new(
        local_id: NodeId,
        credentials: Option<impl Into<Credentials>>,
        topology: Topology,
    ) -> Self {
        Self {
            local_id,
            credentials: credentials.map(Into::into),
            topology,
            config: PeerConfig::default(),
            peers: RwLock::new(HashMap::new()),
            closed: AtomicBool::new(false),
            liveness: None,
        }
    }

    /// Piggybacks this liveness state's news on every ping this manager
    /// makes, and takes the news on every answer (see
    /// [`aegis_mesh::Liveness::piggyback`]). The server answering for the
    /// same node uses it too ([`crate::MeshServer::with_peers`]).
    pub fn with_liveness(mut self, liveness: SharedLiveness) -> Self {
        self.liveness = Some(liveness);
        self
    }

    /// The liveness state given by [`PeerManager::with_liveness`].
    pub fn liveness(&self) -> Option<&SharedLiveness> {
        self.liveness.as_ref()
    }

    /// Other timeouts.
    pub fn with_config(mut self, config: PeerConfig) -> Self {
        self.config = config;
        self
    }

    /// The timeouts in force.
    pub fn config(&self) -> &PeerConfig {
        &self.config
    }

    /// The topology this manager syncs.
    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    fn peers_read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<NodeId, Peer>> {
        self.peers.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn peers_write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<NodeId, Peer>> {
        self.peers.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds a peer; the connection is made on first use.
    ///
    /// # Errors
    /// [`PeerError::NoTlsConfig`], [`PeerError::AlreadyExists`],
    /// [`PeerError::InvalidAddress`], [`PeerError::Closed`].
    pub fn add_peer(&self, info: PeerInfo) -> Result<Peer, PeerError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(PeerError::Closed);
        }
        let credentials = self.credentials.as_ref().ok_or(PeerError::NoTlsConfig)?;
        let mut peers = self.peers_write();
        if peers.contains_key(&info.id) {
            return Err(PeerError::AlreadyExists(info.id.to_string()));
        }
        check_address(&info.address)?;
        aegis_tls::server_name(info.id.as_str()).map_err(|e| PeerError::InvalidAddress {
            address: info.address.clone(),
            reason: e.to_string(),
        })?;
        let peer = Peer {
            inner: Arc::new(PeerInner {
                info,
                credentials: credentials.clone(),
                channel_options: self.config.channel,
                client: std::sync::OnceLock::new(),
                connected: AtomicBool::new(false),
            }),
        };
        tracing::debug!(peer = %peer.id(), address = %peer.info().address, "peer added");
        peers.insert(peer.id().clone(), peer.clone());
        Ok(peer)
    }

    /// Removes a peer and closes its channel (once no call uses it).
    ///
    /// # Errors
    /// [`PeerError::NotFound`].
    pub fn remove_peer(&self, id: &str) -> Result<(), PeerError> {
        let id = &*aegis_id::canonical(id);
        match self.peers_write().remove(id) {
            Some(_) => Ok(()),
            None => Err(PeerError::NotFound(id.to_owned())),
        }
    }

    /// A peer by ID.
    pub fn get_peer(&self, id: &str) -> Option<Peer> {
        let id = &*aegis_id::canonical(id);
        self.peers_read().get(id).cloned()
    }

    /// Every peer, in ID order.
    pub fn get_all_peers(&self) -> Vec<Peer> {
        let mut all: Vec<Peer> = self.peers_read().values().cloned().collect();
        all.sort_by(|a, b| a.id().cmp(b.id()));
        all
    }

    /// Peers of one type, in ID order.
    pub fn get_peers_by_type(&self, node_type: &NodeType) -> Vec<Peer> {
        let mut all: Vec<Peer> = self
            .peers_read()
            .values()
            .filter(|p| &p.info().node_type == node_type)
            .cloned()
            .collect();
        all.sort_by(|a, b| a.id().cmp(b.id()));
        all
    }

    /// How many peers there are.
    pub fn count(&self) -> usize {
        self.peers_read().len()
    }

    /// Whether the peer exists and its last call succeeded.
    pub fn is_connected(&self, id: &str) -> bool {
        self.get_peer(id).is_some_and(|p| p.is_connected())
    }

    /// Drops every peer and refuses new ones.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.peers_write().clear();
    }

    fn peer(&self, id: &str) -> Result<Peer, PeerError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(PeerError::Closed);
        }
        self.get_peer(id)
            .ok_or_else(|| PeerError::NotFound(id.to_owned()))
    }

    /// Runs one call with the deadline, and records whether the peer answered.
    async fn call<T, F>(&self, peer: &Peer, rpc: &'static str, fut: F) -> Result<T, PeerError>
    where
        F: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let after = self.config.rpc_timeout;
        let started = Instant::now();
        let result = match tokio::time::timeout(after, fut).await {
            Ok(Ok(resp)) => Ok(resp.into_inner()),
            Ok(Err(status)) => Err(PeerError::Rpc {
                peer: peer.id().to_string(),
                rpc,
                status: Box::new(status),
            }),
            Err(_) => Err(PeerError::Timeout {
                peer: peer.id().to_string(),
                rpc,
                after,
            }),
        };
        let code = match &result {
            Ok(_) => "OK",
            Err(PeerError::Rpc { status, .. }) => crate::metrics::code_label(status.code()),
            Err(_) => "DEADLINE_EXCEEDED",
        };
        crate::metrics::client_call(rpc, peer.id().as_str(), code, started);
        let ok = result.is_ok();
        if peer.inner.connected.swap(ok, Ordering::Relaxed) != ok {
            tracing::info!(peer = %peer.id(), connected = ok, "peer connectivity changed");
        }
        if let Err(e) = &result {
            tracing::debug!(peer = %peer.id(), rpc, error = %e, "peer call failed");
        }
        result
    }

    fn request<T>(&self, msg: T) -> tonic::Request<T> {
        let mut req = tonic::Request::new(msg);
        req.set_timeout(self.config.rpc_timeout);
        req
    }

    /// Pings a peer and measures the round trip.
    ///
    /// # Errors
    /// [`PeerError::NotFound`], [`PeerError::Timeout`], [`PeerError::Rpc`].
    pub async fn ping_peer(&self, id: &str) -> Result<PingResponse, PeerError> {
        let peer = self.peer(id)?;
        let mut client = peer.client()?;
        let piggyback = self
            .liveness
            .as_ref()
            .map(|l| lock_liveness(l).piggyback(&self.topology, peer.id()))
            .unwrap_or_default();
        let (updates, suspicions) = piggyback_to_wire(&piggyback);
        let req = self.request(pb::PingRequest {
            sender_id: self.local_id.to_string(),
            timestamp: now_unix(),
            updates,
            suspicions,
        });
        let start = Instant::now();
        let resp = self.call(&peer, "Ping", client.ping(req)).await?;
        // TLS checked the certificate; the answer must name the same node
        // (IDs compare in their one canonical form).
        if NodeId::new(&resp.receiver_id).ok().as_ref() != Some(peer.id()) {
            return Err(PeerError::BadResponse {
                peer: id.to_owned(),
                rpc: "Ping",
                reason: format!(
                    "answered as {:?}, not as the node dialled",
                    resp.receiver_id
                ),
            });
        }
        let latency = start.elapsed();
        if let Some(l) = &self.liveness
            && let Err(e) = take_piggyback(
                l,
                &self.topology,
                resp.updates,
                resp.suspicions,
                &self.config.sync,
            )
        {
            tracing::warn!(peer = %id, error = %e, "ignored the piggyback of a ping answer");
        }
        Ok(PingResponse {
            receiver_id: resp.receiver_id,
            timestamp: resp.timestamp,
            success: resp.success,
            latency,
        })
    }

    /// Asks the peer `helper` to ping the member `target` for this node
    /// (after this node's own ping to it failed); true if the target
    /// answered the helper within `timeout`. A helper that does not speak
    /// the extension (a reference node) counts as no help: false.
    ///
    /// # Errors
    /// As [`PeerManager::ping_peer`], for the call to the helper.
    pub async fn indirect_ping(
        &self,
        helper: &str,
        target: &NodeId,
        timeout: Duration,
    ) -> Result<bool, PeerError> {
        let peer = self.peer(helper)?;
        let mut client = peer.client()?;
        let mut req = tonic::Request::new(pb::IndirectPingRequest {
            sender_id: self.local_id.to_string(),
            target_id: target.to_string(),
            timeout_ms: u32::try_from(timeout.as_millis()).unwrap_or(u32::MAX),
        });
        // The helper's own ping gets `timeout`; its answer needs a moment more.
        req.set_timeout(timeout + timeout / 2);
        match self
            .call(&peer, "IndirectPing", client.indirect_ping(req))
            .await
        {
            Ok(r) => Ok(r.ack),
            Err(PeerError::Rpc { status, .. }) if status.code() == tonic::Code::Unimplemented => {
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    /// A peer's health.
    ///
    /// # Errors
    /// As [`PeerManager::ping_peer`].
    pub async fn get_peer_health(&self, id: &str) -> Result<HealthResponse, PeerError> {
        let peer = self.peer(id)?;
        let mut client = peer.client()?;
        let req = self.request(pb::HealthRequest {
            sender_id: self.local_id.to_string(),
        });
        let (node_id, health) = health_from_wire(
            self.call(&peer, "GetHealth", client.get_health(req))
                .await?,
        );
        Ok(HealthResponse { node_id, health })
    }

    /// A peer's identity and health.
    ///
    /// # Errors
    /// As [`PeerManager::ping_peer`].
    pub async fn get_peer_node_info(&self, id: &str) -> Result<NodeInfoResponse, PeerError> {
        let peer = self.peer(id)?;
        let mut client = peer.client()?;
        let req = self.request(pb::NodeInfoRequest {
            sender_id: self.local_id.to_string(),
        });
        let r = self
            .call(&peer, "GetNodeInfo", client.get_node_info(req))
            .await?;
        Ok(NodeInfoResponse {
            id: r.id,
            name: r.name,
            node_type: NodeType::new(r.r#type),
            address: r.address,
            health: r.health.map(|h| {
                let (node_id, health) = health_from_wire(h);
                HealthResponse { node_id, health }
            }),
        })
    }

    /// Syncs topologies with a peer, both ways, by the protocol of
    /// [`aegis_mesh::SyncSession`]: digests first (done if equal), then
    /// entry digests (by bucket for large topologies), then only the
    /// entries that differ, in pages that fit the message bounds. With a
    /// reference peer, which answers with its whole topology: merge that.
    /// Either way a remote entry for this node's own ID never replaces the
    /// local one (the topology refutes it).
    ///
    /// # Errors
    /// Call errors as [`PeerManager::ping_peer`];
    /// [`PeerError::BadTopology`] if the peer sent entries that break a rule
    /// (nothing of them is applied).
    pub async fn sync_topology(&self, id: &str) -> Result<SyncReport, PeerError> {
        let peer = self.peer(id)?;
        let (session, first) = SyncSession::start(&self.topology, self.config.sync);
        self.run_session(&peer, session, first).await
    }

    /// Pushes this node's tombstone to a peer in one request (no digests
    /// first): what a leaving node does, so that it costs one round trip.
    ///
    /// # Errors
    /// As [`PeerManager::ping_peer`]; [`PeerError::Closed`] if there is no
    /// tombstone to push.
    pub async fn push_leave(&self, id: &str) -> Result<(), PeerError> {
        let peer = self.peer(id)?;
        let request = aegis_mesh::leave_request(&self.topology).ok_or(PeerError::Closed)?;
        let mut client = peer.client()?;
        let version = i64::try_from(self.topology.version()).unwrap_or(i64::MAX);
        let wire = request_to_wire(&request, &self.local_id, version);
        self.call(
            &peer,
            "SyncTopology",
            client.sync_topology(self.request(wire)),
        )
        .await?;
        Ok(())
    }

    async fn run_session(
        &self,
        peer: &Peer,
        mut session: SyncSession,
        first: SyncRequest,
    ) -> Result<SyncReport, PeerError> {
        let id = peer.id().as_str();
        let mut client = peer.client()?;
        let bad = |e: aegis_mesh::SyncError| match e {
            aegis_mesh::SyncError::Topology(source) => PeerError::BadTopology {
                peer: id.to_owned(),
                source,
            },
            other => PeerError::BadResponse {
                peer: id.to_owned(),
                rpc: "SyncTopology",
                reason: other.to_string(),
            },
        };
        let (mut bytes_sent, mut bytes_received) = (0, 0);
        let mut request = first;
        loop {
            let version = i64::try_from(self.topology.version()).unwrap_or(i64::MAX);
            let wire = request_to_wire(&request, &self.local_id, version);
            bytes_sent += wire.encoded_len();
            let resp = self
                .call(
                    peer,
                    "SyncTopology",
                    client.sync_topology(self.request(wire)),
                )
                .await?;
            bytes_received += resp.encoded_len();
            let resp = response_from_wire(resp).map_err(|e| match e.source {
                Some(source) => PeerError::BadTopology {
                    peer: id.to_owned(),
                    source,
                },
                None => PeerError::BadResponse {
                    peer: id.to_owned(),
                    rpc: "SyncTopology",
                    reason: e.to_string(),
                },
            })?;
            match session
                .on_response(&self.topology, resp, now_ms())
                .map_err(bad)?
            {
                Step::Send(next) => request = next,
                Step::Done(o) => {
                    tracing::debug!(
                        peer = %id,
                        mode = ?o.mode,
                        sent = o.sent,
                        received = o.received,
                        changed = o.applied.changed.len(),
                        requests = o.requests,
                        "sync done"
                    );
                    return Ok(SyncReport {
                        mode: o.mode,
                        sent: o.sent,
                        received: o.received,
                        applied: o.applied,
                        bytes_sent,
                        bytes_received,
                        requests: o.requests,
                        complete: o.complete,
                    });
                }
            }
        }
    }

    /// Syncs with every peer, concurrently; returns each peer's outcome.
    pub async fn sync_topology_with_all_peers(
        &self,
    ) -> Vec<(NodeId, Result<SyncReport, PeerError>)> {
        let ids: Vec<NodeId> = self
            .get_all_peers()
            .iter()
            .map(|p| p.id().clone())
            .collect();
        let calls = ids.iter().map(|id| self.sync_topology(id.as_str()));
        let results = join_all(calls).await;
        ids.into_iter().zip(results).collect()
    }
}
