//! Bans: source addresses and prefixes that the XDP filter drops, with reason `banned`, until
//! their expiry.
//!
//! This module owns the ban list as the agent holds it: what may be banned and by whom, how long
//! a ban lasts, what a second ban of the same network does, and how each ban becomes an entry
//! of the kernel's ban maps. It is pure: it reads no clock (every operation that depends on
//! time takes `now`), and it touches no file and no map. [`persist`] reads and writes
//! `state_dir/bans.json`; `datapath::bans` writes the kernel's maps.
//!
//! The rules:
//!
//! - **One ban per network.** Addresses and prefixes are normalised (host bits cleared), so
//!   `203.0.113.7` and `203.0.113.7/32` name the same ban, and `10.1.2.3/24` names
//!   `10.1.2.0/24`. A host ban and a prefix ban that contains it are two bans; the filter drops
//!   the host's packets while either lasts.
//! - **A manual ban replaces** an existing ban of the same network whole: expiry, reason and
//!   author. An administrator who bans for one hour an address that was banned for good ends up
//!   with a one-hour ban, because the last word of an administrator is the one that counts.
//!   **A detector never shortens a ban**: when the existing ban lasts at least as long as the
//!   detector's, the existing ban stays as it is.
//! - **Never banned**: `/0` (that is `[firewall] default = "drop"`, not a ban), loopback
//!   addresses, the unspecified address, and IPv4-mapped IPv6 addresses (the filter sees IPv4
//!   packets as IPv4, so such a ban would never match; ban the IPv4 address instead).
//! - **Only with `force`**: prefixes shorter than /8 (IPv4) or /32 (IPv6), and networks that
//!   contain one of the host's own addresses (such a ban also cuts the host off from its
//!   neighbours, its gateway among them).
//! - **`[detection] allowlist`**: a detector never bans a network that overlaps the allowlist.
//!   A manual ban that overlaps it is applied, with a warning.
//! - **Expiry is wall-clock time**, which is what operators read and what `bans.json` stores.
//!   The kernel compares ban expiries with its monotonic clock (CLOCK_MONOTONIC, which the
//!   XDP program reads coarsely), which does not jump with the wall clock; [`kernel_expiry`]
//!   converts one into the other when an entry is written, so a ban ends on time also while
//!   the agent is not running.
//! - **A prefix entry lasts as long as the longest prefix ban around it.** An LPM trie answers
//!   with the longest matching prefix only; if a /24 ban ended before the /16 ban around it, the
//!   ended /24 entry would hide the /16 until the entry is deleted, which never happens while
//!   the agent is down. So the kernel entry of a prefix ban carries the latest expiry of the
//!   prefix bans that contain it (see [`BanStore::kernel_changes`]). Host bans live in hash maps
//!   that the filter checks before the tries, and an ended host entry does not hide a prefix.

#![forbid(unsafe_code)]

pub mod persist;

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

/// The capacity of each of the host maps `cg_ban4` and `cg_ban6` (`abi::BAN_HOST_MAX`).
pub const HOST_MAX: usize = 1 << 18;

/// The capacity of each of the tries `cg_ban4_lpm` and `cg_ban6_lpm`
/// (`abi::BAN_PREFIX_MAX`).
pub const PREFIX_MAX: usize = 1 << 14;

/// The shortest IPv4 prefix banned without `force`.
pub const MIN_PREFIX_V4: u8 = 8;

/// The shortest IPv6 prefix banned without `force`.
pub const MIN_PREFIX_V6: u8 = 32;

/// The longest reason text, in characters. The reason is shown by `ban list` and `status`; it
/// is never a metric label.
pub const MAX_REASON_CHARS: usize = 256;

/// The prefix of the author of a manual ban, as in the audit log's `actor` field.
pub const ADMIN_PREFIX: &str = "admin:";

/// The reason of a manual ban given without `--reason`.
pub const DEFAULT_MANUAL_REASON: &str = "manual";

/// The `reason` number the kernel stores with a manual ban (`struct cg_ban`).
pub const KERNEL_REASON_MANUAL: u32 = 1;

/// The `reason` number the kernel stores with a detector's ban.
pub const KERNEL_REASON_DETECTOR: u32 = 2;

