//! Metrics of the transport, through the `metrics` facade: an application
//! routes them to the exporter it uses (aegis's admin endpoint installs a
//! Prometheus one). With no recorder installed they cost a relaxed atomic
//! load each. Every name is listed in `docs/metrics.md`.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use crate::caller::MeshConnectInfo;

/// A gRPC status code as a label value (`OK`, `UNAVAILABLE`, ...).
pub fn code_label(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// One TLS handshake at the accept loop: `aegis_tls_handshakes_total`.
pub(crate) fn handshake(result: &'static str) {
    metrics::counter!("aegis_tls_handshakes_total", "result" => result).increment(1);
}

/// The method of a request path (`/pkg.Service/Method`), bounded: anything
/// that is not of that shape, or longer than a real name, is "other", so
/// that a caller cannot make labels without end.
fn method_label(path: &str) -> String {
    let ok = path.len() <= 128
        && path.starts_with('/')
        && path[1..].split('/').count() == 2
        && path
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'.' | b'_'));
    if ok {
        path[1..].to_owned()
    } else {
        "other".to_owned()
    }
}

/// A tower layer counting the RPCs a server answers, by method, calling
/// node and status, with their latency: `aegis_rpc_server_requests_total`
/// and `aegis_rpc_server_duration_seconds`. The status is the one the
/// response headers carry (every error tonic answers is trailers-only),
/// else OK.
#[derive(Debug, Clone, Copy, Default)]
pub struct RpcMetricsLayer;

impl<S> tower::Layer<S> for RpcMetricsLayer {
    type Service = RpcMetrics<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RpcMetrics { inner }
    }
}

/// See [`RpcMetricsLayer`].
#[derive(Debug, Clone)]
pub struct RpcMetrics<S> {
    inner: S,
}

impl<S, B, RB> tower::Service<http::Request<B>> for RpcMetrics<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let method = method_label(request.uri().path());
        let peer = request
            .extensions()
            .get::<MeshConnectInfo>()
            .and_then(|c| c.caller.as_ref().ok())
            .map_or_else(|| "unknown".to_owned(), |c| c.node_id.to_string());
        let started = Instant::now();
        let response = self.inner.call(request);
        Box::pin(async move {
            let result = response.await;
            let status = match &result {
                Ok(r) => r
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<i32>().ok())
                    .map_or("OK", |c| code_label(tonic::Code::from_i32(c))),
                Err(_) => "TRANSPORT",
            };
            metrics::counter!("aegis_rpc_server_requests_total", "method" => method.clone(), "peer" => peer, "status" => status)
                .increment(1);
            metrics::histogram!("aegis_rpc_server_duration_seconds", "method" => method)
                .record(started.elapsed().as_secs_f64());
            result
        })
    }
}

#[cfg(test)]
mod tests {
    use super::method_label;

    #[test]
    fn only_real_method_paths_become_labels() {
        assert_eq!(
            method_label("/aegis.MeshService/Ping"),
            "aegis.MeshService/Ping"
        );
        assert_eq!(method_label("/a/b/c"), "other");
        assert_eq!(method_label(&format!("/x.Y/{}", "z".repeat(200))), "other");
        assert_eq!(method_label("/x.Y/bad name"), "other");
    }
}
