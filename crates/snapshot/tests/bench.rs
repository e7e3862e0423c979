//! Hand-run micro-benchmark:
//! `cargo test -p sandboxd-snapshot --release --test bench -- --ignored --nocapture`

mod common;

use std::time::Instant;

use common::*;
use sandboxd_snapshot::{Manifest, SnapshotStore, TreeKind};

/// put_tree of 100 MiB in 5,000 small files (fresh store, so every blob is written),
/// then again (all deduplicated), then materialize.
#[test]
#[ignore = "benchmark; run by hand with --ignored --nocapture"]
fn put_tree_100mib_5000_files() {
    const FILES: usize = 5000;
    const TOTAL: usize = 100 * 1024 * 1024;
    let tmp = TempDir::new("bench");
    let store = store(&tmp);
    let src = tmp.path().join("src");
    let data = pseudo_random(TOTAL + FILES, 42);
    let per = TOTAL / FILES;
    for i in 0..FILES {
        // Distinct content per file: shift the window by one byte each time.
        let path = src.join(format!("d{:02}/f{i:05}", i % 50));
        write(&path, &data[i * per + i..(i + 1) * per + i]);
    }

    let t = Instant::now();
    let layer = store.put_tree(TreeKind::Layer, &src).unwrap();
    let cold = t.elapsed();
    assert_eq!(count_blobs(&store), FILES);

    let t = Instant::now();
    store.put_tree(TreeKind::Layer, &src).unwrap();
    let warm = t.elapsed();

    let t = Instant::now();
    store
        .commit(&Manifest::new(
            "bench",
            "sb",
            Some(layer.clone()),
            None,
            serde_json::json!({}),
        ))
        .unwrap();
    let commit = t.elapsed();

    let t = Instant::now();
    store.materialize(&layer, &tmp.path().join("out")).unwrap();
    let restore = t.elapsed();

    let mib = (FILES * per) as f64 / (1024.0 * 1024.0);
    println!(
        "put_tree {mib:.0} MiB / {FILES} files: cold {cold:?} ({:.0} MiB/s), \
         dedup {warm:?}; commit {commit:?}; materialize {restore:?}",
        mib / cold.as_secs_f64()
    );
}

/// A 256 MiB checkpoint image (a memory tree: chunks cut by content): put_tree into an
/// empty store, again with 1 MiB of scattered pages changed, then materialize (every chunk
/// read and verified).
#[test]
#[ignore = "benchmark; run by hand with --ignored --nocapture"]
fn memory_image_256mib() {
    const TOTAL: usize = 256 * 1024 * 1024;
    let tmp = TempDir::new("bench-mem");
    let store = store(&tmp);
    let src = tmp.path().join("ckpt");
    let mut data = pseudo_random(TOTAL, 7);
    write(&src.join("pages.img"), &data);
    write(&src.join("checkpoint.img"), &pseudo_random(3 << 20, 8));

    let t = Instant::now();
    let first = store.put_tree(TreeKind::Memory, &src).unwrap();
    let cold = t.elapsed();
    for i in 0..256 {
        let p = i * (TOTAL / 4096 / 256) + 1;
        data[p * 4096..(p + 1) * 4096].copy_from_slice(&pseudo_random(4096, 1000 + i as u64));
    }
    write(&src.join("pages.img"), &data);
    let blobs = count_blobs(&store);
    let t = Instant::now();
    let second = store.put_tree(TreeKind::Memory, &src).unwrap();
    let warm = t.elapsed();
    let added = count_blobs(&store) - blobs;
    store
        .commit(&Manifest::new(
            "m1",
            "sb",
            None,
            Some(first),
            serde_json::json!({}),
        ))
        .unwrap();
    let t = Instant::now();
    store.materialize(&second, &tmp.path().join("out")).unwrap();
    let restore = t.elapsed();
    println!(
        "memory image 259 MiB: put_tree cold {cold:?}, after 1 MiB of scattered pages {warm:?} \
         (+{added} blobs); materialize {restore:?}"
    );
}
