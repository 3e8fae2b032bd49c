//! `cargo xtask bench vpn`: crmguard's WireGuard gateway against wireguard-go and boringtun-cli,
//! side by side in one run.
//!
//! Each pair is two network namespaces joined by a veth pair: a wireguard-go client and an
//! iperf3 client on one side, the gateway under test and an iperf3 server on the other, reached
//! on the gateway's tunnel address 10.77.0.1.
//!
//! ```text
//!   cgbv-PID-wg-c  wireguard-go  10.77.0.10 ==veth==  cgbv-PID-wg-g  wireguard-go   10.77.0.1
//!   cgbv-PID-bt-c  boringtun-cli 10.77.0.10 ==veth==  cgbv-PID-bt-g  boringtun-cli  10.77.0.1
//!   cgbv-PID-cg-c  wireguard-go  10.77.0.10 ==veth==  cgbv-PID-cg-g  crmguard (XDP, default drop)
//! ```
//!
//! What is measured, every figure for the gateway side of its pair:
//!
//! - single-stream TCP goodput with iperf3, forward (client to gateway) and reverse (`-R`),
//!   the pairs in alternation, five rounds of 10 s ([`Plan::FULL`]); a ratio of two pairs is
//!   the median of each round's ratio, between transfers made one after the other;
//! - CPU seconds per GB: the gateway process's utime + stime (all its threads) across each
//!   transfer, over the bytes iperf3 received;
//! - in each transfer, the share of the WireGuard datagrams the receiving side's full UDP
//!   socket buffer dropped (`Udp: RcvbufErrors` against `InDatagrams` in its namespace): a
//!   receiver that cannot keep up loses datagrams there, and the TCP flow inside slows down;
//! - syscalls per packet, in a separate short transfer: `perf stat -e raw_syscalls:sys_enter`
//!   on the gateway process (`strace -c -f` where perf cannot), and crmguard's by call (its
//!   reads, writes, waits and locks), over the TCP segments both
//!   namespaces sent through the tunnel, retransmissions included (the kernel's `Tcp:` counters
//!   of each namespace). Each segment is one WireGuard datagram; the veth's own packet
//!   counters count a GSO batch as one packet, so they are only recorded in the JSON;
//! - where the crmguard gateway's CPU goes during one transfer each way (`perf record`, samples
//!   in classes: crypto, copies, locks, kernel, other; and by the system call and the thread
//!   each was taken in; [`crate::profile`]), next to the floor:
//!   ChaCha20-Poly1305 sealing of full-size packets in this process, as CPU seconds per GB;
//! - the agent's RSS with 1,000 and with 10,000 peers in its peers file, XDP attached and the
//!   endpoint up ([`crate::memory`]);
//! - round-trip time through each tunnel (`ping`, [`crate::latency`]), alone and during a
//!   forward transfer: what batching costs a packet that is not part of the bulk;
//! - forward goodput while spoofed handshake initiations flood the gateway, against goodput
//!   without them, crmguard and wireguard-go as the gateway ([`crate::flood`]);
//! - handshakes completed per second by crmguard and by wireguard-go, each pinned to one CPU
//!   with the same 1,000 peers, against a load generator in this process
//!   ([`crate::handshakes`]).
//!
//! wireguard-go's control socket `/var/run/wireguard/<interface>.sock` is shared by all network
//! namespaces, so every tunnel interface has a name unique to this run. Namespaces, processes,
//! sockets and pins are removed on the way out, also on an error or Ctrl-C, and what a killed
//! run left behind is removed by the next one.

use std::fmt::Write as _;
use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use crmguard_core::keys::{self, KeyPair};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};

use crmguard_lab::cmd;
use crmguard_lab::flood::{Pace, SpoofedFlood};
use crmguard_lab::net::{udp_frame, RawSocket, Vlan, L2};
use crmguard_lab::netns::{self, Iface, NetNs};
use crmguard_lab::privileged::{self, BPFFS};
use crmguard_lab::process::Process;
use crmguard_lab::wg::{self, Keys, SOCKET_DIR};
use crmguard_lab::workspace::Workspace;

use crate::flood::{CrmguardCounts, FloodRound, FLOOD_PPS, FLOOD_TARGET};
use crate::handshakes::{Outcome, Side, HANDSHAKE_PEERS, HANDSHAKE_TARGET};
use crate::inspect_table::TableMemory;
use crate::latency::{self, Rtt};
use crate::memory::{
    memory_with_peers, Memory, RSS_LARGE_TARGET_MIB, RSS_PEERS, RSS_PEERS_LARGE, RSS_TARGET_MIB,
};
use crate::profile::{Profile, FLOOR_PACKET};

/// The gateways' WireGuard port.
pub(crate) const WG_PORT: u16 = 51820;
/// iperf3's port, the one service the benchmark role may reach through crmguard.
const IPERF_PORT: u16 = 5201;
/// The gateway's and the client's tunnel addresses.
const GATEWAY: &str = "10.77.0.1";
const CLIENT: &str = "10.77.0.10";
/// Prefix of this bench's namespaces, work and pin directories; the pid follows it.
pub(crate) const PREFIX: &str = "cgbv-";
/// Prefix of its tunnel interfaces (and so of their sockets in /var/run/wireguard).
pub(crate) const IF_PREFIX: &str = "cgb";
/// Syscall counts per pair and direction, of which the median is shown.
const SYSCALL_WINDOWS: u32 = 3;

/// How long a tunnel end may take to come up, and a handshake to complete.
pub(crate) const SETTLE: Duration = Duration::from_secs(20);

/// The VPN gateway's targets, printed next to the measured ratios (README, "Performance").
const GOODPUT_TARGET: f64 = 1.8;
/// Goodput with inspection on, against the same gateway with it off: inspection must not show
/// in goodput.
const INSPECT_GOODPUT_TARGET: f64 = 0.95;
/// The `max_flows` whose full table's memory is reported.
const TABLE_FLOWS: u32 = 1_000_000;
/// Packets timed through inspection for the cost of the common one.
const INSPECT_PACKETS: u32 = 2_000_000;
const CPU_TARGET: f64 = 0.25;
const SYSCALLS_TARGET: f64 = 0.3;

/// How long and how often each pair is measured.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    rounds: usize,
    /// Seconds per goodput transfer.
    seconds: u32,
    /// Seconds of each syscall count; `SYSCALL_WINDOWS` of them follow each other inside one
    /// transfer per pair and direction.
    syscall_seconds: u32,
    /// Seconds of each handshake window, one per gateway and round.
    handshake_seconds: u32,
}

impl Plan {
    /// Five rounds of 10 s: a single TCP stream through a userspace tunnel on veth is at its
    /// steady rate within a fraction of a second, and 10 s averages the scheduler noise of a
    /// shared 2-core machine; alternating the pairs cancels the drift between rounds.
    pub const FULL: Plan = Plan {
        rounds: 5,
        seconds: 10,
        syscall_seconds: 3,
        handshake_seconds: 5,
    };
    /// For development: three rounds of 3 s, medians still of an odd count.
    pub const QUICK: Plan = Plan {
        rounds: 3,
        seconds: 3,
        syscall_seconds: 2,
        handshake_seconds: 2,
    };
}

static INTERRUPTED: LazyLock<Arc<AtomicBool>> = LazyLock::new(Arc::default);

pub(crate) fn check_interrupt() -> Result<()> {
    if INTERRUPTED.load(Ordering::Relaxed) {
        bail!("interrupted");
    }
    Ok(())
}

/// Sleeps `duration`, or less when Ctrl-C arrives (then fails).
pub(crate) fn pause(duration: Duration) -> Result<()> {
    let end = Instant::now() + duration;
    while Instant::now() < end {
        check_interrupt()?;
        std::thread::sleep((end - Instant::now()).min(Duration::from_millis(50)));
    }
    check_interrupt()
}

/// Polls `probe` every 50 ms until it returns a value, fails, or `timeout` passes.
pub(crate) fn wait_for<T>(
    what: &str,
    timeout: Duration,
    mut probe: impl FnMut() -> Result<Option<T>>,
) -> Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        check_interrupt()?;
        if let Some(value) = probe()? {
            return Ok(value);
        }
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

// ---- namespaces and processes -----------------------------------------------------------------

/// Starts a long-running program (a tunnel end, the agent, the iperf3 server), both of its
/// streams going to `log`; on drop it gets SIGTERM and 5 s to exit before SIGKILL.
pub(crate) fn spawn(command: Command, label: &str, log: &Path) -> Result<Process> {
    eprintln!("$ {} >{} 2>&1 &", cmd::display(&command), log.display());
    Process::spawn_logged(command, label, log, Duration::from_secs(5))
}

/// Waits until `process` has created its control socket, which is removed when the process is
/// dropped.
fn wait_socket(process: &mut Process, socket: PathBuf) -> Result<()> {
    process.remove_on_drop(socket.clone());
    wait_for(
        &format!("{} to create {}", process.label(), socket.display()),
        SETTLE,
        || {
            process.check_alive()?;
            Ok(socket.exists().then_some(()))
        },
    )
}

/// CPU seconds (user + system, all threads) a process has used.
pub(crate) fn cpu_seconds(pid: u32, ticks_per_s: f64) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("process {pid} is gone"))?;
    // "PID (COMM) STATE PPID ..."; utime and stime are fields 14 and 15.
    let tail = stat
        .rsplit_once(") ")
        .map(|(_, tail)| tail)
        .context("malformed /proc/PID/stat")?;
    let fields: Vec<&str> = tail.split_whitespace().collect();
    let ticks = |i: usize| -> Result<f64> {
        Ok(fields
            .get(i)
            .context("short /proc/PID/stat")?
            .parse::<u64>()? as f64)
    };
    Ok((ticks(11)? + ticks(12)?) / ticks_per_s)
}

/// Counters of one protocol's lines in `/proc/PID/net/snmp` (the network namespace of `pid`).
fn snmp(pid: u32, proto: &str, wanted: &[&str]) -> Result<Vec<u64>> {
    let snmp = std::fs::read_to_string(format!("/proc/{pid}/net/snmp"))?;
    let prefix = format!("{proto}:");
    let mut lines = snmp.lines().filter(|line| line.starts_with(&prefix));
    let (Some(names), Some(values)) = (lines.next(), lines.next()) else {
        bail!("no {proto} lines in /proc/{pid}/net/snmp");
    };
    let values: Vec<&str> = values.split_whitespace().collect();
    wanted
        .iter()
        .map(|wanted| {
            let index = names
                .split_whitespace()
                .position(|name| name == *wanted)
                .with_context(|| format!("no {proto} {wanted} in /proc/{pid}/net/snmp"))?;
            Ok(values
                .get(index)
                .with_context(|| format!("short {proto} line"))?
                .parse()?)
        })
        .collect()
}

/// TCP segments sent so far in the network namespace of `pid`, retransmissions included
/// (`Tcp: OutSegs` + `RetransSegs`).
fn tcp_segments_sent(pid: u32) -> Result<u64> {
    Ok(snmp(pid, "Tcp", &["OutSegs", "RetransSegs"])?.iter().sum())
}

/// UDP datagrams that reached a socket so far in the network namespace of `pid`: those queued
/// (`Udp: InDatagrams`) and those dropped because the socket's receive buffer was full
/// (`RcvbufErrors`).
#[derive(Debug, Clone, Copy, Default)]
struct UdpReceived {
    queued: u64,
    dropped: u64,
}

