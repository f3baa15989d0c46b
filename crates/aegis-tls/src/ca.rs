//! Generating the mesh CA and issuing node certificates with `rcgen`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, SystemTime};

use aegis_id::NodeId;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use ring::rand::SecureRandom;
use rustls_pki_types::CertificateDer;

use crate::{TlsError, pem};

/// Default lifetime of a generated CA certificate.
pub const CA_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);
/// Default lifetime of a generated node certificate.
pub const NODE_VALIDITY: Duration = Duration::from_secs(90 * 24 * 3600);
/// How far back `not_before` is set, so that peers whose clocks lag a little
/// accept a certificate made a moment ago: at most this, and at most a tenth
/// of the lifetime (a certificate that lives seconds is not backdated by
/// minutes, which would put two thirds of its span past its end).
const CLOCK_SKEW: Duration = Duration::from_secs(5 * 60);

/// A validity period.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    /// First instant of validity.
    pub not_before: SystemTime,
    /// Last instant of validity.
    pub not_after: SystemTime,
}

impl Validity {
    /// From a few minutes ago (clock skew: 5 minutes, or a tenth of
    /// `lifetime` if less) until `lifetime` from now.
    pub fn from_now(lifetime: Duration) -> Self {
        let now = SystemTime::now();
        let skew = CLOCK_SKEW.min(lifetime / 10);
        Self {
            not_before: now.checked_sub(skew).unwrap_or(now),
            not_after: now + lifetime,
        }
    }

    /// A period as long as `span` (a previous certificate's `not_after -
    /// not_before`), backdated as [`Validity::from_now`] backdates: a
    /// renewed certificate lives as long as the one it replaces.
    pub fn like(span: Duration) -> Self {
        let now = SystemTime::now();
        // from_now(l) spans l + min(CLOCK_SKEW, l / 10).
        let skew = CLOCK_SKEW.min(span / 11);
        let not_before = now.checked_sub(skew).unwrap_or(now);
        Self {
            not_before,
            not_after: not_before + span,
        }
    }
}

/// A node certificate and its key, as PEM.
#[derive(Clone)]
pub struct IssuedCert {
    /// The certificate, PEM.
    pub cert_pem: String,
    /// The certificate, DER.
    pub cert_der: CertificateDer<'static>,
    /// The private key, PKCS#8 PEM.
    pub key_pem: String,
}

impl std::fmt::Debug for IssuedCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedCert").finish_non_exhaustive()
    }
}

/// The mesh certificate authority: signs node certificates.
pub struct CertAuthority {
    cert_pem: String,
    cert_der: CertificateDer<'static>,
    key_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for CertAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertAuthority").finish_non_exhaustive()
    }
}

