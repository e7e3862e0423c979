//! Memory images in the content-addressed snapshot store, moved there off the capture path.
//!
//! A capture writes the gVisor checkpoint to `<data>/images/snap-<id>` (plain files on the
//! host file system: the fastest place to write while the sandbox is frozen) and the snapshot
//! is `Ready`. The archiver, a background task, then stores that image in the
//! [`SnapshotStore`] as 64 KiB BLAKE3 chunks (a chunk equal to one of another snapshot is
//! stored once: two checkpoints of one sandbox share ~99 % of them), commits the manifest
//! `snap-<id>` and removes the plain image. It runs at low CPU priority and one image at a
//! time.
//!
//! A restore uses the plain image while it is there, else materializes the image from the
//! store into `<data>/images/.restore-<uuid>`, every chunk verified: a corrupt or missing
//! chunk fails the restore with a clear error before the sandbox starts. A rollback
//! materializes before it stops the sandbox (which keeps running on failure); a restore as
//! a new sandbox materializes while the runtime prepares the new sandbox's layer, network
//! and bundle, which are removed again on failure.
//!
//! Crash safety: the plain image is removed only after the manifest is committed, and first
//! renamed to `.gone-snap-<id>` (atomic), so no restore ever reads a partial plain image. A
//! restart removes leftover `.gone-*` and `.restore-*` directories, deletes manifests whose
//! snapshot is not `Ready`, collects unreferenced chunks, and archives what was left.
//! Layers are not copied into the store: they are read-only btrfs subvolumes, copy-on-write
//! at block level, which the manifest names in its metadata.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use sandboxd_core::{fault, CoreError, Snapshot, SnapshotStatus};
use sandboxd_snapshot::{Manifest, SnapshotStore, StoreError, TreeKind, Usage};
use tokio::sync::Notify;
use tracing::{info, warn};
use uuid::Uuid;

use crate::{Engine, EngineError};

/// Prefix of a plain image being removed after it was archived.
const GONE: &str = ".gone-";
/// Prefix of an image materialized from the store for one restore.
const RESTORE: &str = ".restore-";
/// Nice value of the archiver's thread: captures and restores come first.
const ARCHIVE_NICE: i32 = 10;
/// Longest the archiver defers an image to lifecycle operations in flight.
const QUIET_WAIT: Duration = Duration::from_secs(10);
/// How long no lifecycle operation must have run before the archiver starts an image.
const QUIET_FOR: Duration = Duration::from_secs(1);

/// The store and the archiver's wake-up.
pub(crate) struct Archive {
    store: Arc<dyn SnapshotStore>,
    wake: Notify,
    gc_wanted: AtomicBool,
}

impl Archive {
    pub(crate) fn new(store: Arc<dyn SnapshotStore>) -> Self {
        Archive {
            store,
            wake: Notify::new(),
            gc_wanted: AtomicBool::new(true),
        }
    }
}

/// The manifest id of a snapshot.
fn store_id(snap: Uuid) -> String {
    format!("snap-{snap}")
}

/// A memory image to restore from. One materialized for the restore is removed on drop.
pub(crate) struct MemoryImage {
    pub path: PathBuf,
    temporary: bool,
}

impl Drop for MemoryImage {
    fn drop(&mut self) {
        if self.temporary {
            // runsc has read (or holds open) what it needs; unlinking is safe. Unlinking
            // hundreds of MiB takes a while: off the async workers when there are some.
            let path = std::mem::take(&mut self.path);
            let remove = move || {
                if let Err(e) = std::fs::remove_dir_all(&path) {
                    warn!(path = %path.display(), error = %e, "could not remove a restore image");
                }
            };
            match tokio::runtime::Handle::try_current() {
                Ok(h) => drop(h.spawn_blocking(remove)),
                Err(_) => remove(),
            }
        }
    }
}

