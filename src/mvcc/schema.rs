//! SQLite schema and connection settings.

use rusqlite::{Connection, OptionalExtension};

use super::MvccError;

/// Bumped whenever the schema changes incompatibly. v4: the Raft bookkeeping rows are
/// `applied_log_id` / `applied_membership` in netsy's own encoding (v3's `raft_applied` /
/// `raft_membership` held bincode; they are still read, and replaced by the next batch).
/// v5: a compaction deletes the history it drops after its apply, in batches
/// (`mvcc::reclaim`): `kv` may hold rows below `compact_revision` that are already
/// obsolete, up to the `compact_reclaimed` revision in `meta` (a v4 netsy would keep them);
/// and a large value is stored once, in `blobs`, its `kv` and `current` rows pointing at it
/// (`blob`; 0: the value is inline, as in every row written before v5).
pub const SCHEMA_VERSION: i64 = 5;

/// Values longer than this many bytes are stored once, in `blobs`, instead of in both
/// their `kv` row and their `current` row. Both of those are `WITHOUT ROWID` tables (B-tree
/// indexes, to SQLite), whose leaf pages keep at most (page size − 12) × 64 / 255 − 23
/// bytes of a row inline: 2,030 with 8 KiB pages. A larger row keeps only about 1,000
/// bytes inline and spills the rest onto overflow pages of its own (whole pages, however
/// little spills): a 10 KiB value took ~1 KiB inline plus two overflow pages, twice, so
/// `state.db` was ~3.5 times the data. `blobs` is a rowid table, whose rows keep up to
/// page size − 35 bytes inline (8,157): a 10 KiB value is ~2 KiB inline plus one full
/// overflow page, once. A row of `kv` carries ~45 bytes besides its key and value, so
/// 1,900 keeps a `kv` or `current` row inline for keys up to ~85 bytes (Kubernetes keys
/// are mostly shorter); smaller values are read without a second lookup.
pub const LARGE_VALUE: usize = 1900;

/// Page size of a new state database (an existing one keeps the size it was made with).
/// A row of a `WITHOUT ROWID` table keeps at most about a quarter of a page inline and
/// the rest in overflow pages, one read each: with 4 KiB pages a 1 KiB value spilled.
/// 8 KiB pages keep values up to about 2 KiB inline; measured (100 clients, same run):
/// a 1,000 × 1 KiB prefix range takes 48% less CPU and serves 50% more requests per
/// second, random-key puts cost 6% more (each dirty page is twice the bytes in the WAL).
pub const PAGE_SIZE: i64 = 8192;

pub fn configure(conn: &Connection, writer: bool) -> rusqlite::Result<()> {
    if writer {
        // Only takes effect on a new, empty database: before the first table (and before
        // WAL mode writes the header).
        conn.pragma_update(None, "page_size", PAGE_SIZE)?;
        // Also only for a new database: free pages can then be given back to the file
        // system a few at a time (`mvcc::reclaim::defragment`) instead of by a `VACUUM`
        // that rewrites the whole file while applies wait.
        conn.pragma_update(None, "auto_vacuum", "INCREMENTAL")?;
    }
    conn.pragma_update(None, "journal_mode", "WAL")?;
    // The Raft log is the durable record of every acknowledged write; the state database
    // is rebuilt from it (and the local snapshot) if an OS crash may have cost it pages
    // (see `boot`). Without syncs, pages rewritten within seconds (the WAL after each
    // restart, the main file after each checkpoint) reach the disk once instead of
    // every time: a tenth of the disk writes under random-key load.
    conn.pragma_update(None, "synchronous", super::boot::synchronous())?;
    conn.pragma_update(None, "foreign_keys", "OFF")?;
    // Page cache per connection (KiB). The readers (up to 16) share the OS page cache, so
    // theirs is small. The writer's is small too: a commit after a B-tree rebalance that
    // swapped page numbers (most commits under random-key writes) walks the writer's
    // whole page cache (SQLite parks a page at a temporary number past the end of the
    // file, and the end-of-transaction truncate then scans every cached page). At 32 MB
    // that walk cost 5% of a member's CPU under load; at 8 MB the extra misses are
    // cheaper than the walk. No mmap: mapped pages would count towards the RSS.
    conn.pragma_update(None, "cache_size", if writer { -8_000 } else { -16_000 })?;
    conn.pragma_update(None, "mmap_size", 0)?;
    conn.busy_timeout(std::time::Duration::from_secs(30))?;
    if writer {
        conn.pragma_update(None, "wal_autocheckpoint", 4000)?;
    }
    Ok(())
}

