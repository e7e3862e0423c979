//! Egress policy, black-box against the real daemon with real sandboxes. The test builds its
//! own "internet": a network namespace with a veth to the root netns, addresses in
//! 198.18.<octet>.0/24 (benchmark range) and HTTP servers in it. Sandboxes send traffic only to
//! that namespace and to the host itself (which must refuse them); the daemon is started with
//! an egress ceiling of 198.18.0.0/15, so no policy can reach anything else.

mod common;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::os::fd::AsRawFd;
use std::process::Command;
use std::time::Duration;

use common::{call, Daemon};
use serde_json::{json, Value};

/// A namespace "internet" with test hosts; removed on drop.
struct Internet {
    ns: String,
    veth: String,
    net: u8,
}

fn sh(args: &[&str]) {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Internet {
    fn new(net: u8) -> Internet {
        let ns = format!("sbxt-inet-{net}");
        let veth = format!("ti{net}");
        let _ = Command::new("ip").args(["netns", "del", &ns]).output();
        let _ = Command::new("ip").args(["link", "del", &veth]).output();
        sh(&["ip", "netns", "add", &ns]);
        sh(&[
            "ip",
            "link",
            "add",
            &veth,
            "type",
            "veth",
            "peer",
            "name",
            &format!("tp{net}"),
        ]);
        sh(&["ip", "link", "set", &format!("tp{net}"), "netns", &ns]);
        sh(&[
            "ip",
            "addr",
            "add",
            &format!("198.18.{net}.1/24"),
            "dev",
            &veth,
        ]);
        sh(&["ip", "link", "set", &veth, "up"]);
        let inside = |a: &[&str]| {
            let mut v = vec!["ip", "-n", ns.as_str()];
            v.extend_from_slice(a);
            sh(&v);
        };
        let tp = format!("tp{net}");
        inside(&["link", "set", &tp, "up"]);
        inside(&["link", "set", "lo", "up"]);
        for host in [2, 3, 5, 53] {
            inside(&[
                "addr",
                "add",
                &format!("198.18.{net}.{host}/24"),
                "dev",
                &tp,
            ]);
        }
        Internet { ns, veth, net }
    }

    fn ip(&self, host: u8) -> Ipv4Addr {
        Ipv4Addr::new(198, 18, self.net, host)
    }

    /// Starts an HTTP server on `addr` inside the namespace; it answers `hello <addr>` and
    /// records the requests it saw.
    fn http(&self, addr: SocketAddr) -> std::sync::Arc<std::sync::Mutex<Vec<String>>> {
        let l = bind_in_ns(&self.ns, addr);
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let s2 = seen.clone();
        std::thread::spawn(move || {
            for mut c in l.incoming().map_while(Result::ok) {
                let _ = c.set_read_timeout(Some(Duration::from_secs(5)));
                let mut buf = [0u8; 4096];
                let n = c.read(&mut buf).unwrap_or(0);
                s2.lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(&buf[..n]).into_owned());
                let body = format!("hello {addr}\n");
                let _ = c.write_all(
                    format!(
                        "HTTP/1.0 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    )
                    .as_bytes(),
                );
            }
        });
        seen
    }
}

impl Drop for Internet {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.veth])
            .output();
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).output();
    }
}

/// A DNS server in the namespace at 198.18.<net>.53 answering A queries from `zone`, over
/// UDP and TCP (length-prefixed messages).
fn dns_server(inet: &Internet, zone: Vec<(&'static str, Ipv4Addr)>) {
    let path = format!("/var/run/netns/{}", inet.ns);
    let addr = SocketAddr::new(inet.ip(53).into(), 53);
    let (sock, tcp) = std::thread::spawn(move || {
        let f = std::fs::File::open(path).unwrap();
        // SAFETY: setns(2) on a namespace fd we hold; it changes only this thread.
        let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns");
        (
            std::net::UdpSocket::bind(addr).unwrap(),
            TcpListener::bind(addr).unwrap(),
        )
    })
    .join()
    .unwrap();
    let zone = std::sync::Arc::new(zone);
    let reply = {
        let zone = zone.clone();
        move |q: &[u8]| -> Option<Vec<u8>> {
            let (name, qtype, _) = sandboxd_egress::dns::question(q)?;
            let ips: Vec<Ipv4Addr> = zone
                .iter()
                .filter(|(z, _)| *z == name && qtype == 1)
                .map(|(_, ip)| *ip)
                .collect();
            Some(sandboxd_egress::dns::answer(q, &ips, 60))
        }
    };
    let udp_reply = reply.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 1500];
        while let Ok((n, peer)) = sock.recv_from(&mut buf) {
            if let Some(r) = udp_reply(&buf[..n]) {
                let _ = sock.send_to(&r, peer);
            }
        }
    });
    std::thread::spawn(move || {
        for mut c in tcp.incoming().map_while(Result::ok) {
            let _ = c.set_read_timeout(Some(Duration::from_secs(5)));
            let mut len = [0u8; 2];
            while c.read_exact(&mut len).is_ok() {
                let mut q = vec![0u8; usize::from(u16::from_be_bytes(len))];
                if c.read_exact(&mut q).is_err() {
                    break;
                }
                let Some(r) = reply(&q) else { break };
                let mut out = (r.len() as u16).to_be_bytes().to_vec();
                out.extend_from_slice(&r);
                if c.write_all(&out).is_err() {
                    break;
                }
            }
        }
    });
}

