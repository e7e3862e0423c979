//! The russh [`Handler`] of one connection: authentication and the session-channel requests.
//! Running sessions live in [`crate::channel`].

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use russh::server::{
    Auth, ChannelOpenHandle, Handler, Msg, PublicKeyOffer, Session, VerifiedPublicKey,
};
use russh::{Channel, ChannelId, ChannelOpenFailure, MethodKind, MethodSet, Pty, Sig};
use tokio::task::AbortHandle;

use crate::backend::{Backend, Input, SessionKind, Target};
use crate::channel::{self, InputQueue};
use crate::ratelimit::AuthLimiter;

/// Session channels one connection may have open at once.
const MAX_CHANNELS: usize = 32;
/// Password attempts one connection may make.
const MAX_AUTH_ATTEMPTS: u32 = 6;
/// `env` requests kept per channel, and their sizes.
const MAX_ENV_VARS: usize = 64;
const MAX_ENV_NAME: usize = 256;
const MAX_ENV_VALUE: usize = 32 * 1024;

/// How a connection authenticates.
pub(crate) enum Mode {
    /// TCP listener: password logins checked by the backend, rate limited.
    Password {
        peer: SocketAddr,
        limiter: Arc<AuthLimiter>,
    },
    /// The caller already authorized the stream: any method is accepted for this target.
    Authorized { target: Target },
}

/// Per-channel state until and while a session runs.
struct ChanState {
    /// Taken when the session starts.
    writer: Option<russh::ChannelWriteHalf<Msg>>,
    pty: Option<(String, u16, u16)>,
    env: Vec<(String, String)>,
    input: Option<InputQueue>,
    task: Option<AbortHandle>,
}

impl Drop for ChanState {
    fn drop(&mut self) {
        // The channel is gone (client closed it or the connection ended): stop its pumps,
        // which drops the session's input and output ends.
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

pub(crate) struct ConnHandler {
    backend: Arc<dyn Backend>,
    mode: Mode,
    /// The authenticated target and the user name it logged in with.
    login: Option<(Target, String)>,
    auth_attempts: u32,
    authenticated: Arc<AtomicBool>,
    channels: HashMap<ChannelId, ChanState>,
}

impl ConnHandler {
    pub(crate) fn new(
        backend: Arc<dyn Backend>,
        mode: Mode,
        authenticated: Arc<AtomicBool>,
    ) -> Self {
        Self {
            backend,
            mode,
            login: None,
            auth_attempts: 0,
            authenticated,
            channels: HashMap::new(),
        }
    }

    fn accept_authorized(&mut self, user: &str, method: &str) -> Auth {
        if let Mode::Authorized { target } = &self.mode {
            tracing::info!(user, method, sandbox = %target.sandbox, principal = %target.principal, "authorized stream logged in");
            self.login = Some((target.clone(), user.to_owned()));
            self.authenticated.store(true, Ordering::Release);
            Auth::Accept
        } else {
            password_only()
        }
    }

    /// Starts the session of `id`, replying to the request.
    fn start(
        &mut self,
        id: ChannelId,
        kind: SessionKind,
        session: &mut Session,
    ) -> Result<(), russh::Error> {
        let Some((target, _)) = self.login.clone() else {
            return session.channel_failure(id);
        };
        let Some(state) = self.channels.get_mut(&id) else {
            return session.channel_failure(id);
        };
        let Some(writer) = state.writer.take() else {
            // A second shell/exec/subsystem on the same channel.
            return session.channel_failure(id);
        };
        tracing::info!(
            sandbox = %target.sandbox,
            principal = %target.principal,
            channel = %id,
            kind = kind_name(&kind),
            "session starting"
        );
        let (queue, rx) = InputQueue::new();
        state.input = Some(queue);
        state.task = Some(channel::spawn(
            self.backend.clone(),
            target,
            kind,
            id,
            writer,
            session.handle(),
            rx,
        ));
        session.channel_success(id)
    }

    /// Queues input for a running session; drops it for a channel that has none yet.
    async fn push(&mut self, id: ChannelId, input: Input) {
        let Some(queue) = self.channels.get(&id).and_then(|c| c.input.as_ref()) else {
            tracing::debug!(channel = %id, "input before session start dropped");
            return;
        };
        queue.push(input).await;
    }
}

fn password_only() -> Auth {
    Auth::Reject {
        proceed_with_methods: Some(MethodSet::from(&[MethodKind::Password][..])),
        partial_success: false,
    }
}

fn kind_name(kind: &SessionKind) -> &'static str {
    match kind {
        SessionKind::Shell { .. } => "shell",
        SessionKind::Exec { .. } => "exec",
        SessionKind::Subsystem { .. } => "subsystem",
    }
}

fn clamp_u16(v: u32) -> u16 {
    u16::try_from(v).unwrap_or(u16::MAX)
}

fn valid_env(name: &str, value: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_ENV_NAME
        && value.len() <= MAX_ENV_VALUE
        && !name.contains(['=', '\0'])
        && !value.contains('\0')
}

/// The signal name without `SIG`, as the SSH protocol spells it.
pub(crate) fn sig_name(sig: &Sig) -> String {
    match sig {
        Sig::ABRT => "ABRT",
        Sig::ALRM => "ALRM",
        Sig::FPE => "FPE",
        Sig::HUP => "HUP",
        Sig::ILL => "ILL",
        Sig::INT => "INT",
        Sig::KILL => "KILL",
        Sig::PIPE => "PIPE",
        Sig::QUIT => "QUIT",
        Sig::SEGV => "SEGV",
        Sig::TERM => "TERM",
        Sig::USR1 => "USR1",
        Sig::Custom(name) => name,
    }
    .to_owned()
}

impl Handler for ConnHandler {
    type Error = russh::Error;

