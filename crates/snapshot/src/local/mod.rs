//! [`LocalStore`]: the snapshot store over a local directory.

mod put;
mod restore;

use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::RwLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tracing::{debug, info, info_span};

use crate::hash::{blake3_hex, is_valid_hash};
use crate::manifest::{validate_snapshot_id, Manifest, ManifestError, MAX_MANIFEST_BYTES};
use crate::sys;
use crate::tree::{TreeKind, TreeRef};
use crate::{GcStats, PutStats, SnapshotStore, StoreError, Usage};

const BLOBS: &str = "blobs";
const MANIFESTS: &str = "manifests";
const TMP_PREFIX: &str = ".tmp-";
const MANIFEST_EXT: &str = ".json";
/// Default age below which gc leaves unreferenced blobs and temp files alone.
pub const DEFAULT_GC_GRACE: Duration = Duration::from_secs(3600);

/// A content-addressed snapshot store in a local directory (format in the crate docs).
#[derive(Debug)]
pub struct LocalStore {
    root: PathBuf,
    gc_grace: Duration,
    /// Writers (put_tree, commit) share it; gc takes it exclusively so that, within this
    /// process, it never runs in the middle of one. Across processes the grace period
    /// does that job.
    gc_lock: RwLock<()>,
}

/// A name no other temp file of this or another process has.
fn unique_suffix() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("{}-{n}-{nanos:08x}", std::process::id())
}