impl UdpReceived {
    fn read(pid: u32) -> Result<UdpReceived> {
        let v = snmp(pid, "Udp", &["InDatagrams", "RcvbufErrors"])?;
        Ok(UdpReceived {
            queued: v[0],
            dropped: v[1],
        })
    }

    fn since(self, before: UdpReceived) -> UdpReceived {
        UdpReceived {
            queued: self.queued.saturating_sub(before.queued),
            dropped: self.dropped.saturating_sub(before.dropped),
        }
    }

    /// Per cent of the datagrams that reached a socket and were dropped.
    fn dropped_percent(self) -> Option<f64> {
        let reached = self.queued + self.dropped;
        (reached > 0).then(|| 100.0 * self.dropped as f64 / reached as f64)
    }
}

pub(crate) fn memory_kib(pid: u32, key: &str) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|line| {
            line.strip_prefix(key)?
                .trim()
                .strip_suffix("kB")?
                .trim()
                .parse()
                .ok()
        })
        .with_context(|| format!("no {key} in /proc/{pid}/status"))
}

/// Whether something in `pid`'s network namespace listens on TCP `port`.
fn listens(pid: u32, port: u16) -> bool {
    let needle = format!(":{port:04X} ");
    ["tcp", "tcp6"].iter().any(|file| {
        std::fs::read_to_string(format!("/proc/{pid}/net/{file}")).is_ok_and(|text| {
            text.lines()
                .skip(1)
                .any(|line| line.split_whitespace().nth(3) == Some("0A") && line.contains(&needle))
        })
    })
}

// ---- WireGuard ends ---------------------------------------------------------------------------

pub(crate) fn keypair() -> Result<Keys> {
    let private = keys::fresh_private_key().context("reading /dev/urandom")?;
    Ok(Keys {
        private: keys::encode(&private),
        public: KeyPair::from_private(private).public_base64(),
    })
}

/// Writes a private key readable by its owner only.
pub(crate) fn write_key(path: &Path, key: &str) -> Result<()> {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    writeln!(file, "{key}")?;
    Ok(())
}

pub(crate) fn wg(args: &[&str]) -> Result<String> {
    wg::wg(args, None)
}

/// A userspace WireGuard implementation run as a tunnel end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Userspace {
    WireguardGo,
    Boringtun,
}

/// Starts a userspace tunnel end in `ns`; its interface is not configured yet.
pub(crate) fn start_userspace(
    kind: Userspace,
    boringtun: Option<&Path>,
    ns: &NetNs,
    ifname: &str,
    work: &Path,
) -> Result<Process> {
    let log = work.join(format!("{ifname}.log"));
    let mut command = match kind {
        Userspace::WireguardGo => {
            let mut c = ns.command("wireguard-go");
            c.arg(ifname).env("WG_PROCESS_FOREGROUND", "1");
            c
        }
        Userspace::Boringtun => {
            let bin = boringtun.context("boringtun-cli is not installed")?;
            let mut c = ns.command(bin);
            c.args(["--foreground", "--disable-drop-privileges", ifname])
                .env("WG_LOG_LEVEL", "error")
                .env("WG_LOG_FILE", work.join(format!("{ifname}.boringtun.log")));
            c
        }
    };
    let label = match kind {
        Userspace::WireguardGo => format!("wireguard-go {ifname}"),
        Userspace::Boringtun => format!("boringtun-cli {ifname}"),
    };
    command.current_dir(work).env_remove("RUST_LOG");
    let mut process = spawn(command, &label, &log)?;
    wait_socket(&mut process, wg::socket_path(ifname))?;
    Ok(process)
}

/// `wg set` for one end: its key, its port if given, and its one peer.
fn configure_end(
    ifname: &str,
    keys: &Keys,
    work: &Path,
    listen_port: Option<u16>,
    peer: &str,
    endpoint: Option<&str>,
    allowed_ips: &str,
) -> Result<()> {
    let key_file = work.join(format!("{ifname}.key"));
    write_key(&key_file, &keys.private)?;
    let key_file = key_file.to_string_lossy().into_owned();
    let port = listen_port.map(|p| p.to_string());
    let mut args = vec!["set", ifname, "private-key", &key_file];
    if let Some(port) = &port {
        args.extend(["listen-port", port]);
    }
    args.extend(["peer", peer]);
    if let Some(endpoint) = endpoint {
        args.extend(["endpoint", endpoint]);
    }
    args.extend(["allowed-ips", allowed_ips]);
    eprintln!("$ wg {}", args.join(" "));
    wg(&args).map(drop)
}

/// Gives the tunnel interface its address and brings it up.
pub(crate) fn address_end(ns: &NetNs, ifname: &str, cidr: &str) -> Result<()> {
    let tunnel = ns.iface(ifname);
    tunnel.add_addr(cidr)?;
    tunnel.up()
}

/// crmguard as the gateway: `crmguard run` in the gateway namespace. On drop the agent is
/// stopped, its filter uninstalled and its pin directory removed.
pub(crate) struct Agent {
    daemon: Option<Process>,
    bin: PathBuf,
    config: PathBuf,
    ns: String,
    pin_dir: PathBuf,
}

/// What the agent's configuration holds beyond the bench's own role.
pub(crate) struct AgentSetup<'a> {
    /// The outer interface the XDP filter goes on.
    pub(crate) interface: &'a str,
    /// The TUN device's name.
    pub(crate) tun: &'a str,
    /// `[vpn] address`.
    pub(crate) address: &'a str,
    pub(crate) private_key: &'a str,
    /// `[[peer]]` entries written inline.
    pub(crate) peers: &'a str,
    /// `[[peer]]` entries written to the peers file.
    pub(crate) peers_file: &'a str,
    /// `[inspection] enabled`.
    pub(crate) inspection: bool,
    /// Lines added to the `[vpn]` section.
    pub(crate) vpn_extra: &'a str,
    /// How long the agent may take to start: loading the XDP program (the kernel's verifier)
    /// and setting up every peer.
    pub(crate) startup: Duration,
}

fn quoted(path: &Path) -> String {
    let text = path.to_string_lossy();
    format!("\"{}\"", text.replace('\\', "\\\\").replace('"', "\\\""))
}

impl Agent {
    pub(crate) fn start(
        bin: &Path,
        ns: &NetNs,
        dir: &Path,
        setup: &AgentSetup<'_>,
    ) -> Result<Agent> {
        std::fs::create_dir_all(dir.join("state"))?;
        let key_file = dir.join("wg.key");
        write_key(&key_file, setup.private_key)?;
        let peers_file = dir.join("peers.toml");
        std::fs::write(&peers_file, setup.peers_file)?;
        let pin_dir =
            Path::new(BPFFS).join(format!("{PREFIX}{}-{}", std::process::id(), setup.tun));
        let config = dir.join("crmguard.toml");
        let text = format!(
            r#"[agent]
mode = "enforce"
state_dir = {state}
bpffs_dir = {pins}
control_socket = {control}
log_format = "text"

[[interface]]
name = "{interface}"
xdp_mode = "native"

[firewall]
default = "drop"

[vpn]
listen_port = {WG_PORT}
address = "{address}"
private_key_file = {key}
peers_file = {peers}
{vpn_extra}
[[role]]
name = "bench"
allow = ["tcp/{IPERF_PORT}"]
mfa = false

[inspection]
enabled = {inspection}

[audit]
path = {audit}
key_file = {audit_key}

{inline}"#,
            state = quoted(&dir.join("state")),
            pins = quoted(&pin_dir),
            control = quoted(&dir.join("control.sock")),
            interface = setup.interface,
            address = setup.address,
            key = quoted(&key_file),
            peers = quoted(&peers_file),
            inline = setup.peers,
            vpn_extra = setup.vpn_extra,
            inspection = setup.inspection,
            audit = quoted(&dir.join("audit.jsonl")),
            audit_key = quoted(&dir.join("audit.key")),
        );
        std::fs::write(&config, text)?;
        let mut command = ns.command(bin);
        command
            .arg("run")
            .arg("--config")
            .arg(&config)
            .env(crmguard_lab::agent::VPN_INTERFACE_ENV, setup.tun)
            .env("RUST_LOG", "warn");
        let daemon = spawn(
            command,
            &format!("crmguard {}", setup.tun),
            &dir.join("agent.log"),
        )?;
        let mut agent = Agent {
            daemon: Some(daemon),
            bin: bin.to_owned(),
            config,
            ns: ns.name().to_owned(),
            pin_dir,
        };
        agent.wait_endpoint(setup.startup)?;
        if let Some(daemon) = agent.daemon.as_mut() {
            daemon.remove_on_drop(wg::socket_path(setup.tun));
        }
        Ok(agent)
    }

    pub(crate) fn daemon(&mut self) -> Result<&mut Process> {
        self.daemon.as_mut().context("the agent was stopped")
    }

    pub(crate) fn status(&self) -> Result<Value> {
        let text = cmd::stdout_of(
            Command::new(&self.bin)
                .arg("status")
                .arg("--json")
                .arg("--config")
                .arg(&self.config),
        )?;
        serde_json::from_str(&text).context("`crmguard status --json` printed no JSON")
    }

    /// Waits until `status` answers with the VPN endpoint running.
    fn wait_endpoint(&mut self, timeout: Duration) -> Result<Value> {
        let mut last = String::new();
        let result = wait_for("the agent's VPN endpoint to run", timeout, || {
            self.daemon()?.check_alive()?;
            let status = match self.status() {
                Ok(status) => status,
                Err(e) => {
                    last = format!("{e:#}");
                    return Ok(None);
                }
            };
            let vpn = &status["vpn"];
            if vpn.is_null() {
                bail!("`crmguard status` shows no VPN endpoint");
            }
            if vpn["running"] == true {
                return Ok(Some(status));
            }
            if let Some(error) = vpn["error"].as_str() {
                bail!("the VPN endpoint does not run: {error}");
            }
            Ok(None)
        });
        result.with_context(|| {
            let tail = self
                .daemon
                .as_ref()
                .map(|d| d.log_tail(8))
                .unwrap_or_default();
            format!("last status error: {last}\n{tail}")
        })
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        drop(self.daemon.take());
        // The agent leaves its filter attached when it stops (fail-static).
        let _ = cmd::output(
            netns::nsenter(&self.ns, &self.bin)
                .arg("uninstall")
                .arg("--config")
                .arg(&self.config),
        );
        if self.pin_dir.exists() {
            let _ = std::fs::remove_dir_all(&self.pin_dir);
        }
    }
}

pub(crate) enum Gateway {
    Userspace(Process),
    Crmguard(Agent),
}

impl Gateway {
    fn daemon(&mut self) -> Result<&mut Process> {
        match self {
            Gateway::Userspace(d) => Ok(d),
            Gateway::Crmguard(agent) => agent.daemon(),
        }
    }
}

// ---- the pairs --------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    WireguardGo,
    Boringtun,
    Crmguard,
    /// crmguard with `[inspection] enabled = false`: what inspection costs.
    CrmguardUninspected,
}

impl Kind {
    const ALL: [Kind; 4] = [
        Kind::WireguardGo,
        Kind::Boringtun,
        Kind::Crmguard,
        Kind::CrmguardUninspected,
    ];
    /// The gateways measured under a handshake flood.
    const FLOODED: [Kind; 2] = [Kind::WireguardGo, Kind::Crmguard];

