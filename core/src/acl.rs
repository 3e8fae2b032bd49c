//! The identity ACL: what a peer may reach through the tunnel (layer 3 of the product contract).
//!
//! Every packet a peer sends, once decrypted and once its source has been checked against the
//! peer's tunnel addresses, goes through [`Acl::decide`] before it is written to the TUN device.
//! The rules, in order:
//!
//! 1. A packet that does not parse is denied (`malformed`), and so is a packet from a peer the
//!    configuration does not name (`no_role`), a packet whose source is not the peer's own tunnel
//!    address (`source_mismatch`) and a fragment (`fragment`: a fragment cannot be matched to a
//!    service without reassembly; WireGuard's tunnel MTU and TCP's MSS keep clients from
//!    fragmenting in practice). A disabled peer reaches nothing (`peer_disabled`).
//! 2. Only the gateway's own tunnel addresses (`[vpn] address` and `address6`) are reachable.
//!    The gateway is not a router to the LAN or the internet: anything else is `not_to_gateway`.
//! 3. ICMP and ICMPv6 echo requests to the gateway are allowed for every enabled peer, whatever
//!    its role, hours or MFA state, so that a client can check that its tunnel works.
//! 4. The MFA portal (tcp/`[mfa] portal_port` on the gateway) is reachable by every enabled peer
//!    at any hour: it is where a peer opens its MFA session, sees who it is and logs out.
//! 5. TCP and UDP to a service on the gateway: allowed when the peer's role lists it
//!    (`not_in_role` otherwise), the role's hours contain the current local time
//!    (`outside_hours`), and, for a role with `mfa = true`, the peer has an open MFA session
//!    (`mfa_required`). Every other protocol and ICMP message is `not_in_role`.
//!
//! A denied TCP SYN is answered with a reset and other denied TCP and UDP with an ICMP
//! "administratively prohibited", so that clients fail fast instead of timing out. Nothing is
//! answered for malformed packets, fragments, unknown peers or spoofed sources, for packets to
//! broadcast or multicast addresses, for resets, and for anything but TCP and UDP (RFC 1122
//! forbids ICMP errors about ICMP errors). [`Verdict::Deny`] names the reply; building it is
//! [`crate::acl::reject`]'s job.
//!
//! Only packets from peers to the gateway pass through here. Replies of the gateway's services
//! go the other way and are not the ACL's concern.
//!
//! This module is pure except for [`LocalTime::now`], which reads the clock and the time zone:
//! [`Acl::decide`] takes the time as an argument, allocates nothing and reads no clock, so the
//! caller may read the local time once a second and reuse it.

#![deny(unsafe_code)]

pub mod packet;
pub mod reject;

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use prometheus::{IntCounterVec, Opts, Registry};

use crate::audit::{Aggregator, Event, EventType};
use crate::config::{Config, Hours, Proto, ServiceSpec};
use packet::{Transport, TCP_RST};

/// The service label of a denied packet that matches no service listed by any role.
pub const OTHER_SERVICE: &str = "other";

/// The role label of a packet from a peer the configuration does not name. Role names are made
/// of `[A-Za-z0-9._-]`, so this label never collides with one.
pub const NO_ROLE: &str = "(none)";

/// The ICMP echo request type.
const ICMP_ECHO_REQUEST: u8 = 8;
/// The ICMPv6 echo request type.
const ICMPV6_ECHO_REQUEST: u8 = 128;

/// A moment of the week in the host's local time, which is what `hours` of a role are written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalTime {
    /// The day of the week, 0 for Monday to 6 for Sunday.
    pub weekday: u8,
    /// Minutes since local midnight, 0 to 1439.
    pub minute_of_day: u16,
}

/// Why the local time could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LocalTimeError {
    /// The time is outside what the calendar can show (beyond the year 9999).
    #[error("cannot convert {unix_seconds} s since the Unix epoch to local time")]
    Convert {
        /// The time that failed.
        unix_seconds: i64,
    },
}

