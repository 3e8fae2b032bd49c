//! Exit codes of the `crmguard` command (CONTRACT.md section 2).

/// Success.
pub const OK: u8 = 0;
/// A runtime failure.
pub const FAILURE: u8 = 1;
/// Bad usage or a bad configuration (sysexits EX_USAGE).
pub const USAGE: u8 = 64;
/// The kernel lacks something crmguard needs (sysexits EX_UNAVAILABLE).
pub const UNAVAILABLE: u8 = 69;
