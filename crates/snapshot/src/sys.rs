//! Linux system calls the store needs beyond `std`: xattrs, whiteouts, timestamps of
//! non-regular files, `syncfs`. All platform code of the crate lives here.

use std::ffi::{CStr, CString};
use std::fs::{File, Metadata};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use nix::sys::stat::{mknod, utimensat, Mode, SFlag, UtimensatFlags};
use nix::sys::time::TimeSpec;

const OPAQUE_XATTR: &CStr = c"trusted.overlay.opaque";

fn cpath(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))
}

/// Whether `meta` describes an overlayfs whiteout (character device 0:0).
pub(crate) fn is_whiteout(meta: &Metadata) -> bool {
    meta.file_type().is_char_device() && meta.rdev() == 0
}

/// Whether the directory at `path` has `trusted.overlay.opaque=y`. Absent, unreadable
/// (non-root cannot see `trusted.*`) or unsupported xattrs read as `false`.
pub(crate) fn read_opaque(path: &Path) -> io::Result<bool> {
    let c = cpath(path)?;
    let mut buf = [0u8; 8];
    // SAFETY: `c` and `OPAQUE_XATTR` are valid NUL-terminated strings that outlive the
    // call, and `buf` is a writable buffer of exactly `buf.len()` bytes.
    let n = unsafe {
        libc::lgetxattr(
            c.as_ptr(),
            OPAQUE_XATTR.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if n < 0 {
        let err = io::Error::last_os_error();
        return match err.raw_os_error() {
            Some(libc::ENODATA | libc::ENOTSUP | libc::ERANGE) => Ok(false),
            _ => Err(err),
        };
    }
    Ok(&buf[..n as usize] == b"y")
}

/// Marks the directory at `path` opaque (needs `CAP_SYS_ADMIN`).
pub(crate) fn set_opaque(path: &Path) -> io::Result<()> {
    let c = cpath(path)?;
    let value = b"y";
    // SAFETY: `c` and `OPAQUE_XATTR` are valid NUL-terminated strings that outlive the
    // call, and `value` is a readable buffer of `value.len()` bytes.
    let rc = unsafe {
        libc::lsetxattr(
            c.as_ptr(),
            OPAQUE_XATTR.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Creates a whiteout (char device 0:0) at `path` (needs `CAP_MKNOD`).
pub(crate) fn make_whiteout(path: &Path, mode: u32) -> io::Result<()> {
    let perm = Mode::from_bits_truncate(mode as libc::mode_t);
    mknod(path, SFlag::S_IFCHR, perm, 0).map_err(io::Error::from)
}

fn timespec(ns: i64) -> TimeSpec {
    TimeSpec::new(ns.div_euclid(1_000_000_000), ns.rem_euclid(1_000_000_000))
}

/// Sets the mtime of `path` itself (not a symlink's target), leaving atime alone.
pub(crate) fn set_mtime_nofollow(path: &Path, mtime_ns: i64) -> io::Result<()> {
    utimensat(
        None,
        path,
        &TimeSpec::UTIME_OMIT,
        &timespec(mtime_ns),
        UtimensatFlags::NoFollowSymlink,
    )
    .map_err(io::Error::from)
}

/// Sets the mtime of `path` to now (keeps a reused blob out of gc's grace window).
pub(crate) fn touch(path: &Path) -> io::Result<()> {
    utimensat(
        None,
        path,
        &TimeSpec::UTIME_OMIT,
        &TimeSpec::UTIME_NOW,
        UtimensatFlags::NoFollowSymlink,
    )
    .map_err(io::Error::from)
}

/// Flushes the whole file system holding `dir` to stable storage.
pub(crate) fn syncfs(dir: &Path) -> io::Result<()> {
    let f = File::open(dir)?;
    nix::unistd::syncfs(f.as_raw_fd()).map_err(io::Error::from)
}

/// Fsyncs a directory, making renames and unlinks in it durable.
pub(crate) fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Effective uid and gid of this process.
pub(crate) fn effective_ids() -> (u32, u32) {
    (
        nix::unistd::geteuid().as_raw(),
        nix::unistd::getegid().as_raw(),
    )
}

/// Modification time of `meta` in nanoseconds since the epoch.
pub(crate) fn mtime_ns(meta: &Metadata) -> i64 {
    meta.mtime()
        .saturating_mul(1_000_000_000)
        .saturating_add(meta.mtime_nsec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timespec_handles_negative_times() {
        let t = timespec(-1);
        assert_eq!((t.tv_sec(), t.tv_nsec()), (-1, 999_999_999));
        let t = timespec(1_500_000_000);
        assert_eq!((t.tv_sec(), t.tv_nsec()), (1, 500_000_000));
    }
}