impl LocalTime {
    /// A moment outside every window of every role (there is no eighth week day): what to decide
    /// with while the local time cannot be read, so that roles with hours fail closed. Roles
    /// without hours are not affected.
    pub const UNKNOWN: LocalTime = LocalTime {
        weekday: 7,
        minute_of_day: 0,
    };

    /// The current local time of the host.
    ///
    /// This reads the clock and the system's time zone: `TZ`, else `/etc/localtime`, which is
    /// cached and checked again every few minutes, so a changed zone takes effect without a
    /// restart. A zone that cannot be read counts as UTC, with a warning logged. Call it once
    /// per second or so, not per packet. On an error, decide with [`LocalTime::UNKNOWN`].
    pub fn now() -> Result<LocalTime, LocalTimeError> {
        LocalTime::at(crate::time::unix_seconds_signed(
            std::time::SystemTime::now(),
        ))
    }

    /// The local time at `unix_seconds` since the Unix epoch, in the host's time zone.
    pub fn at(unix_seconds: i64) -> Result<LocalTime, LocalTimeError> {
        LocalTime::at_in(unix_seconds, &jiff::tz::TimeZone::system())
    }

    /// The local time at `unix_seconds` since the Unix epoch in `zone`.
    pub fn at_in(
        unix_seconds: i64,
        zone: &jiff::tz::TimeZone,
    ) -> Result<LocalTime, LocalTimeError> {
        let (weekday, minute_of_day) = crate::time::week_minute(unix_seconds, zone)
            .ok_or(LocalTimeError::Convert { unix_seconds })?;
        Ok(LocalTime {
            weekday,
            minute_of_day,
        })
    }
}

/// What an allowed packet reaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    /// A service that the peer's role lists, such as tcp/5432.
    Role(ServiceSpec),
    /// The MFA portal.
    MfaPortal,
    /// An ICMP or ICMPv6 echo request to the gateway.
    Echo,
}

/// The reason names of allowed packets, as `crmguard explain` and policy tests write them:
/// [`Service::reason`] of each kind.
pub const ALLOW_REASONS: [&str; 3] = ["service", "mfa_portal", "echo"];

impl Service {
    /// Why the packet was allowed, one of [`ALLOW_REASONS`].
    pub fn reason(self) -> &'static str {
        match self {
            Service::Role(_) => ALLOW_REASONS[0],
            Service::MfaPortal => ALLOW_REASONS[1],
            Service::Echo => ALLOW_REASONS[2],
        }
    }
}

/// Why a packet was denied. The spelling of [`DenyReason::as_str`] is used in logs, audit
/// records and metrics and never changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DenyReason {
    /// The packet is not a well-formed IPv4 or IPv6 packet.
    Malformed,
    /// The configuration names no such peer (removed by a reload, for example), so it has no
    /// role.
    NoRole,
    /// The source address is not one of the peer's tunnel addresses.
    SourceMismatch,
    /// The packet is a fragment.
    Fragment,
    /// The peer is disabled.
    PeerDisabled,
    /// The destination is not one of the gateway's tunnel addresses.
    NotToGateway,
    /// The peer's role does not list the service, or the packet is neither TCP, UDP nor an echo
    /// request.
    NotInRole,
    /// The role lists the service but its hours do not contain the current time.
    OutsideHours,
    /// The role needs MFA and the peer has no open MFA session.
    MfaRequired,
}

impl DenyReason {
    /// Every reason, in declaration order.
    pub const ALL: [DenyReason; 9] = [
        DenyReason::Malformed,
        DenyReason::NoRole,
        DenyReason::SourceMismatch,
        DenyReason::Fragment,
        DenyReason::PeerDisabled,
        DenyReason::NotToGateway,
        DenyReason::NotInRole,
        DenyReason::OutsideHours,
        DenyReason::MfaRequired,
    ];

