//! The one policy model NeevCloud `egress` and Leap0 `network_policy` translate into, and the
//! pure matching logic the enforcement follows.

use std::net::{IpAddr, Ipv4Addr};

use serde_json::Value;

use crate::PolicyError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    Tcp,
    Udp,
    /// Any protocol (with ports: TCP and UDP).
    Any,
}

/// An IPv4 network. IPv6 destinations are never reachable from a sandbox (its veth carries
/// IPv4 only), so IPv6 rules are kept out of the enforced set and reported as such.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Net4 {
    pub addr: Ipv4Addr,
    pub len: u8,
}

impl Net4 {
    pub fn new(addr: Ipv4Addr, len: u8) -> Net4 {
        let len = len.min(32);
        let mask = mask(len);
        Net4 {
            addr: Ipv4Addr::from(u32::from(addr) & mask),
            len,
        }
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & mask(self.len) == u32::from(self.addr)
    }
}

impl std::fmt::Display for Net4 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

fn mask(len: u8) -> u32 {
    if len == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(len))
    }
}

/// Allows traffic to `net`, for `proto`, on `ports` (empty = every port).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CidrRule {
    pub net: Net4,
    pub proto: Proto,
    pub ports: Vec<u16>,
}

impl CidrRule {
    pub fn matches(&self, ip: Ipv4Addr, proto: Proto, port: u16) -> bool {
        self.net.contains(ip)
            && (self.proto == Proto::Any || self.proto == proto)
            && (self.ports.is_empty() || self.ports.contains(&port))
    }
}

/// `example.com` (that name only) or `*.example.com` (its subdomains, not the name itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DomainPattern {
    Exact(String),
    Subdomains(String),
}

impl DomainPattern {
    pub fn parse(s: &str) -> Result<DomainPattern, PolicyError> {
        let s = s.trim_end_matches('.').to_ascii_lowercase();
        let (wild, base) = match s.strip_prefix("*.") {
            Some(b) => (true, b.to_string()),
            None => (false, s.clone()),
        };
        if !valid_domain(&base) {
            return Err(PolicyError(format!("{s} is not a domain name")));
        }
        Ok(if wild {
            DomainPattern::Subdomains(base)
        } else {
            DomainPattern::Exact(base)
        })
    }

    pub fn matches(&self, name: &str) -> bool {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        match self {
            DomainPattern::Exact(d) => name == *d,
            DomainPattern::Subdomains(d) => {
                name.len() > d.len() + 1
                    && name.ends_with(d.as_str())
                    && name.as_bytes()[name.len() - d.len() - 1] == b'.'
            }
        }
    }
}

impl std::fmt::Display for DomainPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DomainPattern::Exact(d) => f.write_str(d),
            DomainPattern::Subdomains(d) => write!(f, "*.{d}"),
        }
    }
}

pub fn valid_domain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.contains('.')
        && s.parse::<IpAddr>().is_err()
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainRule {
    pub pattern: DomainPattern,
    /// Empty = 80 and 443 (the ports the egress proxy serves).
    pub ports: Vec<u16>,
}

/// Header rewriting for requests to `domain` (credential brokering). `inject` values are
/// secrets or references to sealed secrets (`sandboxd-secret:<id>`); Debug never shows them.
#[derive(Clone, PartialEq, Eq)]
pub struct Transform {
    pub domain: DomainPattern,
    pub inject: Vec<(String, String)>,
    pub strip: Vec<String>,
}

impl std::fmt::Debug for Transform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.inject.iter().map(|(k, _)| k.as_str()).collect();
        f.debug_struct("Transform")
            .field("domain", &self.domain)
            .field("inject", &names)
            .field("strip", &self.strip)
            .finish()
    }
}

/// What a sandbox may reach. Empty = deny-all.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    pub cidrs: Vec<CidrRule>,
    pub domains: Vec<DomainRule>,
    pub transforms: Vec<Transform>,
    /// Rules given that this node cannot enforce (IPv6 CIDRs), for the client's information.
    pub unenforced: Vec<String>,
}

