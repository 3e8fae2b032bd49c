//! Who may use the VPN right now: the peers' MFA sessions as the agent keeps them, the
//! portal's questions about them, and the audit trail of the peers' lifecycle (handshakes,
//! sessions, expired keys).
//!
//! The daemon owns one [`Access`] and calls it from its loop: [`Access::portal`] for each
//! portal request, [`Access::tick`] every second, [`Access::peer_cut`] when a peer is
//! removed or disabled. Every change of a session goes to the endpoint's ACL at once
//! ([`crmguard_vpn::Supervisor::set_mfa_session`]) and to `state_dir/mfa/sessions.json`, so that a
//! restart neither logs everyone out nor lets a locked-out peer back in.
//!
//! Fail-closed: when `[audit] on_write_failure = "fail-closed"` a session is opened only if
//! its `mfa_success` record was written; otherwise the code is not spent and the peer is told
//! that sign-in is unavailable.

pub mod listing;

use crmguard_core::time::unix_now;
use prometheus::{IntCounterVec, Opts, Registry};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use crate::portal::{PeerView, PortalAction, PortalReply, PortalRequest};
use crmguard_core::audit::{self, Event, EventType, Outcome};
use crmguard_core::config::{Config, OnWriteFailure, Peer};
use crmguard_core::mfa::sessions::{self, Sessions};
use crmguard_core::mfa::{secrets, store};
use crmguard_core::peers::Excluded;
use crmguard_vpn::status::VpnStatus;

/// Where the sessions take effect: the endpoint's ACL ([`crmguard_vpn::Supervisor`] in the agent).
pub trait MfaGate {
    /// Opens or closes `peer`'s MFA session for the ACL; false when no such peer is admitted.
    fn set_mfa_session(&self, peer: &str, open: bool) -> bool;
}

impl MfaGate for crmguard_vpn::Supervisor {
    fn set_mfa_session(&self, peer: &str, open: bool) -> bool {
        crmguard_vpn::Supervisor::set_mfa_session(self, peer, open)
    }
}

/// How often session activity (which only moves `last_activity`) is saved at most; opening
/// and ending sessions are saved at once.
const SAVE_ACTIVITY_EVERY: Duration = Duration::from_secs(60);

/// The results of `crmguard_mfa_attempts_total`.
pub const ATTEMPT_RESULTS: [&str; 5] = ["ok", "wrong", "locked_out", "not_enrolled", "refused"];

/// `crmguard_mfa_attempts_total`, with a zero sample for every result.
fn attempts_total() -> IntCounterVec {
    // The name and help are constants that prometheus accepts; the tests register them.
    let counters = IntCounterVec::new(
        Opts::new(
            "crmguard_mfa_attempts_total",
            "MFA codes tried at the portal, by result",
        ),
        &["result"],
    )
    .expect("a valid metric definition");
    for result in ATTEMPT_RESULTS {
        counters.with_label_values(&[result]);
    }
    counters
}

