//! Differential test: the real XDP program against the agent's reference
//! model (`crmguard_core::model`), on a long stream of generated frames.
//!
//! The program is loaded against its own pinned maps (as in golden.rs), a
//! policy is applied, bans and flows of this host are written into the
//! kernel maps and into the model alike, and then every frame runs through
//! BPF_PROG_TEST_RUN and through `model::decide`. The frames come from a
//! seeded xorshift generator: valid frames of every kind, and mutations of
//! them (truncation at every layer, byte flips, bogus lengths, VLAN stacks of
//! 0 to 3 tags, IPv4 options, IPv4 and IPv6 fragments whose identifications
//! repeat so that the fragment cache is hit, extension chains too long or
//! unknown, WireGuard-shaped and near-miss payloads, every ICMP type).
//!
//! Each frame is compared exactly, in both its XDP return and its reason:
//! after the run the test asks the model for its (action, reason) pair and
//! reads that one counter of `cg_stats` (one map lookup per frame). Every
//! packet is counted exactly once and nothing else runs this program, so the
//! predicted counter moving by one packet and the frame's bytes proves the
//! kernel chose that reason. Only when it did not move are all counters read,
//! to name the reason the kernel chose. This keeps per-frame exactness at
//! about the cost of two syscalls per frame.
//!
//! State that the program writes is mirrored and checked: first-fragment
//! verdicts (`cg_frags`) and rate-limit buckets (`cg_rl`, `cg_syn_budget`,
//! `cg_rl_budget`)
//! must equal the model's, entry by entry and to the nanosecond, at the end
//! of every batch of frames; then both sides are cleared. Every eighth batch
//! starts with the budget of new buckets spent, so that new sources meet
//! `rl_table_busy`. The thread is
//! pinned to one CPU, because the SYN budget is per CPU.
//!
//! Time is shared exactly. The program reads CLOCK_MONOTONIC coarsely
//! (`bpf_ktime_get_coarse_ns`); the test reads CLOCK_MONOTONIC_COARSE just
//! before and just after the run, and the program's reading lies between.
//! When both readings are equal, that is the program's time. When the clock
//! ticked in between (a frame in a thousand or so), the model decides the
//! frame at each candidate time, both readings and the times the program's
//! writes reveal, and keeps the decision whose verdict and state the kernel
//! shows. Only when the thread was held off for two ticks or more inside
//! that window, and no candidate fits, is the frame inconclusive: it is
//! printed and counted, and the model takes the kernel's state. Bans and
//! flows are either far in the future or long expired.
//!
//! Policy variants (enforce or monitor, default drop or allow, each ICMP
//! setting, replies allowed or not, rate limits on, off or per service only)
//! take turns every 16 batches or more; 100,000 frames see each of them.
//!
//! `CRMGUARD_DIFF_SEED` sets the seed (else one is drawn from the clock and
//! printed), `CRMGUARD_DIFF_FRAMES` the number of frames (default 100,000).
//! `cargo xtask fuzz-xdp` runs the same test with many more frames.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, ensure, Context, Result};
use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{Array, HashMap, Map, MapData, MapError, PerCpuArray, PerCpuValues};
use aya::programs::{TestRun, TestRunOptions};
use aya::Ebpf;
use crmguard_core::abi::{self, Action, Reason};
use crmguard_core::model::{self, ModelState};
use crmguard_core::policy::{self, CompiledPolicy};
use crmguard_datapath::{self, PolicyMaps};
use crmguard_lab::cpu::Pinned;
use crmguard_lab::frames::*;
use crmguard_lab::privileged;
use nix::time::{clock_getres, clock_gettime, ClockId};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;

const SEC: u64 = 1_000_000_000;
const DEFAULT_FRAMES: u64 = 100_000;
/// Frames between two comparisons of the state the program writes.
const BATCH_FRAMES: u64 = 1024;
/// Batches per policy variant, at least: applying a policy takes about
/// 0.2 s here (the kernel allocates and zeroes the 32 MiB bucket array of
/// each deny hash, among other things), so long runs change policy less
/// often.
const PHASE_BATCHES: u64 = 16;

/// The policy of the test. The rates are low enough for the frames of a
/// batch to exceed them and high enough to refill within one; the variants
/// turn them off. Prefixes that do not end on a byte boundary test the
/// tries.
const POLICY: &str = r#"
[firewall]
default = "drop"
icmp = "essential"
icmp_echo_per_source_pps = 3

[firewall.limits]
per_source_pps = 20
per_source_burst = 8
syn_per_source_per_s = 5
global_syn_per_s = 20

[firewall.deny]
sources = [
    "203.0.113.66", "198.51.100.0/24", "100.72.0.0/13",
    "2001:db8:bad::66", "2001:db8:dead::/48", "2001:db8:e00::/39",
]

[[firewall.service]]
name = "ssh"
proto = "tcp"
ports = [22]
from = ["192.0.2.0/24", "2001:db8:a::/48"]

[[firewall.service]]
name = "web"
proto = "tcp"
ports = [443, 8443]
new_conn_per_source_per_s = 2
per_source_pps = 10

[[firewall.service]]
name = "db"
proto = "tcp"
ports = [5432]
from = ["192.0.2.128/25", "2001:db8:a:8000::/49"]

[[firewall.service]]
name = "dns"
proto = "udp"
ports = [53]
from = ["192.0.2.0/24", "2001:db8:a::/48"]

[[firewall.service]]
name = "ntp"
proto = "udp"
ports = [123]

[vpn]
listen_port = 51820
address = "10.77.0.1/24"
handshake_per_source_pps = 2
handshake_burst = 2
"#;

const WG_PORT: u16 = 51820;

// ---- the world: who is who -----------------------------------------------------

const ADMINS4: [Ipv4Addr; 3] = [
    Ipv4Addr::new(192, 0, 2, 5),
    Ipv4Addr::new(192, 0, 2, 200),
    Ipv4Addr::new(192, 0, 2, 9),
];
const OTHERS4: [Ipv4Addr; 16] = [
    Ipv4Addr::new(203, 0, 113, 5),
    Ipv4Addr::new(203, 0, 113, 9),
    Ipv4Addr::new(203, 0, 113, 66),
    Ipv4Addr::new(198, 51, 100, 7),
    Ipv4Addr::new(100, 79, 255, 254),
    Ipv4Addr::new(100, 80, 0, 1),
    Ipv4Addr::new(100, 64, 0, 1),
    Ipv4Addr::new(100, 64, 0, 2),
    Ipv4Addr::new(100, 64, 0, 3),
    Ipv4Addr::new(100, 65, 1, 1),
    Ipv4Addr::new(100, 66, 0, 9),
    Ipv4Addr::new(100, 67, 8, 1),
    Ipv4Addr::new(100, 67, 9, 1),
    Ipv4Addr::new(93, 184, 216, 34),
    Ipv4Addr::new(9, 9, 9, 9),
    Ipv4Addr::new(1, 1, 1, 1),
];
const DSTS4: [Ipv4Addr; 2] = [Ipv4Addr::new(192, 0, 2, 1), Ipv4Addr::new(10, 0, 0, 1)];

