//! The log store as a whole: what reopening finds after appends, truncations, purges and
//! votes, across segments and after torn or corrupt writes.

use std::path::{Path, PathBuf};

use openraft::storage::RaftLogStorageExt;
use openraft::{CommittedLeaderId, EntryPayload};

use super::record::{self, Parsed};
use super::segment::HEADER;
use super::*;
use crate::archive::log::LogSource;
use crate::mvcc::Command;
use crate::proto::etcdserverpb::PutRequest;

fn id(term: u64, index: u64) -> LogId {
    LogId::new(CommittedLeaderId::new(term, 1), index)
}

/// Entry `index` of `term`, holding a put of a value of `size` bytes.
fn entry(term: u64, index: u64, size: usize) -> Entry<TypeConfig> {
    Entry {
        log_id: id(term, index),
        payload: EntryPayload::Normal(crate::raft::Batch::new(
            vec![Command::Put(PutRequest {
                key: format!("key/{index}").into_bytes(),
                value: vec![b'a' + (index % 26) as u8; size],
                ..Default::default()
            })],
            1_764_633_600_000 + index,
        )),
    }
}

fn entries(term: u64, indexes: std::ops::Range<u64>) -> Vec<Entry<TypeConfig>> {
    indexes.map(|i| entry(term, i, 40)).collect()
}

/// Small segments (a few entries each), a small cache, a little zeroed space.
fn small() -> Options {
    Options {
        segment_bytes: 512,
        cache_bytes: 256,
        zero_ahead: 256,
    }
}

/// Room for every entry a test writes in one segment, and a little zeroed space (the
/// torn-write tests copy the log for every byte they tear).
fn roomy() -> Options {
    Options {
        zero_ahead: 4096,
        ..Options::default()
    }
}

fn open(dir: &Path, options: Options) -> LogStore {
    LogStore::open_with(dir, options).expect("open the log")
}

async fn append(store: &mut LogStore, entries: Vec<Entry<TypeConfig>>) {
    store.blocking_append(entries).await.expect("append");
}

async fn all(store: &mut LogStore) -> Vec<Entry<TypeConfig>> {
    store.try_get_log_entries(..).await.expect("read the log")
}

async fn last_index(store: &mut LogStore) -> Option<u64> {
    store.get_log_state().await.expect("log state").last_log_id.map(|l| l.index)
}

/// The segment files of the log in `data_dir`, oldest first.
fn segment_files(data_dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(data_dir.join(LOG_DIR))
        .expect("list the log")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "wal"))
        .collect();
    files.sort();
    files
}

/// The `(start, end)` offsets of the records of segment file `path`.
fn records(path: &Path) -> Vec<(usize, usize)> {
    let bytes = std::fs::read(path).expect("read a segment");
    let mut at = HEADER as usize;
    let mut out = Vec::new();
    while let Parsed::Record(payload) = record::parse(&bytes[at..]) {
        out.push((at, at + record::HEADER + payload.len()));
        at += record::HEADER + payload.len();
    }
    out
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for e in std::fs::read_dir(from).expect("list") {
        let e = e.expect("entry");
        if e.file_type().expect("type").is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).expect("copy");
        }
    }
}

#[test]
fn purges_never_pass_the_archive_floor() {
    assert_eq!(purge_target(100, u64::MAX, 0), PurgeTarget::Requested, "no archive: purge freely");
    assert_eq!(purge_target(100, 100, 0), PurgeTarget::Requested);
    assert_eq!(purge_target(100, 40, 0), PurgeTarget::Through(40));
    assert_eq!(purge_target(100, 40, 40), PurgeTarget::Nothing);
    assert_eq!(
        purge_target(100, 0, 0),
        PurgeTarget::Nothing,
        "nothing uploaded yet: keep everything"
    );
}

/// A purge past the held entries (a snapshot installed from the leader on a member whose
/// log is empty or shorter) is recorded even below the archive floor, so that a restart
/// knows where the log starts; one within them keeps what the archive lacks.
#[tokio::test]
async fn a_purge_past_the_stored_entries_is_recorded_whatever_the_archive_floor() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut store = open(dir.path(), roomy());
    append(&mut store, entries(1, 1..6)).await;
    store.set_purge_floor(0); // nothing is in object storage yet
    store.purge(id(1, 3)).await.expect("purge within the log");
    assert_eq!(
        store.get_log_state().await.expect("state").last_purged_log_id,
        None,
        "kept for the archive"
    );
    store.purge(id(1, 1999)).await.expect("purge past the log");
    for _ in 0..2 {
        let state = store.get_log_state().await.expect("state");
        assert_eq!(state.last_purged_log_id, Some(id(1, 1999)));
        assert_eq!(state.last_log_id, Some(id(1, 1999)));
        assert!(all(&mut store).await.is_empty());
        assert!(segment_files(dir.path()).is_empty(), "every segment held purged entries only");
        drop(store);
        store = open(dir.path(), roomy());
    }
    append(&mut store, entries(2, 2000..2003)).await;
    drop(store);
    let mut store = open(dir.path(), roomy());
    assert_eq!(all(&mut store).await, entries(2, 2000..2003));
}

