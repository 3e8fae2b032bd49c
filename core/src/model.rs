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
use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

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

impl Bans {
    /// The ban maps as the agent writes `entries` ([`crate::bans::BanStore::kernel_entries`]),
    /// with the flag of each map that holds one.
    pub fn from_kernel(
        entries: &BTreeMap<crate::bans::KernelKey, crate::bans::KernelValue>,
    ) -> Bans {
        use crate::bans::KernelKey;
        let mut bans = Bans::default();
        for (key, value) in entries {
            let ban = abi::Ban {
                expires_ns: value.expires_ns,
                reason: value.reason,
                _pad: 0,
            };
            match *key {
                KernelKey::Host4(addr) => {
                    bans.flags |= abi::BAN_HOSTS4;
                    bans.hosts4.insert(addr, ban);
                }
                KernelKey::Host6(addr) => {
                    bans.flags |= abi::BAN_HOSTS6;
                    bans.hosts6.insert(addr, ban);
                }
                KernelKey::Prefix4 { len, addr } => {
                    bans.flags |= abi::BAN_PREFIXES4;
                    let key = abi::Lpm4 {
                        prefixlen: len,
                        addr_be: addr,
                    };
                    bans.prefixes4.insert(key, ban);
                }
                KernelKey::Prefix6 { len, addr } => {
                    bans.flags |= abi::BAN_PREFIXES6;
                    let key = abi::Lpm6 {
                        prefixlen: len,
                        addr,
                    };
                    bans.prefixes6.insert(key, ban);
                }
            }
        }
        bans
    }
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
    /// `cg_flows4` (IPv4, under `abi::Flow4Key`) and `cg_flows` (IPv6): TCP
    /// connections this host opened, with their expiry; `FlowKey::place` says
    /// which. Written by tc egress; the XDP program only reads them.
    pub flows: BTreeMap<abi::FlowKey, u64>,
    /// `cg_dgram_flows`: UDP and ICMP echo flows this host opened, with their
    /// expiry, apart from its TCP connections.
    pub dgram_flows: BTreeMap<abi::FlowKey, u64>,
    /// `cg_frags`: first-fragment verdicts.
    pub frags: BTreeMap<abi::FragKey, abi::Frag>,
    /// `cg_rl`: the per-source GCRA buckets, by slot (`abi::rl_indexes`); a slot not here
    /// is all zeros.
    pub buckets: BTreeMap<u32, abi::RlSlot>,
    /// `cg_syn_budget`: the bucket of the CPU the frames run on. All zero is
    /// the state of a CPU that has not yet seen a SYN.
    pub syn_budget: abi::Rl,
    /// `cg_rl_budget`: the budget of new buckets of the CPU the frames run
    /// on (`abi::RL_NEW_PER_CPU_PER_S`). All zero is the state of a CPU that
    /// has not yet made a bucket.
    pub rl_budget: abi::Rl,
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
    let decision = decide_with_match(state, frame, now_ns);
    (decision.action, decision.reason)
}

/// The entry of the policy or of the dynamic state that decided a frame: what
/// `crmguard explain` and the policy tests name next to the reason. The
/// decision itself is [`decide`]'s; this only says which entry it met.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Matched {
    /// No entry: a check of the frame itself (its headers, fragments, the
    /// WireGuard message shape, the ICMP type) or the default action.
    Nothing,
    /// A deny rule, by id: `CompiledPolicy::deny_rules[rule_id - 1]`.
    Deny { rule_id: u32 },
    /// A ban, by the network of its kernel entry and its expiry on the
    /// kernel's clock (0: never).
    Ban { net: IpNet, expires_ns: u64 },
    /// A public service, by id (its index in `[[firewall.service]]` plus
    /// one), with the `from` prefix that admitted the source (`None`: the
    /// service admits any source).
    Service { svc_id: u32, from: Option<IpNet> },
    /// A public service owns the port but its `from` does not hold the
    /// source, so the frame went on to the later rules.
    ServiceNotFrom { svc_id: u32 },
    /// A connection this host opened, which the frame answers.
    Flow,
}

/// [`decide`]'s answer with the entry that decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub action: Action,
    pub reason: Reason,
    pub matched: Matched,
}

