//! Credentials that change while a server runs: renewal, replaced files,
//! bad files; real certificates, real sockets, real handshakes.

use std::path::Path;
use std::time::{Duration, Instant};

use aegis_tls::{CertDir, NodeId, TlsOptions};
use aegis_transport::{
    ChannelOptions, Credentials, CredentialsWatcher, RenewalConfig, ServerConfig, ServerHandle,
    mtls_channel, peer_certificate, serve_routes,
};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

const DEADLINE: Duration = Duration::from_secs(20);

fn fast() -> RenewalConfig {
    RenewalConfig {
        poll_interval: Duration::from_millis(100),
        rollover_grace: Duration::from_millis(300),
        ..RenewalConfig::default()
    }
}

async fn health_server(credentials: &Credentials) -> ServerHandle {
    let (_reporter, service) = tonic_health::server::health_reporter();
    let mut routes = tonic::service::RoutesBuilder::default();
    routes.add_service(service);
    serve_routes(
        credentials,
        "127.0.0.1:0",
        routes.routes(),
        ServerConfig::default(),
    )
    .await
    .unwrap()
}

/// The serial of the certificate a new connection to `server` is shown.
async fn served_serial(client: &Credentials, server: &ServerHandle) -> String {
    peer_certificate(
        client,
        &server.local_addr().to_string(),
        Duration::from_secs(5),
    )
    .await
    .unwrap()
    .serial_hex()
}

async fn check(client: &mut HealthClient<tonic::transport::Channel>) {
    client
        .check(HealthCheckRequest::default())
        .await
        .expect("a call over the connection opened before the renewal");
}

/// A node whose directory holds the CA key renews its 4-second certificate
/// before it runs out, again and again, without a restart: every new
/// handshake succeeds and shows a valid certificate, and a connection
/// opened at the start keeps answering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_lived_certificate_is_renewed_live_again_and_again() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = CertDir::new(tmp.path()).with_node_validity(Duration::from_secs(4));
    dir.ensure_node("server").unwrap();
    CertDir::new(tmp.path()).ensure_node("client").unwrap();
    let server_creds =
        Credentials::new(aegis_tls::load_or_generate_tls("server", tmp.path()).unwrap());
    let client = Credentials::new(aegis_tls::load_or_generate_tls("client", tmp.path()).unwrap());
    let watcher = CredentialsWatcher::for_cert_dir(server_creds.clone(), dir)
        .with_config(fast())
        .spawn();
    let server = health_server(&server_creds).await;
    let id = NodeId::new("server").unwrap();
    let channel = mtls_channel(
        &client,
        &id,
        &server.local_addr().to_string(),
        &ChannelOptions::default(),
    )
    .unwrap();
    let mut long_lived = HealthClient::new(channel);
    check(&mut long_lived).await;

    let mut serials = vec![served_serial(&client, &server).await];
    let end = Instant::now() + DEADLINE;
    while serials.len() < 4 {
        assert!(
            Instant::now() < end,
            "only {} certificates served: {serials:?}",
            serials.len()
        );
        // Every new connection, whenever it comes, handshakes.
        let serial = served_serial(&client, &server).await;
        if serials.last() != Some(&serial) {
            serials.push(serial);
        }
        check(&mut long_lived).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A fresh channel after several renewals works too.
    let fresh = mtls_channel(
        &client,
        &id,
        &server.local_addr().to_string(),
        &ChannelOptions::default(),
    )
    .unwrap();
    check(&mut HealthClient::new(fresh)).await;
    watcher.abort();
    server.shutdown(Duration::from_secs(1)).await.unwrap();
}

/// Copies the node's files (not the CA key) to a directory of its own, as
/// a tool like cert-manager would provide them.
fn managed_copy(from: &Path, to: &Path, id: &str) {
    for name in [
        "ca-cert.pem".to_owned(),
        format!("{id}-cert.pem"),
        format!("{id}-key.pem"),
    ] {
        std::fs::copy(from.join(&name), to.join(&name)).unwrap();
    }
}

