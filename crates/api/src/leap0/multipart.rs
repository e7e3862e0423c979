//! `multipart/form-data` in both directions: each part is one file, named by its path.

use crate::error::ApiError;

fn boundary(ct: &str) -> Option<String> {
    let (mime, params) = ct.split_once(';')?;
    if !mime.trim().eq_ignore_ascii_case("multipart/form-data") {
        return None;
    }
    params.split(';').find_map(|p| {
        let (k, v) = p.trim().split_once('=')?;
        k.trim()
            .eq_ignore_ascii_case("boundary")
            .then(|| v.trim().trim_matches('"').to_string())
    })
}

fn find(hay: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    if needle.is_empty() || hay.len() < needle.len() {
        return None;
    }
    (from..=hay.len() - needle.len()).find(|&i| &hay[i..i + needle.len()] == needle)
}

/// The `name` parameter of a `Content-Disposition: form-data` header.
fn part_name(headers: &str) -> Option<String> {
    let line = headers
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("content-disposition:"))?;
    // The `name` parameter, not the tail of `filename`.
    let mut from = 0;
    let i = loop {
        let j = line[from..].find("name=")? + from;
        if j > 0 && matches!(line.as_bytes()[j - 1], b' ' | b';') {
            break j;
        }
        from = j + 5;
    };
    let rest = &line[i + 5..];
    Some(if let Some(q) = rest.strip_prefix('"') {
        let end = q.find('"')?;
        q[..end].replace("%22", "\"")
    } else {
        rest.split(';').next()?.trim().to_string()
    })
}

pub fn parse(ct: &str, body: &[u8]) -> Result<Vec<(String, Vec<u8>)>, ApiError> {
    let b = boundary(ct).ok_or_else(|| {
        ApiError::invalid(
            "Content-Type",
            "must be multipart/form-data with a boundary",
        )
    })?;
    let bad = || ApiError::invalid("body", "malformed multipart body");
    let delim = format!("--{b}").into_bytes();
    let mut pos = find(body, &delim, 0).ok_or_else(bad)?;
    let mut out = Vec::new();
    loop {
        let after = pos + delim.len();
        if body[after..].starts_with(b"--") {
            return Ok(out);
        }
        let head_start = find(body, b"\r\n", after).ok_or_else(bad)? + 2;
        let head_end = find(body, b"\r\n\r\n", head_start - 2).ok_or_else(bad)?;
        let headers = String::from_utf8_lossy(&body[head_start.min(head_end)..head_end]);
        let data_start = head_end + 4;
        let mut next_delim = b"\r\n".to_vec();
        next_delim.extend_from_slice(&delim);
        let next = find(body, &next_delim, data_start).ok_or_else(bad)?;
        let name = part_name(&headers).ok_or_else(bad)?;
        out.push((name, body[data_start..next].to_vec()));
        pos = next + 2;
    }
}

pub fn render(parts: &[(String, Vec<u8>)]) -> (String, Vec<u8>) {
    let b = format!("sbx{}", uuid::Uuid::new_v4().simple());
    let mut out = Vec::new();
    for (name, data) in parts {
        out.extend_from_slice(
            format!(
                "--{b}\r\nContent-Disposition: form-data; name=\"{}\"\r\nContent-Type: application/octet-stream\r\n\r\n",
                name.replace('"', "%22")
            )
            .as_bytes(),
        );
        out.extend_from_slice(data);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(format!("--{b}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={b}"), out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let parts = vec![
            ("/w/a.txt".to_string(), b"hello\r\n--x".to_vec()),
            ("b".to_string(), vec![0, 255, 13, 10]),
        ];
        let (ct, body) = render(&parts);
        assert_eq!(parse(&ct, &body).unwrap(), parts);
    }

    #[test]
    fn reads_what_httpx_sends() {
        let body = b"--abc\r\nContent-Disposition: form-data; name=\"/workspace/a.txt\"; filename=\"upload\"\r\nContent-Type: application/octet-stream\r\n\r\nA\r\n--abc\r\nContent-Disposition: form-data; name=\"/workspace/b.txt\"; filename=\"upload\"\r\n\r\n\r\n--abc--\r\n";
        let parts = parse("multipart/form-data; boundary=abc", body).unwrap();
        assert_eq!(
            parts,
            vec![
                ("/workspace/a.txt".to_string(), b"A".to_vec()),
                ("/workspace/b.txt".to_string(), vec![]),
            ]
        );
        let swapped = b"--abc\r\nContent-Disposition: form-data; filename=\"f\"; name=\"/p\"\r\n\r\nB\r\n--abc--\r\n";
        assert_eq!(
            parse("multipart/form-data; boundary=abc", swapped).unwrap(),
            vec![("/p".to_string(), b"B".to_vec())]
        );
        assert!(parse("application/json", body).is_err());
        assert!(parse("multipart/form-data; boundary=zzz", body).is_err());
    }
}
