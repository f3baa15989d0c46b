//! `aegis certs`: generate, inspect, renew, rotate the CA.

use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use aegis::tls::{CertDir, CertInfo, rfc3339};
use serde_json::{Value, json};

use crate::args::{self, Arg, Usage};

/// The usage of `aegis certs`.
pub const USAGE: &str = "\
usage: aegis certs gen --dir DIR [--validity DUR] [--ca-validity DUR] [--require-ca] ID...
       aegis certs inspect --dir DIR [--json] [ID...]
       aegis certs renew --dir DIR ID...
       aegis certs rotate-ca --dir DIR [--finish [--force]]

  gen         makes the mesh CA when the directory has none (with a warning;
              --require-ca refuses instead) and a certificate and key for each
              ID that has none. Existing files are never replaced.
              --validity: node certificates (default 90d); --ca-validity: a new
              CA (default 365d). DUR is a number and a unit: 90d, 12h, 30m, 10s.
  inspect     the CA bundle and the node certificates (all, or the IDs given):
              subject, SANs, serial, validity, the SHA-256 fingerprint of the CA
              each chains to. --json for a machine-readable report.
  renew       re-issues the certificates of the IDs for their existing keys,
              as long-lived as before. Running nodes pick them up.
  rotate-ca   starts a CA rollover: a new CA signs from now on, and ca-cert.pem
              trusts both; nodes that hold the CA key re-issue their
              certificates from the new CA by themselves. --finish drops the
              old CA once every certificate of the directory comes from the
              new one (--force: even if not).";

/// `aegis certs ARGS`.
pub fn main(raw: &[String]) -> ExitCode {
    let result = match raw.first().map(String::as_str) {
        Some("gen") => parse(
            &raw[1..],
            &["--validity", "--ca-validity"],
            &["--require-ca"],
            Ids::Some,
        )
        .map(|a| gen_certs(&a)),
        Some("inspect") => parse(&raw[1..], &[], &["--json"], Ids::Any).map(|a| inspect(&a)),
        Some("renew") => parse(&raw[1..], &[], &[], Ids::Some).map(|a| renew(&a)),
        Some("rotate-ca") => {
            parse(&raw[1..], &[], &["--finish", "--force"], Ids::None).map(|a| rotate(&a))
        }
        Some("-h" | "--help") => Err(Usage::help()),
        Some(other) => Err(Usage(format!("unknown certs command {other:?}"))),
        None => Err(Usage("which certs command?".into())),
    };
    match result {
        Ok(outcome) => crate::finish(outcome),
        Err(usage) => crate::usage_exit(&usage, USAGE),
    }
}

/// The flags every certs command shares.
struct Parsed {
    dir: CertDir,
    ids: Vec<String>,
    switches: Vec<String>,
    validity: Option<Duration>,
    ca_validity: Option<Duration>,
}

/// Which node IDs a command takes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Ids {
    /// At least one.
    Some,
    /// Any number.
    Any,
    /// None.
    None,
}

fn parse(raw: &[String], extra: &[&str], switches: &[&str], ids: Ids) -> Result<Parsed, Usage> {
    let mut with_value = vec!["--dir"];
    with_value.extend_from_slice(extra);
    let mut dir = None;
    let mut parsed = Parsed {
        dir: CertDir::new("."),
        ids: Vec::new(),
        switches: Vec::new(),
        validity: None,
        ca_validity: None,
    };
    for arg in args::split(raw, &with_value)? {
        match arg {
            Arg::Flag(f, Some(v)) if f == "--dir" => dir = Some(v),
            Arg::Flag(f, Some(v)) if f == "--validity" => {
                parsed.validity = Some(args::duration(&f, &v)?);
            }
            Arg::Flag(f, Some(v)) if f == "--ca-validity" => {
                parsed.ca_validity = Some(args::duration(&f, &v)?);
            }
            Arg::Flag(f, None) if switches.contains(&f.as_str()) => parsed.switches.push(f),
            Arg::Flag(f, None) => return Err(Usage(format!("unknown argument {f:?}"))),
            Arg::Flag(f, Some(_)) => return Err(Usage(format!("unknown argument {f:?}"))),
            Arg::Positional(id) => {
                aegis::NodeId::new(&id)
                    .map_err(|e| Usage(format!("{id:?} is not a node ID: {e}")))?;
                parsed.ids.push(id);
            }
        }
    }
    let dir = dir.ok_or_else(|| Usage("--dir is required".into()))?;
    match ids {
        Ids::Some if parsed.ids.is_empty() => {
            return Err(Usage("give at least one node ID".into()));
        }
        Ids::None if !parsed.ids.is_empty() => {
            return Err(Usage("this command takes no node IDs".into()));
        }
        _ => {}
    }
    parsed.dir = CertDir::new(dir);
    Ok(parsed)
}

impl Parsed {
    fn switch(&self, name: &str) -> bool {
        self.switches.iter().any(|s| s == name)
    }
}

fn gen_certs(a: &Parsed) -> Result<(), Box<dyn std::error::Error>> {
    let mut dir = a.dir.clone().require_existing_ca(a.switch("--require-ca"));
    if let Some(v) = a.validity {
        dir = dir.with_node_validity(v);
    }
    if let Some(v) = a.ca_validity {
        dir = dir.with_ca_validity(v);
    }
    for id in &a.ids {
        let created = dir.ensure_node(id)?;
        if created.ca {
            out!("created the mesh CA in {}", dir.path().display());
        }
        let info = dir.node_cert_info(id)?;
        let what = if created.node { "issued" } else { "exists" };
        out!(
            "{id}: {what}, serial {}, valid until {}",
            info.serial_hex(),
            rfc3339(info.not_after)
        );
    }
    Ok(())
}

