//! Black-box tests of `LocalStore` on real files in temporary directories.

mod common;

use std::fs;
use std::os::unix::fs::symlink;
use std::path::Path;

use common::*;
use sandboxd_snapshot::{
    Entry, EntryKind, LocalStore, Manifest, ManifestError, SnapshotStore, StoreError, TreeError,
    TreeKind, CDC_MAX, CDC_MIN, CHUNK_SIZE,
};

const MIB: usize = 1024 * 1024;

/// A layer-like tree: nested dirs, symlinks, empty files, a 10 MiB file, odd modes and
/// fixed mtimes (set last, so that creating children does not move them).
fn build_rich_tree(src: &Path) {
    write(&src.join("etc/hostname"), b"sandbox\n");
    write(&src.join("etc/empty.conf"), b"");
    write(&src.join("home/user/.bashrc"), b"alias ll='ls -l'\n");
    write(
        &src.join("home/user/data/big.bin"),
        &pseudo_random(10 * MIB, 1),
    );
    write(&src.join("home/user/data/deep/er/still/file.txt"), b"deep");
    write(&src.join("bin/tool"), b"#!/bin/sh\necho hi\n");
    fs::create_dir_all(src.join("var/empty-dir")).unwrap();
    symlink("../etc/hostname", src.join("home/link-rel")).unwrap();
    symlink("/does/not/exist", src.join("dangling")).unwrap();
    symlink("data", src.join("home/user/dirlink")).unwrap();
    chmod(&src.join("bin/tool"), 0o755);
    chmod(&src.join("etc/hostname"), 0o640);
    chmod(&src.join("etc/empty.conf"), 0o400);
    chmod(&src.join("var/empty-dir"), 0o1777);
    chmod(&src.join("home/user"), 0o750);
    let files = [
        "etc/hostname",
        "etc/empty.conf",
        "home/user/.bashrc",
        "home/user/data/big.bin",
        "home/user/data/deep/er/still/file.txt",
        "bin/tool",
    ];
    for (i, f) in files.iter().enumerate() {
        set_mtime(&src.join(f), 1_600_000_000 + i as u64, 123_456_789);
    }
    let dirs = [
        "home/user/data/deep/er/still",
        "home/user/data/deep/er",
        "home/user/data/deep",
        "home/user/data",
        "home/user",
        "home",
        "etc",
        "bin",
        "var/empty-dir",
        "var",
        ".",
    ];
    for (i, d) in dirs.iter().enumerate() {
        set_mtime(&src.join(d), 1_500_000_000 + i as u64, 42);
    }
}

#[test]
fn round_trip_preserves_everything() {
    let tmp = TempDir::new("roundtrip");
    let store = store(&tmp);
    let src = tmp.path().join("src");
    build_rich_tree(&src);

    let layer = store.put_tree(TreeKind::Layer, &src).unwrap();
    let big = layer
        .entries
        .iter()
        .find(|e| e.path == "home/user/data/big.bin")
        .unwrap();
    assert_eq!(big.size, 10 * MIB as u64);
    assert_eq!(big.chunks.len(), 3, "10 MiB is 3 chunks of at most 4 MiB");
    let empty = layer
        .entries
        .iter()
        .find(|e| e.path == "etc/empty.conf")
        .unwrap();
    assert!(empty.chunks.is_empty(), "an empty file needs no blob");

    let meta = serde_json::json!({"template": "python", "hostname": "h1", "env": ["PATH"]});
    let m = Manifest::new("snap-1", "sb-1", Some(layer), None, meta);
    store.commit(&m).unwrap();
    let read = store.manifest("snap-1").unwrap();
    assert_eq!(read, m);
    assert_eq!(store.list().unwrap(), vec!["snap-1".to_owned()]);

    let dest = tmp.path().join("restored");
    store
        .materialize(read.layer.as_ref().unwrap(), &dest)
        .unwrap();
    assert_eq!(describe_tree(&dest), describe_tree(&src));

    // An existing empty directory is an acceptable destination too.
    let dest2 = tmp.path().join("restored2");
    fs::create_dir(&dest2).unwrap();
    store
        .materialize(read.layer.as_ref().unwrap(), &dest2)
        .unwrap();
    assert_eq!(describe_tree(&dest2), describe_tree(&src));
    assert!(siblings_with_prefix(tmp.path(), "restored.tmp-").is_empty());

    // A non-empty destination is refused and left alone.
    let err = store
        .materialize(read.layer.as_ref().unwrap(), &dest)
        .unwrap_err();
    assert!(matches!(err, StoreError::DestNotEmpty { .. }), "{err}");
}