/// Atomically replaces `path` (a rename, as tools that manage certificates do).
fn replace(path: &Path, data: &[u8]) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, data).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Certificates managed by another tool: the node cannot renew (no CA key)
/// and reloads files that change. Half-replaced files (a certificate
/// without its key yet) and another node's certificate are refused while
/// the current credentials stay in use; the complete replacement is served
/// on the next look.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn externally_replaced_files_are_served_and_bad_ones_refused() {
    let issuing = tempfile::tempdir().unwrap();
    let managed = tempfile::tempdir().unwrap();
    let ca_dir = CertDir::new(issuing.path());
    ca_dir.ensure_node("server").unwrap();
    ca_dir.ensure_node("client").unwrap();
    ca_dir.ensure_node("other").unwrap();
    managed_copy(issuing.path(), managed.path(), "server");
    let opts = TlsOptions::from_cert_dir(managed.path(), "server");
    let server_creds = Credentials::new(aegis_tls::load_tls_config(&opts).unwrap());
    let client =
        Credentials::new(aegis_tls::load_or_generate_tls("client", issuing.path()).unwrap());
    let mut watcher =
        CredentialsWatcher::new(server_creds.clone(), opts.clone()).with_config(fast());
    let server = health_server(&server_creds).await;
    let first = served_serial(&client, &server).await;
    assert_eq!(watcher.check(), Default::default(), "nothing changed yet");

    // A new key and certificate, issued elsewhere; the certificate lands first.
    let fresh = tempfile::tempdir().unwrap();
    std::fs::copy(
        issuing.path().join("ca-cert.pem"),
        fresh.path().join("ca-cert.pem"),
    )
    .unwrap();
    std::fs::copy(
        issuing.path().join("ca-key.pem"),
        fresh.path().join("ca-key.pem"),
    )
    .unwrap();
    CertDir::new(fresh.path()).ensure_node("server").unwrap();
    let new_cert = std::fs::read(fresh.path().join("server-cert.pem")).unwrap();
    let new_key = std::fs::read(fresh.path().join("server-key.pem")).unwrap();
    replace(&opts.cert_file, &new_cert);
    assert!(
        !watcher.check().reloaded,
        "a certificate without its key is not taken"
    );
    assert_eq!(
        served_serial(&client, &server).await,
        first,
        "the old one stays in use"
    );

    // Then the key: the pair is taken, and the next handshake shows it.
    replace(&opts.key_file, &new_key);
    let watching = watcher.spawn();
    let replaced = Instant::now();
    let new_serial = aegis_tls::CertDir::new(fresh.path())
        .node_cert_info("server")
        .unwrap()
        .serial_hex();
    loop {
        if served_serial(&client, &server).await == new_serial {
            break;
        }
        assert!(
            replaced.elapsed() < DEADLINE,
            "the replaced files were never served"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!("replaced files served after {:?}", replaced.elapsed());
    watching.abort();

    // Another node's files in this node's place: refused, nothing changes.
    let mut watcher =
        CredentialsWatcher::new(server_creds.clone(), opts.clone()).with_config(fast());
    replace(
        &opts.cert_file,
        &std::fs::read(issuing.path().join("other-cert.pem")).unwrap(),
    );
    replace(
        &opts.key_file,
        &std::fs::read(issuing.path().join("other-key.pem")).unwrap(),
    );
    assert!(!watcher.check().reloaded);
    assert_eq!(server_creds.node_id().as_str(), "server");
    assert_eq!(served_serial(&client, &server).await, new_serial);
    server.shutdown(Duration::from_secs(1)).await.unwrap();
}

/// Replacing credentials by hand with another node's is refused.
#[test]
fn credentials_of_another_node_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let a = aegis_tls::load_or_generate_tls("a", tmp.path()).unwrap();
    let b = aegis_tls::load_or_generate_tls("b", tmp.path()).unwrap();
    let creds = Credentials::new(a);
    let err = creds.replace(b).unwrap_err().to_string();
    assert!(
        err.contains("names node b") && err.contains("this node is a"),
        "{err}"
    );
}

/// A certificate nothing here can renew gets one warning once past 80 % of
/// its life; one that is not there yet gets none.
#[test]
fn an_aging_certificate_that_cannot_be_renewed_is_warned_about_once() {
    let issuing = tempfile::tempdir().unwrap();
    let managed = tempfile::tempdir().unwrap();
    CertDir::new(issuing.path()).ensure_node("server").unwrap();
    managed_copy(issuing.path(), managed.path(), "server");
    let opts = TlsOptions::from_cert_dir(managed.path(), "server");
    let young = Credentials::new(aegis_tls::load_tls_config(&opts).unwrap());
    let mut watcher = CredentialsWatcher::new(young, opts.clone());
    assert!(!watcher.check().warned, "a fresh 90-day certificate");

    // 90 % of a 100 s life gone.
    let ca = aegis_tls::CertAuthority::from_pem(
        &std::fs::read_to_string(issuing.path().join("ca-cert.pem")).unwrap(),
        &std::fs::read_to_string(issuing.path().join("ca-key.pem")).unwrap(),
        "test",
    )
    .unwrap();
    let now = std::time::SystemTime::now();
    let old = aegis_tls::Validity {
        not_before: now - Duration::from_secs(90),
        not_after: now + Duration::from_secs(10),
    };
    let key = std::fs::read_to_string(&opts.key_file).unwrap();
    let cert = ca
        .issue_for_key(&NodeId::new("server").unwrap(), &key, "test", old)
        .unwrap();
    replace(&opts.cert_file, cert.cert_pem.as_bytes());
    let aging = Credentials::new(aegis_tls::load_tls_config(&opts).unwrap());
    let mut watcher = CredentialsWatcher::new(aging, opts);
    assert!(watcher.check().warned);
    assert!(!watcher.check().warned, "once per certificate");
}
