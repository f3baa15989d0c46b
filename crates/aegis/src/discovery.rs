//! Where a node learns who is in the mesh: gossip between the nodes (the
//! default), or an etcd cluster (feature `etcd`).
//!
//! Either source ends in the same place: entries in the node's
//! [`Topology`](crate::Topology), from which membership events, the client
//! pool and the admin views follow unchanged. Identity does not come from
//! the source: a dial always checks that the server's certificate names
//! the node ID it dialled, so a poisoned registry can misdirect calls but
//! cannot make one node pass for another.

#[cfg(feature = "etcd")]
use std::time::Duration;

/// The source of membership. See [`crate::NodeBuilder::with_discovery`].
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub enum Discovery {
    /// The nodes gossip: probes, suspicion, anti-entropy (the mesh loop,
    /// [`crate::MeshConfig`]). Right for tens to a few thousand nodes, with
    /// nothing else to run.
    #[default]
    Gossip,
    /// Membership lives in etcd: each node registers its entry under a
    /// lease and watches the others'. The mesh loop is off: no probing and
    /// no anti-entropy between the nodes; a node that dies disappears when
    /// its lease runs out.
    #[cfg(feature = "etcd")]
    Etcd(Box<EtcdDiscovery>),
}

impl Discovery {
    /// Membership in etcd at `endpoints` (`host:port` or `http://host:port`),
    /// under `prefix` (keys `PREFIX/nodes/ID`), with the defaults of
    /// [`EtcdDiscovery`].
    #[cfg(feature = "etcd")]
    pub fn etcd<E: Into<String>>(
        endpoints: impl IntoIterator<Item = E>,
        prefix: impl Into<String>,
    ) -> Self {
        Discovery::Etcd(Box::new(EtcdDiscovery::new(endpoints, prefix)))
    }

    /// Parses `gossip`, `etcd://HOST:PORT[,HOST:PORT...]/PREFIX` or
    /// `etcds://...` (TLS to etcd with the node's own certificate, trusting
    /// the mesh CA; see `EtcdDiscovery::with_node_tls`): the
    /// `--discovery` flag of `aegis node`.
    ///
    /// # Errors
    /// A string naming what is wrong, or that this build has no etcd
    /// support.
    pub fn parse(text: &str) -> Result<Self, String> {
        if text == "gossip" {
            return Ok(Discovery::Gossip);
        }
        let (rest, tls) = match (text.strip_prefix("etcd://"), text.strip_prefix("etcds://")) {
            (Some(rest), _) => (rest, false),
            (_, Some(rest)) => (rest, true),
            _ => {
                return Err(format!(
                    "{text:?}: expected gossip, etcd://HOST:PORT/PREFIX or etcds://HOST:PORT/PREFIX"
                ));
            }
        };
        let (hosts, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let endpoints: Vec<&str> = hosts.split(',').filter(|h| !h.is_empty()).collect();
        if endpoints.is_empty() {
            return Err(format!("{text:?}: no etcd endpoint before the prefix"));
        }
        if prefix.trim_matches('/').is_empty() {
            return Err(format!(
                "{text:?}: give a key prefix, as in etcd://127.0.0.1:2379/my-mesh"
            ));
        }
        for host in &endpoints {
            aegis_peer::transport::check_address(host).map_err(|e| format!("{text:?}: {e}"))?;
        }
        #[cfg(feature = "etcd")]
        {
            let config = EtcdDiscovery::new(endpoints, format!("/{}", prefix.trim_matches('/')));
            Ok(Discovery::Etcd(Box::new(if tls {
                config.with_node_tls()
            } else {
                config
            })))
        }
        #[cfg(not(feature = "etcd"))]
        {
            let _ = tls;
            Err(format!(
                "{text:?}: this build has no etcd support (build with the feature `etcd`, which needs `protoc`)"
            ))
        }
    }
}

/// Settings of [`Discovery::Etcd`].
#[cfg(feature = "etcd")]
#[derive(Debug, Clone)]
pub struct EtcdDiscovery {
    pub(crate) endpoints: Vec<String>,
    pub(crate) prefix: String,
    pub(crate) lease_ttl: Duration,
    pub(crate) connect_timeout: Duration,
    pub(crate) request_timeout: Duration,
    pub(crate) max_backoff: Duration,
    pub(crate) tls: Option<etcd_client::TlsOptions>,
    pub(crate) node_tls: bool,
    pub(crate) user: Option<(String, String)>,
}

#[cfg(feature = "etcd")]
impl EtcdDiscovery {
    /// etcd at `endpoints`, keys under `prefix`; lease TTL 10 s, connect
    /// timeout 3 s, request timeout 5 s, retries backing off up to 5 s,
    /// plain text.
    pub fn new<E: Into<String>>(
        endpoints: impl IntoIterator<Item = E>,
        prefix: impl Into<String>,
    ) -> Self {
        let prefix: String = prefix.into();
        Self {
            endpoints: endpoints.into_iter().map(Into::into).collect(),
            prefix: prefix.trim_end_matches('/').to_owned(),
            lease_ttl: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(3),
            request_timeout: Duration::from_secs(5),
            max_backoff: Duration::from_secs(5),
            tls: None,
            node_tls: false,
            user: None,
        }
    }

