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
        // Answer health probes (alive, not ready) while starting, which includes any
        // restore from object storage; the full endpoint replaces this one afterwards.
        // Wrong certificates fail the start before any slow work (such as a restore).
        let tls = match netsy::tls::Tls::from_config(&config) {
            Ok(tls) => tls,
            Err(e) => {
                eprintln!("netsy failed to start: TLS: {e}");
                return ExitCode::FAILURE;
            }
        };
        let health_tls = tls.clone().filter(|_| config.tls_policy.health);
        let starting = match tokio::net::TcpListener::bind(config.bind_health)
            .await
            .and_then(|l| netsy::tls::listen::Incoming::new(l, health_tls, netsy::tls::Listener::Health))
        {
            Ok(listener) => {
                let stop = tokio_util::sync::CancellationToken::new();
                let stopped = stop.clone();
                let task = tokio::spawn(async move {
                    let _ = axum::serve(listener, netsy::http::starting_router())
                        .with_graceful_shutdown(async move { stopped.cancelled().await })
                        .await;
                });
                Some((stop, task))
            }
            Err(e) => {
                eprintln!("cannot listen on {} (NETSY_BIND_HEALTH): {e}", config.bind_health);
                return ExitCode::FAILURE;
            }
        };
        let started = netsy::server::Node::start(config, tls).await;
        if let Some((stop, mut task)) = starting {
            stop.cancel();
            if tokio::time::timeout(std::time::Duration::from_secs(2), &mut task).await.is_err() {
                task.abort();
                let _ = task.await;
            }
        }
        let node = match started {
            Ok(n) => n,
            Err(e) => {
                eprintln!("netsy failed to start: {e}");
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
                eprintln!("netsy failed: {e}");
                ExitCode::FAILURE
            }
        }
    })
}