/// For a writer whose WAL is checkpointed by another connection: no checkpoint inside
/// commits, and the WAL file is cut back to 64 MiB whenever it restarts.
pub fn disable_auto_checkpoint(conn: &Connection) -> rusqlite::Result<()> {
    conn.pragma_update(None, "wal_autocheckpoint", 0)?;
    conn.pragma_update(None, "journal_size_limit", 64 << 20)
}

/// The schema version a database was written with (`None` for a new, empty file).
fn stored_version(conn: &Connection) -> rusqlite::Result<Option<i64>> {
    let has_meta: bool = conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta')",
        [],
        |r| r.get(0),
    )?;
    if !has_meta {
        return Ok(None);
    }
    conn.query_row("SELECT value FROM meta WHERE name = 'schema_version'", [], |r| r.get(0))
        .optional()
}

/// Creates the tables of a new database, or upgrades one written by an older netsy. A
/// database written by a newer netsy is refused: its layout cannot be read safely here.
pub fn create(conn: &Connection) -> Result<(), MvccError> {
    let storage = |e: rusqlite::Error| MvccError::storage(&e);
    if let Some(version) = stored_version(conn).map_err(storage)? {
        if version > SCHEMA_VERSION {
            return Err(MvccError::Storage(format!(
                "the state database has schema v{version}, newer than this netsy's v{SCHEMA_VERSION}; \
                 run the netsy version that wrote it (or a newer one)"
            )));
        }
    }
    create_and_migrate(conn).map_err(storage)
}

fn create_and_migrate(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch(
        "
        -- History, in revision order: every put and delete is appended at the end of the
        -- table, and each row points at the key's previous row (0, 0 for none), so a
        -- write touches one random page (in `current`) rather than two.
        CREATE TABLE IF NOT EXISTS kv (
            mod_rev    INTEGER NOT NULL,
            sub        INTEGER NOT NULL,
            key        BLOB    NOT NULL,
            create_rev INTEGER NOT NULL,
            version    INTEGER NOT NULL,
            lease      INTEGER NOT NULL,
            value      BLOB    NOT NULL,
            deleted    INTEGER NOT NULL,
            prev_rev   INTEGER NOT NULL DEFAULT 0,
            prev_sub   INTEGER NOT NULL DEFAULT 0,
            blob       INTEGER NOT NULL DEFAULT 0,
            PRIMARY KEY (mod_rev, sub)
        ) WITHOUT ROWID;
        -- The live row of every key, and where it sits in `kv` (mod_rev, sub).
        CREATE TABLE IF NOT EXISTS current (
            key        BLOB    NOT NULL PRIMARY KEY,
            mod_rev    INTEGER NOT NULL,
            lease      INTEGER NOT NULL,
            create_rev INTEGER NOT NULL DEFAULT 0,
            version    INTEGER NOT NULL DEFAULT 0,
            value      BLOB    NOT NULL DEFAULT x'',
            sub        INTEGER NOT NULL DEFAULT 0,
            blob       INTEGER NOT NULL DEFAULT 0
        ) WITHOUT ROWID;
        -- Values longer than `LARGE_VALUE`, once each: the `kv` row that put one and, while
        -- it is the key's live row, the `current` row hold `value = x''` and its `blob` id
        -- (0 elsewhere: the value is inline). A blob is deleted with its `kv` row, by
        -- compaction (a live row never is). AUTOINCREMENT: ids are never reused, so every
        -- member that applies the same entries assigns the same ids, however far its
        -- compaction's deletions have come.
        CREATE TABLE IF NOT EXISTS blobs (
            id    INTEGER PRIMARY KEY AUTOINCREMENT,
            value BLOB NOT NULL
        );
        CREATE INDEX IF NOT EXISTS current_by_lease ON current (lease) WHERE lease != 0;
        CREATE TABLE IF NOT EXISTS leases (
            id  INTEGER NOT NULL PRIMARY KEY,
            ttl INTEGER NOT NULL
        );
        CREATE TABLE IF NOT EXISTS meta (
            name  TEXT NOT NULL PRIMARY KEY,
            value BLOB
        );
        ",
    )?;
    conn.execute(
        "INSERT OR IGNORE INTO meta (name, value) VALUES ('schema_version', ?1), ('revision', 1), ('compact_revision', 0), \
         ('compact_reclaimed', 0)",
        [SCHEMA_VERSION],
    )?;
    migrate(conn)
}

