//! Ping over mutual TLS against the same call in plain text, on loopback,
//! in one run; and the cost of a fresh mTLS connection.
//!
//! `cargo bench -p aegis-benches --bench peer`
//!
//! Both servers run the same trivial handler, so the difference is the
//! transport. The call loop runs on a runtime worker (not `block_on` on the
//! main thread, which adds thread hops to every call).

use std::time::{Duration, Instant};

use aegis_benches::{NetFixture, expect};
use aegis_mesh::{Liveness, LivenessConfig};
use aegis_peer::proto::mesh as pb;
use aegis_peer::proto::mesh::mesh_service_client::MeshServiceClient;
use aegis_peer::proto::mesh::mesh_service_server::{MeshService, MeshServiceServer};
use aegis_peer::transport::{ChannelOptions, mtls_channel};
use aegis_peer::{
    Health, MeshServer, MeshServerConfig, PeerInfo, PeerManager, SharedLiveness, serve_routes,
};
use aegis_topology::{NodeId, Topology};
use criterion::{Criterion, criterion_group, criterion_main};
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status};

#[derive(Clone, Copy)]
struct PingOnly;

#[tonic::async_trait]
impl MeshService for PingOnly {
    async fn ping(
        &self,
        _: Request<pb::PingRequest>,
    ) -> Result<Response<pb::PingResponse>, Status> {
        Ok(Response::new(pb::PingResponse {
            receiver_id: "bench-server".into(),
            timestamp: 0,
            success: true,
            ..Default::default()
        }))
    }
    async fn get_health(
        &self,
        _: Request<pb::HealthRequest>,
    ) -> Result<Response<pb::HealthResponse>, Status> {
        Err(Status::unimplemented(""))
    }
    async fn get_node_info(
        &self,
        _: Request<pb::NodeInfoRequest>,
    ) -> Result<Response<pb::NodeInfoResponse>, Status> {
        Err(Status::unimplemented(""))
    }
    async fn sync_topology(
        &self,
        _: Request<pb::TopologySyncRequest>,
    ) -> Result<Response<pb::TopologySyncResponse>, Status> {
        Err(Status::unimplemented(""))
    }
    async fn get_topology(
        &self,
        _: Request<pb::GetTopologyRequest>,
    ) -> Result<Response<pb::GetTopologyResponse>, Status> {
        Err(Status::unimplemented(""))
    }
}

fn ping_request() -> pb::PingRequest {
    pb::PingRequest {
        sender_id: "bench-client".into(),
        timestamp: 0,
        ..Default::default()
    }
}

/// Runs `iters` sequential pings on a worker and times them.
fn timed_pings(
    rt: &tokio::runtime::Runtime,
    client: &MeshServiceClient<Channel>,
    iters: u64,
) -> Duration {
    let mut client = client.clone();
    expect(rt.block_on(rt.spawn(async move {
        let start = Instant::now();
        for _ in 0..iters {
            expect(client.ping(ping_request()).await);
        }
        start.elapsed()
    })))
}

/// Runs `iters` sequential pings through a peer manager and times them.
fn manager_pings(
    rt: &tokio::runtime::Runtime,
    peers: &std::sync::Arc<PeerManager>,
    iters: u64,
) -> Duration {
    let peers = std::sync::Arc::clone(peers);
    expect(rt.block_on(rt.spawn(async move {
        let start = Instant::now();
        for _ in 0..iters {
            expect(peers.ping_peer("bench-server").await);
        }
        start.elapsed()
    })))
}

/// Accepted plain-text sockets with Nagle off, like the mTLS server's
/// (tonic ignores `tcp_nodelay` for `serve_with_incoming`).
fn nodelay(
    listener: tokio::net::TcpListener,
) -> impl tokio_stream::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    use tokio_stream::StreamExt;
    tokio_stream::wrappers::TcpListenerStream::new(listener).map(|s| {
        let s = s?;
        s.set_nodelay(true)?;
        Ok(s)
    })
}

