//! `allow_established`: replies to connections the host opened itself pass the XDP filter under
//! default drop, so the host's own DNS lookups, downloads and pings keep working.
//!
//! The tc egress program records what the host sends in `cg_flows`; XDP lets in a packet that
//! matches a recorded flow, and only when the policy's `allow_established` is on. The scenarios
//! run real clients in the host namespace (`dig`, `curl`, `ping`) against real servers outside
//! (`dnsmasq`, python3's `http.server`), with a policy whose only service (ssh) is open to an
//! unrelated network, so that nothing but the flow records can let the replies in. The golden
//! cases run crafted frames through both programs with BPF_PROG_TEST_RUN, for what a veth cannot
//! carry here (VLAN tags) and what no client sends on purpose (options, extension headers,
//! fragments).

use std::io::ErrorKind;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use aya::maps::{HashMap, Map, MapData, MapError, PerCpuArray};
use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::{TestRun, TestRunOptions};
use aya::Ebpf;
use crmguard_core::abi::{self, Flow, Flow4Cached, Flow4Key, FlowKey, FlowPlace};
use crmguard_datapath::tc::{self, Egress, EgressMode, Mechanism};
use crmguard_datapath::{self, PolicyMaps};
use crmguard_lab::agent::Agent;
use crmguard_lab::cpu::Pinned;
use crmguard_lab::net::{self, TcpOutcome, TcpServer};
use crmguard_lab::netns::NetNs;
use crmguard_lab::privileged;
use crmguard_lab::process::{self, Process};
use crmguard_lab::topology::Topology;
use crmguard_lab::wait::wait_for;
use tempfile::TempDir;

/// How long servers may take to start answering.
const READY: Duration = Duration::from_secs(20);
/// How long counters may take to reflect traffic that was already sent.
const COUNT: Duration = Duration::from_secs(10);
/// The name dnsmasq answers, and its address.
const NAME: &str = "crm.example";
const NAME_ADDR: &str = "192.0.2.10";
/// The port of the outside HTTP server.
const HTTP: u16 = 8000;
/// The size of the downloaded file: a few MB, many TCP segments and window updates.
const BLOB_BYTES: usize = 4 << 20;
/// tc's "no verdict, go on" (TC_ACT_UNSPEC, TCX_NEXT), what the egress program returns.
const TC_ACT_UNSPEC: u32 = u32::MAX;

/// Default drop; ICMP "none" (echo replies pass only as replies to the host's own pings); ssh
/// open only to a documentation network, which no test address belongs to.
fn policy(t: &Topology, allow_established: bool) -> String {
    format!(
        r#"[[interface]]
name = "{iface}"
xdp_mode = "native"

[firewall]
default = "drop"
allow_established = {allow_established}
icmp = "none"

[[firewall.service]]
name = "ssh"
proto = "tcp"
ports = [22]
from = ["198.51.100.0/24", "2001:db8:5::/48"]
"#,
        iface = t.host_if.name(),
    )
}

/// Fails with the Debian package to install when a client or server the scenarios run is
/// missing (`cargo xtask test` installs them).
fn require_tools() -> Result<()> {
    crmguard_lab::privileged::require_tools(&[
        ("dig", "bind9-dnsutils"),
        ("dnsmasq", "dnsmasq-base"),
        ("curl", "curl"),
        ("python3", "python3"),
        ("ping", "iputils-ping"),
        ("sha256sum", "coreutils"),
    ])
}

fn command(program: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new(program);
    cmd.args(args);
    cmd
}

fn describe(out: &Output) -> String {
    format!(
        "{}: {}{}",
        process::describe(out.status),
        String::from_utf8_lossy(&out.stdout).trim(),
        String::from_utf8_lossy(&out.stderr).trim()
    )
}

// ---- real servers outside -------------------------------------------------------------------

/// dnsmasq on `addr` in `ns`, answering `NAME` itself (no upstream), until dropped.
fn start_dns(ns: &NetNs, addr: IpAddr, log_dir: &Path) -> Result<Process> {
    let listen = format!("--listen-address={addr}");
    let answer = format!("--address=/{NAME}/{NAME_ADDR}");
    let cmd = command(
        "dnsmasq",
        &[
            "--keep-in-foreground",
            "--conf-file=/dev/null",
            "--no-resolv",
            "--no-hosts",
            "--pid-file=",
            "--bind-interfaces",
            &listen,
            "--port=53",
            &answer,
            "--log-facility=-",
            "--log-queries",
        ],
    );
    let server = Process::spawn(ns, cmd, log_dir, "dnsmasq")?;
    wait_for(READY, "dnsmasq to answer locally", || {
        Ok(resolve(ns, addr)?.then_some(()))
    })?;
    Ok(server)
}

/// `dig @server NAME A` from `ns`: whether the right answer came back (one try, 2 s).
fn resolve(ns: &NetNs, server: IpAddr) -> Result<bool> {
    let at = format!("@{server}");
    let out = process::output_in(
        ns,
        command("dig", &[&at, "+time=2", "+tries=1", "+short", NAME, "A"]),
    )?;
    Ok(out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == NAME_ADDR)
}

/// python3's http.server on `addr` in `ns`, serving `root`, until dropped.
fn start_http(ns: &NetNs, addr: IpAddr, root: &Path, log_dir: &Path) -> Result<Process> {
    let root = root.to_str().context("a non-UTF-8 temporary directory")?;
    let bind = addr.to_string();
    let port = HTTP.to_string();
    let cmd = command(
        "python3",
        &[
            "-m",
            "http.server",
            &port,
            "--bind",
            &bind,
            "--directory",
            root,
        ],
    );
    let label = format!("http-server-{}", if addr.is_ipv4() { 4 } else { 6 });
    let server = Process::spawn(ns, cmd, log_dir, &label)?;
    let url = url(addr, "/");
    wait_for(READY, "the HTTP server to answer locally", || {
        let out = process::output_in(
            ns,
            command(
                "curl",
                &["-sS", "-g", "--max-time", "2", "-o", "/dev/null", &url],
            ),
        )?;
        Ok(out.status.success().then_some(()))
    })?;
    Ok(server)
}

fn url(addr: IpAddr, path: &str) -> String {
    match addr {
        IpAddr::V4(a) => format!("http://{a}:{HTTP}{path}"),
        IpAddr::V6(a) => format!("http://[{a}]:{HTTP}{path}"),
    }
}

