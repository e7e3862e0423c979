//! SSH into sandboxes through the node's SSH gateway (`sandboxd-sshgw`):
//! - Leap0 `POST /v1/sandbox/{id}/ssh/access` (and `validate`, `regen`, `DELETE`): a password
//!   credential whose id is the user name on the gateway's TCP port (`ssh_command`);
//! - the NeevCloud data plane's WebSocket `GET /v1/ssh`: raw SSH bytes of one connection, the
//!   API key (checked here) standing for the login.
//!
//! Shells, commands and SFTP become sessions in the sandbox's agent: a terminal for a shell or
//! a `-t` command, pipes otherwise, OpenSSH's `sftp-server` for the `sftp` subsystem.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::ws::{Message, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use futures_util::{SinkExt, StreamExt};
use sandboxd_agent::proto::{Request, SessionSpec};
use sandboxd_core::{Principal, SandboxId};
use sandboxd_engine::agent_client::SessionFrame;
use sandboxd_engine::Engine;
use sandboxd_sshgw::{
    Backend, BackendError, Gateway, Input, Output, SessionIo, SessionKind, Target,
};
use serde::Deserialize;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::body::read_json;
use crate::error::ApiError;
use crate::AppState;

/// Where SFTP's server lives in Debian-based templates.
const SFTP_SERVERS: &[&str] = &["/usr/lib/openssh/sftp-server", "/usr/lib/sftp-server"];

/// The node's SSH gateway and what clients are told to connect to.
pub struct SshNode {
    pub gateway: Arc<Gateway>,
    /// Seeds each sandbox's own host key (a fork, a new id, gets a new one).
    pub secret: [u8; 32],
    /// Host and port in `ssh_command`.
    pub host: String,
    pub port: u16,
}

impl SshNode {
    fn command(&self, user: &str) -> String {
        if self.port == 22 {
            format!("ssh {user}@{}", self.host)
        } else {
            format!("ssh -p {} {user}@{}", self.port, self.host)
        }
    }
}

/// The principal a gateway session acts as: encoded in `Target::principal`.
fn encode_principal(p: &Principal) -> String {
    json!([p.key_id, p.org, p.project]).to_string()
}

fn decode_principal(s: &str) -> Option<Principal> {
    let (key_id, org, project): (String, String, Option<String>) = serde_json::from_str(s).ok()?;
    Some(Principal {
        key_id,
        org,
        project,
    })
}

/// The gateway's view of sandboxes, through the engine.
pub struct SshBackend {
    engine: Arc<Engine>,
}

impl SshBackend {
    pub fn new(engine: Arc<Engine>) -> Self {
        SshBackend { engine }
    }
}

fn unavailable(e: impl std::fmt::Display) -> BackendError {
    BackendError::Unavailable(e.to_string())
}

fn signal_number(name: &str) -> Option<i32> {
    crate::terminal::signal_number(name)
}

fn signal_name(n: i32) -> Option<String> {
    Some(
        match n {
            1 => "HUP",
            2 => "INT",
            3 => "QUIT",
            6 => "ABRT",
            9 => "KILL",
            10 => "USR1",
            12 => "USR2",
            13 => "PIPE",
            14 => "ALRM",
            15 => "TERM",
            _ => return None,
        }
        .to_string(),
    )
}

#[async_trait::async_trait]
impl Backend for SshBackend {
    async fn check_password(
        &self,
        user: &str,
        password: &str,
        _peer: SocketAddr,
    ) -> Result<Option<Target>, BackendError> {
        let Some(a) = self.engine.ssh_login(user, password).map_err(unavailable)? else {
            return Ok(None);
        };
        let p = Principal {
            key_id: format!("ssh:{}", a.id),
            org: a.tenant.org.clone(),
            project: Some(a.tenant.project.clone()),
        };
        self.engine
            .audit_event(a.sandbox_id, "ssh.login", None, Some(a.id.clone()), None, 0);
        Ok(Some(Target {
            sandbox: a.sandbox_id.to_string(),
            principal: encode_principal(&p),
        }))
    }

    async fn still_valid(&self, _target: &Target, user: &str) -> bool {
        self.engine.ssh_access_live(user)
    }

    fn auth_failed(&self, user: &str, _peer: SocketAddr, reason: &str) {
        if let Ok(Some(a)) = self.engine.ssh_login_target(user) {
            self.engine.audit_event(
                a,
                "ssh.login",
                None,
                Some(user.to_string()),
                Some(reason.replace(' ', "_")),
                0,
            );
        }
    }