/// What the agent keeps between portal requests and ticks.
pub struct Access {
    state_dir: PathBuf,
    sessions: Sessions,
    /// Whether `sessions` changed since it was saved, and whether that change was more than
    /// activity.
    unsaved: Option<bool>,
    last_save: Instant,
    /// The last inner packet count and handshake seen of each admitted peer.
    seen: HashMap<String, Seen>,
    /// Peers refused for an old key at the last tick: each is audited when it becomes so, and
    /// once after each start (the record says the peer is refused, which a reviewer of the
    /// log wants to see after a restart too).
    expired: BTreeSet<String>,
    attempts: BTreeMap<&'static str, u64>,
    /// `crmguard_mfa_attempts_total`, which this module owns (see [`Access::register_metrics`]).
    attempts_total: IntCounterVec,
    /// Unix seconds when the agent started.
    started: u64,
    /// Sessions ended while loading secrets, to be audited at the next tick.
    ended: Vec<(String, &'static str)>,
    /// Attempts that change nothing (while locked out, not enrolled), folded per peer and
    /// minute so that a peer hammering the portal cannot flood the log.
    futile: audit::Aggregator,
}

#[derive(Debug, Clone, Copy, Default)]
struct Seen {
    inner_packets: u64,
    handshake: Option<u64>,
}

impl Access {
    /// Loads the saved sessions of `config`'s state directory. A file that cannot be read is
    /// reported and replaced: the peers sign in again, which is the safe side.
    pub fn open(config: &Config) -> Access {
        let state_dir = config.agent.state_dir.clone();
        let policy = sessions::Policy::from(&config.mfa);
        let sessions = match store::load_sessions(&state_dir, policy) {
            Ok(sessions) => sessions,
            Err(e) => {
                let kept =
                    crmguard_core::atomic_file::keep_aside_noted(&store::sessions_path(&state_dir));
                tracing::error!(error = %crmguard_core::error_chain(&e), kept = %kept, "the saved MFA sessions cannot be used; every peer signs in again");
                Sessions::new(policy)
            }
        };
        let mut access = Access {
            state_dir,
            sessions,
            unsaved: None,
            last_save: Instant::now(),
            seen: HashMap::new(),
            expired: BTreeSet::new(),
            attempts: ATTEMPT_RESULTS.iter().map(|r| (*r, 0)).collect(),
            attempts_total: attempts_total(),
            started: unix_now(),
            ended: Vec::new(),
            futile: audit::Aggregator::new(),
        };
        access.load_secrets(config);
        access
    }

    /// Takes a reloaded configuration: the `[mfa]` settings and the peers' secrets.
    pub fn reload(&mut self, config: &Config) {
        self.sessions
            .set_policy(sessions::Policy::from(&config.mfa));
        self.load_secrets(config);
    }

    fn load_secrets(&mut self, config: &Config) {
        for peer in &config.peers {
            if let Some(reason) = self.refresh_secret(&peer.name) {
                self.ended.push((peer.name.clone(), reason));
            }
        }
    }

    /// Reads `peer`'s secret from disk: `mfa enroll` writes it while the agent runs. Returns
    /// why an open session ended: the secret is new (`reenrolled`) or gone (`not_enrolled`).
    fn refresh_secret(&mut self, peer: &str) -> Option<&'static str> {
        let ended = match secrets::load(&self.state_dir, peer) {
            Ok(Some(secret)) => self
                .sessions
                .set_secret(peer, secret)
                .then_some("reenrolled"),
            Ok(None) => self.sessions.forget(peer).then_some("not_enrolled"),
            Err(e) => {
                tracing::error!(%peer, error = %crmguard_core::error_chain(&e), "cannot read the peer's MFA secret");
                None
            }
        };
        if ended.is_some() {
            self.mark_changed(true);
        }
        ended
    }

    /// `crmguard mfa enroll` made a new secret for `peer`: an open session ends (the old
    /// authenticator no longer counts) and the enrollment is audited.
    pub fn enrolled(&mut self, peer: &str, by: &str, gate: &dyn MfaGate, audit: &mut audit::Sink) {
        if let Some(reason) = self.refresh_secret(peer) {
            self.record_end(peer, reason, None, gate, audit);
        }
        audit.record(
            &Event::new(EventType::MfaEnrolled, Outcome::Success, by).with_detail("peer", peer),
        );
        tracing::info!(%peer, "MFA secret enrolled");
    }

