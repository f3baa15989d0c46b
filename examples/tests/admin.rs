//! The admin endpoint of real `aegis-node` processes: Prometheus metrics
//! that move with the traffic, the member list as JSON, readiness, and the
//! live page in a real browser (headless Chromium, driven over the DevTools
//! protocol), which shows a killed node as dead without being reloaded.
//!
//! The browser part needs Debian's `chromium`; `.ci/run` installs it and
//! sets `AEGIS_BROWSER=required`, which turns a missing browser into a
//! failure. Elsewhere that part says it is skipped.

mod support;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use aegis::{Node, PeerInfo};
use support::Proc;

/// A node with `extra` arguments; (the process, its admin address if it
/// serves one).
fn spawn(dir: &str, id: &str, extra: &[&str]) -> (Proc, Option<String>) {
    let mut args = vec![
        "--id",
        id,
        "--name",
        id,
        "--address",
        "127.0.0.1:0",
        "--cert-dir",
        dir,
    ];
    args.extend_from_slice(extra);
    let proc = support::spawn(&args);
    let admin = extra.contains(&"--admin-address").then(|| {
        let line = proc
            .lines
            .recv_timeout(Duration::from_secs(5))
            .expect("admin line");
        line.strip_prefix("admin on http://")
            .map(|a| a.trim_end_matches('/').to_owned())
            .expect("admin address printed")
    });
    (proc, admin)
}

/// `GET path` over HTTP/1.1: (status, body).
fn get(addr: &str, path: &str) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    // Bodies here are small; a chunked one is unwrapped crudely.
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        let mut out = String::new();
        let mut rest = body;
        while let Some((size, tail)) = rest.split_once("\r\n") {
            let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
            if n == 0 {
                break;
            }
            out.push_str(&tail[..n]);
            rest = &tail[n + 2..];
        }
        out
    } else {
        body.to_owned()
    };
    (status, body)
}

/// Parses the Prometheus text format strictly enough to catch a broken
/// exposition: every sample line is `name{labels} value` with a float.
fn samples(text: &str) -> Vec<(String, f64)> {
    text.lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').expect("a sample line");
            let value: f64 = value
                .parse()
                .unwrap_or_else(|_| panic!("bad value in {l:?}"));
            let name = series.split('{').next().unwrap();
            assert!(
                !name.is_empty()
                    && name
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
                "bad name in {l:?}"
            );
            (series.to_owned(), value)
        })
        .collect()
}

fn sum(samples: &[(String, f64)], prefix: &str, containing: &[&str]) -> f64 {
    samples
        .iter()
        .filter(|(s, _)| s.starts_with(prefix) && containing.iter().all(|c| s.contains(c)))
        .map(|(_, v)| v)
        .sum()
}

