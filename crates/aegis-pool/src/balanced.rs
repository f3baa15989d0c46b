//! A channel that picks a provider per request, with opt-in failover.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use aegis_topology::NodeId;
use bytes::Bytes;
use http_body_util::BodyExt;
use tonic::body::Body;
use tonic::codegen::{Service, StdError};

use crate::pool::{Provider, ServiceClientPool};

/// A channel to a service that picks a provider **per request**,
/// round-robin among the live providers (skipping those set aside after
/// failed connections), and — with [`BalancedChannel::with_retries`] — sends
/// a request that could not be sent to one provider to the next.
///
/// Use it wherever a tonic client takes a channel: one client object then
/// spreads its calls over every provider, and keeps working while providers
/// come and go. (By contrast, [`crate::ServiceClient::get`] picks a
/// provider once per `get`, as the reference does.)
///
/// Errors reach the client as a `Status` with code `Unavailable` whose
/// message names the service and, when one was chosen, the provider:
/// `greeter v1: provider greeter-2 at 127.0.0.1:7102: connection refused`.
///
/// ```no_run
/// # async fn run(pool: aegis_pool::ServiceClientPool) {
/// use aegis_peer::proto::testing::echo_client::EchoClient;
/// let channel = pool.balanced("echo", "v1").with_retries(2);
/// let mut echo = EchoClient::new(channel);
/// // Every call picks a provider; a provider that cannot be reached is
/// // skipped and the call sent to the next one.
/// # let _ = &mut echo;
/// # }
/// ```
#[derive(Clone)]
pub struct BalancedChannel {
    pool: ServiceClientPool,
    name: Arc<str>,
    version: Arc<str>,
    retries: usize,
}

impl std::fmt::Debug for BalancedChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BalancedChannel")
            .field("name", &self.name)
            .field("version", &self.version)
            .field("retries", &self.retries)
            .finish_non_exhaustive()
    }
}

impl BalancedChannel {
    pub(crate) fn new(pool: ServiceClientPool, name: &str, version: &str) -> Self {
        Self {
            pool,
            name: name.into(),
            version: version.into(),
            retries: 0,
        }
    }

    /// Sends a request that could not be sent (the provider refused the
    /// connection, or the connection was gone) to up to `retries` other
    /// providers. Only requests that never reached a provider are retried,
    /// so a request is never processed twice because of a retry; answers
    /// with an error status are returned as they are.
    ///
    /// With retries on, the request body is read whole before the first
    /// attempt (so it can be sent again): use it for unary and
    /// server-streaming calls, not for client-streaming ones.
    pub fn with_retries(mut self, retries: usize) -> Self {
        self.retries = retries;
        self
    }

    fn status(&self, what: impl std::fmt::Display) -> StdError {
        Box::new(tonic::Status::unavailable(format!(
            "{} {}: {what}",
            self.name, self.version
        )))
    }

    fn pick(&self, tried: &[NodeId]) -> Result<Arc<Provider>, StdError> {
        self.pool
            .pick_provider(&self.name, &self.version, tried)
            .map_err(|e| self.status(e))
    }

    /// Sends `request` to `provider`; the error says whether the request
    /// never left this node.
    async fn send(
        &self,
        provider: &Provider,
        request: http::Request<Body>,
    ) -> Result<http::Response<Body>, (StdError, bool)> {
        let mut channel = provider.channel.clone();
        let fail = |e: &dyn std::error::Error, unsent: bool| {
            let error = self.status(format!(
                "provider {} at {}: {}",
                provider.id,
                provider.address,
                chain(e)
            ));
            (error, unsent)
        };
        std::future::poll_fn(|cx| channel.poll_ready(cx))
            .await
            .map_err(|e| fail(&e, true))?;
        channel.call(request).await.map_err(|e| {
            let unsent = unsent(&e);
            fail(&e, unsent)
        })
    }

    async fn call_with_retries(
        self,
        request: http::Request<Body>,
    ) -> Result<http::Response<Body>, StdError> {
        if self.retries == 0 {
            let provider = self.pick(&[])?;
            return self.send(&provider, request).await.map_err(|(e, _)| e);
        }
        let (parts, body) = request.into_parts();
        let body: Bytes = body
            .collect()
            .await
            .map_err(|e| self.status(format!("cannot read the request to send it: {e}")))?
            .to_bytes();
        let mut tried: Vec<NodeId> = Vec::new();
        loop {
            let provider = self.pick(&tried)?;
            match self.send(&provider, rebuild(&parts, body.clone())).await {
                Ok(response) => return Ok(response),
                Err((error, true)) if tried.len() < self.retries => {
                    metrics::counter!(
                        "aegis_pool_retries_total",
                        "service" => self.name.to_string(),
                        "version" => self.version.to_string()
                    )
                    .increment(1);
                    tracing::debug!(
                        service = %self.name,
                        version = %self.version,
                        provider = %provider.id,
                        %error,
                        "request not sent; trying another provider"
                    );
                    tried.push(provider.id.clone());
                }
                Err((error, _)) => return Err(error),
            }
        }
    }
}

/// The request again, for another attempt.
fn rebuild(parts: &http::request::Parts, body: Bytes) -> http::Request<Body> {
    let mut request = http::Request::new(Body::new(http_body_util::Full::new(body)));
    *request.method_mut() = parts.method.clone();
    *request.uri_mut() = parts.uri.clone();
    *request.version_mut() = parts.version;
    *request.headers_mut() = parts.headers.clone();
    *request.extensions_mut() = parts.extensions.clone();
    request
}

/// An error and its causes, as one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let more = s.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = s.source();
    }
    text
}

/// Whether a transport error means the request never reached the
/// provider: the connection was refused or could not be made, or it was
/// already gone when the request was written.
fn unsent(e: &(dyn std::error::Error + 'static)) -> bool {
    use std::io::ErrorKind;
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>()
            && matches!(
                io.kind(),
                ErrorKind::ConnectionRefused
                    | ErrorKind::AddrNotAvailable
                    | ErrorKind::NotConnected
                    | ErrorKind::BrokenPipe
                    | ErrorKind::HostUnreachable
                    | ErrorKind::NetworkUnreachable
            )
        {
            return true;
        }
        source = s.source();
    }
    false
}

impl Service<http::Request<Body>> for BalancedChannel {
    type Response = http::Response<Body>;
    type Error = StdError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Readiness is the chosen provider's, checked per request.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        Box::pin(self.clone().call_with_retries(request))
    }
}

impl ServiceClientPool {
    /// A channel to `name` at `version` that picks a provider per request
    /// (see [`BalancedChannel`]). Cheap; make one per service and share it.
    pub fn balanced(&self, name: &str, version: &str) -> BalancedChannel {
        BalancedChannel::new(self.clone(), name, version)
    }
}