/// Who banned a network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BanSource {
    /// `crmguard ban add`; `by` is `admin:<unix user>`.
    Manual { by: String },
    /// A detector of the agent, by name (such as `auth_failures`).
    Detector(String),
}

impl BanSource {
    /// The `reason` label of `crmguard_bans_total`: `manual` or the detector's name, a bounded
    /// set in either case. The free-text reason of a ban never becomes a label.
    pub fn label(&self) -> &str {
        match self {
            BanSource::Manual { .. } => "manual",
            BanSource::Detector(name) => name,
        }
    }

    /// How `ban list` and `status` show the author: `admin:<unix user>` or
    /// `detector:<name>`.
    pub fn describe(&self) -> String {
        match self {
            BanSource::Manual { by } => by.clone(),
            BanSource::Detector(name) => format!("detector:{name}"),
        }
    }

    /// The `reason` number of the kernel entry.
    pub fn kernel_reason(&self) -> u32 {
        match self {
            BanSource::Manual { .. } => KERNEL_REASON_MANUAL,
            BanSource::Detector(_) => KERNEL_REASON_DETECTOR,
        }
    }
}

/// One ban.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ban {
    /// The banned address (as a /32 or /128) or prefix, with no host bits set.
    pub net: IpNet,
    /// When the ban ends; `None` for a ban that lasts until it is removed.
    pub expires: Option<SystemTime>,
    /// Free text from `--reason`, or the detector's name.
    pub reason: String,
    pub source: BanSource,
    pub created: SystemTime,
}

impl Ban {
    /// Whether the ban is still in force at `now`.
    pub fn is_active(&self, now: SystemTime) -> bool {
        self.expires.is_none_or(|expires| expires > now)
    }

    /// Whether this ban ends later than `other` (a permanent ban ends after every other one).
    fn outlasts(&self, other: &Ban) -> bool {
        match (self.expires, other.expires) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(mine), Some(theirs)) => mine >= theirs,
        }
    }
}

/// A manual ban as `crmguard ban add` asks for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManualBan {
    /// Normalised by [`BanStore::add_manual`].
    pub net: IpNet,
    /// `--ttl`; `None` bans until `ban remove`.
    pub ttl: Option<Duration>,
    /// `--reason`; `None` records [`DEFAULT_MANUAL_REASON`].
    pub reason: Option<String>,
    /// `admin:<unix user>`.
    pub by: String,
    /// `--force`: allow broad prefixes and networks that contain the host's own addresses.
    pub force: bool,
}

/// What a ban is checked against besides its own shape.
#[derive(Debug, Clone, Copy)]
pub struct Safeguards<'a> {
    /// `[detection] allowlist`.
    pub allowlist: &'a [IpNet],
    /// The addresses of the host's own interfaces.
    pub host_addrs: &'a [IpAddr],
    /// The VPN's tunnel networks (`[vpn] address` and `address6`), whose addresses XDP never
    /// sees: tunnel traffic reaches it encrypted, from the peers' outer addresses.
    pub tunnel_nets: &'a [IpNet],
    /// Networks automatic bans spare: the admin networks the services' `from` lists admit
    /// ([`trusted_networks`]) for a port scan, which is seen in single packets that anyone can
    /// send with a forged source, so that a spoofed scan cannot lock the administrators out;
    /// empty for bans on evidence that a forged source cannot give (failed logins come from
    /// completed connections) and for manual bans.
    pub trusted: &'a [IpNet],
}

/// The networks of `[[firewall.service]] from` lists that automatic bans spare: each at least
/// as narrow as a ban may be (/8 for IPv4, /32 for IPv6), so that a service open to the world
/// through `from = ["0.0.0.0/0"]` does not spare the world.
pub fn trusted_networks(config: &crate::config::Config) -> Vec<IpNet> {
    let mut trusted: Vec<IpNet> = config
        .firewall
        .services
        .iter()
        .filter_map(|service| service.from.as_ref())
        .flatten()
        .copied()
        .filter(|net| check_breadth(net).is_ok())
        .collect();
    trusted.sort();
    trusted.dedup();
    trusted
}

