//! `crmguard explain` against reality: random packets, each one first explained by the running
//! agent and then really sent through the lab, must meet the verdict and the reason the agent
//! gave.
//!
//! - From outside ([`outside_packets_agree_with_the_filter`]): the frame `explain` reasons about
//!   (built by `crmguard_core::explain::probe`, byte for byte) is written onto the outside end
//!   of the veth, and the XDP filter's own counters say what it did: the one (action, reason)
//!   counter of the interface that moved. Each case has a source of its own, so that the rate
//!   limits start from nothing, as `explain` assumes; the few /32 entries of the deny list and
//!   the bans are the exception, and their packets are dropped before any rate limit counts.
//!   The last fifth of the cases run after a restart in monitor mode, where drops are
//!   `would_drop`.
//! - From a peer ([`peer_packets_agree_with_the_acl`]): wireguard-go peers of several roles
//!   connect to servers listening on the gateway, reach the MFA portal and ping the gateway
//!   through their tunnels; a denied connection is refused at once by the ACL's reset, and
//!   `crmguard_acl_denied_by_reason_total` says why. A disabled peer is the exception: the
//!   endpoint refuses its handshakes, so its packets never reach the ACL and nothing of it
//!   reaches the gateway; that silence is the drop `explain` names `peer_disabled`.
//!
//! The cases are drawn from a seeded generator. `CRMGUARD_EXPLAIN_SEED` replays a run (the seed
//! is printed at the start); `CRMGUARD_EXPLAIN_CASES` scales the number of cases.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, ensure, Context, Result};
use aya::maps::{MapData, PerCpuArray};
use crmguard_core::abi::{self, Action, Reason};
use crmguard_core::config::Probe;
use crmguard_core::explain::probe;
use crmguard_lab::agent::Agent;
use crmguard_lab::net::RawSocket;
use crmguard_lab::privileged;
use crmguard_lab::process;
use crmguard_lab::topology::Topology;
use crmguard_lab::wait::wait_for;
use serde_json::Value;

/// How long a sent frame may take to show in the counters.
const COUNT: Duration = Duration::from_secs(5);

// ---- shared ---------------------------------------------------------------------------------

/// A small seeded generator (xorshift64*), so that a failing run can be replayed.
struct Rng(u64);

