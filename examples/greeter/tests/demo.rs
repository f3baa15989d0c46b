//! The greeter run end to end, as a user would run it: two provider
//! processes, a consumer that knows one address, per-request balancing,
//! and a provider killed with SIGKILL.

use std::process::Command;

fn demo(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_greeter"))
        .arg("demo")
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// One client object spreads its calls over both providers, per request;
/// after one provider is killed, every call is still answered (the
/// consumer sets the dead provider aside, and retries a call that met it;
/// `aegis/tests/service.rs` shows the retry deciding it).
#[test]
fn calls_spread_per_request_and_survive_a_killed_provider() {
    let (ok, stdout, stderr) = demo(&["--calls", "20"]);
    assert!(ok, "stdout:\n{stdout}\nstderr:\n{stderr}");
    // Round-robin per request gives 10 and 10, unless the mesh briefly
    // held one provider suspect (then the alive one is preferred): both
    // must have answered, and none failed.
    let before = stdout
        .lines()
        .find(|l| l.starts_with("before the kill:"))
        .unwrap_or_default();
    assert!(
        before.contains(r#""greeter-1": "#) && before.contains(r#""greeter-2": "#),
        "{stdout}"
    );
    assert!(before.ends_with(", 0 failed"), "{stdout}");
    assert!(
        stdout.contains(r#"after the kill: {"greeter-1": 20}, 0 failed"#),
        "{stdout}"
    );
    assert!(stdout.contains("caller greeter-consumer"), "{stdout}");
}