/// Something an administrator should know about a ban that was nevertheless applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Warning {
    /// The ban overlaps `entry` of `[detection] allowlist`.
    Allowlisted { net: IpNet, entry: IpNet },
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Warning::Allowlisted { net, entry } => write!(
                f,
                "{net} overlaps {entry} of [detection] allowlist; banned anyway because an \
                 administrator asked for it"
            ),
        }
    }
}

/// The result of adding a ban.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Added {
    /// The ban now in force.
    pub ban: Ban,
    /// The ban of the same network it replaced.
    pub replaced: Option<Ban>,
    pub warnings: Vec<Warning>,
}

/// Why a ban was refused or could not be found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BanError {
    #[error(
        "{net} is every address; to drop all traffic set [firewall] default = \"drop\" instead"
    )]
    Everything { net: IpNet },
    #[error("{net} is shorter than /{min}; add --force if you mean to ban that many addresses")]
    TooBroad { net: IpNet, min: u8 },
    #[error("{net} is a loopback address, which never reaches the filter")]
    Loopback { net: IpNet },
    #[error("{net} is the unspecified address")]
    Unspecified { net: IpNet },
    #[error(
        "{net} is an IPv4-mapped IPv6 address, which the filter never sees; ban {ipv4} instead"
    )]
    Ipv4Mapped { net: IpNet, ipv4: IpNet },
    #[error(
        "{net} contains {addr}, an address of this host, and would also ban the host's \
         neighbours (its gateway among them); add --force if you mean it"
    )]
    HostAddress { net: IpNet, addr: IpAddr },
    #[error("{net} overlaps {entry} of [detection] allowlist, which detectors never ban")]
    Allowlisted { net: IpNet, entry: IpNet },
    #[error(
        "{net} overlaps {entry}, which a service's `from` list admits (an admin network): a \
         port scan, whose packets' sources can be forged, never bans it"
    )]
    Trusted { net: IpNet, entry: IpNet },
    #[error(
        "{net} is link-local: the host's neighbours (its router's neighbour discovery among \
         them) talk from there, so detectors and CrowdSec never ban it"
    )]
    LinkLocal { net: IpNet },
    #[error(
        "{net} lies inside the VPN's tunnel network {tunnel}: the XDP filter sees WireGuard traffic \
         from the peers' outer addresses only, so this ban would never match; cut the device \
         with `crmguard peer disable NAME` instead"
    )]
    TunnelNetwork { net: IpNet, tunnel: IpNet },
    #[error("{net} has host bits set; write {normalised}")]
    HostBits { net: IpNet, normalised: IpNet },
    #[error("the ban would end too far in the future")]
    TtlTooLong,
    #[error("the reason is empty")]
    EmptyReason,
    #[error("the reason is longer than {MAX_REASON_CHARS} characters")]
    ReasonTooLong,
    #[error("the reason contains a control character")]
    ReasonControl,
    #[error("`{0}` is not an author of the form admin:<unix user> [(login <unix user>)]")]
    Author(String),
    #[error("`{0}` is not a detector name (1 to 64 of A-Z a-z 0-9 . _ -)")]
    Detector(String),
    #[error("{map} is full ({max} entries); remove bans or let them expire")]
    Full { map: &'static str, max: usize },
    #[error("{net} is not banned")]
    NotBanned { net: IpNet },
}

impl BanError {
    /// A short name for the kind of refusal (the `refusal` label of
    /// `crmguard_bans_refused_total`): a bounded set, never the networks it names.
    pub fn kind(&self) -> &'static str {
        match self {
            BanError::Everything { .. } => "everything",
            BanError::TooBroad { .. } => "too_broad",
            BanError::Loopback { .. } => "loopback",
            BanError::Unspecified { .. } => "unspecified",
            BanError::Ipv4Mapped { .. } => "ipv4_mapped",
            BanError::HostAddress { .. } => "host_address",
            BanError::Allowlisted { .. } => "allowlisted",
            BanError::Trusted { .. } => "trusted",
            BanError::LinkLocal { .. } => "link_local",
            BanError::TunnelNetwork { .. } => "tunnel_network",
            BanError::HostBits { .. } => "host_bits",
            BanError::TtlTooLong => "ttl_too_long",
            BanError::EmptyReason | BanError::ReasonTooLong | BanError::ReasonControl => "reason",
            BanError::Author(_) => "author",
            BanError::Detector(_) => "detector",
            BanError::Full { .. } => "full",
            BanError::NotBanned { .. } => "not_banned",
        }
    }
}

