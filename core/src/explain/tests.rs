//! `explain`, the policy tests and the lockout guard at their boundary: configuration text in,
//! the words an administrator reads out.

use std::net::IpAddr;
use std::path::Path;
use std::time::{Duration, SystemTime};

use base64::Engine as _;

use super::check;
use super::lockout::{self, SshConnection};
use super::*;
use crate::bans::{BanStore, ManualBan, Safeguards};
use crate::config::{self, Config};
use crate::policy;

const FILE: &str = "/etc/crmguard/crmguard.toml";

fn key(n: u8) -> String {
    base64::engine::general_purpose::STANDARD.encode([n; 32])
}

/// SSH from the admin network, HTTPS from anywhere, a deny list; sales reach HTTPS on weekdays
/// with MFA, DBAs PostgreSQL at any time; carol is disabled.
fn text(extra: &str) -> String {
    format!(
        "[firewall.deny]\nsources = [\"198.51.100.0/24\", \"203.0.113.9\"]\n\
         [[firewall.service]]\nname = \"ssh\"\nproto = \"tcp\"\nports = [22]\n\
         from = [\"192.0.2.0/24\", \"2001:db8:a::/48\"]\n\
         [[firewall.service]]\nname = \"web\"\nproto = \"tcp\"\nports = [443]\n\
         [vpn]\naddress = \"10.77.0.1/24\"\n\
         [[role]]\nname = \"sales\"\nallow = [\"tcp/443\"]\nhours = \"Mon-Fri 07:00-21:00\"\nmfa = true\n\
         [[role]]\nname = \"dba\"\nallow = [\"tcp/5432\"]\n\
         [[peer]]\nname = \"alice\"\npublic_key = \"{}\"\naddress = \"10.77.0.10\"\nrole = \"sales\"\n\
         [[peer]]\nname = \"bob\"\npublic_key = \"{}\"\naddress = \"10.77.0.11\"\nrole = \"dba\"\n\
         [[peer]]\nname = \"carol\"\npublic_key = \"{}\"\naddress = \"10.77.0.12\"\nrole = \"dba\"\n\
         enabled = false\n{extra}",
        key(1),
        key(2),
        key(3)
    )
}

fn parse(text: &str) -> Config {
    match config::parse(text, Path::new(FILE)) {
        Ok(config) => config,
        Err(errors) => panic!("{errors}"),
    }
}

fn errors(text: &str) -> String {
    match config::parse(text, Path::new(FILE)) {
        Ok(_) => panic!("the configuration was accepted"),
        Err(errors) => errors.to_string(),
    }
}

fn compiled(config: &Config) -> CompiledPolicy {
    match policy::compile(config) {
        Ok(policy) => policy,
        Err(e) => panic!("{e}"),
    }
}

fn ask_outside(
    config: &Config,
    bans: &BanStore,
    from: &str,
    probe: &str,
    syn: bool,
) -> Explanation {
    let policy = compiled(config);
    let ctx = Context {
        config,
        policy: &policy,
        bans,
        portal_listening: true,
        sessions: None,
    };
    let query = Query::Outside {
        from: from.parse().unwrap_or_else(|e| panic!("{from}: {e}")),
        to: probe.to_owned(),
        syn,
        at: None,
    };
    answer(&ctx, &query, SystemTime::now()).unwrap_or_else(|e| panic!("{e}"))
}

fn ask_peer(config: &Config, peer: &str, probe: &str, at: &str, mfa: bool) -> Explanation {
    let policy = compiled(config);
    let bans = BanStore::new();
    let ctx = Context {
        config,
        policy: &policy,
        bans: &bans,
        portal_listening: true,
        sessions: None,
    };
    let query = Query::Peer {
        peer: peer.to_owned(),
        to: probe.to_owned(),
        at: Some(at.to_owned()),
        mfa: Some(mfa),
    };
    answer(&ctx, &query, SystemTime::now()).unwrap_or_else(|e| panic!("{e}"))
}

fn verdict(e: &Explanation) -> (&str, &str, &str) {
    (e.verdict.as_str(), e.reason.as_str(), e.rule.as_str())
}

