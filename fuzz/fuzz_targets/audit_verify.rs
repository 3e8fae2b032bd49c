//! The audit verifier on arbitrary bytes and on real logs with one change (input format and
//! checks: [`crmguard_fuzz::audit`]).
//!
//! The seeds are made by crmguard's own code when `$CRMGUARD_FUZZ_SEEDS` names the corpus.

#![no_main]

libfuzzer_sys::fuzz_target!(
    init: crmguard_fuzz::seeds::write(crmguard_fuzz::audit::seeds),
    |data: &[u8]| crmguard_fuzz::audit::run(data)
);
