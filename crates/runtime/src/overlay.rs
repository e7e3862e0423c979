//! The sandbox root filesystem: an overlayfs mount with the template as its read-only lower
//! layer and a per-sandbox upper dir, so the sandbox's writes are plain files on the host.

use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};

use crate::RuntimeError;

/// Where one sandbox's pieces live: `dir` (rootfs mountpoint, bundle, logs) in the data dir,
/// `layer` (overlay upper and work dirs) in its subvolume on the btrfs volume.
pub(crate) struct Layout {
    pub dir: PathBuf,
    pub layer: PathBuf,
}

impl Layout {
    pub fn upper(&self) -> PathBuf {
        self.layer.join("upper")
    }
    pub fn work(&self) -> PathBuf {
        self.layer.join("work")
    }
    pub fn rootfs(&self) -> PathBuf {
        self.dir.join("rootfs")
    }
    pub fn bundle(&self) -> PathBuf {
        self.dir.join("bundle")
    }
}

pub(crate) fn is_mounted(path: &Path) -> bool {
    let Ok(mounts) = std::fs::read_to_string("/proc/self/mounts") else {
        return false;
    };
    let p = path.to_string_lossy();
    mounts.lines().any(|l| l.split(' ').nth(1) == Some(&p))
}

pub(crate) fn mount_rootfs(layout: &Layout, lower: &Path) -> Result<(), RuntimeError> {
    for d in [
        layout.upper(),
        layout.work(),
        layout.rootfs(),
        layout.bundle(),
    ] {
        std::fs::create_dir_all(&d).map_err(RuntimeError::io(format!("create {}", d.display())))?;
    }
    if is_mounted(&layout.rootfs()) {
        return Ok(());
    }
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.display(),
        layout.upper().display(),
        layout.work().display()
    );
    mount(
        Some("overlay"),
        &layout.rootfs(),
        Some("overlay"),
        MsFlags::empty(),
        Some(opts.as_str()),
    )
    .map_err(|e| RuntimeError::Io {
        what: "mount overlay rootfs".into(),
        source: std::io::Error::from(e),
    })
}

pub(crate) fn unmount_rootfs(layout: &Layout) -> Result<(), RuntimeError> {
    if is_mounted(&layout.rootfs()) {
        umount2(&layout.rootfs(), MntFlags::MNT_DETACH).map_err(|e| RuntimeError::Io {
            what: "unmount rootfs".into(),
            source: std::io::Error::from(e),
        })?;
    }
    Ok(())
}
