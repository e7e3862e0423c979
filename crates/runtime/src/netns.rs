//! Per-sandbox network: a named netns and a veth pair, host side `s-<short>`, sandbox side
//! `eth0`, on the sandbox's /30.

use std::path::Path;
use std::process::Command;

use sandboxd_core::NetSlot;

use crate::sys::run;
use crate::RuntimeError;

pub(crate) fn netns_name(short: &str) -> String {
    format!("sbx-{short}")
}

pub(crate) fn host_veth(short: &str) -> String {
    format!("s-{short}")
}

pub(crate) fn netns_path(short: &str) -> String {
    format!("/var/run/netns/{}", netns_name(short))
}

pub(crate) fn exists(short: &str) -> bool {
    Path::new(&netns_path(short)).exists()
}

/// Creates the namespace and wires the veth pair. On failure, removes what it made.
pub(crate) fn create(short: &str, slot: NetSlot) -> Result<(), RuntimeError> {
    let ns = netns_name(short);
    let host = host_veth(short);
    let peer = format!("p-{short}");
    let host_batch = format!(
        "netns add {ns}\n\
         link add {host} type veth peer name {peer}\n\
         link set {peer} netns {ns}\n\
         addr add {hip}/30 dev {host}\n\
         link set {host} up\n",
        hip = slot.host_ip()
    );
    let ns_batch = format!(
        "link set {peer} name eth0\n\
         addr add {sip}/30 dev eth0\n\
         link set eth0 up\n\
         link set lo up\n\
         route add default via {hip}\n",
        sip = slot.sandbox_ip(),
        hip = slot.host_ip()
    );
    let result = run(
        "ip (host side)",
        Command::new("ip").args(["-batch", "-"]),
        Some(&host_batch),
    )
    .and_then(|_| {
        run(
            "ip (netns side)",
            Command::new("ip").args(["-n", &ns, "-batch", "-"]),
            Some(&ns_batch),
        )
    });
    if result.is_err() {
        let _ = destroy(short);
    }
    result.map(|_| ())
}

/// Deletes the veth (if left in the root netns) and the namespace. Idempotent.
pub(crate) fn destroy(short: &str) -> Result<(), RuntimeError> {
    let host = host_veth(short);
    if Path::new(&format!("/sys/class/net/{host}")).exists() {
        let _ = run(
            "ip link del",
            Command::new("ip").args(["link", "del", &host]),
            None,
        );
    }
    if exists(short) {
        run(
            "ip netns del",
            Command::new("ip").args(["netns", "del", &netns_name(short)]),
            None,
        )?;
    }
    Ok(())
}

/// Bytes received and sent by the sandbox, read from the host side of its veth (so the
/// directions are swapped: what the host side transmits, the sandbox receives).
pub(crate) fn counters(short: &str) -> (u64, u64) {
    let read = |f: &str| {
        std::fs::read_to_string(format!(
            "/sys/class/net/{}/statistics/{f}",
            host_veth(short)
        ))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
    };
    (read("tx_bytes"), read("rx_bytes"))
}

/// The host-side firewall every sandbox sits behind (see `sandboxd_egress::nft`): nothing a
/// sandbox sends reaches the host, another sandbox or anywhere else except what its own egress
/// policy admits, and replies on connections the host opened (the daemon talking to the agent).
/// Created if absent; re-running rewrites only the shared base chains, never another daemon's
/// per-sandbox objects. Turns on IPv4 forwarding.
pub fn install_host_firewall() -> Result<(), RuntimeError> {
    sandboxd_egress::nft::install_base()?;
    Ok(())
}

/// Puts the sandbox side's address and default route back: runsc moves them into gVisor's
/// netstack on every run or restore, so a restart in the same netns needs them again.
pub(crate) fn readdress(short: &str, slot: NetSlot) -> Result<(), RuntimeError> {
    let batch = format!(
        "addr flush dev eth0\n\
         addr add {sip}/30 dev eth0\n\
         link set eth0 up\n\
         route replace default via {hip}\n",
        sip = slot.sandbox_ip(),
        hip = slot.host_ip()
    );
    run(
        "ip (readdress)",
        Command::new("ip").args(["-n", &netns_name(short), "-batch", "-"]),
        Some(&batch),
    )
    .map(|_| ())
}

