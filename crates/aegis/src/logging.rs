//! A `tracing` subscriber set up for a service on aegis (feature `logging`).

/// The filter used when `RUST_LOG` is not set: aegis and the service at
/// `info`, the HTTP/2, TLS and tower layers underneath only when they warn.
pub const DEFAULT_FILTER: &str =
    "info,h2=warn,hyper=warn,hyper_util=warn,rustls=warn,tower=warn,tonic=warn";

/// Installs a `tracing-subscriber` formatter on stderr for the whole
/// process. The filter comes from `RUST_LOG` when it is set (for example
/// `RUST_LOG=info,aegis=debug`), else [`DEFAULT_FILTER`]; the lower layers
/// stay quiet unless named, so `RUST_LOG=debug` alone is not a flood of
/// frames.
///
/// Returns an error naming the problem when `RUST_LOG` does not parse or a
/// subscriber is already installed.
///
/// ```no_run
/// aegis::init_logging()?;
/// # Ok::<(), Box<dyn std::error::Error + Send + Sync>>(())
/// ```
pub fn init_logging() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    use tracing_subscriber::EnvFilter;
    let filter = match std::env::var("RUST_LOG") {
        Ok(spec) if !spec.trim().is_empty() => {
            // Named lower layers keep their quiet default unless the user
            // names them too.
            let mut spec = spec;
            for quiet in ["h2", "hyper", "hyper_util", "rustls", "tower"] {
                if !spec.contains(quiet) {
                    spec.push_str(&format!(",{quiet}=warn"));
                }
            }
            EnvFilter::try_new(&spec).map_err(|e| format!("RUST_LOG={spec:?}: {e}"))?
        }
        _ => EnvFilter::new(DEFAULT_FILTER),
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        // Colours only for a person at a terminal, not in files and pipes.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .try_init()
}
