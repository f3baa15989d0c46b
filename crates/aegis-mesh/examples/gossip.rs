//! The simulation of the shipped core at a larger size.
//!
//! `cargo run --release -p aegis-mesh --example gossip -- 10000 3`
//! (nodes, fanout). Prints, per round, the sessions, requests and bytes
//! (in all and per node) until every node holds every entry; then the cost
//! of a converged round; then how many rounds a forged claim about one node
//! survives before that node's refutation is everywhere.

#[path = "../tests/support/sim.rs"]
mod sim;

use aegis_topology::{Entry, NodeState, Stamp};

fn main() {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(10_000);
    let fanout: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(3);
    let bound = 3 * (n as f64).log2().ceil() as usize;
    let start = std::time::Instant::now();
    let mut mesh = sim::Sim::new(n, fanout, 42);
    println!("N = {n}, fanout = {fanout}, bound = {bound} rounds");
    println!(
        "{:>5} {:>9} {:>9} {:>14} {:>12}",
        "round", "sessions", "requests", "bytes", "bytes/node"
    );
    let mut converged = None;
    for round in 1..=bound + 10 {
        let s = mesh.round();
        println!(
            "{round:>5} {:>9} {:>9} {:>14} {:>12}",
            s.exchanges,
            s.requests,
            s.bytes,
            s.bytes / n
        );
        if mesh.converged() {
            converged = Some(round);
            break;
        }
    }
    let Some(rounds) = converged else {
        println!("not converged within {} rounds", bound + 10);
        std::process::exit(1);
    };
    let after = mesh.round();
    println!(
        "converged after {rounds} rounds ({:.1?}); then {} bytes per node per round ({} per session)",
        start.elapsed(),
        after.bytes / n,
        after.bytes / after.exchanges.max(1)
    );

    // A forged claim at the highest stamp the core accepts, about node 1,
    // pushed into node 2: rounds until the refutation holds everywhere.
    let skew = u64::try_from(mesh.config.max_clock_skew.as_millis()).unwrap_or(u64::MAX);
    let forged_stamp = Stamp::new(mesh.now_ms + skew, u64::MAX);
    let forged = Entry::new(sim::info(1), forged_stamp, NodeState::Dead);
    mesh.nodes[2].apply(vec![forged]).expect("a valid entry");
    let victim = sim::id(1);
    for round in 1..=4 * bound {
        let s = mesh.round();
        let refuted = mesh.nodes.iter().all(|t| {
            t.get_entry(&victim)
                .is_some_and(|e| e.state == NodeState::Alive && e.stamp > forged_stamp)
        });
        if refuted {
            println!(
                "a forged claim survived {round} rounds before its owner's refutation was everywhere ({} bytes per node in its last round)",
                s.bytes / n
            );
            return;
        }
    }
    println!("the refutation did not spread within {} rounds", 4 * bound);
    std::process::exit(1);
}
