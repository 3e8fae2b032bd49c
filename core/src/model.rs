//! The reference model of the XDP decision: what `ebpf/xdp_firewall.c`
//! does with one frame, written again in plain Rust.
//!
//! Pure code: no kernel, no clock, no IO. [`decide`] takes the state the
//! program would find in its maps ([`ModelState`]: the policy in force, bans,
//! flows, the fragment cache, rate-limit buckets) and the time the program
//! would read (CLOCK_MONOTONIC in nanoseconds, which the program reads
//! coarsely, at jiffy resolution), and returns the (action, reason) pair the
//! program counts, updating the state the way the program updates its maps
//! (fragment verdicts and rate-limit buckets).
//!
//! The model follows the C rule by rule and in the same order (parse.h,
//! ratelimit.h and verdict.h), including its arithmetic, its boundary
//! conventions and its quirks: it says what the program does, not what it
//! ought to do. The differential test of the privileged suite
//! (`tests/suite/differential.rs`) runs the real program and this model on
//! the same frames and fails on the first difference, so a change of the C
//! is a change here.
//!
//! Map semantics the model reproduces:
//! - hash maps are exact-match [`BTreeMap`]s keyed like the kernel maps;
//! - LPM tries answer with the longest prefix that contains the key: a
//!   lookup in a deny or `from` trie only asks whether there is one, a ban
//!   lookup also asks whether that longest entry is still in force;
//! - prefixes are stored truncated to their length, as the agent writes them.

pub mod packet;

use std::collections::BTreeMap;

use crate::abi::{self, Action, Reason};
use crate::policy::CompiledPolicy;
use packet::{Packet, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP};

const NSEC_PER_SEC: u64 = 1_000_000_000;

/// Dynamic bans, keyed as in `cg_ban4`, `cg_ban6`, `cg_ban4_lpm` and
/// `cg_ban6_lpm`. A ban is in force while `expires_ns` is 0 or later than
/// the packet's time.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Bans {
    /// `cg_ban_flags[0]`: which of the four maps the program looks into
    /// (`abi::BAN_*`). A map whose bit is clear is not looked at, whatever
    /// it holds.
    pub flags: u32,
    pub hosts4: BTreeMap<[u8; 4], abi::Ban>,
    pub hosts6: BTreeMap<[u8; 16], abi::Ban>,
    pub prefixes4: BTreeMap<abi::Lpm4, abi::Ban>,
    pub prefixes6: BTreeMap<abi::Lpm6, abi::Ban>,
}

/// Everything the XDP program reads or writes besides the frame.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModelState {
    /// The policy in force. `policy.config` must be the settings exactly as
    /// the kernel holds them in `cg_config`: the datapath fills in
    /// `syn_per_cpu_per_s` when it writes them, and a compiled policy leaves
    /// it 0.
    pub policy: CompiledPolicy,
    pub bans: Bans,
    /// `cg_flows`: connections this host opened, with their expiry. Written
    /// by tc egress; the XDP program only reads them.
    pub flows: BTreeMap<abi::FlowKey, u64>,
    /// `cg_frags`: first-fragment verdicts.
    pub frags: BTreeMap<abi::FragKey, abi::Frag>,
    /// `cg_rl`: the per-source GCRA buckets.
    pub buckets: BTreeMap<abi::RlKey, abi::Rl>,
    /// `cg_syn_budget`: the bucket of the CPU the frames run on. All zero is
    /// the state of a CPU that has not yet seen a SYN.
    pub syn_budget: abi::Rl,
}

impl ModelState {
    /// A model with `policy` in force and no dynamic state.
    pub fn new(policy: CompiledPolicy) -> Self {
        Self {
            policy,
            ..Self::default()
        }
    }
}

