//! Sizes of directory trees on the host.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// What a tree holds: bytes allocated on disk, and the sum of its files' sizes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DirUsage {
    pub allocated: u64,
    pub logical: u64,
}

/// Walks `dir` without following symlinks; unreadable entries are skipped.
pub fn dir_usage(dir: &Path) -> DirUsage {
    let mut u = DirUsage::default();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let Ok(md) = e.metadata() else { continue };
            u.allocated += md.blocks() * 512;
            if md.is_dir() {
                stack.push(e.path());
            } else {
                u.logical += md.size();
            }
        }
    }
    u
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_nested_files() {
        let dir = std::env::temp_dir().join(format!("fsutil-test-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("a/b")).unwrap();
        std::fs::write(dir.join("x"), vec![1u8; 5000]).unwrap();
        std::fs::write(dir.join("a/b/y"), vec![1u8; 100]).unwrap();
        let u = dir_usage(&dir);
        assert_eq!(u.logical, 5100);
        assert!(u.allocated >= 4096);
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(dir_usage(&dir), DirUsage::default());
    }
}
