//! `materialize`: recreate a stored tree in a fresh directory, then move it into place.

use std::fs::{self, DirBuilder, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{fchown, lchown, DirBuilderExt, FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tracing::{debug, warn};

use super::{unique_suffix, LocalStore};
use crate::sys;
use crate::tree::{Entry, EntryKind, TreeRef, ROOT_PATH};
use crate::StoreError;

/// A file of at least this many chunks is written by several threads.
const PARALLEL_MIN_CHUNKS: usize = 64;
/// Most threads writing one file.
const MAX_WORKERS: usize = 4;

pub(super) fn materialize(
    store: &LocalStore,
    tree: &TreeRef,
    dest: &Path,
) -> Result<(), StoreError> {
    // Every path is checked before anything is created.
    tree.validate()?;
    check_dest(dest)?;
    let name = dest
        .file_name()
        .ok_or_else(|| StoreError::DestNotEmpty {
            path: dest.to_owned(),
        })?
        .to_string_lossy();
    let parent = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    };
    let tmp = parent.join(format!("{name}.tmp-{}", unique_suffix()));
    DirBuilder::new()
        .mode(0o700)
        .create(&tmp)
        .map_err(StoreError::io("create", &tmp))?;

    let result = Builder::new(store, &tmp, tree.chunk_size)
        .build(tree)
        .and_then(|()| fs::rename(&tmp, dest).map_err(StoreError::io("rename", &tmp)))
        .and_then(|()| sys::fsync_dir(&parent).map_err(StoreError::io("fsync", &parent)));
    if let Err(e) = &result {
        if let Err(rm) = remove_tree(&tmp) {
            warn!(error = %e, cleanup_error = %rm, tmp = %tmp.display(), "could not remove partial tree");
        }
    } else {
        debug!(entries = tree.entries.len(), "tree materialized");
    }
    result
}

/// `dest` must be absent or an empty directory (which the rename then replaces).
fn check_dest(dest: &Path) -> Result<(), StoreError> {
    match fs::symlink_metadata(dest) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(StoreError::io("stat", dest)(e)),
        Ok(meta) if meta.is_dir() => {
            let mut it = fs::read_dir(dest).map_err(StoreError::io("list", dest))?;
            match it.next() {
                None => Ok(()),
                Some(_) => Err(StoreError::DestNotEmpty {
                    path: dest.to_owned(),
                }),
            }
        }
        Ok(_) => Err(StoreError::DestNotEmpty {
            path: dest.to_owned(),
        }),
    }
}

/// Removes a partial tree, first making its directories writable (a restored directory
/// may be read-only).
fn remove_tree(path: &Path) -> io::Result<()> {
    match fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(_) => {
            let mut stack = vec![path.to_owned()];
            while let Some(dir) = stack.pop() {
                fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))?;
                for entry in fs::read_dir(&dir)? {
                    let entry = entry?;
                    if entry.file_type()?.is_dir() {
                        stack.push(entry.path());
                    }
                }
            }
            fs::remove_dir_all(path)
        }
    }
}

struct Builder<'a> {
    store: &'a LocalStore,
    root: &'a Path,
    buf: Vec<u8>,
    euid: u32,
    egid: u32,
    chunk_size: u64,
}

impl<'a> Builder<'a> {
    fn new(store: &'a LocalStore, root: &'a Path, chunk_size: u64) -> Self {
        let (euid, egid) = sys::effective_ids();
        Builder {
            store,
            root,
            buf: Vec::with_capacity(chunk_size as usize),
            euid,
            egid,
            chunk_size,
        }
    }

    /// Root can give any owner; others only fix owners that differ from their own.
    fn needs_chown(&self, e: &Entry) -> bool {
        self.euid == 0 || e.uid != self.euid || e.gid != self.egid
    }