const ADMINS6: [Ipv6Addr; 2] = [
    Ipv6Addr::new(0x2001, 0xdb8, 0xa, 0, 0, 0, 0, 5),
    Ipv6Addr::new(0x2001, 0xdb8, 0xa, 0x8000, 0, 0, 0, 1),
];
const OTHERS6: [Ipv6Addr; 14] = [
    Ipv6Addr::new(0x2001, 0xdb8, 0xb, 0, 0, 0, 0, 5),
    Ipv6Addr::new(0x2001, 0xdb8, 0xbad, 0, 0, 0, 0, 0x66),
    Ipv6Addr::new(0x2001, 0xdb8, 0xdead, 1, 0, 0, 0, 1),
    Ipv6Addr::new(0x2001, 0xdb8, 0xf12, 0, 0, 0, 0, 1),
    Ipv6Addr::new(0x2001, 0xdb8, 0x1000, 0, 0, 0, 0, 1),
    Ipv6Addr::new(0x2001, 0xdb8, 0xba, 0, 0, 0, 0, 1),
    Ipv6Addr::new(0x2001, 0xdb8, 0xba, 0, 0, 0, 0, 2),
    Ipv6Addr::new(0x2001, 0xdb8, 0xba, 0, 0, 0, 0, 3),
    Ipv6Addr::new(0x2001, 0xdb8, 0xbb, 1, 0, 0, 0, 1),
    Ipv6Addr::new(0x2001, 0xdb8, 0xbc, 0, 0, 0, 0, 1),
    Ipv6Addr::new(0x2001, 0xdb8, 0xbd, 1, 0, 0, 0, 1),
    Ipv6Addr::new(0x2001, 0xdb8, 0xbd, 2, 0, 0, 0, 1),
    Ipv6Addr::new(0x2606, 0x2800, 0, 0, 0, 0, 0, 1),
    Ipv6Addr::new(0x2620, 0xfe, 0, 0, 0, 0, 0, 0xfe),
];
const DSTS6: [Ipv6Addr; 2] = [
    Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 1),
    Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 2),
];

/// Fragment identifications: small numbers that first and later fragments
/// share, and the ones of the verdicts written before the run.
const FRAG_IDS: [u32; 8] = [1, 2, 3, 4, 900, 901, 902, 903];

fn mapped(a: Ipv4Addr) -> [u8; 16] {
    a.to_ipv6_mapped().octets()
}

fn ban(expires_ns: u64) -> abi::Ban {
    abi::Ban {
        expires_ns,
        reason: 1,
        _pad: 0,
    }
}

/// Bans in force (far future or forever), long expired, and an expired
/// prefix inside one in force.
fn bans(far: u64) -> model::Bans {
    let mut bans = model::Bans::default();
    bans.hosts4.insert([100, 64, 0, 1], ban(far));
    bans.hosts4.insert([100, 64, 0, 2], ban(1));
    bans.hosts4.insert([100, 64, 0, 3], ban(0));
    let lpm4 = |addr_be: [u8; 4], prefixlen| abi::Lpm4 { prefixlen, addr_be };
    bans.prefixes4.insert(lpm4([100, 65, 0, 0], 16), ban(far));
    bans.prefixes4.insert(lpm4([100, 66, 0, 0], 16), ban(1));
    bans.prefixes4.insert(lpm4([100, 67, 0, 0], 16), ban(0));
    bans.prefixes4.insert(lpm4([100, 67, 8, 0], 24), ban(1));
    let six = |s: u16, t: u16, last: u16| Ipv6Addr::new(0x2001, 0xdb8, s, t, 0, 0, 0, last);
    bans.hosts6.insert(six(0xba, 0, 1).octets(), ban(far));
    bans.hosts6.insert(six(0xba, 0, 2).octets(), ban(1));
    bans.hosts6.insert(six(0xba, 0, 3).octets(), ban(0));
    let lpm6 = |a: Ipv6Addr, prefixlen| abi::Lpm6 {
        prefixlen,
        addr: a.octets(),
    };
    bans.prefixes6.insert(lpm6(six(0xbb, 0, 0), 48), ban(far));
    bans.prefixes6.insert(lpm6(six(0xbc, 0, 0), 48), ban(1));
    bans.prefixes6.insert(lpm6(six(0xbd, 0, 0), 48), ban(far));
    bans.prefixes6.insert(lpm6(six(0xbd, 1, 0), 64), ban(1));
    bans
}

/// A connection this host opened, as tc egress records it.
#[derive(Clone, Copy)]
struct Flow {
    local: [u8; 16],
    remote: [u8; 16],
    family: u8,
    proto: u8,
    local_port: u16,
    remote_port: u16,
    live: bool,
}

fn flows() -> Vec<Flow> {
    let v4 = |local: usize, remote: usize, proto, local_port, remote_port, live| Flow {
        local: mapped(DSTS4[local]),
        remote: mapped(OTHERS4[remote]),
        family: 4,
        proto,
        local_port,
        remote_port,
        live,
    };
    let v6 = |local: usize, remote: usize, proto, local_port, remote_port, live| Flow {
        local: DSTS6[local].octets(),
        remote: OTHERS6[remote].octets(),
        family: 6,
        proto,
        local_port,
        remote_port,
        live,
    };
    vec![
        v4(0, 13, 6, 50000, 443, true),
        v4(0, 14, 17, 40053, 53, true),
        v4(1, 15, 17, 40054, 53, false),
        v4(0, 13, 1, 0x0777, 0, true),
        v4(0, 15, 6, 50001, 22, true),
        v4(0, 14, 17, 53, 53, true),
        v6(0, 12, 6, 50000, 443, true),
        v6(0, 13, 17, 40053, 53, true),
        v6(1, 12, 58, 0x0888, 0, true),
        v6(0, 12, 6, 50002, 443, false),
    ]
}

impl Flow {
    fn key(&self) -> abi::FlowKey {
        abi::FlowKey {
            local: self.local,
            remote: self.remote,
            local_port_be: self.local_port.to_be_bytes(),
            remote_port_be: self.remote_port.to_be_bytes(),
            proto: self.proto,
            family: self.family,
            _pad: 0,
        }
    }
}

/// The fragment identification as the program keys it.
fn frag_key_id(family: u8, id: u32) -> u32 {
    if family == 4 {
        id & 0xffff
    } else {
        u32::from_ne_bytes(id.to_be_bytes())
    }
}

/// First-fragment verdicts written before each batch: one that passes, one
/// long expired, one that drops.
fn seeded_frags() -> Vec<(abi::FragKey, abi::Frag)> {
    let key = |family: u8, src: [u8; 16], dst: [u8; 16], id: u32, proto| abi::FragKey {
        src,
        dst,
        id: frag_key_id(family, id),
        proto,
        family,
        _pad: 0,
    };
    let verdict = |expires_ns, reason: Reason| abi::Frag {
        expires_ns,
        reason: u32::from(reason as u8),
        _pad: 0,
    };
    let (a4, d4) = (mapped(ADMINS4[2]), mapped(DSTS4[0]));
    let (a6, d6) = (ADMINS6[0].octets(), DSTS6[0].octets());
    vec![
        (key(4, a4, d4, 900, 6), verdict(u64::MAX, Reason::Service)),
        (key(4, a4, d4, 901, 6), verdict(1, Reason::Service)),
        (
            key(4, mapped(OTHERS4[0]), d4, 902, 17),
            verdict(u64::MAX, Reason::DefaultDrop),
        ),
        (key(6, a6, d6, 903, 6), verdict(u64::MAX, Reason::Service)),
    ]
}

// ---- policy variants ----------------------------------------------------------------

#[derive(Clone, Copy)]
enum Limits {
    All,
    None,
    ServicesOnly,
}

#[derive(Clone, Copy)]
struct Phase {
    name: &'static str,
    mode: u8,
    default_action: Action,
    icmp: u8,
    established: bool,
    limits: Limits,
    /// `cg_ban_flags[0]`: the ban maps the program looks into.
    ban_flags: u32,
    /// `rl_v6_prefix`: how many leading bits of an IPv6 source key its rate limits; the
    /// byte-aligned /64 fast path, an unaligned prefix and whole addresses.
    v6_prefix: u8,
    /// The IPv4 deny prefixes in the trie (`CFG_DENY4_PREFIXES`), as a deny set with more
    /// than `DENY4_PROBES` prefix lengths has them, instead of probed in the deny table.
    deny4_trie: bool,
}

const ALL_BANS: u32 = abi::BAN_HOSTS4 | abi::BAN_HOSTS6 | abi::BAN_PREFIXES4 | abi::BAN_PREFIXES6;

