//! Slow or failing `fsync`/`fdatasync` for netsy's fault-injection tests.
//!
//! Loaded into a netsy process with `LD_PRELOAD`, this library stands in for libc's
//! `fsync` and `fdatasync` (which SQLite, the Raft log and every `File::sync_*` call in
//! netsy end up in). Before each call it reads the file named by
//! `NETSY_FSYNC_FAULT_FILE`; what the file says applies to that call:
//!
//! - missing, empty or `pass`: the real call;
//! - `delay <ms>`: sleep that long, then the real call;
//! - `fail`: nothing is synced and the call fails with `EIO`, as a failing disk does.
//!
//! Every failure it injects is reported on standard error as
//! `netsy-fsync-fault: injected EIO into fdatasync(fd 7)`, so a test can tell whether the
//! process met a failure at all. Test-only: no netsy build ships or loads it.

use std::ffi::{c_int, CStr};
use std::sync::OnceLock;
use std::time::Duration;

/// What a sync call is made to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    Pass,
    Delay(Duration),
    Fail,
}

/// The fault named by the control file's text; anything unreadable means `Pass`, so a
/// half-written control file never fails a sync by accident.
fn parse(text: &str) -> Fault {
    let mut words = text.split_whitespace();
    match (words.next(), words.next().map(str::parse::<u64>)) {
        (Some("fail"), None) => Fault::Fail,
        (Some("delay"), Some(Ok(ms))) => Fault::Delay(Duration::from_millis(ms)),
        _ => Fault::Pass,
    }
}

fn current() -> Fault {
    static FILE: OnceLock<Option<std::path::PathBuf>> = OnceLock::new();
    let file = FILE.get_or_init(|| std::env::var_os("NETSY_FSYNC_FAULT_FILE").map(Into::into));
    match file {
        Some(path) => std::fs::read_to_string(path).map_or(Fault::Pass, |t| parse(&t)),
        None => Fault::Pass,
    }
}

type SyncFn = unsafe extern "C" fn(c_int) -> c_int;

/// The next definition of `name` after this library (libc's, normally).
fn next(name: &'static CStr, slot: &'static OnceLock<usize>) -> SyncFn {
    let address = *slot.get_or_init(|| {
        // SAFETY: dlsym with a NUL-terminated name and the RTLD_NEXT pseudo-handle.
        unsafe { libc::dlsym(libc::RTLD_NEXT, name.as_ptr()) as usize }
    });
    assert!(address != 0, "netsy-fsync-fault: no {name:?} after this library");
    // SAFETY: the symbol is libc's sync call, of this signature.
    unsafe { std::mem::transmute::<usize, SyncFn>(address) }
}

fn intercept(name: &'static CStr, slot: &'static OnceLock<usize>, fd: c_int) -> c_int {
    match current() {
        Fault::Pass => {}
        Fault::Delay(d) => std::thread::sleep(d),
        Fault::Fail => {
            eprintln!("netsy-fsync-fault: injected EIO into {}(fd {fd})", name.to_string_lossy());
            // SAFETY: errno is this thread's.
            unsafe { *libc::__errno_location() = libc::EIO };
            return -1;
        }
    }
    // SAFETY: calling libc's own function with the caller's argument.
    unsafe { next(name, slot)(fd) }
}

/// # Safety
/// As libc's `fsync`.
#[no_mangle]
pub unsafe extern "C" fn fsync(fd: c_int) -> c_int {
    static NEXT: OnceLock<usize> = OnceLock::new();
    intercept(c"fsync", &NEXT, fd)
}

/// # Safety
/// As libc's `fdatasync`.
#[no_mangle]
pub unsafe extern "C" fn fdatasync(fd: c_int) -> c_int {
    static NEXT: OnceLock<usize> = OnceLock::new();
    intercept(c"fdatasync", &NEXT, fd)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_file_text() {
        assert_eq!(parse("fail\n"), Fault::Fail);
        assert_eq!(parse("delay 250"), Fault::Delay(Duration::from_millis(250)));
        for text in ["", "pass", "delay", "delay soon", "fail now", "fai"] {
            assert_eq!(parse(text), Fault::Pass, "{text:?}");
        }
    }
}
