//! The kernel WireGuard self-test's "65,000 allowed-IPs entries" case (`netns.sh`), as it
//! applies to crmguard: every peer is one staff device with one tunnel address, so a gateway
//! with 65,000 allowed-IPs entries is a gateway with 65,000 peers in its peers file. It must
//! start within a deadline, let real clients at both ends of the table (the first peer and the
//! last) handshake and reach a service, and still refuse a client that sends from the tunnel
//! address of another of the 65,000.
//!
//! ```text
//!   netns out   wireguard-go 10.80.0.2 (peer 0)       -> 10.134.1.1:51820  [XDP] crmguard
//!   netns out2  wireguard-go 10.80.253.233 (peer 64,999) -> 10.134.2.1:51820 [XDP] TUN 10.80.0.1/15
//! ```

use std::fmt::Write as _;
use std::io::Read;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use base64::Engine as _;
use crmguard_lab::agent::{metric_value, Agent};
use crmguard_lab::net::{self, TcpOutcome, TcpServer, UdpReceiver};
use crmguard_lab::netns::{Iface, NetNs};
use crmguard_lab::privileged;
use crmguard_lab::topology::Topology;
use crmguard_lab::wait::wait_for;
use crmguard_lab::wg::{genkey, wg, Keys, WgClient};

use crate::vpn::{
    gateway_endpoint, metric, ping, require_tools, second_link, ALLOWED_TCP, ALLOWED_UDP, SETTLE,
    WG_PORT,
};

/// The peers in the gateway's peers file.
const PEERS: u32 = 65_000;
/// The gateway's tunnel address: a /15 holds 131,070 devices.
const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 80, 0, 1);
const TUNNEL: &str = "10.80.0.1/15";
/// How long the agent may take from `crmguard run` to answering `status` with every peer
/// admitted.
const START_DEADLINE: Duration = Duration::from_secs(40);

/// The tunnel address of the peer at `index` in the peers file.
fn address(index: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(GATEWAY) + 1 + index)
}

/// `PEERS - 2` public keys of devices that are not there: random points, none of low order
/// (the configuration refuses those, and every one of these must be admitted).
fn absent_keys() -> Result<Vec<String>> {
    let count = usize::try_from(PEERS - 2)?;
    let mut random = vec![0u8; count * 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut random)?;
    let mut keys = Vec::with_capacity(count);
    for chunk in random.chunks_exact(32) {
        let mut key: [u8; 32] = chunk.try_into()?;
        while crmguard_core::keys::is_low_order(&key) {
            key[0] = key[0].wrapping_add(1);
        }
        keys.push(base64::engine::general_purpose::STANDARD.encode(key));
    }
    Ok(keys)
}

/// The peers file: `first` at index 0, `last` at index `PEERS - 1`, absent devices between.
fn peers_file(first: &Keys, last: &Keys) -> Result<String> {
    let absent = absent_keys()?;
    let mut text = String::with_capacity(usize::try_from(PEERS)? * 110);
    for index in 0..PEERS {
        let key = match index {
            0 => first.public.as_str(),
            i if i == PEERS - 1 => last.public.as_str(),
            i => absent[usize::try_from(i - 1)?].as_str(),
        };
        writeln!(
            text,
            "[[peer]]\nname = \"d{index}\"\npublic_key = \"{key}\"\naddress = \"{}\"\nrole = \"staff\"\n",
            address(index)
        )?;
    }
    Ok(text)
}

/// The agent's config: XDP on `interfaces`, default drop, `[vpn]` on a /15 with its peers file
/// in `dir`, a staff role reaching ALLOWED_TCP and ALLOWED_UDP.
fn config(interfaces: &[&Iface], dir: &std::path::Path) -> String {
    let mut body = String::new();
    for iface in interfaces {
        let _ = write!(
            body,
            "[[interface]]\nname = \"{}\"\nxdp_mode = \"native\"\n\n",
            iface.name()
        );
    }
    let _ = write!(
        body,
        "[firewall]\ndefault = \"drop\"\n\n\
         [vpn]\nlisten_port = {WG_PORT}\naddress = \"{TUNNEL}\"\n\
         private_key_file = \"{dir}/wg.key\"\npeers_file = \"{dir}/peers.toml\"\n\n\
         [[role]]\nname = \"staff\"\nallow = [\"tcp/{ALLOWED_TCP}\", \"udp/{ALLOWED_UDP}\"]\n",
        dir = dir.display()
    );
    body
}

/// The resident set of process `pid` in KiB, from `/proc/PID/status`.
fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .context("no VmRSS in /proc/PID/status")?;
    Ok(line.trim().trim_end_matches("kB").trim().parse()?)
}

/// Starts wireguard-go in `ns` as the device at `index` and waits for the gateway to answer
/// its pings; returns the client and how long that first answer took.
fn connect(
    ns: &NetNs,
    keys: &Keys,
    index: u32,
    gateway: &str,
    endpoint: SocketAddr,
) -> Result<(WgClient, Duration)> {
    let client = WgClient::start(ns, keys, &[&format!("{}/15", address(index))])?;
    let started = Instant::now();
    client.set_peer(gateway, endpoint, &["10.80.0.0/15"])?;
    wait_for(
        SETTLE,
        &format!("the gateway to answer device {index}"),
        || Ok(ping(ns, IpAddr::V4(GATEWAY), Duration::from_millis(500))?.then_some(())),
    )?;
    Ok((client, started.elapsed()))
}

