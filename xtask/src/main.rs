//! Project automation, run as `cargo xtask <job>`.
//!
//! Jobs:
//! - `gen-certs [--dir DIR] <node-id>...`: an alias of `aegis certs gen
//!   --dir DIR <node-id>...` (DIR defaults to `./certs`), kept for scripts
//!   written before the `aegis` command existed.

use std::process::ExitCode;

const USAGE: &str = "\
usage: cargo xtask gen-certs [--dir DIR] <node-id>...

  The same as `aegis certs gen --dir DIR <node-id>...` (DIR defaults to
  ./certs): creates the mesh CA if missing, and a certificate and key for
  each node ID that has none yet. `aegis certs --help` for more.";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("gen-certs") => aegis_cli::certs::main(&gen_args(&args[1..])),
        Some("-h" | "--help") => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        Some(other) => {
            eprintln!("error: unknown job {other:?}\n\n{USAGE}");
            ExitCode::from(2)
        }
        None => {
            eprintln!("error: no job given\n\n{USAGE}");
            ExitCode::from(2)
        }
    }
}

/// `gen-certs ARGS` as `certs gen` arguments, with `--dir ./certs` unless
/// a directory is given.
fn gen_args(args: &[String]) -> Vec<String> {
    let mut out = vec!["gen".to_owned()];
    if !args.iter().any(|a| a == "--dir" || a.starts_with("--dir=")) {
        out.extend(["--dir".to_owned(), "./certs".to_owned()]);
    }
    out.extend_from_slice(args);
    out
}

#[cfg(test)]
mod tests {
    use super::gen_args;

    fn strings(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn the_directory_defaults_to_certs() {
        assert_eq!(
            gen_args(&strings(&["n1"])),
            strings(&["gen", "--dir", "./certs", "n1"])
        );
        assert_eq!(
            gen_args(&strings(&["--dir", "d", "n1"])),
            strings(&["gen", "--dir", "d", "n1"])
        );
        assert_eq!(
            gen_args(&strings(&["--dir=d", "n1"])),
            strings(&["gen", "--dir=d", "n1"])
        );
    }
}