    /// `crmguard_mfa_attempts_total` by result.
    pub fn attempts(&self) -> &BTreeMap<&'static str, u64> {
        &self.attempts
    }

    /// Registers `crmguard_mfa_attempts_total` in `registry`, every result present from the
    /// start so that `rate()` sees the first attempt.
    pub fn register_metrics(&self, registry: &Registry) -> Result<(), prometheus::Error> {
        registry.register(Box::new(self.attempts_total.clone()))
    }

    /// The saved session state, read-only (for `status` and `peer list`).
    pub fn sessions(&self) -> &Sessions {
        &self.sessions
    }

    /// Answers one portal request.
    pub fn portal(
        &mut self,
        request: &PortalRequest,
        config: &Config,
        vpn: &dyn MfaGate,
        audit: &mut audit::Sink,
    ) -> PortalReply {
        let now = unix_now();
        let Some(peer) = peer_by_address(config, request.from) else {
            return PortalReply::UnknownPeer;
        };
        let name = peer.name.clone();
        if let Some(reason) = self.refresh_secret(&name) {
            self.record_end(&name, reason, Some(request.from), vpn, audit);
        }
        let mfa_required = role_needs_mfa(config, peer);
        let refused = refusal(config, peer);
        match &request.action {
            PortalAction::Show => PortalReply::View(PeerView {
                peer: name.clone(),
                mfa_required,
                enabled: refused.is_none(),
                enrolled: self.sessions.is_enrolled(&name),
                session_expires: self.sessions.session(&name, now).map(|s| s.expires),
                locked_until: self.sessions.locked_until(&name, now),
            }),
            PortalAction::Close => {
                let had_session = self.end_session(&name, "logout", request.from, vpn, audit);
                PortalReply::Closed {
                    peer: name,
                    had_session,
                }
            }
            PortalAction::Open { code } => {
                if refused.is_some() {
                    self.count("refused");
                    return PortalReply::Disabled { peer: name };
                }
                if !mfa_required {
                    self.count("refused");
                    return PortalReply::NotRequired { peer: name };
                }
                self.try_code(peer, code, request.from, config, vpn, audit, now)
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn try_code(
        &mut self,
        device: &Peer,
        code: &str,
        from: IpAddr,
        config: &Config,
        vpn: &dyn MfaGate,
        audit: &mut audit::Sink,
        now: u64,
    ) -> PortalReply {
        let peer = device.name.as_str();
        let fail_closed = config.audit.on_write_failure == OnWriteFailure::FailClosed;
        let was_locked = self.sessions.locked_until(peer, now).is_some();
        // Tried on a copy: under fail-closed nothing counts unless it was audited.
        let mut trial = self.sessions.clone();
        let outcome = trial.try_code(peer, code, now);
        if let sessions::Outcome::Opened { .. } = outcome {
            trial.bind_key(peer, &crmguard_core::keys::encode(&device.public_key));
        }
        // Attempts that change nothing are folded per minute instead of written one by one.
        let futile = match outcome {
            sessions::Outcome::LockedOut { until } if was_locked => Some((
                "locked_out",
                PortalReply::LockedOut {
                    peer: peer.to_owned(),
                    until,
                },
            )),
            sessions::Outcome::NotEnrolled => Some((
                "not_enrolled",
                PortalReply::NotEnrolled {
                    peer: peer.to_owned(),
                },
            )),
            _ => None,
        };
        if let Some((result, reply)) = futile {
            let src = from.to_string();
            self.futile.add(
                EventType::MfaFailure,
                peer,
                result,
                SystemTime::now(),
                Some(&src),
                None,
            );
            self.count(result);
            return reply;
        }
        let (event, reply, result) = match outcome {
            sessions::Outcome::Opened { expires } => (
                Event::new(EventType::MfaSuccess, Outcome::Success, peer)
                    .with_detail("expires", format_unix(expires)),
                PortalReply::Opened {
                    peer: peer.to_owned(),
                    expires,
                },
                "ok",
            ),
            sessions::Outcome::Wrong { remaining } => (
                Event::new(EventType::MfaFailure, Outcome::Failure, peer)
                    .with_detail("reason", "wrong_code")
                    .with_detail("remaining", remaining),
                PortalReply::Wrong {
                    peer: peer.to_owned(),
                    remaining,
                },
                "wrong",
            ),
            sessions::Outcome::LockedOut { until } => (
                Event::new(EventType::MfaFailure, Outcome::Failure, peer)
                    .with_detail("reason", "locked_out")
                    .with_detail("locked_until", format_unix(until)),
                PortalReply::LockedOut {
                    peer: peer.to_owned(),
                    until,
                },
                "locked_out",
            ),
            sessions::Outcome::NotEnrolled => (
                Event::new(EventType::MfaFailure, Outcome::Failure, peer)
                    .with_detail("reason", "not_enrolled"),
                PortalReply::NotEnrolled {
                    peer: peer.to_owned(),
                },
                "not_enrolled",
            ),
        };
        let written = audit.record(&event.with_src(from.to_string()));
        if !written && fail_closed {
            self.count("refused");
            tracing::error!(%peer, "MFA sign-in refused: the audit log cannot be written (on_write_failure = fail-closed)");
            return PortalReply::Unavailable {
                peer: peer.to_owned(),
                reason: "the audit log cannot be written, so no session can be opened; tell the administrator".to_owned(),
            };
        }
        self.sessions = trial;
        self.count(result);
        if let PortalReply::Opened { .. } = reply {
            if !vpn.set_mfa_session(peer, true) {
                tracing::warn!(%peer, "MFA session opened for a peer the endpoint does not admit");
            }
            tracing::info!(%peer, "MFA session opened");
        } else {
            tracing::info!(%peer, result, "MFA code refused");
        }
        self.mark_changed(true);
        reply
    }

    fn count(&mut self, result: &'static str) {
        *self.attempts.entry(result).or_default() += 1;
        self.attempts_total.with_label_values(&[result]).inc();
    }

    /// Records a session that already ended, and closes it for the ACL.
    fn record_end(
        &mut self,
        peer: &str,
        reason: &str,
        from: Option<IpAddr>,
        gate: &dyn MfaGate,
        audit: &mut audit::Sink,
    ) {
        gate.set_mfa_session(peer, false);
        tracing::info!(%peer, reason, "MFA session ended");
        let mut event =
            Event::new(EventType::MfaSessionEnd, Outcome::Info, peer).with_detail("reason", reason);
        if let Some(from) = from {
            event = event.with_src(from.to_string());
        }
        audit.record(&event);
    }

    /// Ends `peer`'s session, if open, for `reason`; returns whether there was one.
    fn end_session(
        &mut self,
        peer: &str,
        reason: &str,
        from: IpAddr,
        vpn: &dyn MfaGate,
        audit: &mut audit::Sink,
    ) -> bool {
        let was_open = self.sessions.is_open(peer, unix_now());
        let had = self.sessions.end(peer);
        vpn.set_mfa_session(peer, false);
        if had {
            self.mark_changed(true);
        }
        if was_open {
            tracing::info!(%peer, reason, "MFA session ended");
            audit.record(
                &Event::new(EventType::MfaSessionEnd, Outcome::Info, peer)
                    .with_src(from.to_string())
                    .with_detail("reason", reason),
            );
        }
        was_open
    }

    /// A detector suspended `peer`: its MFA session ends now (`reason` is the detector), so it
    /// reaches only the portal until it signs in again. Returns whether a session was open.
    pub fn suspend(
        &mut self,
        peer: &str,
        reason: &str,
        config: &crmguard_core::config::Config,
        vpn: &dyn MfaGate,
        audit: &mut audit::Sink,
    ) -> bool {
        let from = config
            .peers
            .iter()
            .find(|p| p.name == peer)
            .map_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), |p| {
                IpAddr::V4(p.address)
            });
        self.end_session(peer, &format!("suspended by {reason}"), from, vpn, audit)
    }

    /// A peer was removed or disabled (`reason`): its session ends now.
    pub fn peer_cut(
        &mut self,
        peer: &Peer,
        reason: &str,
        vpn: &dyn MfaGate,
        audit: &mut audit::Sink,
    ) {
        let from = IpAddr::V4(peer.address);
        self.end_session(&peer.name, reason, from, vpn, audit);
        if reason == "removed" {
            self.sessions.forget(&peer.name);
            self.mark_changed(true);
        }
    }

    /// The once-a-second work: sessions that expired or went idle end, activity keeps the
    /// others alive, new handshakes and newly expired keys are audited, and the endpoint's
    /// view of the sessions is brought in line (an endpoint restarted by a reload starts with
    /// none).
    pub fn tick(
        &mut self,
        config: &Config,
        status: Option<&VpnStatus>,
        vpn: &dyn MfaGate,
        audit: &mut audit::Sink,
    ) {
        let now = unix_now();
        if let Some(status) = status {
            self.observe(status, now, audit);
        }
        for (peer, reason) in std::mem::take(&mut self.ended) {
            self.record_end(&peer, reason, None, vpn, audit);
        }
        self.check_sessions(config, vpn, audit, now);
        for event in self.futile.flush(SystemTime::now()) {
            audit.record(&event);
        }
        for (peer, why) in self.sessions.lapse(now) {
            self.mark_changed(true);
            vpn.set_mfa_session(&peer, false);
            tracing::info!(%peer, reason = why.as_str(), "MFA session ended");
            audit.record(
                &Event::new(EventType::MfaSessionEnd, Outcome::Info, peer.as_str())
                    .with_detail("reason", why.as_str()),
            );
        }
        if let Some(status) = status {
            for peer in &status.peers {
                let open = self.sessions.is_open(&peer.name, now);
                if peer.mfa_session != open {
                    vpn.set_mfa_session(&peer.name, open);
                }
            }
            self.audit_expired_keys(config, status, vpn, audit);
        }
        self.save_if_due();
    }

    /// Ends the open sessions that no longer belong to an admitted device: the peer was
    /// removed, disabled, its key expired or changed (also while the agent was stopped), or
    /// its secret was enrolled anew (read again every second for the peers with a session).
    fn check_sessions(
        &mut self,
        config: &Config,
        gate: &dyn MfaGate,
        audit: &mut audit::Sink,
        now: u64,
    ) {
        let open: Vec<String> = self
            .sessions
            .holders()
            .into_iter()
            .map(str::to_owned)
            .collect();
        if open.is_empty() {
            return;
        }
        let (_, refused) = crmguard_core::peers::admitted(config, SystemTime::now());
        for name in open {
            if let Some(reason) = self.refresh_secret(&name) {
                self.record_end(&name, reason, None, gate, audit);
                continue;
            }
            let reason = match config.peers.iter().find(|p| p.name == name) {
                None => "removed",
                Some(peer) if !peer.enabled => "disabled",
                Some(_)
                    if refused
                        .iter()
                        .any(|(n, why)| *n == name && *why == Excluded::KeyTooOld) =>
                {
                    "key_expired"
                }
                Some(peer) => {
                    let key = crmguard_core::keys::encode(&peer.public_key);
                    match self.sessions.session(&name, now) {
                        // Lapsed: `lapse` ends it with its own reason.
                        None => continue,
                        Some(session) if session.key.as_deref() == Some(key.as_str()) => continue,
                        Some(_) => "rekeyed",
                    }
                }
            };
            self.sessions.end(&name);
            self.mark_changed(true);
            self.record_end(&name, reason, None, gate, audit);
        }
    }

    /// Activity and handshakes from the endpoint's counters.
    fn observe(&mut self, status: &VpnStatus, now: u64, audit: &mut audit::Sink) {
        let mut seen = HashMap::with_capacity(status.peers.len());
        // The handshakes of one observation are written together, with one flush to disk.
        let mut handshakes = Vec::new();
        for peer in &status.peers {
            let before = self.seen.get(&peer.name).copied();
            // Any change: the count starts again at 0 when the endpoint restarts.
            let moved = before.is_some_and(|b| peer.inner_packets != b.inner_packets);
            if moved && self.sessions.touch(&peer.name, now) {
                self.mark_changed(false);
            }
            let new_handshake = match (before.and_then(|b| b.handshake), peer.latest_handshake) {
                (_, None) => false,
                // First seen: a handshake remembered from before this agent started is old.
                (None, Some(new)) => before.is_some() || new >= self.started,
                (Some(old), Some(new)) => new > old,
            };
            if new_handshake {
                let mut event = Event::new(
                    EventType::PeerHandshake,
                    Outcome::Success,
                    peer.name.as_str(),
                )
                .with_detail("role", peer.role.clone());
                if let Some(endpoint) = &peer.endpoint {
                    event = event.with_src(endpoint.clone());
                }
                handshakes.push(event);
            }
            seen.insert(
                peer.name.clone(),
                Seen {
                    inner_packets: peer.inner_packets,
                    handshake: peer.latest_handshake,
                },
            );
        }
        self.seen = seen;
        audit.record_all(&handshakes);
    }

    fn audit_expired_keys(
        &mut self,
        config: &Config,
        status: &VpnStatus,
        vpn: &dyn MfaGate,
        audit: &mut audit::Sink,
    ) {
        let expired: BTreeSet<String> = status
            .excluded
            .iter()
            .filter(|e| e.reason == Excluded::KeyTooOld.as_str())
            .map(|e| e.name.clone())
            .collect();
        let newly: Vec<String> = expired.difference(&self.expired).cloned().collect();
        for name in &newly {
            tracing::warn!(peer = %name, "VPN peer refused: its key is older than vpn.key_max_age; re-key it with `crmguard peer add`");
            audit.record(
                &Event::new(EventType::PeerExpired, Outcome::Info, name.as_str())
                    .with_detail("reason", "key older than vpn.key_max_age"),
            );
            if let Some(peer) = config.peers.iter().find(|p| p.name == *name) {
                self.peer_cut(peer, "key_expired", vpn, audit);
            }
        }
        self.expired = expired;
    }

    fn mark_changed(&mut self, important: bool) {
        self.unsaved = Some(self.unsaved.unwrap_or(false) || important);
        if important {
            self.save_if_due();
        }
    }

    fn save_if_due(&mut self) {
        let Some(important) = self.unsaved else {
            return;
        };
        if !important && self.last_save.elapsed() < SAVE_ACTIVITY_EVERY {
            return;
        }
        match store::save_sessions(&self.state_dir, &self.sessions) {
            Ok(()) => {
                self.unsaved = None;
                self.last_save = Instant::now();
            }
            Err(e) => {
                tracing::error!(error = %crmguard_core::error_chain(&e), "cannot save the MFA sessions; retried every second");
            }
        }
    }

    /// Saves what is pending and writes the folded attempts, as the agent stops.
    pub fn flush(&mut self, audit: &mut audit::Sink) {
        for event in self.futile.flush_all() {
            audit.record(&event);
        }
        if self.unsaved.is_some() {
            self.unsaved = Some(true);
            self.save_if_due();
        }
    }
}

