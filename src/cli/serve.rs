//! `netsy serve`: run a node.

use std::path::PathBuf;
use std::process::ExitCode;

use netsy::config::{process_env, Config};

use super::runtime;

/// `netsy serve --config FILE`: runs a node until SIGTERM or Ctrl-C.
pub fn run(path: PathBuf) -> ExitCode {
    let config = match Config::load(&path, &process_env) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let runtime = match runtime() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        // Wrong certificates fail the start before any slow work (such as a restore).
        let tls = match netsy::tls::Tls::from_config(&config) {
            Ok(tls) => tls,
            Err(e) => {
                eprintln!("netsy failed to start: TLS: {}", netsy::error_chain(&e));
                return ExitCode::FAILURE;
            }
        };
        // The health port answers (alive, not ready) from the start, which includes any
        // restore from object storage.
        let node = match netsy::server::Node::start(config, tls).await {
            Ok(n) => n,
            Err(e) => {
                eprintln!("netsy failed to start: {}", netsy::error_chain(&e));
                return ExitCode::FAILURE;
            }
        };
        let shutdown = async {
            let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => return std::future::pending::<()>().await,
            };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        };
        match netsy::server::serve(node, shutdown).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("netsy failed: {}", netsy::error_chain(&e));
                ExitCode::FAILURE
            }
        }
    })
}
