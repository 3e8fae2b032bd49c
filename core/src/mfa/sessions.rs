//! Who has an open MFA session, who is locked out, and which code step each peer used last.
//!
//! Pure: every call takes `now` in Unix seconds and nothing here reads a clock or a file. A
//! session lasts at most `[mfa] session` from the code that opened it and ends earlier after
//! `[mfa] idle` without activity. `[mfa] max_failures` wrong codes in a row lock the peer out
//! for `[mfa] lockout`; a right code resets the count.
//!
//! The state minus the secrets is saved as JSON ([`Sessions::encode`]) so that sessions,
//! lockouts and used steps survive a restart: a restart must neither log everyone out nor
//! let a locked-out peer or a replayed code in. The secrets live in their own files
//! ([`super::secrets`]) and are attached with [`Sessions::set_secret`].

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::totp::{self, TotpError};
use super::Secret;
use crate::config;

/// The session file's format version.
pub const VERSION: u32 = 1;

/// The `[mfa]` settings the session state obeys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    pub session: Duration,
    pub idle: Duration,
    pub max_failures: u32,
    pub lockout: Duration,
}

impl From<&config::Mfa> for Policy {
    fn from(mfa: &config::Mfa) -> Self {
        Policy {
            session: mfa.session,
            idle: mfa.idle,
            max_failures: mfa.max_failures,
            lockout: mfa.lockout,
        }
    }
}

/// What a code attempt did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The code was right; a session is open until `expires` (Unix seconds) unless it goes
    /// idle first.
    Opened { expires: u64 },
    /// The code was wrong, malformed or already used; `remaining` more wrong codes lock the
    /// peer out.
    Wrong { remaining: u32 },
    /// The peer is locked out until `until` (Unix seconds); the code was not looked at.
    LockedOut { until: u64 },
    /// The peer has no secret.
    NotEnrolled,
}

/// A fingerprint of a secret: the first 16 hex digits of SHA-256 over a label and the
/// secret. It tells secrets apart without revealing them.
fn secret_id(secret: &Secret) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::new()
        .chain_update(b"crmguard mfa secret id\0")
        .chain_update(secret.as_bytes())
        .finalize();
    data_encoding::HEXLOWER.encode(&digest[..8])
}

/// Why a session ended by itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lapse {
    /// `[mfa] session` after the code that opened it.
    Expired,
    /// `[mfa] idle` without activity.
    Idle,
    /// The peer's secret is gone (the peer was removed).
    NotEnrolled,
}

impl Lapse {
    pub fn as_str(self) -> &'static str {
        match self {
            Lapse::Expired => "expired",
            Lapse::Idle => "idle",
            Lapse::NotEnrolled => "not_enrolled",
        }
    }
}

/// An open session, times in Unix seconds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Session {
    pub opened: u64,
    /// `opened` plus `[mfa] session`.
    pub expires: u64,
    /// The last code or [`Sessions::touch`]; the session ends `[mfa] idle` after it.
    pub last_activity: u64,
    /// The WireGuard public key (base64) of the device that typed the code: the session is
    /// that device's, and ends when the peer's key changes ([`Sessions::bind_key`]).
    #[serde(default)]
    pub key: Option<String>,
}

/// One peer's state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PeerState {
    /// Never saved with the state: the secret files are the only copy on disk.
    #[serde(skip)]
    secret: Option<Secret>,
    /// Wrong codes since the last right one or the end of the last lockout.
    failures: u32,
    locked_until: Option<u64>,
    /// The step of the last accepted code; codes of this step or earlier are refused.
    last_step: Option<u64>,
    session: Option<Session>,
    /// A fingerprint of the secret the session and `last_step` belong to, so that a secret
    /// enrolled anew while the agent was stopped still ends them.
    #[serde(default, rename = "enrollment")]
    secret_id: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileRepr {
    version: u32,
    peers: BTreeMap<String, PeerState>,
}

/// Why saved session state could not be read.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("not an MFA session file")]
    Json(#[source] serde_json::Error),
    #[error("version {0} is not supported (this crmguard reads version {VERSION})")]
    Version(u32),
}

/// Every peer's MFA state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sessions {
    policy: Policy,
    peers: BTreeMap<String, PeerState>,
}

impl Sessions {
    pub fn new(policy: Policy) -> Self {
        Sessions {
            policy,
            peers: BTreeMap::new(),
        }
    }

