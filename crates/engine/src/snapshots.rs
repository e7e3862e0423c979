//! Snapshots: capture (files + optional memory at one instant), restore into a new sandbox,
//! fork, roll back in place, delete.
//!
//! A capture freezes the sandbox, writes the gVisor checkpoint (with memory) and a read-only
//! btrfs snapshot of its layer, then lets it run on. The record goes `Pending → Running →
//! Ready`; a failure (or a crash, found at restart) leaves it `Failed` and removes what was
//! written, never a half-`Ready` snapshot.

use std::path::PathBuf;
use std::time::Instant;

use chrono::Utc;
use sandboxd_agent::proto::Request;
use sandboxd_core::fault;
use sandboxd_core::state::Op;
use sandboxd_core::{
    CoreError, Principal, Sandbox, SandboxId, SandboxState, Snapshot, SnapshotStatus, Tenant,
};
use sandboxd_meta::Page;
use tracing::{info, instrument, warn};
use uuid::Uuid;

use sandboxd_runtime::{ImageWait, RuntimeError};

use crate::{agent_addr, agent_client, Engine, EngineError};

/// What a create-snapshot request asks for, validated.
#[derive(Debug, Clone, Default)]
pub struct CreateSnapshot {
    pub name: Option<String>,
    pub include_memory: bool,
    pub retain_for: Option<chrono::Duration>,
}

fn dir_bytes(p: &std::path::Path) -> u64 {
    sandboxd_runtime::fsutil::dir_usage(p).logical
}

impl Engine {
    pub(crate) fn capture_paths(&self, snap: Uuid) -> (PathBuf, PathBuf) {
        self.runtime.capture_paths(&format!("snap-{snap}"))
    }

    fn load_snapshot(&self, tenant: &Tenant, id: Uuid) -> Result<Snapshot, EngineError> {
        match self.meta.get_snapshot(id)? {
            Some(s) if &s.tenant == tenant => {
                if s.expires_at.is_some_and(|t| t <= Utc::now()) {
                    return Err(CoreError::not_found("snapshot", id.to_string()).into());
                }
                Ok(s)
            }
            _ => Err(CoreError::not_found("snapshot", id.to_string()).into()),
        }
    }

    pub fn get_snapshot(&self, tenant: &Tenant, id: Uuid) -> Result<Snapshot, EngineError> {
        self.load_snapshot(tenant, id)
    }

    pub fn list_snapshots(
        &self,
        tenant: &Tenant,
        sandbox: Option<SandboxId>,
        offset: u64,
        limit: u64,
    ) -> Result<Page<Snapshot>, EngineError> {
        if let Some(id) = sandbox {
            self.get_sandbox(tenant, id)?;
        }
        let mut page = self.meta.list_snapshots(tenant, sandbox, offset, limit)?;
        let now = Utc::now();
        page.items.retain(|s| s.expires_at.is_none_or(|t| t > now));
        Ok(page)
    }

    /// Captures a snapshot of a running sandbox; returns the record once it is `Ready` or
    /// `Failed`. One capture per sandbox at a time (409 otherwise).
    #[instrument(skip_all, fields(sandbox_id = %sandbox_id))]
    pub async fn create_snapshot(
        &self,
        principal: &Principal,
        tenant: &Tenant,
        sandbox_id: SandboxId,
        req: CreateSnapshot,
    ) -> Result<Snapshot, EngineError> {
        let mut sb = self.get_sandbox(tenant, sandbox_id)?;
        sb.state.check(Op::Snapshot)?;
        let _busy = self.begin(sandbox_id)?;
        self.capture_locked(principal, &mut sb, req).await
    }

