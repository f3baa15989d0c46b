//! `aegis members`: the topology a running node holds, as a table.

use std::process::ExitCode;
use std::time::Duration;

use aegis::peer::proto::mesh::{GetTopologyRequest, NodeState, TopologyNode};
use aegis::peer::{PeerInfo, PeerManager};
use aegis::tls::{CertDir, TlsConfig, TlsOptions};
use aegis::{NodeId, Topology};
use serde_json::json;

use crate::args::{self, Arg, Usage};

/// The usage of `aegis members`.
pub const USAGE: &str = "\
usage: aegis members --cert-dir DIR --id CLIENT_ID --peer [ID@]HOST:PORT [--json]

Asks the node at --peer for its view of the mesh and prints every member:
ID, address, state, health, services. The call is made as the node
CLIENT_ID of the certificate directory DIR (its certificate is issued when
the directory holds the CA key and it has none; the CA must exist).";

/// Who to ask, and as whom.
pub(crate) struct Target {
    pub(crate) tls: TlsConfig,
    pub(crate) peer_id: Option<String>,
    pub(crate) address: String,
}

/// [`Target`] as given on the command line, not loaded yet (so that every
/// flag is checked before any file is read).
pub(crate) struct TargetArgs {
    dir: String,
    id: String,
    peer_id: Option<String>,
    address: String,
}

impl TargetArgs {
    /// Loads the client's certificate (issued if the directory can).
    pub(crate) fn load(self) -> Result<Target, Box<dyn std::error::Error>> {
        CertDir::new(&self.dir)
            .require_existing_ca(true)
            .ensure_node(&self.id)?;
        let tls = aegis::tls::load_tls_config(&TlsOptions::from_cert_dir(&self.dir, &self.id))?;
        Ok(Target {
            tls,
            peer_id: self.peer_id,
            address: self.address,
        })
    }
}

/// Parses `--cert-dir`, `--id` and `--peer`, plus the flags in `extra`
/// (returned as they came).
pub(crate) fn parse_target(
    raw: &[String],
    extra: &[&str],
) -> Result<(TargetArgs, Vec<Arg>), Usage> {
    let mut with_value = vec!["--cert-dir", "--id", "--peer"];
    with_value.extend_from_slice(extra);
    let (mut dir, mut id, mut peer, mut rest) = (None, None, None, Vec::new());
    for arg in args::split(raw, &with_value)? {
        match arg {
            Arg::Flag(f, Some(v)) if f == "--cert-dir" => dir = Some(v),
            Arg::Flag(f, Some(v)) if f == "--id" => id = Some(v),
            Arg::Flag(f, Some(v)) if f == "--peer" => peer = Some(args::peer(&f, &v)?),
            other => rest.push(other),
        }
    }
    let missing = |flag: &str| Usage(format!("{flag} is required"));
    let dir = dir.ok_or_else(|| missing("--cert-dir"))?;
    let id = id.ok_or_else(|| missing("--id"))?;
    let (peer_id, address) = peer.ok_or_else(|| missing("--peer"))?;
    Ok((
        TargetArgs {
            dir,
            id,
            peer_id,
            address,
        },
        rest,
    ))
}

impl Target {
    /// A peer manager holding the target as its one peer, and its ID.
    pub(crate) async fn connect(
        &self,
    ) -> Result<(PeerManager, NodeId), Box<dyn std::error::Error>> {
        let peer_id = match &self.peer_id {
            Some(id) => NodeId::new(id)?,
            None => {
                aegis::peer::transport::identify(&self.tls, &self.address, Duration::from_secs(5))
                    .await?
            }
        };
        let peers = PeerManager::new(self.tls.node_id().clone(), Some(&self.tls), Topology::new());
        peers.add_peer(PeerInfo::new(peer_id.as_str(), self.address.clone())?)?;
        Ok((peers, peer_id))
    }
}

/// `aegis members ARGS`.
pub fn main(raw: &[String]) -> ExitCode {
    let parsed = parse_target(raw, &[]);
    let (target, rest) = match parsed {
        Ok(p) => p,
        Err(usage) => return crate::usage_exit(&usage, USAGE),
    };
    let mut json = false;
    for arg in rest {
        match arg {
            Arg::Flag(f, None) if f == "--json" => json = true,
            Arg::Flag(f, _) => {
                return crate::usage_exit(&Usage(format!("unknown argument {f:?}")), USAGE);
            }
            Arg::Positional(p) => {
                return crate::usage_exit(&Usage(format!("unexpected argument {p:?}")), USAGE);
            }
        }
    }
    crate::block_on(async move { run(target.load()?, json).await })
}

fn state(node: &TopologyNode) -> &'static str {
    match NodeState::try_from(node.state) {
        Ok(NodeState::Alive) => "alive",
        Ok(NodeState::Suspect) => "suspect",
        Ok(NodeState::Dead) => "dead",
        Ok(NodeState::Left) => "left",
        Err(_) => "unknown",
    }
}

async fn run(target: Target, as_json: bool) -> Result<(), Box<dyn std::error::Error>> {
    let (peers, peer_id) = target.connect().await?;
    let peer = peers
        .get_peer(peer_id.as_str())
        .ok_or("the peer was not added")?;
    let mut client = peer.client()?;
    let request = GetTopologyRequest {
        sender_id: target.tls.node_id().to_string(),
    };
    let answer = tokio::time::timeout(Duration::from_secs(10), client.get_topology(request))
        .await
        .map_err(|_| format!("{peer_id} at {} did not answer within 10 s", target.address))?
        .map_err(|status| {
            format!(
                "{peer_id} at {}: {}",
                target.address,
                aegis::peer::describe(&status)
            )
        })?
        .into_inner();
    let mut nodes = answer.nodes;
    nodes.sort_by(|a, b| a.id.cmp(&b.id));
    let services = |n: &TopologyNode| {
        n.services
            .iter()
            .map(|s| format!("{}/{}", s.name, s.version))
            .collect::<Vec<_>>()
    };
    if as_json {
        let rows: Vec<_> = nodes
            .iter()
            .map(|n| {
                json!({
                    "id": n.id, "name": n.name, "type": n.r#type, "address": n.address,
                    "state": state(n), "health": n.health, "services": services(n),
                })
            })
            .collect();
        out!(
            "{}",
            serde_json::to_string_pretty(&json!({ "version": answer.version, "members": rows }))?
        );
        return Ok(());
    }
    let width = |f: &dyn Fn(&TopologyNode) -> usize, title: usize| {
        nodes.iter().map(f).max().unwrap_or(0).max(title)
    };
    let (wi, wa) = (width(&|n| n.id.len(), 2), width(&|n| n.address.len(), 7));
    out!(
        "{:<wi$}  {:<wa$}  {:<7}  {:<9}  SERVICES",
        "ID",
        "ADDRESS",
        "STATE",
        "HEALTH"
    );
    for n in &nodes {
        let health = if n.health.is_empty() { "-" } else { &n.health };
        let address = if n.address.is_empty() {
            "(client)"
        } else {
            &n.address
        };
        out!(
            "{:<wi$}  {:<wa$}  {:<7}  {:<9}  {}",
            n.id,
            address,
            state(n),
            health,
            services(n).join(", ")
        );
    }
    out!(
        "{} members, topology version {} at {peer_id}",
        nodes.len(),
        answer.version
    );
    Ok(())
}
