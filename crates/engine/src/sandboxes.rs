//! Sandbox lifecycle and data-plane actions.

use std::time::Instant;

use chrono::{DateTime, Utc};
use sandboxd_agent::proto::{Reply, Request};
use sandboxd_core::fault;
use sandboxd_core::state::Op;
use sandboxd_core::{
    CoreError, EnvVar, Principal, Resources, Sandbox, SandboxId, SandboxState, Tenant,
};
use sandboxd_meta::Page;
use sandboxd_runtime::{ContainerStatus, SandboxSpec};
use tracing::{info, instrument, warn};

use crate::agent_client::{self, ReplyStream};

/// Crashes within [`CRASH_WINDOW`] after which a sandbox is not restarted any more.
pub const MAX_CRASHES: usize = 3;
/// The window crashes are counted in.
pub const CRASH_WINDOW: chrono::Duration = chrono::Duration::minutes(10);
use crate::templates::{Template, TemplateStatus};
use crate::{agent_addr, AuditRecord, Engine, EngineError};

/// A change of timeout windows; `None` fields stay as they are, `Some(0)` turns one off.
#[derive(Debug, Clone, Default)]
pub struct TimeoutUpdate {
    pub idle_secs: Option<u64>,
    pub max_lifetime_secs: Option<u64>,
    pub paused_retention_secs: Option<u64>,
    pub on_idle: Option<sandboxd_core::OnIdle>,
}

/// A validated create request, in core units. Front-ends resolve the template first.
#[derive(Debug, Clone)]
pub struct CreateSandbox {
    pub name: String,
    pub region: Option<String>,
    pub template: &'static Template,
    pub env: Vec<EnvVar>,
    pub resources: Resources,
    pub egress: Option<serde_json::Value>,
    pub command: Vec<String>,
    pub timeout_secs: Option<u64>,
    /// Automatic snapshots on this five-field cron schedule (validated by the front-end).
    pub snapshot_frequency: Option<String>,
    /// Run-time limit (Leap0 `timeout`); the clock starts once the sandbox runs.
    pub lifetime: sandboxd_core::Lifetime,
    /// Leap0 `network_policy`, validated by the front-end, stored verbatim.
    pub network_policy: Option<serde_json::Value>,
}

