//! PEM parsing with `rustls-pki-types`, and key format conversion.

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::TlsError;

/// Every `CERTIFICATE` block of `pem`, in order; at least one.
pub(crate) fn certs(pem: &[u8], origin: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Invalid {
            what: "certificate PEM",
            origin: origin.to_owned(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::NotPem {
            what: "certificate",
            origin: origin.to_owned(),
        });
    }
    Ok(certs)
}

/// The first private key of `pem`: PKCS#8, PKCS#1 (`RSA PRIVATE KEY`, as the
/// reference implementation writes) or SEC1.
pub(crate) fn private_key(pem: &[u8], origin: &str) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound => TlsError::NotPem {
            what: "private key",
            origin: origin.to_owned(),
        },
        other => TlsError::Invalid {
            what: "private key PEM",
            origin: origin.to_owned(),
            reason: other.to_string(),
        },
    })
}

/// A certificate as PEM text (base64 in lines of 64, as openssl writes).
pub(crate) fn encode_cert(der: &[u8]) -> String {
    encode("CERTIFICATE", der)
}

/// A private key as PEM text, labelled by its format.
pub(crate) fn encode_key(key: &PrivateKeyDer<'_>) -> String {
    let label = match key {
        PrivateKeyDer::Pkcs1(_) => "RSA PRIVATE KEY",
        PrivateKeyDer::Sec1(_) => "EC PRIVATE KEY",
        _ => "PRIVATE KEY",
    };
    encode(label, key.secret_der())
}

/// `der` as PEM text under `label`.
fn encode(label: &str, der: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut b64 = String::with_capacity(der.len().div_ceil(3) * 4);
    for chunk in der.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | u32::from(b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                b64.push(char::from(ALPHABET[(n >> (18 - 6 * i) & 63) as usize]));
            } else {
                b64.push('=');
            }
        }
    }
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// The key as PKCS#8, which is what `ring` signs with. PKCS#1 RSA keys are
/// wrapped; SEC1 keys are refused with advice.
pub(crate) fn to_pkcs8(
    key: &PrivateKeyDer<'_>,
    origin: &str,
) -> Result<PrivatePkcs8KeyDer<'static>, TlsError> {
    match key {
        PrivateKeyDer::Pkcs8(k) => Ok(PrivatePkcs8KeyDer::from(k.secret_pkcs8_der().to_vec())),
        PrivateKeyDer::Pkcs1(k) => Ok(PrivatePkcs8KeyDer::from(wrap_pkcs1(k.secret_pkcs1_der()))),
        _ => Err(TlsError::Invalid {
            what: "private key",
            origin: origin.to_owned(),
            reason: "only PKCS#8 and PKCS#1 RSA keys can sign certificates; convert it with \
                     `openssl pkcs8 -topk8 -nocrypt`"
                .to_owned(),
        }),
    }
}

/// PKCS#8 `PrivateKeyInfo` around a PKCS#1 `RSAPrivateKey`:
/// `SEQUENCE { INTEGER 0, SEQUENCE { OID rsaEncryption, NULL }, OCTET STRING key }`.
fn wrap_pkcs1(pkcs1: &[u8]) -> Vec<u8> {
    const VERSION: [u8; 3] = [0x02, 0x01, 0x00];
    const RSA_ALGORITHM: [u8; 15] = [
        0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00,
    ];
    let mut octets = vec![0x04];
    der_len(&mut octets, pkcs1.len());
    octets.extend_from_slice(pkcs1);
    let body_len = VERSION.len() + RSA_ALGORITHM.len() + octets.len();
    let mut out = vec![0x30];
    der_len(&mut out, body_len);
    out.extend_from_slice(&VERSION);
    out.extend_from_slice(&RSA_ALGORITHM);
    out.extend_from_slice(&octets);
    out
}

fn der_len(out: &mut Vec<u8>, len: usize) {
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|&&b| b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn der_lengths() {
        let mut v = Vec::new();
        der_len(&mut v, 5);
        der_len(&mut v, 0x80);
        der_len(&mut v, 0x1234);
        assert_eq!(v, [5, 0x81, 0x80, 0x82, 0x12, 0x34]);
    }

    #[test]
    fn encoded_certificates_read_back() {
        for len in [0usize, 1, 2, 3, 4, 47, 48, 49, 200] {
            let der: Vec<u8> = (0..len).map(|i| (i * 37 % 256) as u8).collect();
            let text = encode_cert(&der);
            if len == 0 {
                continue;
            }
            let back = certs(text.as_bytes(), "x").unwrap();
            assert_eq!(back[0].as_ref(), der.as_slice(), "{len} bytes");
        }
    }

    #[test]
    fn garbage_is_not_pem() {
        assert!(matches!(certs(b"hello", "x"), Err(TlsError::NotPem { .. })));
        assert!(matches!(
            private_key(b"hello", "x"),
            Err(TlsError::NotPem { .. })
        ));
        let broken = b"-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n";
        assert!(certs(broken, "x").is_err());
    }
}