/// The archive floor keeps the entries it has not uploaded: a purge stops at it.
#[tokio::test]
async fn a_purge_within_the_log_stops_at_the_archive_floor() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut store = open(dir.path(), small());
    append(&mut store, entries(1, 0..40)).await;
    store.set_purge_floor(25);
    store.purge(id(1, 30)).await.expect("purge");
    let state = store.get_log_state().await.expect("state");
    assert_eq!(state.last_purged_log_id, Some(id(1, 25)));
    assert_eq!(all(&mut store).await, entries(1, 26..40));
}

/// Appends, a truncation, a purge and a vote all survive reopening, across many
/// segments, reading entries both from memory and (evicted, or after a restart) from
/// the segment files.
#[tokio::test]
async fn every_operation_survives_reopening_across_segments() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut store = open(dir.path(), small());
    for start in (0..60).step_by(7) {
        append(&mut store, entries(1, start..(start + 7).min(60))).await;
    }
    assert!(segment_files(dir.path()).len() >= 10, "{:?}", segment_files(dir.path()));
    assert_eq!(all(&mut store).await, entries(1, 0..60), "from the cache and the segments");
    assert!(store.holds_every_entry().expect("whole"));
    let bytes: u64 = entries(1, 31..60).iter().map(|e| codec::encode_entry(e).len() as u64).sum();
    assert_eq!(store.bytes_after(30).expect("bytes after"), bytes);
    store.save_vote(&Vote::new_committed(3, 1)).await.expect("vote");

    drop(store);
    let mut store = open(dir.path(), small());
    assert_eq!(all(&mut store).await, entries(1, 0..60));
    assert_eq!(store.read_vote().await.expect("vote"), Some(Vote::new_committed(3, 1)));
    assert_eq!(store.bytes_after(30).expect("bytes after"), bytes);

    // A new leader's entries replace 23 on: the segments after the one holding 23 go.
    let before = segment_files(dir.path()).len();
    store.truncate(id(1, 23)).await.expect("truncate");
    assert_eq!(last_index(&mut store).await, Some(22));
    assert!(segment_files(dir.path()).len() < before);
    drop(store);
    let mut store = open(dir.path(), small());
    assert_eq!(all(&mut store).await, entries(1, 0..23), "truncated for good");
    append(&mut store, entries(2, 23..45)).await;
    drop(store);
    let mut store = open(dir.path(), small());
    let mut want = entries(1, 0..23);
    want.extend(entries(2, 23..45));
    assert_eq!(all(&mut store).await, want);

    // A purge removes the segments that hold purged entries only.
    store.purge(id(2, 30)).await.expect("purge");
    let first_kept = segment_files(dir.path())
        .first()
        .and_then(|p| p.file_stem().map(|s| s.to_string_lossy().parse::<u64>().expect("a number")))
        .expect("a segment");
    assert!((20..=31).contains(&first_kept), "the first segment left starts at {first_kept}");
    assert!(!store.holds_every_entry().expect("not whole"));
    drop(store);
    let mut store = open(dir.path(), small());
    let state = store.get_log_state().await.expect("state");
    assert_eq!(state.last_purged_log_id, Some(id(2, 30)));
    assert_eq!(state.last_log_id, Some(id(2, 44)));
    assert_eq!(all(&mut store).await, entries(2, 31..45));
    assert_eq!(store.try_get_log_entries(40..43).await.expect("a range"), entries(2, 40..43));
    assert_eq!(store.read_vote().await.expect("vote"), Some(Vote::new_committed(3, 1)));
}

