//! What the detectors ask the daemon to do.

use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use ipnet::IpNet;

/// A detector, by its stable name: the `detector` label of `crmguard_detections_total` and the
/// author of its bans (`detector:<name>`). Names are never changed or reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Detector {
    AuthFailures,
    PortScan,
    Volume,
    NewEndpoint,
    OffHours,
}

impl Detector {
    /// Every detector, for metrics that start at zero.
    pub const ALL: [Detector; 5] = [
        Detector::AuthFailures,
        Detector::PortScan,
        Detector::Volume,
        Detector::NewEndpoint,
        Detector::OffHours,
    ];

    /// The stable name.
    pub fn name(self) -> &'static str {
        match self {
            Detector::AuthFailures => "auth_failures",
            Detector::PortScan => "port_scan",
            Detector::Volume => "volume",
            Detector::NewEndpoint => "new_endpoint",
            Detector::OffHours => "off_hours",
        }
    }
}

impl fmt::Display for Detector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One response. Texts (`why`, `summary`) hold no control characters and at most
/// [`MAX_TEXT_CHARS`] characters, so a ban reason is always accepted by the ban list.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Ban `net` (an outside address, as a /32 or /128) in the XDP filter through the ban list.
    Ban {
        net: IpNet,
        duration: Duration,
        detector: Detector,
        /// Which offence of this address this is, 1 for the first one remembered.
        offence: u32,
        why: String,
    },
    /// End the peer's MFA session (it reaches only the MFA portal until it logs in again);
    /// with `disable_for`, also refuse the peer for that long.
    Suspend {
        peer: String,
        detector: Detector,
        why: String,
        disable_for: Option<Duration>,
    },
    /// Record and send an alert. Every `Suspend` comes with one.
    Alert {
        detector: Detector,
        peer: Option<String>,
        source: Option<IpAddr>,
        summary: String,
    },
}

impl Action {
    /// The detector that asked for it.
    pub fn detector(&self) -> Detector {
        match self {
            Action::Ban { detector, .. }
            | Action::Suspend { detector, .. }
            | Action::Alert { detector, .. } => *detector,
        }
    }
}

/// The longest `why` or `summary`, in characters (below the ban list's reason limit).
pub const MAX_TEXT_CHARS: usize = 200;

/// `text` with control characters replaced by `?` and cut to [`MAX_TEXT_CHARS`] characters: the
/// texts carry user names and service names that came from outside.
pub(crate) fn clean(text: &str) -> String {
    let mut out: String = text
        .chars()
        .take(MAX_TEXT_CHARS)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    if out.trim().is_empty() {
        out = String::from("detection");
    }
    out
}
