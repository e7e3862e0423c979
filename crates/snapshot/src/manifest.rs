//! The snapshot manifest: encoding, checksum and verification.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::hash::blake3_hex;
use crate::tree::{TreeError, TreeKind, TreeRef};

/// First field of every manifest.
pub const MAGIC: &str = "SBXSNAP1";
/// The only manifest format this crate reads and writes.
pub const FORMAT_VERSION: u32 = 1;
/// Manifests larger than this are refused unread.
pub const MAX_MANIFEST_BYTES: u64 = 64 * 1024 * 1024;

const CHECKSUM_PREFIX: &str = "blake3:";
const MAX_ID_LEN: usize = 128;

/// A committed snapshot: its identity, its trees and free-form metadata.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub magic: String,
    pub format_version: u32,
    pub snapshot_id: String,
    pub sandbox_id: String,
    /// RFC 3339.
    pub created_at: String,
    /// The writable layer, when the store holds it (a sandbox whose layer is a
    /// copy-on-write subvolume kept elsewhere records `None` and says where in `metadata`).
    #[serde(default)]
    pub layer: Option<TreeRef>,
    pub memory: Option<TreeRef>,
    /// Template id, resources, env names, hostname, ... Never secrets.
    pub metadata: Value,
    /// `blake3:<hex>` of the canonical JSON of everything else.
    pub checksum: String,
}

/// Why a manifest is refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ManifestError {
    #[error("manifest is {size} bytes, over the {MAX_MANIFEST_BYTES}-byte cap")]
    TooLarge { size: u64 },
    #[error("manifest is not valid JSON for this format")]
    Malformed(#[source] serde_json::Error),
    #[error("bad magic {found:?}, expected {MAGIC:?}")]
    BadMagic { found: String },
    #[error("unsupported format version {found}, expected {FORMAT_VERSION}")]
    UnsupportedVersion { found: u64 },
    #[error("checksum mismatch: recorded {recorded:?}, computed {computed:?}")]
    ChecksumMismatch { recorded: String, computed: String },
    #[error("created_at {0:?} is not an RFC 3339 timestamp")]
    BadTimestamp(String),
    #[error("snapshot id {id:?} is invalid: {reason}")]
    InvalidId { id: String, reason: &'static str },
    #[error("sandbox id is empty or longer than 256 bytes")]
    InvalidSandboxId,
    #[error("manifest names snapshot {found:?} but is stored as {expected:?}")]
    IdMismatch { expected: String, found: String },
    #[error("invalid {which} tree")]
    Tree {
        which: &'static str,
        #[source]
        source: TreeError,
    },
}

/// A snapshot id is 1 to 128 chars of `[A-Za-z0-9._-]` starting with a letter or digit
/// (it names a file).
pub fn validate_snapshot_id(id: &str) -> Result<(), ManifestError> {
    let invalid = |reason| {
        Err(ManifestError::InvalidId {
            id: id.chars().take(MAX_ID_LEN).collect(),
            reason,
        })
    };
    if id.is_empty() || id.len() > MAX_ID_LEN {
        return invalid("must be 1 to 128 characters");
    }
    if !id.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        return invalid("must start with a letter or digit");
    }
    if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return invalid("only letters, digits, '.', '_' and '-' are allowed");
    }
    Ok(())
}

impl Manifest {
    /// A sealed manifest created now.
    pub fn new(
        snapshot_id: impl Into<String>,
        sandbox_id: impl Into<String>,
        layer: Option<TreeRef>,
        memory: Option<TreeRef>,
        metadata: Value,
    ) -> Self {
        let created_at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let mut m = Manifest {
            magic: MAGIC.to_owned(),
            format_version: FORMAT_VERSION,
            snapshot_id: snapshot_id.into(),
            sandbox_id: sandbox_id.into(),
            created_at,
            layer,
            memory,
            metadata,
            checksum: String::new(),
        };
        m.seal();
        m
    }