    /// The capture itself; the caller holds the sandbox's busy mark.
    pub(crate) async fn capture_locked(
        &self,
        principal: &Principal,
        sb: &mut Sandbox,
        req: CreateSnapshot,
    ) -> Result<Snapshot, EngineError> {
        let now = Utc::now();
        let mut snap = Snapshot {
            id: Uuid::new_v4(),
            tenant: sb.tenant.clone(),
            sandbox_id: sb.id,
            name: req.name,
            status: SnapshotStatus::Pending,
            include_memory: req.include_memory,
            error_message: None,
            size_bytes: None,
            added_bytes: None,
            paused_ms: None,
            template_id: sb.template_id.clone(),
            image: sb.image.clone(),
            resources: sb.resources,
            env: sb.env.clone(),
            region: sb.region.clone(),
            created_by: Some(principal.key_id.clone()),
            created_at: now,
            updated_at: now,
            expires_at: req.retain_for.map(|d| now + d),
            network_policy: sb.network_policy.clone(),
            egress: sb.egress.clone(),
        };
        self.meta.insert_snapshot(&snap)?;
        snap.status = SnapshotStatus::Running;
        self.meta.update_snapshot(&snap)?;
        sb.state = SandboxState::Snapshotting;
        self.save(sb)?;
        fault::point("capture.recorded");

        let (layer, image) = self.capture_paths(snap.id);
        let image_arg = snap.include_memory.then(|| image.clone());
        let (sid, layer_arg) = (sb.id.to_string(), layer.clone());
        let result = self
            .blocking(move |rt| rt.capture(&sid, image_arg.as_deref(), Some(&layer_arg), true))
            .await;
        fault::point("capture.captured");
        sb.state = SandboxState::Running;
        self.save(sb)?;
        snap.updated_at = Utc::now();
        match result {
            Ok(stats) => {
                snap.paused_ms = Some(stats.paused_ms);
                snap.size_bytes = Some(
                    dir_bytes(&layer.join("upper"))
                        + if snap.include_memory {
                            dir_bytes(&image)
                        } else {
                            0
                        },
                );
                // The layer is a copy-on-write snapshot: taking it adds no bytes. A memory image
                // adds what the store does not already hold, known once it is archived.
                snap.added_bytes = match (snap.include_memory, self.archive.is_some()) {
                    (false, _) => Some(0),
                    (true, true) => None,
                    (true, false) => Some(dir_bytes(&image)),
                };
                snap.status = SnapshotStatus::Ready;
                self.meta.update_snapshot(&snap)?;
                info!(snapshot_id = %snap.id, paused_ms = stats.paused_ms, checkpoint_ms = stats.checkpoint_ms, "snapshot ready");
                if snap.include_memory {
                    self.wake_archiver(false);
                }
            }
            Err(e) => {
                warn!(snapshot_id = %snap.id, error = %e, detail = ?e, "snapshot failed");
                self.discard_capture(snap.id).await;
                snap.status = SnapshotStatus::Failed;
                snap.error_message = Some("capture failed; the sandbox kept running".into());
                self.meta.update_snapshot(&snap)?;
            }
        }
        Ok(snap)
    }

    pub(crate) async fn discard_capture(&self, snap: Uuid) {
        let (layer, image) = self.capture_paths(snap);
        let _ = std::fs::remove_dir_all(&image);
        let _ = self.blocking(move |rt| rt.drop_layer(&layer)).await;
    }

    /// Deletes a snapshot. Sandboxes restored from it are unaffected (their layers are
    /// copy-on-write clones); a restore in flight is waited for.
    pub async fn delete_snapshot(&self, tenant: &Tenant, id: Uuid) -> Result<(), EngineError> {
        let snap = match self.meta.get_snapshot(id)? {
            Some(s) if &s.tenant == tenant => s,
            _ => return Err(CoreError::not_found("snapshot", id.to_string()).into()),
        };
        let _guard = self.snapshot_locks.write(snap.id).await;
        self.discard_capture(snap.id).await;
        self.forget_stored(snap.id);
        let held = if snap.status == SnapshotStatus::Ready {
            crate::schedule::byte_hours(&snap, Utc::now())
        } else {
            0.0
        };
        self.meta.retire_snapshot(&snap, held)?;
        Ok(())
    }

    fn ready(&self, tenant: &Tenant, id: Uuid) -> Result<Snapshot, EngineError> {
        let snap = self.load_snapshot(tenant, id)?;
        if snap.status != SnapshotStatus::Ready {
            return Err(CoreError::Conflict(format!(
                "snapshot {id} is {}, only a Ready snapshot can be restored",
                snap.status.as_str()
            ))
            .into());
        }
        Ok(snap)
    }

