//! `crmguard explain` and the policy's own tests: what happens to one packet, and why.
//!
//! Pure code. The verdict always comes from the code that decides on real packets, never from
//! a third copy of the rules:
//!
//! - a packet from outside goes through [`crate::model::decide_with_match`], the reference model
//!   that the differential test keeps identical to the XDP program, with the compiled policy and
//!   the bans in force;
//! - a peer's packet goes through [`Acl::decide`], the identity ACL the VPN endpoint runs.
//!
//! This module builds the packet ([`probe`]), asks, and words the answer: the verdict, the
//! reason (the names of the `reason` labels of the metrics) and the rule that decided (the
//! service and its `from` entry, the deny entry and where it is written, the ban and its
//! expiry, or the role and its hours). [`check`] runs the `[[test]]` cases of a configuration
//! the same way.
//!
//! What a single packet cannot show is said in [`Explanation::notes`]: rate limits start from a
//! source with no recent packets (its first packet always passes them), and the replies to the
//! host's own connections are not in the configuration.

pub mod check;
pub mod lockout;
pub mod probe;

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::abi::{Action, Reason};
use crate::acl::{Acl, DenyReason, LocalTime, PortalListening, Service, Verdict};
use crate::bans::BanStore;
use crate::config::{Config, DefaultAction, IcmpPolicy, Probe, WeekTime};
use crate::model::{self, Bans, Decision, Matched, ModelState};
use crate::policy::CompiledPolicy;

/// A question, as the CLI asks it and sends it to the agent over the control socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Query {
    /// A packet from outside to the host: `explain --from ADDR PROTO/PORT`.
    Outside {
        from: IpAddr,
        /// `tcp/22`, `udp/53` or `icmp`.
        to: String,
        /// A TCP packet that opens a connection (SYN without ACK).
        syn: bool,
        /// When, in Unix seconds: what decides whether a ban is still in force. `None`: now.
        at: Option<i64>,
    },
    /// A peer's packet to the gateway: `explain --peer NAME PROTO/PORT`.
    Peer {
        peer: String,
        /// `tcp/5432`, `udp/53` or `icmp`.
        to: String,
        /// The time of the week in the host's local time, `Tue 22:00`. `None`: now.
        at: Option<String>,
        /// Whether the peer has an open MFA session. `None`: as it stands (none, when the
        /// answer comes from the configuration alone).
        mfa: Option<bool>,
    },
}

/// Which part of crmguard decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Layer {
    /// The XDP filter on the host's interfaces.
    Firewall,
    /// The identity ACL of the WireGuard endpoint.
    Tunnel,
}

/// The answer to a [`Query`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Explanation {
    pub layer: Layer,
    /// The packet asked about, in words: `tcp/22 SYN from 203.0.113.5`.
    pub packet: String,
    /// `pass`, `drop`, or `would_drop` (monitor mode: counted as a drop, let through).
    pub verdict: String,
    /// The reason, as the `reason` label of the metrics names it.
    pub reason: String,
    /// The rule that decided.
    pub rule: String,
    /// When the ban that decided ends (RFC 3339); absent for other rules and for a ban that
    /// lasts until it is removed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<String>,
    /// What the answer assumes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

impl Explanation {
    /// Whether the packet reaches its destination as the policy stands (a monitor-mode
    /// `would_drop` does not: the policy would drop it).
    pub fn passes(&self) -> bool {
        self.verdict == Action::Pass.name()
    }

    /// The answer as `crmguard explain` prints it.
    pub fn describe(&self) -> String {
        let mut out = format!(
            "packet:  {}\nverdict: {}\nreason:  {}\nrule:    {}\n",
            self.packet, self.verdict, self.reason, self.rule
        );
        if let Some(expires) = &self.expires {
            out.push_str(&format!("expires: {expires}\n"));
        }
        for note in &self.notes {
            out.push_str(&format!("note:    {note}\n"));
        }
        out
    }
}

/// What the answer is drawn from besides the configuration.
pub struct Context<'a> {
    pub config: &'a Config,
    /// The policy compiled from `config`.
    pub policy: &'a CompiledPolicy,
    /// The bans in force (none when the answer comes from the configuration alone).
    pub bans: &'a BanStore,
    /// Whether crmguard's MFA portal listens (the configuration alone: assumed, as it does
    /// whenever the endpoint runs).
    pub portal_listening: bool,
    /// Whether a peer has an open MFA session, when the running agent answers.
    pub sessions: Option<&'a dyn Fn(&str) -> bool>,
}

