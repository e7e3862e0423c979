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

#[cfg(test)]
mod tests {
    use super::*;

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
