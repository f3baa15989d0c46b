//! The one error type of this crate.

use std::io;
use std::path::PathBuf;

use aegis_id::NodeIdError;

/// Everything that can go wrong while loading, generating or checking
/// certificates. Each variant names the file (or environment variable) and the
/// cause.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// The node ID breaks a rule; nothing was written.
    #[error("invalid node ID: {0}")]
    InvalidNodeId(#[from] NodeIdError),
    /// A file that must exist does not.
    #[error("{what} not found at {}", path.display())]
    Missing {
        /// What the file should have held ("CA certificate", ...).
        what: &'static str,
        /// Where it was looked for.
        path: PathBuf,
    },
    /// A file exists but could not be read.
    #[error("cannot read {what} from {origin}: {source}")]
    Read {
        /// What the file should have held.
        what: &'static str,
        /// The file path.
        origin: String,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// A file or directory could not be written.
    #[error("cannot write {}: {source}", path.display())]
    Write {
        /// The path being written.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// An environment variable that must hold PEM text is not set.
    #[error("environment variable {var} is not set (it should hold the {what} as PEM text)")]
    MissingEnv {
        /// The variable name.
        var: String,
        /// What it should have held.
        what: &'static str,
    },
    /// The input holds no PEM block of the expected kind.
    #[error("{origin} holds no PEM {what}")]
    NotPem {
        /// What was expected ("certificate", "private key").
        what: &'static str,
        /// The file path or `$VARIABLE`.
        origin: String,
    },
    /// A PEM block was found but its content is not valid.
    #[error("{origin}: invalid {what}: {reason}")]
    Invalid {
        /// What was being parsed.
        what: &'static str,
        /// The file path or `$VARIABLE`.
        origin: String,
        /// Why it was refused.
        reason: String,
    },
    /// The private key is not the key of the certificate.
    #[error("private key {key} does not match certificate {cert}")]
    KeyMismatch {
        /// Where the certificate came from.
        cert: String,
        /// Where the key came from.
        key: String,
    },
    /// The certificate does not chain to any of the trusted CAs.
    #[error("certificate {cert} is not signed by the CA in {ca}: {reason}")]
    NotSignedByCa {
        /// Where the certificate came from.
        cert: String,
        /// Where the CA came from.
        ca: String,
        /// What the chain check said.
        reason: String,
    },
    /// The certificate's validity period is over.
    #[error(
        "certificate {origin} expired on {not_after}; renew it (aegis renews it by itself at start when the CA key is in the certificate directory; otherwise issue a new one from the mesh CA — `aegis certs renew --dir DIR ID` where the CA key is — and put it in place)"
    )]
    Expired {
        /// Where the certificate came from.
        origin: String,
        /// The end of its validity (RFC 3339).
        not_after: String,
    },
    /// The certificate's validity period has not started.
    #[error("certificate {origin} is not valid before {not_before}")]
    NotYetValid {
        /// Where the certificate came from.
        origin: String,
        /// The start of its validity (RFC 3339).
        not_before: String,
    },
    /// A SAN listed in `TlsOptions::required_sans` is absent.
    #[error("certificate {origin} lacks the required subject alternative name {san:?}")]
    MissingSan {
        /// Where the certificate came from.
        origin: String,
        /// The SAN that is missing.
        san: String,
    },
    /// The certificate source is not supported by this implementation.
    #[error("certificate source {0:?} is not supported; use File or Env")]
    UnsupportedSource(&'static str),
    /// Key or certificate generation failed.
    #[error("cannot generate {what}: {source}")]
    Generate {
        /// What was being generated.
        what: String,
        /// The cause.
        #[source]
        source: rcgen::Error,
    },
    /// rustls refused the keys or settings.
    #[error("cannot build the rustls {what} configuration: {source}")]
    Rustls {
        /// "server" or "client".
        what: &'static str,
        /// The cause.
        #[source]
        source: rustls::Error,
    },
    /// The certificate directory's lock could not be taken.
    #[error("cannot lock the certificate directory {}: {source}", path.display())]
    Lock {
        /// The lock file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// The directory holds a state that cannot be repaired without losing a key.
    #[error("certificate directory {}: {reason}", path.display())]
    Inconsistent {
        /// The directory.
        path: PathBuf,
        /// What is wrong, and what to do.
        reason: String,
    },
    /// Keys or the directory are open to others, and the directory was told
    /// to refuse that ([`crate::CertDir::refuse_loose_permissions`]).
    #[error("certificate directory {}: {}", path.display(), problems.join("; "))]
    LoosePermissions {
        /// The directory.
        path: PathBuf,
        /// Each file or directory, its mode, and the `chmod` that fixes it.
        problems: Vec<String>,
    },
}
