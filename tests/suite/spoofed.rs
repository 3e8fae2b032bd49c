//! The kernel datapath under a flood from 1,000,000 spoofed sources.
//!
//! Raw frames with random source addresses (IPv4, and IPv6 from a /48) go from the outside
//! namespace to the host's public side: SYNs to a rate-limited service, SYNs to a closed port,
//! and WireGuard initiations with a valid MAC1 (MAC1 covers the message, not the addresses, so
//! one initiation built with boringtun serves every spoofed source). Each spoofed frame is a
//! template with a random source written in. The IPv4 initiations carry correct checksums, so
//! that what XDP admits of them reaches the WireGuard endpoint, which must keep serving its
//! peer while it answers them (with cookie replies beyond its handshake budget); the other
//! frames keep stale checksums, which XDP never reads. Meanwhile:
//! - a TCP connection the host opened to an outside server keeps answering (its flow in
//!   `cg_flows` is never evicted by datagram flows or anything the flood makes);
//! - `cg_rl` stays within its bound: new buckets are limited per CPU per second, the rest of the
//!   flood is dropped as `rl_table_busy`;
//! - the agent's resident memory stays bounded;
//! - a wireguard-go peer's bulk TCP goodput through the tunnel keeps most of what it is without
//!   the flood (0.8 with the lab to itself; see the end of the test for what the suite holds).
//!
//! The endpoint is run with `vpn.handshakes_before_cookies = 50`: a debug build's
//! Diffie-Hellman costs about twenty times a release build's, so 50 a second here is the load
//! that 500 (the default) is for a release build.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use aya::maps::{HashMap, Map, MapData};
use crmguard_core::abi;
use crmguard_lab::agent::Agent;
use crmguard_lab::flood::{Pace, SpoofedFlood};
use crmguard_lab::net::{tcp_syn_frame, udp_frame, RawSocket, Vlan};
use crmguard_lab::privileged;
use crmguard_lab::topology::Topology;

use crate::vpn::{gateway_endpoint, gateway_key, wait_reachable, PeerSpec, GATEWAY4, WG_PORT};

/// Spoofed sources at least.
const SOURCES: u64 = 1_000_000;
/// The rate-limited public service, and a closed port.
const WEB: u16 = 8443;
const CLOSED: u16 = 9;
/// The outside server the host connects to, and the sink of the peer's bulk transfer.
const ECHO: u16 = 7007;
const SINK: u16 = 5001;
/// How long each goodput measurement lasts.
const MEASURE: Duration = Duration::from_secs(3);
/// The flood's pace: a million sources in about 33 s. The lab has two CPUs for the generator,
/// the datapath, the endpoint, the peer and the transfer: a faster generator measures mostly
/// its own share of them.
const FLOOD_PPS: u64 = 30_000;
/// How much the agent's resident memory may grow under the flood.
const RSS_GROWTH_MAX_KIB: u64 = 32 * 1024;

fn vm_rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS in /proc/PID/status")
}

fn entries(agent: &Agent, name: &str) -> Result<usize> {
    let path = agent.bpffs_dir().join("maps").join(name);
    let data = MapData::from_pin(&path).with_context(|| format!("opening {}", path.display()))?;
    let count = match name {
        "cg_rl" => {
            let size = std::mem::size_of::<abi::RlSlot>();
            crmguard_datapath::sys::read_array(data.fd().as_fd(), size, abi::RL_MAX)?
                .chunks(size)
                .filter(|slot| slot.iter().any(|b| *b != 0))
                .count()
        }
        "cg_flows4" => HashMap::<_, abi::Flow4Key, abi::Flow>::try_from(Map::LruHashMap(data))?
            .keys()
            .count(),
        _ => HashMap::<_, abi::FlowKey, abi::Flow>::try_from(Map::LruHashMap(data))?
            .keys()
            .count(),
    };
    Ok(count)
}

/// An echo server in the outside namespace.
fn echo_server(t: &Topology) -> Result<()> {
    let listener = t.out.run_in(|| TcpListener::bind((t.addrs.out4, ECHO)))??;
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut stream = stream;
                let mut buf = [0u8; 512];
                while let Ok(n) = stream.read(&mut buf) {
                    if n == 0 || stream.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    Ok(())
}

/// One round trip on the host's own connection, within a second.
fn round_trip(conn: &mut TcpStream, n: u64) -> Result<()> {
    let msg = n.to_be_bytes();
    conn.write_all(&msg)?;
    let mut back = [0u8; 8];
    conn.read_exact(&mut back)
        .with_context(|| format!("round trip {n} on the host's own connection"))?;
    ensure!(back == msg, "the echo of round trip {n} differs");
    Ok(())
}

/// A sink on the gateway's tunnel address that counts what it receives.
fn sink(t: &Topology, received: Arc<AtomicU64>) -> Result<()> {
    let listener = t.host.run_in(|| TcpListener::bind((GATEWAY4, SINK)))??;
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let received = received.clone();
            std::thread::spawn(move || {
                let mut stream = stream;
                let mut buf = vec![0u8; 1 << 16];
                while let Ok(n) = stream.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    received.fetch_add(u64::try_from(n).unwrap_or(0), Ordering::Relaxed);
                }
            });
        }
    });
    Ok(())
}

