//! Leap0 v1 request and response shapes, their validation, and their translation to core
//! types. Where the SDK (0.8) and the published seeds disagree, both forms are accepted:
//! `template_name`/`template`, `memory`/`memory_mib`, `env_vars`/`env`, `timeout` (seconds)
//! /`timeout_min` (minutes); giving both forms of one setting is a 400.

use std::collections::BTreeMap;
use std::net::IpAddr;

use chrono::{DateTime, SecondsFormat, Utc};
use sandboxd_core::validate::env_name;
use sandboxd_core::{EnvVar, Resources, Sandbox, SandboxState, Snapshot};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::error::ApiError;

/// Default run-time limit: 300 s (the SDK's default, and the seed's 5 minutes).
pub const DEFAULT_TIMEOUT_SECS: u64 = 300;
pub const MAX_TIMEOUT_SECS: i64 = 28_800;
pub const MAX_TIMEOUT_MIN: i64 = 480;

pub fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateReq {
    pub template_name: Option<String>,
    pub template: Option<String>,
    pub vcpu: Option<i64>,
    pub memory: Option<i64>,
    pub memory_mib: Option<i64>,
    pub disk_mib: Option<i64>,
    pub timeout: Option<i64>,
    pub timeout_min: Option<i64>,
    pub auto_pause: Option<bool>,
    pub env_vars: Option<BTreeMap<String, String>>,
    pub env: Option<BTreeMap<String, String>>,
    pub network_policy: Option<Value>,
    pub mounts: Option<Vec<Value>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestoreReq {
    pub snapshot_name: String,
    pub timeout: Option<i64>,
    pub timeout_min: Option<i64>,
    pub auto_pause: Option<bool>,
    pub network_policy: Option<Value>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct SnapshotReq {
    pub name: Option<String>,
    pub kill_sandbox_after: Option<bool>,
}

/// One of two spellings of a setting; both at once is refused.
pub fn one_of<T>(
    a: Option<T>,
    a_field: &str,
    b: Option<T>,
    b_field: &str,
) -> Result<Option<T>, ApiError> {
    match (a, b) {
        (Some(_), Some(_)) => Err(ApiError::invalid(
            b_field,
            format!("give {a_field} or {b_field}, not both"),
        )),
        (a, b) => Ok(a.or(b)),
    }
}

fn ranged(field: &str, v: i64, min: i64, max: i64) -> Result<u64, ApiError> {
    if v < min || v > max {
        return Err(ApiError::invalid(
            field,
            format!("must be between {min} and {max}"),
        ));
    }
    Ok(v as u64)
}

/// The run-time limit in seconds from `timeout` (1..=28800 s) or `timeout_min` (1..=480 min).
pub fn timeout_secs(timeout: Option<i64>, timeout_min: Option<i64>) -> Result<u64, ApiError> {
    match (timeout, timeout_min) {
        (Some(_), Some(_)) => Err(ApiError::invalid(
            "timeout_min",
            "give timeout (seconds) or timeout_min (minutes), not both",
        )),
        (Some(s), None) => ranged("timeout", s, 1, MAX_TIMEOUT_SECS),
        (None, Some(m)) => Ok(ranged("timeout_min", m, 1, MAX_TIMEOUT_MIN)? * 60),
        (None, None) => Ok(DEFAULT_TIMEOUT_SECS),
    }
}

pub fn resources(req: &CreateReq) -> Result<Resources, ApiError> {
    let mut r = Resources::default();
    if let Some(v) = req.vcpu {
        r.cpu_millis = ranged("vcpu", v, 1, 8)? as u32 * 1000;
    }
    let (mem, mem_field) = match (req.memory, req.memory_mib) {
        (Some(_), Some(_)) => {
            return Err(ApiError::invalid(
                "memory_mib",
                "give memory or memory_mib, not both",
            ))
        }
        (Some(m), None) => (Some(m), "memory"),
        (None, Some(m)) => (Some(m), "memory_mib"),
        (None, None) => (None, "memory"),
    };
    if let Some(m) = mem {
        let m = ranged(mem_field, m, 512, 8192)?;
        if m % 2 != 0 {
            return Err(ApiError::invalid(mem_field, "must be an even number"));
        }
        r.memory_mib = m as u32;
    }
    if let Some(d) = req.disk_mib {
        r.disk_mib = ranged("disk_mib", d, 1024, 100 * 1024)? as u32;
    }
    Ok(r)
}

pub fn env(req: &CreateReq) -> Result<Vec<EnvVar>, ApiError> {
    let (map, field) = match (&req.env_vars, &req.env) {
        (Some(_), Some(_)) => {
            return Err(ApiError::invalid("env", "give env_vars or env, not both"))
        }
        (Some(m), None) => (m, "env_vars"),
        (None, Some(m)) => (m, "env"),
        (None, None) => return Ok(vec![]),
    };
    map.iter()
        .map(|(k, v)| {
            env_name(&format!("{field}.{k}"), k)?;
            Ok(EnvVar {
                name: k.clone(),
                value: v.clone(),
            })
        })
        .collect()
}

/// Snapshot names: 1-64 of `[A-Za-z0-9._-]`, starting with a letter or digit.
pub fn snapshot_name(field: &str, s: &str) -> Result<(), ApiError> {
    let ok = !s.is_empty()
        && s.len() <= 64
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(ApiError::invalid(
            field,
            "must be 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit",
        ))
    }
}

fn domain_pattern(field: &str, v: &Value) -> Result<(), ApiError> {
    let bad = || {
        ApiError::invalid(
            field,
            "must be a domain name such as api.example.com or *.example.com",
        )
    };
    let s = v
        .as_str()
        .ok_or_else(|| ApiError::invalid(field, "must be a string"))?;
    let host = s.strip_prefix("*.").unwrap_or(s);
    if host.len() > 253 {
        return Err(bad());
    }
    let labels: Vec<&str> = host.split('.').collect();
    if labels.len() < 2 {
        return Err(bad());
    }
    for l in labels {
        if l.is_empty()
            || l.len() > 63
            || l.starts_with('-')
            || l.ends_with('-')
            || !l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        {
            return Err(bad());
        }
    }
    Ok(())
}

fn cidr(field: &str, v: &Value) -> Result<(), ApiError> {
    let s = v
        .as_str()
        .ok_or_else(|| ApiError::invalid(field, "must be a string"))?;
    let bad = || ApiError::invalid(field, "must be a CIDR such as 10.0.0.0/8 or 2001:db8::/32");
    let (addr, len) = match s.split_once('/') {
        Some((a, l)) => (a, Some(l)),
        None => (s, None),
    };
    let ip: IpAddr = addr.parse().map_err(|_| bad())?;
    if let Some(l) = len {
        let n: u8 = l.parse().map_err(|_| bad())?;
        let max = if ip.is_ipv4() { 32 } else { 128 };
        if n > max || l.starts_with('+') {
            return Err(bad());
        }
    }
    Ok(())
}

fn array<'a>(
    obj: &'a Map<String, Value>,
    key: &str,
    max: usize,
) -> Result<Option<&'a Vec<Value>>, ApiError> {
    let field = format!("network_policy.{key}");
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(a)) => {
            if a.len() > max {
                return Err(ApiError::invalid(
                    field,
                    format!("must have at most {max} entries"),
                ));
            }
            Ok(Some(a))
        }
        Some(_) => Err(ApiError::invalid(field, "must be an array")),
    }
}

