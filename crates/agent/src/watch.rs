//! `Watch`: filesystem change events under a path, from inotify.
//!
//! The connection's thread reads inotify and the socket (to see the client leave); events go
//! through a bounded queue to a writer thread, so a slow client never stalls inotify. When
//! the queue is full, events are dropped and one `overflow` event (on the watched root) says
//! so. Consecutive identical events that are still queued are coalesced.

use std::collections::{HashMap, VecDeque};
use std::ffi::CString;
use std::io::Write;
use std::net::TcpStream;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::proto::{Reply, WatchEvent};

/// Events waiting for the client; past it, events are dropped and `overflow` is sent.
pub const QUEUE_MAX: usize = 4096;
/// Directories a recursive watch follows at most.
const MAX_WATCHES: usize = 8192;
/// How often the reader wakes to check the deadline and the client.
const TICK_MS: i32 = 500;

const MASK: u32 = libc::IN_CREATE
    | libc::IN_MODIFY
    | libc::IN_DELETE
    | libc::IN_DELETE_SELF
    | libc::IN_MOVED_FROM
    | libc::IN_MOVED_TO
    | libc::IN_MOVE_SELF
    | libc::IN_ATTRIB;

/// Why a watch could not start; becomes a `Reply::Error`.
#[derive(Debug)]
pub struct WatchError {
    pub code: &'static str,
    pub message: String,
}

impl From<WatchError> for Reply {
    fn from(e: WatchError) -> Reply {
        Reply::error(e.code, e.message)
    }
}

/// The kind of change for an inotify mask, as fsnotify names them (the SDK's kinds).
pub fn kind_of(mask: u32) -> Option<&'static str> {
    if mask & (libc::IN_CREATE | libc::IN_MOVED_TO) != 0 {
        Some("create")
    } else if mask & (libc::IN_DELETE | libc::IN_DELETE_SELF) != 0 {
        Some("remove")
    } else if mask & (libc::IN_MOVED_FROM | libc::IN_MOVE_SELF) != 0 {
        Some("rename")
    } else if mask & libc::IN_MODIFY != 0 {
        Some("write")
    } else if mask & libc::IN_ATTRIB != 0 {
        Some("chmod")
    } else {
        None
    }
}

/// A bounded queue of events between the inotify reader and the socket writer.
#[derive(Default)]
struct Queue {
    state: Mutex<QueueState>,
    cond: Condvar,
}

#[derive(Default)]
struct QueueState {
    items: VecDeque<WatchEvent>,
    /// Events were dropped and the client has not been told yet.
    overflowed: bool,
    /// The reader is done; the writer sends what is left and ends.
    closed: bool,
    /// The client is gone (a write failed).
    gone: bool,
}

impl Queue {
    fn lock(&self) -> std::sync::MutexGuard<'_, QueueState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues `ev` unless it repeats the last queued event; returns false once the client left.
    fn push(&self, ev: WatchEvent, max: usize) -> bool {
        let mut s = self.lock();
        if s.gone {
            return false;
        }
        if s.items.back() == Some(&ev) {
            return true;
        }
        if s.items.len() >= max {
            s.overflowed = true;
        } else {
            s.items.push_back(ev);
        }
        drop(s);
        self.cond.notify_one();
        true
    }

    fn close(&self) {
        self.lock().closed = true;
        self.cond.notify_one();
    }

    fn gone(&self) -> bool {
        self.lock().gone
    }

    /// The next batch to send; empty when the queue is closed and drained.
    fn take(&self, root: &str) -> Vec<WatchEvent> {
        let mut s = self.lock();
        loop {
            if s.overflowed || !s.items.is_empty() {
                let mut batch: Vec<WatchEvent> = s.items.drain(..).collect();
                if std::mem::take(&mut s.overflowed) {
                    batch.push(WatchEvent {
                        kind: "write".into(),
                        path: root.to_string(),
                        entry: None,
                        overflow: true,
                    });
                }
                return batch;
            }
            if s.closed {
                return Vec::new();
            }
            s = self.cond.wait(s).unwrap_or_else(|p| p.into_inner());
        }
    }
}

