//! `cargo xtask bench xdp`: the per-packet cost of crmguard's XDP program,
//! side by side with the empty program (the BPF_PROG_TEST_RUN floor) and
//! xdp-filter from Debian's xdp-tools (all features, deny mode).
//!
//! Every figure is the kernel's own average over `REPEAT` runs of one frame
//! (BPF_PROG_TEST_RUN); the programs are measured in alternation, `ROUNDS`
//! times. A ratio is the median of the ratios of each round, each between
//! measurements taken one after the other: a drift of the machine's speed
//! (a shared host, frequency) moves both sides of a round alike, where a
//! ratio of two medians would take it in whole. Ratios from one run are what
//! count: absolute nanoseconds drift between runs. `xdp.json` keeps every
//! round.

mod attach;

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use aya::maps::{HashMap, Map, MapData};
use aya::programs::{TestRun, TestRunOptions, Xdp};
use aya::{Ebpf, EbpfLoader};
use crmguard_core::abi;
use crmguard_core::policy;
use crmguard_lab::cpu::Pinned;
use crmguard_lab::frames;
use crmguard_lab::netns::NetNs;

const REPEAT: u32 = 1_000_000;
const ROUNDS: usize = 15;
/// Rounds of `CRMGUARD_BENCH_QUICK=1`, for iterating on the program.
const QUICK_ROUNDS: usize = 5;

/// The empty programs: each returns XDP_PASS (or XDP_DROP) and nothing else.
const EMPTY_PROGRAM: &str = r#"
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
SEC("xdp") int xdp_pass(struct xdp_md *ctx) { return XDP_PASS; }
SEC("xdp") int xdp_drop(struct xdp_md *ctx) { return XDP_DROP; }
char LICENSE[] SEC("license") = "GPL";
"#;

/// Writes a deny file of `hosts` single IPv4 addresses (in 10.0.0.0/8) and
/// `prefixes` /24 prefixes (from 11.0.0.0), the way a sysadmin would feed a
/// large block list to `firewall.deny.files`.
fn write_deny_file(path: &Path, hosts: u32, prefixes: u32) -> Result<()> {
    use std::fmt::Write as _;
    let mut text = String::with_capacity(usize::try_from(hosts + prefixes)? * 16);
    for i in 0..hosts {
        let _ = writeln!(text, "{}", Ipv4Addr::from(0x0a00_0000u32 + i * 7 + 1));
    }
    for i in 0..prefixes {
        let _ = writeln!(text, "{}/24", Ipv4Addr::from(0x0b00_0000u32 + (i << 8)));
    }
    std::fs::write(path, text)?;
    Ok(())
}

/// The policy measured: a realistic CRM host (SSH from the admin network, the
/// customer portal from anywhere, a WireGuard port) with a deny list read
/// from `deny_file`.
fn policy_toml(deny_file: &Path) -> String {
    format!(
        r#"
[firewall]
default = "drop"
# Limits high enough that a million back-to-back test runs never exhaust a
# bucket: the bench measures the cost of checking them, not their effect.
[firewall.limits]
per_source_pps = 1000000000
per_source_burst = 1000000000
syn_per_source_per_s = 1000000000
global_syn_per_s = 1000000000
[firewall.deny]
sources = ["203.0.113.66", "198.51.100.0/24", "2001:db8:bad::/48"]
files = ["{}"]
[[firewall.service]]
name = "ssh"
proto = "tcp"
ports = [22]
from = ["192.0.2.0/24"]
[[firewall.service]]
name = "customer-portal"
proto = "tcp"
ports = [443]
[vpn]
listen_port = 51820
address = "10.77.0.1/24"
"#,
        deny_file.display()
    )
}

