//! The control socket's request decoding and attribution (checks: [`crmguard_fuzz::control`]).
//!
//! The seeds are made by crmguard's own code when `$CRMGUARD_FUZZ_SEEDS` names the corpus.

#![no_main]

libfuzzer_sys::fuzz_target!(
    init: crmguard_fuzz::seeds::write(crmguard_fuzz::control::seeds),
    |data: &[u8]| crmguard_fuzz::control::run(data)
);
