//! The reassembly of one direction against its model (input format: [`crmguard_fuzz::reasm`]).

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| crmguard_fuzz::reasm::run(data));