/// A plain-text channel dialled like the mTLS one (own connector, Nagle
/// off), so that the two differ only by TLS.
fn plain_channel(addr: std::net::SocketAddr) -> Channel {
    let endpoint = expect(Endpoint::from_shared(format!("http://{addr}")));
    endpoint.connect_with_connector_lazy(tower::service_fn(move |_: http::Uri| async move {
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tcp))
    }))
}

/// A recorder that can be switched off: off, every metric is a no-op (as
/// with no recorder at all); on, it records into Prometheus. Lets one run
/// time pings with metrics on and off.
struct Switch {
    on: std::sync::atomic::AtomicBool,
    inner: metrics_exporter_prometheus::PrometheusRecorder,
}

static SWITCH: std::sync::OnceLock<&'static Switch> = std::sync::OnceLock::new();

impl Switch {
    fn on(&self) -> bool {
        self.on.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl metrics::Recorder for &'static Switch {
    fn describe_counter(
        &self,
        k: metrics::KeyName,
        u: Option<metrics::Unit>,
        d: metrics::SharedString,
    ) {
        self.inner.describe_counter(k, u, d);
    }
    fn describe_gauge(
        &self,
        k: metrics::KeyName,
        u: Option<metrics::Unit>,
        d: metrics::SharedString,
    ) {
        self.inner.describe_gauge(k, u, d);
    }
    fn describe_histogram(
        &self,
        k: metrics::KeyName,
        u: Option<metrics::Unit>,
        d: metrics::SharedString,
    ) {
        self.inner.describe_histogram(k, u, d);
    }
    fn register_counter(&self, k: &metrics::Key, m: &metrics::Metadata<'_>) -> metrics::Counter {
        if self.on() {
            self.inner.register_counter(k, m)
        } else {
            metrics::Counter::noop()
        }
    }
    fn register_gauge(&self, k: &metrics::Key, m: &metrics::Metadata<'_>) -> metrics::Gauge {
        if self.on() {
            self.inner.register_gauge(k, m)
        } else {
            metrics::Gauge::noop()
        }
    }
    fn register_histogram(
        &self,
        k: &metrics::Key,
        m: &metrics::Metadata<'_>,
    ) -> metrics::Histogram {
        if self.on() {
            self.inner.register_histogram(k, m)
        } else {
            metrics::Histogram::noop()
        }
    }
}

fn switch() -> &'static Switch {
    SWITCH.get_or_init(|| {
        let s: &'static Switch = Box::leak(Box::new(Switch {
            on: std::sync::atomic::AtomicBool::new(false),
            inner: metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder(),
        }));
        expect(metrics::set_global_recorder(s).map_err(|e| e.to_string()));
        s
    })
}