#[test]
fn a_service_names_the_from_entry_that_admitted_the_source() {
    let config = parse(&text(""));
    let bans = BanStore::new();
    let e = ask_outside(&config, &bans, "192.0.2.7", "tcp/22", true);
    assert_eq!(verdict(&e), ("pass", "service", "`ssh` from 192.0.2.0/24"));
    assert_eq!(e.packet, "tcp/22 SYN from 192.0.2.7");
    let e = ask_outside(&config, &bans, "2001:db8:a::5", "tcp/22", true);
    assert_eq!(
        verdict(&e),
        ("pass", "service", "`ssh` from 2001:db8:a::/48")
    );
    let e = ask_outside(&config, &bans, "203.0.113.5", "tcp/443", true);
    assert_eq!(verdict(&e), ("pass", "service", "`web` from anywhere"));
    assert!(e.notes.iter().any(|n| n.contains("rate limits")), "{e:?}");
}

#[test]
fn a_source_outside_from_falls_to_the_default_and_says_whom_the_service_admits() {
    let config = parse(&text(""));
    let e = ask_outside(&config, &BanStore::new(), "203.0.113.5", "tcp/22", true);
    assert_eq!(
        verdict(&e),
        (
            "drop",
            "default_drop",
            "service `ssh` on tcp/22 admits only 192.0.2.0/24, 2001:db8:a::/48; [firewall] default = \"drop\""
        )
    );
    let e = ask_outside(&config, &BanStore::new(), "203.0.113.5", "tcp/5432", true);
    assert_eq!(
        verdict(&e),
        (
            "drop",
            "default_drop",
            "no service on tcp/5432; [firewall] default = \"drop\""
        )
    );
    // Not a SYN: it might have been a reply, which the configuration does not hold.
    let e = ask_outside(&config, &BanStore::new(), "203.0.113.5", "tcp/5432", false);
    assert_eq!(
        e.packet,
        "tcp/5432 ACK (an open connection) from 203.0.113.5"
    );
    assert!(e.notes.iter().any(|n| n.contains("established")), "{e:?}");
}

#[test]
fn a_deny_entry_is_named_with_where_it_is_written() {
    let config = parse(&text(""));
    let e = ask_outside(&config, &BanStore::new(), "198.51.100.77", "tcp/443", true);
    assert_eq!(
        verdict(&e),
        (
            "drop",
            "denied_source",
            "deny 198.51.100.0/24 (firewall.deny.sources)"
        )
    );
    let e = ask_outside(&config, &BanStore::new(), "203.0.113.9", "tcp/443", true);
    assert_eq!(
        verdict(&e),
        (
            "drop",
            "denied_source",
            "deny 203.0.113.9/32 (firewall.deny.sources)"
        )
    );
}

#[test]
fn a_deny_file_entry_is_named_by_file_and_line() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let deny = dir.path().join("deny.txt");
    std::fs::write(
        &deny,
        "# scanners\n\n  203.0.113.0/28  # seen on 2026-11-30\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let conf = dir.path().join("crmguard.toml");
    let text = text("").replace(
        "sources = [\"198.51.100.0/24\", \"203.0.113.9\"]",
        "files = [\"deny.txt\"]",
    );
    std::fs::write(&conf, text).unwrap_or_else(|e| panic!("{e}"));
    let config = config::load(&conf).unwrap_or_else(|e| panic!("{e}"));
    let e = ask_outside(&config, &BanStore::new(), "203.0.113.3", "tcp/443", true);
    assert_eq!(e.reason, "denied_source");
    assert_eq!(
        e.rule,
        format!("deny 203.0.113.0/28 ({}:3)", deny.display())
    );
}