/// Validates a `network_policy` object; `None` (or null) = none given.
pub fn network_policy(v: Option<&Value>) -> Result<Option<Value>, ApiError> {
    let obj = match v {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Object(o)) => o,
        Some(_) => return Err(ApiError::invalid("network_policy", "must be an object")),
    };
    for k in obj.keys() {
        if !matches!(
            k.as_str(),
            "mode" | "allow_domains" | "allow_cidrs" | "transforms"
        ) {
            return Err(ApiError::invalid(
                format!("network_policy.{k}"),
                "unknown field",
            ));
        }
    }
    let mode = match obj.get("mode") {
        None | Some(Value::Null) => {
            return Err(ApiError::invalid("network_policy.mode", "is required"))
        }
        Some(Value::String(m)) if matches!(m.as_str(), "allow-all" | "deny-all" | "custom") => {
            m.as_str()
        }
        Some(_) => {
            return Err(ApiError::invalid(
                "network_policy.mode",
                "must be one of allow-all, deny-all, custom",
            ))
        }
    };
    let domains = array(obj, "allow_domains", 50)?;
    let cidrs = array(obj, "allow_cidrs", 10)?;
    let transforms = array(obj, "transforms", 20)?;
    for (key, a) in [("allow_domains", domains), ("allow_cidrs", cidrs)] {
        if mode != "custom" && a.is_some_and(|a| !a.is_empty()) {
            return Err(ApiError::invalid(
                format!("network_policy.{key}"),
                "is only allowed with mode custom",
            ));
        }
    }
    for (i, d) in domains.into_iter().flatten().enumerate() {
        domain_pattern(&format!("network_policy.allow_domains[{i}]"), d)?;
    }
    for (i, c) in cidrs.into_iter().flatten().enumerate() {
        cidr(&format!("network_policy.allow_cidrs[{i}]"), c)?;
    }
    for (i, t) in transforms.into_iter().flatten().enumerate() {
        let f = format!("network_policy.transforms[{i}]");
        let t = t
            .as_object()
            .ok_or_else(|| ApiError::invalid(&f, "must be an object"))?;
        for k in t.keys() {
            if !matches!(k.as_str(), "domain" | "inject_headers" | "strip_headers") {
                return Err(ApiError::invalid(format!("{f}.{k}"), "unknown field"));
            }
        }
        match t.get("domain") {
            Some(d) => domain_pattern(&format!("{f}.domain"), d)?,
            None => return Err(ApiError::invalid(format!("{f}.domain"), "is required")),
        }
        match t.get("inject_headers") {
            None | Some(Value::Null) => {}
            Some(Value::Object(h)) if h.values().all(Value::is_string) => {}
            Some(_) => {
                return Err(ApiError::invalid(
                    format!("{f}.inject_headers"),
                    "must be an object of strings",
                ))
            }
        }
        match t.get("strip_headers") {
            None | Some(Value::Null) => {}
            Some(Value::Array(h)) if h.iter().all(Value::is_string) => {}
            Some(_) => {
                return Err(ApiError::invalid(
                    format!("{f}.strip_headers"),
                    "must be an array of strings",
                ))
            }
        }
    }
    Ok(Some(Value::Object(obj.clone())))
}

