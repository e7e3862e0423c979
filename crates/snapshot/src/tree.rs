//! Tree descriptions: what `put_tree` returns and `materialize` recreates.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

use crate::hash::is_valid_hash;

/// Files of a layer tree are cut into chunks of this many bytes; each chunk is one blob.
/// It is also the chunk size of a tree that does not record one, and the largest allowed.
pub const CHUNK_SIZE: u64 = 4 * 1024 * 1024;

/// Memory trees are cut by content (FastCDC), with chunks of this average size. Between two
/// checkpoints of one sandbox, `pages.img` changes in scattered pages *and* shifts by a few
/// pages where allocations changed: fixed offsets would share almost no chunk after the
/// first shift (measured: 6 of 855), content-defined cuts find the same chunks again.
pub const MEMORY_CHUNK_SIZE: u64 = 64 * 1024;
/// Smallest content-defined chunk (except a file's last).
pub const CDC_MIN: u64 = 16 * 1024;
/// Largest content-defined chunk.
pub const CDC_MAX: u64 = 256 * 1024;

/// Smallest chunk size a tree may record.
pub const MIN_CHUNK_SIZE: u64 = 4 * 1024;

/// Longest entry path accepted, in bytes.
const MAX_PATH_BYTES: usize = 4096;

/// Path of the entry describing the tree's root directory.
pub(crate) const ROOT_PATH: &str = ".";

/// Which part of a snapshot a tree is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TreeKind {
    /// The writable overlayfs upper directory.
    Layer,
    /// The gVisor checkpoint image directory.
    Memory,
}

/// What a tree entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EntryKind {
    File,
    Dir,
    Symlink,
    /// An overlayfs whiteout: a character device 0:0.
    Whiteout,
}

/// One file system object of a tree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    /// `"."` for the root, else relative and `/`-separated.
    pub path: String,
    pub kind: EntryKind,
    /// Permission bits, `mode & 0o7777`.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Modification time, nanoseconds since the Unix epoch.
    pub mtime_ns: i64,
    /// Length of a file; 0 for other kinds.
    pub size: u64,
    /// Hashes of a file's chunks (of the tree's chunk size), in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub chunks: Vec<String>,
    /// Target of a symlink.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// A directory marked `trusted.overlay.opaque=y`.
    #[serde(default, skip_serializing_if = "is_false")]
    pub opaque: bool,
    /// Length of each chunk, in a tree cut by content (empty otherwise).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lengths: Vec<u64>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl Entry {
    /// `(hash, length)` of each chunk of this entry: its recorded lengths, or else cuts
    /// every `chunk_size` bytes.
    pub fn blobs(&self, chunk_size: u64) -> impl Iterator<Item = (&str, u64)> + '_ {
        let recorded = !self.lengths.is_empty();
        self.chunks.iter().enumerate().map(move |(i, h)| {
            let len = if recorded {
                self.lengths[i]
            } else {
                chunk_len(self.size, i, chunk_size)
            };
            (h.as_str(), len)
        })
    }
}

/// Length of chunk `index` of a file of `size` bytes.
pub(crate) fn chunk_len(size: u64, index: usize, chunk_size: u64) -> u64 {
    let start = index as u64 * chunk_size;
    size.saturating_sub(start).min(chunk_size)
}

/// Number of chunks of a file of `size` bytes.
pub(crate) fn chunk_count(size: u64, chunk_size: u64) -> u64 {
    size.div_ceil(chunk_size)
}

fn default_chunk_size() -> u64 {
    CHUNK_SIZE
}

fn is_default_chunk_size(n: &u64) -> bool {
    *n == CHUNK_SIZE
}

impl TreeKind {
    /// Whether `put_tree` cuts files of a tree of this kind by content (else every
    /// [`CHUNK_SIZE`] bytes).
    pub fn content_defined(self) -> bool {
        self == TreeKind::Memory
    }
}

/// A stored directory tree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TreeRef {
    pub kind: TreeKind,
    /// Bytes per chunk: a power of two from [`MIN_CHUNK_SIZE`] to [`CHUNK_SIZE`]; omitted
    /// when it is [`CHUNK_SIZE`].
    #[serde(
        default = "default_chunk_size",
        skip_serializing_if = "is_default_chunk_size"
    )]
    pub chunk_size: u64,
    /// Files are cut by content; every file entry records its chunks' `lengths`.
    #[serde(default, skip_serializing_if = "is_false")]
    pub content_defined: bool,
    /// Every parent precedes its children.
    pub entries: Vec<Entry>,
}

