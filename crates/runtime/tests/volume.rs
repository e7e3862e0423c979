//! The btrfs volume on a real loop device (needs root): quotas bite, subvolumes come and go.

use std::io::Write;

use sandboxd_runtime::volume::Volume;

#[test]
fn subvolume_quota_stops_writes_at_the_limit() {
    let dir = std::env::temp_dir().join(format!("sandboxd-volume-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let vol = Volume::open(&dir).unwrap();
    let layer = vol.create("sb1", 16 << 20).unwrap();
    assert!(layer.join("upper").is_dir() && layer.join("work").is_dir());

    let mut f = std::fs::File::create(layer.join("upper/big")).unwrap();
    let chunk = vec![7u8; 1 << 20];
    let mut written = 0usize;
    let err = loop {
        match f.write_all(&chunk).and_then(|()| f.sync_all()) {
            Ok(()) => written += chunk.len(),
            Err(e) => break e,
        }
        assert!(written <= 64 << 20, "quota never enforced");
    };
    assert_eq!(err.raw_os_error(), Some(libc_edquot()), "{err}");
    assert!(
        (8 << 20..=16 << 20).contains(&written),
        "stopped at {written}"
    );
    drop(f);

    // The qgroup figures (what the metrics sampler reads) match after a transaction commit.
    let st = std::process::Command::new("btrfs")
        .args(["filesystem", "sync"])
        .arg(&vol.mountpoint)
        .status()
        .unwrap();
    assert!(st.success());
    let u = vol.usage("sb1").expect("qgroup usage");
    assert_eq!(u.limit, Some(16 << 20));
    assert!(
        u.referenced >= written as u64 && u.referenced <= (16 << 20) + (1 << 20),
        "referenced {} after writing {written}",
        u.referenced
    );
    assert!(vol.usage("nope").is_none());

    assert_eq!(vol.ids(), ["sb1"]);
    vol.delete("sb1").unwrap();
    vol.delete("sb1").unwrap();
    assert!(vol.ids().is_empty());
    vol.close().unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

fn libc_edquot() -> i32 {
    122
}

/// Two memory images that differ in one MiB share every other block after `share_dirs`, and
/// both still read back exactly as written.
#[test]
fn equal_blocks_of_two_images_are_shared_and_contents_kept() {
    let dir = std::env::temp_dir().join(format!("sandboxd-dedupe-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let vol = Volume::open(&dir).unwrap();
    let (a, b) = (
        vol.mountpoint.join(".images/a"),
        vol.mountpoint.join(".images/b"),
    );
    std::fs::create_dir_all(&a).unwrap();
    std::fs::create_dir_all(&b).unwrap();
    // 8 MiB of non-repeating bytes (a simple LCG), then the same with MiB 3 rewritten, and a
    // file only the new image has.
    let mut x: u64 = 0x9e3779b97f4a7c15;
    let old: Vec<u8> = (0..8 << 20)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (x >> 56) as u8
        })
        .collect();
    let mut new = old.clone();
    for v in &mut new[3 << 20..4 << 20] {
        *v = v.wrapping_add(1);
    }
    std::fs::write(a.join("pages.img"), &old).unwrap();
    std::fs::write(b.join("pages.img"), &new).unwrap();
    std::fs::write(b.join("only-new.img"), b"x").unwrap();
    let sync = || {
        assert!(std::process::Command::new("btrfs")
            .args(["filesystem", "sync"])
            .arg(&vol.mountpoint)
            .status()
            .unwrap()
            .success())
    };
    sync();

    let shared = sandboxd_runtime::dedupe::share_dirs(&a, &b).unwrap();
    assert_eq!(shared, 7 << 20, "every MiB but the rewritten one");
    assert_eq!(std::fs::read(a.join("pages.img")).unwrap(), old);
    assert_eq!(std::fs::read(b.join("pages.img")).unwrap(), new);
    // On disk the two files now hold the old 8 MiB once plus the rewritten MiB.
    sync();
    let out = std::process::Command::new("btrfs")
        .args(["filesystem", "du", "-s", "--raw"])
        .arg(vol.mountpoint.join(".images"))
        .output()
        .unwrap();
    let line = String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .unwrap()
        .to_string();
    let f: Vec<u64> = line
        .split_whitespace()
        .take(3)
        .map(|v| v.parse().unwrap())
        .collect();
    // Total 16 MiB + 1 byte of files; held once: 8 MiB shared extents + 1 MiB exclusive (+ tail).
    assert!(
        f[1] + f[2] <= (9 << 20) + 8192,
        "held {} + {} of {}",
        f[1],
        f[2],
        f[0]
    );

    std::fs::remove_dir_all(&a).unwrap();
    std::fs::remove_dir_all(&b).unwrap();
    vol.close().unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}
