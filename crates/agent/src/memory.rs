//! Resident memory of every process in the sandbox, read from `/proc`.

/// One process's resident set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcMem {
    pub pid: i32,
    pub pgid: i32,
    pub rss: u64,
}

const PAGE: u64 = 4096;

/// Parses `/proc/<pid>/stat` for the process group (field 5, after the `comm` in parens).
fn pgid_of(stat: &str) -> Option<i32> {
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(2)?.parse().ok()
}

/// Parses `/proc/<pid>/statm` for the resident pages (field 2).
fn rss_of(statm: &str) -> Option<u64> {
    statm
        .split_whitespace()
        .nth(1)?
        .parse::<u64>()
        .ok()
        .map(|p| p * PAGE)
}

pub fn scan() -> Vec<ProcMem> {
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    rd.filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
            Some(ProcMem {
                pid,
                pgid: pgid_of(&stat)?,
                rss: rss_of(&statm)?,
            })
        })
        .collect()
}

/// Watchdog period while memory is near the limit: today's reaction time.
pub const FAST: std::time::Duration = std::time::Duration::from_millis(20);
/// Watchdog period while memory is far below the limit.
pub const SLOW: std::time::Duration = std::time::Duration::from_millis(250);
/// Headroom below the limit needed for [`SLOW`] ticks: filling it within one slow tick
/// takes over 2 GB/s, faster than a process grows memory under gVisor.
pub const SLOW_HEADROOM: u64 = 512 << 20;
/// Watchdog period while it has no limit.
pub const OFF: std::time::Duration = std::time::Duration::from_millis(500);
/// Above this share of the limit (percent) the watchdog walks `/proc` every tick.
pub const SCAN_PCT: u64 = 80;
/// Below this share of the limit (percent), and [`SLOW_HEADROOM`] away from it, the watchdog
/// ticks at [`SLOW`].
pub const NEAR_PCT: u64 = 50;

/// What the watchdog does this tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    /// Walk `/proc` and add up the processes' resident memory.
    pub scan: bool,
    /// Sleep before the next tick.
    pub next: std::time::Duration,
}

/// Decides a tick from the cheap total `used` (all memory in use, an upper bound of what
/// the processes hold, or `None` when it could not be read) and the `limit`.
pub fn plan(used: Option<u64>, limit: u64) -> Plan {
    let Some(used) = used else {
        return Plan {
            scan: true,
            next: FAST,
        };
    };
    let pct = (used as u128 * 100 / (limit.max(1)) as u128) as u64;
    let far = pct < NEAR_PCT && limit.saturating_sub(used) >= SLOW_HEADROOM;
    Plan {
        scan: pct >= SCAN_PCT,
        next: if far { SLOW } else { FAST },
    }
}

/// `/proc/meminfo`, kept open and re-read from offset 0 each tick (one syscall).
pub struct Meminfo {
    file: std::fs::File,
    buf: Vec<u8>,
}

impl Meminfo {
    pub fn open() -> Option<Meminfo> {
        Some(Meminfo {
            file: std::fs::File::open("/proc/meminfo").ok()?,
            buf: vec![0u8; 8192],
        })
    }

    /// Memory in use: `MemTotal - MemFree` (under gVisor, the sandbox's whole usage).
    pub fn used(&mut self) -> Option<u64> {
        use std::os::unix::fs::FileExt;
        let n = self.file.read_at(&mut self.buf, 0).ok()?;
        meminfo_used(std::str::from_utf8(&self.buf[..n]).ok()?)
    }
}

/// Parses `MemTotal - MemFree` (bytes) out of `/proc/meminfo`.
pub fn meminfo_used(text: &str) -> Option<u64> {
    let field = |name: &str| -> Option<u64> {
        let line = text.lines().find(|l| l.starts_with(name))?;
        let kb: u64 = line[name.len()..]
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()?;
        Some(kb * 1024)
    };
    Some(field("MemTotal:")?.saturating_sub(field("MemFree:")?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watchdog_scans_only_near_the_limit() {
        const G: u64 = 1 << 30;
        // Unknown usage: as before, a scan every 20 ms.
        assert_eq!(
            plan(None, G),
            Plan {
                scan: true,
                next: FAST
            }
        );
        // Far below: no scan, slow ticks.
        assert_eq!(
            plan(Some(G / 10), G),
            Plan {
                scan: false,
                next: SLOW
            }
        );
        // A small limit leaves too little headroom for slow ticks.
        assert_eq!(
            plan(Some(1 << 20), 256 << 20),
            Plan {
                scan: false,
                next: FAST
            }
        );
        // Getting near: fast ticks, still no scan.
        assert_eq!(
            plan(Some(G * 6 / 10), G),
            Plan {
                scan: false,
                next: FAST
            }
        );
        // Near or over: scan every fast tick.
        assert_eq!(
            plan(Some(G / 100 * 81), G),
            Plan {
                scan: true,
                next: FAST
            }
        );
        assert_eq!(
            plan(Some(3 * G), G),
            Plan {
                scan: true,
                next: FAST
            }
        );
        assert!(plan(Some(u64::MAX), 1).scan);
    }

    #[test]
    fn meminfo_used_is_total_minus_free() {
        let t = "MemTotal:        2048 kB\nMemFree:          512 kB\nMemAvailable:    1024 kB\n";
        assert_eq!(meminfo_used(t), Some(1536 * 1024));
        assert_eq!(meminfo_used("MemTotal: 1 kB\n"), None);
        assert!(Meminfo::open()
            .and_then(|mut m| m.used())
            .is_some_and(|u| u > 0));
    }

    #[test]
    fn parses_proc_files() {
        assert_eq!(pgid_of("42 (a b) c) S 1 40 40 0 -1"), Some(40));
        assert_eq!(rss_of("1000 250 10 1 0 100 0"), Some(250 * 4096));
        assert_eq!(pgid_of("garbage"), None);
    }

    #[test]
    fn scan_sees_this_process() {
        let me = std::process::id() as i32;
        let all = scan();
        let mine = all
            .iter()
            .find(|p| p.pid == me)
            .expect("own process listed");
        assert!(mine.rss > 0);
    }
}