impl Engine {
    /// Resolves a template name for a create request; `field` names the request field in errors.
    pub fn resolve_template(
        &self,
        name: Option<&str>,
        field: &str,
    ) -> Result<&'static Template, CoreError> {
        let name = name.unwrap_or(crate::templates::DEFAULT_TEMPLATE);
        let t = self
            .templates
            .lookup(name)
            .ok_or_else(|| CoreError::invalid(field, format!("template {name} does not exist")))?;
        if self.templates.status(t) != TemplateStatus::Active {
            return Err(CoreError::invalid(
                field,
                format!(
                    "template {} is not active on this node (not built yet)",
                    t.id
                ),
            ));
        }
        Ok(t)
    }

    /// Resolves the bearer token of a request.
    pub fn authenticate(&self, token: &str) -> Result<Option<Principal>, EngineError> {
        crate::keys::verify(self.meta.as_ref(), token)
    }

    fn load(&self, tenant: &Tenant, id: SandboxId) -> Result<Sandbox, EngineError> {
        match self.meta.get_sandbox(id)? {
            Some(sb) if &sb.tenant == tenant => Ok(sb),
            _ => Err(CoreError::not_found("sandbox", id.to_string()).into()),
        }
    }

    pub(crate) fn save(&self, sb: &mut Sandbox) -> Result<(), EngineError> {
        sb.updated_at = Utc::now();
        self.meta.update_sandbox(sb)?;
        Ok(())
    }

    pub fn get_sandbox(&self, tenant: &Tenant, id: SandboxId) -> Result<Sandbox, EngineError> {
        self.load(tenant, id)
    }

    /// Finds a sandbox by id or by name within the tenant.
    pub fn find_sandbox(&self, tenant: &Tenant, id_or_name: &str) -> Result<Sandbox, EngineError> {
        if let Some(id) = SandboxId::parse(id_or_name) {
            return self.load(tenant, id);
        }
        let mut offset = 0;
        loop {
            let page = self.meta.list_sandboxes(tenant, offset, 500)?;
            if let Some(sb) = page.items.iter().find(|s| s.name == id_or_name) {
                return Ok(sb.clone());
            }
            if page.items.is_empty() || offset + 500 >= page.total {
                return Err(CoreError::not_found("sandbox", id_or_name.to_string()).into());
            }
            offset += 500;
        }
    }

    /// The sandbox a data-plane call addresses, if `principal` may use it.
    pub fn sandbox_for(
        &self,
        principal: &Principal,
        id: SandboxId,
    ) -> Result<Sandbox, EngineError> {
        let sb = self
            .meta
            .get_sandbox(id)?
            .ok_or_else(|| CoreError::not_found("sandbox", id.to_string()))?;
        principal.authorize(&sb.tenant.org, &sb.tenant.project)?;
        Ok(sb)
    }

    pub fn list_sandboxes(
        &self,
        tenant: &Tenant,
        offset: u64,
        limit: u64,
    ) -> Result<Page<Sandbox>, EngineError> {
        Ok(self.meta.list_sandboxes(tenant, offset, limit)?)
    }

    pub(crate) fn admit(&self, tenant: &Tenant, resources: &Resources) -> Result<(), EngineError> {
        let held = self.meta.count_sandboxes_in_org(&tenant.org)?;
        if held >= self.cfg.max_sandboxes_per_org {
            return Err(CoreError::QuotaExceeded(format!(
                "org {} has reached its limit of {} sandboxes",
                tenant.org, self.cfg.max_sandboxes_per_org
            ))
            .into());
        }
        self.admit_on_node(resources)
    }

    /// The node-capacity half of admission: memory (and CPU) promised to sandboxes that hold
    /// a container now, plus `resources`, must fit the node (503 otherwise).
    pub(crate) fn admit_on_node(&self, resources: &Resources) -> Result<(), EngineError> {
        let live: Vec<Sandbox> = self
            .meta
            .all_sandboxes()?
            .into_iter()
            .filter(|s| {
                s.state.expects_container()
                    || matches!(s.state, SandboxState::Starting | SandboxState::Resuming)
            })
            .collect();
        let promised: u64 = live.iter().map(|s| u64::from(s.resources.memory_mib)).sum();
        if promised + u64::from(resources.memory_mib) > self.cfg.node_memory_mib {
            return Err(CoreError::Unavailable(format!(
                "node has no capacity left: {promised} MiB of {} MiB memory committed",
                self.cfg.node_memory_mib
            ))
            .into());
        }
        let cpu: u64 = live.iter().map(|s| u64::from(s.resources.cpu_millis)).sum();
        if cpu + u64::from(resources.cpu_millis) > self.cfg.node_cpu_millis {
            return Err(CoreError::Unavailable(format!(
                "node has no capacity left: {} of {} vCPU committed",
                cpu as f64 / 1000.0,
                self.cfg.node_cpu_millis as f64 / 1000.0
            ))
            .into());
        }
        Ok(())
    }

    /// Creates a sandbox and starts it; returns once it is running (`Ready`).
    #[instrument(skip_all, fields(sandbox_id))]
    pub async fn create_sandbox(
        &self,
        principal: &Principal,
        tenant: &Tenant,
        mut req: CreateSandbox,
    ) -> Result<Sandbox, EngineError> {
        self.seal_policy(&mut req.network_policy)?;
        if let Some(r) = &req.region {
            if r != &self.cfg.region {
                return Err(CoreError::invalid(
                    "region",
                    format!(
                        "region {r} is not served here; this node serves {}",
                        self.cfg.region
                    ),
                )
                .into());
            }
        }
        self.admit(tenant, &req.resources)?;
        let now = Utc::now();
        let mut sb = Sandbox {
            id: SandboxId::new(),
            tenant: tenant.clone(),
            name: req.name,
            region: self.cfg.region.clone(),
            template_id: req.template.id.to_string(),
            image: req.template.image.to_string(),
            command: req.command,
            env: req.env,
            resources: req.resources,
            state: SandboxState::Starting,
            status_message: None,
            net: None,
            egress: req.egress,
            created_by: Some(principal.key_id.clone()),
            created_at: now,
            updated_at: now,
            timeout_secs: req.timeout_secs,
            last_activity_at: now,
            windows: Default::default(),
            paused_image: None,
            snapshot_frequency: req.snapshot_frequency,
            lifetime: req.lifetime,
            network_policy: req.network_policy,
            health: Default::default(),
        };
        tracing::Span::current().record("sandbox_id", sb.id.to_string());
        self.meta.insert_sandbox(&mut sb)?;
        let _busy = self.begin(sb.id)?;
        let started = Instant::now();
        match self.boot(&sb, req.template).await {
            Ok(()) => {
                sb.state = SandboxState::Running;
                sb.lifetime.restart(Utc::now());
                self.save(&mut sb)?;
                if let Ok(p) = crate::egress::policy_of(&sb) {
                    self.audit_egress(&sb, "egress.set", &p, true, started);
                }
                info!(ms = started.elapsed().as_millis() as u64, "sandbox running");
                Ok(sb)
            }
            Err(e) => {
                warn!(error = %e, detail = ?e, "sandbox failed to start");
                self.meta.delete_sandbox(sb.id)?;
                Err(CoreError::Internal("sandbox failed to start".into()).into())
            }
        }
    }

    pub(crate) fn spec(
        &self,
        sb: &Sandbox,
        template: &Template,
    ) -> Result<SandboxSpec, EngineError> {
        let net = sb
            .net
            .ok_or_else(|| CoreError::Internal("sandbox has no network slot".into()))?;
        let mut env: Vec<(String, String)> = sb
            .env
            .iter()
            .map(|e| (e.name.clone(), e.value.clone()))
            .collect();
        env.push(("SANDBOX_ID".into(), sb.id.to_string()));
        Ok(SandboxSpec {
            id: sb.id.to_string(),
            hostname: sb.name.clone(),
            template_rootfs: self.templates.rootfs(template),
            env,
            resources: sb.resources,
            net,
            egress: crate::egress::policy_of(sb)?,
        })
    }

    /// Starts the container and waits for its agent.
    async fn boot(&self, sb: &Sandbox, template: &Template) -> Result<(), EngineError> {
        let spec = self.spec(sb, template)?;
        let create_spec = spec.clone();
        self.blocking(move |rt| rt.create(&create_spec)).await?;
        if !agent_client::wait_ready(agent_addr(spec.net), self.cfg.agent_ready_timeout).await {
            let (id, net) = (spec.id.clone(), spec.net);
            let _ = self.blocking(move |rt| rt.destroy(&id, Some(net))).await;
            return Err(
                sandboxd_runtime::RuntimeError::NotReady("agent did not answer".into()).into(),
            );
        }
        Ok(())
    }

    pub(crate) async fn destroy_host(&self, sb: &Sandbox) -> Result<(), EngineError> {
        let (id, net) = (sb.id.to_string(), sb.net);
        self.blocking(move |rt| rt.destroy(&id, net)).await
    }

    #[instrument(skip_all, fields(sandbox_id = %id))]
    pub async fn delete_sandbox(&self, tenant: &Tenant, id: SandboxId) -> Result<(), EngineError> {
        let mut sb = self.load(tenant, id)?;
        sb.state.check(Op::Delete)?;
        let _busy = self.begin(id)?;
        sb.state = SandboxState::Deleting;
        self.save(&mut sb)?;
        if let Err(e) = self.destroy_host(&sb).await {
            warn!(error = %e, detail = ?e, "destroy failed");
            sb.state = SandboxState::Failed;
            sb.status_message = Some("delete failed; retry".into());
            self.save(&mut sb)?;
            return Err(e);
        }
        if let Some(img) = &sb.paused_image {
            let _ = std::fs::remove_dir_all(img);
        }
        self.meta.delete_sandbox(id)?;
        self.audit.forget(id);
        self.lifecycle.forget(id);
        info!("sandbox deleted");
        Ok(())
    }

    fn template_of(&self, sb: &Sandbox) -> Result<&'static Template, EngineError> {
        self.templates.lookup(&sb.template_id).ok_or_else(|| {
            CoreError::Internal(format!("template {} is gone", sb.template_id)).into()
        })
    }

    pub(crate) async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn sandboxd_runtime::Runtime) -> Result<T, sandboxd_runtime::RuntimeError>
            + Send
            + 'static,
    ) -> Result<T, EngineError> {
        let rt = self.runtime.clone();
        Ok(tokio::task::spawn_blocking(move || f(rt.as_ref()))
            .await
            .map_err(|_| CoreError::Internal("runtime task panicked".into()))??)
    }

    /// After a failed lifecycle step: logs the cause, puts the sandbox in `state` with `message`
    /// for the client, and returns the client-facing error.
    pub(crate) fn settle_failure(
        &self,
        sb: &mut Sandbox,
        cause: EngineError,
        state: SandboxState,
        message: &str,
    ) -> EngineError {
        warn!(sandbox_id = %sb.id, error = %cause, detail = ?cause, "{message}");
        sb.state = state;
        sb.status_message = Some(message.to_string());
        if let Err(e) = self.save(sb) {
            return e;
        }
        CoreError::Internal(message.to_string()).into()
    }

    /// Pauses a running sandbox: with `preserve_memory` its processes and memory are saved and
    /// come back on resume; without, only its files are kept. Either way it then holds no
    /// memory or processes (`Paused`, replicas 0).
    #[instrument(skip_all, fields(sandbox_id = %id))]
    pub async fn pause_sandbox(
        &self,
        tenant: &Tenant,
        id: SandboxId,
        preserve_memory: bool,
    ) -> Result<Sandbox, EngineError> {
        let mut sb = self.load(tenant, id)?;
        sb.state.check(Op::Pause)?;
        let _busy = self.begin(id)?;
        sb.state = SandboxState::Pausing;
        self.save(&mut sb)?;
        fault::point("pause.recorded");
        let (_, image) = self.runtime.capture_paths(&format!("pause-{id}"));
        let image_arg = preserve_memory.then(|| image.clone());
        let sid = id.to_string();
        let result = self
            .blocking(move |rt| rt.capture(&sid, image_arg.as_deref(), None, false))
            .await;
        fault::point("pause.captured");
        match result {
            Ok(stats) => {
                info!(
                    paused_ms = stats.paused_ms,
                    checkpoint_ms = stats.checkpoint_ms,
                    preserve_memory,
                    "sandbox paused"
                );
                sb.state = SandboxState::Paused;
                sb.paused_image = preserve_memory.then(|| image.display().to_string());
                sb.status_message = None;
                self.save(&mut sb)?;
                Ok(sb)
            }
            Err(e) => Err(self.settle_failure(
                &mut sb,
                e,
                SandboxState::Running,
                "pause failed; the sandbox kept running",
            )),
        }
    }

    /// Resumes a paused sandbox: from its saved memory if it was paused with it, else a fresh
    /// boot on its saved files.
    #[instrument(skip_all, fields(sandbox_id = %id))]
    pub async fn resume_sandbox(
        &self,
        tenant: &Tenant,
        id: SandboxId,
    ) -> Result<Sandbox, EngineError> {
        let mut sb = self.load(tenant, id)?;
        sb.state.check(Op::Resume)?;
        let _busy = self.begin(id)?;
        let template = self.template_of(&sb)?;
        let spec = self.spec(&sb, template)?;
        sb.state = SandboxState::Resuming;
        self.save(&mut sb)?;
        fault::point("resume.recorded");
        let image = sb.paused_image.clone().map(std::path::PathBuf::from);
        let image_arg = image.clone();
        let rspec = spec.clone();
        let started = Instant::now();
        let mut result = self
            .blocking(move |rt| rt.resume(&rspec, image_arg.as_deref()))
            .await;
        fault::point("resume.launched");
        if result.is_ok()
            && !agent_client::wait_ready(agent_addr(spec.net), self.cfg.agent_ready_timeout).await
        {
            result =
                Err(sandboxd_runtime::RuntimeError::NotReady("agent did not answer".into()).into());
        }
        match result {
            Ok(()) => {
                info!(
                    ms = started.elapsed().as_millis() as u64,
                    from_memory = image.is_some(),
                    "sandbox resumed"
                );
                if let Some(img) = &image {
                    let _ = std::fs::remove_dir_all(img);
                }
                sb.paused_image = None;
                sb.state = SandboxState::Running;
                sb.status_message = None;
                sb.last_activity_at = Utc::now();
                sb.lifetime.restart(sb.last_activity_at);
                self.save(&mut sb)?;
                self.lifecycle.restarted(id);
                Ok(sb)
            }
            Err(e) => Err(self.settle_failure(
                &mut sb,
                e,
                SandboxState::Paused,
                "resume failed; the sandbox is still paused",
            )),
        }
    }

    /// Records activity (keepalive); returns the updated record.
    pub fn keepalive(&self, tenant: &Tenant, id: SandboxId) -> Result<Sandbox, EngineError> {
        let mut sb = self.load(tenant, id)?;
        sb.last_activity_at = Utc::now();
        self.save(&mut sb)?;
        Ok(sb)
    }

    /// Updates the timeout windows: each given field replaces the old value (0 = off); absent
    /// fields stay. Restarts the idle clock.
    pub fn set_timeout(
        &self,
        tenant: &Tenant,
        id: SandboxId,
        u: TimeoutUpdate,
    ) -> Result<Sandbox, EngineError> {
        let mut sb = self.load(tenant, id)?;
        let on = |v: u64| (v > 0).then_some(v);
        if let Some(t) = u.idle_secs {
            sb.timeout_secs = on(t);
        }
        if let Some(t) = u.max_lifetime_secs {
            sb.windows.max_lifetime_secs = on(t);
        }
        if let Some(t) = u.paused_retention_secs {
            sb.windows.paused_retention_secs = on(t);
        }
        if let Some(o) = u.on_idle {
            sb.windows.on_idle = o;
        }
        sb.last_activity_at = Utc::now();
        self.save(&mut sb)?;
        Ok(sb)
    }

    pub fn audit_trail(
        &self,
        tenant: &Tenant,
        id: SandboxId,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        before_seq: Option<u64>,
        limit: usize,
    ) -> Result<crate::AuditPage, EngineError> {
        self.load(tenant, id)?;
        Ok(self.audit.list(id, from, to, before_seq, limit, Utc::now()))
    }

    /// Checks a data-plane call may run now and marks activity.
    fn running_for(&self, principal: &Principal, id: SandboxId) -> Result<Sandbox, EngineError> {
        let sb = self.sandbox_for(principal, id)?;
        sb.state.check(Op::Exec)?;
        // The idle clock: at most one write a second per sandbox, of that field alone.
        let now = Utc::now();
        if now - sb.last_activity_at > chrono::Duration::seconds(1) {
            self.meta.touch_sandbox(id, now)?;
        }
        Ok(sb)
    }

    /// Sends one request to the sandbox's agent; `tool`/`target` go to the audit trail.
    pub async fn agent_call(
        &self,
        principal: &Principal,
        id: SandboxId,
        tool: &str,
        target: Option<String>,
        req: Request,
    ) -> Result<Reply, EngineError> {
        let sb = self.running_for(principal, id)?;
        let net = sb
            .net
            .ok_or_else(|| CoreError::Internal("sandbox has no network slot".into()))?;
        let command = match &req {
            Request::Start(spec) | Request::StartFollow(spec) => crate::program_of(&spec.argv),
            _ => None,
        };
        let started = Instant::now();
        let result = agent_client::call(agent_addr(net), &req).await;
        let (success, reason) = match &result {
            Ok(Reply::Error { code, .. }) => (false, Some(code.clone())),
            Ok(_) => (true, None),
            Err(_) => (false, Some("unavailable".to_string())),
        };
        self.audit.record(
            id,
            AuditRecord {
                seq: 0,
                at: Utc::now(),
                tool: tool.to_string(),
                command,
                target,
                success,
                reason_code: reason,
                duration_ms: started.elapsed().as_millis() as u64,
            },
        );
        Ok(result?)
    }

    /// Adds a data-plane call that went over a stream to the audit trail.
    pub fn audit_event(
        &self,
        id: SandboxId,
        tool: &str,
        command: Option<String>,
        target: Option<String>,
        reason_code: Option<String>,
        duration_ms: u64,
    ) {
        self.audit.record(
            id,
            AuditRecord {
                seq: 0,
                at: Utc::now(),
                tool: tool.to_string(),
                command,
                target,
                success: reason_code.is_none(),
                reason_code,
                duration_ms,
            },
        );
    }

    /// A code-interpreter exchange on a pooled connection: the stream and the key to give it
    /// back with (`agent_pool_put`) once its last reply was read.
    pub async fn agent_stream_pooled(
        &self,
        principal: &Principal,
        id: SandboxId,
        req: Request,
    ) -> Result<(ReplyStream, agent_client::PoolKey), EngineError> {
        let sb = self.running_for(principal, id)?;
        let net = sb
            .net
            .ok_or_else(|| CoreError::Internal("sandbox has no network slot".into()))?;
        let key = agent_client::PoolKey {
            sandbox: id.to_string(),
            version: sb.updated_at.timestamp_micros(),
            addr: agent_addr(net),
        };
        let s = self.agent_pool.open(&key, &req).await?;
        Ok((s, key))
    }

    /// Gives back a connection from `agent_stream_pooled` whose exchange is complete.
    pub fn agent_pool_put(&self, key: agent_client::PoolKey, s: ReplyStream) {
        self.agent_pool.put(key, s);
    }

    /// Opens a reply stream to the sandbox's agent (process logs).
    pub async fn agent_stream(
        &self,
        principal: &Principal,
        id: SandboxId,
        req: Request,
    ) -> Result<ReplyStream, EngineError> {
        let sb = self.running_for(principal, id)?;
        let net = sb
            .net
            .ok_or_else(|| CoreError::Internal("sandbox has no network slot".into()))?;
        Ok(agent_client::open(agent_addr(net), &req).await?)
    }

    /// Opens (`SessionOpen`) or attaches to (`SessionAttach`) a session of the sandbox: the
    /// agent's reply and, when it is a `Session`, the attached stream. Audited as `tool`.
    pub async fn session_attach(
        &self,
        principal: &Principal,
        id: SandboxId,
        tool: &str,
        req: Request,
    ) -> Result<
        (
            Reply,
            Option<(agent_client::SessionReader, agent_client::SessionWriter)>,
        ),
        EngineError,
    > {
        let sb = self.running_for(principal, id)?;
        let net = sb
            .net
            .ok_or_else(|| CoreError::Internal("sandbox has no network slot".into()))?;
        let (command, target) = match &req {
            Request::SessionOpen(spec) => (
                spec.argv.as_deref().and_then(crate::program_of),
                spec.id.clone(),
            ),
            Request::SessionAttach { id } => (None, Some(id.clone())),
            _ => (None, None),
        };
        let started = Instant::now();
        let result = agent_client::attach(agent_addr(net), &req).await;
        let reason = match &result {
            Ok((Reply::Error { code, .. }, _)) => Some(code.clone()),
            Ok(_) => None,
            Err(_) => Some("unavailable".to_string()),
        };
        self.audit_event(
            id,
            tool,
            command,
            target,
            reason,
            started.elapsed().as_millis() as u64,
        );
        Ok(result?)
    }

    /// At shutdown: releases node resources if no sandbox is left.
    pub fn close(&self) {
        if let Err(e) = self.runtime.close_if_idle() {
            warn!(error = %e, "could not release the volume");
        }
    }

    /// Whether the sandbox is (still) running, per the engine's record.
    pub fn is_running(&self, id: SandboxId) -> bool {
        matches!(self.meta.get_sandbox(id), Ok(Some(sb)) if sb.state.expects_container())
    }

    /// Watches running sandboxes. One whose container died without being asked to (gVisor
    /// crashed, the kernel's OOM killer took it) gets `last_crash` recorded and is booted
    /// again on its writable layer (files kept, processes gone) after a backoff; after
    /// [`MAX_CRASHES`] crashes within [`CRASH_WINDOW`] it stays stopped with the reason.
    /// A sandbox that is paused, stopped or in any operation is never touched. Runs until
    /// the process ends.
    pub async fn watch(self: std::sync::Arc<Self>, every: std::time::Duration) {
        loop {
            tokio::time::sleep(every).await;
            let Ok(all) = self.meta.all_sandboxes() else {
                continue;
            };
            for sb in all.into_iter().filter(|s| s.state == SandboxState::Running) {
                if self.runtime.alive(&sb.id.to_string()) {
                    continue;
                }
                if let Some((tenant, id, delay)) = self.crashed(sb.id).await {
                    let me = self.clone();
                    tokio::spawn(async move { me.restart_after_crash(tenant, id, delay).await });
                }
            }
        }
    }

    /// Records a crash of a sandbox found dead; returns what to restart and when, unless it
    /// crashed too often.
    async fn crashed(
        &self,
        id: SandboxId,
    ) -> Option<(sandboxd_core::Tenant, SandboxId, std::time::Duration)> {
        let _busy = self.begin(id).ok()?;
        // Re-read under the busy mark: a delete or pause may have just finished.
        let mut sb = self.meta.get_sandbox(id).ok()??;
        if sb.state != SandboxState::Running || self.runtime.alive(&sb.id.to_string()) {
            return None;
        }
        let oom = self
            .runtime
            .usage(&sb.id.to_string())
            .map(|u| u.oom_kills > 0)
            .unwrap_or(false);
        let now = Utc::now();
        let reason = if oom { "OOMKilled" } else { "Crashed" };
        warn!(sandbox_id = %sb.id, oom, "sandbox stopped unexpectedly");
        if oom {
            self.lifecycle.oom_death(sb.id);
        }
        sb.health.crashes.retain(|t| now - *t < CRASH_WINDOW);
        sb.health.crashes.push(now);
        sb.health.last_crash = Some(sandboxd_core::LastCrash {
            at: now,
            reason: reason.into(),
            storage_reset: false,
        });
        let sid = sb.id.to_string();
        if let Err(e) = self.blocking(move |rt| rt.discard_dead(&sid)).await {
            warn!(sandbox_id = %sb.id, error = %e, "clearing the dead container failed");
        }
        let n = sb.health.crashes.len();
        let give_up = n > MAX_CRASHES;
        sb.state = SandboxState::Stopped;
        sb.status_message = Some(if give_up {
            format!(
                "stopped: crashed {n} times within {} minutes ({}); not restarted. Its files are kept: resume or start it, or roll back to a snapshot",
                CRASH_WINDOW.num_minutes(),
                if oom { "out of memory" } else { "the sandbox process died" }
            )
        } else if oom {
            "restarting: stopped out of memory (exceeded its memory limit)".into()
        } else {
            "restarting: the sandbox stopped unexpectedly".into()
        });
        let _ = self.save(&mut sb);
        self.audit.record(
            sb.id,
            AuditRecord {
                seq: 0,
                at: now,
                tool: "sandbox.crash".into(),
                command: None,
                target: Some(reason.into()),
                success: false,
                reason_code: Some(if give_up { "CRASH_LOOP" } else { reason }.to_uppercase()),
                duration_ms: 0,
            },
        );
        if give_up {
            return None;
        }
        // 1 s, 2 s, 4 s … between crashes that come close together.
        let delay = std::time::Duration::from_secs(1 << (n - 1).min(5));
        Some((sb.tenant, sb.id, delay))
    }

    /// Boots a crashed sandbox again on its files, unless someone acted on it meanwhile.
    async fn restart_after_crash(
        &self,
        tenant: sandboxd_core::Tenant,
        id: SandboxId,
        delay: std::time::Duration,
    ) {
        tokio::time::sleep(delay).await;
        let Ok(Some(sb)) = self.meta.get_sandbox(id) else {
            return;
        };
        let crashed_at = sb.health.last_crash.as_ref().map(|c| c.at);
        if sb.state != SandboxState::Stopped
            || !sb
                .status_message
                .as_deref()
                .is_some_and(|m| m.starts_with("restarting"))
        {
            return;
        }
        let started = Instant::now();
        match self.resume_sandbox(&tenant, id).await {
            Ok(_) => {
                if let Ok(Some(mut sb)) = self.meta.get_sandbox(id) {
                    if sb.health.last_crash.as_ref().map(|c| c.at) == crashed_at {
                        sb.health.restarts += 1;
                        let _ = self.save(&mut sb);
                    }
                }
                info!(sandbox_id = %id, ms = started.elapsed().as_millis() as u64, "sandbox restarted after a crash");
                self.audit_event(
                    id,
                    "sandbox.restart",
                    None,
                    None,
                    None,
                    started.elapsed().as_millis() as u64,
                );
            }
            Err(e) => {
                warn!(sandbox_id = %id, error = %e, "restart after a crash failed");
                self.audit_event(
                    id,
                    "sandbox.restart",
                    None,
                    None,
                    Some("RESTART_FAILED".into()),
                    started.elapsed().as_millis() as u64,
                );
            }
        }
    }

    /// At restart: a pause memory image is kept only for a sandbox that was cleanly paused with
    /// it, or whose resume had not started yet. One written by a pause cut short is not trusted
    /// (the sandbox is paused on its files alone), and a resumed sandbox no longer needs its.
    fn settle_memory_image(&self, sb: &mut Sandbox, next: SandboxState) {
        let keep = match (sb.state, next) {
            (SandboxState::Paused | SandboxState::Resuming, SandboxState::Paused) => sb
                .paused_image
                .as_deref()
                .is_some_and(|p| std::path::Path::new(p).is_dir()),
            _ => false,
        };
        if sb.state == SandboxState::Pausing && next == SandboxState::Paused {
            sb.status_message =
                Some("paused without memory: the daemon stopped while pausing".into());
        }
        if !keep {
            sb.paused_image = None;
            let (_, image) = self.runtime.capture_paths(&format!("pause-{}", sb.id));
            let _ = std::fs::remove_dir_all(image);
        }
    }

    /// After a daemon restart: settles every sandbox against what is really running, and
    /// removes host objects that belong to no sandbox.
    pub async fn reconcile(&self) -> Result<(), EngineError> {
        let all = self.meta.all_sandboxes()?;
        for mut sb in all {
            let id = sb.id.to_string();
            let status = self.blocking(move |rt| rt.status(&id)).await?;
            let mut alive = status == ContainerStatus::Running;
            if alive {
                if let Some(net) = sb.net {
                    alive = agent_client::wait_ready(
                        agent_addr(net),
                        std::time::Duration::from_secs(3),
                    )
                    .await;
                }
            }
            let next = sb.state.after_restart(alive);
            info!(sandbox_id = %sb.id, from = sb.state.as_str(), to = next.as_str(), alive, "reconciled");
            let before = sb.clone();
            self.settle_memory_image(&mut sb, next);
            match next {
                SandboxState::Deleting => {
                    self.destroy_host(&sb).await?;
                    self.meta.delete_sandbox(sb.id)?;
                    continue;
                }
                SandboxState::Failed => {
                    if sb.state != SandboxState::Failed {
                        sb.status_message =
                            Some("sandbox stopped while the daemon was down".into());
                    }
                    // Nothing of a dead sandbox keeps running: free its mounts, netns, cgroups.
                    self.destroy_host(&sb).await?;
                }
                _ => {}
            }
            sb.state = next;
            if sb != before {
                self.save(&mut sb)?;
            }
        }
        self.reconcile_snapshots().await?;
        let keep: Vec<String> = self
            .meta
            .all_sandboxes()?
            .iter()
            .filter(|s| s.state != SandboxState::Failed)
            .map(|s| s.id.to_string())
            .collect();
        let removed = self.blocking(move |rt| rt.sweep(&keep)).await?;
        if !removed.is_empty() {
            info!(?removed, "removed orphaned host objects");
        }
        // Objects of other data dirs that are gone (their daemon died and the dir was deleted).
        let foreign = self.blocking(|rt| Ok(rt.sweep_orphans())).await?;
        if !foreign.is_empty() {
            info!(
                ?foreign,
                "removed the host objects of sandboxes whose data dir is gone"
            );
        }
        Ok(())
    }
}
