//! The listener side: russh configuration, accepting connections, and their lifetime.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use russh::keys::PrivateKey;
use russh::server::{Config, Handle};
use russh::{Disconnect, MethodKind, MethodSet};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::backend::{Backend, Target};
use crate::handler::{ConnHandler, Mode};
use crate::ratelimit::AuthLimiter;

/// Time a client has from connecting to being authenticated.
const LOGIN_GRACE: Duration = Duration::from_secs(60);
/// Connections `serve_tcp` holds at once; further ones are closed at accept.
const MAX_TCP_CONNECTIONS: usize = 1024;
/// russh's own delay before each rejection; the real brake is [`AuthLimiter`].
const AUTH_REJECTION_TIME: Duration = Duration::from_millis(100);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
const KEEPALIVE_MAX: usize = 4;

/// Errors of serving a connection.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("SSH protocol")]
    Ssh(#[from] russh::Error),
    #[error("client did not authenticate within {0:?}")]
    LoginTimeout(Duration),
    #[error(transparent)]
    Key(#[from] crate::keys::KeyError),
}

/// Terminates SSH for sandboxes; everything behind it goes through the [`Backend`].
pub struct Gateway {
    backend: Arc<dyn Backend>,
    host_key: PrivateKey,
    limiter: Arc<AuthLimiter>,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field(
                "host_key",
                &self.host_key.public_key().fingerprint(Default::default()),
            )
            .finish_non_exhaustive()
    }
}

impl Gateway {
    /// `host_key` is the node's key, presented on the TCP listener.
    pub fn new(backend: Arc<dyn Backend>, host_key: PrivateKey) -> Self {
        Self {
            backend,
            host_key,
            limiter: Arc::new(AuthLimiter::new()),
        }
    }

    /// Serves password logins on `listener` until this future is dropped; dropping it also
    /// disconnects every connection it accepted.
    pub async fn serve_tcp(self: Arc<Self>, listener: TcpListener) {
        let config = Arc::new(config(
            self.host_key.clone(),
            MethodSet::from(&[MethodKind::Password][..]),
        ));
        let slots = Arc::new(Semaphore::new(MAX_TCP_CONNECTIONS));
        let mut conns = JoinSet::new();
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    let (stream, peer) = match accepted {
                        Ok(a) => a,
                        Err(e) => {
                            // EMFILE and the like: back off instead of spinning.
                            tracing::warn!(error = %e, "accept failed");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        }
                    };
                    let Ok(slot) = slots.clone().try_acquire_owned() else {
                        tracing::warn!(%peer, "too many SSH connections; closing");
                        continue;
                    };
                    let _ = stream.set_nodelay(true);
                    let gateway = self.clone();
                    let config = config.clone();
                    conns.spawn(async move {
                        let mode = Mode::Password { peer, limiter: gateway.limiter.clone() };
                        if let Err(e) = gateway.serve(config, stream, mode).await {
                            tracing::debug!(%peer, error = %e, source = ?std::error::Error::source(&e), "SSH connection ended with error");
                        }
                        drop(slot);
                    });
                }
                Some(_) = conns.join_next(), if !conns.is_empty() => {}
            }
        }
    }

    /// Serves one already-authorized byte stream (say a WebSocket tunnel whose API key the
    /// caller checked): any client auth method (`none`, password, publickey) logs in as
    /// `target`. `host_key` is the per-sandbox key to present (see
    /// [`crate::derive_host_key`]). Returns when the connection ends; dropping the future
    /// disconnects it.
    pub async fn serve_authorized<S>(
        self: Arc<Self>,
        stream: S,
        target: Target,
        host_key: PrivateKey,
    ) -> Result<(), GatewayError>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let config = Arc::new(config(
            host_key,
            MethodSet::from(
                &[
                    MethodKind::None,
                    MethodKind::Password,
                    MethodKind::PublicKey,
                ][..],
            ),
        ));
        self.serve(config, stream, Mode::Authorized { target })
            .await
    }

    async fn serve<S>(&self, config: Arc<Config>, stream: S, mode: Mode) -> Result<(), GatewayError>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let peer: Option<SocketAddr> = match &mode {
            Mode::Password { peer, .. } => Some(*peer),
            Mode::Authorized { .. } => None,
        };
        let authenticated = Arc::new(AtomicBool::new(false));
        let handler = ConnHandler::new(self.backend.clone(), mode, authenticated.clone());
        let session = tokio::time::timeout(
            LOGIN_GRACE,
            russh::server::run_stream(config, stream, handler),
        )
        .await
        .map_err(|_| GatewayError::LoginTimeout(LOGIN_GRACE))??;
        let handle = session.handle();
        let mut guard = DisconnectOnDrop(Some(handle.clone()));
        tokio::pin!(session);
        let grace = tokio::time::sleep(LOGIN_GRACE);
        tokio::pin!(grace);
        let result = loop {
            tokio::select! {
                r = &mut session => break r.map_err(GatewayError::from),
                () = &mut grace, if !grace.is_elapsed() => {
                    if !authenticated.load(Ordering::Acquire) {
                        tracing::info!(peer = ?peer, "login grace time over; disconnecting");
                        let _ = handle.disconnect(
                            Disconnect::ByApplication,
                            "authentication timeout".into(),
                            String::new(),
                        ).await;
                        break Err(GatewayError::LoginTimeout(LOGIN_GRACE));
                    }
                }
            }
        };
        // The session task has ended (or was told to): nothing left to disconnect.
        guard.0 = None;
        result
    }
}

/// Disconnects the session if the future serving it is dropped (russh runs the session in a
/// task of its own, which would otherwise outlive us).
struct DisconnectOnDrop(Option<Handle>);

impl Drop for DisconnectOnDrop {
    fn drop(&mut self) {
        let Some(handle) = self.0.take() else { return };
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let _ = handle
                    .disconnect(
                        Disconnect::ByApplication,
                        "gateway shutting down".into(),
                        String::new(),
                    )
                    .await;
            });
        }
    }
}

fn config(host_key: PrivateKey, methods: MethodSet) -> Config {
    Config {
        methods,
        auth_rejection_time: AUTH_REJECTION_TIME,
        auth_rejection_time_initial: Some(Duration::ZERO),
        keys: vec![host_key],
        // Interactive sessions may idle for hours; dead peers are found by keepalives.
        inactivity_timeout: None,
        keepalive_interval: Some(KEEPALIVE_INTERVAL),
        keepalive_max: KEEPALIVE_MAX,
        nodelay: true,
        ..Config::default()
    }
}