    /// Creates a new sandbox from a snapshot: its files, and its processes and memory if the
    /// snapshot has them. The new sandbox gets a fresh id, hostname and address.
    #[instrument(skip_all, fields(snapshot_id = %snapshot_id))]
    pub async fn restore_as_new(
        &self,
        principal: &Principal,
        tenant: &Tenant,
        snapshot_id: Uuid,
        name: String,
    ) -> Result<Sandbox, EngineError> {
        let snap = self.ready(tenant, snapshot_id)?;
        let _guard = self.snapshot_locks.read(snap.id).await;
        // Re-check under the lock: a delete may have won the race.
        let snap = self.ready(tenant, snap.id)?;
        let template = self.templates.lookup(&snap.template_id).ok_or_else(|| {
            CoreError::Conflict(format!(
                "template {} of this snapshot is not installed",
                snap.template_id
            ))
        })?;
        self.admit(tenant, &snap.resources)?;
        let now = Utc::now();
        let mut sb = Sandbox {
            id: SandboxId::new(),
            tenant: tenant.clone(),
            name,
            region: snap.region.clone(),
            template_id: snap.template_id.clone(),
            image: snap.image.clone(),
            command: vec![],
            env: snap.env.clone(),
            resources: snap.resources,
            state: SandboxState::Starting,
            status_message: None,
            net: None,
            egress: snap.egress.clone(),
            created_by: Some(principal.key_id.clone()),
            created_at: now,
            updated_at: now,
            timeout_secs: None,
            last_activity_at: now,
            windows: Default::default(),
            paused_image: None,
            snapshot_frequency: None,
            lifetime: Default::default(),
            network_policy: snap.network_policy.clone(),
            health: Default::default(),
        };
        self.meta.insert_sandbox(&mut sb)?;
        fault::point("restore.recorded");
        let _busy = self.begin(sb.id)?;
        let spec = self.spec(&sb, template)?;
        let (layer, _) = self.capture_paths(snap.id);
        let started = Instant::now();
        let rspec = spec.clone();
        // The memory image (read back from the store if need be, every chunk verified) is
        // produced while the runtime clones the layer and sets up the network and bundle; the
        // runtime waits for it just before `runsc restore`. A damaged image fails the restore
        // before the sandbox starts, and the error says so.
        let (tx, rx) = std::sync::mpsc::channel::<Option<PathBuf>>();
        let wait = snap.include_memory.then(|| {
            Box::new(move || {
                rx.recv()
                    .ok()
                    .flatten()
                    .ok_or_else(|| RuntimeError::NotReady("the memory image is unavailable".into()))
            }) as ImageWait
        });
        let image = async {
            if !snap.include_memory {
                return Ok(None);
            }
            let image = self.memory_image(&snap).await;
            let _ = tx.send(image.as_ref().ok().map(|i| i.path.clone()));
            image.map(Some)
        };
        let (mut result, image) = tokio::join!(
            self.blocking(move |rt| rt.restore_new_when(&rspec, &layer, wait)),
            image
        );
        // Kept until `runsc restore` has read it; a temporary copy goes when this drops.
        let (_image, image_error) = match image {
            Ok(i) => (i, None),
            Err(e) => (None, Some(e)),
        };
        fault::point("restore.launched");
        if result.is_ok() {
            result = self.after_start(&sb, snap.include_memory).await;
        }
        match result {
            Ok(()) => {
                sb.state = SandboxState::Running;
                self.save(&mut sb)?;
                info!(sandbox_id = %sb.id, ms = started.elapsed().as_millis() as u64, memory = snap.include_memory, "restored as new sandbox");
                if let Ok(p) = crate::egress::policy_of(&sb) {
                    self.audit_egress(&sb, "egress.set", &p, true, started);
                }
                Ok(sb)
            }
            Err(e) => {
                warn!(error = %e, detail = ?e, "restore failed");
                let _ = self.destroy_host(&sb).await;
                self.meta.delete_sandbox(sb.id)?;
                Err(image_error.unwrap_or_else(|| {
                    CoreError::Internal("restore from the snapshot failed".into()).into()
                }))
            }
        }
    }

    /// Waits for the agent; a sandbox restored from memory is told its new identity.
    async fn after_start(&self, sb: &Sandbox, from_memory: bool) -> Result<(), EngineError> {
        let net = sb
            .net
            .ok_or_else(|| CoreError::Internal("sandbox has no network slot".into()))?;
        if !agent_client::wait_ready(agent_addr(net), self.cfg.agent_ready_timeout).await {
            return Err(
                sandboxd_runtime::RuntimeError::NotReady("agent did not answer".into()).into(),
            );
        }
        if from_memory {
            agent_client::call(
                agent_addr(net),
                &Request::Reidentify {
                    hostname: sb.name.clone(),
                },
            )
            .await?;
        }
        Ok(())
    }

    /// Snapshots `source` (with memory) and starts a new sandbox `name` from it. The source
    /// keeps running; the snapshot is kept as a Ready snapshot of the source.
    pub async fn fork(
        &self,
        principal: &Principal,
        tenant: &Tenant,
        source: SandboxId,
        name: String,
    ) -> Result<Sandbox, EngineError> {
        let mut sb = self.get_sandbox(tenant, source)?;
        sb.state.check(Op::Snapshot)?;
        if self
            .meta
            .list_sandboxes(tenant, 0, u64::MAX >> 1)?
            .items
            .iter()
            .any(|s| s.name == name)
        {
            return Err(CoreError::Conflict(format!(
                "a sandbox named {name} already exists in this project"
            ))
            .into());
        }
        let snap = {
            let _busy = self.begin(source)?;
            self.capture_locked(
                principal,
                &mut sb,
                CreateSnapshot {
                    name: None,
                    include_memory: true,
                    retain_for: None,
                },
            )
            .await?
        };
        if snap.status != SnapshotStatus::Ready {
            return Err(
                CoreError::Internal("fork failed: could not snapshot the sandbox".into()).into(),
            );
        }
        self.restore_as_new(principal, tenant, snap.id, name).await
    }