/// A file of `BLOB_BYTES` pseudo-random bytes at `root/blob.bin`.
fn write_blob(root: &Path) -> Result<PathBuf> {
    let mut state = 0x9e37_79b9_7f4a_7c15_u64 ^ u64::from(std::process::id());
    let mut bytes = Vec::with_capacity(BLOB_BYTES);
    while bytes.len() < BLOB_BYTES {
        // xorshift64: incompressible enough that nothing shortcuts the transfer.
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        bytes.extend_from_slice(&state.to_le_bytes());
    }
    let path = root.join("blob.bin");
    std::fs::write(&path, &bytes).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

fn sha256(path: &Path) -> Result<String> {
    let out = Command::new("sha256sum")
        .arg(path)
        .output()
        .context("running sha256sum")?;
    ensure!(
        out.status.success(),
        "sha256sum {}: {}",
        path.display(),
        describe(&out)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned())
}

/// `curl` of `url` into `dest` from `ns`; the connection must be up within 3 s.
fn download(ns: &NetNs, url: &str, dest: &Path) -> Result<Output> {
    let dest = dest.to_str().context("a non-UTF-8 temporary directory")?;
    let _ = std::fs::remove_file(dest);
    process::output_in(
        ns,
        command(
            "curl",
            &[
                "-sS",
                "-g",
                "--connect-timeout",
                "3",
                "--max-time",
                "60",
                "-o",
                dest,
                url,
            ],
        ),
    )
}

/// Downloads the blob from `server` into the host namespace and checks its SHA-256.
fn download_intact(t: &Topology, server: IpAddr, blob: &Path, dir: &Path) -> Result<()> {
    let dest = dir.join(format!("download-{}", if server.is_ipv4() { 4 } else { 6 }));
    let out = download(&t.host, &url(server, "/blob.bin"), &dest)?;
    ensure!(
        out.status.success(),
        "downloading from {server} failed: {}",
        describe(&out)
    );
    let (want, got) = (sha256(blob)?, sha256(&dest)?);
    ensure!(
        want == got,
        "the download from {server} is corrupt: sha256 {got}, the file's is {want}"
    );
    Ok(())
}

/// `ping -c 1` from `ns`: whether the echo reply came back within 2 s.
fn ping(ns: &NetNs, dst: IpAddr) -> Result<bool> {
    let dst = dst.to_string();
    let out = process::output_in(ns, command("ping", &["-n", "-c", "1", "-W", "2", &dst]))?;
    Ok(out.status.success())
}

/// Waits until `iface`'s `action/reason` counter reaches `at_least` packets; returns it.
fn wait_count(
    agent: &Agent,
    iface: &str,
    action: &str,
    reason: &str,
    at_least: u64,
) -> Result<u64> {
    wait_for(
        COUNT,
        &format!("{iface} {action}/{reason} to reach {at_least} packets"),
        || {
            let packets = agent.counter(iface, action, reason)?;
            Ok((packets >= at_least).then_some(packets))
        },
    )
}

/// The flows recorded under `bpffs_dir`: TCP connections (`cg_flows4` for IPv4, given their
/// whole key, and `cg_flows`), then datagram flows (`cg_dgram_flows`).
fn flows(bpffs_dir: &Path) -> Result<Vec<(FlowKey, Flow)>> {
    let mut all = Vec::new();
    let path = bpffs_dir.join("maps").join("cg_flows4");
    let data = MapData::from_pin(&path).with_context(|| format!("opening {}", path.display()))?;
    let map: HashMap<MapData, Flow4Key, Flow> = HashMap::try_from(Map::LruHashMap(data))?;
    for entry in map.iter() {
        let (key, flow) = entry.context("reading cg_flows4")?;
        all.push((FlowKey::from(key), flow));
    }
    for name in ["cg_flows", "cg_dgram_flows"] {
        let path = bpffs_dir.join("maps").join(name);
        let data =
            MapData::from_pin(&path).with_context(|| format!("opening {}", path.display()))?;
        let map: HashMap<MapData, FlowKey, Flow> = HashMap::try_from(Map::LruHashMap(data))?;
        for entry in map.iter() {
            all.push(entry.with_context(|| format!("reading {name}"))?);
        }
    }
    Ok(all)
}

fn mapped(addr: IpAddr) -> [u8; 16] {
    match addr {
        IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
        IpAddr::V6(a) => a.octets(),
    }
}

/// Whether a flow from this host's `local` to `remote`:`remote_port` over `proto` is recorded.
fn recorded(
    bpffs_dir: &Path,
    local: IpAddr,
    remote: IpAddr,
    proto: u8,
    remote_port: u16,
) -> Result<bool> {
    Ok(flows(bpffs_dir)?.iter().any(|(k, _)| {
        k.local == mapped(local)
            && k.remote == mapped(remote)
            && k.proto == proto
            && u16::from_be_bytes(k.remote_port_be) == remote_port
    }))
}

/// The (link id, program id) of the pinned egress link of `iface`.
fn egress_link(agent: &Agent, iface: &str) -> Result<(u32, u32)> {
    let path = agent.bpffs_dir().join(format!("links/tc-{iface}"));
    let link = FdLink::from(
        PinnedLink::from_pin(&path).with_context(|| format!("opening {}", path.display()))?,
    );
    let info = link.info().context("reading the egress link")?;
    Ok((info.id(), info.program_id()))
}

/// The servers and the working directory of a scenario; servers stop on drop.
struct Outside {
    _dns: Process,
    _http: Vec<Process>,
    blob: PathBuf,
    dir: TempDir,
}

/// Starts dnsmasq on the outside's IPv4 address and an HTTP server on each of `http`.
fn outside(t: &Topology, http: &[IpAddr]) -> Result<Outside> {
    require_tools()?;
    let dir = tempfile::Builder::new()
        .prefix("crmguard-established-")
        .tempdir()
        .context("creating a temporary directory")?;
    let root = dir.path().join("www");
    std::fs::create_dir(&root).context("creating the web root")?;
    let blob = write_blob(&root)?;
    let dns = start_dns(&t.out, t.addrs.out4, dir.path())?;
    let http = http
        .iter()
        .map(|addr| start_http(&t.out, *addr, &root, dir.path()))
        .collect::<Result<_>>()?;
    Ok(Outside {
        _dns: dns,
        _http: http,
        blob,
        dir,
    })
}

// ---- scenarios --------------------------------------------------------------------------------

#[test]
fn the_hosts_dns_lookups_get_their_answers() -> Result<()> {
    if !privileged::require("established::the_hosts_dns_lookups_get_their_answers") {
        return Ok(());
    }
    let t = Topology::ipv4_only(130, 1)?;
    let out = outside(&t, &[])?;
    let agent = Agent::start(&t.host, &policy(&t, true))?;
    let iface = t.host_if.name();

    ensure!(
        resolve(&t.host, t.addrs.out4)?,
        "dig from the host got no answer from {} under default drop",
        t.addrs.out4
    );
    wait_count(&agent, iface, "pass", "established", 1)?;
    ensure!(
        recorded(agent.bpffs_dir(), t.addrs.host4, t.addrs.out4, 17, 53)?,
        "no UDP flow to {}:53 in cg_flows: {:?}",
        t.addrs.out4,
        flows(agent.bpffs_dir())?
    );
    drop(out);
    Ok(())
}

#[test]
fn a_download_over_ipv4_arrives_intact() -> Result<()> {
    if !privileged::require("established::a_download_over_ipv4_arrives_intact") {
        return Ok(());
    }
    let t = Topology::ipv4_only(130, 2)?;
    let out = outside(&t, &[t.addrs.out4])?;
    let agent = Agent::start(&t.host, &policy(&t, true))?;

    download_intact(&t, t.addrs.out4, &out.blob, out.dir.path())?;
    // Thousands of segments came in as replies.
    wait_count(&agent, t.host_if.name(), "pass", "established", 1000)?;
    ensure!(
        agent.counter(t.host_if.name(), "drop", "default_drop")? == 0,
        "replies of the download were dropped"
    );
    Ok(())
}

#[test]
fn a_download_over_ipv6_arrives_intact() -> Result<()> {
    if !privileged::require("established::a_download_over_ipv6_arrives_intact") {
        return Ok(());
    }
    let t = Topology::dual_stack(130, 3)?;
    let out = outside(&t, &[t.addrs.out6])?;
    let agent = Agent::start(&t.host, &policy(&t, true))?;

    download_intact(&t, t.addrs.out6, &out.blob, out.dir.path())?;
    wait_count(&agent, t.host_if.name(), "pass", "established", 1000)?;
    ensure!(
        recorded(agent.bpffs_dir(), t.addrs.host6, t.addrs.out6, 6, HTTP)?,
        "no TCP flow to [{}]:{HTTP} in cg_flows",
        t.addrs.out6
    );
    Ok(())
}

/// The control experiment: the same traffic with `allow_established = false` gets no replies,
/// although the egress program records the flows all the same.
#[test]
fn without_allow_established_the_replies_are_dropped() -> Result<()> {
    if !privileged::require("established::without_allow_established_the_replies_are_dropped") {
        return Ok(());
    }
    // No IPv6 stack outside: every drop counted is a reply to the host's traffic.
    let t = Topology::ipv4_only(130, 4)?;
    let out = outside(&t, &[t.addrs.out4])?;
    let agent = Agent::start(&t.host, &policy(&t, false))?;
    let iface = t.host_if.name();

    let dest = out.dir.path().join("download");
    let fetched = download(&t.host, &url(t.addrs.out4, "/blob.bin"), &dest)?;
    ensure!(
        !fetched.status.success(),
        "the download succeeded without allow_established: {}",
        describe(&fetched)
    );
    ensure!(
        !resolve(&t.host, t.addrs.out4)?,
        "dig got an answer without allow_established"
    );
    ensure!(
        !ping(&t.host, t.addrs.out4)?,
        "ping got an echo reply with icmp = \"none\" and without allow_established"
    );
    // At least the SYN-ACK, the DNS answer and the echo reply.
    wait_count(&agent, iface, "drop", "default_drop", 3)?;
    ensure!(
        agent.counter(iface, "pass", "established")? == 0,
        "pass/established moved without allow_established"
    );
    let dir = agent.bpffs_dir();
    ensure!(
        recorded(dir, t.addrs.host4, t.addrs.out4, 6, HTTP)?
            && recorded(dir, t.addrs.host4, t.addrs.out4, 17, 53)?
            && recorded(dir, t.addrs.host4, t.addrs.out4, 1, 0)?,
        "the egress program did not record the flows: {:?}",
        flows(dir)?
    );
    Ok(())
}

/// Only what matches a recorded flow exactly gets in: not a datagram to an ephemeral port
/// nobody sent from, not one from the right peer's other port, not one to the host's other
/// port, not a connection to a listening ephemeral port.
#[test]
fn unsolicited_packets_to_ephemeral_ports_are_dropped() -> Result<()> {
    if !privileged::require("established::unsolicited_packets_to_ephemeral_ports_are_dropped") {
        return Ok(());
    }
    let t = Topology::ipv4_only(130, 5)?;
    let agent = Agent::start(&t.host, &policy(&t, true))?;
    let iface = t.host_if.name();
    let (host, peer) = (t.addrs.host4, t.addrs.out4);
    let bind = |ns: &NetNs, addr: IpAddr| -> Result<UdpSocket> {
        let sock = ns.run_in(|| UdpSocket::bind(SocketAddr::new(addr, 0)))??;
        sock.set_read_timeout(Some(Duration::from_secs(5)))?;
        Ok(sock)
    };
    // The host's client socket and another of its ephemeral ports; the peer's server port and
    // another of its ports.
    let client = bind(&t.host, host)?;
    let other_local = bind(&t.host, host)?;
    let server = bind(&t.out, peer)?;
    let other_remote = bind(&t.out, peer)?;
    let client_addr = client.local_addr()?;
    let before = agent.counter(iface, "drop", "default_drop")?;

    // Before the host sends anything, its ephemeral port is closed to the peer.
    server.send_to(b"unsolicited", client_addr)?;
    // The host opens the flow; the peer sees the datagram.
    client.send_to(b"hello", server.local_addr()?)?;
    let mut buf = [0u8; 64];
    let (n, from) = server
        .recv_from(&mut buf)
        .context("the peer got no datagram")?;
    ensure!(
        &buf[..n] == b"hello" && from == client_addr,
        "the peer got {:?} from {from}",
        &buf[..n]
    );
    // The right peer from another port, and the right port of the peer to another host port.
    other_remote.send_to(b"wrong remote port", client_addr)?;
    server.send_to(b"wrong local port", other_local.local_addr()?)?;
    // The reply. The veth delivers in order, so whatever arrives before it was sent before it.
    server.send_to(b"reply", client_addr)?;
    let (n, from) = client
        .recv_from(&mut buf)
        .context("the reply did not arrive")?;
    ensure!(
        &buf[..n] == b"reply" && from == server.local_addr()?,
        "the host's socket got {:?} from {from} first",
        String::from_utf8_lossy(&buf[..n])
    );
    other_local.set_nonblocking(true)?;
    match other_local.recv_from(&mut buf) {
        Err(e) if e.kind() == ErrorKind::WouldBlock => {}
        other => bail!("the host's other port got {other:?}"),
    }
    let dropped = wait_count(&agent, iface, "drop", "default_drop", before + 3)?;
    ensure!(
        dropped - before == 3,
        "three datagrams were unsolicited, drop/default_drop grew by {}",
        dropped - before
    );

    // A connection to a listening ephemeral port gets no answer.
    let _listener = TcpServer::start(&t.host, 40123, "ephemeral\n")?;
    let outcome = net::tcp_connect(
        &t.out,
        Some(peer),
        SocketAddr::new(host, 40123),
        Duration::from_millis(1500),
    )?;
    ensure!(
        outcome == TcpOutcome::TimedOut,
        "a connection to the host's ephemeral port 40123: {outcome:?}"
    );
    Ok(())
}

#[test]
fn the_hosts_ping_is_answered_with_icmp_none() -> Result<()> {
    if !privileged::require("established::the_hosts_ping_is_answered_with_icmp_none") {
        return Ok(());
    }
    require_tools()?;
    let t = Topology::dual_stack(130, 6)?;
    let agent = Agent::start(&t.host, &policy(&t, true))?;
    let iface = t.host_if.name();

    for dst in [t.addrs.out4, t.addrs.out6] {
        ensure!(ping(&t.host, dst)?, "no echo reply from {dst}");
    }
    wait_count(&agent, iface, "pass", "established", 2)?;
    for (local, remote, proto) in [
        (t.addrs.host4, t.addrs.out4, 1),
        (t.addrs.host6, t.addrs.out6, 58),
    ] {
        ensure!(
            recorded(agent.bpffs_dir(), local, remote, proto, 0)?,
            "no echo flow to {remote}"
        );
    }
    // The outside's pings stay unanswered: icmp = "none" admits no echo request.
    for dst in [t.addrs.host4, t.addrs.host6] {
        ensure!(!ping(&t.out, dst)?, "{dst} answered a ping from outside");
    }
    Ok(())
}

/// Both programs are pinned: with the agent killed, new outbound flows are still recorded and
/// their replies still pass; a restarted agent replaces the egress program inside the same link.
#[test]
fn replies_pass_after_kill_9_and_a_restart_adopts_the_recorder() -> Result<()> {
    if !privileged::require(
        "established::replies_pass_after_kill_9_and_a_restart_adopts_the_recorder",
    ) {
        return Ok(());
    }
    let t = Topology::ipv4_only(130, 7)?;
    let out = outside(&t, &[t.addrs.out4])?;
    let mut agent = Agent::start(&t.host, &policy(&t, true))?;
    let iface = t.host_if.name();
    let (link, first_program) = egress_link(&agent, iface)?;

    agent.kill9()?;
    ensure!(
        resolve(&t.host, t.addrs.out4)?,
        "dig got no answer after kill -9"
    );
    download_intact(&t, t.addrs.out4, &out.blob, out.dir.path()).context("after kill -9")?;
    ensure!(ping(&t.host, t.addrs.out4)?, "no echo reply after kill -9");

    agent.spawn()?;
    agent.wait_ready()?;
    let (same_link, new_program) = egress_link(&agent, iface)?;
    ensure!(
        same_link == link && new_program != first_program,
        "the restarted agent did not update the pinned egress link in place: link {link} \
         program {first_program} before, link {same_link} program {new_program} after"
    );
    download_intact(&t, t.addrs.out4, &out.blob, out.dir.path()).context("after the restart")?;
    wait_count(&agent, iface, "pass", "established", 1000)?;
    Ok(())
}

/// Kernels before 6.6 have no TCX: the recorder is a filter on the clsact qdisc there. A filter
/// such a kernel's agent left behind is adopted (replaced in place), records flows, and
/// `crmguard uninstall` removes it.
#[test]
fn the_netlink_fallback_is_adopted_and_uninstalled() -> Result<()> {
    if !privileged::require("established::the_netlink_fallback_is_adopted_and_uninstalled") {
        return Ok(());
    }
    let t = Topology::ipv4_only(130, 8)?;
    let out = outside(&t, &[])?;
    let mut agent = Agent::configure(&t.host, &policy(&t, true))?;
    let iface = t.host_if.name().to_owned();
    let filters = || -> Result<String> {
        t.host
            .exec(&["tc", "filter", "show", "dev", &iface, "egress"])
            .map(|text| text.trim().to_owned())
    };

    // What an agent on an older kernel leaves behind.
    let dir = agent.bpffs_dir().to_owned();
    crmguard_datapath::bpffs::ensure(&dir.join("maps"))?;
    crmguard_datapath::bpffs::ensure(&dir.join("links"))?;
    let attached = t.host.run_in(|| -> Result<_> {
        let mut egress = Egress::load(&dir)?;
        let ifindex = nix::net::if_::if_nametoindex(iface.as_str())?;
        Ok(egress.attach(&iface, ifindex, Mechanism::Netlink)?)
    })??;
    ensure!(
        attached.mode == EgressMode::Netlink && !attached.adopted,
        "{attached:?}"
    );
    let before = filters()?;
    ensure!(
        before.contains(tc::TC_PROGRAM) && before.contains("direct-action"),
        "no crmguard filter on {iface} egress: {before:?}"
    );

    agent.spawn()?;
    agent.wait_ready()?;
    ensure!(
        !dir.join(format!("links/tc-{iface}")).exists(),
        "the agent attached a TCX link beside the adopted filter"
    );
    let after = filters()?;
    ensure!(
        after.lines().filter(|l| l.contains(tc::TC_PROGRAM)).count() == 1,
        "expected one crmguard filter on {iface} egress after adoption: {after:?}"
    );
    ensure!(
        after != before,
        "the agent did not replace the program of the filter: {after:?}"
    );
    ensure!(
        resolve(&t.host, t.addrs.out4)?,
        "dig got no answer with the tc filter recording"
    );

    agent.stop()?;
    let out_uninstall = agent.cli(&["uninstall"])?;
    ensure!(
        out_uninstall.status.success(),
        "crmguard uninstall: {}",
        describe(&out_uninstall)
    );
    let left = filters()?;
    ensure!(
        !left.contains(tc::TC_PROGRAM),
        "crmguard uninstall left the filter on {iface}: {left:?}"
    );
    drop(out);
    Ok(())
}

// ---- golden frames through both programs --------------------------------------------------------

/// The XDP program and the egress program loaded against one private set of pinned maps,
/// with a policy of default drop, `allow_established` and ICMP "none". Removed on drop.
struct Programs {
    dir: PathBuf,
    xdp: Ebpf,
    _maps: PolicyMaps,
    egress: Egress,
}

impl Programs {
    /// `name` keeps the pin directories of tests running in parallel apart.
    fn load(name: &str) -> Result<Programs> {
        Programs::load_with(name, "")
    }

    /// [`Programs::load`] with more policy after the `[firewall]` settings.
    fn load_with(name: &str, more: &str) -> Result<Programs> {
        let dir = PathBuf::from(format!("/sys/fs/bpf/cgestab-{}-{name}", std::process::id()));
        let _ = crmguard_datapath::uninstall(&dir);
        let (xdp, mut maps) =
            crmguard_datapath::load_for_test(&dir).context("loading the XDP program")?;
        let config = crmguard_core::config::parse(
            &format!(
                "[firewall]\ndefault = \"drop\"\nallow_established = true\nicmp = \"none\"\n{more}"
            ),
            Path::new("established.toml"),
        )
        .map_err(|e| anyhow::anyhow!("{e}"))?;
        maps.apply(&crmguard_core::policy::compile(&config)?, 1)?;
        let egress = Egress::load(&dir).context("loading the egress program")?;
        Ok(Programs {
            dir,
            xdp,
            _maps: maps,
            egress,
        })
    }

    fn flow_map(&self, name: &str) -> Result<HashMap<MapData, FlowKey, Flow>> {
        let data = MapData::from_pin(self.dir.join("maps").join(name))?;
        Ok(HashMap::try_from(Map::LruHashMap(data))?)
    }

    fn flow4_map(&self) -> Result<HashMap<MapData, Flow4Key, Flow>> {
        let data = MapData::from_pin(self.dir.join("maps").join("cg_flows4"))?;
        Ok(HashMap::try_from(Map::LruHashMap(data))?)
    }

    /// Records `key` where tc egress would (`FlowKey::place`).
    fn insert_flow(&self, key: FlowKey, flow: Flow) -> Result<()> {
        match key.place() {
            FlowPlace::Tcp4(short) => self.flow4_map()?.insert(short, flow, 0)?,
            FlowPlace::Tcp6(key) => self.flow_map("cg_flows")?.insert(key, flow, 0)?,
            FlowPlace::Datagram(key) => self.flow_map("cg_dgram_flows")?.insert(key, flow, 0)?,
        }
        Ok(())
    }

    /// Entry `index` of `cpu`'s `cg_flow4_cache`.
    fn cached(&self, index: u32, cpu: usize) -> Result<Flow4Cached> {
        let data = MapData::from_pin(self.dir.join("maps").join("cg_flow4_cache"))?;
        let cache: PerCpuArray<MapData, Flow4Cached> =
            PerCpuArray::try_from(Map::PerCpuArray(data))?;
        let values = cache.get(&index, 0)?;
        values
            .get(cpu)
            .copied()
            .with_context(|| format!("cg_flow4_cache has no copy for CPU {cpu}"))
    }

    /// The record of `key`, if there is one.
    fn flow(&self, key: FlowKey) -> Result<Option<Flow>> {
        let found = match key.place() {
            FlowPlace::Tcp4(short) => self.flow4_map()?.get(&short, 0),
            FlowPlace::Tcp6(key) => self.flow_map("cg_flows")?.get(&key, 0),
            FlowPlace::Datagram(key) => self.flow_map("cg_dgram_flows")?.get(&key, 0),
        };
        match found {
            Ok(flow) => Ok(Some(flow)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Every recorded flow: TCP connections, then datagram flows (`cg_dgram_flows`).
    fn all_flows(&self) -> Result<Vec<(FlowKey, Flow)>> {
        flows(&self.dir)
    }

    fn clear_flows(&self) -> Result<()> {
        let mut tcp4 = self.flow4_map()?;
        let keys: Vec<Flow4Key> = tcp4.keys().collect::<Result<_, _>>()?;
        for key in keys {
            tcp4.remove(&key)?;
        }
        for name in ["cg_flows", "cg_dgram_flows"] {
            let mut flows = self.flow_map(name)?;
            let keys: Vec<FlowKey> = flows.keys().collect::<Result<_, _>>()?;
            for key in keys {
                flows.remove(&key)?;
            }
        }
        Ok(())
    }

    /// Runs an outbound frame through the egress program.
    fn egress(&mut self, frame: &[u8]) -> Result<()> {
        let result = self
            .egress
            .program()?
            .test_run(TestRunOptions {
                data_in: Some(frame),
                ..TestRunOptions::default()
            })
            .context("BPF_PROG_TEST_RUN of the egress program")?;
        ensure!(
            result.return_value == TC_ACT_UNSPEC,
            "the egress program returned {} instead of TC_ACT_UNSPEC",
            i32::from_ne_bytes(result.return_value.to_ne_bytes())
        );
        Ok(())
    }

    /// Runs an inbound frame through XDP; true when it passes.
    fn passes(&mut self, frame: &[u8]) -> Result<bool> {
        let result = crmguard_datapath::program(&mut self.xdp)?
            .test_run(TestRunOptions {
                data_in: Some(frame),
                ..TestRunOptions::default()
            })
            .context("BPF_PROG_TEST_RUN of the XDP program")?;
        Ok(result.return_value == 2)
    }
}

impl Drop for Programs {
    fn drop(&mut self) {
        let _ = crmguard_datapath::uninstall(&self.dir);
    }
}

/// How far the programs' clock (cg_now(): CLOCK_MONOTONIC read coarsely, at jiffy resolution)
/// may lag behind CLOCK_MONOTONIC as user space reads it.
const CLOCK_SLACK_NS: u64 = 1_000_000_000;

fn now_ns() -> u64 {
    let ts = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .expect("clock_gettime(CLOCK_MONOTONIC)");
    u64::try_from(ts.tv_sec()).unwrap_or(0) * 1_000_000_000
        + u64::try_from(ts.tv_nsec()).unwrap_or(0)
}

const TCP: u8 = 6;
const UDP: u8 = 17;
const ICMP: u8 = 1;
const ICMP6: u8 = 58;
const SYN: u8 = 0x02;
const ACK: u8 = 0x10;
const VLAN: u16 = 0x8100;
const QINQ: u16 = 0x88a8;

const HOST4: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 1);
const PEER4: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 7);
const HOST6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 1);
const PEER6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, 7);