fn ban(store: &mut BanStore, net: &str, ttl: Option<Duration>, now: SystemTime) {
    let request = ManualBan {
        net: net.parse().unwrap_or_else(|e| panic!("{net}: {e}")),
        ttl,
        reason: Some("scanner".to_owned()),
        by: "admin:root".to_owned(),
        force: false,
    };
    let guard = Safeguards {
        allowlist: &[],
        host_addrs: &[],
        tunnel_nets: &[],
        trusted: &[],
    };
    store
        .add_manual(request, &guard, now)
        .unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn a_ban_is_named_with_its_author_reason_and_expiry_and_ends_when_it_expires() {
    let config = parse(&text(""));
    let policy = compiled(&config);
    let now = SystemTime::now();
    let mut bans = BanStore::new();
    ban(
        &mut bans,
        "192.0.2.7/32",
        Some(Duration::from_secs(3600)),
        now,
    );
    ban(&mut bans, "2001:db8:a::/64", None, now);
    let ctx = Context {
        config: &config,
        policy: &policy,
        bans: &bans,
        portal_listening: true,
        sessions: None,
    };
    let from = |addr: &str| addr.parse::<IpAddr>().unwrap_or_else(|e| panic!("{e}"));
    let e = outside(&ctx, from("192.0.2.7"), Probe::Tcp(22), true, now);
    assert_eq!(e.reason, "banned");
    let expires = crate::time::format_time(now + Duration::from_secs(3600));
    assert_eq!(
        e.rule,
        format!("ban 192.0.2.7/32 by admin:root (scanner), until {expires}")
    );
    assert_eq!(e.expires.as_deref(), Some(expires.as_str()));
    // Two hours on, the ban has ended and the service admits the source again.
    let later = now + Duration::from_secs(7200);
    let e = outside(&ctx, from("192.0.2.7"), Probe::Tcp(22), true, later);
    assert_eq!(verdict(&e), ("pass", "service", "`ssh` from 192.0.2.0/24"));
    let e = outside(&ctx, from("2001:db8:a::9"), Probe::Tcp(22), true, later);
    assert_eq!(
        verdict(&e),
        (
            "drop",
            "banned",
            "ban 2001:db8:a::/64 by admin:root (scanner), until it is removed"
        )
    );
    assert_eq!(e.expires, None);
}

#[test]
fn the_wireguard_port_and_icmp_are_explained() {
    let config = parse(&text(""));
    let e = ask_outside(&config, &BanStore::new(), "203.0.113.5", "udp/51820", false);
    assert_eq!(e.reason, "wireguard");
    assert_eq!(
        e.packet,
        "udp/51820 (a WireGuard handshake initiation) from 203.0.113.5"
    );
    let e = ask_outside(&config, &BanStore::new(), "203.0.113.5", "icmp", false);
    assert_eq!(
        verdict(&e),
        (
            "pass",
            "icmp",
            "[firewall] icmp = \"essential\" lets echo requests in, at most 5 per second per source"
        )
    );
    let e = ask_outside(&config, &BanStore::new(), "2001:db8::5", "icmp", false);
    assert_eq!(e.reason, "icmp");
}

#[test]
fn monitor_mode_answers_would_drop() {
    let config = parse(&text("[agent]\nmode = \"monitor\"\n"));
    let e = ask_outside(&config, &BanStore::new(), "203.0.113.5", "tcp/5432", true);
    assert_eq!(
        (e.verdict.as_str(), e.reason.as_str()),
        ("would_drop", "default_drop")
    );
    assert!(!e.passes());
    assert!(e.notes.iter().any(|n| n.contains("monitor mode")), "{e:?}");
}

#[test]
fn a_peer_is_answered_by_its_role_hours_and_session() {
    let config = parse(&text(""));
    let e = ask_peer(&config, "alice", "tcp/443", "Tue 10:00", true);
    assert_eq!(
        verdict(&e),
        (
            "pass",
            "service",
            "role `sales` allows tcp/443 during Mon-Fri 07:00-21:00 with an MFA session"
        )
    );
    assert_eq!(
        e.packet,
        "tcp/443 from peer alice (10.77.0.10) at Tue 10:00, with an MFA session"
    );
    let e = ask_peer(&config, "alice", "tcp/443", "Tue 22:00", true);
    assert_eq!(
        verdict(&e),
        (
            "drop",
            "outside_hours",
            "role `sales`'s hours Mon-Fri 07:00-21:00 do not hold Tue 22:00"
        )
    );
    let e = ask_peer(&config, "alice", "tcp/443", "Tue 10:00", false);
    assert_eq!(
        verdict(&e),
        (
            "drop",
            "mfa_required",
            "role `sales` needs an MFA session; peer alice has none open"
        )
    );
    let e = ask_peer(&config, "alice", "tcp/5432", "Tue 10:00", true);
    assert_eq!(
        verdict(&e),
        ("drop", "not_in_role", "role `sales` allows only tcp/443")
    );
    let e = ask_peer(&config, "alice", "tcp/8443", "Sun 03:00", false);
    assert_eq!(
        verdict(&e),
        (
            "pass",
            "mfa_portal",
            "the MFA portal on tcp/8443 is open to every enabled peer"
        )
    );
    let e = ask_peer(&config, "bob", "icmp", "Sun 03:00", false);
    assert_eq!(e.reason, "echo");
    let e = ask_peer(&config, "carol", "tcp/5432", "Tue 10:00", true);
    assert_eq!(
        verdict(&e),
        (
            "drop",
            "peer_disabled",
            "peer carol is disabled: the endpoint refuses its handshakes, so none of its packets reach the gateway"
        )
    );
}

#[test]
fn a_running_agents_sessions_answer_when_the_query_does_not_say() {
    let config = parse(&text(""));
    let policy = compiled(&config);
    let bans = BanStore::new();
    let open = |peer: &str| peer == "alice";
    let ctx = Context {
        config: &config,
        policy: &policy,
        bans: &bans,
        portal_listening: true,
        sessions: Some(&open),
    };
    let query = |mfa| Query::Peer {
        peer: "alice".to_owned(),
        to: "tcp/443".to_owned(),
        at: Some("Wed 12:00".to_owned()),
        mfa,
    };
    let now = SystemTime::now();
    let e = answer(&ctx, &query(None), now).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(e.reason, "service");
    let e = answer(&ctx, &query(Some(false)), now).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(e.reason, "mfa_required");
}

#[test]
fn bad_questions_are_refused_with_what_is_wrong() {
    let config = parse(&text(""));
    let policy = compiled(&config);
    let bans = BanStore::new();
    let ctx = Context {
        config: &config,
        policy: &policy,
        bans: &bans,
        portal_listening: true,
        sessions: None,
    };
    let peer = |peer: &str, to: &str, at: &str| Query::Peer {
        peer: peer.to_owned(),
        to: to.to_owned(),
        at: Some(at.to_owned()),
        mfa: None,
    };
    let now = SystemTime::now();
    let message = |q: Query| match answer(&ctx, &q, now) {
        Ok(e) => panic!("answered {e:?}"),
        Err(e) => e.to_string(),
    };
    assert_eq!(
        message(peer("mallory", "tcp/443", "Tue 10:00")),
        "no peer `mallory` is configured"
    );
    assert_eq!(
        message(peer("alice", "tcp/0", "Tue 10:00")),
        "`tcp/0` is not a packet such as `tcp/22`, `udp/53` or `icmp`"
    );
    assert_eq!(
        message(peer("alice", "tcp/443", "Tuesday")),
        "`Tuesday` is not a time of the week such as `Tue 22:00`"
    );
}

#[test]
fn the_json_answer_carries_every_field() {
    let config = parse(&text(""));
    let e = ask_outside(&config, &BanStore::new(), "203.0.113.5", "tcp/5432", true);
    let json = serde_json::to_value(&e).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(json["layer"], "firewall");
    assert_eq!(json["verdict"], "drop");
    assert_eq!(json["reason"], "default_drop");
    assert_eq!(json["packet"], "tcp/5432 SYN from 203.0.113.5");
    assert!(json.get("expires").is_none());
    let back: Explanation = serde_json::from_value(json).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(back, e);
}

// ---- policy tests ---------------------------------------------------------------------------

const PROMISES: &str = r#"
[[test]]
name = "admins reach ssh"
from = "192.0.2.10"
to = "tcp/22"
expect = "pass"
reason = "service"

[[test]]
name = "the internet does not reach postgres"
from = "203.0.113.5"
to = "tcp/5432"
expect = "drop"

[[test]]
name = "sales reach the CRM in office hours"
peer = "alice"
to = "tcp/443"
at = "Tue 10:00"
mfa = true
expect = "pass"

[[test]]
name = "sales never reach postgres"
peer = "alice"
to = "tcp/5432"
mfa = true
expect = "drop"
reason = "not_in_role"
"#;

#[test]
fn the_promises_of_a_good_policy_hold() {
    let config = parse(&text(PROMISES));
    assert_eq!(config.tests.len(), 4);
    let failures = check::run(&config, &compiled(&config));
    assert!(failures.is_empty(), "{failures:?}");
}

#[test]
fn a_broken_promise_names_the_file_line_and_what_came_instead() {
    // SSH opened to the world.
    let text = text(PROMISES).replace(
        "from = [\"192.0.2.0/24\", \"2001:db8:a::/48\"]\n",
        "from = [\"0.0.0.0/0\"]\n",
    ) + r#"
[[test]]
name = "the internet does not reach ssh"
from = "203.0.113.5"
to = "tcp/22"
expect = "drop"
reason = "default_drop"
"#;
    let config = parse(&text);
    let failures: Vec<String> = check::run(&config, &compiled(&config))
        .iter()
        .map(ToString::to_string)
        .collect();
    let line = text
        .lines()
        .position(|l| l == "expect = \"drop\"")
        .map(|i| i + 1);
    let line = text
        .lines()
        .enumerate()
        .filter(|(_, l)| *l == "expect = \"drop\"")
        .map(|(i, _)| i + 1)
        .last()
        .or(line)
        .unwrap_or(0);
    assert_eq!(
        failures,
        vec![format!(
            "{FILE}:{line}:10: test the internet does not reach ssh: expected drop (default_drop), \
             got pass (service: `ssh` from 0.0.0.0/0)"
        )]
    );
}

#[test]
fn a_weekly_promise_reports_the_first_minute_that_breaks_it() {
    let text = text(
        r#"
[[test]]
name = "sales always reach the CRM"
peer = "alice"
to = "tcp/443"
mfa = true
expect = "pass"
"#,
    );
    let config = parse(&text);
    let failures = check::run(&config, &compiled(&config));
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert_eq!(
        failures[0].message,
        "expected pass, got drop (outside_hours: role `sales`'s hours Mon-Fri 07:00-21:00 do not \
         hold Mon 00:00) at Mon 00:00"
    );
}

#[test]
fn tests_in_files_are_run_and_placed_in_their_own_file() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let tests = dir.path().join("promises.toml");
    std::fs::write(
        &tests,
        "# what the DBA team was promised\n[[test]]\nname = \"dba at night\"\npeer = \"bob\"\n\
         to = \"tcp/5432\"\nat = \"Sun 03:00\"\nexpect = \"drop\"\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let conf = dir.path().join("crmguard.toml");
    std::fs::write(&conf, text("[tests]\nfiles = [\"promises.toml\"]\n"))
        .unwrap_or_else(|e| panic!("{e}"));
    let config = config::load(&conf).unwrap_or_else(|e| panic!("{e}"));
    let failures: Vec<String> = check::run(&config, &compiled(&config))
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        failures,
        vec![format!(
            "{}:7:10: test dba at night: expected drop, got pass (service: role `dba` allows tcp/5432)",
            tests.display()
        )]
    );
}

