//! `LD_PRELOAD` library of the service's simulated power loss (`tests/it/service.rs`,
//! `acknowledged_verdicts_survive_kill_9_and_a_simulated_power_loss`); not a module of the test
//! binary: the test compiles it with `rustc` into a `cdylib`.
//!
//! It wraps libc's `fsync` and `fdatasync`. After a successful call on a regular file under the
//! folder `$THREATRANK_SYNC_SNAPSHOTS`, it copies the file as it is at that moment to
//! `<file>.synced` (a temporary copy renamed over the last one): what a power loss afterwards
//! is guaranteed to leave of the file, as far as the program's own syncs go. Bytes written
//! after the last sync are in the page cache only, and a copy made by an ordinary read would
//! wrongly include them; `<file>.synced` does not.

use std::ffi::{c_char, c_int, c_void, CStr};

extern "C" {
    fn dlsym(handle: *mut c_void, symbol: *const c_char) -> *mut c_void;
}

/// glibc's `RTLD_NEXT`: the definition after this library's, i.e. libc's.
const RTLD_NEXT: *mut c_void = -1isize as *mut c_void;

type SyncFn = unsafe extern "C" fn(c_int) -> c_int;

/// libc's definition of `name`; aborts without one (a panic must not unwind into C).
unsafe fn next(name: &CStr) -> SyncFn {
    let f = dlsym(RTLD_NEXT, name.as_ptr());
    if f.is_null() {
        std::process::abort();
    }
    std::mem::transmute::<*mut c_void, SyncFn>(f)
}

/// Copies the file behind `fd` to `<file>.synced` when it lies under the snapshot folder.
fn snapshot(fd: c_int) {
    let Some(root) = std::env::var_os("THREATRANK_SYNC_SNAPSHOTS") else {
        return;
    };
    let Ok(path) = std::fs::read_link(format!("/proc/self/fd/{fd}")) else {
        return;
    };
    if !path.starts_with(&root) || !path.is_file() {
        return;
    }
    let mut tmp = path.clone().into_os_string();
    tmp.push(".synced.tmp");
    let mut done = path.clone().into_os_string();
    done.push(".synced");
    if std::fs::copy(&path, &tmp).is_ok() {
        let _ = std::fs::rename(&tmp, &done);
    }
}

/// `fsync(2)`, then the snapshot.
#[no_mangle]
pub unsafe extern "C" fn fsync(fd: c_int) -> c_int {
    let r = next(c"fsync")(fd);
    if r == 0 {
        snapshot(fd);
    }
    r
}

/// `fdatasync(2)`, then the snapshot.
#[no_mangle]
pub unsafe extern "C" fn fdatasync(fd: c_int) -> c_int {
    let r = next(c"fdatasync")(fd);
    if r == 0 {
        snapshot(fd);
    }
    r
}
