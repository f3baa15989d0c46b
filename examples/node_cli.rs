//! The standalone node behind the `node` example and the `aegis-node`
//! binary, for meshes of processes.
//!
//! ```text
//! cargo run -p aegis-examples --example node -- --id node-1 --name one --address 127.0.0.1:7001 \
//!     --service identity/v1 [--peer node-2@127.0.0.1:7002] [--cert-dir ./certs] [--type edge]
//! ```
//!
//! Serves the toy identity contract for every `identity/*` service it
//! declares, prints `listening on <addr>` once bound, and shuts down
//! gracefully (announcing that it leaves) on SIGINT or SIGTERM. With
//! `--print-states` it prints `state ID STATE` every time a member's state
//! changes in its topology (`STATE` is alive, suspect, dead, left, or gone
//! once purged), as it happens: nothing is coalesced.

use std::process::ExitCode;

use crate::ToyIdentity;
use aegis::services::identity::identity_service_server::IdentityServiceServer;
use aegis::{Node, PeerInfo, ServiceInfo};

/// The usage message.
const USAGE: &str = "\
usage: node --id ID --name NAME --address HOST:PORT [--cert-dir DIR] [--type TYPE]
            [--service NAME/VERSION]... [--peer ID@HOST:PORT]... [--print-states]
            [--admin-address IP:PORT]";

#[derive(Debug, Default)]
struct Args {
    id: Option<String>,
    name: Option<String>,
    address: Option<String>,
    cert_dir: Option<String>,
    node_type: Option<String>,
    services: Vec<ServiceInfo>,
    peers: Vec<(String, String)>,
    print_states: bool,
    admin: Option<String>,
}

fn parse(args: impl IntoIterator<Item = String>) -> Result<Args, String> {
    let mut out = Args::default();
    let mut it = args.into_iter();
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--id" => out.id = Some(value()?),
            "--name" => out.name = Some(value()?),
            "--address" => out.address = Some(value()?),
            "--cert-dir" => out.cert_dir = Some(value()?),
            "--type" => out.node_type = Some(value()?),
            "--service" => {
                let v = value()?;
                let (name, version) = v
                    .split_once('/')
                    .filter(|(n, v)| !n.is_empty() && !v.is_empty())
                    .ok_or_else(|| format!("--service {v:?}: expected NAME/VERSION"))?;
                out.services.push(ServiceInfo::new(name, version));
            }
            "--peer" => {
                let v = value()?;
                let (id, addr) = v
                    .split_once('@')
                    .filter(|(i, a)| !i.is_empty() && !a.is_empty())
                    .ok_or_else(|| format!("--peer {v:?}: expected ID@HOST:PORT"))?;
                out.peers.push((id.to_owned(), addr.to_owned()));
            }
            "--print-states" => out.print_states = true,
            "--admin-address" => out.admin = Some(value()?),
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(out)
}

/// Parses the command line, runs the node until SIGINT or SIGTERM.
pub fn main() -> ExitCode {
    let args = match parse(std::env::args().skip(1)) {
        Ok(a) => a,
        Err(msg) => {
            if !msg.is_empty() {
                eprintln!("error: {msg}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let mut builder = Node::builder().with_services(args.services.clone());
    if let Some(id) = &args.id {
        builder = builder.with_id(id);
    }
    if let Some(name) = &args.name {
        builder = builder.with_name(name);
    }
    if let Some(address) = &args.address {
        builder = builder.with_address(address);
    }
    if let Some(dir) = &args.cert_dir {
        builder = builder.with_cert_dir(dir);
    }
    if let Some(t) = &args.node_type {
        builder = builder.with_type(t.as_str());
    }
    if let Some(a) = &args.admin {
        builder = builder.with_admin_address(a);
    }
    if args.services.iter().any(|s| s.name == "identity") {
        let identity = ToyIdentity::new(args.id.clone().unwrap_or_default());
        builder = builder.with_service_registration(move |routes| {
            routes.add_service(IdentityServiceServer::new(identity.clone()));
        });
    }
    let node = builder.build()?;
    if args.print_states {
        print_states(node.topology());
    }
    let addr = node.start_server().await?;
    println!("listening on {addr}");
    if let Some(admin) = node.admin_address().await {
        println!("admin on http://{admin}/");
    }
    for (id, address) in &args.peers {
        node.add_peer(PeerInfo::new(id, address.clone())?)?;
    }
    aegis::shutdown_signal().await;
    println!("shutting down");
    node.shutdown().await?;
    Ok(())
}

/// Prints `state ID STATE` on every change of a member's state, from the
/// topology's change listener (so a death refuted a moment later is still
/// printed).
fn print_states(topology: &aegis::topology::Topology) {
    use std::collections::HashMap;
    use std::io::Write;
    use std::sync::Mutex;

    let seen: Mutex<HashMap<String, aegis::NodeState>> = Mutex::new(HashMap::new());
    let watched = topology.clone();
    topology.on_change(move |_| {
        let mut seen = seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut out = std::io::stdout().lock();
        let entries = watched.entries();
        for e in &entries {
            if seen.get(e.id().as_str()) != Some(&e.state) {
                let state = format!("{:?}", e.state).to_lowercase();
                let _ = writeln!(out, "state {} {state}", e.id());
                seen.insert(e.id().to_string(), e.state);
            }
        }
        seen.retain(|id, _| {
            let kept = entries.iter().any(|e| e.id().as_str() == id);
            if !kept {
                let _ = writeln!(out, "state {id} gone");
            }
            kept
        });
        let _ = out.flush();
    });
}
