//! The sync exchange through the protocol core (`SyncSession` + `respond`,
//! the code the server and client run) against the bare topology
//! primitives it is built on (digest, `compare`, `apply`, `entries_for`:
//! the least work any exchange must do), in one process, no network. The
//! ratio is the cost of the core's checks, paging and bookkeeping.
//!
//! `cargo bench -p aegis-benches --bench sync`

use std::hint::black_box;
use std::time::Duration;

use aegis_benches::mesh_entries;
use aegis_mesh::{Step, SyncConfig, SyncSession, respond};
use aegis_topology::{Entry, Topology};
use criterion::{BatchSize, Criterion, criterion_group, criterion_main};

const NOW_MS: u64 = 1_700_000_000_000;

fn topology_of(entries: &[Entry]) -> Topology {
    let t = Topology::new();
    t.apply(entries.to_vec()).unwrap_or_else(|e| panic!("{e}"));
    t
}

/// A whole session of `a` against `b` through the core.
fn core_sync(a: &Topology, b: &Topology, config: &SyncConfig) {
    let (mut session, mut request) = SyncSession::start(a, *config);
    loop {
        let answer = respond(b, request, config, NOW_MS)
            .unwrap_or_else(|e| panic!("{e}"))
            .response;
        match session
            .on_response(a, answer, NOW_MS)
            .unwrap_or_else(|e| panic!("{e}"))
        {
            Step::Send(next) => request = next,
            Step::Done(_) => return,
        }
    }
}

/// The same exchange with the bare primitives (what v1's simulation did).
fn bare_sync(a: &Topology, b: &Topology) {
    if a.digest() == b.digest() {
        return;
    }
    let plan = a.compare(&b.entry_digests());
    b.apply(plan.send).unwrap_or_else(|e| panic!("{e}"));
    a.apply(b.entries_for(&plan.want))
        .unwrap_or_else(|e| panic!("{e}"));
}

fn sync(c: &mut Criterion) {
    let config = SyncConfig::default();
    let mut g = c.benchmark_group("sync_200_of_250");
    g.measurement_time(Duration::from_secs(4));
    // 250 entries (one message of entry digests): `b` holds 200 that `a`
    // lacks, `a` holds 50 that `b` lacks, so both directions carry entries.
    let all = mesh_entries(250, 1);
    let (a_side, b_side) = (&all[..50], &all[50..]);
    g.bench_function("baseline_bare_primitives", |bench| {
        bench.iter_batched(
            || (topology_of(a_side), topology_of(b_side)),
            |(a, b)| {
                bare_sync(&a, &b);
                (a, b)
            },
            BatchSize::LargeInput,
        );
    });
    g.bench_function("core_session", |bench| {
        bench.iter_batched(
            || (topology_of(a_side), topology_of(b_side)),
            |(a, b)| {
                core_sync(&a, &b, &config);
                (a, b)
            },
            BatchSize::LargeInput,
        );
    });
    g.finish();

    let mut g = c.benchmark_group("sync_converged_1000");
    let entries = mesh_entries(1_000, 1);
    let (a, b) = (topology_of(&entries), topology_of(&entries));
    g.bench_function("baseline_bare_primitives", |bench| {
        bench.iter(|| bare_sync(black_box(&a), black_box(&b)));
    });
    g.bench_function("core_session", |bench| {
        bench.iter(|| core_sync(black_box(&a), black_box(&b), &config));
    });
    g.finish();
}

criterion_group!(benches, sync);
criterion_main!(benches);