fn eth(tags: &[u16], ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2];
    for tpid in tags {
        f.extend_from_slice(&tpid.to_be_bytes());
        f.extend_from_slice(&10u16.to_be_bytes());
    }
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// IPv4 from `src` to `dst` with `options` bytes of NOP options and the raw `frag` field.
fn ip4(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, options: usize, frag: u16, l4: &[u8]) -> Vec<u8> {
    let hl = 20 + options;
    let mut p = vec![0x40 | u8::try_from(hl / 4).expect("an IHL"), 0];
    p.extend_from_slice(
        &u16::try_from(hl + l4.len())
            .expect("a total length")
            .to_be_bytes(),
    );
    p.extend_from_slice(&[0x12, 0x34]);
    p.extend_from_slice(&frag.to_be_bytes());
    p.extend_from_slice(&[64, proto, 0, 0]);
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    p.extend(std::iter::repeat_n(1u8, options));
    p.extend_from_slice(l4);
    eth(&[], 0x0800, &p)
}

/// IPv6 from `src` to `dst` behind the extension headers `exts` (8 bytes each; a fragment
/// header is given as its offset field).
fn ip6(src: Ipv6Addr, dst: Ipv6Addr, tags: &[u16], exts: &[Ext], proto: u8, l4: &[u8]) -> Vec<u8> {
    let mut chain = Vec::new();
    for (i, ext) in exts.iter().enumerate() {
        let next = exts.get(i + 1).map_or(proto, Ext::number);
        match ext {
            Ext::Options(_) => chain.extend_from_slice(&[next, 0, 1, 4, 0, 0, 0, 0]),
            Ext::Fragment(off) => {
                chain.extend_from_slice(&[next, 0]);
                chain.extend_from_slice(&off.to_be_bytes());
                chain.extend_from_slice(&[0, 0, 0x56, 0x78]);
            }
        }
    }
    let first = exts.first().map_or(proto, Ext::number);
    let mut p = vec![0x60, 0, 0, 0];
    p.extend_from_slice(
        &u16::try_from(chain.len() + l4.len())
            .expect("a payload length")
            .to_be_bytes(),
    );
    p.extend_from_slice(&[first, 64]);
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    p.extend_from_slice(&chain);
    p.extend_from_slice(l4);
    eth(tags, 0x86dd, &p)
}

