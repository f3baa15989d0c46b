//! `TlsOptions`, `TlsConfig` and `load_tls_config`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aegis_id::NodeId;
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

use crate::info::rfc3339;
use crate::{CertInfo, TlsError, pem};

/// Default environment variable names for [`CertificateSource::Env`].
pub const DEFAULT_CERT_ENV: &str = "AEGIS_TLS_CERT";
/// See [`DEFAULT_CERT_ENV`].
pub const DEFAULT_KEY_ENV: &str = "AEGIS_TLS_KEY";
/// See [`DEFAULT_CERT_ENV`].
pub const DEFAULT_CA_ENV: &str = "AEGIS_TLS_CA";

/// Where [`load_tls_config`] reads the certificate, key and CA from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CertificateSource {
    /// PEM files at `cert_file`, `key_file`, `ca_file`.
    #[default]
    File,
    /// PEM text in the environment variables `cert_env`, `key_env`, `ca_env`.
    Env,
    /// HashiCorp Vault: named by the reference API but not supported here;
    /// loading answers [`TlsError::UnsupportedSource`].
    Vault,
}

/// How to load a node's TLS material. The knobs of the reference's `TLSOptions`.
///
/// ```
/// use aegis_tls::TlsOptions;
/// let opts = TlsOptions::from_files("certs/node-1-cert.pem", "certs/node-1-key.pem", "certs/ca-cert.pem")
///     .with_required_sans(["node-1"]);
/// assert!(opts.verify_chain);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsOptions {
    /// Where the PEM text comes from.
    pub source: CertificateSource,
    /// Node certificate (chain) file, for [`CertificateSource::File`].
    pub cert_file: PathBuf,
    /// Node private key file.
    pub key_file: PathBuf,
    /// CA certificate file; may hold a bundle of several CAs.
    pub ca_file: PathBuf,
    /// Variable holding the node certificate, for [`CertificateSource::Env`].
    pub cert_env: String,
    /// Variable holding the node key.
    pub key_env: String,
    /// Variable holding the CA certificate(s).
    pub ca_env: String,
    /// Check that the node certificate chains to the CA (default true).
    pub verify_chain: bool,
    /// Accept a certificate outside its validity period (default false).
    /// Peers will still refuse it at the handshake.
    pub allow_expired: bool,
    /// SANs (DNS names or IP addresses) the node certificate must carry.
    pub required_sans: Vec<String>,
}

impl Default for TlsOptions {
    fn default() -> Self {
        Self {
            source: CertificateSource::File,
            cert_file: PathBuf::new(),
            key_file: PathBuf::new(),
            ca_file: PathBuf::new(),
            cert_env: DEFAULT_CERT_ENV.to_owned(),
            key_env: DEFAULT_KEY_ENV.to_owned(),
            ca_env: DEFAULT_CA_ENV.to_owned(),
            verify_chain: true,
            allow_expired: false,
            required_sans: Vec::new(),
        }
    }
}

impl TlsOptions {
    /// Files on disk.
    pub fn from_files(
        cert: impl Into<PathBuf>,
        key: impl Into<PathBuf>,
        ca: impl Into<PathBuf>,
    ) -> Self {
        Self {
            cert_file: cert.into(),
            key_file: key.into(),
            ca_file: ca.into(),
            ..Self::default()
        }
    }

    /// The files of `node_id` in a certificate directory laid out as
    /// `load_or_generate_tls` writes it.
    pub fn from_cert_dir(dir: impl AsRef<Path>, node_id: &str) -> Self {
        let dir = crate::CertDir::new(dir.as_ref());
        Self::from_files(
            dir.node_cert_path_unchecked(node_id),
            dir.node_key_path_unchecked(node_id),
            dir.ca_cert_path(),
        )
    }

    /// PEM text in environment variables (defaults `AEGIS_TLS_CERT`,
    /// `AEGIS_TLS_KEY`, `AEGIS_TLS_CA`).
    pub fn from_env() -> Self {
        Self {
            source: CertificateSource::Env,
            ..Self::default()
        }
    }

    /// Other variable names for [`CertificateSource::Env`].
    pub fn with_env_vars(
        mut self,
        cert: impl Into<String>,
        key: impl Into<String>,
        ca: impl Into<String>,
    ) -> Self {
        self.cert_env = cert.into();
        self.key_env = key.into();
        self.ca_env = ca.into();
        self
    }

