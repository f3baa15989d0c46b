//! `aegis node`: a standalone node, for meshes of processes.
//!
//! ```text
//! aegis node --id node-1 --name one --address 127.0.0.1:7001 \
//!     --service identity/v1 [--peer node-2@127.0.0.1:7002] [--seed HOST:PORT] \
//!     [--cert-dir ./certs] [--type edge] [--admin-address 127.0.0.1:9001]
//! ```
//!
//! Prints `listening on <addr>` once bound, and shuts down gracefully
//! (announcing that it leaves) on SIGINT or SIGTERM. With `--print-states`
//! it prints `state ID STATE` every time a member's state changes in its
//! topology (`STATE` is alive, suspect, dead, left, or gone once purged),
//! as it happens: nothing is coalesced. Logs go to stderr, filtered by
//! `RUST_LOG`. Its certificate is renewed (or reloaded when its files
//! change) while it runs.
//!
//! [`main_with`] lets a program add its own services to the same command
//! line (the `aegis-node` example serves a toy identity service so).

use std::process::ExitCode;

use aegis::{Node, NodeBuilder, PeerInfo, ServiceInfo};

use crate::args::{self, Arg, Usage};

/// The usage message.
pub const USAGE: &str = "\
usage: aegis node --id ID --name NAME --address HOST:PORT [--cert-dir DIR] [--type TYPE]
                  [--service NAME/VERSION]... [--peer ID@HOST:PORT]... [--seed HOST:PORT]...
                  [--advertise-address HOST:PORT] [--admin-address IP:PORT] [--print-states]
                  [--require-ca] [--strict-permissions] [--discovery gossip|etcd[s]://HOST:PORT/PREFIX]
                  [--etcd-user NAME]

  --id ID                   the node ID (its certificate's name)
  --name NAME               a display name
  --address HOST:PORT       where to listen (port 0: any free port)
  --advertise-address H:P   the address others dial, when --address is 0.0.0.0
  --cert-dir DIR            certificate directory (default ./certs; created with a
                            new CA when missing, with a warning)
  --require-ca              refuse to start when the directory has no CA
  --strict-permissions      refuse to start when keys are readable by others or the
                            directory is writable by others (default: a warning)
  --type TYPE               node type (default generic)
  --service NAME/VERSION    a service this node provides (repeatable)
  --peer ID@HOST:PORT       a peer to start with (repeatable)
  --seed HOST:PORT          join through a node known only by its address (repeatable)
  --admin-address IP:PORT   serve /metrics, /healthz, /readyz, /members and a live page
  --print-states            print `state ID STATE` on every state change seen
  --discovery SOURCE        where members come from: gossip (default), or
                            etcd://HOST:PORT[,HOST:PORT]/PREFIX (builds with the
                            feature `etcd`; registers under a 10 s lease), or
                            etcds://... : TLS to etcd with this node's certificate,
                            trusting the mesh CA
  --etcd-user NAME          authenticate to etcd as NAME; the password comes from the
                            environment variable AEGIS_ETCD_PASSWORD (never a flag:
                            other users can read a process's arguments)

Logs go to stderr; RUST_LOG sets the filter (e.g. RUST_LOG=info,aegis=debug).";

/// The parsed command line of `aegis node`.
#[derive(Debug, Default)]
pub struct Options {
    /// `--id`.
    pub id: Option<String>,
    /// `--name`.
    pub name: Option<String>,
    /// `--address`.
    pub address: Option<String>,
    /// `--advertise-address`.
    pub advertise: Option<String>,
    /// `--cert-dir`.
    pub cert_dir: Option<String>,
    /// `--type`.
    pub node_type: Option<String>,
    /// `--service`, in order.
    pub services: Vec<ServiceInfo>,
    /// `--peer`, in order.
    pub peers: Vec<(String, String)>,
    /// `--seed`, in order.
    pub seeds: Vec<String>,
    /// `--print-states`.
    pub print_states: bool,
    /// `--admin-address`.
    pub admin: Option<String>,
    /// `--require-ca`.
    pub require_ca: bool,
    /// `--strict-permissions`.
    pub strict_permissions: bool,
    /// `--discovery`.
    pub discovery: Option<aegis::Discovery>,
    /// `--etcd-user`.
    pub etcd_user: Option<String>,
}

/// The environment variable that holds the password of `--etcd-user`.
pub const ETCD_PASSWORD_ENV: &str = "AEGIS_ETCD_PASSWORD";

/// Parses the flags of `aegis node`.
///
/// # Errors
/// [`Usage`] naming the flag that is wrong.
pub fn parse(raw: &[String]) -> Result<Options, Usage> {
    let mut out = Options::default();
    let with_value = [
        "--id",
        "--name",
        "--address",
        "--advertise-address",
        "--cert-dir",
        "--type",
        "--service",
        "--peer",
        "--seed",
        "--admin-address",
        "--discovery",
        "--etcd-user",
    ];
    for arg in args::split(raw, &with_value)? {
        match arg {
            Arg::Flag(flag, Some(v)) => match flag.as_str() {
                "--id" => out.id = Some(v),
                "--name" => out.name = Some(v),
                "--address" => out.address = Some(v),
                "--advertise-address" => out.advertise = Some(v),
                "--cert-dir" => out.cert_dir = Some(v),
                "--type" => out.node_type = Some(v),
                "--admin-address" => out.admin = Some(v),
                "--seed" => out.seeds.push(v),
                "--etcd-user" => out.etcd_user = Some(v),
                "--discovery" => {
                    out.discovery = Some(
                        aegis::Discovery::parse(&v)
                            .map_err(|e| Usage(format!("--discovery {e}")))?,
                    );
                }
                "--service" => {
                    let (name, version) = v
                        .split_once('/')
                        .filter(|(n, v)| !n.is_empty() && !v.is_empty())
                        .ok_or_else(|| Usage(format!("--service {v:?}: expected NAME/VERSION")))?;
                    out.services.push(ServiceInfo::new(name, version));
                }
                _ => match args::peer(&flag, &v)? {
                    (Some(id), addr) => out.peers.push((id, addr)),
                    (None, _) => {
                        return Err(Usage(format!(
                            "--peer {v:?}: expected ID@HOST:PORT (use --seed for an address alone)"
                        )));
                    }
                },
            },
            Arg::Flag(flag, None) if flag == "--print-states" => out.print_states = true,
            Arg::Flag(flag, None) if flag == "--require-ca" => out.require_ca = true,
            Arg::Flag(flag, None) if flag == "--strict-permissions" => {
                out.strict_permissions = true;
            }
            Arg::Flag(flag, _) => return Err(Usage(format!("unknown argument {flag:?}"))),
            Arg::Positional(p) => return Err(Usage(format!("unexpected argument {p:?}"))),
        }
    }
    let from_etcd = matches!(&out.discovery, Some(d) if !matches!(d, aegis::Discovery::Gossip));
    if out.etcd_user.is_some() && !from_etcd {
        return Err(Usage(
            "--etcd-user needs --discovery etcd://... or etcds://...".to_owned(),
        ));
    }
    Ok(out)
}

/// `discovery` authenticating as `user`, with the password from
/// [`ETCD_PASSWORD_ENV`] (parsing took a user only with etcd discovery).
fn with_etcd_user(
    discovery: aegis::Discovery,
    user: Option<&str>,
) -> Result<aegis::Discovery, String> {
    let Some(user) = user else {
        return Ok(discovery);
    };
    let password = std::env::var(ETCD_PASSWORD_ENV).map_err(|_| {
        format!(
            "--etcd-user {user}: set its password in the environment variable {ETCD_PASSWORD_ENV}"
        )
    })?;
    match discovery {
        #[cfg(feature = "etcd")]
        aegis::Discovery::Etcd(config) => Ok(aegis::Discovery::Etcd(Box::new(
            config.with_user(user, password),
        ))),
        // Gossip: parsing refused a user.
        other => {
            drop(password);
            Ok(other)
        }
    }
}

/// `aegis node ARGS`: runs the node until SIGINT or SIGTERM.
pub fn main(raw: &[String]) -> ExitCode {
    main_with(raw, |builder, _| builder)
}

/// Like [`main`], letting `extend` add to the node (its own gRPC services,
/// say) from the parsed options before it is built.
pub fn main_with(
    raw: &[String],
    extend: impl FnOnce(NodeBuilder, &Options) -> NodeBuilder,
) -> ExitCode {
    let options = match parse(raw) {
        Ok(o) => o,
        Err(usage) => return crate::usage_exit(&usage, USAGE),
    };
    if let Err(e) = aegis::init_logging() {
        eprintln!("warning: logging is off: {e}");
    }
    crate::block_on(run(options, extend))
}

async fn run(
    args: Options,
    extend: impl FnOnce(NodeBuilder, &Options) -> NodeBuilder,
) -> Result<(), Box<dyn std::error::Error>> {
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
    if let Some(a) = &args.advertise {
        builder = builder.with_advertise_address(a);
    }
    builder = builder
        .require_existing_ca(args.require_ca)
        .refuse_loose_permissions(args.strict_permissions);
    for seed in &args.seeds {
        builder = builder.with_seed(seed);
    }
    if let Some(discovery) = &args.discovery {
        builder = builder.with_discovery(with_etcd_user(
            discovery.clone(),
            args.etcd_user.as_deref(),
        )?);
    }
    let builder = extend(builder, &args);
    let node = builder.build()?;
    if args.print_states {
        print_states(node.topology());
    }
    let addr = node.start_server().await?;
    out!("listening on {addr}");
    if let Some(admin) = node.admin_address().await {
        out!("admin on http://{admin}/");
    }
    for (id, address) in &args.peers {
        node.add_peer(PeerInfo::new(id, address.clone())?)?;
    }
    aegis::shutdown_signal().await;
    out!("shutting down");
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
