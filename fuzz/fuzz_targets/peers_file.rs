//! The peers file through the editor's and the loader's readers (checks:
//! [`crmguard_fuzz::peers_file`]).
//!
//! The seeds are made by crmguard's own code when `$CRMGUARD_FUZZ_SEEDS` names the corpus.

#![no_main]

libfuzzer_sys::fuzz_target!(
    init: crmguard_fuzz::seeds::write(crmguard_fuzz::peers_file::seeds),
    |data: &[u8]| crmguard_fuzz::peers_file::run(data)
);