const PHASES: [Phase; 5] = [
    Phase {
        name: "enforce, drop, essential icmp, replies, limits",
        mode: abi::MODE_ENFORCE,
        default_action: Action::Drop,
        icmp: abi::ICMP_ESSENTIAL,
        established: true,
        limits: Limits::All,
        ban_flags: ALL_BANS,
        v6_prefix: 64,
        deny4_trie: false,
    },
    Phase {
        name: "enforce, drop, essential icmp, replies, no limits",
        mode: abi::MODE_ENFORCE,
        default_action: Action::Drop,
        icmp: abi::ICMP_ESSENTIAL,
        established: true,
        limits: Limits::None,
        ban_flags: ALL_BANS,
        v6_prefix: 64,
        deny4_trie: true,
    },
    Phase {
        name: "monitor, drop, all icmp, no replies, no limits",
        mode: abi::MODE_MONITOR,
        default_action: Action::Drop,
        icmp: abi::ICMP_ALL,
        established: false,
        limits: Limits::None,
        ban_flags: abi::BAN_HOSTS4 | abi::BAN_PREFIXES6,
        v6_prefix: 64,
        deny4_trie: false,
    },
    Phase {
        name: "enforce, allow, no icmp, replies, service limits",
        mode: abi::MODE_ENFORCE,
        default_action: Action::Pass,
        icmp: abi::ICMP_NONE,
        established: true,
        limits: Limits::ServicesOnly,
        ban_flags: 0,
        v6_prefix: 128,
        deny4_trie: false,
    },
    Phase {
        name: "monitor, drop, no icmp, replies, limits",
        mode: abi::MODE_MONITOR,
        default_action: Action::Drop,
        icmp: abi::ICMP_NONE,
        established: true,
        limits: Limits::All,
        ban_flags: abi::BAN_HOSTS6 | abi::BAN_PREFIXES4,
        v6_prefix: 57,
        deny4_trie: true,
    },
];

fn variant(base: &CompiledPolicy, phase: &Phase) -> CompiledPolicy {
    let mut policy = base.clone();
    let cfg = &mut policy.config;
    cfg.mode = phase.mode;
    cfg.default_action = phase.default_action as u8;
    cfg.icmp = phase.icmp;
    cfg.rl_v6_prefix = phase.v6_prefix;
    let prefixes = cfg.flags & (abi::CFG_DENY4_PREFIXES | abi::CFG_DENY6_PREFIXES);
    cfg.flags = prefixes
        | if phase.established {
            abi::CFG_ALLOW_ESTABLISHED
        } else {
            0
        };
    if phase.deny4_trie && !base.deny4_lpm.is_empty() {
        cfg.flags |= abi::CFG_DENY4_PREFIXES;
        cfg.deny4_probes = 0;
        cfg.deny4_len = [0; abi::DENY4_PROBES];
    }
    if matches!(phase.limits, Limits::None | Limits::ServicesOnly) {
        cfg.src_pps = 0;
        cfg.src_burst = 0;
        cfg.src_syn_per_s = 0;
        cfg.icmp_echo_pps = 0;
        policy.global_syn_per_s = 0;
    }
    if matches!(phase.limits, Limits::None) {
        policy.config.wg_handshake_pps = 0;
        for svc in policy.services.values_mut() {
            svc.src_pps = 0;
            svc.syn_pps = 0;
        }
    }
    policy
}

// ---- the kernel side ------------------------------------------------------------------

fn pinned<T>(dir: &Path, name: &str) -> Result<T>
where
    T: TryFrom<Map, Error = MapError>,
{
    let path = dir.join("maps").join(name);
    let data = MapData::from_pin(&path).with_context(|| format!("opening {}", path.display()))?;
    let map = Map::from_map_data(data).with_context(|| format!("opening {}", path.display()))?;
    T::try_from(map).with_context(|| format!("{} is not the map expected", path.display()))
}

/// A `cg_rl_slot` from its bytes as the kernel keeps them.
fn slot_from(raw: &[u8]) -> abi::RlSlot {
    let u32_at = |at: usize| u32::from_ne_bytes([raw[at], raw[at + 1], raw[at + 2], raw[at + 3]]);
    let mut addr = [0u8; 16];
    addr.copy_from_slice(&raw[..16]);
    let mut tat = [0u8; 8];
    tat.copy_from_slice(&raw[24..32]);
    abi::RlSlot {
        key: abi::RlKey {
            addr,
            scope: u32_at(16),
        },
        seen: u32_at(20),
        bucket: abi::Rl {
            tat_ns: u64::from_ne_bytes(tat),
            rate: u32_at(32),
            burst: u32_at(36),
        },
    }
}

/// Counters of interface slot 0, the slot `load_for_test` gives.
const SLOT0_COUNTERS: u32 = abi::ACTION_COUNT * abi::REASON_SLOTS;

/// The (action, reason) counter a frame moved, or a description of what
/// moved instead.
type Counted = std::result::Result<(Action, Reason), String>;

/// The state the program writes, as the model or the kernel holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Written {
    frags: BTreeMap<abi::FragKey, abi::Frag>,
    buckets: BTreeMap<u32, abi::RlSlot>,
    syn_budget: abi::Rl,
    rl_budget: abi::Rl,
}

impl Written {
    fn of(model: &ModelState) -> Written {
        Written {
            frags: model.frags.clone(),
            buckets: model.buckets.clone(),
            syn_budget: model.syn_budget,
            rl_budget: model.rl_budget,
        }
    }

    fn restore(self, model: &mut ModelState) {
        model.frags = self.frags;
        model.buckets = self.buckets;
        model.syn_budget = self.syn_budget;
        model.rl_budget = self.rl_budget;
    }
}

/// The loaded program with its own pinned maps, removed on drop.
struct Kernel {
    dir: PathBuf,
    ebpf: Ebpf,
    maps: PolicyMaps,
    stats: PerCpuArray<MapData, abi::Stats>,
    /// The totals of slot 0's counters as last read.
    seen: Vec<abi::Stats>,
    frags: HashMap<MapData, abi::FragKey, abi::Frag>,
    buckets: Array<MapData, abi::RlSlot>,
    /// `cg_rl` again, for batch reads.
    buckets_raw: MapData,
    syn_budget: PerCpuArray<MapData, abi::Rl>,
    rl_budget: PerCpuArray<MapData, abi::Rl>,
    cpus: usize,
    generation: u32,
}

impl Kernel {
    fn load() -> Result<Kernel> {
        let dir = PathBuf::from(format!("/sys/fs/bpf/cgdiff-{}", std::process::id()));
        let _ = crmguard_datapath::uninstall(&dir);
        let (ebpf, maps) =
            crmguard_datapath::load_for_test(&dir).context("loading the XDP program")?;
        let cpus = aya::util::nr_cpus().map_err(|(what, e)| anyhow::anyhow!("{what}: {e}"))?;
        let mut kernel = Kernel {
            stats: pinned(&dir, "cg_stats")?,
            frags: pinned(&dir, "cg_frags")?,
            buckets: pinned(&dir, "cg_rl")?,
            buckets_raw: MapData::from_pin(dir.join("maps/cg_rl")).context("opening cg_rl")?,
            syn_budget: pinned(&dir, "cg_syn_budget")?,
            rl_budget: pinned(&dir, "cg_rl_budget")?,
            seen: Vec::new(),
            dir,
            ebpf,
            maps,
            cpus,
            generation: 0,
        };
        kernel.seen = kernel.read_all_counters()?;
        Ok(kernel)
    }

    fn counter(&self, index: u32) -> Result<abi::Stats> {
        let per_cpu = self.stats.get(&index, 0).context("reading cg_stats")?;
        let mut total = abi::Stats::default();
        for s in per_cpu.iter() {
            total.packets += s.packets;
            total.bytes += s.bytes;
        }
        Ok(total)
    }

    fn read_all_counters(&self) -> Result<Vec<abi::Stats>> {
        (0..SLOT0_COUNTERS).map(|i| self.counter(i)).collect()
    }

    /// Applies `policy` and returns the settings exactly as the kernel holds
    /// them.
    fn apply(&mut self, policy: &CompiledPolicy) -> Result<abi::Config> {
        self.generation += 1;
        self.maps.apply(policy, self.generation)?;
        let mut config = self.maps.current_config()?;
        config.generation = 0;
        Ok(config)
    }

