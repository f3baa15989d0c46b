//! The pool against real providers over mTLS on 127.0.0.1.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use aegis_peer::proto::testing::echo_client::EchoClient;
use aegis_peer::proto::testing::echo_server::{Echo, EchoServer};
use aegis_peer::proto::testing::{SlowRequest, WhoAmIRequest, WhoAmIResponse};
use aegis_peer::{MeshServerConfig, ServerHandle, caller_from_request, serve_routes};
use aegis_pool::{PoolConfig, PoolError, ServiceClient, ServiceClientPool};
use aegis_tls::TlsConfig;
use aegis_topology::{NodeInfo, ServiceInfo, Topology};
use tonic::{Request, Response, Status};

struct Counting {
    hits: Arc<AtomicUsize>,
}

#[tonic::async_trait]
impl Echo for Counting {
    async fn who_am_i(
        &self,
        req: Request<WhoAmIRequest>,
    ) -> Result<Response<WhoAmIResponse>, Status> {
        self.hits.fetch_add(1, Ordering::Relaxed);
        let caller =
            caller_from_request(&req).map_err(|e| Status::unauthenticated(e.to_string()))?;
        Ok(Response::new(WhoAmIResponse {
            caller_id: caller.node_id.to_string(),
        }))
    }
    async fn slow(&self, _: Request<SlowRequest>) -> Result<Response<WhoAmIResponse>, Status> {
        Err(Status::unimplemented("not used"))
    }
}

struct Provider {
    id: String,
    hits: Arc<AtomicUsize>,
    server: Option<ServerHandle>,
    address: String,
}

struct Fixture {
    dir: tempfile::TempDir,
    topology: Topology,
}

impl Fixture {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
            topology: Topology::new(),
        }
    }

    fn tls(&self, id: &str) -> TlsConfig {
        aegis_tls::load_or_generate_tls(id, self.dir.path()).unwrap()
    }

    async fn serve(&self, cert_id: &str, address: &str, hits: Arc<AtomicUsize>) -> ServerHandle {
        let routes = tonic::service::Routes::new(EchoServer::new(Counting { hits }));
        serve_routes(
            &self.tls(cert_id),
            address,
            routes,
            MeshServerConfig::default(),
        )
        .await
        .unwrap()
    }

    /// A provider of echo v1, in the topology and serving.
    async fn provider(&self, id: &str) -> Provider {
        let hits = Arc::new(AtomicUsize::new(0));
        let server = self.serve(id, "127.0.0.1:0", Arc::clone(&hits)).await;
        let address = server.local_addr().to_string();
        self.topology
            .add_node(
                NodeInfo::new(id, id, &address)
                    .unwrap()
                    .with_services([ServiceInfo::new("echo", "v1")]),
            )
            .unwrap();
        Provider {
            id: id.into(),
            hits,
            server: Some(server),
            address,
        }
    }

    fn pool(&self, consumer: &str) -> ServiceClientPool {
        ServiceClientPool::with_config(
            self.topology.clone(),
            Some(self.tls(consumer)),
            PoolConfig {
                ejection: Duration::from_millis(300),
                max_ejection: Duration::from_millis(600),
                ..PoolConfig::default()
            },
        )
    }
}

async fn call(pool: &ServiceClientPool) -> Result<String, String> {
    let channel = pool
        .get_conn("echo", "v1")
        .await
        .map_err(|e| e.to_string())?;
    EchoClient::new(channel)
        .who_am_i(WhoAmIRequest {})
        .await
        .map(|r| r.into_inner().caller_id)
        .map_err(|e| e.to_string())
}

#[tokio::test]
async fn no_providers_and_no_tls_are_named_errors() {
    let f = Fixture::new();
    let pool = f.pool("consumer");
    assert_eq!(
        pool.get_conn("echo", "v1").await.unwrap_err(),
        PoolError::NoProviders {
            name: "echo".into(),
            version: "v1".into()
        }
    );
    let _p = f.provider("prov-a").await;
    // The exact version only.
    assert!(matches!(
        pool.get_conn("echo", "v2").await,
        Err(PoolError::NoProviders { .. })
    ));
    let no_tls = ServiceClientPool::new(f.topology.clone(), None::<TlsConfig>);
    assert_eq!(
        no_tls.get_conn("echo", "v1").await.unwrap_err(),
        PoolError::NoTlsConfig
    );
}

#[tokio::test]
async fn calls_spread_evenly_and_reuse_one_channel_per_provider() {
    let f = Fixture::new();
    let providers = [
        f.provider("prov-a").await,
        f.provider("prov-b").await,
        f.provider("prov-c").await,
    ];
    let pool = f.pool("consumer");
    for _ in 0..300 {
        assert_eq!(
            call(&pool).await.unwrap(),
            "consumer",
            "the provider saw the consumer's ID"
        );
    }
    for p in &providers {
        assert_eq!(p.hits.load(Ordering::Relaxed), 100, "{}", p.id);
        assert_eq!(
            p.server.as_ref().unwrap().open_connections(),
            1,
            "{}: one shared connection",
            p.id
        );
    }
    assert_eq!(pool.channel_count(), 3);
}