/// What the XDP program does with `frame` when it reads `now_ns` from its
/// clock: the action and the reason it counts. `Action::WouldDrop` is a pass on the
/// wire (monitor mode).
pub fn decide(state: &mut ModelState, frame: &[u8], now_ns: u64) -> (Action, Reason) {
    let reason = reason_for(state, frame, now_ns);
    if reason.is_pass() {
        (Action::Pass, reason)
    } else if state.policy.config.mode == abi::MODE_MONITOR {
        (Action::WouldDrop, reason)
    } else {
        (Action::Drop, reason)
    }
}

/// `decide()` of verdict.h.
fn reason_for(state: &mut ModelState, frame: &[u8], now: u64) -> Reason {
    let p = match packet::parse(frame) {
        Ok(p) => p,
        Err(reason) => return reason,
    };
    if denied(&state.policy, &p) {
        return Reason::DeniedSource;
    }
    if banned(&state.bans, &p, now) {
        return Reason::Banned;
    }
    if p.frag_off != 0 {
        return later_fragment_reason(state, &p, now);
    }
    let reason = match p.proto {
        IPPROTO_TCP | IPPROTO_UDP => transport_reason(state, &p, frame, now),
        IPPROTO_ICMP if p.family == 4 => icmp_reason(state, &p, frame, now),
        IPPROTO_ICMPV6 if p.family == 6 => icmp_reason(state, &p, frame, now),
        _ => default_reason(&state.policy.config),
    };
    if p.more_frags {
        remember_first_fragment(state, &p, reason, now);
    }
    reason
}

fn default_reason(cfg: &abi::Config) -> Reason {
    if cfg.default_action == Action::Pass as u8 {
        Reason::DefaultAllow
    } else {
        Reason::DefaultDrop
    }
}

// ---- LPM tries ----------------------------------------------------------------

/// Whether the first `bits` bits of `entry` and `key` are equal: the match
/// of an LPM trie entry of prefix length `bits` against a full-length key.
/// A prefix longer than the key never matches (the kernel refuses to store
/// one).
fn prefix_matches(entry: &[u8], key: &[u8], bits: u32) -> bool {
    let Ok(bits) = usize::try_from(bits) else {
        return false;
    };
    if bits > entry.len() * 8 || bits > key.len() * 8 {
        return false;
    }
    let whole = bits / 8;
    if entry[..whole] != key[..whole] {
        return false;
    }
    let rest = bits % 8;
    if rest == 0 {
        return true;
    }
    let mask = 0xffu8 << (8 - rest);
    (entry[whole] ^ key[whole]) & mask == 0
}

/// The entry a trie lookup of the full-length `key` returns: the longest
/// prefix that contains it.
fn longest_match<'a, K, V>(
    trie: &'a BTreeMap<K, V>,
    key: &[u8],
    entry: impl Fn(&K) -> (u32, &[u8]),
) -> Option<&'a V> {
    trie.iter()
        .filter(|(k, _)| {
            let (bits, data) = entry(k);
            prefix_matches(data, key, bits)
        })
        .max_by_key(|(k, _)| entry(k).0)
        .map(|(_, v)| v)
}

// ---- the deny set and bans ----------------------------------------------------

/// `denied`: the hash of single addresses, then the trie of prefixes.
fn denied(policy: &CompiledPolicy, p: &Packet) -> bool {
    // The tries are consulted only when the slot's flags say they hold
    // prefixes, as in the C.
    let flags = policy.config.flags;
    if p.family == 4 {
        policy.deny4.contains_key(&p.src4)
            || (flags & abi::CFG_DENY4_PREFIXES != 0
                && longest_match(&policy.deny4_lpm, &p.src4, |k| {
                    (k.prefixlen, &k.addr_be[..])
                })
                .is_some())
    } else {
        policy.deny6.contains_key(&p.src)
            || (flags & abi::CFG_DENY6_PREFIXES != 0
                && longest_match(&policy.deny6_lpm, &p.src, |k| (k.prefixlen, &k.addr[..]))
                    .is_some())
    }
}

/// `ban_active`.
fn ban_active(ban: Option<&abi::Ban>, now: u64) -> bool {
    ban.is_some_and(|b| b.expires_ns == 0 || b.expires_ns > now)
}

