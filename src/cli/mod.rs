//! The `netsy` subcommands, one module each; `main.rs` parses the arguments and calls
//! the command's `run`.

pub mod certs;
pub mod clone;
pub mod mesh;
pub mod migrate;
pub mod serve;
pub mod snapshot;
pub mod standby;
pub mod status;
pub mod validate;

use std::process::ExitCode;

use netsy::config::process_env;

/// Logs to stderr: `info` (openraft's at `warn`), or `debug` with `--verbose` or
/// `NETSY_DEBUG=true`; `RUST_LOG` overrides both.
pub fn init_tracing(verbose: bool) {
    let default = if verbose || process_env("NETSY_DEBUG").as_deref() == Some("true") {
        "debug"
    } else {
        "info,openraft=warn"
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour codes only on a terminal, not in log files and collectors.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

/// A multi-threaded runtime for a command, or the error to print.
pub fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))
}

/// Prints a command's output, or its error, and turns that into the exit code.
pub fn report(result: Result<String, String>) -> ExitCode {
    match result {
        Ok(out) => {
            println!("{}", out.trim_end());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}