#[derive(Clone, Copy)]
enum Ext {
    /// Hop-by-hop (0) or destination options (60).
    Options(u8),
    Fragment(u16),
}

impl Ext {
    fn number(&self) -> u8 {
        match self {
            Ext::Options(n) => *n,
            Ext::Fragment(_) => 44,
        }
    }
}

fn tcp(sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    let mut t = Vec::new();
    t.extend_from_slice(&sport.to_be_bytes());
    t.extend_from_slice(&dport.to_be_bytes());
    t.extend_from_slice(&[
        0,
        0,
        0,
        1,
        0,
        0,
        0,
        0,
        5 << 4,
        flags,
        0xff,
        0xff,
        0,
        0,
        0,
        0,
    ]);
    t
}

fn udp(sport: u16, dport: u16) -> Vec<u8> {
    let mut u = Vec::new();
    u.extend_from_slice(&sport.to_be_bytes());
    u.extend_from_slice(&dport.to_be_bytes());
    u.extend_from_slice(&12u16.to_be_bytes());
    u.extend_from_slice(&[0, 0, b'c', b'r', b'm', b'!']);
    u
}

fn echo(icmp_type: u8, id: u16) -> Vec<u8> {
    let mut e = vec![icmp_type, 0, 0, 0];
    e.extend_from_slice(&id.to_be_bytes());
    e.extend_from_slice(&[0, 1]);
    e
}