/// Whether the server's client connections all close within 3 s.
async fn connections_close(server: &ServerHandle) -> bool {
    for _ in 0..300 {
        if server.open_connections() == 0 {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

#[tokio::test]
async fn a_removed_provider_is_never_chosen_and_its_channel_closes() {
    let f = Fixture::new();
    let a = f.provider("prov-a").await;
    let b = f.provider("prov-b").await;
    let pool = f.pool("consumer");
    for _ in 0..10 {
        call(&pool).await.unwrap();
    }
    assert_eq!(b.server.as_ref().unwrap().open_connections(), 1);
    f.topology.remove_node("prov-b").unwrap();
    let before = b.hits.load(Ordering::Relaxed);
    for _ in 0..20 {
        call(&pool).await.unwrap();
    }
    assert_eq!(
        b.hits.load(Ordering::Relaxed),
        before,
        "removed provider was chosen"
    );
    assert_eq!(a.hits.load(Ordering::Relaxed), 5 + 20);
    assert_eq!(pool.channel_count(), 1);
    assert!(
        connections_close(b.server.as_ref().unwrap()).await,
        "the removed provider's connection was not closed"
    );
}

#[tokio::test]
async fn a_departed_provider_s_channel_closes_without_another_call() {
    let f = Fixture::new();
    let _a = f.provider("prov-a").await;
    let b = f.provider("prov-b").await;
    let pool = f.pool("consumer");
    for _ in 0..4 {
        call(&pool).await.unwrap();
    }
    assert_eq!(pool.channel_count(), 2);
    // The pool hears of the change itself: no call is needed for it to let
    // go of the channel, and the provider sees its connection end.
    f.topology.remove_node("prov-b").unwrap();
    assert_eq!(pool.channel_count(), 1);
    assert!(
        connections_close(b.server.as_ref().unwrap()).await,
        "the departed provider's connection was not closed"
    );
}

#[tokio::test]
async fn a_killed_provider_is_set_aside_then_tried_again_when_back() {
    let f = Fixture::new();
    let _a = f.provider("prov-a").await;
    let mut b = f.provider("prov-b").await;
    let _c = f.provider("prov-c").await;
    let pool = f.pool("consumer");
    for _ in 0..30 {
        call(&pool).await.unwrap();
    }
    // Kill prov-b: its listener and connections go away.
    drop(b.server.take());
    let mut failures = 0;
    for _ in 0..60 {
        if call(&pool).await.is_err() {
            failures += 1;
        }
    }
    assert!(failures <= 3, "{failures} calls failed after the kill");
    // prov-b is set aside: the calls go to the others. (Its back-off starts
    // at 1 s and doubles; on a slow machine these calls can outlast it, and
    // then one call tries prov-b again and fails: allow that one, not more.)
    let mut failed = 0;
    for _ in 0..30 {
        if call(&pool).await.is_err() {
            failed += 1;
        }
    }
    assert!(
        failed <= 1,
        "{failed} of 30 calls failed with prov-b set aside"
    );

    // prov-b comes back on the same address; after the back-off it is used again.
    let back = Arc::new(AtomicUsize::new(0));
    b.server = Some(f.serve("prov-b", &b.address, Arc::clone(&back)).await);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while back.load(Ordering::Relaxed) == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "prov-b was never tried again"
        );
        let _ = call(&pool).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!pool.is_set_aside("prov-b"));
}

#[tokio::test]
async fn a_provider_with_another_nodes_certificate_is_refused() {
    let f = Fixture::new();
    // The topology says prov-b listens there, but the server holds prov-x's certificate.
    let server = f
        .serve("prov-x", "127.0.0.1:0", Arc::new(AtomicUsize::new(0)))
        .await;
    f.topology
        .add_node(
            NodeInfo::new("prov-b", "b", server.local_addr().to_string())
                .unwrap()
                .with_services([ServiceInfo::new("echo", "v1")]),
        )
        .unwrap();
    let pool = f.pool("consumer");
    let err = call(&pool).await.unwrap_err();
    assert!(!err.is_empty());
    assert!(
        pool.is_set_aside("prov-b"),
        "the impostor was not set aside"
    );
}

#[tokio::test]
async fn a_typed_client_makes_real_calls() {
    let f = Fixture::new();
    let p = f.provider("prov-a").await;
    let pool = f.pool("consumer-7");
    let echo = ServiceClient::new(&pool, "echo", "v1", EchoClient::new);
    for _ in 0..3 {
        let mut client = echo.get().await.unwrap();
        let who = client
            .who_am_i(WhoAmIRequest {})
            .await
            .unwrap()
            .into_inner();
        assert_eq!(who.caller_id, "consumer-7");
    }
    assert_eq!(p.hits.load(Ordering::Relaxed), 3);
    pool.close().await;
    assert_eq!(echo.get().await.unwrap_err(), PoolError::Closed);
    assert_eq!(pool.channel_count(), 0);
}

#[tokio::test]
async fn a_provider_that_moves_gets_a_new_channel() {
    let f = Fixture::new();
    let old = f.provider("prov-a").await;
    let pool = f.pool("consumer");
    call(&pool).await.unwrap();
    let moved_hits = Arc::new(AtomicUsize::new(0));
    let moved = f
        .serve("prov-a", "127.0.0.1:0", Arc::clone(&moved_hits))
        .await;
    f.topology
        .update_node(
            NodeInfo::new("prov-a", "a", moved.local_addr().to_string())
                .unwrap()
                .with_services([ServiceInfo::new("echo", "v1")]),
        )
        .unwrap();
    call(&pool).await.unwrap();
    assert_eq!(moved_hits.load(Ordering::Relaxed), 1);
    assert_eq!(old.hits.load(Ordering::Relaxed), 1);
    assert_eq!(pool.channel_count(), 1);
}
