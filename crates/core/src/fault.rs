//! Fault injection for the crash-safety tests: with `SANDBOXD_FAULT=<point>` in its
//! environment, the daemon kills itself (SIGKILL: no destructor, no shutdown path runs) when it
//! reaches `point`. Points are named `<operation>.<step>`; see docs/architecture.md. Without the
//! variable, a point is one load of a cached `Option`.

use std::sync::OnceLock;

/// The variable naming the point to crash at.
pub const ENV: &str = "SANDBOXD_FAULT";

fn armed() -> Option<&'static str> {
    static POINT: OnceLock<Option<String>> = OnceLock::new();
    POINT
        .get_or_init(|| std::env::var(ENV).ok().filter(|s| !s.is_empty()))
        .as_deref()
}

/// Crashes the process here if `SANDBOXD_FAULT` names `point`.
pub fn point(point: &str) {
    if armed() == Some(point) {
        eprintln!("fault injection: crashing at {point}");
        // abort() would run no destructors either, but SIGKILL is what an OOM kill or
        // `kill -9` delivers; fall back to abort if the signal cannot be sent.
        let _ = std::process::Command::new("kill")
            .args(["-KILL", &std::process::id().to_string()])
            .status();
        std::process::abort();
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn an_unarmed_point_does_nothing() {
        // The test process has no SANDBOXD_FAULT; reaching a point must be harmless.
        assert!(std::env::var(super::ENV).is_err());
        super::point("capture.recorded");
    }
}
