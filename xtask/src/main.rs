//! Project automation, run as `cargo xtask <job>`.
//!
//! Jobs:
//! - `gen-certs [--dir DIR] <node-id>...`: create the mesh CA in DIR (default
//!   `./certs`) if it is missing, and a certificate for each node ID that does
//!   not have one yet.

use std::path::PathBuf;
use std::process::ExitCode;

use aegis_tls::CertDir;

const USAGE: &str = "\
usage: cargo xtask gen-certs [--dir DIR] <node-id>...

  Creates the mesh CA in DIR (default ./certs) if missing, and a certificate
  and key for each node ID that has none yet. Keys are written with mode 0600.";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Usage(msg)) => {
            eprintln!("error: {msg}\n\n{USAGE}");
            ExitCode::from(2)
        }
        Err(Failure::Job(msg)) => {
            eprintln!("error: {msg}");
            ExitCode::FAILURE
        }
    }
}

enum Failure {
    Usage(String),
    Job(String),
}

fn run(args: &[String]) -> Result<(), Failure> {
    match args.first().map(String::as_str) {
        Some("gen-certs") => gen_certs(&args[1..]),
        Some("-h" | "--help") => {
            println!("{USAGE}");
            Ok(())
        }
        Some(other) => Err(Failure::Usage(format!("unknown job {other:?}"))),
        None => Err(Failure::Usage("no job given".to_owned())),
    }
}

/// The parsed arguments of `gen-certs`.
#[derive(Debug, PartialEq, Eq)]
struct GenCerts {
    dir: PathBuf,
    ids: Vec<String>,
}

fn parse_gen_certs(args: &[String]) -> Result<GenCerts, Failure> {
    let mut dir = PathBuf::from("./certs");
    let mut ids = Vec::new();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--dir" => {
                let value = it
                    .next()
                    .ok_or_else(|| Failure::Usage("--dir needs a value".to_owned()))?;
                dir = PathBuf::from(value);
            }
            s if s.starts_with("--dir=") => dir = PathBuf::from(&s["--dir=".len()..]),
            s if s.starts_with('-') => {
                return Err(Failure::Usage(format!("unknown option {s:?}")));
            }
            id => {
                aegis_tls::NodeId::new(id)
                    .map_err(|e| Failure::Usage(format!("bad node ID {id:?}: {e}")))?;
                ids.push(id.to_owned());
            }
        }
    }
    if ids.is_empty() {
        return Err(Failure::Usage("give at least one node ID".to_owned()));
    }
    Ok(GenCerts { dir, ids })
}

fn gen_certs(args: &[String]) -> Result<(), Failure> {
    let GenCerts { dir, ids } = parse_gen_certs(args)?;
    let certs = CertDir::new(&dir);
    for id in &ids {
        let created = certs
            .ensure_node(id)
            .map_err(|e| Failure::Job(e.to_string()))?;
        if created.ca {
            println!(
                "wrote {} and {}",
                certs.ca_cert_path().display(),
                certs.ca_key_path().display()
            );
        }
        let node = aegis_tls::NodeId::new(id).map_err(|e| Failure::Job(e.to_string()))?;
        if created.node {
            println!(
                "wrote {} and {}",
                certs.node_cert_path(&node).display(),
                certs.node_key_path(&node).display()
            );
        } else {
            println!(
                "skipped {id}: {} exists",
                certs.node_cert_path(&node).display()
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn parses_dir_and_ids() {
        let p = parse_gen_certs(&args(&["--dir", "/x", "a", "b"]))
            .ok()
            .unwrap();
        assert_eq!(
            p,
            GenCerts {
                dir: "/x".into(),
                ids: vec!["a".into(), "b".into()]
            }
        );
        let p = parse_gen_certs(&args(&["a", "--dir=/y"])).ok().unwrap();
        assert_eq!(p.dir, PathBuf::from("/y"));
        assert_eq!(
            parse_gen_certs(&args(&["a"])).ok().unwrap().dir,
            PathBuf::from("./certs")
        );
    }

    #[test]
    fn refuses_bad_arguments() {
        for bad in [
            &[][..],
            &["--dir"],
            &["--bogus", "a"],
            &["a/b"],
            &["--dir", "/x"],
        ] {
            assert!(
                matches!(parse_gen_certs(&args(bad)), Err(Failure::Usage(_))),
                "{bad:?}"
            );
        }
    }
}
