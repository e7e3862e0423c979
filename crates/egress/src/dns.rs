//! The little DNS a resolver needs: the question of a query, A records of an answer, and a
//! refusal.

use std::net::Ipv4Addr;

/// Reads a (possibly compressed) name at `pos`; returns it and the offset after it.
fn name_at(msg: &[u8], mut pos: usize) -> Option<(String, usize)> {
    let mut labels: Vec<String> = Vec::new();
    let mut end = None;
    for _ in 0..128 {
        let len = *msg.get(pos)? as usize;
        if len == 0 {
            return Some((labels.join("."), end.unwrap_or(pos + 1)));
        }
        if len & 0xc0 == 0xc0 {
            let ptr = ((len & 0x3f) << 8) | *msg.get(pos + 1)? as usize;
            end.get_or_insert(pos + 2);
            pos = ptr;
            continue;
        }
        let l = msg.get(pos + 1..pos + 1 + len)?;
        labels.push(String::from_utf8_lossy(l).to_ascii_lowercase());
        pos += 1 + len;
    }
    None
}

/// The first question: (name, qtype, offset after the question).
pub fn question(msg: &[u8]) -> Option<(String, u16, usize)> {
    if msg.len() < 12 || u16::from_be_bytes([msg[4], msg[5]]) == 0 {
        return None;
    }
    let (name, pos) = name_at(msg, 12)?;
    let qtype = u16::from_be_bytes([*msg.get(pos)?, *msg.get(pos + 1)?]);
    Some((name, qtype, pos + 4))
}

/// A records in an answer, with their TTLs (any owner name: CNAME chains end in them).
pub fn a_records(msg: &[u8]) -> Vec<(Ipv4Addr, u32)> {
    let mut out = Vec::new();
    let Some((_, _, mut pos)) = question(msg) else {
        return out;
    };
    let ancount = u16::from_be_bytes([msg[6], msg[7]]);
    for _ in 0..ancount {
        let Some((_, p)) = name_at(msg, pos) else {
            break;
        };
        let Some(h) = msg.get(p..p + 10) else { break };
        let rtype = u16::from_be_bytes([h[0], h[1]]);
        let ttl = u32::from_be_bytes([h[4], h[5], h[6], h[7]]);
        let rdlen = u16::from_be_bytes([h[8], h[9]]) as usize;
        let Some(rdata) = msg.get(p + 10..p + 10 + rdlen) else {
            break;
        };
        if rtype == 1 && rdlen == 4 {
            out.push((Ipv4Addr::new(rdata[0], rdata[1], rdata[2], rdata[3]), ttl));
        }
        pos = p + 10 + rdlen;
    }
    out
}

/// An answer to `query` with no records and `rcode` (3 = NXDOMAIN, 5 = REFUSED).
pub fn refuse(query: &[u8], rcode: u8) -> Vec<u8> {
    let end = question(query).map_or(12, |(_, _, e)| e).min(query.len());
    let mut r = query[..end].to_vec();
    if r.len() < 12 {
        return r;
    }
    r[2] = 0x80 | (query[2] & 0x79); // QR, keep opcode and RD
    r[3] = 0x80 | (rcode & 0x0f); // RA
    r[6..12].copy_from_slice(&[0, 0, 0, 0, 0, 0]);
    if end > 12 {
        r[4..6].copy_from_slice(&[0, 1]);
    }
    r
}

/// Builds a query (for tests and the test DNS server's client side).
pub fn query(id: u16, name: &str, qtype: u16) -> Vec<u8> {
    let mut q = id.to_be_bytes().to_vec();
    q.extend_from_slice(&[1, 0, 0, 1, 0, 0, 0, 0, 0, 0]);
    for l in name.split('.').filter(|l| !l.is_empty()) {
        q.push(l.len() as u8);
        q.extend_from_slice(l.as_bytes());
    }
    q.push(0);
    q.extend_from_slice(&qtype.to_be_bytes());
    q.extend_from_slice(&[0, 1]);
    q
}

/// An answer to `query` with A records `ips` for its question name (test DNS servers).
pub fn answer(query: &[u8], ips: &[Ipv4Addr], ttl: u32) -> Vec<u8> {
    let Some((_, _, end)) = question(query) else {
        return refuse(query, 1);
    };
    let mut r = query[..end].to_vec();
    r[2] = 0x80 | (query[2] & 0x79);
    r[3] = if ips.is_empty() { 0x83 } else { 0x80 };
    r[4..6].copy_from_slice(&[0, 1]);
    r[6..8].copy_from_slice(&(ips.len() as u16).to_be_bytes());
    r[8..12].copy_from_slice(&[0, 0, 0, 0]);
    for ip in ips {
        r.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1]);
        r.extend_from_slice(&ttl.to_be_bytes());
        r.extend_from_slice(&[0, 4]);
        r.extend_from_slice(&ip.octets());
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let q = query(7, "api.Example.com", 1);
        assert_eq!(question(&q).unwrap().0, "api.example.com");
        assert_eq!(question(&q).unwrap().1, 1);
        let ip = Ipv4Addr::new(198, 18, 0, 2);
        let a = answer(&q, &[ip], 60);
        assert_eq!(a_records(&a), vec![(ip, 60)]);
        assert_eq!(&a[..2], &[0, 7]);
        let r = refuse(&q, 5);
        assert_eq!(r[3] & 0x0f, 5);
        assert!(a_records(&r).is_empty());
        assert!(question(&[1, 2, 3]).is_none());
    }
}
