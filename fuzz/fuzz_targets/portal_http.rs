//! The HTTP request reader and the MFA portal's answers (input format and checks:
//! [`crmguard_fuzz::portal`]).
//!
//! The seeds are made by crmguard's own code when `$CRMGUARD_FUZZ_SEEDS` names the corpus.

#![no_main]

libfuzzer_sys::fuzz_target!(
    init: crmguard_fuzz::seeds::write(crmguard_fuzz::portal::seeds),
    |data: &[u8]| crmguard_fuzz::portal::run(data)
);