/// Asks the sandbox's resolver for `name`'s A record over TCP; returns (rcode, addresses).
fn resolve_tcp(d: &Daemon, id: &str, name: &str) -> (u8, Vec<String>) {
    let script = r#"
import socket, struct, sys
name = sys.argv[1]
q = struct.pack(">HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0)
q += b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0" + struct.pack(">HH", 1, 1)
ns = [l.split()[1] for l in open("/etc/resolv.conf") if l.startswith("nameserver")][0]
s = socket.create_connection((ns, 53), timeout=5)
s.sendall(struct.pack(">H", len(q)) + q)
def rd(n):
    b = b""
    while len(b) < n:
        c = s.recv(n - len(b))
        if not c:
            raise SystemExit("eof")
        b += c
    return b
r = rd(struct.unpack(">H", rd(2))[0])
an = struct.unpack(">H", r[6:8])[0]
# Answers follow the question; each A record ends with its 4 address bytes.
pos, ips = 12 + len(q) - 12, []
for _ in range(an):
    rdlen = struct.unpack(">H", r[pos + 10:pos + 12])[0]
    ips.append(".".join(map(str, r[pos + 12:pos + 12 + rdlen])))
    pos += 12 + rdlen
print(r[3] & 15, " ".join(ips))
"#;
    let (exit, out, err) = d.exec(id, "python3", &["-c", script, name]);
    assert_eq!(exit["exit_code"], 0, "DNS over TCP: {out}{err}");
    let mut it = out.split_whitespace();
    let rcode = it.next().unwrap().parse().unwrap();
    (rcode, it.map(str::to_string).collect())
}

/// Binds a listener inside netns `ns` (from a thread that enters it; the socket stays there).
fn bind_in_ns(ns: &str, addr: SocketAddr) -> TcpListener {
    let path = format!("/var/run/netns/{ns}");
    std::thread::spawn(move || {
        let f = std::fs::File::open(path).unwrap();
        // SAFETY: setns(2) on a namespace fd we hold; it changes only this thread.
        let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns");
        TcpListener::bind(addr).unwrap()
    })
    .join()
    .unwrap()
}

/// A host service on every address of the root netns: sandboxes must never reach it.
fn host_service() -> (u16, std::sync::Arc<std::sync::atomic::AtomicU64>) {
    let l = TcpListener::bind("0.0.0.0:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let hits = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let h2 = hits.clone();
    std::thread::spawn(move || {
        for c in l.incoming().map_while(Result::ok) {
            h2.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            drop(c);
        }
    });
    (port, hits)
}

fn start() -> Daemon {
    Daemon::start()
}

/// `wget` from inside the sandbox; the body if it got one.
fn fetch(d: &Daemon, id: &str, url: &str) -> Option<String> {
    let (exit, out, _) = d.exec(
        id,
        "python3",
        &[
            "-c",
            "import sys, urllib.request as u; sys.stdout.write(u.urlopen(sys.argv[1], timeout=2).read().decode())",
            url,
        ],
    );
    (exit["exit_code"] == 0).then_some(out)
}

/// `fetch` that must succeed. A daemon of an older version starting elsewhere on this host
/// recreates the shared nftables table (fail-closed: everything drops) until this daemon
/// re-installs its objects (within a second), so a success is given three tries.
fn fetch_ok(d: &Daemon, id: &str, url: &str) -> String {
    for _ in 0..3 {
        if let Some(body) = fetch(d, id, url) {
            return body;
        }
        std::thread::sleep(Duration::from_millis(700));
    }
    panic!("{url} not reachable from {id}\n{}", d.log());
}

/// Whether a TCP connection from the sandbox to `ip:port` is established.
fn connects(d: &Daemon, id: &str, ip: &str, port: u16) -> bool {
    let (exit, _, _) = d.exec(
        id,
        "python3",
        &[
            "-c",
            "import sys, socket; socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=2)",
            ip,
            &port.to_string(),
        ],
    );
    exit["exit_code"] == 0
}

fn put_egress(d: &Daemon, id: &str, egress: Value) -> Value {
    let r = call(
        &d.key,
        "PUT",
        &format!("{}/{id}/egress", d.sandboxes_url("default", "default")),
        Some(egress),
    );
    assert_eq!(r.status, 200, "{}", r.raw);
    r.body
}

fn sandbox_ip(d: &Daemon, id: &str) -> String {
    let (_, out, _) = d.exec(
        id,
        "python3",
        &["-c", "import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.connect(('198.18.0.1', 9)); print(s.getsockname()[0])"],
    );
    out.trim().to_string()
}

fn denied(id: &str) -> u64 {
    let short: String = id.chars().filter(|c| *c != '-').take(12).collect();
    sandboxd_egress::nft::denied_total(&short)
}

#[test]
fn deny_all_ip_rules_runtime_update_and_isolation() {
    let d = start();
    let inet = Internet::new(d.octet);
    let (a2, a3) = (inet.ip(2), inet.ip(3));
    inet.http(SocketAddr::new(a2.into(), 8080));
    inet.http(SocketAddr::new(a2.into(), 8081));
    inet.http(SocketAddr::new(a3.into(), 8080));
    inet.http(SocketAddr::new(inet.ip(5).into(), 8080));
    let url = |ip: Ipv4Addr, port: u16| format!("http://{ip}:{port}/");

    // NeevCloud's default: deny-all. Nothing answers.
    let sb = d.create(json!({"sandbox_template_id": "sb-debian-12-python"}));
    let id = sb["id"].as_str().unwrap();
    assert_eq!(sb["egress"]["mode"], "deny_all");
    for (ip, port) in [(a2, 8080), (a2, 8081), (a3, 8080)] {
        assert_eq!(fetch(&d, id, &url(ip, port)), None, "{ip}:{port}");
    }
    // Drops are counted (tries again if another daemon just reset the shared table).
    assert!(
        (0..3).any(|_| {
            connects(&d, id, &a2.to_string(), 8080);
            denied(id) > 0
        }),
        "drops are counted"
    );
    // Refused at once, not left to time out: a denied connection, and DNS on a node that runs
    // no resolver (this one: no --egress-dns-upstream).
    let probe = "import socket, sys, time\n\
t = time.time()\n\
try:\n    socket.create_connection((sys.argv[1], 8080), timeout=5); print('open')\n\
except OSError as e:\n    print(type(e).__name__, round(time.time() - t, 2))\n\
t = time.time()\n\
try:\n    socket.getaddrinfo('example.com', 80); print('resolved')\n\
except OSError as e:\n    print('dns-failed', round(time.time() - t, 2))\n";
    let (_, out, err) = d.exec(id, "python3", &["-c", probe, &a2.to_string()]);
    let lines: Vec<(&str, f64)> = out
        .lines()
        .map(|l| {
            let (what, secs) = l.rsplit_once(' ').unwrap_or((l, "99"));
            (what, secs.parse().unwrap_or(99.0))
        })
        .collect();
    assert_eq!(lines.len(), 2, "{out}{err}");
    assert_eq!(lines[0].0, "ConnectionRefusedError", "{out}");
    assert_eq!(lines[1].0, "dns-failed", "{out}");
    assert!(lines[0].1 < 1.0 && lines[1].1 < 1.0, "not at once: {out}");

    // One IP rule: exactly that IP and port, applied to the running sandbox.
    let v = put_egress(
        &d,
        id,
        json!({"mode": "allow_list", "allow": [{"host": a2.to_string(), "ports": [8080], "protocol": "TCP"}]}),
    );
    assert_eq!(v["egress"]["allow"][0]["ports"], json!([8080]));
    assert_eq!(
        fetch_ok(&d, id, &url(a2, 8080)),
        format!("hello {a2}:8080\n")
    );
    assert_eq!(fetch(&d, id, &url(a2, 8081)), None);
    assert_eq!(fetch(&d, id, &url(a3, 8080)), None);

    // A CIDR without ports admits every port of every address in it.
    put_egress(
        &d,
        id,
        json!({"mode": "allow_list", "allow": [{"host": format!("198.18.{}.0/30", d.octet)}]}),
    );
    fetch_ok(&d, id, &url(a2, 8081));
    fetch_ok(&d, id, &url(a3, 8080));
    assert_eq!(
        fetch(&d, id, &url(inet.ip(5), 8080)),
        None,
        ".5 is outside the /30"
    );

    // The internet escape hatch: still never the host, another sandbox, link-local.
    put_egress(
        &d,
        id,
        json!({"mode": "allow_list", "allow_internet": true}),
    );
    fetch_ok(&d, id, &url(a3, 8080));
    let (port, hits) = host_service();
    let api_port: u16 = d.url.rsplit(':').next().unwrap().parse().unwrap();
    let host_side = format!("10.{}.0.1", d.octet);
    for (ip, p) in [
        (host_side.as_str(), port),
        (host_side.as_str(), api_port),
        (&inet.ip(1).to_string(), port),
        ("127.0.0.1", port),
        ("169.254.169.254", 80),
    ] {
        assert!(!connects(&d, id, ip, p), "{ip}:{p}");
    }
    assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 0);

    // Another sandbox (its agent listens) is out of reach, both ways.
    let other = d.create(json!({"sandbox_template_id": "sb-debian-12-python",
        "egress": {"mode": "allow_list", "allow_internet": true}}));
    let oid = other["id"].as_str().unwrap();
    let (aip, oip) = (sandbox_ip(&d, id), sandbox_ip(&d, oid));
    assert_ne!(aip, oip);
    assert!(!connects(&d, id, &oip, 7777));
    assert!(!connects(&d, oid, &aip, 7777));
    fetch_ok(&d, oid, &url(a2, 8080));

    // Back to deny-all at run time.
    put_egress(&d, id, json!({"mode": "deny_all"}));
    assert_eq!(fetch(&d, id, &url(a2, 8080)), None);
    let audit = call(
        &d.key,
        "GET",
        &format!("{}/{id}/audit", d.sandboxes_url("default", "default")),
        None,
    );
    assert!(audit.raw.contains("egress.update"), "{}", audit.raw);
    assert!(audit.raw.contains("(internet)"), "{}", audit.raw);

    // The SDK's allow_internet shape (`0.0.0.0/0` and `::/0` hosts) is accepted; IPv6 rules
    // admit nothing (no IPv6 path). Domain rules on a node without the proxy are refused.
    let r = call(
        &d.key,
        "PUT",
        &format!("{}/{id}/egress", d.sandboxes_url("default", "default")),
        Some(json!({"mode": "allow_list", "allow": [{"host": "0.0.0.0/0"}, {"host": "::/0"}]})),
    );
    assert_eq!(r.status, 200, "{}", r.raw);
    fetch_ok(&d, id, &url(a2, 8080));
    let r = call(
        &d.key,
        "PUT",
        &format!("{}/{id}/egress", d.sandboxes_url("default", "default")),
        Some(json!({"mode": "allow_list", "allow": [{"host": "example.com"}]})),
    );
    assert_eq!(r.status, 400, "{}", r.raw);
    assert_eq!(r.body["field"], "egress.allow[0].host", "{}", r.raw);

    // Denials reach the daemon log, at most once per 10 s per sandbox.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while !d.log().contains("egress packets denied by policy") {
        assert!(std::time::Instant::now() < deadline, "{}", d.log());
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn policy_survives_snapshot_restore_and_fork() {
    let d = start();
    let inet = Internet::new(d.octet);
    let a2 = inet.ip(2);
    inet.http(SocketAddr::new(a2.into(), 8080));
    inet.http(SocketAddr::new(inet.ip(3).into(), 8080));
    let root = d.sandboxes_url("default", "default");
    let sb = d.create(json!({"sandbox_template_id": "sb-debian-12-python",
        "egress": {"mode": "allow_list", "allow": [{"host": a2.to_string(), "ports": [8080]}]}}));
    let id = sb["id"].as_str().unwrap();
    let ok = format!("http://{a2}:8080/");
    let blocked = format!("http://{}:8080/", inet.ip(3));
    fetch_ok(&d, id, &ok);
    assert_eq!(fetch(&d, id, &blocked), None);

    let s = call(
        &d.key,
        "POST",
        &format!("{root}/{id}/snapshots"),
        Some(json!({"name": "eg-1", "include_memory": true})),
    );
    assert_eq!(s.status, 202, "{}", s.raw);
    let snap = s.body["id"].as_str().unwrap();
    let r = call(
        &d.key,
        "POST",
        &root,
        Some(json!({"name": "restored", "from_snapshot": snap})),
    );
    assert_eq!(r.status, 201, "{}", r.raw);
    let rid = r.body["id"].as_str().unwrap();
    assert_eq!(r.body["egress"]["allow"][0]["host"], a2.to_string());
    fetch_ok(&d, rid, &ok);
    assert_eq!(fetch(&d, rid, &blocked), None, "and the deny");

    // A fork carries it too.
    let f = call(
        &d.key,
        "POST",
        &format!("{root}/{id}/fork"),
        Some(json!({"name": "forked"})),
    );
    assert!(f.status == 200 || f.status == 201, "{}", f.raw);
    let fid = f.body["id"].as_str().unwrap();
    assert_eq!(f.body["egress"]["allow"][0]["host"], a2.to_string());
    fetch_ok(&d, fid, &ok);
    assert_eq!(fetch(&d, fid, &blocked), None);

    // A restore can override it.
    let r = call(
        &d.key,
        "POST",
        &root,
        Some(json!({"name": "restored-2", "from_snapshot": snap, "egress": {"mode": "deny_all"}})),
    );
    assert_eq!(r.status, 201, "{}", r.raw);
    let r2 = r.body["id"].as_str().unwrap();
    assert_eq!(fetch(&d, r2, &ok), None);

    // Leap0: the policy given at create is enforced; restore overrides it; PUT changes it.
    let l0 = |m: &str, p: &str, b: Option<Value>| call(&d.key, m, &format!("{}{p}", d.url), b);
    let c = l0(
        "POST",
        "/v1/sandbox",
        Some(json!({"template_name": "sb-debian-12-python",
            "network_policy": {"mode": "custom", "allow_cidrs": [format!("{}/32", inet.ip(3))]}})),
    );
    assert_eq!(c.status, 201, "{}", c.raw);
    assert_eq!(c.body["network_policy_enforcement"]["enforced"], true);
    let lid = c.body["id"].as_str().unwrap();
    fetch_ok(&d, lid, &blocked);
    assert_eq!(fetch(&d, lid, &ok), None);
    let u = l0(
        "PUT",
        &format!("/v1/sandbox/{lid}/network-policy"),
        Some(json!({"mode": "deny-all"})),
    );
    assert_eq!(u.status, 200, "{}", u.raw);
    assert_eq!(u.body["network_policy"]["mode"], "deny-all");
    assert_eq!(fetch(&d, lid, &blocked), None);
    let s = l0(
        "POST",
        &format!("/v1/sandbox/{lid}/snapshot/create"),
        Some(json!({"name": "l0-eg"})),
    );
    assert!(s.status == 200 || s.status == 201, "{}", s.raw);
    let rr = l0(
        "POST",
        "/v1/snapshot/restore",
        Some(json!({"snapshot_name": "l0-eg", "network_policy": {"mode": "allow-all"}})),
    );
    assert_eq!(rr.status, 201, "{}", rr.raw);
    assert_eq!(rr.body["network_policy"]["mode"], "allow-all");
    let rrid = rr.body["id"].as_str().unwrap();
    fetch_ok(&d, rrid, &blocked);
    // The ceiling still holds under allow-all: the host is closed.
    assert!(!connects(&d, rrid, &format!("10.{}.0.1", d.octet), 7777));
}

/// Python in the sandbox: an HTTP GET of `url` with an optional `Host`, or a TLS ClientHello
/// naming `sni` to `host:443`. Exit 0 = got a response / the TLS peer was reached.
fn get_with_host(d: &Daemon, id: &str, url: &str, host: Option<&str>) -> Option<String> {
    let (exit, out, _) = d.exec(
        id,
        "python3",
        &[
            "-c",
            "import sys, urllib.request as u\nr = u.Request(sys.argv[1])\nif sys.argv[2]: r.add_header('Host', sys.argv[2])\nsys.stdout.write(u.urlopen(r, timeout=3).read().decode())",
            url,
            host.unwrap_or(""),
        ],
    );
    (exit["exit_code"] == 0).then_some(out)
}

fn tls_hello(d: &Daemon, id: &str, addr: &str, sni: &str) {
    let _ = d.exec(
        id,
        "python3",
        &[
            "-c",
            "import sys, socket, ssl\ns = socket.create_connection((sys.argv[1], 443), timeout=3)\ntry: ssl.create_default_context().wrap_socket(s, server_hostname=sys.argv[2])\nexcept Exception as e: print(e)",
            addr,
            sni,
        ],
    );
}

fn resolves(d: &Daemon, id: &str, name: &str) -> bool {
    let (exit, _, _) = d.exec(
        id,
        "python3",
        &[
            "-c",
            "import sys, socket; socket.gethostbyname(sys.argv[1])",
            name,
        ],
    );
    exit["exit_code"] == 0
}

#[test]
fn domain_rules_admit_only_their_names() {
    let mut d = Daemon::start_with(&["--egress-dns-upstream=198.18.{octet}.53"]);
    let inet = Internet::new(d.octet);
    let (a2, a3) = (inet.ip(2), inet.ip(3));
    dns_server(
        &inet,
        vec![
            ("allowed.test", a2),
            ("other.test", a2),
            ("a.wild.test", a3),
            ("wild.test", a3),
            ("host.test", inet.ip(1)),
        ],
    );
    inet.http(SocketAddr::new(a2.into(), 80));
    inet.http(SocketAddr::new(a3.into(), 80));
    let tls_seen = inet.http(SocketAddr::new(a2.into(), 443));

    let c = call(
        &d.key,
        "POST",
        &format!("{}/v1/sandbox", d.url),
        Some(json!({"template_name": "sb-debian-12-python",
            "network_policy": {"mode": "custom", "allow_domains": ["allowed.test", "*.wild.test"]}})),
    );
    assert_eq!(c.status, 201, "{}", c.raw);
    assert_eq!(
        c.body["network_policy_enforcement"]["enforced"], true,
        "{}",
        c.raw
    );
    let id = c.body["id"].as_str().unwrap();

    // The allowed name resolves and is reachable by name.
    let mut body = None;
    for _ in 0..3 {
        body = get_with_host(&d, id, "http://allowed.test/", None);
        if body.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(700));
    }
    assert_eq!(
        body.as_deref(),
        Some(format!("hello {a2}:80\n").as_str()),
        "{}",
        d.log()
    );
    // Other names do not resolve; on the same IP they are refused by the proxy; the bare IP too.
    assert!(!resolves(&d, id, "other.test"));
    assert_eq!(
        get_with_host(&d, id, &format!("http://{a2}/"), Some("other.test")),
        None
    );
    assert_eq!(get_with_host(&d, id, &format!("http://{a2}/"), None), None);
    assert_eq!(
        get_with_host(&d, id, &format!("http://{a2}/"), Some("allowed.test")).as_deref(),
        Some(format!("hello {a2}:80\n").as_str()),
        "the name resolved to this address for this sandbox"
    );
    // A port the rule does not cover stays closed.
    assert_eq!(
        get_with_host(&d, id, "http://allowed.test:8080/", None),
        None
    );
    // TLS: the SNI decides.
    let before = tls_seen.lock().unwrap().len();
    tls_hello(&d, id, &a2.to_string(), "other.test");
    assert_eq!(tls_seen.lock().unwrap().len(), before, "other SNI refused");
    tls_hello(&d, id, &a2.to_string(), "allowed.test");
    assert_eq!(
        tls_seen.lock().unwrap().len(),
        before + 1,
        "allowed SNI admitted"
    );
    assert_eq!(tls_seen.lock().unwrap()[before].as_bytes()[0], 0x16);

    // DNS over TCP goes to the same resolver, with the same rules.
    assert_eq!(
        resolve_tcp(&d, id, "allowed.test"),
        (0, vec![a2.to_string()]),
        "{}",
        d.log()
    );
    assert_eq!(resolve_tcp(&d, id, "other.test"), (5, vec![]), "REFUSED");

    // *.wild.test: subdomains only.
    assert!(resolves(&d, id, "a.wild.test"));
    assert!(get_with_host(&d, id, "http://a.wild.test/", None).is_some());
    assert!(!resolves(&d, id, "wild.test"));
    assert_eq!(
        get_with_host(&d, id, &format!("http://{a3}/"), Some("wild.test")),
        None
    );

    // A name this sandbox never resolved is refused even if it is allowed now: a second
    // sandbox that did not resolve allowed.test cannot dial its address by name.
    let c2 = call(
        &d.key,
        "POST",
        &format!("{}/v1/sandbox", d.url),
        Some(json!({"template_name": "sb-debian-12-python",
            "network_policy": {"mode": "custom", "allow_domains": ["allowed.test"]}})),
    );
    let id2 = c2.body["id"].as_str().unwrap();
    assert_eq!(
        get_with_host(&d, id2, &format!("http://{a2}/"), Some("allowed.test")),
        None
    );

    // NeevCloud domain rules are accepted now that the node runs the resolver and proxy.
    let sb = d.create(json!({"sandbox_template_id": "sb-debian-12-python",
        "egress": {"mode": "allow_list", "allow": [{"host": "allowed.test", "ports": [80]}]}}));
    let nid = sb["id"].as_str().unwrap();
    assert!(get_with_host(&d, nid, "http://allowed.test/", None).is_some());
    assert!(!resolves(&d, nid, "a.wild.test"));

    // A name that resolves to the host itself is still closed (the proxy dials from the host).
    let (port, hits) = host_service();
    let h = d.create(json!({"sandbox_template_id": "sb-debian-12-python",
        "egress": {"mode": "allow_list", "allow": [{"host": "host.test", "ports": [port]}]}}));
    let hid = h["id"].as_str().unwrap();
    assert!(resolves(&d, hid, "host.test"));
    assert_eq!(
        get_with_host(&d, hid, &format!("http://host.test:{port}/"), None),
        None
    );
    assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 0);

    // After a daemon crash and restart (new resolver and proxy ports) the rules hold again.
    d.kill9();
    d.spawn();
    let mut body = None;
    for _ in 0..3 {
        body = get_with_host(&d, nid, "http://allowed.test/", None);
        if body.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(700));
    }
    assert!(body.is_some(), "{}", d.log());
    assert!(!resolves(&d, nid, "other.test"));
}