/// Why a question has no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    #[error("{0}")]
    Probe(String),
    #[error("no peer `{0}` is configured")]
    UnknownPeer(String),
    #[error("the configuration has no [vpn] section: no peer reaches the gateway")]
    NoVpn,
    #[error("{0}")]
    Time(String),
}

/// Answers `query` at `now`.
pub fn answer(
    ctx: &Context<'_>,
    query: &Query,
    now: SystemTime,
) -> Result<Explanation, QueryError> {
    match query {
        Query::Outside { from, to, syn, at } => {
            let probe = Probe::parse(to).map_err(QueryError::Probe)?;
            let at = match at {
                Some(seconds) => unix_time(*seconds),
                None => now,
            };
            Ok(outside(ctx, *from, probe, *syn, at))
        }
        Query::Peer { peer, to, at, mfa } => {
            let probe = Probe::parse(to).map_err(QueryError::Probe)?;
            let at = match at {
                Some(text) => WeekTime::parse(text).map_err(|e| QueryError::Time(e.to_string()))?,
                None => week_time_now(now),
            };
            let mfa = mfa.unwrap_or_else(|| ctx.sessions.is_some_and(|open| open(peer)));
            let acl = acl_of(ctx.config, ctx.portal_listening)?;
            tunnel(ctx.config, &acl, peer, probe, at, mfa)
        }
    }
}

fn unix_time(seconds: i64) -> SystemTime {
    let magnitude = Duration::from_secs(seconds.unsigned_abs());
    if seconds >= 0 {
        SystemTime::UNIX_EPOCH + magnitude
    } else {
        SystemTime::UNIX_EPOCH - magnitude
    }
}

/// A time as `crmguard explain --at` takes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum At {
    /// `Tue 22:00`: a time of the week in the host's local time.
    Week(WeekTime),
    /// `2026-12-08T22:00:00Z`, `2026-12-08 22:00` (local time) or `+2h` (from now).
    Instant(SystemTime),
}

impl At {
    /// Parses `--at`; `now` is the base of `+DURATION`.
    pub fn parse(text: &str, now: SystemTime) -> Result<At, String> {
        let text = text.trim();
        if let Some(after) = text.strip_prefix('+') {
            let after = crate::config::parse_duration(after).map_err(|e| e.to_string())?;
            return Ok(At::Instant(now + after));
        }
        if let Ok(week) = WeekTime::parse(text) {
            return Ok(At::Week(week));
        }
        if let Ok(stamp) = text.parse::<jiff::Timestamp>() {
            return Ok(At::Instant(unix_time(stamp.as_second())));
        }
        if let Ok(civil) = text.parse::<jiff::civil::DateTime>() {
            if let Ok(stamp) = jiff::tz::TimeZone::system().to_timestamp(civil) {
                return Ok(At::Instant(unix_time(stamp.as_second())));
            }
        }
        Err(format!(
            "`{text}` is not a time such as `Tue 22:00`, `2026-12-08 22:00`, `2026-12-08T22:00:00Z` or `+2h`"
        ))
    }

    /// The moment: a time of the week is the next one at or after `now`.
    pub fn instant(self, now: SystemTime) -> SystemTime {
        match self {
            At::Instant(at) => at,
            At::Week(week) => {
                let current = week_time_now(now);
                let minute = |w: WeekTime| i64::from(w.weekday) * 1440 + i64::from(w.minute_of_day);
                let ahead = (minute(week) - minute(current)).rem_euclid(7 * 1440);
                let seconds = crate::time::unix_seconds_signed(now);
                // From the start of the current minute, so that `Tue 22:00` is 22:00:00.
                unix_time(seconds - seconds.rem_euclid(60) + ahead * 60)
            }
        }
    }

    /// The time of the week.
    pub fn week_time(self) -> WeekTime {
        match self {
            At::Week(week) => week,
            At::Instant(at) => week_time_now(at),
        }
    }
}

/// The host's local time of the week at `now` (UTC when the zone cannot be read).
pub fn week_time_now(now: SystemTime) -> WeekTime {
    let local = LocalTime::at(crate::time::unix_seconds_signed(now)).unwrap_or(LocalTime {
        weekday: 0,
        minute_of_day: 0,
    });
    WeekTime {
        weekday: local.weekday,
        minute_of_day: local.minute_of_day,
    }
}

// ---- from outside: the XDP filter ---------------------------------------------------------

/// The kernel clock the model reads for the asked-about moment. Any value works as long as the
/// bans' expiries are computed from it; one far from zero keeps every expiry positive.
const MODEL_NOW: Duration = Duration::from_secs(1_000_000);