    fn name(self) -> &'static str {
        match self {
            Kind::WireguardGo => "wireguard-go <-> wireguard-go",
            Kind::Boringtun => "boringtun-cli <-> boringtun-cli",
            Kind::Crmguard => "wireguard-go -> crmguard",
            Kind::CrmguardUninspected => "wireguard-go -> crmguard, no inspect",
        }
    }

    fn key(self) -> &'static str {
        match self {
            Kind::WireguardGo => "wireguard_go",
            Kind::Boringtun => "boringtun_cli",
            Kind::Crmguard => "crmguard",
            Kind::CrmguardUninspected => "crmguard_uninspected",
        }
    }

    fn tag(self) -> &'static str {
        match self {
            Kind::WireguardGo => "wg",
            Kind::Boringtun => "bt",
            Kind::Crmguard => "cg",
            Kind::CrmguardUninspected => "cn",
        }
    }

    fn index(self) -> u8 {
        match self {
            Kind::WireguardGo => 0,
            Kind::Boringtun => 1,
            Kind::Crmguard => 2,
            Kind::CrmguardUninspected => 3,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction {
    /// The client sends to the gateway side.
    Forward,
    /// The gateway side sends to the client (`iperf3 -R`).
    Reverse,
}

impl Direction {
    const BOTH: [Direction; 2] = [Direction::Forward, Direction::Reverse];

    fn key(self) -> &'static str {
        match self {
            Direction::Forward => "forward",
            Direction::Reverse => "reverse",
        }
    }
}

/// One pair up and ready. Fields drop in order: processes first, namespaces last.
struct Pair {
    kind: Kind,
    server: Process,
    client: Process,
    gateway: Gateway,
    client_ns: NetNs,
    /// Held so that the namespace outlives the processes in it.
    _gateway_ns: NetNs,
    client_veth: Iface,
    gateway_veth: Iface,
    /// The gateway's address on the veth, and its WireGuard public key.
    outer_gateway: Ipv4Addr,
    gateway_public: [u8; 32],
}

/// One goodput transfer.
#[derive(Debug, Clone, Copy)]
struct Transfer {
    gbit_s: f64,
    bytes: u64,
    gateway_cpu_s: f64,
    client_cpu_s: f64,
    /// The datagrams that reached the receiving side's namespace (the gateway's forward, the
    /// client's in reverse), and those its full socket buffer dropped.
    receiver_udp: UdpReceived,
}

/// One syscall count.
#[derive(Debug, Clone)]
struct SyscallCount {
    syscalls: u64,
    /// The calls of [`CALLS_SHOWN`] among them, by name (with perf: those the kernel traces).
    by_call: Vec<(String, u64)>,
    segments: u64,
    veth_packets: u64,
}

/// The calls whose share of the gateway's syscalls is shown: its I/O, its waits and its locks.
const CALLS_SHOWN: &[&str] = &[
    "recvmmsg",
    "recvmsg",
    "recvfrom",
    "sendmmsg",
    "sendmsg",
    "sendto",
    "read",
    "readv",
    "write",
    "writev",
    "poll",
    "ppoll",
    "epoll_wait",
    "epoll_pwait",
    "futex",
    "clock_nanosleep",
    "nanosleep",
    "sched_yield",
];

/// What one counting window gave: all syscalls, and those of [`CALLS_SHOWN`] by name.
struct Counted {
    total: u64,
    by_call: Vec<(String, u64)>,
}

pub(crate) struct Env<'a> {
    pub(crate) work: &'a Path,
    pub(crate) crmguard: Option<&'a Path>,
    pub(crate) boringtun: Option<&'a Path>,
    pub(crate) ticks_per_s: f64,
}

/// The client and gateway namespaces of a pair tagged `tag`, joined by a veth pair
/// (`bv{tag}c` in the client's, `bv{tag}g` in the gateway's).
pub(crate) fn namespace_pair(tag: &str) -> Result<(NetNs, NetNs, Iface, Iface)> {
    let pid = std::process::id();
    let client_ns = NetNs::named(&format!("{PREFIX}{pid}-{tag}-c"))?;
    let gateway_ns = NetNs::named(&format!("{PREFIX}{pid}-{tag}-g"))?;
    let (client_veth, gateway_veth) = netns::veth_pair_named(
        &client_ns,
        &format!("bv{tag}c"),
        &gateway_ns,
        &format!("bv{tag}g"),
    )?;
    Ok((client_ns, gateway_ns, client_veth, gateway_veth))
}

impl Pair {
    fn start(kind: Kind, env: &Env<'_>) -> Result<Pair> {
        let pid = std::process::id();
        let tag = kind.tag();
        let i = kind.index();
        let (client_ns, gateway_ns, client_veth, gateway_veth) = namespace_pair(tag)?;
        let outer_gateway = format!("10.201.{i}.1");
        client_veth.add_addr(&format!("10.201.{i}.2/24"))?;
        gateway_veth.add_addr(&format!("{outer_gateway}/24"))?;
        client_veth.up()?;
        gateway_veth.up()?;
        // Replies to addresses beyond the veth (a handshake flood's spoofed sources) leave
        // through it, as they would leave a host, and the client's namespace drops them.
        gateway_ns.ip(&["route", "add", "default", "via", &format!("10.201.{i}.2")])?;

        let work = env.work.join(tag);
        std::fs::create_dir_all(&work)?;
        let client_keys = keypair()?;
        let gateway_keys = keypair()?;
        let gateway_public = keys::decode(&gateway_keys.public)
            .context("the gateway's public key is not a WireGuard key")?;
        let client_if = format!("{IF_PREFIX}{pid}{tag}c");
        let gateway_if = format!("{IF_PREFIX}{pid}{tag}g");

        let gateway = match kind {
            Kind::WireguardGo | Kind::Boringtun => {
                let program = if kind == Kind::Boringtun {
                    Userspace::Boringtun
                } else {
                    Userspace::WireguardGo
                };
                let daemon =
                    start_userspace(program, env.boringtun, &gateway_ns, &gateway_if, &work)?;
                configure_end(
                    &gateway_if,
                    &gateway_keys,
                    &work,
                    Some(WG_PORT),
                    &client_keys.public,
                    None,
                    &format!("{CLIENT}/32"),
                )?;
                address_end(&gateway_ns, &gateway_if, &format!("{GATEWAY}/24"))?;
                Gateway::Userspace(daemon)
            }
            Kind::Crmguard | Kind::CrmguardUninspected => {
                let bin = env.crmguard.context("crmguard was not built")?;
                let peer = format!(
                    "[[peer]]\nname = \"bench-client\"\npublic_key = \"{}\"\naddress = \"{CLIENT}\"\nrole = \"bench\"\n",
                    client_keys.public
                );
                Gateway::Crmguard(Agent::start(
                    bin,
                    &gateway_ns,
                    &work.join("agent"),
                    &AgentSetup {
                        interface: gateway_veth.name(),
                        tun: &gateway_if,
                        address: &format!("{GATEWAY}/24"),
                        private_key: &gateway_keys.private,
                        peers: &peer,
                        peers_file: "",
                        inspection: kind == Kind::Crmguard,
                        vpn_extra: "",
                        startup: SETTLE,
                    },
                )?)
            }
        };

        let mut server_cmd = gateway_ns.command("iperf3");
        server_cmd.args(["-s", "-p", &IPERF_PORT.to_string()]);
        let mut server = spawn(server_cmd, "iperf3 -s", &work.join("iperf3-server.log"))?;
        let server_pid = server.id();
        wait_for("the iperf3 server to listen", SETTLE, || {
            server.check_alive()?;
            Ok(listens(server_pid, IPERF_PORT).then_some(()))
        })?;

        // boringtun-cli's pair is boringtun-cli at both ends; every other pair's client is
        // wireguard-go, the client crmguard's figures are measured with.
        let client_program = if kind == Kind::Boringtun {
            Userspace::Boringtun
        } else {
            Userspace::WireguardGo
        };
        let client = start_userspace(client_program, env.boringtun, &client_ns, &client_if, &work)?;
        let mut pair = Pair {
            kind,
            server,
            client,
            gateway,
            client_ns,
            _gateway_ns: gateway_ns,
            client_veth,
            gateway_veth,
            outer_gateway: outer_gateway.parse()?,
            gateway_public,
        };
        configure_end(
            &client_if,
            &client_keys,
            &work,
            None,
            &gateway_keys.public,
            Some(&format!("{outer_gateway}:{WG_PORT}")),
            "10.77.0.0/24",
        )?;
        address_end(&pair.client_ns, &client_if, &format!("{CLIENT}/24"))?;
        // A keepalive set on a device that is up goes out at once and starts the handshake.
        // boringtun-cli refuses a keepalive set on its own; a first packet starts its
        // handshake instead.
        let pings = client_program == Userspace::Boringtun;
        if !pings {
            wg(&[
                "set",
                &client_if,
                "peer",
                &gateway_keys.public,
                "persistent-keepalive",
                "25",
            ])?;
        }
        let gateway_public = gateway_keys.public.clone();
        wait_for(
            &format!(
                "a handshake between {client_if} and the {} gateway",
                kind.tag()
            ),
            SETTLE,
            || {
                pair.client.check_alive()?;
                pair.gateway.daemon()?.check_alive()?;
                if pings {
                    // Whether it is answered does not matter: the handshake is looked at next.
                    let _ = pair
                        .client_ns
                        .command("ping")
                        .args(["-c", "1", "-W", "1", GATEWAY])
                        .stdout(Stdio::null())
                        .stderr(Stdio::null())
                        .status();
                }
                let text = wg(&["show", &client_if, "latest-handshakes"])?;
                let done = text.lines().any(|line| {
                    let mut f = line.split_whitespace();
                    f.next() == Some(gateway_public.as_str())
                        && f.next().and_then(|t| t.parse::<u64>().ok()).unwrap_or(0) > 0
                });
                Ok(done.then_some(()))
            },
        )?;
        Ok(pair)
    }

    fn check_alive(&mut self) -> Result<()> {
        self.client.check_alive()?;
        self.server.check_alive()?;
        self.gateway.daemon()?.check_alive()
    }

