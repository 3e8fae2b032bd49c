//! crmguard's privileged suite: one integration-test binary.
//!
//! Nearly every test here needs root and BPF; without them it reports `SKIP
//! name` and passes, unless CRMGUARD_REQUIRE_PRIVILEGED=1 (CI) makes that a
//! failure. The few that need neither (the golden packets run through the
//! reference model) run everywhere.

mod access;
mod alerts;
mod atomic;
mod attacks;
mod audit;
mod backup;
mod bans;
mod browser;
mod chaos;
mod confirm;
mod crowdsec;
mod detection;
mod detection_vpn;
mod differential;
mod disk_full;
mod established;
mod explain;
mod fallback;
mod fault_lab;
mod firewall;
mod golden;
mod inspection;
mod interfaces;
mod limits;
mod limits_fds;
mod lockout;
mod logsource;
mod many_peers;
mod metrics;
mod monitor;
mod privileges;
mod reconcile;
mod scale;
mod soak;
mod spoofed;
mod traffic;
mod verifier;
mod vpn;
mod wg_interop;