/// What the XDP filter does with `probe` from `from` at `at`, with the bans in force then.
pub fn outside(
    ctx: &Context<'_>,
    from: IpAddr,
    probe: Probe,
    syn: bool,
    at: SystemTime,
) -> Explanation {
    let syn = syn && matches!(probe, Probe::Tcp(_));
    let wireguard_port = ctx.config.vpn.as_ref().map(|vpn| vpn.listen_port);
    let dst = probe::host_address(from);
    let packet = describe_outside(from, probe, syn, wireguard_port);
    let Some(ip) = probe::ip_packet(from, dst, probe, syn, wireguard_port) else {
        // Both addresses are of the source's family: this cannot happen.
        return unanswered(Layer::Firewall, packet);
    };
    let frame = probe::ethernet_frame(&ip);
    let mut state = ModelState::new(ctx.policy.clone());
    state.bans = Bans::from_kernel(&ctx.bans.kernel_entries(at, MODEL_NOW));
    let now_ns = u64::try_from(MODEL_NOW.as_nanos()).unwrap_or(u64::MAX);
    let decision = model::decide_with_match(&mut state, &frame, now_ns);
    let (rule, expires) = firewall_rule(ctx, &decision, probe, from);
    let mut notes = Vec::new();
    if matches!(
        decision.reason,
        Reason::Service | Reason::Icmp | Reason::Wireguard
    ) {
        notes.push(
            "rate limits count from a source with no recent packets; its first packet always passes them"
                .to_owned(),
        );
    }
    if decision.action == Action::WouldDrop {
        notes.push(
            "monitor mode: the filter counts this as would_drop and lets it through".to_owned(),
        );
    }
    if !syn && matches!(probe, Probe::Tcp(_)) && !decision.reason.is_pass() {
        notes.push(
            "a reply to a connection this host opened would pass as established; the configuration does not hold those"
                .to_owned(),
        );
    }
    Explanation {
        layer: Layer::Firewall,
        packet,
        verdict: decision.action.name().to_owned(),
        reason: decision.reason.name().to_owned(),
        rule,
        expires,
        notes,
    }
}

fn unanswered(layer: Layer, packet: String) -> Explanation {
    Explanation {
        layer,
        packet,
        verdict: Action::Drop.name().to_owned(),
        reason: Reason::Malformed.name().to_owned(),
        rule: "the packet could not be built".to_owned(),
        expires: None,
        notes: Vec::new(),
    }
}

fn describe_outside(from: IpAddr, probe: Probe, syn: bool, wireguard_port: Option<u16>) -> String {
    let what = match probe {
        Probe::Tcp(_) if syn => format!("{probe} SYN"),
        Probe::Tcp(_) => format!("{probe} ACK (an open connection)"),
        Probe::Udp(port) if Some(port) == wireguard_port => {
            format!("{probe} (a WireGuard handshake initiation)")
        }
        Probe::Udp(_) => probe.to_string(),
        Probe::Icmp => "icmp echo request".to_owned(),
    };
    format!("{what} from {from}")
}

/// The rule behind a decision of the model, and the end of the ban that made it.
fn firewall_rule(
    ctx: &Context<'_>,
    decision: &Decision,
    probe: Probe,
    from: IpAddr,
) -> (String, Option<String>) {
    let config = ctx.config;
    let service_name = |svc_id: u32| {
        usize::try_from(svc_id)
            .ok()
            .and_then(|id| id.checked_sub(1))
            .and_then(|index| config.firewall.services.get(index))
    };
    match decision.matched {
        Matched::Deny { rule_id } => {
            let entry = usize::try_from(rule_id)
                .ok()
                .and_then(|id| id.checked_sub(1))
                .and_then(|index| ctx.policy.deny_rules.get(index))
                .map_or_else(|| format!("rule {rule_id}"), Clone::clone);
            (format!("deny {entry}"), None)
        }
        Matched::Ban { net, .. } => match ctx.bans.get(net) {
            Some(ban) => {
                let expires = ban.expires.map(crate::time::format_time);
                let until = expires.as_deref().unwrap_or("it is removed");
                (
                    format!(
                        "ban {} by {} ({}), until {until}",
                        ban.net,
                        ban.source.describe(),
                        ban.reason
                    ),
                    expires,
                )
            }
            None => (format!("ban {net}"), None),
        },
        Matched::Service {
            svc_id,
            from: admitted,
        } => {
            let Some(service) = service_name(svc_id) else {
                return (format!("service {svc_id}"), None);
            };
            let from = admitted.map_or_else(|| "anywhere".to_owned(), |net| net.to_string());
            let limit = match decision.reason {
                Reason::RateLimited => match service.per_source_pps {
                    Some(pps) => format!(", over its per_source_pps = {pps}"),
                    None => format!(
                        ", over [firewall.limits] per_source_pps = {}",
                        config.firewall.limits.per_source_pps
                    ),
                },
                Reason::SynFlood => match service.new_conn_per_source_per_s {
                    Some(rate) => format!(", over its new_conn_per_source_per_s = {rate}"),
                    None => format!(
                        ", over [firewall.limits] syn_per_source_per_s = {} or global_syn_per_s = {}",
                        config.firewall.limits.syn_per_source_per_s,
                        config.firewall.limits.global_syn_per_s
                    ),
                },
                Reason::RlTableBusy => format!(", {}", rl_table_busy_rule()),
                _ => String::new(),
            };
            (format!("`{}` from {from}{limit}", service.name), None)
        }
        Matched::ServiceNotFrom { svc_id } => {
            let admits = service_name(svc_id).map_or_else(String::new, |service| {
                let from: Vec<String> = service
                    .from
                    .iter()
                    .flatten()
                    .map(ToString::to_string)
                    .collect();
                format!(
                    "service `{}` on {probe} admits only {}; ",
                    service.name,
                    from.join(", ")
                )
            });
            (format!("{admits}{}", default_rule(config)), None)
        }
        Matched::Flow => ("a reply to a connection this host opened".to_owned(), None),
        Matched::Nothing => (nothing_matched(config, decision.reason, probe, from), None),
    }
}

