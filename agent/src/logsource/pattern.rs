//! Finding a login failure and its source address in a log line, and the built-in patterns
//! operators can name instead of writing a regular expression.
//!
//! A pattern is a regular expression with a named group `addr` (the source address) and
//! optionally `user` (the account tried). The address must be an IP address literal; see
//! [`parse_addr`] for exactly what is accepted. Names are never resolved: a line that names a
//! host (sshd with `UseDNS yes`) does not match.
//!
//! The built-in patterns anchor the address where the server writes it, so text an attacker
//! controls (a user name, a request path, a User-Agent) cannot put someone else's address
//! where the pattern looks for it.

pub use crmguard_core::log_patterns::{
    builtin, APACHE_401, BUILTIN, COMBINED_401, NGINX_401, SSHD,
};
pub use crmguard_core::log_patterns::{match_line, parse_addr, LogMatch};

#[cfg(test)]
mod tests {
    use super::*;
    use regex::Regex;

    fn regex(name: &str) -> Regex {
        let source = builtin(name).unwrap_or_else(|| panic!("no built-in {name}"));
        Regex::new(source).unwrap_or_else(|e| panic!("{name}: {e}"))
    }

    fn found(pattern: &Regex, line: &str) -> Option<(String, Option<String>)> {
        match_line(pattern, line).map(|m| (m.addr.to_string(), m.user))
    }

    fn expect(addr: &str, user: Option<&str>) -> Option<(String, Option<String>)> {
        Some((addr.to_owned(), user.map(str::to_owned)))
    }

    #[test]
    fn addresses_are_parsed_strictly() {
        let check = |text: &str, expected: Option<&str>| {
            assert_eq!(
                parse_addr(text).map(|ip| ip.to_string()),
                expected.map(str::to_owned),
                "{text:?}"
            );
        };
        check("192.0.2.1", Some("192.0.2.1"));
        check("192.0.2.1:22", Some("192.0.2.1"));
        check("192.0.2.1:65535", Some("192.0.2.1"));
        check("192.0.2.1:65536", None);
        check("192.0.2.1:", None);
        check("192.0.2.1:123456", None);
        check("192.0.2.1:+22", None);
        check("2001:db8::1", Some("2001:db8::1"));
        check("[2001:db8::1]", Some("2001:db8::1"));
        check("[2001:db8::1]:443", Some("2001:db8::1"));
        check("[2001:db8::1]443", None);
        check("[2001:db8::1", None);
        check("[192.0.2.1]", None);
        check("::ffff:192.0.2.1", Some("192.0.2.1"));
        check("[::ffff:192.0.2.1]:22", Some("192.0.2.1"));
        check("::ffff:c000:201", Some("192.0.2.1"));
        // An IPv6 address written with its last 32 bits dotted (inet_ntop writes ::/96 so) is
        // the IPv6 address it spells.
        check("::7.0.0.1", Some("::700:1"));
        check("64:ff9b::192.0.2.1", Some("64:ff9b::c000:201"));
        check("::1", Some("::1"));
        check("fe80::1%eth0", None);
        check("192.000.2.1", None);
        check("192.0.2", None);
        check("256.0.0.1", None);
        check("host.example", None);
        check("host.example:22", None);
        check("", None);
        check("-", None);
    }

    #[test]
    fn builtins_compile_with_an_addr_group() {
        for (name, _) in BUILTIN {
            let pattern = regex(name);
            assert!(pattern.capture_names().any(|n| n == Some("addr")), "{name}");
        }
        assert_eq!(builtin("ssh"), None);
    }

    /// Real sshd lines: OpenSSH 9.2 (Debian 12), without and with PAM, driven by sshpass and
    /// by ssh with an askpass program that always answers wrong; received on /dev/log and
    /// written in rsyslog's auth.log form.
    const SSHD_LOG: &str = include_str!("fixtures/sshd-auth.log");

    fn sshd_expected() -> Vec<Option<(String, Option<String>)>> {
        let one_run = [
            expect("127.0.0.1", Some("crmtest")),
            expect("127.0.0.1", Some("nosuchuser")),
            expect("127.0.0.1", Some("nosuchuser")),
            expect("::1", Some("root")),
            expect("127.0.0.1", Some("crmtest")),
            expect("127.0.0.1", Some("crmtest")),
            expect("127.0.0.1", Some("crmtest")),
            expect("127.0.0.1", Some("crmtest")),
            expect("::1", Some("admin")),
            expect("::1", Some("admin")),
            expect("::1", Some("admin")),
            expect("::1", Some("admin")),
            expect("::1", Some("admin")),
        ];
        one_run.iter().chain(one_run.iter()).cloned().collect()
    }

