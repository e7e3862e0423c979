//! Domain rules, per node: the DNS resolver every sandbox's DNS is redirected to, and the
//! egress proxy its TCP connections to domain-rule ports are redirected to.
//!
//! The resolver (UDP and TCP, on one port) answers only names the sandbox's policy allows
//! (others get REFUSED), by asking the upstream resolver over the same transport (a client
//! retries over TCP when a UDP answer was truncated), and records which addresses each allowed name resolved to, for the
//! answer's TTL. The proxy reads the TLS SNI or HTTP `Host` of each connection, and admits it
//! only if the name is allowed on the port dialled and resolved (for this sandbox) to the
//! address dialled; then it connects there and splices the bytes.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tracing::{debug, info, warn};

use crate::dns;
use crate::policy::{always_denied, Net4, Policy};

/// Names resolved for one sandbox: name → (address, valid until).
type Resolved = HashMap<String, Vec<(Ipv4Addr, Instant)>>;

struct Entry {
    short: String,
    policy: Policy,
    subnet: Net4,
    resolved: Mutex<Resolved>,
    denied: AtomicU64,
    last_log: Mutex<Option<Instant>>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("dns_port", &self.dns_port)
            .field("proxy_port", &self.proxy_port)
            .field("upstream", &self.upstream)
            .finish()
    }
}

/// Looks up a sealed secret by the reference stored in a policy.
pub type SecretLookup = Arc<dyn Fn(&str) -> Option<secrecy::SecretString> + Send + Sync>;

/// What transforms need: the node CA, the upstream TLS client, and the secret store.
pub struct NodeTls {
    pub ca: Arc<crate::tls::Ca>,
    pub client: Arc<rustls::ClientConfig>,
    pub secrets: SecretLookup,
}

pub struct Node {
    pub dns_port: u16,
    pub proxy_port: u16,
    upstream: SocketAddr,
    ceiling: Vec<Net4>,
    sandboxes: RwLock<HashMap<Ipv4Addr, Arc<Entry>>>,
    tls: Option<NodeTls>,
}

/// How long a DNS-over-TCP connection may sit idle between two queries.
const DNS_TCP_IDLE: Duration = Duration::from_secs(10);

/// The resolver's UDP socket and TCP listener on one port (`port` 0: any port free for both).
async fn bind_dns(port: u16) -> std::io::Result<(UdpSocket, TcpListener)> {
    let mut last = None;
    for _ in 0..if port == 0 { 20 } else { 1 } {
        let udp = UdpSocket::bind(("0.0.0.0", port)).await?;
        match TcpListener::bind(("0.0.0.0", udp.local_addr()?.port())).await {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("no port for the resolver")))
}

/// Reads one length-prefixed DNS message; `None` at EOF, on error or after `idle`.
async fn read_framed(conn: &mut TcpStream, idle: Duration) -> Option<Vec<u8>> {
    let read = async {
        let len = conn.read_u16().await.ok()?;
        let mut msg = vec![0u8; usize::from(len)];
        conn.read_exact(&mut msg).await.ok()?;
        Some(msg)
    };
    tokio::time::timeout(idle, read).await.ok().flatten()
}

async fn write_framed(conn: &mut TcpStream, msg: &[u8]) -> std::io::Result<()> {
    let len =
        u16::try_from(msg.len()).map_err(|_| std::io::Error::other("DNS message too long"))?;
    let mut framed = Vec::with_capacity(msg.len() + 2);
    framed.extend_from_slice(&len.to_be_bytes());
    framed.extend_from_slice(msg);
    conn.write_all(&framed).await
}

/// Longest a resolved address stays admitted, whatever the TTL said; and the least.
const MAX_TTL: u64 = 3600;
const MIN_TTL: u64 = 30;

