//! `off_hours`: a peer refused by the identity ACL because its role's `hours` do not cover the
//! moment (reason `outside_hours`) acts (`alert` or `suspend`), at most once per peer per
//! [`QUIET`].

use std::time::{Duration, SystemTime};

use crmguard_core::config;

use crate::action::{Action, Detector};
use crate::clock::since;
use crate::response::respond;
use crate::table::{Table, Weigh};
use crate::MAX_KEYS;

/// The ACL's reason for a refusal outside a role's hours.
pub const OUTSIDE_HOURS: &str = "outside_hours";

/// The least time between two responses for one peer.
pub const QUIET: Duration = Duration::from_secs(10 * 60);

struct LastResponse(Option<SystemTime>);

impl Weigh for LastResponse {
    fn weight(&self) -> usize {
        1
    }
}

pub(crate) struct OffHours {
    config: config::OffHours,
    peers: Table<String, LastResponse>,
}

impl OffHours {
    pub(crate) fn new(config: config::OffHours) -> Self {
        OffHours {
            config,
            peers: Table::new(MAX_KEYS, MAX_KEYS),
        }
    }

    pub(crate) fn update(&mut self, config: config::OffHours) {
        self.config = config;
    }

    pub(crate) fn tracked(&self) -> usize {
        self.peers.len()
    }

    /// Forgets the peers whose last response is [`QUIET`] or more before `now`.
    pub(crate) fn sweep(&mut self, now: SystemTime) {
        self.peers
            .retain(|last| last.0.is_some_and(|at| since(at, now) < QUIET));
    }

    pub(crate) fn observe(
        &mut self,
        at: SystemTime,
        peer: &str,
        service: &str,
        reason: &str,
        out: &mut Vec<Action>,
    ) {
        if reason != OUTSIDE_HOURS {
            return;
        }
        let respond_now = self.peers.with(
            &peer.to_owned(),
            || LastResponse(None),
            |last| {
                // A clock stepped back counts as quiet long enough, so it cannot mute a peer.
                let due = last.0.is_none_or(|t| since(t, at) >= QUIET || t > at);
                if due {
                    last.0 = Some(at);
                }
                due
            },
        );
        if !respond_now {
            return;
        }
        let what = format!("tried {service} outside its role's hours");
        respond(
            Detector::OffHours,
            self.config.action,
            peer,
            None,
            &what,
            None,
            out,
        );
    }
}
