//! NeevCloud v1beta1 request and response shapes, and their translation to core types.

use chrono::{DateTime, SecondsFormat, Utc};
use sandboxd_core::validate::{dns1123_label, env_name, ranged_multiple};
use sandboxd_core::{EnvVar, Resources, Sandbox, SandboxState};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::error::ApiError;

pub fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvVarIn {
    pub name: String,
    pub value: String,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ResourcesIn {
    pub cpu: Option<f64>,
    pub memory_gb: Option<i64>,
    pub disk_gb: Option<i64>,
    pub rootfs_disk_gb: Option<i64>,
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum EgressMode {
    DenyAll,
    AllowList,
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    #[serde(rename = "TCP")]
    Tcp,
    #[serde(rename = "UDP")]
    Udp,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EgressRuleIn {
    pub host: String,
    pub ports: Option<Vec<i64>>,
    /// Enforced by the egress engine; absent = TCP and UDP.
    pub protocol: Option<Protocol>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EgressIn {
    pub mode: Option<EgressMode>,
    pub allow_internet: Option<bool>,
    pub allow: Option<Vec<EgressRuleIn>>,
}

#[derive(Debug, Deserialize)]
pub struct CreateReq {
    pub name: Option<String>,
    pub region: Option<String>,
    pub env: Option<Vec<EnvVarIn>>,
    pub resources: Option<ResourcesIn>,
    pub egress: Option<EgressIn>,
    pub sandbox_template_id: Option<String>,
    pub from_snapshot: Option<String>,
    pub restore: Option<String>,
    pub image: Option<String>,
    pub command: Option<Vec<String>>,
    pub lifecycle: Option<Value>,
    /// `manual` (default) or `automatic` (seed 004); the SDK's camelCase is accepted too.
    #[serde(alias = "snapshotMode")]
    pub snapshot_mode: Option<String>,
    #[serde(alias = "snapshotFrequency")]
    pub snapshot_frequency: Option<String>,
}

/// `snapshot_mode` + `snapshot_frequency`: the cron expression of an automatic schedule, or
/// `None` for manual. The frequency is required when automatic and refused otherwise.
pub fn snapshot_schedule(
    mode: Option<&str>,
    frequency: Option<&str>,
) -> Result<Option<String>, ApiError> {
    match (mode.unwrap_or("manual"), frequency) {
        ("automatic", Some(f)) => {
            sandboxd_core::cron::Schedule::parse(f)
                .map_err(|e| ApiError::invalid("snapshot_frequency", e.to_string()))?;
            Ok(Some(f.split_whitespace().collect::<Vec<_>>().join(" ")))
        }
        ("automatic", None) => Err(ApiError::invalid(
            "snapshot_frequency",
            "is required when snapshot_mode is automatic (a five-field cron expression)",
        )),
        ("manual", None) => Ok(None),
        ("manual", Some(_)) => Err(ApiError::invalid(
            "snapshot_frequency",
            "is only allowed when snapshot_mode is automatic",
        )),
        _ => Err(ApiError::invalid(
            "snapshot_mode",
            "must be one of: manual, automatic",
        )),
    }
}

pub fn resources(r: Option<&ResourcesIn>) -> Result<Resources, ApiError> {
    let mut out = Resources::default();
    let Some(r) = r else { return Ok(out) };
    if let Some(cpu) = r.cpu {
        ranged_multiple("resources.cpu", cpu, 0.5, 8.0, 0.5)?;
        out.cpu_millis = (cpu * 1000.0).round() as u32;
    }
    if let Some(m) = r.memory_gb {
        ranged_multiple("resources.memory_gb", m as f64, 1.0, 16.0, 1.0)?;
        out.memory_mib = (m as u32) * 1024;
    }
    if let Some(d) = r.disk_gb {
        ranged_multiple("resources.disk_gb", d as f64, 10.0, 100.0, 10.0)?;
        out.disk_mib = (d as u32) * 1024;
    }
    if let Some(d) = r.rootfs_disk_gb {
        ranged_multiple("resources.rootfs_disk_gb", d as f64, 1.0, 99.0, 1.0)?;
    }
    Ok(out)
}

pub fn env(list: Option<&[EnvVarIn]>) -> Result<Vec<EnvVar>, ApiError> {
    let mut out = Vec::new();
    for (i, e) in list.unwrap_or_default().iter().enumerate() {
        env_name(&format!("env[{i}].name"), &e.name)?;
        if e.value.len() > 32 * 1024 {
            return Err(ApiError::invalid(
                format!("env[{i}].value"),
                "must be at most 32 KiB",
            ));
        }
        out.push(EnvVar {
            name: e.name.clone(),
            value: e.value.clone(),
        });
    }
    if out.len() > 256 {
        return Err(ApiError::invalid("env", "at most 256 variables"));
    }
    Ok(out)
}

fn valid_host(h: &str) -> bool {
    if h.parse::<std::net::IpAddr>().is_ok() {
        return true;
    }
    if let Some((ip, len)) = h.split_once('/') {
        return match ip.parse::<std::net::IpAddr>() {
            Ok(std::net::IpAddr::V4(_)) => len.parse::<u8>().is_ok_and(|l| l <= 32),
            Ok(std::net::IpAddr::V6(_)) => len.parse::<u8>().is_ok_and(|l| l <= 128),
            Err(_) => false,
        };
    }
    let name = h.strip_prefix("*.").unwrap_or(h);
    !name.is_empty()
        && name.len() <= 253
        && name.contains('.')
        && name.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

/// Validates the egress object and returns its normalised JSON, which the egress engine
/// enforces. IPv4 IP/CIDR rules are enforced in nftables (IPv6 ones admit nothing: a sandbox
/// has no IPv6 path); domain rules need the egress proxy and are refused where it is not
/// available.
pub fn egress(e: Option<&EgressIn>) -> Result<Option<Value>, ApiError> {
    let Some(e) = e else { return Ok(None) };
    let mode = e.mode.unwrap_or(EgressMode::DenyAll);
    let rules = e.allow.as_deref().unwrap_or_default();
    let mut out = Vec::new();
    for (i, r) in rules.iter().enumerate() {
        if !valid_host(&r.host) {
            return Err(ApiError::invalid(
                format!("egress.allow[{i}].host"),
                "must be an IP address, a CIDR block or a domain name",
            ));
        }
        // IPv6 rules are kept but admit nothing (sandboxes have no IPv6 path): stricter than
        // asked, never looser. The SDK's `allow_internet=True` sends `::/0` beside `0.0.0.0/0`.
        let ip = r.host.split('/').next().unwrap_or_default();
        match ip.parse::<std::net::IpAddr>() {
            Err(_) if !sandboxd_egress::domains_enforced() => {
                return Err(ApiError::invalid(
                    format!("egress.allow[{i}].host"),
                    "domain rules are not enforced on this node yet; give an IP address or a CIDR block",
                ))
            }
            _ => {}
        }
        let mut ports = Vec::new();
        for p in r.ports.as_deref().unwrap_or_default() {
            if !(1..=65535).contains(p) {
                return Err(ApiError::invalid(
                    format!("egress.allow[{i}].ports"),
                    "ports must be between 1 and 65535",
                ));
            }
            if !ports.contains(p) {
                ports.push(*p);
            }
        }
        let mut rule = json!({"host": r.host});
        if !ports.is_empty() {
            rule["ports"] = json!(ports);
        }
        if let Some(p) = r.protocol {
            rule["protocol"] = json!(match p {
                Protocol::Tcp => "TCP",
                Protocol::Udp => "UDP",
            });
        }
        out.push(rule);
    }
    if out.len() > 100 {
        return Err(ApiError::invalid(
            "egress.allow",
            "must have at most 100 rules",
        ));
    }
    let allow_internet = e.allow_internet.unwrap_or(false);
    if mode == EgressMode::DenyAll && (!rules.is_empty() || allow_internet) {
        return Err(ApiError::invalid(
            "egress.mode",
            "deny_all takes no allow rules; use allow_list",
        ));
    }
    Ok(Some(match mode {
        EgressMode::DenyAll => json!({"mode": "deny_all", "allow_internet": false, "allow": []}),
        EgressMode::AllowList => {
            json!({"mode": "allow_list", "allow_internet": allow_internet, "allow": out})
        }
    }))
}

pub fn name(n: Option<&str>) -> Result<String, ApiError> {
    match n {
        Some(n) => {
            dns1123_label("name", n)?;
            Ok(n.to_string())
        }
        None => {
            let suffix: String = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
            Ok(format!("sandbox-{suffix}"))
        }
    }
}

pub fn phase(s: SandboxState) -> &'static str {
    match s {
        SandboxState::Starting => "Pending",
        SandboxState::Running | SandboxState::Snapshotting => "Ready",
        SandboxState::Pausing => "Pausing",
        SandboxState::Paused | SandboxState::Stopped => "Paused",
        SandboxState::Resuming => "Resuming",
        SandboxState::Stopping | SandboxState::Failed | SandboxState::Deleting => "NotReady",
    }
}

/// Parses a NeevCloud phase name as used in list filters.
pub fn phase_matches(filter: &str, s: SandboxState) -> bool {
    phase(s).eq_ignore_ascii_case(filter) || s.as_str().eq_ignore_ascii_case(filter)
}

/// Renders resources within the spec's ranges (sandboxes made through Leap0 may be sized in
/// units NeevCloud cannot express exactly).
fn resources_view(r: &Resources) -> Value {
    let cpu = ((r.cpu_millis as f64 / 500.0).round() * 0.5).clamp(0.5, 8.0);
    let mem = ((r.memory_mib as f64) / 1024.0).round().clamp(1.0, 16.0) as i64;
    let disk = (((r.disk_mib as f64) / 1024.0 / 10.0).ceil() * 10.0).clamp(10.0, 100.0) as i64;
    json!({"cpu": cpu, "memory_gb": mem, "disk_gb": disk})
}

pub fn sandbox_view(sb: &Sandbox, connect_url: &str) -> Value {
    let running = sb.state.expects_container();
    json!({
        "id": sb.id,
        "org_id": sb.tenant.org,
        "project_id": sb.tenant.project,
        "name": sb.name,
        "region": sb.region,
        "image": sb.image,
        "command": sb.command,
        "env": sb.env.iter().map(|e| json!({"name": e.name, "value": e.value})).collect::<Vec<_>>(),
        "resources": resources_view(&sb.resources),
        "phase": phase(sb.state),
        "state": sb.state.as_str(),
        "status_message": sb.status_message,
        "addressable": running,
        "connect_url": if running { Some(connect_url) } else { None },
        "replicas": if running { 1 } else { 0 },
        "egress": sb.egress.clone().unwrap_or_else(|| json!({"mode": "deny_all", "allow_internet": false, "allow": []})),
        "sandbox_template_id": sb.template_id,
        "created_by": sb.created_by,
        "idle_timeout_seconds": sb.timeout_secs,
        "idle_expires_at": if sb.state == SandboxState::Running {
            sandboxd_core::Windows::idle_expires_at(sb.timeout_secs, sb.last_activity_at).map(ts)
        } else {
            None
        },
        "hard_expires_at": sb.windows.hard_expires_at(sb.created_at).map(ts),
        "last_crash": sb.health.last_crash.as_ref().map(|c| json!({
            "reason": c.reason,
            "at": ts(c.at),
            "storage_reset": c.storage_reset,
        })),
        "restarts": sb.health.restarts,
        "max_lifetime_seconds": sb.windows.max_lifetime_secs,
        "paused_retention_seconds": sb.windows.paused_retention_secs,
        "on_idle": sb.windows.on_idle,
        "snapshot_mode": if sb.snapshot_frequency.is_some() { "automatic" } else { "manual" },
        "snapshot_frequency": sb.snapshot_frequency,
        "created_at": ts(sb.created_at),
        "updated_at": ts(sb.updated_at),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_schedules_need_a_frequency_only_when_automatic() {
        assert_eq!(snapshot_schedule(None, None).unwrap(), None);
        assert_eq!(
            snapshot_schedule(Some("automatic"), Some(" 0  */2 * * *")).unwrap(),
            Some("0 */2 * * *".to_string())
        );
        for (m, f, field) in [
            (Some("automatic"), None, "snapshot_frequency"),
            (Some("automatic"), Some("0 */2 * *"), "snapshot_frequency"),
            (None, Some("* * * * *"), "snapshot_frequency"),
            (Some("manual"), Some("* * * * *"), "snapshot_frequency"),
            (Some("hourly"), None, "snapshot_mode"),
        ] {
            assert_eq!(
                snapshot_schedule(m, f).unwrap_err().field.as_deref(),
                Some(field),
                "{m:?} {f:?}"
            );
        }
    }

    #[test]
    fn resources_are_validated_with_field_names() {
        let r = ResourcesIn {
            cpu: Some(0.7),
            ..Default::default()
        };
        assert_eq!(
            resources(Some(&r)).unwrap_err().field.as_deref(),
            Some("resources.cpu")
        );
        let r = ResourcesIn {
            disk_gb: Some(15),
            ..Default::default()
        };
        assert_eq!(
            resources(Some(&r)).unwrap_err().field.as_deref(),
            Some("resources.disk_gb")
        );
        let r = ResourcesIn {
            cpu: Some(2.5),
            memory_gb: Some(4),
            disk_gb: Some(20),
            rootfs_disk_gb: None,
        };
        let out = resources(Some(&r)).unwrap();
        assert_eq!(
            (out.cpu_millis, out.memory_mib, out.disk_mib),
            (2500, 4096, 20480)
        );
    }

    #[test]
    fn hosts() {
        for ok in [
            "1.2.3.4",
            "10.0.0.0/8",
            "::1",
            "example.com",
            "*.example.com",
            "a-b.c.io",
        ] {
            assert!(valid_host(ok), "{ok}");
        }
        for bad in [
            "",
            "10.0.0.0/33",
            "exa mple.com",
            "-a.com",
            "localhost",
            "*.",
            "1.2.3.4/x",
        ] {
            assert!(!valid_host(bad), "{bad}");
        }
    }

    #[test]
    fn views_stay_in_spec_ranges() {
        let v = resources_view(&Resources {
            cpu_millis: 300,
            memory_mib: 512,
            disk_mib: 1024,
        });
        assert_eq!(v, json!({"cpu": 0.5, "memory_gb": 1, "disk_gb": 10}));
    }
}
