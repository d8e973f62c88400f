//! The small control objects at the top of the archive, JSON, changed only with
//! conditional puts so two writers can never both win:
//!
//! - `cluster.json`: format version, cluster id and the current **epoch** (the Raft
//!   history whose segments and snapshots are authoritative);
//! - `members.json`: node name → stable etcd member id and the Raft id of the node's
//!   current incarnation (a node that lost its disk comes back as a new incarnation);
//! - `nodes/{node_id}.json`: where a node is reachable, written by the node at startup.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, UpdateVersion};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

pub const FORMAT_VERSION: u32 = 1;
pub const CLUSTER: &str = "cluster.json";
pub const MEMBERS: &str = "members.json";

/// How often a conditional update is retried when another writer got there first.
const CAS_ATTEMPTS: usize = 10;

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("object storage: {path}: {source}")]
    Store { path: String, source: object_store::Error },
    #[error("{path} is not a valid netsy control object: {source}")]
    Invalid { path: String, source: serde_json::Error },
    #[error("{path} belongs to cluster {found:?}, not {expected:?}; check `cluster_id`, `storage.bucket_name` and `storage.key_prefix`")]
    WrongCluster { path: String, found: String, expected: String },
    #[error("{path} was written by a newer netsy (format {found}); upgrade this node")]
    NewerFormat { path: String, found: u32 },
    #[error("{path} kept changing under {CAS_ATTEMPTS} conditional updates; giving up")]
    Contended { path: String },
    #[error("{path} is encrypted (NETSYEN1): set storage.encryption to the key service it was written with")]
    Encrypted { path: String },
}

fn store_err(path: &Path, source: object_store::Error) -> ManifestError {
    ManifestError::Store {
        path: path.to_string(),
        source,
    }
}

