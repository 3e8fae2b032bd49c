//! `cargo xtask bench xdp`: the per-packet cost of crmguard's XDP program,
//! side by side with the empty program (the BPF_PROG_TEST_RUN floor) and
//! xdp-filter from Debian's xdp-tools (all features, deny mode).
//!
//! Every figure is the kernel's own average over `REPEAT` runs of one frame
//! (BPF_PROG_TEST_RUN); the programs are measured in alternation, `ROUNDS`
//! times, and the medians compared. Ratios from one run are what count: the
//! machine is shared and absolute nanoseconds drift between runs.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use aya::programs::{TestRun, TestRunOptions, Xdp};
use aya::{Ebpf, EbpfLoader};
use crmguard::datapath;
use crmguard::policy;

const REPEAT: u32 = 1_000_000;
const ROUNDS: usize = 5;

/// The empty program: returns XDP_PASS and nothing else.
const EMPTY_PROGRAM: &str = r#"
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
SEC("xdp") int xdp_pass(struct xdp_md *ctx) { return XDP_PASS; }
char LICENSE[] SEC("license") = "GPL";
"#;

/// The policy measured: a realistic CRM host (SSH from the admin network, the
/// customer portal from anywhere, a WireGuard port) with a deny list of
/// `deny_hosts` single addresses and a few prefixes.
fn policy_toml(deny_hosts: u32) -> String {
    let mut sources: Vec<String> = (0..deny_hosts)
        .map(|i| {
            let [a, b, c, d] = (0x0a00_0000u32 + i * 7 + 1).to_be_bytes();
            format!("\"{}\"", Ipv4Addr::new(a, b, c, d))
        })
        .collect();
    sources.push("\"203.0.113.66\"".into());
    sources.push("\"198.51.100.0/24\"".into());
    sources.push("\"2001:db8:bad::/48\"".into());
    format!(
        r#"
[firewall]
default = "drop"
[firewall.deny]
sources = [{}]
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
        sources.join(",")
    )
}

/// A TCP SYN over IPv4 from `src` to `dport`, 54 bytes plus padding to 64.
fn tcp_syn(src: Ipv4Addr, dport: u16) -> Vec<u8> {
    let mut f = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2, 0x08, 0x00];
    f.extend_from_slice(&[0x45, 0, 0, 40, 0, 1, 0x40, 0, 64, 6, 0, 0]);
    f.extend_from_slice(&src.octets());
    f.extend_from_slice(&[192, 0, 2, 1]);
    f.extend_from_slice(&40000u16.to_be_bytes());
    f.extend_from_slice(&dport.to_be_bytes());
    f.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0xff, 0xff, 0, 0, 0, 0]);
    f.resize(64, 0);
    f
}