    fn install_bans(&self, bans: &model::Bans) -> Result<()> {
        let mut hosts4: HashMap<MapData, [u8; 4], abi::Ban> = pinned(&self.dir, "cg_ban4")?;
        for (k, v) in &bans.hosts4 {
            hosts4.insert(k, v, 0)?;
        }
        let mut hosts6: HashMap<MapData, abi::Addr6, abi::Ban> = pinned(&self.dir, "cg_ban6")?;
        for (k, v) in &bans.hosts6 {
            hosts6.insert(abi::Addr6 { addr: *k }, v, 0)?;
        }
        let mut prefixes4: LpmTrie<MapData, [u8; 4], abi::Ban> = pinned(&self.dir, "cg_ban4_lpm")?;
        for (k, v) in &bans.prefixes4 {
            prefixes4.insert(&Key::new(k.prefixlen, k.addr_be), v, 0)?;
        }
        let mut prefixes6: LpmTrie<MapData, [u8; 16], abi::Ban> = pinned(&self.dir, "cg_ban6_lpm")?;
        for (k, v) in &bans.prefixes6 {
            prefixes6.insert(&Key::new(k.prefixlen, k.addr), v, 0)?;
        }
        Ok(())
    }

    /// Installs the model's flows where tc egress would record them (`FlowKey::place`).
    fn install_flows(&self, flows: &BTreeMap<abi::FlowKey, u64>) -> Result<()> {
        let mut tcp4: HashMap<MapData, abi::Flow4Key, abi::Flow> = pinned(&self.dir, "cg_flows4")?;
        let mut tcp6: HashMap<MapData, abi::FlowKey, abi::Flow> = pinned(&self.dir, "cg_flows")?;
        let mut dgram: HashMap<MapData, abi::FlowKey, abi::Flow> =
            pinned(&self.dir, "cg_dgram_flows")?;
        for (k, expires_ns) in flows {
            let value = abi::Flow {
                expires_ns: *expires_ns,
            };
            match k.place() {
                abi::FlowPlace::Tcp4(short) => tcp4.insert(short, value, 0)?,
                abi::FlowPlace::Tcp6(key) => tcp6.insert(key, value, 0)?,
                abi::FlowPlace::Datagram(key) => dgram.insert(key, value, 0)?,
            }
        }
        Ok(())
    }

    /// Runs one frame; returns the XDP action.
    fn test_run(&mut self, frame: &[u8]) -> Result<u32> {
        let program = crmguard_datapath::program(&mut self.ebpf)?;
        let result = program
            .test_run(TestRunOptions {
                data_in: Some(frame),
                ..TestRunOptions::default()
            })
            .context("BPF_PROG_TEST_RUN")?;
        Ok(result.return_value)
    }

    /// The (action, reason) the last frame, of `len` bytes, was counted
    /// under: `predicted` first, in one lookup; else every counter is read.
    fn counted(&mut self, len: usize, predicted: (Action, Reason)) -> Result<Counted> {
        let len = u64::try_from(len)?;
        let index = abi::stats_index(0, predicted.0, predicted.1);
        let slot = usize::try_from(index)?;
        let after = self.counter(index)?;
        let before = self.seen[slot];
        if after.packets == before.packets + 1 && after.bytes == before.bytes + len {
            self.seen[slot] = after;
            return Ok(Ok(predicted));
        }
        let now = self.read_all_counters()?;
        let mut moved = Vec::new();
        for action in Action::ALL {
            for reason in Reason::ALL {
                let i = usize::try_from(abi::stats_index(0, action, reason))?;
                if now[i] != self.seen[i] {
                    moved.push((
                        action,
                        reason,
                        now[i].packets - self.seen[i].packets,
                        now[i].bytes - self.seen[i].bytes,
                    ));
                }
            }
        }
        self.seen = now;
        Ok(match moved.as_slice() {
            [(action, reason, 1, bytes)] if *bytes == len => Ok((*action, *reason)),
            _ => Err(format!("counters moved: {moved:?}")),
        })
    }

    /// The state the program wrote, as it stands.
    fn written(&self, cpu: usize) -> Result<Written> {
        Ok(Written {
            frags: self.frags.iter().collect::<Result<_, _>>()?,
            buckets: self.occupied_slots()?,
            syn_budget: self.budget_of(&self.syn_budget, cpu)?,
            rl_budget: self.budget_of(&self.rl_budget, cpu)?,
        })
    }

    /// The slots of `cg_rl` that are not all zeros, read whole in batches.
    fn occupied_slots(&self) -> Result<BTreeMap<u32, abi::RlSlot>> {
        let size = std::mem::size_of::<abi::RlSlot>();
        let bytes =
            crmguard_datapath::sys::read_array(self.buckets_raw.fd().as_fd(), size, abi::RL_MAX)
                .context("reading cg_rl")?;
        let empty = abi::RlSlot::default();
        Ok((0u32..)
            .zip(bytes.chunks(size))
            .filter_map(|(index, raw)| {
                let slot = slot_from(raw);
                (slot != empty).then_some((index, slot))
            })
            .collect())
    }

    fn set_ban_flags(&self, flags: u32) -> Result<()> {
        let mut map: Array<MapData, u32> = pinned(&self.dir, "cg_ban_flags")?;
        map.set(0, flags, 0)?;
        Ok(())
    }

    /// The bucket of `cpu` in a per-CPU budget (`cg_syn_budget`, `cg_rl_budget`).
    fn budget_of(&self, budget: &PerCpuArray<MapData, abi::Rl>, cpu: usize) -> Result<abi::Rl> {
        let values = budget.get(&0, 0).context("reading a per-CPU budget")?;
        values
            .get(cpu)
            .copied()
            .with_context(|| format!("a per-CPU budget has no value for CPU {cpu}"))
    }

    /// Empties the state the program writes, then writes the seeded
    /// fragment verdicts and `rl_budget` as every CPU's budget of new buckets.
    fn reset_state(
        &mut self,
        seeded: &[(abi::FragKey, abi::Frag)],
        rl_budget: abi::Rl,
    ) -> Result<()> {
        let keys: Vec<abi::FragKey> = self.frags.keys().collect::<Result<_, _>>()?;
        for key in keys {
            self.frags.remove(&key)?;
        }
        for index in self.occupied_slots()?.into_keys() {
            self.buckets.set(index, abi::RlSlot::default(), 0)?;
        }
        let zero = PerCpuValues::try_from(vec![abi::Rl::default(); self.cpus])?;
        self.syn_budget.set(0, zero, 0)?;
        let budget = PerCpuValues::try_from(vec![rl_budget; self.cpus])?;
        self.rl_budget.set(0, budget, 0)?;
        for (k, v) in seeded {
            self.frags.insert(k, v, 0)?;
        }
        Ok(())
    }
}

impl Drop for Kernel {
    fn drop(&mut self) {
        let _ = crmguard_datapath::uninstall(&self.dir);
    }
}

/// The program's clock: CLOCK_MONOTONIC as `bpf_ktime_get_coarse_ns` reads
/// it, updated once a tick.
fn coarse_ns() -> Result<u64> {
    let t = clock_gettime(ClockId::CLOCK_MONOTONIC_COARSE).context("reading the clock")?;
    Ok(u64::try_from(t.tv_sec())? * SEC + u64::try_from(t.tv_nsec())?)
}

/// The tick: how far the coarse clock moves at a time.
fn tick_ns() -> Result<u64> {
    let t = clock_getres(ClockId::CLOCK_MONOTONIC_COARSE).context("reading the clock")?;
    Ok(u64::try_from(t.tv_sec())? * SEC + u64::try_from(t.tv_nsec())?)
}

// ---- comparing state -----------------------------------------------------------------

