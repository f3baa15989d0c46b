//! Membership in etcd at scale: 1,000 registered entries (written here, as
//! a load script would), 10 watching nodes in this process, and how fast
//! one change reaches them all.
//!
//! ```text
//! etcd --data-dir /tmp/etcd-scale &        # listens on 127.0.0.1:2379
//! cargo run --release -p aegis-cli --features etcd --example etcd_scale -- 127.0.0.1:2379 [ENTRIES] [WATCHERS] [CHANGES]
//! ```
//!
//! Prints: keys and bytes per registered node in etcd; the process's
//! resident memory before and after the watchers loaded every entry (per
//! watcher); for each change (a registered entry put again with a higher
//! stamp), the time until each watcher's topology holds it: median and max.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aegis::etcd_client::{Client, GetOptions};
use aegis::topology::{Entry, NodeInfo, NodeState, ServiceInfo, Stamp};
use aegis::{Discovery, Node};

const PREFIX: &str = "/aegis-scale";

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn entry(i: usize, version: u64) -> Entry {
    let info = NodeInfo::new(
        format!("load-{i}"),
        format!("load {i}"),
        format!("10.{}.{}.{}:7000", i / 65536 % 256, i / 256 % 256, i % 256),
    )
    .expect("a valid entry")
    .with_services([
        ServiceInfo::new("greeter", "v1"),
        ServiceInfo::new("identity", "v1"),
    ]);
    Entry::new(info, Stamp::new(1, version), NodeState::Alive)
}

fn arg(n: usize, default: usize) -> usize {
    std::env::args()
        .nth(n)
        .and_then(|a| a.parse().ok())
        .unwrap_or(default)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let endpoint = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:2379".into());
    let (entries, watchers, changes) = (arg(2, 1000), arg(3, 10), arg(4, 50));
    let mut client = Client::connect([endpoint.clone()], None).await?;
    client
        .delete(
            PREFIX,
            Some(aegis::etcd_client::DeleteOptions::new().with_prefix()),
        )
        .await?;
    let started = Instant::now();
    for i in 0..entries {
        let key = format!("{PREFIX}/nodes/load-{i}");
        client
            .put(key, serde_json::to_vec(&entry(i, 1))?, None)
            .await?;
    }
    println!(
        "wrote {entries} entries in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let all = client
        .get(
            format!("{PREFIX}/nodes/"),
            Some(GetOptions::new().with_prefix()),
        )
        .await?;
    let (keys, bytes): (usize, usize) = all.kvs().iter().fold((0, 0), |(k, b), kv| {
        (k + 1, b + kv.key().len() + kv.value().len())
    });
    println!(
        "etcd: {keys} keys, {bytes} bytes of keys and values: {} bytes per registered node",
        bytes / keys.max(1)
    );

    let certs = tempfile_dir();
    let before = rss_kib();
    let mut nodes = Vec::new();
    for w in 0..watchers {
        let node = Node::builder()
            .with_id(format!("watcher-{w}"))
            .with_name(format!("watcher {w}"))
            .with_address("127.0.0.1:0")
            .with_cert_dir(&certs)
            .with_discovery(Discovery::etcd([endpoint.clone()], PREFIX))
            .build()?;
        node.start_client().await?;
        nodes.push(node);
    }
    let want = entries + watchers;
    let loaded = Instant::now();
    while nodes.iter().any(|n| n.topology().node_count() < want) {
        if loaded.elapsed() > Duration::from_secs(60) {
            return Err("the watchers did not load every entry within 60 s".into());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let after = rss_kib();
    println!(
        "{watchers} watchers loaded {want} members each in {:.2} s; resident memory {} MiB -> {} MiB: {} KiB per watching node",
        loaded.elapsed().as_secs_f64(),
        before / 1024,
        after / 1024,
        after.saturating_sub(before) / watchers.max(1) as u64
    );

    // Each watcher's topology reports the moment it takes the change (a
    // change listener), so the figure is not the sampling of a poll.
    type Target = Option<(String, u64, Instant)>;
    let target: Arc<Mutex<Target>> = Arc::new(Mutex::new(None));
    let seen: Arc<Mutex<Vec<Option<Duration>>>> = Arc::new(Mutex::new(vec![None; nodes.len()]));
    for (w, node) in nodes.iter().enumerate() {
        let (target, seen, topology) = (
            Arc::clone(&target),
            Arc::clone(&seen),
            node.topology().clone(),
        );
        node.topology().on_change(move |_| {
            let Some((id, version, put)) = target.lock().unwrap().clone() else {
                return;
            };
            if topology
                .get_entry(&id)
                .is_some_and(|e| e.stamp.version == version)
            {
                let mut seen = seen.lock().unwrap();
                if seen[w].is_none() {
                    seen[w] = Some(put.elapsed());
                }
            }
        });
    }
    let mut samples = Vec::new();
    for c in 0..changes {
        let i = c * 7 % entries;
        let version = 2 + c as u64;
        let value = serde_json::to_vec(&entry(i, version))?;
        let id = format!("load-{i}");
        *seen.lock().unwrap() = vec![None; nodes.len()];
        *target.lock().unwrap() = Some((id.clone(), version, Instant::now()));
        client
            .put(format!("{PREFIX}/nodes/{id}"), value, None)
            .await?;
        let asked = Instant::now();
        while seen.lock().unwrap().iter().any(Option::is_none) {
            if asked.elapsed() > Duration::from_secs(10) {
                return Err(format!("change {c} did not reach every watcher in 10 s").into());
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        samples.extend(seen.lock().unwrap().iter().flatten().copied());
    }
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "{changes} changes x {watchers} watchers: time to reach a watcher median {:.2} ms, max {:.2} ms",
        ms(samples[samples.len() / 2]),
        ms(*samples.last().unwrap_or(&Duration::ZERO))
    );
    for node in &nodes {
        node.shutdown().await?;
    }
    client
        .delete(
            PREFIX,
            Some(aegis::etcd_client::DeleteOptions::new().with_prefix()),
        )
        .await?;
    let _ = std::fs::remove_dir_all(&certs);
    Ok(())
}

fn tempfile_dir() -> std::path::PathBuf {
    std::env::temp_dir().join(format!("aegis-etcd-scale-{}", std::process::id()))
}