    /// Starts `iperf3 -c` in the client namespace, its JSON report going to `report`.
    fn iperf_client(&self, direction: Direction, seconds: u32, report: &Path) -> Result<Child> {
        let mut c = self.client_ns.command("iperf3");
        c.args(["-c", GATEWAY, "-p", &IPERF_PORT.to_string()])
            .args([
                "-t",
                &seconds.to_string(),
                "-J",
                "--connect-timeout",
                "5000",
            ]);
        if direction == Direction::Reverse {
            c.arg("-R");
        }
        let out = File::create(report)?;
        c.stdin(Stdio::null())
            .stdout(out)
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("cannot start `{}`", cmd::display(&c)))
    }

    /// Waits for an iperf3 client started for `seconds` and reads its report: (bits/s,
    /// bytes received).
    fn iperf_result(mut child: Child, seconds: u32, report: &Path) -> Result<(f64, u64)> {
        let deadline = Instant::now() + Duration::from_secs(u64::from(seconds) + 20);
        let status = loop {
            if let Err(e) = check_interrupt() {
                let _ = child.kill();
                let _ = child.wait();
                return Err(e);
            }
            if let Some(status) = child.try_wait()? {
                break status;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("iperf3 did not finish within {seconds} s + 20 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let text = std::fs::read_to_string(report)?;
        let value: Value = serde_json::from_str(&text)
            .with_context(|| format!("iperf3 ({status}) printed no JSON: {}", text.trim()))?;
        if let Some(error) = value["error"].as_str() {
            bail!("iperf3 failed: {error}");
        }
        let received = &value["end"]["sum_received"];
        let (Some(bits), Some(bytes)) = (
            received["bits_per_second"].as_f64(),
            received["bytes"].as_u64(),
        ) else {
            bail!("iperf3's report has no end.sum_received ({status})");
        };
        if bytes == 0 {
            bail!("iperf3 moved no data through the tunnel");
        }
        Ok((bits, bytes))
    }

    fn transfer(&mut self, direction: Direction, seconds: u32, env: &Env<'_>) -> Result<Transfer> {
        self.check_alive()?;
        let gateway = self.gateway.daemon()?.id();
        let client = self.client.id();
        let report = env.work.join(format!("iperf-{}.json", self.kind.tag()));
        // The tunnel's receiving side: the gateway forward, the client in reverse.
        let receiver = match direction {
            Direction::Forward => gateway,
            Direction::Reverse => client,
        };
        let (gw0, cl0, udp0) = (
            cpu_seconds(gateway, env.ticks_per_s)?,
            cpu_seconds(client, env.ticks_per_s)?,
            UdpReceived::read(receiver)?,
        );
        let child = self.iperf_client(direction, seconds, &report)?;
        let (bits, bytes) = Pair::iperf_result(child, seconds, &report)?;
        let (gw1, cl1, udp1) = (
            cpu_seconds(gateway, env.ticks_per_s)?,
            cpu_seconds(client, env.ticks_per_s)?,
            UdpReceived::read(receiver)?,
        );
        Ok(Transfer {
            gbit_s: bits / 1e9,
            bytes,
            gateway_cpu_s: gw1 - gw0,
            client_cpu_s: cl1 - cl0,
            receiver_udp: udp1.since(udp0),
        })
    }

    /// One round of the handshake flood measurement ([`crate::flood`]): a forward transfer
    /// without the flood, then one under it.
    fn flood_round(&mut self, seconds: u32, env: &Env<'_>) -> Result<FloodRound> {
        let quiet = self.transfer(Direction::Forward, seconds, env)?;
        let l2 = L2 {
            src_mac: self.client_veth.mac()?,
            dst_mac: self.gateway_veth.mac()?,
            vlan: Vlan::Untagged,
        };
        let template = udp_frame(
            &l2,
            SocketAddr::from(([1, 0, 0, 1], 40_000)),
            SocketAddr::from((self.outer_gateway, WG_PORT)),
            &crate::flood::initiation(self.gateway_public)?,
        )?;
        let before = self.crmguard_counts();
        let flood = SpoofedFlood::start(
            RawSocket::open(&self.client_ns, self.client_veth.name())?,
            vec![template],
            Pace {
                per_second: FLOOD_PPS,
                at_least: 0,
                longest: Duration::from_secs(u64::from(seconds) + 30),
            },
        )?;
        let started = Instant::now();
        let under = self.transfer(Direction::Forward, seconds, env);
        let elapsed = started.elapsed().as_secs_f64();
        let sent = flood.stop()?;
        let under = under?;
        let crmguard = match (before, self.crmguard_counts()) {
            (Some(before), Some(after)) => Some(after.since(&before)),
            _ => None,
        };
        Ok(FloodRound {
            quiet_gbit_s: quiet.gbit_s,
            under_gbit_s: under.gbit_s,
            seconds: elapsed,
            flood_per_s: sent as f64 / elapsed,
            crmguard,
        })
    }

    /// crmguard's drop and handshake counts; `None` for another gateway.
    fn crmguard_counts(&self) -> Option<CrmguardCounts> {
        match &self.gateway {
            Gateway::Crmguard(agent) => CrmguardCounts::of(&agent.status().ok()?),
            Gateway::Userspace(_) => None,
        }
    }

    /// Runs `measure`, which takes about `seconds`, in the middle of one transfer: the transfer
    /// starts a second before it (connection setup, slow start) and ends two seconds after.
    fn during_transfer<T>(
        &self,
        direction: Direction,
        seconds: u32,
        what: &str,
        env: &Env<'_>,
        measure: impl FnOnce() -> Result<T>,
    ) -> Result<T> {
        let report = env.work.join(format!(
            "iperf-{what}-{}-{}.json",
            self.kind.tag(),
            direction.key()
        ));
        let transfer_s = seconds + 3;
        let child = self.iperf_client(direction, transfer_s, &report)?;
        let measured = pause(Duration::from_secs(1)).and_then(|()| measure());
        let finished = Pair::iperf_result(child, transfer_s, &report);
        let measured = measured?;
        finished?;
        Ok(measured)
    }

    /// Records the gateway's samples for `seconds` in the middle of one transfer, into
    /// `out/gateway-DIRECTION.perf.data` (kept for `perf report -i`).
    fn profile(
        &mut self,
        direction: Direction,
        seconds: u32,
        env: &Env<'_>,
        out: &Path,
    ) -> Result<Profile> {
        self.check_alive()?;
        let gateway = self.gateway.daemon()?.id();
        let name = format!("gateway-{}", direction.key());
        self.during_transfer(direction, seconds, "profile", env, || {
            crate::profile::record(gateway, seconds, out, &name)?.finish()
        })
    }

    /// Round trips through the tunnel: alone, then in the middle of a forward transfer.
    fn latency(&mut self, env: &Env<'_>) -> Result<[Rtt; 2]> {
        self.check_alive()?;
        let idle = latency::probe(&self.client_ns, GATEWAY)?;
        let loaded = self.during_transfer(
            Direction::Forward,
            latency::PROBING_S,
            "latency",
            env,
            || latency::probe(&self.client_ns, GATEWAY),
        )?;
        Ok([idle, loaded])
    }

    /// Counts the gateway's syscalls for `SYSCALL_WINDOWS` windows of `counter_s` seconds in
    /// the middle of one transfer, each against the TCP segments both sides sent meanwhile.
    fn count_syscalls(
        &mut self,
        direction: Direction,
        counter: SyscallCounter,
        counter_s: u32,
        env: &Env<'_>,
    ) -> Result<Vec<SyscallCount>> {
        self.check_alive()?;
        let gateway = self.gateway.daemon()?.id();
        let client = self.client.id();
        let report = env
            .work
            .join(format!("iperf-syscalls-{}.json", self.kind.tag()));
        // A second before the first window (connection setup, slow start) and two after the
        // last, so that the transfer outlasts the counting.
        let seconds = counter_s * SYSCALL_WINDOWS + 3;
        let child = self.iperf_client(direction, seconds, &report)?;
        let counted: Result<Vec<SyscallCount>> = (|| {
            pause(Duration::from_secs(1))?;
            let mut windows = Vec::new();
            for _ in 0..SYSCALL_WINDOWS {
                let segments0 = tcp_segments_sent(client)? + tcp_segments_sent(gateway)?;
                let veth0 = self.gateway_veth.packets()?;
                let counted = counter.count(gateway, counter_s, env.work)?;
                let segments1 = tcp_segments_sent(client)? + tcp_segments_sent(gateway)?;
                let veth1 = self.gateway_veth.packets()?;
                if segments1 == segments0 {
                    bail!("no TCP segments crossed the tunnel while counting");
                }
                windows.push(SyscallCount {
                    syscalls: counted.total,
                    by_call: counted.by_call,
                    segments: segments1 - segments0,
                    veth_packets: veth1 - veth0,
                });
            }
            Ok(windows)
        })();
        let finished = Pair::iperf_result(child, seconds, &report);
        let counted = counted?;
        finished?;
        Ok(counted)
    }
}

/// How the gateway's syscalls are counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SyscallCounter {
    /// `perf stat -e raw_syscalls:sys_enter -p PID`: kernel counters, no slowdown; with the
    /// `syscalls:sys_enter_NAME` tracepoints of [`CALLS_SHOWN`] the kernel has.
    Perf(&'static [&'static str]),
    /// `strace -c -f -p PID`: stops the process at every syscall, so the gateway runs slower
    /// and may batch differently while counted.
    Strace,
}

impl SyscallCounter {
    fn detect() -> Option<SyscallCounter> {
        let perf_works = cmd::which("perf").is_some()
            && cmd::succeeds(Command::new("perf").args([
                "stat",
                "-e",
                "raw_syscalls:sys_enter",
                "-x,",
                "--",
                "true",
            ]));
        if perf_works {
            let traced: Vec<&'static str> = CALLS_SHOWN
                .iter()
                .copied()
                .filter(|call| {
                    cmd::succeeds(Command::new("perf").args([
                        "stat",
                        "-e",
                        &format!("syscalls:sys_enter_{call}"),
                        "-x,",
                        "--",
                        "true",
                    ]))
                })
                .collect();
            Some(SyscallCounter::Perf(traced.leak()))
        } else if cmd::which("strace").is_some() {
            Some(SyscallCounter::Strace)
        } else {
            None
        }
    }

    fn name(self) -> &'static str {
        match self {
            SyscallCounter::Perf(_) => "perf stat -e raw_syscalls:sys_enter",
            SyscallCounter::Strace => "strace -c -f",
        }
    }

    /// Syscalls `pid` (all its threads) made during `seconds`.
    fn count(self, pid: u32, seconds: u32, work: &Path) -> Result<Counted> {
        match self {
            SyscallCounter::Perf(calls) => {
                let mut perf = Command::new("perf");
                perf.args(["stat", "-e", "raw_syscalls:sys_enter"]);
                for call in calls {
                    perf.args(["-e", &format!("syscalls:sys_enter_{call}")]);
                }
                let pid = pid.to_string();
                let seconds = seconds.to_string();
                perf.args(["-x,", "-p", &pid, "--", "sleep", &seconds]);
                let out = cmd::output(&mut perf)?;
                let text = String::from_utf8_lossy(&out.stderr);
                // CSV lines: "COUNT,UNIT,EVENT,...".
                let counts: Vec<(&str, u64)> = text
                    .lines()
                    .filter_map(|line| {
                        let mut fields = line.split(',');
                        let count = fields.next()?.trim().parse().ok()?;
                        Some((fields.nth(1)?.trim(), count))
                    })
                    .collect();
                let total = counts
                    .iter()
                    .find(|(event, _)| *event == "raw_syscalls:sys_enter")
                    .map(|(_, n)| *n)
                    .with_context(|| {
                        format!("cannot read perf stat's count from: {}", text.trim())
                    })?;
                let by_call = counts
                    .iter()
                    .filter_map(|(event, n)| {
                        Some((event.strip_prefix("syscalls:sys_enter_")?.to_owned(), *n))
                    })
                    .collect();
                Ok(Counted { total, by_call })
            }
            SyscallCounter::Strace => {
                let file = work.join("strace.txt");
                let mut child = Command::new("strace")
                    .args(["-c", "-f", "-p", &pid.to_string(), "-o"])
                    .arg(&file)
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .context("cannot start strace")?;
                let slept = pause(Duration::from_secs(seconds.into()));
                let _ = kill(Pid::from_raw(i32::try_from(child.id())?), Signal::SIGINT);
                child.wait()?;
                slept?;
                let text = std::fs::read_to_string(&file)?;
                // Rows "% TIME SECONDS USECS/CALL CALLS [ERRORS] NAME", the last one "total".
                let rows: Vec<(&str, u64)> = text
                    .lines()
                    .filter_map(|line| {
                        let fields: Vec<&str> = line.split_whitespace().collect();
                        let calls = fields.get(3)?.parse().ok()?;
                        Some((*fields.last()?, calls))
                    })
                    .collect();
                let total = rows
                    .iter()
                    .find(|(name, _)| *name == "total")
                    .map(|(_, n)| *n)
                    .with_context(|| format!("cannot read strace's total from: {}", text.trim()))?;
                let by_call = rows
                    .iter()
                    .filter(|(name, _)| CALLS_SHOWN.contains(name))
                    .map(|(name, n)| ((*name).to_owned(), *n))
                    .collect();
                Ok(Counted { total, by_call })
            }
        }
    }
}