fn ping(c: &mut Criterion) {
    let metrics_switch = switch();
    let fx = NetFixture::new("bench-server", "bench-client");
    let (rt, server_tls, client_tls) = (&fx.rt, fx.server_tls.clone(), fx.client_tls.clone());
    let server_id = expect(NodeId::new("bench-server"));

    // The same handler over mTLS and in plain text.
    let tls_server = expect(rt.block_on(serve_routes(
        &server_tls,
        "127.0.0.1:0",
        tonic::service::Routes::new(MeshServiceServer::new(PingOnly)),
        MeshServerConfig::default(),
    )));
    let plain_listener = expect(rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")));
    let plain_addr = expect(plain_listener.local_addr());
    let _plain = rt.spawn(
        tonic::transport::Server::builder()
            .tcp_nodelay(true)
            .add_service(MeshServiceServer::new(PingOnly))
            .serve_with_incoming(nodelay(plain_listener)),
    );
    // The real mesh server, through the PeerManager API.
    let mesh_server = expect(rt.block_on(
        MeshServer::new(server_tls, Topology::new(), Health::new()).serve("127.0.0.1:0"),
    ));

    let tls_addr = tls_server.local_addr().to_string();
    let tls_client = rt.block_on(async {
        MeshServiceClient::new(expect(mtls_channel(
            &client_tls,
            &server_id,
            &tls_addr,
            &ChannelOptions::default(),
        )))
    });
    let plain_client = rt.block_on(async { MeshServiceClient::new(plain_channel(plain_addr)) });
    let peers = std::sync::Arc::new(PeerManager::new(
        client_tls.node_id().clone(),
        Some(client_tls.clone()),
        Topology::new(),
    ));
    expect(peers.add_peer(expect(PeerInfo::new(
        "bench-server",
        mesh_server.local_addr().to_string(),
    ))));
    // The same, with liveness on both sides: every ping and answer goes
    // through the piggyback path (empty in steady state, as here).
    let live = |id: &str| -> SharedLiveness {
        std::sync::Arc::new(std::sync::Mutex::new(Liveness::new(
            expect(NodeId::new(id)),
            LivenessConfig::default(),
        )))
    };
    let server_topology = Topology::new();
    let server_peers = std::sync::Arc::new(
        PeerManager::new(
            server_id.clone(),
            Some(fx.server_tls.clone()),
            server_topology.clone(),
        )
        .with_liveness(live("bench-server")),
    );
    let live_server = expect(
        rt.block_on(
            MeshServer::new(fx.server_tls.clone(), server_topology, Health::new())
                .with_peers(server_peers)
                .serve("127.0.0.1:0"),
        ),
    );
    let live_peers = std::sync::Arc::new(
        PeerManager::new(
            client_tls.node_id().clone(),
            Some(client_tls.clone()),
            Topology::new(),
        )
        .with_liveness(live("bench-client")),
    );
    expect(live_peers.add_peer(expect(PeerInfo::new(
        "bench-server",
        live_server.local_addr().to_string(),
    ))));

    let mut g = c.benchmark_group("ping_open_connection");
    g.measurement_time(Duration::from_secs(5));
    g.bench_function("baseline_plaintext", |b| {
        b.iter_custom(|n| timed_pings(rt, &plain_client, n))
    });
    g.bench_function("mtls", |b| {
        b.iter_custom(|n| timed_pings(rt, &tls_client, n))
    });
    g.bench_function("mtls_peer_manager", |b| {
        b.iter_custom(|n| manager_pings(rt, &peers, n));
    });
    g.bench_function("mtls_peer_manager_liveness", |b| {
        b.iter_custom(|n| manager_pings(rt, &live_peers, n));
    });
    g.finish();

    // The same pings through the peer manager and the mesh server, with the
    // metrics they record (client and server side) off, then on.
    let mut g = c.benchmark_group("ping_metrics");
    g.measurement_time(Duration::from_secs(5));
    for (name, on) in [
        ("off", false),
        ("on_prometheus", true),
        ("off_again", false),
    ] {
        g.bench_function(name, |b| {
            metrics_switch
                .on
                .store(on, std::sync::atomic::Ordering::Relaxed);
            b.iter_custom(|n| manager_pings(rt, &peers, n));
        });
    }
    metrics_switch
        .on
        .store(false, std::sync::atomic::Ordering::Relaxed);
    g.finish();

    let mut g = c.benchmark_group("fresh_connection_first_call");
    g.measurement_time(Duration::from_secs(5));
    g.bench_function("baseline_plaintext", |b| {
        b.iter_custom(|n| {
            expect(rt.block_on(rt.spawn(async move {
                let start = Instant::now();
                for _ in 0..n {
                    let ch = plain_channel(plain_addr);
                    expect(MeshServiceClient::new(ch).ping(ping_request()).await);
                }
                start.elapsed()
            })))
        });
    });
    g.bench_function("mtls", |b| {
        b.iter_custom(|n| {
            let (tls, id, addr) = (client_tls.clone(), server_id.clone(), tls_addr.clone());
            expect(rt.block_on(rt.spawn(async move {
                let start = Instant::now();
                for _ in 0..n {
                    let ch = expect(mtls_channel(&tls, &id, &addr, &ChannelOptions::default()));
                    expect(MeshServiceClient::new(ch).ping(ping_request()).await);
                }
                start.elapsed()
            })))
        });
    });
    g.finish();
    drop(tls_server);
    drop(mesh_server);
}

criterion_group!(benches, ping);
criterion_main!(benches);