    /// Replaces the settings, as a reload does; open sessions keep their expiry.
    pub fn set_policy(&mut self, policy: Policy) {
        self.policy = policy;
    }

    /// Attaches `peer`'s secret (after loading the state or enrolling). A new secret after
    /// an enrollment ends any open session, as the old authenticator entry no longer counts.
    /// Returns whether an open session ended because the secret is new.
    pub fn set_secret(&mut self, peer: &str, secret: Secret) -> bool {
        let state = self.peers.entry(peer.to_owned()).or_default();
        let id = secret_id(&secret);
        let mut ended = false;
        if state.secret_id.as_ref().is_some_and(|old| *old != id) {
            ended = state.session.take().is_some();
            state.last_step = None;
        }
        state.secret_id = Some(id);
        state.secret = Some(secret);
        ended
    }

    /// Records that `peer`'s open session belongs to the device with public key `key`.
    pub fn bind_key(&mut self, peer: &str, key: &str) {
        if let Some(session) = self.peers.get_mut(peer).and_then(|s| s.session.as_mut()) {
            session.key = Some(key.to_owned());
        }
    }

    /// Whether `peer` has a secret.
    pub fn is_enrolled(&self, peer: &str) -> bool {
        self.peers.get(peer).is_some_and(|s| s.secret.is_some())
    }

    /// Checks `code` for `peer` at `now` and opens a session when it is right.
    pub fn try_code(&mut self, peer: &str, code: &str, now: u64) -> Outcome {
        let policy = self.policy;
        let Some(state) = self.peers.get_mut(peer) else {
            return Outcome::NotEnrolled;
        };
        let Some(secret) = &state.secret else {
            return Outcome::NotEnrolled;
        };
        match state.locked_until {
            Some(until) if now < until => return Outcome::LockedOut { until },
            Some(_) => {
                state.locked_until = None;
                state.failures = 0;
            }
            None => {}
        }
        match totp::verify(secret.as_bytes(), code, now, state.last_step) {
            Ok(step) => {
                let expires = now.saturating_add(policy.session.as_secs());
                state.failures = 0;
                state.last_step = Some(step);
                state.session = Some(Session {
                    opened: now,
                    expires,
                    last_activity: now,
                    key: None,
                });
                Outcome::Opened { expires }
            }
            Err(TotpError::Malformed | TotpError::Wrong | TotpError::Reused) => {
                state.failures = state.failures.saturating_add(1);
                if state.failures < policy.max_failures {
                    return Outcome::Wrong {
                        remaining: policy.max_failures - state.failures,
                    };
                }
                let until = now.saturating_add(policy.lockout.as_secs());
                state.locked_until = Some(until);
                Outcome::LockedOut { until }
            }
        }
    }

    /// Records activity of `peer` at `now`, which keeps an open session from going idle.
    /// Returns whether the session is open.
    pub fn touch(&mut self, peer: &str, now: u64) -> bool {
        if !self.is_open(peer, now) {
            return false;
        }
        if let Some(session) = self.peers.get_mut(peer).and_then(|s| s.session.as_mut()) {
            session.last_activity = session.last_activity.max(now);
        }
        true
    }

    /// `peer`'s session if it is open at `now`: before its expiry and not idle.
    pub fn session(&self, peer: &str, now: u64) -> Option<Session> {
        let state = self.peers.get(peer)?;
        state.secret.as_ref()?;
        let session = state.session.clone()?;
        let idle_end = session
            .last_activity
            .saturating_add(self.policy.idle.as_secs());
        (now < session.expires && now < idle_end).then_some(session)
    }

    /// Whether `peer` has an open session at `now`.
    pub fn is_open(&self, peer: &str, now: u64) -> bool {
        self.session(peer, now).is_some()
    }

    /// Ends `peer`'s session (log out). Returns whether there was one.
    pub fn end(&mut self, peer: &str) -> bool {
        self.peers
            .get_mut(peer)
            .and_then(|s| s.session.take())
            .is_some()
    }

    /// When `peer`'s lockout ends, if it is locked out at `now`.
    pub fn locked_until(&self, peer: &str, now: u64) -> Option<u64> {
        self.peers
            .get(peer)
            .and_then(|s| s.locked_until)
            .filter(|until| now < *until)
    }

