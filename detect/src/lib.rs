//! crmguard's detection and response (contract layer 5).
//!
//! Detectors are pure state machines: the daemon feeds [`Detectors::observe`] timestamped
//! [`Observation`]s (login failures from inspection and from log sources, the XDP filter's drop
//! samples, WireGuard handshakes, peers' byte counters, the identity ACL's refusals) and
//! carries out the [`Action`]s it returns: bans through the ban list (the same one as
//! `crmguard ban add`), ending a peer's MFA session, alerts. Nothing here reads a clock, a
//! file or a socket, and no function panics on any input.
//!
//! | detector | input | response |
//! | --- | --- | --- |
//! | `auth_failures` | login failures per outside address / per peer | ban (escalating) / suspend |
//! | `port_scan` | drop samples per outside address | ban |
//! | `volume` | bytes sent to a peer per sliding hour | alert or suspend |
//! | `new_endpoint` | a peer's handshake from a new /24 or /48 | alert or suspend |
//! | `off_hours` | ACL refusals `outside_hours` | alert or suspend |
//!
//! **The allowlist** (`[detection] allowlist`) is never acted on: a login failure, drop or
//! handshake whose address is inside it never yields a ban, suspension or alert. Volume and
//! off-hours observations carry no address and are not subject to it.
//!
//! **Memory is bounded** whatever the input: each detector tracks at most [`MAX_KEYS`] addresses
//! or peers and [`MAX_WEIGHT`] counted items (timestamps, ports, networks), forgetting the least
//! recently used first; the escalation [`History`] holds at most
//! [`history::MAX_ADDRESSES`] addresses.

#![forbid(unsafe_code)]

mod action;
mod auth_failures;
mod clock;
pub mod history;
pub mod new_endpoint;
mod observation;
pub mod off_hours;
mod port_scan;
mod response;
mod table;
mod volume;

use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use crmguard_core::config;
use ipnet::IpNet;

pub use action::{Action, Detector, MAX_TEXT_CHARS};
pub use history::{History, Offence};
pub use observation::{Input, Observation};

/// The most addresses or peers each detector tracks.
pub const MAX_KEYS: usize = 65_536;

/// The most counted items (failure timestamps, ports, networks) each detector keeps in all.
pub const MAX_WEIGHT: usize = 1 << 20;

/// How often state that can no longer act is swept away, in observation time.
const SWEEP_EVERY: Duration = Duration::from_secs(60);

/// How much state the detectors hold, for a gauge and for tests of the bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Tracked {
    /// Addresses and peers with recent login failures.
    pub auth_keys: usize,
    /// Their failure timestamps.
    pub auth_failures: usize,
    /// Addresses with recent dropped packets.
    pub scan_sources: usize,
    /// Their distinct ports.
    pub scan_ports: usize,
    /// Peers whose traffic is counted.
    pub volume_peers: usize,
    /// Peers whose networks are known.
    pub endpoint_peers: usize,
    /// Peers with a recent off-hours response.
    pub off_hours_peers: usize,
    /// Addresses in the escalation history.
    pub history: usize,
}

/// Every detector, with the configuration of `[detection]` and the escalation history.
pub struct Detectors {
    allowlist: Vec<IpNet>,
    /// How many leading bits of an IPv6 source are counted and banned as one source.
    source_prefix6: u8,
    history: History,
    auth: auth_failures::AuthFailures,
    scan: port_scan::PortScan,
    volume: volume::Volume,
    endpoint: new_endpoint::NewEndpoint,
    off_hours: off_hours::OffHours,
    last_sweep: Option<SystemTime>,
}

impl Detectors {
    /// Detectors configured by `config`, continuing the escalation `history` the daemon kept.
    pub fn new(config: &config::Detection, history: History) -> Self {
        Detectors {
            allowlist: config.allowlist.clone(),
            source_prefix6: config.source_prefix6,
            history,
            auth: auth_failures::AuthFailures::new(config.auth_failures),
            scan: port_scan::PortScan::new(config.port_scan),
            volume: volume::Volume::new(config.volume),
            endpoint: new_endpoint::NewEndpoint::new(config.new_endpoint),
            off_hours: off_hours::OffHours::new(config.off_hours),
            last_sweep: None,
        }
    }

