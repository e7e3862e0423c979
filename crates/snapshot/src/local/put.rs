//! `put_tree`: walk a directory, store its content as blobs, describe it.
//!
//! Two phases: a single-threaded walk lists the tree (directories, symlinks, whiteouts
//! and the paths of regular files), then a few workers read, hash and store the files,
//! each read exactly once, chunk by chunk.

use std::fs::{self, FileType, Metadata, OpenOptions};
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

use tracing::debug;

use super::LocalStore;
use crate::hash::blake3_hex;
use crate::sys;
use crate::tree::{
    Entry, EntryKind, TreeKind, TreeRef, CDC_MAX, CDC_MIN, CHUNK_SIZE, MEMORY_CHUNK_SIZE, ROOT_PATH,
};
use crate::{PutStats, StoreError};

/// Most worker threads one `put_tree` uses.
const MAX_WORKERS: usize = 4;

/// A regular file still to be stored: its entry's index, relative and absolute path.
struct FileJob {
    index: usize,
    rel: String,
    abs: PathBuf,
}

pub(super) fn put_tree(
    store: &LocalStore,
    kind: TreeKind,
    src: &Path,
) -> Result<(TreeRef, PutStats), StoreError> {
    let meta = fs::symlink_metadata(src).map_err(StoreError::io("stat", src))?;
    if !meta.is_dir() {
        return Err(StoreError::NotADirectory {
            path: src.to_owned(),
        });
    }
    let (mut entries, jobs) = walk(kind, src, &meta)?;
    let cdc = kind.content_defined();
    let stats = store_files(store, &mut entries, jobs, cdc)?;
    debug!(
        entries = entries.len(),
        new_blobs = stats.new_blobs,
        new_bytes = stats.new_bytes,
        "tree stored"
    );
    let tree = TreeRef {
        kind,
        chunk_size: CHUNK_SIZE,
        content_defined: cdc,
        entries,
    };
    tree.validate()?;
    Ok((tree, stats))
}

/// Lists the tree depth first. A directory's entry is pushed when its parent is listed,
/// before any of its children, which is the order `TreeRef::validate` requires. File
/// entries are placeholders filled in by [`store_files`].
fn walk(
    kind: TreeKind,
    src: &Path,
    root_meta: &Metadata,
) -> Result<(Vec<Entry>, Vec<FileJob>), StoreError> {
    let mut entries = vec![dir_entry(kind, ROOT_PATH.to_owned(), src, root_meta)?];
    let mut jobs = Vec::new();
    let mut stack: Vec<(PathBuf, String)> = vec![(src.to_owned(), String::new())];
    while let Some((dir, rel)) = stack.pop() {
        let mut children = Vec::new();
        for entry in fs::read_dir(&dir).map_err(StoreError::io("list", &dir))? {
            let entry = entry.map_err(StoreError::io("list", &dir))?;
            let ft = entry
                .file_type()
                .map_err(StoreError::io("stat", entry.path()))?;
            children.push((entry.file_name(), ft));
        }
        children.sort_by(|a, b| a.0.cmp(&b.0));
        let mut subdirs = Vec::new();
        for (name, ft) in children {
            let abs = dir.join(&name);
            let name = name
                .to_str()
                .ok_or_else(|| StoreError::NonUtf8Path { path: abs.clone() })?;
            let child_rel = if rel.is_empty() {
                name.to_owned()
            } else {
                format!("{rel}/{name}")
            };
            // The listing's file type saves a stat per regular file; the worker takes the
            // file's metadata from its open descriptor.
            if ft.is_file() {
                jobs.push(FileJob {
                    index: entries.len(),
                    rel: child_rel,
                    abs,
                });
                // Replaced by the worker's result.
                entries.push(Entry {
                    path: String::new(),
                    kind: EntryKind::File,
                    mode: 0,
                    uid: 0,
                    gid: 0,
                    mtime_ns: 0,
                    size: 0,
                    chunks: Vec::new(),
                    target: None,
                    opaque: false,
                    lengths: Vec::new(),
                });
                continue;
            }
            let entry = other_entry(kind, child_rel.clone(), &abs, ft)?;
            if entry.kind == EntryKind::Dir {
                subdirs.push((abs, child_rel));
            }
            entries.push(entry);
        }
        stack.extend(subdirs.into_iter().rev());
    }
    Ok((entries, jobs))
}

fn base_entry(path: String, kind: EntryKind, meta: &Metadata) -> Entry {
    Entry {
        path,
        kind,
        mode: meta.mode() & 0o7777,
        uid: meta.uid(),
        gid: meta.gid(),
        mtime_ns: sys::mtime_ns(meta),
        size: 0,
        chunks: Vec::new(),
        target: None,
        opaque: false,
        lengths: Vec::new(),
    }
}

fn dir_entry(
    kind: TreeKind,
    rel: String,
    abs: &Path,
    meta: &Metadata,
) -> Result<Entry, StoreError> {
    let opaque = kind == TreeKind::Layer
        && sys::read_opaque(abs).map_err(StoreError::io("getxattr", abs))?;
    Ok(Entry {
        opaque,
        ..base_entry(rel, EntryKind::Dir, meta)
    })
}

