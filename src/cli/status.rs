//! `netsy status`: the cluster at a glance, from its members' client ports (the flags of
//! `etcdctl endpoint status`).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use netsy::status::{gather, table, Options};
use netsy::tls::material::ClientFiles;

use super::runtime;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum WriteOut {
    Table,
    Json,
}

#[derive(clap::Args)]
pub struct StatusArgs {
    /// Members' client endpoints, comma-separated: https://HOST:PORT, http://HOST:PORT or
    /// HOST:PORT (TLS when any TLS flag is given).
    #[arg(long, env = "ETCDCTL_ENDPOINTS", value_delimiter = ',', default_value = "127.0.0.1:2378")]
    endpoints: Vec<String>,
    /// The CA bundle that verifies the members' server certificates.
    #[arg(long, env = "ETCDCTL_CACERT")]
    cacert: Option<PathBuf>,
    /// A client certificate of the cluster (identity netsy://CLUSTER/client/NAME).
    #[arg(long, env = "ETCDCTL_CERT")]
    cert: Option<PathBuf>,
    /// The client certificate's private key.
    #[arg(long, env = "ETCDCTL_KEY")]
    key: Option<PathBuf>,
    /// Accept any server certificate (for testing only: anyone on the path can answer).
    #[arg(long, env = "ETCDCTL_INSECURE_SKIP_TLS_VERIFY")]
    insecure_skip_tls_verify: bool,
    /// How long to wait for each connection (TCP and TLS), e.g. 2s or 500ms.
    #[arg(long, env = "ETCDCTL_DIAL_TIMEOUT", default_value = "2s", value_parser = duration)]
    dial_timeout: Duration,
    /// How long to wait for each call to a member, e.g. 5s.
    #[arg(long, env = "ETCDCTL_COMMAND_TIMEOUT", default_value = "5s", value_parser = duration)]
    command_timeout: Duration,
    /// Output: a table, or JSON for scripts.
    #[arg(short = 'w', long = "write-out", value_enum, default_value = "table")]
    write_out: WriteOut,
}

fn duration(text: &str) -> Result<Duration, String> {
    netsy::config::parse_duration(text)
        .filter(|d| !d.is_zero())
        .ok_or_else(|| format!("{text:?} is not a duration such as 2s, 500ms or 1m"))
}

/// Prints the report; exits non-zero when some endpoint gave no status (the report is
/// still printed, with that endpoint's error) or nothing could be asked at all.
pub fn run(args: StatusArgs) -> ExitCode {
    let options = Options {
        endpoints: args
            .endpoints
            .iter()
            .map(|e| e.trim().to_string())
            .filter(|e| !e.is_empty())
            .collect(),
        files: ClientFiles {
            ca_cert: args.cacert,
            cert: args.cert,
            key: args.key,
        },
        insecure_skip_verify: args.insecure_skip_tls_verify,
        dial_timeout: args.dial_timeout,
        command_timeout: args.command_timeout,
    };
    if options.endpoints.is_empty() {
        eprintln!("--endpoints names no endpoint");
        return ExitCode::FAILURE;
    }
    let report = match runtime().and_then(|rt| rt.block_on(gather(&options)).map_err(|e| netsy::error_chain(&e))) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let out = match args.write_out {
        WriteOut::Json => serde_json::to_string_pretty(&report).unwrap_or_default(),
        WriteOut::Table => table(&report, netsy::metrics::unix_now()),
    };
    println!("{}", out.trim_end());
    if report.failed() {
        for e in report.endpoints.iter().filter(|e| e.error.is_some()) {
            eprintln!(
                "failed to get the status of endpoint {}: {}",
                e.endpoint,
                e.error.as_deref().unwrap_or_default()
            );
        }
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
