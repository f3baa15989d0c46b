//! Metrics of the network layer, through the `metrics` facade: an
//! application routes them to the exporter it uses (aegis's admin endpoint
//! installs a Prometheus one). With no recorder installed they cost a
//! relaxed atomic load each. Every name is listed in `docs/metrics.md`.

use std::time::Instant;

pub(crate) use aegis_transport::metrics::code_label;
pub use aegis_transport::metrics::{RpcMetrics, RpcMetricsLayer};

/// One mesh RPC this node made: `aegis_rpc_client_requests_total` and
/// `aegis_rpc_client_duration_seconds`.
pub(crate) fn client_call(rpc: &'static str, peer: &str, code: &'static str, started: Instant) {
    let peer = peer.to_owned();
    metrics::counter!("aegis_rpc_client_requests_total", "method" => rpc, "peer" => peer.clone(), "status" => code)
        .increment(1);
    metrics::histogram!("aegis_rpc_client_duration_seconds", "method" => rpc, "peer" => peer)
        .record(started.elapsed().as_secs_f64());
}
