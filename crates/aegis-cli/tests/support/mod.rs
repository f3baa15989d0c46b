//! Starting `aegis` processes and calling them from the test.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use aegis::peer::transport::{Credentials, peer_certificate};
use aegis::peer::{PeerInfo, PeerManager};
use aegis::{NodeId, Topology};

pub const DEADLINE: Duration = Duration::from_secs(30);

pub fn aegis(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_aegis"))
        .args(args)
        .output()
        .expect("aegis runs")
}

/// `aegis node` as n1 on any free port, with certificates in `dir`.
pub fn node_n1(dir: &str) -> Vec<&str> {
    vec![
        "node",
        "--id",
        "n1",
        "--name",
        "n1",
        "--address",
        "127.0.0.1:0",
        "--cert-dir",
        dir,
    ]
}

/// Runs `aegis ARGS` and insists that it succeeds.
pub fn aegis_ok(args: &[&str]) -> String {
    let out = aegis(args);
    assert!(
        out.status.success(),
        "aegis {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A running `aegis node`, killed when dropped.
pub struct NodeProcess {
    pub id: String,
    pub address: String,
    child: Child,
}

impl NodeProcess {
    /// The process ID.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `aegis node --id ID --address 127.0.0.1:0 --cert-dir DIR EXTRA...`
/// and waits for it to listen.
pub fn start_node(id: &str, dir: &Path, extra: &[String]) -> NodeProcess {
    start_node_env(id, dir, extra, &[])
}

/// Like [`start_node`], with environment variables set for the process.
pub fn start_node_env(id: &str, dir: &Path, extra: &[String], env: &[(&str, &str)]) -> NodeProcess {
    let mut child = Command::new(env!("CARGO_BIN_EXE_aegis"))
        .args(["node", "--id", id, "--name", id, "--address", "127.0.0.1:0"])
        .arg("--cert-dir")
        .arg(dir)
        .args(extra)
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("aegis node starts");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(addr) = line.strip_prefix("listening on ") {
                let _ = tx.send(addr.to_owned());
            }
        }
    });
    let address = rx
        .recv_timeout(DEADLINE)
        .unwrap_or_else(|_| panic!("{id} did not start listening"));
    NodeProcess {
        id: id.to_owned(),
        address,
        child,
    }
}

/// Calls every node from the test, continuously, and counts: pings over
/// long-lived connections, and a fresh connection (a full handshake) to
/// each node every round, which records the serial the node presents.
pub struct Caller {
    pub ok: Arc<AtomicU64>,
    pub failed: Arc<AtomicU64>,
    pub serials: Arc<std::sync::Mutex<Vec<(String, String)>>>,
    pub errors: Arc<std::sync::Mutex<Vec<String>>>,
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Caller {
    pub fn start(credentials: Credentials, nodes: &[(String, String)]) -> Self {
        let ok = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let serials = Arc::new(std::sync::Mutex::new(Vec::new()));
        let errors = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let nodes = nodes.to_vec();
        let (ok2, failed2, serials2, errors2) = (
            Arc::clone(&ok),
            Arc::clone(&failed),
            Arc::clone(&serials),
            Arc::clone(&errors),
        );
        let task = tokio::spawn(async move {
            let id = credentials.node_id();
            let long_lived = PeerManager::new(id.clone(), Some(&credentials), Topology::new());
            for (node, address) in &nodes {
                long_lived
                    .add_peer(PeerInfo::new(node, address.clone()).unwrap())
                    .unwrap();
            }
            let fail = |what: String| {
                failed2.fetch_add(1, Ordering::Relaxed);
                errors2.lock().unwrap().push(what);
            };
            while !*stopped.borrow() {
                for (node, address) in &nodes {
                    match long_lived.ping_peer(node).await {
                        Ok(_) => ok2.fetch_add(1, Ordering::Relaxed),
                        Err(e) => {
                            fail(format!("ping {node}: {e}"));
                            continue;
                        }
                    };
                    // A new connection: a handshake with what each side
                    // holds now.
                    match peer_certificate(&credentials, address, Duration::from_secs(5)).await {
                        Ok(info) => {
                            ok2.fetch_add(1, Ordering::Relaxed);
                            let mut seen = serials2.lock().unwrap();
                            let serial = info.serial_hex();
                            if !seen.iter().any(|(n, s)| n == node && *s == serial) {
                                seen.push((node.clone(), serial));
                            }
                        }
                        Err(e) => fail(format!("handshake {node}: {e}")),
                    }
                    let fresh = PeerManager::new(id.clone(), Some(&credentials), Topology::new());
                    fresh
                        .add_peer(PeerInfo::new(node, address.clone()).unwrap())
                        .unwrap();
                    match fresh.ping_peer(node).await {
                        Ok(_) => ok2.fetch_add(1, Ordering::Relaxed),
                        Err(e) => {
                            fail(format!("fresh ping {node}: {e}"));
                            0
                        }
                    };
                }
                tokio::select! {
                    _ = stopped.changed() => {}
                    _ = tokio::time::sleep(Duration::from_millis(20)) => {}
                }
            }
        });
        Self {
            ok,
            failed,
            serials,
            errors,
            stop,
            task,
        }
    }

    /// Stops calling; (calls that succeeded, calls that failed).
    pub async fn stop(self) -> (u64, u64, Vec<String>) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
        let errors = self.errors.lock().unwrap().clone();
        (
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
            errors,
        )
    }

    /// Distinct serials seen from `node`.
    pub fn serials_of(&self, node: &str) -> usize {
        self.serials
            .lock()
            .unwrap()
            .iter()
            .filter(|(n, _)| n == node)
            .count()
    }
}

/// Polls `check` until it holds, or fails the test after `deadline`.
pub async fn wait_until(what: &str, deadline: Duration, mut check: impl FnMut() -> bool) {
    let end = Instant::now() + deadline;
    while !check() {
        assert!(Instant::now() < end, "{what}: not within {deadline:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub fn node_id(id: &str) -> NodeId {
    NodeId::new(id).unwrap()
}

/// Polls `check` (blocking) until it holds, or fails after [`DEADLINE`].
pub fn poll(mut check: impl FnMut() -> bool) {
    let end = Instant::now() + DEADLINE;
    while !check() {
        assert!(
            Instant::now() < end,
            "condition not reached within {DEADLINE:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `aegis members --cert-dir DIR --id ops --peer PEER EXTRA...`, as the
/// operator `ops` of the directory; its standard output.
pub fn members(dir: &str, peer: &str, extra: &[&str]) -> String {
    let mut args = vec!["members", "--cert-dir", dir, "--id", "ops", "--peer", peer];
    args.extend_from_slice(extra);
    aegis_ok(&args)
}