/// Runs `f` on a new thread at low CPU priority (its own worker threads inherit it).
async fn low_priority<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, EngineError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("archiver".into())
        .spawn(move || {
            // SAFETY: setpriority with PRIO_PROCESS and who = 0 changes only the calling
            // thread's nice value (Linux threads have their own); it reads no memory of ours.
            unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, ARCHIVE_NICE) };
            let _ = tx.send(f());
        })
        .map_err(|e| CoreError::Internal(format!("could not start the archiver thread: {e}")))?;
    rx.await
        .map_err(|_| CoreError::Internal("the archiver thread panicked".into()).into())
}

fn store_failure(snap: Uuid, e: &StoreError) -> EngineError {
    let what = match e {
        StoreError::Corrupt { hash } => format!("chunk {hash} is corrupt"),
        StoreError::MissingBlob { hash } => format!("chunk {hash} is missing"),
        StoreError::NotFound { .. } => "it is not in the store".into(),
        StoreError::Manifest { .. } => "its manifest is damaged".into(),
        other => format!("it could not be read ({other})"),
    };
    CoreError::Internal(format!(
        "snapshot {snap} cannot be restored: its stored memory image failed verification \
         ({what}); nothing was changed"
    ))
    .into()
}

impl Engine {
    /// Keeps memory images in `store` (see the module docs). Without it they stay plain files.
    pub fn with_snapshot_store(mut self, store: Arc<dyn SnapshotStore>) -> Self {
        self.archive = Some(Archive::new(store));
        self
    }

    fn images_dir(&self) -> PathBuf {
        let (_, image) = self.runtime.capture_paths("x");
        image.parent().map(Path::to_owned).unwrap_or_default()
    }

    /// Tells the archiver there may be work (a new memory snapshot, or one deleted).
    pub(crate) fn wake_archiver(&self, gc: bool) {
        if let Some(a) = &self.archive {
            if gc {
                a.gc_wanted.store(true, Ordering::Relaxed);
            }
            a.wake.notify_one();
        }
    }

    /// Drops a deleted snapshot's manifest (its chunks go at the next gc).
    pub(crate) fn forget_stored(&self, snap: Uuid) {
        if let Some(a) = &self.archive {
            match a.store.delete(&store_id(snap)) {
                Ok(()) | Err(StoreError::NotFound { .. }) => {}
                Err(e) => warn!(snapshot_id = %snap, error = %e, "could not delete a manifest"),
            }
            self.wake_archiver(true);
        }
    }

    /// The memory image of `snap` to restore from. The caller holds the snapshot's read
    /// lock, so the archiver cannot remove the plain image meanwhile.
    pub(crate) async fn memory_image(&self, snap: &Snapshot) -> Result<MemoryImage, EngineError> {
        let (_, plain) = self.capture_paths(snap.id);
        if plain.is_dir() {
            return Ok(MemoryImage {
                path: plain,
                temporary: false,
            });
        }
        let Some(a) = &self.archive else {
            return Err(CoreError::Internal(format!(
                "snapshot {} cannot be restored: its memory image is missing",
                snap.id
            ))
            .into());
        };
        let store = a.store.clone();
        let id = snap.id;
        let dest = self
            .images_dir()
            .join(format!("{RESTORE}{}", Uuid::new_v4()));
        let started = Instant::now();
        let path = dest.clone();
        tokio::task::spawn_blocking(move || {
            let m = store.manifest(&store_id(id))?;
            let tree = m.memory.ok_or(StoreError::NotFound {
                snapshot_id: store_id(id),
            })?;
            store.materialize(&tree, &path)
        })
        .await
        .map_err(|_| CoreError::Internal("materialize task panicked".into()))?
        .map_err(|e| {
            warn!(snapshot_id = %id, error = %e, detail = ?e, "stored memory image unusable");
            store_failure(id, &e)
        })?;
        info!(snapshot_id = %id, ms = started.elapsed().as_millis() as u64, "memory image materialized from the store");
        Ok(MemoryImage {
            path: dest,
            temporary: true,
        })
    }

