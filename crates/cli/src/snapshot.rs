//! `sbx snapshot create|ls|rm`, `sbx fork`, `sbx restore`, `sbx pause`, `sbx resume`.

use anyhow::{bail, Result};
use clap::{Args, Subcommand};
use serde_json::{json, Map, Value};

use crate::client::{str_field, Client};
use crate::table;

#[derive(Subcommand, Debug)]
pub enum SnapshotCmd {
    /// Snapshot a running sandbox (files; processes and memory with --memory); prints its id
    Create(CreateArgs),
    /// List snapshots: of one sandbox, or of the whole project
    Ls {
        /// Sandbox id or name (default: every snapshot of the project)
        #[arg(value_name = "SANDBOX")]
        sandbox: Option<String>,
    },
    /// Delete snapshots; prints each deleted id
    Rm {
        #[arg(required = true, value_name = "SNAPSHOT_ID")]
        snapshots: Vec<String>,
    },
}

#[derive(Args, Debug)]
pub struct CreateArgs {
    /// Sandbox id or name
    #[arg(value_name = "SANDBOX")]
    pub sandbox: String,
    /// Snapshot name (^[a-z0-9-]{1,40}$)
    #[arg(long)]
    pub name: Option<String>,
    /// Include running processes and memory
    #[arg(long)]
    pub memory: bool,
    /// Keep it this long, e.g. 720h ("0" = forever)
    #[arg(long)]
    pub retain_for: Option<String>,
}

#[derive(Args, Debug)]
pub struct ForkArgs {
    /// Sandbox id or name to fork (snapshotted with memory, then cloned)
    #[arg(value_name = "SANDBOX")]
    pub sandbox: String,
    /// Name of the new sandbox
    #[arg(long)]
    pub name: String,
}

#[derive(Args, Debug)]
pub struct RestoreArgs {
    /// Snapshot id
    #[arg(value_name = "SNAPSHOT_ID")]
    pub snapshot: String,
    /// Roll this sandbox back to the snapshot in place (same id, name and address) instead of
    /// creating a new sandbox
    #[arg(long, value_name = "SANDBOX", conflicts_with = "name")]
    pub into: Option<String>,
    /// Name of the new sandbox (the server picks one if omitted)
    #[arg(long)]
    pub name: Option<String>,
}

#[derive(Args, Debug)]
pub struct PauseArgs {
    /// Sandbox id or name
    #[arg(value_name = "SANDBOX")]
    pub sandbox: String,
    /// Keep only the files: resume cold-starts the sandbox on them
    #[arg(long)]
    pub no_memory: bool,
}

/// The create-snapshot request body; only the options the user gave are sent.
pub fn create_body(a: &CreateArgs) -> Value {
    let mut b = Map::new();
    if let Some(n) = &a.name {
        b.insert("name".into(), json!(n));
    }
    if a.memory {
        b.insert("include_memory".into(), json!(true));
    }
    if let Some(r) = &a.retain_for {
        b.insert("retain_for".into(), json!(r));
    }
    Value::Object(b)
}

/// The create-sandbox body that restores `snapshot` as a new sandbox.
pub fn restore_body(snapshot: &str, name: Option<&str>) -> Value {
    let mut b = json!({"from_snapshot": snapshot});
    if let Some(n) = name {
        b["name"] = json!(n);
    }
    b
}

/// Resolves a sandbox id or name to its id.
fn sandbox_id(c: &Client, id_or_name: &str) -> Result<String> {
    let sb = c.get_sandbox(id_or_name)?;
    let id = str_field(&sb, "id");
    if id.is_empty() {
        bail!("the server returned a sandbox without an id");
    }
    Ok(id.to_string())
}

/// Runs a snapshot subcommand; returns what to print.
pub fn run(c: &Client, cmd: &SnapshotCmd, as_json: bool) -> Result<String> {
    match cmd {
        SnapshotCmd::Create(a) => {
            let id = sandbox_id(c, &a.sandbox)?;
            let s = c.post(
                &c.project_url(&["sandboxes", &id, "snapshots"]),
                &create_body(a),
            )?;
            if str_field(&s, "status") == "Failed" {
                bail!(
                    "snapshot {} failed: {}",
                    str_field(&s, "id"),
                    str_field(&s, "error_message")
                );
            }
            Ok(one(&s, as_json))
        }
        SnapshotCmd::Ls { sandbox } => {
            let items = match sandbox {
                Some(sb) => {
                    let id = sandbox_id(c, sb)?;
                    c.list_all_at(&["sandboxes", &id, "snapshots"])?
                }
                None => c.list_all("snapshots")?,
            };
            Ok(if as_json {
                format!("{}\n", serde_json::to_string_pretty(&items)?)
            } else {
                snapshots_table(&items)
            })
        }
        SnapshotCmd::Rm { snapshots } => {
            let mut out = String::new();
            for s in snapshots {
                c.delete(&c.project_url(&["snapshots", s]))?;
                out.push_str(&format!("{s}\n"));
            }
            Ok(out)
        }
    }
}

