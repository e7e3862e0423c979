//! HTTP access to sandboxd: the project-scoped control plane and the per-sandbox data plane.

use std::fmt;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _, Result};
use serde_json::Value;

/// Page size used when walking list endpoints.
const PAGE_LIMIT: u64 = 100;

/// A 4xx/5xx answer from the server; shown to the user as `<status> <message>`.
#[derive(Debug)]
pub struct HttpError {
    pub status: u16,
    pub message: String,
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.status, self.message)
    }
}

impl std::error::Error for HttpError {}

/// The most useful message in an error body: the control plane's `message`/`error`, the data
/// plane's `message`/`reason_code`, else the raw text, else the HTTP status text.
pub fn error_message(status_text: &str, body: &str) -> String {
    if let Ok(v) = serde_json::from_str::<Value>(body) {
        for k in ["message", "error", "reason_code", "code"] {
            if let Some(s) = v.get(k).and_then(Value::as_str).filter(|s| !s.is_empty()) {
                return s.to_string();
            }
        }
    }
    let text = body.trim();
    if text.is_empty() {
        status_text.to_string()
    } else {
        text.chars().take(500).collect()
    }
}

/// Percent-encodes one URL path segment (ids and names are normally already safe).
pub fn path_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A sandboxd API client for one org/project.
pub struct Client {
    agent: ureq::Agent,
    url: String,
    key: String,
    org: String,
    project: String,
}

impl Client {
    pub fn new(url: &str, key: &str, org: &str, project: &str) -> Self {
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(Duration::from_secs(10))
            // Exec streams send a keep-alive line every 25 s, so this only trips on a dead server.
            .timeout_read(Duration::from_secs(120))
            .build();
        Client {
            agent,
            url: url.trim_end_matches('/').to_string(),
            key: key.to_string(),
            org: org.to_string(),
            project: project.to_string(),
        }
    }

    /// `{url}/api/v1beta1/orgs/{org}/projects/{project}/{segments...}`, each segment encoded.
    pub fn project_url(&self, segments: &[&str]) -> String {
        let mut u = format!(
            "{}/api/v1beta1/orgs/{}/projects/{}",
            self.url,
            path_segment(&self.org),
            path_segment(&self.project)
        );
        for s in segments {
            u.push('/');
            u.push_str(&path_segment(s));
        }
        u
    }

    fn request(&self, method: &str, url: &str) -> ureq::Request {
        self.agent
            .request(method, url)
            .set("Authorization", &format!("Bearer {}", self.key))
            .set("Accept", "application/json")
    }

    /// Sends a request, turning 4xx/5xx into [`HttpError`] and transport failures into a
    /// readable message.
    fn send(&self, req: ureq::Request, body: Option<&Value>) -> Result<ureq::Response> {
        let res = match body {
            Some(b) => req.send_json(b),
            None => req.call(),
        };
        match res {
            Ok(r) => Ok(r),
            Err(ureq::Error::Status(status, r)) => {
                let text = r.status_text().to_string();
                let body = r.into_string().unwrap_or_default();
                Err(HttpError {
                    status,
                    message: error_message(&text, &body),
                }
                .into())
            }
            Err(ureq::Error::Transport(t)) => Err(anyhow!("cannot reach the server: {t}")),
        }
    }

    fn json(&self, method: &str, url: &str, body: Option<&Value>) -> Result<Value> {
        let r = self.send(self.request(method, url), body)?;
        r.into_json::<Value>()
            .with_context(|| format!("{method} {url}: invalid JSON response"))
    }

    pub fn get(&self, url: &str) -> Result<Value> {
        self.json("GET", url, None)
    }

    pub fn post(&self, url: &str, body: &Value) -> Result<Value> {
        self.json("POST", url, Some(body))
    }

    pub fn delete(&self, url: &str) -> Result<()> {
        self.send(self.request("DELETE", url), None)?;
        Ok(())
    }

    /// Every item of a paged collection (`{items, total, page, limit}`) under the project.
    pub fn list_all(&self, collection: &str) -> Result<Vec<Value>> {
        self.list_all_at(&[collection])
    }

