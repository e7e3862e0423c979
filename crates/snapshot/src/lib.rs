//! Content-addressed snapshot store for sandboxd.
//!
//! A sandbox snapshot is two directory trees and a manifest:
//!
//! * the **layer**: the sandbox's writable overlayfs upper directory (regular files,
//!   directories, symlinks, overlay whiteouts and the `trusted.overlay.opaque` xattr);
//! * optionally the **memory**: a gVisor checkpoint image directory (`checkpoint.img`,
//!   `pages.img`, `pages_meta.img`, ...), often hundreds of MiB.
//!
//! Both are stored as content-addressed blobs, so an identical file or chunk shared by
//! several snapshots is stored once. [`SnapshotStore`] is the seam; [`LocalStore`] is the
//! implementation over a local directory.
//!
//! # On-disk format (format version 1)
//!
//! ```text
//! <root>/
//!   blobs/<hh>/<hash>          one blob: raw bytes, no header; <hh> = first 2 chars of <hash>
//!   blobs/<hh>/.tmp-<unique>   a blob being written (renamed to <hash> when complete)
//!   manifests/<id>.json        one committed snapshot
//!   manifests/.tmp-<unique>    a manifest being committed (never read; removed by gc)
//! ```
//!
//! **Blobs.** `<hash>` is the lowercase hex BLAKE3 of the blob's bytes (64 chars). A
//! blob is written to a `.tmp-` name in its directory and hard-linked into place (which
//! fails if another writer got there first), then the temp name is removed; an existing
//! blob is not rewritten (its mtime is refreshed instead, see *GC* below). Every read
//! checks the blob's length and hash; a mismatch is [`StoreError::Corrupt`].
//!
//! **Chunking.** Layer trees cut a regular file into fixed-size chunks of the tree's
//! `chunk_size` `C` ([`CHUNK_SIZE`], 4 MiB, omitted when so; a power of two from 4 KiB to
//! 4 MiB): chunk `i` covers bytes `[i*C, min((i+1)*C, size))` and is one blob, so a file of
//! `size` bytes has exactly `ceil(size / C)` chunks, which is checked on read; an empty
//! file has none. Memory trees (`"content_defined": true`) are cut by content with
//! FastCDC (min [`CDC_MIN`] 16 KiB, average [`MEMORY_CHUNK_SIZE`] 64 KiB, max [`CDC_MAX`]
//! 256 KiB): between two checkpoints of one sandbox `pages.img` changes in scattered pages
//! and shifts by whole pages where allocations changed, and content-defined cuts find the
//! unchanged runs again where fixed offsets would not. Each file entry of such a tree
//! records its chunks' `lengths`, which must add up to its size.
//!
//! **Manifest.** `manifests/<id>.json` is one JSON object (UTF-8, at most
//! [`MAX_MANIFEST_BYTES`] = 64 MiB, no unknown fields):
//!
//! ```json
//! { "magic": "SBXSNAP1", "format_version": 1,
//!   "snapshot_id": "snap-1", "sandbox_id": "sb-1",
//!   "created_at": "2025-01-01T00:00:00.000Z",
//!   "layer":  { "kind": "layer",  "entries": [ ... ] } | null,
//!   "memory": { "kind": "memory", "chunk_size": 65536, "entries": [ ... ] } | null,
//!   "metadata": <any JSON value>,
//!   "checksum": "blake3:<hex>" }
//! ```
//!
//! `checksum` is the BLAKE3 of the *canonical JSON* of the manifest without its
//! `checksum` key, where canonical JSON is the manifest as this crate serializes it, then
//! written with object keys sorted by byte order, no insignificant whitespace, strings
//! escaped as `serde_json` does and numbers in their shortest round-trip form. A reader
//! rejects, as a typed [`ManifestError`]: a file over the size cap, invalid JSON, a
//! `magic` other than [`MAGIC`], a `format_version` other than [`FORMAT_VERSION`], a
//! checksum mismatch, a `snapshot_id` that differs from the file name, and any invalid
//! tree (below).
//!
//! `layer` is null (or absent) when the layer is kept outside the store, as sandboxd
//! does: its layers are read-only btrfs subvolumes, copy-on-write at block level, and
//! `metadata` names the subvolume.
//!
//! **Trees.** A [`TreeRef`] is `{ "kind": "layer"|"memory", "chunk_size"?, "entries": [Entry...] }`.
//! Each [`Entry`] is
//! `{ path, kind: "file"|"dir"|"symlink"|"whiteout", mode, uid, gid, mtime_ns, size,
//! chunks?, target?, opaque? }` where `mode` is the permission bits (`& 0o7777`),
//! `mtime_ns` nanoseconds since the Unix epoch, `size` the file length (0 for anything
//! but a file), `chunks` the file's chunk hashes in order, `target` a symlink's target
//! and `opaque` whether a directory carries `trusted.overlay.opaque=y`. Omitted optional
//! fields mean empty / none / false. Rules, all checked before anything is written:
//!
//! * `path` is `"."` (the tree root, allowed only as the first entry, kind `dir`) or a
//!   relative `/`-separated path of non-empty components other than `.` and `..`, with no
//!   NUL byte, at most 4096 bytes.
//! * No path appears twice; each entry's parent directory appears earlier as a `dir`
//!   entry (or is the root). A symlink can therefore never be a parent, so a tree cannot
//!   write outside its destination.
//! * Whiteouts (char device 0:0) appear only in `layer` trees; `opaque` only on dirs.
//!
//! **Commit.** `commit` checks that every referenced blob exists, flushes the store's
//! file system (`syncfs`), writes the manifest to `manifests/.tmp-<unique>`, fsyncs it,
//! hard-links it to `<id>.json` (atomic, and fails if the id is taken), removes the temp
//! name and fsyncs `manifests/`. A snapshot exists exactly when `<id>.json` exists.
//!
//! **GC.** `gc` reads every manifest (and stops, deleting nothing, if one is unreadable),
//! then removes blobs that no manifest references and leftover `.tmp-` files, but only
//! those whose mtime is older than the store's grace period (default one hour). The
//! grace period protects blobs written by a `put_tree` whose `commit` has not happened yet,
//! including in other processes.
//!
//! **Materialize.** A tree is recreated in a fresh sibling directory `<dest>.tmp-<unique>`
//! and renamed onto `dest` (which must be absent or an empty directory) only when
//! complete; on any error the temporary directory is removed and `dest` is untouched.
//! Files are created with `O_CREAT|O_EXCL|O_NOFOLLOW`; ownership is restored when it
//! differs from the caller's (or always when running as root). Whiteouts are `mknod`ed
//! (unprivileged since Linux 5.8, `CAP_MKNOD` before); the opaque xattr needs
//! `CAP_SYS_ADMIN`. A missing privilege is [`StoreError::NeedsPrivilege`]. Hard links are stored as separate files (their content is shared).

