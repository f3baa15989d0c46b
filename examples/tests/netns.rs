//! Failure detection with real packet loss: six `aegis-node` processes, each
//! in a network namespace of its own on one bridge, with `iptables` dropping
//! packets in their namespaces. The test creates the namespaces and removes
//! them afterwards, even when it fails.
//!
//! It needs root, `ip` (iproute2) and `iptables`; `.ci/run` installs them
//! and sets `AEGIS_NETNS=required`, which turns a missing one into a
//! failure. Elsewhere the test says what is missing and passes without
//! running.

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const NODES: usize = 6;
const PORT: u16 = 7000;

/// The address of node `i` on the bridge.
fn ip(i: usize) -> String {
    format!("10.77.0.{}", i + 1)
}

fn id(i: usize) -> String {
    format!("n{i}")
}

/// Runs a command; its stderr on failure.
fn run(args: &[&str]) -> Result<String, String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|e| format!("{}: {e}", args[0]))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Why this machine cannot run the test, if it cannot.
fn missing() -> Option<String> {
    let uid = run(&["id", "-u"]).unwrap_or_default();
    if uid.trim() != "0" {
        return Some("root".into());
    }
    for tool in [&["ip", "-V"][..], &["iptables", "--version"]] {
        if run(tool).is_err() {
            return Some(tool[0].into());
        }
    }
    None
}

/// The namespaces of one run: a hub holding the bridge, one per node. Drop
/// removes them all (and with them the links and any process left inside).
struct Namespaces {
    hub: String,
    nodes: Vec<String>,
}

impl Namespaces {
    fn create() -> Result<Self, String> {
        let prefix = format!("aegis{}", std::process::id());
        let ns = Namespaces {
            hub: format!("{prefix}-hub"),
            nodes: (0..NODES).map(|i| format!("{prefix}-n{i}")).collect(),
        };
        // The bridge lives in a namespace of its own, so that no firewall
        // of the host (Docker's, say) sees the bridged traffic.
        run(&["ip", "netns", "add", &ns.hub])?;
        run(&["ip", "-n", &ns.hub, "link", "add", "br0", "type", "bridge"])?;
        run(&["ip", "-n", &ns.hub, "link", "set", "br0", "up"])?;
        for (i, name) in ns.nodes.iter().enumerate() {
            let port = format!("v{i}");
            run(&["ip", "netns", "add", name])?;
            run(&[
                "ip", "link", "add", &port, "netns", &ns.hub, "type", "veth", "peer", "name",
                "eth0", "netns", name,
            ])?;
            run(&[
                "ip", "-n", &ns.hub, "link", "set", &port, "master", "br0", "up",
            ])?;
            let cidr = format!("{}/24", ip(i));
            run(&["ip", "-n", name, "addr", "add", &cidr, "dev", "eth0"])?;
            run(&["ip", "-n", name, "link", "set", "eth0", "up"])?;
            run(&["ip", "-n", name, "link", "set", "lo", "up"])?;
        }
        Ok(ns)
    }

    fn iptables(&self, node: usize, rule: &[&str]) {
        let mut args = vec!["ip", "netns", "exec", &self.nodes[node], "iptables"];
        args.extend_from_slice(rule);
        run(&args).unwrap();
    }