/// An HTTPS server for `name` at `addr` in the namespace, with its own CA (returned as PEM);
/// records each request head it receives.
fn https_server(
    inet: &Internet,
    addr: SocketAddr,
    name: &str,
) -> (String, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "egress test CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec![name.to_string()])
        .unwrap()
        .signed_by(&key, &ca, &ca_key)
        .unwrap();
    let cfg = std::sync::Arc::new(
        rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(
                vec![leaf.der().clone()],
                rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
            )
            .unwrap(),
    );
    let l = bind_in_ns(&inet.ns, addr);
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let s2 = seen.clone();
    std::thread::spawn(move || {
        for c in l.incoming().map_while(Result::ok) {
            let _ = c.set_read_timeout(Some(Duration::from_secs(5)));
            let conn = rustls::ServerConnection::new(cfg.clone()).unwrap();
            let mut tls = rustls::StreamOwned::new(conn, c);
            let mut head = Vec::new();
            let mut buf = [0u8; 4096];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match tls.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            if head.is_empty() {
                continue;
            }
            s2.lock()
                .unwrap()
                .push(String::from_utf8_lossy(&head).into_owned());
            let body = "hello tls\n";
            let _ = tls.write_all(
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                )
                .as_bytes(),
            );
            tls.conn.send_close_notify();
            let _ = tls.flush();
        }
    });
    (ca.pem(), seen)
}

