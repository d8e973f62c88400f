//! The mesh authority's settings, named as Genesis Mesh's NA names them (so one
//! deployment's variables, or the env file `genesis-mesh init --env-file` writes, drive
//! either implementation), plus `NETSY_BIND_MESH`. The authority runs when
//! `GENESIS_FILE` is set. The same settings may sit in the cluster file's `mesh` section
//! (`MeshSettings`); `resolve` merges the three sources.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{invalid, ConfigError};

#[derive(Debug, Clone)]
pub struct MeshConfig {
    pub bind: SocketAddr,
    pub genesis_file: PathBuf,
    pub na_private_key_file: PathBuf,
    /// Becomes `issued_by`, the CRL `issuer` and the signatures' `key_id`.
    pub na_key_id: String,
    /// key id → base64 Ed25519 public key.
    pub operator_public_keys: BTreeMap<String, String>,
    /// key id → `read` | `standard` | `privileged`.
    pub operator_key_tiers: BTreeMap<String, String>,
    pub renewal_grace_secs: i64,
    pub max_request_bytes: usize,
    /// Per client address per minute.
    pub rate_admin: u32,
    pub rate_admin_auth_failures: u32,
    pub rate_read: u32,
    pub rate_node: u32,
    /// `endpoint` in `/sovereign.json` (else the request's Host).
    pub public_url: Option<String>,
}

/// The cluster file's `mesh` section: the Genesis Mesh NA settings under netsy-style
/// names (each is the variable of the same name in upper case, e.g. `genesis_file` is
/// `GENESIS_FILE`); environment variables win.
#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct MeshSettings {
    pub bind: Option<String>,
    pub genesis_file: Option<String>,
    pub na_private_key_file: Option<String>,
    pub na_key_id: Option<String>,
    pub operator_public_keys: Option<BTreeMap<String, String>>,
    pub operator_key_tiers: Option<BTreeMap<String, String>>,
    pub renewal_grace_seconds: Option<i64>,
    pub max_request_bytes: Option<usize>,
    pub public_url: Option<String>,
}

impl MeshSettings {
    /// As the variables they stand for.
    fn as_vars(&self) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        let mut set = |k: &str, v: Option<String>| {
            if let Some(v) = v {
                out.insert(k.to_string(), v);
            }
        };
        set("NETSY_BIND_MESH", self.bind.clone());
        set("GENESIS_FILE", self.genesis_file.clone());
        set("NA_PRIVATE_KEY_FILE", self.na_private_key_file.clone());
        set("NA_KEY_ID", self.na_key_id.clone());
        let json = |m: &Option<BTreeMap<String, String>>| m.as_ref().and_then(|m| serde_json::to_string(m).ok());
        set("OPERATOR_PUBLIC_KEYS_JSON", json(&self.operator_public_keys));
        set("OPERATOR_KEY_TIERS_JSON", json(&self.operator_key_tiers));
        set("RENEWAL_GRACE_SECONDS", self.renewal_grace_seconds.map(|v| v.to_string()));
        set("NA_MAX_REQUEST_BYTES", self.max_request_bytes.map(|v| v.to_string()));
        set("NA_PUBLIC_URL", self.public_url.clone());
        out
    }
}

/// The mesh authority's settings: the Genesis Mesh NA variables, from the environment,
/// the env file `NETSY_MESH_ENV_FILE` names (the format `genesis-mesh init --env-file`
/// writes), or the cluster file's `mesh` section, in that order. `None` when
/// `GENESIS_FILE` is set in none of them.
pub fn resolve(env: &dyn Fn(&str) -> Option<String>, section: Option<&MeshSettings>) -> Result<Option<MeshConfig>, ConfigError> {
    let mut file = match env("NETSY_MESH_ENV_FILE") {
        Some(path) => read_env_file(Path::new(&path))?,
        None => BTreeMap::new(),
    };
    // The cluster file's section, where the env file does not say.
    for (k, v) in section.map(MeshSettings::as_vars).unwrap_or_default() {
        file.entry(k).or_insert(v);
    }
    MeshConfig::from_env(env, &file)
}