#[test]
fn memory_tree_with_large_images_round_trips() {
    let tmp = TempDir::new("memory");
    let store = store(&tmp);
    let src = tmp.path().join("ckpt");
    write(&src.join("checkpoint.img"), &pseudo_random(2 * MIB + 17, 7));
    write(
        &src.join("pages.img"),
        &pseudo_random(3 * CHUNK_SIZE as usize, 8),
    );
    write(&src.join("pages_meta.img"), &pseudo_random(4096, 9));
    let layer_src = tmp.path().join("upper");
    fs::create_dir(&layer_src).unwrap();

    let layer = store.put_tree(TreeKind::Layer, &layer_src).unwrap();
    let memory = store.put_tree(TreeKind::Memory, &src).unwrap();
    let pages = memory
        .entries
        .iter()
        .find(|e| e.path == "pages.img")
        .unwrap();
    assert!(memory.content_defined);
    assert_eq!(pages.lengths.len(), pages.chunks.len());
    assert_eq!(pages.lengths.iter().sum::<u64>(), 3 * CHUNK_SIZE);
    let n = pages.chunks.len() as u64;
    assert!(
        (3 * CHUNK_SIZE / CDC_MAX..=3 * CHUNK_SIZE / CDC_MIN).contains(&n),
        "{n} chunks"
    );
    let m = Manifest::new(
        "snap-mem",
        "sb-1",
        Some(layer),
        Some(memory),
        serde_json::json!(null),
    );
    store.commit(&m).unwrap();
    let read = store.manifest("snap-mem").unwrap();
    let dest = tmp.path().join("ckpt-restored");
    store
        .materialize(read.memory.as_ref().unwrap(), &dest)
        .unwrap();
    assert_eq!(describe_tree(&dest), describe_tree(&src));
}

#[test]
fn identical_content_is_stored_once() {
    let tmp = TempDir::new("dedup");
    let store = store(&tmp);
    let a = tmp.path().join("a");
    let b = tmp.path().join("b");
    let shared = pseudo_random(300_000, 1);
    write(&a.join("shared"), &shared);
    write(&a.join("copy/of/shared"), &shared);
    write(&a.join("only-a"), b"a");
    write(&b.join("elsewhere/shared"), &shared);
    write(&b.join("only-b"), b"b");

    let (_, put) = store.put_tree_counted(TreeKind::Layer, &a).unwrap();
    assert_eq!(count_blobs(&store), 2, "two copies of a file are one blob");
    assert_eq!((put.new_blobs, put.new_bytes), (2, 300_001));
    let (_, put) = store.put_tree_counted(TreeKind::Layer, &b).unwrap();
    assert_eq!(
        count_blobs(&store),
        3,
        "the second tree adds only its own file"
    );
    assert_eq!((put.new_blobs, put.new_bytes), (1, 1));
}

#[test]
fn a_small_change_in_a_big_file_adds_at_most_two_chunks() {
    let tmp = TempDir::new("chunks");
    let store = store(&tmp);
    let src = tmp.path().join("src");
    let mut data = pseudo_random(9 * MIB, 3);
    write(&src.join("big.bin"), &data);
    store.put_tree(TreeKind::Layer, &src).unwrap();
    let before = count_blobs(&store);
    assert_eq!(before, 3);

    // 1 MiB changed across the first chunk boundary: chunks 0 and 1 change, 2 does not.
    let start = 7 * MIB / 2;
    data[start..start + MIB].copy_from_slice(&pseudo_random(MIB, 4));
    write(&src.join("big.bin"), &data);
    store.put_tree(TreeKind::Layer, &src).unwrap();
    let added = count_blobs(&store) - before;
    assert_eq!(added, 2);
}

