//! The pool: provider choice, one channel per provider, outlier detection.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

#[cfg(doc)]
use aegis_tls::TlsConfig;
use aegis_topology::{NodeId, NodeInfo, Topology};
use aegis_transport::{
    ChannelOptions, ConnectEvent, ConnectObserver, Credentials, mtls_channel_observed,
};
use tonic::transport::Channel;

use crate::PoolError;

/// How the pool dials and sets providers aside.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolConfig {
    /// Channel settings (connect timeout, keep-alive).
    pub channel: ChannelOptions,
    /// How long a provider whose connection failed is set aside; doubled on
    /// each further failure in a row.
    pub ejection: Duration,
    /// The longest a provider is set aside.
    pub max_ejection: Duration,
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            channel: ChannelOptions::default(),
            ejection: Duration::from_secs(1),
            max_ejection: Duration::from_secs(30),
        }
    }
}

/// What the pool knows of one provider's recent connection attempts.
struct Outlier {
    /// Milliseconds since the pool's epoch until which the provider is set aside.
    until_ms: AtomicU64,
    failures: AtomicU32,
}

pub(crate) struct Provider {
    pub(crate) id: NodeId,
    pub(crate) address: String,
    pub(crate) channel: Channel,
    outlier: Arc<Outlier>,
}

/// FNV-1a: the pool's maps are keyed by short names and node IDs that
/// come from the mesh's own topology, and hashing them is on the path of
/// every call, where SipHash's flood resistance buys nothing.
#[derive(Default, Clone, Copy)]
struct Fnv(u64);

impl std::hash::Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        let mut h = if self.0 == 0 {
            0xcbf2_9ce4_8422_2325
        } else {
            self.0
        };
        for &b in bytes {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        self.0 = h;
    }
}

type FastMap<K, V> = HashMap<K, V, std::hash::BuildHasherDefault<Fnv>>;

/// The providers of one (name, version) resolved to their channels, valid
/// while the topology stays at `version`; and the round-robin position,
/// which survives re-resolving.
#[derive(Default)]
struct Route {
    version: u64,
    slots: Vec<Arc<Provider>>,
    counter: AtomicUsize,
}

type Routes = FastMap<String, FastMap<String, Route>>;

/// `aegis_pool_picks_total`: a provider chosen for a call.
fn picked(name: &str, version: &str, p: &Provider) {
    metrics::counter!(
        "aegis_pool_picks_total",
        "service" => name.to_owned(),
        "version" => version.to_owned(),
        "provider" => p.id.to_string()
    )
    .increment(1);
}

fn no_providers(name: &str, version: &str) -> PoolError {
    PoolError::NoProviders {
        name: name.to_owned(),
        version: version.to_owned(),
    }
}

struct Inner {
    topology: Topology,
    credentials: Option<Credentials>,
    config: PoolConfig,
    /// Resolved providers and round-robin position per (name, version).
    routes: RwLock<Routes>,
    /// One channel per provider, keyed by node ID (a provider that moved
    /// gets a new channel), shared by the routes of all its services.
    channels: RwLock<FastMap<NodeId, Arc<Provider>>>,
    closed: AtomicBool,
    epoch: Instant,
}

impl Inner {
    fn sweep(&self) {
        let topology = &self.topology;
        // Routes re-resolve on next use; their positions stay.
        for route in write(&self.routes)
            .values_mut()
            .flat_map(|v| v.values_mut())
        {
            route.version = u64::MAX;
            route.slots.clear();
        }
        let mut channels = write(&self.channels);
        channels.retain(|id, p| {
            let keep = topology
                .state_of(id.as_str())
                .is_some_and(|s| s.is_available())
                && topology
                    .get_node(id.as_str())
                    .is_some_and(|n| n.address == p.address);
            if !keep {
                tracing::debug!(node_id = %id, "provider gone; channel dropped");
            }
            keep
        });
    }
}

/// Hands out channels to the providers of a service, round-robin.
/// Cheap to clone; clones share channels and counters.
#[derive(Clone)]
pub struct ServiceClientPool {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for ServiceClientPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceClientPool")
            .field("channels", &self.channel_count())
            .field("closed", &self.inner.closed.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(PoisonError::into_inner)
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(PoisonError::into_inner)
}

impl ServiceClientPool {
    /// A pool over `topology`, dialling with `credentials` (a
    /// [`TlsConfig`], or [`Credentials`] that change at run time: every new
    /// connection takes the current ones). Without them every `get_conn`
    /// answers [`PoolError::NoTlsConfig`].
    pub fn new(topology: Topology, credentials: Option<impl Into<Credentials>>) -> Self {
        Self::with_config(topology, credentials, PoolConfig::default())
    }

