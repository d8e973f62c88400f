//! Slow or failing fsync for a member: the `netsy-fsync-fault` library (testkit/fsync-fault)
//! preloaded into the member's process, steered through a control file.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

/// The preload library, built (once per test process) with the Cargo that builds the
/// tests, into the same target directory.
pub fn library() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let out = Command::new(env!("CARGO"))
                .args(["build", "--locked", "--quiet", "-p", "netsy-fsync-fault", "--manifest-path"])
                .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml"))
                .output()
                .expect("run cargo build -p netsy-fsync-fault");
            assert!(
                out.status.success(),
                "cargo build -p netsy-fsync-fault failed:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
            // CARGO_TARGET_TMPDIR is <target>/tmp; a plain build puts the library in <target>/debug.
            let lib = Path::new(env!("CARGO_TARGET_TMPDIR")).join("../debug/libnetsy_fsync_fault.so");
            assert!(lib.exists(), "{} is missing after building it", lib.display());
            lib
        })
        .clone()
}

/// One member's control file (`NETSY_FSYNC_FAULT_FILE`).
pub struct FsyncFault {
    pub file: PathBuf,
}

/// What the library prints for each failure it injects.
pub const INJECTED: &str = "netsy-fsync-fault: injected EIO";

impl FsyncFault {
    /// A control file at `file`, every sync passing.
    pub fn new(file: PathBuf) -> FsyncFault {
        let fault = FsyncFault { file };
        fault.pass();
        fault
    }

    pub fn pass(&self) {
        self.write("pass");
    }

    /// Each sync waits `delay` first.
    pub fn delay(&self, delay: Duration) {
        self.write(&format!("delay {}", delay.as_millis()));
    }

    /// Each sync fails with EIO, syncing nothing.
    pub fn fail(&self) {
        self.write("fail");
    }

    /// Replaced in one rename, so the library never reads a half-written file.
    fn write(&self, text: &str) {
        let next = self.file.with_extension("next");
        std::fs::write(&next, text).expect("write the fsync control file");
        std::fs::rename(&next, &self.file).expect("replace the fsync control file");
    }
}