/// Bytes per second the peer pushes through the tunnel for MEASURE, as the sink counts them.
fn goodput(t: &Topology, received: &Arc<AtomicU64>) -> Result<f64> {
    let mut conn = t.out.run_in(|| {
        TcpStream::connect_timeout(
            &SocketAddr::new(IpAddr::V4(GATEWAY4), SINK),
            Duration::from_secs(5),
        )
    })??;
    conn.set_write_timeout(Some(Duration::from_secs(2)))?;
    let chunk = vec![0x5au8; 1 << 16];
    // A moment for the window to open before counting.
    let warm = Instant::now() + Duration::from_millis(300);
    while Instant::now() < warm {
        conn.write_all(&chunk)?;
    }
    let start_bytes = received.load(Ordering::Relaxed);
    let start = Instant::now();
    while start.elapsed() < MEASURE {
        conn.write_all(&chunk)?;
    }
    let bytes = received.load(Ordering::Relaxed) - start_bytes;
    Ok(bytes as f64 / start.elapsed().as_secs_f64())
}

#[allow(clippy::too_many_lines)]
#[test]
fn a_million_spoofed_sources_leave_maps_memory_and_goodput_bounded() -> Result<()> {
    use boringtun::noise::{Tunn, TunnResult};
    use boringtun::x25519::{PublicKey, StaticSecret};

    if !privileged::require(
        "spoofed::a_million_spoofed_sources_leave_maps_memory_and_goodput_bounded",
    ) {
        return Ok(());
    }
    crate::vpn::require_tools()?;
    let began = Instant::now();
    let t = Topology::dual_stack(197, 1)?;
    t.pin_neighbours()?;
    let scratch = tempfile::tempdir()?;
    let alice = PeerSpec::new("alice", 2)?;
    let body = format!(
        r#"[[interface]]
name = "{iface}"
xdp_mode = "native"

[firewall]
default = "drop"
allow_established = true

[[firewall.service]]
name = "web"
proto = "tcp"
ports = [{WEB}]
per_source_pps = 50

[vpn]
listen_port = {WG_PORT}
address = "10.77.0.1/24"
address6 = "fd77::1/64"
private_key_file = "{dir}/wg.key"
peers_file = "{dir}/peers.toml"
handshakes_before_cookies = 50

[[role]]
name = "staff"
allow = ["tcp/{SINK}"]

{peer}"#,
        iface = t.host_if.name(),
        dir = scratch.path().display(),
        peer = alice.toml(),
    );
    let agent = Agent::start(&t.host, &body)?;
    let pid = agent.pid().context("the agent has no pid")?;
    let gateway = gateway_key(&agent)?;
    let gateway_bytes = crmguard_core::keys::decode(&gateway).context("the gateway's key")?;
    let endpoint = gateway_endpoint(t.addrs.host4);

    // The host's own TCP connection to an outside server.
    echo_server(&t)?;
    let mut own = t.host.run_in(|| {
        TcpStream::connect_timeout(&SocketAddr::new(t.addrs.out4, ECHO), Duration::from_secs(5))
    })??;
    own.set_read_timeout(Some(Duration::from_secs(1)))?;
    round_trip(&mut own, 0)?;

    // The peer, and its goodput without the flood.
    let _client = alice.connect(&t.out, &gateway, endpoint)?;
    wait_reachable(&t.out, IpAddr::V4(GATEWAY4))?;
    let received = Arc::new(AtomicU64::new(0));
    sink(&t, received.clone())?;
    let quiet = goodput(&t, &received)?;
    let rss_before = vm_rss_kib(pid)?;

    // The initiation every spoofed source sends: valid MAC1 for the gateway's key.
    let init = {
        let mut tunn = Tunn::new(
            StaticSecret::from(crate::vpn::genkey_bytes()?),
            PublicKey::from(gateway_bytes),
            None,
            None,
            1,
            None,
        );
        let mut buf = [0u8; 256];
        match tunn.format_handshake_initiation(&mut buf, false) {
            TunnResult::WriteToNetwork(init) => init.to_vec(),
            other => bail!("no initiation: {other:?}"),
        }
    };

    // The flood: at least SOURCES spoofed sources, until the measurement under it is over.
    // One frame of each kind and family, built once; each spoofed frame is one of them with a
    // random source address written in.
    let l2 = t.l2_to_host(Vlan::Untagged)?;
    let mut templates = Vec::new();
    for (v4, dst) in [(true, t.addrs.host4), (false, t.addrs.host6)] {
        let from = SocketAddr::new(
            if v4 {
                IpAddr::V4(Ipv4Addr::new(1, 0, 0, 1))
            } else {
                IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0xffff, 0, 0, 0, 0, 1))
            },
            40000,
        );
        templates.push(tcp_syn_frame(&l2, from, SocketAddr::new(dst, WEB))?);
        templates.push(tcp_syn_frame(&l2, from, SocketAddr::new(dst, CLOSED))?);
        templates.push(udp_frame(&l2, from, SocketAddr::new(dst, WG_PORT), &init)?);
    }
    let flood = SpoofedFlood::start(
        RawSocket::open(&t.out, t.out_if.name())?,
        templates,
        Pace {
            per_second: FLOOD_PPS,
            at_least: SOURCES,
            longest: Duration::from_secs(40),
        },
    )?;

    // Under the flood: the host's connection answers, and the peer's goodput.
    let mut trips = 1;
    let under = goodput(&t, &received)?;
    round_trip(&mut own, trips)?;
    trips += 1;
    let rl_during = entries(&agent, "cg_rl")?;
    // The flood goes on until it has sent its minimum; the connection is watched meanwhile.
    flood.ask_to_stop();
    let watch = Instant::now();
    while !flood.is_finished() && watch.elapsed() < Duration::from_secs(45) {
        round_trip(&mut own, trips)?;
        trips += 1;
        std::thread::sleep(Duration::from_millis(200));
    }
    let sent = flood.stop()?;
    // After the flood: still answering.
    round_trip(&mut own, trips)?;

    let rss_after = vm_rss_kib(pid)?;
    let rl = entries(&agent, "cg_rl")?;
    let flows = entries(&agent, "cg_flows4")? + entries(&agent, "cg_flows")?;
    let dgram = entries(&agent, "cg_dgram_flows")?;
    let iface = t.host_if.name();
    let busy = agent.counter(iface, "drop", "rl_table_busy")?;
    let handshake_limited = agent.counter(iface, "drop", "wg_handshake_rate")?;
    let syn_limited = agent.counter(iface, "drop", "syn_flood")?;
    let limited = agent.counter(iface, "drop", "rate_limited")?;
    let closed = agent.counter(iface, "drop", "default_drop")?;
    let ratio = under / quiet;
    eprintln!(
        "spoofed: {sent} frames from random sources in {:.1?} total test time",
        began.elapsed()
    );
    eprintln!(
        "spoofed: goodput without flood {:.1} Mbit/s, under flood {:.1} Mbit/s, ratio {ratio:.2}",
        quiet * 8.0 / 1e6,
        under * 8.0 / 1e6
    );
    eprintln!(
        "spoofed: cg_rl {rl_during} entries during, {rl} after (max {}); cg_flows4 and \
         cg_flows {flows} (max {} each); cg_dgram_flows {dgram} (max {})",
        abi::RL_MAX,
        abi::FLOW_MAX,
        abi::DGRAM_FLOW_MAX
    );
    eprintln!(
        "spoofed: drops rl_table_busy {busy}, rate_limited {limited}, syn_flood {syn_limited}, \
         wg_handshake_rate {handshake_limited}, default_drop {closed}; \
         agent VmRSS {rss_before} KiB before, {rss_after} KiB after (bound +{RSS_GROWTH_MAX_KIB} KiB)"
    );
    ensure!(sent >= SOURCES, "only {sent} spoofed frames were sent");
    ensure!(
        rl <= usize::try_from(abi::RL_MAX)? && rl_during <= usize::try_from(abi::RL_MAX)?,
        "cg_rl holds {rl} entries"
    );
    ensure!(
        busy > 0,
        "no packet of new sources was dropped as rl_table_busy"
    );
    ensure!(
        flows >= 1 && flows <= usize::try_from(abi::FLOW_MAX)?,
        "cg_flows4 and cg_flows hold {flows} entries"
    );
    ensure!(
        dgram <= usize::try_from(abi::DGRAM_FLOW_MAX)?,
        "cg_dgram_flows holds {dgram}"
    );
    ensure!(
        rss_after <= rss_before + RSS_GROWTH_MAX_KIB,
        "the agent grew from {rss_before} KiB to {rss_after} KiB"
    );
    // The product's figure (at least 0.8) is measured with the lab to itself: in the suite,
    // other tests share the two CPUs between the measurement without the flood and the one
    // under it. What the suite holds is that the peer is not starved: an endpoint that did the
    // flood's handshakes on its data path fell to nothing here.
    ensure!(
        ratio >= MIN_RATIO_IN_SUITE,
        "the peer's goodput under the flood is {ratio:.2} of that without it"
    );
    Ok(())
}

/// See the end of the test.
const MIN_RATIO_IN_SUITE: f64 = 0.5;