/// `banned`: a host ban in force, else the longest ban prefix, if that one
/// is in force; each only when its map's flag is set. An expired longer
/// prefix hides a shorter one in force, as the trie returns only the
/// longest.
fn banned(bans: &Bans, p: &Packet, now: u64) -> bool {
    let flag = |bit: u32| bans.flags & bit != 0;
    if p.family == 4 {
        (flag(abi::BAN_HOSTS4) && ban_active(bans.hosts4.get(&p.src4), now))
            || (flag(abi::BAN_PREFIXES4)
                && ban_active(
                    longest_match(&bans.prefixes4, &p.src4, |k| (k.prefixlen, &k.addr_be[..])),
                    now,
                ))
    } else {
        (flag(abi::BAN_HOSTS6) && ban_active(bans.hosts6.get(&p.src), now))
            || (flag(abi::BAN_PREFIXES6)
                && ban_active(
                    longest_match(&bans.prefixes6, &p.src, |k| (k.prefixlen, &k.addr[..])),
                    now,
                ))
    }
}

// ---- fragments ------------------------------------------------------------------

fn frag_key(p: &Packet) -> abi::FragKey {
    abi::FragKey {
        src: p.src,
        dst: p.dst,
        id: p.frag_id,
        proto: p.frag_proto,
        family: p.family,
        _pad: 0,
    }
}

/// `later_fragment_reason`.
fn later_fragment_reason(state: &ModelState, p: &Packet, now: u64) -> Reason {
    if p.frag_proto == IPPROTO_TCP && p.frag_off < 24 {
        return Reason::Malformed;
    }
    let Some(first) = state.frags.get(&frag_key(p)) else {
        return Reason::FragmentOrphan;
    };
    if first.expires_ns < now {
        return Reason::FragmentOrphan;
    }
    // Only the program writes cg_frags, and only with reason numbers.
    match Reason::from_u32(first.reason) {
        Some(reason) if reason.is_pass() => Reason::Fragment,
        Some(reason) => reason,
        None => Reason::FragmentOrphan,
    }
}

/// `remember_first_fragment`.
fn remember_first_fragment(state: &mut ModelState, p: &Packet, reason: Reason, now: u64) {
    let value = abi::Frag {
        expires_ns: now.wrapping_add(abi::FRAG_TIMEOUT_S * NSEC_PER_SEC),
        reason: u32::from(reason as u8),
        _pad: 0,
    };
    state.frags.insert(frag_key(p), value);
}

// ---- rate limits (ratelimit.h) ----------------------------------------------------

/// `gcra_allow`, with the same integer arithmetic: `burst` packets pass
/// back to back, then one per interval.
fn gcra_allow(b: &mut abi::Rl, now: u64, rate: u32, burst: u32) -> bool {
    let interval = NSEC_PER_SEC.checked_div(u64::from(rate)).unwrap_or(0);
    let tolerance = interval.wrapping_mul(u64::from(burst.saturating_sub(1)));
    let mut tat = b.tat_ns;
    if b.rate != rate || b.burst != burst {
        tat = now;
        b.rate = rate;
        b.burst = burst;
    }
    if tat < now {
        tat = now;
    }
    if tat - now > tolerance {
        return false;
    }
    b.tat_ns = tat.wrapping_add(interval);
    true
}

/// `rl_check`: a source's first packet in a scope makes its bucket and
/// always passes.
fn rl_check(
    buckets: &mut BTreeMap<abi::RlKey, abi::Rl>,
    src: &[u8; 16],
    scope: u32,
    rate: u32,
    burst: u32,
    now: u64,
) -> bool {
    let key = abi::RlKey { addr: *src, scope };
    if let Some(bucket) = buckets.get_mut(&key) {
        return gcra_allow(bucket, now, rate, burst);
    }
    let mut fresh = abi::Rl {
        tat_ns: now,
        rate,
        burst,
    };
    gcra_allow(&mut fresh, now, rate, burst);
    buckets.insert(key, fresh);
    true
}

