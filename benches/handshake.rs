//! TLS handshakes with the credentials store against a fixed configuration.
//!
//! The accept loop used to build one `TlsAcceptor` from a fixed
//! `ServerConfig` at start; it now takes the current configuration from
//! `Credentials` for every connection, and every dialler does the same for
//! its client configuration. Each iteration is a complete mutual-TLS 1.3
//! handshake, both sides in this thread over an in-memory pipe (no socket,
//! so the figure is CPU per handshake):
//!
//! - `fixed_config`: acceptor and connector made once (the old way);
//! - `credentials_per_handshake`: both taken from `Credentials` for each
//!   handshake (the new way);
//! - `credentials_after_replace`: the same while another thread replaces
//!   the credentials 100 times a second (renewals far more often than any
//!   real mesh renews).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use aegis_peer::transport::Credentials;
use criterion::{Criterion, criterion_group, criterion_main};
use tokio_rustls::{TlsAcceptor, TlsConnector};

fn handshake(c: &mut Criterion) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let server = aegis_tls::load_or_generate_tls("server", tmp.path()).expect("server cert");
    let client = aegis_tls::load_or_generate_tls("client", tmp.path()).expect("client cert");
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let name = aegis_tls::server_name("server").expect("name");

    let once = |acceptor: TlsAcceptor, connector: TlsConnector| {
        let name = name.clone();
        async move {
            let (a, b) = tokio::io::duplex(64 * 1024);
            let (s, c) = tokio::join!(acceptor.accept(a), connector.connect(name, b));
            s.expect("server side");
            c.expect("client side");
        }
    };

    let mut g = c.benchmark_group("handshake");
    let fixed_acceptor = TlsAcceptor::from(server.server_config());
    let fixed_connector = TlsConnector::from(client.client_config());
    g.bench_function("fixed_config", |b| {
        b.iter(|| rt.block_on(once(fixed_acceptor.clone(), fixed_connector.clone())));
    });

    let server_creds = Credentials::new(server.clone());
    let client_creds = Credentials::new(client);
    g.bench_function("credentials_per_handshake", |b| {
        b.iter(|| {
            rt.block_on(once(
                TlsAcceptor::from(server_creds.server_config()),
                TlsConnector::from(client_creds.client_config()),
            ))
        });
    });

    let stop = Arc::new(AtomicBool::new(false));
    let replacer = {
        let (stop, creds, tls) = (Arc::clone(&stop), server_creds.clone(), server);
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let _ = creds.replace(tls.clone());
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };
    g.bench_function("credentials_after_replace", |b| {
        b.iter(|| {
            rt.block_on(once(
                TlsAcceptor::from(server_creds.server_config()),
                TlsConnector::from(client_creds.client_config()),
            ))
        });
    });
    stop.store(true, Ordering::Relaxed);
    let _ = replacer.join();
    g.finish();
}

criterion_group!(benches, handshake);
criterion_main!(benches);