    /// A reloaded configuration: thresholds, windows, durations, actions and the allowlist
    /// change; counts in progress, known networks and the history stay.
    pub fn update(&mut self, config: &config::Detection) {
        self.allowlist = config.allowlist.clone();
        self.source_prefix6 = config.source_prefix6;
        self.auth.update(config.auth_failures);
        self.scan.update(config.port_scan);
        self.volume.update(config.volume);
        self.endpoint.update(config.new_endpoint);
        self.off_hours.update(config.off_hours);
    }

    /// The network an outside source is counted and banned as: its address for IPv4, its
    /// `source_prefix6` prefix for IPv6 (the rate limits' unit: one host may use every address
    /// of its /64 in turn, and would otherwise never reach a threshold).
    fn source_net(&self, source: IpAddr) -> IpNet {
        match source {
            IpAddr::V4(_) => IpNet::from(source),
            IpAddr::V6(v6) => ipnet::Ipv6Net::new(v6, self.source_prefix6.min(128))
                .map_or(IpNet::from(source), |net| IpNet::V6(net.trunc())),
        }
    }

    /// The escalation history, for the daemon to save.
    pub fn history(&self) -> &History {
        &self.history
    }

    /// How much state the detectors hold.
    pub fn tracked(&self) -> Tracked {
        let (auth_keys, auth_failures) = self.auth.tracked();
        let (scan_sources, scan_ports) = self.scan.tracked();
        Tracked {
            auth_keys,
            auth_failures,
            scan_sources,
            scan_ports,
            volume_peers: self.volume.tracked(),
            endpoint_peers: self.endpoint.tracked(),
            off_hours_peers: self.off_hours.tracked(),
            history: self.history.len(),
        }
    }

    /// Whether `addr` is inside `[detection] allowlist`.
    pub fn allowlisted(&self, addr: IpAddr) -> bool {
        let addr = addr.to_canonical();
        self.allowlist.iter().any(|net| net.contains(&addr))
    }

    /// Feeds one observation and returns what to do about it (most often nothing).
    pub fn observe(&mut self, obs: Observation) -> Vec<Action> {
        let at = obs.at;
        self.sweep(at);
        let mut out = Vec::new();
        match &obs.input {
            Input::LoginFailure {
                source,
                peer,
                protocol,
                service,
                user,
            } => {
                let source = source.to_canonical();
                if self.allowlisted(source) || (peer.is_none() && !outside_address(source)) {
                    return out;
                }
                let failure = auth_failures::Failure {
                    source,
                    net: self.source_net(source),
                    peer: peer.as_deref(),
                    protocol,
                    service: service.as_deref(),
                    user: user.as_deref(),
                };
                self.auth.observe(at, &failure, &mut self.history, &mut out);
            }
            Input::Dropped {
                source,
                dst_port,
                proto,
            } => {
                let source = source.to_canonical();
                if self.allowlisted(source) || !outside_address(source) {
                    return out;
                }
                let memory = self.auth.memory();
                self.scan.observe(
                    at,
                    self.source_net(source),
                    (*proto, *dst_port),
                    &mut self.history,
                    memory,
                    &mut out,
                );
            }
            Input::Handshake { peer, endpoint } => {
                let allowed = self.allowlisted(endpoint.ip());
                self.endpoint
                    .observe(at, peer, *endpoint, allowed, &mut out);
            }
            Input::PeerBytes { peer, tx_total, .. } => {
                self.volume.observe(at, peer, *tx_total, &mut out);
            }
            Input::AclDenied {
                peer,
                service,
                reason,
            } => {
                self.off_hours.observe(at, peer, service, reason, &mut out);
            }
        }
        out
    }

    /// Once per [`SWEEP_EVERY`] of observation time: drops counts whose window has passed and
    /// forgotten offences.
    fn sweep(&mut self, now: SystemTime) {
        if self
            .last_sweep
            .is_some_and(|last| clock::since(last, now) < SWEEP_EVERY && last <= now)
        {
            return;
        }
        self.last_sweep = Some(now);
        self.auth.sweep(now);
        self.scan.sweep(now);
        self.off_hours.sweep(now);
        let memory = self.auth.memory().as_secs();
        self.history
            .forget_before(clock::unix_secs(now).saturating_sub(memory));
    }
}

/// Whether the ban list can ban `addr`: not loopback, unspecified or multicast (it refuses the
/// first two, and no packet comes from the last).
fn outside_address(addr: IpAddr) -> bool {
    !(addr.is_loopback() || addr.is_unspecified() || addr.is_multicast())
}
