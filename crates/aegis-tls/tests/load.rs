//! `load_tls_config`: every check, and the error each failure gets.

use std::path::Path;
use std::time::{Duration, SystemTime};

use aegis_tls::{
    CertAuthority, CertificateSource, NodeId, TlsConfig, TlsError, TlsOptions, Validity,
    load_or_generate_tls, load_tls_config,
};

fn setup() -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    load_or_generate_tls("node-1", tmp.path()).unwrap();
    load_or_generate_tls("node-2", tmp.path()).unwrap();
    tmp
}

fn opts(d: &Path) -> TlsOptions {
    TlsOptions::from_cert_dir(d, "node-1")
}

#[test]
fn loads_files() {
    let tmp = setup();
    let tls = load_tls_config(&opts(tmp.path())).unwrap();
    assert_eq!(tls.node_id().as_str(), "node-1");
    assert!(tls.not_after() > SystemTime::now());
    assert_eq!(tls.client_config().alpn_protocols, [b"h2".to_vec()]);
}

#[test]
fn missing_file_is_named() {
    let tmp = setup();
    let mut o = opts(tmp.path());
    o.key_file = tmp.path().join("nope-key.pem");
    let err = load_tls_config(&o).unwrap_err();
    assert!(matches!(err, TlsError::Missing { .. }), "{err}");
    assert!(err.to_string().contains("nope-key.pem"), "{err}");
}