/// The flow an outbound packet from this host should record.
fn key(local: IpAddr, remote: IpAddr, proto: u8, local_port: u16, remote_port: u16) -> FlowKey {
    FlowKey {
        local: mapped(local),
        remote: mapped(remote),
        local_port_be: local_port.to_be_bytes(),
        remote_port_be: remote_port.to_be_bytes(),
        proto,
        family: if local.is_ipv4() { 4 } else { 6 },
        _pad: 0,
    }
}

struct Case {
    name: &'static str,
    outbound: Vec<u8>,
    /// The flow recorded with its lifetime in seconds, or none.
    records: Option<(FlowKey, u64)>,
    /// A reply XDP must pass once the outbound frame went out, and one it must drop.
    reply: Option<(Vec<u8>, Vec<u8>)>,
}

fn cases() -> Vec<Case> {
    let (h4, p4) = (IpAddr::V4(HOST4), IpAddr::V4(PEER4));
    let (h6, p6) = (IpAddr::V6(HOST6), IpAddr::V6(PEER6));
    vec![
        Case {
            name: "a SYN opens a TCP flow",
            outbound: ip4(HOST4, PEER4, TCP, 0, 0, &tcp(40001, 443, SYN)),
            records: Some((key(h4, p4, TCP, 40001, 443), 7200)),
            reply: Some((
                ip4(PEER4, HOST4, TCP, 0, 0, &tcp(443, 40001, SYN | ACK)),
                ip4(PEER4, HOST4, TCP, 0, 0, &tcp(443, 40002, SYN | ACK)),
            )),
        },
        Case {
            name: "a service's SYN-ACK opens nothing",
            outbound: ip4(HOST4, PEER4, TCP, 0, 0, &tcp(22, 50000, SYN | ACK)),
            records: None,
            reply: None,
        },
        Case {
            name: "an ACK of an unknown connection opens nothing",
            outbound: ip4(HOST4, PEER4, TCP, 0, 0, &tcp(40001, 443, ACK)),
            records: None,
            reply: None,
        },
        Case {
            name: "UDP behind IPv4 options",
            outbound: ip4(HOST4, PEER4, UDP, 8, 0, &udp(53000, 53)),
            records: Some((key(h4, p4, UDP, 53000, 53), 120)),
            reply: Some((
                ip4(PEER4, HOST4, UDP, 0, 0, &udp(53, 53000)),
                ip4(PEER4, HOST4, UDP, 0, 0, &udp(54, 53000)),
            )),
        },
        Case {
            name: "UDP in an IPv4 first fragment",
            outbound: ip4(HOST4, PEER4, UDP, 0, 0x2000, &udp(53001, 53)),
            records: Some((key(h4, p4, UDP, 53001, 53), 120)),
            reply: None,
        },
        Case {
            name: "an IPv4 later fragment is ignored",
            outbound: ip4(HOST4, PEER4, UDP, 0, 0x00b9, &udp(53002, 53)),
            records: None,
            reply: None,
        },
        Case {
            name: "UDP over IPv6 behind hop-by-hop and destination options, 802.1Q",
            outbound: ip6(
                HOST6,
                PEER6,
                &[VLAN],
                &[Ext::Options(0), Ext::Options(60)],
                UDP,
                &udp(53003, 123),
            ),
            records: Some((key(h6, p6, UDP, 53003, 123), 120)),
            reply: Some((
                ip6(PEER6, HOST6, &[], &[], UDP, &udp(123, 53003)),
                ip6(PEER6, HOST6, &[], &[], UDP, &udp(123, 53004)),
            )),
        },
        Case {
            name: "TCP over IPv6, QinQ",
            outbound: ip6(HOST6, PEER6, &[QINQ, VLAN], &[], TCP, &tcp(40003, 25, SYN)),
            records: Some((key(h6, p6, TCP, 40003, 25), 7200)),
            reply: Some((
                ip6(PEER6, HOST6, &[], &[], TCP, &tcp(25, 40003, SYN | ACK)),
                ip6(PEER6, HOST6, &[], &[], TCP, &tcp(26, 40003, SYN | ACK)),
            )),
        },
        Case {
            name: "an IPv6 later fragment is ignored",
            outbound: ip6(
                HOST6,
                PEER6,
                &[],
                &[Ext::Fragment(0x0100)],
                UDP,
                &udp(53005, 53),
            ),
            records: None,
            reply: None,
        },
        Case {
            name: "an echo request opens an ICMP flow by its identifier",
            outbound: ip4(HOST4, PEER4, ICMP, 0, 0, &echo(8, 0x1234)),
            records: Some((key(h4, p4, ICMP, 0x1234, 0), 30)),
            reply: Some((
                ip4(PEER4, HOST4, ICMP, 0, 0, &echo(0, 0x1234)),
                ip4(PEER4, HOST4, ICMP, 0, 0, &echo(0, 0x1235)),
            )),
        },
        Case {
            name: "an ICMPv6 echo request opens a flow",
            outbound: ip6(HOST6, PEER6, &[], &[], ICMP6, &echo(128, 0x4321)),
            records: Some((key(h6, p6, ICMP6, 0x4321, 0), 30)),
            reply: Some((
                ip6(PEER6, HOST6, &[], &[], ICMP6, &echo(129, 0x4321)),
                ip6(PEER6, HOST6, &[], &[], ICMP6, &echo(129, 0x4322)),
            )),
        },
        Case {
            name: "the host's echo reply opens nothing",
            outbound: ip4(HOST4, PEER4, ICMP, 0, 0, &echo(0, 0x1234)),
            records: None,
            reply: None,
        },
        Case {
            name: "a truncated TCP header is ignored",
            outbound: {
                let mut f = ip4(HOST4, PEER4, TCP, 0, 0, &tcp(40004, 443, SYN));
                f.truncate(f.len() - 10);
                f
            },
            records: None,
            reply: None,
        },
        Case {
            name: "ARP is ignored",
            outbound: eth(&[], 0x0806, &[0u8; 28]),
            records: None,
            reply: None,
        },
    ]
}