pub fn now_unix() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterManifest {
    pub format_version: u32,
    pub cluster_id: String,
    pub epoch: u64,
    pub updated_unix: u64,
    /// The node that opened this epoch (and formed its Raft cluster); the others join it.
    #[serde(default)]
    pub opener: Option<Opener>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Opener {
    pub node_id: String,
    pub peer_url: String,
}

impl ClusterManifest {
    pub fn new(cluster_id: &str, epoch: u64) -> Self {
        ClusterManifest {
            format_version: FORMAT_VERSION,
            cluster_id: cluster_id.to_string(),
            epoch,
            updated_unix: now_unix(),
            opener: None,
        }
    }

    pub fn opened_by(mut self, node_id: &str, peer_url: &str) -> Self {
        self.opener = Some(Opener {
            node_id: node_id.to_string(),
            peer_url: peer_url.to_string(),
        });
        self
    }

    fn check(&self, cluster_id: &str) -> Result<(), ManifestError> {
        if self.cluster_id != cluster_id {
            return Err(ManifestError::WrongCluster {
                path: CLUSTER.into(),
                found: self.cluster_id.clone(),
                expected: cluster_id.into(),
            });
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// The etcd member id, stable for the node's name.
    pub member_id: u64,
    /// The Raft node id of the node's current incarnation.
    pub raft_id: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Members {
    /// Absent in netsy 0.1's objects: 1.
    #[serde(default = "format_one")]
    pub format_version: u32,
    pub cluster_id: String,
    pub members: BTreeMap<String, Member>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    /// Absent in netsy 0.1's objects: 1.
    #[serde(default = "format_one")]
    pub format_version: u32,
    pub node_id: String,
    pub member_id: u64,
    pub raft_id: u64,
    pub epoch: u64,
    pub client_url: String,
    pub peer_url: String,
    pub started_unix: u64,
    pub version: String,
}

/// A control object and the version a conditional update must name.
#[derive(Debug, Clone)]
pub struct Versioned<T> {
    pub value: T,
    pub version: UpdateVersion,
}

fn format_one() -> u32 {
    1
}

/// What every control object says of its format, read before the rest.
#[derive(Deserialize)]
struct Format {
    #[serde(default = "format_one")]
    format_version: u32,
}

/// Parses a JSON control object, refusing one a newer netsy wrote.
pub fn parse<T: DeserializeOwned>(path: &str, bytes: &[u8]) -> Result<T, ManifestError> {
    let invalid = |source| ManifestError::Invalid {
        path: path.to_string(),
        source,
    };
    if bytes.starts_with(super::sealed::MAGIC) {
        return Err(ManifestError::Encrypted { path: path.to_string() });
    }
    let format: Format = serde_json::from_slice(bytes).map_err(invalid)?;
    if format.format_version > FORMAT_VERSION {
        return Err(ManifestError::NewerFormat {
            path: path.to_string(),
            found: format.format_version,
        });
    }
    serde_json::from_slice(bytes).map_err(invalid)
}

/// Reads a JSON control object; `None` when it does not exist.
pub async fn read<T: DeserializeOwned>(store: &dyn ObjectStore, path: &Path) -> Result<Option<Versioned<T>>, ManifestError> {
    let got = match store.get(path).await {
        Ok(g) => g,
        Err(object_store::Error::NotFound { .. }) => return Ok(None),
        Err(e) => return Err(store_err(path, e)),
    };
    let version = UpdateVersion {
        e_tag: got.meta.e_tag.clone(),
        version: got.meta.version.clone(),
    };
    let bytes = got.bytes().await.map_err(|e| store_err(path, e))?;
    let value = parse(path.as_ref(), &bytes)?;
    Ok(Some(Versioned { value, version }))
}

/// Writes `value` if `expected` still holds (`None`: only if absent). `Ok(false)` when
/// another writer changed the object first.
pub async fn write<T: Serialize>(
    store: &dyn ObjectStore,
    path: &Path,
    value: &T,
    expected: Option<&UpdateVersion>,
) -> Result<bool, ManifestError> {
    let bytes = serde_json::to_vec_pretty(value).map_err(|source| ManifestError::Invalid {
        path: path.to_string(),
        source,
    })?;
    let mode = match expected {
        None => PutMode::Create,
        Some(v) => PutMode::Update(v.clone()),
    };
    match store.put_opts(path, bytes.into(), mode.into()).await {
        Ok(_) => Ok(true),
        Err(object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. }) => Ok(false),
        Err(e) => Err(store_err(path, e)),
    }
}

/// Reads `cluster.json`, checking that it belongs to `cluster_id`.
pub async fn read_cluster(store: &dyn ObjectStore, cluster_id: &str) -> Result<Option<Versioned<ClusterManifest>>, ManifestError> {
    let found = read::<ClusterManifest>(store, &Path::from(CLUSTER)).await?;
    if let Some(v) = &found {
        v.value.check(cluster_id)?;
    }
    Ok(found)
}

/// Writes `cluster.json` if `expected` still holds (`None`: only if absent); `Ok(false)`
/// when another node changed it first.
pub async fn write_cluster(
    store: &dyn ObjectStore,
    value: &ClusterManifest,
    expected: Option<&UpdateVersion>,
) -> Result<bool, ManifestError> {
    write(store, &Path::from(CLUSTER), value, expected).await
}

/// Registers this node in `members.json` and returns its member id and Raft id.
///
/// `current` is what the node's data directory says (`None` for an empty directory). An
/// empty directory is a new incarnation: it keeps the member id registered for its name
/// (etcd clients see the same member) but gets a Raft id never used before.
pub async fn register_member(
    store: &dyn ObjectStore,
    cluster_id: &str,
    node_id: &str,
    current: Option<Member>,
) -> Result<Member, ManifestError> {
    let path = Path::from(MEMBERS);
    for _ in 0..CAS_ATTEMPTS {
        let found = read::<Members>(store, &path).await?;
        let mut members = match &found {
            Some(v) if v.value.cluster_id != cluster_id => {
                return Err(ManifestError::WrongCluster {
                    path: MEMBERS.into(),
                    found: v.value.cluster_id.clone(),
                    expected: cluster_id.into(),
                })
            }
            Some(v) => v.value.clone(),
            None => Members {
                format_version: FORMAT_VERSION,
                cluster_id: cluster_id.into(),
                members: BTreeMap::new(),
            },
        };
        let member = match current {
            Some(m) => m,
            None => {
                let used: Vec<Member> = members.members.values().copied().collect();
                let member_id = members.members.get(node_id).map(|m| m.member_id).unwrap_or_else(|| {
                    // Random, odd (never 0) and unused, like etcd's generated member ids.
                    loop {
                        let id = rand::random::<u64>() >> 1 | 1;
                        if !used.iter().any(|m| m.member_id == id) {
                            break id;
                        }
                    }
                });
                let raft_id = used.iter().map(|m| m.raft_id).max().unwrap_or(0) + 1;
                Member { member_id, raft_id }
            }
        };
        if members.members.get(node_id) == Some(&member) {
            return Ok(member);
        }
        members.members.insert(node_id.to_string(), member);
        members.format_version = FORMAT_VERSION;
        if write(store, &path, &members, found.as_ref().map(|v| &v.version)).await? {
            return Ok(member);
        }
    }
    Err(ManifestError::Contended { path: MEMBERS.into() })
}

/// Every `nodes/*.json` record (unreadable ones are skipped with a warning).
pub async fn list_nodes(store: &dyn ObjectStore) -> Result<Vec<NodeRecord>, ManifestError> {
    use futures::TryStreamExt;
    let prefix = Path::from("nodes");
    let listed: Vec<_> = store.list(Some(&prefix)).try_collect().await.map_err(|e| store_err(&prefix, e))?;
    let mut out = Vec::new();
    for meta in listed {
        match read::<NodeRecord>(store, &meta.location).await {
            Ok(Some(r)) => out.push(r.value),
            Ok(None) => {}
            Err(e) => tracing::warn!(path = %meta.location, error = %crate::error_chain(&e), "skipping an unreadable node record"),
        }
    }
    Ok(out)
}

/// Writes `nodes/{node_id}.json` (plain put: only the node itself writes it).
pub async fn publish_node(store: &dyn ObjectStore, record: &NodeRecord) -> Result<(), ManifestError> {
    let path = Path::from(format!("nodes/{}.json", record.node_id));
    let bytes = serde_json::to_vec_pretty(record).map_err(|source| ManifestError::Invalid {
        path: path.to_string(),
        source,
    })?;
    store.put(&path, bytes.into()).await.map_err(|e| store_err(&path, e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[tokio::test]
    async fn cluster_manifest_is_created_once_and_updated_by_version() {
        let store = object_store::memory::InMemory::new();
        assert!(read_cluster(&store, "prod").await.unwrap().is_none());
        let path = Path::from(CLUSTER);
        assert!(write(&store, &path, &ClusterManifest::new("prod", 1), None).await.unwrap());
        assert!(
            !write(&store, &path, &ClusterManifest::new("prod", 7), None).await.unwrap(),
            "create-only"
        );
        let v1 = read_cluster(&store, "prod").await.unwrap().unwrap();
        assert_eq!(v1.value.epoch, 1);
        assert!(write(&store, &path, &ClusterManifest::new("prod", 2), Some(&v1.version))
            .await
            .unwrap());
        assert!(
            !write(&store, &path, &ClusterManifest::new("prod", 3), Some(&v1.version))
                .await
                .unwrap(),
            "a stale version loses"
        );
        assert_eq!(read_cluster(&store, "prod").await.unwrap().unwrap().value.epoch, 2);
        let wrong = read_cluster(&store, "other").await.unwrap_err().to_string();
        assert!(wrong.contains("belongs to cluster \"prod\""), "{wrong}");
    }

    #[tokio::test]
    async fn members_keep_their_id_and_get_new_incarnations() {
        let store = object_store::memory::InMemory::new();
        let a = register_member(&store, "c", "netsy-0", None).await.unwrap();
        let b = register_member(&store, "c", "netsy-1", None).await.unwrap();
        assert_ne!(a.member_id, b.member_id);
        assert_eq!((a.raft_id, b.raft_id), (1, 2));
        // netsy-0 restarts with its disk: nothing changes.
        assert_eq!(register_member(&store, "c", "netsy-0", Some(a)).await.unwrap(), a);
        // netsy-0 loses its disk: same member id, a fresh Raft id.
        let a2 = register_member(&store, "c", "netsy-0", None).await.unwrap();
        assert_eq!(a2.member_id, a.member_id);
        assert_eq!(a2.raft_id, 3);
        let all = read::<Members>(&store, &Path::from(MEMBERS)).await.unwrap().unwrap().value;
        assert_eq!(all.members.len(), 2);
        assert_eq!(all.members["netsy-0"], a2);
    }

    #[tokio::test]
    async fn concurrent_registrations_all_land() {
        let store: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
        let mut tasks = Vec::new();
        for i in 0..5 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                register_member(store.as_ref(), "c", &format!("n{i}"), None).await.unwrap()
            }));
        }
        let mut raft_ids = Vec::new();
        for t in tasks {
            raft_ids.push(t.await.unwrap().raft_id);
        }
        let all = read::<Members>(store.as_ref(), &Path::from(MEMBERS)).await.unwrap().unwrap().value;
        assert_eq!(all.members.len(), 5);
        raft_ids.sort();
        raft_ids.dedup();
        assert_eq!(raft_ids.len(), 5, "every incarnation has its own Raft id");
    }

    #[test]
    fn control_objects_of_netsy_0_1_are_read_and_newer_ones_refused() {
        let old = br#"{"cluster_id": "prod", "members": {"netsy-0": {"member_id": 7, "raft_id": 1}}}"#;
        let members: Members = parse(MEMBERS, old).expect("netsy 0.1's members.json");
        assert_eq!((members.format_version, members.members["netsy-0"].raft_id), (1, 1));
        let newer = br#"{"format_version": 2, "cluster_id": "prod", "members": {}}"#;
        let err = parse::<Members>(MEMBERS, newer).unwrap_err();
        assert!(matches!(err, ManifestError::NewerFormat { found: 2, .. }), "{err}");
        assert!(err.to_string().contains("members.json"), "{err}");
    }
}