// ---- setup, cleanup, the run ------------------------------------------------------------------

/// The work directory, removed on drop.
struct WorkDir(PathBuf);

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// The pid in `cgbv-PID...` or `cgbPID...` names.
fn owner(name: &str, prefix: &str) -> Option<u32> {
    let rest = name.strip_prefix(prefix)?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// Removes namespaces, pins, sockets and work directories of earlier runs whose process is
/// gone.
fn remove_stale() {
    let dead = |name: &str, prefix: &str| owner(name, prefix).is_some_and(|pid| !alive(pid));
    let names = |dir: &Path| -> Vec<String> {
        std::fs::read_dir(dir)
            .map(|entries| {
                entries
                    .filter_map(|e| e.ok()?.file_name().into_string().ok())
                    .collect()
            })
            .unwrap_or_default()
    };
    for ns in netns::list() {
        if dead(&ns, PREFIX) {
            eprintln!("bench: removing namespace {ns}, left by an earlier run");
            if let Err(e) = netns::delete(&ns) {
                eprintln!("bench: {e:#}");
            }
        }
    }
    for dir in [Path::new(BPFFS), &std::env::temp_dir()] {
        for name in names(dir) {
            if dead(&name, PREFIX) {
                let _ = std::fs::remove_dir_all(dir.join(name));
            }
        }
    }
    for name in names(Path::new(SOCKET_DIR)) {
        if dead(&name, IF_PREFIX) {
            let _ = std::fs::remove_file(Path::new(SOCKET_DIR).join(name));
        }
    }
}

/// `target/release/crmguard`, built now.
fn build_crmguard(workspace: &Workspace) -> Result<PathBuf> {
    cmd::run(
        workspace
            .cargo()
            .args(["build", "--release", "-p", "crmguard"]),
    )?;
    let bin = workspace.bin("release", "crmguard");
    if !bin.is_file() {
        bail!("the build produced no {}", bin.display());
    }
    Ok(bin)
}

/// boringtun-cli from `target/bench/tools`, installed there from crates.io when missing.
fn boringtun_cli(workspace: &Workspace, out_dir: &Path) -> Result<PathBuf> {
    let root = out_dir.join("tools");
    let bin = root.join("bin/boringtun-cli");
    if bin.is_file() {
        return Ok(bin);
    }
    let log = out_dir.join("boringtun-install.log");
    let mut install = workspace.cargo();
    install
        .args(["install", "boringtun-cli", "--locked", "--root"])
        .arg(&root);
    eprintln!("$ {} >{} 2>&1", cmd::display(&install), log.display());
    let out = cmd::output(&mut install)?;
    std::fs::write(
        &log,
        [out.stdout.as_slice(), out.stderr.as_slice()].concat(),
    )?;
    if !out.status.success() || !bin.is_file() {
        let text = String::from_utf8_lossy(&out.stderr);
        let lines: Vec<&str> = text
            .lines()
            .map(str::trim)
            .filter(|line| !line.is_empty())
            .collect();
        bail!(
            "`cargo install boringtun-cli` failed ({}): {} (log: {})",
            out.status,
            lines[lines.len().saturating_sub(4)..].join(" / "),
            log.display()
        );
    }
    Ok(bin)
}

/// The `p`th percentile of `sorted` (ascending) by nearest rank: the smallest value with at
/// least `p` per cent of the values at or below it, so always one that was measured.
pub(crate) fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (p / 100.0 * sorted.len() as f64).ceil().max(1.0);
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let index = (rank as usize).min(sorted.len()) - 1;
    sorted.get(index).copied()
}

pub(crate) fn median(values: &[f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    Some(sorted[sorted.len() / 2])
}

/// What one pair gave, or why it gave nothing.
struct Results {
    kind: Kind,
    unavailable: Option<String>,
    /// Per direction (forward, reverse).
    transfers: [Vec<Transfer>; 2],
    syscalls: [Vec<SyscallCount>; 2],
    syscall_error: Option<String>,
    /// Round trips through the tunnel, alone and during a forward transfer.
    latency: Option<std::result::Result<[Rtt; 2], String>>,
    /// Goodput with and without a spoofed handshake flood (wireguard-go and crmguard).
    flood: Vec<FloodRound>,
    flood_error: Option<String>,
}

impl Results {
    /// Gbit/s of each round, in order.
    fn goodputs(&self, d: usize) -> Vec<f64> {
        self.transfers[d].iter().map(|t| t.gbit_s).collect()
    }

    fn goodput(&self, d: usize) -> Option<f64> {
        median(&self.goodputs(d))
    }

    /// CPU seconds per GB of the gateway (or the client) in each round, in order.
    fn cpus_per_gb(&self, d: usize, client: bool) -> Vec<f64> {
        self.transfers[d]
            .iter()
            .map(|t| {
                let cpu = if client {
                    t.client_cpu_s
                } else {
                    t.gateway_cpu_s
                };
                cpu / (t.bytes as f64 / 1e9)
            })
            .collect()
    }

    fn cpu_per_gb(&self, d: usize, client: bool) -> Option<f64> {
        median(&self.cpus_per_gb(d, client))
    }

    /// Per cent of the tunnel's datagrams the receiving side's full socket buffer dropped, the
    /// median of the rounds.
    fn receiver_drops(&self, d: usize) -> Option<f64> {
        let rounds: Vec<f64> = self.transfers[d]
            .iter()
            .filter_map(|t| t.receiver_udp.dropped_percent())
            .collect();
        median(&rounds)
    }

    /// Each call of [`CALLS_SHOWN`] per packet, the median of the windows, largest first.
    fn calls_per_packet(&self, d: usize) -> Vec<(String, f64)> {
        let mut calls: Vec<(String, f64)> = CALLS_SHOWN
            .iter()
            .filter_map(|&call| {
                let windows = &self.syscalls[d];
                if !windows
                    .iter()
                    .any(|c| c.by_call.iter().any(|(name, _)| name == call))
                {
                    return None; // not traced here, or never made
                }
                // A call a window did not count (strace leaves out the calls not made, perf
                // marks an event it did not count) made none in it.
                let per_packet: Vec<f64> = windows
                    .iter()
                    .map(|c| {
                        let n = c
                            .by_call
                            .iter()
                            .find(|(name, _)| name == call)
                            .map_or(0, |(_, n)| *n);
                        n as f64 / c.segments as f64
                    })
                    .collect();
                Some((call.to_owned(), median(&per_packet)?))
            })
            .collect();
        calls.sort_by(|a, b| b.1.total_cmp(&a.1));
        calls
    }

    fn syscalls_per_packet(&self, d: usize) -> Option<f64> {
        median(
            &self.syscalls[d]
                .iter()
                .map(|c| c.syscalls as f64 / c.segments as f64)
                .collect::<Vec<_>>(),
        )
    }
}

fn check_tools() -> Result<()> {
    for (tool, package) in [
        ("iperf3", "iperf3"),
        ("wireguard-go", "wireguard-go"),
        ("wg", "wireguard-tools"),
        ("nsenter", "util-linux"),
        ("ip", "iproute2"),
    ] {
        if cmd::which(tool).is_none() {
            bail!(
                "`{tool}` is not installed: apt-get install {package} (or cargo xtask deps bench)"
            );
        }
    }
    Ok(())
}

/// What every VPN measurement needs first: root, the tools, the Ctrl-C handler, no namespaces
/// left by an earlier run, the output, socket and work directories, bpffs; returns the work
/// directory and the clock ticks per second.
fn prepare(out_dir: &Path) -> Result<(WorkDir, f64)> {
    if !cmd::is_root() {
        bail!(
            "the VPN bench creates network namespaces, TUN devices and XDP filters: run it as \
             root (sudo -E cargo xtask bench vpn)"
        );
    }
    check_tools()?;
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, Arc::clone(&INTERRUPTED))
            .context("cannot install the Ctrl-C handler")?;
    }
    std::fs::create_dir_all(out_dir)?;
    remove_stale();
    // The agent pins its filter there.
    privileged::ensure_bpffs()?;
    std::fs::create_dir_all(SOCKET_DIR)?;
    let work = WorkDir(std::env::temp_dir().join(format!("{PREFIX}{}", std::process::id())));
    std::fs::create_dir_all(&work.0)?;
    let ticks_per_s: f64 = cmd::stdout_of(Command::new("getconf").arg("CLK_TCK"))?
        .trim()
        .parse()
        .context("getconf CLK_TCK")?;
    Ok((work, ticks_per_s))
}

/// The agent's memory at [`RSS_PEERS`] and [`RSS_PEERS_LARGE`] peers: (peers, target MiB,
/// what was measured).
fn measure_memory(env: &Env<'_>) -> Result<Vec<MemoryRow>> {
    let mut memory = Vec::new();
    for (peers, target) in [
        (RSS_PEERS, RSS_TARGET_MIB),
        (RSS_PEERS_LARGE, RSS_LARGE_TARGET_MIB),
    ] {
        let measured = match env.crmguard {
            Some(bin) => {
                eprintln!("bench: agent memory with {peers} peers");
                memory_with_peers(bin, env, peers).map_err(|e| format!("{e:#}"))
            }
            None => Err("crmguard was not built".to_owned()),
        };
        check_interrupt()?;
        memory.push((peers, target, measured));
    }
    Ok(memory)
}

/// The memory rows alone (`crmguard-bench memory`): the same rows and lines as the VPN
/// bench's report prints for them, and `memory.json`.
pub fn run_memory(workspace: &Workspace, out_dir: &Path) -> Result<()> {
    let (work, ticks_per_s) = prepare(out_dir)?;
    let crmguard = build_crmguard(workspace);
    let env = Env {
        work: &work.0,
        crmguard: crmguard.as_ref().ok().map(PathBuf::as_path),
        boringtun: None,
        ticks_per_s,
    };
    let memory = measure_memory(&env)?;
    println!();
    println!(
        "{:<52} {:>9} {:>9}",
        "crmguard against its targets", "measured", "target"
    );
    for (name, value, target, verdict) in memory_rows(&memory) {
        println!("{name:<52} {:>9} {target:>9}  {verdict}", fmt_opt(value, 2));
    }
    print_memory_lines(&memory);
    let json = json!({ "memory": memory_json(&memory) });
    let path = out_dir.join("memory.json");
    std::fs::write(&path, serde_json::to_string_pretty(&json)?)?;
    println!("\nwritten to {}", path.display());
    Ok(())
}

/// Only the handshake rows of the VPN bench: handshakes a second of crmguard and wireguard-go,
/// their ratio against the goal and crmguard's profile, written to `handshakes.json`.
pub fn run_handshakes(workspace: &Workspace, out_dir: &Path, plan: Plan) -> Result<()> {
    let (work, ticks_per_s) = prepare(out_dir)?;
    let crmguard = build_crmguard(workspace)?;
    let env = Env {
        work: &work.0,
        crmguard: Some(&crmguard),
        boringtun: None,
        ticks_per_s,
    };
    eprintln!(
        "bench: handshakes completed per second, {HANDSHAKE_PEERS} peers, gateway on one CPU, \
         {} rounds of {} s, gateways alternating",
        plan.rounds, plan.handshake_seconds
    );
    let handshakes = crate::handshakes::measure(&env, plan.rounds, plan.handshake_seconds);
    check_interrupt()?;
    println!();
    println!(
        "{:<52} {:>9} {:>9}",
        "crmguard against its targets", "measured", "target"
    );
    for (name, value, target, verdict) in handshake_rows(&handshakes) {
        println!("{name:<52} {:>9} {target:>9}  {verdict}", fmt_opt(value, 2));
    }
    print_handshakes(&handshakes);
    let path = out_dir.join("handshakes.json");
    let json = json!({ "handshakes": handshakes_json(&handshakes, plan) });
    std::fs::write(&path, serde_json::to_string_pretty(&json)?)?;
    println!("\nwritten to {}", path.display());
    Ok(())
}

