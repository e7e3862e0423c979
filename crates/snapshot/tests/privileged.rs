//! Overlay-specific objects. Whiteouts (char 0:0) need no privilege since Linux 5.8
//! (older kernels want CAP_MKNOD: the test then skips itself, saying so). The opaque
//! xattr (`trusted.*`, CAP_SYS_ADMIN) and foreign owners (CAP_CHOWN) need root: one test
//! runs only as root, its counterpart only as non-root, each skipping itself otherwise.

mod common;

use std::fs;
use std::io;
use std::path::Path;

use common::*;
use sandboxd_snapshot::{EntryKind, SnapshotStore, StoreError, TreeKind, TreeRef};

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Creates a whiteout, or returns false if this kernel/user may not.
fn mknod_whiteout(path: &Path) -> bool {
    use nix::sys::stat::{mknod, Mode, SFlag};
    match mknod(path, SFlag::S_IFCHR, Mode::empty(), 0) {
        Ok(()) => true,
        Err(e) if io::Error::from(e).raw_os_error() == Some(libc::EPERM) => false,
        Err(e) => panic!("mknod: {e}"),
    }
}

#[test]
fn whiteouts_round_trip() {
    let tmp = TempDir::new("whiteout");
    let store = store(&tmp);
    let src = tmp.path().join("upper");
    write(&src.join("etc/kept"), b"k");
    if !mknod_whiteout(&src.join("etc/deleted")) {
        eprintln!("SKIPPED whiteouts_round_trip: mknod 0:0 needs CAP_MKNOD on this kernel");
        return;
    }
    let layer = store.put_tree(TreeKind::Layer, &src).unwrap();
    let w = layer.entries.iter().find(|e| e.path == "etc/deleted");
    assert_eq!(w.unwrap().kind, EntryKind::Whiteout);
    let dest = tmp.path().join("restored");
    store.materialize(&layer, &dest).unwrap();
    assert_eq!(describe_tree(&dest), describe_tree(&src));

    // A memory tree has no whiteouts, neither from disk nor in a description.
    let err = store.put_tree(TreeKind::Memory, &src).unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::UnsupportedFileType {
                what: "character device",
                ..
            }
        ),
        "{err:?}"
    );
    let bad = TreeRef {
        kind: TreeKind::Memory,
        chunk_size: layer.chunk_size,
        content_defined: false,
        entries: layer.entries.clone(),
    };
    let err = store.materialize(&bad, &tmp.path().join("x")).unwrap_err();
    assert!(matches!(err, StoreError::InvalidTree(_)), "{err:?}");
}

#[test]
fn opaque_dirs_and_owners_round_trip_as_root() {
    if !is_root() {
        eprintln!("SKIPPED opaque_dirs_and_owners_round_trip_as_root: needs root");
        return;
    }
    let tmp = TempDir::new("opaque");
    let store = store(&tmp);
    let src = tmp.path().join("upper");
    write(&src.join("etc/kept"), b"k");
    fs::create_dir_all(src.join("opaque-dir")).unwrap();
    write(&src.join("opaque-dir/new"), b"n");
    let opaque_ok = set_xattr(&src.join("opaque-dir"));
    if !opaque_ok {
        eprintln!("note: this file system has no trusted xattrs; opaque not checked");
    }
    let (uid, gid) = (Some(1234.into()), Some(5678.into()));
    nix::unistd::chown(&src.join("etc/kept"), uid, gid).unwrap();
    nix::unistd::chown(&src.join("etc"), uid, gid).unwrap();
    std::os::unix::fs::symlink("kept", src.join("etc/link")).unwrap();
    std::os::unix::fs::lchown(src.join("etc/link"), Some(1234), Some(5678)).unwrap();
    chmod(&src.join("etc/kept"), 0o4755);

    let layer = store.put_tree(TreeKind::Layer, &src).unwrap();
    let d = layer.entries.iter().find(|e| e.path == "opaque-dir");
    assert_eq!(d.unwrap().opaque, opaque_ok);

    let dest = tmp.path().join("restored");
    store.materialize(&layer, &dest).unwrap();
    assert_eq!(describe_tree(&dest), describe_tree(&src));
    if opaque_ok {
        assert!(get_xattr(&dest.join("opaque-dir")));
    }
}

/// Without root the opaque xattr cannot be written: materialize says so, leaving no
/// destination.
#[test]
fn opaque_without_root_is_a_clear_error() {
    if is_root() {
        eprintln!("SKIPPED opaque_without_root_is_a_clear_error: runs only as non-root");
        return;
    }
    let tmp = TempDir::new("opaque-nonroot");
    let store = store(&tmp);
    let src = tmp.path().join("upper");
    write(&src.join("d/f"), b"k");
    let mut layer = store.put_tree(TreeKind::Layer, &src).unwrap();
    layer
        .entries
        .iter_mut()
        .find(|e| e.path == "d")
        .unwrap()
        .opaque = true;
    let dest = tmp.path().join("restored");
    let err = store.materialize(&layer, &dest).unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::NeedsPrivilege {
                op: "set opaque xattr",
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("run as root"), "{err}");
    assert!(!dest.exists());
    assert!(siblings_with_prefix(tmp.path(), "restored.tmp-").is_empty());
}

const OPAQUE: &std::ffi::CStr = c"trusted.overlay.opaque";

fn cpath(p: &Path) -> std::ffi::CString {
    std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap()
}

/// Sets the opaque xattr; false if the file system does not support trusted xattrs.
fn set_xattr(p: &Path) -> bool {
    let c = cpath(p);
    // SAFETY: both strings are NUL-terminated and live across the call; the value
    // buffer is 1 readable byte.
    let rc = unsafe { libc::lsetxattr(c.as_ptr(), OPAQUE.as_ptr(), b"y".as_ptr().cast(), 1, 0) };
    rc == 0
}

fn get_xattr(p: &Path) -> bool {
    let c = cpath(p);
    let mut buf = [0u8; 4];
    // SAFETY: both strings are NUL-terminated and live across the call; `buf` is
    // writable for its full length.
    let n = unsafe {
        libc::lgetxattr(
            c.as_ptr(),
            OPAQUE.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    n == 1 && buf[0] == b'y'
}
