//! `aegis ping`: a load generator on one mTLS connection.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::args::{self, Arg, Usage};
use crate::members::{Target, parse_target};

/// The usage of `aegis ping`.
pub const USAGE: &str = "\
usage: aegis ping --cert-dir DIR --id CLIENT_ID --peer [ID@]HOST:PORT [--streams N] [--seconds S]

Pings the node at --peer (aegis.MeshService/Ping) as fast as it answers, from
N concurrent callers (default 1) sharing one mutual-TLS connection, for S
seconds (default 5), then prints calls per second and latency percentiles.
Works against any node that speaks the mesh protocol, this project's or the
reference implementation's. The calls are made as CLIENT_ID of DIR.";

/// `aegis ping ARGS`.
pub fn main(raw: &[String]) -> ExitCode {
    let (target, rest) = match parse_target(raw, &["--streams", "--seconds"]) {
        Ok(p) => p,
        Err(usage) => return crate::usage_exit(&usage, USAGE),
    };
    let (mut streams, mut seconds) = (1u64, 5u64);
    for arg in rest {
        let parsed = match arg {
            Arg::Flag(f, Some(v)) if f == "--streams" => args::count(&f, &v).map(|n| streams = n),
            Arg::Flag(f, Some(v)) if f == "--seconds" => args::count(&f, &v).map(|n| seconds = n),
            Arg::Flag(f, _) => Err(Usage(format!("unknown argument {f:?}"))),
            Arg::Positional(p) => Err(Usage(format!("unexpected argument {p:?}"))),
        };
        if let Err(usage) = parsed {
            return crate::usage_exit(&usage, USAGE);
        }
    }
    if streams > 10_000 {
        return crate::usage_exit(&Usage("--streams: at most 10000".into()), USAGE);
    }
    crate::block_on(async move { run(target.load()?, streams, Duration::from_secs(seconds)).await })
}

/// The `q` quantile (0..=1) of sorted latencies.
fn quantile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

async fn run(
    target: Target,
    streams: u64,
    length: Duration,
) -> Result<(), Box<dyn std::error::Error>> {
    let (peers, peer_id) = target.connect().await?;
    let peers = Arc::new(peers);
    // One call first: a node that does not answer is an error, not a
    // report of zero calls.
    peers.ping_peer(peer_id.as_str()).await?;
    let started = Instant::now();
    let end = started + length;
    let mut callers = Vec::new();
    for _ in 0..streams {
        let (peers, id) = (Arc::clone(&peers), peer_id.clone());
        callers.push(tokio::spawn(async move {
            let (mut ok, mut failed) = (Vec::new(), 0u64);
            while Instant::now() < end {
                let call = Instant::now();
                match peers.ping_peer(id.as_str()).await {
                    Ok(_) => ok.push(call.elapsed()),
                    Err(_) => failed += 1,
                }
            }
            (ok, failed)
        }));
    }
    let (mut latencies, mut failed) = (Vec::new(), 0);
    for caller in callers {
        let (ok, f) = caller.await?;
        latencies.extend(ok);
        failed += f;
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort_unstable();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    out!(
        "{peer_id} at {}: {} calls in {elapsed:.1} s over one connection, {streams} streams: {:.0} calls/s, {failed} failed",
        target.address,
        latencies.len(),
        latencies.len() as f64 / elapsed
    );
    out!(
        "latency p50 {:.3} ms, p90 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
        ms(quantile(&latencies, 0.5)),
        ms(quantile(&latencies, 0.9)),
        ms(quantile(&latencies, 0.99)),
        ms(latencies.last().copied().unwrap_or_default())
    );
    if failed > 0 && latencies.is_empty() {
        return Err(format!("every call to {peer_id} failed").into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles() {
        let d: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(quantile(&d, 0.5), Duration::from_millis(51));
        assert_eq!(quantile(&d, 0.99), Duration::from_millis(99));
        assert_eq!(quantile(&[], 0.5), Duration::ZERO);
    }
}