impl LocalStore {
    /// Opens (creating if needed) a store rooted at `root`.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self, StoreError> {
        let root = root.into();
        for sub in [BLOBS, MANIFESTS] {
            let dir = root.join(sub);
            fs::create_dir_all(&dir).map_err(StoreError::io("create", &dir))?;
        }
        Ok(LocalStore {
            root,
            gc_grace: DEFAULT_GC_GRACE,
            gc_lock: RwLock::new(()),
        })
    }

    /// Sets how old an unreferenced blob or temp file must be before gc removes it. It
    /// must exceed the longest time between a `put_tree` and its `commit`.
    pub fn with_gc_grace(mut self, grace: Duration) -> Self {
        self.gc_grace = grace;
        self
    }

    /// The store's directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the blob named `hash` lives (`hash` must be valid).
    pub fn blob_path(&self, hash: &str) -> PathBuf {
        debug_assert!(is_valid_hash(hash));
        self.root.join(BLOBS).join(&hash[..2]).join(hash)
    }

    fn manifest_path(&self, snapshot_id: &str) -> PathBuf {
        self.root
            .join(MANIFESTS)
            .join(format!("{snapshot_id}{MANIFEST_EXT}"))
    }

    fn read_guard(&self) -> std::sync::RwLockReadGuard<'_, ()> {
        self.gc_lock.read().unwrap_or_else(|e| e.into_inner())
    }

    fn needs_refresh(&self, meta: &fs::Metadata) -> bool {
        let age = meta.modified().ok().and_then(|t| t.elapsed().ok());
        !self.gc_grace.is_zero() && age.map_or(true, |a| a > self.gc_grace / 4)
    }

    /// Stores `data` as the blob `hash` unless it is already there. Returns whether it
    /// was written.
    pub(crate) fn write_blob(&self, hash: &str, data: &[u8]) -> Result<bool, StoreError> {
        let path = self.blob_path(hash);
        // A reused blob gets its mtime refreshed, so gc's grace period covers it until
        // the commit that references it (skipped when recent: saves an inode write).
        let present = match fs::symlink_metadata(&path) {
            Ok(meta) if !self.needs_refresh(&meta) => true,
            Ok(_) => match sys::touch(&path) {
                Ok(()) => true,
                Err(e) if e.kind() == io::ErrorKind::NotFound => false, // raced with gc
                Err(e) => return Err(StoreError::io("touch", &path)(e)),
            },
            Err(e) if e.kind() == io::ErrorKind::NotFound => false,
            Err(e) => return Err(StoreError::io("stat", &path)(e)),
        };
        if present {
            return Ok(false);
        }
        let dir = path.parent().expect("blob paths have a parent");
        let tmp = dir.join(format!("{TMP_PREFIX}{}", unique_suffix()));
        let mut file = match File::create_new(&tmp) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fs::create_dir_all(dir).map_err(StoreError::io("create", dir))?;
                File::create_new(&tmp)
            }
            other => other,
        }
        .map_err(StoreError::io("create", &tmp))?;
        // A hard link, unlike a rename, fails if the name exists: of two writers of one
        // blob (two files of a tree with equal content), exactly one reports it as new.
        let written = file
            .write_all(data)
            .map_err(StoreError::io("write", &tmp))
            .and_then(|()| match fs::hard_link(&tmp, &path) {
                Ok(()) => Ok(true),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
                Err(e) => Err(StoreError::io("link", &path)(e)),
            });
        let _ = fs::remove_file(&tmp);
        written
    }

    /// Reads blob `hash` of `len` bytes into `buf`, verifying length and hash.
    pub(crate) fn read_blob(
        &self,
        hash: &str,
        len: u64,
        buf: &mut Vec<u8>,
    ) -> Result<(), StoreError> {
        let path = self.blob_path(hash);
        let file = File::open(&path).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => StoreError::MissingBlob {
                hash: hash.to_owned(),
            },
            _ => StoreError::io("open", &path)(e),
        })?;
        buf.clear();
        file.take(len + 1)
            .read_to_end(buf)
            .map_err(StoreError::io("read", &path))?;
        if buf.len() as u64 != len || blake3_hex(buf) != hash {
            return Err(StoreError::Corrupt {
                hash: hash.to_owned(),
            });
        }
        Ok(())
    }

    fn read_manifest(&self, snapshot_id: &str) -> Result<Manifest, StoreError> {
        validate_snapshot_id(snapshot_id).map_err(StoreError::InvalidId)?;
        let path = self.manifest_path(snapshot_id);
        let invalid = |source| StoreError::Manifest {
            snapshot_id: snapshot_id.to_owned(),
            source,
        };
        let file = File::open(&path).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => StoreError::NotFound {
                snapshot_id: snapshot_id.to_owned(),
            },
            _ => StoreError::io("open", &path)(e),
        })?;
        let size = file
            .metadata()
            .map_err(StoreError::io("stat", &path))?
            .len();
        if size > MAX_MANIFEST_BYTES {
            return Err(invalid(ManifestError::TooLarge { size }));
        }
        let mut bytes = Vec::with_capacity(size as usize);
        file.take(MAX_MANIFEST_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(StoreError::io("read", &path))?;
        let manifest = Manifest::from_bytes(&bytes).map_err(invalid)?;
        if manifest.snapshot_id != snapshot_id {
            return Err(invalid(ManifestError::IdMismatch {
                expected: snapshot_id.to_owned(),
                found: manifest.snapshot_id,
            }));
        }
        Ok(manifest)
    }

    fn list_ids(&self) -> Result<Vec<String>, StoreError> {
        let dir = self.root.join(MANIFESTS);
        let mut ids = Vec::new();
        for entry in fs::read_dir(&dir).map_err(StoreError::io("list", &dir))? {
            let entry = entry.map_err(StoreError::io("list", &dir))?;
            let name = entry.file_name();
            let Some(id) = name.to_str().and_then(|n| n.strip_suffix(MANIFEST_EXT)) else {
                continue;
            };
            if validate_snapshot_id(id).is_ok() {
                ids.push(id.to_owned());
            }
        }
        ids.sort();
        Ok(ids)
    }

    /// Every committed manifest, or the first error: gc must not guess what an unreadable
    /// manifest references.
    fn all_manifests(&self) -> Result<Vec<Manifest>, StoreError> {
        self.list_ids()?
            .iter()
            .map(|id| self.read_manifest(id))
            .collect()
    }

    fn do_commit(&self, manifest: &Manifest) -> Result<(), StoreError> {
        let id = &manifest.snapshot_id;
        validate_snapshot_id(id).map_err(StoreError::InvalidId)?;
        let bytes = manifest.to_bytes();
        let sealed = Manifest::from_bytes(&bytes).map_err(|source| StoreError::Manifest {
            snapshot_id: id.clone(),
            source,
        })?;
        let _guard = self.read_guard();
        for (hash, _) in sealed.blobs() {
            let path = self.blob_path(hash);
            if let Err(e) = fs::symlink_metadata(&path) {
                return Err(match e.kind() {
                    io::ErrorKind::NotFound => StoreError::MissingBlob {
                        hash: hash.to_owned(),
                    },
                    _ => StoreError::io("stat", &path)(e),
                });
            }
        }
        let final_path = self.manifest_path(id);
        if final_path.exists() {
            return Err(StoreError::AlreadyExists {
                snapshot_id: id.clone(),
            });
        }
        // Blobs were written without fsync; make them durable before anything names them.
        sys::syncfs(&self.root).map_err(StoreError::io("syncfs", &self.root))?;

        let dir = self.root.join(MANIFESTS);
        let tmp = dir.join(format!("{TMP_PREFIX}{}", unique_suffix()));
        let result = (|| {
            let mut file = File::create_new(&tmp).map_err(StoreError::io("create", &tmp))?;
            file.write_all(&bytes)
                .map_err(StoreError::io("write", &tmp))?;
            file.sync_all().map_err(StoreError::io("fsync", &tmp))?;
            // A hard link is an atomic rename that refuses to replace an existing name.
            fs::hard_link(&tmp, &final_path).map_err(|e| match e.kind() {
                io::ErrorKind::AlreadyExists => StoreError::AlreadyExists {
                    snapshot_id: id.clone(),
                },
                _ => StoreError::io("link", &final_path)(e),
            })
        })();
        let _ = fs::remove_file(&tmp);
        result?;
        sys::fsync_dir(&dir).map_err(StoreError::io("fsync", &dir))?;
        info!(snapshot_id = %id, bytes = bytes.len(), "snapshot committed");
        Ok(())
    }

    fn do_gc(&self) -> Result<GcStats, StoreError> {
        let _guard = self.gc_lock.write().unwrap_or_else(|e| e.into_inner());
        let mut referenced: HashSet<String> = HashSet::new();
        for m in self.all_manifests()? {
            referenced.extend(m.blobs().map(|(h, _)| h.to_owned()));
        }
        let now = SystemTime::now();
        let old_enough = |meta: &fs::Metadata| {
            meta.modified()
                .ok()
                .and_then(|t| now.duration_since(t).ok())
                .map_or(self.gc_grace.is_zero(), |age| age >= self.gc_grace)
        };
        let mut stats = GcStats::default();

        let manifests = self.root.join(MANIFESTS);
        for entry in fs::read_dir(&manifests).map_err(StoreError::io("list", &manifests))? {
            let entry = entry.map_err(StoreError::io("list", &manifests))?;
            if !entry
                .file_name()
                .as_encoded_bytes()
                .starts_with(TMP_PREFIX.as_bytes())
            {
                continue;
            }
            let meta = entry
                .metadata()
                .map_err(StoreError::io("stat", entry.path()))?;
            if meta.is_file() && old_enough(&meta) {
                remove_if_present(&entry.path())?;
                stats.temp_files_removed += 1;
            }
        }

        let blobs = self.root.join(BLOBS);
        for sub in fs::read_dir(&blobs).map_err(StoreError::io("list", &blobs))? {
            let sub = sub.map_err(StoreError::io("list", &blobs))?.path();
            if !sub.is_dir() {
                continue;
            }
            for entry in fs::read_dir(&sub).map_err(StoreError::io("list", &sub))? {
                let entry = entry.map_err(StoreError::io("list", &sub))?;
                let name = entry.file_name();
                let Some(name) = name.to_str() else { continue };
                let is_tmp = name.starts_with(TMP_PREFIX);
                if !is_tmp && !is_valid_hash(name) {
                    continue; // not ours
                }
                if !is_tmp && referenced.contains(name) {
                    stats.blobs_kept += 1;
                    continue;
                }
                let meta = entry
                    .metadata()
                    .map_err(StoreError::io("stat", entry.path()))?;
                if !meta.is_file() || !old_enough(&meta) {
                    stats.blobs_kept += u64::from(!is_tmp);
                } else if is_tmp {
                    remove_if_present(&entry.path())?;
                    stats.temp_files_removed += 1;
                } else {
                    remove_if_present(&entry.path())?;
                    stats.blobs_removed += 1;
                    stats.bytes_removed += meta.len();
                }
            }
        }
        info!(?stats, "gc done");
        Ok(stats)
    }

    fn do_usage(&self, snapshot_id: &str) -> Result<Usage, StoreError> {
        let m = self.read_manifest(snapshot_id)?;
        let mut own: HashMap<&str, u64> = m.blobs().collect();
        for other in self.list_ids()? {
            if other == snapshot_id || own.is_empty() {
                continue;
            }
            let o = self.read_manifest(&other)?;
            for (h, _) in o.blobs() {
                own.remove(h);
            }
        }
        let logical_bytes = m.layer.as_ref().map_or(0, TreeRef::logical_bytes)
            + m.memory.as_ref().map_or(0, TreeRef::logical_bytes);
        Ok(Usage {
            logical_bytes,
            unique_bytes_added: own.values().sum(),
        })
    }
}

