//! crmguard: a host firewall (XDP at the NIC) and WireGuard gateway for
//! servers that hold customer data.
//!
//! The crate is a library plus the `crmguard` binary. Pure logic (config,
//! policy compilation, the ban list) lives in modules that touch no kernel,
//! socket or clock; only `datapath`, `control`, `metrics`, `daemon` and
//! `bans::persist` (the ban list's file) do IO.

pub mod abi;
pub mod bans;
pub mod config;
pub mod control;
pub mod daemon;
pub mod datapath;
pub mod exit;
pub mod metrics;
pub mod model;
pub mod policy;