/// `syn_budget_allows`.
fn syn_budget_allows(budget: &mut abi::Rl, rate: u32, now: u64) -> bool {
    gcra_allow(budget, now, rate, rate)
}

// ---- replies to the host's own connections ----------------------------------------

/// `established`: the flow this packet answers, keyed from this host's side.
fn established(
    state: &ModelState,
    p: &Packet,
    local_port_be: [u8; 2],
    remote_port_be: [u8; 2],
    now: u64,
) -> bool {
    if state.policy.config.flags & abi::CFG_ALLOW_ESTABLISHED == 0 {
        return false;
    }
    let key = abi::FlowKey {
        local: p.dst,
        remote: p.src,
        local_port_be,
        remote_port_be,
        proto: p.proto,
        family: p.family,
        _pad: 0,
    };
    state.flows.get(&key).is_some_and(|&expires| expires >= now)
}

// ---- ICMP -------------------------------------------------------------------------

const ICMP_ECHOREPLY: u8 = 0;
const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_FRAG_NEEDED: u8 = 4;
const ICMP_ECHO: u8 = 8;
const ICMP_TIME_EXCEEDED: u8 = 11;
const ICMP_PARAMETERPROB: u8 = 12;
const ICMPV6_DEST_UNREACH: u8 = 1;
const ICMPV6_PKT_TOOBIG: u8 = 2;
const ICMPV6_TIME_EXCEED: u8 = 3;
const ICMPV6_PARAMPROB: u8 = 4;
const ICMPV6_ECHO_REQUEST: u8 = 128;
const ICMPV6_ECHO_REPLY: u8 = 129;

/// `icmp4_policy`: Some(icmp) when the setting lets the type through.
fn icmp4_policy(t: u8, code: u8, cfg: &abi::Config) -> Option<Reason> {
    if cfg.icmp == abi::ICMP_ALL {
        return Some(Reason::Icmp);
    }
    if t == ICMP_DEST_UNREACH && code == ICMP_FRAG_NEEDED {
        return Some(Reason::Icmp);
    }
    if cfg.icmp == abi::ICMP_NONE {
        return None;
    }
    match t {
        ICMP_ECHOREPLY | ICMP_DEST_UNREACH | ICMP_ECHO | ICMP_TIME_EXCEEDED
        | ICMP_PARAMETERPROB => Some(Reason::Icmp),
        _ => None,
    }
}

/// `icmp6_policy`.
fn icmp6_policy(t: u8, cfg: &abi::Config) -> Option<Reason> {
    if cfg.icmp == abi::ICMP_ALL {
        return Some(Reason::Icmp);
    }
    if t == ICMPV6_PKT_TOOBIG || (133..=137).contains(&t) {
        return Some(Reason::Icmp);
    }
    if cfg.icmp == abi::ICMP_NONE {
        return None;
    }
    match t {
        ICMPV6_DEST_UNREACH | ICMPV6_TIME_EXCEED | ICMPV6_PARAMPROB | ICMPV6_ECHO_REQUEST
        | ICMPV6_ECHO_REPLY | 130 | 131 | 132 | 143 => Some(Reason::Icmp),
        _ => None,
    }
}

