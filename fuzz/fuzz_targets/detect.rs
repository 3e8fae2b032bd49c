//! The detectors over a stream of observations (input format: [`crmguard_fuzz::detect`]).

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| crmguard_fuzz::detect::run(data));