    async fn open(&self, target: &Target, kind: SessionKind) -> Result<SessionIo, BackendError> {
        let p = decode_principal(&target.principal)
            .ok_or_else(|| unavailable("bad session principal"))?;
        let id = SandboxId::parse(&target.sandbox).ok_or_else(|| unavailable("bad sandbox id"))?;
        self.engine
            .running_sandbox(&p, id)
            .await
            .map_err(unavailable)?;
        let mut spec = SessionSpec {
            kill_on_detach: true,
            ..Default::default()
        };
        let tool = match kind {
            SessionKind::Shell {
                term,
                cols,
                rows,
                env,
            } => {
                spec.pty = true;
                spec.term = term;
                spec.cols = Some(cols).filter(|c| *c > 0);
                spec.rows = Some(rows).filter(|r| *r > 0);
                spec.env = env;
                "ssh.shell"
            }
            SessionKind::Exec { command, pty, env } => {
                spec.argv = Some(vec!["/bin/sh".into(), "-c".into(), command]);
                if let Some((term, cols, rows)) = pty {
                    spec.pty = true;
                    spec.term = Some(term);
                    spec.cols = Some(cols).filter(|c| *c > 0);
                    spec.rows = Some(rows).filter(|r| *r > 0);
                }
                spec.env = env;
                "ssh.exec"
            }
            SessionKind::Subsystem { name } if name == "sftp" => {
                // The first sftp-server the template has; `sh` finds it inside the sandbox.
                let script = SFTP_SERVERS
                    .iter()
                    .map(|p| format!("[ -x {p} ] && exec {p}"))
                    .collect::<Vec<_>>()
                    .join("; ")
                    + "; echo 'sftp: this sandbox has no sftp-server (openssh-sftp-server)' >&2; exit 127";
                spec.argv = Some(vec!["/bin/sh".into(), "-c".into(), script]);
                "ssh.sftp"
            }
            SessionKind::Subsystem { name } => {
                return Err(unavailable(format!("subsystem {name} is not available")))
            }
        };
        // Environment from the client: names only of the usual safe kind.
        spec.env.retain(|(k, _)| {
            !k.is_empty() && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        });
        let (reply, stream) = self
            .engine
            .session_attach(&p, id, tool, Request::SessionOpen(spec))
            .await
            .map_err(unavailable)?;
        crate::terminal::expect_session(reply).map_err(|e| unavailable(e.message))?;
        let (mut reader, mut writer) = stream.ok_or_else(|| unavailable("no session stream"))?;
        let (in_tx, mut in_rx) = mpsc::channel::<Input>(64);
        let (out_tx, out_rx) = mpsc::channel::<Output>(64);
        tokio::spawn(async move {
            while let Some(i) = in_rx.recv().await {
                let r = match i {
                    Input::Data(d) => writer.input(&d).await,
                    Input::Eof => writer.eof().await,
                    Input::Resize { cols, rows } => writer.resize(cols, rows).await,
                    Input::Signal(s) => match signal_number(&s) {
                        Some(n) => writer.signal(n).await,
                        None => Ok(()),
                    },
                };
                if r.is_err() {
                    break;
                }
            }
            writer.close().await;
        });
        tokio::spawn(async move {
            loop {
                let out = match reader.next().await {
                    Ok(Some(SessionFrame::Stdout(d))) => Output::Stdout(d),
                    Ok(Some(SessionFrame::Stderr(d))) => Output::Stderr(d),
                    Ok(Some(SessionFrame::Exit(e))) => {
                        let _ = out_tx
                            .send(Output::Exit {
                                code: e.signal.is_none().then_some(e.exit_code),
                                signal: e.signal.and_then(signal_name),
                            })
                            .await;
                        return;
                    }
                    Ok(None) | Err(_) => {
                        let _ = out_tx
                            .send(Output::Exit {
                                code: Some(255),
                                signal: None,
                            })
                            .await;
                        return;
                    }
                };
                if out_tx.send(out).await.is_err() {
                    return;
                }
            }
        });
        Ok(SessionIo {
            input: in_tx,
            output: out_rx,
        })
    }
}

pub fn routes() -> Router<AppState> {
    let s = "/v1/sandbox/{id}/ssh";
    Router::new()
        .route(&format!("{s}/access"), post(create_access))
        .route(
            &format!("{s}/{{sid}}"),
            axum::routing::delete(delete_access),
        )
        .route(&format!("{s}/{{sid}}/validate"), post(validate_access))
        .route(&format!("{s}/{{sid}}/regen"), post(regen_access))
}

fn node(st: &AppState) -> Result<&SshNode, ApiError> {
    st.ssh.as_deref().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "SSH is not enabled on this node (sandboxd serve --ssh-listen)",
        )
    })
}

