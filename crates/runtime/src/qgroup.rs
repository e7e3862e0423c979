//! A subvolume's disk usage from its btrfs qgroup: `referenced` and `max_referenced` under
//! `/sys/fs/btrfs/<fsid>/qgroups/0_<subvolume id>`. Two small sysfs reads, where a walk of the
//! layer would cost time proportional to its file count. Btrfs updates the figures when it
//! commits a transaction (every 30 s by default, or on sync), so they trail writes by that much.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// `_IOWR(0x94, 18, struct btrfs_ioctl_ino_lookup_args)` (4096 bytes).
const BTRFS_IOC_INO_LOOKUP: libc::c_ulong = 0xD000_9412;
/// `_IOR(0x94, 31, struct btrfs_ioctl_fs_info_args)` (1024 bytes).
const BTRFS_IOC_FS_INFO: libc::c_ulong = 0x8400_941F;
/// The objectid of a subvolume's root directory.
const FIRST_FREE_OBJECTID: u64 = 256;

#[repr(C)]
struct InoLookupArgs {
    treeid: u64,
    objectid: u64,
    name: [u8; 4080],
}

/// Bytes a subvolume references, and its qgroup limit (`None`: unlimited).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QgroupUsage {
    pub referenced: u64,
    pub limit: Option<u64>,
}

/// The id of the subvolume `dir` is in.
pub fn subvolume_id(dir: &Path) -> std::io::Result<u64> {
    let f = File::open(dir)?;
    let mut args = InoLookupArgs {
        treeid: 0,
        objectid: FIRST_FREE_OBJECTID,
        name: [0; 4080],
    };
    // SAFETY: BTRFS_IOC_INO_LOOKUP reads and writes exactly one `btrfs_ioctl_ino_lookup_args`
    // (4096 bytes, the layout of `InoLookupArgs`) through the pointer, which is valid and
    // exclusive for the call; the fd is open for its duration.
    let rc = unsafe { libc::ioctl(f.as_raw_fd(), BTRFS_IOC_INO_LOOKUP, &mut args) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(args.treeid)
}

/// `/sys/fs/btrfs/<fsid>/qgroups` of the btrfs filesystem `path` is on.
pub fn qgroups_dir(path: &Path) -> std::io::Result<PathBuf> {
    let f = File::open(path)?;
    let mut buf = [0u8; 1024];
    // SAFETY: BTRFS_IOC_FS_INFO fills one 1024-byte `btrfs_ioctl_fs_info_args`; `buf` is that
    // size, zeroed (no optional fields requested), valid and exclusive for the call.
    let rc = unsafe { libc::ioctl(f.as_raw_fd(), BTRFS_IOC_FS_INFO, buf.as_mut_ptr()) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(PathBuf::from("/sys/fs/btrfs")
        .join(format_uuid(&buf[16..32]))
        .join("qgroups"))
}

fn format_uuid(b: &[u8]) -> String {
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

fn read_u64(p: &Path) -> Option<u64> {
    std::fs::read_to_string(p).ok()?.trim().parse().ok()
}

/// The qgroup figures of subvolume `subvol`, given its filesystem's qgroups dir.
pub fn usage(qgroups: &Path, subvol: &Path) -> Option<QgroupUsage> {
    let id = subvolume_id(subvol).ok()?;
    let dir = qgroups.join(format!("0_{id}"));
    let referenced = read_u64(&dir.join("referenced"))?;
    let limit = read_u64(&dir.join("max_referenced")).filter(|l| *l > 0);
    Some(QgroupUsage { referenced, limit })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_fsid() {
        let b: Vec<u8> = (0u8..16).collect();
        assert_eq!(format_uuid(&b), "00010203-0405-0607-0809-0a0b0c0d0e0f");
    }

    #[test]
    fn ioctl_sizes_match_the_kernel() {
        assert_eq!(std::mem::size_of::<InoLookupArgs>(), 4096);
        assert_eq!((BTRFS_IOC_INO_LOOKUP >> 16) & 0x3fff, 4096);
        assert_eq!((BTRFS_IOC_FS_INFO >> 16) & 0x3fff, 1024);
    }

    #[test]
    fn not_btrfs_is_an_error_not_a_panic() {
        assert!(subvolume_id(Path::new("/proc")).is_err());
        assert!(usage(Path::new("/nonexistent"), Path::new("/proc")).is_none());
    }
}
