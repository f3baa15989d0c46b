//! The certificate directory on a real file system.

use std::collections::HashSet;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Barrier};
use std::time::{Duration, SystemTime};

use aegis_tls::{
    CertAuthority, CertDir, CertInfo, NodeId, TlsError, TlsOptions, Validity, load_or_generate_tls,
    load_tls_config,
};

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn days(d: Duration) -> u64 {
    d.as_secs() / 86_400
}

#[test]
fn first_run_generates_the_reference_layout_with_private_keys() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("certs");
    let tls = load_or_generate_tls("node-1", &dir).unwrap();
    assert_eq!(tls.node_id().as_str(), "node-1");

    for f in [
        "ca-cert.pem",
        "ca-key.pem",
        "node-1-cert.pem",
        "node-1-key.pem",
    ] {
        assert!(dir.join(f).is_file(), "{f} missing");
    }
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&dir.join("ca-key.pem")), 0o600);
    assert_eq!(mode(&dir.join("node-1-key.pem")), 0o600);
    assert_eq!(mode(&dir.join("node-1-cert.pem")), 0o644);
    // No temporary files left behind.
    let names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(names.is_empty(), "{names:?}");

    let info = tls.cert_info();
    assert_eq!(info.common_name.as_deref(), Some("node-1"));
    assert_eq!(info.dns_names, ["node-1", "localhost"]);
    assert!(info.has_san("127.0.0.1") && info.has_san("::1"));
    assert!(!info.is_ca);
    let node_life = info.not_after.duration_since(SystemTime::now()).unwrap();
    assert!((89..=90).contains(&days(node_life)), "{node_life:?}");

    let ca = CertInfo::from_der(&tls.ca_certs()[0]).unwrap();
    assert!(ca.is_ca);
    let ca_life = ca.not_after.duration_since(SystemTime::now()).unwrap();
    assert!((364..=365).contains(&days(ca_life)), "{ca_life:?}");
}

#[test]
fn second_run_loads_without_rewriting() {
    let tmp = tempfile::tempdir().unwrap();
    let a = load_or_generate_tls("node-1", tmp.path()).unwrap();
    let before = std::fs::read(tmp.path().join("ca-cert.pem")).unwrap();
    let b = load_or_generate_tls("node-1", tmp.path()).unwrap();
    assert_eq!(a.cert_chain(), b.cert_chain());
    assert_eq!(
        before,
        std::fs::read(tmp.path().join("ca-cert.pem")).unwrap()
    );
    // A second node joins the same CA.
    let c = load_or_generate_tls("node-2", tmp.path()).unwrap();
    assert_eq!(a.ca_certs(), c.ca_certs());
}

#[test]
fn serial_numbers_are_random_and_never_repeat() {
    let ca = CertAuthority::generate(Validity::from_now(Duration::from_secs(3600))).unwrap();
    let id = NodeId::new("same-node").unwrap();
    let mut serials = HashSet::new();
    for _ in 0..200 {
        let cert = ca
            .issue(&id, Validity::from_now(Duration::from_secs(60)))
            .unwrap();
        let info = CertInfo::from_der(&cert.cert_der).unwrap();
        assert_eq!(info.serial.len(), 16, "{}", info.serial_hex());
        assert!(info.serial[0] & 0x80 == 0 && info.serial[0] != 0);
        assert!(serials.insert(info.serial), "serial repeated");
    }
}

