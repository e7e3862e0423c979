//! The embedded SQLite implementation of [`MetaStore`].

use std::path::Path;
use std::sync::Mutex;

use rusqlite::{params, Connection, OptionalExtension};
use sandboxd_core::{NetSlot, PreviewUrl, Sandbox, SandboxId, Snapshot, Tenant};

use crate::{KeyRecord, MetaError, MetaStore, Page};

/// Schema steps, applied in order; `PRAGMA user_version` records how many ran.
const MIGRATIONS: &[&str] = &[
    // 1: keys and sandboxes.
    "CREATE TABLE api_keys (
        id TEXT PRIMARY KEY,
        org TEXT NOT NULL,
        project TEXT,
        secret_sha256 TEXT NOT NULL,
        created_at TEXT NOT NULL
     );
     CREATE TABLE sandboxes (
        id TEXT PRIMARY KEY,
        org TEXT NOT NULL,
        project TEXT NOT NULL,
        name TEXT NOT NULL,
        slot INTEGER UNIQUE,
        created_at TEXT NOT NULL,
        record TEXT NOT NULL,
        UNIQUE (org, project, name)
     );
     CREATE INDEX sandboxes_tenant ON sandboxes (org, project, created_at);",
    // 2: snapshots.
    "CREATE TABLE snapshots (
        id TEXT PRIMARY KEY,
        org TEXT NOT NULL,
        project TEXT NOT NULL,
        sandbox_id TEXT NOT NULL,
        name TEXT,
        created_at TEXT NOT NULL,
        record TEXT NOT NULL,
        UNIQUE (org, project, name)
     );
     CREATE INDEX snapshots_tenant ON snapshots (org, project, sandbox_id, created_at);",
    // 3: storage held by snapshots that are gone, for the usage report.
    "CREATE TABLE snapshot_usage (
        org TEXT NOT NULL,
        project TEXT NOT NULL,
        byte_hours REAL NOT NULL,
        PRIMARY KEY (org, project)
     );",
    // 4: preview URLs (a sandbox port behind a token; only the token's hash is kept).
    "CREATE TABLE previews (
        id TEXT PRIMARY KEY,
        token_sha256 TEXT NOT NULL UNIQUE,
        sandbox_id TEXT NOT NULL,
        expires_at TEXT NOT NULL,
        record TEXT NOT NULL
     );
     CREATE INDEX previews_sandbox ON previews (sandbox_id);",
    // 5: SSH access credentials (only the password's hash is kept).
    "CREATE TABLE ssh_access (
        id TEXT PRIMARY KEY,
        sandbox_id TEXT NOT NULL,
        record TEXT NOT NULL
     );
     CREATE INDEX ssh_access_sandbox ON ssh_access (sandbox_id);",
];

pub struct SqliteStore {
    conn: Mutex<Connection>,
}

impl SqliteStore {
    pub fn open(path: &Path) -> Result<Self, MetaError> {
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        Self::from_connection(conn)
    }

    pub fn in_memory() -> Result<Self, MetaError> {
        Self::from_connection(Connection::open_in_memory()?)
    }

    fn from_connection(mut conn: Connection) -> Result<Self, MetaError> {
        migrate(&mut conn)?;
        Ok(SqliteStore {
            conn: Mutex::new(conn),
        })
    }

    fn with<T>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, MetaError>,
    ) -> Result<T, MetaError> {
        let mut guard = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut guard)
    }
}

fn migrate(conn: &mut Connection) -> Result<(), MetaError> {
    let done: usize = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    for (i, step) in MIGRATIONS.iter().enumerate().skip(done) {
        let tx = conn.transaction()?;
        tx.execute_batch(step)?;
        tx.pragma_update(None, "user_version", i + 1)?;
        tx.commit()?;
    }
    Ok(())
}

fn decode(record: String) -> Result<Sandbox, MetaError> {
    serde_json::from_str(&record).map_err(MetaError::Corrupt)
}

fn encode(sandbox: &Sandbox) -> String {
    serde_json::to_string(sandbox).expect("sandbox record serializes")
}

fn lowest_free_slot(conn: &Connection) -> Result<NetSlot, MetaError> {
    let mut stmt =
        conn.prepare("SELECT slot FROM sandboxes WHERE slot IS NOT NULL ORDER BY slot")?;
    let mut next = 0u32;
    for slot in stmt.query_map([], |r| r.get::<_, u32>(0))? {
        let slot = slot?;
        if slot != next {
            break;
        }
        next += 1;
    }
    if next >= NetSlot::COUNT {
        return Err(MetaError::SlotsExhausted);
    }
    Ok(NetSlot(next))
}