    /// The lease TTL: how long a node that stops keeping its lease alive
    /// (killed, cut off from etcd) stays registered. Whole seconds, at
    /// least 2.
    pub fn with_lease_ttl(mut self, ttl: Duration) -> Self {
        self.lease_ttl = ttl.max(Duration::from_secs(2));
        self
    }

    /// The longest wait between attempts to reach etcd again.
    pub fn with_max_backoff(mut self, backoff: Duration) -> Self {
        self.max_backoff = backoff.max(Duration::from_millis(100));
        self
    }

    /// TLS to etcd (`etcd_client::TlsOptions`: the CA to trust, and a
    /// client identity if etcd asks for one).
    pub fn with_tls(mut self, tls: etcd_client::TlsOptions) -> Self {
        self.tls = Some(tls);
        self
    }

    /// TLS to etcd with the node's own credentials: its certificate as the
    /// client identity and the mesh CA(s) as the trusted roots, taken anew
    /// at every connection (so a renewed certificate is used). For an etcd
    /// whose certificates come from the mesh CA (`aegis certs gen --dir DIR
    /// etcd-1` makes one that names `localhost` and 127.0.0.1; give it
    /// `--client-cert-auth --trusted-ca-file DIR/ca-cert.pem`).
    pub fn with_node_tls(mut self) -> Self {
        self.node_tls = true;
        self
    }

    /// etcd user and password.
    pub fn with_user(mut self, name: impl Into<String>, password: impl Into<String>) -> Self {
        self.user = Some((name.into(), password.into()));
        self
    }

    /// The key prefix of node entries: `PREFIX/nodes/`.
    pub fn nodes_prefix(&self) -> String {
        format!("{}/nodes/", self.prefix)
    }
}

#[cfg(feature = "etcd")]
pub(crate) mod etcd {
    //! The etcd backend: register under a lease, watch the others.

    use std::collections::HashSet;
    use std::time::{Duration, SystemTime};

    use aegis_peer::transport::Credentials;
    use aegis_topology::{Entry, NodeId, NodeState, Topology};
    use etcd_client::{
        Certificate, Client, ConnectOptions, EventType, GetOptions, Identity, PutOptions,
        TlsOptions, WatchOptions,
    };
    use tokio::sync::{Notify, watch};

    use super::EtcdDiscovery;

    /// Why a session with etcd ended.
    enum Ended {
        /// The node is stopping (its key was deleted).
        Stopped,
        /// etcd failed or went away; what happened.
        Lost(String),
    }

