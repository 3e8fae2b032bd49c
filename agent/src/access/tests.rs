//! `Access` against real files (secrets, saved sessions, the audit log) and a fake endpoint.

use std::cell::RefCell;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;

use super::*;
use crate::mfa::totp;

/// Records what the endpoint was told.
#[derive(Default)]
struct FakeGate {
    calls: RefCell<Vec<(String, bool)>>,
}

impl MfaGate for FakeGate {
    fn set_mfa_session(&self, peer: &str, open: bool) -> bool {
        self.calls.borrow_mut().push((peer.to_owned(), open));
        true
    }
}

const ALICE: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 77, 0, 10));
const BOB: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 77, 0, 11));
const CAROL: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 77, 0, 12));

/// A configuration in `dir`: alice (sales, MFA), bob (staff, no MFA), carol (sales, disabled),
/// the audit log at `audit_path`.
fn config(dir: &Path, audit_path: &Path, on_write_failure: &str) -> Config {
    let text = format!(
        r#"[agent]
state_dir = "{dir}/state"

[vpn]
address = "10.77.0.1/24"
private_key_file = "{dir}/wg.key"
peers_file = "{dir}/peers.toml"

[mfa]
max_failures = 2
lockout = "10m"

[audit]
path = "{audit}"
key_file = "{dir}/audit.key"
on_write_failure = "{on_write_failure}"

[[role]]
name = "sales"
allow = ["tcp/443"]
mfa = true

[[role]]
name = "staff"
allow = ["tcp/443"]

[[peer]]
name = "alice"
public_key = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg="
address = "10.77.0.10"
role = "sales"

[[peer]]
name = "bob"
public_key = "HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw="
address = "10.77.0.11"
role = "staff"

[[peer]]
name = "carol"
public_key = "TrMvSoP4jYQlY6RIzBgbssQqY3vxI2Pi+y71lOWWXX0="
address = "10.77.0.12"
role = "sales"
enabled = false
"#,
        dir = dir.display(),
        audit = audit_path.display(),
    );
    let path = dir.join("crmguard.toml");
    std::fs::write(&path, text).expect("access test");
    std::fs::create_dir_all(dir.join("state")).expect("access test");
    crate::config::load(&path).unwrap_or_else(|e| panic!("{e}"))
}

fn ask(
    access: &mut Access,
    config: &Config,
    gate: &FakeGate,
    sink: &mut audit::Sink,
    from: IpAddr,
    action: PortalAction,
) -> PortalReply {
    access.portal(&PortalRequest { from, action }, config, gate, sink)
}

fn code_for(config: &Config, peer: &str) -> String {
    let secret = secrets::load(&config.agent.state_dir, peer)
        .expect("access test")
        .expect("enrolled");
    format!("{:06}", totp::code_at(secret.as_bytes(), unix_now()))
}

fn types(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|line| {
            let record: serde_json::Value = serde_json::from_str(line).expect("a record");
            record["type"].as_str().unwrap_or_default().to_owned()
        })
        .collect()
}