/// Two checkpoints of one sandbox differ in scattered pages, and pages shift where
/// allocations changed. Memory trees are cut by content, so neither costs more than the
/// chunks around the change.
#[test]
fn scattered_and_shifted_pages_add_only_nearby_memory_chunks() {
    let tmp = TempDir::new("pages");
    let store = store(&tmp);
    let src = tmp.path().join("ckpt");
    let data = pseudo_random(9 * MIB, 3);
    write(&src.join("pages.img"), &data);
    let first = store.put_tree(TreeKind::Memory, &src).unwrap();
    let before = count_blobs(&store);
    assert_eq!(before, first.entries[1].chunks.len());
    let stored = |s: &LocalStore| -> u64 {
        let mut total = 0;
        for d in fs::read_dir(s.root().join("blobs")).unwrap().flatten() {
            for f in fs::read_dir(d.path()).unwrap().flatten() {
                total += f.metadata().unwrap().len();
            }
        }
        total
    };
    let one = stored(&store);

    // 16 pages rewritten, spread over the file.
    let page = 4096;
    let mut changed = data.clone();
    let pages = data.len() / page;
    for i in 0..16 {
        let p = (i * pages / 16) + 3;
        changed[p * page..(p + 1) * page].copy_from_slice(&pseudo_random(page, 100 + i as u64));
    }
    write(&src.join("pages.img"), &changed);
    store.put_tree(TreeKind::Memory, &src).unwrap();
    let added = stored(&store) - one;
    assert!(
        added <= 16 * 2 * CDC_MAX,
        "16 changed pages added {added} bytes"
    );

    // Two pages inserted near the start: everything after them shifts by 8 KiB.
    let mut shifted = data[..5 * page].to_vec();
    shifted.extend_from_slice(&pseudo_random(2 * page, 77));
    shifted.extend_from_slice(&data[5 * page..]);
    write(&src.join("pages.img"), &shifted);
    let before = stored(&store);
    let third = store.put_tree(TreeKind::Memory, &src).unwrap();
    let added = stored(&store) - before;
    assert!(
        added <= 2 * CDC_MAX + 2 * page as u64,
        "a shift of two pages added {added} bytes"
    );

    // And it reads back exactly.
    store.materialize(&third, &tmp.path().join("out")).unwrap();
    assert_eq!(fs::read(tmp.path().join("out/pages.img")).unwrap(), shifted);
}

#[test]
fn corrupt_blob_fails_materialize_and_leaves_no_dest() {
    let tmp = TempDir::new("corrupt");
    let store = store(&tmp);
    let src = tmp.path().join("src");
    write(&src.join("a/first"), b"fine");
    write(&src.join("z/victim"), &pseudo_random(5000, 5));
    let m = snapshot(&store, "s1", &src);
    let victim = m
        .layer
        .as_ref()
        .unwrap()
        .entries
        .iter()
        .find(|e| e.path == "z/victim")
        .unwrap();
    let hash = victim.chunks[0].clone();
    let blob = store.blob_path(&hash);
    let mut bytes = fs::read(&blob).unwrap();
    bytes[100] ^= 0xff;
    fs::write(&blob, &bytes).unwrap();

    let dest = tmp.path().join("out");
    let err = store
        .materialize(m.layer.as_ref().unwrap(), &dest)
        .unwrap_err();
    match &err {
        StoreError::Corrupt { hash: h } => assert_eq!(h, &hash),
        other => panic!("expected Corrupt, got {other:?}"),
    }
    assert!(err.to_string().contains(&hash), "{err}");
    assert!(!dest.exists());
    assert!(siblings_with_prefix(tmp.path(), "out.tmp-").is_empty());

    // Truncated blob: also Corrupt. Missing blob: MissingBlob.
    fs::write(&blob, &bytes[..10]).unwrap();
    let err = store
        .materialize(m.layer.as_ref().unwrap(), &dest)
        .unwrap_err();
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
    fs::remove_file(&blob).unwrap();
    let err = store
        .materialize(m.layer.as_ref().unwrap(), &dest)
        .unwrap_err();
    assert!(matches!(err, StoreError::MissingBlob { .. }), "{err}");
    assert!(!dest.exists());
}

