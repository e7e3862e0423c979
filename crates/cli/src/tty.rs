//! The local terminal, for `sbx shell`: raw mode that is undone on every way out, the window
//! size, and the signals a terminal client must watch. All of sbx's termios code lives here.

use std::os::fd::RawFd;
use std::sync::Mutex;

/// The terminal settings to put back, shared with the panic hook.
static SAVED: Mutex<Option<(RawFd, libc::termios)>> = Mutex::new(None);

pub fn is_tty(fd: RawFd) -> bool {
    // SAFETY: isatty only inspects the descriptor.
    unsafe { libc::isatty(fd) == 1 }
}

/// The terminal's size as (cols, rows), if `fd` is a terminal that knows it.
pub fn size(fd: RawFd) -> Option<(u16, u16)> {
    // SAFETY: winsize is plain data; all-zero is a valid value.
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    // SAFETY: TIOCGWINSZ writes one winsize into the struct we own.
    let rc = unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut ws) };
    (rc == 0 && ws.ws_col > 0 && ws.ws_row > 0).then_some((ws.ws_col, ws.ws_row))
}

/// Raw mode on a terminal; the old settings come back when this is dropped, when the process
/// panics (see [`RawMode::enable`]), or via [`restore`] on a signal path.
pub struct RawMode(());

impl RawMode {
    /// Switches `fd` to raw mode (no echo, no line editing, no signals from keys: ^C goes to
    /// the remote program as a byte).
    pub fn enable(fd: RawFd) -> std::io::Result<RawMode> {
        // SAFETY: termios is plain data; all-zero is a valid value for tcgetattr to fill.
        let mut old: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: tcgetattr writes one termios into the struct we own.
        if unsafe { libc::tcgetattr(fd, &mut old) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut raw = old;
        // SAFETY: cfmakeraw only edits the struct we own.
        unsafe { libc::cfmakeraw(&mut raw) };
        *SAVED.lock().unwrap_or_else(|e| e.into_inner()) = Some((fd, old));
        let hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            restore();
            hook(info);
        }));
        // SAFETY: tcsetattr reads the termios we own.
        if unsafe { libc::tcsetattr(fd, libc::TCSAFLUSH, &raw) } != 0 {
            let e = std::io::Error::last_os_error();
            SAVED.lock().unwrap_or_else(|e| e.into_inner()).take();
            return Err(e);
        }
        Ok(RawMode(()))
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        restore();
    }
}

/// Puts back the settings saved by [`RawMode::enable`], once; a no-op otherwise.
pub fn restore() {
    let saved = SAVED.lock().unwrap_or_else(|e| e.into_inner()).take();
    if let Some((fd, old)) = saved {
        // SAFETY: tcsetattr reads the termios we saved.
        unsafe { libc::tcsetattr(fd, libc::TCSADRAIN, &old) };
    }
}

/// Signals that end a terminal session cleanly (restoring the terminal) instead of killing sbx.
pub const STOP_SIGNALS: [i32; 4] = [libc::SIGTERM, libc::SIGHUP, libc::SIGINT, libc::SIGQUIT];
pub const SIGWINCH: i32 = libc::SIGWINCH;