#[test]
fn egress_records_flows_as_xdp_looks_them_up() -> Result<()> {
    if !privileged::require("established::egress_records_flows_as_xdp_looks_them_up") {
        return Ok(());
    }
    let mut programs = Programs::load("golden")?;
    let mut failures = Vec::new();
    for case in cases() {
        let result = (|| -> Result<()> {
            programs.clear_flows()?;
            if let Some((reply, _)) = &case.reply {
                ensure!(
                    !programs.passes(reply)?,
                    "the reply passed before the flow was recorded"
                );
            }
            let start = now_ns();
            programs.egress(&case.outbound)?;
            let end = now_ns();
            let flows = programs.all_flows()?;
            match &case.records {
                None => ensure!(flows.is_empty(), "recorded {flows:?}"),
                Some((want, lifetime_s)) => {
                    ensure!(
                        flows.len() == 1 && flows[0].0 == *want,
                        "recorded {flows:?}, expected {want:?}"
                    );
                    let expires = flows[0].1.expires_ns;
                    let lifetime = lifetime_s * 1_000_000_000;
                    ensure!(
                        (start + lifetime - CLOCK_SLACK_NS..=end + lifetime + CLOCK_SLACK_NS)
                            .contains(&expires),
                        "expires at {expires}, expected {lifetime_s} s after {start}"
                    );
                }
            }
            if let Some((pass, drop)) = &case.reply {
                ensure!(programs.passes(pass)?, "XDP dropped the reply");
                ensure!(
                    !programs.passes(drop)?,
                    "XDP passed a packet of another flow"
                );
            }
            Ok(())
        })();
        if let Err(e) = result {
            failures.push(format!("{}: {e:#}", case.name));
        }
    }
    ensure!(failures.is_empty(), "{}", failures.join("\n"));
    Ok(())
}

