//! crmguard's privileged suite: one integration-test binary.
//!
//! Every test here needs root and BPF; without them it reports `SKIP name`
//! and passes, unless CRMGUARD_REQUIRE_PRIVILEGED=1 (CI) makes that a failure.

mod atomic;
mod attacks;
mod bans;
mod established;
mod firewall;
mod golden;
mod limits;
mod monitor;
mod reconcile;
mod traffic;
