//! Sandbox writable layers live on one btrfs filesystem (a sparse loop file in the data dir):
//! each sandbox gets a subvolume with a qgroup limit, which is its disk quota (`disk_gb`), and
//! a subvolume snapshot copies a layer in milliseconds whatever its size.
//!
//! Measured here: the root ext4 has no project quotas and XFS/ext4 quotas are not built into
//! this kernel; btrfs qgroups work (EDQUOT at the limit inside gVisor).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::overlay::is_mounted;
use crate::sys::run;
use crate::RuntimeError;

/// Size of the sparse volume file; blocks are only used as sandboxes write.
const VOLUME_BYTES: u64 = 256 << 30;

pub struct Volume {
    pub mountpoint: PathBuf,
    image: PathBuf,
    /// `/sys/fs/btrfs/<fsid>/qgroups` of the mounted volume, found on first use.
    qgroups: std::sync::OnceLock<Option<PathBuf>>,
}

impl Volume {
    /// Mounts `<data>/volume.img` at `<data>/vol`, creating and formatting it on first use.
    pub fn open(data_dir: &Path) -> Result<Self, RuntimeError> {
        let v = Volume {
            mountpoint: data_dir.join("vol"),
            image: data_dir.join("volume.img"),
            qgroups: std::sync::OnceLock::new(),
        };
        if is_mounted(&v.mountpoint) {
            return Ok(v);
        }
        std::fs::create_dir_all(&v.mountpoint)
            .map_err(RuntimeError::io("create volume mountpoint"))?;
        if !v.image.exists() {
            let tmp = data_dir.join("volume.img.tmp");
            let f = std::fs::File::create(&tmp).map_err(RuntimeError::io("create volume image"))?;
            f.set_len(VOLUME_BYTES)
                .map_err(RuntimeError::io("size volume image"))?;
            drop(f);
            run(
                "mkfs.btrfs",
                Command::new("mkfs.btrfs").args(["-q", "-f"]).arg(&tmp),
                None,
            )?;
            std::fs::rename(&tmp, &v.image).map_err(RuntimeError::io("commit volume image"))?;
        }
        run(
            "mount volume",
            Command::new("mount")
                .args(["-o", "loop,noatime"])
                .arg(&v.image)
                .arg(&v.mountpoint),
            None,
        )?;
        run(
            "btrfs quota enable",
            Command::new("btrfs")
                .args(["quota", "enable"])
                .arg(&v.mountpoint),
            None,
        )?;
        Ok(v)
    }

    pub fn subvolume(&self, id: &str) -> PathBuf {
        self.mountpoint.join(id)
    }

    /// Creates the sandbox's subvolume with `upper/` and `work/`, limited to `limit_bytes`.
    pub fn create(&self, id: &str, limit_bytes: u64) -> Result<PathBuf, RuntimeError> {
        let sv = self.subvolume(id);
        if !sv.exists() {
            run(
                "btrfs subvolume create",
                Command::new("btrfs")
                    .args(["-q", "subvolume", "create"])
                    .arg(&sv),
                None,
            )?;
        }
        self.limit(id, limit_bytes)?;
        for d in ["upper", "work"] {
            std::fs::create_dir_all(sv.join(d)).map_err(RuntimeError::io("create layer dirs"))?;
        }
        Ok(sv)
    }

    pub fn limit(&self, id: &str, limit_bytes: u64) -> Result<(), RuntimeError> {
        run(
            "btrfs qgroup limit",
            Command::new("btrfs")
                .args(["qgroup", "limit", &limit_bytes.to_string()])
                .arg(self.subvolume(id)),
            None,
        )
        .map(|_| ())
    }

    /// Bytes sandbox `id`'s subvolume references and its limit, from its qgroup (cheap: no
    /// walk). `None` if the subvolume or the qgroup is not there.
    pub fn usage(&self, id: &str) -> Option<crate::qgroup::QgroupUsage> {
        let dir = self
            .qgroups
            .get_or_init(|| crate::qgroup::qgroups_dir(&self.mountpoint).ok())
            .as_ref()?;
        crate::qgroup::usage(dir, &self.subvolume(id))
    }

    /// Deletes the sandbox's subvolume (and everything in it). Idempotent.
    pub fn delete(&self, id: &str) -> Result<(), RuntimeError> {
        let sv = self.subvolume(id);
        if sv.exists() {
            run(
                "btrfs subvolume delete",
                Command::new("btrfs")
                    .args(["-q", "subvolume", "delete"])
                    .arg(&sv),
                None,
            )?;
        }
        Ok(())
    }

    /// Ids that have a subvolume.
    pub fn ids(&self) -> Vec<String> {
        std::fs::read_dir(&self.mountpoint)
            .map(|rd| {
                rd.filter_map(Result::ok)
                    .filter_map(|e| e.file_name().to_str().map(str::to_string))
                    .filter(|n| !n.starts_with('.'))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Where captured layers are kept: `<vol>/.layers/<name>`.
    pub fn layer_path(&self, name: &str) -> PathBuf {
        self.mountpoint.join(".layers").join(name)
    }

    /// A read-only snapshot of sandbox `id`'s subvolume at `dest` (copy-on-write, ~ms).
    pub fn capture(&self, id: &str, dest: &Path) -> Result<(), RuntimeError> {
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent).map_err(RuntimeError::io("create layers dir"))?;
        }
        run(
            "btrfs subvolume snapshot",
            Command::new("btrfs")
                .args(["-q", "subvolume", "snapshot", "-r"])
                .arg(self.subvolume(id))
                .arg(dest),
            None,
        )
        .map(|_| ())
    }

    /// Makes sandbox `id`'s subvolume a writable copy of layer `src`, limited to `limit_bytes`.
    /// An existing subvolume of `id` is replaced.
    pub fn clone_layer(&self, src: &Path, id: &str, limit_bytes: u64) -> Result<(), RuntimeError> {
        self.delete(id)?;
        run(
            "btrfs subvolume snapshot",
            Command::new("btrfs")
                .args(["-q", "subvolume", "snapshot"])
                .arg(src)
                .arg(self.subvolume(id)),
            None,
        )?;
        self.limit(id, limit_bytes)
    }

    /// Deletes a captured layer. Idempotent.
    pub fn delete_layer(&self, path: &Path) -> Result<(), RuntimeError> {
        if path.exists() {
            run(
                "btrfs subvolume delete",
                Command::new("btrfs")
                    .args(["-q", "subvolume", "delete"])
                    .arg(path),
                None,
            )?;
        }
        Ok(())
    }

    /// Unmounts the volume (the loop device goes with it).
    pub fn close(&self) -> Result<(), RuntimeError> {
        if is_mounted(&self.mountpoint) {
            run(
                "umount volume",
                Command::new("umount").arg(&self.mountpoint),
                None,
            )?;
        }
        Ok(())
    }
}
