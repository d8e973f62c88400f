//! Whether the state database outlived the page cache it was written through.
//!
//! The state database commits without fsync (`synchronous=OFF`): the Raft log is the
//! durable record of every write, and the database is rebuilt from it. Unsynced pages
//! survive a crash of the process (they are in the kernel's page cache) but not a crash
//! of the OS or a power loss, after which the file may miss writes or be torn. So every
//! start records the boot it opens the database in (`state.boot`); a database last
//! opened in another boot is not trusted and is rebuilt from the local Raft snapshot and
//! the log (see `raft::state_machine::rebuild_state`). Where the boot cannot be told
//! (no `/proc/sys/kernel/random/boot_id`), commits keep SQLite's `NORMAL` syncs and the
//! database is always trusted.
//!
//! A clean shutdown fsyncs the database and replaces the marker with `synced` (see
//! `seal`): such a database is trusted in any boot, so a data directory that was stopped
//! cleanly may move to another machine or outlive a reboot without a rebuild. The next
//! start records its boot again before its first unsynced commit.

use std::path::Path;

const BOOT_ID: &str = "/proc/sys/kernel/random/boot_id";

/// The marker of a database fsynced by a clean shutdown.
pub const SEALED: &str = "synced";

/// This boot of the OS, or `None` where it cannot be told.
pub fn current_boot() -> Option<String> {
    let id = std::fs::read_to_string(BOOT_ID).ok()?;
    let id = id.trim();
    (!id.is_empty()).then(|| id.to_string())
}

/// SQLite's `synchronous` for state databases on this machine (see the module docs).
pub fn synchronous() -> &'static str {
    static MODE: std::sync::LazyLock<&'static str> = std::sync::LazyLock::new(|| if current_boot().is_some() { "OFF" } else { "NORMAL" });
    *MODE
}

/// What the state database next to `marker` may be trusted with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trust {
    /// Opened in this boot (or written by a netsy that synced it, or no boot to tell):
    /// everything committed to it is there.
    Intact,
    /// Last opened in another boot: it may have lost the pages its commits left in the
    /// page cache, or be torn.
    LostPageCache { recorded: String },
}

/// Compares the boot recorded in `marker` with `current`. No marker means a database
/// from before markers existed, written with `synchronous=NORMAL`: intact.
pub fn check(marker: &Path, current: Option<&str>) -> std::io::Result<Trust> {
    let Some(current) = current else {
        return Ok(Trust::Intact);
    };
    match std::fs::read_to_string(marker) {
        Ok(recorded) if recorded.trim() == current || recorded.trim() == SEALED => Ok(Trust::Intact),
        Ok(recorded) => Ok(Trust::LostPageCache {
            recorded: recorded.trim().to_string(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Trust::Intact),
        Err(e) => Err(e),
    }
}

/// Records `current` as the boot the state database is opened in (durably, before the
/// first unsynced commit).
pub fn record(marker: &Path, current: Option<&str>) -> std::io::Result<()> {
    match current {
        Some(boot) => crate::fsutil::write_durably(marker, boot.as_bytes()),
        None => Ok(()),
    }
}

/// Marks the state database as complete on disk in any boot: call only after it was
/// fsynced and before nothing else commits to it (a clean shutdown).
pub fn seal(marker: &Path) -> std::io::Result<()> {
    crate::fsutil::write_durably(marker, SEALED.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_database_opened_in_another_boot_is_not_trusted() {
        let dir = tempfile::tempdir().expect("temp dir");
        let marker = dir.path().join("state.boot");
        // No marker: a database synced by an older netsy.
        assert_eq!(check(&marker, Some("boot-a")).expect("check"), Trust::Intact);
        record(&marker, Some("boot-a")).expect("record");
        assert_eq!(check(&marker, Some("boot-a")).expect("check"), Trust::Intact);
        assert_eq!(
            check(&marker, Some("boot-b")).expect("check"),
            Trust::LostPageCache { recorded: "boot-a".into() }
        );
        // Without a boot id there is nothing to compare (and commits sync).
        assert_eq!(check(&marker, None).expect("check"), Trust::Intact);
        record(&marker, Some("boot-b")).expect("record");
        assert_eq!(check(&marker, Some("boot-b")).expect("check"), Trust::Intact);
    }

    #[test]
    fn a_sealed_database_is_trusted_in_any_boot_until_the_next_start_records_its_own() {
        let dir = tempfile::tempdir().expect("temp dir");
        let marker = dir.path().join("state.boot");
        record(&marker, Some("boot-a")).expect("record");
        seal(&marker).expect("seal");
        assert_eq!(check(&marker, Some("boot-b")).expect("check"), Trust::Intact);
        // Opened again (in boot b): unsynced commits follow, so a later boot must not trust it.
        record(&marker, Some("boot-b")).expect("record");
        assert_eq!(
            check(&marker, Some("boot-c")).expect("check"),
            Trust::LostPageCache { recorded: "boot-b".into() }
        );
    }

    #[test]
    fn this_machine_has_a_boot_id_and_commits_without_sync() {
        if cfg!(target_os = "linux") {
            assert!(current_boot().is_some());
            assert_eq!(synchronous(), "OFF");
        }
    }
}
