//! The WireGuard endpoint's handling of datagrams before a handshake (input format and checks:
//! [`crmguard_fuzz::wg`]).
//!
//! The seeds are made by crmguard's own code when `$CRMGUARD_FUZZ_SEEDS` names the corpus.

#![no_main]

libfuzzer_sys::fuzz_target!(
    init: crmguard_fuzz::seeds::write(crmguard_fuzz::wg::seeds),
    |data: &[u8]| crmguard_fuzz::wg::run(data)
);
