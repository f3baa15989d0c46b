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

/// The value, or a panic with the error's message (benches have no caller
/// to return errors to).
pub fn expect<T, E: std::fmt::Display>(r: Result<T, E>) -> T {
    r.unwrap_or_else(|e| panic!("{e}"))
}

/// What the network benches share: a 2-worker runtime (the machines have 2
/// cores) and a certificate directory with a server and a client identity.
pub struct NetFixture {
    /// The runtime the servers and the call loops run on.
    pub rt: tokio::runtime::Runtime,
    /// The server's TLS identity.
    pub server_tls: aegis_tls::TlsConfig,
    /// The client's TLS identity.
    pub client_tls: aegis_tls::TlsConfig,
    _dir: tempfile::TempDir,
}

impl NetFixture {
    /// Identities `server` and `client` from one fresh CA.
    pub fn new(server: &str, client: &str) -> Self {
        let rt = expect(
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build(),
        );
        let dir = expect(tempfile::tempdir());
        let server_tls = expect(aegis_tls::load_or_generate_tls(server, dir.path()));
        let client_tls = expect(aegis_tls::load_or_generate_tls(client, dir.path()));
        Self {
            rt,
            server_tls,
            client_tls,
            _dir: dir,
        }
    }
}