/// Reads a `KEY=VALUE` env file (`#` comments, duplicate names refused); relative paths
/// of the file settings resolve against the file's directory.
pub fn read_env_file(path: &Path) -> Result<BTreeMap<String, String>, ConfigError> {
    let key = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| invalid(&key, e.to_string()))?;
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut out = BTreeMap::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (k, v) = line
            .split_once('=')
            .ok_or_else(|| invalid(&key, format!("line {} is not KEY=VALUE", n + 1)))?;
        let (k, mut v) = (k.trim().to_string(), v.trim().to_string());
        if ["GENESIS_FILE", "NA_PRIVATE_KEY_FILE"].contains(&k.as_str()) && Path::new(&v).is_relative() {
            v = dir.join(&v).display().to_string();
        }
        if out.insert(k.clone(), v).is_some() {
            return Err(invalid(&key, format!("{k} is set twice")));
        }
    }
    Ok(out)
}

fn json_map(key: &str, v: Option<String>) -> Result<BTreeMap<String, String>, ConfigError> {
    match v {
        None => Ok(BTreeMap::new()),
        Some(s) => serde_json::from_str(&s).map_err(|e| invalid(key, format!("must be a JSON object of strings: {e}"))),
    }
}

fn number<T: std::str::FromStr>(key: &str, v: Option<String>, default: T) -> Result<T, ConfigError> {
    match v {
        None => Ok(default),
        Some(s) => s.trim().parse().map_err(|_| invalid(key, format!("{s:?} is not a number"))),
    }
}