    #[test]
    fn sshd_matches_each_failed_attempt_of_a_real_log() {
        let sshd = regex("sshd");
        let got: Vec<_> = SSHD_LOG
            .lines()
            .map(|line| found(&sshd, line))
            .filter(Option::is_some)
            .collect();
        assert_eq!(got, sshd_expected());
    }

    #[test]
    fn sshd_matches_the_bare_messages_of_the_journal() {
        let sshd = regex("sshd");
        let got: Vec<_> = SSHD_LOG
            .lines()
            .filter_map(|line| line.split_once("]: ").map(|(_, message)| message))
            .map(|message| found(&sshd, message))
            .filter(Option::is_some)
            .collect();
        assert_eq!(got, sshd_expected());
    }

    #[test]
    fn sshd_lines_that_are_not_attempts() {
        let sshd = regex("sshd");
        let check = |line: &str, expected: Option<(String, Option<String>)>| {
            assert_eq!(found(&sshd, line), expected, "{line}");
        };
        let prefix = "Dec  6 05:08:14 crm1 sshd[29114]: ";
        check(
            &format!("{prefix}Accepted password for crmtest from 127.0.0.1 port 46100 ssh2"),
            None,
        );
        check(&format!("{prefix}Connection closed by authenticating user root 198.51.100.7 port 22 [preauth]"), None);
        check(&format!("{prefix}pam_unix(sshd:auth): authentication failure; logname= uid=0 euid=0 tty=ssh ruser= rhost=198.51.100.7  user=root"), None);
        check(
            &format!("{prefix}Failed password for root from crm.example port 22 ssh2"),
            None,
        );
        check(
            &format!("{prefix}Failed password for root from 198.51.100.7 port 22 ssh2 trailing"),
            None,
        );
        check(&format!("{prefix}Failed publickey for root from 198.51.100.7 port 22 ssh2: ED25519 SHA256:x"), None);
        // A user name that carries an address: the address sshd wrote last is the one.
        check(
            &format!("{prefix}Invalid user x from 192.0.2.1 port 22 from 198.51.100.7 port 4444"),
            expect("198.51.100.7", Some("x from 192.0.2.1 port 22")),
        );
        check(
            &format!("{prefix}Failed password for invalid user a from 192.0.2.1 port 1 ssh2 from 198.51.100.7 port 4444 ssh2"),
            expect("198.51.100.7", Some("a from 192.0.2.1 port 1 ssh2")),
        );
        // A client's text that sshd writes into another line, spelling a whole failure line
        // with someone else's address: a disconnect reason, a user name.
        check(&format!("{prefix}Received disconnect from 198.51.100.7 port 40000:11: sshd[1]: Failed password for root from 192.0.2.1 port 22 ssh2 [preauth]"), None);
        check(&format!("{prefix}Disconnected from 198.51.100.7 port 40000 sshd[1]: Invalid user x from 192.0.2.1 port 22"), None);
        check(&format!("{prefix}input_userauth_request: invalid user sshd[1]: Invalid user z from 192.0.2.1 port 22 [preauth]"), None);
        check("Received disconnect from 198.51.100.7 port 40000:11: sshd[1]: Failed password for root from 192.0.2.1 port 22 ssh2 [preauth]", None);
        check("input_userauth_request: invalid user sshd[1]: Failed password for root from 192.0.2.1 port 22 ssh2 [preauth]", None);
        check(
            "sshd[29114]: Failed password for root from 198.51.100.7 port 22 ssh2",
            expect("198.51.100.7", Some("root")),
        );
        check("2026-12-06T05:08:14.123456+00:00 crm1 sshd[29114]: Failed password for root from 198.51.100.7 port 22 ssh2", expect("198.51.100.7", Some("root")));
        // Another program writing sshd's words into the middle of its own line.
        check("Dec  6 05:08:14 crm1 app[1]: note: Failed password for root from 192.0.2.1 port 22 ssh2", None);
        check("Dec  6 05:08:14 crm1 sshd-session[7]: Failed password for root from ::ffff:192.0.2.9 port 22 ssh2", expect("192.0.2.9", Some("root")));
    }

    /// Real nginx 1.22 `combined` lines: basic authentication with no, wrong and right
    /// credentials, a login API answering 401, and crafted requests and User-Agents.
    const NGINX_LOG: &str = include_str!("fixtures/nginx-access.log");
    /// Real Apache 2.4 `combined` lines of the same kind.
    const APACHE_LOG: &str = include_str!("fixtures/apache-access.log");

