//! A peer detector's response: an alert, or with `suspend` also the end of its MFA session.

use std::net::IpAddr;
use std::time::Duration;

use crmguard_core::config::ResponseAction;

use crate::action::{clean, Action, Detector};

pub(crate) fn respond(
    detector: Detector,
    action: ResponseAction,
    peer: &str,
    source: Option<IpAddr>,
    what: &str,
    disable_for: Option<Duration>,
    out: &mut Vec<Action>,
) {
    let suspend = action == ResponseAction::Suspend;
    if suspend {
        out.push(Action::Suspend {
            peer: peer.to_owned(),
            detector,
            why: clean(what),
            disable_for,
        });
    }
    let ended = if suspend { "; MFA session ended" } else { "" };
    out.push(Action::Alert {
        detector,
        peer: Some(peer.to_owned()),
        source,
        summary: clean(&format!("peer {peer}: {what}{ended}")),
    });
}