    /// Removes the sessions that ended by themselves before `now` (expired or idle) and
    /// returns their peers with the reason, in name order. Logged-out sessions are not here:
    /// [`Sessions::end`] reports them.
    pub fn lapse(&mut self, now: u64) -> Vec<(String, Lapse)> {
        let idle = self.policy.idle.as_secs();
        let mut lapsed = Vec::new();
        for (peer, state) in &mut self.peers {
            let Some(session) = &state.session else {
                continue;
            };
            let reason = if state.secret.is_none() {
                Lapse::NotEnrolled
            } else if now >= session.expires {
                Lapse::Expired
            } else if now >= session.last_activity.saturating_add(idle) {
                Lapse::Idle
            } else {
                continue;
            };
            state.session = None;
            lapsed.push((peer.clone(), reason));
        }
        lapsed
    }

    /// The peers with an open session at `now`, in name order.
    pub fn open_peers(&self, now: u64) -> Vec<&str> {
        self.peers
            .keys()
            .filter(|peer| self.is_open(peer, now))
            .map(String::as_str)
            .collect()
    }

    /// The peers that hold a session, open or not yet lapsed, in name order.
    pub fn holders(&self) -> Vec<&str> {
        self.peers
            .iter()
            .filter(|(_, state)| state.session.is_some())
            .map(|(peer, _)| peer.as_str())
            .collect()
    }

    /// Forgets everything about `peer` but its lockout, as when the peer is removed: a peer
    /// added again under the same name starts without a session and must enroll again.
    /// Returns whether an open session ended.
    pub fn forget(&mut self, peer: &str) -> bool {
        let Some(state) = self.peers.get_mut(peer) else {
            return false;
        };
        state.secret = None;
        state.secret_id = None;
        state.last_step = None;
        state.session.take().is_some()
    }

    /// The saved form of the state, without the secrets, peers in name order.
    pub fn encode(&self) -> Result<String, serde_json::Error> {
        let file = FileRepr {
            version: VERSION,
            peers: self.peers.clone(),
        };
        let mut text = serde_json::to_string_pretty(&file)?;
        text.push('\n');
        Ok(text)
    }

