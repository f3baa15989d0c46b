//! Failure detection of the shipped core in the simulated mesh, at sizes
//! too large for the tests.
//!
//! `cargo run --release -p aegis-mesh --example failure -- 1000 3 10`
//! (nodes, seeds, simulated minutes per fault). For each seed: the steady
//! traffic per node, the time until a crashed node is dead everywhere, and
//! false suspicions and deaths under 10 % message loss, a one-way broken
//! link, and a node stalling 500 ms every 5 s; with a tenth of the nodes
//! client-only (they renew a lease instead of being probed): the steady
//! traffic, a crashed one found by its lease, false deaths under 10 %
//! loss. Exits non-zero on a false death or a crash not found within the
//! budget.

#[path = "../tests/support/sim.rs"]
mod sim;

use aegis_mesh::LivenessConfig;
use sim::{Fault, Sim};

fn converged(n: usize, seed: u64) -> Sim {
    converged_with_clients(n, 0, seed)
}

/// A converged mesh whose last `clients` nodes serve nothing.
fn converged_with_clients(n: usize, clients: usize, seed: u64) -> Sim {
    let mut sim = Sim::new(n, 1, seed).with_liveness(LivenessConfig::default());
    for c in n - clients..n {
        sim.serve_nothing(c);
    }
    let bound = 12 * (n as f64).log2().ceil() as usize;
    if sim.rounds_to_converge(bound).is_none() {
        eprintln!("N = {n}, seed {seed}: not converged within {bound} rounds");
        std::process::exit(1);
    }
    for _ in 0..n.min(300) {
        sim.round();
    }
    sim
}

fn median(v: &mut [u64]) -> u64 {
    v.sort_unstable();
    v[v.len() / 2]
}

fn main() {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(1000);
    let seeds: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(3);
    let minutes: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(10);
    let config = LivenessConfig::default();
    let period_ms = config.period.as_millis() as u64;
    let min = config.suspicion_mult as f64 * (n as f64).log10().max(1.0) * period_ms as f64;
    let budget = (min * config.suspicion_max_mult as f64) as u64 + 20 * period_ms;
    println!(
        "N = {n}, {seeds} seeds, {minutes} simulated minutes per fault; crash budget {budget} ms"
    );
    let started = std::time::Instant::now();
    let mut crash_times = Vec::new();
    let mut failed = false;
    let faults = [
        ("10 % loss", Fault::Loss(0.10)),
        ("one-way link 3 -> 17", Fault::OneWay(3, 17)),
        (
            "node 11 stalls 500 ms every 5 s",
            Fault::Stalls {
                node: 11,
                every_ms: 5_000,
                for_ms: 500,
            },
        ),
    ];
    for seed in 1..=seeds {
        let mut sim = converged(n, seed);
        let (mut msgs, mut bytes) = (0.0, 0.0);
        for _ in 0..20 {
            let (m, b) = sim.steady_traffic();
            msgs += m / 20.0;
            bytes += b / 20.0;
        }
        println!(
            "seed {seed}: steady state {msgs:.1} messages and {bytes:.0} bytes per node per second"
        );
        let victim = 7 + seed as usize;
        match sim.crash(victim, budget) {
            Some(ms) => {
                println!("seed {seed}: a crashed node was dead everywhere after {ms} ms");
                crash_times.push(ms);
            }
            None => {
                println!("seed {seed}: a crashed node was NOT dead everywhere within {budget} ms");
                failed = true;
            }
        }
        let wrong = sim.false_accusations(&[victim], true);
        if !wrong.is_empty() {
            println!("seed {seed}: false deaths during the crash: {wrong:?}");
            failed = true;
        }
        // A tenth of the mesh serves nothing: those nodes renew a lease
        // instead of being probed.
        let clients = (n / 10).max(1);
        let mut sim = converged_with_clients(n, clients, seed * 1000);
        let rounds = config.client_lease.as_millis() as u64 / period_ms;
        let (mut msgs, mut bytes) = (0.0, 0.0);
        for _ in 0..rounds {
            let (m, b) = sim.steady_traffic();
            msgs += m / rounds as f64;
            bytes += b / rounds as f64;
        }
        println!(
            "seed {seed}: with {clients} client-only nodes: {msgs:.1} messages and {bytes:.0} bytes per node per second"
        );
        let lease_ms = config.client_lease.as_millis() as u64;
        match sim.crash(n - 1, 2 * lease_ms) {
            Some(ms) => println!(
                "seed {seed}: a crashed client-only node was dead everywhere after {ms} ms (lease {lease_ms} ms)"
            ),
            None => {
                println!(
                    "seed {seed}: a crashed client-only node was NOT dead everywhere within {} ms",
                    2 * lease_ms
                );
                failed = true;
            }
        }
        let r = sim.run_fault(&Fault::Loss(0.10), minutes * 60_000);
        println!(
            "seed {seed}: 10 % loss with {clients} client-only nodes: {} false deaths",
            r.deaths.len()
        );
        if let Some(d) = r.deaths.first() {
            println!("  first: {d}");
            failed = true;
        }
        for (name, fault) in &faults {
            let mut sim = converged(n, seed * 100);
            let r = sim.run_fault(fault, minutes * 60_000);
            let per_node_s = (r.probe_bytes + r.sync_bytes) as f64
                / n as f64
                / (r.rounds as f64 * period_ms as f64 / 1000.0);
            println!(
                "seed {seed}: {name}: {} false suspicions, {} false deaths ({per_node_s:.0} B/s per node)",
                r.suspicions,
                r.deaths.len()
            );
            if let Some(d) = r.deaths.first() {
                println!("  first: {d}");
                failed = true;
            }
        }
    }
    if !crash_times.is_empty() {
        let max = crash_times.iter().max().copied().unwrap_or(0);
        println!(
            "crash to dead everywhere: median {} ms, max {max} ms over {} seeds",
            median(&mut crash_times),
            crash_times.len()
        );
    }
    println!("took {:.1?}", started.elapsed());
    if failed {
        std::process::exit(1);
    }
}
