//! Helpers shared by the facade's tests.
#![allow(dead_code)]

use std::time::{Duration, Instant};

use aegis::Node;

/// A node on 127.0.0.1 with a free port, named after its ID, with its
/// certificates in `dir`.
pub fn builder(dir: &std::path::Path, id: &str) -> aegis::NodeBuilder {
    Node::builder()
        .with_id(id)
        .with_name(id)
        .with_address("127.0.0.1:0")
        .with_cert_dir(dir)
}

/// Polls `f` until it holds; panics naming `what` after `limit`. Returns
/// how long it took.
pub async fn wait_until(limit: Duration, what: &str, mut f: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    start.elapsed()
}

/// Polls the async `f` until it holds; panics naming `what` after `limit`.
pub async fn wait_until_async(limit: Duration, what: &str, mut f: impl AsyncFnMut() -> bool) {
    let start = Instant::now();
    while !f().await {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