/// Makes sure only this daemon's sandboxes hold addresses in `10.<octet>.0.0/16`: two owners of
/// one subnet make the host's routes to sandboxes ambiguous (the daemon would talk to the other
/// owner's veth and its agent would never answer). `own_ids` are the sandboxes of this data dir.
/// A foreign sandbox veth (`s-*`, left by a daemon that died with the host objects of its
/// sandboxes, or run by another daemon with the same octet) is deleted with its netns when
/// `reclaim` is set, and refused otherwise; any other interface is always refused.
pub fn claim_subnet(octet: u8, own_ids: &[String], reclaim: bool) -> Result<(), RuntimeError> {
    let out = run(
        "ip addr",
        Command::new("ip").args(["-4", "-o", "addr", "show"]),
        None,
    )?;
    let own: Vec<String> = own_ids
        .iter()
        .map(|id| host_veth(&crate::gvisor::short_of(id)))
        .collect();
    for (ifname, addr) in foreign_holders(&String::from_utf8_lossy(&out.stdout), octet, &own) {
        match ifname.strip_prefix("s-") {
            Some(short) if reclaim => {
                tracing::warn!(%ifname, %addr, "removing a stale sandbox veth in this daemon's subnet");
                let _ = destroy(short);
                if Path::new(&format!("/sys/class/net/{ifname}")).exists() {
                    return Err(RuntimeError::Command {
                        what: "subnet check".into(),
                        detail: format!("could not remove {ifname} holding {addr}"),
                    });
                }
            }
            _ => {
                return Err(RuntimeError::Command {
                    what: "subnet check".into(),
                    detail: format!(
                        "{ifname} already has {addr} in 10.{octet}.0.0/16 and is not a sandbox of \
                         this data dir; delete it, pass --reclaim-subnet (stale sandbox veths \
                         only), or pick another --subnet-octet"
                    ),
                })
            }
        }
    }
    Ok(())
}

/// `(ifname, addr)` of every interface in `ip -4 -o addr show` output that holds an address in
/// `10.<octet>.0.0/16` and is not in `own`.
fn foreign_holders(ip_output: &str, octet: u8, own: &[String]) -> Vec<(String, String)> {
    let prefix = format!("10.{octet}.");
    ip_output
        .lines()
        .filter_map(|line| {
            let mut f = line.split_whitespace();
            let (_, ifname, _, addr) = (f.next()?, f.next()?, f.next()?, f.next()?);
            let ifname = ifname.split('@').next().unwrap_or(ifname);
            (addr.starts_with(&prefix) && !own.iter().any(|o| o == ifname))
                .then(|| (ifname.to_string(), addr.to_string()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn foreign_holders_skip_own_veths_and_other_subnets() {
        let out = "1: lo    inet 127.0.0.1/8 scope host lo\n\
                   2: eth0    inet 10.0.2.15/24 brd 10.0.2.255 scope global eth0\n\
                   7: s-aaaaaaaaaaaa@if2    inet 10.240.0.1/30 scope global s-aaaaaaaaaaaa\n\
                   9: s-bbbbbbbbbbbb@if2    inet 10.240.0.5/30 scope global s-bbbbbbbbbbbb\n\
                   11: br0    inet 10.240.9.1/24 scope global br0\n\
                   12: s-cccccccccccc@if2    inet 10.241.0.1/30 scope global s-cccccccccccc\n";
        let own = vec!["s-aaaaaaaaaaaa".to_string()];
        assert_eq!(
            foreign_holders(out, 240, &own),
            vec![
                ("s-bbbbbbbbbbbb".to_string(), "10.240.0.5/30".to_string()),
                ("br0".to_string(), "10.240.9.1/24".to_string()),
            ]
        );
        assert!(foreign_holders(out, 7, &own).is_empty());
    }
}
