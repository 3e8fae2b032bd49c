//! The login-failure patterns crmguard knows by name, for `[[detection.log_source]]
//! pattern = "sshd"` and the like. Each is a regular expression with a named group `addr` (the
//! source address) and optionally `user`; the agent's log sources match lines with them.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use regex::Regex;

/// A login failure found in a line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogMatch {
    /// The source address; IPv4-mapped IPv6 addresses are given as IPv4.
    pub addr: IpAddr,
    /// The account tried, when the pattern has a `user` group that matched something other
    /// than the empty string.
    pub user: Option<String>,
}

/// The login failure in `line`, if `pattern` matches it and its `addr` group holds an IP
/// address; `None` otherwise (also when the address is a host name or malformed).
pub fn match_line(pattern: &Regex, line: &str) -> Option<LogMatch> {
    let captures = pattern.captures(line)?;
    let addr = parse_addr(captures.name("addr")?.as_str())?;
    let user = captures
        .name("user")
        .map(|user| user.as_str())
        .filter(|user| !user.is_empty())
        .map(str::to_owned);
    Some(LogMatch { addr, user })
}

/// An address as log lines write it. Accepted, and nothing else:
///
/// - an IPv4 or IPv6 literal as Rust's standard library parses it (`192.0.2.1`,
///   `2001:db8::1`, `::ffff:192.0.2.1`; no leading zeros in IPv4, no zone index);
/// - an IPv4 literal with a port: `192.0.2.1:22`;
/// - an IPv6 literal in brackets, with or without a port: `[2001:db8::1]`, `[2001:db8::1]:22`.
///
/// A port is 1 to 5 digits with a value up to 65535. An IPv6 literal without brackets is never
/// split at a colon, as its last group cannot be told from a port. IPv4-mapped IPv6 addresses
/// (`::ffff:a.b.c.d`) come back as IPv4, so a client is one source whichever way a
/// dual-stack server wrote it.
pub fn parse_addr(text: &str) -> Option<IpAddr> {
    let ip = if let Some(rest) = text.strip_prefix('[') {
        let (inside, after) = rest.split_once(']')?;
        if !after.is_empty() && !is_port(after.strip_prefix(':')?) {
            return None;
        }
        IpAddr::V6(inside.parse::<Ipv6Addr>().ok()?)
    } else if let Ok(ip) = text.parse::<IpAddr>() {
        ip
    } else {
        let (host, port) = text.rsplit_once(':')?;
        if !is_port(port) {
            return None;
        }
        IpAddr::V4(host.parse::<Ipv4Addr>().ok()?)
    };
    Some(canonical(ip))
}

fn is_port(text: &str) -> bool {
    (1..=5).contains(&text.len())
        && text.bytes().all(|b| b.is_ascii_digit())
        && text.parse::<u16>().is_ok()
}

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

/// OpenSSH's sshd (`pattern = "sshd"`): one match per failed attempt, in auth.log form
/// (`... sshd[PID]: MESSAGE`, also `sshd-session[PID]`) and as the bare message that the
/// journal and `sshd -E` give. It matches:
///
/// - `Failed password for [invalid user ]USER from ADDR port N ssh2` (and
///   `keyboard-interactive/pam`): each wrong password;
/// - `Invalid user USER from ADDR port N`: a connection for an account that does not exist,
///   also when the scanner then sends no password at all;
/// - `error: maximum authentication attempts exceeded for [invalid user ]USER from ADDR port N
///   ssh2 [preauth]`: the end of a connection that used up `MaxAuthTries`, the only line of
///   public-key guessing.
///
/// It does not match lines that repeat an attempt already counted, so one mistyped password
/// counts once: `pam_unix(sshd:auth): authentication failure; ... rhost=ADDR` (written with
/// the `Failed password` line of the same attempt when sshd uses PAM),
/// `Connection closed by authenticating user USER ADDR port N [preauth]` (the client left
/// after failed attempts, or an administrator pressed Ctrl-C at the password prompt) and
/// `PAM N more authentication failures`. A wrong password for an unknown account counts twice
/// (`Invalid user` and `Failed password for invalid user`).
///
/// The address is the last `from ADDR port N` of the line (the message is anchored at its
/// end), because sshd writes the user name, which the client chooses, before it.
///
/// The message is anchored at its start too: the start of the line (the journal's bare
/// message), or right after sshd's tag, itself at the start of the line or after a syslog
/// header (a time, `Dec  6 05:08:14` or `2026-12-06T05:08:14.123456+00:00`, and a host name).
/// Text a client chooses and sshd writes at the end of other messages (a user name in
/// `input_userauth_request: invalid user USER [preauth]`, a disconnect reason in `Received
/// disconnect from ADDR port N:11: REASON`) may spell `sshd[1]: Failed password for root from
/// VICTIM port 22 ssh2`; it never starts the message, so it never names the address.
pub const SSHD: &str = concat!(
    r"^(?:(?:[A-Z][a-z]{2} +\d{1,2} \d{2}:\d{2}:\d{2}|\d{4}-\d{2}-\d{2}T[0-9:.]+(?:Z|[+-]\d{2}:?\d{2})) \S+ )?",
    r"(?:sshd(?:-session)?\[\d+\]: )?",
    r"(?:Failed (?:password|keyboard-interactive/pam) for |Invalid user |",
    r"error: maximum authentication attempts exceeded for )",
    r"(?:invalid user )?(?P<user>.*) from (?P<addr>\S+) port \d+(?: ssh2)?(?: \[preauth\])?$",
);

/// The combined access log format of nginx and Apache with status 401, on any path and with
/// any method (`pattern = "nginx-401"` or `"apache-401"`; the two formats are the same).
///
/// 401 is what HTTP basic authentication answers to wrong credentials and what CRM login
/// APIs answer to a wrong password; a login form that answers 200 with an error page cannot be
/// told from a success in an access log. 403 (authenticated but not allowed) is not a login
/// failure and is not matched. The bare challenge a browser gets before it sends credentials
/// is a 401 too and counts once per visit to a protected area.
///
/// The address is the line's first field (`$remote_addr`, `%h`): behind a reverse proxy it is
/// the proxy's, unless the server logs the client's. The request and the user are quoted or
/// escaped by both servers (nginx writes `"` as `\x22`, Apache as `\"`), so the status is
/// found after the request's closing quote and a crafted path or User-Agent cannot supply it.
/// `user` is the basic-authentication user name, absent when the client sent none (`-`).
pub const COMBINED_401: &str = concat!(
    r#"^(?P<addr>\S+) \S+ (?:-|(?P<user>.*?)) \[[^\]]*\] "#,
    r#""(?:[^"\\]|\\.)*" 401(?: |$)"#,
);

/// nginx's `combined` access log, status 401: [`COMBINED_401`].
pub const NGINX_401: &str = COMBINED_401;
/// Apache's `combined` access log, status 401: [`COMBINED_401`].
pub const APACHE_401: &str = COMBINED_401;

/// The built-in patterns by the name a configuration gives them, in a fixed order.
pub const BUILTIN: &[(&str, &str)] = &[
    ("sshd", SSHD),
    ("nginx-401", NGINX_401),
    ("apache-401", APACHE_401),
];

/// The regular expression of the built-in pattern `name`.
pub fn builtin(name: &str) -> Option<&'static str> {
    BUILTIN
        .iter()
        .find(|(builtin, _)| *builtin == name)
        .map(|(_, pattern)| *pattern)
}
