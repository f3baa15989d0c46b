//! The `aegis` command line: `aegis certs ...`, `aegis node`, `aegis
//! members`, `aegis ping`. Install it with
//! `cargo install --path crates/aegis-cli`; run `aegis --help`.
//!
//! Every command answers `--help`; a command line that does not fit its
//! usage prints the problem and the usage on stderr and exits with status 2;
//! a command that fails exits with status 1 and one line saying why.
#![warn(missing_docs)]

/// `println!` that does not panic when stdout is closed (`aegis ... | head`).
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout().lock(), $($arg)*);
    }};
}

pub mod args;
pub mod certs;
pub mod members;
pub mod node;
pub mod ping;

use std::process::ExitCode;

use args::Usage;

/// The top-level usage.
pub const USAGE: &str = "\
usage: aegis <command> [options]

commands:
  certs gen         generate the mesh CA (once) and node certificates
  certs inspect     what the certificates of a directory say
  certs renew       re-issue node certificates for their keys, now
  certs rotate-ca   start a CA rollover (--finish ends it)
  node              run a standalone node
  members           the mesh as a running node sees it
  ping              load a node with pings over one mTLS connection

`aegis <command> --help` shows the options of a command.";

/// Runs the command line `args` (without the program name).
pub fn main(args: &[String]) -> ExitCode {
    if matches!(
        args.first().map(String::as_str),
        Some("certs" | "members" | "ping")
    ) && let Err(e) = aegis::init_logging()
    {
        eprintln!("warning: logging is off: {e}");
    }
    match args.first().map(String::as_str) {
        Some("certs") => certs::main(&args[1..]),
        Some("node") => node::main(&args[1..]),
        Some("members") => members::main(&args[1..]),
        Some("ping") => ping::main(&args[1..]),
        Some("-h" | "--help" | "help") => usage_exit(&Usage::help(), USAGE),
        Some(other) => usage_exit(&Usage(format!("unknown command {other:?}")), USAGE),
        None => usage_exit(&Usage("no command given".into()), USAGE),
    }
}

/// `--help`: the usage on stdout, status 0. A mistake: the problem and the
/// usage on stderr, status 2.
pub fn usage_exit(usage: &Usage, text: &str) -> ExitCode {
    if usage.is_help() {
        out!("{text}");
        ExitCode::SUCCESS
    } else {
        eprintln!("error: {usage}\n\n{text}");
        ExitCode::from(2)
    }
}

/// Runs `work` on a fresh Tokio runtime: status 0, or 1 with its error.
pub fn block_on<F>(work: F) -> ExitCode
where
    F: std::future::Future<Output = Result<(), Box<dyn std::error::Error>>>,
{
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    finish(runtime.block_on(work))
}

/// Status 0, or 1 with the error on stderr.
pub fn finish(result: Result<(), Box<dyn std::error::Error>>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