/// A TCP segment over IPv4 to 192.0.2.1 with `flags`, 54 bytes padded to the 64 of the
/// smallest Ethernet frame; don't-fragment set, as a real stack sends it.
fn tcp4(src: Ipv4Addr, sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    let header = frames::V4 {
        src,
        dst: frames::DST4,
        proto: 6,
        id: 1,
        options: 0,
        frag_off: 0x4000,
        tot_len_extra: 0,
    };
    let tcp = frames::tcp_segment(sport, dport, flags, 5, 0);
    let mut f = frames::eth(&[], frames::ETH_IP, &frames::ipv4(header, &tcp));
    f.resize(64, 0);
    f
}

/// A TCP SYN from `src` to `dport`.
fn tcp_syn(src: Ipv4Addr, dport: u16) -> Vec<u8> {
    tcp4(src, 40000, dport, frames::TCP_SYN)
}

/// A TCP segment (ACK) of a connection from `src` to `dport`.
fn tcp_ack(src: Ipv4Addr, dport: u16) -> Vec<u8> {
    tcp4(src, 40000, dport, frames::TCP_ACK)
}

/// A reply (ACK) from 198.18.0.1:443 to this host's 192.0.2.1:40000.
fn tcp_reply() -> Vec<u8> {
    tcp4(Ipv4Addr::new(198, 18, 0, 1), 443, 40000, frames::TCP_ACK)
}

/// The flow the host opened that `tcp_reply` answers, as tc egress records it.
fn reply_flow() -> (abi::FlowKey, abi::Flow) {
    let key = abi::FlowKey {
        local: Ipv4Addr::new(192, 0, 2, 1).to_ipv6_mapped().octets(),
        remote: Ipv4Addr::new(198, 18, 0, 1).to_ipv6_mapped().octets(),
        local_port_be: 40000u16.to_be_bytes(),
        remote_port_be: 443u16.to_be_bytes(),
        proto: 6,
        family: 4,
        _pad: 0,
    };
    let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME).map(|t| {
        u64::try_from(t.tv_sec()).unwrap_or(0) * 1_000_000_000
            + u64::try_from(t.tv_nsec()).unwrap_or(0)
    });
    (
        key,
        abi::Flow {
            expires_ns: now.unwrap_or(0) + 3_600_000_000_000,
        },
    )
}

struct Case {
    name: &'static str,
    frame: Vec<u8>,
    expect: u32,
    /// The goal for crmguard / xdp-filter (README, Performance).
    goal: f64,
}

/// The goal for any case with 1.1M deny entries / with 1k.
const GOAL_LARGE_VS_SMALL: f64 = 1.1;

/// The goal for a policy of 1.1M deny entries, from its file to the kernel, in seconds.
const GOAL_LARGE_LOAD_S: f64 = 5.0;

fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "allowed service packet",
            frame: tcp_ack(Ipv4Addr::new(203, 0, 113, 5), 443),
            expect: 2,
            goal: 0.8,
        },
        Case {
            name: "allowed service SYN",
            frame: tcp_syn(Ipv4Addr::new(203, 0, 113, 5), 443),
            expect: 2,
            goal: 1.0,
        },
        Case {
            name: "denied /32",
            frame: tcp_syn(Ipv4Addr::new(203, 0, 113, 66), 443),
            expect: 1,
            goal: 0.5,
        },
        Case {
            name: "default drop",
            frame: tcp_syn(Ipv4Addr::new(203, 0, 113, 5), 8080),
            expect: 1,
            goal: 0.6,
        },
        Case {
            name: "established reply",
            frame: tcp_reply(),
            expect: 2,
            goal: 0.8,
        },
    ]
}

fn test_run(program: &Xdp, frame: &[u8]) -> Result<(u32, f64)> {
    let result = program
        .test_run(TestRunOptions {
            data_in: Some(frame),
            repeat: REPEAT,
            ..TestRunOptions::default()
        })
        .context("BPF_PROG_TEST_RUN")?;
    Ok((result.return_value, result.duration.as_nanos() as f64))
}