fn members(admin: &str) -> Vec<(String, String)> {
    let (status, body) = get(admin, "/members");
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    v["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["id"].as_str().unwrap().to_owned(),
                m["state"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn wait_until(limit: Duration, what: &str, mut f: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    start.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_members_readiness_and_the_live_page() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_str().unwrap();
    let (n1, admin) = spawn(
        dir,
        "n1",
        &["--admin-address", "127.0.0.1:0", "--service", "identity/v1"],
    );
    let admin = admin.expect("admin address printed");
    let peer = format!("n1@{}", n1.address);
    let (n2, _) = spawn(dir, "n2", &["--peer", &peer]);
    let mut n3 = Some(spawn(dir, "n3", &["--peer", &peer]).0);

    // Alone by configuration (no peer given): ready as soon as it serves.
    assert_eq!(get(&admin, "/readyz").0, 200);
    assert_eq!(get(&admin, "/healthz"), (200, "ok\n".into()));
    // A node whose only peer is nowhere: not ready, and it says why.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let (lonely, lonely_admin) = spawn(
        dir,
        "lonely",
        &[
            "--admin-address",
            "127.0.0.1:0",
            "--peer",
            &format!("ghost@{closed}"),
        ],
    );
    let (status, body) = get(lonely_admin.as_deref().unwrap(), "/readyz");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("no live member"), "{body}");
    drop(lonely);

    // Every member, alive.
    wait_until(Duration::from_secs(20), "three members alive", || {
        let m = members(&admin);
        ["n1", "n2", "n3"]
            .iter()
            .all(|id| m.iter().any(|(i, s)| i == id && s == "alive"))
    });

    // Every family shows up once n1 has done each thing once (its first
    // probes and syncs take a period or two).
    const FAMILIES: [&str; 9] = [
        "aegis_rpc_server_requests_total",
        "aegis_rpc_server_duration_seconds",
        "aegis_rpc_client_requests_total",
        "aegis_members",
        "aegis_probes_total",
        "aegis_sync_bytes_total",
        "aegis_tls_handshakes_total",
        "aegis_tls_cert_not_after_seconds",
        "aegis_local_health",
    ];
    wait_until(Duration::from_secs(10), "every metric family", || {
        let all = samples(&get(&admin, "/metrics").1);
        FAMILIES
            .iter()
            .all(|f| all.iter().any(|(s, _)| s.starts_with(f)))
    });
    // N pings from a node in this process move n1's served-RPC counter by
    // at least N.
    let observer = Node::builder()
        .with_id("observer")
        .with_name("observer")
        .with_address("127.0.0.1:0")
        .with_cert_dir(dir)
        .with_mesh_loop(aegis::MeshConfig::disabled())
        .build()
        .unwrap();
    observer
        .add_peer(PeerInfo::new("n1", n1.address.clone()).unwrap())
        .unwrap();
    let ping = ["method=\"aegis.MeshService/Ping\"", "peer=\"observer\""];
    let (_, text) = get(&admin, "/metrics");
    let before = sum(&samples(&text), "aegis_rpc_server_requests_total{", &ping);
    for _ in 0..20 {
        observer.ping_peer("n1").await.unwrap();
    }
    let (status, text) = get(&admin, "/metrics");
    assert_eq!(status, 200);
    let all = samples(&text);
    let after = sum(&all, "aegis_rpc_server_requests_total{", &ping);
    assert!(after - before >= 20.0, "{before} -> {after}");
    assert!(sum(&all, "aegis_members{", &["state=\"alive\""]) >= 2.0);
    let not_after = sum(&all, "aegis_tls_cert_not_after_seconds", &[]);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        not_after > now && not_after < now + 400.0 * 86400.0,
        "{not_after}"
    );

    // The page, in a browser, then a node killed while it watches.
    let browser = browser::Browser::launch();
    let page = browser
        .as_ref()
        .map(|b| b.open(&format!("http://{admin}/")));
    if let Some(page) = &page {
        wait_until(
            Duration::from_secs(20),
            "the page lists the members",
            || {
                let rows = page.rows();
                ["n1", "n2", "n3"]
                    .iter()
                    .all(|id| rows.iter().any(|(i, s)| i == id && s == "alive"))
            },
        );
    }
    let killed = Instant::now();
    drop(n3.take()); // SIGKILL
    let json = wait_until(Duration::from_secs(6), "n3 dead in /members", || {
        members(&admin)
            .iter()
            .any(|(i, s)| i == "n3" && s == "dead")
    });
    println!(
        "killed node dead in /members after {:?}",
        killed.elapsed().min(json + killed.elapsed())
    );
    if let Some(page) = &page {
        wait_until(Duration::from_secs(7), "n3 dead on the page", || {
            page.rows().iter().any(|(i, s)| i == "n3" && s == "dead")
        });
        println!("killed node dead on the page after {:?}", killed.elapsed());
        let shot = concat!(env!("CARGO_MANIFEST_DIR"), "/../target/admin-page.png");
        page.screenshot(shot);
        println!("screenshot: {shot}");
    }
    drop(n2);
    drop(n1);
}

/// Just enough of the Chrome DevTools protocol: open a page, read its DOM,
/// take a screenshot.
mod browser {
    use std::io::{BufRead, BufReader};
    use std::net::TcpStream;
    use std::process::{Child, Command, Stdio};
    use std::sync::Mutex;
    use std::time::Duration;

    use tungstenite::{Message, WebSocket};

    pub struct Browser {
        child: Child,
        ws: Mutex<WebSocket<TcpStream>>,
        next: Mutex<u64>,
        _profile: tempfile::TempDir,
    }