#[test]
fn concurrent_first_starts_make_exactly_one_ca() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = Arc::new(tmp.path().join("fresh"));
    let n = 12;
    let barrier = Arc::new(Barrier::new(n));
    let handles: Vec<_> = (0..n)
        .map(|i| {
            let (dir, barrier) = (Arc::clone(&dir), Arc::clone(&barrier));
            std::thread::spawn(move || {
                barrier.wait();
                load_or_generate_tls(&format!("node-{i}"), &*dir)
            })
        })
        .collect();
    let configs: Vec<_> = handles
        .into_iter()
        .map(|h| h.join().unwrap().unwrap())
        .collect();
    let ca = std::fs::read(dir.join("ca-cert.pem")).unwrap();
    let ca = aegis_tls::pki_types::CertificateDer::from(rustls_pem_to_der(&ca));
    let ca = std::slice::from_ref(&ca);
    for tls in &configs {
        assert_eq!(tls.ca_certs(), ca, "{:?} holds another CA", tls.node_id());
        // Every node certificate chains to the one CA on disk.
        let opts = TlsOptions::from_cert_dir(&*dir, tls.node_id().as_str());
        load_tls_config(&opts).unwrap();
    }
}

fn rustls_pem_to_der(pem: &[u8]) -> Vec<u8> {
    use aegis_tls::pki_types::pem::PemObject;
    aegis_tls::pki_types::CertificateDer::from_pem_slice(pem)
        .unwrap()
        .to_vec()
}

#[test]
fn bad_node_ids_touch_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("never");
    for bad in ["", "a/b", "..", "has space", "x\0y", &"a".repeat(254)] {
        let err = load_or_generate_tls(bad, &dir).unwrap_err();
        assert!(matches!(err, TlsError::InvalidNodeId(_)), "{bad:?}: {err}");
    }
    assert!(!dir.exists());
    let err = load_or_generate_tls("../escape", &dir).unwrap_err();
    assert!(err.to_string().contains("'/'"), "{err}");
}

#[test]
fn a_directory_with_only_the_ca_certificate_cannot_issue() {
    let tmp = tempfile::tempdir().unwrap();
    load_or_generate_tls("node-1", tmp.path()).unwrap();
    std::fs::remove_file(tmp.path().join("ca-key.pem")).unwrap();
    // Existing identities still load.
    load_or_generate_tls("node-1", tmp.path()).unwrap();
    let err = load_or_generate_tls("node-2", tmp.path()).unwrap_err();
    assert!(matches!(err, TlsError::Missing { .. }), "{err}");
    assert!(err.to_string().contains("ca-key.pem"), "{err}");
}

#[test]
fn an_orphaned_ca_key_is_not_overwritten() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("ca-key.pem"), "precious").unwrap();
    let err = load_or_generate_tls("node-1", tmp.path()).unwrap_err();
    assert!(matches!(err, TlsError::Inconsistent { .. }), "{err}");
    assert_eq!(
        std::fs::read_to_string(tmp.path().join("ca-key.pem")).unwrap(),
        "precious"
    );
}

fn openssl(args: &[&str], dir: &Path) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("the openssl command runs (CI installs it)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The reference implementation writes RSA keys in PKCS#1 PEM. Build such a
/// directory with openssl and check that it loads, and that new node
/// certificates can be issued from its RSA CA.
#[test]
fn reads_a_reference_directory_with_pkcs1_rsa_keys() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    std::fs::write(
        d.join("node.ext"),
        "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\n\
         extendedKeyUsage=serverAuth,clientAuth\n\
         subjectAltName=DNS:go-node,DNS:localhost,IP:127.0.0.1,IP:::1\n",
    )
    .unwrap();
    openssl(&["genrsa", "-traditional", "-out", "ca-key.pem", "2048"], d);
    openssl(
        &[
            "req",
            "-x509",
            "-new",
            "-key",
            "ca-key.pem",
            "-days",
            "365",
            "-subj",
            "/O=aegis/CN=aegis CA",
            "-out",
            "ca-cert.pem",
        ],
        d,
    );
    openssl(
        &["genrsa", "-traditional", "-out", "go-node-key.pem", "2048"],
        d,
    );
    openssl(
        &[
            "req",
            "-new",
            "-key",
            "go-node-key.pem",
            "-subj",
            "/CN=go-node",
            "-out",
            "go-node.csr",
        ],
        d,
    );
    openssl(
        &[
            "x509",
            "-req",
            "-in",
            "go-node.csr",
            "-CA",
            "ca-cert.pem",
            "-CAkey",
            "ca-key.pem",
            "-CAcreateserial",
            "-days",
            "90",
            "-extfile",
            "node.ext",
            "-out",
            "go-node-cert.pem",
        ],
        d,
    );
    let key = std::fs::read_to_string(d.join("go-node-key.pem")).unwrap();
    assert!(
        key.starts_with("-----BEGIN RSA PRIVATE KEY-----"),
        "not PKCS#1: {key:.40}"
    );

    let tls = load_or_generate_tls("go-node", d).unwrap();
    assert_eq!(tls.node_id().as_str(), "go-node");
    // A Rust node joins the Go node's mesh: issued from the PKCS#1 RSA CA key.
    let rust = load_or_generate_tls("rust-node", d).unwrap();
    assert_eq!(rust.ca_certs(), tls.ca_certs());
    openssl(
        &["verify", "-CAfile", "ca-cert.pem", "rust-node-cert.pem"],
        d,
    );
}

