//! Egress policy changes at run time, the denied-connection counter, and re-installing the
//! nftables objects if another process recreated the shared table.

use std::time::Instant;

use chrono::Utc;
use sandboxd_core::{CoreError, Sandbox, SandboxId, SandboxState, Tenant};
use sandboxd_egress::Policy;
use serde_json::Value;
use tracing::{info, warn};

use crate::{AuditRecord, Engine, EngineError};

/// A new policy, in the dialect it was given in. It replaces whatever the sandbox had.
#[derive(Debug, Clone)]
pub enum EgressUpdate {
    /// A validated NeevCloud `egress` object.
    Neev(Value),
    /// A validated Leap0 `network_policy` object.
    Leap0(Value),
}

/// The policy a sandbox record holds.
pub fn policy_of(sb: &Sandbox) -> Result<Policy, EngineError> {
    Policy::of_record(sb.egress.as_ref(), sb.network_policy.as_ref())
        .map_err(|e| CoreError::Internal(format!("stored egress policy: {e}")).into())
}

/// A one-line description of a policy for the audit trail and the log (no header values).
pub fn summary(p: &Policy) -> String {
    if p.is_deny_all() {
        return "deny-all".into();
    }
    let cidrs: Vec<String> = p
        .cidrs
        .iter()
        .map(|r| {
            let proto = match r.proto {
                sandboxd_egress::Proto::Tcp => "/tcp",
                sandboxd_egress::Proto::Udp => "/udp",
                sandboxd_egress::Proto::Any => "",
            };
            if r.ports.is_empty() {
                format!("{}{proto}", r.net)
            } else {
                let ports: Vec<String> = r.ports.iter().map(u16::to_string).collect();
                format!("{}:{}{proto}", r.net, ports.join(","))
            }
        })
        .collect();
    let domains: Vec<String> = p.domains.iter().map(|d| d.pattern.to_string()).collect();
    let mut s = format!("allow {}", [cidrs, domains].concat().join(" "));
    if p.cidrs.iter().any(|r| r.net.len == 0) {
        s.push_str(" (internet)");
    }
    s
}

impl Engine {
    /// Replaces transform header values in a Leap0 policy with references to sealed copies.
    pub(crate) fn seal_policy(&self, policy: &mut Option<Value>) -> Result<(), EngineError> {
        let Some(p) = policy.as_mut() else {
            return Ok(());
        };
        if p.get("transforms").is_none() {
            return Ok(());
        }
        let store = self.egress_secrets.as_ref().ok_or_else(|| {
            CoreError::invalid(
                "network_policy.transforms",
                "transforms are not available on this node",
            )
        })?;
        store.seal_policy(p).map_err(|e| {
            warn!(error = %e, "sealing a transform secret failed");
            CoreError::Internal("could not store the transform secrets".into())
        })?;
        Ok(())
    }

    /// Replaces a sandbox's egress policy without restarting it: stored, then installed in one
    /// nftables transaction (a paused or stopped sandbox gets it when it runs again).
    pub async fn update_egress(
        &self,
        tenant: &Tenant,
        id: SandboxId,
        update: EgressUpdate,
    ) -> Result<Sandbox, EngineError> {
        let mut sb = self.get_sandbox(tenant, id)?;
        let _busy = self.begin(id)?;
        let mut sb_new = sb.clone();
        match update {
            EgressUpdate::Neev(v) => {
                sb_new.egress = Some(v);
                sb_new.network_policy = None;
            }
            EgressUpdate::Leap0(v) => {
                let mut v = Some(v);
                self.seal_policy(&mut v)?;
                sb_new.network_policy = v;
                sb_new.egress = None;
            }
        }
        let policy = policy_of(&sb_new)?;
        let started = Instant::now();
        let result = match (sb.net, sb.state) {
            (Some(net), st) if st != SandboxState::Deleting => {
                let (sid, p) = (id.to_string(), policy.clone());
                self.blocking(move |rt| rt.set_egress(&sid, net, &p)).await
            }
            _ => Ok(()),
        };
        self.audit_egress(&sb_new, "egress.update", &policy, result.is_ok(), started);
        if let Err(e) = result {
            warn!(sandbox_id = %id, error = %e, detail = ?e, "egress update failed; old policy stays");
            return Err(CoreError::Internal("egress policy could not be applied".into()).into());
        }
        sb.egress = sb_new.egress;
        sb.network_policy = sb_new.network_policy;
        self.save(&mut sb)?;
        Ok(sb)
    }

