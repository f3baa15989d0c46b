//! Peers: lazily connected channels to other nodes, and the calls on them.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use aegis_tls::TlsConfig;
use aegis_topology::{ApplyReport, NodeId, NodeType, Topology};
use prost::Message;
use tonic::transport::Channel;

use crate::PeerError;
use crate::convert::{
    digest_from_wire, digest_to_wire, entries_from_wire, entry_digest_from_wire, entry_to_wire,
    health_from_wire, now_unix,
};
use crate::health::HealthInfo;
use crate::proto::mesh as pb;
use crate::proto::mesh::mesh_service_client::MeshServiceClient;
use crate::transport::{ChannelOptions, check_address, mtls_channel};
use crate::util::join_all;

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
    /// [`PeerError::InvalidAddress`] if `id` is not a node ID or `address`
    /// is not `host:port`.
    pub fn new(id: impl AsRef<str>, address: impl Into<String>) -> Result<Self, PeerError> {
        let address = address.into();
        check_address(&address)?;
        let id = NodeId::new(id.as_ref()).map_err(|e| PeerError::InvalidAddress {
            address: address.clone(),
            reason: format!("peer ID: {e}"),
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
    tls: TlsConfig,
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
        let channel = mtls_channel(&i.tls, &i.info.id, &i.info.address, &i.channel_options)?;
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
}

impl Default for PeerConfig {
    fn default() -> Self {
        Self {
            rpc_timeout: Duration::from_secs(5),
            channel: ChannelOptions::default(),
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

/// How a sync went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncMode {
    /// The digests matched: nothing was exchanged but them.
    InSync,
    /// Entry digests, then only the entries that differed, both ways.
    Delta,
    /// The peer answered with its whole topology (a reference node).
    Full,
}

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
}

/// The peers of one node, and the mesh calls on them.
///
/// Peers are dialled lazily over mutual TLS, expecting a certificate that
/// names the peer's ID. Every call has a deadline ([`PeerConfig`]); a peer
/// that does not answer yields [`PeerError::Timeout`], never a hang.
pub struct PeerManager {
    local_id: NodeId,
    tls: Option<TlsConfig>,
    topology: Topology,
    config: PeerConfig,
    peers: RwLock<HashMap<NodeId, Peer>>,
    closed: AtomicBool,
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
    /// A manager for the node `local_id`, syncing into `topology`. Without
    /// `tls`, adding peers fails with [`PeerError::NoTlsConfig`].
    pub fn new(local_id: NodeId, tls: Option<TlsConfig>, topology: Topology) -> Self {
        Self {
            local_id,
            tls,
            topology,
            config: PeerConfig::default(),
            peers: RwLock::new(HashMap::new()),
            closed: AtomicBool::new(false),
        }
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
        let tls = self.tls.as_ref().ok_or(PeerError::NoTlsConfig)?;
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
                tls: tls.clone(),
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
        match self.peers_write().remove(id) {
            Some(_) => Ok(()),
            None => Err(PeerError::NotFound(id.to_owned())),
        }
    }

    /// A peer by ID.
    pub fn get_peer(&self, id: &str) -> Option<Peer> {
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
        let req = self.request(pb::PingRequest {
            sender_id: self.local_id.to_string(),
            timestamp: now_unix(),
        });
        let start = Instant::now();
        let resp = self.call(&peer, "Ping", client.ping(req)).await?;
        Ok(PingResponse {
            receiver_id: resp.receiver_id,
            timestamp: resp.timestamp,
            success: resp.success,
            latency: start.elapsed(),
        })
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

    /// Syncs topologies with a peer, both ways. With a peer of this project:
    /// digests first (done if equal), then entry digests, then only the
    /// entries that differ. With a reference peer, which answers with its
    /// whole topology: merge that. Either way a remote entry for this node's
    /// own ID never replaces the local one (the topology refutes it).
    ///
    /// # Errors
    /// Call errors as [`PeerManager::ping_peer`];
    /// [`PeerError::BadTopology`] if the peer sent entries that break a rule
    /// (nothing of them is applied).
    pub async fn sync_topology(&self, id: &str) -> Result<SyncReport, PeerError> {
        let peer = self.peer(id)?;
        let mut client = peer.client()?;
        let bad = |source| PeerError::BadTopology {
            peer: id.to_owned(),
            source,
        };
        let version = i64::try_from(self.topology.version()).unwrap_or(i64::MAX);
        let step1 = pb::TopologySyncRequest {
            sender_id: self.local_id.to_string(),
            version,
            digest: Some(digest_to_wire(self.topology.digest())),
            ..Default::default()
        };
        let mut bytes_sent = step1.encoded_len();
        let resp = self
            .call(
                &peer,
                "SyncTopology",
                client.sync_topology(self.request(step1)),
            )
            .await?;
        let mut bytes_received = resp.encoded_len();

        if !resp.extended {
            // A reference node ignored our digest and sent everything.
            let received = resp.nodes.len();
            let entries = entries_from_wire(resp.nodes).map_err(bad)?;
            let applied = self.topology.apply(entries).map_err(bad)?;
            tracing::debug!(peer = %id, received, changed = applied.changed.len(), "full sync");
            return Ok(SyncReport {
                mode: SyncMode::Full,
                sent: 0,
                received,
                applied,
                bytes_sent,
                bytes_received,
            });
        }
        if resp.in_sync {
            return Ok(SyncReport {
                mode: SyncMode::InSync,
                sent: 0,
                received: 0,
                applied: ApplyReport::default(),
                bytes_sent,
                bytes_received,
            });
        }
        let digests_of = |digests: &[pb::EntryDigest]| {
            digests
                .iter()
                .map(entry_digest_from_wire)
                .collect::<Result<Vec<_>, _>>()
                .map_err(bad)
        };
        let plan = if resp.buckets.is_empty() {
            self.topology.compare(&digests_of(&resp.digests)?)
        } else {
            // Step 1b: ask for the entry digests of the buckets that differ.
            let remote = resp
                .buckets
                .iter()
                .map(digest_from_wire)
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| PeerError::BadResponse {
                    peer: id.to_owned(),
                    rpc: "SyncTopology",
                    reason: "a bucket digest is not 16 bytes".to_owned(),
                })?;
            let differing = self.topology.differing_buckets(&remote);
            let step = pb::TopologySyncRequest {
                sender_id: self.local_id.to_string(),
                version,
                buckets: differing.iter().map(|&b| u32::from(b)).collect(),
                ..Default::default()
            };
            bytes_sent += step.encoded_len();
            let resp = if differing.is_empty() {
                pb::TopologySyncResponse::default()
            } else {
                self.call(
                    &peer,
                    "SyncTopology",
                    client.sync_topology(self.request(step)),
                )
                .await?
            };
            bytes_received += resp.encoded_len();
            self.topology
                .compare_in(&digests_of(&resp.digests)?, &differing)
        };
        let sent = plan.send.len();
        let step2 = pb::TopologySyncRequest {
            sender_id: self.local_id.to_string(),
            version,
            delta: true,
            push: plan.send.iter().map(entry_to_wire).collect(),
            want: plan.want.iter().map(ToString::to_string).collect(),
            ..Default::default()
        };
        bytes_sent += step2.encoded_len();
        let resp = self
            .call(
                &peer,
                "SyncTopology",
                client.sync_topology(self.request(step2)),
            )
            .await?;
        bytes_received += resp.encoded_len();
        let received = resp.nodes.len();
        let entries = entries_from_wire(resp.nodes).map_err(bad)?;
        let applied = self.topology.apply(entries).map_err(bad)?;
        tracing::debug!(peer = %id, sent, received, changed = applied.changed.len(), "delta sync");
        Ok(SyncReport {
            mode: SyncMode::Delta,
            sent,
            received,
            applied,
            bytes_sent,
            bytes_received,
        })
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