#[test]
fn openssl_accepts_what_we_generate() {
    let tmp = tempfile::tempdir().unwrap();
    load_or_generate_tls("node-1", tmp.path()).unwrap();
    openssl(
        &["verify", "-CAfile", "ca-cert.pem", "node-1-cert.pem"],
        tmp.path(),
    );
    openssl(
        &[
            "verify",
            "-purpose",
            "sslclient",
            "-CAfile",
            "ca-cert.pem",
            "node-1-cert.pem",
        ],
        tmp.path(),
    );
}

#[test]
fn cert_dir_reports_what_it_created() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = CertDir::new(tmp.path());
    let first = dir.ensure_node("a").unwrap();
    assert!(first.ca && first.node);
    let second = dir.ensure_node("b").unwrap();
    assert!(!second.ca && second.node);
    let again = dir.ensure_node("a").unwrap();
    assert!(!again.ca && !again.node);
}

/// v1 generated and wrote a new key when `n1-key.pem` was there but
/// `n1-cert.pem` was not, although existing files are never to be replaced.
/// Now the certificate is issued for the key that is there.
#[test]
fn an_existing_node_key_is_never_replaced() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = CertDir::new(tmp.path());
    dir.ensure_node("n1").unwrap();
    let id = aegis_tls::NodeId::new("n1").unwrap();
    let key_before = std::fs::read(dir.node_key_path(&id)).unwrap();
    std::fs::remove_file(dir.node_cert_path(&id)).unwrap();
    let created = dir.ensure_node("n1").unwrap();
    assert!(created.node);
    assert_eq!(std::fs::read(dir.node_key_path(&id)).unwrap(), key_before);
    // The new certificate belongs to that key (load checks the match).
    aegis_tls::load_or_generate_tls("n1", tmp.path()).unwrap();

    // A certificate without its key is not "fixed" by replacing it either.
    std::fs::remove_file(dir.node_key_path(&id)).unwrap();
    let cert_before = std::fs::read(dir.node_cert_path(&id)).unwrap();
    let err = dir.ensure_node("n1").unwrap_err().to_string();
    assert!(err.contains("n1-key.pem"), "{err}");
    assert_eq!(std::fs::read(dir.node_cert_path(&id)).unwrap(), cert_before);
}

/// Every generated CA has a subject of its own, so that two meshes' CAs
/// are told apart (and a foreign chain fails as an unknown issuer).
#[test]
fn every_generated_ca_has_its_own_subject() {
    let subject = |ca: &aegis_tls::CertAuthority| {
        aegis_tls::CertInfo::from_der(ca.cert_der())
            .unwrap()
            .common_name
            .unwrap()
    };
    let v = aegis_tls::Validity::from_now(Duration::from_secs(3600));
    let (a, b) = (
        aegis_tls::CertAuthority::generate(v).unwrap(),
        aegis_tls::CertAuthority::generate(v).unwrap(),
    );
    assert_ne!(subject(&a), subject(&b));
    assert!(subject(&a).starts_with("aegis mesh CA "), "{}", subject(&a));
}