fn is_unique_violation(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::ConstraintViolation)
}

impl MetaStore for SqliteStore {
    fn insert_key(&self, key: &KeyRecord) -> Result<(), MetaError> {
        self.with(|c| {
            c.execute(
                "INSERT INTO api_keys (id, org, project, secret_sha256, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![key.id, key.org, key.project, key.secret_sha256, key.created_at.to_rfc3339()],
            )?;
            Ok(())
        })
    }

    fn get_key(&self, id: &str) -> Result<Option<KeyRecord>, MetaError> {
        self.with(|c| {
            Ok(c.query_row(
                "SELECT id, org, project, secret_sha256, created_at FROM api_keys WHERE id = ?1",
                [id],
                |r| {
                    let created: String = r.get(4)?;
                    Ok(KeyRecord {
                        id: r.get(0)?,
                        org: r.get(1)?,
                        project: r.get(2)?,
                        secret_sha256: r.get(3)?,
                        created_at: chrono::DateTime::parse_from_rfc3339(&created)
                            .map(|t| t.with_timezone(&chrono::Utc))
                            .unwrap_or_default(),
                    })
                },
            )
            .optional()?)
        })
    }

    fn count_keys(&self) -> Result<u64, MetaError> {
        self.with(|c| Ok(c.query_row("SELECT COUNT(*) FROM api_keys", [], |r| r.get(0))?))
    }