fn xdp_program<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut Xdp> {
    let program: &mut Xdp = ebpf
        .program_mut(name)
        .with_context(|| format!("no program {name}"))?
        .try_into()?;
    Ok(program)
}

/// crmguard's program loaded against its own pinned maps holding `policy`.
struct Crmguard {
    dir: PathBuf,
    ebpf: Ebpf,
}

/// Seconds spent loading a policy.
#[derive(Debug, Clone, Copy)]
struct LoadTimes {
    config: f64,
    apply: f64,
}

impl Crmguard {
    fn load(work: &Path, tag: &str, hosts: u32, prefixes: u32) -> Result<(Crmguard, LoadTimes)> {
        let dir = PathBuf::from(format!("/sys/fs/bpf/cgbench-{}-{tag}", std::process::id()));
        let _ = crmguard_datapath::uninstall(&dir);
        let (ebpf, mut maps) =
            crmguard_datapath::load_for_test(&dir).context("loading crmguard's XDP program")?;
        let deny_file = work.join(format!("deny-{tag}.txt"));
        write_deny_file(&deny_file, hosts, prefixes)?;
        let config_file = work.join(format!("bench-{tag}.toml"));
        std::fs::write(&config_file, policy_toml(&deny_file))?;

        let started = std::time::Instant::now();
        let config =
            crmguard_core::config::load(&config_file).map_err(|e| anyhow::anyhow!("{e}"))?;
        let compiled = policy::compile(&config)?;
        let config_s = started.elapsed().as_secs_f64();
        let started = std::time::Instant::now();
        maps.apply(&compiled, 1)?;
        let apply_s = started.elapsed().as_secs_f64();
        eprintln!(
            "  {tag}: {hosts} addresses + {prefixes} prefixes: config read and compiled in {config_s:.2} s, swapped into the kernel in {apply_s:.2} s"
        );

        let (key, flow) = reply_flow();
        let abi::FlowPlace::Tcp4(short) = key.place() else {
            anyhow::bail!("the reply's flow is not an IPv4 connection");
        };
        let flows = MapData::from_pin(dir.join("maps/cg_flows4"))?;
        let mut flows: HashMap<MapData, abi::Flow4Key, abi::Flow> =
            HashMap::try_from(Map::from_map_data(flows)?)?;
        flows.insert(short, flow, 0)?;
        Ok((
            Crmguard { dir, ebpf },
            LoadTimes {
                config: config_s,
                apply: apply_s,
            },
        ))
    }
}

impl Drop for Crmguard {
    fn drop(&mut self) {
        let _ = crmguard_datapath::uninstall(&self.dir);
    }
}

/// xdp-filter (all features, deny mode) loaded in a private network namespace; deleting the
/// namespace on drop takes its mount of bpffs and xdp-filter's program with it.
struct XdpFilter {
    prog_id: u32,
    _netns: NetNs,
}

