//! The SQLite log of netsy 0.1 and 0.2 (`raft.db`: table `log (idx, entry)`, table
//! `raft_meta (name, value)` with the vote, the last purged log id and, from 0.2 on, the
//! format), imported into segment files at the first open.
//!
//! The import is written to `raft.import/` beside `raft.db`, synced, and renamed to
//! `raft/`; only then is `raft.db` replaced. A crash before the rename leaves `raft.db`
//! as it was (the half-written import is removed and redone at the next open); after
//! it, the log is whole and `raft.db` is replaced at the next open.
//!
//! `raft.db` is replaced by a marker rather than removed: an empty SQLite log whose
//! `raft_meta.format` is [`MOVED`]. netsy 0.2 refuses it by name ("raft.db is in format
//! 2, newer than this netsy reads"), so a downgrade stops at start instead of taking
//! `state.db` without a log for a restored state and opening a new archive epoch.

use std::path::Path;
use std::sync::Arc;

use rusqlite::{params, Connection, OptionalExtension};

use super::cache::Cached;
use super::writer::Writer;
use super::{recover, segment, Options, Shared, WalError, LEGACY_DB};
use crate::raft::codec::{self, legacy, FormatError};

/// Brings the log of `data_dir` into `dir` from its `raft.db`, if it has one.
pub fn upgrade(data_dir: &Path, dir: &Path, options: Options) -> Result<(), WalError> {
    let db = data_dir.join(LEGACY_DB);
    if !db.exists() || is_moved_marker(&db)? {
        return Ok(());
    }
    if !dir.exists() {
        import(&db, dir, options)?;
    }
    // The WAL and shared-memory files first (they belong to the old file), then the
    // marker takes the old file's place in one rename: `raft.db` itself is what says
    // whether this is still to do.
    for suffix in ["-wal", "-shm"] {
        let mut name = db.as_os_str().to_owned();
        name.push(suffix);
        let path = Path::new(&name);
        if path.exists() {
            std::fs::remove_file(path).map_err(WalError::io(path, "remove"))?;
        }
    }
    let marker = data_dir.join("raft.db.moving");
    write_moved_marker(&marker)?;
    std::fs::rename(&marker, &db).map_err(WalError::io(&db, "replace"))?;
    segment::sync_dir(data_dir)?;
    tracing::info!(
        "the Raft log is in {}; raft.db is now a marker that older netsy releases refuse",
        dir.display()
    );
    Ok(())
}

/// The `raft_meta.format` of the marker left in place of an imported `raft.db`. No
/// netsy ever wrote a log in this format: it exists to be refused by netsy 0.2.
pub const MOVED: u8 = 2;

/// Writes the marker: an empty log whose format is [`MOVED`], fsynced.
fn write_moved_marker(path: &Path) -> Result<(), WalError> {
    if path.exists() {
        std::fs::remove_file(path).map_err(WalError::io(path, "remove"))?;
    }
    {
        let conn = Connection::open(path).map_err(sqlite(path))?;
        conn.execute_batch(
            "CREATE TABLE log (idx INTEGER PRIMARY KEY, entry BLOB NOT NULL);
             CREATE TABLE raft_meta (name TEXT PRIMARY KEY, value BLOB NOT NULL);",
        )
        .map_err(sqlite(path))?;
        conn.execute(
            "INSERT INTO raft_meta (name, value) VALUES ('format', ?1), ('moved_to', ?2)",
            params![vec![MOVED], super::LOG_DIR.as_bytes()],
        )
        .map_err(sqlite(path))?;
    }
    std::fs::File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(WalError::io(path, "sync"))
}

/// Whether `db` is the marker an import left (see the module docs).
pub fn is_moved_marker(db: &Path) -> Result<bool, WalError> {
    let conn = Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(sqlite(db))?;
    let has_meta: bool = conn
        .query_row(
            "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'raft_meta')",
            [],
            |r| r.get(0),
        )
        .map_err(sqlite(db))?;
    if !has_meta {
        return Ok(false);
    }
    let format: Option<Vec<u8>> = conn
        .query_row("SELECT value FROM raft_meta WHERE name = 'format'", [], |r| r.get(0))
        .optional()
        .map_err(sqlite(db))?;
    Ok(format.as_deref() == Some(&[MOVED]))
}