pub fn fork(c: &Client, a: &ForkArgs, as_json: bool) -> Result<String> {
    let id = sandbox_id(c, &a.sandbox)?;
    let sb = c.post(
        &c.project_url(&["sandboxes", &id, "fork"]),
        &json!({"name": a.name}),
    )?;
    Ok(one(&sb, as_json))
}

pub fn restore(c: &Client, a: &RestoreArgs, as_json: bool) -> Result<String> {
    let sb = match &a.into {
        Some(target) => {
            let id = sandbox_id(c, target)?;
            c.post(
                &c.project_url(&["sandboxes", &id, "restore"]),
                &json!({"snapshot_id": a.snapshot}),
            )?
        }
        None => c.create_sandbox(&restore_body(&a.snapshot, a.name.as_deref()))?,
    };
    Ok(one(&sb, as_json))
}

pub fn pause(c: &Client, a: &PauseArgs, as_json: bool) -> Result<String> {
    let id = sandbox_id(c, &a.sandbox)?;
    let sb = c.post(
        &c.project_url(&["sandboxes", &id, "pause"]),
        &json!({"preserve_memory": !a.no_memory}),
    )?;
    Ok(one(&sb, as_json))
}

pub fn resume(c: &Client, sandbox: &str, as_json: bool) -> Result<String> {
    let id = sandbox_id(c, sandbox)?;
    let sb = c.post(&c.project_url(&["sandboxes", &id, "resume"]), &json!({}))?;
    Ok(one(&sb, as_json))
}

/// A record as JSON, or its id alone.
fn one(v: &Value, as_json: bool) -> String {
    if as_json {
        format!("{}\n", serde_json::to_string_pretty(v).unwrap_or_default())
    } else {
        format!("{}\n", str_field(v, "id"))
    }
}

fn snapshots_table(items: &[Value]) -> String {
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|s| {
            vec![
                str_field(s, "id").to_string(),
                s.get("name")
                    .and_then(Value::as_str)
                    .unwrap_or("-")
                    .to_string(),
                str_field(s, "sandbox_id").to_string(),
                str_field(s, "status").to_string(),
                if s.get("include_memory").and_then(Value::as_bool) == Some(true) {
                    "yes".into()
                } else {
                    "no".into()
                },
                s.get("size_bytes")
                    .and_then(Value::as_u64)
                    .map(human_bytes)
                    .unwrap_or_else(|| "-".into()),
                // What it added to storage; "-" until its memory image is stored.
                s.get("added_bytes")
                    .and_then(Value::as_u64)
                    .map(human_bytes)
                    .unwrap_or_else(|| "-".into()),
                str_field(s, "created_at").to_string(),
            ]
        })
        .collect();
    table::render(
        &[
            "ID", "NAME", "SANDBOX", "STATUS", "MEMORY", "SIZE", "ADDED", "CREATED",
        ],
        &rows,
    )
}

fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_carry_only_what_was_given() {
        let a = CreateArgs {
            sandbox: "s".into(),
            name: None,
            memory: false,
            retain_for: None,
        };
        assert_eq!(create_body(&a), json!({}));
        let a = CreateArgs {
            sandbox: "s".into(),
            name: Some("before".into()),
            memory: true,
            retain_for: Some("24h".into()),
        };
        assert_eq!(
            create_body(&a),
            json!({"name": "before", "include_memory": true, "retain_for": "24h"})
        );
        assert_eq!(restore_body("x", None), json!({"from_snapshot": "x"}));
        assert_eq!(
            restore_body("x", Some("n")),
            json!({"from_snapshot": "x", "name": "n"})
        );
    }

    #[test]
    fn sizes_are_human() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(3 << 20), "3.0 MiB");
    }

    #[test]
    fn table_lists_every_snapshot() {
        let t = snapshots_table(&[json!({"id": "a", "name": null, "sandbox_id": "s",
            "status": "Ready", "include_memory": true, "size_bytes": 2048,
            "added_bytes": 3 << 20, "created_at": "t"})]);
        assert!(t.contains("ID") && t.contains("ADDED"), "{t}");
        assert!(
            t.contains("2.0 KiB")
                && t.contains("3.0 MiB")
                && t.contains("Ready")
                && t.contains("yes"),
            "{t}"
        );
    }
}
