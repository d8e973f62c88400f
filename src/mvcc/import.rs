//! Seeding an empty store with another store's live keys (migration from etcd): each
//! key keeps its create/mod revision, version and lease, the store revision becomes the
//! source's, and history below it counts as compacted (only the latest versions exist).

use rusqlite::{params, Connection};

use super::MvccError;
use crate::proto::mvccpb::KeyValue;

fn storage(e: rusqlite::Error) -> MvccError {
    MvccError::storage(&e)
}

/// Starts an import into an empty store at `revision`; refuses a store with data.
pub fn begin(conn: &Connection, revision: i64) -> Result<(), MvccError> {
    let current: i64 = conn
        .query_row("SELECT value FROM meta WHERE name = 'revision'", [], |r| r.get(0))
        .map_err(storage)?;
    let keys: i64 = conn.query_row("SELECT COUNT(*) FROM kv", [], |r| r.get(0)).map_err(storage)?;
    if current != 1 || keys != 0 {
        return Err(MvccError::Storage("import needs an empty store".into()));
    }
    conn.execute("UPDATE meta SET value = ?1 WHERE name = 'revision'", [revision])
        .map_err(storage)?;
    conn.execute("UPDATE meta SET value = ?1 WHERE name = 'compact_revision'", [revision])
        .map_err(storage)?;
    Ok(())
}

pub fn leases(conn: &mut Connection, leases: &[(i64, i64)]) -> Result<(), MvccError> {
    let tx = conn.transaction().map_err(storage)?;
    {
        let mut stmt = tx.prepare("INSERT INTO leases (id, ttl) VALUES (?1, ?2)").map_err(storage)?;
        for (id, ttl) in leases {
            stmt.execute([id, ttl]).map_err(storage)?;
        }
    }
    tx.commit().map_err(storage)
}

/// Adds one page of keys (all at or below the import revision).
pub fn keys(conn: &mut Connection, kvs: &[KeyValue], revision: i64) -> Result<(), MvccError> {
    let tx = conn.transaction().map_err(storage)?;
    {
        // Keys written by one etcd transaction share a mod revision; each gets the next
        // free `sub` of it.
        let mut kv = tx
            .prepare(
                "INSERT INTO kv (mod_rev, sub, key, create_rev, version, lease, value, deleted, blob) \
                 VALUES (?2, (SELECT COALESCE(MAX(sub) + 1, 0) FROM kv WHERE mod_rev = ?2), ?1, ?3, ?4, ?5, ?6, 0, ?7) RETURNING sub",
            )
            .map_err(storage)?;
        let mut current = tx
            .prepare(
                "INSERT INTO current (key, mod_rev, sub, lease, create_rev, version, value, blob) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )
            .map_err(storage)?;
        for k in kvs {
            if k.mod_revision > revision || k.mod_revision <= 0 {
                return Err(MvccError::Storage(format!(
                    "key {:?} has mod revision {} outside 1..={revision}",
                    String::from_utf8_lossy(&k.key),
                    k.mod_revision
                )));
            }
            let (value, blob) = super::write::store_value(&tx, &k.value, super::schema::LARGE_VALUE).map_err(storage)?;
            let sub: i64 = kv
                .query_row(
                    params![k.key, k.mod_revision, k.create_revision, k.version, k.lease, value, blob],
                    |r| r.get(0),
                )
                .map_err(storage)?;
            current
                .execute(params![
                    k.key,
                    k.mod_revision,
                    sub,
                    k.lease,
                    k.create_revision,
                    k.version,
                    value,
                    blob
                ])
                .map_err(storage)?;
        }
    }
    tx.commit().map_err(storage)
}
