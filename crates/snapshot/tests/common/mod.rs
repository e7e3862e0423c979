//! Helpers shared by the integration tests.
#![allow(dead_code)]

mod tempdir;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::{Duration, UNIX_EPOCH};

use sandboxd_snapshot::{LocalStore, Manifest, SnapshotStore, TreeKind, TreeRef};
pub use tempdir::TempDir;

/// A store with no gc grace period, so gc acts at once.
pub fn store(dir: &TempDir) -> LocalStore {
    LocalStore::open(dir.path().join("store"))
        .unwrap()
        .with_gc_grace(Duration::ZERO)
}

/// Deterministic, incompressible-looking bytes.
pub fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

pub fn write(path: &Path, data: &[u8]) {
    if let Some(p) = path.parent() {
        fs::create_dir_all(p).unwrap();
    }
    fs::write(path, data).unwrap();
}

/// Sets the mtime of a file or directory (following symlinks).
pub fn set_mtime(path: &Path, secs: u64, nanos: u32) {
    let f = fs::File::open(path).unwrap();
    f.set_times(fs::FileTimes::new().set_modified(UNIX_EPOCH + Duration::new(secs, nanos)))
        .unwrap();
}

pub fn chmod(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

/// Number of committed-or-not blobs in the store (temp files excluded).
pub fn count_blobs(store: &LocalStore) -> usize {
    let mut n = 0;
    for sub in fs::read_dir(store.root().join("blobs")).unwrap() {
        for f in fs::read_dir(sub.unwrap().path()).unwrap() {
            if !f.unwrap().file_name().to_string_lossy().starts_with(".tmp") {
                n += 1;
            }
        }
    }
    n
}

/// Everything about a tree that a snapshot must preserve, keyed by relative path.
#[derive(Debug, PartialEq, Eq)]
pub struct Node {
    pub kind: &'static str,
    pub mode: u32,
    pub mtime_ns: i128,
    pub uid: u32,
    pub gid: u32,
    pub content: Vec<u8>,
}

pub fn describe_tree(root: &Path) -> BTreeMap<String, Node> {
    let mut out = BTreeMap::new();
    let mut stack = vec![(root.to_owned(), String::from("."))];
    while let Some((abs, rel)) = stack.pop() {
        let meta = fs::symlink_metadata(&abs).unwrap();
        let ft = meta.file_type();
        let (kind, content) = if ft.is_dir() {
            for e in fs::read_dir(&abs).unwrap() {
                let name = e.unwrap().file_name().into_string().unwrap();
                let child = if rel == "." {
                    name.clone()
                } else {
                    format!("{rel}/{name}")
                };
                stack.push((abs.join(&name), child));
            }
            ("dir", Vec::new())
        } else if ft.is_symlink() {
            let t = fs::read_link(&abs).unwrap();
            ("symlink", t.into_os_string().into_encoded_bytes())
        } else if ft.is_file() {
            ("file", fs::read(&abs).unwrap())
        } else if ft.is_char_device() && meta.rdev() == 0 {
            ("whiteout", Vec::new())
        } else {
            panic!("unexpected file type at {}", abs.display());
        };
        let mode = if ft.is_symlink() {
            0
        } else {
            meta.mode() & 0o7777
        };
        let mtime_ns = i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec());
        out.insert(
            rel,
            Node {
                kind,
                mode,
                mtime_ns,
                uid: meta.uid(),
                gid: meta.gid(),
                content,
            },
        );
    }
    out
}

/// Stores `src` as a layer and commits it as `id`.
pub fn snapshot(store: &LocalStore, id: &str, src: &Path) -> Manifest {
    let layer = store.put_tree(TreeKind::Layer, src).unwrap();
    let m = Manifest::new(id, "sb-test", Some(layer), None, serde_json::json!({}));
    store.commit(&m).unwrap();
    m
}

/// Entries of `dir` whose names start with `prefix` (leftover temp dirs).
pub fn siblings_with_prefix(dir: &Path, prefix: &str) -> Vec<String> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with(prefix))
        .collect()
}

pub fn tree_blob_hashes(tree: &TreeRef) -> Vec<String> {
    tree.entries
        .iter()
        .flat_map(|e| e.chunks.iter().cloned())
        .collect()
}