/// The kernel's fragment verdicts and buckets against the model's, exactly.
fn compare_state(kernel: &Kernel, model: &ModelState, cpu: usize) -> Result<()> {
    let k = kernel.written(cpu)?;
    let m = Written::of(model);
    if k == m {
        return Ok(());
    }
    let mut differences = Vec::new();
    let frag_keys: BTreeSet<_> = k.frags.keys().chain(m.frags.keys()).collect();
    for key in frag_keys {
        let (kv, mv) = (k.frags.get(key), m.frags.get(key));
        if kv != mv {
            differences.push(format!("cg_frags {key:?}: kernel {kv:?}, model {mv:?}"));
        }
    }
    let bucket_keys: BTreeSet<_> = k.buckets.keys().chain(m.buckets.keys()).collect();
    for key in bucket_keys {
        let (kv, mv) = (k.buckets.get(key), m.buckets.get(key));
        if kv != mv {
            differences.push(format!("cg_rl {key:?}: kernel {kv:?}, model {mv:?}"));
        }
    }
    if k.syn_budget != m.syn_budget {
        differences.push(format!(
            "cg_syn_budget: kernel {:?}, model {:?}",
            k.syn_budget, m.syn_budget
        ));
    }
    if k.rl_budget != m.rl_budget {
        differences.push(format!(
            "cg_rl_budget: kernel {:?}, model {:?}",
            k.rl_budget, m.rl_budget
        ));
    }
    differences.truncate(20);
    bail!(
        "the program's state differs from the model's:\n  {}",
        differences.join("\n  ")
    )
}

/// Decides `frame` in the model at the time the program read, which lies
/// between the test's readings `t0` and `t1` of the same clock, and finds
/// what the kernel counted. Returns the model's decision, the kernel's, and
/// whether the frame was inconclusive (see the module doc).
fn decide_frame(
    kernel: &mut Kernel,
    model: &mut ModelState,
    frame: &[u8],
    (t0, t1): (u64, u64),
    tick: u64,
    cpu: usize,
) -> Result<((Action, Reason), Counted, bool)> {
    if t0 == t1 {
        let expected = model::decide(model, frame, t0);
        return Ok((expected, kernel.counted(frame.len(), expected)?, false));
    }
    // The clock ticked during the run. The candidates: both readings, and
    // the times the program's writes reveal (a fragment verdict expires a
    // fixed time after it was written, a bucket that let a packet through
    // moved its TAT one interval past that time).
    let before = Written::of(model);
    let at_early = model::decide(model, frame, t0);
    let counted = kernel.counted(frame.len(), at_early)?;
    let written = kernel.written(cpu)?;
    let mut times = vec![t0, t1];
    for (key, frag) in &written.frags {
        if before.frags.get(key) != Some(frag) {
            times.push(frag.expires_ns.wrapping_sub(abi::FRAG_TIMEOUT_S * SEC));
        }
    }
    let interval = |rl: &abi::Rl| SEC.checked_div(u64::from(rl.rate)).unwrap_or(0);
    for (index, slot) in &written.buckets {
        if before.buckets.get(index) != Some(slot) {
            times.push(slot.bucket.tat_ns.wrapping_sub(interval(&slot.bucket)));
        }
    }
    if written.syn_budget != before.syn_budget {
        let budget = &written.syn_budget;
        times.push(budget.tat_ns.wrapping_sub(interval(budget)));
    }
    if written.rl_budget != before.rl_budget {
        let budget = &written.rl_budget;
        times.push(budget.tat_ns.wrapping_sub(interval(budget)));
    }
    times.retain(|t| (t0..=t1).contains(t));
    times.sort_unstable();
    times.dedup();
    for t in times {
        before.clone().restore(model);
        let verdict = model::decide(model, frame, t);
        if counted == Ok(verdict) && Written::of(model) == written {
            return Ok((verdict, counted, false));
        }
    }
    before.clone().restore(model);
    let at_early = model::decide(model, frame, t0);
    if t1 - t0 < tick + tick / 2 {
        // One tick: the program read t0 or t1, and the model disagrees at
        // both. The caller reports the frame, or the comparison of state at
        // the end of the batch does.
        return Ok((at_early, counted, false));
    }
    // The thread was held off for several ticks, and the program may have
    // read a time the test never saw: take the kernel's state.
    eprintln!(
        "differential: inconclusive frame (clock {t0}..{t1}): model {at_early:?} at {t0}, \
         kernel {counted:?}: {}",
        hex(frame)
    );
    written.restore(model);
    Ok((at_early, counted, true))
}

// ---- the frame generator ---------------------------------------------------------------

/// xorshift64*, seeded through splitmix64 so that any seed (even 0) works.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        Rng(z.max(1))
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in 0..n (n > 0).
    fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next() >> 33).unwrap_or(0) % n
    }

    fn percent(&mut self, p: usize) -> bool {
        self.below(100) < p
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }

    fn u8(&mut self) -> u8 {
        self.next().to_le_bytes()[7]
    }

    fn u16(&mut self) -> u16 {
        let b = self.next().to_le_bytes();
        u16::from_le_bytes([b[6], b[7]])
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.u8()).collect()
    }
}

/// A frame under construction: where its layers start, for mutations.
struct Built {
    frame: Vec<u8>,
    l3: usize,
    /// The transport header, when the frame has one.
    l4: Option<usize>,
    ethertype: u16,
    proto: u8,
}

struct Gen {
    rng: Rng,
    flows: Vec<Flow>,
}

const TCP_PORTS: [u16; 10] = [22, 443, 8443, 5432, 53, 80, 50000, 50001, 50002, WG_PORT];
const UDP_PORTS: [u16; 8] = [53, 123, WG_PORT, 40053, 40054, 443, 22, 5353];
const TCP_FLAGS: [u8; 6] = [
    TCP_SYN,
    TCP_SYN | TCP_ACK,
    TCP_ACK,
    TCP_RST,
    0x18,
    0x12 | 0x01,
];

impl Gen {
    fn frame(&mut self) -> Vec<u8> {
        let mut built = match self.rng.below(100) {
            0..=2 => self.non_ip(),
            3..=27 => self.ipv4_any(),
            28..=47 => self.ipv6_any(),
            48..=57 => self.reply(),
            58..=69 => self.fragment(),
            70..=79 => self.wireguard(),
            80..=87 => self.icmp_any(),
            _ => self.service(),
        };
        if self.rng.percent(35) {
            self.mutate(&mut built);
        }
        built.frame
    }

    fn tags(&mut self) -> Vec<u16> {
        let n = match self.rng.below(100) {
            0..=74 => 0,
            75..=87 => 1,
            88..=95 => 2,
            _ => 3,
        };
        (0..n)
            .map(|_| match self.rng.below(10) {
                0..=5 => VLAN_Q,
                6..=8 => VLAN_AD,
                _ => 0x9100,
            })
            .collect()
    }

    fn wrap(&mut self, ethertype: u16, l3: Vec<u8>, l4_in_l3: Option<usize>, proto: u8) -> Built {
        let tags = self.tags();
        let frame = eth(&tags, ethertype, &l3);
        let l3_at = 14 + 4 * tags.len();
        Built {
            frame,
            l3: l3_at,
            l4: l4_in_l3.map(|o| l3_at + o),
            ethertype,
            proto,
        }
    }

    fn src4(&mut self) -> Ipv4Addr {
        match self.rng.below(10) {
            0..=3 => self.rng.pick(&ADMINS4),
            4..=8 => self.rng.pick(&OTHERS4),
            _ => Ipv4Addr::from(u32::try_from(self.rng.next() >> 32).unwrap_or(0)),
        }
    }

    fn src6(&mut self) -> Ipv6Addr {
        match self.rng.below(10) {
            0..=3 => self.rng.pick(&ADMINS6),
            4..=8 => self.rng.pick(&OTHERS6),
            _ => Ipv6Addr::from(u128::from(self.rng.next()) << 64 | u128::from(self.rng.next())),
        }
    }

    fn non_ip(&mut self) -> Built {
        let ethertype = self.rng.pick(&[ETH_ARP, 0x88cc, 0x8863, 0x0842, 0x9100]);
        let ethertype = if self.rng.percent(20) {
            self.rng.u16()
        } else {
            ethertype
        };
        let n = self.rng.below(64);
        let payload = self.rng.bytes(n);
        self.wrap(ethertype, payload, None, 0)
    }