impl CertAuthority {
    /// Generates a new CA with an ECDSA P-256 key.
    ///
    /// # Errors
    /// [`TlsError::Generate`] if key generation or signing fails.
    pub fn generate(validity: Validity) -> Result<Self, TlsError> {
        let generate = |source| TlsError::Generate {
            what: "the mesh CA".to_owned(),
            source,
        };
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(generate)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "aegis");
        // A subject of its own (a random suffix), so that two meshes' CAs
        // are told apart: a chain from the other one fails as an unknown
        // issuer, not as a bad signature.
        let mut tag = [0u8; 6];
        ring::rand::SystemRandom::new()
            .fill(&mut tag)
            .map_err(|_| generate(rcgen::Error::RingUnspecified))?;
        let tag: String = tag.iter().map(|b| format!("{b:02x}")).collect();
        dn.push(DnType::CommonName, format!("aegis mesh CA {tag}"));
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.serial_number = Some(random_serial()?);
        set_validity(&mut params, validity);
        let cert = params.self_signed(&key).map_err(generate)?;
        let key_pem = key.serialize_pem();
        Ok(Self {
            cert_pem: cert.pem(),
            cert_der: cert.der().clone(),
            key_pem,
            issuer: Issuer::new(params, key),
        })
    }

    /// Loads a CA from its certificate and key (PKCS#8, or PKCS#1 RSA as the
    /// reference implementation writes). `origin` names them in errors.
    /// `cert_pem` may be a bundle of several CAs (a rollover in progress):
    /// the CA is the one whose public key is `key_pem`'s.
    ///
    /// # Errors
    /// [`TlsError::NotPem`] / [`TlsError::Invalid`] for unreadable input,
    /// [`TlsError::KeyMismatch`] if the key is not the certificate's.
    pub fn from_pem(cert_pem: &str, key_pem: &str, origin: &str) -> Result<Self, TlsError> {
        let cert_origin = format!("{origin} (CA certificate)");
        let key_origin = format!("{origin} (CA key)");
        let bundle = pem::certs(cert_pem.as_bytes(), &cert_origin)?;
        let key_der = pem::private_key(key_pem.as_bytes(), &key_origin)?;
        let pkcs8 = pem::to_pkcs8(&key_der, &key_origin)?;
        let key = KeyPair::try_from(&pkcs8).map_err(|e| TlsError::Invalid {
            what: "CA private key",
            origin: key_origin.clone(),
            reason: e.to_string(),
        })?;
        // A bundle (during a CA rollover) holds several CAs: the one that
        // signs is the one whose public key is this key's.
        let spki_of = |der: &CertificateDer<'_>| {
            x509_parser::parse_x509_certificate(der)
                .map(|(_, c)| c.public_key().subject_public_key.data.to_vec())
                .unwrap_or_default()
        };
        let Some(cert_der) = bundle
            .iter()
            .find(|der| spki_of(der) == key.public_key_raw())
            .or(if bundle.len() == 1 {
                bundle.first()
            } else {
                None
            })
            .cloned()
        else {
            return Err(TlsError::KeyMismatch {
                cert: cert_origin,
                key: key_origin,
            });
        };
        let cert_pem = if bundle.len() == 1 {
            cert_pem.to_owned()
        } else {
            pem::encode_cert(&cert_der)
        };
        let info = crate::CertInfo::parse(&cert_der, &cert_origin)?;
        if !info.is_ca {
            return Err(TlsError::Invalid {
                what: "CA certificate",
                origin: cert_origin,
                reason: "it is not a CA (basic constraints say cA = false)".to_owned(),
            });
        }
        let spki_matches = x509_parser::parse_x509_certificate(&cert_der)
            .map(|(_, c)| c.public_key().subject_public_key.data.as_ref() == key.public_key_raw())
            .unwrap_or(false);
        if !spki_matches {
            return Err(TlsError::KeyMismatch {
                cert: cert_origin,
                key: key_origin,
            });
        }
        let issuer = Issuer::from_ca_cert_der(&cert_der, key).map_err(|e| TlsError::Invalid {
            what: "CA certificate",
            origin: cert_origin,
            reason: e.to_string(),
        })?;
        Ok(Self {
            cert_pem,
            cert_der,
            key_pem: key_pem.to_owned(),
            issuer,
        })
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA certificate, DER.
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// The CA private key, PEM. Keep it secret.
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// Issues a node certificate: CN and DNS SAN = the node ID, DNS SAN
    /// `localhost`, IP SANs 127.0.0.1 and ::1, usable for TLS server and client
    /// auth, with a fresh ECDSA P-256 key and a random serial number.
    ///
    /// # Errors
    /// [`TlsError::Generate`] if key generation or signing fails.
    pub fn issue(&self, node_id: &NodeId, validity: Validity) -> Result<IssuedCert, TlsError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(|source| {
            TlsError::Generate {
                what: format!("a key for node {node_id}"),
                source,
            }
        })?;
        self.issue_with(node_id, &key, validity)
    }

    /// Issues a node certificate, as [`CertAuthority::issue`] does, for an
    /// existing private key (PKCS#8, or PKCS#1 RSA); `origin` names the key
    /// in errors. The key is not written anywhere: `key_pem` of the result
    /// is the key as given back in PKCS#8.
    ///
    /// # Errors
    /// [`TlsError::NotPem`] / [`TlsError::Invalid`] for an unreadable key,
    /// [`TlsError::Generate`] if signing fails.
    pub fn issue_for_key(
        &self,
        node_id: &NodeId,
        key_pem: &str,
        origin: &str,
        validity: Validity,
    ) -> Result<IssuedCert, TlsError> {
        let key_der = pem::private_key(key_pem.as_bytes(), origin)?;
        let pkcs8 = pem::to_pkcs8(&key_der, origin)?;
        let key = KeyPair::try_from(&pkcs8).map_err(|e| TlsError::Invalid {
            what: "node private key",
            origin: origin.to_owned(),
            reason: e.to_string(),
        })?;
        self.issue_with(node_id, &key, validity)
    }

    fn issue_with(
        &self,
        node_id: &NodeId,
        key: &KeyPair,
        validity: Validity,
    ) -> Result<IssuedCert, TlsError> {
        let generate = |source| TlsError::Generate {
            what: format!("a certificate for node {node_id}"),
            source,
        };
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "aegis");
        dn.push(DnType::CommonName, node_id.as_str());
        params.distinguished_name = dn;
        let dns = |name: &str| {
            name.to_owned()
                .try_into()
                .map(SanType::DnsName)
                .map_err(generate)
        };
        params.subject_alt_names = vec![
            dns(node_id.as_str())?,
            dns("localhost")?,
            SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            SanType::IpAddress(IpAddr::V6(Ipv6Addr::LOCALHOST)),
        ];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(random_serial()?);
        set_validity(&mut params, validity);
        let cert = params.signed_by(key, &self.issuer).map_err(generate)?;
        Ok(IssuedCert {
            cert_pem: cert.pem(),
            cert_der: cert.der().clone(),
            key_pem: key.serialize_pem(),
        })
    }
}

fn set_validity(params: &mut CertificateParams, validity: Validity) {
    params.not_before = validity.not_before.into();
    params.not_after = validity.not_after.into();
}

/// 16 random bytes from the system RNG; positive (top bit clear) and with a
/// non-zero first byte, so that the DER INTEGER keeps all 16 bytes.
fn random_serial() -> Result<SerialNumber, TlsError> {
    let mut bytes = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| TlsError::Generate {
            what: "a serial number".to_owned(),
            source: rcgen::Error::RingUnspecified,
        })?;
    bytes[0] &= 0x7f;
    if bytes[0] == 0 {
        bytes[0] = 1;
    }
    Ok(SerialNumber::from_slice(&bytes))
}