fn renew(a: &Parsed) -> Result<(), Box<dyn std::error::Error>> {
    for id in &a.ids {
        let info = a.dir.renew_node(id)?;
        out!(
            "{id}: renewed, serial {}, valid until {}",
            info.serial_hex(),
            rfc3339(info.not_after)
        );
    }
    Ok(())
}

fn rotate(a: &Parsed) -> Result<(), Box<dyn std::error::Error>> {
    if a.switch("--finish") {
        let dropped = a.dir.finish_ca_rotation(a.switch("--force"))?;
        if dropped.is_empty() {
            out!("no rollover in progress: ca-cert.pem holds one CA");
        }
        for ca in dropped {
            out!(
                "dropped CA {} (sha256 {})",
                subject(&ca),
                ca.fingerprint_hex()
            );
        }
    } else {
        if a.switch("--force") {
            return Err("--force goes with --finish".into());
        }
        let ca = a.dir.rotate_ca()?;
        out!(
            "new CA {} (sha256 {}) signs from now on; ca-cert.pem trusts the old and the new CA.\n\
             Nodes holding the CA key re-issue their certificates from it; then run\n  \
             aegis certs rotate-ca --dir {} --finish",
            subject(&ca),
            ca.fingerprint_hex(),
            a.dir.path().display()
        );
    }
    Ok(())
}

fn subject(info: &CertInfo) -> String {
    info.common_name
        .clone()
        .unwrap_or_else(|| "(no name)".into())
}

fn sans(info: &CertInfo) -> Vec<String> {
    info.dns_names
        .iter()
        .cloned()
        .chain(info.ip_addresses.iter().map(ToString::to_string))
        .collect()
}

fn inspect(a: &Parsed) -> Result<(), Box<dyn std::error::Error>> {
    let report = report(a)?;
    if a.switch("--json") {
        out!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    out!(
        "directory {} ({})",
        a.dir.path().display(),
        if a.dir.can_issue() {
            "holds the CA key: can issue and renew"
        } else {
            "no CA key"
        }
    );
    for ca in report["cas"].as_array().into_iter().flatten() {
        out!(
            "  CA   {:<28} sha256 {}  {} .. {}{}",
            ca["subject"].as_str().unwrap_or_default(),
            ca["sha256"].as_str().unwrap_or_default(),
            ca["not_before"].as_str().unwrap_or_default(),
            ca["not_after"].as_str().unwrap_or_default(),
            if ca["signing"] == true {
                "  (signs)"
            } else {
                ""
            }
        );
    }
    for node in report["nodes"].as_array().into_iter().flatten() {
        let id = node["id"].as_str().unwrap_or_default();
        if let Some(error) = node["error"].as_str() {
            out!("  node {id}: {error}");
            continue;
        }
        out!(
            "  node {id:<23} serial {}  {} .. {}  {}",
            node["serial"].as_str().unwrap_or_default(),
            node["not_before"].as_str().unwrap_or_default(),
            node["not_after"].as_str().unwrap_or_default(),
            node["status"].as_str().unwrap_or_default(),
        );
        let sans: Vec<&str> = node["sans"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        out!("       SANs {}", sans.join(", "));
        match node["ca_sha256"].as_str() {
            Some(fp) => out!("       chains to the CA sha256 {fp}"),
            None => out!("       chains to NO CA of the bundle"),
        }
    }
    Ok(())
}

/// What `inspect` shows, as JSON.
fn report(a: &Parsed) -> Result<Value, Box<dyn std::error::Error>> {
    let signing = a.dir.signing_ca()?.map(|ca| ca.fingerprint_sha256);
    let cas: Vec<Value> = a
        .dir
        .ca_bundle()?
        .iter()
        .map(|(ca, _)| {
            json!({
                "subject": subject(ca),
                "sha256": ca.fingerprint_hex(),
                "serial": ca.serial_hex(),
                "not_before": rfc3339(ca.not_before),
                "not_after": rfc3339(ca.not_after),
                "signing": signing == Some(ca.fingerprint_sha256),
            })
        })
        .collect();
    let ids = if a.ids.is_empty() {
        a.dir.node_ids()
    } else {
        a.ids.clone()
    };
    let now = SystemTime::now();
    let nodes: Vec<Value> = ids
        .iter()
        .map(|id| match (a.dir.node_cert_info(id), a.dir.issuer_of(id)) {
            (Ok(info), Ok(issuer)) => {
                let status = if now > info.not_after {
                    "EXPIRED"
                } else if now >= aegis::tls::renewal_time(&info, 2.0 / 3.0) {
                    "valid, due for renewal"
                } else {
                    "valid"
                };
                json!({
                    "id": id,
                    "subject": subject(&info),
                    "sans": sans(&info),
                    "serial": info.serial_hex(),
                    "not_before": rfc3339(info.not_before),
                    "not_after": rfc3339(info.not_after),
                    "status": status,
                    "ca_sha256": issuer.map(|ca| ca.fingerprint_hex()),
                })
            }
            (Err(e), _) | (_, Err(e)) => json!({ "id": id, "error": e.to_string() }),
        })
        .collect();
    Ok(json!({
        "dir": a.dir.path().display().to_string(),
        "can_issue": a.dir.can_issue(),
        "cas": cas,
        "nodes": nodes,
    }))
}