impl Node {
    /// Binds the resolver (UDP) and the proxy (TCP) on all addresses (`port` 0 = any free
    /// port) and starts serving. Only registered sandbox addresses are answered.
    pub async fn start(
        upstream: SocketAddr,
        ceiling: Vec<Net4>,
        dns_port: u16,
        proxy_port: u16,
        tls: Option<NodeTls>,
    ) -> std::io::Result<Arc<Node>> {
        let (udp, dns_tcp) = bind_dns(dns_port).await?;
        let tcp = TcpListener::bind(("0.0.0.0", proxy_port)).await?;
        let node = Arc::new(Node {
            dns_port: udp.local_addr()?.port(),
            proxy_port: tcp.local_addr()?.port(),
            upstream,
            ceiling,
            sandboxes: RwLock::new(HashMap::new()),
            tls,
        });
        info!(dns_port = node.dns_port, proxy_port = node.proxy_port, %upstream, "egress resolver and proxy listening");
        crate::DOMAINS.store(true, Ordering::Relaxed);
        crate::TRANSFORMS.store(node.tls.is_some(), Ordering::Relaxed);
        tokio::spawn(node.clone().serve_dns(Arc::new(udp)));
        tokio::spawn(node.clone().serve_dns_tcp(dns_tcp));
        tokio::spawn(node.clone().serve_proxy(tcp));
        Ok(node)
    }

    /// Starts (or replaces) what the resolver and proxy know of a sandbox. Names it resolved
    /// stay recorded across policy changes (the policy is checked again at each use).
    pub fn register(&self, sandbox_ip: Ipv4Addr, short: &str, policy: &Policy, subnet: Net4) {
        let mut map = self.sandboxes.write().unwrap_or_else(|p| p.into_inner());
        let resolved = map
            .get(&sandbox_ip)
            .filter(|e| e.short == short)
            .map(|e| e.resolved.lock().unwrap_or_else(|p| p.into_inner()).clone())
            .unwrap_or_default();
        let denied = map
            .get(&sandbox_ip)
            .filter(|e| e.short == short)
            .map_or(0, |e| e.denied.load(Ordering::Relaxed));
        map.insert(
            sandbox_ip,
            Arc::new(Entry {
                short: short.to_string(),
                policy: policy.clone(),
                subnet,
                resolved: Mutex::new(resolved),
                denied: AtomicU64::new(denied),
                last_log: Mutex::new(None),
            }),
        );
    }

    /// The node CA certificate (PEM) sandboxes trust, if the node runs transforms.
    pub fn ca_pem(&self) -> Option<&str> {
        self.tls.as_ref().map(|t| t.ca.pem.as_str())
    }

