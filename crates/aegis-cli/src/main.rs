//! `aegis`: see `aegis --help`.

fn main() -> std::process::ExitCode {
    aegis_cli::main(&std::env::args().skip(1).collect::<Vec<_>>())
}
