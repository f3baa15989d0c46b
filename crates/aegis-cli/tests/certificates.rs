//! Certificates on live meshes of `aegis node` processes: renewal without
//! a restart, a CA rollover, expired certificates at start, a mistyped
//! certificate directory. Real processes, real certificates, real sockets.

mod support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use aegis::peer::transport::{Credentials, CredentialsWatcher, peer_certificate};
use aegis::tls::{CertAuthority, CertDir, Validity};
use support::{Caller, DEADLINE, aegis, aegis_ok, node_id, node_n1, start_node, wait_until};

fn start_mesh(dir: &Path) -> Vec<support::NodeProcess> {
    let n1 = start_node("n1", dir, &[]);
    let peer = vec!["--peer".to_owned(), format!("n1@{}", n1.address)];
    let n2 = start_node("n2", dir, &peer);
    let n3 = start_node("n3", dir, &peer);
    vec![n1, n2, n3]
}

fn targets(nodes: &[support::NodeProcess]) -> Vec<(String, String)> {
    nodes
        .iter()
        .map(|n| (n.id.clone(), n.address.clone()))
        .collect()
}

fn client(dir: &Path) -> Credentials {
    Credentials::new(aegis::load_or_generate_tls("client", dir).unwrap())
}

/// Three nodes whose certificates live 6 seconds (the CA key in their
/// directory) are called continuously for 30 s, over long-lived
/// connections and new ones: no call fails, and every node presents a new
/// certificate again and again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn six_second_certificates_renew_live_without_a_failed_call() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_str().unwrap();
    aegis_ok(&[
        "certs",
        "gen",
        "--dir",
        dir,
        "--validity",
        "6s",
        "n1",
        "n2",
        "n3",
    ]);
    aegis_ok(&["certs", "gen", "--dir", dir, "client"]);
    let first: Vec<String> = ["n1", "n2", "n3"]
        .iter()
        .map(|id| CertDir::new(dir).node_cert_info(id).unwrap().serial_hex())
        .collect();
    let nodes = start_mesh(tmp.path());
    let caller = Caller::start(client(tmp.path()), &targets(&nodes));
    let started = Instant::now();
    wait_until(
        "30 s of calls, each node renewed 4 times",
        Duration::from_secs(120),
        || {
            started.elapsed() >= Duration::from_secs(30)
                && ["n1", "n2", "n3"].iter().all(|n| caller.serials_of(n) >= 5)
        },
    )
    .await;
    let served: Vec<usize> = ["n1", "n2", "n3"]
        .iter()
        .map(|n| caller.serials_of(n))
        .collect();
    let (ok, failed, errors) = caller.stop().await;
    eprintln!("{ok} calls, {failed} failed, certificates served per node: {served:?}");
    assert_eq!(failed, 0, "failed calls: {errors:?}");
    for (id, first) in ["n1", "n2", "n3"].iter().zip(first) {
        let now = CertDir::new(dir).node_cert_info(id).unwrap();
        assert_ne!(now.serial_hex(), first, "{id} on disk was never renewed");
        assert!(now.is_valid_at(SystemTime::now()), "{id}");
    }
}

/// A CA rollover on a live mesh sharing one directory, with continuous
/// calls: start (new CA, bundle of both), every node re-issues its own
/// certificate from the new CA after the grace, finish (old CA dropped).
/// No call fails; at the end every certificate chains to the new CA only,
/// and a client still holding an old-CA certificate is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ca_rollover_on_a_live_mesh_fails_no_call() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_str().unwrap();
    aegis_ok(&["certs", "gen", "--dir", dir, "n1", "n2", "n3", "client"]);
    let nodes = start_mesh(tmp.path());
    let old_client = aegis::load_or_generate_tls("client", dir).unwrap();
    let credentials = client(tmp.path());
    // The test's client behaves as a node: it follows the directory.
    let watcher = CredentialsWatcher::for_cert_dir(credentials.clone(), CertDir::new(dir)).spawn();
    let caller = Caller::start(credentials.clone(), &targets(&nodes));
    wait_until("calls flowing", DEADLINE, || {
        caller.ok.load(std::sync::atomic::Ordering::Relaxed) > 20
    })
    .await;

    let out = aegis_ok(&["certs", "rotate-ca", "--dir", dir]);
    assert!(out.contains("signs from now on"), "{out}");
    let cert_dir = CertDir::new(dir);
    let new_ca = cert_dir.signing_ca().unwrap().unwrap().fingerprint_sha256;
    assert_eq!(cert_dir.ca_bundle().unwrap().len(), 2);
    let from_new_ca = |id: &str| {
        cert_dir
            .issuer_of(id)
            .ok()
            .flatten()
            .is_some_and(|ca| ca.fingerprint_sha256 == new_ca)
    };
    wait_until(
        "every certificate re-issued from the new CA",
        Duration::from_secs(60),
        || {
            ["n1", "n2", "n3", "client"]
                .iter()
                .all(|id| from_new_ca(id))
        },
    )
    .await;
    // Each node serves its new certificate before the old CA goes.
    for node in &nodes {
        let on_disk = cert_dir.node_cert_info(&node.id).unwrap().serial_hex();
        let mut served = String::new();
        wait_until(
            &format!("{} serving its new certificate", node.id),
            DEADLINE,
            || {
                served = caller
                    .serials
                    .lock()
                    .unwrap()
                    .iter()
                    .rev()
                    .find(|(n, _)| *n == node.id)
                    .map(|(_, s)| s.clone())
                    .unwrap_or_default();
                served == on_disk
            },
        )
        .await;
    }

    let out = aegis_ok(&["certs", "rotate-ca", "--dir", dir, "--finish"]);
    assert!(out.contains("dropped CA"), "{out}");
    assert_eq!(cert_dir.ca_bundle().unwrap().len(), 1);
    // Once the nodes have reloaded the bundle, the old CA's certificates
    // are refused; calls with the new ones go on.
    let n1 = nodes[0].address.clone();
    let mut refused = false;
    let end = Instant::now() + DEADLINE;
    while !refused {
        assert!(
            Instant::now() < end,
            "n1 still accepts a certificate of the old CA"
        );
        refused = peer_certificate(&old_client, &n1, Duration::from_secs(5))
            .await
            .is_err();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let before = caller.ok.load(std::sync::atomic::Ordering::Relaxed);
    wait_until("calls after the finish", DEADLINE, || {
        caller.ok.load(std::sync::atomic::Ordering::Relaxed) > before + 30
    })
    .await;
    let (ok, failed, errors) = caller.stop().await;
    watcher.abort();
    eprintln!("{ok} calls during the rollover, {failed} failed");
    assert_eq!(failed, 0, "failed calls: {errors:?}");
    for id in ["n1", "n2", "n3", "client"] {
        assert!(from_new_ca(id), "{id}");
    }
}