    /// The checksum of the current content (see the crate docs).
    pub fn compute_checksum(&self) -> String {
        let mut value = serde_json::to_value(self).expect("a manifest always serializes");
        if let Value::Object(map) = &mut value {
            map.remove("checksum");
        }
        let mut canonical = Vec::new();
        write_canonical(&value, &mut canonical);
        format!("{CHECKSUM_PREFIX}{}", blake3_hex(&canonical))
    }

    /// Sets `checksum` from the current content.
    pub fn seal(&mut self) {
        self.checksum = self.compute_checksum();
    }

    /// `(hash, length)` of every chunk of both trees, duplicates included.
    pub fn blobs(&self) -> impl Iterator<Item = (&str, u64)> + '_ {
        self.layer
            .iter()
            .chain(self.memory.iter())
            .flat_map(TreeRef::blobs)
    }

    /// Checks everything but the checksum: magic, version, ids, timestamp and trees.
    pub fn validate_content(&self) -> Result<(), ManifestError> {
        if self.magic != MAGIC {
            return Err(ManifestError::BadMagic {
                found: self.magic.chars().take(32).collect(),
            });
        }
        if self.format_version != FORMAT_VERSION {
            return Err(ManifestError::UnsupportedVersion {
                found: self.format_version.into(),
            });
        }
        validate_snapshot_id(&self.snapshot_id)?;
        if self.sandbox_id.is_empty() || self.sandbox_id.len() > 256 {
            return Err(ManifestError::InvalidSandboxId);
        }
        if chrono::DateTime::parse_from_rfc3339(&self.created_at).is_err() {
            return Err(ManifestError::BadTimestamp(
                self.created_at.chars().take(64).collect(),
            ));
        }
        if let Some(layer) = &self.layer {
            layer
                .validate_as(TreeKind::Layer)
                .map_err(|source| ManifestError::Tree {
                    which: "layer",
                    source,
                })?;
        }
        if let Some(memory) = &self.memory {
            memory
                .validate_as(TreeKind::Memory)
                .map_err(|source| ManifestError::Tree {
                    which: "memory",
                    source,
                })?;
        }
        Ok(())
    }

    /// The bytes `commit` writes: compact JSON of a copy sealed with a fresh checksum.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut sealed = self.clone();
        sealed.seal();
        serde_json::to_vec(&sealed).expect("a manifest always serializes")
    }

    /// Parses and fully verifies a manifest. Magic and version are checked before the rest
    /// is interpreted, so a manifest of another format gets a precise error.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, ManifestError> {
        if bytes.len() as u64 > MAX_MANIFEST_BYTES {
            return Err(ManifestError::TooLarge {
                size: bytes.len() as u64,
            });
        }
        let value: Value = serde_json::from_slice(bytes).map_err(ManifestError::Malformed)?;
        match value.get("magic") {
            Some(Value::String(s)) if s == MAGIC => {}
            other => {
                let found = match other {
                    Some(Value::String(s)) => s.chars().take(32).collect(),
                    Some(v) => v.to_string().chars().take(32).collect(),
                    None => String::new(),
                };
                return Err(ManifestError::BadMagic { found });
            }
        }
        match value.get("format_version").and_then(Value::as_u64) {
            Some(v) if v == u64::from(FORMAT_VERSION) => {}
            other => {
                return Err(ManifestError::UnsupportedVersion {
                    found: other.unwrap_or(0),
                })
            }
        }
        let manifest: Manifest = serde_json::from_value(value).map_err(ManifestError::Malformed)?;
        let computed = manifest.compute_checksum();
        if computed != manifest.checksum {
            return Err(ManifestError::ChecksumMismatch {
                recorded: manifest.checksum.chars().take(80).collect(),
                computed,
            });
        }
        manifest.validate_content()?;
        Ok(manifest)
    }
}

/// JSON with object keys sorted and no whitespace, independent of how `serde_json` was
/// built (`preserve_order`) or how the input was laid out.
fn write_canonical(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push(b'{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_string(k, out);
                out.push(b':');
                write_canonical(&map[k], out);
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(v, out);
            }
            out.push(b']');
        }
        Value::String(s) => write_string(s, out),
        // Null, bools and numbers have a single compact form.
        other => out.extend_from_slice(other.to_string().as_bytes()),
    }
}

