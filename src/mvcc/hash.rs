//! Deterministic hashes of the MVCC state (etcd's Hash and HashKV). Every replica applies
//! the same entries to the same schema, so equal histories give equal hashes.

use rusqlite::Connection;

use super::read::{value_of, Revisions};
use super::MvccError;

/// CRC-32C over every history row with `mod_rev <= revision` that compaction keeps, in
/// revision order. Returns (hash, compact revision, hashed revision).
///
/// The rows a compaction made obsolete are deleted after its apply, at each member's own
/// pace (`mvcc::reclaim`): those not deleted yet (written between `compact_reclaimed`
/// and the compact revision, or replaced by a row written there) are left out, so every
/// member hashes the same rows whatever its progress.
pub fn hash_kv(conn: &Connection, revision: i64, revs: Revisions) -> Result<(u32, i64, i64), MvccError> {
    let rev = if revision <= 0 { revs.current } else { revision };
    if rev > revs.current {
        return Err(MvccError::FutureRevision);
    }
    if rev < revs.compacted {
        return Err(MvccError::Compacted);
    }
    let reclaimed = super::read::compact_reclaimed(conn)?;
    // The value's bytes, wherever they are stored (`blobs` or inline): the hash does not
    // depend on the representation.
    let mut stmt = conn.prepare_cached(concat!(
        "SELECT k.key, k.mod_rev, k.sub, k.create_rev, k.version, k.lease, ",
        value_of!("k"),
        ", k.deleted FROM kv k \
         WHERE k.mod_rev <= ?1 \
           AND NOT (k.deleted = 1 AND k.mod_rev >= ?2 AND k.mod_rev < ?3) \
           AND (k.mod_rev, k.sub) NOT IN \
             (SELECT prev_rev, prev_sub FROM kv WHERE mod_rev >= ?2 AND mod_rev < ?3 AND prev_rev > 0) \
         ORDER BY k.mod_rev, k.sub"
    ))?;
    let mut rows = stmt.query([rev, reclaimed, revs.compacted])?;
    let mut crc = 0u32;
    while let Some(r) = rows.next()? {
        let key: Vec<u8> = r.get(0)?;
        crc = crc32c::crc32c_append(crc, &key);
        for i in 1..6 {
            crc = crc32c::crc32c_append(crc, &r.get::<_, i64>(i)?.to_be_bytes());
        }
        let value: Vec<u8> = r.get(6)?;
        crc = crc32c::crc32c_append(crc, &value);
        crc = crc32c::crc32c_append(crc, &[r.get::<_, i64>(7)? as u8]);
    }
    Ok((crc, revs.compacted, rev))
}

/// CRC-32C over the whole applied state: history, leases and revision counters.
pub fn hash_all(conn: &Connection) -> Result<u32, MvccError> {
    let revs = super::read::revisions(conn)?;
    let (mut crc, _, _) = hash_kv(conn, revs.current, revs)?;
    let mut stmt = conn.prepare_cached("SELECT id, ttl FROM leases ORDER BY id")?;
    let mut rows = stmt.query([])?;
    while let Some(r) = rows.next()? {
        crc = crc32c::crc32c_append(crc, &r.get::<_, i64>(0)?.to_be_bytes());
        crc = crc32c::crc32c_append(crc, &r.get::<_, i64>(1)?.to_be_bytes());
    }
    crc = crc32c::crc32c_append(crc, &revs.current.to_be_bytes());
    crc = crc32c::crc32c_append(crc, &revs.compacted.to_be_bytes());
    Ok(crc)
}
