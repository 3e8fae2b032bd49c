//! Rate limits under real load: per-source packet rates of a service, new TCP connections per
//! source and for the whole host, ICMP echo requests, WireGuard handshake initiations and the
//! shape of what the WireGuard port accepts, and the reset of a limited source when a reload
//! changes its limit.
//!
//! Each test floods from one outside address and checks three things: the filter's counters
//! (what it passed and why it dropped), what real sockets in the host namespace received, and
//! that a second outside address, sending at the same time, is not affected.
//!
//! Expected counts follow the GCRA the filter implements: a source sending faster than `rate`
//! gets its burst at once, then one packet per 1/rate. Floods are measured from their first to
//! their last datagram, so the bounds hold whatever the machine's load; see `gcra_expected`.

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use crmguard_lab::agent::Agent;
use crmguard_lab::net::{self, TcpOutcome, TcpServer};
use crmguard_lab::privileged;
use crmguard_lab::topology::Topology;
use crmguard_lab::wait::wait_for;

use crate::traffic::{
    self, add_out_addr, admin_addr, expect, gcra_expected, get, send_datagrams, wait_delta,
    wait_delta_until, wg_initiation, wg_message, Connects, Flood, Pinger, Receiver, SETTLE,
};

/// A connection admitted by the filter completes well within this.
const CONNECT: Duration = Duration::from_secs(5);

fn interface(t: &Topology) -> String {
    format!(
        "[[interface]]\nname = \"{}\"\nxdp_mode = \"native\"\n",
        t.host_if.name()
    )
}

fn v4(addr: IpAddr) -> Ipv4Addr {
    match addr {
        IpAddr::V4(a) => a,
        IpAddr::V6(_) => unreachable!("an IPv4 address of the topology"),
    }
}

/// A second outside address, sending alongside the flooding one.
fn second_source(t: &Topology) -> Result<IpAddr> {
    let addr = admin_addr(t, false, 3);
    add_out_addr(t, addr)?;
    Ok(addr)
}

/// Waits until the filter has judged `n` more packets than in `before`, whatever it decided.
fn wait_judged(
    agent: &Agent,
    iface: &str,
    before: &traffic::Counters,
    n: u64,
) -> Result<traffic::Counters> {
    wait_delta_until(
        agent,
        iface,
        before,
        &format!("{n} packets to be judged"),
        |d| d.values().sum::<u64>() >= n,
    )
}