fn manifest_error(store: &LocalStore, id: &str) -> ManifestError {
    match store.manifest(id) {
        Err(StoreError::Manifest { source, .. }) => source,
        other => panic!("expected a manifest error, got {other:?}"),
    }
}

#[test]
fn damaged_manifests_are_typed_errors() {
    let tmp = TempDir::new("manifest");
    let store = store(&tmp);
    let src = tmp.path().join("src");
    write(&src.join("f"), b"x");
    snapshot(&store, "s1", &src);
    let path = store.root().join("manifests/s1.json");
    let good = fs::read(&path).unwrap();

    fs::write(&path, &good[..good.len() - 20]).unwrap();
    assert!(matches!(
        manifest_error(&store, "s1"),
        ManifestError::Malformed(_)
    ));

    fs::write(
        &path,
        String::from_utf8_lossy(&good).replace("SBXSNAP1", "SBXSNAP9"),
    )
    .unwrap();
    assert!(matches!(
        manifest_error(&store, "s1"),
        ManifestError::BadMagic { .. }
    ));

    let bumped =
        String::from_utf8_lossy(&good).replace("\"format_version\":1", "\"format_version\":7");
    fs::write(&path, bumped).unwrap();
    assert!(matches!(
        manifest_error(&store, "s1"),
        ManifestError::UnsupportedVersion { found: 7 }
    ));

    let tampered = String::from_utf8_lossy(&good).replace("sb-test", "sb-evil");
    fs::write(&path, tampered).unwrap();
    assert!(matches!(
        manifest_error(&store, "s1"),
        ManifestError::ChecksumMismatch { .. }
    ));

    let f = fs::File::create(&path).unwrap();
    f.set_len(65 * 1024 * 1024).unwrap();
    assert!(matches!(
        manifest_error(&store, "s1"),
        ManifestError::TooLarge { .. }
    ));

    // A valid manifest stored under another id's name.
    fs::write(store.root().join("manifests/s2.json"), &good).unwrap();
    assert!(matches!(
        manifest_error(&store, "s2"),
        ManifestError::IdMismatch { .. }
    ));

    assert!(matches!(
        store.manifest("nope"),
        Err(StoreError::NotFound { .. })
    ));
    assert!(matches!(
        store.manifest("../s1"),
        Err(StoreError::InvalidId(_))
    ));
}

fn file_entry(path: &str, chunks: Vec<String>, size: u64) -> Entry {
    Entry {
        path: path.into(),
        kind: EntryKind::File,
        mode: 0o644,
        uid: 0,
        gid: 0,
        mtime_ns: 0,
        size,
        chunks,
        target: None,
        opaque: false,
        lengths: Vec::new(),
    }
}