    pub fn unregister(&self, sandbox_ip: Ipv4Addr) {
        self.sandboxes
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&sandbox_ip);
    }

    /// Connections of sandbox `short` the proxy refused.
    pub fn denied(&self, short: &str) -> u64 {
        self.sandboxes
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .find(|e| e.short == short)
            .map_or(0, |e| e.denied.load(Ordering::Relaxed))
    }

    fn entry(&self, ip: IpAddr) -> Option<Arc<Entry>> {
        let IpAddr::V4(ip) = ip else { return None };
        self.sandboxes
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&ip)
            .cloned()
    }

    async fn serve_dns(self: Arc<Self>, sock: Arc<UdpSocket>) {
        let mut buf = vec![0u8; 4096];
        loop {
            let Ok((n, peer)) = sock.recv_from(&mut buf).await else {
                continue;
            };
            let Some(entry) = self.entry(peer.ip()) else {
                continue;
            };
            let query = buf[..n].to_vec();
            let (me, sock) = (self.clone(), sock.clone());
            tokio::spawn(async move {
                let reply = me.resolve(&entry, &query, false).await;
                let _ = sock.send_to(&reply, peer).await;
            });
        }
    }

    /// DNS over TCP (RFC 7766): length-prefixed messages, several per connection.
    async fn serve_dns_tcp(self: Arc<Self>, listener: TcpListener) {
        loop {
            let Ok((mut conn, peer)) = listener.accept().await else {
                continue;
            };
            let Some(entry) = self.entry(peer.ip()) else {
                continue;
            };
            let me = self.clone();
            tokio::spawn(async move {
                while let Some(query) = read_framed(&mut conn, DNS_TCP_IDLE).await {
                    let reply = me.resolve(&entry, &query, true).await;
                    if write_framed(&mut conn, &reply).await.is_err() {
                        break;
                    }
                }
            });
        }
    }

    /// One exchange with the upstream resolver, over TCP or UDP.
    async fn ask_upstream(&self, query: &[u8], tcp: bool) -> Option<Vec<u8>> {
        if tcp {
            let exchange = async {
                let mut up = TcpStream::connect(self.upstream).await.ok()?;
                write_framed(&mut up, query).await.ok()?;
                read_framed(&mut up, Duration::from_secs(3)).await
            };
            return tokio::time::timeout(Duration::from_secs(5), exchange)
                .await
                .ok()
                .flatten();
        }
        let up = UdpSocket::bind("0.0.0.0:0").await.ok()?;
        up.connect(self.upstream).await.ok()?;
        up.send(query).await.ok()?;
        let mut buf = vec![0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(3), up.recv(&mut buf))
            .await
            .ok()?
            .ok()?;
        buf.truncate(n);
        Some(buf)
    }

    async fn resolve(&self, entry: &Entry, query: &[u8], tcp: bool) -> Vec<u8> {
        let Some((name, _qtype, _)) = dns::question(query) else {
            return dns::refuse(query, 1);
        };
        let open = entry.policy.cidrs.iter().any(|r| r.net.len == 0);
        let allowed = entry
            .policy
            .domains
            .iter()
            .any(|d| d.pattern.matches(&name));
        if !(allowed || open) {
            debug!(sandbox = %entry.short, %name, "dns refused");
            return dns::refuse(query, 5);
        }
        let answer = self.ask_upstream(query, tcp).await;
        let Some(answer) = answer else {
            return dns::refuse(query, 2);
        };
        if allowed {
            let now = Instant::now();
            let mut r = entry.resolved.lock().unwrap_or_else(|p| p.into_inner());
            let list = r.entry(name).or_default();
            list.retain(|(_, until)| *until > now);
            for (ip, ttl) in dns::a_records(&answer) {
                let until = now + Duration::from_secs(u64::from(ttl).clamp(MIN_TTL, MAX_TTL));
                list.retain(|(i, _)| *i != ip);
                list.push((ip, until));
            }
        }
        answer
    }

    async fn serve_proxy(self: Arc<Self>, listener: TcpListener) {
        loop {
            let Ok((conn, peer)) = listener.accept().await else {
                continue;
            };
            let Some(entry) = self.entry(peer.ip()) else {
                continue;
            };
            let me = self.clone();
            tokio::spawn(async move {
                if let Err(why) = me.proxy(&entry, conn).await {
                    entry.denied.fetch_add(1, Ordering::Relaxed);
                    let mut last = entry.last_log.lock().unwrap_or_else(|p| p.into_inner());
                    if !last.is_some_and(|t| t.elapsed() < Duration::from_secs(10)) {
                        *last = Some(Instant::now());
                        warn!(sandbox = %entry.short, reason = %why, denied_total = entry.denied.load(Ordering::Relaxed), "egress connection refused (logged at most every 10 s per sandbox)");
                    }
                }
            });
        }
    }

    /// Admits or refuses one connection; Err(reason) = refused.
    async fn proxy(&self, entry: &Entry, mut conn: TcpStream) -> Result<(), String> {
        let dst = original_dst(&conn).ok_or("no original destination")?;
        let ip = *dst.ip();
        if always_denied(ip)
            || entry.subnet.contains(ip)
            || !self.ceiling.iter().any(|c| c.contains(ip))
            || host_or_sandbox(ip)
        {
            return Err(format!("{ip} is closed to sandboxes"));
        }
        let ip_allowed =
            entry
                .policy
                .allows_ip(ip, crate::policy::Proto::Tcp, dst.port(), entry.subnet);
        let mut head = Vec::with_capacity(2048);
        let name = tokio::time::timeout(Duration::from_secs(10), async {
            let mut buf = [0u8; 4096];
            loop {
                match sniff(&head) {
                    Sniff::Name(n) => return Ok(Some(n)),
                    Sniff::No if ip_allowed => return Ok(None),
                    Sniff::No => return Err("no TLS SNI or HTTP Host".to_string()),
                    Sniff::More => {}
                }
                if head.len() > 16 * 1024 {
                    return Err("no name in the first 16 KiB".to_string());
                }
                let n = conn.read(&mut buf).await.map_err(|e| e.to_string())?;
                if n == 0 {
                    return Err("closed before naming a host".to_string());
                }
                head.extend_from_slice(&buf[..n]);
            }
        })
        .await
        .map_err(|_| "no name within 10 s".to_string())??;
        if !ip_allowed {
            let name = name.as_deref().unwrap_or_default();
            if !entry.policy.allows_name(name, dst.port()) {
                return Err(format!("{name}:{} is not allowed", dst.port()));
            }
            let resolved = {
                let r = entry.resolved.lock().unwrap_or_else(|p| p.into_inner());
                let now = Instant::now();
                r.get(name)
                    .is_some_and(|l| l.iter().any(|(i, until)| *i == ip && *until > now))
            };
            if !resolved {
                return Err(format!("{name} did not resolve to {ip}"));
            }
        }
        let transform = name
            .as_deref()
            .and_then(|n| entry.policy.transform_for(n))
            .cloned();
        let mut up = tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(dst))
            .await
            .map_err(|_| format!("connect {dst}: timed out"))?
            .map_err(|e| format!("connect {dst}: {e}"))?;
        let _ = up.set_nodelay(true);
        let _ = conn.set_nodelay(true);
        match (transform, name) {
            (Some(t), Some(name)) => self.intercept(conn, up, head, &name, &t).await,
            _ => {
                up.write_all(&head).await.map_err(|e| e.to_string())?;
                let _ = tokio::io::copy_bidirectional(&mut conn, &mut up).await;
                Ok(())
            }
        }
    }

    /// Applies a transform: TLS is terminated with a leaf of the node CA and re-opened,
    /// verified, upstream; the request head is rewritten (one request per connection).
    async fn intercept(
        &self,
        conn: TcpStream,
        up: TcpStream,
        head: Vec<u8>,
        name: &str,
        t: &crate::policy::Transform,
    ) -> Result<(), String> {
        let tls = self
            .tls
            .as_ref()
            .ok_or("transforms are not available on this node")?;
        let mut inject = Vec::new();
        for (k, v) in &t.inject {
            let secret = match v.strip_prefix("sandboxd-secret:") {
                Some(r) => (tls.secrets)(r).ok_or("a sealed secret is missing")?,
                None => secrecy::SecretString::from(v.clone()),
            };
            inject.push((k.clone(), secret));
        }
        if head.first() == Some(&0x16) {
            let cfg = tls.ca.server_config(name)?;
            let client = tokio_rustls::TlsAcceptor::from(cfg)
                .accept(Prefixed {
                    head,
                    pos: 0,
                    inner: conn,
                })
                .await
                .map_err(|e| format!("TLS from the sandbox: {e}"))?;
            let server_name = rustls::pki_types::ServerName::try_from(name.to_string())
                .map_err(|e| e.to_string())?;
            let upstream = tokio_rustls::TlsConnector::from(tls.client.clone())
                .connect(server_name, up)
                .await
                .map_err(|e| format!("TLS to {name}: {e}"))?;
            rewrite_and_splice(client, upstream, Vec::new(), &inject, &t.strip).await
        } else {
            rewrite_and_splice(conn, up, head, &inject, &t.strip).await
        }
    }
}