/// Truncating everything, and truncating back into the segment before the last, leave a
/// log that appends and reopens.
#[tokio::test]
async fn truncating_at_segment_boundaries() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut store = open(dir.path(), small());
    append(&mut store, entries(1, 0..30)).await;
    let second = segment_files(dir.path())[1].clone();
    let boundary: u64 = second.file_stem().expect("stem").to_string_lossy().parse().expect("a number");
    store.truncate(id(1, boundary)).await.expect("truncate at a segment's first entry");
    drop(store);
    let mut store = open(dir.path(), small());
    assert_eq!(all(&mut store).await, entries(1, 0..boundary));
    store.truncate(id(1, 0)).await.expect("truncate everything");
    assert_eq!(store.get_log_state().await.expect("state").last_log_id, None);
    drop(store);
    let mut store = open(dir.path(), small());
    assert!(all(&mut store).await.is_empty());
    append(&mut store, entries(3, 0..5)).await;
    drop(store);
    let mut store = open(dir.path(), small());
    assert_eq!(all(&mut store).await, entries(3, 0..5));
}

/// The archive reads the bytes the segments hold, and the time each entry carries,
/// from memory and from the files.
#[tokio::test]
async fn the_archive_reads_the_stored_encoding() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut store = open(dir.path(), roomy());
    append(&mut store, entries(1, 0..10)).await;
    let want: Vec<crate::archive::segment::Frame> = entries(1, 2..8)
        .iter()
        .map(|e| crate::archive::segment::Frame::new(e.log_id.index, 1_764_633_600_000 + e.log_id.index, codec::encode_entry(e)))
        .collect();
    assert_eq!(store.entries(2, 7, u64::MAX).await.expect("from memory"), want);
    drop(store);
    let store = open(dir.path(), roomy());
    assert_eq!(store.entries(2, 7, u64::MAX).await.expect("from the segment"), want);
    assert_eq!(store.entries(8, 20, u64::MAX).await.expect("to the end").len(), 2);
    // A byte cap ends the run at the entry that reaches it, and never before the first.
    let two = (want[0].entry.len() + want[1].entry.len()) as u64;
    assert_eq!(store.entries(2, 7, two).await.expect("capped"), want[..2].to_vec());
    assert_eq!(store.entries(2, 7, two - 1).await.expect("capped"), want[..2].to_vec());
    assert_eq!(store.entries(2, 7, 1).await.expect("one at least"), want[..1].to_vec());
    assert!(store.entries(20, 30, 1).await.expect("past the end").is_empty());
}

/// Writes entries 0..5 (one append each) to a new log in `dir` and returns its only
/// segment file.
async fn five_entries(dir: &Path) -> PathBuf {
    let mut store = open(dir, roomy());
    for i in 0..5 {
        append(&mut store, vec![entry(1, i, 40)]).await;
    }
    drop(store);
    let files = segment_files(dir);
    assert_eq!(files.len(), 1);
    files[0].clone()
}

/// A write torn at any byte of the last record — into the zeroed space, or with the file
/// ending there — loses that record only; the log goes on after it.
#[tokio::test]
async fn a_torn_last_record_is_cut_off_at_every_byte() {
    let original = tempfile::tempdir().expect("tempdir");
    let segment = five_entries(original.path()).await;
    let name = segment.file_name().expect("name").to_owned();
    let &(start, end) = records(&segment).last().expect("records");
    for cut in start..end {
        for zeroed in [true, false] {
            let dir = tempfile::tempdir().expect("tempdir");
            copy_dir(original.path(), dir.path());
            let path = dir.path().join(LOG_DIR).join(&name);
            let file = std::fs::OpenOptions::new().write(true).open(&path).expect("open");
            if zeroed {
                segment::write_zeroes(&file, cut as u64, end as u64).expect("zero");
            } else {
                file.set_len(cut as u64).expect("cut");
            }
            drop(file);
            let mut store = open(dir.path(), roomy());
            assert_eq!(all(&mut store).await, entries(1, 0..4), "torn at {cut} (zeroed: {zeroed})");
            append(&mut store, vec![entry(2, 4, 10)]).await;
            drop(store);
            let mut store = open(dir.path(), roomy());
            let mut want = entries(1, 0..4);
            want.push(entry(2, 4, 10));
            assert_eq!(all(&mut store).await, want, "appended after the cut at {cut}");
        }
    }
}