/// Anything but a regular file (as listed).
fn other_entry(
    kind: TreeKind,
    rel: String,
    abs: &Path,
    listed: FileType,
) -> Result<Entry, StoreError> {
    let meta = fs::symlink_metadata(abs).map_err(StoreError::io("stat", abs))?;
    let ft = meta.file_type();
    if ft != listed {
        return Err(StoreError::Io {
            op: "walk",
            path: abs.to_owned(),
            source: std::io::Error::other("file changed type during the walk"),
        });
    }
    if ft.is_dir() {
        dir_entry(kind, rel, abs, &meta)
    } else if ft.is_symlink() {
        let target = fs::read_link(abs).map_err(StoreError::io("readlink", abs))?;
        let target =
            target
                .into_os_string()
                .into_string()
                .map_err(|_| StoreError::NonUtf8Path {
                    path: abs.to_owned(),
                })?;
        Ok(Entry {
            target: Some(target),
            ..base_entry(rel, EntryKind::Symlink, &meta)
        })
    } else if kind == TreeKind::Layer && sys::is_whiteout(&meta) {
        Ok(base_entry(rel, EntryKind::Whiteout, &meta))
    } else {
        Err(StoreError::UnsupportedFileType {
            path: abs.to_owned(),
            what: describe(ft),
        })
    }
}

/// Stores every file of `jobs` into its entry, with up to [`MAX_WORKERS`] threads.
/// Returns what was newly written; stops at the first error.
fn store_files(
    store: &LocalStore,
    entries: &mut [Entry],
    jobs: Vec<FileJob>,
    cdc: bool,
) -> Result<PutStats, StoreError> {
    let workers = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, MAX_WORKERS)
        .min(jobs.len());
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let new_blobs = AtomicU64::new(0);
    let new_bytes = AtomicU64::new(0);
    let first_error: Mutex<Option<StoreError>> = Mutex::new(None);
    let done: Mutex<Vec<(usize, Entry)>> = Mutex::new(Vec::with_capacity(jobs.len()));

    let work = || {
        let mut buf = Vec::new();
        let mut mine = Vec::new();
        while !failed.load(Ordering::Relaxed) {
            let Some(job) = jobs.get(next.fetch_add(1, Ordering::Relaxed)) else {
                break;
            };
            match store_file(
                store,
                job.rel.clone(),
                &job.abs,
                &mut buf,
                (&new_blobs, &new_bytes),
                cdc,
            ) {
                Ok(entry) => mine.push((job.index, entry)),
                Err(e) => {
                    failed.store(true, Ordering::Relaxed);
                    first_error
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .get_or_insert(e);
                }
            }
        }
        done.lock().unwrap_or_else(|p| p.into_inner()).extend(mine);
    };
    if workers <= 1 {
        work();
    } else {
        std::thread::scope(|s| {
            for _ in 0..workers {
                s.spawn(work);
            }
        });
    }
    if let Some(e) = first_error.into_inner().unwrap_or_else(|p| p.into_inner()) {
        return Err(e);
    }
    for (index, entry) in done.into_inner().unwrap_or_else(|p| p.into_inner()) {
        entries[index] = entry;
    }
    Ok(PutStats {
        new_blobs: new_blobs.into_inner(),
        new_bytes: new_bytes.into_inner(),
    })
}

/// Reads the file once, chunk by chunk, hashing and storing each chunk as it goes.
/// Metadata comes from the open descriptor, so it describes the content read.
fn store_file(
    store: &LocalStore,
    rel: String,
    abs: &Path,
    buf: &mut Vec<u8>,
    (new_blobs, new_bytes): (&AtomicU64, &AtomicU64),
    cdc: bool,
) -> Result<Entry, StoreError> {
    let mut file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(abs)
        .map_err(StoreError::io("open", abs))?;
    let meta = file.metadata().map_err(StoreError::io("stat", abs))?;
    if !meta.is_file() {
        return Err(StoreError::UnsupportedFileType {
            path: abs.to_owned(),
            what: describe(meta.file_type()),
        });
    }
    let mut entry = base_entry(rel, EntryKind::File, &meta);
    if cdc {
        let chunks = fastcdc::v2020::StreamCDC::new(
            std::io::BufReader::with_capacity(1 << 20, file),
            CDC_MIN as u32,
            MEMORY_CHUNK_SIZE as u32,
            CDC_MAX as u32,
        );
        for chunk in chunks {
            let chunk = chunk.map_err(|e| StoreError::io("read", abs)(e.into()))?;
            let hash = blake3_hex(&chunk.data);
            if store.write_blob(&hash, &chunk.data)? {
                new_blobs.fetch_add(1, Ordering::Relaxed);
                new_bytes.fetch_add(chunk.length as u64, Ordering::Relaxed);
            }
            entry.size += chunk.length as u64;
            entry.chunks.push(hash);
            entry.lengths.push(chunk.length as u64);
        }
        return Ok(entry);
    }
    loop {
        buf.clear();
        (&mut file)
            .take(CHUNK_SIZE)
            .read_to_end(buf)
            .map_err(StoreError::io("read", abs))?;
        if buf.is_empty() {
            break;
        }
        let hash = blake3_hex(buf);
        if store.write_blob(&hash, buf)? {
            new_blobs.fetch_add(1, Ordering::Relaxed);
            new_bytes.fetch_add(buf.len() as u64, Ordering::Relaxed);
        }
        entry.size += buf.len() as u64;
        entry.chunks.push(hash);
        if (buf.len() as u64) < CHUNK_SIZE {
            break;
        }
    }
    Ok(entry)
}

fn describe(ft: FileType) -> &'static str {
    if ft.is_char_device() {
        "character device"
    } else if ft.is_block_device() {
        "block device"
    } else if ft.is_fifo() {
        "fifo"
    } else if ft.is_socket() {
        "socket"
    } else if ft.is_symlink() {
        "symlink"
    } else {
        "unknown"
    }
}
