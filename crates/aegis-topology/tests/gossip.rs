//! Convergence at scale, in a deterministic simulation.

mod support;
use support::sim::Mesh;

fn rounds_to_converge(mesh: &mut Mesh, limit: usize) -> Option<usize> {
    for round in 1..=limit {
        let stats = mesh.round();
        println!(
            "round {round}: {} exchanges, {} bytes",
            stats.exchanges, stats.bytes
        );
        if mesh.converged() {
            return Some(round);
        }
    }
    None
}

#[test]
fn a_thousand_nodes_converge_in_logarithmic_rounds_then_cost_constant_bytes() {
    let n = 1000;
    let bound = 3 * (n as f64).log2().ceil() as usize;
    let mut mesh = Mesh::new(n, 3, 42);
    let rounds = rounds_to_converge(&mut mesh, bound)
        .unwrap_or_else(|| panic!("not converged within {bound} rounds"));
    println!("N = {n}: converged in {rounds} rounds (bound {bound})");
    assert_eq!(mesh.nodes[0].node_count(), n);
    assert_eq!(
        mesh.nodes[0].get_service_providers("identity", "v1").len(),
        n / 2
    );

    // Converged: every exchange is a digest and a "same", whatever N.
    let big = mesh.round();
    assert_eq!(big.equal, big.exchanges);
    let per_exchange = big.bytes / big.exchanges;

    let mut small = Mesh::new(50, 3, 7);
    rounds_to_converge(&mut small, 3 * 6).expect("50 nodes converge");
    let s = small.round();
    assert_eq!(
        s.bytes / s.exchanges,
        per_exchange,
        "bytes per exchange depend on N"
    );
    println!("converged: {per_exchange} bytes per exchange at N = 50 and N = {n}");
}

#[test]
fn a_node_leaving_reaches_everyone() {
    let mut mesh = Mesh::new(64, 3, 9);
    rounds_to_converge(&mut mesh, 18).expect("converges");
    mesh.nodes[5].remove_node("node-5").unwrap();
    rounds_to_converge(&mut mesh, 18).expect("tombstone spreads");
    for t in &mesh.nodes {
        assert!(t.get_node("node-5").is_none());
        assert_eq!(t.node_count(), 63);
    }
}
