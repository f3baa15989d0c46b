//! What a certificate says, parsed once.

use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls_pki_types::CertificateDer;
use x509_parser::extensions::GeneralName;

use crate::TlsError;

/// The parts of an X.509 certificate that the mesh looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// The subject's common name: the node ID of a node certificate.
    pub common_name: Option<String>,
    /// DNS subject alternative names.
    pub dns_names: Vec<String>,
    /// IP subject alternative names.
    pub ip_addresses: Vec<IpAddr>,
    /// Start of the validity period.
    pub not_before: SystemTime,
    /// End of the validity period.
    pub not_after: SystemTime,
    /// The serial number's bytes, big-endian.
    pub serial: Vec<u8>,
    /// Whether the certificate is a CA (basic constraints).
    pub is_ca: bool,
    /// SHA-256 of the DER encoding.
    pub fingerprint_sha256: [u8; 32],
}

impl CertInfo {
    /// Parses a DER certificate.
    ///
    /// # Errors
    /// [`TlsError::Invalid`] when the bytes are not an X.509 certificate.
    pub fn from_der(der: &CertificateDer<'_>) -> Result<Self, TlsError> {
        Self::parse(der, "certificate")
    }

    pub(crate) fn parse(der: &[u8], origin: &str) -> Result<Self, TlsError> {
        let invalid = |reason: String| TlsError::Invalid {
            what: "certificate",
            origin: origin.to_owned(),
            reason,
        };
        let (rest, cert) =
            x509_parser::parse_x509_certificate(der).map_err(|e| invalid(e.to_string()))?;
        if !rest.is_empty() {
            return Err(invalid(format!(
                "{} trailing bytes after the certificate",
                rest.len()
            )));
        }
        let common_name = cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .map(str::to_owned);
        let mut dns_names = Vec::new();
        let mut ip_addresses = Vec::new();
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                match name {
                    GeneralName::DNSName(d) => dns_names.push((*d).to_owned()),
                    GeneralName::IPAddress(bytes) => {
                        if let Some(ip) = ip_from_bytes(bytes) {
                            ip_addresses.push(ip);
                        }
                    }
                    _ => {}
                }
            }
        }
        let validity = cert.validity();
        Ok(Self {
            common_name,
            dns_names,
            ip_addresses,
            not_before: system_time(validity.not_before.timestamp()),
            not_after: system_time(validity.not_after.timestamp()),
            serial: cert.raw_serial().to_vec(),
            is_ca: cert.is_ca(),
            fingerprint_sha256: sha256(der),
        })
    }

    /// The SHA-256 fingerprint as lowercase hex.
    pub fn fingerprint_hex(&self) -> String {
        hex(&self.fingerprint_sha256)
    }

    /// The serial number as lowercase hex.
    pub fn serial_hex(&self) -> String {
        hex(&self.serial)
    }

    /// Whether `san` is one of the DNS or IP subject alternative names.
    pub fn has_san(&self, san: &str) -> bool {
        match san.parse::<IpAddr>() {
            Ok(ip) => self.ip_addresses.contains(&ip),
            Err(_) => self.dns_names.iter().any(|d| d.eq_ignore_ascii_case(san)),
        }
    }

    /// Whether `now` lies inside the validity period.
    pub fn is_valid_at(&self, now: SystemTime) -> bool {
        self.not_before <= now && now <= self.not_after
    }
}

fn ip_from_bytes(bytes: &[u8]) -> Option<IpAddr> {
    match bytes.len() {
        4 => <[u8; 4]>::try_from(bytes).ok().map(IpAddr::from),
        16 => <[u8; 16]>::try_from(bytes).ok().map(IpAddr::from),
        _ => None,
    }
}

fn system_time(unix: i64) -> SystemTime {
    if unix >= 0 {
        UNIX_EPOCH + Duration::from_secs(unix.unsigned_abs())
    } else {
        UNIX_EPOCH - Duration::from_secs(unix.unsigned_abs())
    }
}

pub(crate) fn sha256(data: &[u8]) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// Formats a time as RFC 3339 in UTC (`2026-12-01T17:00:00Z`).
pub fn rfc3339(t: SystemTime) -> String {
    let secs = match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
    };
    time::OffsetDateTime::from_unix_timestamp(secs)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| format!("{secs} (Unix seconds)"))
}