/// Reads the request head from `client` (after `already`), rewrites it and splices the rest.
async fn rewrite_and_splice<C, U>(
    mut client: C,
    mut up: U,
    mut buf: Vec<u8>,
    inject: &[(String, secrecy::SecretString)],
    strip: &[String],
) -> Result<(), String>
where
    C: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    U: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut chunk = [0u8; 4096];
    let end = loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p;
        }
        if buf.len() > 64 * 1024 {
            return Err("request head over 64 KiB".into());
        }
        let n = client.read(&mut chunk).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("closed before a request".into());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head =
        crate::tls::rewrite_head(&buf[..end], inject, strip).ok_or("not an HTTP/1.x request")?;
    up.write_all(&head).await.map_err(|e| e.to_string())?;
    up.write_all(&buf[end + 4..])
        .await
        .map_err(|e| e.to_string())?;
    let _ = tokio::io::copy_bidirectional(&mut client, &mut up).await;
    Ok(())
}

/// A stream that first yields bytes already read from it.
struct Prefixed {
    head: Vec<u8>,
    pos: usize,
    inner: TcpStream,
}

impl tokio::io::AsyncRead for Prefixed {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if self.pos < self.head.len() {
            let n = (self.head.len() - self.pos).min(buf.remaining());
            let start = self.pos;
            buf.put_slice(&self.head[start..start + n]);
            self.pos += n;
            return std::task::Poll::Ready(Ok(()));
        }
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Prefixed {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

enum Sniff {
    Name(String),
    No,
    More,
}

/// The host a connection names: the SNI of a TLS ClientHello or the `Host` of an HTTP/1.x
/// request.
fn sniff(head: &[u8]) -> Sniff {
    if head.is_empty() {
        return Sniff::More;
    }
    if head[0] == 0x16 {
        return sni(head);
    }
    let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") else {
        return if head.len() > 8192 {
            Sniff::No
        } else {
            Sniff::More
        };
    };
    let text = String::from_utf8_lossy(&head[..end]);
    for line in text.split("\r\n").skip(1) {
        if let Some((k, v)) = line.split_once(':') {
            if k.trim().eq_ignore_ascii_case("host") {
                let v = v.trim();
                let host = match v.rsplit_once(':') {
                    Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) => h,
                    _ => v,
                };
                return Sniff::Name(host.to_ascii_lowercase());
            }
        }
    }
    Sniff::No
}

