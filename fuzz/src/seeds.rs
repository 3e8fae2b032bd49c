//! Seed inputs that need crmguard's own code to make: real WireGuard handshake messages from
//! boringtun, a real audit log from the audit writer, real control requests from their serde
//! encoding. A target built with [`libfuzzer_sys::fuzz_target!`]'s `init:` calls [`write`]
//! before libFuzzer reads its corpus; `cargo xtask fuzz` names the corpus directory in
//! [`SEEDS_ENV`], so the seeds are written again before each run (as `fixture-*`, the names
//! the corpus minimization keeps) and never at any other time.

use std::path::PathBuf;

/// The environment variable naming the directory the seeds are written to.
pub const SEEDS_ENV: &str = "CRMGUARD_FUZZ_SEEDS";

/// Writes `make()`'s seeds into `$CRMGUARD_FUZZ_SEEDS` when it is set; does nothing otherwise.
///
/// A seed that cannot be written stops the run: a target that silently starts without its
/// seeds covers much less than it claims.
pub fn write(make: fn() -> Vec<(String, Vec<u8>)>) {
    let Some(dir) = std::env::var_os(SEEDS_ENV).map(PathBuf::from) else {
        return;
    };
    for (name, bytes) in make() {
        let path = dir.join(format!("fixture-{name}"));
        if let Err(e) = std::fs::write(&path, bytes) {
            panic!("cannot write the seed {}: {e}", path.display());
        }
    }
}