#[test]
fn a_right_code_opens_a_session_for_the_acl_and_survives_a_restart() {
    let dir = tempfile::tempdir().expect("access test");
    let log = dir.path().join("audit.jsonl");
    let config = config(dir.path(), &log, "fail-closed");
    secrets::enroll(&config.agent.state_dir, "alice").expect("enroll");
    let mut sink = audit::Sink::open(&config.audit, &config.agent.state_dir);
    let gate = FakeGate::default();
    let mut access = Access::open(&config);

    let code = code_for(&config, "alice");
    let reply = ask(
        &mut access,
        &config,
        &gate,
        &mut sink,
        ALICE,
        PortalAction::Open { code: code.clone() },
    );
    let PortalReply::Opened { peer, expires } = reply else {
        panic!("{reply:?}");
    };
    assert_eq!(peer, "alice");
    assert!(expires > unix_now() + 11 * 3600);
    assert_eq!(*gate.calls.borrow(), [("alice".to_owned(), true)]);
    assert_eq!(access.attempts()["ok"], 1);
    assert_eq!(types(&log), ["mfa_success"]);

    // The same code again is refused: each code is good once.
    let reply = ask(
        &mut access,
        &config,
        &gate,
        &mut sink,
        ALICE,
        PortalAction::Open { code },
    );
    assert!(
        matches!(reply, PortalReply::Wrong { remaining: 1, .. }),
        "{reply:?}"
    );

    // A new agent reads the session back.
    let restarted = Access::open(&config);
    assert!(restarted.sessions().is_open("alice", unix_now()));

    // Logging out ends it and tells the endpoint.
    let reply = ask(
        &mut access,
        &config,
        &gate,
        &mut sink,
        ALICE,
        PortalAction::Close,
    );
    assert!(
        matches!(
            reply,
            PortalReply::Closed {
                had_session: true,
                ..
            }
        ),
        "{reply:?}"
    );
    assert_eq!(
        gate.calls.borrow().last(),
        Some(&("alice".to_owned(), false))
    );
    assert_eq!(
        types(&log),
        ["mfa_success", "mfa_failure", "mfa_session_end"]
    );
    assert!(!Access::open(&config)
        .sessions()
        .is_open("alice", unix_now()));
}

#[test]
fn wrong_codes_lock_out_and_other_peers_are_answered_without_a_code() {
    let dir = tempfile::tempdir().expect("access test");
    let log = dir.path().join("audit.jsonl");
    let config = config(dir.path(), &log, "fail-closed");
    secrets::enroll(&config.agent.state_dir, "alice").expect("enroll");
    let mut sink = audit::Sink::open(&config.audit, &config.agent.state_dir);
    let gate = FakeGate::default();
    let mut access = Access::open(&config);
    let wrong = || PortalAction::Open {
        code: "abcdef".to_owned(),
    };

    let reply = ask(&mut access, &config, &gate, &mut sink, ALICE, wrong());
    assert!(
        matches!(reply, PortalReply::Wrong { remaining: 1, .. }),
        "{reply:?}"
    );
    let reply = ask(&mut access, &config, &gate, &mut sink, ALICE, wrong());
    assert!(matches!(reply, PortalReply::LockedOut { .. }), "{reply:?}");
    let code = code_for(&config, "alice");
    let reply = ask(
        &mut access,
        &config,
        &gate,
        &mut sink,
        ALICE,
        PortalAction::Open { code },
    );
    assert!(matches!(reply, PortalReply::LockedOut { .. }), "{reply:?}");
    assert!(gate.calls.borrow().is_empty());
    let reply = ask(
        &mut access,
        &config,
        &gate,
        &mut sink,
        ALICE,
        PortalAction::Show,
    );
    let PortalReply::View(view) = reply else {
        panic!("{reply:?}");
    };
    assert!(view.locked_until.is_some() && view.session_expires.is_none() && view.mfa_required);

    let reply = ask(&mut access, &config, &gate, &mut sink, BOB, wrong());
    assert!(
        matches!(reply, PortalReply::NotRequired { .. }),
        "{reply:?}"
    );
    let reply = ask(&mut access, &config, &gate, &mut sink, CAROL, wrong());
    assert!(matches!(reply, PortalReply::Disabled { .. }), "{reply:?}");
    let stranger = IpAddr::V4(Ipv4Addr::new(10, 77, 0, 99));
    let reply = ask(&mut access, &config, &gate, &mut sink, stranger, wrong());
    assert!(matches!(reply, PortalReply::UnknownPeer), "{reply:?}");
    assert_eq!(access.attempts()["wrong"], 1);
    assert_eq!(access.attempts()["locked_out"], 2);
    assert_eq!(access.attempts()["refused"], 2);
}