/// [`decide`], also naming the entry that decided.
pub fn decide_with_match(state: &mut ModelState, frame: &[u8], now_ns: u64) -> Decision {
    let (reason, matched) = reason_for(state, frame, now_ns);
    let action = if reason.is_pass() {
        Action::Pass
    } else if state.policy.config.mode == abi::MODE_MONITOR {
        Action::WouldDrop
    } else {
        Action::Drop
    };
    Decision {
        action,
        reason,
        matched,
    }
}

/// `decide()` of verdict.h.
fn reason_for(state: &mut ModelState, frame: &[u8], now: u64) -> (Reason, Matched) {
    let p = match packet::parse(frame) {
        Ok(p) => p,
        Err(reason) => return (reason, Matched::Nothing),
    };
    if let Some(rule_id) = denied(&state.policy, &p) {
        return (Reason::DeniedSource, Matched::Deny { rule_id });
    }
    if let Some(ban) = banned(&state.bans, &p, now) {
        return (Reason::Banned, ban);
    }
    if p.frag_off != 0 {
        return (later_fragment_reason(state, &p, now), Matched::Nothing);
    }
    let (reason, matched) = match p.proto {
        IPPROTO_TCP | IPPROTO_UDP => transport_reason(state, &p, frame, now),
        IPPROTO_ICMP if p.family == 4 => icmp_match(icmp_reason(state, &p, frame, now)),
        IPPROTO_ICMPV6 if p.family == 6 => icmp_match(icmp_reason(state, &p, frame, now)),
        _ => (default_reason(&state.policy.config), Matched::Nothing),
    };
    if p.more_frags {
        remember_first_fragment(state, &p, reason, now);
    }
    (reason, matched)
}

/// An ICMP message meets an entry only when it answers this host's echo.
fn icmp_match(reason: Reason) -> (Reason, Matched) {
    let matched = if reason == Reason::Established {
        Matched::Flow
    } else {
        Matched::Nothing
    };
    (reason, matched)
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
) -> Option<(&'a K, &'a V)> {
    trie.iter()
        .filter(|(k, _)| {
            let (bits, data) = entry(k);
            prefix_matches(data, key, bits)
        })
        .max_by_key(|(k, _)| entry(k).0)
}

fn net4(addr: [u8; 4], bits: u32) -> IpNet {
    let bits = u8::try_from(bits.min(32)).unwrap_or(32);
    IpNet::V4(Ipv4Net::new(Ipv4Addr::from(addr), bits).unwrap_or_default())
}

fn net6(addr: [u8; 16], bits: u32) -> IpNet {
    let bits = u8::try_from(bits.min(128)).unwrap_or(128);
    IpNet::V6(Ipv6Net::new(Ipv6Addr::from(addr), bits).unwrap_or_default())
}

// ---- the deny set and bans ----------------------------------------------------

/// `denied`: the single addresses, then (IPv4) the prefixes of each length
/// the deny table holds, then the trie of prefixes. The id of the deny rule
/// that holds the source, if one does.
fn denied(policy: &CompiledPolicy, p: &Packet) -> Option<u32> {
    // The tries are consulted only when the slot's flags say they hold
    // prefixes, as in the C.
    let flags = policy.config.flags;
    let rule = if p.family == 4 {
        policy
            .deny4
            .get(&p.src4)
            .or_else(|| probed_deny4(policy, p.src4))
            .or_else(|| {
                (flags & abi::CFG_DENY4_PREFIXES != 0)
                    .then(|| {
                        longest_match(&policy.deny4_lpm, &p.src4, |k| {
                            (k.prefixlen, &k.addr_be[..])
                        })
                    })
                    .flatten()
                    .map(|(_, rule)| rule)
            })
    } else {
        policy.deny6.get(&p.src).or_else(|| {
            (flags & abi::CFG_DENY6_PREFIXES != 0)
                .then(|| longest_match(&policy.deny6_lpm, &p.src, |k| (k.prefixlen, &k.addr[..])))
                .flatten()
                .map(|(_, rule)| rule)
        })
    };
    rule.map(|rule| rule.rule_id)
}

/// `deny4_table_holds`: the prefixes of the lengths the table holds, longest first.
fn probed_deny4(policy: &CompiledPolicy, src: [u8; 4]) -> Option<&abi::Rule> {
    let probes = usize::from(policy.config.deny4_probes).min(abi::DENY4_PROBES);
    policy.config.deny4_len[..probes].iter().find_map(|len| {
        let masked = abi::deny4_entry(src, *len);
        let addr = u32::try_from(masked & u64::from(u32::MAX)).unwrap_or(0);
        policy.deny4_lpm.get(&abi::Lpm4 {
            prefixlen: u32::from(*len),
            addr_be: addr.to_be_bytes(),
        })
    })
}

