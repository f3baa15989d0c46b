//! Topology: provider lookup against the reference's full scan, delta merge
//! against a full-topology merge, and the digest check against comparing
//! entry lists.
//!
//! `cargo bench -p aegis-benches --bench topology`

use std::hint::black_box;
use std::time::Duration;

use aegis_benches::{mesh_entries, scan_providers};
use aegis_topology::{Entry, Limits, Topology, TopologyConfig};
use criterion::{BatchSize, BenchmarkId, Criterion, criterion_group, criterion_main};

fn topology_of(entries: &[Entry]) -> Topology {
    // Room for the largest size measured (the default bound is 16,384).
    let t = Topology::with_config(TopologyConfig {
        limits: Limits {
            max_members: 200_000,
            ..Limits::default()
        },
        ..TopologyConfig::default()
    });
    for chunk in entries.chunks(t.limits().max_delta_entries) {
        t.apply(chunk.to_vec()).unwrap_or_else(|e| panic!("{e}"));
    }
    t
}

fn lookup(c: &mut Criterion) {
    let mut g = c.benchmark_group("provider_lookup");
    g.measurement_time(Duration::from_secs(3));
    for n in [1_000, 10_000, 100_000] {
        let entries = mesh_entries(n, 0);
        let nodes: Vec<_> = entries.iter().map(|e| (*e.info).clone()).collect();
        let t = topology_of(&entries);
        assert_eq!(
            t.get_service_providers("svc-7", "v1").len(),
            scan_providers(&nodes, "svc-7", "v1").len()
        );
        g.bench_with_input(BenchmarkId::new("index", n), &n, |b, _| {
            b.iter(|| black_box(t.get_service_providers(black_box("svc-7"), black_box("v1"))));
        });
        g.bench_with_input(BenchmarkId::new("baseline_scan", n), &n, |b, _| {
            b.iter(|| black_box(scan_providers(&nodes, black_box("svc-7"), black_box("v1"))));
        });
    }
    g.finish();
}

fn merge(c: &mut Criterion) {
    let mut g = c.benchmark_group("merge");
    g.measurement_time(Duration::from_secs(5));
    let base = mesh_entries(1_000, 0);
    // The remote side: the same 1,000 nodes plus 1,000 it learnt since.
    let fresh = mesh_entries(2_000, 0).split_off(1_000);
    let mut remote_all = base.clone();
    remote_all.extend(fresh.iter().cloned());
    g.bench_function("delta_1000_entries", |b| {
        b.iter_batched(
            || topology_of(&base),
            |t| {
                t.apply(fresh.clone()).unwrap_or_else(|e| panic!("{e}"));
                t
            },
            BatchSize::LargeInput,
        );
    });
    g.bench_function("baseline_full_2000_entries", |b| {
        b.iter_batched(
            || topology_of(&base),
            |t| {
                t.apply(remote_all.clone())
                    .unwrap_or_else(|e| panic!("{e}"));
                t
            },
            BatchSize::LargeInput,
        );
    });
    g.finish();
}

fn digest(c: &mut Criterion) {
    let mut g = c.benchmark_group("equal_check_10000");
    let entries = mesh_entries(10_000, 0);
    let (a, b) = (topology_of(&entries), topology_of(&entries));
    g.bench_function("digest", |bench| {
        bench.iter(|| black_box(a.digest() == b.digest()))
    });
    g.bench_function("baseline_entry_digests", |bench| {
        bench.iter(|| black_box(a.entry_digests() == b.entry_digests()));
    });
    g.finish();
}

criterion_group!(benches, lookup, merge, digest);
criterion_main!(benches);
