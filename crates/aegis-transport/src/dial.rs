//! Dialling: a tonic connector that checks the peer's node ID and takes
//! the node's current credentials for every new connection.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use aegis_tls::{CertInfo, NodeId};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio_rustls::{TlsConnector, rustls};
use tonic::transport::{Channel, Endpoint};

use crate::{Credentials, TransportError};

/// How channels to other nodes behave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChannelOptions {
    /// Limit on TCP connect plus TLS handshake.
    pub connect_timeout: Duration,
    /// HTTP/2 keep-alive pings on idle connections, so a dead peer is noticed.
    pub keep_alive_interval: Duration,
    /// How long a keep-alive ping may go unanswered.
    pub keep_alive_timeout: Duration,
}

impl Default for ChannelOptions {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(3),
            keep_alive_interval: Duration::from_secs(20),
            keep_alive_timeout: Duration::from_secs(10),
        }
    }
}

/// Checks that `address` is `host:port` with a numeric port.
///
/// # Errors
/// [`TransportError::InvalidAddress`] saying what is wrong.
pub fn check_address(address: &str) -> Result<(), TransportError> {
    let invalid = |reason: &str| TransportError::InvalidAddress {
        address: address.to_owned(),
        reason: reason.to_owned(),
    };
    if let Some((scheme, rest)) = address.split_once("://") {
        return Err(invalid(&format!(
            "give host:port without a scheme ({rest:?}, not {scheme}://...)"
        )));
    }
    let (host, port) = address
        .rsplit_once(':')
        .ok_or_else(|| invalid("expected host:port"))?;
    if host.is_empty() {
        return Err(invalid("the host is empty"));
    }
    if host.contains(':') && !(host.starts_with('[') && host.ends_with(']')) {
        return Err(invalid("an IPv6 host must be in brackets, as [::1]:port"));
    }
    port.parse::<u16>()
        .map_err(|_| invalid("the port is not a number from 0 to 65535"))?;
    Ok(())
}

/// What happened when a channel (re)connected.
#[derive(Debug)]
pub enum ConnectEvent<'a> {
    /// TCP and the TLS handshake succeeded.
    Connected,
    /// TCP connect or the TLS handshake failed.
    Failed(&'a io::Error),
}