#[test]
fn malformed_tests_are_configuration_errors() {
    let bad = |test: &str| errors(&text(&format!("[[test]]\nname = \"t\"\n{test}")));
    assert!(
        bad("to = \"tcp/22\"\nexpect = \"pass\"\n").contains("test[0]: say who sends the packet"),
    );
    assert!(
        bad("from = \"192.0.2.1\"\npeer = \"alice\"\nto = \"tcp/22\"\nexpect = \"pass\"\n")
            .contains("test[0].peer: a test is sent either `from`")
    );
    assert!(
        bad("from = \"192.0.2.1\"\nto = \"tcp/22\"\nexpect = \"maybe\"\n")
            .contains("test[0].expect: `maybe` is not a verdict")
    );
    assert!(
        bad("from = \"192.0.2.1\"\nto = \"tcp/22\"\nexpect = \"pass\"\nreason = \"banned\"\n")
            .contains("test[0].reason: `banned` is a reason to drop")
    );
    assert!(bad(
        "from = \"192.0.2.1\"\nto = \"tcp/22\"\nexpect = \"drop\"\nreason = \"outside_hours\"\n"
    )
    .contains("test[0].reason: `outside_hours` is not a reason for a packet from outside"));
    assert!(
        bad("peer = \"mallory\"\nto = \"tcp/22\"\nexpect = \"drop\"\n")
            .contains("test[0].peer: no peer `mallory` is configured")
    );
    assert!(
        bad("peer = \"alice\"\nto = \"tcp/22\"\nsyn = false\nexpect = \"drop\"\n")
            .contains("test[0].syn: `syn` applies to tests sent `from` outside")
    );
    assert!(
        bad("from = \"192.0.2.1\"\nto = \"tcp/22\"\nat = \"Tue 10:00\"\nexpect = \"drop\"\n")
            .contains("test[0].at: `at` applies to tests sent by a `peer`")
    );
    assert!(
        bad("peer = \"alice\"\nto = \"tcp/22\"\nat = \"Tue 25:00\"\nexpect = \"drop\"\n")
            .contains("test[0].at: `25:00` is not a time")
    );
    assert!(
        bad("from = \"192.0.2.1\"\nto = \"sctp/9\"\nexpect = \"drop\"\n")
            .contains("test[0].to: `sctp/9` is not a packet")
    );
    let twice = errors(&text(
        "[[test]]\nname = \"t\"\nfrom = \"192.0.2.1\"\nto = \"tcp/22\"\nexpect = \"pass\"\n\
         [[test]]\nname = \"t\"\nfrom = \"192.0.2.1\"\nto = \"tcp/22\"\nexpect = \"pass\"\n",
    ));
    assert!(
        twice.contains("test[1].name: duplicate test name `t`"),
        "{twice}"
    );
}