/// `icmp_reason`.
fn icmp_reason(state: &mut ModelState, p: &Packet, frame: &[u8], now: u64) -> Reason {
    let cfg = state.policy.config;
    let Some(head) = frame.get(p.l4..p.l4 + 4) else {
        return Reason::Malformed;
    };
    if p.l4_len < 4 {
        return Reason::Malformed;
    }
    let (t, code) = (head[0], head[1]);
    let (reason, echo_request, echo_reply) = if p.family == 4 {
        (
            icmp4_policy(t, code, &cfg),
            t == ICMP_ECHO,
            t == ICMP_ECHOREPLY,
        )
    } else {
        (
            icmp6_policy(t, &cfg),
            t == ICMPV6_ECHO_REQUEST,
            t == ICMPV6_ECHO_REPLY,
        )
    };
    if reason == Some(Reason::Icmp)
        && echo_request
        && cfg.icmp_echo_pps != 0
        && !rl_check(
            &mut state.buckets,
            &p.src,
            abi::rl_scope(abi::RL_ICMP, 0),
            cfg.icmp_echo_pps,
            cfg.icmp_echo_pps,
            now,
        )
    {
        return Reason::IcmpRate;
    }
    if let Some(reason) = reason {
        return reason;
    }
    // The echo id must lie inside both the frame and the IP payload.
    if echo_reply && p.l4_len >= 6 {
        if let Some(id) = frame.get(p.l4 + 4..p.l4 + 6) {
            if established(state, p, [id[0], id[1]], [0, 0], now) {
                return Reason::Established;
            }
        }
    }
    default_reason(&cfg)
}

// ---- the WireGuard port -------------------------------------------------------------

/// `wireguard_reason`; `udp_len` is the UDP length field (at least 8).
fn wireguard_reason(
    state: &mut ModelState,
    p: &Packet,
    frame: &[u8],
    udp_len: u16,
    now: u64,
) -> Reason {
    let cfg = state.policy.config;
    let msg = p.l4 + 8;
    let len = u32::from(udp_len) - 8;
    let Some(head) = frame.get(msg..msg + 4) else {
        return Reason::WgMalformed;
    };
    if len < 4 || head[1] | head[2] | head[3] != 0 {
        return Reason::WgMalformed;
    }
    match head[0] {
        1 if len != 148 => Reason::WgMalformed,
        1 if cfg.wg_handshake_pps != 0
            && !rl_check(
                &mut state.buckets,
                &p.src,
                abi::rl_scope(abi::RL_WG, 0),
                cfg.wg_handshake_pps,
                cfg.wg_handshake_burst,
                now,
            ) =>
        {
            Reason::WgHandshakeRate
        }
        1 => Reason::Wireguard,
        2 if len == 92 => Reason::Wireguard,
        3 if len == 64 => Reason::Wireguard,
        4 if len >= 32 => Reason::Wireguard,
        _ => Reason::WgMalformed,
    }
}

// ---- public services ------------------------------------------------------------------

/// `from_allowed`: `from` tries are keyed by (service id, source prefix).
fn from_allowed(policy: &CompiledPolicy, svc: &abi::Svc, p: &Packet) -> bool {
    if svc.flags & abi::SVC_FROM_ANY != 0 {
        return true;
    }
    let id = svc.svc_id.to_be_bytes();
    if p.family == 6 {
        let mut key = [0u8; 20];
        key[..4].copy_from_slice(&id);
        key[4..].copy_from_slice(&p.src);
        let entry = |k: &abi::SvcLpm6| {
            let mut data = [0u8; 20];
            data[..4].copy_from_slice(&k.svc_id_be);
            data[4..].copy_from_slice(&k.addr);
            (k.prefixlen, data)
        };
        policy.svc_from6.keys().any(|k| {
            let (bits, data) = entry(k);
            prefix_matches(&data, &key, bits)
        })
    } else {
        let mut key = [0u8; 8];
        key[..4].copy_from_slice(&id);
        key[4..].copy_from_slice(&p.src4);
        policy.svc_from4.keys().any(|k| {
            let mut data = [0u8; 8];
            data[..4].copy_from_slice(&k.svc_id_be);
            data[4..].copy_from_slice(&k.addr_be);
            prefix_matches(&data, &key, k.prefixlen)
        })
    }
}