#[test]
fn a_flooding_source_is_held_to_its_service_rate_and_others_are_not() -> Result<()> {
    if !privileged::require(
        "limits::a_flooding_source_is_held_to_its_service_rate_and_others_are_not",
    ) {
        return Ok(());
    }
    const PORT: u16 = 7100;
    const RATE: u32 = 500;
    let t = Topology::ipv4_only(121, 1)?;
    let quiet = second_source(&t)?;
    // The service's own rate replaces the global one (far higher here); its burst is its rate.
    let agent = Agent::start(
        &t.host,
        &format!(
            "{}\n[firewall]\ndefault = \"drop\"\n\n[firewall.limits]\nper_source_pps = 100000\nper_source_burst = 100000\n\n\
             [[firewall.service]]\nname = \"metrics-push\"\nproto = \"udp\"\nports = [{PORT}]\nper_source_pps = {RATE}\n",
            interface(&t)
        ),
    )?;
    let iface = t.host_if.name();
    let receiver = Receiver::start(&t.host, PORT)?;
    let dst = t.host_addr(t.addrs.out4, PORT);
    let before = traffic::counters(&agent, iface)?;

    // About 14,000 datagrams a second from one source, 200 a second from the other.
    let flood = Flood::start(
        &t.out,
        t.addrs.out4,
        dst,
        vec![0x11; 64],
        16,
        Duration::from_millis(1),
    )?;
    let steady = Flood::start(
        &t.out,
        quiet,
        dst,
        vec![0x22; 64],
        1,
        Duration::from_millis(5),
    )?;
    // The load runs for a fixed time: the rate is what is measured.
    std::thread::sleep(Duration::from_millis(1500));
    let flood = flood.stop();
    let steady = steady.stop();
    let sent = flood.sent + steady.sent;
    let judged = wait_judged(&agent, iface, &before, sent)?;
    let passed = get(&judged, "pass", "service");
    let limited = get(&judged, "drop", "rate_limited");
    wait_for(SETTLE, "the receiver to get every passed datagram", || {
        Ok((receiver.total() >= passed).then_some(()))
    })?;

    let from_flood = receiver.from(t.addrs.out4).datagrams;
    let from_steady = receiver.from(quiet).datagrams;
    let (low, high) = gcra_expected(RATE, RATE, flood.active);
    eprintln!(
        "flood: {} sent over {:?}, {from_flood} arrived (expected {low}..={high}); quiet: {} sent, \
         {from_steady} arrived",
        flood.sent, flood.active, steady.sent
    );
    ensure!(
        (low..=high).contains(&from_flood),
        "the flooding source sent {} datagrams over {:?} and {from_flood} arrived; a rate of {RATE}/s \
         with a burst of {RATE} admits {low}..={high}",
        flood.sent,
        flood.active
    );
    ensure!(
        from_steady == steady.sent,
        "the quiet source sent {} datagrams and {from_steady} arrived",
        steady.sent
    );
    // Every packet is accounted for: passed ones arrived, the rest were limited.
    ensure!(
        judged
            == expect(&[
                ("pass", "service", passed),
                ("drop", "rate_limited", limited)
            ]),
        "unexpected counters: {judged:?}"
    );
    ensure!(
        passed == receiver.total(),
        "pass/service {passed}, received {}",
        receiver.total()
    );
    ensure!(
        limited == flood.sent - from_flood,
        "drop/rate_limited {limited}, yet the flooding source lost {}",
        flood.sent - from_flood
    );
    Ok(())
}

#[test]
fn new_connections_are_limited_per_source_by_service_then_globally() -> Result<()> {
    if !privileged::require(
        "limits::new_connections_are_limited_per_source_by_service_then_globally",
    ) {
        return Ok(());
    }
    const PORTAL: u16 = 7200;
    const API: u16 = 7201;
    const PORTAL_RATE: u32 = 5;
    const SYN_RATE: u32 = 8;
    const ATTEMPTS: usize = 25;
    let t = Topology::ipv4_only(121, 2)?;
    let quiet = second_source(&t)?;
    let _servers = [
        TcpServer::start(&t.host, PORTAL, "portal\n")?,
        TcpServer::start(&t.host, API, "api\n")?,
    ];
    // `portal` has its own limit; `api` falls back to the global per-source SYN limit.
    let agent = Agent::start(
        &t.host,
        &format!(
            "{}\n[firewall]\ndefault = \"drop\"\n\n[firewall.limits]\nsyn_per_source_per_s = {SYN_RATE}\n\n\
             [[firewall.service]]\nname = \"portal\"\nproto = \"tcp\"\nports = [{PORTAL}]\nnew_conn_per_source_per_s = {PORTAL_RATE}\n\n\
             [[firewall.service]]\nname = \"api\"\nproto = \"tcp\"\nports = [{API}]\n",
            interface(&t)
        ),
    )?;
    let iface = t.host_if.name();
    let before = traffic::counters(&agent, iface)?;

    // Both batches at once from one source: the two limits have separate buckets. The window
    // covers the first SYN retransmission (after 1 s), which a refilled bucket may admit.
    let window = Duration::from_millis(1600);
    let (portal, api) = std::thread::scope(|s| {
        let portal = s.spawn(|| {
            traffic::connect_many(
                &t.out,
                t.addrs.out4,
                t.host_addr(t.addrs.out4, PORTAL),
                ATTEMPTS,
                window,
            )
        });
        let api = s.spawn(|| {
            traffic::connect_many(
                &t.out,
                t.addrs.out4,
                t.host_addr(t.addrs.out4, API),
                ATTEMPTS,
                window,
            )
        });
        (portal.join(), api.join())
    });
    let portal: Connects = portal.map_err(|_| anyhow::anyhow!("portal connects panicked"))??;
    let api: Connects = api.map_err(|_| anyhow::anyhow!("api connects panicked"))??;

    let bound = |rate: u32| {
        let (low, high) = gcra_expected(rate, rate, window);
        (low.min(u64::from(rate)), high)
    };
    for (name, rate, result) in [("portal", PORTAL_RATE, portal), ("api", SYN_RATE, api)] {
        let (low, high) = bound(rate);
        eprintln!("{name}: {result:?}, expected {low}..={high} connected");
        let connected = result.connected as u64;
        ensure!(
            (low..=high).contains(&connected) && result.refused == 0,
            "{name}: {ATTEMPTS} concurrent connects at {rate} new connections/s: {result:?}, \
             expected {low}..={high} to connect within {window:?}"
        );
    }
    // Every connect that never completed had all its SYNs dropped.
    let flood = traffic::delta(&before, &traffic::counters(&agent, iface)?);
    let failed = (portal.timed_out + api.timed_out) as u64;
    ensure!(
        get(&flood, "drop", "syn_flood") >= failed && get(&flood, "drop", "rate_limited") == 0,
        "{failed} connects timed out; counters moved by {flood:?}"
    );

    // Another source is not affected, on either service.
    for port in [PORTAL, API] {
        let outcome = net::tcp_connect(&t.out, Some(quiet), t.host_addr(quiet, port), CONNECT)?;
        ensure!(
            matches!(outcome, TcpOutcome::Connected { .. }),
            "{quiet} -> tcp/{port} while {} is limited: {outcome:?}",
            t.addrs.out4
        );
    }
    Ok(())
}

