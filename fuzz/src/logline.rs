//! A log line against every built-in pattern and the address parser: whatever the bytes, no
//! panic, and an address found is one the line holds in some spelling.

use std::sync::OnceLock;

use crmguard_core::log_patterns::{match_line, parse_addr, BUILTIN};
use regex::Regex;

fn patterns() -> &'static [Regex] {
    static PATTERNS: OnceLock<Vec<Regex>> = OnceLock::new();
    PATTERNS.get_or_init(|| {
        BUILTIN
            .iter()
            .filter_map(|(_, pattern)| Regex::new(pattern).ok())
            .collect()
    })
}

/// Feeds `data`, read as a line (not UTF-8 bytes replaced), to every pattern.
pub fn run(data: &[u8]) {
    let line = String::from_utf8_lossy(data);
    assert_eq!(
        patterns().len(),
        BUILTIN.len(),
        "a built-in pattern does not compile"
    );
    for pattern in patterns() {
        if let Some(found) = match_line(pattern, &line) {
            // IPv4-mapped addresses come back as IPv4, IPv6 in lower case; either way the line
            // holds the first group of it.
            let text = found.addr.to_string();
            let first = text
                .split(['.', ':'])
                .find(|part| !part.is_empty())
                .unwrap_or("");
            assert!(
                line.to_ascii_lowercase().contains(first),
                "{} found in a line that does not hold it: {line:?}",
                found.addr
            );
        }
    }
    let _ = parse_addr(&line);
}