fn sni(h: &[u8]) -> Sniff {
    if h.len() < 5 {
        return Sniff::More;
    }
    let rec_len = u16::from_be_bytes([h[3], h[4]]) as usize;
    if h.len() < 5 + rec_len {
        return Sniff::More;
    }
    let b = &h[5..5 + rec_len];
    let parse = || -> Option<String> {
        if *b.first()? != 1 {
            return None;
        }
        let mut p = 4 + 2 + 32;
        p += 1 + *b.get(p)? as usize;
        p += 2 + u16::from_be_bytes([*b.get(p)?, *b.get(p + 1)?]) as usize;
        p += 1 + *b.get(p)? as usize;
        let ext_end = p + 2 + u16::from_be_bytes([*b.get(p)?, *b.get(p + 1)?]) as usize;
        p += 2;
        while p + 4 <= ext_end.min(b.len()) {
            let t = u16::from_be_bytes([b[p], b[p + 1]]);
            let l = u16::from_be_bytes([b[p + 2], b[p + 3]]) as usize;
            if t == 0 {
                let d = b.get(p + 4..p + 4 + l)?;
                let nlen = u16::from_be_bytes([*d.get(3)?, *d.get(4)?]) as usize;
                let name = d.get(5..5 + nlen)?;
                return Some(String::from_utf8_lossy(name).to_ascii_lowercase());
            }
            p += 4 + l;
        }
        None
    };
    match parse() {
        Some(n) => Sniff::Name(n),
        None => Sniff::No,
    }
}

