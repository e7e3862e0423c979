//! Who owns a sandbox's host-wide objects (netns `sbx-<short>`, veth `s-<short>`, nft objects
//! `eg-<short>*`, cgroups `sandboxd/<short>`): `/run/sandboxd/owners/<short>` names the data
//! dir of the daemon that made them. A daemon that starts removes the objects of owners whose
//! data dir no longer exists (a daemon killed and its data dir deleted), and never those of a
//! data dir that is still there, whichever daemon runs it.

use std::path::{Path, PathBuf};

const DIR: &str = "/run/sandboxd/owners";

fn file(short: &str) -> PathBuf {
    Path::new(DIR).join(short)
}

/// Records that `data_dir` owns the objects of `short`.
pub(crate) fn record(short: &str, data_dir: &Path) {
    let _ = std::fs::create_dir_all(DIR);
    let tmp = file(&format!(".{short}.tmp"));
    if std::fs::write(&tmp, data_dir.as_os_str().as_encoded_bytes()).is_ok() {
        let _ = std::fs::rename(&tmp, file(short));
    }
}

pub(crate) fn forget(short: &str) {
    let _ = std::fs::remove_file(file(short));
}

/// The shorts whose recorded owner (data dir) no longer exists.
pub(crate) fn orphans() -> Vec<String> {
    let Ok(rd) = std::fs::read_dir(DIR) else {
        return Vec::new();
    };
    rd.filter_map(Result::ok)
        .filter_map(|e| {
            let short = e.file_name().to_str()?.to_string();
            if short.starts_with('.') {
                return None;
            }
            let owner = std::fs::read_to_string(e.path()).ok()?;
            orphaned(Path::new(owner.trim())).then_some(short)
        })
        .collect()
}

/// An owner is gone when its data dir is: not a directory any more.
fn orphaned(data_dir: &Path) -> bool {
    !data_dir.is_dir()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_owner_is_gone_only_without_its_data_dir() {
        let d = std::env::temp_dir().join(format!("owners-test-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        assert!(!orphaned(&d));
        std::fs::remove_dir(&d).unwrap();
        assert!(orphaned(&d));
    }
}