fn sqlite(db: &Path) -> impl Fn(rusqlite::Error) -> WalError + '_ {
    move |source| WalError::Sqlite {
        path: db.to_path_buf(),
        source,
    }
}

fn format_err(db: &Path) -> impl Fn(FormatError) -> WalError + '_ {
    move |source| WalError::Format {
        path: db.to_path_buf(),
        source,
    }
}

/// How `raft.db` encodes its records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Encoding {
    /// netsy 0.1: bincode of openraft's structs, no `format` row.
    Bincode,
    /// netsy 0.2: `codec`'s, as segments hold them.
    Current,
}

fn encoding(conn: &Connection, db: &Path) -> Result<Encoding, WalError> {
    let stored: Option<Vec<u8>> = conn
        .query_row("SELECT value FROM raft_meta WHERE name = 'format'", [], |r| r.get(0))
        .optional()
        .map_err(sqlite(db))?;
    let refuse = |source| Err(format_err(db)(source));
    match stored.as_deref() {
        None => Ok(Encoding::Bincode),
        Some([f]) if *f == codec::FORMAT => Ok(Encoding::Current),
        Some([f]) if *f > codec::FORMAT => refuse(FormatError::Future {
            what: "raft.db",
            found: *f,
        }),
        Some(other) => refuse(FormatError::Unknown {
            what: "raft.db",
            found: other.first().copied().unwrap_or(0),
        }),
    }
}

fn meta<T>(conn: &Connection, db: &Path, name: &str, decode: impl Fn(&[u8]) -> Result<T, FormatError>) -> Result<Option<T>, WalError> {
    let raw: Option<Vec<u8>> = conn
        .query_row("SELECT value FROM raft_meta WHERE name = ?1", [name], |r| r.get(0))
        .optional()
        .map_err(sqlite(db))?;
    raw.map(|b| decode(&b)).transpose().map_err(format_err(db))
}

/// Writes the log, vote and last purged log id of `db` as a new log in `dir`.
fn import(db: &Path, dir: &Path, options: Options) -> Result<(), WalError> {
    let tmp = dir.with_extension("import");
    if tmp.exists() {
        tracing::warn!(dir = %tmp.display(), "removing an import of raft.db that did not finish");
        std::fs::remove_dir_all(&tmp).map_err(WalError::io(&tmp, "remove"))?;
    }
    let conn = Connection::open(db).map_err(sqlite(db))?;
    conn.busy_timeout(std::time::Duration::from_secs(30)).map_err(sqlite(db))?;
    // netsy created both tables when it first opened the file (an empty raft.db may
    // have neither).
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS log (idx INTEGER PRIMARY KEY, entry BLOB NOT NULL);
         CREATE TABLE IF NOT EXISTS raft_meta (name TEXT PRIMARY KEY, value BLOB NOT NULL);",
    )
    .map_err(sqlite(db))?;
    let encoding = encoding(&conn, db)?;
    let vote = meta(&conn, db, "vote", |b| match encoding {
        Encoding::Bincode => legacy::decode_vote(b),
        Encoding::Current => codec::decode_vote(b),
    })?;
    let last_purged = meta(&conn, db, "last_purged", |b| match encoding {
        Encoding::Bincode => legacy::decode_log_id(b),
        Encoding::Current => codec::decode_log_id(b),
    })?;
    let count: u64 = conn
        .query_row("SELECT count(*) FROM log", [], |r| r.get::<_, i64>(0))
        .map_err(sqlite(db))? as u64;
    tracing::info!(
        entries = count,
        ?encoding,
        "importing the Raft log from raft.db into {}",
        dir.display()
    );

    let mut recovered = recover::recover(&tmp)?;
    let current = recovered.current.take();
    let mut writer = Writer::new(tmp.clone(), Shared::new(recovered, options), options, current);
    if let Some(vote) = vote {
        writer.save_vote(&vote)?;
    }
    if let Some(log_id) = last_purged {
        writer.purge(log_id)?;
    }
    const CHUNK: i64 = 1024;
    let mut expected = last_purged.map(|l| l.index + 1);
    let mut done = 0u64;
    let mut after = last_purged.map_or(-1, |l| l.index as i64);
    let mut stmt = conn
        .prepare("SELECT idx, entry FROM log WHERE idx > ?1 ORDER BY idx LIMIT ?2")
        .map_err(sqlite(db))?;
    loop {
        let rows: Vec<(i64, Vec<u8>)> = stmt
            .query_map(params![after, CHUNK], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(sqlite(db))?
            .collect::<Result<_, _>>()
            .map_err(sqlite(db))?;
        let Some(&(last, _)) = rows.last() else { break };
        let mut entries = Vec::with_capacity(rows.len());
        for (idx, raw) in rows {
            let idx = idx as u64;
            let entry = match encoding {
                Encoding::Bincode => legacy::decode_entry(&raw),
                Encoding::Current => codec::decode_entry(&raw),
            }
            .map_err(format_err(db))?;
            if entry.log_id.index != idx {
                return Err(WalError::Misplaced {
                    index: idx,
                    found: entry.log_id.index,
                });
            }
            if let Some(expected) = expected.filter(|e| *e != idx) {
                return Err(WalError::Missing {
                    path: db.to_path_buf(),
                    expected,
                    found: idx,
                });
            }
            expected = Some(idx + 1);
            let bytes = match encoding {
                Encoding::Bincode => codec::encode_entry(&entry),
                Encoding::Current => raw,
            };
            entries.push(Arc::new(Cached { entry, bytes }));
        }
        writer.append(&entries)?;
        writer.commit()?;
        done += entries.len() as u64;
        if done % (64 * CHUNK as u64) < CHUNK as u64 && done < count {
            tracing::info!(done, entries = count, "importing raft.db");
        }
        after = last;
    }
    writer.commit()?;
    drop(writer);
    segment::sync_dir(&tmp)?;
    std::fs::rename(&tmp, dir).map_err(WalError::io(dir, "rename the import into place as"))?;
    if let Some(parent) = dir.parent() {
        segment::sync_dir(parent)?;
    }
    tracing::info!(entries = done, "imported the Raft log from raft.db");
    Ok(())
}