fn write_string(s: &str, out: &mut Vec<u8>) {
    serde_json::to_writer(out, s).expect("writing to a Vec cannot fail");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::{Entry, EntryKind};
    use serde_json::json;

    fn sample() -> Manifest {
        let root = Entry {
            path: ".".into(),
            kind: EntryKind::Dir,
            mode: 0o755,
            uid: 0,
            gid: 0,
            mtime_ns: 1,
            size: 0,
            chunks: vec![],
            target: None,
            opaque: false,
            lengths: Vec::new(),
        };
        let layer = TreeRef {
            kind: TreeKind::Layer,
            chunk_size: crate::CHUNK_SIZE,
            content_defined: false,
            entries: vec![root],
        };
        Manifest::new(
            "snap-1",
            "sb-1",
            Some(layer),
            None,
            json!({"hostname": "h", "b": [1, 2.5, null], "a": {"z": 1, "y": true}}),
        )
    }

    #[test]
    fn round_trips() {
        let m = sample();
        let back = Manifest::from_bytes(&m.to_bytes()).unwrap();
        assert_eq!(back, m);
    }

    #[test]
    fn checksum_ignores_layout_and_key_order() {
        let m = sample();
        let v: Value = serde_json::from_slice(&m.to_bytes()).unwrap();
        let pretty = serde_json::to_vec_pretty(&v).unwrap();
        assert_eq!(Manifest::from_bytes(&pretty).unwrap(), m);
    }

    #[test]
    fn typed_errors() {
        let good = sample().to_bytes();
        let truncated = &good[..good.len() / 2];
        assert!(matches!(
            Manifest::from_bytes(truncated),
            Err(ManifestError::Malformed(_))
        ));
        assert!(matches!(
            Manifest::from_bytes(b"\x00\xffgarbage"),
            Err(ManifestError::Malformed(_))
        ));

        let mut v: Value = serde_json::from_slice(&good).unwrap();
        v["magic"] = json!("NOTSNAP1");
        let bytes = serde_json::to_vec(&v).unwrap();
        assert!(matches!(
            Manifest::from_bytes(&bytes),
            Err(ManifestError::BadMagic { .. })
        ));

        let mut v: Value = serde_json::from_slice(&good).unwrap();
        v["format_version"] = json!(2);
        let bytes = serde_json::to_vec(&v).unwrap();
        assert!(matches!(
            Manifest::from_bytes(&bytes),
            Err(ManifestError::UnsupportedVersion { found: 2 })
        ));

        let mut v: Value = serde_json::from_slice(&good).unwrap();
        v["metadata"]["hostname"] = json!("evil");
        let bytes = serde_json::to_vec(&v).unwrap();
        assert!(matches!(
            Manifest::from_bytes(&bytes),
            Err(ManifestError::ChecksumMismatch { .. })
        ));

        let big = vec![b' '; MAX_MANIFEST_BYTES as usize + 1];
        assert!(matches!(
            Manifest::from_bytes(&big),
            Err(ManifestError::TooLarge { .. })
        ));
    }

    #[test]
    fn sealed_traversal_is_still_rejected() {
        let mut m = sample();
        let layer = m.layer.as_mut().unwrap();
        layer.entries.push(Entry {
            path: "../x".into(),
            ..layer.entries[0].clone()
        });
        layer.entries[1].kind = EntryKind::File;
        m.seal();
        assert!(matches!(
            Manifest::from_bytes(&m.to_bytes()),
            Err(ManifestError::Tree { .. })
        ));
    }

    #[test]
    fn snapshot_ids() {
        validate_snapshot_id("snap_1.2-x").unwrap();
        for bad in ["", ".hidden", "a/b", "../x", "a b", &"x".repeat(129)] {
            assert!(validate_snapshot_id(bad).is_err(), "{bad:?}");
        }
    }
}