mod error;
mod hash;
mod local;
mod manifest;
mod sys;
mod tree;

#[cfg(test)]
mod testutil;

use std::path::Path;

use serde::{Deserialize, Serialize};

pub use error::StoreError;
pub use hash::blake3_hex;
pub use local::LocalStore;
pub use manifest::{
    validate_snapshot_id, Manifest, ManifestError, FORMAT_VERSION, MAGIC, MAX_MANIFEST_BYTES,
};
pub use tree::{
    Entry, EntryKind, TreeError, TreeKind, TreeRef, CDC_MAX, CDC_MIN, CHUNK_SIZE,
    MEMORY_CHUNK_SIZE, MIN_CHUNK_SIZE,
};

/// Space accounting for one snapshot.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Sum of the sizes of all files in the layer and memory trees.
    pub logical_bytes: u64,
    /// Bytes of the distinct blobs that this snapshot references and no other committed
    /// snapshot does: what deleting it (then running gc) would free.
    pub unique_bytes_added: u64,
}

/// What one `put_tree` wrote: the blobs that were not stored yet.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PutStats {
    /// Blobs written.
    pub new_blobs: u64,
    /// Their bytes: what the tree added to the store.
    pub new_bytes: u64,
}

/// What one garbage collection did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GcStats {
    /// Blobs kept (referenced, or too young to collect).
    pub blobs_kept: u64,
    /// Unreferenced blobs removed.
    pub blobs_removed: u64,
    /// Bytes of the removed blobs.
    pub bytes_removed: u64,
    /// Leftover temporary blob and manifest files removed.
    pub temp_files_removed: u64,
}

/// Where snapshots live. One implementation per backend (local directory now,
/// S3-compatible later).
pub trait SnapshotStore: Send + Sync {
    /// Walks `src` (without following symlinks), stores its content as blobs and returns
    /// the tree's description. Nothing refers to the blobs until a manifest is committed.
    fn put_tree(&self, kind: TreeKind, src: &Path) -> Result<TreeRef, StoreError> {
        self.put_tree_counted(kind, src).map(|(tree, _)| tree)
    }

    /// [`SnapshotStore::put_tree`], also saying which blobs were new to the store.
    fn put_tree_counted(
        &self,
        kind: TreeKind,
        src: &Path,
    ) -> Result<(TreeRef, PutStats), StoreError>;

    /// Atomically commits `manifest` (sealed with a fresh checksum) under its snapshot id.
    /// Fails with [`StoreError::AlreadyExists`] if the id is taken.
    fn commit(&self, manifest: &Manifest) -> Result<(), StoreError>;

    /// Reads and verifies a committed manifest.
    fn manifest(&self, snapshot_id: &str) -> Result<Manifest, StoreError>;

    /// Recreates `tree` at `dest`, which must not exist or be an empty directory. On error
    /// `dest` is left as it was.
    fn materialize(&self, tree: &TreeRef, dest: &Path) -> Result<(), StoreError>;

    /// Removes a snapshot's manifest; its blobs go at the next [`SnapshotStore::gc`].
    fn delete(&self, snapshot_id: &str) -> Result<(), StoreError>;

    /// Removes blobs that no committed manifest references.
    fn gc(&self) -> Result<GcStats, StoreError>;

    /// Space used by one snapshot.
    fn usage(&self, snapshot_id: &str) -> Result<Usage, StoreError>;

    /// Ids of the committed snapshots, sorted.
    fn list(&self) -> Result<Vec<String>, StoreError>;
}