/// A fresh directory (a typo in the path, say) gets a new CA only when
/// allowed; with `require_existing_ca` it is an error naming the file.
#[test]
fn a_missing_ca_can_be_required_to_exist() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = CertDir::new(tmp.path().join("typo")).require_existing_ca(true);
    let err = dir.ensure_node("n1").unwrap_err().to_string();
    assert!(err.contains("ca-cert.pem"), "{err}");
    assert!(err.contains("require_existing_ca"), "{err}");
    assert!(!tmp.path().join("typo").join("n1-key.pem").exists());
}

/// Loose modes are found and named with the fix.
#[test]
fn loose_modes_on_keys_and_the_directory_are_named() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let dir = CertDir::new(tmp.path());
    dir.ensure_node("n1").unwrap();
    assert!(dir.permission_problems("n1").is_empty());
    let id = aegis_tls::NodeId::new("n1").unwrap();
    std::fs::set_permissions(
        dir.node_key_path(&id),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    std::fs::set_permissions(dir.ca_key_path(), std::fs::Permissions::from_mode(0o666)).unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let problems = dir.permission_problems("n1");
    assert_eq!(problems.len(), 3, "{problems:?}");
    assert!(
        problems
            .iter()
            .any(|p| p.contains("n1-key.pem") && p.contains("0644") && p.contains("chmod 600"))
    );
    assert!(
        problems
            .iter()
            .any(|p| p.contains("ca-key.pem") && p.contains("0666"))
    );
    assert!(
        problems
            .iter()
            .any(|p| p.contains("0777") && p.contains("chmod 700"))
    );
    // Warned about by default; refused when asked, naming every problem.
    dir.ensure_node("n1").unwrap();
    let strict = CertDir::new(tmp.path()).refuse_loose_permissions(true);
    let err = strict.ensure_node("n1").unwrap_err();
    assert!(matches!(err, TlsError::LoosePermissions { ref problems, .. } if problems.len() == 3));
    let text = err.to_string();
    assert!(
        text.contains("chmod 600") && text.contains("chmod 700"),
        "{text}"
    );
}

/// A node started on an expired certificate is renewed at start when the
/// directory holds the CA key (same key, new certificate); without the CA
/// key the load fails saying how to renew.
#[test]
fn an_expired_certificate_is_renewed_at_start_when_the_ca_key_is_there() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = CertDir::new(tmp.path());
    dir.ensure_node("n1").unwrap();
    let id = NodeId::new("n1").unwrap();
    let ca = CertAuthority::from_pem(
        &std::fs::read_to_string(dir.ca_cert_path()).unwrap(),
        &std::fs::read_to_string(dir.ca_key_path()).unwrap(),
        "test",
    )
    .unwrap();
    let key = std::fs::read_to_string(dir.node_key_path(&id)).unwrap();
    let expired = Validity {
        not_before: SystemTime::now() - Duration::from_secs(3600),
        not_after: SystemTime::now() - Duration::from_secs(60),
    };
    let write_expired = || {
        let cert = ca.issue_for_key(&id, &key, "test", expired).unwrap();
        std::fs::write(dir.node_cert_path(&id), cert.cert_pem).unwrap();
    };
    write_expired();
    assert!(dir.ensure_node("n1").unwrap().node, "renewed");
    let tls = load_or_generate_tls("n1", tmp.path()).unwrap();
    // Renewed as long-lived as the certificate it replaces (59 minutes).
    let info = tls.cert_info();
    let span = info.not_after.duration_since(info.not_before).unwrap();
    assert!(span.as_secs().abs_diff(3540) <= 2, "{span:?}");
    assert!(info.is_valid_at(SystemTime::now()));
    assert_eq!(
        std::fs::read_to_string(dir.node_key_path(&id)).unwrap(),
        key
    );

    // Without the CA key: an error that says what happened and what to do.
    write_expired();
    std::fs::remove_file(dir.ca_key_path()).unwrap();
    let err = load_or_generate_tls("n1", tmp.path())
        .unwrap_err()
        .to_string();
    assert!(err.contains("expired"), "{err}");
    assert!(err.contains("renew"), "{err}");
}