/// What the node really does with a sandbox's egress. `allow-all`, `deny-all` and IPv4
/// `allow_cidrs` are enforced (nftables at the host side of the sandbox's veth); domains,
/// transforms and IPv6 CIDRs are not yet, and the answer says so.
pub fn enforcement(policy: Option<&Value>) -> Value {
    let asked = policy
        .and_then(|p| p.get("mode"))
        .and_then(Value::as_str)
        .unwrap_or("allow-all");
    let non_empty = |k: &str| {
        policy
            .and_then(|p| p.get(k))
            .and_then(Value::as_array)
            .is_some_and(|a| !a.is_empty())
    };
    let v6 = policy
        .and_then(|p| p.get("allow_cidrs"))
        .and_then(Value::as_array)
        .is_some_and(|a| {
            a.iter()
                .any(|c| c.as_str().is_some_and(|c| c.contains(':')))
        });
    let domains_ok = sandboxd_egress::domains_enforced() || !non_empty("allow_domains");
    let transforms_ok = sandboxd_egress::transforms_enforced() || !non_empty("transforms");
    let enforced = transforms_ok && (asked != "custom" || (domains_ok && !v6));
    let mut v = json!({"requested_mode": asked, "effective_mode": asked, "enforced": enforced});
    if !enforced {
        let mut missing = Vec::new();
        if !domains_ok && asked == "custom" {
            missing.push("allow_domains");
        }
        if !transforms_ok {
            missing.push("transforms");
        }
        if v6 && asked == "custom" {
            missing.push("IPv6 allow_cidrs");
        }
        v["note"] = json!(format!(
            "not enforced on this node: {}; connections they would admit are refused (the rest of the policy is enforced)",
            missing.join(", ")
        ));
    }
    v
}

pub const NOT_ENFORCED: &str = "part of this network policy is not enforced on this node (see network_policy_enforcement.note): connections it would admit are refused";

/// Whether a request's explicit policy is one the node does not honour as written.
pub fn policy_not_honoured(policy: Option<&Value>) -> bool {
    policy.is_some() && !enforcement(policy)["enforced"].as_bool().unwrap_or(false)
}