    /// Every item of the paged collection at `segments` under the project.
    pub fn list_all_at(&self, segments: &[&str]) -> Result<Vec<Value>> {
        let base = self.project_url(segments);
        let mut items = Vec::new();
        for page in 1.. {
            let v = self.get(&format!("{base}?page={page}&limit={PAGE_LIMIT}"))?;
            let batch = match v.get("items").and_then(Value::as_array) {
                Some(a) => a.clone(),
                None => bail!("GET {base}: response has no `items` list"),
            };
            let n = batch.len() as u64;
            items.extend(batch);
            let total = v.get("total").and_then(Value::as_u64);
            if n == 0 || n < PAGE_LIMIT || total.is_some_and(|t| items.len() as u64 >= t) {
                break;
            }
        }
        Ok(items)
    }

    pub fn create_sandbox(&self, body: &Value) -> Result<Value> {
        self.post(&self.project_url(&["sandboxes"]), body)
    }

    pub fn get_sandbox(&self, id_or_name: &str) -> Result<Value> {
        self.get(&self.project_url(&["sandboxes", id_or_name]))
    }

    pub fn delete_sandbox(&self, id_or_name: &str) -> Result<()> {
        self.delete(&self.project_url(&["sandboxes", id_or_name]))
    }

    /// Polls the sandbox every `every` until its phase is `Ready`, for at most `limit`.
    pub fn wait_ready(&self, id: &str, every: Duration, limit: Duration) -> Result<Value> {
        let start = Instant::now();
        loop {
            let sb = self.get_sandbox(id)?;
            let phase = str_field(&sb, "phase");
            if phase == "Ready" {
                return Ok(sb);
            }
            if start.elapsed() >= limit {
                bail!("sandbox {id} is still {phase} after {}s", limit.as_secs());
            }
            std::thread::sleep(every);
        }
    }

    /// Starts `POST {connect_url}/v1/exec`; the response body is the NDJSON frame stream.
    pub fn exec(
        &self,
        connect_url: &str,
        sandbox_id: &str,
        body: &Value,
    ) -> Result<ureq::Response> {
        let url = format!("{}/v1/exec", connect_url.trim_end_matches('/'));
        let req = self
            .request("POST", &url)
            .set("X-Sandbox-Id", sandbox_id)
            .set("Accept", "application/x-ndjson");
        self.send(req, Some(body))
    }

    /// A WebSocket request to a data-plane `url` (`ws://...`) for one sandbox.
    pub fn ws_request(
        &self,
        url: &str,
        sandbox_id: &str,
    ) -> Result<tungstenite::http::Request<()>> {
        use tungstenite::client::IntoClientRequest as _;
        let mut req = url
            .into_client_request()
            .with_context(|| format!("{url}: not a valid URL"))?;
        let h = req.headers_mut();
        h.insert(
            "Authorization",
            format!("Bearer {}", self.key)
                .parse()
                .context("the API key is not a valid header value")?,
        );
        h.insert(
            "X-Sandbox-Id",
            sandbox_id
                .parse()
                .context("the sandbox id is not a valid header value")?,
        );
        Ok(req)
    }
}

/// A string field of a JSON record, or "" when absent.
pub fn str_field<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_message_prefers_message_fields() {
        let cp =
            r#"{"error":"sandbox not found","message":"sandbox x not found","code":"not_found"}"#;
        assert_eq!(error_message("Not Found", cp), "sandbox x not found");
        assert_eq!(error_message("Not Found", r#"{"error":"nope"}"#), "nope");
        let dp = r#"{"reason_code":"unauthenticated","message":"bad key"}"#;
        assert_eq!(error_message("Unauthorized", dp), "bad key");
        assert_eq!(error_message("Unauthorized", r#"{"reason_code":"x"}"#), "x");
    }

    #[test]
    fn error_message_falls_back_to_text_then_status() {
        assert_eq!(
            error_message("Bad Gateway", "  upstream down\n"),
            "upstream down"
        );
        assert_eq!(error_message("Bad Gateway", ""), "Bad Gateway");
        assert_eq!(error_message("Bad Gateway", "{}"), "{}");
    }

    #[test]
    fn urls_are_project_scoped_and_encoded() {
        let c = Client::new("http://h:1/", "k", "my org", "p");
        assert_eq!(
            c.project_url(&["sandboxes", "a/b"]),
            "http://h:1/api/v1beta1/orgs/my%20org/projects/p/sandboxes/a%2Fb"
        );
        assert_eq!(
            c.project_url(&["sandboxes"]),
            "http://h:1/api/v1beta1/orgs/my%20org/projects/p/sandboxes"
        );
        assert_eq!(path_segment("sb-1_x.y~z"), "sb-1_x.y~z");
    }
}