    /// Rolls a sandbox back to a snapshot of the same project: its files and (if captured)
    /// processes are replaced; id, name and address stay.
    #[instrument(skip_all, fields(sandbox_id = %id, snapshot_id = %snapshot_id))]
    pub async fn rollback(
        &self,
        tenant: &Tenant,
        id: SandboxId,
        snapshot_id: Uuid,
    ) -> Result<Sandbox, EngineError> {
        let mut sb = self.get_sandbox(tenant, id)?;
        if !matches!(
            sb.state,
            SandboxState::Running | SandboxState::Paused | SandboxState::Stopped
        ) {
            return Err(CoreError::Conflict(format!(
                "cannot restore a sandbox that is {}",
                sb.state.as_str()
            ))
            .into());
        }
        let snap = self.ready(tenant, snapshot_id)?;
        if snap.template_id != sb.template_id {
            return Err(CoreError::invalid(
                "snapshot_id",
                "the snapshot was taken from a sandbox with another template",
            )
            .into());
        }
        let _guard = self.snapshot_locks.read(snap.id).await;
        let _busy = self.begin(id)?;
        // Before the sandbox is touched: a damaged stored image fails here, changing nothing.
        let image = if snap.include_memory {
            Some(self.memory_image(&snap).await?)
        } else {
            None
        };
        let template = self
            .templates
            .lookup(&sb.template_id)
            .ok_or_else(|| CoreError::Internal("template is gone".into()))?;
        let spec = self.spec(&sb, template)?;
        // The sandbox's own paused memory (if any) belongs to the state being replaced: drop it
        // first, so a crash from here on leaves the sandbox paused on its files alone.
        let stale_image = sb.paused_image.take();
        sb.state = SandboxState::Resuming;
        self.save(&mut sb)?;
        if let Some(img) = stale_image {
            let _ = std::fs::remove_dir_all(img);
        }
        fault::point("rollback.recorded");
        let (layer, _) = self.capture_paths(snap.id);
        let image_arg = image.as_ref().map(|i| i.path.clone());
        let rspec = spec.clone();
        let mut result = self
            .blocking(move |rt| rt.rollback(&rspec, &layer, image_arg.as_deref()))
            .await;
        fault::point("rollback.launched");
        if result.is_ok() {
            result = self.after_start(&sb, false).await;
        }
        match result {
            Ok(()) => {
                sb.state = SandboxState::Running;
                sb.status_message = None;
                self.save(&mut sb)?;
                self.lifecycle.restarted(id);
                Ok(sb)
            }
            Err(e) => Err(self.settle_failure(
                &mut sb,
                e,
                SandboxState::Failed,
                "restore from the snapshot failed",
            )),
        }
    }

    /// Deletes every snapshot past its `expires_at`; returns how many. Run by the reaper.
    pub async fn reap_expired_snapshots(&self) -> Result<usize, EngineError> {
        let now = Utc::now();
        let mut n = 0;
        for snap in self.meta.all_snapshots()? {
            if snap.expires_at.is_some_and(|t| t <= now) {
                self.delete_snapshot(&snap.tenant, snap.id).await?;
                info!(snapshot_id = %snap.id, "expired snapshot deleted");
                n += 1;
            }
        }
        Ok(n)
    }

    /// The retention reaper: every `every`, deletes expired snapshots. Runs until the process ends.
    pub async fn reap_snapshots(self: std::sync::Arc<Self>, every: std::time::Duration) {
        loop {
            tokio::time::sleep(every).await;
            if let Err(e) = self.reap_expired_snapshots().await {
                warn!(error = %e, "snapshot reaper");
            }
            // Expired preview URLs already answer 404; this drops their rows.
            if let Err(e) = self.reap_previews() {
                warn!(error = %e, "preview URL reaper");
            }
        }
    }

    /// After a restart: captures that were in flight are `Failed` and their partial data gone.
    pub(crate) async fn reconcile_snapshots(&self) -> Result<(), EngineError> {
        for mut snap in self.meta.all_snapshots()? {
            if matches!(
                snap.status,
                SnapshotStatus::Pending | SnapshotStatus::Running
            ) {
                self.discard_capture(snap.id).await;
                snap.status = SnapshotStatus::Failed;
                snap.error_message = Some("the daemon stopped during the capture".into());
                snap.updated_at = Utc::now();
                self.meta.update_snapshot(&snap)?;
            }
        }
        self.reconcile_store().await
    }
}