/// Called on every connection attempt of a channel, for outlier detection.
pub type ConnectObserver = Arc<dyn Fn(ConnectEvent<'_>) + Send + Sync>;

/// A lazily connecting channel to the node `node_id` at `address`, over
/// mutual TLS: the server must present a certificate from the mesh CA that
/// names `node_id` (not the host of `address`: every node certificate names
/// `localhost`, so checking the host would accept any node as any other).
///
/// Each connection the channel makes (the first, and every reconnection)
/// presents the certificate `credentials` hold at that moment and trusts
/// the CAs they trust then, so a renewed certificate or a new CA bundle is
/// used without making a new channel.
///
/// Must be called inside a Tokio runtime.
///
/// # Errors
/// [`TransportError::InvalidAddress`] for an address that is not `host:port`.
pub fn mtls_channel(
    credentials: impl Into<Credentials>,
    node_id: &NodeId,
    address: &str,
    opts: &ChannelOptions,
) -> Result<Channel, TransportError> {
    mtls_channel_observed(credentials, node_id, address, opts, None)
}

/// [`mtls_channel`], telling `observer` how each connection attempt went.
///
/// # Errors
/// As [`mtls_channel`].
pub fn mtls_channel_observed(
    credentials: impl Into<Credentials>,
    node_id: &NodeId,
    address: &str,
    opts: &ChannelOptions,
    observer: Option<ConnectObserver>,
) -> Result<Channel, TransportError> {
    check_address(address)?;
    let server_name =
        aegis_tls::server_name(node_id.as_str()).map_err(|e| TransportError::InvalidAddress {
            address: address.to_owned(),
            reason: e.to_string(),
        })?;
    let endpoint = Endpoint::from_shared(format!("http://{address}"))
        .map_err(|e| TransportError::InvalidAddress {
            address: address.to_owned(),
            reason: e.to_string(),
        })?
        .connect_timeout(opts.connect_timeout)
        .http2_keep_alive_interval(opts.keep_alive_interval)
        .keep_alive_timeout(opts.keep_alive_timeout)
        .keep_alive_while_idle(false);
    let credentials: Credentials = credentials.into();
    let address = Arc::<str>::from(address);
    let peer = node_id.clone();
    let connect = tower::service_fn(move |_uri: http::Uri| {
        let (connector, server_name, address, peer, observer) = (
            TlsConnector::from(credentials.client_config()),
            server_name.clone(),
            Arc::clone(&address),
            peer.clone(),
            observer.clone(),
        );
        async move {
            let result = async {
                let tcp = TcpStream::connect(&*address).await?;
                // Without it each call waits for Nagle and delayed ACK (~40 ms).
                tcp.set_nodelay(true)?;
                connector.connect(server_name, tcp).await
            }
            .await;
            match &result {
                Ok(_) => tracing::debug!(peer = %peer, address = %address, "connected"),
                Err(e) => {
                    if from_another_ca(e) {
                        tracing::warn!(peer = %peer, address = %address, error = %e, "connection failed: the peer presented a certificate from a different CA; do both nodes use the same certificate directory?");
                    } else {
                        tracing::warn!(peer = %peer, address = %address, error = %e, "connection failed");
                    }
                }
            }
            if let Some(observe) = &observer {
                observe(match &result {
                    Ok(_) => ConnectEvent::Connected,
                    Err(e) => ConnectEvent::Failed(e),
                });
            }
            result.map(TokioIo::new)
        }
    });
    Ok(endpoint.connect_with_connector_lazy(connect))
}

/// Whether a failed handshake means the peer's chain comes from another
/// CA. CAs generated before they had subjects of their own share one, so
/// another mesh's CA shows up as a bad signature as often as as an unknown
/// issuer.
pub fn from_another_ca(e: &io::Error) -> bool {
    let text = e.to_string();
    text.contains("UnknownIssuer") || text.contains("BadSignature")
}

/// Accepts the certificate of any node of the mesh, whatever its ID: the
/// chain must lead to the mesh CA and the certificate must name the node ID
/// in its common name. Used only to learn who a seed address is.
#[derive(Debug)]
struct AnyMeshNode {
    inner: Arc<rustls::client::WebPkiServerVerifier>,
}

impl rustls::client::danger::ServerCertVerifier for AnyMeshNode {
    fn verify_server_cert(
        &self,
        end_entity: &rustls::pki_types::CertificateDer<'_>,
        intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        ocsp_response: &[u8],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        let id = CertInfo::from_der(end_entity)
            .ok()
            .and_then(|info| info.common_name)
            .and_then(|cn| NodeId::new(&cn).ok())
            .ok_or_else(|| {
                rustls::Error::General("the certificate names no valid node ID".into())
            })?;
        let name = aegis_tls::server_name(id.as_str())
            .map_err(|e| rustls::Error::General(e.to_string()))?;
        self.inner
            .verify_server_cert(end_entity, intermediates, &name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Who answers at `address`: a TLS handshake (with this node's
/// certificate) that accepts any node of the mesh, and the node ID its
/// certificate names. This is how a node joins knowing only a seed's
/// address; every later connection to it checks that ID as usual.
///
/// # Errors
/// [`TransportError::InvalidAddress`] for an address that is not
/// `host:port`; [`TransportError::Seed`] naming the address and what to
/// check when nothing answers there, it does not speak TLS, or its
/// certificate is not from this mesh's CA.
pub async fn identify(
    credentials: impl Into<Credentials>,
    address: &str,
    timeout: Duration,
) -> Result<NodeId, TransportError> {
    let info = peer_certificate(credentials, address, timeout).await?;
    info.common_name
        .and_then(|cn| NodeId::new(&cn).ok())
        .ok_or_else(|| TransportError::Seed {
            address: address.to_owned(),
            reason: "its certificate names no node ID".into(),
        })
}

/// The certificate the node at `address` presents to a new connection now
/// (serial, validity, fingerprint), after a full mutual-TLS handshake that
/// accepts any node of the mesh. Operators and tests use it to see which
/// certificate a running node serves.
///
/// # Errors
/// As [`identify`].
pub async fn peer_certificate(
    credentials: impl Into<Credentials>,
    address: &str,
    timeout: Duration,
) -> Result<CertInfo, TransportError> {
    check_address(address)?;
    let seed = |reason: String| TransportError::Seed {
        address: address.to_owned(),
        reason,
    };
    let tls = credentials.into().current();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(
        tls.root_store(),
        Arc::clone(&provider),
    )
    .build()
    .map_err(|e| seed(format!("the mesh CA cannot verify servers: {e}")))?;
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| seed(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyMeshNode { inner }))
        .with_client_auth_cert(tls.cert_chain().to_vec(), tls.private_key())
        .map_err(|e| seed(format!("this node's certificate is unusable: {e}")))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    let handshake = async {
        let tcp = TcpStream::connect(address)
            .await
            .map_err(|e| seed(format!("nothing answers there ({e})")))?;
        // The name is not checked (see `AnyMeshNode`); any valid one will do.
        let name =
            rustls::pki_types::ServerName::try_from("seed").map_err(|e| seed(e.to_string()))?;
        let stream = TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .map_err(|e| {
                let hint = if from_another_ca(&e) {
                    " — its certificate is not from this mesh's CA: are both nodes using the same certificate directory or CA?"
                } else {
                    ""
                };
                seed(format!("TLS handshake failed: {e}{hint}"))
            })?;
        let (_, conn) = stream.get_ref();
        conn.peer_certificates()
            .and_then(|c| c.first())
            .and_then(|der| CertInfo::from_der(der).ok())
            .ok_or_else(|| seed("it presented no readable certificate".into()))
    };
    tokio::time::timeout(timeout, handshake)
        .await
        .map_err(|_| seed(format!("no TLS handshake within {timeout:?}")))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        for ok in [
            "127.0.0.1:0",
            "localhost:7000",
            "[::1]:1",
            "node.example:65535",
        ] {
            assert!(check_address(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "nohost",
            ":80",
            "host:",
            "host:99999",
            "host:http",
            "::1:80",
        ] {
            assert!(check_address(bad).is_err(), "{bad}");
        }
    }
}
