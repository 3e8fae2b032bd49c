//! The mysql parser: identify, analyze and watch over client and server bytes grown in steps
//! (input format: [`crmguard_fuzz::parser`]).

#![no_main]

use crmguard_inspect::Protocol;

libfuzzer_sys::fuzz_target!(|data: &[u8]| crmguard_fuzz::parser::run(Protocol::Mysql, data));
