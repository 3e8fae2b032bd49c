//! crmguard: a host firewall (XDP at the NIC) and WireGuard gateway for
//! servers that hold customer data.
//!
//! The crate is a library plus the `crmguard` binary. Pure logic (config,
//! policy compilation) lives in modules that touch no kernel, socket or
//! clock; only `datapath`, `control`, `metrics` and `daemon` do IO.

pub mod abi;
pub mod config;
pub mod control;
pub mod daemon;
pub mod datapath;
pub mod exit;
pub mod metrics;
pub mod policy;
