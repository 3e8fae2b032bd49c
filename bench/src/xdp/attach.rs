//! Packets per second on a real attach: each program in native XDP mode on the receiving end of
//! a veth pair, trafgen (netsniff-ng) flooding it from another network namespace on one CPU.
//!
//! `BPF_PROG_TEST_RUN` runs one frame from a hot cache and leaves out the driver; here every
//! packet comes through veth's NAPI poll, and in the spoofed case every packet has a new source,
//! so crmguard's rate-limit table churns (a lookup that misses, the new-bucket budget, an LRU
//! insert or an `rl_table_busy` drop). The programs take turns on the same pair, `ROUNDS`
//! times, and the medians are compared.
//!
//! The veth's NAPI runs on the CPU that sent the packet, so trafgen and the program share that
//! one CPU: the figure is what one core does, sender included, and the programs differ only in
//! their own cost. Packets are counted by veth's `rx_queue_0_xdp_packets` (ethtool -S): what
//! the program saw, whatever it decided.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use crmguard_lab::netns::{self, NetNs};
use crmguard_lab::process::Process;

/// Seconds of flood measured per program and round, after `WARMUP`.
const SECONDS: f64 = 2.0;
const WARMUP: Duration = Duration::from_millis(500);
const ROUNDS: usize = 3;
/// The CPU trafgen (and so the receiving NAPI) runs on.
const CPU: &str = "1";

/// The sending and receiving namespaces and their veth pair.
pub struct Pair {
    tx: NetNs,
    rx: NetNs,
}

const TX_DEV: &str = "cgxs";
const RX_DEV: &str = "cgxr";

impl Pair {
    pub fn new() -> Result<Pair> {
        let tx = NetNs::named(&format!("cgbx-{}-tx", std::process::id()))?;
        let rx = NetNs::named(&format!("cgbx-{}-rx", std::process::id()))?;
        netns::veth_pair_named(&tx, TX_DEV, &rx, RX_DEV)?;
        tx.iface(TX_DEV).up()?;
        rx.iface(RX_DEV).up()?;
        Ok(Pair { tx, rx })
    }