/// Destinations no policy opens: loopback, link-local (cloud metadata), "this network",
/// multicast and broadcast. Other sandboxes and the host itself are closed by the firewall's
/// base chains, whatever the destination address.
pub const ALWAYS_DENIED: &[&str] = &["0.0.0.0/8", "127.0.0.0/8", "169.254.0.0/16", "224.0.0.0/3"];

/// Special-purpose IPv4 ranges (RFC 6890 and successors) that are not the public internet:
/// private networks, shared address space (CGNAT), benchmarking, documentation, protocol
/// assignments, reserved; plus [`ALWAYS_DENIED`].
pub const NOT_PUBLIC: &[&str] = &[
    "10.0.0.0/8",
    "100.64.0.0/10",
    "172.16.0.0/12",
    "192.0.0.0/24",
    "192.0.2.0/24",
    "192.88.99.0/24",
    "192.168.0.0/16",
    "198.18.0.0/15",
    "198.51.100.0/24",
    "203.0.113.0/24",
    "240.0.0.0/4",
    "255.255.255.255/32",
];

fn parse_static(n: &str) -> Net4 {
    let (a, l) = n.split_once('/').expect("static cidr");
    Net4::new(
        a.parse().expect("static cidr"),
        l.parse().expect("static cidr"),
    )
}

/// The public IPv4 internet as CIDRs: 0.0.0.0/0 without [`NOT_PUBLIC`] and
/// [`ALWAYS_DENIED`] (the default egress ceiling: a sandbox reaches the internet, never the
/// networks around its host).
pub fn public_internet() -> Vec<Net4> {
    let holes: Vec<Net4> = NOT_PUBLIC
        .iter()
        .chain(ALWAYS_DENIED)
        .map(|n| parse_static(n))
        .collect();
    let overlaps = |a: Net4, b: Net4| {
        let l = a.len.min(b.len);
        u32::from(a.addr) & mask(l) == u32::from(b.addr) & mask(l)
    };
    let mut out = Vec::new();
    let mut todo = vec![Net4::new(Ipv4Addr::UNSPECIFIED, 0)];
    while let Some(n) = todo.pop() {
        if !holes.iter().any(|h| overlaps(n, *h)) {
            out.push(n);
        } else if !holes.iter().any(|h| h.len <= n.len && h.contains(n.addr)) {
            // Partly a hole: split in halves.
            let half = 1u32 << (31 - u32::from(n.len));
            todo.push(Net4::new(n.addr, n.len + 1));
            todo.push(Net4::new(
                Ipv4Addr::from(u32::from(n.addr) | half),
                n.len + 1,
            ));
        }
    }
    out.sort_by_key(|n| u32::from(n.addr));
    out
}

pub fn always_denied(ip: Ipv4Addr) -> bool {
    ALWAYS_DENIED.iter().any(|n| {
        let (a, l) = n.split_once('/').expect("static cidr");
        Net4::new(
            a.parse().expect("static cidr"),
            l.parse().expect("static cidr"),
        )
        .contains(ip)
    })
}

impl Policy {
    pub fn deny_all() -> Policy {
        Policy::default()
    }

    pub fn allow_all() -> Policy {
        Policy {
            cidrs: vec![CidrRule {
                net: Net4::new(Ipv4Addr::UNSPECIFIED, 0),
                proto: Proto::Any,
                ports: vec![],
            }],
            ..Policy::default()
        }
    }

    pub fn is_deny_all(&self) -> bool {
        self.cidrs.is_empty() && self.domains.is_empty()
    }

    /// The transform for `name`, if any.
    pub fn transform_for(&self, name: &str) -> Option<&Transform> {
        self.transforms.iter().find(|t| t.domain.matches(name))
    }

    /// Whether a packet to `ip` (`proto`, `port`) passes the IP rules. `own_subnet` is the
    /// node's sandbox subnet, closed like the always-denied ranges.
    pub fn allows_ip(&self, ip: Ipv4Addr, proto: Proto, port: u16, own_subnet: Net4) -> bool {
        !always_denied(ip)
            && !own_subnet.contains(ip)
            && self.cidrs.iter().any(|r| r.matches(ip, proto, port))
    }

