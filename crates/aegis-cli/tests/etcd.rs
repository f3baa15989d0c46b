//! Membership from etcd, against a real etcd server started by the test
//! on free ports in a temporary directory: `aegis node --discovery etcd://`
//! processes and an in-process consumer. Built with the feature `etcd`
//! (`cargo test -p aegis-cli --features etcd --test etcd`); without an
//! `etcd` binary it is skipped, unless `AEGIS_ETCD=required` (CI).
#![cfg(feature = "etcd")]

mod support;

use std::collections::HashSet;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use aegis::etcd_client::{Client, GetOptions};
use aegis::peer::proto::mesh::PingRequest;
use aegis::peer::proto::mesh::mesh_service_client::MeshServiceClient;
use aegis::{Discovery, Node, NodeState};
use support::{DEADLINE, aegis_ok, start_node};

const PREFIX: &str = "/aegis-test";
const TTL: Duration = Duration::from_secs(10);

/// A real etcd on 127.0.0.1, stopped (and its data removed) when dropped.
struct Etcd {
    child: Option<Child>,
    client_port: u16,
    peer_port: u16,
    data: tempfile::TempDir,
    /// With TLS: the certificate directory whose `etcd-cert.pem` it
    /// serves, requiring client certificates from its CA.
    tls: Option<std::path::PathBuf>,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

impl Etcd {
    /// Starts etcd, or returns `None` when there is none and it is not
    /// required.
    fn start() -> Option<Self> {
        Self::start_with(None)
    }

    fn start_with(tls: Option<&Path>) -> Option<Self> {
        if Command::new("etcd").arg("--version").output().is_err() {
            assert!(
                std::env::var("AEGIS_ETCD").as_deref() != Ok("required"),
                "AEGIS_ETCD=required but there is no etcd binary (Debian: etcd-server)"
            );
            eprintln!("skipped: no etcd binary (Debian: etcd-server)");
            return None;
        }
        let mut etcd = Self {
            child: None,
            client_port: free_port(),
            peer_port: free_port(),
            data: tempfile::tempdir().expect("tempdir"),
            tls: tls.map(Path::to_path_buf),
        };
        etcd.run();
        Some(etcd)
    }

    fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }

    fn run(&mut self) {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let client = format!("{scheme}://127.0.0.1:{}", self.client_port);
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let mut command = Command::new("etcd");
        if let Some(dir) = &self.tls {
            command
                .arg("--cert-file")
                .arg(dir.join("etcd-cert.pem"))
                .arg("--key-file")
                .arg(dir.join("etcd-key.pem"))
                .arg("--trusted-ca-file")
                .arg(dir.join("ca-cert.pem"))
                .arg("--client-cert-auth");
        }
        let child = command
            .args(["--name", "test", "--data-dir"])
            .arg(self.data.path().join("etcd"))
            .args([
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
            ])
            .args([
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
            ])
            .args(["--initial-cluster", &format!("test={peer}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("etcd starts");
        self.child = Some(child);
        let end = Instant::now() + DEADLINE;
        while std::net::TcpStream::connect(("127.0.0.1", self.client_port)).is_err() {
            assert!(Instant::now() < end, "etcd did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Forgets everything etcd stored.
    fn wipe(&mut self) {
        let _ = std::fs::remove_dir_all(self.data.path().join("etcd"));
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    async fn client(&self) -> Client {
        Client::connect([self.endpoint()], None)
            .await
            .expect("etcd client")
    }

    /// The node IDs registered now.
    async fn registered(&self) -> HashSet<String> {
        let nodes = format!("{PREFIX}/nodes/");
        let answer = self
            .client()
            .await
            .get(nodes.clone(), Some(GetOptions::new().with_prefix()))
            .await
            .expect("range read");
        answer
            .kvs()
            .iter()
            .filter_map(|kv| kv.key_str().ok()?.strip_prefix(&nodes).map(str::to_owned))
            .collect()
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
    }
}

fn discovery_flag(etcd: &Etcd) -> Vec<String> {
    vec![
        "--discovery".into(),
        format!("etcd://{}{PREFIX}", etcd.endpoint()),
    ]
}

fn provider_flags(etcd: &Etcd) -> Vec<String> {
    let mut flags = discovery_flag(etcd);
    flags.extend(["--service".into(), "greeter/v1".into()]);
    flags
}

async fn consumer(etcd: &Etcd, dir: &Path, id: &str) -> Node {
    let node = Node::builder()
        .with_id(id)
        .with_name(id)
        .with_address("127.0.0.1:0")
        .with_cert_dir(dir)
        .with_discovery(Discovery::etcd([etcd.endpoint()], PREFIX))
        .build()
        .expect("consumer builds");
    node.start_server().await.expect("consumer starts");
    node
}

fn alive(node: &Node) -> HashSet<String> {
    node.topology()
        .entries()
        .iter()
        .filter(|e| e.state == NodeState::Alive)
        .map(|e| e.id().to_string())
        .collect()
}

async fn wait_for(what: &str, deadline: Duration, mut check: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !check() {
        assert!(
            start.elapsed() < deadline,
            "{what}: not within {deadline:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    start.elapsed()
}

fn ids(list: &[&str]) -> HashSet<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}

/// Who answers a ping through the pool's channel for greeter v1.
async fn via_pool(node: &Node) -> Result<String, String> {
    let channel = node
        .client_pool()
        .get_conn("greeter", "v1")
        .await
        .map_err(|e| e.to_string())?;
    let answer = MeshServiceClient::new(channel)
        .ping(PingRequest {
            sender_id: node.id().to_string(),
            ..PingRequest::default()
        })
        .await
        .map_err(|e| e.to_string())?;
    Ok(answer.into_inner().receiver_id)
}

/// The members `aegis members` reports for the node at `address`.
fn members_seen_by(dir: &str, address: &str) -> HashSet<String> {
    let out = support::members(dir, address, &["--json"]);
    let json: serde_json::Value = serde_json::from_str(&out).expect("json");
    json["members"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|m| m["state"] == "alive")
        .filter_map(|m| m["id"].as_str().map(str::to_owned))
        .collect()
}

fn sigterm(child_pid: u32) {
    let status = Command::new("kill")
        .args(["-TERM", &child_pid.to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success());
}

/// The whole story on one etcd: nodes with gossip off find each other
/// through etcd; the consumer's pool reaches both providers; a provider
/// killed with SIGKILL leaves every view within the lease TTL plus 2 s and
/// one that shuts down leaves at once; with etcd stopped for 10 s, calls
/// keep succeeding, and once it is back everyone is registered again and a
/// newcomer sees them all; malformed and foreign values are skipped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mesh_with_membership_in_etcd() {
    let Some(mut etcd) = Etcd::start() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_str().unwrap();
    aegis_ok(&[
        "certs", "gen", "--dir", dir, "n1", "n2", "n3", "consumer", "late", "ops",
    ]);
    let n1 = start_node("n1", tmp.path(), &provider_flags(&etcd));
    let mut n2 = Some(start_node("n2", tmp.path(), &provider_flags(&etcd)));
    let mut n3 = Some(start_node("n3", tmp.path(), &discovery_flag(&etcd)));
    let consumer = consumer(&etcd, tmp.path(), "consumer").await;

    // Found through etcd alone (no peers, no seeds, no gossip).
    let everyone = ids(&["n1", "n2", "n3", "consumer"]);
    wait_for("the consumer sees everyone", DEADLINE, || {
        alive(&consumer) == everyone
    })
    .await;
    support::poll(|| members_seen_by(dir, &n1.address) == everyone);
    let mut answered = HashSet::new();
    for _ in 0..10 {
        answered.insert(via_pool(&consumer).await.expect("a call through the pool"));
    }
    assert_eq!(
        answered,
        ids(&["n1", "n2"]),
        "the pool reaches both providers"
    );

    // SIGKILL: gone when its lease runs out.
    drop(n2.take());
    let killed = Instant::now();
    let after_kill = ids(&["n1", "n3", "consumer"]);
    let took = wait_for(
        "the killed provider gone",
        TTL + Duration::from_secs(2),
        || alive(&consumer) == after_kill,
    )
    .await;
    support::poll(|| members_seen_by(dir, &n1.address) == after_kill);
    eprintln!("killed provider gone from the consumer's view after {took:?}");
    assert!(killed.elapsed() < TTL + Duration::from_secs(4));
    for _ in 0..5 {
        assert_eq!(via_pool(&consumer).await.unwrap(), "n1");
    }

    // A graceful stop: gone at once.
    let n3_process = n3.take().unwrap();
    sigterm(n3_process.pid());
    let after_stop = ids(&["n1", "consumer"]);
    let took = wait_for("the stopped node gone", Duration::from_secs(5), || {
        alive(&consumer) == after_stop
    })
    .await;
    eprintln!("stopped node gone from the consumer's view after {took:?}");
    drop(n3_process);

    // Garbage under the prefix: skipped, nobody falls over.
    let mut client = etcd.client().await;
    for (key, value) in [
        (format!("{PREFIX}/nodes/junk"), "{not json".to_owned()),
        (format!("{PREFIX}/nodes/Bad Id"), "{}".to_owned()),
        (format!("{PREFIX}/nodes/impostor"), {
            // A valid entry, but for another node than its key names.
            let entry = consumer.topology().get_entry("n1").unwrap();
            serde_json::to_string(&entry).unwrap()
        }),
    ] {
        client.put(key, value, None).await.expect("put");
    }
    assert!(via_pool(&consumer).await.is_ok());
    tokio::time::timeout(DEADLINE, async {
        while members_seen_by(dir, &n1.address) != after_stop {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("n1 keeps its view");
    assert_eq!(alive(&consumer), after_stop);
    for junk in ["junk", "Bad Id", "impostor"] {
        client
            .delete(format!("{PREFIX}/nodes/{junk}"), None)
            .await
            .expect("delete");
    }

    // etcd away for 10 s: calls go on. It comes back empty (its data
    // lost), so the nodes must register again by themselves.
    etcd.stop();
    let outage = Instant::now();
    let mut calls = 0;
    while outage.elapsed() < Duration::from_secs(10) {
        assert_eq!(
            via_pool(&consumer)
                .await
                .expect("a call while etcd is away"),
            "n1"
        );
        calls += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(calls > 20);
    assert_eq!(
        alive(&consumer),
        after_stop,
        "the last known membership stays"
    );
    etcd.wipe();
    etcd.run();
    let back = Instant::now();
    let mut registered = HashSet::new();
    while registered != after_stop {
        assert!(
            back.elapsed() < DEADLINE,
            "registered after etcd came back: {registered:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        registered = etcd.registered().await;
    }
    eprintln!(
        "everyone registered again {:?} after etcd came back",
        back.elapsed()
    );
    let late = consumer_late(&etcd, tmp.path()).await;
    let with_late = ids(&["n1", "consumer", "late"]);
    wait_for("a newcomer sees everyone", DEADLINE, || {
        alive(&late) == with_late
    })
    .await;
    wait_for("and everyone sees it", DEADLINE, || {
        alive(&consumer) == with_late
    })
    .await;
    assert_eq!(via_pool(&late).await.unwrap(), "n1");
    late.shutdown().await.unwrap();
    consumer.shutdown().await.unwrap();
}

async fn consumer_late(etcd: &Etcd, dir: &Path) -> Node {
    consumer(etcd, dir, "late").await
}

/// TLS to etcd with the node's own identity (`etcds://`): an etcd that
/// serves a certificate from the mesh CA and requires client certificates
/// from it sees the nodes register; a node of another CA is refused by etcd
/// and never registers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_to_etcd_with_the_nodes_own_certificates() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_str().unwrap();
    aegis_ok(&["certs", "gen", "--dir", dir, "etcd", "n1", "consumer"]);
    let Some(etcd) = Etcd::start_with(Some(tmp.path())) else {
        return;
    };
    let flags = vec![
        "--discovery".to_owned(),
        format!("etcds://{}{PREFIX}", etcd.endpoint()),
        "--service".to_owned(),
        "greeter/v1".to_owned(),
    ];
    let _n1 = start_node("n1", tmp.path(), &flags);
    let consumer = Node::builder()
        .with_id("consumer")
        .with_name("consumer")
        .with_address("127.0.0.1:0")
        .with_cert_dir(tmp.path())
        .with_discovery(Discovery::parse(&format!("etcds://{}{PREFIX}", etcd.endpoint())).unwrap())
        .build()
        .unwrap();
    consumer.start_server().await.unwrap();
    wait_for("both registered over TLS", DEADLINE, || {
        alive(&consumer) == ids(&["n1", "consumer"])
    })
    .await;
    assert_eq!(via_pool(&consumer).await.unwrap(), "n1");

    // Another mesh's node: etcd refuses its certificate; it stays alone.
    let other = tempfile::tempdir().unwrap();
    let stranger = Node::builder()
        .with_id("stranger")
        .with_name("stranger")
        .with_address("127.0.0.1:0")
        .with_cert_dir(other.path())
        .with_discovery(Discovery::parse(&format!("etcds://{}{PREFIX}", etcd.endpoint())).unwrap())
        .build()
        .unwrap();
    stranger.start_server().await.unwrap();
    // It keeps trying (and failing) while the others go on.
    for _ in 0..3 {
        assert_eq!(via_pool(&consumer).await.unwrap(), "n1");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(alive(&stranger), ids(&["stranger"]));
    assert_eq!(alive(&consumer), ids(&["n1", "consumer"]));
    stranger.shutdown().await.unwrap();
    consumer.shutdown().await.unwrap();
}

/// etcd with authentication on: `aegis node --etcd-user` (the password
/// from `AEGIS_ETCD_PASSWORD`) and a node built `with_user` register and
/// find each other; a node with a wrong password, and one with none, are
/// refused by etcd and stay alone while the others go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_with_a_user_and_password() {
    use aegis::EtcdDiscovery;
    use aegis::etcd_client::Permission;

    let Some(etcd) = Etcd::start() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_str().unwrap();
    aegis_ok(&[
        "certs", "gen", "--dir", dir, "n1", "consumer", "wrong", "anon",
    ]);
    let mut admin = etcd.client().await;
    admin.user_add("root", "root-secret", None).await.unwrap();
    admin.user_grant_role("root", "root").await.unwrap();
    admin.role_add("mesh").await.unwrap();
    admin
        .role_grant_permission("mesh", Permission::read_write(PREFIX).with_prefix())
        .await
        .unwrap();
    admin.user_add("mesh-node", "s3cret", None).await.unwrap();
    admin.user_grant_role("mesh-node", "mesh").await.unwrap();
    admin.auth_enable().await.unwrap();

    // Without the password in the environment the flag is refused,
    // naming the variable.
    let discovery = format!("etcd://{}{PREFIX}", etcd.endpoint());
    let mut args = support::node_n1(dir);
    args.extend(["--discovery", &discovery, "--etcd-user", "mesh-node"]);
    let out = support::aegis(&args);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("AEGIS_ETCD_PASSWORD"), "{stderr}");

    let mut flags = provider_flags(&etcd);
    flags.extend(["--etcd-user".to_owned(), "mesh-node".to_owned()]);
    let _n1 = support::start_node_env(
        "n1",
        tmp.path(),
        &flags,
        &[("AEGIS_ETCD_PASSWORD", "s3cret")],
    );
    let with_user = |id: &str, user: Option<(&str, &str)>| {
        let mut config = EtcdDiscovery::new([etcd.endpoint()], PREFIX);
        if let Some((name, password)) = user {
            config = config.with_user(name, password);
        }
        Node::builder()
            .with_id(id)
            .with_name(id)
            .with_address("127.0.0.1:0")
            .with_cert_dir(tmp.path())
            .with_discovery(Discovery::Etcd(Box::new(config)))
            .build()
            .unwrap()
    };
    let consumer = with_user("consumer", Some(("mesh-node", "s3cret")));
    consumer.start_server().await.unwrap();
    wait_for("both registered with a password", DEADLINE, || {
        alive(&consumer) == ids(&["n1", "consumer"])
    })
    .await;
    assert_eq!(via_pool(&consumer).await.unwrap(), "n1");

    let wrong = with_user("wrong", Some(("mesh-node", "guess")));
    wrong.start_server().await.unwrap();
    let anon = with_user("anon", None);
    anon.start_server().await.unwrap();
    for _ in 0..3 {
        assert_eq!(via_pool(&consumer).await.unwrap(), "n1");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(alive(&wrong), ids(&["wrong"]));
    assert_eq!(alive(&anon), ids(&["anon"]));
    assert_eq!(alive(&consumer), ids(&["n1", "consumer"]));
    for node in [anon, wrong, consumer] {
        node.shutdown().await.unwrap();
    }
}