    /// A pool with other dialling and back-off settings.
    pub fn with_config(
        topology: Topology,
        credentials: Option<impl Into<Credentials>>,
        config: PoolConfig,
    ) -> Self {
        let inner = Arc::new(Inner {
            topology,
            credentials: credentials.map(Into::into),
            config,
            routes: RwLock::new(FastMap::default()),
            channels: RwLock::new(FastMap::default()),
            closed: AtomicBool::new(false),
            epoch: Instant::now(),
        });
        // Membership changes reach the pool as they happen: channels of
        // providers that went are dropped at once, not on the next call.
        // (Routes stay valid for exactly the topology version they were
        // resolved at; checking that costs one atomic read per call.)
        let weak = Arc::downgrade(&inner);
        inner.topology.on_change(move |_| {
            if let Some(inner) = weak.upgrade() {
                inner.sweep();
            }
        });
        Self { inner }
    }

    /// A channel to a live provider of exactly `name` at `version`, chosen
    /// round-robin among those not set aside (or among all, if all are).
    /// Must be called inside a Tokio runtime.
    ///
    /// # Errors
    /// [`PoolError::Closed`], [`PoolError::NoTlsConfig`],
    /// [`PoolError::NoProviders`], or [`PoolError::Connect`] naming the
    /// provider when its address cannot be dialled.
    pub async fn get_conn(&self, name: &str, version: &str) -> Result<Channel, PoolError> {
        self.pick(name, version)
    }

    fn pick(&self, name: &str, version: &str) -> Result<Channel, PoolError> {
        self.pick_provider(name, version, &[])
            .map(|p| p.channel.clone())
    }

    /// The next provider of (name, version) round-robin, skipping those in
    /// `exclude` (already tried) and those set aside while others remain.
    pub(crate) fn pick_provider(
        &self,
        name: &str,
        version: &str,
        exclude: &[NodeId],
    ) -> Result<Arc<Provider>, PoolError> {
        let inner = &*self.inner;
        if inner.closed.load(Ordering::Acquire) {
            return Err(PoolError::Closed);
        }
        let tls = inner.credentials.as_ref().ok_or(PoolError::NoTlsConfig)?;
        let current = inner.topology.version();
        {
            let routes = read(&inner.routes);
            if let Some(route) = routes.get(name).and_then(|v| v.get(version))
                && route.version == current
            {
                return self.pick_from(route, name, version, exclude);
            }
        }
        // The topology changed since this route was resolved (or it is new).
        self.resolve(tls, name, version, current)?;
        let routes = read(&inner.routes);
        match routes.get(name).and_then(|v| v.get(version)) {
            Some(route) => self.pick_from(route, name, version, exclude),
            None => Err(no_providers(name, version)),
        }
    }

    /// The first provider from the round-robin position on that is neither
    /// excluded nor set aside; if all that are not excluded are set aside,
    /// the first of those (try anyway rather than fail untried).
    fn pick_from(
        &self,
        route: &Route,
        name: &str,
        version: &str,
        exclude: &[NodeId],
    ) -> Result<Arc<Provider>, PoolError> {
        let n = route.slots.len();
        if n == 0 {
            return Err(no_providers(name, version));
        }
        let start = route.counter.fetch_add(1, Ordering::Relaxed);
        // Read the clock only if some provider is set aside.
        let mut now = None;
        let mut fallback = None;
        for k in 0..n {
            let p = &route.slots[(start + k) % n];
            if !exclude.is_empty() && exclude.contains(&p.id) {
                continue;
            }
            let until = p.outlier.until_ms.load(Ordering::Relaxed);
            if until == 0 || until <= *now.get_or_insert_with(|| self.now_ms()) {
                picked(name, version, p);
                return Ok(Arc::clone(p));
            }
            fallback.get_or_insert(p);
        }
        fallback
            .inspect(|p| picked(name, version, p))
            .map(Arc::clone)
            .ok_or_else(|| no_providers(name, version))
    }

    /// Resolves the preferred providers of (name, version) to their
    /// channels, as of topology version `current`.
    fn resolve(
        &self,
        tls: &Credentials,
        name: &str,
        version: &str,
        current: u64,
    ) -> Result<(), PoolError> {
        let providers = self.inner.topology.get_preferred_providers(name, version);
        let slots = providers
            .iter()
            .map(|node| self.provider(tls, node))
            .collect::<Result<Vec<_>, _>>()?;
        let mut routes = write(&self.inner.routes);
        let route = routes
            .entry(name.to_owned())
            .or_default()
            .entry(version.to_owned())
            .or_default();
        route.version = current;
        route.slots = slots;
        Ok(())
    }

    /// The provider entry of `node`: its channel, made (or replaced, when the
    /// provider moved) if needed.
    fn provider(&self, tls: &Credentials, node: &NodeInfo) -> Result<Arc<Provider>, PoolError> {
        if let Some(p) = read(&self.inner.channels).get(&node.id)
            && p.address == node.address
        {
            return Ok(Arc::clone(p));
        }
        let mut channels = write(&self.inner.channels);
        if let Some(p) = channels.get(&node.id) {
            if p.address == node.address {
                return Ok(Arc::clone(p));
            }
            tracing::info!(node_id = %node.id, from = %p.address, to = %node.address, "provider moved; new channel");
        }
        let outlier = Arc::new(Outlier {
            until_ms: AtomicU64::new(0),
            failures: AtomicU32::new(0),
        });
        let observer = self.observer(&node.id, Arc::clone(&outlier));
        let channel = mtls_channel_observed(
            tls,
            &node.id,
            &node.address,
            &self.inner.config.channel,
            Some(observer),
        )
        .map_err(|e| PoolError::Connect {
            node_id: node.id.to_string(),
            address: node.address.clone(),
            reason: e.to_string(),
        })?;
        let provider = Arc::new(Provider {
            id: node.id.clone(),
            address: node.address.clone(),
            channel,
            outlier,
        });
        channels.insert(node.id.clone(), Arc::clone(&provider));
        Ok(provider)
    }