#[test]
fn path_traversal_is_rejected_before_writing() {
    let tmp = TempDir::new("traversal");
    let store = store(&tmp);
    let src = tmp.path().join("src");
    write(&src.join("f"), b"payload");
    let good = store.put_tree(TreeKind::Layer, &src).unwrap();
    let chunks = tree_blob_hashes(&good);
    let dest = tmp.path().join("work/dest");
    fs::create_dir_all(tmp.path().join("work")).unwrap();

    for bad in ["../x", "/etc/x", "a/../../x", "./x", "x//y"] {
        let mut tree = good.clone();
        tree.entries.push(file_entry(bad, chunks.clone(), 7));
        let err = store.materialize(&tree, &dest).unwrap_err();
        assert!(
            matches!(err, StoreError::InvalidTree(TreeError::InvalidPath { .. })),
            "{bad}: {err:?}"
        );
        assert!(!dest.exists());
        assert!(!tmp.path().join("work/x").exists() && !tmp.path().join("x").exists());
    }

    // A symlink pointing outside, then a file "through" it.
    let outside = tmp.path().join("outside");
    fs::create_dir(&outside).unwrap();
    let mut tree = good.clone();
    let mut link = file_entry("l", vec![], 0);
    link.kind = EntryKind::Symlink;
    link.target = Some(outside.to_string_lossy().into_owned());
    tree.entries.push(link);
    tree.entries.push(file_entry("l/pwned", chunks.clone(), 7));
    let err = store.materialize(&tree, &dest).unwrap_err();
    assert!(
        matches!(err, StoreError::InvalidTree(TreeError::ParentNotDir { .. })),
        "{err:?}"
    );
    assert!(fs::read_dir(&outside).unwrap().next().is_none());
    assert!(!dest.exists());

    // The same tree inside a sealed manifest is refused on read, and on commit.
    let mut m = Manifest::new(
        "evil",
        "sb",
        Some(good.clone()),
        None,
        serde_json::json!({}),
    );
    m.layer
        .as_mut()
        .unwrap()
        .entries
        .push(file_entry("../x", chunks, 7));
    m.seal();
    let err = store.commit(&m).unwrap_err();
    assert!(matches!(err, StoreError::Manifest { .. }), "{err:?}");
    fs::write(
        store.root().join("manifests/evil.json"),
        serde_json::to_vec(&m).unwrap(),
    )
    .unwrap();
    assert!(matches!(
        manifest_error(&store, "evil"),
        ManifestError::Tree { .. }
    ));
}

#[test]
fn commit_is_atomic_and_temp_manifests_are_ignored() {
    let tmp = TempDir::new("commit");
    let store = store(&tmp);
    let src = tmp.path().join("src");
    write(&src.join("f"), b"x");
    let m = snapshot(&store, "s1", &src);

    // A crash between temp write and link leaves a temp file: invisible, then collected.
    let leftover = store.root().join("manifests/.tmp-12345-0-deadbeef");
    fs::write(&leftover, b"{\"magic\":\"SBXSNAP1\",\"format_v").unwrap();
    assert_eq!(store.list().unwrap(), vec!["s1".to_owned()]);
    assert!(store.manifest("s1").is_ok());
    let patient = LocalStore::open(store.root()).unwrap(); // default grace: keeps it
    assert_eq!(patient.gc().unwrap().temp_files_removed, 0);
    assert!(leftover.exists());
    let stats = store.gc().unwrap();
    assert_eq!(stats.temp_files_removed, 1);
    assert!(!leftover.exists());
    assert_eq!(stats.blobs_removed, 0);

    // An id is committed once; a manifest naming a missing blob is never committed.
    let err = store.commit(&m).unwrap_err();
    assert!(matches!(err, StoreError::AlreadyExists { .. }), "{err:?}");
    let mut ghost = m.clone();
    ghost.snapshot_id = "ghost".into();
    let f = ghost
        .layer
        .as_mut()
        .unwrap()
        .entries
        .iter_mut()
        .find(|e| e.path == "f")
        .unwrap();
    f.chunks[0] = "0".repeat(64);
    let err = store.commit(&ghost).unwrap_err();
    assert!(matches!(err, StoreError::MissingBlob { .. }), "{err:?}");
    assert!(matches!(
        store.manifest("ghost"),
        Err(StoreError::NotFound { .. })
    ));
    assert_eq!(
        siblings_with_prefix(&store.root().join("manifests"), ".tmp-").len(),
        0
    );
}