/// `side`'s handshakes a second over wireguard-go's, medians of the rounds.
fn handshake_ratio(handshakes: &[Outcome], side: Side) -> Option<f64> {
    let rate = |side: Side| {
        handshakes
            .iter()
            .find(|o| o.side == side)
            .and_then(Outcome::per_second)
    };
    Some(rate(side)? / rate(Side::WireguardGo)?)
}

/// The handshake rows of the targets table: crmguard's ratio against its goal, and boringtun's
/// `noise` alone (the ceiling of a gateway built on it) against the same comparator.
fn handshake_rows(handshakes: &[Outcome]) -> Vec<(String, Option<f64>, String, &'static str)> {
    let crmguard = handshake_ratio(handshakes, Side::Crmguard);
    let mut rows = vec![(
        format!("handshakes/s crmguard / wireguard-go, {HANDSHAKE_PEERS} peers, 1 CPU"),
        crmguard,
        format!(">= {HANDSHAKE_TARGET}x"),
        verdict(crmguard, HANDSHAKE_TARGET, true),
    )];
    for side in Side::NOISE {
        rows.push((
            format!("  {} / wireguard-go", side.name()),
            handshake_ratio(handshakes, side),
            "-".to_owned(),
            "",
        ));
    }
    rows
}

pub fn run(workspace: &Workspace, out_dir: &Path, plan: Plan) -> Result<()> {
    let (work, ticks_per_s) = prepare(out_dir)?;
    let crmguard = build_crmguard(workspace);
    let boringtun = boringtun_cli(workspace, out_dir);
    let env = Env {
        work: &work.0,
        crmguard: crmguard.as_ref().ok().map(PathBuf::as_path),
        boringtun: boringtun.as_ref().ok().map(PathBuf::as_path),
        ticks_per_s,
    };

    let mut results: Vec<Results> = Kind::ALL
        .iter()
        .map(|&kind| Results {
            kind,
            unavailable: None,
            transfers: [Vec::new(), Vec::new()],
            syscalls: [Vec::new(), Vec::new()],
            syscall_error: None,
            latency: None,
            flood: Vec::new(),
            flood_error: None,
        })
        .collect();
    if let Err(e) = &boringtun {
        results[1].unavailable = Some(format!("{e:#}"));
    }
    if let Err(e) = &crmguard {
        results[2].unavailable = Some(format!("building crmguard failed: {e:#}"));
        results[3].unavailable = Some(format!("building crmguard failed: {e:#}"));
    }

    eprintln!("bench: starting the four pairs");
    let mut pairs: Vec<Option<Pair>> = Vec::new();
    for result in &mut results {
        if result.unavailable.is_some() {
            pairs.push(None);
            continue;
        }
        match Pair::start(result.kind, &env) {
            Ok(pair) => pairs.push(Some(pair)),
            Err(e) if result.kind == Kind::WireguardGo => {
                return Err(e.context("the wireguard-go pair, the comparator, cannot start"));
            }
            Err(e) => {
                check_interrupt()?;
                eprintln!("bench: {} is unavailable: {e:#}", result.kind.name());
                result.unavailable = Some(format!("{e:#}"));
                pairs.push(None);
            }
        }
    }

    let Plan {
        rounds,
        seconds,
        syscall_seconds,
        handshake_seconds,
    } = plan;
    eprintln!(
        "bench: goodput, {rounds} rounds of {seconds} s per pair and direction, pairs alternating"
    );
    for round in 1..=rounds {
        for (d, direction) in Direction::BOTH.iter().enumerate() {
            let mut line = format!("  round {round}/{rounds} {:<8}", direction.key());
            for (pair, result) in pairs.iter_mut().zip(results.iter_mut()) {
                let Some(p) = pair else { continue };
                match p.transfer(*direction, seconds, &env) {
                    Ok(t) => {
                        let _ = write!(line, "  {} {:.2} Gbit/s", p.kind.tag(), t.gbit_s);
                        result.transfers[d].push(t);
                    }
                    Err(e) if p.kind == Kind::WireguardGo => {
                        return Err(e.context("the wireguard-go pair failed"));
                    }
                    Err(e) => {
                        check_interrupt()?;
                        eprintln!("bench: {} failed: {e:#}", p.kind.name());
                        result.unavailable = Some(format!("failed during the run: {e:#}"));
                        *pair = None;
                    }
                }
            }
            eprintln!("{line}");
        }
    }

    let counter = SyscallCounter::detect();
    match counter {
        Some(counter) => eprintln!(
            "bench: syscalls of each gateway, {SYSCALL_WINDOWS} windows of {syscall_seconds} s per direction ({})",
            counter.name()
        ),
        None => eprintln!("bench: neither perf nor strace works here: no syscall counts"),
    }
    if let Some(counter) = counter {
        for (pair, result) in pairs.iter_mut().zip(results.iter_mut()) {
            let Some(p) = pair else { continue };
            for (d, direction) in Direction::BOTH.iter().enumerate() {
                match p.count_syscalls(*direction, counter, syscall_seconds, &env) {
                    Ok(counts) => result.syscalls[d] = counts,
                    Err(e) => {
                        check_interrupt()?;
                        eprintln!(
                            "bench: counting syscalls of {} failed: {e:#}",
                            p.kind.name()
                        );
                        result.syscall_error = Some(format!("{e:#}"));
                    }
                }
            }
        }
    }
    eprintln!(
        "bench: round trips through each tunnel, {} pings {}s apart, alone and during a forward transfer",
        latency::PROBES,
        latency::INTERVAL
    );
    for (pair, result) in pairs.iter_mut().zip(results.iter_mut()) {
        let Some(p) = pair else { continue };
        let measured = p.latency(&env).map_err(|e| format!("{e:#}"));
        check_interrupt()?;
        if let Err(e) = &measured {
            eprintln!("bench: the round trips of {} failed: {e}", p.kind.name());
        }
        result.latency = Some(measured);
    }
    eprintln!(
        "bench: goodput under a flood of {FLOOD_PPS} spoofed handshake initiations a second / \
         without, forward, {rounds} rounds of {seconds} s, gateways alternating"
    );
    for round in 1..=rounds {
        let mut line = format!("  round {round}/{rounds}");
        for (pair, result) in pairs.iter_mut().zip(results.iter_mut()) {
            let Some(p) = pair else { continue };
            if !Kind::FLOODED.contains(&p.kind) {
                continue;
            }
            match p.flood_round(seconds, &env) {
                Ok(r) => {
                    let _ = write!(
                        line,
                        "  {} {:.2} -> {:.2} Gbit/s",
                        p.kind.tag(),
                        r.quiet_gbit_s,
                        r.under_gbit_s
                    );
                    result.flood.push(r);
                }
                Err(e) => {
                    check_interrupt()?;
                    eprintln!("bench: the flood round of {} failed: {e:#}", p.kind.name());
                    result.flood_error = Some(format!("{e:#}"));
                }
            }
        }
        eprintln!("{line}");
    }
    eprintln!(
        "bench: where the crmguard gateway's CPU goes, perf record during one transfer each way"
    );
    let mut profile = Vec::with_capacity(2);
    for direction in Direction::BOTH {
        profile.push(match pairs.get_mut(2).and_then(Option::as_mut) {
            Some(p) => p
                .profile(direction, seconds, &env, out_dir)
                .map_err(|e| format!("{e:#}")),
            None => Err("the crmguard pair is unavailable".to_owned()),
        });
        check_interrupt()?;
    }
    let floor = crate::profile::aead_floor().map_err(|e| format!("{e:#}"));
    // The tunnels are stopped before the memory measurement.
    drop(pairs);

    let memory = measure_memory(&env)?;

    eprintln!(
        "bench: handshakes completed per second, {HANDSHAKE_PEERS} peers, gateway on one CPU, \
         {rounds} rounds of {handshake_seconds} s, gateways alternating"
    );
    let handshakes = crate::handshakes::measure(&env, rounds, handshake_seconds);
    check_interrupt()?;
    eprintln!("bench: inspection's flow table at max_flows = {TABLE_FLOWS}");
    let table = [false, true].map(|decided| {
        crate::inspect_table::measure(TABLE_FLOWS, decided).map_err(|e| format!("{e:#}"))
    });
    let inspect_packet_ns =
        crate::inspect_table::per_packet_ns(INSPECT_PACKETS).map_err(|e| format!("{e:#}"));

    report(
        out_dir,
        plan,
        counter,
        &results,
        &Extra {
            memory: &memory,
            table: &table,
            inspect_packet_ns: &inspect_packet_ns,
            handshakes: &handshakes,
            profile: &profile,
            floor: &floor,
        },
    )
}

pub(crate) fn fmt_opt(value: Option<f64>, precision: usize) -> String {
    value.map_or("-".to_owned(), |v| format!("{v:.precision$}"))
}

pub(crate) fn verdict(value: Option<f64>, target: f64, at_least: bool) -> &'static str {
    match value {
        None => "n/a",
        Some(v) if (at_least && v >= target) || (!at_least && v <= target) => "met",
        Some(_) => "MISSED",
    }
}

/// The measurements beyond the pairs' transfers.
struct Extra<'a> {
    /// (peers, target MiB, what was measured).
    memory: &'a [MemoryRow],
    table: &'a [std::result::Result<TableMemory, String>; 2],
    /// `Inspector::packet` for a packet of a decided flow, ns.
    inspect_packet_ns: &'a std::result::Result<f64, String>,
    handshakes: &'a [Outcome],
    /// Per direction (forward, reverse).
    profile: &'a [std::result::Result<Profile, String>],
    /// The AEAD's CPU s/GB in this process.
    floor: &'a std::result::Result<f64, String>,
}

