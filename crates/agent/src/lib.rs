//! The in-sandbox agent: it runs as init inside every sandbox, spawns processes with pipes it
//! owns (so no host file descriptor is ever held inside the sandbox), keeps their output, and
//! serves file operations.
//!
//! The wire protocol ([`proto`]) is JSON lines over TCP: one request line, then one response
//! line, or for streaming requests a sequence of event lines ending with an `end` event.

pub mod interp;
pub mod memory;
pub mod proto;
pub mod server;
pub mod session;
mod spawn;
pub mod upload;
pub mod watch;
pub mod zeroing;