impl XdpFilter {
    fn load(work: &Path) -> Result<Option<XdpFilter>> {
        if Command::new("xdp-filter").arg("--help").output().is_err() {
            eprintln!(
                "  xdp-filter is not installed (apt-get install xdp-tools): its column stays empty"
            );
            return Ok(None);
        }
        let netns = NetNs::named(&format!("cgbench-{}", std::process::id()))?;
        // `ip netns exec`, unlike the agent's nsenter, gives each script a mount namespace of
        // its own, so the bpffs it mounts and xdp-filter's pins stay out of the host's.
        let sh = |script: &str| netns.exec(&["sh", "-c", script]);
        sh("ip link add xb0 type veth peer name xb1 && ip link set xb0 up && ip link set xb1 up")?;
        let ids = sh(&format!(
            "mount -t bpf bpf /sys/fs/bpf && xdp-filter load -m skb -p deny xb0 >/dev/null && \
             xdp-filter ip 203.0.113.66 >/dev/null && xdp-filter port 8080 >/dev/null && \
             bpftool -j prog show > {0}/progs.json && cat {0}/progs.json",
            work.display()
        ))?;
        let progs: serde_json::Value = serde_json::from_str(&ids).context("bpftool prog show")?;
        let prog_id = progs
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| {
                p["type"] == "xdp" && p["name"].as_str().is_some_and(|n| n.starts_with("xdpfilt"))
            })
            .filter_map(|p| p["id"].as_u64())
            .max()
            .context("xdp-filter's program not found in bpftool's list")?;
        Ok(Some(XdpFilter {
            prog_id: u32::try_from(prog_id)?,
            _netns: netns,
        }))
    }

    fn run(&self, work: &Path, frame: &[u8]) -> Result<f64> {
        let file = work.join("frame.bin");
        std::fs::write(&file, frame)?;
        let out = Command::new("bpftool")
            .args(["prog", "run", "id", &self.prog_id.to_string(), "data_in"])
            .arg(&file)
            .args(["repeat", &REPEAT.to_string()])
            .output()
            .context("bpftool prog run")?;
        let text = String::from_utf8_lossy(&out.stdout);
        let ns = text
            .split("duration (average):")
            .nth(1)
            .and_then(|rest| {
                rest.trim()
                    .strip_suffix("ns")
                    .or_else(|| rest.split("ns").next())
            })
            .and_then(|n| n.trim().parse::<f64>().ok())
            .with_context(|| format!("cannot read bpftool's duration from: {text}"))?;
        Ok(ns)
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// The median of the ratios `a[i] / b[i]` of rounds measured one after the other.
pub(crate) fn paired_ratio(a: &[f64], b: &[f64]) -> f64 {
    median(a.iter().zip(b).map(|(a, b)| a / b).collect())
}

/// One row of the table: the ns of every round, in order.
#[derive(Debug)]
struct Row {
    name: String,
    goal: f64,
    crmguard: Vec<f64>,
    empty: Vec<f64>,
    /// Empty when xdp-filter is not installed.
    xdp_filter: Vec<f64>,
    /// crmguard with 1,000,000 addresses and 100,000 prefixes denied.
    large: Vec<f64>,
}

impl Row {
    fn vs_filter(&self) -> Option<f64> {
        (!self.xdp_filter.is_empty()).then(|| paired_ratio(&self.crmguard, &self.xdp_filter))
    }

    fn vs_empty(&self) -> f64 {
        paired_ratio(&self.crmguard, &self.empty)
    }

    fn large_vs_small(&self) -> f64 {
        paired_ratio(&self.large, &self.crmguard)
    }
}

pub fn run(out_dir: &Path) -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("the XDP bench loads BPF programs: run it as root (sudo -E cargo xtask bench xdp)");
    }
    std::fs::create_dir_all(out_dir)?;
    let empty_src = out_dir.join("xdp_pass.c");
    let empty_obj = out_dir.join("xdp_pass.o");
    std::fs::write(&empty_src, EMPTY_PROGRAM)?;
    let multiarch = Command::new("gcc").arg("-print-multiarch").output()?;
    let multiarch = String::from_utf8_lossy(&multiarch.stdout).trim().to_owned();
    let status = Command::new(std::env::var("CLANG").unwrap_or_else(|_| "clang".into()))
        .args([
            "-g",
            "-O2",
            "-target",
            "bpf",
            &format!("-I/usr/include/{multiarch}"),
            "-c",
        ])
        .arg(&empty_src)
        .arg("-o")
        .arg(&empty_obj)
        .status()
        .context("clang")?;
    if !status.success() {
        bail!("clang failed to build the empty program");
    }
    let mut empty = EbpfLoader::new().load_file(&empty_obj)?;
    xdp_program(&mut empty, "xdp_pass")?.load()?;
    xdp_program(&mut empty, "xdp_drop")?.load()?;

    eprintln!("loading crmguard (1,000 and 1,100,000 deny entries) and xdp-filter ...");
    let (mut small, _) = Crmguard::load(out_dir, "1k", 1_000, 0)?;
    // CRMGUARD_BENCH_QUICK=1 skips the large deny set and the real attach, for
    // iterating on the program; the table then repeats the small one in that column.
    let quick = std::env::var("CRMGUARD_BENCH_QUICK").is_ok_and(|v| v == "1");
    let (hosts, prefixes) = if quick {
        (1_000, 0)
    } else {
        (1_000_000, 100_000)
    };
    let (mut large, large_times) = Crmguard::load(out_dir, "1m", hosts, prefixes)?;
    let filter = XdpFilter::load(out_dir)?;

    let rounds = if quick { QUICK_ROUNDS } else { ROUNDS };
    // Every program on one CPU (bpftool inherits it): on a virtual machine the CPUs can run at
    // different speeds, and a round that moved between them would compare two machines.
    let pinned = Pinned::last_allowed()?;
    let mut rows = Vec::new();
    for case in cases() {
        let (mut ours, mut floor, mut theirs, mut big) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for _ in 0..rounds {
            let (verdict, ns) = test_run(
                xdp_program(&mut small.ebpf, crmguard_datapath::XDP_PROGRAM)?,
                &case.frame,
            )?;
            if verdict != case.expect {
                bail!(
                    "{}: crmguard returned {verdict}, expected {}",
                    case.name,
                    case.expect
                );
            }
            ours.push(ns);
            floor.push(test_run(xdp_program(&mut empty, "xdp_pass")?, &case.frame)?.1);
            if let Some(filter) = &filter {
                theirs.push(filter.run(out_dir, &case.frame)?);
            }
            let (verdict, ns) = test_run(
                xdp_program(&mut large.ebpf, crmguard_datapath::XDP_PROGRAM)?,
                &case.frame,
            )?;
            if verdict != case.expect {
                bail!(
                    "{} (1M entries): crmguard returned {verdict}, expected {}",
                    case.name,
                    case.expect
                );
            }
            big.push(ns);
        }
        rows.push(Row {
            goal: case.goal,
            name: case.name.to_owned(),
            crmguard: ours,
            empty: floor,
            xdp_filter: theirs,
            large: big,
        });
    }

    drop(pinned);
    println!();
    println!(
        "XDP per-packet cost (BPF_PROG_TEST_RUN, {REPEAT} repeats, {rounds} alternating rounds: \
         median ns, and ratios as the median of each round's ratio)"
    );
    println!(
        "{:<24} {:>9} {:>8} {:>11} {:>9} {:>8} {:>13} {:>6} {:>11} {:>6}",
        "case",
        "crmguard",
        "empty",
        "xdp-filter",
        "1.1M deny",
        "x empty",
        "x xdp-filter",
        "goal",
        "1.1M / 1k",
        "goal"
    );
    let mut json = Vec::new();
    for row in &rows {
        let vs_filter = row.vs_filter();
        let filter_ns = (!row.xdp_filter.is_empty()).then(|| median(row.xdp_filter.clone()));
        println!(
            "{:<24} {:>7.1}ns {:>6.1}ns {:>11} {:>7.1}ns {:>8.2} {:>13} {:>6} {:>11.2} {:>6}",
            row.name,
            median(row.crmguard.clone()),
            median(row.empty.clone()),
            filter_ns.map_or("-".into(), |f| format!("{f:.1}ns")),
            median(row.large.clone()),
            row.vs_empty(),
            vs_filter.map_or("-".into(), |r| format!("{r:.2}")),
            format!("<={:.1}", row.goal),
            row.large_vs_small(),
            format!("<={GOAL_LARGE_VS_SMALL:.1}"),
        );
        json.push(serde_json::json!({
            "case": row.name,
            "crmguard_ns": median(row.crmguard.clone()),
            "empty_ns": median(row.empty.clone()),
            "xdp_filter_ns": filter_ns,
            "ratio_vs_empty": row.vs_empty(),
            "ratio_vs_xdp_filter": vs_filter,
            "goal_vs_xdp_filter": row.goal,
            "large_deny_ns": median(row.large.clone()),
            "ratio_large_vs_small": row.large_vs_small(),
            "rounds_ns": {
                "crmguard": row.crmguard,
                "empty": row.empty,
                "xdp_filter": row.xdp_filter,
                "large_deny": row.large,
            },
        }));
    }
    let load_s = large_times.config + large_times.apply;
    // The goal is for the full set; a quick run's small one is only reported.
    let goal = if quick {
        String::new()
    } else {
        format!(
            " (goal <= {GOAL_LARGE_LOAD_S:.0} s): {}",
            crate::vpn::verdict(Some(load_s), GOAL_LARGE_LOAD_S, false)
        )
    };
    println!(
        "\npolicy of {hosts} addresses + {prefixes} prefixes: config read and compiled in {:.2} s, \
         swapped into the kernel in {:.2} s: {load_s:.2} s in all{goal}",
        large_times.config, large_times.apply,
    );
    json.push(serde_json::json!({
        "case": format!("load {hosts} addresses + {prefixes} prefixes"),
        "config_seconds": large_times.config,
        "apply_seconds": large_times.apply,
        "goal_seconds": GOAL_LARGE_LOAD_S,
    }));
    drop(filter);
    if quick {
        println!("\nCRMGUARD_BENCH_QUICK=1: no real-attach rows");
    } else if attach::tools_present() {
        json.extend(real_attach(out_dir, &mut small, &mut empty)?);
    } else {
        println!("\ntrafgen or ethtool missing (apt-get install netsniff-ng ethtool): no real-attach rows");
    }
    let path = out_dir.join("xdp.json");
    std::fs::write(&path, serde_json::to_string_pretty(&json)?)?;
    println!("\nwritten to {}", path.display());
    drop(small);
    drop(large);
    Ok(())
}

