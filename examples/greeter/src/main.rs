//! `greeter`: your own service on aegis, end to end.
//!
//! ```text
//! greeter provide --id greeter-1 --address 127.0.0.1:7101 --cert-dir ./certs [--seed HOST:PORT]
//! greeter demo [--calls N] [--retries N]
//! ```
//!
//! `provide` runs one provider of `greeter v1` until SIGINT or SIGTERM.
//! `demo` starts two providers (this program again, as child processes), a
//! consumer in this process that joins through the first provider's
//! address alone, waits until both providers are known, sends calls over
//! one balanced client (spread per request), kills one provider with
//! SIGKILL and goes on calling (retries on: no call fails). It prints what
//! happened and exits non-zero if a call failed or the calls were not
//! spread.
//!
//! Logs go to stderr through `aegis::init_logging` (`RUST_LOG` to change).

use std::collections::BTreeMap;
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::Duration;

use aegis::{Node, ServiceInfo};
use greeter::Greetings;
use greeter::pb::HelloRequest;
use greeter::pb::greeter_client::GreeterClient;

const USAGE: &str = "\
usage: greeter provide --id ID --address HOST:PORT [--cert-dir DIR] [--seed HOST:PORT]
       greeter demo [--calls N] [--retries N]";

fn flag(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

#[tokio::main]
async fn main() -> ExitCode {
    if let Err(e) = aegis::init_logging() {
        eprintln!("warning: logging not set up: {e}");
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("provide") => provide(&args[1..]).await,
        Some("demo") => demo(&args[1..]).await,
        _ => {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// One provider of greeter v1, until SIGINT or SIGTERM.
async fn provide(args: &[String]) -> Result<(), BoxError> {
    let id = flag(args, "--id").ok_or("--id is required")?;
    let address = flag(args, "--address").ok_or("--address is required")?;
    let certs = flag(args, "--cert-dir").unwrap_or_else(|| "./certs".into());
    let mut builder = Node::builder()
        .with_id(&id)
        .with_name("greeter")
        .with_address(address)
        .with_cert_dir(certs)
        // Declared in the mesh, served, and reported in grpc.health.v1.
        .with_grpc_service(
            ServiceInfo::new("greeter", "v1"),
            Greetings::new(&id).server(),
        );
    if let Some(seed) = flag(args, "--seed") {
        builder = builder.with_seed(seed);
    }
    let node = builder.build()?;
    let addr = node.start_server().await?;
    println!("listening on {addr}");
    aegis::shutdown_signal().await;
    println!("shutting down");
    node.shutdown().await?;
    Ok(())
}

/// A provider process, killed when dropped.
struct Provider(Child);

impl Drop for Provider {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn_provider(
    id: &str,
    certs: &str,
    seed: Option<&str>,
) -> Result<(Provider, String), BoxError> {
    let exe = std::env::current_exe()?;
    let mut cmd = Command::new(exe);
    cmd.args([
        "provide",
        "--id",
        id,
        "--address",
        "127.0.0.1:0",
        "--cert-dir",
        certs,
    ])
    .stdout(Stdio::piped());
    if let Some(seed) = seed {
        cmd.args(["--seed", seed]);
    }
    let mut child = cmd.spawn()?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let mut provider = Provider(child);
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stdout));
    let address = loop {
        match lines.next() {
            Some(Ok(line)) => {
                if let Some(a) = line.strip_prefix("listening on ") {
                    break a.to_owned();
                }
            }
            _ => {
                let _ = provider.0.kill();
                return Err(format!("provider {id} exited before listening").into());
            }
        }
    };
    // Keep reading so the child never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    Ok((provider, address))
}

async fn demo(args: &[String]) -> Result<(), BoxError> {
    let calls: usize = flag(args, "--calls").map_or(Ok(20), |c| c.parse())?;
    let retries: usize = flag(args, "--retries").map_or(Ok(2), |c| c.parse())?;
    let dir = std::env::temp_dir().join(format!("greeter-demo-{}", std::process::id()));
    let certs = dir
        .to_str()
        .ok_or("temporary directory is not UTF-8")?
        .to_owned();
    let (first, seed) = spawn_provider("greeter-1", &certs, None)?;
    let (second, _) = spawn_provider("greeter-2", &certs, Some(&seed))?;

    // The consumer knows one address, nothing else.
    let consumer = Node::builder()
        .with_id("greeter-consumer")
        .with_name("consumer")
        .with_address("127.0.0.1:0")
        .with_cert_dir(&certs)
        .with_seed(&seed)
        .build()?;
    consumer.start_server().await?;
    let ready = consumer
        .wait_for_providers("greeter", "v1", 2, Duration::from_secs(20))
        .await?;
    println!("ready: {} providers of greeter v1", ready.len());

    // One client object; every request picks a provider, and a request that
    // could not be sent is retried on another.
    let channel = consumer
        .client_pool()
        .balanced("greeter", "v1")
        .with_retries(retries);
    let mut client = GreeterClient::new(channel);
    let mut answered_by: BTreeMap<String, usize> = BTreeMap::new();
    let mut failed = 0;
    for i in 0..calls {
        match client
            .say_hello(HelloRequest {
                name: format!("call {i}"),
            })
            .await
        {
            Ok(reply) => {
                let reply = reply.into_inner();
                if i == 0 {
                    println!(
                        "{} (answered by {}, caller {})",
                        reply.message, reply.provider_id, reply.caller_id
                    );
                }
                *answered_by.entry(reply.provider_id).or_default() += 1;
            }
            Err(status) => {
                failed += 1;
                eprintln!("call {i} failed: {}", status.message());
            }
        }
    }
    println!("before the kill: {answered_by:?}, {failed} failed");
    let spread = answered_by.len() == 2;

    drop(second); // SIGKILL: no leave announcement, nothing graceful.
    println!("greeter-2 killed");
    let mut after: BTreeMap<String, usize> = BTreeMap::new();
    let mut failed_after = 0;
    for i in 0..calls {
        match client
            .say_hello(HelloRequest {
                name: format!("after {i}"),
            })
            .await
        {
            Ok(reply) => *after.entry(reply.into_inner().provider_id).or_default() += 1,
            Err(status) => {
                failed_after += 1;
                eprintln!("call {i} after the kill failed: {}", status.message());
            }
        }
    }
    println!("after the kill: {after:?}, {failed_after} failed");
    consumer.shutdown().await?;
    drop(first);
    let _ = std::fs::remove_dir_all(&dir);
    if !spread {
        return Err("calls were not spread over both providers".into());
    }
    if failed + failed_after > 0 {
        return Err(format!("{} calls failed", failed + failed_after).into());
    }
    println!("ok: every call answered");
    Ok(())
}