/// Why a tree description is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum TreeError {
    #[error("entry path {path:?} is invalid: {reason}")]
    InvalidPath { path: String, reason: &'static str },
    #[error("entry {path:?} has an invalid chunk hash")]
    InvalidHash { path: String },
    #[error("entry path {path:?} appears twice")]
    DuplicatePath { path: String },
    #[error("parent of entry {path:?} is not a directory listed before it")]
    ParentNotDir { path: String },
    #[error("entry {path:?} is inconsistent: {reason}")]
    Inconsistent { path: String, reason: &'static str },
    #[error("expected a {expected:?} tree, found {found:?}")]
    WrongKind { expected: TreeKind, found: TreeKind },
    #[error("chunk size {0} is not a power of two from 4 KiB to 4 MiB")]
    BadChunkSize(u64),
}

impl TreeRef {
    /// Sum of the sizes of the files.
    pub fn logical_bytes(&self) -> u64 {
        self.entries.iter().map(|e| e.size).sum()
    }

    /// `(hash, length)` of every chunk of every file, duplicates included.
    pub fn blobs(&self) -> impl Iterator<Item = (&str, u64)> + '_ {
        let cs = self.chunk_size;
        self.entries.iter().flat_map(move |e| e.blobs(cs))
    }

    /// Checks every rule of the format (see the crate docs). Nothing is written from a tree
    /// that fails this.
    pub fn validate(&self) -> Result<(), TreeError> {
        let cs = self.chunk_size;
        if !cs.is_power_of_two() || !(MIN_CHUNK_SIZE..=CHUNK_SIZE).contains(&cs) {
            return Err(TreeError::BadChunkSize(cs));
        }
        let mut seen: HashSet<&str> = HashSet::with_capacity(self.entries.len());
        let mut dirs: HashSet<&str> = HashSet::new();
        for (i, e) in self.entries.iter().enumerate() {
            let path = e.path.as_str();
            let bad = |reason| TreeError::Inconsistent {
                path: path.to_owned(),
                reason,
            };
            if path == ROOT_PATH {
                if i != 0 || e.kind != EntryKind::Dir {
                    return Err(TreeError::InvalidPath {
                        path: path.to_owned(),
                        reason: "\".\" is allowed only as the first entry, a directory",
                    });
                }
            } else {
                validate_path(path)?;
                let parent = path.rsplit_once('/').map_or("", |(p, _)| p);
                if !parent.is_empty() && !dirs.contains(parent) {
                    return Err(TreeError::ParentNotDir {
                        path: path.to_owned(),
                    });
                }
            }
            if !seen.insert(path) {
                return Err(TreeError::DuplicatePath {
                    path: path.to_owned(),
                });
            }
            if e.mode & !0o7777 != 0 {
                return Err(bad("mode has bits outside 0o7777"));
            }
            if e.opaque && e.kind != EntryKind::Dir {
                return Err(bad("only a directory can be opaque"));
            }
            if e.kind != EntryKind::File
                && (e.size != 0 || !e.chunks.is_empty() || !e.lengths.is_empty())
            {
                return Err(bad("only a file has a size and chunks"));
            }
            if (e.kind == EntryKind::Symlink) != e.target.is_some() {
                return Err(bad("a symlink, and only a symlink, has a target"));
            }
            match e.kind {
                EntryKind::File => {
                    if self.content_defined {
                        if e.lengths.len() != e.chunks.len()
                            || e.lengths.iter().any(|l| !(1..=CHUNK_SIZE).contains(l))
                            || e.lengths.iter().sum::<u64>() != e.size
                        {
                            return Err(bad("chunk lengths do not add up to the size"));
                        }
                    } else if !e.lengths.is_empty() {
                        return Err(bad("chunk lengths in a tree cut at fixed offsets"));
                    } else if e.chunks.len() as u64 != chunk_count(e.size, cs) {
                        return Err(bad("chunk count does not match size"));
                    }
                    if !e.chunks.iter().all(|h| is_valid_hash(h)) {
                        return Err(TreeError::InvalidHash {
                            path: path.to_owned(),
                        });
                    }
                }
                EntryKind::Dir => {
                    dirs.insert(path);
                }
                EntryKind::Symlink => {
                    let t = e.target.as_deref().unwrap_or_default();
                    if t.is_empty() || t.contains('\0') || t.len() > MAX_PATH_BYTES {
                        return Err(bad("symlink target is empty, too long or has NUL"));
                    }
                }
                EntryKind::Whiteout => {
                    if self.kind != TreeKind::Layer {
                        return Err(bad("whiteouts belong only in layer trees"));
                    }
                }
            }
        }
        Ok(())
    }

    /// Like [`TreeRef::validate`], and the tree must be of `kind`.
    pub(crate) fn validate_as(&self, kind: TreeKind) -> Result<(), TreeError> {
        if self.kind != kind {
            return Err(TreeError::WrongKind {
                expected: kind,
                found: self.kind,
            });
        }
        self.validate()
    }
}

