//! Rust mirror of `ebpf/include/crmguard_abi.h`, the one contract between the
//! XDP program and the agent.
//!
//! Every type here is `#[repr(C)]` with the size the header asserts; the
//! compile-time asserts below fail the build if either side drifts, the unit
//! tests here compare every constant and reason with the header's text, and
//! the datapath's tests compare every member's offset with the BTF of the
//! compiled objects. Fields ending in `_be` hold network byte
//! order, exactly as in the header.

use std::fmt;

/// The ABI version compiled into this agent (`CG_ABI_VERSION`).
pub const ABI_VERSION: u32 = 10;

/// What the program did with a packet (`enum cg_action`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum Action {
    Pass = 0,
    Drop = 1,
    WouldDrop = 2,
}

impl Action {
    pub const ALL: [Action; 3] = [Action::Pass, Action::Drop, Action::WouldDrop];

    /// The `action` label value of metrics and status.
    pub fn name(self) -> &'static str {
        match self {
            Action::Pass => "pass",
            Action::Drop => "drop",
            Action::WouldDrop => "would_drop",
        }
    }
}

/// `CG_ACT_COUNT`.
pub const ACTION_COUNT: u32 = 3;

/// Why the program did it (`enum cg_reason`). Numbers are never reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum Reason {
    Malformed = 1,
    DeniedSource = 2,
    Banned = 3,
    DefaultDrop = 4,
    RateLimited = 5,
    SynFlood = 6,
    WgMalformed = 7,
    WgHandshakeRate = 8,
    FragmentOrphan = 9,
    Ipv6ExtHeader = 10,
    IcmpRate = 11,
    RlTableBusy = 12,
    NonIp = 16,
    Service = 17,
    Icmp = 18,
    Established = 19,
    Wireguard = 20,
    DefaultAllow = 21,
    Fragment = 22,
}

impl Reason {
    pub const ALL: [Reason; 19] = [
        Reason::Malformed,
        Reason::DeniedSource,
        Reason::Banned,
        Reason::DefaultDrop,
        Reason::RateLimited,
        Reason::SynFlood,
        Reason::WgMalformed,
        Reason::WgHandshakeRate,
        Reason::FragmentOrphan,
        Reason::Ipv6ExtHeader,
        Reason::IcmpRate,
        Reason::RlTableBusy,
        Reason::NonIp,
        Reason::Service,
        Reason::Icmp,
        Reason::Established,
        Reason::Wireguard,
        Reason::DefaultAllow,
        Reason::Fragment,
    ];