/// A daemon with the node resolver and a test "internet" serving HTTPS for `secure.test` at
/// .2 with its own CA, which the daemon's proxy trusts: returns the daemon, the internet, the
/// CA file (remove it when done) and the request heads the server saw.
fn tls_internet(
    tag: &str,
) -> (
    Daemon,
    Internet,
    std::path::PathBuf,
    std::sync::Arc<std::sync::Mutex<Vec<String>>>,
) {
    // The upstream CA file must exist before the daemon starts; the octet is not known yet,
    // so the server (and its CA) is made after, and the file rewritten in place.
    let ca_file = std::env::temp_dir().join(format!("egress-{tag}-ca-{}.pem", std::process::id()));
    std::fs::write(&ca_file, "").unwrap();
    let mut d = Daemon::start_with(&[
        "--egress-dns-upstream=198.18.{octet}.53",
        &format!("--egress-upstream-ca={}", ca_file.display()),
    ]);
    let inet = Internet::new(d.octet);
    let a2 = inet.ip(2);
    dns_server(&inet, vec![("secure.test", a2)]);
    let (ca_pem, seen) = https_server(&inet, SocketAddr::new(a2.into(), 443), "secure.test");
    std::fs::write(&ca_file, &ca_pem).unwrap();
    // Restart on the same data dir so the proxy trusts the test CA.
    d.kill9();
    d.spawn();
    (d, inet, ca_file, seen)
}

