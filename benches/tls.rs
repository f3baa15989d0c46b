//! Certificate generation and loading, against the reference's RSA-4096 CA.
//!
//! `cargo bench -p aegis-benches --bench tls`
//!
//! The baseline runs `openssl req -x509 -newkey rsa:4096 -nodes`, which is
//! what generating the reference implementation's CA costs (it is skipped,
//! with a message, when openssl is not installed).

use std::process::Command;
use std::time::Duration;

use aegis_tls::{CertAuthority, NodeId, Validity, load_or_generate_tls};
use criterion::{Criterion, criterion_group, criterion_main};

fn generation(c: &mut Criterion) {
    let mut g = c.benchmark_group("certs");
    g.measurement_time(Duration::from_secs(5));
    let id = NodeId::new("node-1").unwrap_or_else(|e| panic!("{e}"));
    g.bench_function("ca_plus_node_in_memory", |b| {
        b.iter(|| {
            let ca = CertAuthority::generate(Validity::from_now(aegis_tls::CA_VALIDITY))
                .unwrap_or_else(|e| panic!("{e}"));
            ca.issue(&id, Validity::from_now(aegis_tls::NODE_VALIDITY))
                .unwrap_or_else(|e| panic!("{e}"))
        });
    });
    g.bench_function("fresh_cert_dir", |b| {
        b.iter_batched(
            || tempfile::tempdir().unwrap_or_else(|e| panic!("{e}")),
            |tmp| {
                load_or_generate_tls("node-1", tmp.path()).unwrap_or_else(|e| panic!("{e}"));
                tmp
            },
            criterion::BatchSize::PerIteration,
        );
    });
    let existing = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    load_or_generate_tls("node-1", existing.path()).unwrap_or_else(|e| panic!("{e}"));
    g.bench_function("load_existing_dir", |b| {
        b.iter(|| {
            load_or_generate_tls("node-1", existing.path()).unwrap_or_else(|e| panic!("{e}"))
        });
    });
    g.finish();

    let openssl = Command::new("openssl").arg("version").output();
    if openssl.map(|o| o.status.success()).unwrap_or(false) {
        let mut g = c.benchmark_group("baseline");
        g.sample_size(10);
        g.measurement_time(Duration::from_secs(20));
        let out = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        g.bench_function("openssl_rsa4096_ca", |b| {
            b.iter(|| {
                let status = Command::new("openssl")
                    .args([
                        "req", "-x509", "-newkey", "rsa:4096", "-nodes", "-days", "365",
                    ])
                    .args([
                        "-subj",
                        "/CN=aegis CA",
                        "-keyout",
                        "ca-key.pem",
                        "-out",
                        "ca-cert.pem",
                    ])
                    .current_dir(out.path())
                    .stderr(std::process::Stdio::null())
                    .status()
                    .unwrap_or_else(|e| panic!("{e}"));
                assert!(status.success());
            });
        });
        g.finish();
    } else {
        eprintln!("openssl not found: the RSA-4096 baseline is skipped");
    }
}

criterion_group!(benches, generation);
criterion_main!(benches);
