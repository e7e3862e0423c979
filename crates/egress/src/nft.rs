//! Enforcement in nftables, in the table `inet sandboxd` every daemon on the host shares.
//!
//! Base chains (idempotent, never delete another daemon's objects):
//! * `input`: a sandbox reaches the host only with replies to connections the host opened,
//!   plus what its per-sandbox input verdict (`egress_in`) admits (the platform's own paths);
//! * `forward`: nothing between sandboxes, replies back into a sandbox, and the sandbox's own
//!   chain `eg-<short>` (through the `egress_fwd` verdict map keyed by its host veth) for the
//!   rest; anything else from or to a sandbox veth is dropped;
//! * `postrouting`: masquerade for sandbox addresses in `egress_masq` leaving by a non-sandbox
//!   interface.
//!
//! Per sandbox: the chain `eg-<short>`, its sets `eg-<short>-a` (any protocol) and
//! `eg-<short>-p` (address . protocol . port), the counter `eg-<short>-denied`, and its elements
//! in the shared maps. A policy change is one `nft -f` transaction.

use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};

use crate::policy::{Net4, Policy, Proto, ALWAYS_DENIED};
use crate::PolicyError;

pub const TABLE: &str = "inet sandboxd";

fn nft(batch: &str) -> Result<(), PolicyError> {
    use std::io::Write;
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| PolicyError(format!("spawn nft: {e}")))?;
    if let Some(mut i) = child.stdin.take() {
        i.write_all(batch.as_bytes())
            .map_err(|e| PolicyError(format!("write to nft: {e}")))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| PolicyError(format!("wait for nft: {e}")))?;
    if !out.status.success() {
        return Err(PolicyError(format!(
            "nft: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// The base of the table, created if absent; re-running only rewrites the base chains' rules.
pub fn base_batch() -> String {
    format!(
        "add table {TABLE}\n\
         add map {TABLE} egress_fwd {{ type ifname : verdict; }}\n\
         add map {TABLE} egress_in {{ type ifname : verdict; }}\n\
         add map {TABLE} egress_nat {{ type ifname : verdict; }}\n\
         add set {TABLE} egress_masq {{ type ipv4_addr; }}\n\
         add chain {TABLE} input {{ type filter hook input priority -10; policy accept; }}\n\
         add chain {TABLE} forward {{ type filter hook forward priority -10; policy accept; }}\n\
         add chain {TABLE} postrouting {{ type nat hook postrouting priority 100; policy accept; }}\n\
         add chain {TABLE} prerouting {{ type nat hook prerouting priority -100; policy accept; }}\n\
         flush chain {TABLE} prerouting\n\
         add rule {TABLE} prerouting iifname \"s-*\" iifname vmap @egress_nat\n\
         flush chain {TABLE} input\n\
         add rule {TABLE} input iifname \"s-*\" ct state established,related accept\n\
         add rule {TABLE} input iifname \"s-*\" iifname vmap @egress_in\n\
         add rule {TABLE} input iifname \"s-*\" udp dport 53 reject with icmpx port-unreachable\n\
         add rule {TABLE} input iifname \"s-*\" tcp dport 53 reject with tcp reset\n\
         add rule {TABLE} input iifname \"s-*\" counter drop\n\
         flush chain {TABLE} forward\n\
         add rule {TABLE} forward iifname \"s-*\" oifname \"s-*\" counter drop\n\
         add rule {TABLE} forward oifname \"s-*\" ct state established,related accept\n\
         add rule {TABLE} forward oifname \"s-*\" counter drop\n\
         add rule {TABLE} forward iifname \"s-*\" iifname vmap @egress_fwd\n\
         add rule {TABLE} forward iifname \"s-*\" counter drop\n\
         flush chain {TABLE} postrouting\n\
         add rule {TABLE} postrouting ip saddr @egress_masq oifname != \"s-*\" masquerade\n"
    )
}

/// Installs the base chains and turns on IPv4 forwarding (the `forward` chain drops whatever
/// a sandbox's policy does not admit).
pub fn install_base() -> Result<(), PolicyError> {
    nft(&base_batch())?;
    std::fs::write("/proc/sys/net/ipv4/ip_forward", "1")
        .map_err(|e| PolicyError(format!("enable ip_forward: {e}")))
}

/// The host veths that have a policy in the table (`s-<short>` keys of the `egress_fwd` map),
/// or `None` if the base is not there (a daemon of an older version deletes and recreates the
/// whole table at its start; then the caller re-installs the base and every policy).
pub fn attached() -> Option<Vec<String>> {
    let out = Command::new("nft")
        .args(["list", "map", "inet", "sandboxd", "egress_fwd"])
        .stderr(Stdio::null())
        .output()
        .ok()
        .filter(|o| o.status.success())?;
    Some(veths_in(&String::from_utf8_lossy(&out.stdout)))
}

/// The quoted `s-*` names in a listing.
fn veths_in(listing: &str) -> Vec<String> {
    listing
        .split('"')
        .skip(1)
        .step_by(2)
        .filter(|n| n.starts_with("s-"))
        .map(str::to_string)
        .collect()
}

/// Whether a line of `nft monitor` may mean the base is gone: the table deleted or flushed
/// (an older daemon recreating it, `nft flush ruleset`), or one of its base maps or chains
/// deleted. A sandbox's own objects coming and going do not count.
pub fn base_event(line: &str) -> bool {
    let line = line.trim();
    let ours = |rest: &str| rest == "inet sandboxd" || rest.starts_with("inet sandboxd ");
    if let Some(rest) = line
        .strip_prefix("delete table ")
        .or_else(|| line.strip_prefix("flush table "))
    {
        return ours(rest);
    }
    for kind in ["map", "chain", "set"] {
        if let Some(rest) = line.strip_prefix(&format!("delete {kind} inet sandboxd ")) {
            let name = rest.split_whitespace().next().unwrap_or("");
            return BASE_OBJECTS.contains(&name);
        }
    }
    line == "flush ruleset"
}

/// The objects of the base batch whose loss [`base_event`] reports.
const BASE_OBJECTS: &[&str] = &[
    "egress_fwd",
    "egress_in",
    "egress_nat",
    "egress_masq",
    "forward",
    "input",
    "prerouting",
    "postrouting",
];

/// Follows `nft monitor` and wakes `on_loss` whenever [`base_event`] says the base may be
/// gone. A monitor that ends is restarted after a second (the caller's periodic check covers
/// what happened meanwhile). Runs until the process ends.
pub async fn watch_base(on_loss: std::sync::Arc<tokio::sync::Notify>) {
    use tokio::io::AsyncBufReadExt;
    loop {
        let mut cmd = tokio::process::Command::new("nft");
        cmd.arg("monitor")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true);
        // SAFETY: the closure runs in the forked child before exec and only calls
        // prctl(2), which is async-signal-safe; it touches no memory of the parent. The
        // monitor then dies with the daemon even when the daemon is SIGKILLed.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn();
        if let Ok(mut child) = child {
            if let Some(out) = child.stdout.take() {
                let mut lines = tokio::io::BufReader::new(out).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    if base_event(&line) {
                        on_loss.notify_one();
                    }
                }
            }
            let _ = child.kill().await;
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}

/// Where one sandbox sits.
#[derive(Debug, Clone, Copy)]
pub struct Attach<'a> {
    /// The 12-hex-char short id its host objects carry.
    pub short: &'a str,
    pub sandbox_ip: Ipv4Addr,
    /// The node's sandbox subnet (10.<octet>.0.0/16).
    pub subnet: Net4,
    /// The node's resolver and proxy ports, if it serves domain rules.
    pub node: Option<(u16, u16)>,
}

/// The transaction that (re)installs a sandbox's policy, clamped to `ceiling` (the
/// destinations this node lets any sandbox reach; `0.0.0.0/0` = no ceiling).
pub fn sandbox_batch(at: Attach<'_>, policy: &Policy, ceiling: &[Net4]) -> String {
    let s = at.short;
    let chain = format!("eg-{s}");
    let any = format!("eg-{s}-a");
    let ports = format!("eg-{s}-p");
    let ctr = format!("eg-{s}-denied");
    let mut b = String::new();
    let _ = writeln!(b, "add table {TABLE}");
    let _ = writeln!(b, "add chain {TABLE} {chain}");
    let _ = writeln!(b, "flush chain {TABLE} {chain}");
    let _ = writeln!(
        b,
        "add set {TABLE} {any} {{ type ipv4_addr; flags interval; }}"
    );
    let _ = writeln!(b, "flush set {TABLE} {any}");
    let _ = writeln!(
        b,
        "add set {TABLE} {ports} {{ type ipv4_addr . inet_proto . inet_service; flags interval; }}"
    );
    let _ = writeln!(b, "flush set {TABLE} {ports}");
    let _ = writeln!(b, "add counter {TABLE} {ctr}");
    let (any_elems, port_elems) = elements(policy, ceiling);
    if !any_elems.is_empty() {
        let _ = writeln!(
            b,
            "add element {TABLE} {any} {{ {} }}",
            any_elems.join(", ")
        );
    }
    if !port_elems.is_empty() {
        let _ = writeln!(
            b,
            "add element {TABLE} {ports} {{ {} }}",
            port_elems.join(", ")
        );
    }
    let closed: Vec<String> = ALWAYS_DENIED
        .iter()
        .map(|c| c.to_string())
        .chain([at.subnet.to_string()])
        .collect();
    let _ = writeln!(
        b,
        "add rule {TABLE} {chain} ip daddr {{ {} }} counter name \"{ctr}\" drop",
        closed.join(", ")
    );
    let _ = writeln!(b, "add rule {TABLE} {chain} ip daddr @{any} accept");
    let _ = writeln!(
        b,
        "add rule {TABLE} {chain} ip daddr . meta l4proto . th dport @{ports} accept"
    );
    let _ = writeln!(
        b,
        "add rule {TABLE} {chain} limit rate 10/minute burst 5 packets log prefix \"sandboxd egress deny s-{s}: \" level info"
    );
    // Refused, not dropped: a denied connection fails at once (ECONNREFUSED) instead of
    // hanging until the program's own timeout.
    let _ = writeln!(
        b,
        "add rule {TABLE} {chain} meta l4proto tcp counter name \"{ctr}\" reject with tcp reset"
    );
    let _ = writeln!(
        b,
        "add rule {TABLE} {chain} counter name \"{ctr}\" reject with icmpx admin-prohibited"
    );
    let _ = writeln!(
        b,
        "add element {TABLE} egress_fwd {{ \"s-{s}\" : jump {chain} }}"
    );
    let _ = writeln!(b, "add element {TABLE} egress_masq {{ {} }}", at.sandbox_ip);
    if let Some((dns, proxy)) = at.node {
        // DNS goes to the node's resolver whatever address the sandbox asks; TCP to the ports
        // of domain rules that no IP rule admits goes to the proxy.
        let nat = format!("egn-{s}");
        let input = format!("egi-{s}");
        for c in [&nat, &input] {
            let _ = writeln!(b, "add chain {TABLE} {c}");
            let _ = writeln!(b, "flush chain {TABLE} {c}");
        }
        let _ = writeln!(b, "add rule {TABLE} {nat} udp dport 53 redirect to :{dns}");
        let _ = writeln!(b, "add rule {TABLE} {nat} tcp dport 53 redirect to :{dns}");
        if !policy.transforms.is_empty() {
            // Transformed names may sit behind addresses IP rules admit: 80/443 all go through
            // the proxy, which splices what it does not transform.
            let _ = writeln!(
                b,
                "add rule {TABLE} {nat} tcp dport {{ 80, 443 }} redirect to :{proxy}"
            );
        }
        let _ = writeln!(b, "add rule {TABLE} {nat} ip daddr @{any} return");
        let _ = writeln!(
            b,
            "add rule {TABLE} {nat} ip daddr . meta l4proto . th dport @{ports} return"
        );
        let mut dports: Vec<u16> = Vec::new();
        for d in &policy.domains {
            let ps: &[u16] = if d.ports.is_empty() {
                &[80, 443]
            } else {
                &d.ports
            };
            for p in ps {
                if !dports.contains(p) {
                    dports.push(*p);
                }
            }
        }
        if !dports.is_empty() {
            let list: Vec<String> = dports.iter().map(u16::to_string).collect();
            let _ = writeln!(
                b,
                "add rule {TABLE} {nat} tcp dport {{ {} }} redirect to :{proxy}",
                list.join(", ")
            );
        }
        let _ = writeln!(b, "add rule {TABLE} {input} udp dport {dns} accept");
        let _ = writeln!(b, "add rule {TABLE} {input} tcp dport {dns} accept");
        if !dports.is_empty() || !policy.transforms.is_empty() {
            let _ = writeln!(b, "add rule {TABLE} {input} tcp dport {proxy} accept");
        }
        let _ = writeln!(
            b,
            "add element {TABLE} egress_nat {{ \"s-{s}\" : jump {nat} }}"
        );
        let _ = writeln!(
            b,
            "add element {TABLE} egress_in {{ \"s-{s}\" : jump {input} }}"
        );
    }
    b
}

/// The set elements of a policy: (any-protocol networks, `net . proto . port` triples).
fn elements(policy: &Policy, ceiling: &[Net4]) -> (Vec<String>, Vec<String>) {
    let mut any = Vec::new();
    let mut triples: Vec<(Net4, &'static str, u16, u16)> = Vec::new();
    for r in &policy.cidrs {
        for net in clamp(r.net, ceiling) {
            if r.proto == Proto::Any && r.ports.is_empty() {
                any.push(net);
                continue;
            }
            let protos: &[&'static str] = match r.proto {
                Proto::Tcp => &["tcp"],
                Proto::Udp => &["udp"],
                Proto::Any => &["tcp", "udp"],
            };
            for p in protos {
                if r.ports.is_empty() {
                    triples.push((net, *p, 0, 65535));
                } else {
                    for port in &r.ports {
                        triples.push((net, *p, *port, *port));
                    }
                }
            }
        }
    }
    // Interval sets refuse overlapping elements; keep the widest of nested networks.
    (
        dedup_nets(any).iter().map(Net4::to_string).collect(),
        dedup_triples(triples)
            .iter()
            .map(|(n, p, lo, hi)| {
                if lo == hi {
                    format!("{n} . {p} . {lo}")
                } else {
                    format!("{n} . {p} . {lo}-{hi}")
                }
            })
            .collect(),
    )
}

/// `net` ∩ each ceiling network (CIDRs either nest or are disjoint).
pub fn clamp(net: Net4, ceiling: &[Net4]) -> Vec<Net4> {
    let mut out = Vec::new();
    for c in ceiling {
        if c.len <= net.len && c.contains(net.addr) {
            out.push(net);
        } else if net.len <= c.len && net.contains(c.addr) {
            out.push(*c);
        }
    }
    out
}

fn dedup_nets(mut nets: Vec<Net4>) -> Vec<Net4> {
    nets.sort_by_key(|n| n.len);
    let mut out: Vec<Net4> = Vec::new();
    for n in nets {
        if !out.iter().any(|o| o.len <= n.len && o.contains(n.addr)) {
            out.push(n);
        }
    }
    out
}

type Triple = (Net4, &'static str, u16, u16);

/// Drops every triple another one covers (nested network, same protocol, wider ports).
fn dedup_triples(mut v: Vec<Triple>) -> Vec<Triple> {
    v.sort_by_key(|t| (t.0.len, u32::MAX - u32::from(t.3 - t.2)));
    let mut out: Vec<Triple> = Vec::new();
    for t in v {
        let covered = out.iter().any(|o| {
            o.0.len <= t.0.len && o.0.contains(t.0.addr) && o.1 == t.1 && o.2 <= t.2 && t.3 <= o.3
        });
        if !covered {
            out.push(t);
        }
    }
    out.sort_by_key(|t| (u32::from(t.0.addr), t.0.len, t.1, t.2));
    out
}

/// Installs (or atomically replaces) a sandbox's policy.
pub fn apply(at: Attach<'_>, policy: &Policy, ceiling: &[Net4]) -> Result<(), PolicyError> {
    let batch = sandbox_batch(at, policy, ceiling);
    let mut last = None;
    // A daemon of an older version may recreate the table under us (its base has no maps);
    // put the base back and try again.
    for _ in 0..3 {
        match nft(&batch) {
            Ok(()) => return Ok(()),
            Err(e) => {
                last = Some(e);
                install_base()?;
            }
        }
    }
    Err(last.unwrap_or_else(|| PolicyError("nft failed".into())))
}

/// Removes a sandbox's objects; whatever is already gone is skipped.
pub fn remove(short: &str, sandbox_ip: Option<Ipv4Addr>) {
    let listing = Command::new("nft")
        .args(["list", "table", "inet", "sandboxd"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let steps = removal_steps(short, sandbox_ip, &listing);
    if steps.is_empty() {
        return;
    }
    // One transaction for what the listing shows; if the table changed in between and the
    // batch fails (whole, changing nothing), each step on its own.
    if nft(&steps.join("\n")).is_ok() {
        return;
    }
    for s in steps {
        let _ = nft(&s);
    }
}

/// The body of the top-level `header {` block of an `nft list table` listing.
fn block<'a>(listing: &'a str, header: &str) -> Option<&'a str> {
    let start = listing.find(&format!("\t{header} {{\n"))?;
    let rest = &listing[start..];
    Some(&rest[..rest.find("\n\t}").unwrap_or(rest.len())])
}

/// The `nft` commands that remove what `listing` shows of sandbox `short`, in dependency order
/// (map elements that jump to its chains first).
fn removal_steps(short: &str, sandbox_ip: Option<Ipv4Addr>, listing: &str) -> Vec<String> {
    let mut steps = Vec::new();
    let veth = format!("\"s-{short}\"");
    for m in ["egress_fwd", "egress_in", "egress_nat"] {
        if block(listing, &format!("map {m}")).is_some_and(|b| b.contains(&veth)) {
            steps.push(format!("delete element {TABLE} {m} {{ {veth} }}"));
        }
    }
    if let Some(ip) = sandbox_ip {
        let ip = ip.to_string();
        let listed = block(listing, "set egress_masq").is_some_and(|b| {
            b.split(|c: char| !(c.is_ascii_digit() || c == '.'))
                .any(|w| w == ip)
        });
        if listed {
            steps.push(format!("delete element {TABLE} egress_masq {{ {ip} }}"));
        }
    }
    for c in [
        format!("eg-{short}"),
        format!("egi-{short}"),
        format!("egn-{short}"),
    ] {
        if block(listing, &format!("chain {c}")).is_some() {
            steps.push(format!("flush chain {TABLE} {c}\ndelete chain {TABLE} {c}"));
        }
    }
    for s in [format!("eg-{short}-a"), format!("eg-{short}-p")] {
        if block(listing, &format!("set {s}")).is_some() {
            steps.push(format!("delete set {TABLE} {s}"));
        }
    }
    if block(listing, &format!("counter eg-{short}-denied")).is_some() {
        steps.push(format!("delete counter {TABLE} eg-{short}-denied"));
    }
    steps
}

/// Every sandbox's denied-packet counter in the table, by short id (one `nft` call).
pub fn denied_all() -> std::collections::HashMap<String, u64> {
    let Ok(out) = Command::new("nft")
        .args(["list", "counters", "table", "inet", "sandboxd"])
        .output()
    else {
        return Default::default();
    };
    parse_counters(&String::from_utf8_lossy(&out.stdout))
}

fn parse_counters(text: &str) -> std::collections::HashMap<String, u64> {
    let mut out = std::collections::HashMap::new();
    let mut current: Option<String> = None;
    for line in text.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("counter ") {
            current = rest
                .split_whitespace()
                .next()
                .and_then(|n| n.strip_prefix("eg-"))
                .and_then(|n| n.strip_suffix("-denied"))
                .map(str::to_string);
        } else if let (Some(short), Some(rest)) = (&current, line.strip_prefix("packets ")) {
            if let Some(n) = rest.split_whitespace().next().and_then(|n| n.parse().ok()) {
                out.insert(short.clone(), n);
            }
            current = None;
        }
    }
    out
}

/// Packets the sandbox sent that its policy dropped (0 if it has no chain).
pub fn denied_total(short: &str) -> u64 {
    let Ok(out) = Command::new("nft")
        .args([
            "list",
            "counter",
            "inet",
            "sandboxd",
            &format!("eg-{short}-denied"),
        ])
        .output()
    else {
        return 0;
    };
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace()
        .skip_while(|w| *w != "packets")
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attached_veths_are_read_from_the_map_listing() {
        let listing = "table inet sandboxd {\n\tmap egress_fwd {\n\t\ttype ifname : verdict\n\t\telements = { \"s-aaaaaaaaaaaa\" : jump eg-aaaaaaaaaaaa,\n\t\t\t     \"s-bbbbbbbbbbbb\" : jump eg-bbbbbbbbbbbb }\n\t}\n}\n";
        assert_eq!(veths_in(listing), vec!["s-aaaaaaaaaaaa", "s-bbbbbbbbbbbb"]);
        assert!(veths_in("table inet sandboxd {\n}\n").is_empty());
    }

    #[test]
    fn base_events() {
        for yes in [
            "delete table inet sandboxd",
            "flush table inet sandboxd",
            "delete map inet sandboxd egress_fwd",
            "delete chain inet sandboxd forward",
            "flush ruleset",
        ] {
            assert!(base_event(yes), "{yes}");
        }
        for no in [
            "add table inet sandboxd",
            "delete table inet other",
            "delete table inet sandboxd2",
            "delete chain inet sandboxd eg-0123456789ab",
            "delete set inet sandboxd eg-0123456789ab-a",
            "delete element inet sandboxd egress_fwd { \"s-0123456789ab\" }",
            "# new generation 6975 by process 14605 (nft)",
        ] {
            assert!(!base_event(no), "{no}");
        }
    }

    #[test]
    fn removal_deletes_only_what_the_table_holds() {
        let listing = "table inet sandboxd {\n\tcounter eg-aaaaaaaaaaaa-denied {\n\t\tpackets 0 bytes 0\n\t}\n\n\tmap egress_fwd {\n\t\ttype ifname : verdict\n\t\telements = { \"s-aaaaaaaaaaaa\" : jump eg-aaaaaaaaaaaa, \"s-bbbbbbbbbbbb\" : jump eg-bbbbbbbbbbbb }\n\t}\n\n\tmap egress_in {\n\t\ttype ifname : verdict\n\t}\n\n\tset egress_masq {\n\t\ttype ipv4_addr\n\t\telements = { 10.97.0.22 }\n\t}\n\n\tset eg-aaaaaaaaaaaa-a {\n\t\ttype ipv4_addr\n\t}\n\n\tchain eg-aaaaaaaaaaaa {\n\t\tdrop\n\t}\n}\n";
        let steps = removal_steps("aaaaaaaaaaaa", Some("10.97.0.2".parse().unwrap()), listing);
        assert_eq!(
            steps,
            [
                "delete element inet sandboxd egress_fwd { \"s-aaaaaaaaaaaa\" }",
                "flush chain inet sandboxd eg-aaaaaaaaaaaa\ndelete chain inet sandboxd eg-aaaaaaaaaaaa",
                "delete set inet sandboxd eg-aaaaaaaaaaaa-a",
                "delete counter inet sandboxd eg-aaaaaaaaaaaa-denied",
            ]
        );
        // 10.97.0.2 is not 10.97.0.22; a sandbox the table does not know needs nothing.
        assert!(removal_steps("cccccccccccc", None, listing).is_empty());
    }
    use serde_json::json;

    fn at() -> Attach<'static> {
        Attach {
            short: "0123456789ab",
            sandbox_ip: "10.120.0.2".parse().unwrap(),
            subnet: Net4::new("10.120.0.0".parse().unwrap(), 16),
            node: None,
        }
    }

    fn all() -> Vec<Net4> {
        vec![Net4::new(Ipv4Addr::UNSPECIFIED, 0)]
    }

    #[test]
    fn deny_all_has_no_elements_and_ends_in_a_counted_refusal() {
        let b = sandbox_batch(at(), &Policy::deny_all(), &all());
        assert!(!b.contains("add element inet sandboxd eg-0123456789ab-"));
        assert!(b.contains("169.254.0.0/16"));
        assert!(b.contains("10.120.0.0/16"));
        let last: Vec<&str> = b
            .lines()
            .filter(|l| l.starts_with("add rule inet sandboxd eg-0123456789ab "))
            .collect();
        assert!(
            last[last.len() - 2].ends_with(
                "meta l4proto tcp counter name \"eg-0123456789ab-denied\" reject with tcp reset"
            ) && last[last.len() - 1].ends_with(
                "counter name \"eg-0123456789ab-denied\" reject with icmpx admin-prohibited"
            ),
            "{last:?}"
        );
        assert!(b.contains("egress_fwd { \"s-0123456789ab\" : jump eg-0123456789ab }"));
    }

    #[test]
    fn rules_render_into_sets() {
        let p = Policy::from_neev(Some(&json!({"mode": "allow_list", "allow": [
            {"host": "198.18.0.2", "ports": [80, 443], "protocol": "TCP"},
            {"host": "198.18.1.0/24"},
            {"host": "198.18.1.7"},
            {"host": "198.18.2.0/24", "ports": [53]},
        ]})))
        .unwrap();
        let b = sandbox_batch(at(), &p, &all());
        assert!(b.contains("eg-0123456789ab-a { 198.18.1.0/24 }"), "{b}");
        assert!(b.contains(
            "198.18.0.2/32 . tcp . 80, 198.18.0.2/32 . tcp . 443, 198.18.2.0/24 . tcp . 53, 198.18.2.0/24 . udp . 53"
        ), "{b}");
    }

    #[test]
    fn domain_rules_redirect_to_the_proxy() {
        let p = Policy::from_leap0(&json!({"mode": "custom", "allow_domains": ["example.com"]}))
            .unwrap();
        let b = sandbox_batch(
            Attach {
                node: Some((5353, 3128)),
                ..at()
            },
            &p,
            &all(),
        );
        assert!(
            b.contains("egn-0123456789ab udp dport 53 redirect to :5353"),
            "{b}"
        );
        assert!(
            b.contains("egn-0123456789ab tcp dport 53 redirect to :5353")
                && b.contains("egi-0123456789ab tcp dport 5353 accept"),
            "DNS over TCP goes to the resolver too: {b}"
        );
        assert!(b.contains("tcp dport { 80, 443 } redirect to :3128"), "{b}");
        assert!(b.contains("egi-0123456789ab tcp dport 3128 accept"), "{b}");
    }

    #[test]
    fn counters_parse() {
        let t = "table inet sandboxd {\n\tcounter eg-0123456789ab-denied {\n\t\tpackets 7 bytes 420\n\t}\n\tcounter other {\n\t\tpackets 1 bytes 2\n\t}\n}\n";
        let m = parse_counters(t);
        assert_eq!(m.get("0123456789ab"), Some(&7));
        assert_eq!(m.len(), 1);
    }

    #[test]
    fn ceiling_clamps() {
        let ceiling = vec![Net4::new("198.18.0.0".parse().unwrap(), 15)];
        let b = sandbox_batch(at(), &Policy::allow_all(), &ceiling);
        assert!(b.contains("eg-0123456789ab-a { 198.18.0.0/15 }"), "{b}");
        let p = Policy::from_neev(Some(
            &json!({"mode": "allow_list", "allow": [{"host": "192.0.2.0/24"}]}),
        ))
        .unwrap();
        let b = sandbox_batch(at(), &p, &ceiling);
        assert!(!b.contains("add element inet sandboxd eg-0123456789ab-a"));
    }
}