/// Every outbound packet of a recorded TCP flow moves its expiry on, also one without SYN.
#[test]
fn later_packets_of_a_recorded_flow_refresh_it() -> Result<()> {
    if !privileged::require("established::later_packets_of_a_recorded_flow_refresh_it") {
        return Ok(());
    }
    let mut programs = Programs::load("refresh")?;
    programs.clear_flows()?;
    let flow = key(IpAddr::V4(HOST4), IpAddr::V4(PEER4), TCP, 40010, 443);
    // An expired record, as an idle connection's would be.
    programs.insert_flow(flow, Flow { expires_ns: 1 })?;
    let reply = ip4(PEER4, HOST4, TCP, 0, 0, &tcp(443, 40010, ACK));
    ensure!(
        !programs.passes(&reply)?,
        "a reply of an expired flow passed"
    );

    let start = now_ns();
    programs.egress(&ip4(HOST4, PEER4, TCP, 0, 0, &tcp(40010, 443, ACK)))?;
    let expires = programs
        .flow(flow)?
        .context("the flow's record is gone")?
        .expires_ns;
    ensure!(
        expires >= start + 7200 * 1_000_000_000 - CLOCK_SLACK_NS,
        "the ACK did not refresh the flow: expires at {expires}"
    );
    ensure!(
        programs.passes(&reply)?,
        "the reply of the refreshed flow was dropped"
    );
    Ok(())
}