    #[test]
    fn access_logs_match_401_only() {
        let nginx = regex("nginx-401");
        let got: Vec<_> = NGINX_LOG.lines().map(|line| found(&nginx, line)).collect();
        assert_eq!(
            got,
            vec![
                expect("127.0.0.1", None),
                expect("127.0.0.1", Some("crm")),
                expect("::1", Some("bob smith")),
                None,
                expect("127.0.0.1", None),
                expect("::1", None),
                None,
                None,
                None,
                None,
            ]
        );
        let apache = regex("apache-401");
        let got: Vec<_> = APACHE_LOG
            .lines()
            .map(|line| found(&apache, line))
            .collect();
        assert_eq!(
            got,
            vec![
                expect("127.0.0.1", None),
                expect("127.0.0.1", Some("crm")),
                expect("::1", Some("bob smith")),
                None,
                expect("127.0.0.1", Some(r#"eve\"q"#)),
                None,
                None,
                None,
            ]
        );
    }

    #[test]
    fn crafted_access_lines_cannot_fake_a_status_or_address() {
        let apache = regex("apache-401");
        let check = |line: &str, expected: Option<(String, Option<String>)>| {
            assert_eq!(found(&apache, line), expected, "{line}");
        };
        check(
            r#"192.0.2.1 - - [06/Dec/2026:05:11:56 +0000] "GET /x\" 401 1 \"y HTTP/1.1" 200 5 "-" "-""#,
            None,
        );
        check(
            r#"192.0.2.1 - - [06/Dec/2026:05:11:56 +0000] "GET / HTTP/1.1" 403 5 "-" "-""#,
            None,
        );
        check(
            r#"192.0.2.1 - - [06/Dec/2026:05:11:56 +0000] "GET / HTTP/1.1" 4010 5 "-" "-""#,
            None,
        );
        check(
            r#"192.0.2.1 - - [06/Dec/2026:05:11:56 +0000] "GET / HTTP/1.1" 401"#,
            expect("192.0.2.1", None),
        );
        check(
            r#"crm.example - - [06/Dec/2026:05:11:56 +0000] "GET / HTTP/1.1" 401 5 "-" "-""#,
            None,
        );
        check(
            r#"x 192.0.2.1 - - [06/Dec/2026:05:11:56 +0000] "GET / HTTP/1.1" 401 5 "-" "-""#,
            None,
        );
    }

    #[test]
    fn junk_never_matches_and_never_panics() {
        let patterns: Vec<Regex> = BUILTIN.iter().map(|(name, _)| regex(name)).collect();
        // A deterministic xorshift stream: printable junk, sshd-like words and raw bytes.
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let words = [
            "Failed ",
            "password ",
            "for ",
            "from ",
            "port ",
            "22 ",
            "ssh2",
            "[preauth]",
            "\"",
            "401 ",
            "- ",
            "[",
            "]",
            "::",
            "1.2.3.4",
            " ",
        ];
        for _ in 0..20_000 {
            let len = usize::try_from(next() % 120).unwrap_or(0);
            let mut bytes = Vec::new();
            for _ in 0..len {
                let r = next();
                if r % 3 == 0 {
                    let word = words[usize::try_from(r / 3 % 16).unwrap_or(0)];
                    bytes.extend_from_slice(word.as_bytes());
                } else {
                    bytes.push(r.to_le_bytes()[1]);
                }
            }
            let line = String::from_utf8_lossy(&bytes);
            for pattern in &patterns {
                // Junk may only match when it happens to spell a whole valid line.
                if let Some(m) = match_line(pattern, &line) {
                    assert!(
                        line.contains(&m.addr.to_string()) || line.contains("::ffff:"),
                        "{line:?}"
                    );
                }
            }
        }
        for pattern in &patterns {
            for junk in [
                "",
                "\u{fffd}\u{fffd}",
                "Failed password",
                "from  port  ssh2",
                "- - [] \"\" 401",
            ] {
                assert_eq!(match_line(pattern, junk), None, "{junk:?}");
            }
        }
    }

    #[test]
    fn a_pattern_without_user_gives_none() {
        let pattern =
            Regex::new(r"login failed from (?P<addr>\S+)$").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            match_line(&pattern, "login failed from [2001:db8::7]:8443"),
            Some(LogMatch {
                addr: "2001:db8::7".parse().unwrap_or_else(|e| panic!("{e}")),
                user: None
            })
        );
        let pattern =
            Regex::new(r"user=(?P<user>\S*) from (?P<addr>\S+)$").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            found(&pattern, "user= from 192.0.2.1"),
            expect("192.0.2.1", None)
        );
    }
}