/// Leap0's state names. `pausing` has no Leap0 name: the capture it does is `snapshotting`.
/// `failed` (crashed, out of memory) holds no processes and is shown as `stopped`.
pub fn state(s: SandboxState) -> &'static str {
    match s {
        SandboxState::Starting => "starting",
        SandboxState::Running => "running",
        SandboxState::Snapshotting | SandboxState::Pausing => "snapshotting",
        SandboxState::Paused => "paused",
        SandboxState::Resuming => "unpausing",
        SandboxState::Stopping => "stopping",
        SandboxState::Stopped | SandboxState::Failed => "stopped",
        SandboxState::Deleting => "deleting",
    }
}

pub fn state_filter(s: &str) -> Result<Vec<SandboxState>, ApiError> {
    use SandboxState::*;
    Ok(match s {
        "starting" => vec![Starting],
        "running" => vec![Running],
        "snapshotting" => vec![Snapshotting, Pausing],
        "paused" => vec![Paused],
        "unpausing" => vec![Resuming],
        "stopping" => vec![Stopping],
        "stopped" => vec![Stopped, Failed],
        "deleting" => vec![Deleting],
        _ => {
            return Err(ApiError::invalid(
                "state",
                "must be one of starting, stopping, snapshotting, running, paused, unpausing, stopped, deleting",
            ))
        }
    })
}

fn sizes(r: &Resources) -> Value {
    let vcpu = r.cpu_millis.div_ceil(1000);
    json!({
        "vcpu": vcpu,
        "memory": r.memory_mib, "memory_mib": r.memory_mib,
        "disk": r.disk_mib, "disk_mib": r.disk_mib,
    })
}

fn merge(mut a: Value, b: Value) -> Value {
    if let (Some(a), Value::Object(b)) = (a.as_object_mut(), b) {
        a.extend(b);
    }
    a
}

/// `SandboxCreateResponse` / `SandboxStatusResponse`, plus the memory/disk spellings of the
/// seeds, the name, and what the node does with the network policy.
pub fn sandbox_view(sb: &Sandbox) -> Value {
    let timeout = sb.lifetime.timeout_secs.unwrap_or(0);
    let mut v = merge(
        json!({
            "id": sb.id.to_string(),
            "name": sb.name,
            "template_id": sb.template_id,
            "timeout": timeout,
            "timeout_min": timeout.div_ceil(60),
            "state": state(sb.state),
            "auto_pause": sb.lifetime.auto_pause,
            "network_policy": sb.network_policy,
            "network_policy_enforcement": enforcement(sb.network_policy.as_ref()),
            "mounts": [],
            "created_at": ts(sb.created_at),
        }),
        sizes(&sb.resources),
    );
    if let Some(m) = &sb.status_message {
        v["status_message"] = json!(m);
    }
    v
}

/// `SandboxListItem`.
pub fn sandbox_item(sb: &Sandbox) -> Value {
    let mut v = json!({
        "id": sb.id.to_string(),
        "name": sb.name,
        "template_id": sb.template_id,
        "pod_id": "",
        "state": state(sb.state),
        "state_change_time": ts(sb.updated_at),
        "created_at": ts(sb.created_at),
    });
    if let Some(t) = sb.lifetime.started_at {
        v["launch_time"] = json!(ts(t));
    }
    if let Some(d) = sb.lifetime.deadline() {
        v["timeout_at"] = json!(d.timestamp());
    }
    v
}

/// The Leap0 `state` of a snapshot: `snapshotting` while it is being made, `running` once
/// usable (its sandbox comes back running), `deleted` when it failed or is gone.
fn snapshot_state(s: &Snapshot) -> &'static str {
    use sandboxd_core::SnapshotStatus as S;
    match s.status {
        S::Ready => "running",
        S::Failed => "deleted",
        S::Pending | S::Running => "snapshotting",
    }
}

