//! Archive snapshots: a consistent copy of the applied SQLite state at Raft index
//! `index` of `epoch`, as `epochs/{epoch}/snapshots/{index:020}.snap`.
//!
//! Format:
//!
//! ```text
//! "NETSYSN1"                 magic, 8 bytes
//! u32 LE len, header JSON    `SnapshotHeader`: index, term, revision, size and CRC-32C
//!                            of the database
//! zstd( SQLite database )    streamed
//! ```
//!
//! Snapshots are written and read through temporary files, streamed in both
//! directions, so neither side holds a whole database in memory. A snapshot's name is
//! its index and its content is determined by the index, so a second writer of the same
//! name (a stale leader) writes the same bytes' meaning and plain puts are safe.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;

use futures::StreamExt;
use object_store::path::Path;
use object_store::{ObjectMeta, ObjectStore, ObjectStoreExt};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;

use super::log::{BoxError, Replay};
use crate::mvcc::{read_applied_meta, read_revisions, MvccError};

const MAGIC: &[u8; 8] = b"NETSYSN1";
/// The header's `format`. The database inside carries its own schema version.
pub const HEADER_FORMAT: u32 = 1;
const MAX_HEADER: u32 = 64 << 10;
const ZSTD_LEVEL: i32 = 3;
/// Multipart part size for snapshot uploads.
const UPLOAD_CHUNK: usize = 16 << 20;

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("object storage: {path}: {source}")]
    Store { path: String, source: object_store::Error },
    #[error("snapshot {path}: {msg}")]
    Corrupt { path: String, msg: String },
    #[error("snapshot {path}: bad header: {source}")]
    BadHeader { path: String, source: serde_json::Error },
    #[error("snapshot {path}: cannot decompress: {source}")]
    Decompress { path: String, source: std::io::Error },
    #[error("snapshot file {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("snapshot database: {0}")]
    Database(#[from] MvccError),
    /// The Raft bookkeeping in the database cannot be read (see `Replay::applied`).
    #[error("snapshot database: {0}")]
    Bookkeeping(#[source] BoxError),
    #[error("snapshot header: {0}")]
    Header(#[source] serde_json::Error),
    #[error("snapshot task: {0}")]
    Task(#[from] tokio::task::JoinError),
}

fn io_err(path: &FsPath) -> impl Fn(std::io::Error) -> SnapshotError + '_ {
    move |source| SnapshotError::Io {
        path: path.display().to_string(),
        source,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct SnapshotName {
    pub epoch: u64,
    pub index: u64,
}

impl SnapshotName {
    pub fn path(&self) -> Path {
        Path::from(format!("epochs/{}/snapshots/{:020}.snap", self.epoch, self.index))
    }

    pub fn parse(path: &Path) -> Option<SnapshotName> {
        let parts: Vec<String> = path.parts().map(|p| p.as_ref().to_string()).collect();
        let [epochs, epoch, snapshots, file] = parts.as_slice() else {
            return None;
        };
        if epochs != "epochs" || snapshots != "snapshots" {
            return None;
        }
        let index = file.strip_suffix(".snap")?;
        if index.len() != 20 {
            return None;
        }
        Some(SnapshotName {
            epoch: epoch.parse().ok()?,
            index: index.parse().ok()?,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotHeader {
    pub format: u32,
    pub cluster_id: String,
    pub epoch: u64,
    /// The last Raft entry the state includes (0: before the epoch's first entry).
    pub index: u64,
    pub term: u64,
    pub revision: i64,
    pub compact_revision: i64,
    pub db_bytes: u64,
    pub db_crc32c: u32,
    pub created_unix: u64,
    /// The commit time of entry `index` (ms since the Unix epoch): the state is as of
    /// then. 0 in snapshots of netsy before 0.3 (`created_unix` bounds it from above).
    #[serde(default)]
    pub commit_unix_ms: u64,
    /// When the snapshot was made, in ms (0 before netsy 0.3: see `created_unix`). For
    /// an epoch's base (index 0) it is when the epoch opened.
    #[serde(default)]
    pub created_unix_ms: u64,
}

impl SnapshotHeader {
    /// When the snapshot was made, in ms since the Unix epoch.
    pub fn created_ms(&self) -> u64 {
        if self.created_unix_ms > 0 {
            self.created_unix_ms
        } else {
            self.created_unix.saturating_mul(1000)
        }
    }

    /// The time the state is known to be at or before: its commit time, or for a
    /// snapshot written before netsy 0.3 (no commit time) the time it was made.
    pub fn time_bound(&self) -> u64 {
        if self.commit_unix_ms > 0 {
            self.commit_unix_ms
        } else {
            self.created_ms()
        }
    }
}

/// Describes the database at `db` (which nothing else writes) as a snapshot of `epoch`,
/// at the last entry its Raft bookkeeping records (read through `replay`).
pub fn describe(db: &FsPath, cluster_id: &str, epoch: u64, replay: &dyn Replay) -> Result<SnapshotHeader, SnapshotError> {
    let meta = read_applied_meta(db)?;
    let last = replay.applied(&meta).map_err(SnapshotError::Bookkeeping)?;
    let revs = read_revisions(db)?;
    let mut file = File::open(db).map_err(io_err(db))?;
    let mut crc = 0u32;
    let mut bytes = 0u64;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(io_err(db))?;
        if n == 0 {
            break;
        }
        crc = crc32c::crc32c_append(crc, &buf[..n]);
        bytes += n as u64;
    }
    Ok(SnapshotHeader {
        format: HEADER_FORMAT,
        cluster_id: cluster_id.to_string(),
        epoch,
        index: last.map_or(0, |l| l.index),
        term: last.map_or(0, |l| l.term),
        revision: revs.current,
        compact_revision: revs.compacted,
        db_bytes: bytes,
        db_crc32c: crc,
        created_unix: super::manifest::now_unix(),
        commit_unix_ms: last.map_or(meta.commit_unix_ms, |l| l.unix_ms),
        created_unix_ms: crate::archive::log::wall_clock_ms(),
    })
}

/// Writes the snapshot object for `db` to the local file `out`.
pub fn encode_file(db: &FsPath, header: &SnapshotHeader, out: &FsPath) -> Result<u64, SnapshotError> {
    let json = serde_json::to_vec(header).map_err(SnapshotError::Header)?;
    let mut w = BufWriter::new(File::create(out).map_err(io_err(out))?);
    w.write_all(MAGIC).map_err(io_err(out))?;
    w.write_all(&(json.len() as u32).to_le_bytes()).map_err(io_err(out))?;
    w.write_all(&json).map_err(io_err(out))?;
    let mut enc = zstd::Encoder::new(w, ZSTD_LEVEL).map_err(io_err(out))?;
    std::io::copy(&mut BufReader::new(File::open(db).map_err(io_err(db))?), &mut enc).map_err(io_err(out))?;
    let w = enc.finish().map_err(io_err(out))?;
    let file = w.into_inner().map_err(|e| io_err(out)(e.into_error()))?;
    file.sync_all().map_err(io_err(out))?;
    Ok(file.metadata().map_err(io_err(out))?.len())
}

/// Reads and checks the magic and header at the start of a snapshot object (`path` names it
/// in errors).
pub fn read_header(r: &mut impl Read, path: &str) -> Result<SnapshotHeader, SnapshotError> {
    let corrupt = |msg: &str| SnapshotError::Corrupt {
        path: path.to_string(),
        msg: msg.to_string(),
    };
    let mut magic = [0u8; 8];
    r.read_exact(&mut magic).map_err(|_| corrupt("truncated before the header"))?;
    if &magic == super::sealed::MAGIC {
        return Err(corrupt(
            "is encrypted (NETSYEN1): set storage.encryption to the key service it was written with",
        ));
    }
    if &magic != MAGIC {
        return Err(corrupt("not a netsy snapshot (bad magic)"));
    }
    let mut len = [0u8; 4];
    r.read_exact(&mut len).map_err(|_| corrupt("truncated header"))?;
    let len = u32::from_le_bytes(len);
    if len > MAX_HEADER {
        return Err(corrupt("header length is implausible"));
    }
    let mut json = vec![0u8; len as usize];
    r.read_exact(&mut json).map_err(|_| corrupt("truncated header"))?;
    let header: SnapshotHeader = serde_json::from_slice(&json).map_err(|source| SnapshotError::BadHeader {
        path: path.to_string(),
        source,
    })?;
    if header.format > HEADER_FORMAT {
        return Err(corrupt(&format!(
            "header format {} is newer than this netsy reads (up to {HEADER_FORMAT}); run a netsy at least as new as the one that wrote it",
            header.format
        )));
    }
    Ok(header)
}

/// Decodes the snapshot object in the local file `src` into the database `dest`,
/// verifying its size and checksum.
pub fn decode_file(src: &FsPath, object: &str, dest: &FsPath) -> Result<SnapshotHeader, SnapshotError> {
    let mut r = BufReader::new(File::open(src).map_err(io_err(src))?);
    let header = read_header(&mut r, object)?;
    let mut dec = zstd::Decoder::with_buffer(r).map_err(io_err(src))?;
    let mut out = BufWriter::new(File::create(dest).map_err(io_err(dest))?);
    let mut crc = 0u32;
    let mut bytes = 0u64;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = dec.read(&mut buf).map_err(|source| SnapshotError::Decompress {
            path: object.to_string(),
            source,
        })?;
        if n == 0 {
            break;
        }
        crc = crc32c::crc32c_append(crc, &buf[..n]);
        bytes += n as u64;
        out.write_all(&buf[..n]).map_err(io_err(dest))?;
    }
    if bytes != header.db_bytes || crc != header.db_crc32c {
        return Err(SnapshotError::Corrupt {
            path: object.to_string(),
            msg: format!(
                "database is {bytes} bytes with CRC-32C {crc:08x}; the header says {} bytes, {:08x}",
                header.db_bytes, header.db_crc32c
            ),
        });
    }
    let file = out.into_inner().map_err(|e| io_err(dest)(e.into_error()))?;
    file.sync_all().map_err(io_err(dest))?;
    Ok(header)
}

/// Uploads the local snapshot file `file` as `name` (multipart when large).
pub async fn upload(store: &Arc<dyn ObjectStore>, name: &SnapshotName, file: &FsPath) -> Result<(), SnapshotError> {
    let path = name.path();
    let store_err = |source| SnapshotError::Store {
        path: path.to_string(),
        source,
    };
    let mut src = tokio::fs::File::open(file).await.map_err(io_err(file))?;
    let mut dst = object_store::buffered::BufWriter::with_capacity(store.clone(), path.clone(), UPLOAD_CHUNK);
    let copied = tokio::io::copy(&mut src, &mut dst).await;
    match copied {
        Ok(_) => dst.shutdown().await.map_err(|e| {
            store_err(object_store::Error::Generic {
                store: "snapshot upload",
                source: Box::new(e),
            })
        }),
        Err(e) => {
            let _ = dst.abort().await;
            Err(store_err(object_store::Error::Generic {
                store: "snapshot upload",
                source: Box::new(e),
            }))
        }
    }
}

/// Snapshots the database file `db` (which nothing else writes) as a snapshot of
/// `epoch` at the index its Raft bookkeeping names (read through `replay`), through a
/// temporary file in `scratch`, and uploads it. Returns its header.
pub async fn publish(
    store: &Arc<dyn ObjectStore>,
    db: &FsPath,
    cluster_id: &str,
    epoch: u64,
    scratch: &FsPath,
    replay: &Arc<dyn Replay>,
) -> Result<SnapshotHeader, SnapshotError> {
    let started = std::time::Instant::now();
    let file = scratch.join(format!("upload-{epoch}.snap"));
    let (db2, file2, cluster, replay) = (db.to_path_buf(), file.clone(), cluster_id.to_string(), replay.clone());
    let (header, size) = tokio::task::spawn_blocking(move || {
        let header = describe(&db2, &cluster, epoch, replay.as_ref())?;
        let size = encode_file(&db2, &header, &file2)?;
        Ok::<_, SnapshotError>((header, size))
    })
    .await??;
    let name = SnapshotName {
        epoch,
        index: header.index,
    };
    tracing::info!(object = %name.path(), db_bytes = header.db_bytes, bytes = size, revision = header.revision, "uploading snapshot");
    let uploaded = upload(store, &name, &file).await;
    let _ = std::fs::remove_file(&file);
    uploaded?;
    tracing::info!(object = %name.path(), elapsed_ms = started.elapsed().as_millis() as u64, "snapshot uploaded");
    Ok(header)
}

/// Downloads `name` and decodes it into the database `dest` (through `dest.snap`).
pub async fn download(store: &dyn ObjectStore, name: &SnapshotName, dest: &FsPath) -> Result<SnapshotHeader, SnapshotError> {
    let path = name.path();
    let store_err = |source| SnapshotError::Store {
        path: path.to_string(),
        source,
    };
    let part: PathBuf = dest.with_extension("snap");
    let mut out = tokio::fs::File::create(&part).await.map_err(io_err(&part))?;
    let mut body = store.get(&path).await.map_err(store_err)?.into_stream();
    while let Some(chunk) = body.next().await {
        out.write_all(&chunk.map_err(store_err)?).await.map_err(io_err(&part))?;
    }
    out.flush().await.map_err(io_err(&part))?;
    drop(out);
    let (part2, dest2, object) = (part.clone(), dest.to_path_buf(), path.to_string());
    let header = tokio::task::spawn_blocking(move || decode_file(&part2, &object, &dest2)).await??;
    let _ = std::fs::remove_file(&part);
    Ok(header)
}

/// Reads only the header of `name`.
pub async fn fetch_header(store: &dyn ObjectStore, name: &SnapshotName) -> Result<SnapshotHeader, SnapshotError> {
    let path = name.path();
    let store_err = |source| SnapshotError::Store {
        path: path.to_string(),
        source,
    };
    let size = store.head(&path).await.map_err(store_err)?.size;
    let head = store
        .get_range(&path, 0..size.min(12 + MAX_HEADER as u64))
        .await
        .map_err(store_err)?;
    read_header(&mut head.as_ref(), path.as_ref())
}

/// The snapshots of `epoch`, oldest first.
pub async fn list(store: &dyn ObjectStore, epoch: u64) -> Result<Vec<(SnapshotName, ObjectMeta)>, SnapshotError> {
    let prefix = Path::from(format!("epochs/{epoch}/snapshots"));
    let mut listing = store.list(Some(&prefix));
    let mut found = Vec::new();
    while let Some(meta) = listing.next().await {
        let meta = meta.map_err(|source| SnapshotError::Store {
            path: prefix.to_string(),
            source,
        })?;
        if let Some(name) = SnapshotName::parse(&meta.location) {
            found.push((name, meta));
        }
    }
    found.sort_by_key(|(n, _)| *n);
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::log::testing::NothingApplied;
    use crate::mvcc::Store;

    fn sample_db(dir: &FsPath) -> PathBuf {
        let db = dir.join("state.db");
        let mut store = Store::open(&db).unwrap();
        let put = crate::mvcc::Command::Put(crate::proto::etcdserverpb::PutRequest {
            key: b"k".to_vec(),
            value: vec![7; 10_000],
            ..Default::default()
        });
        store.apply_batch(&[Some(put)], &Default::default()).unwrap();
        store.checkpoint().unwrap();
        db
    }

    #[tokio::test]
    async fn snapshots_round_trip_and_corruption_names_the_object() {
        let dir = tempfile::tempdir().unwrap();
        let db = sample_db(dir.path());
        let header = describe(&db, "c", 3, &NothingApplied).unwrap();
        assert_eq!((header.epoch, header.index, header.revision), (3, 0, 2));
        let file = dir.path().join("out.snap");
        encode_file(&db, &header, &file).unwrap();

        let store: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
        let name = SnapshotName { epoch: 3, index: 0 };
        upload(&store, &name, &file).await.unwrap();
        assert_eq!(list(store.as_ref(), 3).await.unwrap()[0].0, name);
        assert_eq!(fetch_header(store.as_ref(), &name).await.unwrap(), header);
        let restored = dir.path().join("restored.db");
        assert_eq!(download(store.as_ref(), &name, &restored).await.unwrap(), header);
        assert_eq!(std::fs::read(&restored).unwrap(), std::fs::read(&db).unwrap());

        // Flip one byte of the compressed body.
        let mut bytes = std::fs::read(&file).unwrap();
        let at = bytes.len() - 10;
        bytes[at] ^= 0xff;
        store.put(&name.path(), bytes.into()).await.unwrap();
        let err = download(store.as_ref(), &name, &dir.path().join("bad.db"))
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("epochs/3/snapshots/00000000000000000000.snap"), "{err}");
    }

    #[test]
    fn a_snapshot_of_a_newer_format_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let db = sample_db(dir.path());
        let mut header = describe(&db, "c", 3, &NothingApplied).unwrap();
        header.format = HEADER_FORMAT + 1;
        let file = dir.path().join("out.snap");
        encode_file(&db, &header, &file).unwrap();
        let err = decode_file(&file, "epochs/3/snapshots/x.snap", &dir.path().join("r.db"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("header format 2 is newer") && err.contains("x.snap"), "{err}");
    }

    #[test]
    fn names_parse_back() {
        let n = SnapshotName { epoch: 2, index: 99 };
        assert_eq!(SnapshotName::parse(&n.path()), Some(n));
        assert_eq!(SnapshotName::parse(&Path::from("epochs/2/wal/x.seg")), None);
    }

    #[test]
    fn unreadable_raft_bookkeeping_keeps_its_cause() {
        use crate::archive::log::{Applied, ReplayError};
        use crate::mvcc::AppliedMeta;

        #[derive(Debug, thiserror::Error)]
        #[error("bad bookkeeping")]
        struct Bad;
        struct Refusing;
        impl Replay for Refusing {
            fn apply(&self, _: &mut Store, _: crate::archive::segment::EntryEncoding, _: &[(u64, Vec<u8>)]) -> Result<(), ReplayError> {
                Ok(())
            }
            fn apply_until(
                &self,
                _: &mut Store,
                _: crate::archive::segment::EntryEncoding,
                _: &[(u64, Vec<u8>)],
                _: i64,
            ) -> Result<Option<u64>, ReplayError> {
                Ok(None)
            }
            fn applied(&self, _: &AppliedMeta) -> Result<Option<Applied>, BoxError> {
                Err(Box::new(Bad))
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let db = sample_db(dir.path());
        let err = describe(&db, "c", 3, &Refusing).unwrap_err();
        assert!(matches!(err, SnapshotError::Bookkeeping(_)), "{err:?}");
        assert!(std::error::Error::source(&err).is_some_and(|s| s.downcast_ref::<Bad>().is_some()));
        assert_eq!(crate::error_chain(&err), "snapshot database: bad bookkeeping");
    }
}