fn report(
    out_dir: &Path,
    plan: Plan,
    counter: Option<SyscallCounter>,
    results: &[Results],
    extra: &Extra<'_>,
) -> Result<()> {
    let Extra {
        memory,
        table,
        inspect_packet_ns,
        handshakes,
        profile,
        floor,
    } = *extra;
    println!();
    println!(
        "VPN single-stream TCP through the tunnel (iperf3, {} s, median of {} alternating rounds); \
         CPU and syscalls of the gateway side",
        plan.seconds, plan.rounds
    );
    println!(
        "{:<32} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>7} {:>7}",
        "pair",
        "fwd Gb/s",
        "rev Gb/s",
        "CPU s/GB",
        "CPU s/GB",
        "sysc/pkt",
        "sysc/pkt",
        "drop %",
        "drop %"
    );
    println!(
        "{:<32} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>7} {:>7}",
        "", "", "", "fwd", "rev", "fwd", "rev", "fwd", "rev"
    );
    for r in results {
        if let Some(reason) = &r.unavailable {
            if r.transfers[0].is_empty() {
                println!("{:<32} unavailable: {}", r.kind.name(), first_line(reason));
                continue;
            }
        }
        println!(
            "{:<32} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>7} {:>7}",
            r.kind.name(),
            fmt_opt(r.goodput(0), 2),
            fmt_opt(r.goodput(1), 2),
            fmt_opt(r.cpu_per_gb(0, false), 2),
            fmt_opt(r.cpu_per_gb(1, false), 2),
            fmt_opt(r.syscalls_per_packet(0), 2),
            fmt_opt(r.syscalls_per_packet(1), 2),
            fmt_opt(r.receiver_drops(0), 1),
            fmt_opt(r.receiver_drops(1), 1),
        );
        if let (Some(reason), false) = (&r.unavailable, r.transfers[0].is_empty()) {
            println!("{:<32} (stopped early: {})", "", first_line(reason));
        }
    }
    println!(
        "  drop %: of the WireGuard datagrams that reached the receiving side (the gateway \
         forward, the client in reverse), those its full UDP socket buffer dropped"
    );

    print_latency(results);

    let wg = &results[0];
    let cg = &results[2];
    let uninspected = &results[3];
    let ratio = |a: Option<f64>, b: Option<f64>| Some(a? / b?);
    // Pairs against pairs: the median of each round's ratio, between transfers made one after
    // the other, so that the machine's changes of speed between rounds stay out of them.
    let paired = |a: Vec<f64>, b: Vec<f64>| {
        (!a.is_empty() && !b.is_empty()).then(|| crate::xdp::paired_ratio(&a, &b))
    };
    let goodput = [0, 1].map(|d| paired(cg.goodputs(d), wg.goodputs(d)));
    let cpu = [0, 1].map(|d| paired(cg.cpus_per_gb(d, false), wg.cpus_per_gb(d, false)));
    let inspect_goodput = [0, 1].map(|d| paired(cg.goodputs(d), uninspected.goodputs(d)));
    let inspect_cpu =
        [0, 1].map(|d| paired(cg.cpus_per_gb(d, false), uninspected.cpus_per_gb(d, false)));
    let syscalls = [0, 1].map(|d| cg.syscalls_per_packet(d));
    let flood = [cg, wg].map(|r| crate::flood::ratio(&r.flood));

    println!();
    println!(
        "{:<52} {:>9} {:>9}",
        "crmguard against its targets", "measured", "target"
    );
    let mut rows: Vec<(String, Option<f64>, String, &str)> = vec![
        (
            "goodput crmguard / wireguard-go, forward".to_owned(),
            goodput[0],
            format!(">= {GOODPUT_TARGET}x"),
            verdict(goodput[0], GOODPUT_TARGET, true),
        ),
        (
            "goodput crmguard / wireguard-go, reverse".to_owned(),
            goodput[1],
            format!(">= {GOODPUT_TARGET}x"),
            verdict(goodput[1], GOODPUT_TARGET, true),
        ),
        (
            "CPU s/GB crmguard / wireguard-go gateway, forward".to_owned(),
            cpu[0],
            format!("<= {CPU_TARGET}x"),
            verdict(cpu[0], CPU_TARGET, false),
        ),
        (
            "CPU s/GB crmguard / wireguard-go gateway, reverse".to_owned(),
            cpu[1],
            format!("<= {CPU_TARGET}x"),
            verdict(cpu[1], CPU_TARGET, false),
        ),
        (
            "syscalls per packet on the gateway, forward".to_owned(),
            syscalls[0],
            format!("<= {SYSCALLS_TARGET}"),
            verdict(syscalls[0], SYSCALLS_TARGET, false),
        ),
        (
            "syscalls per packet on the gateway, reverse".to_owned(),
            syscalls[1],
            format!("<= {SYSCALLS_TARGET}"),
            verdict(syscalls[1], SYSCALLS_TARGET, false),
        ),
        (
            "goodput inspection on / off, forward".to_owned(),
            inspect_goodput[0],
            format!(">= {INSPECT_GOODPUT_TARGET}x"),
            verdict(inspect_goodput[0], INSPECT_GOODPUT_TARGET, true),
        ),
        (
            "goodput inspection on / off, reverse".to_owned(),
            inspect_goodput[1],
            format!(">= {INSPECT_GOODPUT_TARGET}x"),
            verdict(inspect_goodput[1], INSPECT_GOODPUT_TARGET, true),
        ),
        (
            "CPU s/GB inspection on / off, forward".to_owned(),
            inspect_cpu[0],
            "-".to_owned(),
            "",
        ),
        (
            "CPU s/GB inspection on / off, reverse".to_owned(),
            inspect_cpu[1],
            "-".to_owned(),
            "",
        ),
        (
            "goodput under a handshake flood / without, crmguard".to_owned(),
            flood[0],
            format!(">= {FLOOD_TARGET}x"),
            verdict(flood[0], FLOOD_TARGET, true),
        ),
        (
            "  the same, wireguard-go as the gateway".to_owned(),
            flood[1],
            "-".to_owned(),
            "",
        ),
    ];
    rows.extend(memory_rows(memory));
    rows.extend(handshake_rows(handshakes));
    let cg_cpu = cg.cpu_per_gb(0, false);
    let floor_value = floor.as_ref().ok().copied();
    rows.push((
        "CPU s/GB crmguard gateway / ChaCha20-Poly1305 floor, fwd".to_owned(),
        ratio(cg_cpu, floor_value),
        "-".to_owned(),
        "",
    ));
    for (name, value, target, verdict) in &rows {
        println!(
            "{name:<52} {:>9} {target:>9}  {verdict}",
            fmt_opt(*value, 2)
        );
    }
    print_memory_lines(memory);
    print_flood(results);
    print_handshakes(handshakes);
    print_profile(profile, floor, cg_cpu);
    for (shape, measured) in ["just opened", "decided"].iter().zip(table) {
        match measured {
            Ok(t) => println!(
                "inspection table, {} flows {shape}: {:.1} MiB ({:.0} B per flow), filled in {:.2} s",
                t.flows,
                t.rss_growth_kib as f64 / 1024.0,
                t.bytes_per_flow,
                t.fill_seconds
            ),
            Err(reason) => println!("inspection table, {shape}: {}", first_line(reason)),
        }
    }
    match inspect_packet_ns {
        Ok(ns) => println!(
            "inspection, a packet of a decided flow: {ns:.0} ns ({INSPECT_PACKETS} packets, one thread)"
        ),
        Err(reason) => println!("inspection, a packet of a decided flow: {}", first_line(reason)),
    }
    if let Some(counter) = counter {
        println!(
            "\nsyscalls: {} on the gateway process, median of {SYSCALL_WINDOWS} windows of {} s per \
             direction, per TCP segment through the tunnel (one WireGuard datagram each)",
            counter.name(),
            plan.syscall_seconds
        );
        for (d, direction) in ["forward", "reverse"].iter().enumerate() {
            let calls: Vec<String> = cg
                .calls_per_packet(d)
                .iter()
                .filter(|(_, per_packet)| *per_packet >= 0.005)
                .map(|(call, per_packet)| format!("{call} {per_packet:.2}"))
                .collect();
            if !calls.is_empty() {
                println!(
                    "  crmguard's by call, {direction}: {} (of {})",
                    calls.join(", "),
                    fmt_opt(cg.syscalls_per_packet(d), 2)
                );
            }
        }
    }

    let pairs: Vec<Value> = results
        .iter()
        .map(|r| {
            let direction = |d: usize| {
                json!({
                    "gbit_s_median": r.goodput(d),
                    "gbit_s": r.transfers[d].iter().map(|t| t.gbit_s).collect::<Vec<_>>(),
                    "bytes": r.transfers[d].iter().map(|t| t.bytes).collect::<Vec<_>>(),
                    "gateway_cpu_s_per_gb": r.cpu_per_gb(d, false),
                    "client_cpu_s_per_gb": r.cpu_per_gb(d, true),
                    "receiver_udp_dropped_percent": r.receiver_drops(d),
                    "receiver_udp_queued": r.transfers[d].iter().map(|t| t.receiver_udp.queued).collect::<Vec<_>>(),
                    "receiver_udp_dropped": r.transfers[d].iter().map(|t| t.receiver_udp.dropped).collect::<Vec<_>>(),
                    "syscalls_per_packet": r.syscalls_per_packet(d),
                    "syscalls": r.syscalls[d].iter().map(|c| c.syscalls).collect::<Vec<_>>(),
                    "syscalls_per_packet_by_call": r.calls_per_packet(d).into_iter().map(|(call, n)| (call, json!(n))).collect::<serde_json::Map<_, _>>(),
                    "tunnel_packets": r.syscalls[d].iter().map(|c| c.segments).collect::<Vec<_>>(),
                    "gateway_veth_packets": r.syscalls[d].iter().map(|c| c.veth_packets).collect::<Vec<_>>(),
                })
            };
            let rtt = |rtt: &Rtt| {
                json!({ "median_ms": rtt.median_ms, "p99_ms": rtt.p99_ms, "answered": rtt.answered })
            };
            let latency = match &r.latency {
                Some(Ok([idle, loaded])) => json!({
                    "probes": latency::PROBES,
                    "interval_s": latency::INTERVAL,
                    "idle": rtt(idle),
                    "during_forward_transfer": rtt(loaded),
                }),
                Some(Err(reason)) => json!({ "unavailable": reason }),
                None => Value::Null,
            };
            json!({
                "pair": r.kind.name(),
                "key": r.kind.key(),
                "unavailable": r.unavailable,
                "syscall_error": r.syscall_error,
                "forward": direction(0),
                "reverse": direction(1),
                "round_trip": latency,
                "handshake_flood": (!r.flood.is_empty() || r.flood_error.is_some()).then(|| {
                    let mut v = crate::flood::json(&r.flood);
                    v["error"] = json!(r.flood_error);
                    v
                }),
            })
        })
        .collect();
    let json = json!({
        "seconds_per_transfer": plan.seconds,
        "rounds": plan.rounds,
        "syscall_counter": counter.map(SyscallCounter::name),
        "syscall_seconds": plan.syscall_seconds,
        "syscall_windows": SYSCALL_WINDOWS,
        "pairs": pairs,
        "ratios": {
            "goodput_crmguard_vs_wireguard_go": { "forward": goodput[0], "reverse": goodput[1], "target_at_least": GOODPUT_TARGET },
            "cpu_per_gb_crmguard_vs_wireguard_go": { "forward": cpu[0], "reverse": cpu[1], "target_at_most": CPU_TARGET },
            "crmguard_syscalls_per_packet": { "forward": syscalls[0], "reverse": syscalls[1], "target_at_most": SYSCALLS_TARGET },
            "goodput_inspection_on_vs_off": { "forward": inspect_goodput[0], "reverse": inspect_goodput[1], "target_at_least": INSPECT_GOODPUT_TARGET },
            "cpu_per_gb_inspection_on_vs_off": { "forward": inspect_cpu[0], "reverse": inspect_cpu[1] },
            "goodput_under_handshake_flood_vs_without": { "crmguard": flood[0], "wireguard_go": flood[1], "flood_per_s": FLOOD_PPS, "target_at_least": FLOOD_TARGET },
        },
        "inspection_table": table.iter().zip(["just_opened", "decided"]).map(|(t, shape)| match t {
            Ok(t) => json!({
                "shape": shape,
                "flows": t.flows,
                "rss_growth_mib": t.rss_growth_kib as f64 / 1024.0,
                "bytes_per_flow": t.bytes_per_flow,
                "fill_seconds": t.fill_seconds,
            }),
            Err(reason) => json!({ "shape": shape, "unavailable": reason }),
        }).collect::<Vec<_>>(),
        "inspection_packet_ns": inspect_packet_ns.as_ref().ok(),
        "memory": memory_json(memory),
        "handshakes": handshakes_json(handshakes, plan),
        "gateway_profile": Direction::BOTH.iter().zip(profile).map(|(direction, profile)| (direction.key().to_owned(), match profile {
            Ok(p) => json!({
                "shares_percent": p.shares_json(),
                "top_symbols": p.top.iter().map(|(percent, space, symbol)| json!({ "percent": percent, "space": space, "symbol": symbol })).collect::<Vec<_>>(),
                "by_system_call_percent": places_json(&p.places.calls),
                "by_thread_percent": places_json(&p.places.threads),
            }),
            Err(reason) => json!({ "unavailable": reason }),
        })).collect::<serde_json::Map<_, _>>(),
        "aead_floor": {
            "what": "ChaCha20-Poly1305 seal (ring), one thread",
            "packet_bytes": FLOOR_PACKET,
            "cpu_s_per_gb": floor.as_ref().ok(),
            "unavailable": floor.as_ref().err(),
            "crmguard_gateway_forward_cpu_s_per_gb": cg_cpu,
        },
    });
    let path = out_dir.join("vpn.json");
    std::fs::write(&path, serde_json::to_string_pretty(&json)?)?;
    println!("\nwritten to {}", path.display());
    Ok(())
}