/// A ban read back from `bans.json` that cannot be restored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bans[{index}] ({net})")]
pub struct RestoreError {
    /// The position of the ban in the file, from 0.
    pub index: usize,
    pub net: IpNet,
    #[source]
    pub source: BanError,
}

/// Which kernel map holds a ban, and its key there. Single addresses go to the hash maps, true
/// prefixes to the tries, as for the deny set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum KernelKey {
    /// `cg_ban4`: the address in network byte order.
    Host4([u8; 4]),
    /// `cg_ban6`.
    Host6([u8; 16]),
    /// `cg_ban4_lpm`.
    Prefix4 { len: u32, addr: [u8; 4] },
    /// `cg_ban6_lpm`.
    Prefix6 { len: u32, addr: [u8; 16] },
}

impl KernelKey {
    /// The key of a normalised network.
    pub fn of(net: &IpNet) -> KernelKey {
        match net {
            IpNet::V4(n) if n.prefix_len() == 32 => KernelKey::Host4(n.addr().octets()),
            IpNet::V6(n) if n.prefix_len() == 128 => KernelKey::Host6(n.addr().octets()),
            IpNet::V4(n) => KernelKey::Prefix4 {
                len: u32::from(n.prefix_len()),
                addr: n.network().octets(),
            },
            IpNet::V6(n) => KernelKey::Prefix6 {
                len: u32::from(n.prefix_len()),
                addr: n.network().octets(),
            },
        }
    }

    /// The network a key stands for; `None` for a prefix length the family cannot have.
    pub fn net(&self) -> Option<IpNet> {
        match *self {
            KernelKey::Host4(addr) => Some(IpNet::V4(Ipv4Net::from(Ipv4Addr::from(addr)))),
            KernelKey::Host6(addr) => Some(IpNet::V6(Ipv6Net::from(Ipv6Addr::from(addr)))),
            KernelKey::Prefix4 { len, addr } => {
                let len = u8::try_from(len).ok()?;
                Ipv4Net::new(Ipv4Addr::from(addr), len)
                    .ok()
                    .map(|n| IpNet::V4(n.trunc()))
            }
            KernelKey::Prefix6 { len, addr } => {
                let len = u8::try_from(len).ok()?;
                Ipv6Net::new(Ipv6Addr::from(addr), len)
                    .ok()
                    .map(|n| IpNet::V6(n.trunc()))
            }
        }
    }

    /// The name of the kernel map that holds this key.
    pub fn map_name(&self) -> &'static str {
        match self {
            KernelKey::Host4(_) => "cg_ban4",
            KernelKey::Host6(_) => "cg_ban6",
            KernelKey::Prefix4 { .. } => "cg_ban4_lpm",
            KernelKey::Prefix6 { .. } => "cg_ban6_lpm",
        }
    }
}

/// The value of a kernel ban entry (`struct cg_ban` without its padding).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelValue {
    /// CLOCK_MONOTONIC nanoseconds at which the ban ends; 0 for never.
    pub expires_ns: u64,
    pub reason: u32,
}

/// The instant on the kernel's clock (CLOCK_MONOTONIC), in nanoseconds, at which a ban that
/// ends at the wall-clock time `expires` ends, given the two clocks read together as `now_wall`
/// and `now_kernel`. `None` when the ban has already ended. Never 0, which the kernel reads as
/// "never".
pub fn kernel_expiry(
    expires: SystemTime,
    now_wall: SystemTime,
    now_kernel: Duration,
) -> Option<u64> {
    let remaining = expires
        .duration_since(now_wall)
        .ok()
        .filter(|d| !d.is_zero())?;
    let at = now_kernel.saturating_add(remaining);
    Some(u64::try_from(at.as_nanos()).unwrap_or(u64::MAX).max(1))
}

/// The kernel entry of one ban on its own, or `None` when the ban has already ended at
/// `now_wall`.
fn own_kernel_value(ban: &Ban, now_wall: SystemTime, now_kernel: Duration) -> Option<KernelValue> {
    let expires_ns = match ban.expires {
        None => 0,
        Some(expires) => kernel_expiry(expires, now_wall, now_kernel)?,
    };
    Some(KernelValue {
        expires_ns,
        reason: ban.source.kernel_reason(),
    })
}