/// Writes an expired certificate for `id`'s existing key.
fn expire(dir: &Path, id: &str) -> String {
    let ca = CertAuthority::from_pem(
        &std::fs::read_to_string(dir.join("ca-cert.pem")).unwrap(),
        &std::fs::read_to_string(dir.join("ca-key.pem")).unwrap(),
        "test",
    )
    .unwrap();
    let key = std::fs::read_to_string(dir.join(format!("{id}-key.pem"))).unwrap();
    let now = SystemTime::now();
    let expired = Validity {
        not_before: now - Duration::from_secs(7200),
        not_after: now - Duration::from_secs(3600),
    };
    let cert = ca
        .issue_for_key(&node_id(id), &key, "test", expired)
        .unwrap();
    std::fs::write(dir.join(format!("{id}-cert.pem")), &cert.cert_pem).unwrap();
    aegis::tls::CertInfo::from_der(&cert.cert_der)
        .unwrap()
        .serial_hex()
}

/// A node started on an expired certificate comes up with a fresh one when
/// its directory holds the CA key; without it, it refuses to start and
/// says how to renew.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_certificate_at_start() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_str().unwrap();
    aegis_ok(&["certs", "gen", "--dir", dir, "n1", "client"]);
    let expired = expire(tmp.path(), "n1");

    // Without the CA key (a copy of the files a node may hold).
    let managed = tempfile::tempdir().unwrap();
    for f in ["ca-cert.pem", "n1-cert.pem", "n1-key.pem"] {
        std::fs::copy(tmp.path().join(f), managed.path().join(f)).unwrap();
    }
    let out = aegis(&node_n1(managed.path().to_str().unwrap()));
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("expired on") && stderr.contains("aegis certs renew"),
        "{stderr}"
    );

    // With the CA key: renewed at start, and served.
    let node = start_node("n1", tmp.path(), &[]);
    let served = peer_certificate(&client(tmp.path()), &node.address, Duration::from_secs(5))
        .await
        .unwrap();
    assert_ne!(served.serial_hex(), expired);
    assert!(served.is_valid_at(SystemTime::now()));
}

/// A mistyped certificate directory: a node refuses it with --require-ca,
/// and without it starts a CA of its own with a warning naming the
/// directory.
#[test]
fn a_mistyped_certificate_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let typo = tmp.path().join("cets");
    let args = node_n1(typo.to_str().unwrap());
    let mut refused = args.clone();
    refused.push("--require-ca");
    let out = aegis(&refused);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("require_existing_ca") && stderr.contains("cets"),
        "{stderr}"
    );
    assert!(!typo.join("ca-key.pem").exists());

    let mut child = Command::new(env!("CARGO_BIN_EXE_aegis"))
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if line.contains("WARN") && line.contains("created a new mesh CA") {
                let _ = tx.send(line);
            }
        }
    });
    let warning = rx.recv_timeout(DEADLINE);
    let _ = child.kill();
    let _ = child.wait();
    let warning = warning.expect("a warning about the new CA");
    assert!(warning.contains("cets"), "{warning}");
}

/// Bad flags give the usage and status 2; --help gives it and status 0.
#[test]
fn bad_flags_exit_2_with_the_usage() {
    for args in [
        vec!["certs", "gen", "--dir"],
        vec!["certs", "gen", "--dir", "d", "--validity", "6x", "n1"],
        vec!["certs", "gen", "--dir", "d", "not a node id"],
        vec!["certs", "frobnicate"],
        vec!["node", "--bogus"],
        // A user for etcd without etcd discovery.
        vec!["node", "--id", "n1", "--etcd-user", "mesh-node"],
        vec!["members", "--cert-dir", "d", "--id", "c"],
        vec![
            "ping",
            "--cert-dir",
            "d",
            "--id",
            "c",
            "--peer",
            "h:1",
            "--streams",
            "0",
        ],
        vec!["nonsense"],
        vec![],
    ] {
        let out = aegis(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("error:") && stderr.contains("usage:"),
            "{args:?}: {stderr}"
        );
    }
    for args in [
        vec!["--help"],
        vec!["certs", "--help"],
        vec!["node", "--help"],
        vec!["members", "--help"],
        vec!["ping", "--help"],
        vec!["certs", "gen", "--help"],
    ] {
        let out = aegis(&args);
        assert_eq!(out.status.code(), Some(0), "{args:?}");
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("usage:"),
            "{args:?}"
        );
    }
}