/// The configured peer whose tunnel address is `addr`.
pub fn peer_by_address(config: &Config, addr: IpAddr) -> Option<&Peer> {
    config.peers.iter().find(|p| match addr {
        IpAddr::V4(v4) => p.address == v4,
        IpAddr::V6(v6) => p.address6 == Some(v6) || v6.to_ipv4_mapped() == Some(p.address),
    })
}

/// Whether `peer`'s role requires an MFA session.
pub fn role_needs_mfa(config: &Config, peer: &Peer) -> bool {
    config
        .roles
        .iter()
        .find(|r| r.name == peer.role)
        .is_some_and(|r| r.mfa)
}

/// Why the endpoint refuses `peer` now, if it does.
fn refusal(config: &Config, peer: &Peer) -> Option<Excluded> {
    let (_, excluded) = crmguard_core::peers::admitted(config, SystemTime::now());
    excluded
        .into_iter()
        .find(|(name, _)| *name == peer.name)
        .map(|(_, why)| why)
}

/// RFC 3339 in UTC, whole seconds.
pub fn format_unix(secs: u64) -> String {
    crmguard_core::time::format_unix_seconds(secs)
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod format_tests {
    use super::*;

    #[test]
    fn format_unix_is_rfc3339_seconds() {
        assert_eq!(format_unix(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_unix(1_700_000_000), "2023-11-14T22:13:20Z");
    }
}