    /// The `reason` label of metrics, logs and audit records.
    pub fn name(self) -> &'static str {
        match self {
            Reason::Malformed => "malformed",
            Reason::DeniedSource => "denied_source",
            Reason::Banned => "banned",
            Reason::DefaultDrop => "default_drop",
            Reason::RateLimited => "rate_limited",
            Reason::SynFlood => "syn_flood",
            Reason::WgMalformed => "wg_malformed",
            Reason::WgHandshakeRate => "wg_handshake_rate",
            Reason::FragmentOrphan => "fragment_orphan",
            Reason::Ipv6ExtHeader => "ipv6_ext_header",
            Reason::IcmpRate => "icmp_rate",
            Reason::RlTableBusy => "rl_table_busy",
            Reason::NonIp => "non_ip",
            Reason::Service => "service",
            Reason::Icmp => "icmp",
            Reason::Established => "established",
            Reason::Wireguard => "wireguard",
            Reason::DefaultAllow => "default_allow",
            Reason::Fragment => "fragment",
        }
    }

    /// Pass reasons are numbered from `CG_R_NON_IP` up.
    pub fn is_pass(self) -> bool {
        self as u8 >= Reason::NonIp as u8
    }

    pub fn from_u32(value: u32) -> Option<Reason> {
        Reason::ALL
            .into_iter()
            .find(|r| u32::from(*r as u8) == value)
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// `CG_REASON_SLOTS`.
pub const REASON_SLOTS: u32 = 32;
/// `CG_MAX_IFSLOTS`: interfaces one agent can attach to.
pub const MAX_IFSLOTS: u32 = 16;
/// `CG_STATS_ENTRIES`.
pub const STATS_ENTRIES: u32 = MAX_IFSLOTS * ACTION_COUNT * REASON_SLOTS;

/// `CG_STATS_INDEX(slot, action, reason)`.
pub fn stats_index(slot: u32, action: Action, reason: Reason) -> u32 {
    ((slot * ACTION_COUNT) + u32::from(action as u8)) * REASON_SLOTS + u32::from(reason as u8)
}

/// `enum cg_mode`.
pub const MODE_ENFORCE: u8 = 0;
pub const MODE_MONITOR: u8 = 1;

/// `enum cg_icmp_policy`.
pub const ICMP_ESSENTIAL: u8 = 0;
pub const ICMP_ALL: u8 = 1;
pub const ICMP_NONE: u8 = 2;

/// `CG_CFG_ALLOW_ESTABLISHED`.
pub const CFG_ALLOW_ESTABLISHED: u8 = 1 << 0;
/// `CG_CFG_DENY4_PREFIXES`, `CG_CFG_DENY6_PREFIXES`: the slot's deny tries
/// hold prefixes.
pub const CFG_DENY4_PREFIXES: u8 = 1 << 1;
pub const CFG_DENY6_PREFIXES: u8 = 1 << 2;

/// `CG_SVC_FROM_ANY`.
pub const SVC_FROM_ANY: u32 = 1 << 0;

/// `CG_DENY_HOST_MAX`, `CG_DENY_PREFIX_MAX`, `CG_SVC_MAX`, `CG_SVC_FROM_MAX`.
pub const DENY_HOST_MAX: u32 = 1 << 21;
pub const DENY_PREFIX_MAX: u32 = 1 << 18;
pub const SVC_MAX: u32 = 256;
pub const SVC_FROM_MAX: u32 = 16384;

/// `CG_SVC_PORTS`: entries of a slot's service array, TCP's ports then UDP's.
pub const SVC_PORTS: u32 = 1 << 17;

/// `CG_SVC_INDEX`: the entry of the service array that holds `key`.
#[must_use]
pub fn svc_index(key: &SvcKey) -> u32 {
    let udp = if key.proto == 17 { 0x1_0000 } else { 0 };
    udp | u32::from(u16::from_be_bytes(key.port_be))
}

/// `CG_POLICY_SLOTS`: policies alternate between these slots.
pub const POLICY_SLOTS: u32 = 2;

/// `struct cg_config`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(C)]
pub struct Config {
    pub generation: u32,
    pub mode: u8,
    pub default_action: u8,
    pub icmp: u8,
    pub flags: u8,
    pub wg_port_be: u16,
    /// Per-source rate limits key an IPv6 source by this many leading bits (0 or 128: the
    /// whole address).
    pub rl_v6_prefix: u8,
    pub _pad: u8,
    pub src_pps: u32,
    pub src_burst: u32,
    pub src_syn_per_s: u32,
    pub syn_per_cpu_per_s: u32,
    pub icmp_echo_pps: u32,
    pub wg_handshake_pps: u32,
    pub wg_handshake_burst: u32,
    /// The size of the slot's IPv4 deny table: 2^`deny4_bits` buckets, one of `DENY4_SIZES`.
    pub deny4_bits: u8,
    /// How many of `deny4_len` the program probes: the prefix lengths the table holds.
    pub deny4_probes: u8,
    pub deny4_len: [u8; DENY4_PROBES],
    pub _pad2: u16,
}

/// `CG_DENY4_PROBES`: the most prefix lengths the IPv4 deny table holds; a deny set with more
/// keeps its prefixes in the `cg_deny4_lpm` trie.
pub const DENY4_PROBES: usize = 4;
/// `CG_DENY4_SEED`: the hash of the IPv4 deny table.
pub const DENY4_SEED: u64 = 0x1319_8a2e_0370_7344;
/// `CG_DENY4_BITS_S`, `_M`, `_L`: the three sizes of the IPv4 deny table (2^bits buckets),
/// each its own outer map (`cg_deny4_s`, `cg_deny4_m`, `cg_deny4_l`).
pub const DENY4_BITS_S: u8 = 10;
pub const DENY4_BITS_M: u8 = 15;
pub const DENY4_BITS_L: u8 = 20;
pub const DENY4_SIZES: [u8; 3] = [DENY4_BITS_S, DENY4_BITS_M, DENY4_BITS_L];

/// `struct cg_deny4_bucket`: four entries of [`deny4_entry`]; 0 is an empty entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(C)]
pub struct Deny4Bucket {
    pub entry: [u64; 4],
}

/// An entry of the IPv4 deny table: `addr` masked to `len` bits, with the length.
#[must_use]
pub fn deny4_entry(addr: [u8; 4], len: u8) -> u64 {
    let len = len.min(32);
    let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
    (u64::from(len + 1) << 32) | u64::from(u32::from_be_bytes(addr) & mask)
}

/// The two places of `entry` in an IPv4 deny table of 2^`bits` buckets, from
/// `cg_deny4_hash`.
#[must_use]
pub fn deny4_places(entry: u64, bits: u8) -> [u32; 2] {
    let bits = u32::from(bits.clamp(1, 31));
    let h = (entry ^ DENY4_SEED).wrapping_mul(RL_K1);
    let h = (h ^ (h >> 32)).wrapping_mul(RL_K2);
    let h = h ^ (h >> 29);
    [
        u32::try_from(h >> (64 - bits)).unwrap_or(0),
        u32::try_from((h >> (64 - 2 * bits)) & ((1u64 << bits) - 1)).unwrap_or(0),
    ]
}

/// `struct cg_stats`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(C)]
pub struct Stats {
    pub packets: u64,
    pub bytes: u64,
}

/// `struct cg_addr6`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
#[repr(C)]
pub struct Addr6 {
    pub addr: [u8; 16],
}

/// `struct cg_lpm4`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
#[repr(C)]
pub struct Lpm4 {
    pub prefixlen: u32,
    pub addr_be: [u8; 4],
}

/// `struct cg_lpm6`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
#[repr(C)]
pub struct Lpm6 {
    pub prefixlen: u32,
    pub addr: [u8; 16],
}

/// `struct cg_rule`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
#[repr(C)]
pub struct Rule {
    pub rule_id: u32,
}

/// `struct cg_svc_key`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
#[repr(C)]
pub struct SvcKey {
    pub proto: u8,
    pub _pad: u8,
    pub port_be: [u8; 2],
}

/// `struct cg_svc`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
#[repr(C)]
pub struct Svc {
    pub svc_id: u32,
    pub flags: u32,
    pub src_pps: u32,
    pub syn_pps: u32,
}

/// `struct cg_svc_lpm4`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
#[repr(C)]
pub struct SvcLpm4 {
    pub prefixlen: u32,
    pub svc_id_be: [u8; 4],
    pub addr_be: [u8; 4],
}

/// `struct cg_svc_lpm6`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
#[repr(C)]
pub struct SvcLpm6 {
    pub prefixlen: u32,
    pub svc_id_be: [u8; 4],
    pub addr: [u8; 16],
}

/// `struct cg_ban`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(C)]
pub struct Ban {
    /// CLOCK_MONOTONIC nanoseconds; 0 means never.
    pub expires_ns: u64,
    pub reason: u32,
    pub _pad: u32,
}

/// `struct cg_rl_key`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
#[repr(C)]
pub struct RlKey {
    pub addr: [u8; 16],
    pub scope: u32,
}

/// `struct cg_rl`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(C)]
pub struct Rl {
    pub tat_ns: u64,
    pub rate: u32,
    pub burst: u32,
}

/// `struct cg_event_budget`: a CPU's bucket of sampled drop events, and the tick (jiffies)
/// in which XDP last found it spent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(C)]
pub struct EventBudget {
    pub bucket: Rl,
    pub spent_jiffies: u64,
}

/// `struct cg_clock`: a CPU's last reading of the clock and the tick (jiffies) it was read
/// in, from which XDP decides most expiries without reading the clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(C)]
pub struct Clock {
    pub jiffies: u64,
    pub ns: u64,
}

/// `struct cg_rl_slot`: a slot of `cg_rl`; all zeros is an empty slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(C)]
pub struct RlSlot {
    pub key: RlKey,
    /// `now >> RL_SEEN_SHIFT` at the key's last packet.
    pub seen: u32,
    pub bucket: Rl,
}

/// `CG_RL_SEEN_SHIFT`, `CG_RL_KEEP_UNITS`: a slot's holder keeps it against new keys until
/// it has been idle this many units of 2^shift ns.
pub const RL_SEEN_SHIFT: u32 = 30;
pub const RL_KEEP_UNITS: u32 = 2;

/// `CG_RL_BITS`, `CG_RL_SEED`, `CG_RL_K1..3`: the hash that places a key in `cg_rl`.
pub const RL_BITS: u32 = 17;
pub const RL_SEED: u64 = 0x243f_6a88_85a3_08d3;
pub const RL_K1: u64 = 0x9e37_79b9_7f4a_7c15;
pub const RL_K2: u64 = 0xc2b2_ae3d_27d4_eb4f;
pub const RL_K3: u64 = 0x1656_67b1_9e37_79f9;

/// The two places of `key` in `cg_rl`, from `cg_rl_hash`. The address is read as
/// two 64-bit words in host order, as the program reads it.
#[must_use]
pub fn rl_indexes(key: &RlKey) -> [u32; 2] {
    let mut hi = [0u8; 8];
    let mut lo = [0u8; 8];
    hi.copy_from_slice(&key.addr[..8]);
    lo.copy_from_slice(&key.addr[8..]);
    let mix = |x: u64| x ^ (x >> 32);
    let h = (u64::from_ne_bytes(hi) ^ RL_SEED).wrapping_mul(RL_K1);
    let h = (mix(h) ^ u64::from_ne_bytes(lo)).wrapping_mul(RL_K2);
    let h = (mix(h) ^ u64::from(key.scope)).wrapping_mul(RL_K3);
    let h = h ^ (h >> 29);
    // The top RL_BITS bits, and the RL_BITS below them: each below RL_MAX.
    [
        u32::try_from(h >> (64 - RL_BITS)).unwrap_or(0),
        u32::try_from((h >> (64 - 2 * RL_BITS)) & u64::from(RL_MAX - 1)).unwrap_or(0),
    ]
}

/// `struct cg_frag_key`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
#[repr(C)]
pub struct FragKey {
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub id: u32,
    pub proto: u8,
    pub family: u8,
    pub _pad: u16,
}

/// `struct cg_frag`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(C)]
pub struct Frag {
    pub expires_ns: u64,
    pub reason: u32,
    pub _pad: u32,
}

/// `struct cg_flow_key`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
#[repr(C)]
pub struct FlowKey {
    pub local: [u8; 16],
    pub remote: [u8; 16],
    pub local_port_be: [u8; 2],
    pub remote_port_be: [u8; 2],
    pub proto: u8,
    pub family: u8,
    pub _pad: u16,
}

/// `struct cg_flow4_key`: an IPv4 TCP connection in `cg_flows4`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
#[repr(C)]
pub struct Flow4Key {
    pub local: [u8; 4],
    pub remote: [u8; 4],
    pub local_port_be: [u8; 2],
    pub remote_port_be: [u8; 2],
}

/// `struct cg_flow4_cached`: an entry of a CPU's `cg_flow4_cache`, a connection XDP found
/// live in `cg_flows4` and the expiry it had then; all zeros holds nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(C)]
pub struct Flow4Cached {
    pub key: Flow4Key,
    pub _pad: u32,
    pub expires_ns: u64,
}

/// `CG_FLOW4_CACHE_BITS`, `CG_FLOW4_CACHE_SEED`: the hash that places a connection in
/// `cg_flow4_cache`.
pub const FLOW4_CACHE_BITS: u32 = 12;
pub const FLOW4_CACHE_SEED: u64 = 0xa409_3822_299f_31d0;
/// `CG_FLOW4_CACHE_MAX`: the entries of each CPU's `cg_flow4_cache`.
pub const FLOW4_CACHE_MAX: u32 = 1 << FLOW4_CACHE_BITS;

/// The entry of `cg_flow4_cache` that would hold `key`: the key's first eight bytes and
/// last four read in host order, as the program reads them.
#[must_use]
pub fn flow4_cache_index(key: &Flow4Key) -> u32 {
    let mut w = [0u8; 8];
    w[..4].copy_from_slice(&key.local);
    w[4..].copy_from_slice(&key.remote);
    let ports = u32::from_ne_bytes([
        key.local_port_be[0],
        key.local_port_be[1],
        key.remote_port_be[0],
        key.remote_port_be[1],
    ]);
    let h = (u64::from_ne_bytes(w) ^ FLOW4_CACHE_SEED).wrapping_mul(RL_K1);
    let h = (h ^ (h >> 32) ^ u64::from(ports)).wrapping_mul(RL_K2);
    u32::try_from(h >> (64 - FLOW4_CACHE_BITS)).unwrap_or(0)
}

/// The protocol number of TCP, which the flow maps split on.
const IPPROTO_TCP: u8 = 6;

/// Where tc egress records a flow and XDP looks its replies up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlowPlace {
    /// `cg_flows4`, IPv4 TCP connections.
    Tcp4(Flow4Key),
    /// `cg_flows`, IPv6 TCP connections.
    Tcp6(FlowKey),
    /// `cg_dgram_flows`, UDP and ICMP echo flows.
    Datagram(FlowKey),
}