/// `ban_active`: the ban as [`Matched`] when it is in force.
fn ban_active(ban: Option<(IpNet, &abi::Ban)>, now: u64) -> Option<Matched> {
    let (net, ban) = ban?;
    (ban.expires_ns == 0 || ban.expires_ns > now).then_some(Matched::Ban {
        net,
        expires_ns: ban.expires_ns,
    })
}

/// `banned`: a host ban in force, else the longest ban prefix, if that one
/// is in force; each only when its map's flag is set. An expired longer
/// prefix hides a shorter one in force, as the trie returns only the
/// longest.
fn banned(bans: &Bans, p: &Packet, now: u64) -> Option<Matched> {
    let flag = |bit: u32| bans.flags & bit != 0;
    if p.family == 4 {
        let host = || {
            let ban = bans.hosts4.get(&p.src4).map(|b| (net4(p.src4, 32), b));
            ban_active(ban, now)
        };
        let prefix = || {
            let ban = longest_match(&bans.prefixes4, &p.src4, |k| (k.prefixlen, &k.addr_be[..]))
                .map(|(k, b)| (net4(k.addr_be, k.prefixlen), b));
            ban_active(ban, now)
        };
        flag(abi::BAN_HOSTS4)
            .then(host)
            .flatten()
            .or_else(|| flag(abi::BAN_PREFIXES4).then(prefix).flatten())
    } else {
        let host = || {
            let ban = bans.hosts6.get(&p.src).map(|b| (net6(p.src, 128), b));
            ban_active(ban, now)
        };
        let prefix = || {
            let ban = longest_match(&bans.prefixes6, &p.src, |k| (k.prefixlen, &k.addr[..]))
                .map(|(k, b)| (net6(k.addr, k.prefixlen), b));
            ban_active(ban, now)
        };
        flag(abi::BAN_HOSTS6)
            .then(host)
            .flatten()
            .or_else(|| flag(abi::BAN_PREFIXES6).then(prefix).flatten())
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

/// `rl_source`: the source as rate limits key it, an IPv6 source by its
/// first `v6_prefix` bits (0 or 128: the whole address).
pub fn rl_source(p: &Packet, v6_prefix: u8) -> [u8; 16] {
    let mut addr = p.src;
    if p.family != 6 || v6_prefix == 0 || v6_prefix >= 128 {
        return addr;
    }
    for (i, byte) in addr.iter_mut().enumerate() {
        let keep = i32::from(v6_prefix) - i32::try_from(i * 8).unwrap_or(i32::MAX);
        if keep <= 0 {
            *byte = 0;
        } else if keep < 8 {
            *byte &= 0xffu8 << (8 - keep);
        }
    }
    addr
}

/// The rate-limit state [`rl_check`] reads and writes: `cg_rl` and this
/// CPU's `cg_rl_budget`.
struct Buckets<'a> {
    buckets: &'a mut BTreeMap<u32, abi::RlSlot>,
    budget: &'a mut abi::Rl,
}

impl<'a> Buckets<'a> {
    fn of(state: &'a mut ModelState) -> Self {
        Buckets {
            buckets: &mut state.buckets,
            budget: &mut state.rl_budget,
        }
    }
}

/// `rl_check`: `None` when the packet passes, `Some(limited)` when its
/// bucket is spent, `Some(RlTableBusy)` when the source has no bucket and
/// either the CPU's budget of new buckets is spent or both of the key's
/// places are held by active sources. A source's first packet in a scope
/// makes its bucket, in the first of its places that is empty or idle, and
/// passes.
#[allow(clippy::too_many_arguments)]
fn rl_check(
    rl: Buckets<'_>,
    p: &Packet,
    cfg: &abi::Config,
    scope: u32,
    rate: u32,
    burst: u32,
    now: u64,
    limited: Reason,
) -> Option<Reason> {
    let key = abi::RlKey {
        addr: rl_source(p, cfg.rl_v6_prefix),
        scope,
    };
    let units = u32::try_from((now >> abi::RL_SEEN_SHIFT) & u64::from(u32::MAX)).unwrap_or(0);
    let places = abi::rl_indexes(&key);
    if let Some(index) = places
        .into_iter()
        .find(|index| rl.buckets.get(index).is_some_and(|slot| slot.key == key))
    {
        let slot = rl.buckets.entry(index).or_default();
        slot.seen = units;
        return (!gcra_allow(&mut slot.bucket, now, rate, burst)).then_some(limited);
    }
    let free = |index: &u32| {
        rl.buckets.get(index).is_none_or(|slot| {
            slot.key.scope == 0 || units.wrapping_sub(slot.seen) >= abi::RL_KEEP_UNITS
        })
    };
    let Some(index) = places.into_iter().find(free) else {
        return Some(Reason::RlTableBusy);
    };
    let new_rate = abi::RL_NEW_PER_CPU_PER_S;
    if !gcra_allow(rl.budget, now, new_rate, new_rate) {
        return Some(Reason::RlTableBusy);
    }
    let mut fresh = abi::Rl {
        tat_ns: now,
        rate,
        burst,
    };
    gcra_allow(&mut fresh, now, rate, burst);
    rl.buckets.insert(
        index,
        abi::RlSlot {
            key,
            seen: units,
            bucket: fresh,
        },
    );
    None
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
    // TCP connections and datagram flows are kept apart.
    let flows = if p.proto == IPPROTO_TCP {
        &state.flows
    } else {
        &state.dgram_flows
    };
    flows.get(&key).is_some_and(|&expires| expires >= now)
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
    if reason == Some(Reason::Icmp) && echo_request && cfg.icmp_echo_pps != 0 {
        let scope = abi::rl_scope(abi::RL_ICMP, 0);
        let rate = cfg.icmp_echo_pps;
        let rl = Buckets::of(state);
        if let Some(limited) = rl_check(rl, p, &cfg, scope, rate, rate, now, Reason::IcmpRate) {
            return limited;
        }
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
        1 if cfg.wg_handshake_pps != 0 => rl_check(
            Buckets::of(state),
            p,
            &cfg,
            abi::rl_scope(abi::RL_WG, 0),
            cfg.wg_handshake_pps,
            cfg.wg_handshake_burst,
            now,
            Reason::WgHandshakeRate,
        )
        .unwrap_or(Reason::Wireguard),
        1 => Reason::Wireguard,
        2 if len == 92 => Reason::Wireguard,
        3 if len == 64 => Reason::Wireguard,
        4 if len >= 32 => Reason::Wireguard,
        _ => Reason::WgMalformed,
    }
}

// ---- public services ------------------------------------------------------------------

/// `from_allowed`: `from` tries are keyed by (service id, source prefix).
/// `Some(None)` when the service admits any source, `Some(prefix)` for the
/// longest `from` prefix that holds the source, `None` when none does.
fn from_allowed(policy: &CompiledPolicy, svc: &abi::Svc, p: &Packet) -> Option<Option<IpNet>> {
    if svc.flags & abi::SVC_FROM_ANY != 0 {
        return Some(None);
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
        policy
            .svc_from6
            .keys()
            .filter(|k| {
                let (bits, data) = entry(k);
                prefix_matches(&data, &key, bits)
            })
            .max_by_key(|k| k.prefixlen)
            .map(|k| Some(net6(k.addr, k.prefixlen.saturating_sub(32))))
    } else {
        let mut key = [0u8; 8];
        key[..4].copy_from_slice(&id);
        key[4..].copy_from_slice(&p.src4);
        policy
            .svc_from4
            .keys()
            .filter(|k| {
                let mut data = [0u8; 8];
                data[..4].copy_from_slice(&k.svc_id_be);
                data[4..].copy_from_slice(&k.addr_be);
                prefix_matches(&data, &key, k.prefixlen)
            })
            .max_by_key(|k| k.prefixlen)
            .map(|k| Some(net4(k.addr_be, k.prefixlen.saturating_sub(32))))
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
        let limited = if svc.syn_pps != 0 {
            let scope = abi::rl_scope(abi::RL_SVC_SYN, svc.svc_id);
            let rate = svc.syn_pps;
            let rl = Buckets::of(state);
            rl_check(rl, p, &cfg, scope, rate, rate, now, Reason::SynFlood)
        } else if cfg.src_syn_per_s != 0 {
            let scope = abi::rl_scope(abi::RL_SYN, 0);
            let rate = cfg.src_syn_per_s;
            let rl = Buckets::of(state);
            rl_check(rl, p, &cfg, scope, rate, rate, now, Reason::SynFlood)
        } else {
            None
        };
        if let Some(limited) = limited {
            return limited;
        }
        if cfg.syn_per_cpu_per_s != 0
            && !syn_budget_allows(&mut state.syn_budget, cfg.syn_per_cpu_per_s, now)
        {
            return Reason::SynFlood;
        }
    }
    let limited = if svc.src_pps != 0 {
        let scope = abi::rl_scope(abi::RL_SVC, svc.svc_id);
        let rate = svc.src_pps;
        let rl = Buckets::of(state);
        rl_check(rl, p, &cfg, scope, rate, rate, now, Reason::RateLimited)
    } else if cfg.src_pps != 0 {
        let scope = abi::rl_scope(abi::RL_SRC, 0);
        let (rate, burst) = (cfg.src_pps, cfg.src_burst);
        let rl = Buckets::of(state);
        rl_check(rl, p, &cfg, scope, rate, burst, now, Reason::RateLimited)
    } else {
        None
    };
    if let Some(limited) = limited {
        return limited;
    }
    Reason::Service
}

const TCP_FLAG_SYN: u8 = 0x02;
const TCP_FLAG_ACK: u8 = 0x10;

/// `transport_reason`: TCP and UDP headers bounded by both the frame and the
/// IP lengths, the WireGuard port, services, replies, the default.
fn transport_reason(
    state: &mut ModelState,
    p: &Packet,
    frame: &[u8],
    now: u64,
) -> (Reason, Matched) {
    let l4 = p.l4;
    let Some(ports) = frame.get(l4..l4 + 4) else {
        return (Reason::Malformed, Matched::Nothing);
    };
    let (sport, dport) = ([ports[0], ports[1]], [ports[2], ports[3]]);
    let mut syn = false;
    if p.proto == IPPROTO_TCP {
        let Some(tcp) = frame.get(l4..l4 + 20) else {
            return (Reason::Malformed, Matched::Nothing);
        };
        if p.l4_len < 20 {
            return (Reason::Malformed, Matched::Nothing);
        }
        let doff = usize::from(tcp[12] >> 4);
        if doff < 5
            || l4 + doff * 4 > frame.len()
            || p.l4_len < u32::try_from(doff * 4).unwrap_or(0)
        {
            return (Reason::Malformed, Matched::Nothing);
        }
        syn = tcp[13] & TCP_FLAG_SYN != 0 && tcp[13] & TCP_FLAG_ACK == 0;
    } else {
        let Some(udp) = frame.get(l4..l4 + 8) else {
            return (Reason::Malformed, Matched::Nothing);
        };
        if p.l4_len < 8 {
            return (Reason::Malformed, Matched::Nothing);
        }
        let len = u16::from_be_bytes([udp[4], udp[5]]);
        if len < 8 {
            return (Reason::Malformed, Matched::Nothing);
        }
        // A first fragment carries the length of the whole datagram.
        if !p.more_frags && (l4 + usize::from(len) > frame.len() || u32::from(len) > p.l4_len) {
            return (Reason::Malformed, Matched::Nothing);
        }
        let wg_port = state.policy.config.wg_port_be;
        if wg_port != 0 && u16::from_ne_bytes(dport) == wg_port {
            return (
                wireguard_reason(state, p, frame, len, now),
                Matched::Nothing,
            );
        }
    }

    let key = abi::SvcKey {
        proto: p.proto,
        _pad: 0,
        port_be: dport,
    };
    let mut matched = Matched::Nothing;
    if let Some(svc) = state.policy.services.get(&key).copied() {
        if let Some(from) = from_allowed(&state.policy, &svc, p) {
            let matched = Matched::Service {
                svc_id: svc.svc_id,
                from,
            };
            return (service_limits(state, p, &svc, syn, now), matched);
        }
        matched = Matched::ServiceNotFrom { svc_id: svc.svc_id };
    }
    // A SYN without ACK opens a connection; it is never a reply.
    if !syn && established(state, p, dport, sport, now) {
        return (Reason::Established, Matched::Flow);
    }
    (default_reason(&state.policy.config), matched)
}

#[cfg(test)]
#[path = "model/tests.rs"]
mod tests;
