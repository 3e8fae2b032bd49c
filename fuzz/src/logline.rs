//! A log line against every built-in pattern and the address parser: whatever the bytes, no
//! panic, and an address found is one the line holds in some spelling.

use std::net::IpAddr;
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
            // holds the first group of one of its spellings.
            let lower = line.to_ascii_lowercase();
            assert!(
                first_groups(found.addr)
                    .iter()
                    .any(|group| lower.contains(group.as_str())),
                "{} found in a line that does not hold it: {line:?}",
                found.addr
            );
        }
    }
    let _ = parse_addr(&line);
}

/// The first group of each way a line may write `addr`: `192` of `192.0.2.1`, `2001` of
/// `2001:db8::1`; an IPv6 address whose first 96 bits are zero may be written with its last 32
/// bits dotted (`::7.0.0.1` is `::700:1`), so the first of those too.
fn first_groups(addr: IpAddr) -> Vec<String> {
    let text = addr.to_string();
    let mut groups = vec![text
        .split(['.', ':'])
        .find(|part| !part.is_empty())
        .unwrap_or("")
        .to_owned()];
    if let IpAddr::V6(v6) = addr {
        let octets = v6.octets();
        if octets[..12].iter().all(|&b| b == 0) {
            groups.push(octets[12].to_string());
        }
    }
    groups
}