/// An inotify instance and the directories it watches.
struct Inotify {
    fd: OwnedFd,
    dirs: HashMap<i32, PathBuf>,
}

impl Inotify {
    fn new() -> std::io::Result<Inotify> {
        // SAFETY: inotify_init1 takes only flags and returns a new fd or -1.
        let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Inotify {
            // SAFETY: `fd` is a fresh descriptor that nothing else owns.
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
            dirs: HashMap::new(),
        })
    }

    fn add(&mut self, path: &Path) -> std::io::Result<()> {
        let c = CString::new(path.as_os_str().as_bytes())
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
        // SAFETY: `c` is a NUL-terminated path that outlives the call.
        let wd = unsafe { libc::inotify_add_watch(self.fd.as_raw_fd(), c.as_ptr(), MASK) };
        if wd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        self.dirs.insert(wd, path.to_path_buf());
        Ok(())
    }

    /// Watches `dir` and every directory under it (up to [`MAX_WATCHES`]); with `announce`,
    /// queues a `create` for each entry found (they may predate the watch).
    fn add_tree(&mut self, dir: &Path, announce: Option<&Queue>) {
        if self.dirs.len() >= MAX_WATCHES || self.add(dir).is_err() {
            return;
        }
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        for e in rd.flatten() {
            let p = e.path();
            if let Some(q) = announce {
                q.push(event("create", &p), QUEUE_MAX);
            }
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                self.add_tree(&p, announce);
            }
        }
    }

    /// Reads what inotify has; each raw event is (watch, mask, name).
    fn read(&self) -> std::io::Result<Vec<(i32, u32, Option<std::ffi::OsString>)>> {
        let mut buf = [0u8; 64 * 1024];
        // SAFETY: read writes at most buf.len() bytes into `buf`, which outlives the call.
        let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::WouldBlock {
                return Ok(Vec::new());
            }
            return Err(e);
        }
        Ok(parse_events(&buf[..n as usize]))
    }
}

/// Splits a buffer read from inotify into (watch, mask, name) triples.
pub fn parse_events(buf: &[u8]) -> Vec<(i32, u32, Option<std::ffi::OsString>)> {
    const HEAD: usize = std::mem::size_of::<libc::inotify_event>();
    let mut out = Vec::new();
    let mut off = 0;
    while off + HEAD <= buf.len() {
        let wd = i32::from_ne_bytes(buf[off..off + 4].try_into().expect("4 bytes"));
        let mask = u32::from_ne_bytes(buf[off + 4..off + 8].try_into().expect("4 bytes"));
        let len = u32::from_ne_bytes(buf[off + 12..off + 16].try_into().expect("4 bytes")) as usize;
        let end = (off + HEAD + len).min(buf.len());
        let raw = &buf[off + HEAD..end];
        let name = raw.split(|b| *b == 0).next().filter(|n| !n.is_empty());
        out.push((
            wd,
            mask,
            name.map(|n| std::ffi::OsStr::from_bytes(n).to_os_string()),
        ));
        off = end;
    }
    out
}

fn event(kind: &str, path: &Path) -> WatchEvent {
    WatchEvent {
        kind: kind.into(),
        path: path.to_string_lossy().into_owned(),
        entry: None,
        overflow: false,
    }
}