    /// Sets the provider aside when a connection attempt fails; clears that
    /// when one succeeds.
    fn observer(&self, id: &NodeId, outlier: Arc<Outlier>) -> ConnectObserver {
        let (epoch, config, id) = (self.inner.epoch, self.inner.config, id.clone());
        Arc::new(move |event| match event {
            ConnectEvent::Connected => {
                metrics::counter!("aegis_pool_connects_total", "provider" => id.to_string(), "result" => "ok")
                    .increment(1);
                if outlier.failures.swap(0, Ordering::Relaxed) > 0 {
                    tracing::info!(node_id = %id, "provider reachable again");
                }
                outlier.until_ms.store(0, Ordering::Relaxed);
            }
            ConnectEvent::Failed(error) => {
                metrics::counter!("aegis_pool_connects_total", "provider" => id.to_string(), "result" => "failed")
                    .increment(1);
                metrics::counter!("aegis_pool_set_aside_total", "provider" => id.to_string())
                    .increment(1);
                let failures = outlier.failures.fetch_add(1, Ordering::Relaxed) + 1;
                let factor = 1u32 << (failures - 1).min(16);
                let period = config
                    .ejection
                    .saturating_mul(factor)
                    .min(config.max_ejection);
                // At least 1: 0 means "not set aside".
                let until = epoch.elapsed().saturating_add(period).as_millis().max(1);
                outlier
                    .until_ms
                    .store(u64::try_from(until).unwrap_or(u64::MAX), Ordering::Relaxed);
                tracing::warn!(node_id = %id, %error, failures, ?period, "provider set aside");
            }
        })
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.inner.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Drops the channels of providers that left the topology, died, or
    /// moved. Runs by itself whenever the topology changes; a channel
    /// closes once no client made from it is left.
    pub fn sweep(&self) {
        self.inner.sweep();
    }

    /// How many provider channels the pool holds.
    pub fn channel_count(&self) -> usize {
        read(&self.inner.channels).len()
    }

    /// Whether the provider is set aside now.
    pub fn is_set_aside(&self, node_id: &str) -> bool {
        let now = self.now_ms();
        read(&self.inner.channels)
            .get(node_id)
            .is_some_and(|p| p.outlier.until_ms.load(Ordering::Relaxed) > now)
    }

    /// Drops every channel; later calls get [`PoolError::Closed`].
    pub async fn close(&self) {
        self.inner.closed.store(true, Ordering::Release);
        write(&self.inner.routes).clear();
        write(&self.inner.channels).clear();
        tracing::debug!("pool closed");
    }
}

/// A typed client for one service, made on a pooled channel per call to
/// [`ServiceClient::get`].
///
/// ```no_run
/// # async fn run(pool: aegis_pool::ServiceClientPool) -> Result<(), aegis_pool::PoolError> {
/// use aegis_peer::proto::testing::echo_client::EchoClient;
/// let echo = aegis_pool::ServiceClient::new(&pool, "echo", "v1", EchoClient::new);
/// let mut client = echo.get().await?;
/// # let _ = &mut client;
/// # Ok(()) }
/// ```
pub struct ServiceClient<T> {
    pool: ServiceClientPool,
    name: String,
    version: String,
    make: Arc<dyn Fn(Channel) -> T + Send + Sync>,
}

impl<T> Clone for ServiceClient<T> {
    fn clone(&self) -> Self {
        Self {
            pool: self.pool.clone(),
            name: self.name.clone(),
            version: self.version.clone(),
            make: Arc::clone(&self.make),
        }
    }
}

impl<T> std::fmt::Debug for ServiceClient<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceClient")
            .field("name", &self.name)
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

impl<T> ServiceClient<T> {
    /// A client of `name` at `version`, built by `make` (a tonic client's
    /// `new`, for example `IdentityServiceClient::new`).
    pub fn new(
        pool: &ServiceClientPool,
        name: impl Into<String>,
        version: impl Into<String>,
        make: impl Fn(Channel) -> T + Send + Sync + 'static,
    ) -> Self {
        Self {
            pool: pool.clone(),
            name: name.into(),
            version: version.into(),
            make: Arc::new(make),
        }
    }

    /// A client on a channel to the next provider.
    ///
    /// # Errors
    /// As [`ServiceClientPool::get_conn`].
    pub async fn get(&self) -> Result<T, PoolError> {
        let channel = self.pool.get_conn(&self.name, &self.version).await?;
        Ok((self.make)(channel))
    }
}
