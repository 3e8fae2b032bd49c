//! crmguard, the daemon and its command line: the part of the product that runs.
//!
//! This crate puts the layers together. The decisions are the core's (`crmguard_core`), the
//! kernel side is the datapath's (`crmguard_datapath`) and the tunnel is the VPN crate's
//! (`crmguard_vpn`); here live the daemon that owns them (`daemon`), the control socket
//! (`control`), the endpoint that serves the Prometheus registry (`metrics`), the MFA portal
//! (`portal`), the one HTTP request reader of both (`http`), the bounded accept loop of all three
//! (`listen`), the daemon's MFA state (`access`), what staff read in English or Russian
//! (`i18n`, and the printed instructions for them in `handout`), backups of the gateway's state
//! (`backup`) and, in the binary, the CLI.

pub mod access;
pub mod alerts;
pub mod backup;
pub mod control;
pub mod crowdsec;
pub mod daemon;
pub mod handout;
pub mod http;
pub mod i18n;
pub mod inspection;
pub mod listen;
pub mod logsource;
pub mod metrics;
pub mod portal;
pub mod tally;
