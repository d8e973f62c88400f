//! `netsy mesh ...`: create a network (keys and a root-signed genesis in the files
//! `genesis-mesh init` writes) and call the operator admin routes with an operator key,
//! so operators need no Python. Admin calls go to any network authority speaking the
//! Genesis Mesh 1.8.1 protocol (netsy's or the Python one) over plain HTTP.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Map, Value};

use super::auth::sign_admin;
use super::models::Genesis;
use super::{keys, timefmt, MeshError};

fn tool_error(msg: impl Into<String>) -> MeshError {
    MeshError::Config {
        key: "netsy mesh".into(),
        msg: msg.into(),
    }
}

/// What `init` wrote.
pub struct Initialized {
    pub files: Vec<PathBuf>,
}

/// `netsy mesh init`: `DIR/keys/{root,na,operator}.{key,pub}` (ids `rs-local`, `na-local`,
/// `operator-local`), `DIR/genesis.signed.json`, `DIR/genesis-mesh.toml` (the CLI's
/// config) and `DIR/na.env` (the NA's settings, for netsy's `NETSY_MESH_ENV_FILE` or
/// `genesis-mesh na start --env-file`).
pub fn init(network_name: &str, out: &Path, na_endpoint: &str) -> Result<Initialized, MeshError> {
    let io = |e: std::io::Error| tool_error(format!("{}: {e}", out.display()));
    let keys_dir = out.join("keys");
    std::fs::create_dir_all(&keys_dir).map_err(io)?;
    if out.join("genesis.signed.json").exists() {
        return Err(tool_error(format!(
            "{} already holds a genesis; refusing to overwrite it",
            out.display()
        )));
    }
    let (root, na, operator) = (keys::generate(), keys::generate(), keys::generate());
    keys::write_pair(&keys_dir, "root", "rs-local", &root)?;
    keys::write_pair(&keys_dir, "na", "na-local", &na)?;
    keys::write_pair(&keys_dir, "operator", "operator-local", &operator)?;
    let genesis = Genesis::create(network_name, &root, "rs-local", &na, timefmt::now())?;
    let text = serde_json::to_string_pretty(&genesis.doc).map_err(|e| tool_error(e.to_string()))?;
    std::fs::write(out.join("genesis.signed.json"), format!("{text}\n")).map_err(io)?;
    let home = out.display().to_string();
    let toml = format!(
        "[network]\nname = \"{network_name}\"\nversion = \"v0.1\"\nna_endpoint = \"{na_endpoint}\"\n\n\
         [paths]\nhome = \"{home}\"\ngenesis = \"{home}/genesis.signed.json\"\nna_private_key = \"{home}/keys/na.key\"\n\
         operator_private_key = \"{home}/keys/operator.key\"\noperator_public_key = \"{home}/keys/operator.pub\"\n\
         node_private_key = \"{home}/keys/node.key\"\nnode_certificate = \"{home}/node.cert.json\"\npolicy = \"{home}/policy.json\"\n\
         db = \"{home}/na.db\"\n\n[na]\nkey_id = \"na-local\"\nhost = \"127.0.0.1\"\nport = 8443\n\n[operator]\nkey_id = \"operator-local\"\n"
    );
    std::fs::write(out.join("genesis-mesh.toml"), toml).map_err(io)?;
    let env = format!(
        "# Network authority settings (netsy: NETSY_MESH_ENV_FILE=<this file>).\n\
         GENESIS_FILE=genesis.signed.json\nNA_PRIVATE_KEY_FILE=keys/na.key\nNA_KEY_ID=na-local\nPORT=8443\n\
         OPERATOR_PUBLIC_KEYS_JSON={}\nOPERATOR_KEY_TIERS_JSON={{\"operator-local\":\"privileged\"}}\n",
        json!({"operator-local": keys::public_b64(&operator)})
    );
    std::fs::write(out.join("na.env"), env).map_err(io)?;
    let files = [
        "genesis.signed.json",
        "genesis-mesh.toml",
        "na.env",
        "keys/root.key",
        "keys/na.key",
        "keys/operator.key",
    ]
    .iter()
    .map(|f| out.join(f))
    .collect();
    Ok(Initialized { files })
}

/// One HTTP/1.1 request to `base` (`http://host:port`); the status and the JSON reply.
pub fn request(
    base: &str,
    method: &str,
    path_and_query: &str,
    headers: &[(&str, String)],
    body: Option<&Value>,
) -> Result<(u16, Value), MeshError> {
    let hostport = base
        .strip_prefix("http://")
        .ok_or_else(|| tool_error(format!("{base}: only http:// network authority URLs are supported")))?
        .trim_end_matches('/');
    let mut s = TcpStream::connect(hostport).map_err(|e| tool_error(format!("cannot reach {base}: {e}")))?;
    let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
    let payload = body.map(|b| b.to_string()).unwrap_or_default();
    let mut head = format!(
        "{method} {path_and_query} HTTP/1.1\r\nHost: {hostport}\r\nConnection: close\r\nContent-Length: {}\r\n",
        payload.len()
    );
    if body.is_some() {
        head.push_str("Content-Type: application/json\r\n");
    }
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes())
        .and_then(|_| s.write_all(payload.as_bytes()))
        .map_err(|e| tool_error(format!("{base}: {e}")))?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).map_err(|e| tool_error(format!("{base}: {e}")))?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let chunked = head.to_ascii_lowercase().contains("transfer-encoding: chunked");
    let body = if chunked { dechunk(body) } else { body.to_string() };
    let value = serde_json::from_str(body.trim()).unwrap_or(Value::String(body));
    Ok((status, value))
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else { break };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// An operator's credentials for admin calls.
pub struct Operator {
    pub na: String,
    pub key_file: PathBuf,
    pub key_id: String,
}

impl Operator {
    /// A signed admin call: learns the audience from `/sovereign.json`, then signs
    /// method, path, query, body, key id, timestamp and nonce (version 2).
    pub fn call(&self, method: &str, path: &str, query: &str, body: Option<&Value>) -> Result<(u16, Value), MeshError> {
        let key = keys::read_private(&self.key_file)?;
        let (status, sovereign) = request(&self.na, "GET", "/sovereign.json", &[], None)?;
        let audience = sovereign["network_authority"]["public_key"]
            .as_str()
            .filter(|_| status == 200)
            .ok_or_else(|| tool_error(format!("{}/sovereign.json answered {status}: {sovereign}", self.na)))?;
        let q: Map<String, Value> = super::auth::query_map(Some(query));
        let signed_body = body.cloned().unwrap_or_else(|| json!({}));
        let h = sign_admin(&key, &self.key_id, method, path, &q, audience, &signed_body);
        let headers = h.pairs();
        let target = if query.is_empty() {
            path.to_string()
        } else {
            format!("{path}?{query}")
        };
        request(&self.na, method, &target, &headers, body)
    }
}
