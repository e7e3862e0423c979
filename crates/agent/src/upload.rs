//! Resumable uploads: chunks are written at their offset straight into a temp sibling of the
//! target, which is renamed into place once it holds `total` bytes. The temp file's size is
//! the upload's offset, so nothing else needs to survive a restart of the daemon. Uploads
//! left idle for [`UPLOAD_IDLE`] are removed on the next upload call.

use std::collections::HashMap;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use crate::proto::Reply;

/// An upload nobody has written to for this long is abandoned.
pub const UPLOAD_IDLE: Duration = Duration::from_secs(30 * 60);
/// Marks a temp upload file: `.<name>.sandboxd-upload-<token>` beside the target.
pub const TEMP_MARK: &str = ".sandboxd-upload-";

/// The temp file an upload with `token` to `target` writes into.
pub fn temp_path(target: &str, token: &str) -> String {
    let p = Path::new(target);
    let name = p
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let dir = p.parent().unwrap_or(Path::new("/"));
    dir.join(format!(".{name}{TEMP_MARK}{token}"))
        .to_string_lossy()
        .into_owned()
}

/// Uploads this agent has seen, each with a lock (one chunk at a time) and its last use.
#[derive(Default)]
pub struct Uploads {
    live: Mutex<HashMap<PathBuf, Arc<Mutex<Instant>>>>,
}

/// Why a chunk was refused; becomes a `Reply::Error`.
#[derive(Debug, PartialEq)]
pub struct UploadError {
    pub code: &'static str,
    pub message: String,
}

impl From<UploadError> for Reply {
    fn from(e: UploadError) -> Reply {
        Reply::error(e.code, e.message)
    }
}

fn io(path: &Path, e: std::io::Error) -> UploadError {
    let code = match e.kind() {
        std::io::ErrorKind::NotFound => "not_found",
        std::io::ErrorKind::PermissionDenied => "permission",
        std::io::ErrorKind::IsADirectory => "is_dir",
        _ => "io",
    };
    UploadError {
        code,
        message: format!("{}: {e}", path.display()),
    }
}

/// Where a chunk at `offset` of `len` bytes lands in a temp file of `size` bytes of an
/// upload of `total`: the new size, or why it cannot be written. A chunk may overlap what
/// is there already (a resent chunk rewrites the same bytes); it may not leave a hole.
pub fn place(size: u64, offset: u64, len: u64, total: u64) -> Result<u64, UploadError> {
    if offset > size {
        return Err(UploadError {
            code: "conflict",
            message: format!("chunk at offset {offset}, but the upload has {size} bytes"),
        });
    }
    let end = offset.saturating_add(len);
    if end > total {
        return Err(UploadError {
            code: "invalid",
            message: format!("chunk ends at {end}, past the upload's length {total}"),
        });
    }
    Ok(size.max(end))
}

impl Uploads {
    fn entry(&self, temp: &Path) -> Arc<Mutex<Instant>> {
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        Arc::clone(
            live.entry(temp.to_path_buf())
                .or_insert_with(|| Arc::new(Mutex::new(Instant::now()))),
        )
    }

    /// Removes uploads idle past [`UPLOAD_IDLE`]: those this agent knows, and stale temp
    /// files in `dir` (left by an agent that restarted).
    pub fn collect(&self, dir: Option<&Path>) {
        let stale: Vec<PathBuf> = {
            let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
            let stale: Vec<PathBuf> = live
                .iter()
                .filter(|(_, e)| {
                    e.try_lock()
                        .map(|t| t.elapsed() >= UPLOAD_IDLE)
                        .unwrap_or(false)
                })
                .map(|(p, _)| p.clone())
                .collect();
            for p in &stale {
                live.remove(p);
            }
            stale
        };
        for p in stale {
            let _ = std::fs::remove_file(p);
        }
        let Some(Ok(rd)) = dir.map(std::fs::read_dir) else {
            return;
        };
        let now = SystemTime::now();
        for e in rd.flatten() {
            if !e.file_name().to_string_lossy().contains(TEMP_MARK) {
                continue;
            }
            let old = e
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|m| now.duration_since(m).ok())
                .is_some_and(|age| age >= UPLOAD_IDLE);
            if old && !self.is_live(&e.path()) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }

    fn is_live(&self, p: &Path) -> bool {
        let live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        live.contains_key(p)
    }

