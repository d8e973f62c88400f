//! `netsy mesh`: create a Genesis Mesh network, and the operator's signed admin calls to
//! the network authority.

use std::path::PathBuf;

use clap::Subcommand;

/// Where an admin call goes and the operator key that signs it (as `genesis-mesh admin`).
#[derive(clap::Args)]
pub struct OperatorArgs {
    /// The network authority, e.g. http://netsy-mesh:8443.
    #[arg(long, env = "NETSY_MESH_NA")]
    na: String,
    /// The operator's private key file (keys/operator.key).
    #[arg(long)]
    operator_key: PathBuf,
    #[arg(long, default_value = "operator-local")]
    operator_key_id: String,
}

#[derive(Subcommand)]
pub enum MeshCmd {
    /// Root, NA and operator keys and a root-signed genesis, in the files `genesis-mesh
    /// init` writes (plus genesis-mesh.toml and the NA's na.env).
    Init {
        #[arg(long)]
        network_name: String,
        #[arg(long)]
        out: PathBuf,
        /// The NA URL written into genesis-mesh.toml.
        #[arg(long, default_value = "http://127.0.0.1:8443")]
        na_endpoint: String,
    },
    /// Create an invite token (POST /admin/invite); prints the token.
    Invite {
        #[command(flatten)]
        operator: OperatorArgs,
        /// Roles, e.g. anchor, client, bridge, operator or service:NAME.
        #[arg(long = "role", default_value = "client")]
        roles: Vec<String>,
        #[arg(long)]
        validity_hours: Option<i64>,
        #[arg(long)]
        token_expiry_hours: Option<i64>,
        /// Bind the token to one node public key (base64).
        #[arg(long)]
        recipient_public_key: Option<String>,
    },
    /// Revoke a certificate (POST /admin/revoke).
    Revoke {
        #[command(flatten)]
        operator: OperatorArgs,
        cert_id: String,
        /// key_compromise, cessation_of_operation, superseded or unspecified.
        #[arg(long, default_value = "unspecified")]
        reason: String,
    },
    /// Publish and activate a policy (POST /admin/policy).
    Policy {
        #[command(flatten)]
        operator: OperatorArgs,
        #[arg(long)]
        policy_id: Option<String>,
        #[arg(long = "allowed-port", value_delimiter = ',')]
        allowed_ports: Vec<u16>,
        #[arg(long = "allowed-service", value_delimiter = ',')]
        allowed_services: Vec<String>,
        #[arg(long)]
        min_client_version: Option<String>,
    },
    /// List policy versions (GET /admin/policy/history).
    PolicyHistory {
        #[command(flatten)]
        operator: OperatorArgs,
    },
    /// Re-activate a stored policy version (POST /admin/policy/rollback).
    PolicyRollback {
        #[command(flatten)]
        operator: OperatorArgs,
        policy_id: String,
    },
}

impl OperatorArgs {
    fn operator(self) -> netsy::mesh::tools::Operator {
        netsy::mesh::tools::Operator {
            na: self.na,
            key_file: self.operator_key,
            key_id: self.operator_key_id,
        }
    }
}

/// Runs one admin call: the reply's JSON on success (2xx), else an error with it.
fn admin_call(operator: OperatorArgs, method: &str, path: &str, body: Option<serde_json::Value>) -> Result<serde_json::Value, String> {
    let (status, reply) = operator
        .operator()
        .call(method, path, "", body.as_ref())
        .map_err(|e| netsy::error_chain(&e))?;
    if (200..300).contains(&status) {
        Ok(reply)
    } else {
        Err(format!("{method} {path}: {status} {reply}"))
    }
}

/// Runs a `netsy mesh` command: what to print, or the error.
pub fn run(command: MeshCmd) -> Result<String, String> {
    use serde_json::json;
    let pretty = |v: serde_json::Value| serde_json::to_string_pretty(&v).unwrap_or_default();
    match command {
        MeshCmd::Init {
            network_name,
            out,
            na_endpoint,
        } => netsy::mesh::tools::init(&network_name, &out, &na_endpoint)
            .map(|i| {
                let files: Vec<String> = i.files.iter().map(|f| f.display().to_string()).collect();
                format!(
                    "created network {network_name:?}:\n  {}\nKeep keys/root.key offline: whoever holds it can replace the NA.",
                    files.join("\n  ")
                )
            })
            .map_err(|e| netsy::error_chain(&e)),
        MeshCmd::Invite {
            operator,
            roles,
            validity_hours,
            token_expiry_hours,
            recipient_public_key,
        } => {
            let roles: Vec<String> = roles
                .into_iter()
                .map(|r| if r.starts_with("role:") { r } else { format!("role:{r}") })
                .collect();
            let mut body = json!({"roles": roles});
            if let Some(h) = validity_hours {
                body["max_validity_hours"] = json!(h);
            }
            if let Some(h) = token_expiry_hours {
                body["token_expiry_hours"] = json!(h);
            }
            if let Some(k) = recipient_public_key {
                body["recipient_public_key"] = json!(k);
            }
            let reply = admin_call(operator, "POST", "/admin/invite", Some(body))?;
            reply["token_id"]
                .as_str()
                .map(str::to_string)
                .ok_or_else(|| format!("no token in {reply}"))
        }
        MeshCmd::Revoke { operator, cert_id, reason } => admin_call(
            operator,
            "POST",
            "/admin/revoke",
            Some(json!({"cert_id": cert_id, "reason": reason})),
        )
        .map(pretty),
        MeshCmd::Policy {
            operator,
            policy_id,
            allowed_ports,
            allowed_services,
            min_client_version,
        } => {
            let mut body = json!({"allowed_services": allowed_services});
            if !allowed_ports.is_empty() {
                body["allowed_ports"] = json!(allowed_ports);
            }
            if let Some(id) = policy_id {
                body["policy_id"] = json!(id);
            }
            if let Some(v) = min_client_version {
                body["min_client_version"] = json!(v);
            }
            admin_call(operator, "POST", "/admin/policy", Some(body)).map(pretty)
        }
        MeshCmd::PolicyHistory { operator } => admin_call(operator, "GET", "/admin/policy/history", None).map(pretty),
        MeshCmd::PolicyRollback { operator, policy_id } => {
            admin_call(operator, "POST", "/admin/policy/rollback", Some(json!({"policy_id": policy_id}))).map(pretty)
        }
    }
}