impl MeshConfig {
    /// `None` when `GENESIS_FILE` is unset (no mesh authority). `env` is the process
    /// environment, falling back to `file` (an env file's settings).
    pub fn from_env(env: &dyn Fn(&str) -> Option<String>, file: &BTreeMap<String, String>) -> Result<Option<MeshConfig>, ConfigError> {
        let get = |k: &str| env(k).or_else(|| file.get(k).cloned());
        let Some(genesis_file) = get("GENESIS_FILE") else {
            return Ok(None);
        };
        let na_private_key_file = get("NA_PRIVATE_KEY_FILE").ok_or_else(|| {
            invalid(
                "NA_PRIVATE_KEY_FILE",
                "is required with GENESIS_FILE (the NA's Ed25519 key file, e.g. keys/na.key)",
            )
        })?;
        let bind = get("NETSY_BIND_MESH").unwrap_or_else(|| "0.0.0.0:8443".into());
        let bind = if let Some(port) = bind.strip_prefix(':') {
            format!("0.0.0.0:{port}")
        } else {
            bind
        };
        let bind: SocketAddr = bind
            .parse()
            .map_err(|_| invalid("NETSY_BIND_MESH", format!("{bind:?} is not a socket address such as \":8443\"")))?;
        let operator_public_keys = json_map("OPERATOR_PUBLIC_KEYS_JSON", get("OPERATOR_PUBLIC_KEYS_JSON"))?;
        let operator_key_tiers = json_map("OPERATOR_KEY_TIERS_JSON", get("OPERATOR_KEY_TIERS_JSON"))?;
        for id in operator_public_keys.keys() {
            match operator_key_tiers.get(id).map(String::as_str) {
                Some("read" | "standard" | "privileged") => {}
                Some(other) => {
                    return Err(invalid(
                        "OPERATOR_KEY_TIERS_JSON",
                        format!("operator key {id:?} has tier {other:?}; use read, standard or privileged"),
                    ))
                }
                None => {
                    return Err(invalid(
                        "OPERATOR_KEY_TIERS_JSON",
                        format!("operator key {id:?} has no tier; every key needs read, standard or privileged"),
                    ))
                }
            }
        }
        Ok(Some(MeshConfig {
            bind,
            genesis_file: PathBuf::from(genesis_file),
            na_private_key_file: PathBuf::from(na_private_key_file),
            na_key_id: get("NA_KEY_ID").unwrap_or_else(|| "na-2025-q1".into()),
            operator_public_keys,
            operator_key_tiers,
            renewal_grace_secs: number("RENEWAL_GRACE_SECONDS", get("RENEWAL_GRACE_SECONDS"), 900)?,
            max_request_bytes: number("NA_MAX_REQUEST_BYTES", get("NA_MAX_REQUEST_BYTES"), 2 * 1024 * 1024)?,
            rate_admin: number("NA_RATE_LIMIT_ADMIN_PER_MINUTE", get("NA_RATE_LIMIT_ADMIN_PER_MINUTE"), 300)?,
            rate_admin_auth_failures: number(
                "NA_RATE_LIMIT_ADMIN_AUTH_FAILURES_PER_MINUTE",
                get("NA_RATE_LIMIT_ADMIN_AUTH_FAILURES_PER_MINUTE"),
                30,
            )?,
            rate_read: number("NA_RATE_LIMIT_READ_PER_MINUTE", get("NA_RATE_LIMIT_READ_PER_MINUTE"), 120)?,
            rate_node: number(
                "NA_RATE_LIMIT_NODE_ADDRESS_PER_MINUTE",
                get("NA_RATE_LIMIT_NODE_ADDRESS_PER_MINUTE"),
                600,
            )?,
            public_url: get("NA_PUBLIC_URL"),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_env_file_of_genesis_mesh_init_is_read_with_paths_relative_to_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("na.env");
        std::fs::write(
            &p,
            "# written by genesis-mesh init\nGENESIS_FILE=home/genesis.signed.json\nNA_PRIVATE_KEY_FILE=home/keys/na.key\nNA_KEY_ID=na-local\nPORT=8443\nOPERATOR_PUBLIC_KEYS_JSON={\"operator-local\":\"AAAA\"}\nOPERATOR_KEY_TIERS_JSON={\"operator-local\":\"privileged\"}\n",
        )
        .expect("write");
        let file = read_env_file(&p).expect("read");
        let c = MeshConfig::from_env(&|_| None, &file).expect("valid").expect("enabled");
        assert_eq!(c.genesis_file, dir.path().join("home/genesis.signed.json"));
        assert_eq!(c.na_key_id, "na-local");
        assert_eq!(c.operator_key_tiers["operator-local"], "privileged");
        // The process environment wins over the file.
        let env = |k: &str| (k == "NA_KEY_ID").then(|| "na-prod".to_string());
        assert_eq!(MeshConfig::from_env(&env, &file).expect("ok").expect("on").na_key_id, "na-prod");
    }

    #[test]
    fn bad_settings_name_the_variable() {
        let base = |extra: &[(&str, &str)]| {
            let mut m: BTreeMap<String, String> = [("GENESIS_FILE", "g"), ("NA_PRIVATE_KEY_FILE", "k")]
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            for (k, v) in extra {
                m.insert(k.to_string(), v.to_string());
            }
            MeshConfig::from_env(&|_| None, &m).map(|_| ()).expect_err("refused").to_string()
        };
        assert!(base(&[("OPERATOR_PUBLIC_KEYS_JSON", r#"{"op":"AAAA"}"#)]).contains("has no tier"));
        assert!(base(&[
            ("OPERATOR_PUBLIC_KEYS_JSON", r#"{"op":"AAAA"}"#),
            ("OPERATOR_KEY_TIERS_JSON", r#"{"op":"root"}"#)
        ])
        .contains("OPERATOR_KEY_TIERS_JSON"));
        assert!(base(&[("NETSY_BIND_MESH", "nowhere")]).contains("NETSY_BIND_MESH"));
        assert!(base(&[("RENEWAL_GRACE_SECONDS", "soon")]).contains("RENEWAL_GRACE_SECONDS"));
        assert!(MeshConfig::from_env(&|_| None, &BTreeMap::new()).expect("ok").is_none());
    }
}