/// The goodput of the gateways measured under a handshake flood, with and without it.
fn print_flood(results: &[Results]) {
    let flooded: Vec<&Results> = results
        .iter()
        .filter(|r| Kind::FLOODED.contains(&r.kind))
        .collect();
    if flooded
        .iter()
        .all(|r| r.flood.is_empty() && r.flood_error.is_none())
    {
        return;
    }
    println!(
        "forward goodput under a flood of {FLOOD_PPS} spoofed handshake initiations a second \
         (valid MAC1, random sources) / without, median of the rounds:"
    );
    for r in flooded {
        match (&r.flood_error, r.flood.is_empty()) {
            (Some(reason), true) => println!("  {:<30} {}", r.kind.name(), first_line(reason)),
            _ => crate::flood::print(r.kind.name(), &r.flood),
        }
    }
}

/// The round trips through each pair's tunnel, alone and during a forward transfer.
fn print_latency(results: &[Results]) {
    println!();
    println!(
        "round trip through the tunnel (ping, {} probes {} s apart), ms: median / 99th percentile",
        latency::PROBES,
        latency::INTERVAL
    );
    println!(
        "{:<32} {:>17} {:>26}",
        "pair", "alone", "during a forward transfer"
    );
    for r in results {
        let cell = |rtt: &Rtt| format!("{:.2} / {:.2}", rtt.median_ms, rtt.p99_ms);
        match &r.latency {
            Some(Ok([idle, loaded])) => println!(
                "{:<32} {:>17} {:>26}",
                r.kind.name(),
                cell(idle),
                cell(loaded)
            ),
            Some(Err(reason)) => {
                println!("{:<32} unavailable: {}", r.kind.name(), first_line(reason))
            }
            None => {}
        }
    }
}

/// One memory measurement: (peers, target MiB, what was measured).
type MemoryRow = (usize, f64, std::result::Result<Memory, String>);

/// The report's rows of the memory measurements: (name, MiB, target, verdict).
fn memory_rows(memory: &[MemoryRow]) -> Vec<(String, Option<f64>, String, &'static str)> {
    memory
        .iter()
        .map(|(peers, target, measured)| {
            let mib = measured.as_ref().ok().map(|m| m.rss_kib as f64 / 1024.0);
            (
                format!("agent RSS with {peers} peers, MiB"),
                mib,
                format!("<= {target}"),
                verdict(mib, *target, false),
            )
        })
        .collect()
}

/// The lines under the table about each memory measurement.
fn print_memory_lines(memory: &[MemoryRow]) {
    let tunn = crate::memory::tunn_bytes();
    for (peers, _, measured) in memory {
        match measured {
            Ok(m) => println!(
                "agent with {peers} peers, none connected: admitted all in {:.1} s; boringtun's \
                 Tunn ({tunn} B) is made at a peer's first handshake, {:.1} MiB if all connect",
                m.start_seconds,
                (tunn * peers) as f64 / 1024.0 / 1024.0
            ),
            Err(reason) => {
                println!(
                    "agent RSS with {peers} peers unavailable: {}",
                    first_line(reason)
                );
            }
        }
    }
}

/// The memory measurements in the JSON report.
/// `places` as an object of name to per cent.
fn places_json(places: &[(f64, String)]) -> Value {
    Value::Object(
        places
            .iter()
            .map(|(percent, name)| (name.clone(), json!(percent)))
            .collect(),
    )
}

fn memory_json(memory: &[MemoryRow]) -> Vec<serde_json::Value> {
    memory
        .iter()
        .map(|(peers, target, measured)| match measured {
            Ok(m) => json!({
                "peers": m.peers,
                "rss_mib": m.rss_kib as f64 / 1024.0,
                "peak_rss_mib": m.hwm_kib as f64 / 1024.0,
                "target_rss_mib_at_most": target,
                "start_seconds": m.start_seconds,
                "tunn_bytes_per_peer": crate::memory::tunn_bytes(),
            }),
            Err(reason) => json!({ "peers": peers, "unavailable": reason }),
        })
        .collect()
}

/// The handshake measurements as `vpn.json` and `handshakes.json` hold them.
fn handshakes_json(handshakes: &[Outcome], plan: Plan) -> Value {
    json!({
        "peers": HANDSHAKE_PEERS,
        "seconds_per_window": plan.handshake_seconds,
        "crmguard_vs_wireguard_go": handshake_ratio(handshakes, Side::Crmguard),
        "boringtun_noise_alone_vs_wireguard_go": Side::NOISE.map(|side| (side.key().to_owned(), json!(handshake_ratio(handshakes, side)))).into_iter().collect::<serde_json::Map<_, _>>(),
        "target_at_least": HANDSHAKE_TARGET,
        "gateways": handshakes.iter().map(|o| json!({
            "gateway": o.side.key(),
            "per_second_median": o.per_second(),
            "gateway_cpu_us_per_handshake": o.cpu_us_per_handshake(),
            "per_second": o.windows.iter().map(crate::handshakes::Window::per_second).collect::<Vec<_>>(),
            "sent": o.windows.iter().map(|w| w.sent).collect::<Vec<_>>(),
            "responses": o.windows.iter().map(|w| w.responses).collect::<Vec<_>>(),
            "completed": o.windows.iter().map(|w| w.completed).collect::<Vec<_>>(),
            "cookie_replies": o.windows.iter().map(|w| w.cookies).collect::<Vec<_>>(),
            "seconds": o.windows.iter().map(|w| w.seconds).collect::<Vec<_>>(),
            "gateway_cpu_s": o.windows.iter().map(|w| w.gateway_cpu_s).collect::<Vec<_>>(),
            "error": o.error,
            "profile_shares_percent": o.profile.as_ref().and_then(|p| p.as_ref().ok()).map(Profile::shares_json),
            "profile_top_symbols": o.profile.as_ref().and_then(|p| p.as_ref().ok()).map(|p| p.top.iter().map(|(percent, space, symbol)| json!({ "percent": percent, "space": space, "symbol": symbol })).collect::<Vec<_>>()),
        })).collect::<Vec<_>>(),
    })
}

fn print_handshakes(handshakes: &[Outcome]) {
    println!(
        "\nhandshakes completed per second, {HANDSHAKE_PEERS} peers, gateway pinned to one CPU \
         (median of the rounds):"
    );
    for o in handshakes {
        let cookies: u64 = o.windows.iter().map(|w| w.cookies).sum();
        match (o.per_second(), &o.error) {
            (Some(rate), error) => println!(
                "  {:<34} {rate:>9.0}/s  {:>7} CPU us/handshake  {cookies} cookie replies{}",
                o.side.name(),
                fmt_opt(o.cpu_us_per_handshake(), 0),
                error
                    .as_ref()
                    .map(|e| format!(" (stopped early: {})", first_line(e)))
                    .unwrap_or_default()
            ),
            (None, Some(error)) => {
                println!("  {:<34} unavailable: {}", o.side.name(), first_line(error));
            }
            (None, None) => println!("  {:<34} no window ran", o.side.name()),
        }
    }
    for o in handshakes {
        match &o.profile {
            Some(Ok(p)) => {
                println!(
                    "  {} during one more window (perf record, samples): {}",
                    o.side.name(),
                    p.shares_text()
                );
                for (percent, space, symbol) in p.top.iter().take(8) {
                    println!("    {percent:>6.2} %  {space} {symbol:.90}");
                }
            }
            Some(Err(reason)) => println!(
                "  {} profile unavailable: {}",
                o.side.name(),
                first_line(reason)
            ),
            None => {}
        }
    }
}

fn print_profile(
    profile: &[std::result::Result<Profile, String>],
    floor: &std::result::Result<f64, String>,
    gateway_cpu: Option<f64>,
) {
    for (direction, profile) in Direction::BOTH.iter().zip(profile) {
        println!(
            "\nwhere the crmguard gateway's CPU goes, {} transfer (perf record, samples):",
            direction.key()
        );
        match profile {
            Ok(p) => {
                println!("  {}", p.shares_text());
                for (percent, space, symbol) in p.top.iter().take(6) {
                    println!("  {percent:>6.2} %  {space} {symbol:.90}");
                }
                println!("  by system call: {}", fmt_places(&p.places.calls, 8));
                println!("  by thread: {}", fmt_places(&p.places.threads, 4));
            }
            Err(reason) => println!("  unavailable: {}", first_line(reason)),
        }
    }
    match floor {
        Ok(floor) => println!(
            "  CPU s/GB: gateway {} forward, ChaCha20-Poly1305 seal of {FLOOR_PACKET}-byte packets \
             in one thread {floor:.3} (the floor)",
            fmt_opt(gateway_cpu, 2)
        ),
        Err(reason) => println!("  the AEAD floor is unavailable: {}", first_line(reason)),
    }
}

/// The first `n` of `places` as `name 12.3 %`, the rest summed as `others`.
fn fmt_places(places: &[(f64, String)], n: usize) -> String {
    let mut parts: Vec<String> = places
        .iter()
        .take(n)
        .map(|(percent, name)| format!("{name} {percent:.1} %"))
        .collect();
    let rest: f64 = places.iter().skip(n).map(|(percent, _)| percent).sum();
    if places.len() > n {
        parts.push(format!("others {rest:.1} %"));
    }
    parts.join(", ")
}

pub(crate) fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners_are_read_from_names() {
        assert_eq!(owner("cgbv-1234-wg-c", PREFIX), Some(1234));
        assert_eq!(owner("cgb1234wgc.sock", IF_PREFIX), Some(1234));
        assert_eq!(owner("cgbench-1-1k", PREFIX), None);
        assert_eq!(owner("crmguard0.sock", IF_PREFIX), None);
    }

    #[test]
    fn udp_drops_are_a_share_of_what_reached_the_socket() {
        let before = UdpReceived {
            queued: 1_000,
            dropped: 10,
        };
        let after = UdpReceived {
            queued: 1_900,
            dropped: 110,
        };
        let delta = after.since(before);
        assert_eq!((delta.queued, delta.dropped), (900, 100));
        assert_eq!(delta.dropped_percent(), Some(10.0));
        assert_eq!(before.since(before).dropped_percent(), None);
    }

    #[test]
    fn medians_take_the_middle() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[]), None);
    }
}
