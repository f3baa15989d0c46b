//! The pool: `get_conn` on a warm pool over a 10,000-node topology against
//! the reference algorithm (scan every node's services, then pick), with
//! heap allocations per call counted; and unary calls through
//! `ServiceClient` against a raw channel with the same TLS to the same server.
//!
//! `cargo bench -p aegis-benches --bench pool`
#![allow(unsafe_code)] // the counting allocator below

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::HashMap;
use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use aegis_benches::{NetFixture, expect, mesh_entries};
use aegis_peer::proto::testing::echo_client::EchoClient;
use aegis_peer::proto::testing::echo_server::{Echo, EchoServer};
use aegis_peer::proto::testing::{SlowRequest, WhoAmIRequest, WhoAmIResponse};
use aegis_peer::transport::{ChannelOptions, mtls_channel};
use aegis_peer::{MeshServerConfig, serve_routes};
use aegis_pool::{ServiceClient, ServiceClientPool};
use aegis_topology::{NodeInfo, ServiceInfo, Topology};
use criterion::{Criterion, criterion_group, criterion_main};
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

/// Counts every allocation, to show what a call allocates.
struct Counting;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// The reference's `GetConn`: scan every node for the service, pick
/// round-robin, look the channel up by address.
fn reference_get_conn(
    nodes: &[NodeInfo],
    channels: &HashMap<String, Channel>,
    counter: &AtomicUsize,
    name: &str,
    version: &str,
) -> Channel {
    let providers: Vec<NodeInfo> = nodes
        .iter()
        .filter(|n| n.provides(name, version))
        .cloned()
        .collect();
    let pick = &providers[counter.fetch_add(1, Ordering::Relaxed) % providers.len()];
    channels[&pick.address].clone()
}

fn allocations_per_call(calls: usize, mut f: impl FnMut()) -> f64 {
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    for _ in 0..calls {
        f();
    }
    (ALLOCATIONS.load(Ordering::Relaxed) - before) as f64 / calls as f64
}

fn get_conn(c: &mut Criterion) {
    let fx = NetFixture::new("bench-provider", "bench-consumer");
    let (rt, tls) = (&fx.rt, fx.client_tls.clone());
    let entries = mesh_entries(10_000, 1);
    let nodes: Vec<NodeInfo> = entries.iter().map(|e| (*e.info).clone()).collect();
    let topology = Topology::new();
    expect(topology.apply(entries));
    let pool = ServiceClientPool::new(topology.clone(), Some(tls.clone()));
    let providers = topology.get_service_providers("svc-7", "v1").len();
    // Warm: a channel for every provider (lazy: nothing is dialled).
    let reference_channels: HashMap<String, Channel> = rt.block_on(async {
        for _ in 0..providers {
            expect(pool.get_conn("svc-7", "v1").await);
        }
        nodes
            .iter()
            .filter(|n| n.provides("svc-7", "v1"))
            .map(|n| {
                let ch = expect(mtls_channel(
                    &tls,
                    &n.id,
                    &n.address,
                    &ChannelOptions::default(),
                ));
                (n.address.clone(), ch)
            })
            .collect()
    });
    assert_eq!(pool.channel_count(), providers);
    let counter = AtomicUsize::new(0);
    let reference = || reference_get_conn(&nodes, &reference_channels, &counter, "svc-7", "v1");

    let ours = rt.block_on(async {
        allocations_per_call(10_000, || {
            black_box(expect(futures_now(pool.get_conn("svc-7", "v1"))));
        })
    });
    let theirs = rt.block_on(async {
        allocations_per_call(1_000, || {
            black_box(reference());
        })
    });
    println!(
        "heap allocations per call at 10,000 nodes ({providers} providers): get_conn {ours:.2}, reference {theirs:.2}"
    );
    let lookup_only = allocations_per_call(10_000, || {
        black_box(topology.get_service_providers("svc-7", "v1"));
    });
    println!("heap allocations per provider lookup (topology index): {lookup_only:.2}");
    let one = reference_channels.values().next().cloned();
    let clone_only = allocations_per_call(10_000, || {
        black_box(one.clone());
    });
    println!("heap allocations per tonic Channel clone: {clone_only:.2}");

    let mut g = c.benchmark_group("get_conn_10000_nodes");
    g.measurement_time(Duration::from_secs(4));
    g.bench_function("pool", |b| {
        let _guard = rt.enter();
        b.iter(|| {
            black_box(futures_now(
                pool.get_conn(black_box("svc-7"), black_box("v1")),
            ))
        });
    });
    g.bench_function("floor_tonic_channel_clone", |b| {
        b.iter(|| black_box(one.clone()));
    });
    g.bench_function("baseline_reference_scan", |b| {
        let _guard = rt.enter();
        b.iter(|| black_box(reference()));
    });
    g.finish();
}

/// Polls a future that completes without waiting (get_conn never awaits).
fn futures_now<F: std::future::Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match f.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(v) => v,
        std::task::Poll::Pending => panic!("get_conn waited"),
    }
}

struct Hello;

#[tonic::async_trait]
impl Echo for Hello {
    async fn who_am_i(
        &self,
        _: Request<WhoAmIRequest>,
    ) -> Result<Response<WhoAmIResponse>, Status> {
        Ok(Response::new(WhoAmIResponse {
            caller_id: "x".into(),
        }))
    }
    async fn slow(&self, _: Request<SlowRequest>) -> Result<Response<WhoAmIResponse>, Status> {
        Err(Status::unimplemented(""))
    }
}

fn throughput(c: &mut Criterion) {
    let fx = NetFixture::new("bench-provider", "bench-consumer");
    let (rt, server_tls, client_tls) = (&fx.rt, fx.server_tls.clone(), fx.client_tls.clone());
    let server = expect(rt.block_on(serve_routes(
        &server_tls,
        "127.0.0.1:0",
        tonic::service::Routes::new(EchoServer::new(Hello)),
        MeshServerConfig::default(),
    )));
    let addr = server.local_addr().to_string();
    let topology = Topology::new();
    expect(
        topology.add_node(
            expect(NodeInfo::new("bench-provider", "p", &addr))
                .with_services([ServiceInfo::new("echo", "v1")]),
        ),
    );
    let pool = ServiceClientPool::new(topology, Some(client_tls.clone()));
    let typed = Arc::new(ServiceClient::new(&pool, "echo", "v1", EchoClient::new));
    let raw = rt.block_on(async {
        let id = expect(aegis_topology::NodeId::new("bench-provider"));
        EchoClient::new(expect(mtls_channel(
            &client_tls,
            &id,
            &addr,
            &ChannelOptions::default(),
        )))
    });

    let mut g = c.benchmark_group("unary_call");
    g.measurement_time(Duration::from_secs(5));
    g.bench_function("baseline_raw_channel", |b| {
        b.iter_custom(|n| {
            let mut client = raw.clone();
            expect(rt.block_on(rt.spawn(async move {
                let start = Instant::now();
                for _ in 0..n {
                    expect(client.who_am_i(WhoAmIRequest {}).await);
                }
                start.elapsed()
            })))
        });
    });
    g.bench_function("service_client", |b| {
        b.iter_custom(|n| {
            let typed = Arc::clone(&typed);
            expect(rt.block_on(rt.spawn(async move {
                let start = Instant::now();
                for _ in 0..n {
                    let mut client = expect(typed.get().await);
                    expect(client.who_am_i(WhoAmIRequest {}).await);
                }
                start.elapsed()
            })))
        });
    });
    g.finish();
    drop(server);
}

criterion_group!(benches, get_conn, throughput);
criterion_main!(benches);