fn remove_if_present(path: &Path) -> Result<(), StoreError> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(StoreError::io("remove", path)(e)),
        _ => Ok(()),
    }
}

impl SnapshotStore for LocalStore {
    fn put_tree_counted(
        &self,
        kind: TreeKind,
        src: &Path,
    ) -> Result<(TreeRef, PutStats), StoreError> {
        let _span = info_span!("put_tree", ?kind, src = %src.display()).entered();
        let _guard = self.read_guard();
        put::put_tree(self, kind, src)
    }

    fn commit(&self, manifest: &Manifest) -> Result<(), StoreError> {
        let _span = info_span!("commit", snapshot_id = %manifest.snapshot_id).entered();
        self.do_commit(manifest)
    }

    fn manifest(&self, snapshot_id: &str) -> Result<Manifest, StoreError> {
        self.read_manifest(snapshot_id)
    }

    fn materialize(&self, tree: &TreeRef, dest: &Path) -> Result<(), StoreError> {
        let _span = info_span!("materialize", dest = %dest.display()).entered();
        restore::materialize(self, tree, dest)
    }

    fn delete(&self, snapshot_id: &str) -> Result<(), StoreError> {
        let _span = info_span!("delete", snapshot_id).entered();
        validate_snapshot_id(snapshot_id).map_err(StoreError::InvalidId)?;
        let path = self.manifest_path(snapshot_id);
        fs::remove_file(&path).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => StoreError::NotFound {
                snapshot_id: snapshot_id.to_owned(),
            },
            _ => StoreError::io("remove", &path)(e),
        })?;
        let dir = self.root.join(MANIFESTS);
        sys::fsync_dir(&dir).map_err(StoreError::io("fsync", &dir))?;
        debug!("snapshot deleted");
        Ok(())
    }

    fn gc(&self) -> Result<GcStats, StoreError> {
        let _span = info_span!("gc").entered();
        self.do_gc()
    }

    fn usage(&self, snapshot_id: &str) -> Result<Usage, StoreError> {
        self.do_usage(snapshot_id)
    }

    fn list(&self) -> Result<Vec<String>, StoreError> {
        self.list_ids()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::TempDir;

    #[test]
    fn blobs_are_written_once_and_verified_on_read() {
        let tmp = TempDir::new("blob");
        let store = LocalStore::open(tmp.path()).unwrap();
        let data = b"hello blob";
        let hash = blake3_hex(data);
        assert!(store.write_blob(&hash, data).unwrap());
        assert!(!store.write_blob(&hash, data).unwrap());
        let mut buf = Vec::new();
        store.read_blob(&hash, data.len() as u64, &mut buf).unwrap();
        assert_eq!(buf, data);
        let err = store.read_blob(&hash, 3, &mut buf).unwrap_err();
        assert!(matches!(err, StoreError::Corrupt { .. }));
        assert_eq!(
            store.blob_path(&hash),
            tmp.path().join("blobs").join(&hash[..2]).join(&hash)
        );
    }

    #[test]
    fn temp_names_are_unique() {
        let a = unique_suffix();
        assert_ne!(a, unique_suffix());
        assert!(a.starts_with(&std::process::id().to_string()));
    }
}