    /// The archiver: stores every Ready snapshot's plain memory image, then collects
    /// unreferenced chunks when snapshots were deleted. Woken by captures and deletes, and
    /// every `every` regardless. Runs until the process ends.
    pub async fn archive_snapshots(self: Arc<Self>, every: Duration) {
        let Some(a) = &self.archive else {
            return;
        };
        loop {
            self.archive_pass().await;
            if a.gc_wanted.swap(false, Ordering::Relaxed) {
                let store = a.store.clone();
                match low_priority(move || store.gc()).await {
                    Ok(Ok(stats)) if stats.blobs_removed > 0 => {
                        info!(
                            blobs = stats.blobs_removed,
                            bytes = stats.bytes_removed,
                            "unreferenced chunks removed"
                        )
                    }
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => warn!(error = %e, "snapshot store gc"),
                    Err(e) => warn!(error = %e, "snapshot store gc"),
                }
            }
            tokio::select! {
                () = a.wake.notified() => {}
                () = tokio::time::sleep(every) => {}
            }
        }
    }

    async fn archive_pass(&self) {
        let snaps = match self.meta.all_snapshots() {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, "archiver: list snapshots");
                return;
            }
        };
        for snap in snaps {
            if snap.status != SnapshotStatus::Ready || !snap.include_memory {
                continue;
            }
            if !self.capture_paths(snap.id).1.is_dir() {
                continue;
            }
            self.wait_quiet().await;
            if let Err(e) = self.archive_one(snap.id).await {
                warn!(snapshot_id = %snap.id, error = %e, detail = ?e, "archiving a memory image failed; the plain image stays");
            }
        }
    }

    /// Waits (up to [`QUIET_WAIT`]) until no lifecycle operation has been in flight for
    /// [`QUIET_FOR`]: storing an image hashes hundreds of MiB and flushes the store, which
    /// lengthens a capture or restore running beside it (a capture's freeze doubled in a
    /// measured burst of snapshots), so a burst is stored after it ends.
    async fn wait_quiet(&self) {
        let deadline = Instant::now() + QUIET_WAIT;
        let mut quiet_since = Instant::now();
        while Instant::now() < deadline && quiet_since.elapsed() < QUIET_FOR {
            if !self
                .busy
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .is_empty()
            {
                quiet_since = Instant::now();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stores one snapshot's plain memory image and removes it.
    async fn archive_one(&self, id: Uuid) -> Result<(), EngineError> {
        let Some(a) = &self.archive else {
            return Ok(());
        };
        let (_, plain) = self.capture_paths(id);
        let started = Instant::now();
        let usage: Usage = {
            // Shared with restores: a delete waits until the image is stored.
            let _read = self.snapshot_locks.read(id).await;
            match self.meta.get_snapshot(id)? {
                Some(s) if s.status == SnapshotStatus::Ready && plain.is_dir() => {
                    let store = a.store.clone();
                    let src = plain.clone();
                    let sandbox = s.sandbox_id.to_string();
                    low_priority(move || -> Result<Usage, StoreError> {
                                let name = store_id(id);
                        match store.manifest(&name) {
                            // Committed before a crash; only the plain image is left to drop.
                            Ok(_) => store.usage(&name),
                            Err(StoreError::NotFound { .. }) => {
                                let (tree, put) =
                                    store.put_tree_counted(TreeKind::Memory, &src)?;
                                let logical_bytes = tree.logical_bytes();
                                fault::point("archive.stored");
                                let m = Manifest::new(
                                    name.as_str(),
                                    sandbox,
                                    None,
                                    Some(tree),
                                    serde_json::json!({
                                        "layer": {"kind": "btrfs-subvolume", "path": format!(".layers/{name}")},
                                    }),
                                );
                                store.commit(&m)?;
                                Ok(Usage {
                                    logical_bytes,
                                    unique_bytes_added: put.new_bytes,
                                })
                            }
                            Err(e) => Err(e),
                        }
                    })
                    .await?
                    .map_err(|e| CoreError::Internal(format!("store the memory image: {e}")))?
                }
                _ => return Ok(()),
            }
        };
        fault::point("archive.committed");
        // Exclusive: no restore is reading the plain image while it goes.
        let _write = self.snapshot_locks.write(id).await;
        let Some(mut snap) = self.meta.get_snapshot(id)? else {
            // Deleted while it was being stored.
            self.forget_stored(id);
            return Ok(());
        };
        let gone = self.images_dir().join(format!("{GONE}{}", store_id(id)));
        std::fs::rename(&plain, &gone)
            .map_err(|e| CoreError::Internal(format!("move the archived image: {e}")))?;
        fault::point("archive.moved");
        let _ = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(gone)).await;
        snap.added_bytes = Some(usage.unique_bytes_added);
        snap.updated_at = Utc::now();
        self.meta.update_snapshot(&snap)?;
        info!(
            snapshot_id = %id,
            logical = usage.logical_bytes,
            added = usage.unique_bytes_added,
            ms = started.elapsed().as_millis() as u64,
            "memory image stored"
        );
        Ok(())
    }

    /// After a restart: removes what interrupted archiving and restores left, drops
    /// manifests of snapshots that are not Ready, fails Ready memory snapshots whose image
    /// is gone from both places, and collects unreferenced chunks.
    pub(crate) async fn reconcile_store(&self) -> Result<(), EngineError> {
        if let Ok(rd) = std::fs::read_dir(self.images_dir()) {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.starts_with(GONE) || name.starts_with(RESTORE) || name.contains(".tmp-") {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
        let snaps = self.meta.all_snapshots()?;
        let ready = |id: &str| {
            snaps.iter().any(|s| {
                s.status == SnapshotStatus::Ready && store_id(s.id) == id && s.include_memory
            })
        };
        let Some(a) = &self.archive else {
            return Ok(());
        };
        let store = a.store.clone();
        let stored = tokio::task::spawn_blocking({
            let store = store.clone();
            move || store.list()
        })
        .await
        .map_err(|_| CoreError::Internal("store list panicked".into()))?
        .map_err(|e| CoreError::Internal(format!("list the snapshot store: {e}")))?;
        for id in &stored {
            if !ready(id) {
                warn!(manifest = %id, "dropping the manifest of a snapshot that is not Ready");
                let _ = store.delete(id);
            }
        }
        for mut snap in snaps {
            let plain = self.capture_paths(snap.id).1.is_dir();
            let in_store = stored.contains(&store_id(snap.id));
            if snap.status == SnapshotStatus::Ready
                && snap.include_memory
                && !plain
                && in_store
                && snap.added_bytes.is_none()
            {
                // Stored, then the daemon stopped before the record said so.
                if let Ok(u) = store.usage(&store_id(snap.id)) {
                    snap.added_bytes = Some(u.unique_bytes_added);
                    self.meta.update_snapshot(&snap)?;
                }
            }
            if snap.status == SnapshotStatus::Ready && snap.include_memory && !plain && !in_store {
                warn!(snapshot_id = %snap.id, "Ready snapshot lost its memory image");
                self.discard_capture(snap.id).await;
                snap.status = SnapshotStatus::Failed;
                snap.error_message = Some("its memory image was lost".into());
                snap.updated_at = Utc::now();
                self.meta.update_snapshot(&snap)?;
            }
        }
        a.gc_wanted.store(true, Ordering::Relaxed);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_failures_name_the_snapshot_and_the_chunk() {
        let id = Uuid::nil();
        let msg = |e: StoreError| store_failure(id, &e).to_string();
        let corrupt = msg(StoreError::Corrupt {
            hash: "ab12".into(),
        });
        assert!(
            corrupt.contains(&id.to_string())
                && corrupt.contains("chunk ab12 is corrupt")
                && corrupt.contains("failed verification")
                && corrupt.ends_with("nothing was changed"),
            "{corrupt}"
        );
        assert!(msg(StoreError::MissingBlob {
            hash: "cd34".into()
        })
        .contains("chunk cd34 is missing"));
        assert!(msg(StoreError::NotFound {
            snapshot_id: "snap-x".into()
        })
        .contains("not in the store"));
        assert_eq!(store_id(id), format!("snap-{id}"));
    }
}