    /// The name used in logs, audit records and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            DenyReason::Malformed => "malformed",
            DenyReason::NoRole => "no_role",
            DenyReason::SourceMismatch => "source_mismatch",
            DenyReason::Fragment => "fragment",
            DenyReason::PeerDisabled => "peer_disabled",
            DenyReason::NotToGateway => "not_to_gateway",
            DenyReason::NotInRole => "not_in_role",
            DenyReason::OutsideHours => "outside_hours",
            DenyReason::MfaRequired => "mfa_required",
        }
    }
}

impl fmt::Display for DenyReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The answer the gateway sends back to the peer for a denied packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reject {
    /// A TCP reset from the packet's destination: [`crate::acl::reject::tcp_reset`].
    TcpReset,
    /// ICMP type 3 code 13 or ICMPv6 type 1 code 1 from the gateway's tunnel address `source`
    /// (of the packet's IP version): [`crate::acl::reject::icmp_admin_prohibited`].
    IcmpAdminProhibited {
        /// The source address of the ICMP message.
        source: IpAddr,
    },
}

/// The ACL's decision on one packet. The labels borrow from the [`Acl`] and are bounded: role
/// names from the configuration (or [`NO_ROLE`]) and services listed by some role (or
/// [`OTHER_SERVICE`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict<'a> {
    /// Write the packet to the TUN device.
    Allow {
        /// What the packet reaches.
        service: Service,
    },
    /// Drop the packet, count it, audit it and send `reject` if there is one.
    Deny {
        /// Why.
        reason: DenyReason,
        /// The peer's role name, or [`NO_ROLE`]: the `role` label of
        /// `crmguard_acl_denied_total`.
        role: &'a str,
        /// `tcp/5432` when some role lists the packet's protocol and destination port,
        /// [`OTHER_SERVICE`] otherwise: the `service` label of `crmguard_acl_denied_total`.
        service_label: &'a str,
        /// The answer to send back to the peer, if any.
        reject: Option<Reject>,
    },
}

/// Whether crmguard's own MFA portal listens on `[mfa] portal_port` right now. Every peer may
/// reach that port only while it does: were another program to own the port (the portal failed
/// to bind), the exemption would hand it to every peer, of any role and without MFA. The daemon
/// sets it as the portal's listeners bind and close; the ACL reads it on every packet.
#[derive(Debug, Default)]
pub struct PortalListening(std::sync::atomic::AtomicBool);