impl Rng {
    /// From `CRMGUARD_EXPLAIN_SEED`, else from the clock; the seed is printed either way.
    fn from_env(test: &str) -> Result<Rng> {
        let seed = match std::env::var("CRMGUARD_EXPLAIN_SEED") {
            Ok(text) => text
                .trim()
                .parse::<u64>()
                .with_context(|| format!("CRMGUARD_EXPLAIN_SEED={text} is not a number"))?,
            Err(_) => {
                let nanos = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .unwrap_or_default()
                    .subsec_nanos();
                u64::from(nanos) ^ (u64::from(std::process::id()) << 32)
            }
        };
        eprintln!("{test}: seed {seed} (replay with CRMGUARD_EXPLAIN_SEED={seed})");
        Ok(Rng(seed.max(1)))
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number below `n` (n > 0).
    fn below(&mut self, n: usize) -> usize {
        let n64 = u64::try_from(n).unwrap_or(u64::MAX).max(1);
        usize::try_from(self.next() % n64).unwrap_or(0)
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }

    fn port(&mut self) -> u16 {
        u16::try_from(self.next() % 65_535).unwrap_or(0) + 1
    }
}

/// How many cases: `base`, scaled by `CRMGUARD_EXPLAIN_CASES` (the total of both tests; 1,000
/// by default).
fn cases(base: usize) -> Result<usize> {
    match std::env::var("CRMGUARD_EXPLAIN_CASES") {
        Ok(text) => {
            let total: usize = text
                .trim()
                .parse()
                .with_context(|| format!("CRMGUARD_EXPLAIN_CASES={text} is not a number"))?;
            Ok((total * base).div_ceil(1000).max(1))
        }
        Err(_) => Ok(base),
    }
}

/// `explain`'s answer, as `--json` prints it.
#[derive(Debug, Clone)]
struct Answer {
    verdict: String,
    reason: String,
    rule: String,
    json: String,
}

/// Runs `crmguard explain --json ARGS` against the running agent.
fn explain(agent: &Agent, args: &[&str]) -> Result<Answer> {
    let mut all = vec!["explain", "--json"];
    all.extend_from_slice(args);
    let out = agent.cli(&all)?;
    ensure!(
        out.status.success(),
        "`crmguard {}` failed ({}): {}{}",
        all.join(" "),
        process::describe(out.status),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let json = String::from_utf8_lossy(&out.stdout).into_owned();
    let value: Value = serde_json::from_str(&json)
        .with_context(|| format!("`crmguard {}` printed no JSON: {json}", all.join(" ")))?;
    let field = |name: &str| -> Result<String> {
        Ok(value[name]
            .as_str()
            .with_context(|| format!("no `{name}` in {json}"))?
            .to_owned())
    };
    ensure!(
        field("answered_by")? == "agent",
        "the running agent did not answer `crmguard {}`: {json}",
        all.join(" ")
    );
    Ok(Answer {
        verdict: field("verdict")?,
        reason: field("reason")?,
        rule: field("rule")?,
        json,
    })
}

/// `crmguard ARGS`, which must succeed.
fn cli_ok(agent: &Agent, args: &[&str]) -> Result<()> {
    let out = agent.cli(args)?;
    ensure!(
        out.status.success(),
        "`crmguard {}` failed ({}): {}{}",
        args.join(" "),
        process::describe(out.status),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

// ---- from outside: the XDP filter -----------------------------------------------------------

const SSH: u16 = 22;
const DB: u16 = 5432;
const DNS: u16 = 53;
const WEB: [u16; 2] = [443, 8443];
const WG: u16 = 51820;

/// The networks the sources are drawn from, by what the policy says about them.
const NETS: [(&str, &str); 15] = [
    ("admin4", "198.18.0.0/16"),
    ("admin6", "2001:db8:a::/48"),
    ("denied_in_admin4", "198.18.128.0/17"),
    ("deny_one4", "203.0.113.66/32"),
    ("deny_net4", "198.51.100.0/24"),
    ("deny_one6", "2001:db8:bad::66/128"),
    ("deny_net6", "2001:db8:dead::/48"),
    ("deny_file4", "100.72.0.0/13"),
    ("deny_file6", "2001:db8:e00::/40"),
    ("ban_one4", "203.0.113.77/32"),
    ("ban_net4", "100.64.0.0/16"),
    ("ban_in_admin4", "198.18.7.0/24"),
    ("ban_net6", "2001:db8:b0::/48"),
    ("ban_one6", "2001:db8:b1::9/128"),
    ("ban_ttl6", "2001:db8:b2::/64"),
];

/// Sources the policy says nothing about.
const ELSEWHERE: [(&str, &str); 3] = [
    ("elsewhere4", "45.0.0.0/8"),
    ("elsewhere6", "2001:db8:f000::/36"),
    ("elsewhere_near4", "100.80.0.0/12"),
];

/// The bans, added with `crmguard ban add` once the agent runs.
const BANS: [(&str, Option<&str>); 6] = [
    ("203.0.113.77", None),
    ("100.64.0.0/16", Some("1h")),
    ("198.18.7.0/24", None),
    ("2001:db8:b0::/48", Some("2h")),
    ("2001:db8:b1::9", None),
    ("2001:db8:b2::/64", Some("30m")),
];

fn outside_policy(iface: &str, deny_file: &Path, scratch: &Path) -> String {
    format!(
        r#"[[interface]]
name = "{iface}"
xdp_mode = "native"

[firewall]
default = "drop"

[firewall.deny]
sources = ["203.0.113.66", "198.51.100.0/24", "198.18.128.0/17", "2001:db8:bad::66", "2001:db8:dead::/48"]
files = ["{deny_file}"]

[[firewall.service]]
name = "ssh"
proto = "tcp"
ports = [{SSH}]
from = ["198.18.0.0/16", "2001:db8:a::/48"]

[[firewall.service]]
name = "db"
proto = "tcp"
ports = [{DB}]
from = ["198.18.0.0/17", "2001:db8:a:8000::/49"]

[[firewall.service]]
name = "web"
proto = "tcp"
ports = [{web0}, {web1}]

[[firewall.service]]
name = "dns"
proto = "udp"
ports = [{DNS}]
from = ["198.18.0.0/16", "2001:db8:a::/48"]

[vpn]
listen_port = {WG}
address = "10.78.0.1/24"
private_key_file = "{scratch}/wg.key"
peers_file = "{scratch}/peers.toml"

[detection.port_scan]
distinct_ports = 65535
"#,
        deny_file = deny_file.display(),
        scratch = scratch.display(),
        web0 = WEB[0],
        web1 = WEB[1],
    )
}

const DENY_FILE: &str = "# written by the explain agreement test\n\
100.72.0.0/13\n\
2001:db8:e00::/40\n";

/// A random address inside `net`; for IPv6, the host part is random in its low 64 bits.
fn address_in(rng: &mut Rng, net: &str) -> Result<IpAddr> {
    let net: ipnet_lite::Net = net.parse()?;
    Ok(net.random(rng))
}

/// A tiny prefix type, so that the test needs no other crate: an address and a length.
mod ipnet_lite {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    use anyhow::{bail, Context, Result};

    use super::Rng;

    pub struct Net {
        pub addr: IpAddr,
        pub len: u32,
    }

    impl std::str::FromStr for Net {
        type Err = anyhow::Error;

        fn from_str(text: &str) -> Result<Net> {
            let (addr, len) = text
                .split_once('/')
                .with_context(|| format!("{text} is not a prefix"))?;
            let addr: IpAddr = addr.parse()?;
            let len: u32 = len.parse()?;
            let max = if addr.is_ipv4() { 32 } else { 128 };
            if len > max {
                bail!("{text}: the length is over {max}");
            }
            Ok(Net { addr, len })
        }
    }

    impl Net {
        pub fn random(&self, rng: &mut Rng) -> IpAddr {
            match self.addr {
                IpAddr::V4(a) => {
                    let bits = u32::from(a);
                    let host_mask = u32::MAX.checked_shr(self.len).unwrap_or(0);
                    let random = u32::try_from(rng.next() >> 32).unwrap_or(0);
                    IpAddr::V4(Ipv4Addr::from((bits & !host_mask) | (random & host_mask)))
                }
                IpAddr::V6(a) => {
                    let bits = u128::from(a);
                    let host_mask = u128::MAX.checked_shr(self.len).unwrap_or(0);
                    let random = u128::from(rng.next()) | (u128::from(rng.next() & 0xffff) << 64);
                    IpAddr::V6(Ipv6Addr::from((bits & !host_mask) | (random & host_mask)))
                }
            }
        }
    }
}

/// One packet from outside.
#[derive(Debug, Clone)]
struct OutsideCase {
    index: usize,
    /// Which network of [`NETS`] or [`ELSEWHERE`] the source was drawn from.
    net: &'static str,
    src: IpAddr,
    probe: Probe,
    syn: bool,
}

impl OutsideCase {
    fn command(&self) -> String {
        format!(
            "crmguard explain --json --from {} {}{}",
            self.src,
            self.probe,
            if self.syn { " --syn" } else { "" }
        )
    }
}

fn draw_probe(rng: &mut Rng) -> (Probe, bool) {
    let probe = match rng.below(10) {
        0 => Probe::Tcp(SSH),
        1 => Probe::Tcp(DB),
        2 => Probe::Tcp(*rng.pick(&WEB)),
        3 | 4 => Probe::Tcp(rng.port()),
        5 | 6 => Probe::Udp(WG),
        7 => Probe::Udp(DNS),
        8 => Probe::Udp(rng.port()),
        _ => Probe::Icmp,
    };
    let syn = matches!(probe, Probe::Tcp(_)) && rng.chance(70);
    (probe, syn)
}

/// Draws a case whose source has not been used yet (except for the /32 and /128 entries,
/// which are dropped before any rate limit counts their packets).
fn draw_outside(rng: &mut Rng, index: usize, used: &mut BTreeSet<IpAddr>) -> Result<OutsideCase> {
    loop {
        // About a third from the admin networks, a fifth from nowhere in particular, the rest
        // from the deny list and the bans.
        let (net, prefix) = match rng.below(100) {
            0..=34 => *rng.pick(&NETS[..2]),
            35..=54 => *rng.pick(&ELSEWHERE),
            _ => *rng.pick(&NETS[2..]),
        };
        let src = address_in(rng, prefix)?;
        let single = prefix.ends_with("/32") || prefix.ends_with("/128");
        if !single && !used.insert(src) {
            continue;
        }
        let (probe, syn) = draw_probe(rng);
        return Ok(OutsideCase {
            index,
            net,
            src,
            probe,
            syn,
        });
    }
}

/// The XDP counters of one interface slot, read straight from the pinned `cg_stats`.
struct Counters {
    stats: PerCpuArray<MapData, abi::Stats>,
    slot: u32,
}

type Snapshot = BTreeMap<(Action, Reason), u64>;

impl Counters {
    fn open(agent: &Agent) -> Result<PerCpuArray<MapData, abi::Stats>> {
        let path = agent.bpffs_dir().join("maps").join("cg_stats");
        let data =
            MapData::from_pin(&path).with_context(|| format!("opening {}", path.display()))?;
        Ok(PerCpuArray::try_from(aya::maps::Map::PerCpuArray(data))?)
    }

    fn read_slot(stats: &PerCpuArray<MapData, abi::Stats>, slot: u32) -> Result<Snapshot> {
        let mut out = Snapshot::new();
        for action in Action::ALL {
            for reason in Reason::ALL {
                let per_cpu = stats.get(&abi::stats_index(slot, action, reason), 0)?;
                let packets = per_cpu.iter().map(|s| s.packets).sum();
                out.insert((action, reason), packets);
            }
        }
        Ok(out)
    }

    fn read(&self) -> Result<Snapshot> {
        Counters::read_slot(&self.stats, self.slot)
    }
}

fn total(snapshot: &Snapshot) -> u64 {
    snapshot.values().sum()
}

/// The counters that moved between two snapshots, with how much.
fn moved(before: &Snapshot, after: &Snapshot) -> Vec<((Action, Reason), u64)> {
    after
        .iter()
        .filter_map(|(key, now)| {
            let was = before.get(key).copied().unwrap_or(0);
            (*now != was).then(|| (*key, now.wrapping_sub(was)))
        })
        .collect()
}

fn describe_moved(moved: &[((Action, Reason), u64)]) -> String {
    if moved.is_empty() {
        return "no counter moved".to_owned();
    }
    moved
        .iter()
        .map(|((action, reason), n)| format!("{}/{} +{n}", action.name(), reason.name()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Sends `frame` and returns the counters after the filter counted it.
fn send_and_count(
    raw: &RawSocket,
    counters: &Counters,
    before: &Snapshot,
    frame: &[u8],
) -> Result<Snapshot> {
    raw.send(frame)?;
    wait_for(COUNT, "the filter to count the frame", || {
        let now = counters.read()?;
        Ok((total(&now) > total(before)).then_some(now))
    })
}

/// Finds the counter slot of the filter's interface: the one a first frame moves.
fn find_slot(agent: &Agent, raw: &RawSocket) -> Result<Counters> {
    let stats = Counters::open(agent)?;
    let slots: Vec<Snapshot> = (0..abi::MAX_IFSLOTS)
        .map(|slot| Counters::read_slot(&stats, slot))
        .collect::<Result<_>>()?;
    let first = probe::ip_packet(
        IpAddr::V4(Ipv4Addr::new(45, 255, 255, 254)),
        IpAddr::V4(probe::HOST_V4),
        Probe::Tcp(9),
        true,
        Some(WG),
    )
    .context("building the first frame")?;
    raw.send(&probe::ethernet_frame(&first))?;
    let slot = wait_for(COUNT, "the first frame to be counted", || {
        for (slot, before) in (0..abi::MAX_IFSLOTS).zip(&slots) {
            if total(&Counters::read_slot(&stats, slot)?) > total(before) {
                return Ok(Some(slot));
            }
        }
        Ok(None)
    })?;
    Ok(Counters { stats, slot })
}

/// What a run of outside cases saw.
#[derive(Default)]
struct Tally {
    cases: usize,
    failures: Vec<String>,
    /// `verdict/reason` as `explain` gave it, with how many cases.
    seen: BTreeMap<String, usize>,
    /// Cases by the network of their source.
    by_net: BTreeMap<&'static str, usize>,
    /// Cases drawn again because other packets reached the filter with theirs.
    noisy: usize,
}

/// Runs `n` outside cases against the running agent: explain, send, compare.
fn outside_cases(
    agent: &Agent,
    raw: &RawSocket,
    rng: &mut Rng,
    used: &mut BTreeSet<IpAddr>,
    n: usize,
    mode: &str,
    tally: &mut Tally,
) -> Result<()> {
    let counters = find_slot(agent, raw)?;
    let mut before = counters.read()?;
    let mut done = 0;
    while done < n {
        let case = draw_outside(rng, tally.cases, used)?;
        let mut args = vec![
            "--from".to_owned(),
            case.src.to_string(),
            case.probe.to_string(),
        ];
        if case.syn {
            args.push("--syn".to_owned());
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let answer = explain(agent, &args)?;
        let ip = probe::ip_packet(
            case.src,
            probe::host_address(case.src),
            case.probe,
            case.syn,
            Some(WG),
        )
        .with_context(|| format!("building the packet of {case:?}"))?;
        let frame = probe::ethernet_frame(&ip);
        let after = send_and_count(raw, &counters, &before, &frame)
            .with_context(|| format!("case {}: {}", case.index, case.command()))?;
        let moved = moved(&before, &after);
        before = after;
        let [((action, reason), 1)] = moved.as_slice() else {
            // Something besides the frame reached the filter: this case proves nothing, draw
            // another one.
            tally.noisy += 1;
            ensure!(
                tally.noisy <= tally.cases / 20 + 5,
                "{} cases saw other packets besides their own; the last: {}: {}",
                tally.noisy,
                case.command(),
                describe_moved(&moved)
            );
            continue;
        };
        *tally
            .seen
            .entry(format!("{}/{}", answer.verdict, answer.reason))
            .or_default() += 1;
        *tally.by_net.entry(case.net).or_default() += 1;
        if answer.verdict != action.name() || answer.reason != reason.name() {
            tally.failures.push(format!(
                "case {} ({mode}, {} source): {}\n  explain: {} / {} ({})\n  filter:  {} / {}\n  answer: {}",
                case.index,
                case.net,
                case.command(),
                answer.verdict,
                answer.reason,
                answer.rule,
                action.name(),
                reason.name(),
                answer.json.trim()
            ));
        }
        tally.cases += 1;
        done += 1;
    }
    Ok(())
}

#[test]
fn outside_packets_agree_with_the_filter() -> Result<()> {
    if !privileged::require("explain::outside_packets_agree_with_the_filter") {
        return Ok(());
    }
    let started = Instant::now();
    let mut rng = Rng::from_env("explain::outside_packets_agree_with_the_filter")?;
    let n = cases(650)?;
    // IPv6 is off on the outside end: nothing but the test's frames reaches the filter.
    let t = Topology::ipv4_only(14, 3)?;
    let scratch = tempfile::tempdir()?;
    let deny_file = scratch.path().join("deny.txt");
    std::fs::write(&deny_file, DENY_FILE)?;
    let body = outside_policy(t.host_if.name(), &deny_file, scratch.path());
    let mut agent = Agent::start(&t.host, &body)?;
    for (net, ttl) in BANS {
        let mut args = vec!["ban", "add", net, "--reason", "explain agreement test"];
        if let Some(ttl) = ttl {
            args.extend_from_slice(&["--ttl", ttl]);
        }
        cli_ok(&agent, &args)?;
    }
    // The text answer, as an operator reads it (docs/OPERATIONS.md): SSH from outside the
    // admin network is dropped by default.
    let out = agent.cli(&["explain", "--from", "203.0.113.5", "tcp/22", "--syn"])?;
    let text = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success()
            && text.contains("policy:  in force (generation")
            && text.contains("verdict: drop\n")
            && text.contains("reason:  default_drop\n"),
        "`crmguard explain --from 203.0.113.5 tcp/22 --syn`: {out:?}"
    );
    let raw = RawSocket::open(&t.out, t.out_if.name())?;
    let mut used = BTreeSet::new();
    let mut tally = Tally::default();
    let monitor = n / 5;
    outside_cases(
        &agent,
        &raw,
        &mut rng,
        &mut used,
        n - monitor,
        "enforce",
        &mut tally,
    )?;

    // The same policy in monitor mode: what enforce drops is counted as would_drop. The bans
    // are kept in the state directory across the restart.
    agent.stop()?;
    let text = std::fs::read_to_string(agent.config_path())?;
    ensure!(
        text.contains("mode = \"enforce\"\n"),
        "the harness config has no enforce mode line"
    );
    std::fs::write(
        agent.config_path(),
        text.replacen("mode = \"enforce\"\n", "mode = \"monitor\"\n", 1),
    )?;
    agent.spawn()?;
    agent.wait_ready()?;
    outside_cases(
        &agent, &raw, &mut rng, &mut used, monitor, "monitor", &mut tally,
    )?;

    eprintln!(
        "explain::outside_packets_agree_with_the_filter: {} cases ({monitor} in monitor mode) in {:.1?}, {} disagreements, {} redrawn for other packets\n  verdicts: {:?}\n  sources: {:?}",
        tally.cases,
        started.elapsed(),
        tally.failures.len(),
        tally.noisy,
        tally.seen,
        tally.by_net
    );
    if !tally.failures.is_empty() {
        bail!(
            "{} of {} packets from outside disagree with `crmguard explain`:\n{}",
            tally.failures.len(),
            tally.cases,
            tally.failures.join("\n")
        );
    }
    Ok(())
}

// ---- from a peer: the identity ACL ----------------------------------------------------------

/// TCP ports the roles are about; a server listens on each of them on the gateway.
const PEER_PORTS: [u16; 7] = [8080, 5432, 9000, 7001, 2222, 3389, 6379];
/// The MFA portal's port.
const PORTAL: u16 = 8443;
/// How long an attempt through the tunnel may take to be answered. A disabled peer's attempts
/// wait this long for nothing: its handshakes are refused.
const TUNNEL_ANSWER: Duration = Duration::from_millis(400);

/// The peers of the lab, their roles, and whether their client connects.
struct LabPeer {
    spec: crate::vpn::PeerSpec,
    role: &'static str,
    enabled: bool,
}

/// The ports `role` allows, as [`peer_policy`] writes them: half the cases ask about them.
fn role_ports(role: &str) -> &'static [u16] {
    match role {
        "on_duty" => &[8080, 5432, 2222],
        "off_duty" => &[8080, 5432],
        _ => &[8080, 7001],
    }
}

const DAY_NAMES: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];

fn day(weekday: u8, ahead: u8) -> &'static str {
    DAY_NAMES[usize::from((weekday + ahead) % 7)]
}

/// Roles: `on_duty` (hours today and tomorrow, all day, so that a run across midnight keeps
/// them), `off_duty` (hours only on the day after tomorrow), `sales` (MFA), `none_allowed`
/// reaching nothing but what every peer reaches.
fn peer_policy(iface: &str, scratch: &Path, peers: &[LabPeer]) -> String {
    let today = crmguard_core::explain::week_time_now(SystemTime::now()).weekday;
    let mut body = format!(
        r#"[[interface]]
name = "{iface}"
xdp_mode = "native"

[firewall]
default = "drop"

[vpn]
listen_port = {WG}
address = "10.77.0.1/24"
private_key_file = "{scratch}/wg.key"
peers_file = "{scratch}/peers.toml"

[mfa]
issuer = "ACME CRM"
portal_port = {PORTAL}
session = "12h"
idle = "30m"

[[role]]
name = "on_duty"
allow = ["tcp/8080", "tcp/5432", "tcp/2222"]
hours = "{d0},{d1} 00:00-24:00"

[[role]]
name = "off_duty"
allow = ["tcp/8080", "tcp/5432"]
hours = "{d2} 00:00-24:00"

[[role]]
name = "sales"
allow = ["tcp/8080", "tcp/7001"]
mfa = true

"#,
        scratch = scratch.display(),
        d0 = day(today, 0),
        d1 = day(today, 1),
        d2 = day(today, 2),
    );
    for peer in peers {
        body.push_str(&format!(
            "[[peer]]\nname = \"{}\"\npublic_key = \"{}\"\naddress = \"{}\"\nrole = \"{}\"\nenabled = {}\n\n",
            peer.spec.name,
            peer.spec.keys.public,
            peer.spec.v4(),
            peer.role,
            peer.enabled,
        ));
    }
    body
}

/// What happened to a peer's packet.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    /// It reached what it was sent to: the server on the port, the portal, the echo reply.
    Reached(&'static str),
    /// Refused at once or never answered; `reason` is the ACL's, from the metrics.
    Denied { how: String, reason: Option<String> },
}

/// The ACL's denials so far, by reason. The counters are whole numbers of packets, exact in
/// an f64 far beyond what a test counts.
fn denials(agent: &Agent) -> Result<BTreeMap<&'static str, f64>> {
    let text = agent.metrics()?;
    Ok(crmguard_core::acl::DenyReason::ALL
        .iter()
        .map(|reason| {
            let packets = crmguard_lab::agent::metric_value(
                &text,
                "crmguard_acl_denied_by_reason_total",
                &[("reason", reason.as_str())],
            )
            .unwrap_or(0.0);
            (reason.as_str(), packets)
        })
        .collect())
}

fn denial_delta(
    before: &BTreeMap<&'static str, f64>,
    after: &BTreeMap<&'static str, f64>,
) -> Vec<(&'static str, f64)> {
    after
        .iter()
        .filter_map(|(reason, now)| {
            let was = before.get(reason).copied().unwrap_or(0.0);
            (*now != was).then(|| (*reason, now - was))
        })
        .collect()
}

fn server_banner(port: u16) -> String {
    format!("explain agreement test, port {port}\n")
}

/// Sends `probe` from the peer's namespace to the gateway and says what happened.
fn try_through_tunnel(ns: &crmguard_lab::netns::NetNs, probe: Probe) -> Result<Outcome> {
    let gateway = IpAddr::V4(crate::vpn::GATEWAY4);
    Ok(match probe {
        Probe::Icmp => {
            if crate::vpn::ping(ns, gateway, TUNNEL_ANSWER)? {
                Outcome::Reached("echo")
            } else {
                Outcome::Denied {
                    how: "no echo reply".to_owned(),
                    reason: None,
                }
            }
        }
        Probe::Tcp(PORTAL) => {
            match crmguard_lab::net::http_get(ns, std::net::SocketAddr::new(gateway, PORTAL), "/") {
                Ok(_) => Outcome::Reached("mfa_portal"),
                Err(e) => Outcome::Denied {
                    how: format!("{e:#}"),
                    reason: None,
                },
            }
        }
        Probe::Tcp(port) => {
            let dst = std::net::SocketAddr::new(gateway, port);
            match crmguard_lab::net::tcp_connect(ns, None, dst, TUNNEL_ANSWER)? {
                crmguard_lab::net::TcpOutcome::Connected { banner } => {
                    ensure!(
                        banner == server_banner(port),
                        "tcp/{port} answered with {banner:?}, not its server's banner"
                    );
                    Outcome::Reached("service")
                }
                other => Outcome::Denied {
                    how: format!("{other:?}"),
                    reason: None,
                },
            }
        }
        Probe::Udp(_) => bail!("the peer cases send no UDP"),
    })
}

/// A TOTP session for `name`, opened through the portal from the peer's namespace.
fn open_session(agent: &Agent, ns: &crmguard_lab::netns::NetNs, name: &str) -> Result<()> {
    let out = agent.cli(&["mfa", "enroll", name])?;
    ensure!(out.status.success(), "mfa enroll {name}: {out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let uri = stdout
        .lines()
        .find(|l| l.starts_with("otpauth://"))
        .with_context(|| format!("no otpauth URI in:\n{stdout}"))?;
    let secret = crmguard_lab::totp::secret_of_uri(uri)?;
    let code = crmguard_lab::totp::code_now(&secret)?;
    let mut cmd = std::process::Command::new("curl");
    cmd.args([
        "-sS",
        "-m",
        "5",
        "-o",
        "-",
        "-w",
        "\n%{http_code}",
        "-X",
        "POST",
        "-H",
        "Content-Type: application/json",
        "--data",
        &format!("{{\"code\":\"{code}\"}}"),
        &format!("http://{}:{PORTAL}/session", crate::vpn::GATEWAY4),
    ]);
    let out = process::output_in(ns, cmd)?;
    let text = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success() && text.trim_end().ends_with("200"),
        "opening {name}'s session at the portal: {text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

#[test]
fn peer_packets_agree_with_the_acl() -> Result<()> {
    if !privileged::require("explain::peer_packets_agree_with_the_acl") {
        return Ok(());
    }
    crate::vpn::require_tools()?;
    privileged::require_tools(&[("curl", "curl")])?;
    let started = Instant::now();
    let mut rng = Rng::from_env("explain::peer_packets_agree_with_the_acl")?;
    let n = cases(400)?;
    let t = Topology::ipv4_only(15, 1)?;
    let scratch = tempfile::tempdir()?;
    let peers = [
        ("carol", "on_duty", true),
        ("erin", "off_duty", true),
        ("alice", "sales", true),
        ("bob", "sales", true),
        ("dave", "on_duty", false),
    ]
    .into_iter()
    .zip(2u8..)
    .map(|((name, role, enabled), last)| {
        Ok(LabPeer {
            spec: crate::vpn::PeerSpec::new(name, last)?,
            role,
            enabled,
        })
    })
    .collect::<Result<Vec<_>>>()?;
    let body = peer_policy(t.host_if.name(), scratch.path(), &peers);
    let agent = Agent::start(&t.host, &body)?;
    let gateway = crate::vpn::gateway_key(&agent)?;
    let _servers = PEER_PORTS
        .iter()
        .map(|&port| crmguard_lab::net::TcpServer::start(&t.host, port, &server_banner(port)))
        .collect::<Result<Vec<_>>>()?;

    // Each peer has a namespace and a link of its own, so that their tunnels' routes do not
    // meet; the first uses the topology's outside namespace.
    let mut links = Vec::new();
    for k in 1..peers.len() {
        let y = u8::try_from(2 * k).context("link number")?;
        links.push(crate::vpn::second_link(&t, 15, y)?);
    }
    let mut namespaces = vec![(&t.out, t.addrs.host4)];
    namespaces.extend(links.iter().map(|(ns, _, _, host)| (ns, *host)));
    let mut clients = Vec::new();
    for (peer, (ns, host)) in peers.iter().zip(&namespaces) {
        clients.push(
            peer.spec
                .connect(ns, &gateway, crate::vpn::gateway_endpoint(*host))?,
        );
        if peer.enabled {
            crate::vpn::wait_reachable(ns, IpAddr::V4(crate::vpn::GATEWAY4))?;
        }
    }
    let alice = peers
        .iter()
        .position(|p| p.spec.name == "alice")
        .context("alice")?;
    open_session(&agent, namespaces[alice].0, "alice")?;

    let mut failures = Vec::new();
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut before = denials(&agent)?;
    for index in 0..n {
        // The disabled peer's attempts each wait for nothing: a few of them show it.
        let who = if rng.chance(4) {
            peers.len() - 1
        } else {
            rng.below(peers.len() - 1)
        };
        let peer = &peers[who];
        let probe = match rng.below(100) {
            0..=34 => Probe::Tcp(*rng.pick(role_ports(peer.role))),
            35..=69 => Probe::Tcp(*rng.pick(&PEER_PORTS)),
            70..=84 => Probe::Tcp(PORTAL),
            _ => Probe::Icmp,
        };
        let command = format!("crmguard explain --json --peer {} {probe}", peer.spec.name);
        let answer = explain(&agent, &["--peer", peer.spec.name, &probe.to_string()])?;
        let mut outcome = try_through_tunnel(namespaces[who].0, probe)
            .with_context(|| format!("case {index}: {command}"))?;
        // A denial is counted before the reset leaves; a packet that never reached the ACL
        // (the disabled peer's) is counted nowhere, so waiting for it would only time out.
        let after = if let Outcome::Denied { reason, .. } = &mut outcome {
            let counted = if peer.enabled {
                wait_for(COUNT, "the ACL to count the denial", || {
                    let now = denials(&agent)?;
                    Ok((now.values().sum::<f64>() > before.values().sum::<f64>()).then_some(now))
                })?
            } else {
                denials(&agent)?
            };
            if let [(moved, 1.0)] = denial_delta(&before, &counted).as_slice() {
                *reason = Some((*moved).to_owned());
            }
            counted
        } else {
            denials(&agent)?
        };
        let delta = denial_delta(&before, &after);
        before = after;
        let (verdict, reason) = match &outcome {
            Outcome::Reached(reason) if delta.is_empty() => ("pass", (*reason).to_owned()),
            Outcome::Reached(reason) => (
                "pass",
                format!("{reason}, yet the ACL counted denials {delta:?}"),
            ),
            Outcome::Denied {
                reason: Some(r), ..
            } => ("drop", r.clone()),
            // The disabled peer: the endpoint refuses its handshakes, so none of its packets
            // reaches the ACL, and nothing reaches the gateway. That is the drop `explain`
            // names `peer_disabled` (the ACL's own check, behind the handshake's).
            Outcome::Denied { reason: None, how }
                if !peer.enabled && delta.is_empty() && how != "Refused" =>
            {
                ("drop", "peer_disabled".to_owned())
            }
            Outcome::Denied { reason: None, how } => (
                "drop",
                format!("unknown ({how}; the ACL counted {delta:?})"),
            ),
        };
        *seen
            .entry(format!("{}/{}", answer.verdict, answer.reason))
            .or_default() += 1;
        if answer.verdict != verdict || answer.reason != reason {
            failures.push(format!(
                "case {index} (peer {}, role {}): {command}\n  explain: {} / {} ({})\n  tunnel:  {verdict} / {reason} ({outcome:?})\n  answer: {}",
                peer.spec.name,
                peer.role,
                answer.verdict,
                answer.reason,
                answer.rule,
                answer.json.trim()
            ));
        }
    }
    drop(clients);
    eprintln!(
        "explain::peer_packets_agree_with_the_acl: {n} cases in {:.1?}, {} disagreements\n  verdicts: {seen:?}",
        started.elapsed(),
        failures.len()
    );
    if !failures.is_empty() {
        bail!(
            "{} of {n} packets from peers disagree with `crmguard explain`:\n{}",
            failures.len(),
            failures.join("\n")
        );
    }
    Ok(())
}