/// The later of two kernel expiries, 0 (never) being the latest.
fn later(a: u64, b: u64) -> u64 {
    if a == 0 || b == 0 {
        0
    } else {
        a.max(b)
    }
}

/// Whether a network is a single address (which the hash maps hold, not the tries).
fn is_host(net: &IpNet) -> bool {
    net.prefix_len() == net.max_prefix_len()
}

/// The bans the agent holds, one per network, in network order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BanStore {
    bans: BTreeMap<IpNet, Ban>,
    /// How many bans each kernel map holds, by map name.
    per_map: BTreeMap<&'static str, usize>,
    host_max: usize,
    prefix_max: usize,
}

impl Default for BanStore {
    fn default() -> Self {
        BanStore::new()
    }
}

impl BanStore {
    /// An empty store with the kernel maps' capacities.
    pub fn new() -> BanStore {
        BanStore {
            bans: BTreeMap::new(),
            per_map: BTreeMap::new(),
            host_max: HOST_MAX,
            prefix_max: PREFIX_MAX,
        }
    }

    /// Restores bans read back from `bans.json`. Each is checked for its shape (normalised,
    /// never-bannable networks, reason and author) but not against `force`-only rules, which
    /// were settled when it was added. Bans that ended by `now` are left out and returned.
    pub fn restore(bans: Vec<Ban>, now: SystemTime) -> Result<(BanStore, Vec<Ban>), RestoreError> {
        let mut store = BanStore::new();
        let mut ended = Vec::new();
        for (index, ban) in bans.into_iter().enumerate() {
            let err = |source| RestoreError {
                index,
                net: ban.net,
                source,
            };
            store.check_restored(&ban).map_err(err)?;
            if ban.is_active(now) {
                store.insert(ban.clone()).map_err(err)?;
            } else {
                ended.push(ban);
            }
        }
        Ok((store, ended))
    }

    fn check_restored(&self, ban: &Ban) -> Result<(), BanError> {
        let normalised = ban.net.trunc();
        if normalised != ban.net {
            return Err(BanError::HostBits {
                net: ban.net,
                normalised,
            });
        }
        check_bannable(&ban.net)?;
        check_reason(&ban.reason)?;
        match &ban.source {
            BanSource::Manual { by } => check_author(by),
            BanSource::Detector(name) => check_detector(name),
        }
    }

    /// Adds or replaces a manual ban (see the module documentation for the rules).
    pub fn add_manual(
        &mut self,
        request: ManualBan,
        guard: &Safeguards<'_>,
        now: SystemTime,
    ) -> Result<Added, BanError> {
        let net = request.net.trunc();
        check_bannable(&net)?;
        if let Some(tunnel) = guard.tunnel_nets.iter().find(|t| t.contains(&net)) {
            return Err(BanError::TunnelNetwork {
                net,
                tunnel: *tunnel,
            });
        }
        if !request.force {
            check_breadth(&net)?;
            if let Some(addr) = host_address_in(&net, guard.host_addrs) {
                return Err(BanError::HostAddress { net, addr });
            }
        }
        let reason = match request.reason {
            Some(reason) => {
                check_reason(&reason)?;
                reason
            }
            None => DEFAULT_MANUAL_REASON.to_owned(),
        };
        check_author(&request.by)?;
        let warnings = allowlist_overlap(&net, guard.allowlist)
            .map(|entry| Warning::Allowlisted { net, entry })
            .into_iter()
            .collect();
        let ban = new_ban(
            net,
            request.ttl,
            reason,
            BanSource::Manual { by: request.by },
            now,
        )?;
        let replaced = self.insert(ban.clone())?;
        Ok(Added {
            ban,
            replaced,
            warnings,
        })
    }

