//! A log line against the built-in patterns (input format: [`crmguard_fuzz::logline`]).

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| crmguard_fuzz::logline::run(data));