    /// A transport header and payload of `proto`.
    fn l4(&mut self, proto: u8, family: u8) -> Vec<u8> {
        match proto {
            6 => {
                let sport = if self.rng.percent(50) {
                    40000
                } else {
                    self.rng.u16()
                };
                let dport = if self.rng.percent(85) {
                    self.rng.pick(&TCP_PORTS)
                } else {
                    self.rng.u16()
                };
                let flags = if self.rng.percent(85) {
                    self.rng.pick(&TCP_FLAGS)
                } else {
                    self.rng.u8()
                };
                let doff = match self.rng.below(10) {
                    0..=6 => 5,
                    7..=8 => 6 + u8::try_from(self.rng.below(10)).unwrap_or(0),
                    _ => u8::try_from(self.rng.below(16)).unwrap_or(0),
                };
                let payload = self.rng.below(48);
                tcp_segment(sport, dport, flags, doff, payload)
            }
            17 => {
                let sport = if self.rng.percent(50) {
                    40000
                } else {
                    self.rng.u16()
                };
                let dport = if self.rng.percent(85) {
                    self.rng.pick(&UDP_PORTS)
                } else {
                    self.rng.u16()
                };
                let payload = if dport == WG_PORT && self.rng.percent(70) {
                    self.wg_message()
                } else {
                    let n = self.rng.below(64);
                    self.rng.bytes(n)
                };
                udp_datagram(sport, dport, &payload)
            }
            1 | 58 => self.icmp_message(family),
            _ => {
                let n = self.rng.below(40);
                self.rng.bytes(n)
            }
        }
    }

    fn icmp_message(&mut self, family: u8) -> Vec<u8> {
        let t = match (family, self.rng.below(20)) {
            (_, 0) => self.rng.u8(),
            (4, 1..=7) => 8,
            (4, 8..=9) => 0,
            (_, 1..=7) => 128,
            (_, 8..=9) => 129,
            (4, _) => self
                .rng
                .pick(&[0, 3, 4, 5, 8, 9, 10, 11, 12, 13, 14, 17, 18, 30]),
            _ => self.rng.pick(&[
                1, 2, 3, 4, 100, 127, 128, 129, 130, 131, 132, 133, 134, 135, 136, 137, 138, 139,
                143, 200,
            ]),
        };
        let code = if self.rng.percent(70) {
            self.rng.pick(&[0, 1, 3, 4])
        } else {
            self.rng.u8()
        };
        let id = match self.rng.below(4) {
            0 => 0x0777,
            1 => 0x0888,
            _ => self.rng.u16(),
        };
        let mut m = icmp_echo(t, code, id);
        let extra = self.rng.below(32);
        m.extend(self.rng.bytes(extra));
        if self.rng.percent(5) {
            m.truncate(self.rng.below(8));
        }
        m
    }

    fn wg_message(&mut self) -> Vec<u8> {
        let t = match self.rng.below(20) {
            0 => 0,
            1 => 5,
            2 => self.rng.u8(),
            3..=9 => 1,
            _ => self.rng.pick(&[2, 3, 4]),
        };
        let exact = match t {
            1 => 148,
            2 => 92,
            3 => 64,
            _ => 32 + self.rng.below(200),
        };
        let len = match self.rng.below(10) {
            0..=5 => exact,
            6 => exact + 1,
            7 => exact.saturating_sub(1),
            8 => exact.saturating_sub(16) + self.rng.below(33),
            _ => self.rng.below(8),
        };
        let reserved = if self.rng.percent(90) {
            0
        } else {
            self.rng.u8()
        };
        let mut m = wg(t, reserved, len);
        if len >= 4 && self.rng.percent(5) {
            let i = 2 + self.rng.below(2);
            m[i] = self.rng.u8();
        }
        m
    }

    fn ipv4_header(&mut self, proto: u8) -> V4 {
        V4 {
            src: self.src4(),
            dst: self.rng.pick(&DSTS4),
            proto,
            id: self.rng.u16(),
            options: if self.rng.percent(15) {
                4 * (1 + self.rng.below(10))
            } else {
                0
            },
            frag_off: if self.rng.percent(30) { 0x4000 } else { 0 },
            tot_len_extra: 0,
        }
    }

    fn ipv4_any(&mut self) -> Built {
        let proto = match self.rng.below(20) {
            0..=8 => 6,
            9..=15 => 17,
            16 => 1,
            17 => 58,
            _ => self.rng.pick(&[47, 50, 132, 0, 255]),
        };
        let h = self.ipv4_header(proto);
        let l4_at = 20 + h.options;
        let l4 = self.l4(proto, 4);
        let l3 = ipv4(h, &l4);
        self.wrap(ETH_IP, l3, Some(l4_at), proto)
    }

    /// An extension header chain ending in `upper`, and its length.
    fn ext_chain(&mut self, upper: u8) -> (u8, Vec<u8>) {
        let n = match self.rng.below(100) {
            0..=54 => 0,
            55..=84 => 1 + self.rng.below(3),
            _ => 4 + self.rng.below(5),
        };
        let kinds: Vec<u8> = (0..n)
            .map(|_| match self.rng.below(40) {
                0..=9 => 60,
                10..=17 => 0,
                18..=25 => 43,
                26..=31 => 51,
                32..=35 => 44,
                36 => 135,
                37 => self.rng.pick(&[139, 140, 253, 254]),
                38 => 59,
                _ => 50,
            })
            .collect();
        let mut bytes = Vec::new();
        for (i, kind) in kinds.iter().enumerate() {
            let next = kinds.get(i + 1).copied().unwrap_or(upper);
            let len = u8::try_from(self.rng.below(4)).unwrap_or(0);
            match kind {
                51 => bytes.extend(ah(next, 1 + len)),
                44 => {
                    let id = self.rng.pick(&FRAG_IDS);
                    // Mostly atomic or first fragments: later ones come
                    // from fragment().
                    let (off, more) = match self.rng.below(4) {
                        0 => (0, false),
                        1..=2 => (0, true),
                        _ => (
                            8 * u16::try_from(self.rng.below(8)).unwrap_or(0),
                            self.rng.percent(50),
                        ),
                    };
                    bytes.extend(frag6(next, off, more, id));
                }
                _ => bytes.extend(ext_sized(next, len)),
            }
        }
        (kinds.first().copied().unwrap_or(upper), bytes)
    }

    fn ipv6_any(&mut self) -> Built {
        let upper = match self.rng.below(20) {
            0..=8 => 6,
            9..=15 => 17,
            16..=17 => 58,
            18 => 1,
            _ => self.rng.pick(&[47, 50, 59, 132, 135]),
        };
        let (first, mut payload) = self.ext_chain(upper);
        let l4_at = 40 + payload.len();
        payload.extend(self.l4(upper, 6));
        let l3 = ipv6_between(self.src6(), self.rng.pick(&DSTS6), first, &payload);
        self.wrap(ETH_IP6, l3, Some(l4_at), upper)
    }

    fn icmp_any(&mut self) -> Built {
        if self.rng.percent(30) {
            let m = self.icmp_message(4);
            return self.ip_to(1, m);
        }
        if self.rng.percent(50) {
            let h = self.ipv4_header(1);
            let l4_at = 20 + h.options;
            let m = self.icmp_message(4);
            let l3 = ipv4(h, &m);
            self.wrap(ETH_IP, l3, Some(l4_at), 1)
        } else {
            let (first, mut payload) = self.ext_chain(58);
            let l4_at = 40 + payload.len();
            payload.extend(self.icmp_message(6));
            let l3 = ipv6_between(self.src6(), self.rng.pick(&DSTS6), first, &payload);
            self.wrap(ETH_IP6, l3, Some(l4_at), 58)
        }
    }

