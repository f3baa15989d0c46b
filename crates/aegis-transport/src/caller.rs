//! Who is calling: the node identity from the verified client certificate.

use std::net::SocketAddr;
use std::sync::Arc;

use aegis_tls::pki_types::CertificateDer;
use aegis_tls::{CertInfo, NodeId};
use tonic::Request;

/// The calling node, as its verified client certificate says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The caller's node ID: the certificate's CN.
    pub node_id: NodeId,
    /// The certificate.
    pub certificate: PeerCertificate,
}

/// A client certificate: DER and what it says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerCertificate {
    /// The DER encoding.
    pub der: CertificateDer<'static>,
    /// Subject, SANs, validity, SHA-256 fingerprint.
    pub info: CertInfo,
}

/// Why the caller could not be identified.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallerError {
    /// The request carries no connection info (not from a mesh server).
    #[error("the request carries no peer information")]
    NoPeerInfo,
    /// The connection was not TLS.
    #[error("the connection has no TLS information")]
    NoTlsInfo,
    /// The client presented no certificate.
    #[error("the client presented no certificate")]
    NoCertificate,
    /// The certificate could not be read as a node certificate.
    #[error("the client certificate is not a node certificate: {0}")]
    InvalidCertificate(String),
}

impl Caller {
    /// Reads a caller from a verified certificate chain (leaf first).
    ///
    /// # Errors
    /// [`CallerError::NoCertificate`] for an empty chain,
    /// [`CallerError::InvalidCertificate`] if the CN is not a node ID.
    pub fn from_chain(chain: &[CertificateDer<'_>]) -> Result<Self, CallerError> {
        let der = chain
            .first()
            .ok_or(CallerError::NoCertificate)?
            .clone()
            .into_owned();
        let info =
            CertInfo::from_der(&der).map_err(|e| CallerError::InvalidCertificate(e.to_string()))?;
        let cn = info
            .common_name
            .as_deref()
            .ok_or_else(|| CallerError::InvalidCertificate("no common name".to_owned()))?;
        let node_id =
            NodeId::new(cn).map_err(|e| CallerError::InvalidCertificate(e.to_string()))?;
        Ok(Self {
            node_id,
            certificate: PeerCertificate { der, info },
        })
    }
}

/// The connection info a mesh server attaches to every request: the remote
/// address and the caller, parsed once per connection (parsing a
/// certificate on every call would cost about 10 µs each).
#[derive(Debug, Clone)]
pub struct MeshConnectInfo {
    /// The remote socket address.
    pub remote_addr: Option<SocketAddr>,
    /// The caller, or why it could not be read.
    pub caller: Result<Arc<Caller>, CallerError>,
}

/// The calling node, from the verified client certificate of the request's
/// connection.
///
/// ```no_run
/// async fn who_am_i(req: tonic::Request<()>) -> Result<tonic::Response<String>, tonic::Status> {
///     let caller = aegis_transport::caller_from_request(&req)
///         .map_err(|e| tonic::Status::unauthenticated(e.to_string()))?;
///     Ok(tonic::Response::new(caller.node_id.to_string()))
/// }
/// ```
///
/// # Errors
/// [`CallerError::NoPeerInfo`] outside a mesh or TLS server,
/// [`CallerError::NoTlsInfo`], [`CallerError::NoCertificate`].
pub fn caller_from_request<T>(req: &Request<T>) -> Result<Arc<Caller>, CallerError> {
    match caller_from_extensions(req.extensions()) {
        Err(CallerError::NoPeerInfo) => {}
        from_mesh_server => return from_mesh_server,
    }
    // A plain tonic TLS server: parse from its connection info.
    if req
        .extensions()
        .get::<tonic::transport::server::TcpConnectInfo>()
        .is_some()
    {
        return Err(CallerError::NoTlsInfo);
    }
    match req.peer_certs() {
        Some(chain) => Caller::from_chain(&chain).map(Arc::new),
        None => Err(CallerError::NoPeerInfo),
    }
}

/// The calling node of a request served by
/// [`serve_routes`](crate::serve_routes), from the request's extensions:
/// what a [`RoutesLayer`](crate::RoutesLayer) uses, where
/// [`caller_from_request`] is for a tonic handler.
///
/// # Errors
/// [`CallerError::NoPeerInfo`] for a request that did not come through a
/// mesh server; otherwise why the connection's certificate names no
/// caller.
pub fn caller_from_extensions(extensions: &http::Extensions) -> Result<Arc<Caller>, CallerError> {
    match extensions.get::<MeshConnectInfo>() {
        Some(info) => info.caller.clone(),
        None => Err(CallerError::NoPeerInfo),
    }
}

/// Like [`caller_from_request`], but panics when the caller cannot be read.
///
/// # Panics
/// When the request did not come over a mutual-TLS connection of a mesh
/// server. Use it only in handlers served by a mesh server ([`crate::serve_routes`]), where
/// every connection has a verified client certificate.
pub fn must_caller_from_request<T>(req: &Request<T>) -> Arc<Caller> {
    match caller_from_request(req) {
        Ok(c) => c,
        Err(e) => panic!("must_caller_from_request: {e}"),
    }
}