    /// State saved by [`Sessions::encode`], with no secrets attached yet.
    pub fn decode(text: &str, policy: Policy) -> Result<Self, DecodeError> {
        let file: FileRepr = serde_json::from_str(text).map_err(DecodeError::Json)?;
        if file.version != VERSION {
            return Err(DecodeError::Version(file.version));
        }
        Ok(Sessions {
            policy,
            peers: file.peers,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8; 20] = b"12345678901234567890";
    const T0: u64 = 1_700_000_010;

    fn policy() -> Policy {
        Policy {
            session: Duration::from_secs(12 * 3600),
            idle: Duration::from_secs(30 * 60),
            max_failures: 3,
            lockout: Duration::from_secs(15 * 60),
        }
    }

    fn enrolled() -> Sessions {
        let mut sessions = Sessions::new(policy());
        sessions.set_secret("alice", Secret::from_bytes(*SECRET));
        sessions
    }

    fn code(now: u64) -> String {
        format!("{:06}", totp::code_at(SECRET, now))
    }

    fn wrong(now: u64) -> String {
        // Wrong for every step in the skew window.
        (0..1_000_000u32)
            .map(|c| format!("{c:06}"))
            .find(|c| (now - 30..=now + 30).step_by(30).all(|t| *c != code(t)))
            .expect("some code is wrong at every step of the window")
    }

    #[test]
    fn right_code_opens_a_session() {
        let mut sessions = enrolled();
        assert!(!sessions.is_open("alice", T0));
        assert_eq!(
            sessions.try_code("alice", &code(T0), T0),
            Outcome::Opened {
                expires: T0 + 12 * 3600
            }
        );
        assert!(sessions.is_open("alice", T0));
    }

    #[test]
    fn unknown_or_unenrolled_peer() {
        let mut sessions = Sessions::new(policy());
        assert_eq!(
            sessions.try_code("bob", &code(T0), T0),
            Outcome::NotEnrolled
        );
        assert!(!sessions.is_enrolled("bob"));
        assert!(!sessions.is_open("bob", T0));
    }

    #[test]
    fn reused_code_counts_as_wrong() {
        let mut sessions = enrolled();
        let c = code(T0);
        assert!(matches!(
            sessions.try_code("alice", &c, T0),
            Outcome::Opened { .. }
        ));
        assert_eq!(
            sessions.try_code("alice", &c, T0 + 1),
            Outcome::Wrong { remaining: 2 }
        );
    }

    #[test]
    fn lockout_after_max_failures_and_release_after_lockout() {
        let mut sessions = enrolled();
        let bad = wrong(T0);
        assert_eq!(
            sessions.try_code("alice", &bad, T0),
            Outcome::Wrong { remaining: 2 }
        );
        assert_eq!(
            sessions.try_code("alice", &bad, T0),
            Outcome::Wrong { remaining: 1 }
        );
        let until = T0 + 15 * 60;
        assert_eq!(
            sessions.try_code("alice", &bad, T0),
            Outcome::LockedOut { until }
        );
        // While locked out even the right code is not looked at.
        let later = until - 1;
        assert_eq!(
            sessions.try_code("alice", &code(later), later),
            Outcome::LockedOut { until }
        );
        assert!(!sessions.is_open("alice", later));
        // After the lockout the count starts again and the right code works.
        let bad = wrong(until);
        assert_eq!(
            sessions.try_code("alice", &bad, until),
            Outcome::Wrong { remaining: 2 }
        );
        assert!(matches!(
            sessions.try_code("alice", &code(until), until),
            Outcome::Opened { .. }
        ));
    }

    #[test]
    fn right_code_resets_the_failure_count() {
        let mut sessions = enrolled();
        let bad = wrong(T0);
        sessions.try_code("alice", &bad, T0);
        sessions.try_code("alice", &bad, T0);
        assert!(matches!(
            sessions.try_code("alice", &code(T0), T0),
            Outcome::Opened { .. }
        ));
        assert_eq!(
            sessions.try_code("alice", &bad, T0 + 30),
            Outcome::Wrong { remaining: 2 }
        );
    }

    #[test]
    fn session_ends_after_session_duration_despite_activity() {
        let mut sessions = enrolled();
        sessions.try_code("alice", &code(T0), T0);
        let expires = T0 + 12 * 3600;
        let mut now = T0;
        while now + 600 < expires {
            now += 600;
            assert!(sessions.touch("alice", now), "open at {now}");
        }
        assert!(sessions.is_open("alice", expires - 1));
        assert!(!sessions.is_open("alice", expires));
        assert!(!sessions.touch("alice", expires));
    }

    #[test]
    fn session_ends_after_idle() {
        let mut sessions = enrolled();
        sessions.try_code("alice", &code(T0), T0);
        assert!(sessions.touch("alice", T0 + 1000));
        let idle_end = T0 + 1000 + 30 * 60;
        assert!(sessions.is_open("alice", idle_end - 1));
        assert!(!sessions.is_open("alice", idle_end));
        // Activity after the idle end does not revive the session.
        assert!(!sessions.touch("alice", idle_end));
        assert!(!sessions.is_open("alice", idle_end));
    }

    #[test]
    fn lapse_reports_expired_and_idle_sessions_once() {
        let mut sessions = enrolled();
        sessions.set_secret("bob", Secret::from_bytes(*b"abcdefghijabcdefghij"));
        assert!(matches!(
            sessions.try_code("alice", &code(T0), T0),
            Outcome::Opened { .. }
        ));
        let bob_code = totp::code_at(b"abcdefghijabcdefghij", T0);
        assert!(matches!(
            sessions.try_code("bob", &format!("{bob_code:06}"), T0),
            Outcome::Opened { .. }
        ));
        assert_eq!(sessions.open_peers(T0 + 1), vec!["alice", "bob"]);
        // Alice stays active; Bob goes idle.
        let idle = policy().idle.as_secs();
        let end = T0 + policy().session.as_secs();
        for t in (T0..end).step_by(60) {
            sessions.touch("alice", t);
            let lapsed = sessions.lapse(t);
            if t < T0 + idle {
                assert!(lapsed.is_empty(), "at {t}: {lapsed:?}");
            } else if t < T0 + idle + 60 {
                assert_eq!(lapsed, vec![("bob".to_owned(), Lapse::Idle)]);
            } else {
                assert!(lapsed.is_empty(), "at {t}: {lapsed:?}");
            }
        }
        assert_eq!(
            sessions.lapse(end),
            vec![("alice".to_owned(), Lapse::Expired)]
        );
        assert!(sessions.open_peers(end).is_empty());
    }

    #[test]
    fn locked_until_and_forget() {
        let mut sessions = enrolled();
        for _ in 0..policy().max_failures {
            sessions.try_code("alice", &wrong(T0), T0);
        }
        let until = T0 + policy().lockout.as_secs();
        assert_eq!(sessions.locked_until("alice", T0 + 1), Some(until));
        assert_eq!(sessions.locked_until("alice", until), None);
        sessions.forget("alice");
        assert!(!sessions.is_enrolled("alice"));
        // The lockout outlives the removal.
        assert_eq!(sessions.locked_until("alice", T0 + 1), Some(until));
    }

    #[test]
    fn end_logs_out() {
        let mut sessions = enrolled();
        sessions.try_code("alice", &code(T0), T0);
        assert!(sessions.end("alice"));
        assert!(!sessions.is_open("alice", T0));
        assert!(!sessions.end("alice"));
    }

    #[test]
    fn new_secret_ends_the_session() {
        let mut sessions = enrolled();
        sessions.try_code("alice", &code(T0), T0);
        sessions.set_secret("alice", Secret::from_bytes([7; 20]));
        assert!(!sessions.is_open("alice", T0));
    }

    #[test]
    fn a_secret_enrolled_anew_while_stopped_ends_the_saved_session() {
        let mut sessions = enrolled();
        sessions.try_code("alice", &code(T0), T0);
        let text = sessions.encode().expect("encodes");
        let mut restored = Sessions::decode(&text, policy()).expect("decodes");
        assert!(restored.set_secret("alice", Secret::from_bytes([7; 20])));
        assert!(!restored.is_open("alice", T0 + 1));
        // The same secret as before keeps it.
        let mut restored = Sessions::decode(&text, policy()).expect("decodes");
        assert!(!restored.set_secret("alice", Secret::from_bytes(*SECRET)));
        assert!(restored.is_open("alice", T0 + 1));
    }

    #[test]
    fn persistence_round_trip() {
        let mut sessions = enrolled();
        sessions.set_secret("bob", Secret::from_bytes([9; 20]));
        sessions.try_code("alice", &code(T0), T0);
        let bad = wrong(T0);
        for _ in 0..3 {
            sessions.try_code("bob", &bad, T0);
        }
        let text = sessions.encode().expect("encodes");
        assert!(!text.contains("secret"), "{text}");

        let mut restored = Sessions::decode(&text, policy()).expect("decodes");
        // The secrets are attached from their files after a restart.
        assert!(!restored.is_open("alice", T0 + 1));
        restored.set_secret("alice", Secret::from_bytes(*SECRET));
        restored.set_secret("bob", Secret::from_bytes([9; 20]));
        assert_eq!(restored, sessions);
        assert!(restored.is_open("alice", T0 + 1));
        assert_eq!(
            restored.try_code("alice", &code(T0), T0 + 1),
            Outcome::Wrong { remaining: 2 },
            "a used code stays used across a restart"
        );
        assert_eq!(
            restored.try_code("bob", &bad, T0 + 1),
            Outcome::LockedOut { until: T0 + 900 }
        );
    }

    #[test]
    fn decode_refuses_other_versions_and_unknown_fields() {
        assert!(matches!(
            Sessions::decode(r#"{"version": 2, "peers": {}}"#, policy()),
            Err(DecodeError::Version(2))
        ));
        assert!(matches!(
            Sessions::decode(
                r#"{"version": 1, "peers": {"a": {"failures": 0, "locked_until": null, "last_step": null, "session": null, "secret": "x"}}}"#,
                policy()
            ),
            Err(DecodeError::Json(_))
        ));
    }

    #[test]
    fn store_round_trip_through_a_file() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let mut sessions = enrolled();
        sessions.try_code("alice", &code(T0), T0);
        super::super::store::save_sessions(dir.path(), &sessions).expect("saved");
        let mut loaded = super::super::store::load_sessions(dir.path(), policy()).expect("loaded");
        loaded.set_secret("alice", Secret::from_bytes(*SECRET));
        assert_eq!(loaded, sessions);
        let empty = super::super::store::load_sessions(&dir.path().join("none"), policy());
        assert_eq!(
            empty.expect("a missing file is a fresh state"),
            Sessions::new(policy())
        );
    }
}