    /// Packets dropped so far by the first rule of `chain` in node `i`.
    fn dropped(&self, node: usize, chain: &str) -> u64 {
        let mut args = vec!["ip", "netns", "exec", &self.nodes[node], "iptables"];
        args.extend_from_slice(&["-L", chain, "-v", "-n", "-x"]);
        run(&args)
            .unwrap()
            .lines()
            .nth(2)
            .and_then(|l| l.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    }

    /// Bytes node `i` has sent on its link.
    fn tx_bytes(&self, i: usize) -> u64 {
        let stats = run(&[
            "ip",
            "netns",
            "exec",
            &self.nodes[i],
            "cat",
            "/proc/net/dev",
        ])
        .unwrap();
        stats
            .lines()
            .find_map(|l| l.trim().strip_prefix("eth0:"))
            .and_then(|l| l.split_whitespace().nth(8))
            .and_then(|b| b.parse().ok())
            .unwrap()
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for name in self.nodes.iter().chain([&self.hub]) {
            if let Ok(pids) = run(&["ip", "netns", "pids", name]) {
                for pid in pids.split_whitespace() {
                    let _ = run(&["kill", "-KILL", pid]);
                }
            }
            let _ = run(&["ip", "netns", "del", name]);
        }
    }
}

/// A state change one node printed: (when, observer, member, state).
type Seen = Arc<Mutex<Vec<(Instant, usize, String, String)>>>;

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(ns: &Namespaces, i: usize, certs: &str, seen: &Seen) -> Proc {
    let address = format!("{}:{PORT}", ip(i));
    let mut args = vec![
        "netns".to_owned(),
        "exec".to_owned(),
        ns.nodes[i].clone(),
        env!("CARGO_BIN_EXE_aegis-node").to_owned(),
        "--print-states".to_owned(),
    ];
    for (flag, value) in [
        ("--id", id(i)),
        ("--name", id(i)),
        ("--address", address),
        ("--cert-dir", certs.to_owned()),
    ] {
        args.extend([flag.to_owned(), value]);
    }
    if i > 0 {
        args.extend(["--peer".to_owned(), format!("{}@{}:{PORT}", id(0), ip(0))]);
    }
    let mut child = Command::new("ip")
        .args(&args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let seen = Arc::clone(seen);
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.starts_with("listening on ") {
                let _ = tx.send(());
            }
            let mut words = line.split_whitespace();
            if let (Some("state"), Some(member), Some(state)) =
                (words.next(), words.next(), words.next())
            {
                seen.lock()
                    .unwrap()
                    .push((Instant::now(), i, member.to_owned(), state.to_owned()));
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(30))
        .expect("the node started");
    Proc(child)
}

/// Polls `check` every 50 ms until it holds; panics naming `what` after
/// `limit`.
fn wait_until(limit: Duration, what: &str, mut check: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !check() {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    start.elapsed()
}

/// Deaths printed since `from`, as "observer saw member dead".
fn deaths(seen: &Seen, from: Instant) -> Vec<String> {
    seen.lock()
        .unwrap()
        .iter()
        .filter(|(at, _, _, state)| *at >= from && state == "dead")
        .map(|(_, observer, member, _)| format!("{} saw {member} dead", id(*observer)))
        .collect()
}

fn suspicions(seen: &Seen, from: Instant) -> usize {
    seen.lock()
        .unwrap()
        .iter()
        .filter(|(at, _, _, state)| *at >= from && state == "suspect")
        .count()
}

/// Whether `observer`'s last printed state of `member` is `state`.
fn last_state(seen: &Seen, observer: usize, member: &str) -> Option<String> {
    seen.lock()
        .unwrap()
        .iter()
        .filter(|(_, o, m, _)| *o == observer && m == member)
        .map(|(_, _, _, s)| s.clone())
        .next_back()
}

#[test]
fn real_packet_loss_kills_no_healthy_node_and_a_crash_is_found_in_5_s() {
    if let Some(what) = missing() {
        assert!(
            std::env::var("AEGIS_NETNS").as_deref() != Ok("required"),
            "AEGIS_NETNS=required, but this machine lacks {what}"
        );
        eprintln!("skipped: the network namespace test needs {what}");
        return;
    }
    let ns = Namespaces::create().unwrap();
    let certs = tempfile::tempdir().unwrap();
    let certs = certs.path().to_str().unwrap().to_owned();
    let seen: Seen = Arc::default();
    let mut procs: Vec<Option<Proc>> = (0..NODES)
        .map(|i| Some(spawn(&ns, i, &certs, &seen)))
        .collect();

    // Every node knows every node, alive.
    let took = wait_until(Duration::from_secs(60), "mesh converged", || {
        (0..NODES)
            .all(|o| (0..NODES).all(|m| last_state(&seen, o, &id(m)).as_deref() == Some("alive")))
    });
    println!("{NODES} nodes converged in {took:?}");

    // Idle traffic: bytes each node sends on its link, over 10 s.
    std::thread::sleep(Duration::from_secs(2));
    let before: Vec<u64> = (0..NODES).map(|i| ns.tx_bytes(i)).collect();
    let start = Instant::now();
    std::thread::sleep(Duration::from_secs(10));
    let secs = start.elapsed().as_secs_f64();
    let rates: Vec<u64> = (0..NODES)
        .map(|i| ((ns.tx_bytes(i) - before[i]) as f64 / secs) as u64)
        .collect();
    println!("idle: bytes sent per node per second (on the wire, TLS and IP included): {rates:?}");

    // (a) 10 % of the packets into every node dropped at random, 60 s.
    let drop_some = [
        "INPUT",
        "-m",
        "statistic",
        "--mode",
        "random",
        "--probability",
        "0.1",
        "-j",
        "DROP",
    ];
    for i in 0..NODES {
        let mut rule = vec!["-A"];
        rule.extend_from_slice(&drop_some);
        ns.iptables(i, &rule);
    }
    let from = Instant::now();
    std::thread::sleep(Duration::from_secs(60));
    let lost: Vec<u64> = (0..NODES).map(|i| ns.dropped(i, "INPUT")).collect();
    println!("(a) packets dropped per node: {lost:?}");
    assert!(lost.iter().all(|&n| n > 0), "the loss rule dropped nothing");
    for i in 0..NODES {
        let mut rule = vec!["-D"];
        rule.extend_from_slice(&drop_some);
        ns.iptables(i, &rule);
    }
    let dead = deaths(&seen, from);
    println!(
        "(a) 10 % loss for 60 s: {} suspicions, {} false deaths",
        suspicions(&seen, from),
        dead.len()
    );
    assert!(
        dead.is_empty(),
        "healthy nodes died under 10 % loss: {dead:?}"
    );

    // (b) Every packet from n1 to n2 dropped (one way), 30 s.
    let target = ip(2);
    let cut = ["OUTPUT", "-d", target.as_str(), "-j", "DROP"];
    let mut rule = vec!["-A"];
    rule.extend_from_slice(&cut);
    ns.iptables(1, &rule);
    let from = Instant::now();
    std::thread::sleep(Duration::from_secs(30));
    let lost = ns.dropped(1, "OUTPUT");
    println!("(b) packets from n1 to n2 dropped: {lost}");
    assert!(lost > 0, "the one-way rule dropped nothing");
    let mut rule = vec!["-D"];
    rule.extend_from_slice(&cut);
    ns.iptables(1, &rule);
    let dead = deaths(&seen, from);
    println!(
        "(b) n1 cannot send to n2 for 30 s: {} suspicions, {} false deaths",
        suspicions(&seen, from),
        dead.len()
    );
    assert!(
        dead.is_empty(),
        "healthy nodes died behind one bad link: {dead:?}"
    );

    // (c) n5 killed outright: dead everywhere within 5 s.
    let victim = NODES - 1;
    let killed = Instant::now();
    drop(procs[victim].take());
    let took = wait_until(
        Duration::from_secs(5),
        "the killed node dead everywhere",
        || (0..victim).all(|o| last_state(&seen, o, &id(victim)).as_deref() == Some("dead")),
    );
    let per_node: Vec<u128> = (0..victim)
        .map(|o| {
            seen.lock()
                .unwrap()
                .iter()
                .find(|(at, ob, m, s)| *at >= killed && *ob == o && *m == id(victim) && s == "dead")
                .map_or(0, |(at, ..)| (*at - killed).as_millis())
        })
        .collect();
    println!("(c) a killed node was dead everywhere after {took:?} (per node, ms: {per_node:?})");
    let others: HashSet<usize> = (0..victim).collect();
    assert!(
        deaths(&seen, killed)
            .iter()
            .all(|d| d.ends_with(&format!("{} dead", id(victim)))),
        "only the killed node died (observers {others:?})"
    );
    drop(procs);
}