impl FlowKey {
    /// The map and key of this flow.
    pub fn place(&self) -> FlowPlace {
        if self.proto != IPPROTO_TCP {
            return FlowPlace::Datagram(*self);
        }
        if self.family != 4 {
            return FlowPlace::Tcp6(*self);
        }
        let mut key = Flow4Key {
            local_port_be: self.local_port_be,
            remote_port_be: self.remote_port_be,
            ..Flow4Key::default()
        };
        key.local.copy_from_slice(&self.local[12..]);
        key.remote.copy_from_slice(&self.remote[12..]);
        FlowPlace::Tcp4(key)
    }
}

impl From<Flow4Key> for FlowKey {
    fn from(key: Flow4Key) -> FlowKey {
        let mapped = |a: [u8; 4]| std::net::Ipv4Addr::from(a).to_ipv6_mapped().octets();
        FlowKey {
            local: mapped(key.local),
            remote: mapped(key.remote),
            local_port_be: key.local_port_be,
            remote_port_be: key.remote_port_be,
            proto: IPPROTO_TCP,
            family: 4,
            _pad: 0,
        }
    }
}

/// `struct cg_flow`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(C)]
pub struct Flow {
    pub expires_ns: u64,
}

/// `struct cg_event`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(C)]
pub struct Event {
    pub ts_ns: u64,
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub sport_be: [u8; 2],
    pub dport_be: [u8; 2],
    pub proto: u8,
    pub family: u8,
    pub action: u8,
    pub reason: u8,
    pub ifslot: u32,
    pub _pad: u32,
}

