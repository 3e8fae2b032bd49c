//! crmguard's pure core: everything the product decides, with no kernel, socket or root.
//!
//! This crate holds the configuration (TOML to validated `Config`, every error with file, line,
//! column and key), policy compilation (`Config` to the exact map entries of the XDP program),
//! the ABI mirror of `ebpf/include/crmguard_abi.h`, the reference model of the XDP decision,
//! the ban list, the identity ACL and the answers to denied packets, the VPN's peer table and
//! keys, provisioning of the peers file, TOTP and MFA sessions, and the audit log's format,
//! chain, writer and verifier.
//!
//! It has no build script and depends on neither aya nor tokio: `cargo test -p crmguard-core`
//! runs as any user on a machine without clang. Its IO is limited to plain files the product
//! owns (`bans.json`, the peers file, MFA secrets and sessions, the audit log, the private key),
//! always replaced through [`atomic_file`]; everything else takes the time as an argument.

pub mod abi;
pub mod acl;
pub mod atomic_file;
pub mod audit;
pub mod bans;
pub mod config;
pub mod counters;
pub mod deny_table;
mod error_chain;
pub mod exit;
pub mod explain;
pub mod interfaces;
pub mod keys;
pub mod log_patterns;
pub mod mfa;
pub mod model;
pub mod peers;
pub mod policy;
pub mod provision;
pub mod time;

pub use error_chain::error_chain;
