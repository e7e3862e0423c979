//! Compute size of a sandbox, in units that both API dialects convert to.

use serde::{Deserialize, Serialize};

/// CPU in thousandths of a core, memory and disk in MiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resources {
    pub cpu_millis: u32,
    pub memory_mib: u32,
    pub disk_mib: u32,
}

impl Default for Resources {
    fn default() -> Self {
        Resources {
            cpu_millis: 1000,
            memory_mib: 1024,
            disk_mib: 10 * 1024,
        }
    }
}

impl Resources {
    pub fn cpu_cores(&self) -> f64 {
        f64::from(self.cpu_millis) / 1000.0
    }
    pub fn memory_bytes(&self) -> u64 {
        u64::from(self.memory_mib) * 1024 * 1024
    }
    pub fn disk_bytes(&self) -> u64 {
        u64::from(self.disk_mib) * 1024 * 1024
    }
}