/// A flipped byte in the last segment ends the log there; in any other segment it is an
/// error that names the file and the offset.
#[tokio::test]
async fn a_flipped_byte_ends_the_last_segment_and_is_an_error_elsewhere() {
    let dir = tempfile::tempdir().expect("tempdir");
    let segment = five_entries(dir.path()).await;
    let (start, end) = records(&segment)[3];
    let mut bytes = std::fs::read(&segment).expect("read");
    bytes[(start + end) / 2] ^= 0x10;
    std::fs::write(&segment, &bytes).expect("write");
    let mut store = open(dir.path(), roomy());
    assert_eq!(all(&mut store).await, entries(1, 0..3));
    append(&mut store, entries(1, 3..30)).await;
    drop(store);

    let dir = tempfile::tempdir().expect("tempdir");
    let mut store = open(dir.path(), small());
    append(&mut store, entries(1, 0..30)).await;
    drop(store);
    let second = segment_files(dir.path())[1].clone();
    let (start, end) = records(&second)[1];
    let mut bytes = std::fs::read(&second).expect("read");
    bytes[end - 1] ^= 0x01;
    std::fs::write(&second, &bytes).expect("write");
    let err = LogStore::open_with(dir.path(), small())
        .err()
        .expect("a corrupt segment is refused");
    let text = crate::error_chain(&err);
    let name = second.file_name().expect("name").to_string_lossy().into_owned();
    assert!(
        text.contains(&name) && text.contains(&format!("offset {start}")) && text.contains("checksum"),
        "{text}"
    );
}

/// A batch cut short by a crash — a record torn, a later one of the same batch whole
/// (the disk wrote its pages in another order) — is gone after a restart, and nothing of
/// it comes back when the log is written further.
#[tokio::test]
async fn a_partial_batch_is_gone_after_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let segment = five_entries(dir.path()).await;
    let (_, end) = *records(&segment).last().expect("records");
    let mut torn = Vec::new();
    record::encode_into(&mut torn, &codec::encode_entry(&entry(1, 5, 40)));
    let torn_len = torn.len();
    torn[torn_len / 2..].fill(0);
    record::encode_into(&mut torn, &codec::encode_entry(&entry(1, 6, 40)));
    let file = std::fs::OpenOptions::new().write(true).open(&segment).expect("open");
    std::os::unix::fs::FileExt::write_all_at(&file, &torn, end as u64).expect("write");
    drop(file);

    let mut store = open(dir.path(), roomy());
    assert_eq!(all(&mut store).await, entries(1, 0..5));
    assert_eq!(std::fs::metadata(&segment).expect("stat").len(), end as u64, "cut off");
    // Entry 5 again, shorter: entry 6 of the torn batch must not follow it.
    append(&mut store, vec![entry(2, 5, 10)]).await;
    drop(store);
    let mut store = open(dir.path(), roomy());
    let mut want = entries(1, 0..5);
    want.push(entry(2, 5, 10));
    assert_eq!(all(&mut store).await, want);
}

/// A purge that stopped after recording itself, before removing its segments, is
/// finished by the next open.
#[tokio::test]
async fn an_interrupted_purge_is_finished_at_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut store = open(dir.path(), small());
    append(&mut store, entries(1, 0..30)).await;
    drop(store);
    let before = segment_files(dir.path()).len();
    let purged = dir.path().join(LOG_DIR).join(PURGED_FILE);
    crate::fsutil::write_durably(&purged, &codec::encode_log_id(&id(1, 20))).expect("write the marker");
    let mut store = open(dir.path(), small());
    assert_eq!(all(&mut store).await, entries(1, 21..30));
    assert!(segment_files(dir.path()).len() < before);
    drop(store);

    // Purged past the log: every segment goes, and the log continues after the marker.
    crate::fsutil::write_durably(&purged, &codec::encode_log_id(&id(1, 100))).expect("write the marker");
    let mut store = open(dir.path(), small());
    assert!(all(&mut store).await.is_empty());
    assert!(segment_files(dir.path()).is_empty());
    assert_eq!(last_index(&mut store).await, Some(100));
}

/// A segment missing between others is an error naming where the log breaks.
#[tokio::test]
async fn a_missing_segment_is_an_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut store = open(dir.path(), small());
    append(&mut store, entries(1, 0..30)).await;
    drop(store);
    let files = segment_files(dir.path());
    std::fs::remove_file(&files[1]).expect("remove");
    let err = LogStore::open_with(dir.path(), small()).err().expect("a gap is refused");
    let text = crate::error_chain(&err);
    let name = files[2].file_name().expect("name").to_string_lossy().into_owned();
    assert!(text.contains(&name) && text.contains("is missing"), "{text}");
}

/// Entries appended are readable at once, before the writer has synced them, and stay
/// readable (from the files) once the cache evicted them.
#[tokio::test]
async fn the_cache_is_bounded_and_reads_never_see_holes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut store = open(dir.path(), small());
    for start in (0..200).step_by(10) {
        append(&mut store, entries(1, start..start + 10)).await;
        assert_eq!(all(&mut store).await, entries(1, 0..start + 10));
    }
    let cached = store.shared.lock().expect("state").cache.bytes();
    assert!(cached <= small().cache_bytes, "{cached} bytes cached");
}