    /// Adds a detector's ban of `net` for `ttl`. Returns `None` when an existing ban of the same
    /// network lasts at least as long, which then stays as it is.
    pub fn add_detected(
        &mut self,
        net: IpNet,
        ttl: Duration,
        detector: &str,
        guard: &Safeguards<'_>,
        now: SystemTime,
    ) -> Result<Option<Added>, BanError> {
        let net = net.trunc();
        check_bannable(&net)?;
        check_breadth(&net)?;
        if let Some(addr) = host_address_in(&net, guard.host_addrs) {
            return Err(BanError::HostAddress { net, addr });
        }
        if let Some(entry) = allowlist_overlap(&net, guard.allowlist) {
            return Err(BanError::Allowlisted { net, entry });
        }
        if let Some(entry) = allowlist_overlap(&net, guard.trusted) {
            return Err(BanError::Trusted { net, entry });
        }
        if allowlist_overlap(&net, &link_local()).is_some() {
            return Err(BanError::LinkLocal { net });
        }
        // An address a log line gives inside the tunnel is a peer's: the filter never sees it
        // (see `add_manual`), and the peer is cut with its MFA session instead.
        if let Some(tunnel) = guard.tunnel_nets.iter().find(|t| t.contains(&net)) {
            return Err(BanError::TunnelNetwork {
                net,
                tunnel: *tunnel,
            });
        }
        check_detector(detector)?;
        let ban = new_ban(
            net,
            Some(ttl),
            detector.to_owned(),
            BanSource::Detector(detector.to_owned()),
            now,
        )?;
        if let Some(existing) = self.bans.get(&net) {
            if existing.is_active(now) && existing.outlasts(&ban) {
                return Ok(None);
            }
        }
        let replaced = self.insert(ban.clone())?;
        Ok(Some(Added {
            ban,
            replaced,
            warnings: Vec::new(),
        }))
    }

    /// Removes the ban of `net` (normalised first) and returns it.
    pub fn remove(&mut self, net: IpNet) -> Result<Ban, BanError> {
        let net = net.trunc();
        let ban = self.bans.remove(&net).ok_or(BanError::NotBanned { net })?;
        self.count_out(&net);
        Ok(ban)
    }

    /// Removes and returns the bans that have ended by `now`, in network order.
    pub fn expire(&mut self, now: SystemTime) -> Vec<Ban> {
        let ended: Vec<IpNet> = self
            .bans
            .values()
            .filter(|ban| !ban.is_active(now))
            .map(|ban| ban.net)
            .collect();
        ended
            .into_iter()
            .filter_map(|net| {
                let ban = self.bans.remove(&net)?;
                self.count_out(&net);
                Some(ban)
            })
            .collect()
    }

    /// Brings the end of the ban of `net` (normalised first) forward to `until`, when it ends
    /// later (or never); true when it did. The ban keeps its source, reason and creation time.
    pub fn shorten(&mut self, net: IpNet, until: SystemTime) -> bool {
        match self.bans.get_mut(&net.trunc()) {
            Some(ban) if ban.expires.is_none_or(|end| end > until) => {
                ban.expires = Some(until);
                true
            }
            _ => false,
        }
    }

    /// The ban of `net` (normalised first), if any.
    pub fn get(&self, net: IpNet) -> Option<&Ban> {
        self.bans.get(&net.trunc())
    }

    /// Every ban in network order (IPv4 before IPv6, then by address and prefix length).
    pub fn iter(&self) -> impl Iterator<Item = &Ban> {
        self.bans.values()
    }

    pub fn len(&self) -> usize {
        self.bans.len()
    }

    pub fn is_empty(&self) -> bool {
        self.bans.is_empty()
    }

    /// The kernel entries of the bans still in force at `now_wall` (`now_kernel` is the
    /// kernel's clock read at the same moment), by key: what the ban maps must hold exactly.
    pub fn kernel_entries(
        &self,
        now_wall: SystemTime,
        now_kernel: Duration,
    ) -> BTreeMap<KernelKey, KernelValue> {
        self.iter()
            .filter_map(|ban| {
                let value = self.kernel_value(ban, now_wall, now_kernel)?;
                Some((KernelKey::of(&ban.net), value))
            })
            .collect()
    }