    fn insert_sandbox(&self, sandbox: &mut Sandbox) -> Result<(), MetaError> {
        self.with(|c| {
            let tx = c.transaction()?;
            let taken: bool = tx.query_row(
                "SELECT EXISTS (SELECT 1 FROM sandboxes WHERE org = ?1 AND project = ?2 AND name = ?3)",
                params![sandbox.tenant.org, sandbox.tenant.project, sandbox.name],
                |r| r.get(0),
            )?;
            if taken {
                return Err(MetaError::Conflict(format!(
                    "a sandbox named {} already exists in this project",
                    sandbox.name
                )));
            }
            let slot = lowest_free_slot(&tx)?;
            sandbox.net = Some(slot);
            tx.execute(
                "INSERT INTO sandboxes (id, org, project, name, slot, created_at, record) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    sandbox.id.to_string(),
                    sandbox.tenant.org,
                    sandbox.tenant.project,
                    sandbox.name,
                    slot.0,
                    sandbox.created_at.to_rfc3339(),
                    encode(sandbox)
                ],
            )
            .map_err(|e| {
                if is_unique_violation(&e) {
                    MetaError::Conflict(format!("a sandbox named {} already exists in this project", sandbox.name))
                } else {
                    e.into()
                }
            })?;
            tx.commit()?;
            Ok(())
        })
    }

    fn touch_sandbox(
        &self,
        id: SandboxId,
        at: chrono::DateTime<chrono::Utc>,
    ) -> Result<(), MetaError> {
        // Only the one field: a concurrent lifecycle write of the whole record must not be
        // undone by a data-plane call that read the record before it.
        self.with(|c| {
            c.execute(
                "UPDATE sandboxes SET record = json_set(record, '$.last_activity_at', ?2) WHERE id = ?1",
                params![id.to_string(), serde_json::to_value(at).map_err(MetaError::Corrupt)?.as_str()],
            )?;
            Ok(())
        })
    }

    fn update_sandbox(&self, sandbox: &Sandbox) -> Result<(), MetaError> {
        self.with(|c| {
            c.execute(
                "UPDATE sandboxes SET slot = ?2, record = ?3 WHERE id = ?1",
                params![
                    sandbox.id.to_string(),
                    sandbox.net.map(|s| s.0),
                    encode(sandbox)
                ],
            )?;
            Ok(())
        })
    }

    fn get_sandbox(&self, id: SandboxId) -> Result<Option<Sandbox>, MetaError> {
        self.with(|c| {
            c.query_row(
                "SELECT record FROM sandboxes WHERE id = ?1",
                [id.to_string()],
                |r| r.get::<_, String>(0),
            )
            .optional()?
            .map(decode)
            .transpose()
        })
    }

    fn list_sandboxes(
        &self,
        tenant: &Tenant,
        offset: u64,
        limit: u64,
    ) -> Result<Page<Sandbox>, MetaError> {
        self.with(|c| {
            let total: u64 = c.query_row(
                "SELECT COUNT(*) FROM sandboxes WHERE org = ?1 AND project = ?2",
                params![tenant.org, tenant.project],
                |r| r.get(0),
            )?;
            let mut stmt = c.prepare(
                "SELECT record FROM sandboxes WHERE org = ?1 AND project = ?2
                 ORDER BY created_at, id LIMIT ?3 OFFSET ?4",
            )?;
            let items = stmt
                .query_map(
                    params![tenant.org, tenant.project, limit as i64, offset as i64],
                    |r| r.get::<_, String>(0),
                )?
                .map(|r| r.map_err(MetaError::from).and_then(decode))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(Page { items, total })
        })
    }

    fn count_sandboxes_in_org(&self, org: &str) -> Result<u64, MetaError> {
        self.with(|c| {
            Ok(c.query_row(
                "SELECT COUNT(*) FROM sandboxes WHERE org = ?1",
                [org],
                |r| r.get(0),
            )?)
        })
    }

    fn all_sandboxes(&self) -> Result<Vec<Sandbox>, MetaError> {
        self.with(|c| {
            let mut stmt = c.prepare("SELECT record FROM sandboxes ORDER BY created_at")?;
            let rows = stmt
                .query_map([], |r| r.get::<_, String>(0))?
                .map(|r| r.map_err(MetaError::from).and_then(decode))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        })
    }

    fn insert_snapshot(&self, snap: &Snapshot) -> Result<(), MetaError> {
        self.with(|c| {
            c.execute(
                "INSERT INTO snapshots (id, org, project, sandbox_id, name, created_at, record) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    snap.id.to_string(),
                    snap.tenant.org,
                    snap.tenant.project,
                    snap.sandbox_id.to_string(),
                    snap.name,
                    snap.created_at.to_rfc3339(),
                    serde_json::to_string(snap).expect("snapshot serializes")
                ],
            )
            .map_err(|e| {
                if is_unique_violation(&e) {
                    MetaError::Conflict(format!(
                        "a snapshot named {} already exists in this project",
                        snap.name.as_deref().unwrap_or_default()
                    ))
                } else {
                    e.into()
                }
            })?;
            Ok(())
        })
    }

    fn update_snapshot(&self, snap: &Snapshot) -> Result<(), MetaError> {
        self.with(|c| {
            c.execute(
                "UPDATE snapshots SET record = ?2 WHERE id = ?1",
                params![
                    snap.id.to_string(),
                    serde_json::to_string(snap).expect("snapshot serializes")
                ],
            )?;
            Ok(())
        })
    }

    fn get_snapshot(&self, id: uuid::Uuid) -> Result<Option<Snapshot>, MetaError> {
        self.with(|c| {
            c.query_row(
                "SELECT record FROM snapshots WHERE id = ?1",
                [id.to_string()],
                |r| r.get::<_, String>(0),
            )
            .optional()?
            .map(|s| serde_json::from_str(&s).map_err(MetaError::Corrupt))
            .transpose()
        })
    }

    fn list_snapshots(
        &self,
        tenant: &Tenant,
        sandbox: Option<SandboxId>,
        offset: u64,
        limit: u64,
    ) -> Result<Page<Snapshot>, MetaError> {
        self.with(|c| {
            let sid = sandbox.map(|s| s.to_string());
            let total: u64 = c.query_row(
                "SELECT COUNT(*) FROM snapshots WHERE org = ?1 AND project = ?2 AND (?3 IS NULL OR sandbox_id = ?3)",
                params![tenant.org, tenant.project, sid],
                |r| r.get(0),
            )?;
            let mut stmt = c.prepare(
                "SELECT record FROM snapshots WHERE org = ?1 AND project = ?2 AND (?3 IS NULL OR sandbox_id = ?3)
                 ORDER BY created_at, id LIMIT ?4 OFFSET ?5",
            )?;
            let items = stmt
                .query_map(params![tenant.org, tenant.project, sid, limit as i64, offset as i64], |r| r.get::<_, String>(0))?
                .map(|r| r.map_err(MetaError::from).and_then(|s| serde_json::from_str(&s).map_err(MetaError::Corrupt)))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(Page { items, total })
        })
    }

    fn all_snapshots(&self) -> Result<Vec<Snapshot>, MetaError> {
        self.with(|c| {
            let mut stmt = c.prepare("SELECT record FROM snapshots ORDER BY created_at")?;
            let rows = stmt
                .query_map([], |r| r.get::<_, String>(0))?
                .map(|r| {
                    r.map_err(MetaError::from)
                        .and_then(|s| serde_json::from_str(&s).map_err(MetaError::Corrupt))
                })
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        })
    }

    fn delete_snapshot(&self, id: uuid::Uuid) -> Result<(), MetaError> {
        self.with(|c| {
            c.execute("DELETE FROM snapshots WHERE id = ?1", [id.to_string()])?;
            Ok(())
        })
    }

    fn retire_snapshot(&self, snapshot: &Snapshot, byte_hours: f64) -> Result<(), MetaError> {
        self.with(|c| {
            let tx = c.transaction()?;
            tx.execute(
                "INSERT INTO snapshot_usage (org, project, byte_hours) VALUES (?1, ?2, ?3)
                 ON CONFLICT (org, project) DO UPDATE SET byte_hours = byte_hours + ?3",
                params![snapshot.tenant.org, snapshot.tenant.project, byte_hours],
            )?;
            tx.execute(
                "DELETE FROM snapshots WHERE id = ?1",
                [snapshot.id.to_string()],
            )?;
            tx.commit()?;
            Ok(())
        })
    }

    fn retired_snapshot_byte_hours(&self, tenant: &Tenant) -> Result<f64, MetaError> {
        self.with(|c| {
            Ok(c.query_row(
                "SELECT byte_hours FROM snapshot_usage WHERE org = ?1 AND project = ?2",
                params![tenant.org, tenant.project],
                |r| r.get(0),
            )
            .optional()?
            .unwrap_or(0.0))
        })
    }

    fn delete_sandbox(&self, id: SandboxId) -> Result<(), MetaError> {
        self.with(|c| {
            let tx = c.transaction()?;
            tx.execute(
                "DELETE FROM previews WHERE sandbox_id = ?1",
                [id.to_string()],
            )?;
            tx.execute(
                "DELETE FROM ssh_access WHERE sandbox_id = ?1",
                [id.to_string()],
            )?;
            tx.execute("DELETE FROM sandboxes WHERE id = ?1", [id.to_string()])?;
            tx.commit()?;
            Ok(())
        })
    }

    fn insert_preview(&self, url: &PreviewUrl) -> Result<(), MetaError> {
        let record = serde_json::to_string(url).map_err(MetaError::Corrupt)?;
        self.with(|c| {
            c.execute(
                "INSERT INTO previews (id, token_sha256, sandbox_id, expires_at, record) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![
                    url.id,
                    url.token_sha256,
                    url.sandbox_id.to_string(),
                    url.expires_at.to_rfc3339(),
                    record
                ],
            )?;
            Ok(())
        })
    }

    fn preview_by_token(&self, token_sha256: &str) -> Result<Option<PreviewUrl>, MetaError> {
        self.preview_where("token_sha256", token_sha256)
    }

    fn get_preview(&self, id: &str) -> Result<Option<PreviewUrl>, MetaError> {
        self.preview_where("id", id)
    }

    fn delete_preview(&self, id: &str) -> Result<(), MetaError> {
        self.with(|c| {
            c.execute("DELETE FROM previews WHERE id = ?1", [id])?;
            Ok(())
        })
    }

    fn previews_of_sandbox(&self, sandbox: SandboxId) -> Result<Vec<PreviewUrl>, MetaError> {
        let records: Vec<String> = self.with(|c| {
            let mut stmt = c.prepare("SELECT record FROM previews WHERE sandbox_id = ?1")?;
            let rows = stmt.query_map([sandbox.to_string()], |r| r.get(0))?;
            Ok(rows.collect::<Result<_, _>>()?)
        })?;
        records
            .iter()
            .map(|r| serde_json::from_str(r).map_err(MetaError::Corrupt))
            .collect()
    }

    fn put_ssh_access(&self, access: &sandboxd_core::SshAccess) -> Result<(), MetaError> {
        self.ssh_access_put(access)
    }

    fn get_ssh_access(&self, id: &str) -> Result<Option<sandboxd_core::SshAccess>, MetaError> {
        self.ssh_access_get(id)
    }

    fn delete_ssh_access(&self, id: &str) -> Result<(), MetaError> {
        self.with(|c| {
            c.execute("DELETE FROM ssh_access WHERE id = ?1", [id])?;
            Ok(())
        })
    }

    fn delete_expired_previews(
        &self,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<u64, MetaError> {
        // RFC 3339 strings of one offset (UTC) order as times.
        self.with(|c| {
            Ok(c.execute(
                "DELETE FROM previews WHERE expires_at <= ?1",
                [now.to_rfc3339()],
            )? as u64)
        })
    }
}