/// A relative, `/`-separated path of normal components.
fn validate_path(path: &str) -> Result<(), TreeError> {
    let invalid = |reason| {
        Err(TreeError::InvalidPath {
            path: path.to_owned(),
            reason,
        })
    };
    if path.is_empty() {
        return invalid("empty");
    }
    if path.len() > MAX_PATH_BYTES {
        return invalid("too long");
    }
    if path.contains('\0') {
        return invalid("contains NUL");
    }
    if path.starts_with('/') {
        return invalid("absolute");
    }
    for c in path.split('/') {
        match c {
            "" => return invalid("empty component"),
            "." | ".." => return invalid("contains . or .."),
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(path: &str, kind: EntryKind) -> Entry {
        Entry {
            path: path.into(),
            kind,
            mode: 0o755,
            uid: 0,
            gid: 0,
            mtime_ns: 0,
            size: 0,
            chunks: vec![],
            target: (kind == EntryKind::Symlink).then(|| "t".into()),
            opaque: false,
            lengths: Vec::new(),
        }
    }

    fn tree(entries: Vec<Entry>) -> TreeRef {
        TreeRef {
            kind: TreeKind::Layer,
            chunk_size: CHUNK_SIZE,
            content_defined: false,
            entries,
        }
    }

    #[test]
    fn accepts_a_normal_tree() {
        let t = tree(vec![
            entry(".", EntryKind::Dir),
            entry("a", EntryKind::Dir),
            entry("a/b", EntryKind::File),
            entry("a/l", EntryKind::Symlink),
            entry("w", EntryKind::Whiteout),
        ]);
        t.validate().unwrap();
    }

    #[test]
    fn rejects_escaping_paths() {
        for p in [
            "../x",
            "/etc/x",
            "a/../../x",
            "",
            "a//b",
            "./a",
            "a/.",
            "a\0b",
        ] {
            let err = tree(vec![entry(p, EntryKind::File)])
                .validate()
                .unwrap_err();
            assert!(matches!(err, TreeError::InvalidPath { .. }), "{p}: {err}");
        }
    }

    #[test]
    fn rejects_children_of_symlinks_and_missing_parents() {
        let t = tree(vec![
            entry("l", EntryKind::Symlink),
            entry("l/x", EntryKind::File),
        ]);
        assert!(matches!(t.validate(), Err(TreeError::ParentNotDir { .. })));
        let t = tree(vec![entry("d/x", EntryKind::File)]);
        assert!(matches!(t.validate(), Err(TreeError::ParentNotDir { .. })));
    }

    #[test]
    fn rejects_duplicates_bad_hashes_and_misplaced_root() {
        let t = tree(vec![entry("a", EntryKind::Dir), entry("a", EntryKind::Dir)]);
        assert!(matches!(t.validate(), Err(TreeError::DuplicatePath { .. })));
        let mut f = entry("f", EntryKind::File);
        f.size = 1;
        f.chunks = vec!["../../etc/passwd".into()];
        assert!(matches!(
            tree(vec![f]).validate(),
            Err(TreeError::InvalidHash { .. })
        ));
        let t = tree(vec![entry("a", EntryKind::Dir), entry(".", EntryKind::Dir)]);
        assert!(matches!(t.validate(), Err(TreeError::InvalidPath { .. })));
    }

    #[test]
    fn chunk_arithmetic() {
        assert_eq!(chunk_count(0, CHUNK_SIZE), 0);
        assert_eq!(chunk_count(1, CHUNK_SIZE), 1);
        assert_eq!(chunk_count(CHUNK_SIZE, CHUNK_SIZE), 1);
        assert_eq!(chunk_count(CHUNK_SIZE + 1, CHUNK_SIZE), 2);
        assert_eq!(chunk_len(CHUNK_SIZE + 5, 0, CHUNK_SIZE), CHUNK_SIZE);
        assert_eq!(chunk_len(CHUNK_SIZE + 5, 1, CHUNK_SIZE), 5);
        let m = MEMORY_CHUNK_SIZE;
        assert_eq!(chunk_count(3 * m + 1, m), 4);
        assert_eq!(chunk_len(3 * m + 1, 3, m), 1);
        assert_eq!(chunk_len(3 * m + 1, 2, m), m);
    }
}