    /// The kernel entries that a change to the ban of `net` (added, replaced, removed or
    /// ended) affects, each with what it must hold now; `None` means the entry must go. These
    /// are the entry of `net` itself and, for a prefix, the entries of the prefix bans inside
    /// it, whose expiry in the kernel depends on it.
    pub fn kernel_changes(
        &self,
        net: IpNet,
        now_wall: SystemTime,
        now_kernel: Duration,
    ) -> Vec<(KernelKey, Option<KernelValue>)> {
        let net = net.trunc();
        let own = self
            .bans
            .get(&net)
            .and_then(|ban| self.kernel_value(ban, now_wall, now_kernel));
        let mut changes = vec![(KernelKey::of(&net), own)];
        if is_host(&net) {
            return changes;
        }
        for ban in self.prefixes_inside(&net) {
            let value = self.kernel_value(ban, now_wall, now_kernel);
            changes.push((KernelKey::of(&ban.net), value));
        }
        changes
    }

    /// The kernel entry of a ban: its own, and for a prefix the latest expiry of it and every
    /// prefix ban around it (see the module documentation).
    fn kernel_value(
        &self,
        ban: &Ban,
        now_wall: SystemTime,
        now_kernel: Duration,
    ) -> Option<KernelValue> {
        let mut value = own_kernel_value(ban, now_wall, now_kernel)?;
        if is_host(&ban.net) {
            return Some(value);
        }
        for outer in std::iter::successors(ban.net.supernet(), IpNet::supernet) {
            let Some(outer) = self.bans.get(&outer) else {
                continue;
            };
            if let Some(around) = own_kernel_value(outer, now_wall, now_kernel) {
                value.expires_ns = later(value.expires_ns, around.expires_ns);
            }
        }
        Some(value)
    }

    /// The prefix bans strictly inside `net`, which is normalised. Normalised networks inside
    /// `net` have their address between its first and last address, so they form one range of
    /// the map.
    fn prefixes_inside<'a>(&'a self, net: &'a IpNet) -> impl Iterator<Item = &'a Ban> + 'a {
        let (first, last) = match net {
            IpNet::V4(n) => (
                Ipv4Net::new(n.network(), 0).map(IpNet::V4),
                Ipv4Net::new(n.broadcast(), 32).map(IpNet::V4),
            ),
            IpNet::V6(n) => (
                Ipv6Net::new(n.network(), 0).map(IpNet::V6),
                Ipv6Net::new(n.broadcast(), 128).map(IpNet::V6),
            ),
        };
        let range = match (first, last) {
            (Ok(first), Ok(last)) => Some(first..=last),
            _ => None,
        };
        range
            .into_iter()
            .flat_map(|range| self.bans.range(range))
            .map(|(_, ban)| ban)
            .filter(move |ban| ban.net != *net && net.contains(&ban.net) && !is_host(&ban.net))
    }

    /// Inserts `ban`, replacing the ban of the same network; fails when the kernel map the ban
    /// belongs to would overflow.
    fn insert(&mut self, ban: Ban) -> Result<Option<Ban>, BanError> {
        let key = KernelKey::of(&ban.net);
        let map = key.map_name();
        if !self.bans.contains_key(&ban.net) {
            let max = match key {
                KernelKey::Host4(_) | KernelKey::Host6(_) => self.host_max,
                KernelKey::Prefix4 { .. } | KernelKey::Prefix6 { .. } => self.prefix_max,
            };
            let count = self.per_map.entry(map).or_insert(0);
            if *count >= max {
                return Err(BanError::Full { map, max });
            }
            *count += 1;
        }
        Ok(self.bans.insert(ban.net, ban))
    }

    fn count_out(&mut self, net: &IpNet) {
        if let Some(count) = self.per_map.get_mut(KernelKey::of(net).map_name()) {
            *count = count.saturating_sub(1);
        }
    }
}

fn new_ban(
    net: IpNet,
    ttl: Option<Duration>,
    reason: String,
    source: BanSource,
    now: SystemTime,
) -> Result<Ban, BanError> {
    // Times are kept to the microsecond, the precision of bans.json, so that a ban read back
    // from the file equals the ban that was written.
    let created = to_micros(now);
    let expires = match ttl {
        None => None,
        Some(ttl) => Some(to_micros(now.checked_add(ttl).ok_or(BanError::TtlTooLong)?)),
    };
    Ok(Ban {
        net,
        expires,
        reason,
        source,
        created,
    })
}

