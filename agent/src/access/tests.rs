//! `Access` against real files (secrets, saved sessions, the audit log) and a fake endpoint.

use std::cell::RefCell;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;

use super::*;
use crmguard_core::mfa::totp;

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
    crmguard_core::config::load(&path).unwrap_or_else(|e| panic!("{e}"))
}

/// Where the audit log of a fixture goes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Log {
    Writable,
    /// In a "directory" that is a file, so it cannot be opened.
    Blocked,
}

/// An agent's MFA state with its configuration, audit log and a fake endpoint.
struct Fixture {
    dir: tempfile::TempDir,
    log: std::path::PathBuf,
    config: Config,
    sink: audit::Sink,
    gate: FakeGate,
    access: Access,
}

impl Fixture {
    fn new(log: Log, on_write_failure: &str, enroll_alice: bool) -> Fixture {
        let dir = tempfile::tempdir().expect("access test");
        let log_path = match log {
            Log::Writable => dir.path().join("audit.jsonl"),
            Log::Blocked => {
                let blocker = dir.path().join("logs");
                std::fs::write(&blocker, "not a directory").expect("access test");
                blocker.join("audit.jsonl")
            }
        };
        let config = config(dir.path(), &log_path, on_write_failure);
        if enroll_alice {
            secrets::enroll(&config.agent.state_dir, "alice").expect("enroll");
        }
        let sink = audit::Sink::open(&config.audit, &config.agent.state_dir);
        let access = Access::open(&config);
        Fixture {
            dir,
            log: log_path,
            config,
            sink,
            gate: FakeGate::default(),
            access,
        }
    }

    fn ask(&mut self, from: IpAddr, action: PortalAction) -> PortalReply {
        let request = PortalRequest { from, action };
        self.access
            .portal(&request, &self.config, &self.gate, &mut self.sink)
    }

    /// Alice's code now.
    fn code(&self) -> PortalAction {
        let secret = secrets::load(&self.config.agent.state_dir, "alice")
            .expect("access test")
            .expect("enrolled");
        PortalAction::Open {
            code: format!("{:06}", totp::code_at(secret.as_bytes(), unix_now())),
        }
    }

    fn wrong() -> PortalAction {
        PortalAction::Open {
            code: "abcdef".to_owned(),
        }
    }

    fn types(&self) -> Vec<String> {
        self.records()
            .iter()
            .map(|r| r["type"].as_str().unwrap_or_default().to_owned())
            .collect()
    }

    fn records(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(|line| serde_json::from_str(line).expect("a record"))
            .collect()
    }

