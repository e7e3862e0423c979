//! SSH gateway of sandboxd.
//!
//! Terminates SSH on the node for sandboxes, using the `russh` server. Everything inside a
//! sandbox is reached through the [`Backend`] trait, which the daemon implements over the
//! in-sandbox agent; the gateway knows nothing of sandboxes, HTTP or the agent.
//!
//! Two entry points:
//! - [`Gateway::serve_tcp`]: password logins on a TCP listener (`ssh ACCESS_ID@node`), checked
//!   by [`Backend::check_password`] and rate limited per (peer IP, user);
//! - [`Gateway::serve_authorized`]: one byte stream the caller already authorized (a WebSocket
//!   tunnel), presenting the sandbox's own host key ([`derive_host_key`]).
//!
//! Only `session` channels are served: `shell`, `exec` and the `sftp` subsystem, with
//! `pty-req`, `env`, `window-change` and `signal`. Port and agent forwarding and X11 are
//! refused.

mod backend;
mod channel;
mod gateway;
mod handler;
mod keys;
mod ratelimit;

pub use backend::{Backend, BackendError, Input, Output, SessionIo, SessionKind, Target};
pub use gateway::{Gateway, GatewayError};
pub use keys::{derive_host_key, KeyError};
/// The host key type [`Gateway`] takes (an OpenSSH private key).
pub use russh::keys::PrivateKey as HostKey;

/// Loads or creates the node's host key file (ed25519, mode 0600, OpenSSH format) at `path`.
pub fn load_or_create_host_key(path: &std::path::Path) -> Result<HostKey, GatewayError> {
    Ok(keys::load_or_create_host_key(path)?)
}
