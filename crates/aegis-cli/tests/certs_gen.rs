//! `aegis certs gen` (and its alias `cargo xtask gen-certs`) as a real
//! process.

use std::process::{Command, Output};

fn gen_certs(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_aegis"))
        .args(["certs", "gen"])
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn writes_ca_and_nodes_then_skips_existing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("certs");
    let d = dir.to_str().unwrap();
    let out = gen_certs(&["--dir", d, "node-1", "node-2"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(stdout.contains("created the mesh CA"), "{stdout}");
    assert!(
        stdout.contains("node-1: issued") && stdout.contains("node-2: issued"),
        "{stdout}"
    );
    let key = std::fs::read(dir.join("node-1-key.pem")).unwrap();

    let out = gen_certs(&["--dir", d, "node-1", "node-3"]);
    assert!(out.status.success());
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(stdout.contains("node-1: exists"), "{stdout}");
    assert!(
        stdout.contains("node-3: issued") && !stdout.contains("created the mesh CA"),
        "{stdout}"
    );
    assert_eq!(std::fs::read(dir.join("node-1-key.pem")).unwrap(), key);

    openssl_verifies(&dir, &["node-1-cert.pem".into(), "node-3-cert.pem".into()]);
}

/// Asserts that `openssl verify` accepts `certs` (in `dir`) against the
/// directory's CA bundle.
fn openssl_verifies(dir: &std::path::Path, certs: &[String]) {
    let verify = Command::new("openssl")
        .args(["verify", "-CAfile", "ca-cert.pem"])
        .args(certs)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stderr)
    );
}

#[test]
fn bad_arguments_get_usage_and_nonzero_exit() {
    for args in [
        &[][..],
        &["--dir"],
        &["--dir", "d", "--nope", "a"],
        &["--dir", "d", "bad id"],
        &["--dir", "d", "--validity", "90", "a"],
    ] {
        let out = gen_certs(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("usage: aegis certs gen"),
            "{args:?}: {stderr}"
        );
    }
}

/// Separate processes starting together on one fresh directory end with one
/// CA, and every certificate chains to it.
#[test]
fn concurrent_processes_share_one_ca() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("race");
    let d = dir.to_str().unwrap();
    let children: Vec<_> = (0..8)
        .map(|i| {
            Command::new(env!("CARGO_BIN_EXE_aegis"))
                .args(["certs", "gen", "--dir", d, &format!("proc-{i}")])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut ca_writers = 0;
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        if String::from_utf8_lossy(&out.stdout).contains("created the mesh CA") {
            ca_writers += 1;
        }
    }
    assert_eq!(ca_writers, 1, "exactly one process generates the CA");
    let certs: Vec<String> = (0..8).map(|i| format!("proc-{i}-cert.pem")).collect();
    openssl_verifies(&dir, &certs);
}
