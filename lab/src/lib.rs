//! The harness of crmguard's privileged suite.
//!
//! It builds network namespaces joined by veth pairs, runs the `crmguard` daemon inside them the
//! way production runs it (network namespace entered, host mount namespace kept, so pinned XDP
//! links outlive the process), and drives real TCP/UDP traffic and raw Ethernet frames through
//! the XDP program. Every object it creates is owned by a guard whose `Drop` removes it, also
//! when a test fails, and every name is unique so tests can run in parallel.
//!
//! The harness knows nothing about policy decisions: the scenarios in `tests/suite/` state what
//! the firewall must do, the harness only makes it observable.
//!
//! `cargo xtask demo` and the bench build their labs from the same pieces (namespaces they name
//! themselves, veth pairs, programs logged to one file and stopped on drop, bpffs), so that
//! xtask, which must build without clang, depends on this crate and never on the agent's.

pub mod agent;
pub mod alerting;
pub mod browser;
pub mod cmd;
pub mod cpu;
pub mod flood;
pub mod frames;
pub mod net;
pub mod netns;
pub mod privileged;
pub mod process;
pub mod servers;
pub mod topology;
pub mod totp;
pub mod wait;
pub mod wg;
pub mod workspace;

use std::sync::atomic::{AtomicU32, Ordering};

/// A name fragment unique within this machine for the lifetime of the test process: the process
/// id plus a per-process counter, in hex to keep interface names under 15 bytes.
pub(crate) fn unique_suffix() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{:x}x{:x}", std::process::id(), n)
}
