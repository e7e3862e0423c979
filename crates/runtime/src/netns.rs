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

/// Fails if an interface that is not a sandbox veth holds an address in `10.<octet>.0.0/16`:
/// two owners of one subnet make the host's routes to sandboxes ambiguous.
pub fn check_subnet_free(octet: u8) -> Result<(), RuntimeError> {
    let out = run(
        "ip addr",
        Command::new("ip").args(["-4", "-o", "addr", "show"]),
        None,
    )?;
    let prefix = format!("10.{octet}.");
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let mut f = line.split_whitespace();
        let (Some(_), Some(ifname), Some(_), Some(addr)) = (f.next(), f.next(), f.next(), f.next())
        else {
            continue;
        };
        if addr.starts_with(&prefix) && !ifname.starts_with("s-") {
            return Err(RuntimeError::Command {
                what: "subnet check".into(),
                detail: format!(
                    "{ifname} already has {addr} in 10.{octet}.0.0/16; pick another --subnet-octet"
                ),
            });
        }
    }
    Ok(())
}
