//! The template catalogue: read-only root filesystems sandboxes start from.
//!
//! A template is usable (`active`) once its directory holds the `.sbx-template-ok` marker,
//! which the build script writes last before an atomic rename. Missing templates are built in
//! the background by the same script that `scripts/build-templates` ships.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use tokio::sync::Mutex;
use tracing::{info, warn};

const MARKER: &str = ".sbx-template-ok";
const BUILD_SCRIPT: &str = include_str!("../../../scripts/build-templates");

/// A catalogue entry.
#[derive(Debug, Clone, PartialEq)]
pub struct Template {
    pub id: &'static str,
    pub name: &'static str,
    pub description: &'static str,
    /// The image name shown on sandboxes created from it.
    pub image: &'static str,
    /// Other names clients use for it (the Leap0 SDK default is `system/debian:bookworm`).
    pub aliases: &'static [&'static str],
}

pub const CATALOGUE: &[Template] = &[
    Template {
        id: "sb-debian-12-python",
        name: "debian-12-python",
        description: "Debian 12 (bookworm) minbase with python3 and ca-certificates",
        image: "docker.io/library/debian:bookworm",
        aliases: &[
            "system/debian:bookworm",
            "debian",
            "debian:bookworm",
            "python",
        ],
    },
    Template {
        id: "sb-busybox",
        name: "busybox",
        description: "BusyBox static userland: the smallest, fastest sandbox",
        image: "docker.io/library/busybox:latest",
        aliases: &["system/busybox", "busybox"],
    },
];

/// The template a request gets when it names none.
pub const DEFAULT_TEMPLATE: &str = "sb-debian-12-python";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TemplateStatus {
    Active,
    /// Not built (yet); creating from it is refused.
    Disabled,
}

pub struct Templates {
    dir: PathBuf,
    build_lock: Arc<Mutex<()>>,
}

impl Templates {
    pub fn new(dir: PathBuf) -> Self {
        Templates {
            dir,
            build_lock: Arc::new(Mutex::new(())),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Finds a template by id or alias.
    pub fn lookup(&self, name: &str) -> Option<&'static Template> {
        CATALOGUE
            .iter()
            .find(|t| t.id == name || t.name == name || t.aliases.contains(&name))
    }

    pub fn rootfs(&self, t: &Template) -> PathBuf {
        self.dir.join(t.id)
    }

    pub fn status(&self, t: &Template) -> TemplateStatus {
        if self.rootfs(t).join(MARKER).is_file() {
            TemplateStatus::Active
        } else {
            TemplateStatus::Disabled
        }
    }

    /// When the template was built (the marker's contents), for `created_at`.
    pub fn built_at(&self, t: &Template) -> Option<DateTime<Utc>> {
        let s = std::fs::read_to_string(self.rootfs(t).join(MARKER)).ok()?;
        DateTime::parse_from_rfc3339(s.trim())
            .ok()
            .map(|d| d.with_timezone(&Utc))
    }

    /// Builds every missing template, one at a time. Busybox first: it takes a second.
    pub async fn build_missing(&self) {
        let _guard = self.build_lock.lock().await;
        for t in CATALOGUE.iter().rev() {
            if self.status(t) == TemplateStatus::Active {
                continue;
            }
            info!(template = t.id, "building template");
            let out = tokio::process::Command::new("bash")
                .arg("-c")
                .arg(BUILD_SCRIPT)
                .arg("build-templates")
                .arg(&self.dir)
                .env("SBX_TEMPLATES", t.id)
                .kill_on_drop(true)
                .output()
                .await;
            match out {
                Ok(o) if o.status.success() => info!(template = t.id, "template ready"),
                Ok(o) => warn!(
                    template = t.id,
                    stderr = %String::from_utf8_lossy(&o.stderr).chars().rev().take(1500).collect::<String>().chars().rev().collect::<String>(),
                    "template build failed"
                ),
                Err(e) => warn!(template = t.id, error = %e, "template build could not start"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_by_id_and_alias() {
        let t = Templates::new(PathBuf::from("/nonexistent"));
        assert_eq!(t.lookup("sb-busybox").unwrap().id, "sb-busybox");
        assert_eq!(
            t.lookup("system/debian:bookworm").unwrap().id,
            "sb-debian-12-python"
        );
        assert!(t.lookup("sb-nope").is_none());
        assert_eq!(
            t.status(t.lookup("sb-busybox").unwrap()),
            TemplateStatus::Disabled
        );
    }

    #[test]
    fn ids_match_the_spec_pattern() {
        for t in CATALOGUE {
            assert!(t.id.starts_with("sb-"));
            assert!(t.id[3..]
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-'));
        }
    }
}