    fn last_end_reason(&self) -> String {
        let records = self.records();
        let end = records
            .iter()
            .rfind(|r| r["type"] == "mfa_session_end")
            .expect("an mfa_session_end record");
        end["detail"]["reason"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    fn alice_open(&self) -> bool {
        self.access.sessions().is_open("alice", unix_now())
    }

    fn last_call(&self) -> Option<(String, bool)> {
        self.gate.calls.borrow().last().cloned()
    }
}

#[test]
fn a_right_code_opens_a_session_for_the_acl_and_survives_a_restart() {
    let mut f = Fixture::new(Log::Writable, "fail-closed", true);
    let code = f.code();
    let reply = f.ask(ALICE, code.clone());
    let PortalReply::Opened { peer, expires } = reply else {
        panic!("{reply:?}");
    };
    assert_eq!(peer, "alice");
    assert!(expires > unix_now() + 11 * 3600);
    assert_eq!(*f.gate.calls.borrow(), [("alice".to_owned(), true)]);
    assert_eq!(f.access.attempts()["ok"], 1);
    assert_eq!(f.types(), ["mfa_success"]);

    // The same code again is refused: each code is good once.
    let reply = f.ask(ALICE, code);
    assert!(
        matches!(reply, PortalReply::Wrong { remaining: 1, .. }),
        "{reply:?}"
    );

    // A new agent reads the session back.
    assert!(Access::open(&f.config)
        .sessions()
        .is_open("alice", unix_now()));

    // Logging out ends it and tells the endpoint.
    let reply = f.ask(ALICE, PortalAction::Close);
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
    assert_eq!(f.last_call(), Some(("alice".to_owned(), false)));
    assert_eq!(f.types(), ["mfa_success", "mfa_failure", "mfa_session_end"]);
    assert!(!Access::open(&f.config)
        .sessions()
        .is_open("alice", unix_now()));
}

#[test]
fn wrong_codes_lock_out_and_other_peers_are_answered_without_a_code() {
    let mut f = Fixture::new(Log::Writable, "fail-closed", true);
    let reply = f.ask(ALICE, Fixture::wrong());
    assert!(
        matches!(reply, PortalReply::Wrong { remaining: 1, .. }),
        "{reply:?}"
    );
    let reply = f.ask(ALICE, Fixture::wrong());
    assert!(matches!(reply, PortalReply::LockedOut { .. }), "{reply:?}");
    let code = f.code();
    let reply = f.ask(ALICE, code);
    assert!(matches!(reply, PortalReply::LockedOut { .. }), "{reply:?}");
    assert!(f.gate.calls.borrow().is_empty());
    let reply = f.ask(ALICE, PortalAction::Show);
    let PortalReply::View(view) = reply else {
        panic!("{reply:?}");
    };
    assert!(view.locked_until.is_some() && view.session_expires.is_none() && view.mfa_required);

    let reply = f.ask(BOB, Fixture::wrong());
    assert!(
        matches!(reply, PortalReply::NotRequired { .. }),
        "{reply:?}"
    );
    let reply = f.ask(CAROL, Fixture::wrong());
    assert!(matches!(reply, PortalReply::Disabled { .. }), "{reply:?}");
    let stranger = IpAddr::V4(Ipv4Addr::new(10, 77, 0, 99));
    let reply = f.ask(stranger, Fixture::wrong());
    assert!(matches!(reply, PortalReply::UnknownPeer), "{reply:?}");
    assert_eq!(f.access.attempts()["wrong"], 1);
    assert_eq!(f.access.attempts()["locked_out"], 2);
    assert_eq!(f.access.attempts()["refused"], 2);

    // The same counts in the metric the module registers, every result present.
    let registry = prometheus::Registry::new();
    f.access.register_metrics(&registry).expect("register");
    let text = crate::metrics::render(&registry);
    for line in [
        "# HELP crmguard_mfa_attempts_total MFA codes tried at the portal, by result\n",
        "# TYPE crmguard_mfa_attempts_total counter\n",
        "crmguard_mfa_attempts_total{result=\"ok\"} 0\n",
        "crmguard_mfa_attempts_total{result=\"wrong\"} 1\n",
        "crmguard_mfa_attempts_total{result=\"locked_out\"} 2\n",
        "crmguard_mfa_attempts_total{result=\"not_enrolled\"} 0\n",
        "crmguard_mfa_attempts_total{result=\"refused\"} 2\n",
    ] {
        assert!(text.contains(line), "missing {line:?} in\n{text}");
    }
}

#[test]
fn fail_closed_opens_no_session_while_the_log_cannot_be_written_and_spends_no_code() {
    let mut f = Fixture::new(Log::Blocked, "fail-closed", true);
    let code = f.code();
    let reply = f.ask(ALICE, code.clone());
    assert!(
        matches!(reply, PortalReply::Unavailable { .. }),
        "{reply:?}"
    );
    assert!(f.gate.calls.borrow().is_empty());
    assert!(!f.alice_open());
    assert_eq!(f.access.attempts()["refused"], 1);
    assert!(f.sink.errors() >= 1);

    // Once the log can be written, the same code works: it was not spent.
    let blocker = f.dir.path().join("logs");
    std::fs::remove_file(&blocker).expect("access test");
    std::fs::create_dir(&blocker).expect("access test");
    let reply = f.ask(ALICE, code);
    assert!(matches!(reply, PortalReply::Opened { .. }), "{reply:?}");
    assert_eq!(f.types(), ["mfa_success"]);
}

#[test]
fn fail_open_opens_the_session_and_counts_the_lost_record() {
    let mut f = Fixture::new(Log::Blocked, "fail-open", true);
    let code = f.code();
    let reply = f.ask(ALICE, code);
    assert!(matches!(reply, PortalReply::Opened { .. }), "{reply:?}");
    assert_eq!(*f.gate.calls.borrow(), [("alice".to_owned(), true)]);
    assert!(f.sink.errors() >= 1);
}

#[test]
fn a_peer_without_a_secret_is_told_to_enroll_and_a_new_secret_is_picked_up() {
    let mut f = Fixture::new(Log::Writable, "fail-closed", false);
    let reply = f.ask(ALICE, Fixture::wrong());
    assert!(
        matches!(reply, PortalReply::NotEnrolled { .. }),
        "{reply:?}"
    );
    // `mfa enroll` while the agent runs: the next request reads the new secret.
    secrets::enroll(&f.config.agent.state_dir, "alice").expect("enroll");
    let code = f.code();
    let reply = f.ask(ALICE, code);
    assert!(matches!(reply, PortalReply::Opened { .. }), "{reply:?}");
}

/// A fixture in which alice has signed in.
fn alice_signed_in() -> Fixture {
    let mut f = Fixture::new(Log::Writable, "fail-closed", true);
    let code = f.code();
    let reply = f.ask(ALICE, code);
    assert!(matches!(reply, PortalReply::Opened { .. }), "{reply:?}");
    f
}

#[test]
fn a_session_ends_when_its_device_changes_also_while_the_agent_was_stopped() {
    for (change, reason) in [
        ("rekey", "rekeyed"),
        ("disable", "disabled"),
        ("remove", "removed"),
    ] {
        let mut f = alice_signed_in();
        f.access.tick(&f.config, None, &f.gate, &mut f.sink);
        assert!(f.alice_open(), "{change}");

        // The peers file was edited while the agent was stopped: a new agent starts on it.
        let mut changed = f.config.clone();
        match change {
            "rekey" => changed.peers[0].public_key = [1; 32],
            "disable" => changed.peers[0].enabled = false,
            _ => {
                changed.peers.remove(0);
            }
        }
        f.access = Access::open(&changed);
        if change != "remove" {
            assert!(f.alice_open(), "{change}: loaded");
        }
        f.access.tick(&changed, None, &f.gate, &mut f.sink);
        assert!(!f.alice_open(), "{change}");
        assert_eq!(f.last_call(), Some(("alice".to_owned(), false)));
        assert_eq!(f.last_end_reason(), reason);
    }
}

#[test]
fn enrolling_anew_ends_the_session_at_the_next_tick() {
    let mut f = alice_signed_in();
    secrets::enroll(&f.config.agent.state_dir, "alice").expect("enroll again");
    f.access.tick(&f.config, None, &f.gate, &mut f.sink);
    assert!(!f.alice_open());
    assert_eq!(f.last_end_reason(), "reenrolled");
}

#[test]
fn attempts_while_locked_out_are_folded_per_minute() {
    let mut f = Fixture::new(Log::Writable, "fail-closed", true);
    for _ in 0..102 {
        f.ask(ALICE, Fixture::wrong());
    }
    // Two wrong codes are recorded one by one; the hundred while locked out are folded.
    assert_eq!(f.types(), ["mfa_failure", "mfa_failure"]);
    f.access.flush(&mut f.sink);
    let records = f.records();
    let folded = records.last().expect("a record");
    assert_eq!(folded["detail"]["count"], 100);
    assert_eq!(folded["detail"]["service"], "locked_out");
    assert_eq!(f.access.attempts()["locked_out"], 101);
}

/// Saved sessions that cannot be read (a torn or edited file) are moved aside with their bytes
/// kept for the operator, and every peer signs in again; the next save writes a fresh file.
#[test]
fn unreadable_saved_sessions_are_kept_aside_and_every_peer_signs_in_again() {
    let mut f = Fixture::new(Log::Writable, "fail-closed", true);
    let code = f.code();
    let reply = f.ask(ALICE, code);
    assert!(matches!(reply, PortalReply::Opened { .. }), "{reply:?}");
    let path = store::sessions_path(&f.config.agent.state_dir);
    assert!(path.exists(), "the session was not saved");
    std::fs::write(&path, b"{\"sessions\": [{\"peer\": \"al").expect("access test");

    f.access = Access::open(&f.config);
    assert!(!f.alice_open());
    assert!(!path.exists(), "the unreadable file was left in place");
    let aside: Vec<_> = std::fs::read_dir(path.parent().expect("access test"))
        .expect("access test")
        .map(|entry| entry.expect("access test").path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.contains(".unreadable-"))
        })
        .collect();
    assert_eq!(aside.len(), 1, "{aside:?}");
    assert_eq!(
        std::fs::read(&aside[0]).expect("access test"),
        b"{\"sessions\": [{\"peer\": \"al"
    );

    // Alice signs in again, and the new session is saved where the old file was.
    let code = f.code();
    let reply = f.ask(ALICE, code);
    assert!(matches!(reply, PortalReply::Opened { .. }), "{reply:?}");
    assert!(Access::open(&f.config)
        .sessions()
        .is_open("alice", unix_now()));
}
