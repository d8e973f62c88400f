//! A small tmpfs mounted over a directory, to run a member out of disk space (mounting
//! needs root). Unmounted when dropped, also when a test panics (lazily, since the member
//! may still hold files open while the panic unwinds).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

pub struct Tmpfs {
    pub path: PathBuf,
}

/// The file that takes up the free space.
const FILLER: &str = "chaos-filler";

impl Tmpfs {
    /// Mounts a tmpfs of `size_mib` MiB at `path` (created if missing).
    pub fn mount(path: &Path, size_mib: u64) -> Tmpfs {
        std::fs::create_dir_all(path).expect("create the mount point");
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size_mib}m"), "tmpfs"])
            .arg(path)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "mount -t tmpfs on {} failed (it needs root): {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs { path: path.to_path_buf() }
    }

    /// Whether a tmpfs is still mounted at `path` (per /proc/self/mountinfo).
    fn mounted(&self) -> bool {
        let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let path = self.path.to_string_lossy();
        info.lines().any(|l| {
            let fields: Vec<&str> = l.split(' ').collect();
            // Field 5 is the mount point; the filesystem type follows the " - " separator.
            fields.get(4) == Some(&path.as_ref()) && l.split(" - ").nth(1).is_some_and(|t| t.starts_with("tmpfs "))
        })
    }

    /// Fills every free byte with a file; returns its size. Refuses when the tmpfs is no
    /// longer mounted there: the filler would fill the real disk.
    pub fn fill(&self) -> u64 {
        assert!(
            self.mounted(),
            "{} is not a tmpfs mount any more; refusing to fill the disk under it",
            self.path.display()
        );
        let mut f = std::fs::File::create(self.path.join(FILLER)).expect("create the filler");
        let mut written = 0u64;
        // Large writes first, then small ones for the last partial blocks.
        for chunk in [1 << 20, 4096, 1] {
            let buf = vec![0u8; chunk];
            while f.write_all(&buf).is_ok() {
                written += chunk as u64;
            }
        }
        let _ = f.sync_all();
        written
    }

    /// Removes the filler.
    pub fn free(&self) {
        match std::fs::remove_file(self.path.join(FILLER)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => panic!("remove the filler: {e}"),
        }
    }

    /// Free bytes on the filesystem.
    pub fn available(&self) -> u64 {
        let out = Command::new("df")
            .args(["--output=avail", "-B1"])
            .arg(&self.path)
            .output()
            .expect("run df");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .nth(1)
            .and_then(|l| l.trim().parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}