    fn wireguard(&mut self) -> Built {
        let msg = self.wg_message();
        let sport = self.rng.u16();
        let mut udp = udp_datagram(sport, WG_PORT, &msg);
        if self.rng.percent(10) {
            // A UDP length that disagrees with the message.
            let len = u16::try_from(8 + self.rng.below(msg.len() + 9)).unwrap_or(8);
            udp[4..6].copy_from_slice(&len.to_be_bytes());
        }
        self.ip_to(17, udp)
    }

    /// Sources that come back often, so that their buckets fill up.
    fn regular4(&mut self) -> Ipv4Addr {
        self.rng.pick(&[ADMINS4[0], ADMINS4[1], OTHERS4[0]])
    }

    fn regular6(&mut self) -> Ipv6Addr {
        self.rng.pick(&[ADMINS6[0], ADMINS6[1], OTHERS6[0]])
    }

    /// `l4` of `proto` in IPv4 or IPv6 without extension headers, half the
    /// time from a regular source.
    fn ip_to(&mut self, proto: u8, l4: Vec<u8>) -> Built {
        let regular = self.rng.percent(50);
        if self.rng.percent(60) {
            let mut h = self.ipv4_header(proto);
            if regular {
                h.src = self.regular4();
            }
            let l4_at = 20 + h.options;
            let l3 = ipv4(h, &l4);
            self.wrap(ETH_IP, l3, Some(l4_at), proto)
        } else {
            let src = if regular {
                self.regular6()
            } else {
                self.src6()
            };
            let l3 = ipv6_between(src, self.rng.pick(&DSTS6), proto, &l4);
            self.wrap(ETH_IP6, l3, Some(40), proto)
        }
    }

    /// New connections and traffic to the public services.
    fn service(&mut self) -> Built {
        if self.rng.percent(70) {
            let dport = self.rng.pick(&[22, 443, 8443, 5432]);
            let flags = if self.rng.percent(60) {
                TCP_SYN
            } else {
                TCP_ACK
            };
            let l4 = tcp_segment(self.rng.u16(), dport, flags, 5, self.rng.below(16));
            self.ip_to(6, l4)
        } else {
            let dport = self.rng.pick(&[53, 123]);
            let n = self.rng.below(32);
            let payload = self.rng.bytes(n);
            let l4 = udp_datagram(self.rng.u16(), dport, &payload);
            self.ip_to(17, l4)
        }
    }

    /// A reply to one of this host's connections, or a near miss.
    fn reply(&mut self) -> Built {
        let flow = self.rng.pick(&self.flows.clone());
        let mut sport = flow.remote_port;
        let mut dport = flow.local_port;
        let mut proto = flow.proto;
        match self.rng.below(10) {
            0 => sport = sport.wrapping_add(1),
            1 => dport = dport.wrapping_add(1),
            2 => {
                proto = match proto {
                    6 => 17,
                    17 => 6,
                    other => other,
                }
            }
            _ => {}
        }
        let l4 = match proto {
            6 => {
                let flags = self
                    .rng
                    .pick(&[TCP_SYN | TCP_ACK, TCP_ACK, 0x18, TCP_RST, TCP_SYN]);
                tcp_segment(sport, dport, flags, 5, self.rng.below(32))
            }
            17 => {
                let n = self.rng.below(48);
                udp_datagram(sport, dport, &self.rng.bytes(n))
            }
            _ => {
                let t = if self.rng.percent(80) {
                    if flow.family == 4 {
                        0
                    } else {
                        129
                    }
                } else {
                    self.rng.u8()
                };
                icmp_echo(t, 0, dport)
            }
        };
        let mut remote = flow.remote;
        if self.rng.percent(10) {
            remote[15] ^= 1;
        }
        if flow.family == 4 {
            let v4 = |a: [u8; 16]| Ipv4Addr::new(a[12], a[13], a[14], a[15]);
            let h = V4 {
                src: v4(remote),
                dst: v4(flow.local),
                ..self.ipv4_header(proto)
            };
            let l4_at = 20 + h.options;
            let l3 = ipv4(h, &l4);
            self.wrap(ETH_IP, l3, Some(l4_at), proto)
        } else {
            let l3 = ipv6_between(remote.into(), flow.local.into(), proto, &l4);
            self.wrap(ETH_IP6, l3, Some(40), proto)
        }
    }

    /// First and later fragments with identifications that repeat, so that
    /// later fragments find (or miss) the verdicts of first ones.
    fn fragment(&mut self) -> Built {
        let id = self.rng.pick(&FRAG_IDS);
        let proto = self.rng.pick(&[6, 6, 17, 17, 1, 47]);
        let first = self.rng.percent(45);
        let offset = if first {
            0
        } else {
            8 * u16::try_from(match self.rng.below(10) {
                0..=1 => 1 + self.rng.below(2),
                2..=7 => 3 + self.rng.below(8),
                _ => self.rng.below(1 << 13),
            })
            .unwrap_or(1)
        };
        let more = first || self.rng.percent(50);
        let payload = if first {
            let mut l4 = self.l4(proto, 4);
            match self.rng.below(6) {
                // A tiny first fragment.
                0 => l4.truncate(self.rng.below(l4.len() + 1)),
                // A UDP length that covers only this fragment.
                1 if proto == 17 && l4.len() >= 8 => {
                    let len = u16::try_from(l4.len()).unwrap_or(8);
                    l4[4..6].copy_from_slice(&len.to_be_bytes());
                }
                _ => {}
            }
            l4
        } else {
            let n = self.rng.below(64);
            self.rng.bytes(n)
        };
        let src4 = self.rng.pick(&[ADMINS4[2], ADMINS4[0], OTHERS4[0]]);
        let src6 = self.rng.pick(&[ADMINS6[0], OTHERS6[0]]);
        if self.rng.percent(55) {
            let h = V4 {
                src: src4,
                dst: DSTS4[0],
                proto,
                id: u16::try_from(id).unwrap_or(1),
                options: 0,
                frag_off: (offset / 8) | if more { 0x2000 } else { 0 },
                tot_len_extra: 0,
            };
            let l3 = ipv4(h, &payload);
            self.wrap(ETH_IP, l3, Some(20), proto)
        } else {
            let proto = if proto == 1 { 58 } else { proto };
            let mut chain = Vec::new();
            let mut first_next = 44;
            if self.rng.percent(20) {
                chain.extend(ext(44));
                first_next = 0;
            }
            // Destination options in the fragmentable part, now and then.
            let behind = if self.rng.percent(15) { 60 } else { proto };
            chain.extend(frag6(behind, offset, more, id));
            if behind == 60 && first {
                chain.extend(ext(proto));
            }
            let l4_at = 40 + chain.len();
            chain.extend(payload);
            let l3 = ipv6_between(src6, DSTS6[0], first_next, &chain);
            self.wrap(ETH_IP6, l3, Some(l4_at), proto)
        }
    }