/// `enum cg_rl_kind`.
pub const RL_SRC: u32 = 1;
pub const RL_SVC: u32 = 2;
pub const RL_SYN: u32 = 3;
pub const RL_SVC_SYN: u32 = 4;
pub const RL_ICMP: u32 = 5;
pub const RL_WG: u32 = 6;

/// `CG_RL_SCOPE(kind, svc_id)`.
pub fn rl_scope(kind: u32, svc_id: u32) -> u32 {
    (kind << 24) | (svc_id & 0x00ff_ffff)
}

/// `CG_BAN_*`: bits of `cg_ban_flags[0]`, which ban maps may hold entries.
pub const BAN_HOSTS4: u32 = 1 << 0;
pub const BAN_HOSTS6: u32 = 1 << 1;
pub const BAN_PREFIXES4: u32 = 1 << 2;
pub const BAN_PREFIXES6: u32 = 1 << 3;

/// Capacities and timeouts of the state maps.
pub const BAN_HOST_MAX: u32 = 1 << 18;
pub const BAN_PREFIX_MAX: u32 = 1 << 14;
pub const RL_MAX: u32 = 1 << RL_BITS;
pub const FRAG_MAX: u32 = 1 << 14;
/// `CG_FLOW_MAX`: the capacity of `cg_flows4` and of `cg_flows`, each.
pub const FLOW_MAX: u32 = 1 << 18;
/// `CG_DGRAM_FLOW_MAX`: the capacity of `cg_dgram_flows` (UDP and ICMP echo), apart from the
/// TCP connections of `cg_flows4` and `cg_flows`.
pub const DGRAM_FLOW_MAX: u32 = 1 << 16;
pub const EVENTS_BYTES: u32 = 1 << 20;
pub const EVENTS_PER_CPU_PER_S: u32 = 200;
/// `CG_RL_NEW_PER_CPU_PER_S`: new rate-limit buckets a CPU may make per second (a burst of as
/// many); a source without a bucket beyond it is dropped as `rl_table_busy`.
pub const RL_NEW_PER_CPU_PER_S: u32 = RL_MAX / 64;
pub const FLOW_TCP_TIMEOUT_S: u64 = 7200;
pub const FLOW_UDP_TIMEOUT_S: u64 = 120;
pub const FLOW_ICMP_TIMEOUT_S: u64 = 30;
pub const FRAG_TIMEOUT_S: u64 = 10;