/// A certificate that lives seconds is not backdated by minutes (two thirds
/// of its span would then lie past its end, and renewal at 2/3 of its life
/// would come too late), and renewal keeps its lifetime and its key.
#[test]
fn short_lived_certificates_renew_in_time_and_keep_their_lifetime() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = CertDir::new(tmp.path()).with_node_validity(Duration::from_secs(6));
    dir.ensure_node("n1").unwrap();
    let first = dir.node_cert_info("n1").unwrap();
    let span = first.not_after.duration_since(first.not_before).unwrap();
    assert!(span <= Duration::from_secs(8), "{span:?}");
    let renew_at = aegis_tls::renewal_time(&first, 2.0 / 3.0);
    assert!(renew_at < first.not_after - Duration::from_secs(1));
    assert_eq!(dir.renewal_due("n1", 2.0 / 3.0).unwrap(), None);

    let key = std::fs::read_to_string(tmp.path().join("n1-key.pem")).unwrap();
    let renewed = dir.renew_node("n1").unwrap();
    assert_ne!(renewed.serial, first.serial);
    let new_span = renewed
        .not_after
        .duration_since(renewed.not_before)
        .unwrap();
    assert!(
        new_span.as_secs().abs_diff(span.as_secs()) <= 1,
        "{new_span:?} vs {span:?}"
    );
    assert_eq!(
        std::fs::read_to_string(tmp.path().join("n1-key.pem")).unwrap(),
        key
    );
    load_or_generate_tls("n1", tmp.path()).unwrap();
}

/// A CA rollover: the bundle trusts both CAs, the new one signs, a node
/// certificate from the old CA is due ("NewCa"), finishing refuses while
/// one is left and names it, and succeeds once all are renewed.
#[test]
fn a_ca_rollover_runs_in_steps_and_refuses_to_strand_a_node() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = CertDir::new(tmp.path());
    dir.ensure_node("n1").unwrap();
    dir.ensure_node("n2").unwrap();
    let old = dir.signing_ca().unwrap().unwrap();
    assert!(
        dir.finish_ca_rotation(false).unwrap().is_empty(),
        "nothing to finish"
    );

    let new = dir.rotate_ca().unwrap();
    assert_ne!(new.fingerprint_sha256, old.fingerprint_sha256);
    let bundle = dir.ca_bundle().unwrap();
    assert_eq!(bundle.len(), 2);
    assert_eq!(
        dir.signing_ca().unwrap().unwrap().fingerprint_sha256,
        new.fingerprint_sha256
    );
    // Old certificates still load against the bundle: nothing breaks yet.
    load_tls_config(&aegis_tls::TlsOptions::from_cert_dir(tmp.path(), "n1")).unwrap();
    assert_eq!(
        dir.renewal_due("n1", 2.0 / 3.0).unwrap(),
        Some(aegis_tls::Renewal::NewCa)
    );
    let again = dir.rotate_ca().unwrap_err().to_string();
    assert!(again.contains("rollover is in progress"), "{again}");

    dir.renew_node("n1").unwrap();
    let refused = dir.finish_ca_rotation(false).unwrap_err().to_string();
    assert!(
        refused.contains("n2") && !refused.contains("n1,"),
        "{refused}"
    );
    dir.renew_node("n2").unwrap();
    let dropped = dir.finish_ca_rotation(false).unwrap();
    assert_eq!(dropped.len(), 1);
    assert_eq!(dropped[0].fingerprint_sha256, old.fingerprint_sha256);
    assert_eq!(dir.ca_bundle().unwrap().len(), 1);
    for id in ["n1", "n2"] {
        let tls = load_or_generate_tls(id, tmp.path()).unwrap();
        assert_eq!(tls.ca_certs().len(), 1);
        assert_eq!(dir.renewal_due(id, 2.0 / 3.0).unwrap(), None);
    }
}
