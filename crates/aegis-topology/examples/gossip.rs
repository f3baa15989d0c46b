//! The gossip simulation at a larger size.
//!
//! `cargo run --release -p aegis-topology --example gossip -- 10000 3`
//! (nodes, fanout). Prints rounds and bytes per round until convergence.

#[path = "../tests/support/sim.rs"]
#[allow(dead_code)]
mod sim;

fn main() {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(10_000);
    let fanout: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(3);
    let bound = 3 * (n as f64).log2().ceil() as usize;
    let start = std::time::Instant::now();
    let mut mesh = sim::Mesh::new(n, fanout, 42);
    println!("N = {n}, fanout = {fanout}, bound = {bound} rounds");
    println!(
        "{:>5} {:>10} {:>14} {:>12}",
        "round", "exchanges", "bytes", "bytes/exch"
    );
    for round in 1..=bound + 10 {
        let s = mesh.round();
        println!(
            "{round:>5} {:>10} {:>14} {:>12}",
            s.exchanges,
            s.bytes,
            s.bytes / s.exchanges.max(1)
        );
        if mesh.converged() {
            let after = mesh.round();
            println!(
                "converged after {round} rounds in {:.1?}; then {} bytes per exchange",
                start.elapsed(),
                after.bytes / after.exchanges.max(1)
            );
            return;
        }
    }
    println!("not converged within {} rounds", bound + 10);
    std::process::exit(1);
}
