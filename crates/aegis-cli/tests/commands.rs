//! `aegis members` and `aegis ping` against a running `aegis node`.

mod support;

use support::{aegis, aegis_ok, start_node};

#[test]
fn members_and_ping_see_a_running_mesh() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_str().unwrap();
    aegis_ok(&["certs", "gen", "--dir", dir, "n1", "n2"]);
    let n1 = start_node("n1", tmp.path(), &["--service".into(), "greeter/v1".into()]);
    let n2 = start_node(
        "n2",
        tmp.path(),
        &["--peer".into(), format!("n1@{}", n1.address)],
    );

    // By address alone: the ID comes from the node's certificate. The
    // client's certificate is issued on first use (the CA key is there).
    let mut members = serde_json::Value::Null;
    support::poll(|| {
        let out = support::members(dir, &n2.address, &["--json"]);
        members = serde_json::from_str(&out).unwrap();
        members["members"].as_array().map_or(0, Vec::len) == 2
    });
    let rows = members["members"].as_array().unwrap();
    let n1_row = rows.iter().find(|r| r["id"] == "n1").unwrap();
    assert_eq!(n1_row["address"], n1.address.as_str());
    assert_eq!(n1_row["state"], "alive");
    assert_eq!(n1_row["services"][0], "greeter/v1");

    let table = support::members(dir, &format!("n1@{}", n1.address), &[]);
    assert!(table.lines().next().unwrap().starts_with("ID"), "{table}");
    assert!(table.contains("greeter/v1"), "{table}");

    let ping = aegis_ok(&[
        "ping",
        "--cert-dir",
        dir,
        "--id",
        "ops",
        "--peer",
        &n1.address,
        "--streams",
        "2",
        "--seconds",
        "1",
    ]);
    assert!(
        ping.contains("calls/s, 0 failed") && ping.contains("p99"),
        "{ping}"
    );

    // A peer that is not there: status 1 and a line saying so.
    let out = aegis(&[
        "members",
        "--cert-dir",
        dir,
        "--id",
        "ops",
        "--peer",
        "n9@127.0.0.1:1",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("error:"));
}
