//! What crmguard's inspection fuzz targets do with their input, one module per kind of target.
//! The targets in `fuzz_targets/` are one line each; the input formats and the checks live
//! here so that every parser target reads its bytes the same way.
//!
//! - [`parser`]: one protocol parser over client and server bytes that grow in steps.
//! - [`engine`]: [`crmguard_inspect::Inspector::packet`] over a sequence of real IPv4 and IPv6
//!   TCP packets, with the table's bounds checked after each one.
//! - [`reasm`]: [`crmguard_inspect::reasm::Reassembly`] against a byte-by-byte model.
//! - [`detect`]: the detectors over a stream of observations, with their bounds checked.
//! - [`logline`]: log lines against the built-in patterns.
//!
//! And what an attacker or a broken file hands the agent:
//!
//! - [`config`]: the configuration loader and the policy compile on arbitrary TOML.
//! - [`wg`]: the WireGuard endpoint's handling of datagrams before any handshake.
//! - [`portal`]: the HTTP request reader and the MFA portal's answers.
//! - [`audit`]: the audit verifier on arbitrary bytes and on real logs with one change.
//! - [`peers_file`]: the peers file, through the editor's and the loader's readers.
//! - [`control`]: the control socket's request decoding and attribution.
//!
//! `cargo xtask fuzz` writes the seed inputs of the inspection targets (the captures in
//! `inspect/fixtures/`) in these formats; a change here must change its packing too. The
//! other targets make their seeds with crmguard's own code ([`seeds`]).

#![forbid(unsafe_code)]

pub mod audit;
pub mod config;
pub mod control;
pub mod detect;
pub mod engine;
pub mod logline;
pub mod packet;
pub mod parser;
pub mod peers_file;
pub mod portal;
pub mod reasm;
pub mod seeds;
pub mod wg;

/// A big-endian `u16` at `at`, or 0 past the end.
fn be16(data: &[u8], at: usize) -> u16 {
    match data.get(at..at + 2) {
        Some(&[a, b]) => u16::from_be_bytes([a, b]),
        _ => 0,
    }
}

/// A big-endian `u32` at `at`, or 0 past the end.
fn be32(data: &[u8], at: usize) -> u32 {
    match data.get(at..at + 4) {
        Some(&[a, b, c, d]) => u32::from_be_bytes([a, b, c, d]),
        _ => 0,
    }
}
