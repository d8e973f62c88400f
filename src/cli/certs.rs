//! `netsy certs dev`: certificates for local clusters and tests.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;

use super::report;

#[derive(Subcommand)]
pub enum CertsCmd {
    /// A CA plus per-node server/peer and client certificates, named as the Helm chart
    /// mounts them: DIR/ca.crt, DIR/<node>/{server,peer}.{crt,key},
    /// DIR/clients/<name>.{crt,key}. An existing DIR/ca.crt + ca.key is reused.
    Dev {
        #[arg(long)]
        cluster_id: String,
        /// Node ids, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "netsy-0")]
        nodes: Vec<String>,
        /// Client names, comma-separated (identity netsy://CLUSTER/client/NAME).
        #[arg(long, value_delimiter = ',', default_value = "etcdctl")]
        clients: Vec<String>,
        /// Extra DNS names or IPs for every server certificate (localhost, the node id,
        /// 127.0.0.1 and ::1 are always included).
        #[arg(long, value_delimiter = ',')]
        hosts: Vec<String>,
        /// Validity of the leaf certificates, in days.
        #[arg(long, default_value_t = 90)]
        days: i64,
        #[arg(long)]
        out: PathBuf,
    },
}

pub fn run(command: CertsCmd) -> ExitCode {
    let CertsCmd::Dev {
        cluster_id,
        nodes,
        clients,
        hosts,
        days,
        out,
    } = command;
    report(
        netsy::tls::dev::write_dev_certs(&netsy::tls::dev::DevCerts {
            cluster_id,
            nodes,
            clients,
            hosts,
            days,
            out: out.clone(),
        })
        .map(|written| format!("wrote {} files under {}", written.len(), out.display()))
        .map_err(|e| netsy::error_chain(&e)),
    )
}