#[cfg(test)]
mod tests {
    use openraft::storage::RaftLogStorage;
    use openraft::{RaftLogReader, Vote};

    use super::super::{LogStore, LOG_DIR};
    use super::*;
    use crate::raft::codec::tests as golden;
    use crate::raft::LogId;

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
            .collect()
    }

    /// A `raft.db` with `rows` in table `log` and `meta` in `raft_meta`, as netsy 0.1 or
    /// 0.2 left it.
    fn legacy_db(data_dir: &Path, rows: &[(u64, Vec<u8>)], meta: &[(&str, Vec<u8>)]) {
        let conn = Connection::open(data_dir.join(LEGACY_DB)).expect("create raft.db");
        conn.pragma_update(None, "journal_mode", "WAL").expect("WAL");
        conn.execute_batch(
            "CREATE TABLE log (idx INTEGER PRIMARY KEY, entry BLOB NOT NULL);
             CREATE TABLE raft_meta (name TEXT PRIMARY KEY, value BLOB NOT NULL);",
        )
        .expect("tables");
        for (idx, entry) in rows {
            conn.execute("INSERT INTO log (idx, entry) VALUES (?1, ?2)", params![*idx as i64, entry])
                .expect("insert");
        }
        for (name, value) in meta {
            conn.execute("INSERT INTO raft_meta (name, value) VALUES (?1, ?2)", params![name, value])
                .expect("meta");
        }
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .expect("list")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    /// A `raft.db` as netsy 0.1 left it (bincode records, no format row) is imported at
    /// the first open and reads back the same; `raft.db` is gone.
    #[tokio::test]
    async fn a_netsy_0_1_log_is_imported() {
        let dir = tempfile::tempdir().expect("tempdir");
        legacy_db(
            dir.path(),
            &[
                (1, unhex(golden::LEGACY_BLANK)),
                (2, unhex(golden::LEGACY_MEMBERSHIP)),
                (3, unhex(golden::LEGACY_NORMAL)),
            ],
            &[("vote", unhex(golden::LEGACY_VOTE))],
        );
        for _ in 0..2 {
            let mut store = LogStore::open(dir.path()).expect("open");
            assert_eq!(store.try_get_log_entries(1..=3).await.expect("read"), golden::entries());
            assert_eq!(store.read_vote().await.expect("vote"), Some(Vote::new_committed(5, 2)));
            let state = store.get_log_state().await.expect("state");
            assert_eq!(state.last_log_id.map(|l| l.index), Some(3));
            assert_eq!(
                names(dir.path()),
                vec![LOG_DIR.to_string(), LEGACY_DB.to_string()],
                "raft.db's WAL is gone, and raft.db is the marker"
            );
            assert!(is_moved_marker(&dir.path().join(LEGACY_DB)).expect("read"));
        }
    }

    /// A `raft.db` of netsy 0.2 (the current encoding) keeps its purge marker; a crash
    /// during an import (a half-written `raft.import/`) or after it (`raft/` and
    /// `raft.db` both there) opens the whole log.
    #[tokio::test]
    async fn a_netsy_0_2_log_is_imported_whatever_crash_interrupted_it() {
        let id = |index| LogId::new(openraft::CommittedLeaderId::new(2, 1), index);
        let entry = |index| openraft::Entry::<crate::raft::TypeConfig> {
            log_id: id(index),
            payload: openraft::EntryPayload::Blank,
        };
        let rows: Vec<(u64, Vec<u8>)> = (11..=20).map(|i| (i, codec::encode_entry(&entry(i)))).collect();
        let meta = [
            ("format", vec![codec::FORMAT]),
            ("vote", codec::encode_vote(&Vote::new_committed(2, 1))),
            ("last_purged", codec::encode_log_id(&id(10))),
        ];
        let dir = tempfile::tempdir().expect("tempdir");
        legacy_db(dir.path(), &rows, &meta);
        std::fs::create_dir(dir.path().join("raft.import")).expect("a half-written import");
        std::fs::write(dir.path().join("raft.import").join(segment::file_name(11)), b"NETSYWL1 torn").expect("junk");
        let check = |mut store: LogStore| async move {
            let state = store.get_log_state().await.expect("state");
            assert_eq!(state.last_purged_log_id, Some(id(10)));
            assert_eq!(state.last_log_id, Some(id(20)));
            assert_eq!(
                store.try_get_log_entries(0..).await.expect("read"),
                (11..=20).map(entry).collect::<Vec<_>>()
            );
            assert_eq!(store.read_vote().await.expect("vote"), Some(Vote::new_committed(2, 1)));
        };
        let after = vec![LOG_DIR.to_string(), LEGACY_DB.to_string()];
        check(LogStore::open(dir.path()).expect("open")).await;
        assert_eq!(names(dir.path()), after);

        // Imported, then stopped before raft.db was replaced: raft.db is not read again.
        std::fs::remove_file(dir.path().join(LEGACY_DB)).expect("remove the marker");
        legacy_db(dir.path(), &[], &[("format", vec![codec::FORMAT])]);
        check(LogStore::open(dir.path()).expect("open")).await;
        assert_eq!(names(dir.path()), after);
        check(LogStore::open(dir.path()).expect("open")).await;
        assert_eq!(names(dir.path()), after);
    }

    /// netsy 0.2 (the `ensure_format` of its `raft.db` store: formats up to 1) refuses the
    /// marker left in place of an imported `raft.db`, by name.
    #[tokio::test]
    async fn the_marker_is_refused_by_netsy_0_2() {
        let dir = tempfile::tempdir().expect("tempdir");
        legacy_db(dir.path(), &[], &[("format", vec![codec::FORMAT])]);
        drop(LogStore::open(dir.path()).expect("open"));
        let conn = Connection::open(dir.path().join(LEGACY_DB)).expect("open the marker");
        let format: Vec<u8> = conn
            .query_row("SELECT value FROM raft_meta WHERE name = 'format'", [], |r| r.get(0))
            .expect("format row");
        let entries: i64 = conn.query_row("SELECT count(*) FROM log", [], |r| r.get(0)).expect("log table");
        // netsy 0.2 accepted exactly `[1]` and refused any larger byte as a newer format.
        assert!(format.len() == 1 && format[0] > 1, "{format:?}");
        assert_eq!(entries, 0);
    }

    /// A `raft.db` of a format newer than this netsy reads is refused by name, and left
    /// as it is.
    #[test]
    fn a_future_raft_db_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        legacy_db(dir.path(), &[], &[("format", vec![MOVED + 1])]);
        let err = LogStore::open(dir.path()).err().expect("a newer raft.db is refused");
        assert!(err.to_string().contains("raft.db is in format 3"), "{err}");
        assert!(names(dir.path()).contains(&LEGACY_DB.to_string()));
        assert!(!dir.path().join(LOG_DIR).exists() && !dir.path().join("raft.import").exists());
    }
}