    /// Whether a connection naming `name` on `port` passes the domain rules.
    pub fn allows_name(&self, name: &str, port: u16) -> bool {
        self.domains.iter().any(|d| {
            d.pattern.matches(name)
                && if d.ports.is_empty() {
                    port == 80 || port == 443
                } else {
                    d.ports.contains(&port)
                }
        })
    }

    /// The policy a sandbox record holds: the Leap0 `network_policy` if set, else the
    /// NeevCloud `egress` (absent = deny-all, NeevCloud's default).
    pub fn of_record(
        egress: Option<&Value>,
        network_policy: Option<&Value>,
    ) -> Result<Policy, PolicyError> {
        match network_policy {
            Some(v) if !v.is_null() => Policy::from_leap0(v),
            _ => Policy::from_neev(egress),
        }
    }

    /// NeevCloud `egress`: `{mode: deny_all|allow_list, allow_internet, allow: [{host, ports,
    /// protocol}]}`.
    pub fn from_neev(v: Option<&Value>) -> Result<Policy, PolicyError> {
        let Some(v) = v.filter(|v| !v.is_null()) else {
            return Ok(Policy::deny_all());
        };
        if v.get("mode").and_then(Value::as_str) != Some("allow_list") {
            return Ok(Policy::deny_all());
        }
        let mut p = Policy::default();
        if v.get("allow_internet").and_then(Value::as_bool) == Some(true) {
            p.cidrs.extend(Policy::allow_all().cidrs);
        }
        for r in v
            .get("allow")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let host = r
                .get("host")
                .and_then(Value::as_str)
                .ok_or_else(|| PolicyError("allow rule without host".into()))?;
            let ports = ports(r.get("ports"))?;
            let proto = match r.get("protocol").and_then(Value::as_str) {
                Some("TCP") => Proto::Tcp,
                Some("UDP") => Proto::Udp,
                None => Proto::Any,
                Some(o) => return Err(PolicyError(format!("unknown protocol {o}"))),
            };
            p.add_host(host, proto, ports)?;
        }
        Ok(p)
    }

    /// Leap0 `network_policy`: `{mode: allow-all|deny-all|custom, allow_domains, allow_cidrs,
    /// transforms}`.
    pub fn from_leap0(v: &Value) -> Result<Policy, PolicyError> {
        match v.get("mode").and_then(Value::as_str) {
            Some("allow-all") | None => {
                let mut p = Policy::allow_all();
                p.transforms = transforms(v)?;
                Ok(p)
            }
            Some("deny-all") => Ok(Policy::deny_all()),
            Some("custom") => {
                let mut p = Policy::default();
                for c in strings(v.get("allow_cidrs")) {
                    p.add_host(c, Proto::Any, vec![])?;
                }
                for d in strings(v.get("allow_domains")) {
                    p.domains.push(DomainRule {
                        pattern: DomainPattern::parse(d)?,
                        ports: vec![],
                    });
                }
                p.transforms = transforms(v)?;
                Ok(p)
            }
            Some(o) => Err(PolicyError(format!("unknown mode {o}"))),
        }
    }

    fn add_host(&mut self, host: &str, proto: Proto, ports: Vec<u16>) -> Result<(), PolicyError> {
        let (a, l) = match host.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (host, None),
        };
        match a.parse::<IpAddr>() {
            Ok(IpAddr::V4(ip)) => {
                let len = match l {
                    Some(l) => l
                        .parse::<u8>()
                        .ok()
                        .filter(|n| *n <= 32)
                        .ok_or_else(|| PolicyError(format!("{host}: bad prefix length")))?,
                    None => 32,
                };
                self.cidrs.push(CidrRule {
                    net: Net4::new(ip, len),
                    proto,
                    ports,
                });
            }
            Ok(IpAddr::V6(_)) => self.unenforced.push(host.to_string()),
            Err(_) if l.is_none() => self.domains.push(DomainRule {
                pattern: DomainPattern::parse(host)?,
                ports,
            }),
            Err(_) => return Err(PolicyError(format!("{host} is not a CIDR"))),
        }
        Ok(())
    }
}