const _: () = assert!(std::mem::size_of::<Config>() == 48);
const _: () = assert!(std::mem::size_of::<Deny4Bucket>() == 32);
const _: () = assert!(std::mem::size_of::<Clock>() == 16);
const _: () = assert!(std::mem::size_of::<Ban>() == 16);
const _: () = assert!(std::mem::size_of::<RlKey>() == 20);
const _: () = assert!(std::mem::size_of::<Rl>() == 16);
const _: () = assert!(std::mem::size_of::<RlSlot>() == 40);
const _: () = assert!(std::mem::size_of::<EventBudget>() == 24);
const _: () = assert!(std::mem::size_of::<FragKey>() == 40);
const _: () = assert!(std::mem::size_of::<Frag>() == 16);
const _: () = assert!(std::mem::size_of::<FlowKey>() == 40);
const _: () = assert!(std::mem::size_of::<Flow4Key>() == 12);
const _: () = assert!(std::mem::size_of::<Flow>() == 8);
const _: () = assert!(std::mem::size_of::<Flow4Cached>() == 24);
const _: () = assert!(std::mem::size_of::<Event>() == 56);
const _: () = assert!(std::mem::size_of::<Stats>() == 16);
const _: () = assert!(std::mem::size_of::<Addr6>() == 16);
const _: () = assert!(std::mem::size_of::<Lpm4>() == 8);
const _: () = assert!(std::mem::size_of::<Lpm6>() == 20);
const _: () = assert!(std::mem::size_of::<Rule>() == 4);
const _: () = assert!(std::mem::size_of::<SvcKey>() == 4);
const _: () = assert!(std::mem::size_of::<Svc>() == 16);
const _: () = assert!(std::mem::size_of::<SvcLpm4>() == 12);
const _: () = assert!(std::mem::size_of::<SvcLpm6>() == 24);

/// `aya::Pod` for the structs the datapath stores in maps, only when the `aya` feature is on
/// (the datapath crate turns it on; the core builds without aya).
#[cfg(feature = "aya")]
#[allow(unsafe_code)]
mod pod {
    use super::*;

    // SAFETY: each type is #[repr(C)], made only of integers and byte arrays with
    // no padding (the sizes above equal the sums of the fields), so every bit
    // pattern is a valid value, as aya's `Pod` requires.
    unsafe impl aya::Pod for Config {}
    // SAFETY: see above.
    unsafe impl aya::Pod for Stats {}
    // SAFETY: see above.
    unsafe impl aya::Pod for Addr6 {}
    // SAFETY: see above.
    unsafe impl aya::Pod for Lpm4 {}
    // SAFETY: see above.
    unsafe impl aya::Pod for Lpm6 {}
    // SAFETY: see above.
    unsafe impl aya::Pod for Rule {}
    // SAFETY: see above.
    unsafe impl aya::Pod for SvcKey {}
    // SAFETY: see above.
    unsafe impl aya::Pod for Svc {}
    // SAFETY: see above.
    unsafe impl aya::Pod for SvcLpm4 {}
    // SAFETY: see above.
    unsafe impl aya::Pod for SvcLpm6 {}
    // SAFETY: see above.
    unsafe impl aya::Pod for Ban {}
    // SAFETY: see above.
    unsafe impl aya::Pod for RlKey {}
    // SAFETY: see above.
    unsafe impl aya::Pod for Rl {}
    // SAFETY: see above.
    unsafe impl aya::Pod for RlSlot {}
    // SAFETY: see above.
    unsafe impl aya::Pod for EventBudget {}
    // SAFETY: see above.
    unsafe impl aya::Pod for Deny4Bucket {}
    // SAFETY: see above.
    unsafe impl aya::Pod for Clock {}
    // SAFETY: see above.
    unsafe impl aya::Pod for FragKey {}
    // SAFETY: see above.
    unsafe impl aya::Pod for Frag {}
    // SAFETY: see above.
    unsafe impl aya::Pod for FlowKey {}
    // SAFETY: see above.
    unsafe impl aya::Pod for Flow4Key {}
    // SAFETY: see above.
    unsafe impl aya::Pod for Flow {}
    // SAFETY: see above.
    unsafe impl aya::Pod for Flow4Cached {}
    // SAFETY: see above.
    unsafe impl aya::Pod for Event {}
}

/// The header itself, so that tests can check the mirror against it.
pub const HEADER: &str = include_str!("../../ebpf/include/crmguard_abi.h");