    async fn auth_none(&mut self, user: &str) -> Result<Auth, Self::Error> {
        Ok(self.accept_authorized(user, "none"))
    }

    async fn auth_publickey_offered(
        &mut self,
        _user: &str,
        _offer: PublicKeyOffer<'_>,
    ) -> Result<Auth, Self::Error> {
        Ok(match self.mode {
            Mode::Authorized { .. } => Auth::Accept,
            Mode::Password { .. } => password_only(),
        })
    }

    async fn auth_publickey(
        &mut self,
        user: &str,
        _key: VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        Ok(self.accept_authorized(user, "publickey"))
    }

    async fn auth_password(&mut self, user: &str, password: &str) -> Result<Auth, Self::Error> {
        let (peer, limiter) = match &self.mode {
            Mode::Authorized { .. } => return Ok(self.accept_authorized(user, "password")),
            Mode::Password { peer, limiter } => (*peer, limiter.clone()),
        };
        self.auth_attempts += 1;
        if self.auth_attempts > MAX_AUTH_ATTEMPTS {
            self.backend.auth_failed(user, peer, "too many attempts");
            return Ok(Auth::Reject {
                proceed_with_methods: Some(MethodSet::empty()),
                partial_success: false,
            });
        }
        if let Some(left) = limiter.locked(peer.ip(), user, Instant::now()) {
            tracing::info!(user, %peer, retry_in_ms = left.as_millis() as u64, "login rate limited");
            self.backend.auth_failed(user, peer, "rate limited");
            return Ok(password_only());
        }
        match self.backend.check_password(user, password, peer).await {
            Ok(Some(target)) => {
                limiter.succeeded(peer.ip(), user);
                tracing::info!(user, %peer, sandbox = %target.sandbox, principal = %target.principal, "password login");
                self.login = Some((target, user.to_owned()));
                self.authenticated.store(true, Ordering::Release);
                Ok(Auth::Accept)
            }
            Ok(None) => {
                let lockout = limiter.failed(peer.ip(), user, Instant::now());
                tracing::info!(user, %peer, lockout_s = lockout.map(|d| d.as_secs()), "login failed");
                self.backend.auth_failed(user, peer, "bad credentials");
                Ok(password_only())
            }
            Err(e) => {
                tracing::warn!(user, %peer, error = %e, source = ?std::error::Error::source(&e), "password check failed");
                self.backend.auth_failed(user, peer, "backend error");
                Ok(password_only())
            }
        }
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        let Some((target, user)) = &self.login else {
            reply
                .reject(ChannelOpenFailure::AdministrativelyProhibited)
                .await;
            return Ok(());
        };
        if self.channels.len() >= MAX_CHANNELS {
            tracing::info!(sandbox = %target.sandbox, "too many channels");
            reply.reject(ChannelOpenFailure::ResourceShortage).await;
            return Ok(());
        }
        if matches!(self.mode, Mode::Password { .. })
            && !self.backend.still_valid(target, user).await
        {
            tracing::info!(user, sandbox = %target.sandbox, principal = %target.principal, "access no longer valid; channel refused");
            reply
                .reject(ChannelOpenFailure::AdministrativelyProhibited)
                .await;
            return Ok(());
        }
        let id = channel.id();
        // Requests and data reach us through the handler callbacks; only the writing half is
        // kept (its writer waits for the client's window). The dropped reading half makes
        // russh skip its per-channel queue.
        let (_read, write) = channel.split();
        self.channels.insert(
            id,
            ChanState {
                writer: Some(write),
                pty: None,
                env: Vec::new(),
                input: None,
                task: None,
            },
        );
        reply.accept().await;
        Ok(())
    }