fn default_rule(config: &Config) -> String {
    let word = match config.firewall.default {
        DefaultAction::Drop => "drop",
        DefaultAction::Allow => "allow",
    };
    format!("[firewall] default = \"{word}\"")
}

/// Why a source without a rate-limit bucket was dropped: the filter's own bound on new buckets.
fn rl_table_busy_rule() -> String {
    format!(
        "no rate-limit bucket for the source while the filter had made its {} new buckets of \
         the second on this CPU (a flood of new sources)",
        crate::abi::RL_NEW_PER_CPU_PER_S
    )
}

/// The rule of a decision that met no entry: a check of the packet itself or the default.
fn nothing_matched(config: &Config, reason: Reason, probe: Probe, from: IpAddr) -> String {
    let fw = &config.firewall;
    let icmp_word = match fw.icmp {
        IcmpPolicy::Essential => "essential",
        IcmpPolicy::All => "all",
        IcmpPolicy::None => "none",
    };
    let wg_port = config.vpn.as_ref().map_or(0, |vpn| vpn.listen_port);
    match reason {
        Reason::Icmp => format!(
            "[firewall] icmp = \"{icmp_word}\" lets echo requests in, at most {} per second per source",
            fw.icmp_echo_per_source_pps
        ),
        Reason::IcmpRate => format!(
            "[firewall] icmp_echo_per_source_pps = {}",
            fw.icmp_echo_per_source_pps
        ),
        Reason::Wireguard => format!(
            "the WireGuard port udp/{wg_port} takes messages of WireGuard's shape"
        ),
        Reason::WgHandshakeRate => format!(
            "[vpn] handshake_per_source_pps = {}",
            config.vpn.as_ref().map_or(0, |vpn| vpn.handshake_per_source_pps)
        ),
        Reason::WgMalformed => format!(
            "the WireGuard port udp/{wg_port} takes only messages of WireGuard's shape"
        ),
        Reason::RlTableBusy => rl_table_busy_rule(),
        Reason::DefaultDrop | Reason::DefaultAllow => match probe {
            Probe::Icmp => format!("[firewall] icmp = \"{icmp_word}\"; {}", default_rule(config)),
            _ => {
                let family = if from.is_ipv4() { "" } else { " for IPv6" };
                format!("no service on {probe}{family}; {}", default_rule(config))
            }
        },
        other => format!("the filter's checks of the packet itself ({})", other.name()),
    }
}

// ---- through the tunnel: the identity ACL -------------------------------------------------

/// The ACL of `config`, with the portal's state as given.
pub fn acl_of(config: &Config, portal_listening: bool) -> Result<Acl, QueryError> {
    let vpn = config.vpn.as_ref().ok_or(QueryError::NoVpn)?;
    let listening = Arc::new(PortalListening::default());
    listening.set(portal_listening);
    Ok(Acl::new(
        config,
        vpn.address.addr(),
        vpn.address6.map(|net| net.addr()),
        config.mfa.portal_port,
        listening,
    ))
}