    /// Turns the chain check on or off.
    pub fn with_verify_chain(mut self, verify: bool) -> Self {
        self.verify_chain = verify;
        self
    }

    /// Accepts certificates outside their validity period.
    pub fn with_allow_expired(mut self, allow: bool) -> Self {
        self.allow_expired = allow;
        self
    }

    /// SANs the node certificate must carry.
    pub fn with_required_sans<S: Into<String>>(
        mut self,
        sans: impl IntoIterator<Item = S>,
    ) -> Self {
        self.required_sans = sans.into_iter().map(Into::into).collect();
        self
    }
}

/// One PEM input and where it came from, for error messages.
struct Input {
    pem: Vec<u8>,
    origin: String,
}

fn read_input(
    opts: &TlsOptions,
    what: &'static str,
    path: &Path,
    var: &str,
) -> Result<Input, TlsError> {
    match opts.source {
        CertificateSource::File => match std::fs::read(path) {
            Ok(pem) => Ok(Input {
                pem,
                origin: path.display().to_string(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(TlsError::Missing {
                what,
                path: path.to_owned(),
            }),
            Err(source) => Err(TlsError::Read {
                what,
                origin: path.display().to_string(),
                source,
            }),
        },
        CertificateSource::Env => match std::env::var(var) {
            Ok(text) => Ok(Input {
                pem: text.into_bytes(),
                origin: format!("${var}"),
            }),
            Err(_) => Err(TlsError::MissingEnv {
                var: var.to_owned(),
                what,
            }),
        },
        CertificateSource::Vault => Err(TlsError::UnsupportedSource("vault")),
    }
}

/// Loads and checks a node's certificate, key and CA as `opts` says, and
/// builds the rustls configurations.
///
/// Checks, in order: PEM syntax; the certificate names a valid node ID in its
/// CN; the key matches the certificate; validity period (unless
/// `allow_expired`); the chain to the CA (if `verify_chain`); every
/// `required_sans` entry.
///
/// # Errors
/// A [`TlsError`] naming the file (or variable) and the failed check.
pub fn load_tls_config(opts: &TlsOptions) -> Result<TlsConfig, TlsError> {
    let cert = read_input(opts, "node certificate", &opts.cert_file, &opts.cert_env)?;
    let key = read_input(opts, "node private key", &opts.key_file, &opts.key_env)?;
    let ca = read_input(opts, "CA certificate", &opts.ca_file, &opts.ca_env)?;
    TlsConfig::build(&cert, &key, &ca, opts)
}

/// A node's TLS identity and trust: its certificate chain and key, the mesh
/// CA(s), and ready rustls configurations for both directions (ALPN `h2`).
///
/// Cloning is cheap.
#[derive(Clone)]
pub struct TlsConfig {
    node_id: NodeId,
    chain: Arc<[CertificateDer<'static>]>,
    key: Arc<PrivateKeyDer<'static>>,
    ca_certs: Arc<[CertificateDer<'static>]>,
    roots: Arc<RootCertStore>,
    info: Arc<CertInfo>,
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
}

impl std::fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsConfig")
            .field("node_id", &self.node_id)
            .field("not_after", &rfc3339(self.info.not_after))
            .field("ca_certs", &self.ca_certs.len())
            .finish_non_exhaustive()
    }
}

impl TlsConfig {
    /// Builds a configuration from PEM text in memory, checked as
    /// [`load_tls_config`] checks files.
    ///
    /// # Errors
    /// As [`load_tls_config`].
    pub fn from_pem(
        cert_pem: &str,
        key_pem: &str,
        ca_pem: &str,
        opts: &TlsOptions,
    ) -> Result<Self, TlsError> {
        let input = |pem: &str, origin: &str| Input {
            pem: pem.as_bytes().to_vec(),
            origin: origin.to_owned(),
        };
        Self::build(
            &input(cert_pem, "node certificate (in memory)"),
            &input(key_pem, "node private key (in memory)"),
            &input(ca_pem, "CA certificate (in memory)"),
            opts,
        )
    }

    fn build(cert: &Input, key: &Input, ca: &Input, opts: &TlsOptions) -> Result<Self, TlsError> {
        let chain = pem::certs(&cert.pem, &cert.origin)?;
        let key_der = pem::private_key(&key.pem, &key.origin)?;
        let ca_certs = pem::certs(&ca.pem, &ca.origin)?;
        let info = CertInfo::parse(&chain[0], &cert.origin)?;

        let cn = info
            .common_name
            .as_deref()
            .ok_or_else(|| TlsError::Invalid {
                what: "node certificate",
                origin: cert.origin.clone(),
                reason: "the subject has no common name (it must be the node ID)".to_owned(),
            })?;
        let node_id = NodeId::new(cn).map_err(|e| TlsError::Invalid {
            what: "node certificate",
            origin: cert.origin.clone(),
            reason: format!("the common name is not a valid node ID: {e}"),
        })?;

        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let signing_key = provider
            .key_provider
            .load_private_key(key_der.clone_key())
            .map_err(|e| TlsError::Invalid {
                what: "private key",
                origin: key.origin.clone(),
                reason: e.to_string(),
            })?;
        match CertifiedKey::new(chain.clone(), signing_key).keys_match() {
            Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
            Err(_) => {
                return Err(TlsError::KeyMismatch {
                    cert: cert.origin.clone(),
                    key: key.origin.clone(),
                });
            }
        }

        let now = SystemTime::now();
        if !opts.allow_expired {
            check_validity(&info, now, &cert.origin)?;
        }
        if opts.verify_chain {
            // With `allow_expired`, judge the signatures at a moment when the
            // node certificate was valid, so that only the dates are forgiven.
            let at = if opts.allow_expired && !info.is_valid_at(now) {
                info.not_before + Duration::from_secs(1)
            } else {
                now
            };
            verify_chain(&chain, &ca_certs, at).map_err(|reason| TlsError::NotSignedByCa {
                cert: cert.origin.clone(),
                ca: ca.origin.clone(),
                reason,
            })?;
        }
        for san in &opts.required_sans {
            if !info.has_san(san) {
                return Err(TlsError::MissingSan {
                    origin: cert.origin.clone(),
                    san: san.clone(),
                });
            }
        }

        let mut roots = RootCertStore::empty();
        for (i, ca_cert) in ca_certs.iter().enumerate() {
            roots.add(ca_cert.clone()).map_err(|e| TlsError::Invalid {
                what: "CA certificate",
                origin: format!("{} (certificate #{})", ca.origin, i + 1),
                reason: e.to_string(),
            })?;
        }
        let roots = Arc::new(roots);
        let server = server_config(&provider, &roots, &chain, &key_der)?;
        let client = client_config(&provider, &roots, &chain, &key_der)?;
        tracing::debug!(node_id = %node_id, not_after = %rfc3339(info.not_after), "loaded TLS identity");
        Ok(Self {
            node_id,
            chain: chain.into(),
            key: Arc::new(key_der),
            ca_certs: ca_certs.into(),
            roots,
            info: Arc::new(info),
            server,
            client,
        })
    }

    /// The node ID: the common name of the node certificate.
    pub fn node_id(&self) -> &NodeId {
        &self.node_id
    }

    /// The node certificate first, then any intermediates.
    pub fn cert_chain(&self) -> &[CertificateDer<'static>] {
        &self.chain
    }

    /// A copy of the node's private key.
    pub fn private_key(&self) -> PrivateKeyDer<'static> {
        self.key.clone_key()
    }

    /// The trusted mesh CA certificates.
    pub fn ca_certs(&self) -> &[CertificateDer<'static>] {
        &self.ca_certs
    }

    /// The certificate chain, the private key and the trusted CAs as PEM
    /// text, for clients that take PEM (a TLS connection to etcd, say).
    /// The key is secret: do not log it.
    pub fn to_pem(&self) -> (String, String, String) {
        let chain = self.chain.iter().map(|c| pem::encode_cert(c)).collect();
        let cas = self.ca_certs.iter().map(|c| pem::encode_cert(c)).collect();
        (chain, pem::encode_key(&self.key), cas)
    }

    /// The trusted mesh CAs as a rustls root store.
    pub fn root_store(&self) -> Arc<RootCertStore> {
        Arc::clone(&self.roots)
    }

    /// What the node certificate says (SANs, validity, fingerprint).
    pub fn cert_info(&self) -> &CertInfo {
        &self.info
    }

    /// When the node certificate expires.
    pub fn not_after(&self) -> SystemTime {
        self.info.not_after
    }

    /// Server side: presents the node certificate, requires a client
    /// certificate that chains to the mesh CA, ALPN `h2`.
    pub fn server_config(&self) -> Arc<ServerConfig> {
        Arc::clone(&self.server)
    }

    /// Client side: presents the node certificate and verifies the server
    /// against the mesh CA, ALPN `h2`. The expected server name — the peer's
    /// node ID, see [`server_name`] — is given when dialling.
    pub fn client_config(&self) -> Arc<ClientConfig> {
        Arc::clone(&self.client)
    }
}

/// The TLS server name to expect when dialling `node_id`.
///
/// Always the node ID, never the host of the address: every node
/// certificate also names `localhost` and 127.0.0.1, so checking the host
/// would accept any node of the mesh as any other.
///
/// # Errors
/// [`TlsError::InvalidNodeId`] when `node_id` is not a valid node ID.
pub fn server_name(node_id: &str) -> Result<ServerName<'static>, TlsError> {
    let id = NodeId::new(node_id)?;
    ServerName::try_from(id.as_str().to_owned()).map_err(|e| TlsError::Invalid {
        what: "server name",
        origin: id.to_string(),
        reason: e.to_string(),
    })
}

fn check_validity(info: &CertInfo, now: SystemTime, origin: &str) -> Result<(), TlsError> {
    if now > info.not_after {
        return Err(TlsError::Expired {
            origin: origin.to_owned(),
            not_after: rfc3339(info.not_after),
        });
    }
    if now < info.not_before {
        return Err(TlsError::NotYetValid {
            origin: origin.to_owned(),
            not_before: rfc3339(info.not_before),
        });
    }
    Ok(())
}

/// Verifies that `chain[0]` chains to one of `cas` at `at`, for both server
/// and client auth (a mesh node is both).
pub(crate) fn verify_chain(
    chain: &[CertificateDer<'static>],
    cas: &[CertificateDer<'static>],
    at: SystemTime,
) -> Result<(), String> {
    let anchors = cas
        .iter()
        .map(|c| webpki::anchor_from_trusted_cert(c).map(|a| a.to_owned()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("the CA certificate is unusable: {e}"))?;
    let leaf = webpki::EndEntityCert::try_from(&chain[0]).map_err(|e| e.to_string())?;
    let time = UnixTime::since_unix_epoch(at.duration_since(UNIX_EPOCH).unwrap_or_default());
    for (usage, name) in [
        (webpki::KeyUsage::server_auth(), "server auth"),
        (webpki::KeyUsage::client_auth(), "client auth"),
    ] {
        leaf.verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &anchors,
            &chain[1..],
            time,
            usage,
            None,
            None,
        )
        .map_err(|e| format!("{} (checked for {name})", explain(&e)))?;
    }
    Ok(())
}

/// A sentence for the webpki errors a user meets; the variant name otherwise.
fn explain(e: &webpki::Error) -> String {
    match e {
        webpki::Error::UnknownIssuer => "no trusted CA issued it".to_owned(),
        webpki::Error::InvalidSignatureForPublicKey => {
            "its signature does not verify with the CA's key (a CA of the same name, but another key)"
                .to_owned()
        }
        webpki::Error::CertExpired { .. } => "it has expired".to_owned(),
        webpki::Error::CertNotValidYet { .. } => "it is not valid yet".to_owned(),
        webpki::Error::RequiredEkuNotFoundContext(_) => {
            "it lacks the extended key usage".to_owned()
        }
        other => format!("{other:?}"),
    }
}

fn server_config(
    provider: &Arc<CryptoProvider>,
    roots: &Arc<RootCertStore>,
    chain: &[CertificateDer<'static>],
    key: &PrivateKeyDer<'static>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let err = |source| TlsError::Rustls {
        what: "server",
        source,
    };
    let verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::clone(roots), Arc::clone(provider))
            .build()
            .map_err(|e| err(rustls::Error::General(e.to_string())))?;
    let mut config = ServerConfig::builder_with_provider(Arc::clone(provider))
        .with_safe_default_protocol_versions()
        .map_err(err)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain.to_vec(), key.clone_key())
        .map_err(err)?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

fn client_config(
    provider: &Arc<CryptoProvider>,
    roots: &Arc<RootCertStore>,
    chain: &[CertificateDer<'static>],
    key: &PrivateKeyDer<'static>,
) -> Result<Arc<ClientConfig>, TlsError> {
    let err = |source| TlsError::Rustls {
        what: "client",
        source,
    };
    let mut config = ClientConfig::builder_with_provider(Arc::clone(provider))
        .with_safe_default_protocol_versions()
        .map_err(err)?
        .with_root_certificates(Arc::clone(roots))
        .with_client_auth_cert(chain.to_vec(), key.clone_key())
        .map_err(err)?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}