/// A TCP exchange with the allowed service from `ns` (from `src`, when given).
fn banner(ns: &NetNs, src: Option<IpAddr>) -> Result<TcpOutcome> {
    let dst = SocketAddr::new(IpAddr::V4(GATEWAY), ALLOWED_TCP);
    net::tcp_connect(ns, src, dst, Duration::from_secs(5))
}

fn source_check_drops(agent: &Agent) -> Result<f64> {
    metric(
        agent,
        "crmguard_vpn_dropped_total",
        &[("reason", "source_check")],
    )
}

#[test]
fn sixty_five_thousand_peers_start_and_each_end_of_the_table_connects() -> Result<()> {
    if !privileged::require(
        "many_peers::sixty_five_thousand_peers_start_and_each_end_of_the_table_connects",
    ) {
        return Ok(());
    }
    require_tools()?;
    let t = Topology::ipv4_only(134, 1)?;
    let (out2, _out2_if, host2_if, host2) = second_link(&t, 134, 1)?;
    let first = genkey()?;
    let last = genkey()?;
    let scratch = tempfile::tempdir()?;
    let written = Instant::now();
    std::fs::write(
        scratch.path().join("peers.toml"),
        peers_file(&first, &last)?,
    )?;
    eprintln!(
        "{PEERS} peers written in {:.2} s",
        written.elapsed().as_secs_f64()
    );

    let mut agent = Agent::configure(&t.host, &config(&[&t.host_if, &host2_if], scratch.path()))?;
    let started = Instant::now();
    agent.spawn()?;
    // Ready: the metrics endpoint answers and counts every peer as configured. (Not `crmguard
    // status`, whose own reading of the configuration would be timed too.)
    let wanted = f64::from(PEERS);
    let mut exited = None;
    wait_for(START_DEADLINE, &format!("{PEERS} peers configured"), || {
        if !agent.is_running()? {
            exited = Some(());
            return Ok(Some(()));
        }
        let configured = agent
            .metrics()
            .ok()
            .and_then(|text| metric_value(&text, "crmguard_vpn_peers", &[("state", "configured")]));
        Ok((configured == Some(wanted)).then_some(()))
    })?;
    ensure!(exited.is_none(), "the agent exited while starting");
    let start = started.elapsed();
    let pid = agent.pid().context("the agent has no process")?;
    let rss = rss_kib(pid)?;
    eprintln!(
        "{PEERS} peers: the agent was ready after {:.2} s with {} MiB resident",
        start.as_secs_f64(),
        rss / 1024
    );
    // From the endpoint's own interface: `crmguard status` would read the 65,000 peers again.
    let gateway = wg(&["show", agent.vpn_interface(), "public-key"], None)?
        .trim()
        .to_owned();

    let _service = TcpServer::start(&t.host, ALLOWED_TCP, "crm says hello\n")?;
    let receiver = UdpReceiver::start(&t.host, ALLOWED_UDP)?;
    // The first device in the table and the last, each in a namespace of its own.
    let (first_wg, first_time) =
        connect(&t.out, &first, 0, &gateway, gateway_endpoint(t.addrs.host4))?;
    let (_last_wg, last_time) =
        connect(&out2, &last, PEERS - 1, &gateway, gateway_endpoint(host2))?;
    eprintln!(
        "handshake and first answer: {:.0} ms for device 0, {:.0} ms for device {}",
        first_time.as_secs_f64() * 1000.0,
        last_time.as_secs_f64() * 1000.0,
        PEERS - 1
    );
    for (ns, who) in [(&t.out, "device 0"), (&out2, "the last device")] {
        let outcome = banner(ns, None)?;
        ensure!(
            outcome
                == TcpOutcome::Connected {
                    banner: "crm says hello\n".to_owned()
                },
            "{who} through the tunnel to the allowed service: {outcome:?}"
        );
    }

    // Device 0 takes the tunnel address of a device in the middle of the table and sends from
    // it through its own tunnel: the gateway drops that at the source check.
    let other = address(PEERS / 2);
    first_wg.add_addr(&t.out, &format!("{other}/32"))?;
    let drops_before = source_check_drops(&agent)?;
    let service = SocketAddr::new(IpAddr::V4(GATEWAY), ALLOWED_UDP);
    net::udp_send(&t.out, IpAddr::V4(other), service, 20, 100)?;
    let outcome = banner(&t.out, Some(IpAddr::V4(other)))?;
    ensure!(
        outcome == TcpOutcome::TimedOut,
        "a connection from another device's tunnel address: {outcome:?}"
    );
    wait_for(SETTLE, "20 spoofed datagrams and SYNs counted", || {
        let now = source_check_drops(&agent)?;
        Ok((now >= drops_before + 21.0).then_some(()))
    })?;
    ensure!(
        receiver.received() == 0,
        "{} datagrams from another device's address reached the service",
        receiver.received()
    );
    // Its own address still passes, so what was dropped was the source and nothing else.
    net::udp_send(&t.out, IpAddr::V4(address(0)), service, 5, 100)?;
    net::udp_send(&out2, IpAddr::V4(address(PEERS - 1)), service, 5, 100)?;
    wait_for(SETTLE, "10 genuine datagrams at the service", || {
        Ok((receiver.received() == 10).then_some(()))
    })?;
    Ok(())
}