#[test]
fn transform_injects_a_secret_the_sandbox_never_holds() {
    const SECRET: &str = "tok-9f2c4e7a1b3d5f60-brokered";
    let (d, _inet, ca_file, seen) = tls_internet("test");

    let c = call(
        &d.key,
        "POST",
        &format!("{}/v1/sandbox", d.url),
        Some(json!({"template_name": "sb-debian-12-python",
            "network_policy": {"mode": "custom", "allow_domains": ["secure.test"],
                "transforms": [{"domain": "secure.test",
                    "inject_headers": {"Authorization": format!("Bearer {SECRET}")},
                    "strip_headers": ["X-Sandbox-Token"]}]}})),
    );
    assert_eq!(c.status, 201, "{}", c.raw);
    assert!(
        !c.raw.contains(SECRET),
        "the answer holds a reference, not the secret"
    );
    assert_eq!(
        c.body["network_policy_enforcement"]["enforced"], true,
        "{}",
        c.raw
    );
    let id = c.body["id"].as_str().unwrap();

    let script = "import sys, urllib.request as u\nr = u.Request('https://secure.test/')\nr.add_header('Authorization', 'Bearer sandbox-fake')\nr.add_header('X-Sandbox-Token', 'leak')\nsys.stdout.write(u.urlopen(r, timeout=5).read().decode())";
    let mut out = String::new();
    for _ in 0..3 {
        let (exit, o, e) = d.exec(id, "python3", &["-c", script]);
        if exit["exit_code"] == 0 {
            out = o;
            break;
        }
        eprintln!("https attempt: {e}");
        std::thread::sleep(Duration::from_millis(700));
    }
    assert_eq!(out, "hello tls\n", "{}", d.log());
    let head = seen.lock().unwrap().last().cloned().unwrap();
    assert!(
        head.contains(&format!("Authorization: Bearer {SECRET}\r\n")),
        "{head}"
    );
    assert!(!head.contains("sandbox-fake"), "{head}");
    assert!(
        !head.to_ascii_lowercase().contains("x-sandbox-token"),
        "{head}"
    );

    // The sandbox never holds it: not in its env, not in its files, not in its memory.
    let (_, env, _) = d.exec(id, "env", &[]);
    assert!(!env.contains(SECRET));
    // The pattern must not be the secret itself: the command line of this very grep lives in
    // the sandbox's memory (the agent's process table), which the snapshot grep below reads.
    let pattern = format!(
        "{}[{}]",
        &SECRET[..SECRET.len() - 1],
        &SECRET[SECRET.len() - 1..]
    );
    let (exit, files, _) = d.exec(
        id,
        "grep",
        &[
            "-rlE",
            &pattern,
            "/etc",
            "/root",
            "/tmp",
            "/usr/local",
            "/home",
            "/var",
        ],
    );
    assert_eq!(exit["exit_code"], 1, "{files}");
    let s = call(
        &d.key,
        "POST",
        &format!("{}/v1/sandbox/{id}/snapshot/create", d.url),
        Some(json!({"name": "with-secret"})),
    );
    assert!(s.status == 200 || s.status == 201, "{}", s.raw);
    let dd = d.data_dir.display().to_string();
    let g = Command::new("grep")
        .args([
            "-rlF",
            SECRET,
            &format!("{dd}/images"),
            &format!("{dd}/vol"),
            &format!("{dd}/store"),
            &format!("{dd}/meta.db"),
        ])
        .output()
        .unwrap();
    assert_eq!(
        g.status.code(),
        Some(1),
        "found in: {}",
        String::from_utf8_lossy(&g.stdout)
    );
    assert!(!d.log().contains(SECRET), "never logged");

    // A restore re-applies the transform (the sealed secret is referenced, not copied).
    let r = call(
        &d.key,
        "POST",
        &format!("{}/v1/snapshot/restore", d.url),
        Some(json!({"snapshot_name": "with-secret"})),
    );
    assert_eq!(r.status, 201, "{}", r.raw);
    let rid = r.body["id"].as_str().unwrap();
    let before = seen.lock().unwrap().len();
    let mut ok = false;
    for _ in 0..3 {
        let (exit, _, _) = d.exec(rid, "python3", &["-c", script]);
        if exit["exit_code"] == 0 {
            ok = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(700));
    }
    assert!(ok, "{}", d.log());
    let heads = seen.lock().unwrap();
    assert!(heads.len() > before);
    assert!(heads.last().unwrap().contains(&format!("Bearer {SECRET}")));
    let _ = std::fs::remove_file(&ca_file);
}