#[test]
fn fail_closed_opens_no_session_while_the_log_cannot_be_written_and_spends_no_code() {
    let dir = tempfile::tempdir().expect("access test");
    // The log's directory is a file, so the log cannot be opened.
    let blocker = dir.path().join("logs");
    std::fs::write(&blocker, "not a directory").expect("access test");
    let log = blocker.join("audit.jsonl");
    let config = config(dir.path(), &log, "fail-closed");
    secrets::enroll(&config.agent.state_dir, "alice").expect("enroll");
    let mut sink = audit::Sink::open(&config.audit, &config.agent.state_dir);
    let gate = FakeGate::default();
    let mut access = Access::open(&config);

    let code = code_for(&config, "alice");
    let reply = ask(
        &mut access,
        &config,
        &gate,
        &mut sink,
        ALICE,
        PortalAction::Open { code: code.clone() },
    );
    assert!(
        matches!(reply, PortalReply::Unavailable { .. }),
        "{reply:?}"
    );
    assert!(gate.calls.borrow().is_empty());
    assert!(!access.sessions().is_open("alice", unix_now()));
    assert_eq!(access.attempts()["refused"], 1);
    assert!(sink.errors() >= 1);

    // Once the log can be written, the same code works: it was not spent.
    std::fs::remove_file(&blocker).expect("access test");
    std::fs::create_dir(&blocker).expect("access test");
    let reply = ask(
        &mut access,
        &config,
        &gate,
        &mut sink,
        ALICE,
        PortalAction::Open { code },
    );
    assert!(matches!(reply, PortalReply::Opened { .. }), "{reply:?}");
    assert_eq!(types(&log), ["mfa_success"]);
}

#[test]
fn fail_open_opens_the_session_and_counts_the_lost_record() {
    let dir = tempfile::tempdir().expect("access test");
    let blocker = dir.path().join("logs");
    std::fs::write(&blocker, "not a directory").expect("access test");
    let config = config(dir.path(), &blocker.join("audit.jsonl"), "fail-open");
    secrets::enroll(&config.agent.state_dir, "alice").expect("enroll");
    let mut sink = audit::Sink::open(&config.audit, &config.agent.state_dir);
    let gate = FakeGate::default();
    let mut access = Access::open(&config);
    let code = code_for(&config, "alice");
    let reply = ask(
        &mut access,
        &config,
        &gate,
        &mut sink,
        ALICE,
        PortalAction::Open { code },
    );
    assert!(matches!(reply, PortalReply::Opened { .. }), "{reply:?}");
    assert_eq!(*gate.calls.borrow(), [("alice".to_owned(), true)]);
    assert!(sink.errors() >= 1);
}

#[test]
fn a_peer_without_a_secret_is_told_to_enroll_and_a_new_secret_is_picked_up() {
    let dir = tempfile::tempdir().expect("access test");
    let log = dir.path().join("audit.jsonl");
    let config = config(dir.path(), &log, "fail-closed");
    let mut sink = audit::Sink::open(&config.audit, &config.agent.state_dir);
    let gate = FakeGate::default();
    let mut access = Access::open(&config);
    let reply = ask(
        &mut access,
        &config,
        &gate,
        &mut sink,
        ALICE,
        PortalAction::Open {
            code: "123456".to_owned(),
        },
    );
    assert!(
        matches!(reply, PortalReply::NotEnrolled { .. }),
        "{reply:?}"
    );
    // `mfa enroll` while the agent runs: the next request reads the new secret.
    secrets::enroll(&config.agent.state_dir, "alice").expect("enroll");
    let code = code_for(&config, "alice");
    let reply = ask(
        &mut access,
        &config,
        &gate,
        &mut sink,
        ALICE,
        PortalAction::Open { code },
    );
    assert!(matches!(reply, PortalReply::Opened { .. }), "{reply:?}");
}