/// Whether the peer closed `sock` (or it failed); does not block.
fn peer_gone(fd: RawFd) -> bool {
    let mut b = [0u8; 1];
    // SAFETY: recv writes at most one byte into `b`; MSG_PEEK leaves it in the socket.
    let n = unsafe {
        libc::recv(
            fd,
            b.as_mut_ptr().cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    if n == 0 {
        return true;
    }
    n < 0 && std::io::Error::last_os_error().kind() != std::io::ErrorKind::WouldBlock
}

fn write_line(out: &mut dyn Write, r: &Reply) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(r).expect("reply serializes");
    line.push(b'\n');
    out.write_all(&line)
}

/// Serves a `Watch` on `sock`: `Ok` once the watches are in place (or an error), then
/// `WatchEvent` lines until the deadline, the client leaving or the root going away; `End`.
pub fn serve(path: &str, recursive: bool, timeout_ms: Option<u64>, sock: &TcpStream) {
    let mut out = match sock.try_clone() {
        Ok(s) => s,
        Err(_) => return,
    };
    let root = PathBuf::from(path);
    let md = match std::fs::metadata(&root) {
        Ok(m) => m,
        Err(e) => {
            let code = if e.kind() == std::io::ErrorKind::NotFound {
                "not_found"
            } else {
                "io"
            };
            let _ = write_line(&mut out, &Reply::error(code, format!("{path}: {e}")));
            return;
        }
    };
    let mut ino = match Inotify::new() {
        Ok(i) => i,
        Err(e) => {
            let _ = write_line(&mut out, &Reply::error("io", format!("inotify: {e}")));
            return;
        }
    };
    let added = if recursive && md.is_dir() {
        ino.add_tree(&root, None);
        if ino.dirs.is_empty() {
            ino.add(&root)
        } else {
            Ok(())
        }
    } else {
        ino.add(&root)
    };
    if let Err(e) = added {
        let _ = write_line(&mut out, &Reply::error("io", format!("watch {path}: {e}")));
        return;
    }
    if write_line(&mut out, &Reply::Ok).is_err() {
        return;
    }
    let deadline = timeout_ms.map(|t| Instant::now() + Duration::from_millis(t));
    let queue = Arc::new(Queue::default());
    let writer = {
        let queue = Arc::clone(&queue);
        let root = path.to_string();
        thread::spawn(move || loop {
            let batch = queue.take(&root);
            if batch.is_empty() {
                let _ = write_line(&mut out, &Reply::End);
                return;
            }
            for mut ev in batch {
                if ev.kind != "remove" && !ev.overflow {
                    ev.entry = crate::server::stat_path(Path::new(&ev.path)).ok();
                }
                if write_line(&mut out, &Reply::WatchEvent(ev)).is_err() {
                    queue.lock().gone = true;
                    return;
                }
            }
        })
    };
    read_loop(
        &mut ino,
        &root,
        recursive,
        deadline,
        sock.as_raw_fd(),
        &queue,
    );
    queue.close();
    let _ = writer.join();
}

fn read_loop(
    ino: &mut Inotify,
    root: &Path,
    recursive: bool,
    deadline: Option<Instant>,
    sock: RawFd,
    queue: &Queue,
) {
    loop {
        let mut wait = TICK_MS;
        if let Some(d) = deadline {
            let left = d.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            wait = wait.min(left.as_millis().max(1) as i32);
        }
        let mut fds = [
            libc::pollfd {
                fd: ino.fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: sock,
                events: libc::POLLIN | libc::POLLRDHUP,
                revents: 0,
            },
        ];
        // SAFETY: `fds` is a valid array of two pollfd that outlives the call.
        let rc = unsafe { libc::poll(fds.as_mut_ptr(), 2, wait) };
        if rc < 0 {
            if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return;
        }
        if queue.gone() || (fds[1].revents != 0 && peer_gone(sock)) {
            return;
        }
        if fds[0].revents == 0 {
            continue;
        }
        let Ok(events) = ino.read() else { return };
        for (wd, mask, name) in events {
            if mask & libc::IN_Q_OVERFLOW != 0 {
                queue.lock().overflowed = true;
                continue;
            }
            if mask & libc::IN_IGNORED != 0 {
                ino.dirs.remove(&wd);
                if ino.dirs.is_empty() {
                    return; // the root is gone
                }
                continue;
            }
            let Some(dir) = ino.dirs.get(&wd).cloned() else {
                continue;
            };
            let path = match &name {
                Some(n) => dir.join(n),
                None => dir.clone(),
            };
            // A subdirectory's own removal is reported by its parent.
            if name.is_none()
                && path != root
                && mask & (libc::IN_DELETE_SELF | libc::IN_MOVE_SELF) != 0
            {
                continue;
            }
            let Some(kind) = kind_of(mask) else { continue };
            if !queue.push(event(kind, &path), QUEUE_MAX) {
                return;
            }
            let new_dir =
                mask & libc::IN_ISDIR != 0 && mask & (libc::IN_CREATE | libc::IN_MOVED_TO) != 0;
            if recursive && new_dir {
                ino.add_tree(&path, Some(queue));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader};
    use std::net::TcpListener;

    #[test]
    fn masks_map_to_fsnotify_kinds() {
        assert_eq!(kind_of(libc::IN_CREATE | libc::IN_ISDIR), Some("create"));
        assert_eq!(kind_of(libc::IN_MOVED_TO), Some("create"));
        assert_eq!(kind_of(libc::IN_MOVED_FROM), Some("rename"));
        assert_eq!(kind_of(libc::IN_DELETE), Some("remove"));
        assert_eq!(kind_of(libc::IN_MODIFY), Some("write"));
        assert_eq!(kind_of(libc::IN_ATTRIB), Some("chmod"));
        assert_eq!(kind_of(libc::IN_OPEN), None);
    }

    #[test]
    fn queue_coalesces_and_overflows_once() {
        let q = Queue::default();
        let ev = |p: &str| event("write", Path::new(p));
        assert!(q.push(ev("/a"), 2));
        assert!(q.push(ev("/a"), 2));
        assert!(q.push(ev("/b"), 2));
        assert!(q.push(ev("/c"), 2)); // dropped
        let batch = q.take("/root");
        let paths: Vec<_> = batch
            .iter()
            .map(|e| (e.path.as_str(), e.overflow))
            .collect();
        assert_eq!(paths, [("/a", false), ("/b", false), ("/root", true)]);
        q.close();
        assert!(q.take("/root").is_empty());
    }

    fn open_watch(dir: &Path, recursive: bool) -> BufReader<TcpStream> {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let d = dir.to_string_lossy().into_owned();
        thread::spawn(move || {
            let (s, _) = l.accept().unwrap();
            serve(&d, recursive, Some(5_000), &s);
        });
        let c = TcpStream::connect(addr).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut r = BufReader::new(c);
        assert_eq!(next(&mut r), Reply::Ok);
        r
    }

    fn next(r: &mut BufReader<TcpStream>) -> Reply {
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        serde_json::from_str(&line).unwrap()
    }

    fn until(r: &mut BufReader<TcpStream>, kind: &str, path: &Path) -> WatchEvent {
        loop {
            match next(r) {
                Reply::WatchEvent(e) if e.kind == kind && Path::new(&e.path) == path => return e,
                Reply::WatchEvent(_) => {}
                other => panic!("no {kind} {path:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn watch_reports_changes_recursively() {
        let dir = std::env::temp_dir().join(format!("agent-watch-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        let mut r = open_watch(&dir, true);
        let f = dir.join("sub/new/f.txt");
        std::fs::create_dir_all(f.parent().unwrap()).unwrap();
        thread::sleep(Duration::from_millis(100));
        std::fs::write(&f, "x").unwrap();
        until(&mut r, "create", &dir.join("sub/new"));
        let e = until(&mut r, "write", &f);
        assert_eq!(e.entry.map(|i| i.size), Some(1));
        std::fs::remove_file(&f).unwrap();
        assert!(until(&mut r, "remove", &f).entry.is_none());
        drop(r);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn non_recursive_watch_ignores_subdirectories_and_ends_with_the_root() {
        let dir = std::env::temp_dir().join(format!("agent-watch-nr-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        let mut r = open_watch(&dir, false);
        std::fs::write(dir.join("sub/inner"), "x").unwrap();
        std::fs::write(dir.join("top"), "x").unwrap();
        let first = loop {
            if let Reply::WatchEvent(e) = next(&mut r) {
                break e;
            }
        };
        assert_eq!(Path::new(&first.path), dir.join("top"));
        std::fs::remove_dir_all(&dir).unwrap();
        // The stream ends (End) once the root is gone.
        loop {
            match next(&mut r) {
                Reply::End => break,
                Reply::WatchEvent(_) => {}
                other => panic!("{other:?}"),
            }
        }
    }
}
