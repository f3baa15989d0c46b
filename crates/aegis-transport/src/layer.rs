//! Server-wide tower layers: middleware around every service a node
//! answers.

use std::convert::Infallible;
use std::fmt;
use std::sync::Arc;

use axum::extract::Request;
use axum::response::IntoResponse;
use axum::routing::Route;
use tonic::service::Routes;
use tower::{Layer, Service};

/// A tower layer around every service of a server: the mesh protocol, the
/// gRPC health service and the user's own services. It is applied once,
/// when the server starts, after every service has been added, and sits
/// inside the accept loop's limits and the RPC metrics (a call it refuses
/// is still counted).
///
/// The layer sees each call as an `http::Request` whose extensions hold
/// the [`MeshConnectInfo`](crate::MeshConnectInfo) of its connection, so
/// middleware can decide by the calling node;
/// [`caller_from_extensions`](crate::caller_from_extensions) reads it. Layers whose service can fail (a timeout, a load shedder)
/// must turn their error into a response first, as axum requires of every
/// route (`axum::error_handling::HandleErrorLayer`).
///
/// ```
/// use aegis_transport::{RoutesLayer, caller_from_extensions};
///
/// // Only nodes whose ID starts with "billing-" may call this node.
/// let only_billing = RoutesLayer::new(axum::middleware::from_fn(
///     |request: axum::extract::Request, next: axum::middleware::Next| async move {
///         match caller_from_extensions(request.extensions()) {
///             Ok(caller) if caller.node_id.as_str().starts_with("billing-") => {
///                 next.run(request).await
///             }
///             _ => tonic::Status::permission_denied("billing nodes only")
///                 .into_http::<axum::body::Body>(),
///         }
///     },
/// ));
/// # drop(only_billing);
/// ```
#[derive(Clone)]
pub struct RoutesLayer(Arc<dyn Fn(Routes) -> Routes + Send + Sync>);

impl RoutesLayer {
    /// Wraps every route in `layer`. Its bounds are axum's for
    /// `Router::layer`: the layered service answers every request with a
    /// response (its error type is `Infallible`).
    pub fn new<L>(layer: L) -> Self
    where
        L: Layer<Route> + Clone + Send + Sync + 'static,
        L::Service: Service<Request> + Clone + Send + Sync + 'static,
        <L::Service as Service<Request>>::Response: IntoResponse + 'static,
        <L::Service as Service<Request>>::Error: Into<Infallible> + 'static,
        <L::Service as Service<Request>>::Future: Send + 'static,
    {
        Self::from_fn(move |routes: Routes| {
            Routes::from(routes.into_axum_router().layer(layer.clone()))
        })
    }

    /// Any change to the routes, as a function: for what a single layer
    /// cannot express.
    pub fn from_fn(apply: impl Fn(Routes) -> Routes + Send + Sync + 'static) -> Self {
        Self(Arc::new(apply))
    }

    /// The routes with this layer applied.
    pub fn apply(&self, routes: Routes) -> Routes {
        (self.0)(routes)
    }
}

impl fmt::Debug for RoutesLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RoutesLayer")
    }
}
