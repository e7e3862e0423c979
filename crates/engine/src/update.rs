//! Live update of a sandbox: CPU and memory resized in place (cgroup limits and the agent's
//! memory watchdog), and edits of a NeevCloud egress allow-list (`egress_add` /
//! `egress_remove`).

use std::time::Instant;

use chrono::Utc;
use sandboxd_agent::proto::Request;
use sandboxd_core::{CoreError, Resources, Sandbox, SandboxId, SandboxState, Tenant};
use serde_json::{json, Value};
use tracing::warn;

use crate::{agent_addr, agent_client, AuditRecord, Engine, EngineError};

impl Engine {
    /// Sets a sandbox's CPU and memory. A running sandbox is resized in place (no restart);
    /// a paused or stopped one gets the new size when it comes back. Growth is admitted
    /// against the node's capacity like a create. Disk cannot change in place.
    pub async fn resize_sandbox(
        &self,
        tenant: &Tenant,
        id: SandboxId,
        new: Resources,
    ) -> Result<Sandbox, EngineError> {
        let mut sb = self.get_sandbox(tenant, id)?;
        if new.disk_mib != sb.resources.disk_mib {
            return Err(CoreError::invalid(
                "resources.disk_gb",
                "disk is not resizable in place; create a new sandbox with the size you need",
            )
            .into());
        }
        if new == sb.resources {
            return Ok(sb);
        }
        let _busy = self.begin(id)?;
        let grow = Resources {
            cpu_millis: new.cpu_millis.saturating_sub(sb.resources.cpu_millis),
            memory_mib: new.memory_mib.saturating_sub(sb.resources.memory_mib),
            disk_mib: 0,
        };
        if sb.state.expects_container() {
            self.admit_on_node(&grow)?;
        }
        let started = Instant::now();
        let result = match (sb.state, sb.net) {
            (SandboxState::Running, Some(net)) => {
                let sid = id.to_string();
                let r = new;
                // Raise the agent's limit after the cgroup's, lower it before: the watchdog
                // always stays under the cgroup.
                let growing = new.memory_mib >= sb.resources.memory_mib;
                if !growing {
                    self.set_agent_memory(net, new).await?;
                }
                let applied = self.blocking(move |rt| rt.resize(&sid, &r)).await;
                match applied {
                    Ok(()) if growing => self.set_agent_memory(net, new).await,
                    Ok(()) => Ok(()),
                    Err(e) => {
                        if !growing {
                            let _ = self.set_agent_memory(net, sb.resources).await;
                        }
                        warn!(sandbox_id = %id, error = %e, "resize failed; old size stays");
                        Err(CoreError::Conflict(format!(
                            "the sandbox could not be resized to {} MiB (it may be using more than that now)",
                            new.memory_mib
                        ))
                        .into())
                    }
                }
            }
            _ => Ok(()),
        };
        self.audit.record(
            id,
            AuditRecord {
                seq: 0,
                at: Utc::now(),
                tool: "sandbox.resize".into(),
                command: None,
                target: Some(format!(
                    "cpu {} -> {}, memory {} -> {} MiB",
                    sb.resources.cpu_cores(),
                    new.cpu_cores(),
                    sb.resources.memory_mib,
                    new.memory_mib
                )),
                success: result.is_ok(),
                reason_code: result.as_ref().err().map(|_| "RESIZE_FAILED".to_string()),
                duration_ms: started.elapsed().as_millis() as u64,
            },
        );
        result?;
        sb.resources = new;
        self.save(&mut sb)?;
        Ok(sb)
    }

    async fn set_agent_memory(
        &self,
        net: sandboxd_core::NetSlot,
        r: Resources,
    ) -> Result<(), EngineError> {
        let req = Request::SetMemoryLimit {
            bytes: r.memory_bytes(),
        };
        match agent_client::call(agent_addr(net), &req).await? {
            sandboxd_agent::proto::Reply::Ok => Ok(()),
            other => Err(CoreError::Internal(format!(
                "the sandbox agent refused the new memory limit: {other:?}"
            ))
            .into()),
        }
    }
}

/// Applies `egress_remove` then `egress_add` to a NeevCloud egress record (`{mode,
/// allow_internet, allow: [{host, ports?, protocol?}]}`): removal by host, an added host
/// replaces a rule for the same host. A `deny_all` policy cannot be edited.
pub fn edit_allow_list(
    current: Option<&Value>,
    add: &[Value],
    remove: &[Value],
) -> Result<Value, CoreError> {
    let cur = current
        .cloned()
        .unwrap_or_else(|| json!({"mode": "deny_all", "allow": []}));
    if cur.get("mode").and_then(Value::as_str) != Some("allow_list") {
        return Err(CoreError::invalid(
            "egress_add",
            "the sandbox's egress mode is deny_all: switch it with `egress` (mode allow_list) first",
        ));
    }
    let host = |r: &Value| {
        r.get("host")
            .and_then(Value::as_str)
            .map(str::to_ascii_lowercase)
    };
    let mut allow: Vec<Value> = cur
        .get("allow")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for r in remove {
        let h = host(r);
        allow.retain(|a| host(a) != h);
    }
    for r in add {
        let h = host(r);
        allow.retain(|a| host(a) != h);
        allow.push(r.clone());
    }
    if allow.len() > 100 {
        return Err(CoreError::invalid(
            "egress_add",
            "the allow-list would have more than 100 rules",
        ));
    }
    let mut out = cur;
    out["allow"] = Value::Array(allow);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allow_list_edits_remove_first_and_replace_by_host() {
        let cur = json!({"mode": "allow_list", "allow_internet": false,
                         "allow": [{"host": "1.2.3.4"}, {"host": "example.com", "ports": [80]}]});
        let out = edit_allow_list(
            Some(&cur),
            &[
                json!({"host": "EXAMPLE.com", "ports": [443]}),
                json!({"host": "5.6.7.8"}),
            ],
            &[json!({"host": "1.2.3.4"})],
        )
        .unwrap();
        assert_eq!(
            out["allow"],
            json!([{"host": "EXAMPLE.com", "ports": [443]}, {"host": "5.6.7.8"}])
        );
        assert_eq!(out["mode"], "allow_list");
        let deny = json!({"mode": "deny_all", "allow": []});
        assert!(edit_allow_list(Some(&deny), &[json!({"host": "1.1.1.1"})], &[]).is_err());
        assert!(edit_allow_list(None, &[json!({"host": "1.1.1.1"})], &[]).is_err());
    }
}