/// Whether `ip` is one of this host's own addresses or inside the subnet of a sandbox veth
/// (any daemon's): the proxy dials from the host, where the forward chain does not apply, so
/// it must refuse these itself.
fn host_or_sandbox(ip: Ipv4Addr) -> bool {
    let mut found = false;
    let mut ifap: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `ifap` with a list we only read and then free with
    // freeifaddrs; every pointer is checked for null before it is dereferenced.
    unsafe {
        if libc::getifaddrs(&mut ifap) != 0 {
            return true; // fail closed
        }
        let mut cur = ifap;
        while !cur.is_null() {
            let ifa = &*cur;
            cur = ifa.ifa_next;
            if ifa.ifa_addr.is_null() || i32::from((*ifa.ifa_addr).sa_family) != libc::AF_INET {
                continue;
            }
            let addr = &*(ifa.ifa_addr as *const libc::sockaddr_in);
            let a = u32::from_be(addr.sin_addr.s_addr);
            if a == u32::from(ip) {
                found = true;
                break;
            }
            let name = std::ffi::CStr::from_ptr(ifa.ifa_name).to_bytes();
            if name.starts_with(b"s-") && !ifa.ifa_netmask.is_null() {
                let m = &*(ifa.ifa_netmask as *const libc::sockaddr_in);
                let mask = u32::from_be(m.sin_addr.s_addr);
                if a & mask == u32::from(ip) & mask {
                    found = true;
                    break;
                }
            }
        }
        libc::freeifaddrs(ifap);
    }
    found
}

/// Where the sandbox dialled, before the redirect (`SO_ORIGINAL_DST`).
fn original_dst(conn: &TcpStream) -> Option<SocketAddrV4> {
    use std::os::fd::AsRawFd;
    // SAFETY: a zeroed sockaddr_in is a valid value; getsockopt writes at most `len` bytes
    // into it on the socket fd `conn` owns for the duration of the call.
    unsafe {
        let mut addr: libc::sockaddr_in = std::mem::zeroed();
        let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        let rc = libc::getsockopt(
            conn.as_raw_fd(),
            libc::SOL_IP,
            80, // SO_ORIGINAL_DST
            (&mut addr as *mut libc::sockaddr_in).cast(),
            &mut len,
        );
        if rc != 0 {
            return None;
        }
        Some(SocketAddrV4::new(
            Ipv4Addr::from(u32::from_be(addr.sin_addr.s_addr)),
            u16::from_be(addr.sin_port),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_addresses_are_closed() {
        assert!(host_or_sandbox(Ipv4Addr::LOCALHOST));
        assert!(!host_or_sandbox(Ipv4Addr::new(198, 51, 100, 77)));
    }

    #[test]
    fn http_host() {
        let r = b"GET / HTTP/1.1\r\nhost: Example.com:8080\r\nx: y\r\n\r\n";
        assert!(matches!(sniff(r), Sniff::Name(n) if n == "example.com"));
        assert!(matches!(sniff(b"GET / HTTP/1.1\r\nHo"), Sniff::More));
        assert!(matches!(sniff(b"GET / HTTP/1.0\r\n\r\n"), Sniff::No));
    }

    #[test]
    fn tls_sni() {
        // A minimal ClientHello with one server_name extension.
        let name = b"api.example.com";
        let mut sni_ext = vec![0, 0];
        let list_len = 3 + name.len();
        sni_ext.extend_from_slice(&((list_len + 2) as u16).to_be_bytes());
        sni_ext.extend_from_slice(&(list_len as u16).to_be_bytes());
        sni_ext.push(0);
        sni_ext.extend_from_slice(&(name.len() as u16).to_be_bytes());
        sni_ext.extend_from_slice(name);
        let mut body = vec![3, 3];
        body.extend_from_slice(&[0; 32]);
        body.push(0); // session id
        body.extend_from_slice(&[0, 2, 0x13, 0x01]); // ciphers
        body.extend_from_slice(&[1, 0]); // compression
        body.extend_from_slice(&(sni_ext.len() as u16).to_be_bytes());
        body.extend_from_slice(&sni_ext);
        let mut hs = vec![1, 0];
        hs.extend_from_slice(&(body.len() as u16).to_be_bytes());
        hs.extend_from_slice(&body);
        let mut rec = vec![0x16, 3, 1];
        rec.extend_from_slice(&(hs.len() as u16).to_be_bytes());
        rec.extend_from_slice(&hs);
        assert!(matches!(sniff(&rec), Sniff::Name(n) if n == "api.example.com"));
        assert!(matches!(sniff(&rec[..20]), Sniff::More));
    }
}