    pub struct Page<'a> {
        browser: &'a Browser,
        session: String,
    }

    impl Drop for Browser {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    fn find() -> Option<&'static str> {
        ["chromium", "chromium-browser", "google-chrome"]
            .into_iter()
            .find(|b| {
                Command::new(b)
                    .arg("--version")
                    .output()
                    .is_ok_and(|o| o.status.success())
            })
    }

    impl Browser {
        /// Headless Chromium, or `None` (saying so) when there is none and
        /// `AEGIS_BROWSER` is not `required`.
        pub fn launch() -> Option<Self> {
            let Some(bin) = find() else {
                assert!(
                    std::env::var("AEGIS_BROWSER").as_deref() != Ok("required"),
                    "AEGIS_BROWSER=required, but no chromium is installed"
                );
                eprintln!("skipped: the page test needs chromium");
                return None;
            };
            let profile = tempfile::tempdir().unwrap();
            let mut child = Command::new(bin)
                .args([
                    "--headless=new",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    "--no-first-run",
                    "--window-size=1000,640",
                    "--remote-debugging-port=0",
                ])
                .arg(format!("--user-data-dir={}", profile.path().display()))
                .arg("about:blank")
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            let stderr = child.stderr.take().unwrap();
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    if let Some(url) = line.strip_prefix("DevTools listening on ") {
                        let _ = tx.send(url.to_owned());
                    }
                }
            });
            let url = rx
                .recv_timeout(Duration::from_secs(30))
                .expect("chromium printed its DevTools address");
            let host = url
                .trim_start_matches("ws://")
                .split('/')
                .next()
                .unwrap()
                .to_owned();
            let tcp = TcpStream::connect(&host).unwrap();
            tcp.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
            let (ws, _) = tungstenite::client(url.as_str(), tcp).unwrap();
            Some(Self {
                child,
                ws: Mutex::new(ws),
                next: Mutex::new(1),
                _profile: profile,
            })
        }

        /// Sends a command (to a page session, if given) and returns its
        /// result, skipping events.
        fn call(
            &self,
            session: Option<&str>,
            method: &str,
            params: serde_json::Value,
        ) -> serde_json::Value {
            let id = {
                let mut n = self.next.lock().unwrap();
                *n += 1;
                *n
            };
            let mut msg = serde_json::json!({"id": id, "method": method});
            msg["params"] = params;
            if let Some(s) = session {
                msg["sessionId"] = s.into();
            }
            let mut ws = self.ws.lock().unwrap();
            ws.send(Message::text(msg.to_string())).unwrap();
            loop {
                let Message::Text(text) = ws.read().unwrap() else {
                    continue;
                };
                let v: serde_json::Value = serde_json::from_str(&text).unwrap();
                if v["id"].as_u64() == Some(id) {
                    assert!(v.get("error").is_none(), "{method}: {v}");
                    return v["result"].clone();
                }
            }
        }

        pub fn open(&self, url: &str) -> Page<'_> {
            let target = self.call(None, "Target.createTarget", serde_json::json!({"url": url}));
            let attached = self.call(
                None,
                "Target.attachToTarget",
                serde_json::json!({"targetId": target["targetId"], "flatten": true}),
            );
            Page {
                browser: self,
                session: attached["sessionId"].as_str().unwrap().to_owned(),
            }
        }
    }

    impl Page<'_> {
        /// (member, state) of each row of the rendered table.
        pub fn rows(&self) -> Vec<(String, String)> {
            let expr = "JSON.stringify([...document.querySelectorAll('tr[data-member]')]\
                        .map(r => [r.dataset.member, r.dataset.state]))";
            let r = self.browser.call(
                Some(&self.session),
                "Runtime.evaluate",
                serde_json::json!({"expression": expr, "returnByValue": true}),
            );
            let text = r["result"]["value"].as_str().unwrap_or("[]");
            serde_json::from_str(text).unwrap_or_default()
        }

        pub fn screenshot(&self, path: &str) {
            let r = self.browser.call(
                Some(&self.session),
                "Page.captureScreenshot",
                serde_json::json!({"format": "png"}),
            );
            let data = r["data"].as_str().unwrap();
            std::fs::write(path, decode_base64(data)).unwrap();
        }
    }

    fn decode_base64(s: &str) -> Vec<u8> {
        let value = |c: u8| -> u32 {
            match c {
                b'A'..=b'Z' => u32::from(c - b'A'),
                b'a'..=b'z' => u32::from(c - b'a') + 26,
                b'0'..=b'9' => u32::from(c - b'0') + 52,
                b'+' => 62,
                _ => 63,
            }
        };
        let bytes: Vec<u8> = s
            .bytes()
            .filter(|&c| c != b'=' && !c.is_ascii_whitespace())
            .collect();
        let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
        for chunk in bytes.chunks(4) {
            let mut n = 0u32;
            for (i, &c) in chunk.iter().enumerate() {
                n |= value(c) << (18 - 6 * i);
            }
            let [_, a, b, c] = n.to_be_bytes();
            out.push(a);
            if chunk.len() > 2 {
                out.push(b);
            }
            if chunk.len() > 3 {
                out.push(c);
            }
        }
        out
    }
}
