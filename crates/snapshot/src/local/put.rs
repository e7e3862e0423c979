//! `put_tree`: walk a directory, store its content as blobs, describe it.

use std::fs::{self, File, FileType, Metadata, OpenOptions};
use std::io::Read;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use tracing::debug;

use super::LocalStore;
use crate::hash::sha256_hex;
use crate::sys;
use crate::tree::{Entry, EntryKind, TreeKind, TreeRef, CHUNK_SIZE, ROOT_PATH};
use crate::StoreError;

/// A walk in progress: the store, the tree kind and one reused chunk buffer.
struct Walker<'a> {
    store: &'a LocalStore,
    kind: TreeKind,
    buf: Vec<u8>,
    entries: Vec<Entry>,
    new_blobs: u64,
}

pub(super) fn put_tree(
    store: &LocalStore,
    kind: TreeKind,
    src: &Path,
) -> Result<TreeRef, StoreError> {
    let meta = fs::symlink_metadata(src).map_err(StoreError::io("stat", src))?;
    if !meta.is_dir() {
        return Err(StoreError::NotADirectory {
            path: src.to_owned(),
        });
    }
    let mut w = Walker {
        store,
        kind,
        buf: Vec::with_capacity(CHUNK_SIZE as usize),
        entries: Vec::new(),
        new_blobs: 0,
    };
    let root = w.dir_entry(ROOT_PATH.to_owned(), src, &meta)?;
    w.entries.push(root);

    // Depth first; a directory's entry is pushed when its parent is listed, before any
    // of its children, which is the order `TreeRef::validate` requires.
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
            if w.add(&abs, &child_rel, ft)? {
                subdirs.push((abs, child_rel));
            }
        }
        stack.extend(subdirs.into_iter().rev());
    }
    debug!(
        entries = w.entries.len(),
        new_blobs = w.new_blobs,
        "tree stored"
    );
    let tree = TreeRef {
        kind,
        entries: w.entries,
    };
    tree.validate()?;
    Ok(tree)
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
    }
}

impl Walker<'_> {
    /// Records the object at `abs`; returns whether it is a directory to descend into.
    /// `ft` comes from the directory listing (no extra stat); a file's metadata is read
    /// from its open descriptor.
    fn add(&mut self, abs: &Path, rel: &str, ft: FileType) -> Result<bool, StoreError> {
        if ft.is_file() {
            let entry = self.file_entry(rel.to_owned(), abs)?;
            self.entries.push(entry);
            return Ok(false);
        }
        let meta = fs::symlink_metadata(abs).map_err(StoreError::io("stat", abs))?;
        let ft = meta.file_type();
        let entry = if ft.is_file() {
            // Replaced by a regular file since the listing.
            self.file_entry(rel.to_owned(), abs)?
        } else if ft.is_dir() {
            self.dir_entry(rel.to_owned(), abs, &meta)?
        } else if ft.is_symlink() {
            let target = fs::read_link(abs).map_err(StoreError::io("readlink", abs))?;
            let target =
                target
                    .into_os_string()
                    .into_string()
                    .map_err(|_| StoreError::NonUtf8Path {
                        path: abs.to_owned(),
                    })?;
            Entry {
                target: Some(target),
                ..base_entry(rel.to_owned(), EntryKind::Symlink, &meta)
            }
        } else if self.kind == TreeKind::Layer && sys::is_whiteout(&meta) {
            base_entry(rel.to_owned(), EntryKind::Whiteout, &meta)
        } else {
            return Err(StoreError::UnsupportedFileType {
                path: abs.to_owned(),
                what: describe(&meta),
            });
        };
        let is_dir = entry.kind == EntryKind::Dir;
        self.entries.push(entry);
        Ok(is_dir)
    }

    fn dir_entry(&self, rel: String, abs: &Path, meta: &Metadata) -> Result<Entry, StoreError> {
        let opaque = self.kind == TreeKind::Layer
            && sys::read_opaque(abs).map_err(StoreError::io("getxattr", abs))?;
        Ok(Entry {
            opaque,
            ..base_entry(rel, EntryKind::Dir, meta)
        })
    }

    /// Reads the file once, chunk by chunk, hashing and storing each chunk as it goes.
    /// Metadata comes from the open descriptor, so it describes the content read.
    fn file_entry(&mut self, rel: String, abs: &Path) -> Result<Entry, StoreError> {
        let file = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(abs)
            .map_err(StoreError::io("open", abs))?;
        let meta = file.metadata().map_err(StoreError::io("stat", abs))?;
        let mut entry = base_entry(rel, EntryKind::File, &meta);
        let mut reader: File = file;
        loop {
            self.buf.clear();
            (&mut reader)
                .take(CHUNK_SIZE)
                .read_to_end(&mut self.buf)
                .map_err(StoreError::io("read", abs))?;
            if self.buf.is_empty() {
                break;
            }
            let hash = sha256_hex(&self.buf);
            if self.store.write_blob(&hash, &self.buf)? {
                self.new_blobs += 1;
            }
            entry.size += self.buf.len() as u64;
            entry.chunks.push(hash);
            if (self.buf.len() as u64) < CHUNK_SIZE {
                break;
            }
        }
        Ok(entry)
    }
}

fn describe(meta: &Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let ft = meta.file_type();
    if ft.is_char_device() {
        "character device"
    } else if ft.is_block_device() {
        "block device"
    } else if ft.is_fifo() {
        "fifo"
    } else if ft.is_socket() {
        "socket"
    } else {
        "unknown"
    }
}
