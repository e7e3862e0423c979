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
