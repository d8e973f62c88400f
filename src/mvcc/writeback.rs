//! Starts the kernel writing the state database's dirty pages (its WAL and main file)
//! to disk without waiting for them.
//!
//! The state database's commits do not fsync (the Raft log is the durable record), so
//! their pages pile up in the page cache until a checkpoint fsyncs them all at once. On
//! ext4 that burst holds up the Raft log's own fsync (tens of milliseconds, which is the
//! p99 of every write). Asked often, the kernel writes the pages out as they come, and
//! the checkpoint's fsync finds little left to do.

use std::path::Path;

/// Starts writeback of the dirty pages of `db` and its `-wal` file (a file that does not
/// exist is skipped). Returns at once on Linux; does nothing elsewhere.
pub fn start_writeback(db: &Path) {
    let mut wal = db.as_os_str().to_owned();
    wal.push("-wal");
    for path in [Path::new(&wal), db] {
        if let Ok(file) = std::fs::File::open(path) {
            start_file_writeback(&file);
        }
    }
}

#[cfg(target_os = "linux")]
fn start_file_writeback(file: &std::fs::File) {
    use std::os::fd::AsRawFd;
    // SAFETY: `file` is open for the whole call; offset 0 and length 0 mean the whole
    // file; SYNC_FILE_RANGE_WRITE only starts writeback and touches no memory of ours.
    // Failure is harmless (the checkpoint's fsync still writes everything), so the
    // result is ignored.
    unsafe {
        libc::sync_file_range(file.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE);
    }
}

#[cfg(not(target_os = "linux"))]
fn start_file_writeback(_file: &std::fs::File) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writeback_of_a_database_with_and_without_its_wal_leaves_the_files_intact() {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = dir.path().join("state.db");
        start_writeback(&db); // neither file exists yet
        std::fs::write(&db, b"main").expect("write db");
        start_writeback(&db); // no WAL
        std::fs::write(dir.path().join("state.db-wal"), b"wal").expect("write wal");
        start_writeback(&db);
        assert_eq!(std::fs::read(&db).expect("read db"), b"main");
        assert_eq!(std::fs::read(dir.path().join("state.db-wal")).expect("read wal"), b"wal");
    }
}