    fn mutate(&mut self, b: &mut Built) {
        let len = b.frame.len();
        match self.rng.below(8) {
            // Truncation somewhere, or at a layer.
            0 => {
                let cut = 14 + self.rng.below(len - 13);
                b.frame.truncate(cut);
            }
            1 => {
                let layer = if self.rng.percent(50) {
                    b.l3
                } else {
                    b.l4.unwrap_or(b.l3)
                };
                let cut = (layer + self.rng.below(24)).clamp(14, len);
                b.frame.truncate(cut);
            }
            // Byte flips, mostly in the headers.
            2 => {
                let end = b.l4.map_or(len, |l4| (l4 + 24).min(len));
                for _ in 0..1 + self.rng.below(3) {
                    let i = 12 + self.rng.below(end.saturating_sub(12).max(1));
                    if i < len {
                        b.frame[i] ^= 1 << self.rng.below(8);
                    }
                }
            }
            3 => {
                let i = self.rng.below(len);
                b.frame[i] = self.rng.u8();
            }
            // Bogus IP lengths.
            4 => {
                let at = match b.ethertype {
                    ETH_IP => b.l3 + 2,
                    ETH_IP6 => b.l3 + 4,
                    _ => return,
                };
                if at + 2 > len {
                    return;
                }
                let old = u16::from_be_bytes([b.frame[at], b.frame[at + 1]]);
                let new = match self.rng.below(3) {
                    0 => old.wrapping_add(u16::try_from(self.rng.below(16)).unwrap_or(0)),
                    1 => old.wrapping_sub(u16::try_from(self.rng.below(16)).unwrap_or(0)),
                    _ => self.rng.u16(),
                };
                b.frame[at..at + 2].copy_from_slice(&new.to_be_bytes());
            }
            // Bogus transport lengths.
            5 => {
                let Some(l4) = b.l4 else { return };
                match b.proto {
                    17 if l4 + 6 <= len => {
                        let new = u16::try_from(self.rng.below(len + 8)).unwrap_or(0);
                        b.frame[l4 + 4..l4 + 6].copy_from_slice(&new.to_be_bytes());
                    }
                    6 if l4 + 13 <= len => {
                        b.frame[l4 + 12] = u8::try_from(self.rng.below(16)).unwrap_or(0) << 4;
                    }
                    _ => {}
                }
            }
            // Ethernet padding after the IP packet.
            6 => {
                let n = 1 + self.rng.below(40);
                let pad = self.rng.bytes(n);
                b.frame.extend(pad);
            }
            // A protocol number or next header swapped.
            _ => {
                let at = match b.ethertype {
                    ETH_IP => b.l3 + 9,
                    ETH_IP6 => b.l3 + 6,
                    _ => return,
                };
                if at < len {
                    b.frame[at] = self.rng.pick(&[0, 1, 6, 17, 43, 44, 51, 58, 60, 135, 59]);
                }
            }
        }
    }
}

// ---- the test ---------------------------------------------------------------------------

fn env_u64(name: &str) -> Result<Option<u64>> {
    let Ok(text) = std::env::var(name) else {
        return Ok(None);
    };
    let text = text.trim();
    let value = match text.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => text.parse(),
    };
    Ok(Some(value.with_context(|| {
        format!("{name}={text} is not a number")
    })?))
}

fn xdp_of(action: Action) -> u32 {
    if action == Action::Drop {
        XDP_DROP
    } else {
        XDP_PASS
    }
}

#[test]
fn differential_xdp_matches_model() -> Result<()> {
    if !privileged::require("differential_xdp_matches_model") {
        return Ok(());
    }
    let seed = match env_u64("CRMGUARD_DIFF_SEED")? {
        Some(seed) => seed,
        None => coarse_ns()? ^ u64::from(std::process::id()) << 32,
    };
    let frames = env_u64("CRMGUARD_DIFF_FRAMES")?.unwrap_or(DEFAULT_FRAMES);
    eprintln!("differential: seed {seed:#x}, {frames} frames");
    let replay = format!(
        "CRMGUARD_DIFF_SEED={seed:#x} CRMGUARD_DIFF_FRAMES={frames} \
         cargo test -p crmguard-tests --test suite differential -- --nocapture"
    );

    let pinned = Pinned::first_allowed()?;
    let mut kernel = Kernel::load()?;
    let config = crmguard_core::config::parse(POLICY, Path::new("differential.toml"))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let base = policy::compile(&config)?;

    let mut model = ModelState::new(base.clone());
    let far = coarse_ns()? + 86_400 * SEC;
    model.bans = bans(far);
    kernel.install_bans(&model.bans)?;
    let tick = tick_ns()?;
    let flows = flows();
    for f in &flows {
        // TCP connections and datagram flows live in maps of their own.
        let map = if f.proto == 6 {
            &mut model.flows
        } else {
            &mut model.dgram_flows
        };
        map.insert(f.key(), if f.live { far } else { 1 });
    }
    kernel.install_flows(&model.flows)?;
    kernel.install_flows(&model.dgram_flows)?;
    let seeded = seeded_frags();

    let mut gen = Gen {
        rng: Rng::new(seed),
        flows,
    };
    let mut seen: BTreeMap<(Action, Reason), u64> = BTreeMap::new();
    let started = Instant::now();
    let mut done = 0u64;
    let mut batch = 0u64;
    let mut inconclusive = 0u64;
    let mut ticked = 0u64;
    let phase_batches = PHASE_BATCHES.max(frames / BATCH_FRAMES / 50);
    while done < frames {
        let phase = &PHASES[usize::try_from(batch / phase_batches)? % PHASES.len()];
        if batch.is_multiple_of(phase_batches) {
            let policy = variant(&base, phase);
            let config = kernel.apply(&policy)?;
            model.policy = policy;
            model.policy.config = config;
            kernel.set_ban_flags(phase.ban_flags)?;
            model.bans.flags = phase.ban_flags;
        }
        // Every eighth batch starts with the budget of new rate-limit buckets spent for the
        // next two seconds, longer than a batch lasts: new sources find the table busy.
        let rl_budget = if batch % 8 == 7 {
            let rate = abi::RL_NEW_PER_CPU_PER_S;
            abi::Rl {
                tat_ns: coarse_ns()? + 2 * SEC,
                rate,
                burst: rate,
            }
        } else {
            abi::Rl::default()
        };
        kernel.reset_state(&seeded, rl_budget)?;
        model.frags = seeded.iter().copied().collect();
        model.buckets.clear();
        model.syn_budget = abi::Rl::default();
        model.rl_budget = rl_budget;

        let mut in_batch = 0;
        while in_batch < BATCH_FRAMES && done < frames {
            let frame = gen.frame();
            let t0 = coarse_ns()?;
            let xdp = kernel.test_run(&frame)?;
            let t1 = coarse_ns()?;
            if t1 != t0 {
                ticked += 1;
            }
            let (expected, counted, unsure) =
                decide_frame(&mut kernel, &mut model, &frame, (t0, t1), tick, pinned.cpu)?;
            if unsure {
                inconclusive += 1;
            } else if xdp != xdp_of(expected.0) || counted != Ok(expected) {
                let parsed = model::packet::parse(&frame);
                let clock = if t0 == t1 {
                    format!("{t0}")
                } else {
                    format!("between {t0} and {t1}")
                };
                bail!(
                    "frame {done} (seed {seed:#x}, policy \"{}\") differs:\n  \
                     frame  {}\n  \
                     model  xdp {} {}/{}\n  \
                     kernel xdp {xdp} {}\n  \
                     clock  {clock}\n  \
                     parsed {parsed:?}\n  \
                     replay: {replay}",
                    phase.name,
                    hex(&frame),
                    xdp_of(expected.0),
                    expected.0.name(),
                    expected.1,
                    match &counted {
                        Ok((a, r)) => format!("{}/{r}", a.name()),
                        Err(e) => e.clone(),
                    },
                );
            }
            *seen.entry(expected).or_default() += 1;
            done += 1;
            in_batch += 1;
        }
        compare_state(&kernel, &model, pinned.cpu).with_context(|| {
            format!(
                "after frame {done} (seed {seed:#x}, policy \"{}\"); replay: {replay}",
                phase.name
            )
        })?;
        batch += 1;
    }

    let elapsed = started.elapsed().as_secs_f64();
    let rate = frames as f64 / elapsed.max(1e-9);
    eprintln!(
        "differential: {frames} frames agree in {elapsed:.1} s ({rate:.0} frames/s, {batch} \
         batches, {ticked} across a clock tick, {inconclusive} inconclusive)"
    );
    for ((action, reason), n) in &seen {
        eprintln!("  {:>10}  {}/{reason}", n, action.name());
    }
    // A generator that stopped reaching a rule would make this test vacuous.
    if frames >= DEFAULT_FRAMES {
        let reasons: Vec<Reason> = seen.keys().map(|(_, r)| *r).collect();
        let missing: Vec<&str> = Reason::ALL
            .iter()
            .filter(|r| !reasons.contains(r))
            .map(|r| r.name())
            .collect();
        ensure!(missing.is_empty(), "no frame reached {missing:?}");
        for action in Action::ALL {
            ensure!(
                seen.keys().any(|(a, _)| *a == action),
                "no frame ended in {}",
                action.name()
            );
        }
    }
    Ok(())
}
