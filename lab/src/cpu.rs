//! The calling thread pinned to one CPU until the guard drops: for measurements and checks of
//! per-CPU state that must not move between CPUs mid-way. Threads and processes it starts
//! meanwhile inherit the CPU.

use anyhow::{Context, Result};
use nix::sched::{sched_getaffinity, sched_setaffinity, CpuSet};
use nix::unistd::Pid;

/// The calling thread on `cpu` alone; drop gives it back its previous set.
pub struct Pinned {
    previous: CpuSet,
    pub cpu: usize,
}

impl Pinned {
    /// Pinned to the lowest-numbered CPU this thread may run on.
    pub fn first_allowed() -> Result<Pinned> {
        Self::pin(|allowed| (0..CpuSet::count()).find(|&c| allowed.is_set(c).unwrap_or(false)))
    }

    /// Pinned to the highest-numbered CPU this thread may run on.
    pub fn last_allowed() -> Result<Pinned> {
        Self::pin(|allowed| {
            (0..CpuSet::count())
                .rev()
                .find(|&c| allowed.is_set(c).unwrap_or(false))
        })
    }

    fn pin(choose: impl FnOnce(&CpuSet) -> Option<usize>) -> Result<Pinned> {
        let me = Pid::from_raw(0);
        let previous = sched_getaffinity(me).context("sched_getaffinity")?;
        let cpu = choose(&previous).context("no CPU in this thread's affinity set")?;
        let mut only = CpuSet::new();
        only.set(cpu)?;
        sched_setaffinity(me, &only).context("sched_setaffinity")?;
        Ok(Pinned { previous, cpu })
    }
}

impl Drop for Pinned {
    fn drop(&mut self) {
        if let Err(e) = sched_setaffinity(Pid::from_raw(0), &self.previous) {
            eprintln!("cannot give this thread back its CPUs: {e}");
        }
    }
}