// `unsafe`: the byte-layout tests look at the structs' bytes with `transmute`.
#[cfg(test)]
#[allow(unsafe_code)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_connections_take_the_short_key_and_come_back_whole() {
        let v4 = |a: [u8; 4]| std::net::Ipv4Addr::from(a).to_ipv6_mapped().octets();
        let key = FlowKey {
            local: v4([192, 0, 2, 1]),
            remote: v4([198, 51, 100, 7]),
            local_port_be: 40_000u16.to_be_bytes(),
            remote_port_be: 443u16.to_be_bytes(),
            proto: IPPROTO_TCP,
            family: 4,
            _pad: 0,
        };
        let FlowPlace::Tcp4(short) = key.place() else {
            panic!("an IPv4 connection goes to cg_flows4: {:?}", key.place());
        };
        assert_eq!(short.local, [192, 0, 2, 1]);
        assert_eq!(short.remote, [198, 51, 100, 7]);
        assert_eq!(FlowKey::from(short), key);
        let v6 = FlowKey {
            local: [0x20; 16],
            family: 6,
            ..key
        };
        assert_eq!(v6.place(), FlowPlace::Tcp6(v6));
        let udp = FlowKey { proto: 17, ..key };
        assert_eq!(udp.place(), FlowPlace::Datagram(udp));
    }

    /// Reads `#define NAME value` or `NAME = value,` from the header.
    fn header_value(name: &str) -> u64 {
        for line in HEADER.lines() {
            let line = line.trim();
            let value = if let Some(rest) = line.strip_prefix("#define ") {
                rest.strip_prefix(name)
                    .filter(|r| r.starts_with(' '))
                    .map(|r| r.split("/*").next().unwrap_or("").trim())
            } else {
                line.strip_prefix(name)
                    .and_then(|r| r.trim_start().strip_prefix('='))
                    .map(|r| r.split(',').next().unwrap_or("").trim())
            };
            let Some(value) = value else { continue };
            if let Ok(v) = value.parse::<u64>() {
                return v;
            }
            if let Some(shift) = value
                .strip_prefix("(1U << ")
                .and_then(|v| v.strip_suffix(')'))
            {
                return 1u64 << shift.parse::<u64>().expect("shift");
            }
        }
        panic!("{name} not found in crmguard_abi.h");
    }

    #[test]
    fn sizes_match_header() {
        let check = |name: &str, size: usize| {
            assert_eq!(header_value(name), size as u64, "{name}");
        };
        check("CG_SIZEOF_CONFIG", std::mem::size_of::<Config>());
        check("CG_SIZEOF_STATS", std::mem::size_of::<Stats>());
        check("CG_SIZEOF_ADDR6", std::mem::size_of::<Addr6>());
        check("CG_SIZEOF_LPM4", std::mem::size_of::<Lpm4>());
        check("CG_SIZEOF_LPM6", std::mem::size_of::<Lpm6>());
        check("CG_SIZEOF_RULE", std::mem::size_of::<Rule>());
        check("CG_SIZEOF_SVC_KEY", std::mem::size_of::<SvcKey>());
        check("CG_SIZEOF_SVC", std::mem::size_of::<Svc>());
        check("CG_SIZEOF_SVC_LPM4", std::mem::size_of::<SvcLpm4>());
        check("CG_SIZEOF_SVC_LPM6", std::mem::size_of::<SvcLpm6>());
        check("CG_SIZEOF_BAN", std::mem::size_of::<Ban>());
        check("CG_SIZEOF_RL_KEY", std::mem::size_of::<RlKey>());
        check("CG_SIZEOF_RL_SLOT", std::mem::size_of::<RlSlot>());
        check("CG_SIZEOF_EVENT_BUDGET", std::mem::size_of::<EventBudget>());
        check("CG_SIZEOF_DENY4_BUCKET", std::mem::size_of::<Deny4Bucket>());
        check("CG_SIZEOF_CLOCK", std::mem::size_of::<Clock>());
        check("CG_SIZEOF_RL", std::mem::size_of::<Rl>());
        check("CG_SIZEOF_FRAG_KEY", std::mem::size_of::<FragKey>());
        check("CG_SIZEOF_FRAG", std::mem::size_of::<Frag>());
        check("CG_SIZEOF_FLOW_KEY", std::mem::size_of::<FlowKey>());
        check("CG_SIZEOF_FLOW4_KEY", std::mem::size_of::<Flow4Key>());
        check("CG_SIZEOF_FLOW", std::mem::size_of::<Flow>());
        check("CG_SIZEOF_FLOW4_CACHED", std::mem::size_of::<Flow4Cached>());
        check("CG_SIZEOF_EVENT", std::mem::size_of::<Event>());
    }

    /// A `#define NAME 0x...ULL` of the header.
    fn header_hex(name: &str) -> u64 {
        HEADER
            .lines()
            .find_map(|line| {
                line.trim()
                    .strip_prefix("#define ")?
                    .strip_prefix(name)?
                    .trim()
                    .strip_prefix("0x")?
                    .strip_suffix("ULL")
                    .and_then(|hex| u64::from_str_radix(hex, 16).ok())
            })
            .unwrap_or_else(|| panic!("{name} not found in crmguard_abi.h"))
    }

    #[test]
    fn rate_limit_slots_spread_sources_and_scopes() {
        let key = |last: u8, scope: u32| {
            let mut addr = [0u8; 16];
            addr[10] = 0xff;
            addr[11] = 0xff;
            addr[12] = 10;
            addr[15] = last;
            RlKey { addr, scope }
        };
        let mut slots = std::collections::BTreeSet::new();
        for last in 0..=255u8 {
            for scope in [
                rl_scope(RL_SRC, 0),
                rl_scope(RL_SVC, 1),
                rl_scope(RL_SVC, 2),
            ] {
                let [first, second] = rl_indexes(&key(last, scope));
                assert!(first < RL_MAX && second < RL_MAX);
                slots.insert(first);
                slots.insert(second);
            }
        }
        // 1,536 places of 768 keys in 131,072 slots: a few may share one, not more.
        assert!(slots.len() >= 1_500, "{} distinct slots", slots.len());
        assert_eq!(rl_indexes(&key(1, 1)), rl_indexes(&key(1, 1)));
    }

    #[test]
    fn connections_spread_over_the_cache() {
        let key = |remote: u8, port: u16| Flow4Key {
            local: [10, 1, 0, 1],
            remote: [203, 0, 113, remote],
            local_port_be: port.to_be_bytes(),
            remote_port_be: 443u16.to_be_bytes(),
        };
        let mut entries = std::collections::BTreeSet::new();
        for remote in 0..8u8 {
            for port in 40_000..40_256u16 {
                let index = flow4_cache_index(&key(remote, port));
                assert!(index < FLOW4_CACHE_MAX);
                entries.insert(index);
            }
        }
        // 2,048 connections in 4,096 entries: about 1,600 distinct if the hash spreads them.
        assert!(entries.len() >= 1_500, "{} distinct entries", entries.len());
    }

    #[test]
    fn service_ports_index_tcp_then_udp() {
        let key = |proto, port: u16| SvcKey {
            proto,
            _pad: 0,
            port_be: port.to_be_bytes(),
        };
        assert_eq!(svc_index(&key(6, 22)), 22);
        assert_eq!(svc_index(&key(6, 65535)), 65535);
        assert_eq!(svc_index(&key(17, 0)), 0x1_0000);
        assert_eq!(svc_index(&key(17, 51820)), 0x1_0000 + 51820);
        assert!(svc_index(&key(17, 65535)) < SVC_PORTS);
    }

    #[test]
    fn constants_match_header() {
        assert_eq!(header_value("CG_ABI_VERSION"), u64::from(ABI_VERSION));
        assert_eq!(header_value("CG_ACT_COUNT"), u64::from(ACTION_COUNT));
        assert_eq!(header_value("CG_REASON_SLOTS"), u64::from(REASON_SLOTS));
        assert_eq!(header_value("CG_MAX_IFSLOTS"), u64::from(MAX_IFSLOTS));
        assert_eq!(header_value("CG_DENY_HOST_MAX"), u64::from(DENY_HOST_MAX));
        assert_eq!(
            header_value("CG_DENY_PREFIX_MAX"),
            u64::from(DENY_PREFIX_MAX)
        );
        assert_eq!(header_value("CG_SVC_MAX"), u64::from(SVC_MAX));
        assert_eq!(header_value("CG_SVC_FROM_MAX"), u64::from(SVC_FROM_MAX));
        assert_eq!(header_value("CG_SVC_PORTS"), u64::from(SVC_PORTS));
        assert_eq!(header_value("CG_SVC_FROM_ANY"), u64::from(SVC_FROM_ANY));
        assert_eq!(
            header_value("CG_CFG_ALLOW_ESTABLISHED"),
            u64::from(CFG_ALLOW_ESTABLISHED)
        );
        assert_eq!(header_value("CG_MODE_MONITOR"), u64::from(MODE_MONITOR));
        assert_eq!(header_value("CG_ICMP_ALL"), u64::from(ICMP_ALL));
        assert_eq!(header_value("CG_ICMP_NONE"), u64::from(ICMP_NONE));
        assert_eq!(header_value("CG_POLICY_SLOTS"), u64::from(POLICY_SLOTS));
        assert_eq!(header_value("CG_BAN_HOSTS4"), u64::from(BAN_HOSTS4));
        assert_eq!(header_value("CG_BAN_HOSTS6"), u64::from(BAN_HOSTS6));
        assert_eq!(header_value("CG_BAN_PREFIXES4"), u64::from(BAN_PREFIXES4));
        assert_eq!(header_value("CG_BAN_PREFIXES6"), u64::from(BAN_PREFIXES6));
        assert_eq!(header_value("CG_BAN_HOST_MAX"), u64::from(BAN_HOST_MAX));
        assert_eq!(header_value("CG_BAN_PREFIX_MAX"), u64::from(BAN_PREFIX_MAX));
        assert_eq!(header_value("CG_RL_MAX"), u64::from(RL_MAX));
        assert_eq!(header_value("CG_RL_BITS"), u64::from(RL_BITS));
        assert_eq!(header_value("CG_RL_SEEN_SHIFT"), u64::from(RL_SEEN_SHIFT));
        assert_eq!(header_value("CG_RL_KEEP_UNITS"), u64::from(RL_KEEP_UNITS));
        for (name, value) in [
            ("CG_RL_SEED", RL_SEED),
            ("CG_RL_K1", RL_K1),
            ("CG_RL_K2", RL_K2),
            ("CG_RL_K3", RL_K3),
            ("CG_DENY4_SEED", DENY4_SEED),
            ("CG_FLOW4_CACHE_SEED", FLOW4_CACHE_SEED),
        ] {
            assert_eq!(header_hex(name), value, "{name}");
        }
        assert_eq!(header_value("CG_DENY4_PROBES"), DENY4_PROBES as u64);
        assert_eq!(header_value("CG_DENY4_BITS_S"), u64::from(DENY4_BITS_S));
        assert_eq!(header_value("CG_DENY4_BITS_M"), u64::from(DENY4_BITS_M));
        assert_eq!(header_value("CG_DENY4_BITS_L"), u64::from(DENY4_BITS_L));
        assert_eq!(header_value("CG_FRAG_MAX"), u64::from(FRAG_MAX));
        assert_eq!(header_value("CG_FLOW_MAX"), u64::from(FLOW_MAX));
        assert_eq!(header_value("CG_DGRAM_FLOW_MAX"), u64::from(DGRAM_FLOW_MAX));
        assert_eq!(
            header_value("CG_FLOW4_CACHE_MAX"),
            u64::from(FLOW4_CACHE_MAX)
        );
        assert_eq!(
            header_value("CG_FLOW4_CACHE_BITS"),
            u64::from(FLOW4_CACHE_BITS)
        );
        assert_eq!(
            header_value("CG_RL_NEW_PER_CPU_PER_S"),
            u64::from(RL_NEW_PER_CPU_PER_S)
        );
        assert_eq!(header_value("CG_EVENTS_BYTES"), u64::from(EVENTS_BYTES));
        assert_eq!(
            header_value("CG_EVENTS_PER_CPU_PER_S"),
            u64::from(EVENTS_PER_CPU_PER_S)
        );
        assert_eq!(header_value("CG_FLOW_TCP_TIMEOUT_S"), FLOW_TCP_TIMEOUT_S);
        assert_eq!(header_value("CG_FLOW_UDP_TIMEOUT_S"), FLOW_UDP_TIMEOUT_S);
        assert_eq!(header_value("CG_FLOW_ICMP_TIMEOUT_S"), FLOW_ICMP_TIMEOUT_S);
        assert_eq!(header_value("CG_FRAG_TIMEOUT_S"), FRAG_TIMEOUT_S);
        for (name, kind) in [
            ("CG_RL_SRC", RL_SRC),
            ("CG_RL_SVC", RL_SVC),
            ("CG_RL_SYN", RL_SYN),
            ("CG_RL_SVC_SYN", RL_SVC_SYN),
            ("CG_RL_ICMP", RL_ICMP),
            ("CG_RL_WG", RL_WG),
        ] {
            assert_eq!(header_value(name), u64::from(kind), "{name}");
        }
    }

    #[test]
    fn deny_prefix_flags_match_header() {
        assert_eq!(
            header_value("CG_CFG_DENY4_PREFIXES"),
            u64::from(CFG_DENY4_PREFIXES)
        );
        assert_eq!(
            header_value("CG_CFG_DENY6_PREFIXES"),
            u64::from(CFG_DENY6_PREFIXES)
        );
    }

    /// The `NAME = value` entries of `enum NAME { ... }` in the header whose
    /// names start with `prefix`, as (the name without the prefix, value).
    fn header_enum(enum_name: &str, prefix: &str) -> Vec<(String, u64)> {
        let open = format!("enum {enum_name} {{");
        let body = HEADER
            .lines()
            .skip_while(|l| l.trim() != open)
            .skip(1)
            .take_while(|l| l.trim() != "};");
        body.filter_map(|line| {
            let (name, rest) = line.trim().strip_prefix(prefix)?.split_once('=')?;
            let value = rest.split(',').next()?.trim().parse().ok()?;
            Some((name.trim().to_owned(), value))
        })
        .collect()
    }

    #[test]
    fn every_reason_of_the_header_has_a_variant_of_that_number_and_name() {
        let in_header: Vec<(String, u64)> = header_enum("cg_reason", "CG_R_")
            .into_iter()
            .filter(|(name, _)| name != "NONE")
            .collect();
        assert!(!in_header.is_empty(), "no CG_R_ entries in enum cg_reason");
        for (name, value) in &in_header {
            let reason = u32::try_from(*value)
                .ok()
                .and_then(Reason::from_u32)
                .unwrap_or_else(|| panic!("CG_R_{name} = {value} has no Reason variant"));
            assert_eq!(reason.name(), name.to_lowercase(), "CG_R_{name} = {value}");
        }
        let mirrored: Vec<(String, u64)> = Reason::ALL
            .iter()
            .map(|r| (r.name().to_uppercase(), u64::from(*r as u8)))
            .collect();
        assert_eq!(mirrored, in_header, "Reason::ALL against enum cg_reason");
        assert_eq!(header_value("CG_R_NON_IP"), u64::from(Reason::NonIp as u8));
        assert!(Reason::ALL
            .iter()
            .all(|r| u32::from(*r as u8) < REASON_SLOTS));
    }

    #[test]
    fn every_action_of_the_header_has_a_variant_of_that_number_and_name() {
        let in_header: Vec<(String, u64)> = header_enum("cg_action", "CG_ACT_")
            .into_iter()
            .filter(|(name, _)| name != "COUNT")
            .collect();
        let mirrored: Vec<(String, u64)> = Action::ALL
            .iter()
            .map(|a| (a.name().to_uppercase(), u64::from(*a as u8)))
            .collect();
        assert_eq!(mirrored, in_header, "Action::ALL against enum cg_action");
    }

    #[test]
    fn stats_index_matches_macro() {
        // CG_STATS_INDEX(slot, action, reason) from the header.
        assert_eq!(stats_index(0, Action::Pass, Reason::NonIp), 16);
        assert_eq!(stats_index(0, Action::Drop, Reason::Malformed), 33);
        assert_eq!(stats_index(1, Action::Pass, Reason::Malformed), 97);
        assert_eq!(
            stats_index(MAX_IFSLOTS - 1, Action::WouldDrop, Reason::Fragment),
            STATS_ENTRIES - REASON_SLOTS + 22
        );
    }

    #[test]
    fn layout_is_pinned() {
        let cfg = Config {
            generation: 0x0102_0304,
            mode: MODE_MONITOR,
            default_action: Action::Drop as u8,
            icmp: ICMP_ALL,
            flags: CFG_ALLOW_ESTABLISHED,
            wg_port_be: 51820u16.to_be(),
            src_pps: 7,
            deny4_bits: 9,
            deny4_probes: 2,
            deny4_len: [24, 16, 0, 0],
            ..Config::default()
        };
        // SAFETY: Config is Pod (see the impl above) and 48 bytes long.
        let bytes: [u8; 48] = unsafe { std::mem::transmute(cfg) };
        assert_eq!(&bytes[40..46], &[9, 2, 24, 16, 0, 0]);
        assert_eq!(&bytes[12..16], &7u32.to_ne_bytes());
        let gen = 0x0102_0304u32.to_ne_bytes();
        assert_eq!(&bytes[0..4], &gen);
        assert_eq!(&bytes[4..8], &[1, 1, 1, 1]);
        assert_eq!(&bytes[8..10], &51820u16.to_be_bytes());

        let key = SvcLpm4 {
            prefixlen: 56,
            svc_id_be: 7u32.to_be_bytes(),
            addr_be: [192, 0, 2, 0],
        };
        // SAFETY: SvcLpm4 is Pod and 12 bytes long.
        let bytes: [u8; 12] = unsafe { std::mem::transmute(key) };
        assert_eq!(&bytes[4..12], &[0, 0, 0, 7, 192, 0, 2, 0]);
    }
}
