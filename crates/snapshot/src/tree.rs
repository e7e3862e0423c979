//! Tree descriptions: what `put_tree` returns and `materialize` recreates.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

use crate::hash::is_valid_hash;

/// Files are cut into chunks of this many bytes; each chunk is one blob.
pub const CHUNK_SIZE: u64 = 4 * 1024 * 1024;

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
    /// Hashes of a file's chunks, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub chunks: Vec<String>,
    /// Target of a symlink.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// A directory marked `trusted.overlay.opaque=y`.
    #[serde(default, skip_serializing_if = "is_false")]
    pub opaque: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl Entry {
    /// `(hash, length)` of each chunk of this entry.
    pub fn blobs(&self) -> impl Iterator<Item = (&str, u64)> + '_ {
        self.chunks
            .iter()
            .enumerate()
            .map(|(i, h)| (h.as_str(), chunk_len(self.size, i)))
    }
}

/// Length of chunk `index` of a file of `size` bytes.
pub(crate) fn chunk_len(size: u64, index: usize) -> u64 {
    let start = index as u64 * CHUNK_SIZE;
    size.saturating_sub(start).min(CHUNK_SIZE)
}

/// Number of chunks of a file of `size` bytes.
pub(crate) fn chunk_count(size: u64) -> u64 {
    size.div_ceil(CHUNK_SIZE)
}

/// A stored directory tree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TreeRef {
    pub kind: TreeKind,
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
}

impl TreeRef {
    /// Sum of the sizes of the files.
    pub fn logical_bytes(&self) -> u64 {
        self.entries.iter().map(|e| e.size).sum()
    }

    /// `(hash, length)` of every chunk of every file, duplicates included.
    pub fn blobs(&self) -> impl Iterator<Item = (&str, u64)> + '_ {
        self.entries.iter().flat_map(Entry::blobs)
    }

    /// Checks every rule of the format (see the crate docs). Nothing is written from a tree
    /// that fails this.
    pub fn validate(&self) -> Result<(), TreeError> {
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
            if e.kind != EntryKind::File && (e.size != 0 || !e.chunks.is_empty()) {
                return Err(bad("only a file has a size and chunks"));
            }
            if (e.kind == EntryKind::Symlink) != e.target.is_some() {
                return Err(bad("a symlink, and only a symlink, has a target"));
            }
            match e.kind {
                EntryKind::File => {
                    if e.chunks.len() as u64 != chunk_count(e.size) {
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
        }
    }

    fn tree(entries: Vec<Entry>) -> TreeRef {
        TreeRef {
            kind: TreeKind::Layer,
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
        assert_eq!(chunk_count(0), 0);
        assert_eq!(chunk_count(1), 1);
        assert_eq!(chunk_count(CHUNK_SIZE), 1);
        assert_eq!(chunk_count(CHUNK_SIZE + 1), 2);
        assert_eq!(chunk_len(CHUNK_SIZE + 5, 0), CHUNK_SIZE);
        assert_eq!(chunk_len(CHUNK_SIZE + 5, 1), 5);
    }
}