    /// Records a policy set or change in the sandbox's audit trail and the log.
    pub(crate) fn audit_egress(
        &self,
        sb: &Sandbox,
        tool: &str,
        policy: &Policy,
        success: bool,
        started: Instant,
    ) {
        let what = summary(policy);
        info!(sandbox_id = %sb.id, policy = %what, success, "{tool}");
        self.audit.record(
            sb.id,
            AuditRecord {
                seq: 0,
                at: Utc::now(),
                tool: tool.to_string(),
                command: None,
                target: Some(what),
                success,
                reason_code: (!success).then(|| "EGRESS_APPLY_FAILED".to_string()),
                duration_ms: started.elapsed().as_millis() as u64,
            },
        );
    }

    /// Logs, per sandbox of this daemon, how many packets its policy dropped since the last
    /// call (one line per sandbox per call; call it every few seconds: that is the rate
    /// limit). `seen` carries the previous counts.
    pub async fn log_egress_denials(&self, seen: &mut std::collections::HashMap<String, u64>) {
        let Ok(now) = tokio::task::spawn_blocking(sandboxd_egress::nft::denied_all).await else {
            return;
        };
        let Ok(all) = self.meta.all_sandboxes() else {
            return;
        };
        for sb in all {
            let short = sandboxd_runtime::gvisor::short_of(&sb.id.to_string());
            let Some(&n) = now.get(&short) else { continue };
            let before = seen.insert(short, n).unwrap_or(0);
            if n > before {
                warn!(sandbox_id = %sb.id, denied = n - before, denied_total = n, "egress packets denied by policy");
            }
        }
    }

    /// Packets sandbox `id` sent that its egress policy dropped (nftables counter).
    /// [`Engine::egress_denied_total`] of many sandboxes, read in one pass.
    pub fn egress_denied_many(&self, ids: &[SandboxId]) -> Vec<u64> {
        let ids: Vec<String> = ids.iter().map(|i| i.to_string()).collect();
        self.runtime.egress_denied_many(&ids)
    }

    pub fn egress_denied_total(&self, id: SandboxId) -> u64 {
        self.runtime.egress_denied(&id.to_string())
    }

    /// If the shared table lost this daemon's objects (another process recreated it; another
    /// daemon on the host may already have put its own base back), re-installs the base chains
    /// and the policy of every sandbox that holds a network.
    pub async fn reconcile_egress(&self) {
        let attached = tokio::task::spawn_blocking(sandboxd_egress::nft::attached)
            .await
            .ok()
            .flatten();
        let expected: Vec<String> = self
            .meta
            .all_sandboxes()
            .unwrap_or_default()
            .iter()
            .filter(|sb| sb.net.is_some() && sb.state.expects_container())
            .map(|sb| {
                format!(
                    "s-{}",
                    sandboxd_runtime::gvisor::short_of(&sb.id.to_string())
                )
            })
            .collect();
        match attached {
            Some(have) if expected.iter().all(|v| have.contains(v)) => {}
            _ => self.reinstall_egress().await,
        }
    }

    /// Re-installs the base chains and every sandbox's policy (the table was deleted).
    pub async fn reinstall_egress(&self) {
        warn!("egress firewall objects missing; re-installing the base and every policy");
        if let Err(e) = tokio::task::spawn_blocking(sandboxd_egress::nft::install_base).await {
            warn!(error = %e, "re-install egress base");
        }
        self.reapply_egress().await;
    }

    /// Installs the policy of every sandbox that holds a network (at start: the resolver and
    /// proxy of this process know no sandbox yet, and their ports may have changed).
    pub async fn reapply_egress(&self) {
        let Ok(all) = self.meta.all_sandboxes() else {
            return;
        };
        for sb in all {
            let (Some(net), Ok(policy)) = (sb.net, policy_of(&sb)) else {
                continue;
            };
            if sb.state == SandboxState::Deleting {
                continue;
            }
            let sid = sb.id.to_string();
            if let Err(e) = self
                .blocking(move |rt| rt.set_egress(&sid, net, &policy))
                .await
            {
                warn!(sandbox_id = %sb.id, error = %e, "re-install egress policy");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn summaries() {
        assert_eq!(summary(&Policy::deny_all()), "deny-all");
        assert_eq!(summary(&Policy::allow_all()), "allow 0.0.0.0/0 (internet)");
        let p = Policy::from_neev(Some(&json!({"mode": "allow_list", "allow": [
            {"host": "198.18.0.2", "ports": [80], "protocol": "TCP"}, {"host": "*.example.com"}]})))
        .unwrap();
        assert_eq!(summary(&p), "allow 198.18.0.2/32:80/tcp *.example.com");
    }
}