#[test]
fn an_ipv6_64_with_rotating_addresses_is_limited_like_one_address() -> Result<()> {
    if !privileged::require(
        "limits::an_ipv6_64_with_rotating_addresses_is_limited_like_one_address",
    ) {
        return Ok(());
    }
    const PORT: u16 = 7210;
    const RATE: u32 = 5;
    const SOURCES: u16 = 60;
    let t = Topology::dual_stack(127, 2)?;
    let _server = TcpServer::start(&t.host, PORT, "ssh\n")?;
    // 60 addresses of the outside client's /64, each opening one connection at once.
    let IpAddr::V6(base) = t.addrs.out6 else {
        anyhow::bail!("the topology's outside IPv6 address is not IPv6");
    };
    let prefix = base.segments();
    let rotating: Vec<IpAddr> = (1..=SOURCES)
        .map(|n| {
            let mut s = prefix;
            s[4] = 0xcafe;
            s[7] = n;
            IpAddr::V6(std::net::Ipv6Addr::from(s))
        })
        .collect();
    for addr in &rotating {
        add_out_addr(&t, *addr)?;
    }
    let config = |bits: u8| {
        format!(
            "{}\n[firewall]\ndefault = \"drop\"\n\n[firewall.limits]\nipv6_prefix = {bits}\n\n\
             [[firewall.service]]\nname = \"ssh\"\nproto = \"tcp\"\nports = [{PORT}]\nnew_conn_per_source_per_s = {RATE}\n",
            interface(&t)
        )
    };
    let agent = Agent::start(&t.host, &config(64))?;
    let dst = t.host_addr(t.addrs.out6, PORT);
    let window = Duration::from_millis(1600);
    let per_64 = traffic::connect_from_each(&t.out, &rotating, dst, window)?;
    let (low, high) = gcra_expected(RATE, RATE, window);
    eprintln!(
        "60 addresses of one /64, keyed by /64: {per_64:?}, one source's share {low}..={high}"
    );
    ensure!(
        (per_64.connected as u64) <= high,
        "60 addresses of one /64 at {RATE} new connections/s per source: {per_64:?}, expected at \
         most {high} to connect within {window:?}, as for one address"
    );
    // Keyed by whole addresses, the same 60 are 60 sources: what the prefix closes.
    traffic::replace_config(&agent, &traffic::config_with_body(&agent, &config(128))?)?;
    let out = agent.cli(&["reload"])?;
    ensure!(
        out.status.success(),
        "`crmguard reload` failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let whole: Vec<IpAddr> = rotating
        .iter()
        .map(|addr| match addr {
            IpAddr::V6(a) => {
                let mut s = a.segments();
                s[5] = 1;
                IpAddr::V6(std::net::Ipv6Addr::from(s))
            }
            other => *other,
        })
        .collect();
    for addr in &whole {
        add_out_addr(&t, *addr)?;
    }
    let per_address = traffic::connect_from_each(&t.out, &whole, dst, window)?;
    eprintln!("the same, keyed by address: {per_address:?}");
    ensure!(
        per_address.connected == whole.len(),
        "keyed by whole addresses, 60 sources each get their own bucket: {per_address:?}"
    );
    Ok(())
}

#[test]
fn the_global_syn_budget_caps_new_connections_from_all_sources() -> Result<()> {
    if !privileged::require("limits::the_global_syn_budget_caps_new_connections_from_all_sources") {
        return Ok(());
    }
    const PORT: u16 = 7210;
    const GLOBAL: u32 = 4;
    const PER_SOURCE: usize = 10;
    let t = Topology::ipv4_only(121, 3)?;
    let sources = [t.addrs.out4, second_source(&t)?, {
        let third = admin_addr(&t, false, 4);
        add_out_addr(&t, third)?;
        third
    }];
    let _server = TcpServer::start(&t.host, PORT, "portal\n")?;
    // Per source, far more than the test opens; for the whole host, 4 a second.
    let agent = Agent::start(
        &t.host,
        &format!(
            "{}\n[firewall]\ndefault = \"drop\"\n\n[firewall.limits]\nsyn_per_source_per_s = 1000\nglobal_syn_per_s = {GLOBAL}\n\n\
             [[firewall.service]]\nname = \"portal\"\nproto = \"tcp\"\nports = [{PORT}]\n",
            interface(&t)
        ),
    )?;
    let iface = t.host_if.name();
    let before = traffic::counters(&agent, iface)?;

    let window = Duration::from_millis(1600);
    let t = &t;
    let results: Vec<Connects> = std::thread::scope(|s| {
        let handles: Vec<_> = sources
            .iter()
            .map(|&src| {
                s.spawn(move || {
                    traffic::connect_many(&t.out, src, t.host_addr(src, PORT), PER_SOURCE, window)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().map_err(|_| anyhow::anyhow!("connects panicked"))?)
            .collect::<Result<_>>()
    })?;
    let connected: u64 = results.iter().map(|r| r.connected as u64).sum();
    // The budget is shared out among CPUs, each share with a burst of its rate: at most the
    // global rate at once, then the global rate per second.
    let (_, high) = gcra_expected(GLOBAL, GLOBAL, window);
    let attempts = (sources.len() * PER_SOURCE) as u64;
    let moved = traffic::delta(&before, &traffic::counters(&agent, iface)?);
    eprintln!("global budget: {connected} of {attempts} connected, at most {high} expected");
    ensure!(
        (1..=high).contains(&connected)
            && get(&moved, "drop", "syn_flood") >= attempts - connected,
        "global_syn_per_s = {GLOBAL}: {attempts} concurrent connects from {} sources, {connected} \
         connected within {window:?} (1..={high} expected): {results:?}; counters moved by {moved:?}",
        sources.len()
    );
    Ok(())
}

#[test]
fn icmp_echo_requests_are_rate_limited_per_source() -> Result<()> {
    if !privileged::require("limits::icmp_echo_requests_are_rate_limited_per_source") {
        return Ok(());
    }
    const RATE: u32 = 20;
    const REQUESTS: u16 = 300;
    let t = Topology::ipv4_only(121, 4)?;
    let quiet = second_source(&t)?;
    let agent = Agent::start(
        &t.host,
        &format!(
            "{}\n[firewall]\ndefault = \"drop\"\nicmp = \"essential\"\nicmp_echo_per_source_pps = {RATE}\n",
            interface(&t)
        ),
    )?;
    let iface = t.host_if.name();
    let host = v4(t.addrs.host4);
    let before = traffic::counters(&agent, iface)?;

    // 300 requests 2 ms apart, about 500 a second.
    let mut pinger = Pinger::open(&t.out, v4(t.addrs.out4), 0x4a01)?;
    let start = Instant::now();
    let mut last = start;
    for seq in 0..REQUESTS {
        pinger.send(host, seq)?;
        last = Instant::now();
        std::thread::sleep(Duration::from_millis(2));
    }
    let active = last - start;
    let judged = wait_judged(&agent, iface, &before, u64::from(REQUESTS))?;
    let passed = get(&judged, "pass", "icmp");
    let limited = get(&judged, "drop", "icmp_rate");
    ensure!(
        judged == expect(&[("pass", "icmp", passed), ("drop", "icmp_rate", limited)]),
        "unexpected counters: {judged:?}"
    );
    let replies = wait_for(SETTLE, "a reply to every passed echo request", || {
        let n = pinger.replies()? as u64;
        Ok((n >= passed).then_some(n))
    })?;
    let (low, high) = gcra_expected(RATE, RATE, active);
    eprintln!("echo: {REQUESTS} over {active:?}, {replies} replies, expected {low}..={high}");
    ensure!(
        replies == passed && (low..=high).contains(&replies),
        "{REQUESTS} echo requests over {active:?}: {replies} replies, pass/icmp {passed}, \
         drop/icmp_rate {limited}; {RATE}/s with a burst of {RATE} admits {low}..={high}"
    );

    // Another source still gets its answers.
    let mut other = Pinger::open(&t.out, v4(quiet), 0x4a02)?;
    for seq in 0..5 {
        other.send(host, seq)?;
    }
    wait_for(SETTLE, "5 replies to the quiet source", || {
        Ok((other.replies()? == 5).then_some(()))
    })?;
    Ok(())
}

fn vpn_config(t: &Topology, port: u16, pps: u32, burst: u32, dir: &str) -> String {
    format!(
        "{}\n[firewall]\ndefault = \"drop\"\n\n[vpn]\nlisten_port = {port}\naddress = \"10.77.0.1/24\"\n\
         private_key_file = \"{dir}/wg.key\"\npeers_file = \"{dir}/peers.toml\"\n\
         handshake_per_source_pps = {pps}\nhandshake_burst = {burst}\n",
        interface(t)
    )
}

#[test]
fn wireguard_initiations_are_rate_limited_per_source() -> Result<()> {
    if !privileged::require("limits::wireguard_initiations_are_rate_limited_per_source") {
        return Ok(());
    }
    const WG: u16 = 51821;
    const RATE: u32 = 10;
    const BURST: u32 = 5;
    let t = Topology::ipv4_only(121, 5)?;
    let quiet = second_source(&t)?;
    let scratch = tempfile::tempdir()?;
    // Bound first, so that it holds the port and counts every datagram XDP passes; the
    // agent's own WireGuard endpoint then cannot bind it and stays down (which it logs).
    let endpoint = Receiver::start(&t.host, WG)?;
    let agent = Agent::start(
        &t.host,
        &vpn_config(&t, WG, RATE, BURST, &scratch.path().display().to_string()),
    )?;
    let iface = t.host_if.name();
    let dst = t.host_addr(t.addrs.out4, WG);
    let before = traffic::counters(&agent, iface)?;

    // About 1,800 initiations a second for a second.
    let flood = Flood::start(
        &t.out,
        t.addrs.out4,
        dst,
        wg_initiation(),
        2,
        Duration::from_millis(1),
    )?;
    std::thread::sleep(Duration::from_millis(1000));
    let flood = flood.stop();
    let judged = wait_judged(&agent, iface, &before, flood.sent)?;
    let passed = get(&judged, "pass", "wireguard");
    let limited = get(&judged, "drop", "wg_handshake_rate");
    ensure!(
        judged
            == expect(&[
                ("pass", "wireguard", passed),
                ("drop", "wg_handshake_rate", limited)
            ]),
        "unexpected counters: {judged:?}"
    );
    wait_for(SETTLE, "every passed initiation at the endpoint", || {
        Ok((endpoint.total() >= passed).then_some(()))
    })?;
    let (low, high) = gcra_expected(RATE, BURST, flood.active);
    let got = endpoint.from(t.addrs.out4);
    eprintln!(
        "initiations: {} over {:?}, {passed} passed, expected {low}..={high}",
        flood.sent, flood.active
    );
    ensure!(
        got.datagrams == passed && got.bytes == passed * 148 && (low..=high).contains(&passed),
        "{} initiations over {:?}: {passed} passed ({got:?} at the endpoint), {limited} limited; \
         {RATE}/s with a burst of {BURST} admits {low}..={high}",
        flood.sent,
        flood.active
    );

    // Another source's initiations pass while the first one is limited.
    let before = traffic::counters(&agent, iface)?;
    send_datagrams(&t.out, quiet, dst, &vec![wg_initiation(); 3])?;
    wait_delta(&agent, iface, &before, &expect(&[("pass", "wireguard", 3)]))?;
    wait_for(SETTLE, "3 initiations from the quiet source", || {
        Ok((endpoint.from(quiet).datagrams == 3).then_some(()))
    })?;
    Ok(())
}

#[test]
fn the_wireguard_port_takes_only_wireguard_messages() -> Result<()> {
    if !privileged::require("limits::the_wireguard_port_takes_only_wireguard_messages") {
        return Ok(());
    }
    const WG: u16 = 51822;
    let t = Topology::ipv4_only(121, 6)?;
    let scratch = tempfile::tempdir()?;
    // Bound before the agent starts: see wireguard_initiations_are_rate_limited_per_source.
    let endpoint = Receiver::start(&t.host, WG)?;
    let agent = Agent::start(
        &t.host,
        &vpn_config(&t, WG, 1000, 1000, &scratch.path().display().to_string()),
    )?;
    let iface = t.host_if.name();
    let dst = t.host_addr(t.addrs.out4, WG);

    let with_reserved = |msg_type: u8, len: usize, byte: usize| {
        let mut m = wg_message(msg_type, len);
        m[byte] = 1;
        m
    };
    let malformed: Vec<(&str, Vec<u8>)> = vec![
        ("an initiation of 147 bytes", wg_message(1, 147)),
        ("an initiation of 149 bytes", wg_message(1, 149)),
        ("a response of 91 bytes", wg_message(2, 91)),
        ("a response of 93 bytes", wg_message(2, 93)),
        ("a cookie reply of 63 bytes", wg_message(3, 63)),
        ("a data message of 31 bytes", wg_message(4, 31)),
        (
            "an initiation with reserved byte 1 set",
            with_reserved(1, 148, 1),
        ),
        (
            "a data message with reserved byte 3 set",
            with_reserved(4, 64, 3),
        ),
        ("type 5", wg_message(5, 148)),
        ("type 0", wg_message(0, 32)),
        ("three bytes", wg_message(4, 3)),
        ("an empty datagram", Vec::new()),
    ];
    let before = traffic::counters(&agent, iface)?;
    for (what, payload) in &malformed {
        let before_one = traffic::counters(&agent, iface)?;
        send_datagrams(&t.out, t.addrs.out4, dst, std::slice::from_ref(payload))?;
        wait_delta(
            &agent,
            iface,
            &before_one,
            &expect(&[("drop", "wg_malformed", 1)]),
        )
        .with_context(|| format!("{what} to the WireGuard port"))?;
    }
    let wellformed = vec![
        wg_message(4, 33),
        wg_message(4, 1400),
        wg_message(2, 92),
        wg_message(3, 64),
        wg_initiation(),
    ];
    send_datagrams(&t.out, t.addrs.out4, dst, &wellformed)?;
    wait_delta(
        &agent,
        iface,
        &before,
        &expect(&[
            ("drop", "wg_malformed", malformed.len() as u64),
            ("pass", "wireguard", wellformed.len() as u64),
        ]),
    )?;
    let bytes: u64 = wellformed.iter().map(|m| m.len() as u64).sum();
    wait_for(SETTLE, "the well-formed messages at the endpoint", || {
        Ok((endpoint.total() >= wellformed.len() as u64).then_some(()))
    })?;
    let got = endpoint.from(t.addrs.out4);
    ensure!(
        got.datagrams == wellformed.len() as u64 && got.bytes == bytes,
        "the endpoint received {got:?}, expected the {} well-formed messages ({bytes} bytes) and \
         nothing else",
        wellformed.len()
    );
    Ok(())
}

#[test]
fn a_reload_that_changes_a_limit_lets_a_limited_source_through_at_once() -> Result<()> {
    if !privileged::require(
        "limits::a_reload_that_changes_a_limit_lets_a_limited_source_through_at_once",
    ) {
        return Ok(());
    }
    const PORT: u16 = 7300;
    let t = Topology::ipv4_only(121, 7)?;
    // One packet a second with a burst of two: a limited source stays limited for a second.
    let config = |pps: u32, burst: u32, extra_port: Option<u16>| {
        let extra = extra_port.map_or(String::new(), |p| {
            format!("\n[[firewall.service]]\nname = \"extra\"\nproto = \"udp\"\nports = [{p}]\n")
        });
        format!(
            "{}\n[firewall]\ndefault = \"drop\"\n\n[firewall.limits]\nper_source_pps = {pps}\nper_source_burst = {burst}\n\n\
             [[firewall.service]]\nname = \"ingest\"\nproto = \"udp\"\nports = [{PORT}]\n{extra}",
            interface(&t)
        )
    };
    let slow = config(1, 2, None);
    let agent = Agent::start(&t.host, &slow)?;
    let iface = t.host_if.name().to_owned();
    let receiver = Receiver::start(&t.host, PORT)?;
    let dst = t.host_addr(t.addrs.out4, PORT);
    let datagrams = |n: usize| vec![b"ingest".to_vec(); n];
    let reload = |body: &str| -> Result<()> {
        traffic::replace_config(&agent, &traffic::config_with_body(&agent, body)?)?;
        let out = agent.cli(&["reload"])?;
        ensure!(
            out.status.success(),
            "`crmguard reload` failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    };

    // 40 at once: the burst passes (one more is tolerated here: the exact size of a burst is
    // a_burst_admits_exactly_its_size_back_to_back's business).
    let before = traffic::counters(&agent, &iface)?;
    let limited_at = Instant::now();
    send_datagrams(&t.out, t.addrs.out4, dst, &datagrams(40))?;
    let first = wait_judged(&agent, &iface, &before, 40)?;
    let passed = get(&first, "pass", "service");
    eprintln!("burst of 40 at 1/s, burst 2: {passed} passed");
    ensure!(
        (2..=3).contains(&passed) && get(&first, "drop", "rate_limited") == 40 - passed,
        "40 datagrams at 1/s with a burst of 2: counters moved by {first:?}"
    );

    // A reload that leaves the limit alone leaves the source limited.
    reload(&config(1, 2, Some(PORT + 1)))?;
    let before = traffic::counters(&agent, &iface)?;
    send_datagrams(&t.out, t.addrs.out4, dst, &datagrams(10))?;
    let still_limited_within = limited_at.elapsed();
    wait_delta(
        &agent,
        &iface,
        &before,
        &expect(&[("drop", "rate_limited", 10)]),
    )
    .with_context(|| {
        format!("after a reload that kept the limit, {still_limited_within:?} after the burst")
    })?;

    // A reload with a higher limit (1000/s, burst 100) resets the bucket: everything passes at
    // once. Without the reset the old bucket would hold the source for about two more seconds.
    reload(&config(1000, 100, Some(PORT + 1)))?;
    let before = traffic::counters(&agent, &iface)?;
    send_datagrams(&t.out, t.addrs.out4, dst, &datagrams(20))?;
    let sent_within = limited_at.elapsed();
    ensure!(
        sent_within < Duration::from_millis(2500),
        "the test machine took {sent_within:?} to reload twice; the old bucket would have refilled"
    );
    wait_delta(&agent, &iface, &before, &expect(&[("pass", "service", 20)])).with_context(
        || format!("right after the reload with a higher limit ({sent_within:?} after the burst)"),
    )?;
    wait_for(SETTLE, "every admitted datagram at the receiver", || {
        Ok((receiver.total() == passed + 20).then_some(()))
    })?;
    Ok(())
}

/// `per_source_burst`, a service's `per_source_pps` (whose burst is its rate),
/// `handshake_burst` and `icmp_echo_per_source_pps` (likewise) are the number of packets a fresh
/// source may send at once: back to back, exactly that many pass. The sends of each batch take
/// far less than one interval of its rate, so no token is earned meanwhile.
#[test]
fn a_burst_admits_exactly_its_size_back_to_back() -> Result<()> {
    if !privileged::require("limits::a_burst_admits_exactly_its_size_back_to_back") {
        return Ok(());
    }
    const OWN_RATE: u16 = 7500;
    const GLOBAL_RATE: u16 = 7501;
    const WG: u16 = 51823;
    let t = Topology::ipv4_only(121, 8)?;
    let scratch = tempfile::tempdir()?;
    let dir = scratch.path().display().to_string();
    let agent = Agent::start(
        &t.host,
        &format!(
            "{}\n[firewall]\ndefault = \"drop\"\nicmp_echo_per_source_pps = 4\n\n\
             [firewall.limits]\nper_source_pps = 1\nper_source_burst = 3\n\n\
             [[firewall.service]]\nname = \"own\"\nproto = \"udp\"\nports = [{OWN_RATE}]\nper_source_pps = 10\n\n\
             [[firewall.service]]\nname = \"global\"\nproto = \"udp\"\nports = [{GLOBAL_RATE}]\n\n\
             [vpn]\nlisten_port = {WG}\naddress = \"10.77.0.1/24\"\nprivate_key_file = \"{dir}/wg.key\"\n\
             peers_file = \"{dir}/peers.toml\"\nhandshake_per_source_pps = 10\nhandshake_burst = 5\n",
            interface(&t)
        ),
    )?;
    let iface = t.host_if.name();
    let src = t.addrs.out4;
    // (what, passed, expected)
    let mut got: Vec<(&str, u64, u64)> = Vec::new();
    for (what, port, payload, burst) in [
        (
            "per_source_pps = 10 of a service",
            OWN_RATE,
            b"x".to_vec(),
            10,
        ),
        ("per_source_burst = 3", GLOBAL_RATE, b"x".to_vec(), 3),
        ("handshake_burst = 5", WG, wg_initiation(), 5),
    ] {
        let before = traffic::counters(&agent, iface)?;
        send_datagrams(&t.out, src, t.host_addr(src, port), &vec![payload; 50])?;
        let moved = wait_judged(&agent, iface, &before, 50)?;
        let passed = get(&moved, "pass", "service") + get(&moved, "pass", "wireguard");
        got.push((what, passed, burst));
    }
    let before = traffic::counters(&agent, iface)?;
    let pinger = Pinger::open(&t.out, v4(src), 0x4a08)?;
    for seq in 0..20 {
        pinger.send(v4(t.addrs.host4), seq)?;
    }
    let moved = wait_judged(&agent, iface, &before, 20)?;
    got.push((
        "icmp_echo_per_source_pps = 4",
        get(&moved, "pass", "icmp"),
        4,
    ));

    let wrong: Vec<String> = got
        .iter()
        .filter(|(_, passed, expected)| passed != expected)
        .map(|(what, passed, expected)| {
            format!("{what}: {passed} passed back to back, expected {expected}")
        })
        .collect();
    ensure!(
        wrong.is_empty(),
        "bursts admitted the wrong number of packets:\n{}",
        wrong.join("\n")
    );
    Ok(())
}
