//! The configuration loader and the policy compile on arbitrary TOML text (checks: [`crmguard_fuzz::config`]).
//!
//! The seeds are made by crmguard's own code when `$CRMGUARD_FUZZ_SEEDS` names the corpus.

#![no_main]

libfuzzer_sys::fuzz_target!(
    init: crmguard_fuzz::seeds::write(crmguard_fuzz::config::seeds),
    |data: &[u8]| crmguard_fuzz::config::run(data)
);