#[test]
fn the_example_configuration_keeps_its_own_promises() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/crmguard.example.toml");
    let config = config::load(&path).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        config.tests.len() >= 6,
        "the example ships tests for its promises"
    );
    let failures = check::run(&config, &compiled(&config));
    assert!(failures.is_empty(), "{failures:?}");
}

// ---- the lockout guard ----------------------------------------------------------------------

#[test]
fn the_lockout_guard_reads_ssh_connection() {
    assert_eq!(
        SshConnection::parse("192.0.2.7 51234 192.0.2.1 22"),
        Some(SshConnection {
            client: "192.0.2.7".parse().unwrap_or_else(|e| panic!("{e}")),
            server_port: 22
        })
    );
    assert_eq!(SshConnection::parse("192.0.2.7 51234 192.0.2.1"), None);
    assert_eq!(SshConnection::parse("nonsense"), None);
}

#[test]
fn the_lockout_guard_warns_about_the_session_it_runs_in_and_the_admin_networks() {
    let config = parse(&text(""));
    let policy = compiled(&config);
    let inside = SshConnection::parse("192.0.2.7 51234 192.0.2.1 22");
    assert_eq!(
        lockout::warnings(&config, &policy, inside),
        Vec::<String>::new()
    );
    let outside = SshConnection::parse("203.0.113.50 51234 192.0.2.1 22");
    assert_eq!(
        lockout::warnings(&config, &policy, outside),
        vec![
            "this policy drops the SSH connection this command runs in (203.0.113.50 to tcp/22): \
             drop (default_drop: service `ssh` on tcp/22 admits only 192.0.2.0/24, \
             2001:db8:a::/48; [firewall] default = \"drop\")"
                .to_owned()
        ]
    );
    // A deny entry inside the admin network takes away what `from` grants.
    let config = parse(&text("").replace("\"203.0.113.9\"]", "\"203.0.113.9\", \"192.0.2.0/25\"]"));
    let policy = compiled(&config);
    assert_eq!(
        lockout::warnings(&config, &policy, None),
        vec![
            "service `ssh` admits 192.0.2.0/24, but this policy drops tcp/22 from 192.0.2.0: \
             drop (denied_source: deny 192.0.2.0/25 (firewall.deny.sources))"
                .to_owned()
        ]
    );
}

#[test]
fn at_takes_a_week_time_a_date_or_a_delay() {
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_764_000_000);
    let at = |text: &str| At::parse(text, now).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        at("tue 22:00"),
        At::Week(WeekTime {
            weekday: 1,
            minute_of_day: 1320
        })
    );
    assert_eq!(at("+2h"), At::Instant(now + Duration::from_secs(7200)));
    assert_eq!(
        at("2026-12-08T22:00:00Z"),
        At::Instant(SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_767_200))
    );
    assert!(At::parse("teatime", now).is_err());
    // The next Tuesday 22:00 is within a week, on a Tuesday at 22:00.
    let week = At::Week(WeekTime {
        weekday: 1,
        minute_of_day: 1320,
    });
    let next = week.instant(now);
    assert!(next >= now - Duration::from_secs(60) && next < now + Duration::from_secs(7 * 86_400));
    assert_eq!(At::Instant(next).week_time(), week.week_time());
}