/// `service_limits`: new connections first (the service's own limit or the
/// global per-source one, then the host's SYN budget), then every packet.
fn service_limits(
    state: &mut ModelState,
    p: &Packet,
    svc: &abi::Svc,
    syn: bool,
    now: u64,
) -> Reason {
    let cfg = state.policy.config;
    if syn {
        if svc.syn_pps != 0 {
            let scope = abi::rl_scope(abi::RL_SVC_SYN, svc.svc_id);
            if !rl_check(
                &mut state.buckets,
                &p.src,
                scope,
                svc.syn_pps,
                svc.syn_pps,
                now,
            ) {
                return Reason::SynFlood;
            }
        } else if cfg.src_syn_per_s != 0 {
            let scope = abi::rl_scope(abi::RL_SYN, 0);
            let rate = cfg.src_syn_per_s;
            if !rl_check(&mut state.buckets, &p.src, scope, rate, rate, now) {
                return Reason::SynFlood;
            }
        }
        if cfg.syn_per_cpu_per_s != 0
            && !syn_budget_allows(&mut state.syn_budget, cfg.syn_per_cpu_per_s, now)
        {
            return Reason::SynFlood;
        }
    }
    if svc.src_pps != 0 {
        let scope = abi::rl_scope(abi::RL_SVC, svc.svc_id);
        let rate = svc.src_pps;
        if !rl_check(&mut state.buckets, &p.src, scope, rate, rate, now) {
            return Reason::RateLimited;
        }
    } else if cfg.src_pps != 0 {
        let scope = abi::rl_scope(abi::RL_SRC, 0);
        if !rl_check(
            &mut state.buckets,
            &p.src,
            scope,
            cfg.src_pps,
            cfg.src_burst,
            now,
        ) {
            return Reason::RateLimited;
        }
    }
    Reason::Service
}

const TCP_FLAG_SYN: u8 = 0x02;
const TCP_FLAG_ACK: u8 = 0x10;

/// `transport_reason`: TCP and UDP headers bounded by both the frame and the
/// IP lengths, the WireGuard port, services, replies, the default.
fn transport_reason(state: &mut ModelState, p: &Packet, frame: &[u8], now: u64) -> Reason {
    let l4 = p.l4;
    let Some(ports) = frame.get(l4..l4 + 4) else {
        return Reason::Malformed;
    };
    let (sport, dport) = ([ports[0], ports[1]], [ports[2], ports[3]]);
    let mut syn = false;
    if p.proto == IPPROTO_TCP {
        let Some(tcp) = frame.get(l4..l4 + 20) else {
            return Reason::Malformed;
        };
        if p.l4_len < 20 {
            return Reason::Malformed;
        }
        let doff = usize::from(tcp[12] >> 4);
        if doff < 5
            || l4 + doff * 4 > frame.len()
            || p.l4_len < u32::try_from(doff * 4).unwrap_or(0)
        {
            return Reason::Malformed;
        }
        syn = tcp[13] & TCP_FLAG_SYN != 0 && tcp[13] & TCP_FLAG_ACK == 0;
    } else {
        let Some(udp) = frame.get(l4..l4 + 8) else {
            return Reason::Malformed;
        };
        if p.l4_len < 8 {
            return Reason::Malformed;
        }
        let len = u16::from_be_bytes([udp[4], udp[5]]);
        if len < 8 {
            return Reason::Malformed;
        }
        // A first fragment carries the length of the whole datagram.
        if !p.more_frags && (l4 + usize::from(len) > frame.len() || u32::from(len) > p.l4_len) {
            return Reason::Malformed;
        }
        let wg_port = state.policy.config.wg_port_be;
        if wg_port != 0 && u16::from_ne_bytes(dport) == wg_port {
            return wireguard_reason(state, p, frame, len, now);
        }
    }

    let key = abi::SvcKey {
        proto: p.proto,
        _pad: 0,
        port_be: dport,
    };
    if let Some(svc) = state.policy.services.get(&key).copied() {
        if from_allowed(&state.policy, &svc, p) {
            return service_limits(state, p, &svc, syn, now);
        }
    }
    // A SYN without ACK opens a connection; it is never a reply.
    if !syn && established(state, p, dport, sport, now) {
        return Reason::Established;
    }
    default_reason(&state.policy.config)
}

#[cfg(test)]
#[path = "model/tests.rs"]
mod tests;