    async fn channel_close(
        &mut self,
        channel: ChannelId,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.channels.remove(&channel);
        Ok(())
    }

    async fn channel_eof(
        &mut self,
        channel: ChannelId,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.push(channel, Input::Eof).await;
        Ok(())
    }

    async fn data(
        &mut self,
        channel: ChannelId,
        data: &[u8],
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.push(channel, Input::Data(data.to_vec())).await;
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    async fn pty_request(
        &mut self,
        channel: ChannelId,
        term: &str,
        col_width: u32,
        row_height: u32,
        _pix_width: u32,
        _pix_height: u32,
        _modes: &[(Pty, u32)],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        match self.channels.get_mut(&channel) {
            Some(state) if state.writer.is_some() && term.len() <= MAX_ENV_NAME => {
                state.pty = Some((term.to_owned(), clamp_u16(col_width), clamp_u16(row_height)));
                session.channel_success(channel)
            }
            _ => session.channel_failure(channel),
        }
    }

    async fn x11_request(
        &mut self,
        channel: ChannelId,
        _single_connection: bool,
        _x11_auth_protocol: &str,
        _x11_auth_cookie: &str,
        _x11_screen_number: u32,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_failure(channel)
    }

    async fn env_request(
        &mut self,
        channel: ChannelId,
        name: &str,
        value: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        match self.channels.get_mut(&channel) {
            Some(state)
                if state.writer.is_some()
                    && state.env.len() < MAX_ENV_VARS
                    && valid_env(name, value) =>
            {
                state.env.retain(|(n, _)| n != name);
                state.env.push((name.to_owned(), value.to_owned()));
                session.channel_success(channel)
            }
            _ => session.channel_failure(channel),
        }
    }

    async fn shell_request(
        &mut self,
        channel: ChannelId,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let Some(state) = self.channels.get_mut(&channel) else {
            return session.channel_failure(channel);
        };
        let (term, cols, rows) = match state.pty.clone() {
            Some((term, cols, rows)) => (Some(term), cols, rows),
            None => (None, 0, 0),
        };
        let env = std::mem::take(&mut state.env);
        self.start(
            channel,
            SessionKind::Shell {
                term,
                cols,
                rows,
                env,
            },
            session,
        )
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let Ok(command) = String::from_utf8(data.to_vec()) else {
            return session.channel_failure(channel);
        };
        let Some(state) = self.channels.get_mut(&channel) else {
            return session.channel_failure(channel);
        };
        let pty = state.pty.clone();
        let env = std::mem::take(&mut state.env);
        self.start(channel, SessionKind::Exec { command, pty, env }, session)
    }

    async fn subsystem_request(
        &mut self,
        channel: ChannelId,
        name: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        if name != "sftp" {
            tracing::info!(channel = %channel, subsystem = name, "unknown subsystem refused");
            return session.channel_failure(channel);
        }
        self.start(
            channel,
            SessionKind::Subsystem {
                name: name.to_owned(),
            },
            session,
        )
    }

    async fn window_change_request(
        &mut self,
        channel: ChannelId,
        col_width: u32,
        row_height: u32,
        _pix_width: u32,
        _pix_height: u32,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let resize = Input::Resize {
            cols: clamp_u16(col_width),
            rows: clamp_u16(row_height),
        };
        if let Some(state) = self.channels.get_mut(&channel) {
            if let Some((_, cols, rows)) = state.pty.as_mut() {
                (*cols, *rows) = (clamp_u16(col_width), clamp_u16(row_height));
            }
        }
        self.push(channel, resize).await;
        session.channel_success(channel)
    }

    async fn signal(
        &mut self,
        channel: ChannelId,
        signal: Sig,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.push(channel, Input::Signal(sig_name(&signal))).await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_names_are_checked() {
        assert!(valid_env("LANG", "C.UTF-8"));
        assert!(!valid_env("", "x"));
        assert!(!valid_env("A=B", "x"));
        assert!(!valid_env("A", "x\0y"));
        assert!(!valid_env("A", &"x".repeat(MAX_ENV_VALUE + 1)));
    }

    #[test]
    fn signal_names_round_trip_protocol_spelling() {
        assert_eq!(sig_name(&Sig::INT), "INT");
        assert_eq!(sig_name(&Sig::Custom("WINCH".into())), "WINCH");
    }

    #[test]
    fn sizes_clamp() {
        assert_eq!(clamp_u16(80), 80);
        assert_eq!(clamp_u16(1 << 20), u16::MAX);
    }
}