    /// Attaches the loaded XDP program `prog_id` to the receiving veth in native mode.
    pub fn attach(&self, prog_id: u32) -> Result<()> {
        let out = netns::nsenter(self.rx.name(), "bpftool")
            .args([
                "net",
                "attach",
                "xdpdrv",
                "id",
                &prog_id.to_string(),
                "dev",
                RX_DEV,
            ])
            .output()
            .context("bpftool net attach")?;
        if !out.status.success() {
            bail!(
                "attaching program {prog_id} to {RX_DEV}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }

    pub fn detach(&self) -> Result<()> {
        let out = netns::nsenter(self.rx.name(), "bpftool")
            .args(["net", "detach", "xdpdrv", "dev", RX_DEV])
            .output()
            .context("bpftool net detach")?;
        if !out.status.success() {
            bail!(
                "detaching from {RX_DEV}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }

    /// Runs `script` in the receiving namespace with a mount namespace of its own (for
    /// xdp-filter, which pins into the bpffs it mounts there).
    pub fn rx_shell(&self, script: &str) -> Result<String> {
        self.rx.exec(&["sh", "-c", script])
    }

    /// The packets the receiving veth's XDP program has seen.
    fn xdp_packets(&self) -> Result<u64> {
        let stats = self.rx.exec(&["ethtool", "-S", RX_DEV])?;
        stats
            .lines()
            .find_map(|line| {
                line.trim()
                    .strip_prefix("rx_queue_0_xdp_packets:")
                    .and_then(|n| n.trim().parse().ok())
            })
            .context("ethtool -S shows no rx_queue_0_xdp_packets")
    }

    /// Floods the receiving veth with `frame` (its IPv4 source randomised per packet when
    /// `spoof`) and returns the packets per second the program saw, and the slowest of the
    /// measured seconds against the fastest (1.0: flat).
    pub fn flood(&self, work: &Path, frame: &[u8], spoof: bool) -> Result<Flood> {
        let conf = work.join(if spoof {
            "flood-spoofed.cfg"
        } else {
            "flood.cfg"
        });
        std::fs::write(&conf, trafgen_config(frame, spoof))?;
        // trafgen gives up when the kernel refuses a flush of its ring (EAGAIN, a full veth
        // queue): a loop starts it again at once, and the count goes on.
        let trafgen_command = format!(
            "while :; do taskset -c {CPU} trafgen --dev {TX_DEV} --conf '{}' --cpus 1 \
             --notouch-irq --no-cpu-stats; done",
            conf.display()
        );
        let before = self.xdp_packets()?;
        let mut command = netns::nsenter(self.tx.name(), "sh");
        command.args(["-c", &trafgen_command]);
        let mut trafgen = Process::spawn_logged(
            command,
            "trafgen",
            &work.join("trafgen.log"),
            Duration::ZERO,
        )?;
        std::thread::sleep(WARMUP);
        if self.xdp_packets()? == before {
            bail!("trafgen sent nothing: is netsniff-ng installed? (see trafgen.log)");
        }
        let mut slices = Vec::new();
        let start = Instant::now();
        let first = self.xdp_packets()?;
        let mut last = (start, first);
        let whole = Duration::from_secs_f64(SECONDS);
        while start.elapsed() < whole {
            std::thread::sleep(Duration::from_millis(500));
            let now = (Instant::now(), self.xdp_packets()?);
            let seconds = now.0.duration_since(last.0).as_secs_f64();
            slices.push(now.1.saturating_sub(last.1) as f64 / seconds);
            last = now;
        }
        // The loop and its trafgen, a process group of their own; the count is taken.
        let _ = nix::sys::signal::killpg(trafgen.pid(), nix::sys::signal::Signal::SIGKILL);
        trafgen.kill9()?;
        let seconds = last.0.duration_since(start).as_secs_f64();
        let pps = last.1.saturating_sub(first) as f64 / seconds;
        if pps <= 0.0 {
            bail!("no packet reached the program on {RX_DEV}");
        }
        let slowest = slices.iter().copied().fold(f64::INFINITY, f64::min);
        let fastest = slices.iter().copied().fold(0.0, f64::max);
        Ok(Flood {
            pps,
            flatness: if fastest > 0.0 {
                slowest / fastest
            } else {
                0.0
            },
        })
    }
}

/// One flood's packets per second and slowest/fastest half-second.
#[derive(Debug, Clone, Copy)]
pub struct Flood {
    pub pps: f64,
    pub flatness: f64,
}

/// A trafgen packet: the frame's bytes, with the last three bytes of the IPv4 source (offset
/// 27..30 behind a 14-byte Ethernet header) random per packet when `spoof`: 16.7 million
/// sources, so a run of a few million packets is nearly all first packets from a source.
fn trafgen_config(frame: &[u8], spoof: bool) -> String {
    let bytes: Vec<String> = frame
        .iter()
        .enumerate()
        .filter(|(i, _)| !spoof || !(27..30).contains(i))
        .map(|(i, b)| {
            if spoof && i == 26 {
                format!("{b:#04x}, drnd(3)")
            } else {
                format!("{b:#04x}")
            }
        })
        .collect();
    format!("{{ {} }}\n", bytes.join(", "))
}

impl Drop for Pair {
    fn drop(&mut self) {
        let _ = self.detach();
    }
}

/// Puts one program on the pair, replacing what was there.
pub type Attacher<'a> = &'a mut dyn FnMut(&Pair) -> Result<()>;

/// Medians of `ROUNDS` floods of each program, taken in turn: `programs` are (label, attach),
/// where attach puts the program on the pair (and detaches what was there).
pub fn compare(
    pair: &Pair,
    work: &Path,
    frame: &[u8],
    spoof: bool,
    programs: &mut [(&str, Attacher<'_>)],
) -> Result<Vec<(String, Flood)>> {
    let mut runs: Vec<Vec<Flood>> = programs.iter().map(|_| Vec::new()).collect();
    for _ in 0..ROUNDS {
        for ((_, attach), runs) in programs.iter_mut().zip(runs.iter_mut()) {
            attach(pair)?;
            runs.push(pair.flood(work, frame, spoof)?);
        }
    }
    Ok(programs
        .iter()
        .zip(runs)
        .map(|((label, _), mut runs)| {
            runs.sort_by(|a, b| a.pps.total_cmp(&b.pps));
            ((*label).to_owned(), runs[runs.len() / 2])
        })
        .collect())
}

/// Whether trafgen and ethtool are here; the real-attach rows are left out without them.
pub fn tools_present() -> bool {
    ["trafgen", "ethtool"].iter().all(|tool| {
        Command::new(tool)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spoofed_frame_randomises_the_low_three_bytes_of_the_source() {
        let frame: Vec<u8> = (0u8..40).collect();
        let conf = trafgen_config(&frame, true);
        assert!(conf.contains("0x1a, drnd(3), 0x1e"), "{conf}");
        assert_eq!(conf.matches("0x").count(), 37);
        let plain = trafgen_config(&frame, false);
        assert!(!plain.contains("drnd"));
        assert_eq!(plain.matches("0x").count(), 40);
    }
}
