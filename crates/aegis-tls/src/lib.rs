//! Certificates and mutual TLS for the aegis service mesh.
//!
//! Every aegis connection is mutual TLS inside one mesh CA. This crate owns
//! the certificate directory (generated on first run, in the layout of the
//! reference implementation), loading from files or environment variables,
//! the checks on what is loaded, and the rustls configurations that the
//! network crates use as they are. It has no async code and no network.
//!
//! ```
//! let dir = std::env::temp_dir().join(format!("aegis-tls-doc-{}", std::process::id()));
//! // First run: generates ca-cert.pem, ca-key.pem, node-1-cert.pem, node-1-key.pem.
//! let tls = aegis_tls::load_or_generate_tls("node-1", &dir)?;
//! assert_eq!(tls.node_id().as_str(), "node-1");
//! assert!(tls.cert_info().has_san("localhost"));
//! // The server side requires client certificates; both sides speak h2.
//! assert_eq!(tls.server_config().alpn_protocols, vec![b"h2".to_vec()]);
//! // When dialling node-2, expect its node ID as the server name.
//! let name = aegis_tls::server_name("node-2")?;
//! # let _ = name;
//! # std::fs::remove_dir_all(&dir).ok();
//! # Ok::<(), aegis_tls::TlsError>(())
//! ```
#![warn(missing_docs)]

mod ca;
mod config;
mod dir;
mod error;
mod info;
mod pem;

pub use aegis_id::{NodeId, NodeIdError};
pub use ca::{CA_VALIDITY, CertAuthority, IssuedCert, NODE_VALIDITY, Validity};
pub use config::{
    CertificateSource, DEFAULT_CA_ENV, DEFAULT_CERT_ENV, DEFAULT_KEY_ENV, TlsConfig, TlsOptions,
    load_tls_config, server_name,
};
pub use dir::{CertDir, Created, Renewal, load_or_generate_tls, renewal_time};
pub use error::TlsError;
pub use info::{CertInfo, rfc3339};

/// Re-exported so that users of [`TlsConfig`] need not pin their own rustls.
pub use rustls;
pub use rustls_pki_types as pki_types;