/// The packet a peer sends for `probe`, from its tunnel address to the gateway's.
pub fn tunnel_packet(config: &Config, peer: &str, probe: Probe) -> Result<Vec<u8>, QueryError> {
    let vpn = config.vpn.as_ref().ok_or(QueryError::NoVpn)?;
    let entry = config
        .peer(peer)
        .ok_or_else(|| QueryError::UnknownPeer(peer.to_owned()))?;
    let src = IpAddr::V4(entry.address);
    let dst = IpAddr::V4(vpn.address.addr());
    probe::ip_packet(src, dst, probe, true, None)
        .ok_or_else(|| QueryError::Probe(format!("cannot build {probe} from {peer}")))
}

/// What the identity ACL does with `probe` sent by `peer` at `at`, with or without an MFA
/// session.
pub fn tunnel(
    config: &Config,
    acl: &Acl,
    peer: &str,
    probe: Probe,
    at: WeekTime,
    mfa: bool,
) -> Result<Explanation, QueryError> {
    let packet = tunnel_packet(config, peer, probe)?;
    Ok(tunnel_decision(config, acl, peer, probe, &packet, at, mfa))
}

/// [`tunnel`] with the packet already built, for the policy tests that ask at every minute.
fn tunnel_decision(
    config: &Config,
    acl: &Acl,
    peer: &str,
    probe: Probe,
    packet: &[u8],
    at: WeekTime,
    mfa: bool,
) -> Explanation {
    let now = LocalTime {
        weekday: at.weekday,
        minute_of_day: at.minute_of_day,
    };
    let verdict = acl.decide(peer, packet, now, mfa);
    let session = if mfa { "with" } else { "without" };
    let address = config
        .peer(peer)
        .map_or(Ipv4Addr::UNSPECIFIED, |p| p.address);
    let what = match probe {
        Probe::Icmp => "icmp echo request".to_owned(),
        other => other.to_string(),
    };
    let packet = format!("{what} from peer {peer} ({address}) at {at}, {session} an MFA session");
    let role = config.peer(peer).and_then(|p| config.role(&p.role));
    let role_name = role.map_or("(none)", |r| r.name.as_str());
    let (verdict, reason, rule) = match verdict {
        Verdict::Allow { service } => {
            let rule = match service {
                Service::Role(spec) => {
                    let mut rule = format!("role `{role_name}` allows {spec}");
                    if let Some(hours) = role.and_then(|r| r.hours) {
                        rule.push_str(&format!(" during {hours}"));
                    }
                    if role.is_some_and(|r| r.mfa) {
                        rule.push_str(" with an MFA session");
                    }
                    rule
                }
                Service::MfaPortal => format!(
                    "the MFA portal on tcp/{} is open to every enabled peer",
                    config.mfa.portal_port
                ),
                Service::Echo => {
                    "echo requests to the gateway are open to every enabled peer".to_owned()
                }
            };
            (Action::Pass, service.reason(), rule)
        }
        Verdict::Deny { reason, .. } => {
            let rule = match reason {
                DenyReason::NotInRole => {
                    let allow: Vec<String> = role
                        .map(|r| r.allow.iter().map(ToString::to_string).collect())
                        .unwrap_or_default();
                    if allow.is_empty() {
                        format!("role `{role_name}` allows no service")
                    } else {
                        format!("role `{role_name}` allows only {}", allow.join(", "))
                    }
                }
                DenyReason::OutsideHours => match role.and_then(|r| r.hours) {
                    Some(hours) => format!("role `{role_name}`'s hours {hours} do not hold {at}"),
                    None => format!("role `{role_name}`'s hours"),
                },
                DenyReason::MfaRequired => {
                    format!("role `{role_name}` needs an MFA session; peer {peer} has none open")
                }
                DenyReason::PeerDisabled => format!(
                    "peer {peer} is disabled: the endpoint refuses its handshakes, so none of its packets reach the gateway"
                ),
                DenyReason::NoRole => format!("peer {peer} has no configured role"),
                other => format!("the ACL's checks of the packet itself ({other})"),
            };
            (Action::Drop, reason.as_str(), rule)
        }
    };
    Explanation {
        layer: Layer::Tunnel,
        packet,
        verdict: verdict.name().to_owned(),
        reason: reason.to_owned(),
        rule,
        expires: None,
        notes: Vec::new(),
    }
}

/// The first address of `net`: the source the lockout guard sends from to stand for a whole
/// network.
pub fn first_address(net: &ipnet::IpNet) -> IpAddr {
    match net {
        ipnet::IpNet::V4(n) => IpAddr::V4(n.network()),
        ipnet::IpNet::V6(n) => IpAddr::V6(n.network()),
    }
}

#[cfg(test)]
mod tests;