    /// Runs until `stop` turns true: registers `local`'s entry, keeps its
    /// lease alive, mirrors the others' entries into `topology`; on any
    /// failure keeps the membership it has and tries again with back-off.
    pub(crate) async fn run(
        config: EtcdDiscovery,
        topology: Topology,
        credentials: Credentials,
        mut stop: watch::Receiver<bool>,
    ) {
        let local = credentials.node_id();
        let changed = std::sync::Arc::new(Notify::new());
        {
            let changed = std::sync::Arc::clone(&changed);
            topology.on_change(move |_| changed.notify_one());
        }
        let mut backoff = Duration::from_millis(250);
        loop {
            let ended = session(
                &config,
                &topology,
                &credentials,
                &changed,
                &mut stop,
                &mut backoff,
            )
            .await;
            match ended {
                Ended::Stopped => return,
                Ended::Lost(why) => {
                    metrics::counter!("aegis_discovery_errors_total", "source" => "etcd")
                        .increment(1);
                    tracing::warn!(node_id = %local, endpoints = ?config.endpoints, error = %why, retry_in = ?backoff, "etcd discovery: lost etcd; the last known membership stays in use");
                }
            }
            tokio::select! {
                _ = stopping(&mut stop) => return,
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(config.max_backoff);
            tracing::info!(node_id = %local, "etcd discovery: trying etcd again");
        }
    }

    /// Resolves when `stop` turns true (or its sender is gone).
    async fn stopping(stop: &mut watch::Receiver<bool>) {
        let _ = stop.wait_for(|s| *s).await;
    }

    fn key_of(config: &EtcdDiscovery, id: &NodeId) -> String {
        format!("{}{id}", config.nodes_prefix())
    }

    /// The node ID a key names, if it is a node key under the prefix.
    fn id_of(config: &EtcdDiscovery, key: &[u8]) -> Option<NodeId> {
        let key = std::str::from_utf8(key).ok()?;
        NodeId::new(key.strip_prefix(&config.nodes_prefix())?).ok()
    }

    /// An entry from a key and its value, checked: JSON of an entry whose
    /// node ID is the key's.
    fn parse(config: &EtcdDiscovery, key: &[u8], value: &[u8]) -> Result<Entry, String> {
        let id = id_of(config, key).ok_or_else(|| {
            format!(
                "key {:?} is not PREFIX/nodes/NODE_ID",
                String::from_utf8_lossy(key)
            )
        })?;
        let entry: Entry = serde_json::from_slice(value)
            .map_err(|e| format!("value of {id} is not a node entry: {e}"))?;
        if entry.id() != &id {
            return Err(format!("the entry under {id} is for {}", entry.id()));
        }
        Ok(entry)
    }

    async fn connect(config: &EtcdDiscovery, credentials: &Credentials) -> Result<Client, String> {
        let mut options = ConnectOptions::new()
            .with_connect_timeout(config.connect_timeout)
            .with_timeout(config.request_timeout)
            .with_keep_alive(Duration::from_secs(5), Duration::from_secs(3));
        if let Some(tls) = &config.tls {
            options = options.with_tls(tls.clone());
        } else if config.node_tls {
            let (chain, key, cas) = credentials.current().to_pem();
            options = options.with_tls(
                TlsOptions::new()
                    .ca_certificate(Certificate::from_pem(cas))
                    .identity(Identity::from_pem(chain, key)),
            );
        }
        if let Some((user, password)) = &config.user {
            options = options.with_user(user.clone(), password.clone());
        }
        Client::connect(&config.endpoints, Some(options))
            .await
            .map_err(|e| format!("cannot connect: {e}"))
    }

    /// One connection's life: grant, register, resync, then watch and keep
    /// the lease alive until something fails or the node stops.
    async fn session(
        config: &EtcdDiscovery,
        topology: &Topology,
        credentials: &Credentials,
        changed: &Notify,
        stop: &mut watch::Receiver<bool>,
        backoff: &mut Duration,
    ) -> Ended {
        let lost = |what: &str, e: etcd_client::Error| Ended::Lost(format!("{what}: {e}"));
        let local = &credentials.node_id();
        let mut client = match connect(config, credentials).await {
            Ok(c) => c,
            Err(e) => return Ended::Lost(e),
        };
        let ttl = i64::try_from(config.lease_ttl.as_secs())
            .unwrap_or(10)
            .max(2);
        let lease = match client.lease_grant(ttl, None).await {
            Ok(l) => l.id(),
            Err(e) => return lost("lease grant", e),
        };
        let key = key_of(config, local);
        let mut registered = match register(&mut client, topology, local, &key, lease).await {
            Ok(value) => value,
            Err(e) => return lost("register", e),
        };
        let revision = match resync(&mut client, config, topology, local).await {
            Ok(r) => r,
            Err(e) => return lost("range read", e),
        };
        let options = WatchOptions::new()
            .with_prefix()
            .with_start_revision(revision + 1);
        let (_watcher, mut events) = match client.watch(config.nodes_prefix(), Some(options)).await
        {
            Ok(w) => w,
            Err(e) => return lost("watch", e),
        };
        let (mut keeper, mut kept) = match client.lease_keep_alive(lease).await {
            Ok(k) => k,
            Err(e) => return lost("lease keep-alive", e),
        };
        tracing::info!(node_id = %local, key, lease, revision, members = topology.node_count(), "etcd discovery: registered and watching");
        metrics::gauge!("aegis_discovery_connected", "source" => "etcd").set(1.0);
        // A session that got this far is healthy: the next failure starts
        // the back-off again from its shortest wait.
        *backoff = Duration::from_millis(250);
        let mut keep_alive = tokio::time::interval(config.lease_ttl / 3);
        let ended = loop {
            tokio::select! {
                _ = stopping(stop) => {
                    // Leave at once: the others see the key go now, not
                    // when the lease runs out.
                    let leave = async {
                        // First as left (watchers tell a leave from a death),
                        // then gone.
                        if let Some(mut entry) = topology.get_entry(local.as_str()) {
                            entry.stamp = entry.stamp.next();
                            entry.state = NodeState::Left;
                            if let Ok(value) = serde_json::to_vec(&entry) {
                                let put = PutOptions::new().with_lease(lease);
                                let _ = client.put(key.clone(), value, Some(put)).await;
                            }
                        }
                        let _ = client.delete(key.clone(), None).await;
                        let _ = client.lease_revoke(lease).await;
                    };
                    let _ = tokio::time::timeout(Duration::from_secs(2), leave).await;
                    tracing::info!(node_id = %local, key, "etcd discovery: deregistered");
                    break Ended::Stopped;
                }
                _ = keep_alive.tick() => {
                    if let Err(e) = keeper.keep_alive().await {
                        break lost("lease keep-alive", e);
                    }
                }
                answer = kept.message() => match answer {
                    Ok(Some(r)) if r.ttl() <= 0 => {
                        break Ended::Lost(format!("lease {lease} expired (this node was away longer than its TTL)"));
                    }
                    Ok(Some(_)) => {}
                    Ok(None) => break Ended::Lost("the lease keep-alive stream ended".into()),
                    Err(e) => break lost("lease keep-alive", e),
                },
                message = events.message() => match message {
                    Ok(Some(r)) if r.canceled() => {
                        break Ended::Lost(format!(
                            "the watch was cancelled (compacted at revision {}: {}); resynchronising",
                            r.compact_revision(),
                            r.cancel_reason()
                        ));
                    }
                    Ok(Some(r)) => {
                        for event in r.events() {
                            apply_event(config, topology, local, event);
                        }
                    }
                    Ok(None) => break Ended::Lost("the watch stream ended".into()),
                    Err(e) => break lost("watch", e),
                },
                () = changed.notified() => {
                    // This node's entry changed (health, services, address):
                    // publish it.
                    match topology.get_entry(local.as_str()) {
                        Some(entry) if Some(&entry) != registered.as_ref() => {
                            let put = PutOptions::new().with_lease(lease);
                            match client.put(key.clone(), to_json(&entry), Some(put)).await {
                                Ok(_) => registered = Some(entry),
                                Err(e) => break lost("update", e),
                            }
                        }
                        _ => {}
                    }
                }
            }
        };
        metrics::gauge!("aegis_discovery_connected", "source" => "etcd").set(0.0);
        ended
    }

    fn to_json(entry: &Entry) -> Vec<u8> {
        serde_json::to_vec(entry).unwrap_or_default()
    }

    /// Puts this node's entry under `lease`, with a stamp above any it had
    /// before: others may remember it as dead from a time etcd lost its key
    /// (the same rule as a gossip node refuting a death). Returns what was
    /// written.
    async fn register(
        client: &mut Client,
        topology: &Topology,
        local: &NodeId,
        key: &str,
        lease: i64,
    ) -> Result<Option<Entry>, etcd_client::Error> {
        if let Some(me) = topology.get_node(local.as_str()) {
            let mut info = (*me).clone();
            info.updated_at = 0;
            if let Err(e) = topology.update_node(info) {
                tracing::debug!(node_id = %local, error = %e, "own entry not raised");
            }
        }
        let entry = topology.get_entry(local.as_str());
        let value = entry.as_ref().map(to_json).unwrap_or_default();
        client
            .put(key, value, Some(PutOptions::new().with_lease(lease)))
            .await?;
        Ok(entry)
    }

    /// Reads every entry under the prefix, applies them, and drops members
    /// etcd no longer has; returns the revision of the read.
    async fn resync(
        client: &mut Client,
        config: &EtcdDiscovery,
        topology: &Topology,
        local: &NodeId,
    ) -> Result<i64, etcd_client::Error> {
        let answer = client
            .get(config.nodes_prefix(), Some(GetOptions::new().with_prefix()))
            .await?;
        let mut present = HashSet::new();
        let mut entries = Vec::new();
        for kv in answer.kvs() {
            match parse(config, kv.key(), kv.value()) {
                Ok(entry) => {
                    present.insert(entry.id().clone());
                    if entry.id() != local {
                        entries.push(entry);
                    }
                }
                Err(why) => skip(&why),
            }
        }
        for entry in entries {
            apply(topology, entry);
        }
        for entry in topology.entries() {
            let id = entry.id();
            if id != local && !present.contains(id) {
                gone(topology, id);
            }
        }
        let revision = answer.header().map_or(0, |h| h.revision());
        Ok(revision)
    }

    fn apply_event(
        config: &EtcdDiscovery,
        topology: &Topology,
        local: &NodeId,
        event: &etcd_client::Event,
    ) {
        let Some(kv) = event.kv() else { return };
        match event.event_type() {
            EventType::Put => match parse(config, kv.key(), kv.value()) {
                Ok(entry) if entry.id() == local => {}
                Ok(entry) => apply(topology, entry),
                Err(why) => skip(&why),
            },
            EventType::Delete => match id_of(config, kv.key()) {
                Some(id) if id == *local => {}
                Some(id) => gone(topology, &id),
                None => skip(&format!(
                    "deleted key {:?} is not PREFIX/nodes/NODE_ID",
                    String::from_utf8_lossy(kv.key())
                )),
            },
        }
    }

    fn skip(why: &str) {
        metrics::counter!("aegis_discovery_skipped_total", "source" => "etcd").increment(1);
        tracing::warn!("etcd discovery: skipped an entry: {why}");
    }

    /// Takes an entry from etcd, by the usual merge rules (a node that
    /// registers again raises its stamp first, see `register`).
    fn apply(topology: &Topology, entry: Entry) {
        let id = entry.id().clone();
        match topology.apply(vec![entry]) {
            Ok(report) if !report.changed.is_empty() => {
                tracing::debug!(node = %id, "etcd discovery: entry taken");
            }
            Ok(_) => {}
            Err(e) => skip(&format!("the entry of {id} breaks a rule: {e}")),
        }
    }

    /// A member's key went: its lease ran out (dead) or it deregistered
    /// (it put its entry as left first). Either way it leaves this view now.
    fn gone(topology: &Topology, id: &NodeId) {
        let later = SystemTime::now() + Duration::from_secs(1);
        match topology.state_of(id.as_str()) {
            Some(NodeState::Left) => {
                topology.purge_tombstones(later);
            }
            Some(_) => {
                let _ = topology.mark(id.as_str(), NodeState::Dead);
                topology.purge_dead(later);
            }
            None => {}
        }
        tracing::info!(node = %id, "etcd discovery: member gone");
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn keys_and_values_are_checked() {
            let config = EtcdDiscovery::new(["127.0.0.1:2379"], "/mesh/");
            assert_eq!(config.nodes_prefix(), "/mesh/nodes/");
            let id = NodeId::new("n1").unwrap();
            assert_eq!(key_of(&config, &id), "/mesh/nodes/n1");
            assert_eq!(id_of(&config, b"/mesh/nodes/n1").as_ref(), Some(&id));
            assert_eq!(id_of(&config, b"/other/nodes/n1"), None);
            assert_eq!(id_of(&config, b"/mesh/nodes/bad id"), None);

            let topology = Topology::new();
            topology
                .add_node(aegis_topology::NodeInfo::new("n1", "n1", "127.0.0.1:1").unwrap())
                .unwrap();
            let entry = topology.get_entry("n1").unwrap();
            let value = serde_json::to_vec(&entry).unwrap();
            assert_eq!(parse(&config, b"/mesh/nodes/n1", &value).unwrap(), entry);
            let err = parse(&config, b"/mesh/nodes/n2", &value).unwrap_err();
            assert!(err.contains("is for n1"), "{err}");
            assert!(parse(&config, b"/mesh/nodes/n1", b"{not json").is_err());
            assert!(parse(&config, b"/mesh/nodes/n1", b"").is_err());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Discovery;

    #[test]
    fn discovery_urls() {
        assert!(matches!(Discovery::parse("gossip"), Ok(Discovery::Gossip)));
        for bad in [
            "",
            "etcd://",
            "etcd:///p",
            "etcd://h:1",
            "etcd://h:1/",
            "etcd://h/p",
            "zk://h:1/p",
        ] {
            assert!(Discovery::parse(bad).is_err(), "{bad}");
        }
        #[cfg(feature = "etcd")]
        match Discovery::parse("etcd://a:1,b:2/my/mesh/") {
            Ok(Discovery::Etcd(e)) => {
                assert_eq!(e.endpoints, ["a:1", "b:2"]);
                assert_eq!(e.nodes_prefix(), "/my/mesh/nodes/");
                assert!(!e.node_tls);
            }
            other => panic!("{other:?}"),
        }
        #[cfg(feature = "etcd")]
        match Discovery::parse("etcds://a:1/p") {
            Ok(Discovery::Etcd(e)) => assert!(e.node_tls),
            other => panic!("{other:?}"),
        }
        #[cfg(not(feature = "etcd"))]
        assert!(
            Discovery::parse("etcd://a:1/p")
                .unwrap_err()
                .contains("no etcd support")
        );
    }
}
