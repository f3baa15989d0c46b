//! Shared inputs and baselines for the benches.

use aegis_topology::{Entry, NodeInfo, NodeState, ServiceInfo, Stamp};

/// `n` nodes, each offering 5 of 50 services (`svc-0` .. `svc-49`, `v1`), so
/// each service has `n / 10` providers.
pub fn mesh_entries(n: usize, generation: u64) -> Vec<Entry> {
    (0..n)
        .map(|i| {
            let info = NodeInfo::new(
                format!("node-{i}"),
                format!("n{i}"),
                format!("127.0.0.1:{}", 1000 + i % 50000),
            )
            .unwrap_or_else(|e| panic!("{e}"))
            .with_services(
                (0..5).map(|j| ServiceInfo::new(format!("svc-{}", (i * 5 + j) % 50), "v1")),
            );
            Entry::new(info, Stamp::new(generation, 1), NodeState::Alive)
        })
        .collect()
}

/// What the reference does on every lookup: scan every node's services and
/// copy the matches.
pub fn scan_providers(nodes: &[NodeInfo], name: &str, version: &str) -> Vec<NodeInfo> {
    nodes
        .iter()
        .filter(|n| {
            n.services
                .iter()
                .any(|s| s.name == name && s.version == version)
        })
        .cloned()
        .collect()
}