fn prog_id(ebpf: &mut Ebpf, name: &str) -> Result<u32> {
    Ok(xdp_program(ebpf, name)?.info()?.id())
}

/// The real-attach rows: packets per second through native XDP on a veth, trafgen on one CPU
/// (see attach.rs), for an admitted packet, a dropped one, and admitted packets from a new
/// spoofed source each.
fn real_attach(
    out_dir: &Path,
    small: &mut Crmguard,
    empty: &mut Ebpf,
) -> Result<Vec<serde_json::Value>> {
    let ours = prog_id(&mut small.ebpf, crmguard_datapath::XDP_PROGRAM)?;
    let pass = prog_id(empty, "xdp_pass")?;
    let drop_all = prog_id(empty, "xdp_drop")?;
    let pair = attach::Pair::new()?;
    let has_filter = Command::new("xdp-filter").arg("--help").output().is_ok();
    let src = Ipv4Addr::new(203, 0, 113, 5);
    let cases = [
        (
            "pass: allowed service packet",
            tcp_ack(src, 443),
            false,
            pass,
        ),
        ("drop: default drop", tcp_syn(src, 8080), false, drop_all),
        (
            "pass: spoofed sources (1 per packet)",
            tcp_ack(src, 443),
            true,
            pass,
        ),
    ];
    println!(
        "\nPackets per second on a real attach (native XDP on veth, trafgen on one CPU, median of 3)"
    );
    println!(
        "{:<38} {:>10} {:>10} {:>11} {:>8} {:>13} {:>10}",
        "case", "crmguard", "empty", "xdp-filter", "x empty", "x xdp-filter", "flatness"
    );
    let mut json = Vec::new();
    for (name, frame, spoof, floor) in cases {
        let attach_id = |id: u32| {
            move |pair: &attach::Pair| -> Result<()> {
                let _ = pair.detach();
                pair.attach(id)
            }
        };
        let mut crmguard = attach_id(ours);
        let mut empty_program = attach_id(floor);
        let mut xdp_filter = |pair: &attach::Pair| -> Result<()> {
            let _ = pair.detach();
            pair.rx_shell(
                "mount -t bpf bpf /sys/fs/bpf && xdp-filter load -m native -p deny cgxr >/dev/null && \
                 xdp-filter ip 203.0.113.66 >/dev/null && xdp-filter port 8080 >/dev/null",
            )
            .map(|_| ())
        };
        let mut programs: Vec<(&str, attach::Attacher<'_>)> =
            vec![("crmguard", &mut crmguard), ("empty", &mut empty_program)];
        if has_filter {
            programs.push(("xdp-filter", &mut xdp_filter));
        }
        let results = attach::compare(&pair, out_dir, &frame, spoof, &mut programs)?;
        let get = |label: &str| results.iter().find(|(l, _)| l == label).map(|(_, f)| *f);
        let ours = get("crmguard").context("crmguard's flood")?;
        let floor = get("empty").context("the empty program's flood")?;
        let theirs = get("xdp-filter");
        // Packets per second: more is better, so the ratios are theirs over ours, as cost.
        let vs_empty = floor.pps / ours.pps;
        let vs_filter = theirs.map(|t| t.pps / ours.pps);
        println!(
            "{:<38} {:>10.0} {:>10.0} {:>11} {:>8.2} {:>13} {:>10.2}",
            name,
            ours.pps,
            floor.pps,
            theirs.map_or("-".into(), |t| format!("{:.0}", t.pps)),
            vs_empty,
            vs_filter.map_or("-".into(), |r| format!("{r:.2}")),
            ours.flatness,
        );
        json.push(serde_json::json!({
            "case": format!("real attach, {name}"),
            "crmguard_pps": ours.pps,
            "empty_pps": floor.pps,
            "xdp_filter_pps": theirs.map(|t| t.pps),
            "cost_vs_empty": vs_empty,
            "cost_vs_xdp_filter": vs_filter,
            "crmguard_slowest_over_fastest_half_second": ours.flatness,
        }));
    }
    println!("  x empty, x xdp-filter: crmguard's time per packet over theirs (their pps / crmguard's); flatness: crmguard's slowest half-second / its fastest");
    Ok(json)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ratio is the median of the ratios of each round, not the ratio of two medians.
    #[test]
    fn ratios_pair_the_rounds() {
        let ours = [50.0, 100.0, 100.0];
        let theirs = [100.0, 50.0, 200.0];
        assert_eq!(paired_ratio(&ours, &theirs), 0.5);
        assert_eq!(median(ours.to_vec()) / median(theirs.to_vec()), 1.0);
    }

    /// The frames are those every earlier run measured, byte for byte, so that figures stay
    /// comparable across runs.
    #[test]
    fn frames_are_the_measured_ones() {
        let syn_from_5_to_443: [u8; 54] = [
            0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2, 0x08, 0x00, // Ethernet
            0x45, 0, 0, 40, 0, 1, 0x40, 0, 64, 6, 0, 0, 203, 0, 113, 5, 192, 0, 2, 1, // IPv4
            0x9c, 0x40, 0x01, 0xbb, 0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0xff, 0xff, 0, 0, 0,
            0, // TCP
        ];
        let mut syn = syn_from_5_to_443.to_vec();
        syn.resize(64, 0);
        let mut ack = syn.clone();
        ack[47] = 0x10;
        let mut reply = ack.clone();
        reply[26..30].copy_from_slice(&[198, 18, 0, 1]);
        reply[34..38].copy_from_slice(&[0x01, 0xbb, 0x9c, 0x40]);
        let src = Ipv4Addr::new(203, 0, 113, 5);
        for (name, built, expected) in [
            ("syn", tcp_syn(src, 443), syn),
            ("ack", tcp_ack(src, 443), ack),
            ("reply", tcp_reply(), reply),
        ] {
            assert_eq!(built, expected, "{name}");
        }
    }
}