impl PortalListening {
    pub fn set(&self, listening: bool) {
        self.0
            .store(listening, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn get(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// The identity ACL built from one configuration. Rebuild it on reload.
#[derive(Debug, Clone)]
pub struct Acl {
    gateway_v4: Ipv4Addr,
    gateway_v6: Option<Ipv6Addr>,
    /// The broadcast address of the tunnel subnet, to which nothing is ever answered.
    tunnel_broadcast: Option<Ipv4Addr>,
    mfa_portal_port: u16,
    /// Whether the portal listens, shared with the daemon across rebuilds.
    portal_listening: std::sync::Arc<PortalListening>,
    roles: Vec<RoleRule>,
    peers: HashMap<String, PeerRule>,
    /// Every service some role lists with its label, sorted by service.
    labels: Vec<(ServiceSpec, Box<str>)>,
}

#[derive(Debug, Clone)]
struct RoleRule {
    name: Box<str>,
    /// Sorted, for binary search.
    allow: Vec<ServiceSpec>,
    hours: Option<Hours>,
    mfa: bool,
}

#[derive(Debug, Clone)]
struct PeerRule {
    /// Index into `Acl::roles`.
    role: usize,
    address: Ipv4Addr,
    address6: Option<Ipv6Addr>,
    enabled: bool,
}

impl PeerRule {
    fn owns(&self, source: IpAddr) -> bool {
        match source {
            IpAddr::V4(source) => source == self.address,
            IpAddr::V6(source) => self.address6 == Some(source),
        }
    }
}

impl Acl {
    /// Builds the ACL of `config`'s roles and peers. `gateway_v4` and `gateway_v6` are the
    /// gateway's tunnel addresses (`[vpn] address` and `address6` without their prefixes) and
    /// `mfa_portal_port` is `[mfa] portal_port`, exempt only while `portal_listening` says
    /// crmguard's portal listens on it.
    pub fn new(
        config: &Config,
        gateway_v4: Ipv4Addr,
        gateway_v6: Option<Ipv6Addr>,
        mfa_portal_port: u16,
        portal_listening: std::sync::Arc<PortalListening>,
    ) -> Acl {
        let roles: Vec<RoleRule> = config
            .roles
            .iter()
            .map(|role| {
                let mut allow = role.allow.clone();
                allow.sort_unstable();
                allow.dedup();
                RoleRule {
                    name: role.name.as_str().into(),
                    allow,
                    hours: role.hours,
                    mfa: role.mfa,
                }
            })
            .collect();
        // A validated configuration names only existing roles; a peer whose role is missing
        // anyway is left out and so reaches nothing.
        let peers = config
            .peers
            .iter()
            .filter_map(|peer| {
                let role = roles.iter().position(|role| *role.name == *peer.role)?;
                let rule = PeerRule {
                    role,
                    address: peer.address,
                    address6: peer.address6,
                    enabled: peer.enabled,
                };
                Some((peer.name.clone(), rule))
            })
            .collect();
        let labels = roles
            .iter()
            .flat_map(|role| role.allow.iter().copied())
            .collect::<BTreeSet<ServiceSpec>>()
            .into_iter()
            .map(|spec| (spec, spec.to_string().into_boxed_str()))
            .collect();
        Acl {
            gateway_v4,
            gateway_v6,
            tunnel_broadcast: config.vpn.as_ref().map(|vpn| vpn.address.broadcast()),
            mfa_portal_port,
            portal_listening,
            roles,
            peers,
            labels,
        }
    }

    /// Decides on `packet`, a decrypted IPv4 or IPv6 packet that peer `peer` sent, at local time
    /// `now`; `mfa_session_open` says whether the peer has an open MFA session.
    pub fn decide(
        &self,
        peer: &str,
        packet: &[u8],
        now: LocalTime,
        mfa_session_open: bool,
    ) -> Verdict<'_> {
        let rule = self.peers.get(peer);
        let role = rule.and_then(|rule| self.roles.get(rule.role));
        let role_label: &str = role.map_or(NO_ROLE, |role| &role.name);
        let deny = |reason, service_label, reject| Verdict::Deny {
            reason,
            role: role_label,
            service_label,
            reject,
        };
        let Ok(parsed) = packet::parse(packet) else {
            return deny(DenyReason::Malformed, OTHER_SERVICE, None);
        };
        let service_label = self.service_label(parsed.transport);
        let (Some(rule), Some(role)) = (rule, role) else {
            return deny(DenyReason::NoRole, service_label, None);
        };
        if !rule.owns(parsed.src) {
            return deny(DenyReason::SourceMismatch, service_label, None);
        }
        if parsed.transport == Transport::Fragment {
            return deny(DenyReason::Fragment, service_label, None);
        }
        let reject = self.reject(&parsed);
        if !rule.enabled {
            return deny(DenyReason::PeerDisabled, service_label, reject);
        }
        if !self.is_gateway(parsed.dst) {
            return deny(DenyReason::NotToGateway, service_label, reject);
        }
        let spec = match parsed.transport {
            Transport::Icmp {
                kind: ICMP_ECHO_REQUEST,
                code: 0,
            }
            | Transport::Icmpv6 {
                kind: ICMPV6_ECHO_REQUEST,
                code: 0,
            } => {
                return Verdict::Allow {
                    service: Service::Echo,
                }
            }
            Transport::Tcp(tcp)
                if tcp.dst_port == self.mfa_portal_port && self.portal_listening.get() =>
            {
                return Verdict::Allow {
                    service: Service::MfaPortal,
                }
            }
            Transport::Tcp(tcp) => ServiceSpec {
                proto: Proto::Tcp,
                port: tcp.dst_port,
            },
            Transport::Udp { dst_port, .. } => ServiceSpec {
                proto: Proto::Udp,
                port: dst_port,
            },
            _ => return deny(DenyReason::NotInRole, service_label, reject),
        };
        if role.allow.binary_search(&spec).is_err() {
            return deny(DenyReason::NotInRole, service_label, reject);
        }
        if let Some(hours) = &role.hours {
            if !hours.contains(now.weekday, now.minute_of_day) {
                return deny(DenyReason::OutsideHours, service_label, reject);
            }
        }
        if role.mfa && !mfa_session_open {
            return deny(DenyReason::MfaRequired, service_label, reject);
        }
        Verdict::Allow {
            service: Service::Role(spec),
        }
    }

    /// The role of peer `peer`, if the configuration names the peer.
    pub fn role_of(&self, peer: &str) -> Option<&str> {
        let rule = self.peers.get(peer)?;
        self.roles.get(rule.role).map(|role| &*role.name)
    }

    /// Every role name, in configuration order: the values of the `role` label besides
    /// [`NO_ROLE`].
    pub fn role_labels(&self) -> impl Iterator<Item = &str> {
        self.roles.iter().map(|role| &*role.name)
    }

    /// Every service label, sorted by protocol and port, then [`OTHER_SERVICE`]: the values of
    /// the `service` label.
    pub fn service_labels(&self) -> impl Iterator<Item = &str> {
        self.labels
            .iter()
            .map(|(_, label)| &**label)
            .chain(std::iter::once(OTHER_SERVICE))
    }

    fn service_label(&self, transport: Transport) -> &str {
        let spec = match transport {
            Transport::Tcp(tcp) => ServiceSpec {
                proto: Proto::Tcp,
                port: tcp.dst_port,
            },
            Transport::Udp { dst_port, .. } => ServiceSpec {
                proto: Proto::Udp,
                port: dst_port,
            },
            _ => return OTHER_SERVICE,
        };
        match self.labels.binary_search_by(|(known, _)| known.cmp(&spec)) {
            Ok(index) => &self.labels[index].1,
            Err(_) => OTHER_SERVICE,
        }
    }

    fn is_gateway(&self, destination: IpAddr) -> bool {
        match destination {
            IpAddr::V4(destination) => destination == self.gateway_v4,
            IpAddr::V6(destination) => self.gateway_v6 == Some(destination),
        }
    }

    /// The answer to a denied packet whose source has been checked, if it deserves one.
    fn reject(&self, parsed: &packet::Packet) -> Option<Reject> {
        let unicast = match parsed.dst {
            IpAddr::V4(dst) => {
                !(dst.is_multicast()
                    || dst.is_broadcast()
                    || dst.is_unspecified()
                    || Some(dst) == self.tunnel_broadcast)
            }
            IpAddr::V6(dst) => !(dst.is_multicast() || dst.is_unspecified()),
        };
        if !unicast {
            return None;
        }
        match parsed.transport {
            Transport::Tcp(tcp) if tcp.has(TCP_RST) => None,
            Transport::Tcp(tcp) if tcp.is_syn() => Some(Reject::TcpReset),
            Transport::Tcp(_) | Transport::Udp { .. } => {
                let source = match parsed.src {
                    IpAddr::V4(_) => IpAddr::V4(self.gateway_v4),
                    IpAddr::V6(_) => IpAddr::V6(self.gateway_v6?),
                };
                Some(Reject::IcmpAdminProhibited { source })
            }
            _ => None,
        }
    }
}

/// `crmguard_acl_denied_total{role,service}`: packets the ACL denied.
///
/// The labels come from [`Verdict::Deny`], so they are bounded by the configuration: role names
/// or [`NO_ROLE`], and services listed by some role or [`OTHER_SERVICE`].
///
/// It also keeps the denials for the audit log, folded per (peer, service, minute) so that a
/// peer hammering a forbidden port costs a line a minute; the agent takes the closed minutes
/// with [`AclMetrics::take_denials`].
#[derive(Debug, Clone)]
pub struct AclMetrics {
    denied: IntCounterVec,
    /// `crmguard_acl_denied_by_reason_total`: the reasons of `crmguard explain` and of the
    /// policy tests, so that what they predict can be seen happening.
    by_reason: IntCounterVec,
    denials: Arc<Mutex<Aggregator>>,
    /// Refusals outside a role's hours not yet handed to the detectors: (peer, service), at
    /// most [`OUTSIDE_HOURS_KEPT`].
    outside_hours: Arc<Mutex<Vec<(String, String)>>>,
}

/// Refusals outside hours kept between two reads by the daemon (one second); beyond, the
/// detectors would learn nothing more.
pub const OUTSIDE_HOURS_KEPT: usize = 256;

impl AclMetrics {
    /// Creates the counters and registers them in `registry`.
    pub fn register(registry: &Registry) -> Result<AclMetrics, prometheus::Error> {
        let denied = IntCounterVec::new(
            Opts::new(
                "crmguard_acl_denied_total",
                "Packets from VPN peers denied by the identity ACL, by role and service",
            ),
            &["role", "service"],
        )?;
        registry.register(Box::new(denied.clone()))?;
        let by_reason = IntCounterVec::new(
            Opts::new(
                "crmguard_acl_denied_by_reason_total",
                "Packets from VPN peers denied by the identity ACL, by reason",
            ),
            &["reason"],
        )?;
        registry.register(Box::new(by_reason.clone()))?;
        for reason in DenyReason::ALL {
            by_reason.with_label_values(&[reason.as_str()]);
        }
        Ok(AclMetrics {
            denied,
            by_reason,
            denials: Arc::default(),
            outside_hours: Arc::default(),
        })
    }

    /// Creates the series of every role of `acl` with every service label at zero, so that
    /// `increase()` sees the first denial. Call it after each (re)build of the ACL.
    pub fn prepare(&self, acl: &Acl) {
        for role in acl.role_labels() {
            for service in acl.service_labels() {
                self.denied.with_label_values(&[role, service]);
            }
        }
    }

    /// Counts `verdict` if it is a denial of a packet `peer` sent from `src`.
    pub fn count(&self, peer: &str, src: IpAddr, verdict: &Verdict<'_>) {
        if let Verdict::Deny {
            role,
            service_label,
            reason,
            ..
        } = verdict
        {
            self.denied.with_label_values(&[role, service_label]).inc();
            self.by_reason.with_label_values(&[reason.as_str()]).inc();
            if *reason == DenyReason::OutsideHours {
                let mut kept = self
                    .outside_hours
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                if kept.len() < OUTSIDE_HOURS_KEPT {
                    kept.push((peer.to_owned(), (*service_label).to_owned()));
                }
            }
            let service = format!("{service_label} ({reason})");
            let src = src.to_string();
            self.denials
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .add(
                    EventType::AclDenied,
                    peer,
                    &service,
                    SystemTime::now(),
                    Some(&src),
                    None,
                );
        }
    }

    /// The refusals outside a role's hours since the last call: (peer, service).
    pub fn take_outside_hours(&self) -> Vec<(String, String)> {
        std::mem::take(
            &mut *self
                .outside_hours
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }

    /// The `acl_denied` audit records of the minutes that ended before `now`; with `all`,
    /// of every minute (the agent is stopping).
    pub fn take_denials(&self, now: SystemTime, all: bool) -> Vec<Event> {
        let mut denials = self
            .denials
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if all {
            denials.flush_all()
        } else {
            denials.flush(now)
        }
    }
}

#[cfg(test)]
mod tests;