/// The checks no ban escapes, `force` or not.
fn check_bannable(net: &IpNet) -> Result<(), BanError> {
    let net = *net;
    if net.prefix_len() == 0 {
        return Err(BanError::Everything { net });
    }
    match net {
        IpNet::V4(n) => {
            if n.network().is_loopback() && n.prefix_len() >= 8 {
                return Err(BanError::Loopback { net });
            }
            if n.prefix_len() == 32 && n.addr().is_unspecified() {
                return Err(BanError::Unspecified { net });
            }
        }
        IpNet::V6(n) => {
            if n.prefix_len() == 128 && n.addr().is_loopback() {
                return Err(BanError::Loopback { net });
            }
            if n.prefix_len() == 128 && n.addr().is_unspecified() {
                return Err(BanError::Unspecified { net });
            }
            if n.prefix_len() >= 96 {
                if let Some(v4) = n.network().to_ipv4_mapped() {
                    let len = n.prefix_len() - 96;
                    if let Ok(ipv4) = Ipv4Net::new(v4, len) {
                        return Err(BanError::Ipv4Mapped {
                            net,
                            ipv4: IpNet::V4(ipv4),
                        });
                    }
                }
            }
        }
    }
    Ok(())
}

/// Prefixes shorter than the minimum need `force`.
fn check_breadth(net: &IpNet) -> Result<(), BanError> {
    let min = match net {
        IpNet::V4(_) => MIN_PREFIX_V4,
        IpNet::V6(_) => MIN_PREFIX_V6,
    };
    if net.prefix_len() < min {
        return Err(BanError::TooBroad { net: *net, min });
    }
    Ok(())
}

fn host_address_in(net: &IpNet, host_addrs: &[IpAddr]) -> Option<IpAddr> {
    host_addrs.iter().copied().find(|addr| net.contains(addr))
}

/// The first allowlist entry that overlaps `net`: two prefixes overlap exactly when one
/// contains the other.
/// 169.254.0.0/16 and fe80::/10.
fn link_local() -> [IpNet; 2] {
    [
        IpNet::V4(Ipv4Net::new(Ipv4Addr::new(169, 254, 0, 0), 16).unwrap_or_default()),
        IpNet::V6(Ipv6Net::new(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0), 10).unwrap_or_default()),
    ]
}

fn allowlist_overlap(net: &IpNet, allowlist: &[IpNet]) -> Option<IpNet> {
    allowlist
        .iter()
        .copied()
        .find(|entry| entry.contains(net) || net.contains(entry))
}

fn check_reason(reason: &str) -> Result<(), BanError> {
    if reason.trim().is_empty() {
        return Err(BanError::EmptyReason);
    }
    if reason.chars().count() > MAX_REASON_CHARS {
        return Err(BanError::ReasonTooLong);
    }
    if reason.chars().any(char::is_control) {
        return Err(BanError::ReasonControl);
    }
    Ok(())
}

/// `admin:USER`, or `admin:USER (login LOGIN)` when the user who logged in to the host is
/// someone else (`sudo`), as the agent reads it from the kernel.
fn check_author(by: &str) -> Result<(), BanError> {
    let name = |user: &str| {
        !user.is_empty()
            && user.len() <= 64
            && user
                .chars()
                .all(|c| !c.is_control() && !c.is_whitespace() && !"():".contains(c))
    };
    let author = by.strip_prefix(ADMIN_PREFIX).unwrap_or("");
    let valid = match author.split_once(" (login ") {
        Some((user, login)) => name(user) && login.strip_suffix(')').is_some_and(name),
        None => name(author),
    };
    if !valid {
        return Err(BanError::Author(by.to_owned()));
    }
    Ok(())
}

fn check_detector(name: &str) -> Result<(), BanError> {
    let valid = !name.is_empty()
        && name.len() <= crate::config::MAX_NAME_LEN
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if !valid {
        return Err(BanError::Detector(name.to_owned()));
    }
    Ok(())
}

/// `t` with the nanoseconds below a microsecond cleared.
fn to_micros(t: SystemTime) -> SystemTime {
    match t.duration_since(UNIX_EPOCH) {
        Ok(since) => {
            let sub = since.subsec_nanos() % 1_000;
            t.checked_sub(Duration::from_nanos(u64::from(sub)))
                .unwrap_or(t)
        }
        Err(_) => t,
    }
}

#[cfg(test)]
mod tests;
