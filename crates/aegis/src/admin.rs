//! The admin HTTP endpoint (feature `admin`): plain HTTP, meant for
//! localhost or a cluster-internal network.
//!
//! - `GET /metrics`: every `aegis_*` metric (and any other the process
//!   records) in the Prometheus text format, rendered by
//!   `metrics-exporter-prometheus`, whose recorder the first admin endpoint
//!   of the process installs.
//! - `GET /healthz`: 200 while the process is up.
//! - `GET /readyz`: 200 once the server runs and the node knows at least
//!   one live peer, or is alone by configuration (no seed, no peer given);
//!   503 with the reason otherwise.
//! - `GET /members`: JSON, this node and every member it holds.
//! - `GET /`: a live page of the mesh (table and graph), refreshed twice a
//!   second, every asset in the binary.

use std::sync::OnceLock;
use std::time::UNIX_EPOCH;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::sync::watch;

use crate::Node;
use aegis_topology::NodeState;

const PAGE: &str = include_str!("admin/page.html");

/// The Prometheus recorder of this process: installed by the first admin
/// endpoint; `None` when the application had installed its own.
fn prometheus() -> Option<&'static PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| match prometheus_builder().install_recorder() {
            Ok(handle) => Some(handle),
            Err(e) => {
                tracing::warn!(error = %e, "another metrics recorder is installed; /metrics is empty, the application's exporter has the aegis metrics");
                None
            }
        })
        .as_ref()
}

/// Latencies as histograms (buckets from 0.5 ms to 5 s), not summaries.
fn prometheus_builder() -> PrometheusBuilder {
    const BUCKETS: &[f64] = &[
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
    ];
    let builder = PrometheusBuilder::new();
    match builder.set_buckets_for_metric(Matcher::Suffix("_seconds".into()), BUCKETS) {
        Ok(b) => b,
        // Only for an empty bucket list, which this is not.
        Err(_) => PrometheusBuilder::new(),
    }
}

/// Installs the Prometheus recorder now (so that metrics recorded before
/// the first scrape are kept).
pub(crate) fn install_recorder() {
    let _ = prometheus();
}

/// Serves the endpoint on `listener` until `stop`.
pub(crate) async fn serve(
    node: Node,
    listener: tokio::net::TcpListener,
    mut stop: watch::Receiver<bool>,
) {
    let app = Router::new()
        .route("/", get(page))
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/members", get(members))
        .with_state(node);
    let result = axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = stop.wait_for(|s| *s).await;
        })
        .await;
    if let Err(e) = result {
        tracing::warn!(error = %e, "admin endpoint stopped");
    }
}

async fn page() -> Response {
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], PAGE).into_response()
}

async fn metrics_text() -> Response {
    match prometheus() {
        Some(handle) => (
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            handle.render(),
        )
            .into_response(),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            "another metrics recorder is installed in this process; aegis metrics go to it\n",
        )
            .into_response(),
    }
}

async fn readyz(State(node): State<Node>) -> Response {
    match node.readiness().await {
        Ok(()) => (StatusCode::OK, "ready\n").into_response(),
        Err(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        )
            .into_response(),
    }
}

fn state_name(s: NodeState) -> &'static str {
    match s {
        NodeState::Alive => "alive",
        NodeState::Suspect => "suspect",
        NodeState::Dead => "dead",
        NodeState::Left => "left",
    }
}

async fn members(State(node): State<Node>) -> Response {
    let secs = |t: std::time::SystemTime| t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let members: Vec<serde_json::Value> = node
        .topology()
        .entries()
        .iter()
        .map(|e| {
            let i = &e.info;
            serde_json::json!({
                "id": i.id.as_str(),
                "name": i.name,
                "type": i.node_type.as_str(),
                "address": i.address,
                "state": state_name(e.state),
                "stamp": e.stamp.to_string(),
                "services": i.services.iter().map(|s| format!("{}/{}", s.name, s.version)).collect::<Vec<_>>(),
                "health": i.health.to_string(),
                "last_change": i.updated_at,
            })
        })
        .collect();
    let body = serde_json::json!({
        "node": {
            "id": node.id().as_str(),
            "cert_not_after": secs(node.certificate().not_after),
            "cert_renewal": secs(node.certificate_renewal_time()),
        },
        "members": members,
    });
    (
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}
