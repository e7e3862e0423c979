//! The sandbox lifecycle: every state and every allowed transition lives here.

use serde::{Deserialize, Serialize};

use crate::CoreError;

/// Where a sandbox is in its life. Transitional states (`Starting`, `Snapshotting`, `Pausing`,
/// `Resuming`, `Stopping`, `Deleting`) are held while the engine works and never survive a restart
/// of the daemon: reconciliation moves them to a settled state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SandboxState {
    Starting,
    Running,
    Snapshotting,
    Pausing,
    Paused,
    Resuming,
    Stopping,
    Stopped,
    Failed,
    Deleting,
}

/// Operations whose admission depends on the state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Exec,
    Snapshot,
    Pause,
    Resume,
    Stop,
    Start,
    Delete,
}

impl Op {
    fn verb(self) -> &'static str {
        match self {
            Op::Exec => "run processes in",
            Op::Snapshot => "snapshot",
            Op::Pause => "pause",
            Op::Resume => "resume",
            Op::Stop => "stop",
            Op::Start => "start",
            Op::Delete => "delete",
        }
    }
}

impl SandboxState {
    pub fn as_str(self) -> &'static str {
        match self {
            SandboxState::Starting => "starting",
            SandboxState::Running => "running",
            SandboxState::Snapshotting => "snapshotting",
            SandboxState::Pausing => "pausing",
            SandboxState::Paused => "paused",
            SandboxState::Resuming => "resuming",
            SandboxState::Stopping => "stopping",
            SandboxState::Stopped => "stopped",
            SandboxState::Failed => "failed",
            SandboxState::Deleting => "deleting",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        use SandboxState::*;
        [
            Starting,
            Running,
            Snapshotting,
            Pausing,
            Paused,
            Resuming,
            Stopping,
            Stopped,
            Failed,
            Deleting,
        ]
        .into_iter()
        .find(|st| st.as_str() == s)
    }

    /// True while the engine is moving the sandbox between settled states.
    pub fn is_transitional(self) -> bool {
        matches!(
            self,
            SandboxState::Starting
                | SandboxState::Snapshotting
                | SandboxState::Pausing
                | SandboxState::Resuming
                | SandboxState::Stopping
                | SandboxState::Deleting
        )
    }

    /// True when the sandbox should have a live runsc container.
    pub fn expects_container(self) -> bool {
        matches!(self, SandboxState::Running | SandboxState::Snapshotting)
    }

    pub fn can(self, op: Op) -> bool {
        use SandboxState::*;
        match op {
            Op::Exec => matches!(self, Running | Snapshotting),
            Op::Snapshot | Op::Pause => self == Running,
            Op::Resume | Op::Start => matches!(self, Paused | Stopped),
            Op::Stop => matches!(self, Running | Paused),
            Op::Delete => self != Deleting,
        }
    }

    /// `Ok(())` if `op` is allowed now, else a conflict naming the current state.
    pub fn check(self, op: Op) -> Result<(), CoreError> {
        if self.can(op) {
            Ok(())
        } else {
            Err(CoreError::Conflict(format!(
                "cannot {} a sandbox that is {}",
                op.verb(),
                self.as_str()
            )))
        }
    }

    /// The settled state a sandbox in `self` is put in after a daemon restart, given whether its
    /// container is still alive.
    pub fn after_restart(self, container_alive: bool) -> SandboxState {
        use SandboxState::*;
        match (self, container_alive) {
            (Running | Snapshotting | Starting | Resuming, true) => Running,
            (Pausing, true) => Running,
            // The container is gone: its files are intact, so the sandbox is paused (the engine
            // decides whether a memory image can be trusted).
            (Pausing | Resuming, false) => Paused,
            (Paused, _) => Paused,
            (Stopped, _) => Stopped,
            (Stopping, _) => Stopped,
            (Deleting, _) => Deleting,
            (_, _) => Failed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_running_sandboxes_exec_and_snapshot() {
        for st in [
            SandboxState::Starting,
            SandboxState::Paused,
            SandboxState::Stopped,
            SandboxState::Failed,
            SandboxState::Deleting,
        ] {
            assert!(!st.can(Op::Exec), "{st:?}");
            assert!(!st.can(Op::Snapshot), "{st:?}");
        }
        assert!(SandboxState::Running.can(Op::Exec));
    }

    #[test]
    fn conflict_names_the_state() {
        let err = SandboxState::Paused.check(Op::Snapshot).unwrap_err();
        assert_eq!(
            err,
            CoreError::Conflict("cannot snapshot a sandbox that is paused".into())
        );
    }

    #[test]
    fn names_round_trip() {
        for st in [
            SandboxState::Starting,
            SandboxState::Running,
            SandboxState::Paused,
            SandboxState::Deleting,
            SandboxState::Failed,
        ] {
            assert_eq!(SandboxState::parse(st.as_str()), Some(st));
        }
        assert_eq!(SandboxState::parse("bogus"), None);
    }

    #[test]
    fn restart_settles_transitional_states() {
        assert_eq!(
            SandboxState::Running.after_restart(false),
            SandboxState::Failed
        );
        assert_eq!(
            SandboxState::Running.after_restart(true),
            SandboxState::Running
        );
        assert_eq!(
            SandboxState::Starting.after_restart(false),
            SandboxState::Failed
        );
        assert_eq!(
            SandboxState::Paused.after_restart(false),
            SandboxState::Paused
        );
        // A pause or resume cut short leaves a paused sandbox, never a failed one.
        assert_eq!(
            SandboxState::Pausing.after_restart(false),
            SandboxState::Paused
        );
        assert_eq!(
            SandboxState::Resuming.after_restart(false),
            SandboxState::Paused
        );
        for st in [
            SandboxState::Starting,
            SandboxState::Snapshotting,
            SandboxState::Pausing,
            SandboxState::Resuming,
            SandboxState::Stopping,
        ] {
            assert!(!st.after_restart(true).is_transitional() || st == SandboxState::Deleting);
            assert!(!st.after_restart(false).is_transitional());
        }
    }
}