#[test]
fn gc_removes_only_unreferenced_blobs() {
    let tmp = TempDir::new("gc");
    let store = store(&tmp);
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    write(&a.join("only-a"), &pseudo_random(1000, 1));
    write(&a.join("shared"), &pseudo_random(2000, 2));
    write(&b.join("shared"), &pseudo_random(2000, 2));
    write(&b.join("only-b"), &pseudo_random(3000, 3));
    let ma = snapshot(&store, "sa", &a);
    let mb = snapshot(&store, "sb", &b);
    // Stored but never committed: unreferenced.
    let c = tmp.path().join("c");
    write(&c.join("orphan"), &pseudo_random(4000, 4));
    store.put_tree(TreeKind::Layer, &c).unwrap();
    assert_eq!(count_blobs(&store), 4);

    let patient = LocalStore::open(store.root()).unwrap();
    assert_eq!(
        patient.gc().unwrap().blobs_removed,
        0,
        "young blobs are kept"
    );

    let stats = store.gc().unwrap();
    assert_eq!((stats.blobs_removed, stats.bytes_removed), (1, 4000));
    assert_eq!(stats.blobs_kept, 3);

    store.delete("sa").unwrap();
    assert!(matches!(
        store.delete("sa"),
        Err(StoreError::NotFound { .. })
    ));
    let stats = store.gc().unwrap();
    assert_eq!((stats.blobs_removed, stats.bytes_removed), (1, 1000));
    assert_eq!(count_blobs(&store), 2);
    let dest = tmp.path().join("b-restored");
    store
        .materialize(mb.layer.as_ref().unwrap(), &dest)
        .unwrap();
    assert_eq!(describe_tree(&dest), describe_tree(&b));
    let err = store
        .materialize(ma.layer.as_ref().unwrap(), &tmp.path().join("gone"))
        .unwrap_err();
    assert!(matches!(err, StoreError::MissingBlob { .. }));

    // An unreadable manifest stops gc before it deletes anything.
    fs::write(store.root().join("manifests/broken.json"), b"{").unwrap();
    assert!(matches!(store.gc(), Err(StoreError::Manifest { .. })));
    assert_eq!(count_blobs(&store), 2);
}

#[test]
fn usage_counts_logical_and_unique_bytes() {
    let tmp = TempDir::new("usage");
    let store = store(&tmp);
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    write(&a.join("one"), &pseudo_random(100, 1));
    write(&a.join("two"), &pseudo_random(200, 2));
    write(&a.join("two-again"), &pseudo_random(200, 2));
    write(&b.join("two"), &pseudo_random(200, 2));
    write(&b.join("big"), &pseudo_random(9 * MIB, 3));
    snapshot(&store, "sa", &a);
    snapshot(&store, "sb", &b);

    let ua = store.usage("sa").unwrap();
    assert_eq!(ua.logical_bytes, 500);
    assert_eq!(ua.unique_bytes_added, 100);
    let ub = store.usage("sb").unwrap();
    assert_eq!(ub.logical_bytes, 200 + 9 * MIB as u64);
    assert_eq!(ub.unique_bytes_added, 9 * MIB as u64);

    store.delete("sb").unwrap();
    assert_eq!(store.usage("sa").unwrap().unique_bytes_added, 300);
}

#[test]
fn unsupported_sources_are_refused() {
    let tmp = TempDir::new("unsupported");
    let store = store(&tmp);
    let src = tmp.path().join("src");
    fs::create_dir(&src).unwrap();
    nix::unistd::mkfifo(
        &src.join("pipe"),
        nix::sys::stat::Mode::from_bits_truncate(0o600),
    )
    .unwrap();
    let err = store.put_tree(TreeKind::Layer, &src).unwrap_err();
    assert!(
        matches!(err, StoreError::UnsupportedFileType { what: "fifo", .. }),
        "{err:?}"
    );
    let file = src.join("pipe");
    let err = store.put_tree(TreeKind::Layer, &file).unwrap_err();
    assert!(matches!(err, StoreError::NotADirectory { .. }), "{err:?}");
}