/// `SnapshotCreateResponse`. A snapshot made without a name (NeevCloud) shows its id as name.
pub fn snapshot_view(s: &Snapshot) -> Value {
    merge(
        json!({
            "id": s.id.to_string(),
            "name": s.name.clone().unwrap_or_else(|| s.id.to_string()),
            "template_id": s.template_id,
            "sandbox_id": s.sandbox_id.to_string(),
            "status": s.status.as_str(),
            // Leap0 reads a snapshot's `state` as a sandbox state: what the capture kept.
            "state": snapshot_state(s),
            "network_policy": s.network_policy,
            "size_bytes": s.size_bytes,
            "added_bytes": s.added_bytes,
            "created_at": ts(s.created_at),
        }),
        sizes(&s.resources),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err_field(r: Result<impl std::fmt::Debug, ApiError>) -> String {
        r.unwrap_err().field.unwrap_or_default()
    }

    #[test]
    fn timeouts_in_seconds_or_minutes_never_both() {
        assert_eq!(timeout_secs(None, None).unwrap(), 300);
        assert_eq!(timeout_secs(Some(600), None).unwrap(), 600);
        assert_eq!(timeout_secs(None, Some(30)).unwrap(), 1800);
        assert_eq!(err_field(timeout_secs(None, Some(0))), "timeout_min");
        assert_eq!(err_field(timeout_secs(None, Some(481))), "timeout_min");
        assert_eq!(err_field(timeout_secs(Some(28_801), None)), "timeout");
        assert_eq!(err_field(timeout_secs(Some(1), Some(1))), "timeout_min");
    }

    #[test]
    fn policies() {
        let ok = json!({"mode": "custom", "allow_domains": ["api.example.com", "*.pypi.org"],
            "allow_cidrs": ["10.0.0.0/8", "1.2.3.4", "2001:db8::/32"],
            "transforms": [{"domain": "api.openai.com", "inject_headers": {"A": "b"}, "strip_headers": ["X"]}]});
        assert!(network_policy(Some(&ok)).unwrap().is_some());
        assert!(network_policy(None).unwrap().is_none());
        let cases = [
            (json!({"mode": "open"}), "network_policy.mode"),
            (json!({}), "network_policy.mode"),
            (
                json!({"mode": "custom", "allow_domains": vec!["a.com"; 51]}),
                "network_policy.allow_domains",
            ),
            (
                json!({"mode": "custom", "allow_cidrs": ["10.0.0.0/33"]}),
                "network_policy.allow_cidrs[0]",
            ),
            (
                json!({"mode": "custom", "allow_cidrs": ["nope"]}),
                "network_policy.allow_cidrs[0]",
            ),
            (
                json!({"mode": "custom", "allow_domains": ["x", "localhost"]}),
                "network_policy.allow_domains[0]",
            ),
            (
                json!({"mode": "deny-all", "allow_domains": ["a.com"]}),
                "network_policy.allow_domains",
            ),
            (
                json!({"mode": "custom", "transforms": [{}]}),
                "network_policy.transforms[0].domain",
            ),
            (
                json!({"mode": "custom", "bogus": 1}),
                "network_policy.bogus",
            ),
            (json!("deny-all"), "network_policy"),
        ];
        for (p, field) in cases {
            assert_eq!(err_field(network_policy(Some(&p))), field, "{p}");
        }
    }

    #[test]
    fn enforcement_is_honest() {
        assert_eq!(enforcement(None)["enforced"], true);
        assert_eq!(enforcement(None)["effective_mode"], "allow-all");
        assert_eq!(
            enforcement(Some(&json!({"mode": "deny-all"})))["enforced"],
            true
        );
        let cidrs = json!({"mode": "custom", "allow_cidrs": ["198.18.0.0/15"]});
        assert!(!policy_not_honoured(Some(&cidrs)));
        assert!(!policy_not_honoured(Some(&json!({"mode": "custom"}))));
        for p in [
            json!({"mode": "custom", "allow_domains": ["example.com"]}),
            json!({"mode": "custom", "allow_cidrs": ["2001:db8::/32"]}),
            json!({"mode": "custom", "transforms": [{"domain": "example.com"}]}),
        ] {
            assert!(policy_not_honoured(Some(&p)), "{p}");
        }
        assert!(!policy_not_honoured(None));
    }

    #[test]
    fn snapshot_names() {
        assert!(snapshot_name("name", "workspace-warm").is_ok());
        assert!(snapshot_name("name", "v1.2_x").is_ok());
        for bad in ["", "-x", "a b", "a/b", &"a".repeat(65)] {
            assert!(snapshot_name("name", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn states_use_leap0_names() {
        assert_eq!(state(SandboxState::Resuming), "unpausing");
        assert_eq!(state(SandboxState::Failed), "stopped");
        assert_eq!(state_filter("stopped").unwrap().len(), 2);
        assert!(state_filter("bogus").is_err());
    }
}