#[test]
fn not_pem_is_named() {
    let tmp = setup();
    let junk = tmp.path().join("junk.pem");
    std::fs::write(&junk, b"\x00\xffnot a certificate").unwrap();
    let mut o = opts(tmp.path());
    o.cert_file = junk.clone();
    let err = load_tls_config(&o).unwrap_err();
    assert!(
        matches!(
            err,
            TlsError::NotPem {
                what: "certificate",
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("junk.pem"));

    let mut o = opts(tmp.path());
    o.key_file = junk;
    let err = load_tls_config(&o).unwrap_err();
    assert!(
        matches!(
            err,
            TlsError::NotPem {
                what: "private key",
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn a_pem_block_with_garbage_inside_is_invalid_not_a_panic() {
    let tmp = setup();
    let bad = tmp.path().join("bad-cert.pem");
    std::fs::write(
        &bad,
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let mut o = opts(tmp.path());
    o.cert_file = bad;
    let err = load_tls_config(&o).unwrap_err();
    assert!(matches!(err, TlsError::Invalid { .. }), "{err}");
}

#[test]
fn key_of_another_node_does_not_match() {
    let tmp = setup();
    let mut o = opts(tmp.path());
    o.key_file = tmp.path().join("node-2-key.pem");
    let err = load_tls_config(&o).unwrap_err();
    assert!(matches!(err, TlsError::KeyMismatch { .. }), "{err}");
    assert!(err.to_string().contains("node-2-key.pem"), "{err}");
}

#[test]
fn certificate_from_another_ca_is_refused_unless_unchecked() {
    let tmp = setup();
    let other = tempfile::tempdir().unwrap();
    load_or_generate_tls("node-1", other.path()).unwrap();
    let mut o = opts(tmp.path());
    o.ca_file = other.path().join("ca-cert.pem");
    let err = load_tls_config(&o).unwrap_err();
    assert!(matches!(err, TlsError::NotSignedByCa { .. }), "{err}");
    assert!(err.to_string().contains("not signed by the CA"), "{err}");
    load_tls_config(&o.with_verify_chain(false)).unwrap();
}

#[test]
fn a_ca_bundle_trusts_each_of_its_cas() {
    let tmp = setup();
    let other = tempfile::tempdir().unwrap();
    load_or_generate_tls("node-1", other.path()).unwrap();
    let bundle = tmp.path().join("bundle.pem");
    let mut text = std::fs::read_to_string(other.path().join("ca-cert.pem")).unwrap();
    text += &std::fs::read_to_string(tmp.path().join("ca-cert.pem")).unwrap();
    std::fs::write(&bundle, text).unwrap();
    let mut o = opts(tmp.path());
    o.ca_file = bundle;
    let tls = load_tls_config(&o).unwrap();
    assert_eq!(tls.ca_certs().len(), 2);
    assert_eq!(tls.root_store().len(), 2);
}

fn expired_pem() -> (String, String, String) {
    let ca = CertAuthority::generate(Validity::from_now(Duration::from_secs(3600))).unwrap();
    let past = SystemTime::now() - Duration::from_secs(10 * 86_400);
    let cert = ca
        .issue(
            &NodeId::new("old-node").unwrap(),
            Validity {
                not_before: past,
                not_after: past + Duration::from_secs(86_400),
            },
        )
        .unwrap();
    (cert.cert_pem, cert.key_pem, ca.cert_pem().to_owned())
}

#[test]
fn expired_certificate_names_the_date() {
    let (cert, key, ca) = expired_pem();
    let err = TlsConfig::from_pem(&cert, &key, &ca, &TlsOptions::default()).unwrap_err();
    let TlsError::Expired { not_after, .. } = &err else {
        panic!("expected Expired, got {err}");
    };
    let expected_year = time_year(SystemTime::now() - Duration::from_secs(9 * 86_400));
    assert!(not_after.starts_with(&expected_year), "{not_after}");
    assert!(err.to_string().contains("expired on"), "{err}");
    // allow_expired forgives the dates but still checks the signature.
    let tls = TlsConfig::from_pem(
        &cert,
        &key,
        &ca,
        &TlsOptions::default().with_allow_expired(true),
    )
    .unwrap();
    assert_eq!(tls.node_id().as_str(), "old-node");
    let other = CertAuthority::generate(Validity::from_now(Duration::from_secs(3600))).unwrap();
    let err = TlsConfig::from_pem(
        &cert,
        &key,
        other.cert_pem(),
        &TlsOptions::default().with_allow_expired(true),
    )
    .unwrap_err();
    assert!(matches!(err, TlsError::NotSignedByCa { .. }), "{err}");
}

fn time_year(t: SystemTime) -> String {
    let secs = t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs();
    // Good enough for a year prefix check: 365.2425 days a year.
    (1970 + secs / 31_556_952).to_string()
}

#[test]
fn required_sans_must_all_be_present() {
    let tmp = setup();
    load_tls_config(&opts(tmp.path()).with_required_sans([
        "node-1",
        "localhost",
        "127.0.0.1",
        "::1",
    ]))
    .unwrap();
    let err = load_tls_config(&opts(tmp.path()).with_required_sans(["node-1", "api.example"]))
        .unwrap_err();
    let TlsError::MissingSan { san, .. } = &err else {
        panic!("expected MissingSan, got {err}");
    };
    assert_eq!(san, "api.example");
}

#[test]
fn env_source_reads_pem_text() {
    let tmp = setup();
    let read = |f: &str| std::fs::read_to_string(tmp.path().join(f)).unwrap();
    // Unique names: tests in this binary run in parallel threads.
    let (c, k, a) = (
        "AEGIS_TEST_ENV_CERT",
        "AEGIS_TEST_ENV_KEY",
        "AEGIS_TEST_ENV_CA",
    );
    set_env(c, &read("node-1-cert.pem"));
    set_env(k, &read("node-1-key.pem"));
    set_env(a, &read("ca-cert.pem"));
    let o = TlsOptions::from_env().with_env_vars(c, k, a);
    assert_eq!(o.source, CertificateSource::Env);
    let tls = load_tls_config(&o).unwrap();
    assert_eq!(tls.node_id().as_str(), "node-1");

    let missing = TlsOptions::from_env().with_env_vars("AEGIS_TEST_ENV_UNSET", k, a);
    let err = load_tls_config(&missing).unwrap_err();
    assert!(matches!(err, TlsError::MissingEnv { .. }), "{err}");
    assert!(err.to_string().contains("AEGIS_TEST_ENV_UNSET"), "{err}");

    set_env("AEGIS_TEST_ENV_JUNK", "garbage");
    let junk = TlsOptions::from_env().with_env_vars(c, "AEGIS_TEST_ENV_JUNK", a);
    let err = load_tls_config(&junk).unwrap_err();
    assert!(err.to_string().contains("$AEGIS_TEST_ENV_JUNK"), "{err}");
}

fn set_env(name: &str, value: &str) {
    // SAFETY: only this test reads or writes these variables, and nothing in
    // this test binary reads the environment concurrently by other names.
    #[allow(unsafe_code)]
    unsafe {
        std::env::set_var(name, value);
    }
}

#[test]
fn vault_is_refused_clearly() {
    let o = TlsOptions {
        source: CertificateSource::Vault,
        ..TlsOptions::default()
    };
    let err = load_tls_config(&o).unwrap_err();
    assert!(matches!(err, TlsError::UnsupportedSource("vault")), "{err}");
    assert!(err.to_string().contains("not supported"));
}

#[test]
fn a_certificate_whose_cn_is_not_a_node_id_is_refused() {
    // A CA certificate has CN "aegis mesh CA": not a node ID.
    let tmp = setup();
    let mut o = opts(tmp.path());
    o.cert_file = tmp.path().join("ca-cert.pem");
    o.key_file = tmp.path().join("ca-key.pem");
    let err = load_tls_config(&o).unwrap_err();
    assert!(err.to_string().contains("not a valid node ID"), "{err}");
}

/// `to_pem` gives back what the configuration was loaded from.
#[test]
fn pem_text_round_trips() {
    let tmp = tempfile::tempdir().unwrap();
    let tls = aegis_tls::load_or_generate_tls("n1", tmp.path()).unwrap();
    let (chain, key, cas) = tls.to_pem();
    let again =
        aegis_tls::TlsConfig::from_pem(&chain, &key, &cas, &aegis_tls::TlsOptions::default())
            .unwrap();
    assert_eq!(again.cert_chain(), tls.cert_chain());
    assert_eq!(again.ca_certs(), tls.ca_certs());
    assert!(key.starts_with("-----BEGIN PRIVATE KEY-----"));
}