impl SqliteStore {
    fn ssh_access_put(&self, a: &sandboxd_core::SshAccess) -> Result<(), MetaError> {
        let record = serde_json::to_string(a).map_err(MetaError::Corrupt)?;
        self.with(|c| {
            c.execute(
                "INSERT OR REPLACE INTO ssh_access (id, sandbox_id, record) VALUES (?1, ?2, ?3)",
                params![a.id, a.sandbox_id.to_string(), record],
            )?;
            Ok(())
        })
    }

    fn ssh_access_get(&self, id: &str) -> Result<Option<sandboxd_core::SshAccess>, MetaError> {
        let record: Option<String> = self.with(|c| {
            Ok(
                c.query_row("SELECT record FROM ssh_access WHERE id = ?1", [id], |r| {
                    r.get(0)
                })
                .optional()?,
            )
        })?;
        record
            .map(|r| serde_json::from_str(&r).map_err(MetaError::Corrupt))
            .transpose()
    }

    fn preview_where(&self, column: &str, value: &str) -> Result<Option<PreviewUrl>, MetaError> {
        let sql = format!("SELECT record FROM previews WHERE {column} = ?1");
        let record: Option<String> =
            self.with(|c| Ok(c.query_row(&sql, [value], |r| r.get(0)).optional()?))?;
        record
            .map(|r| serde_json::from_str(&r).map_err(MetaError::Corrupt))
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;
    use sandboxd_core::{Resources, SandboxState};

    fn sandbox(org: &str, project: &str, name: &str) -> Sandbox {
        let now = Utc::now();
        Sandbox {
            id: SandboxId::new(),
            tenant: Tenant {
                org: org.into(),
                project: project.into(),
            },
            name: name.into(),
            region: "local".into(),
            template_id: "sb-busybox".into(),
            image: "busybox".into(),
            command: vec![],
            env: vec![],
            resources: Resources::default(),
            state: SandboxState::Starting,
            status_message: None,
            net: None,
            egress: None,
            created_by: None,
            created_at: now,
            updated_at: now,
            timeout_secs: None,
            last_activity_at: now,
            windows: Default::default(),
            paused_image: None,
            snapshot_frequency: None,
            lifetime: Default::default(),
            network_policy: None,
            health: Default::default(),
        }
    }

    #[test]
    fn names_are_unique_per_project_and_slots_reused() {
        let store = SqliteStore::in_memory().unwrap();
        let mut a = sandbox("o", "p", "a");
        store.insert_sandbox(&mut a).unwrap();
        assert_eq!(a.net, Some(NetSlot(0)));
        let mut dup = sandbox("o", "p", "a");
        assert!(matches!(
            store.insert_sandbox(&mut dup),
            Err(MetaError::Conflict(_))
        ));
        let mut other_project = sandbox("o", "q", "a");
        store.insert_sandbox(&mut other_project).unwrap();
        assert_eq!(other_project.net, Some(NetSlot(1)));
        store.delete_sandbox(a.id).unwrap();
        let mut c = sandbox("o", "p", "a");
        store.insert_sandbox(&mut c).unwrap();
        assert_eq!(c.net, Some(NetSlot(0)), "freed slot is reused");
    }

    #[test]
    fn list_is_per_tenant_and_paginated() {
        let store = SqliteStore::in_memory().unwrap();
        for i in 0..5 {
            store
                .insert_sandbox(&mut sandbox("o", "p", &format!("s{i}")))
                .unwrap();
        }
        store
            .insert_sandbox(&mut sandbox("other", "p", "x"))
            .unwrap();
        let t = Tenant {
            org: "o".into(),
            project: "p".into(),
        };
        let page = store.list_sandboxes(&t, 2, 2).unwrap();
        assert_eq!(page.total, 5);
        assert_eq!(page.items.len(), 2);
        assert_eq!(store.count_sandboxes_in_org("o").unwrap(), 5);
    }

    #[test]
    fn records_round_trip_and_migrations_are_idempotent() {
        let dir = std::env::temp_dir().join(format!("meta-test-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("m.db");
        let mut s = sandbox("o", "p", "a");
        {
            let store = SqliteStore::open(&path).unwrap();
            store.insert_sandbox(&mut s).unwrap();
            s.state = SandboxState::Running;
            store.update_sandbox(&s).unwrap();
        }
        let store = SqliteStore::open(&path).unwrap();
        assert_eq!(store.get_sandbox(s.id).unwrap(), Some(s));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