/// Upgrades a database written by an older netsy (including a Raft snapshot from one).
fn migrate(conn: &Connection) -> rusqlite::Result<()> {
    let version: i64 = conn.query_row("SELECT value FROM meta WHERE name = 'schema_version'", [], |r| r.get(0))?;
    if version < 2 {
        // v2: `current` holds the whole live row, so latest-state reads need no join.
        tracing::info!("upgrading the state database schema from v{version} to v2");
        conn.execute_batch(
            "BEGIN;
             ALTER TABLE current ADD COLUMN create_rev INTEGER NOT NULL DEFAULT 0;
             ALTER TABLE current ADD COLUMN version INTEGER NOT NULL DEFAULT 0;
             ALTER TABLE current ADD COLUMN value BLOB NOT NULL DEFAULT x'';
             UPDATE current SET (create_rev, version, value) =
               (SELECT k.create_rev, k.version, k.value FROM kv k WHERE k.key = current.key AND k.mod_rev = current.mod_rev);
             UPDATE meta SET value = 2 WHERE name = 'schema_version';
             COMMIT;",
        )?;
    }
    if version < 3 {
        // v3: history keyed by (mod_rev, sub) with a pointer to the key's previous row,
        // instead of by (key, mod_rev) plus an index by revision.
        tracing::info!("upgrading the state database schema from v{} to v3", version.max(2));
        conn.execute_batch(
            "BEGIN;
             CREATE TABLE kv3 (
                 mod_rev INTEGER NOT NULL, sub INTEGER NOT NULL, key BLOB NOT NULL,
                 create_rev INTEGER NOT NULL, version INTEGER NOT NULL, lease INTEGER NOT NULL,
                 value BLOB NOT NULL, deleted INTEGER NOT NULL,
                 prev_rev INTEGER NOT NULL DEFAULT 0, prev_sub INTEGER NOT NULL DEFAULT 0,
                 PRIMARY KEY (mod_rev, sub)
             ) WITHOUT ROWID;
             INSERT INTO kv3 SELECT mod_rev, sub, key, create_rev, version, lease, value, deleted,
                 COALESCE(LAG(mod_rev) OVER w, 0), COALESCE(LAG(sub) OVER w, 0)
               FROM kv WINDOW w AS (PARTITION BY key ORDER BY mod_rev);
             DROP INDEX IF EXISTS kv_by_rev;
             DROP TABLE kv;
             ALTER TABLE kv3 RENAME TO kv;
             ALTER TABLE current ADD COLUMN sub INTEGER NOT NULL DEFAULT 0;
             UPDATE current SET sub = (SELECT k.sub FROM kv k WHERE k.mod_rev = current.mod_rev AND k.key = current.key);
             UPDATE meta SET value = 3 WHERE name = 'schema_version';
             COMMIT;",
        )?;
    }
    if version < 4 {
        // Nothing moves: the Raft bookkeeping is read in either form (`store::read_meta`).
        // The version tells netsy 0.1 that this database is not its own.
        conn.execute("UPDATE meta SET value = 4 WHERE name = 'schema_version'", [])?;
    }
    if version < 5 {
        // v4 deleted a compaction's history inside its apply: nothing is pending. Every
        // existing row keeps its value inline (`blob` 0); only new large values go to
        // `blobs` (created above), so nothing is rewritten.
        tracing::info!("upgrading the state database schema from v{} to v5", version.max(4));
        conn.execute_batch(
            "BEGIN;
             INSERT OR REPLACE INTO meta (name, value)
               SELECT 'compact_reclaimed', value FROM meta WHERE name = 'compact_revision';
             ALTER TABLE kv ADD COLUMN blob INTEGER NOT NULL DEFAULT 0;
             ALTER TABLE current ADD COLUMN blob INTEGER NOT NULL DEFAULT 0;
             UPDATE meta SET value = 5 WHERE name = 'schema_version';
             COMMIT;",
        )?;
    }
    Ok(())
}