    /// Starts an upload: an empty temp file (parents made as needed). An upload of nothing
    /// is finished at once.
    pub fn create(&self, temp: &str, target: &str, total: u64) -> Reply {
        let temp_p = Path::new(temp);
        let dir = temp_p.parent().unwrap_or(Path::new("/"));
        self.collect(Some(dir));
        let r = (|| -> Result<bool, UploadError> {
            std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
            std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .open(temp_p)
                .map_err(|e| io(temp_p, e))?;
            self.entry(temp_p);
            if total == 0 {
                finish(temp_p, Path::new(target))?;
                self.forget(temp_p);
            }
            Ok(total == 0)
        })();
        match r {
            Ok(done) => Reply::UploadOffset { offset: 0, done },
            Err(e) => e.into(),
        }
    }

    fn forget(&self, temp: &Path) {
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        live.remove(temp);
    }

    /// Writes a chunk at `offset`; renames the temp file onto `target` once it holds `total`.
    pub fn write(&self, temp: &str, target: &str, offset: u64, total: u64, data: &[u8]) -> Reply {
        let temp_p = Path::new(temp);
        self.collect(None);
        let entry = self.entry(temp_p);
        let mut last = entry.lock().unwrap_or_else(|p| p.into_inner());
        let r = (|| -> Result<u64, UploadError> {
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(temp_p)
                .map_err(|e| io(temp_p, e))?;
            let size = f.metadata().map_err(|e| io(temp_p, e))?.len();
            let new = place(size, offset, data.len() as u64, total)?;
            f.write_all_at(data, offset).map_err(|e| io(temp_p, e))?;
            drop(f);
            if new == total {
                finish(temp_p, Path::new(target))?;
            }
            Ok(new)
        })();
        *last = Instant::now();
        drop(last);
        match r {
            Ok(new) => {
                if new == total {
                    self.forget(temp_p);
                }
                Reply::UploadOffset {
                    offset: new,
                    done: new == total,
                }
            }
            Err(e) => {
                if e.code == "not_found" {
                    self.forget(temp_p);
                }
                e.into()
            }
        }
    }
}

/// Moves a complete upload into place, keeping the permissions of a file it replaces.
fn finish(temp: &Path, target: &Path) -> Result<(), UploadError> {
    if let Ok(md) = std::fs::metadata(target) {
        if md.is_dir() {
            return Err(io(
                target,
                std::io::Error::from(std::io::ErrorKind::IsADirectory),
            ));
        }
        let mode = md.permissions().mode() & 0o7777;
        let _ = std::fs::set_permissions(temp, std::fs::Permissions::from_mode(mode));
    }
    std::fs::rename(temp, target).map_err(|e| io(target, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_may_overlap_but_not_skip() {
        assert_eq!(place(0, 0, 10, 30), Ok(10));
        assert_eq!(place(10, 0, 10, 30), Ok(10)); // a resent chunk
        assert_eq!(place(10, 5, 10, 30), Ok(15));
        assert_eq!(place(10, 11, 1, 30).unwrap_err().code, "conflict");
        assert_eq!(place(10, 10, 21, 30).unwrap_err().code, "invalid");
    }

    #[test]
    fn temp_sits_beside_the_target() {
        assert_eq!(
            temp_path("/w/a/f.bin", "ab12"),
            "/w/a/.f.bin.sandboxd-upload-ab12"
        );
    }

    #[test]
    fn upload_resumes_and_lands() {
        let dir = std::env::temp_dir().join(format!("agent-upload-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let target = dir.join("x/out.bin").to_string_lossy().into_owned();
        std::fs::create_dir_all(dir.join("x")).unwrap();
        std::fs::write(&target, "old").unwrap();
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o640)).unwrap();
        let temp = temp_path(&target, "t1");
        let u = Uploads::default();
        assert_eq!(
            u.create(&temp, &target, 6),
            Reply::UploadOffset {
                offset: 0,
                done: false
            }
        );
        assert!(matches!(
            u.write(&temp, &target, 0, 6, b"abc"),
            Reply::UploadOffset {
                offset: 3,
                done: false
            }
        ));
        // The same chunk again, then a gap: refused without harm.
        assert!(matches!(
            u.write(&temp, &target, 0, 6, b"abc"),
            Reply::UploadOffset { offset: 3, .. }
        ));
        assert!(
            matches!(u.write(&temp, &target, 4, 6, b"ef"), Reply::Error { ref code, .. } if code == "conflict")
        );
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "old");
        assert_eq!(std::fs::metadata(&temp).unwrap().len(), 3);
        assert!(matches!(
            u.write(&temp, &target, 3, 6, b"def"),
            Reply::UploadOffset {
                offset: 6,
                done: true
            }
        ));
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "abcdef");
        let mode = std::fs::metadata(&target).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o640);
        assert!(!Path::new(&temp).exists());
        // The upload is gone: a late resend is not found.
        assert!(
            matches!(u.write(&temp, &target, 3, 6, b"def"), Reply::Error { ref code, .. } if code == "not_found")
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
