//! crmguard: a host firewall (XDP at the NIC) and WireGuard gateway for
//! servers that hold customer data.
//!
//! The crate is a library plus the `crmguard` binary. Pure logic (config,
//! policy compilation, the ban list, the identity ACL, the VPN's peer table)
//! lives in modules that touch no kernel, socket or clock; only `datapath`,
//! `control`, `metrics`, `daemon`, `bans::persist` (the ban list's file), the
//! audit log's key, writer and verifier (`audit`), the MFA secrets, saved
//! sessions and portal (`mfa::secrets`, `mfa::store`, `mfa::portal`), the
//! daemon's MFA state (`access`, which saves sessions), the peers file
//! (`provision::document`) and the WireGuard endpoint's IO modules
//! (`vpn::endpoint`, `udp`, `tun`, `keys`, `state`, `uapi_server`) do IO.

pub mod abi;
pub mod access;
pub mod acl;
pub mod atomic_file;
pub mod audit;
pub mod bans;
pub mod config;
pub mod control;
pub mod daemon;
pub mod datapath;
pub mod exit;
pub mod metrics;
pub mod mfa;
pub mod model;
pub mod policy;
pub mod provision;
pub mod vpn;