fn l0(e: impl Into<ApiError>) -> Response {
    e.into()
        .in_dialect(crate::error::Dialect::Leap0)
        .into_response()
}

fn issued_view(
    st: &AppState,
    i: &sandboxd_engine::ssh::IssuedSsh,
) -> Result<serde_json::Value, ApiError> {
    let a = &i.access;
    Ok(json!({
        "id": a.id,
        "sandbox_id": a.sandbox_id.to_string(),
        "password": i.password,
        "ssh_command": node(st)?.command(&a.id),
        "expires_at": crate::leap0::ts(a.expires_at),
        "created_at": crate::leap0::ts(a.created_at),
        "updated_at": crate::leap0::ts(a.updated_at),
    }))
}

async fn create_access(
    State(st): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let r = async {
        let (_, t) = crate::leap0::caller(&st, &headers)?;
        node(&st)?;
        let issued = st
            .engine
            .create_ssh_access(&t, crate::leap0::sandbox_id(&id)?)?;
        Ok::<_, ApiError>((StatusCode::CREATED, Json(issued_view(&st, &issued)?)).into_response())
    }
    .await;
    r.unwrap_or_else(l0)
}

async fn regen_access(
    State(st): State<AppState>,
    Path((id, sid)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let r = async {
        let (_, t) = crate::leap0::caller(&st, &headers)?;
        node(&st)?;
        let issued = st
            .engine
            .regen_ssh_access(&t, crate::leap0::sandbox_id(&id)?, &sid)?;
        Ok::<_, ApiError>(Json(issued_view(&st, &issued)?).into_response())
    }
    .await;
    r.unwrap_or_else(l0)
}

async fn delete_access(
    State(st): State<AppState>,
    Path((id, sid)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let r = async {
        let (_, t) = crate::leap0::caller(&st, &headers)?;
        st.engine
            .delete_ssh_access(&t, crate::leap0::sandbox_id(&id)?, &sid)?;
        Ok::<_, ApiError>(StatusCode::NO_CONTENT.into_response())
    }
    .await;
    r.unwrap_or_else(l0)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ValidateReq {
    password: String,
}

async fn validate_access(
    State(st): State<AppState>,
    Path((id, sid)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let r = async {
        let (_, t) = crate::leap0::caller(&st, &headers)?;
        let req: ValidateReq = read_json(body, false).await?;
        let sandbox = crate::leap0::sandbox_id(&id)?;
        let valid = st
            .engine
            .validate_ssh_access(&t, sandbox, &sid, &req.password)?;
        Ok::<_, ApiError>(
            Json(json!({"valid": valid, "sandbox_id": sandbox.to_string()})).into_response(),
        )
    }
    .await;
    r.unwrap_or_else(l0)
}

/// `GET /v1/ssh` (WebSocket, NeevCloud data plane): one SSH connection's bytes, to the
/// gateway as an already authorized login on the sandbox named by `X-Sandbox-Id`.
pub(crate) async fn tunnel(
    st: AppState,
    principal: Principal,
    id: SandboxId,
    ws: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    let node = node(&st)?;
    st.engine.running_sandbox(&principal, id).await?;
    let gateway = Arc::clone(&node.gateway);
    let key = sandboxd_sshgw::derive_host_key(&node.secret, &id.to_string());
    let target = Target {
        sandbox: id.to_string(),
        principal: encode_principal(&principal),
    };
    st.engine.audit_event(id, "ssh.tunnel", None, None, None, 0);
    Ok(ws.on_upgrade(move |socket| async move {
        let (ours, theirs) = tokio::io::duplex(64 * 1024);
        let (mut rd, mut wr) = tokio::io::split(theirs);
        let (mut tx, mut rx) = socket.split();
        let up = async move {
            while let Some(Ok(m)) = rx.next().await {
                let r = match m {
                    Message::Binary(b) => wr.write_all(&b).await,
                    Message::Text(t) => wr.write_all(t.as_bytes()).await,
                    Message::Close(_) => break,
                    _ => Ok(()),
                };
                if r.is_err() {
                    break;
                }
            }
            let _ = wr.shutdown().await;
        };
        let down = async move {
            let mut buf = vec![0u8; 32 * 1024];
            loop {
                match rd.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if tx
                            .send(Message::Binary(buf[..n].to_vec().into()))
                            .await
                            .is_err()
                        {
                            break;
                        }
                    }
                }
            }
            let _ = tx.send(Message::Close(None)).await;
        };
        let serve = gateway.serve_authorized(ours, target, key);
        let _ = tokio::join!(up, down, serve);
    }))
}
