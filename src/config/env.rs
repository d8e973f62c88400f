//! This node's side of the configuration: the `NETSY_*` overrides of the cluster file's
//! node defaults, the certificate files, the listen and advertise addresses, and the mesh
//! authority's settings.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::file::{ClusterFile, Durability, TlsSettings};
use super::validate::{duration_at_least_100ms, parse_auto_compaction, validate_limits, validate_name, validate_storage, validate_version};
use super::{invalid, Config, ConfigError, EnvFn};

/// The validated TLS settings.
#[derive(Debug, Clone, PartialEq)]
pub struct TlsPolicy {
    pub allow_tls12: bool,
    pub health: bool,
    pub reload_interval: Duration,
}

/// This node's certificate files (`NETSY_TLS_*`, as the cert-manager CSI driver mounts
/// them): all five, or none for plaintext on loopback.
#[derive(Debug, Clone, PartialEq)]
pub struct TlsFiles {
    pub ca_cert: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

pub const TLS_ENV: [&str; 5] = [
    "NETSY_TLS_CA_CERT",
    "NETSY_TLS_SERVER_CERT",
    "NETSY_TLS_SERVER_KEY",
    "NETSY_TLS_CLIENT_CERT",
    "NETSY_TLS_CLIENT_KEY",
];

fn resolve_tls(settings: &TlsSettings, env: EnvFn) -> Result<(Option<TlsFiles>, TlsPolicy), ConfigError> {
    let allow_tls12 = match settings.min_version.as_str() {
        "1.3" => false,
        "1.2" => true,
        other => {
            return Err(invalid(
                "tls.min_version",
                format!("{other:?} must be \"1.3\" (default) or \"1.2\""),
            ))
        }
    };
    let reload_interval = duration_at_least_100ms("tls.reload_interval", &settings.reload_interval, "such as \"5s\"")?;
    let values: Vec<Option<String>> = TLS_ENV.iter().map(|k| env(k)).collect();
    let files = if values.iter().all(Option::is_none) {
        None
    } else if let Some(missing) = TLS_ENV.iter().zip(&values).find(|(_, v)| v.is_none()).map(|(k, _)| *k) {
        return Err(invalid(
            missing,
            format!("is not set, but other NETSY_TLS_* variables are; set all of {}", TLS_ENV.join(", ")),
        ));
    } else {
        let path = |i: usize| PathBuf::from(values[i].clone().unwrap_or_default());
        Some(TlsFiles {
            ca_cert: path(0),
            server_cert: path(1),
            server_key: path(2),
            client_cert: path(3),
            client_key: path(4),
        })
    };
    if settings.health && files.is_none() {
        return Err(invalid(
            "tls.health",
            "is true but no certificates are configured; set the NETSY_TLS_* variables or remove it",
        ));
    }
    Ok((
        files,
        TlsPolicy {
            allow_tls12,
            health: settings.health,
            reload_interval,
        },
    ))
}

impl Config {
    pub fn resolve(file: ClusterFile, env: EnvFn) -> Result<Config, ConfigError> {
        validate_name("cluster_id", &file.cluster_id)?;
        validate_storage(&file.storage)?;
        validate_limits(&file.limits)?;
        validate_version(&file.etcd_version)?;
        let auto_compaction = match &file.auto_compaction {
            None => None,
            Some(ac) => Some(parse_auto_compaction(ac)?),
        };
        let watch_progress_notify_interval = duration_at_least_100ms(
            "watch.progress_notify_interval",
            &file.watch.progress_notify_interval,
            "(etcd's default is \"10m\")",
        )?;
        let archive = file.archive.resolve()?;
        let standby = file.standby.as_ref().map(|s| s.resolve(&file.cluster_id)).transpose()?;
        file.raft.validate()?;
        let (tls, tls_policy) = resolve_tls(&file.tls, env)?;
        let discovery_timeout = duration_at_least_100ms("discovery_timeout", &file.discovery_timeout, "such as \"15s\"")?;
        let deregistration_timeout = match file.deregistration_timeout.trim() {
            "0" => None,
            v => Some(duration_at_least_100ms(
                "deregistration_timeout",
                v,
                "such as \"3m\", or \"0\" to never remove an unreachable member automatically",
            )?),
        };
        let scheme = if tls.is_some() { "https" } else { "http" };

        let pick = |var: &str, file_value: &Option<String>, default: &str| -> String {
            env(var).or_else(|| file_value.clone()).unwrap_or_else(|| default.to_string())
        };
        let n = &file.node;
        let node_id = pick("NETSY_NODE_ID", &n.node_id, "netsy-0");
        validate_name("NETSY_NODE_ID (node.node_id)", &node_id)?;
        let data_dir = env("NETSY_DATA_DIR")
            .map(PathBuf::from)
            .or_else(|| n.data_dir.clone())
            .unwrap_or_else(|| PathBuf::from("/var/lib/netsy"));
        let data_ephemeral = match env("NETSY_DATA_EPHEMERAL").as_deref() {
            None => n.data_ephemeral.unwrap_or(false),
            Some("true") => true,
            Some("false") => false,
            Some(other) => return Err(invalid("NETSY_DATA_EPHEMERAL", format!("{other:?} must be \"true\" or \"false\""))),
        };
        let durability = file.durability.unwrap_or(if data_ephemeral {
            Durability::ObjectStorage
        } else {
            Durability::Quorum
        });
        let bind_client = parse_bind(
            "NETSY_BIND_CLIENT (node.bind_client)",
            &pick("NETSY_BIND_CLIENT", &n.bind_client, ":2378"),
        )?;
        let bind_peer = parse_bind("NETSY_BIND_PEER (node.bind_peer)", &pick("NETSY_BIND_PEER", &n.bind_peer, ":2381"))?;
        let bind_health = parse_bind(
            "NETSY_BIND_HEALTH (node.bind_health)",
            &pick("NETSY_BIND_HEALTH", &n.bind_health, ":8080"),
        )?;
        let advertise_client = env("NETSY_ADVERTISE_CLIENT")
            .or_else(|| n.advertise_client.clone())
            .unwrap_or_else(|| format!("{scheme}://{}", advertise_of(bind_client)));
        let advertise_peer = env("NETSY_ADVERTISE_PEER")
            .or_else(|| n.advertise_peer.clone())
            .unwrap_or_else(|| format!("{scheme}://{}", advertise_of(bind_peer)));

        // Without certificates, plaintext is loopback-only unless explicitly allowed.
        if tls.is_none() && !file.allow_insecure {
            for (key, addr) in [
                ("NETSY_BIND_CLIENT (node.bind_client)", bind_client),
                ("NETSY_BIND_PEER (node.bind_peer)", bind_peer),
            ] {
                if !addr.ip().is_loopback() {
                    return Err(invalid(
                        key,
                        format!("{addr} is not a loopback address and no TLS is configured; set the NETSY_TLS_* certificate variables, bind to 127.0.0.1, or set `allow_insecure: true` in the cluster file"),
                    ));
                }
            }
        }

        Ok(Config {
            cluster_id: file.cluster_id,
            storage: file.storage,
            durability,
            limits: file.limits,
            etcd_version: file.etcd_version,
            auto_compaction,
            watch_progress_notify_interval,
            archive,
            standby,
            raft: file.raft,
            tls,
            tls_policy,
            discovery_timeout,
            deregistration_timeout,
            allow_insecure: file.allow_insecure,
            node_id,
            data_dir,
            bind_client,
            advertise_client,
            bind_peer,
            advertise_peer,
            bind_health,
            mesh: super::mesh::resolve(env, file.mesh.as_ref())?,
        })
    }
}

fn advertise_of(addr: SocketAddr) -> String {
    if addr.ip().is_unspecified() {
        format!("127.0.0.1:{}", addr.port())
    } else {
        addr.to_string()
    }
}

fn parse_bind(key: &str, value: &str) -> Result<SocketAddr, ConfigError> {
    let v = if value.starts_with(':') {
        format!("0.0.0.0{value}")
    } else {
        value.to_string()
    };
    v.parse().map_err(|_| {
        invalid(
            key,
            format!("{value:?} is not a socket address; write e.g. \"127.0.0.1:2378\" or \":2378\""),
        )
    })
}
