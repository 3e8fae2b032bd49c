//! `auth_failures`: repeated failed logins.
//!
//! - From an outside address (a `[[detection.log_source]]`), `threshold` failures within
//!   `window` ban the address; each further offence of it lasts `escalate` times longer, up to
//!   `max_ban`.
//! - Through the tunnel (inspection, `peer` set), `per_peer_threshold` failures within `window`
//!   of one peer end its MFA session (and with `suspend_disable`, refuse it for that long). Its
//!   tunnel address is not banned: it is not an outside address, and the XDP filter never sees
//!   it.
//!
//! After acting, the count of that address or peer starts again from zero, so the failures
//! that follow do not fire once each; an address's failures while its ban lasts are not counted
//! (they were logged late, or come from connections opened before the ban), so they neither ban
//! it again nor escalate its next ban.

use std::collections::VecDeque;
use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use crmguard_core::config;
use ipnet::IpNet;

use crate::action::{clean, Action, Detector};
use crate::clock::{since, unix_secs};
use crate::history::{escalated, forget_after, History};
use crate::table::{Table, Weigh};
use crate::{MAX_KEYS, MAX_WEIGHT};

/// Who failed: an outside address or a peer.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    Source(IpNet),
    Peer(String),
}

/// The times of the last failures of one key, oldest first, at most the threshold of them;
/// and, for an address this detector banned, when that ban ends.
struct Failures(VecDeque<SystemTime>, Option<SystemTime>);

impl Weigh for Failures {
    fn weight(&self) -> usize {
        self.0.len()
    }
}

/// One login failure, as the detector needs it.
pub(crate) struct Failure<'a> {
    pub source: IpAddr,
    /// The network `source` is counted and banned as (`Detectors::source_net`).
    pub net: IpNet,
    pub peer: Option<&'a str>,
    pub protocol: &'a str,
    pub service: Option<&'a str>,
    pub user: Option<&'a str>,
}

pub(crate) struct AuthFailures {
    config: config::AuthFailures,
    failures: Table<Key, Failures>,
}

impl AuthFailures {
    pub(crate) fn new(config: config::AuthFailures) -> Self {
        AuthFailures {
            config,
            failures: Table::new(MAX_KEYS, MAX_WEIGHT),
        }
    }

    pub(crate) fn update(&mut self, config: config::AuthFailures) {
        self.config = config;
    }

    pub(crate) fn tracked(&self) -> (usize, usize) {
        (self.failures.len(), self.failures.weight())
    }

    /// Forgets the keys whose last failure is a `window` or more before `now`.
    pub(crate) fn sweep(&mut self, now: SystemTime) {
        let window = self.config.window;
        self.failures.retain(|f| {
            f.0.back().is_some_and(|last| since(*last, now) < window)
                || f.1.is_some_and(|until| until > now)
        });
    }

    /// The `max_ban`, for how long the history remembers.
    pub(crate) fn memory(&self) -> Duration {
        forget_after(self.config.max_ban)
    }

    pub(crate) fn observe(
        &mut self,
        at: SystemTime,
        failure: &Failure<'_>,
        history: &mut History,
        out: &mut Vec<Action>,
    ) {
        let (key, threshold) = match failure.peer {
            Some(peer) => (Key::Peer(peer.to_owned()), self.config.per_peer_threshold),
            None => (Key::Source(failure.net), self.config.threshold),
        };
        let limit = usize::try_from(threshold.max(1)).unwrap_or(usize::MAX);
        let window = self.config.window;
        let count = self.failures.with(
            &key,
            || Failures(VecDeque::new(), None),
            |failures| {
                if failures.1.is_some_and(|until| at < until) {
                    return 0;
                }
                failures.1 = None;
                while failures
                    .0
                    .front()
                    .is_some_and(|first| since(*first, at) >= window)
                {
                    failures.0.pop_front();
                }
                failures.0.push_back(at);
                while failures.0.len() > limit {
                    failures.0.pop_front();
                }
                failures.0.len()
            },
        );
        if count < limit {
            return;
        }
        self.failures.remove(&key);
        let what = describe(failure, count, window);
        match failure.peer {
            Some(peer) => {
                out.push(Action::Suspend {
                    peer: peer.to_owned(),
                    detector: Detector::AuthFailures,
                    why: clean(&what),
                    disable_for: self.config.suspend_disable,
                });
                out.push(Action::Alert {
                    detector: Detector::AuthFailures,
                    peer: Some(peer.to_owned()),
                    source: Some(failure.source),
                    summary: clean(&format!("peer {peer}: {what}; MFA session ended")),
                });
            }
            None => {
                let offence = history.record(failure.net.addr(), unix_secs(at), self.memory());
                let c = &self.config;
                let duration = escalated(c.ban, c.escalate, c.max_ban, offence);
                let until = at.checked_add(duration);
                self.failures
                    .with(&key, || Failures(VecDeque::new(), until), |_| 0);
                out.push(Action::Ban {
                    net: failure.net,
                    duration,
                    detector: Detector::AuthFailures,
                    offence,
                    why: clean(&what),
                });
            }
        }
    }
}

fn describe(failure: &Failure<'_>, count: usize, window: Duration) -> String {
    let mut what = format!(
        "{count} failed {} logins within {}s",
        failure.protocol,
        window.as_secs()
    );
    if let Some(service) = failure.service {
        what.push_str(&format!(" to {service}"));
    }
    if let Some(user) = failure.user {
        what.push_str(&format!(" (last user {user})"));
    }
    what
}
