//! The whole per-packet engine over real TCP packets, with the table's bounds checked (input
//! format: [`crmguard_fuzz::engine`]).

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| crmguard_fuzz::engine::run(data));