/// Bench (run with `--ignored --nocapture`): 100 small HTTPS requests from a sandbox, each on
/// a new connection, to the same test server: direct to an allowed IP, through the SNI proxy
/// (domain rule: DNS + admission + splice), and through a transform (TLS terminated and
/// re-opened, headers rewritten). Prints mean / p50 / p95 per request in ms.
#[test]
#[ignore]
fn bench_proxy_path_latency() {
    let (d, inet, ca_file, _seen) = tls_internet("bench");
    let a2 = inet.ip(2);
    let c = call(
        &d.key,
        "POST",
        &format!("{}/v1/sandbox", d.url),
        Some(json!({"template_name": "sb-debian-12-python",
            "network_policy": {"mode": "custom", "allow_cidrs": [format!("{a2}/32")]}})),
    );
    assert_eq!(c.status, 201, "{}", c.raw);
    let id = c.body["id"].as_str().unwrap().to_string();
    let script = "import ssl, sys, time, urllib.request as u\nctx = ssl.create_default_context() if sys.argv[3] == 'verify' else ssl._create_unverified_context()\nurl, n = sys.argv[1], int(sys.argv[2])\nfor _ in range(5): u.urlopen(url, context=ctx, timeout=5).read()\nts = []\nfor _ in range(n):\n    t = time.perf_counter(); u.urlopen(url, context=ctx, timeout=5).read(); ts.append((time.perf_counter() - t) * 1000)\nts.sort(); print(f'{sum(ts)/n:.2f} {ts[n//2]:.2f} {ts[int(n*0.95)]:.2f}')";
    let run = |label: &str, policy: Value, url: &str, verify: &str| {
        let u = call(
            &d.key,
            "PUT",
            &format!("{}/v1/sandbox/{id}/network-policy", d.url),
            Some(policy),
        );
        assert_eq!(u.status, 200, "{}", u.raw);
        let (exit, out, err) = d.exec(&id, "python3", &["-c", script, url, "100", verify]);
        assert_eq!(exit["exit_code"], 0, "{label}: {err}");
        eprintln!("BENCH {label}: mean/p50/p95 ms = {}", out.trim());
    };
    run(
        "direct allowed IP",
        json!({"mode": "custom", "allow_cidrs": [format!("{a2}/32")]}),
        &format!("https://{a2}/"),
        "noverify",
    );
    run(
        "domain rule (SNI proxy, splice)",
        json!({"mode": "custom", "allow_domains": ["secure.test"]}),
        "https://secure.test/",
        "noverify",
    );
    run(
        "transform (TLS terminated, header injected)",
        json!({"mode": "custom", "allow_domains": ["secure.test"],
            "transforms": [{"domain": "secure.test", "inject_headers": {"Authorization": "Bearer bench"}}]}),
        "https://secure.test/",
        "verify",
    );
    let _ = std::fs::remove_file(&ca_file);
}