/// The replies of a live IPv4 connection are answered from the CPU's `cg_flow4_cache`, and
/// the cache admits nothing `cg_flows4` would not: another connection placed in the same entry
/// is dropped until it is recorded, and a cached connection's replies stop at the expiry the
/// cache copied, until its next outbound packet records a later one.
#[test]
fn the_connection_cache_admits_only_live_recorded_connections() -> Result<()> {
    if !privileged::require(
        "established::the_connection_cache_admits_only_live_recorded_connections",
    ) {
        return Ok(());
    }
    // The cache is per CPU: every frame of this test runs on one.
    let pinned = Pinned::first_allowed()?;
    let mut programs = Programs::load("cache")?;
    programs.clear_flows()?;
    let (h4, p4) = (IpAddr::V4(HOST4), IpAddr::V4(PEER4));
    let short = |k: FlowKey| match k.place() {
        FlowPlace::Tcp4(short) => Ok(short),
        other => Err(anyhow::anyhow!("not an IPv4 connection: {other:?}")),
    };
    let reply = |port: u16| ip4(PEER4, HOST4, TCP, 0, 0, &tcp(443, port, ACK));

    let a = key(h4, p4, TCP, 40030, 443);
    let index = abi::flow4_cache_index(&short(a)?);
    let expires = now_ns() + 3_000_000_000;
    programs.insert_flow(
        a,
        Flow {
            expires_ns: expires,
        },
    )?;
    ensure!(
        programs.passes(&reply(40030))?,
        "the reply of a live connection was dropped"
    );
    let cached = programs.cached(index, pinned.cpu)?;
    ensure!(
        cached.key == short(a)? && cached.expires_ns == expires,
        "the connection is not in its CPU's cache: {cached:?}"
    );

    // Another connection of the same entry, never recorded.
    let port = (1024..=u16::MAX)
        .find(|&p| {
            p != 40030
                && short(key(h4, p4, TCP, p, 443))
                    .is_ok_and(|k| abi::flow4_cache_index(&k) == index)
        })
        .context("no port shares the connection's cache entry")?;
    ensure!(
        !programs.passes(&reply(port))?,
        "a connection never recorded passed on another's cache entry"
    );
    let b = key(h4, p4, TCP, port, 443);
    programs.insert_flow(
        b,
        Flow {
            expires_ns: u64::MAX,
        },
    )?;
    ensure!(
        programs.passes(&reply(port))?,
        "the second connection's reply was dropped"
    );
    ensure!(
        programs.cached(index, pinned.cpu)?.key == short(b)?,
        "the entry was not taken over"
    );
    ensure!(
        programs.passes(&reply(40030))?,
        "the first connection's reply was dropped"
    );

    // The copied expiry passes: the replies stop, though the entry still holds the connection.
    wait_for(
        Duration::from_secs(10),
        "the cached connection to expire",
        || Ok((!programs.passes(&reply(40030))?).then_some(())),
    )?;
    ensure!(
        now_ns() + CLOCK_SLACK_NS >= expires,
        "the connection's replies stopped {} ms before it expired",
        (expires - now_ns()) / 1_000_000
    );
    ensure!(
        programs.cached(index, pinned.cpu)?.key == short(a)?,
        "the entry changed hands"
    );
    programs.egress(&ip4(HOST4, PEER4, TCP, 0, 0, &tcp(40030, 443, ACK)))?;
    ensure!(
        programs.passes(&reply(40030))?,
        "the reply of the refreshed connection was dropped"
    );
    ensure!(
        programs.cached(index, pinned.cpu)?.expires_ns > expires,
        "the cache kept the old expiry"
    );
    Ok(())
}

/// Datagrams the host is made to send cannot evict its TCP connections: more UDP flows than
/// `cg_dgram_flows` holds leave the connection in `cg_flows` alone, and its replies pass. A
/// public UDP service open to anyone answers without recording a flow; a datagram from any
/// other port records one.
#[test]
fn datagram_flows_never_evict_the_hosts_tcp_connections() -> Result<()> {
    if !privileged::require("established::datagram_flows_never_evict_the_hosts_tcp_connections") {
        return Ok(());
    }
    let mut programs = Programs::load_with(
        "dgram",
        "\n[[firewall.service]]\nname = \"dns\"\nproto = \"udp\"\nports = [53]\n",
    )?;
    programs.clear_flows()?;
    programs.egress(&ip4(HOST4, PEER4, TCP, 0, 0, &tcp(40020, 443, SYN)))?;
    let connection = key(IpAddr::V4(HOST4), IpAddr::V4(PEER4), TCP, 40020, 443);

    // The service's answers record nothing.
    for n in 0..100u32 {
        let remote = Ipv4Addr::from(0xc633_6400 + n);
        programs.egress(&ip4(HOST4, remote, UDP, 0, 0, &udp(53, 40000)))?;
    }
    let recorded = programs.all_flows()?;
    ensure!(
        recorded.len() == 1 && recorded[0].0 == connection,
        "the answers of a public UDP service were recorded: {} flows",
        recorded.len()
    );

    // More datagram flows than their map holds, and more than the map of connections holds
    // (which one map for both would evict the connection by), each to another address.
    let total = crmguard_core::abi::FLOW_MAX + crmguard_core::abi::FLOW_MAX / 4;
    for n in 0..total {
        let remote = Ipv4Addr::from(0x6440_0000 + n);
        programs.egress(&ip4(HOST4, remote, UDP, 0, 0, &udp(40001, 53)))?;
    }
    let datagrams = programs.flow_map("cg_dgram_flows")?.keys().count();
    ensure!(
        datagrams > 0 && datagrams <= usize::try_from(crmguard_core::abi::DGRAM_FLOW_MAX)?,
        "cg_dgram_flows holds {datagrams} flows"
    );
    ensure!(
        programs.flow(connection)?.is_some(),
        "{total} datagram flows evicted the host's TCP connection"
    );
    ensure!(
        programs.passes(&ip4(PEER4, HOST4, TCP, 0, 0, &tcp(443, 40020, ACK)))?,
        "the reply of the host's TCP connection was dropped after {total} datagram flows"
    );
    eprintln!("{total} datagram flows: {datagrams} kept, the TCP connection kept");
    Ok(())
}