/// Alice with an open session, and what the tick does when her device changes.
fn alice_signed_in(dir: &Path) -> (Config, audit::Sink, FakeGate, Access) {
    let log = dir.join("audit.jsonl");
    let config = config(dir, &log, "fail-closed");
    secrets::enroll(&config.agent.state_dir, "alice").expect("enroll");
    let mut sink = audit::Sink::open(&config.audit, &config.agent.state_dir);
    let gate = FakeGate::default();
    let mut access = Access::open(&config);
    let code = code_for(&config, "alice");
    let reply = ask(
        &mut access,
        &config,
        &gate,
        &mut sink,
        ALICE,
        PortalAction::Open { code },
    );
    assert!(matches!(reply, PortalReply::Opened { .. }), "{reply:?}");
    (config, sink, gate, access)
}

fn last_end_reason(dir: &Path) -> String {
    let text = std::fs::read_to_string(dir.join("audit.jsonl")).expect("log");
    let record: serde_json::Value = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .rfind(|r| r["type"] == "mfa_session_end")
        .expect("an mfa_session_end record");
    record["detail"]["reason"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

#[test]
fn a_session_ends_when_its_device_changes_also_while_the_agent_was_stopped() {
    for (change, reason) in [
        ("rekey", "rekeyed"),
        ("disable", "disabled"),
        ("remove", "removed"),
    ] {
        let dir = tempfile::tempdir().expect("access test");
        let (config, mut sink, gate, mut access) = alice_signed_in(dir.path());
        access.tick(&config, None, &gate, &mut sink);
        assert!(access.sessions().is_open("alice", unix_now()), "{change}");

        // The peers file was edited while the agent was stopped: a new agent starts on it.
        let mut changed = config.clone();
        match change {
            "rekey" => changed.peers[0].public_key = [1; 32],
            "disable" => changed.peers[0].enabled = false,
            _ => {
                changed.peers.remove(0);
            }
        }
        let mut restarted = Access::open(&changed);
        if change != "remove" {
            assert!(
                restarted.sessions().is_open("alice", unix_now()),
                "{change}: loaded"
            );
        }
        restarted.tick(&changed, None, &gate, &mut sink);
        assert!(
            !restarted.sessions().is_open("alice", unix_now()),
            "{change}"
        );
        assert_eq!(
            gate.calls.borrow().last(),
            Some(&("alice".to_owned(), false))
        );
        assert_eq!(last_end_reason(dir.path()), reason);
    }
}

#[test]
fn enrolling_anew_ends_the_session_at_the_next_tick() {
    let dir = tempfile::tempdir().expect("access test");
    let (config, mut sink, gate, mut access) = alice_signed_in(dir.path());
    secrets::enroll(&config.agent.state_dir, "alice").expect("enroll again");
    access.tick(&config, None, &gate, &mut sink);
    assert!(!access.sessions().is_open("alice", unix_now()));
    assert_eq!(last_end_reason(dir.path()), "reenrolled");
}

#[test]
fn attempts_while_locked_out_are_folded_per_minute() {
    let dir = tempfile::tempdir().expect("access test");
    let log = dir.path().join("audit.jsonl");
    let config = config(dir.path(), &log, "fail-closed");
    secrets::enroll(&config.agent.state_dir, "alice").expect("enroll");
    let mut sink = audit::Sink::open(&config.audit, &config.agent.state_dir);
    let gate = FakeGate::default();
    let mut access = Access::open(&config);
    for _ in 0..102 {
        ask(
            &mut access,
            &config,
            &gate,
            &mut sink,
            ALICE,
            PortalAction::Open {
                code: "abcdef".to_owned(),
            },
        );
    }
    // Two wrong codes are recorded one by one; the hundred while locked out are folded.
    assert_eq!(types(&log), ["mfa_failure", "mfa_failure"]);
    access.flush(&mut sink);
    let text = std::fs::read_to_string(&log).expect("log");
    let folded: serde_json::Value =
        serde_json::from_str(text.lines().last().expect("a record")).expect("json");
    assert_eq!(folded["detail"]["count"], 100);
    assert_eq!(folded["detail"]["service"], "locked_out");
    assert_eq!(access.attempts()["locked_out"], 101);
}