struct Case {
    name: &'static str,
    frame: Vec<u8>,
    expect: u32,
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "allowed service packet",
            frame: tcp_syn("203.0.113.5".parse().unwrap_or(Ipv4Addr::UNSPECIFIED), 443),
            expect: 2,
        },
        Case {
            name: "denied /32",
            frame: tcp_syn(Ipv4Addr::new(203, 0, 113, 66), 443),
            expect: 1,
        },
        Case {
            name: "default drop",
            frame: tcp_syn(Ipv4Addr::new(203, 0, 113, 5), 8080),
            expect: 1,
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

impl Crmguard {
    fn load(tag: &str, deny_hosts: u32) -> Result<Crmguard> {
        let dir = PathBuf::from(format!("/sys/fs/bpf/cgbench-{}-{tag}", std::process::id()));
        let _ = datapath::uninstall(&dir);
        let (ebpf, mut maps) =
            datapath::load_for_test(&dir).context("loading crmguard's XDP program")?;
        let config = crmguard::config::parse(&policy_toml(deny_hosts), Path::new("bench.toml"))
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let started = std::time::Instant::now();
        maps.apply(&policy::compile(&config)?, 1)?;
        eprintln!(
            "  policy with {deny_hosts} deny entries applied in {:.2} s",
            started.elapsed().as_secs_f64()
        );
        Ok(Crmguard { dir, ebpf })
    }
}

impl Drop for Crmguard {
    fn drop(&mut self) {
        let _ = datapath::uninstall(&self.dir);
    }
}

/// xdp-filter (all features, deny mode) loaded in a private network namespace.
struct XdpFilter {
    netns: String,
    prog_id: u32,
}

impl XdpFilter {
    fn load(work: &Path) -> Result<Option<XdpFilter>> {
        if Command::new("xdp-filter").arg("--help").output().is_err() {
            eprintln!(
                "  xdp-filter is not installed (apt-get install xdp-tools): its column stays empty"
            );
            return Ok(None);
        }
        let netns = format!("cgbench-{}", std::process::id());
        let sh = |script: &str| -> Result<String> {
            let out = Command::new("ip")
                .args(["netns", "exec", &netns, "sh", "-c", script])
                .output()
                .context("ip netns exec")?;
            if !out.status.success() {
                bail!(
                    "`{script}` failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        };
        let status = Command::new("ip").args(["netns", "add", &netns]).status()?;
        if !status.success() {
            bail!("cannot create netns {netns}");
        }
        let mut filter = XdpFilter {
            netns: netns.clone(),
            prog_id: 0,
        };
        sh("ip link add xb0 type veth peer name xb1 && ip link set xb0 up && ip link set xb1 up")?;
        // bpffs in that command's own mount namespace: xdp-filter pins there.
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
        filter.prog_id = u32::try_from(prog_id)?;
        Ok(Some(filter))
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

impl Drop for XdpFilter {
    fn drop(&mut self) {
        // The namespace's mount of bpffs and xdp-filter's program go with it.
        let _ = Command::new("ip")
            .args(["netns", "del", &self.netns])
            .status();
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// One row of the table: medians in ns.
#[derive(Debug)]
struct Row {
    name: String,
    crmguard: f64,
    empty: f64,
    xdp_filter: Option<f64>,
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

    eprintln!("loading crmguard (1,000 deny entries) and xdp-filter ...");
    let mut small = Crmguard::load("1k", 1_000)?;
    let filter = XdpFilter::load(out_dir)?;

    let mut rows = Vec::new();
    for case in cases() {
        let (mut ours, mut floor, mut theirs) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..ROUNDS {
            let (verdict, ns) = test_run(
                xdp_program(&mut small.ebpf, datapath::XDP_PROGRAM)?,
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
        }
        rows.push(Row {
            name: case.name.to_owned(),
            crmguard: median(ours),
            empty: median(floor),
            xdp_filter: (!theirs.is_empty()).then(|| median(theirs)),
        });
    }

    println!();
    println!("XDP per-packet cost (BPF_PROG_TEST_RUN, {REPEAT} repeats, median of {ROUNDS} alternating rounds)");
    println!(
        "{:<26} {:>10} {:>10} {:>12} {:>12} {:>14}",
        "case", "crmguard", "empty", "xdp-filter", "x empty", "x xdp-filter"
    );
    let mut json = Vec::new();
    for row in &rows {
        let vs_filter = row.xdp_filter.map(|f| row.crmguard / f);
        println!(
            "{:<26} {:>8.1}ns {:>8.1}ns {:>12} {:>12.2} {:>14}",
            row.name,
            row.crmguard,
            row.empty,
            row.xdp_filter.map_or("-".into(), |f| format!("{f:.1}ns")),
            row.crmguard / row.empty,
            vs_filter.map_or("-".into(), |r| format!("{r:.2}")),
        );
        json.push(serde_json::json!({
            "case": row.name,
            "crmguard_ns": row.crmguard,
            "empty_ns": row.empty,
            "xdp_filter_ns": row.xdp_filter,
            "ratio_vs_empty": row.crmguard / row.empty,
            "ratio_vs_xdp_filter": vs_filter,
        }));
    }
    let path = out_dir.join("xdp.json");
    std::fs::write(&path, serde_json::to_string_pretty(&json)?)?;
    println!("\nwritten to {}", path.display());
    drop(small);
    Ok(())
}