fn ports(v: Option<&Value>) -> Result<Vec<u16>, PolicyError> {
    let mut out = Vec::new();
    for p in v.and_then(Value::as_array).into_iter().flatten() {
        let n = p
            .as_u64()
            .and_then(|n| u16::try_from(n).ok())
            .filter(|n| *n > 0)
            .ok_or_else(|| PolicyError(format!("bad port {p}")))?;
        if !out.contains(&n) {
            out.push(n);
        }
    }
    Ok(out)
}

fn transforms(v: &Value) -> Result<Vec<Transform>, PolicyError> {
    let mut out = Vec::new();
    for t in v
        .get("transforms")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let domain = t
            .get("domain")
            .and_then(Value::as_str)
            .ok_or_else(|| PolicyError("transform without domain".into()))?;
        let inject = t
            .get("inject_headers")
            .and_then(Value::as_object)
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_string())))
                    .collect()
            })
            .unwrap_or_default();
        out.push(Transform {
            domain: DomainPattern::parse(domain)?,
            inject,
            strip: strings(t.get("strip_headers"))
                .map(str::to_string)
                .collect(),
        });
    }
    Ok(out)
}

fn strings(v: Option<&Value>) -> impl Iterator<Item = &str> {
    v.and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_public_internet_has_no_private_or_special_address() {
        let p = public_internet();
        let inside = |ip: &str| p.iter().any(|n| n.contains(ip.parse().unwrap()));
        for ip in [
            "8.8.8.8",
            "1.1.1.1",
            "9.255.255.255",
            "11.0.0.0",
            "172.15.255.255",
            "172.32.0.0",
            "192.167.255.255",
            "192.169.0.0",
            "198.17.255.255",
            "198.20.0.0",
            "223.255.255.255",
            "100.63.255.255",
            "100.128.0.0",
        ] {
            assert!(inside(ip), "{ip} is public");
        }
        for ip in [
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "100.64.0.1",
            "100.127.255.255",
            "198.18.0.1",
            "198.19.255.255",
            "169.254.169.254",
            "127.0.0.1",
            "0.1.2.3",
            "224.0.0.1",
            "240.0.0.1",
            "255.255.255.255",
            "192.0.2.7",
            "203.0.113.9",
        ] {
            assert!(!inside(ip), "{ip} is not public");
        }
        // Disjoint, and few enough for an nft interval set.
        for (i, a) in p.iter().enumerate() {
            for b in &p[i + 1..] {
                assert!(!a.contains(b.addr) && !b.contains(a.addr), "{a} {b}");
            }
        }
        assert!(p.len() < 200, "{} CIDRs", p.len());
    }
    use serde_json::json;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    fn subnet() -> Net4 {
        Net4::new(ip("10.120.0.0"), 16)
    }

    #[test]
    fn deny_all_allows_nothing() {
        let p = Policy::from_neev(None).unwrap();
        assert!(p.is_deny_all());
        assert!(!p.allows_ip(ip("198.18.0.1"), Proto::Tcp, 80, subnet()));
        let p = Policy::from_neev(Some(&json!({"mode": "deny_all"}))).unwrap();
        assert!(p.is_deny_all());
        let p = Policy::from_leap0(&json!({"mode": "deny-all"})).unwrap();
        assert!(p.is_deny_all());
        assert!(!p.allows_name("example.com", 443));
    }

    #[test]
    fn ip_rules_admit_exactly_their_ip_ports_and_protocol() {
        let p = Policy::from_neev(Some(&json!({"mode": "allow_list", "allow": [
            {"host": "198.18.0.2", "ports": [8080], "protocol": "TCP"},
            {"host": "198.18.1.0/24", "protocol": "UDP"},
        ]})))
        .unwrap();
        let s = subnet();
        assert!(p.allows_ip(ip("198.18.0.2"), Proto::Tcp, 8080, s));
        assert!(!p.allows_ip(ip("198.18.0.2"), Proto::Tcp, 8081, s));
        assert!(!p.allows_ip(ip("198.18.0.2"), Proto::Udp, 8080, s));
        assert!(!p.allows_ip(ip("198.18.0.3"), Proto::Tcp, 8080, s));
        assert!(p.allows_ip(ip("198.18.1.77"), Proto::Udp, 53, s));
        assert!(!p.allows_ip(ip("198.18.1.77"), Proto::Tcp, 53, s));
    }

    #[test]
    fn allow_internet_never_opens_the_closed_ranges() {
        let p = Policy::from_neev(Some(&json!({"mode": "allow_list", "allow_internet": true})))
            .unwrap();
        let s = subnet();
        assert!(p.allows_ip(ip("198.18.0.2"), Proto::Tcp, 1, s));
        for closed in [
            "127.0.0.1",
            "169.254.169.254",
            "10.120.3.6",
            "0.0.0.0",
            "239.1.1.1",
        ] {
            assert!(!p.allows_ip(ip(closed), Proto::Tcp, 80, s), "{closed}");
        }
        // Another node's subnet is not this node's concern at the IP level.
        assert!(p.allows_ip(ip("10.121.0.2"), Proto::Tcp, 80, s));
        assert_eq!(
            Policy::from_leap0(&json!({"mode": "allow-all"})).unwrap(),
            { Policy::allow_all() }
        );
    }

    #[test]
    fn domains_exact_and_wildcard() {
        let p = Policy::from_leap0(&json!({"mode": "custom",
            "allow_domains": ["example.com", "*.example.org"], "allow_cidrs": ["2001:db8::/32"]}))
        .unwrap();
        assert!(p.allows_name("example.com", 443));
        assert!(p.allows_name("EXAMPLE.com.", 80));
        assert!(!p.allows_name("www.example.com", 443));
        assert!(!p.allows_name("example.com", 22));
        assert!(p.allows_name("a.example.org", 443));
        assert!(p.allows_name("a.b.example.org", 443));
        assert!(!p.allows_name("example.org", 443));
        assert!(!p.allows_name("badexample.org", 443));
        assert_eq!(p.unenforced, vec!["2001:db8::/32".to_string()]);
        let n = Policy::from_neev(Some(&json!({"mode": "allow_list",
            "allow": [{"host": "api.example.com", "ports": [8443]}]})))
        .unwrap();
        assert!(n.allows_name("api.example.com", 8443));
        assert!(!n.allows_name("api.example.com", 443));
    }

    #[test]
    fn transforms_parse_and_never_print_values() {
        let p = Policy::from_leap0(&json!({"mode": "custom", "allow_domains": ["api.example.com"],
            "transforms": [{"domain": "api.example.com",
                "inject_headers": {"Authorization": "Bearer s3cret"}, "strip_headers": ["Cookie"]}]}))
        .unwrap();
        let t = p.transform_for("api.example.com").unwrap();
        assert_eq!(t.inject[0].1, "Bearer s3cret");
        assert_eq!(t.strip, vec!["Cookie".to_string()]);
        assert!(!format!("{p:?}").contains("s3cret"));
        assert!(p.transform_for("example.com").is_none());
    }

    #[test]
    fn record_prefers_network_policy() {
        let p = Policy::of_record(
            Some(&json!({"mode": "deny_all"})),
            Some(&json!({"mode": "allow-all"})),
        )
        .unwrap();
        assert_eq!(p, Policy::allow_all());
        assert!(Policy::of_record(None, None).unwrap().is_deny_all());
    }

    #[test]
    fn nets_normalise() {
        assert_eq!(Net4::new(ip("198.18.3.7"), 16).to_string(), "198.18.0.0/16");
        assert!(Net4::new(ip("0.0.0.0"), 0).contains(ip("1.2.3.4")));
        assert!(DomainPattern::parse("*.").is_err());
        assert!(DomainPattern::parse("1.2.3.4").is_err());
    }
}