    fn build(&mut self, tree: &TreeRef) -> Result<(), StoreError> {
        // Directories are created owner-writable and get their real owner, mode, xattr
        // and mtime last, once nothing more is created inside them.
        let mut dirs: Vec<(&Entry, PathBuf)> = Vec::new();
        for e in &tree.entries {
            // Validated: "." or normal components only, parents are directories created
            // above, so `path` is inside `root` and no component is a symlink.
            let path = if e.path == ROOT_PATH {
                self.root.to_owned()
            } else {
                self.root.join(&e.path)
            };
            match e.kind {
                EntryKind::Dir => {
                    if e.path != ROOT_PATH {
                        DirBuilder::new()
                            .mode(0o700)
                            .create(&path)
                            .map_err(StoreError::io("create", &path))?;
                    }
                    dirs.push((e, path));
                }
                EntryKind::File => self.file(e, &path)?,
                EntryKind::Symlink => {
                    let target = e.target.as_deref().unwrap_or_default();
                    std::os::unix::fs::symlink(target, &path)
                        .map_err(StoreError::io("symlink", &path))?;
                    self.finish_nofollow(e, &path)?;
                }
                EntryKind::Whiteout => {
                    sys::make_whiteout(&path, e.mode)
                        .map_err(StoreError::privileged("mknod whiteout", &path))?;
                    self.finish_nofollow(e, &path)?;
                }
            }
        }
        for (e, path) in dirs.iter().rev() {
            if self.needs_chown(e) {
                lchown(path, Some(e.uid), Some(e.gid))
                    .map_err(StoreError::privileged("chown", path))?;
            }
            if e.opaque {
                sys::set_opaque(path).map_err(StoreError::privileged("set opaque xattr", path))?;
            }
            fs::set_permissions(path, fs::Permissions::from_mode(e.mode))
                .map_err(StoreError::io("chmod", path))?;
            sys::set_mtime_nofollow(path, e.mtime_ns).map_err(StoreError::io("utimens", path))?;
        }
        Ok(())
    }

    fn file(&mut self, e: &Entry, path: &Path) -> Result<(), StoreError> {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(path)
            .map_err(StoreError::io("create", path))?;
        if e.chunks.len() >= PARALLEL_MIN_CHUNKS {
            self.file_parallel(e, &file, path)?;
        } else {
            for (hash, len) in e.blobs(self.chunk_size) {
                self.store.read_blob(hash, len, &mut self.buf)?;
                file.write_all(&self.buf)
                    .map_err(StoreError::io("write", path))?;
            }
        }
        // chown clears set-id bits, so it goes before chmod.
        if self.needs_chown(e) {
            fchown(&file, Some(e.uid), Some(e.gid))
                .map_err(StoreError::privileged("chown", path))?;
        }
        file.set_permissions(fs::Permissions::from_mode(e.mode))
            .map_err(StoreError::io("chmod", path))?;
        let mtime = system_time(e.mtime_ns);
        file.set_times(fs::FileTimes::new().set_modified(mtime))
            .map_err(StoreError::io("utimens", path))?;
        Ok(())
    }

    /// Writes a file of many chunks (a memory image) with one thread per core, each
    /// reading, verifying and writing (at its offset) a contiguous run of chunks.
    fn file_parallel(&self, e: &Entry, file: &fs::File, path: &Path) -> Result<(), StoreError> {
        let blobs: Vec<(&str, u64)> = e.blobs(self.chunk_size).collect();
        let workers = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .clamp(1, MAX_WORKERS);
        let per = blobs.len().div_ceil(workers);
        let offsets: Vec<u64> = blobs
            .iter()
            .scan(0u64, |at, (_, len)| {
                let o = *at;
                *at += len;
                Some(o)
            })
            .collect();
        let chunk_size = self.chunk_size;
        let store = self.store;
        std::thread::scope(|scope| {
            let handles: Vec<_> = blobs
                .chunks(per)
                .zip(offsets.chunks(per))
                .map(|(run, offs)| {
                    scope.spawn(move || -> Result<(), StoreError> {
                        let mut buf = Vec::with_capacity(chunk_size as usize);
                        for ((hash, len), offset) in run.iter().zip(offs) {
                            store.read_blob(hash, *len, &mut buf)?;
                            file.write_all_at(&buf, *offset)
                                .map_err(StoreError::io("write", path))?;
                        }
                        Ok(())
                    })
                })
                .collect();
            handles
                .into_iter()
                .try_for_each(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
        })
    }

    /// Owner and mtime of a symlink or whiteout, without following it.
    fn finish_nofollow(&self, e: &Entry, path: &Path) -> Result<(), StoreError> {
        if self.needs_chown(e) {
            lchown(path, Some(e.uid), Some(e.gid))
                .map_err(StoreError::privileged("chown", path))?;
        }
        if e.kind == EntryKind::Whiteout {
            // mknod applied the umask; a whiteout's mode is part of the layer.
            fs::set_permissions(path, fs::Permissions::from_mode(e.mode))
                .map_err(StoreError::io("chmod", path))?;
        }
        sys::set_mtime_nofollow(path, e.mtime_ns).map_err(StoreError::io("utimens", path))
    }
}

fn system_time(ns: i64) -> SystemTime {
    let abs = Duration::from_nanos(ns.unsigned_abs());
    if ns >= 0 {
        UNIX_EPOCH + abs
    } else {
        UNIX_EPOCH - abs
    }
}
