//! Firewall scenarios: the XDP program on the host end of a veth, driven by real clients.
//!
//! Each test builds its own `out` / `host` namespaces (see `crmguard_lab::topology`), runs
//! `crmguard run` in `host` with the policy below, and checks what the outside sees: an admitted
//! connection gets the server's banner, a dropped one gets no answer at all (a timeout, not a
//! reset). Counters are read from `crmguard status --json`.
//!
//! The policy: default drop; `ssh` tcp/22 and `dns-like` udp/5353 from the admin network only;
//! `web` tcp/8080 from anywhere; the `.66` addresses (inside the admin network) denied. A
//! server also listens on tcp/8081, which no service admits.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::{anyhow, bail, ensure, Context, Result};
use crmguard_lab::agent::{metric_value, Agent, Counts};
use crmguard_lab::net::{self, RawSocket, TcpOutcome, TcpServer, UdpFlood, UdpReceiver, Vlan};
use crmguard_lab::privileged;
use crmguard_lab::topology::Topology;
use crmguard_lab::wait::wait_for;

const SSH: u16 = 22;
const WEB: u16 = 8080;
/// A port with a listening server that no service admits.
const UNLISTED: u16 = 8081;
const DNS_LIKE: u16 = 5353;
/// A UDP port no service admits.
const DISCARD: u16 = 9;

/// An admitted connection completes well within this.
const CONNECT: Duration = Duration::from_secs(5);
/// How long a connection the policy drops is given to be answered anyway: one SYN
/// retransmission (after 1 s) falls inside it.
const NO_ANSWER: Duration = Duration::from_millis(1500);
/// How long counters may take to reflect traffic that was already sent.
const COUNT: Duration = Duration::from_secs(10);

fn policy(t: &Topology, xdp_mode: &str) -> String {
    let a = &t.addrs;
    format!(
        r#"[[interface]]
name = "{iface}"
xdp_mode = "{xdp_mode}"

[firewall]
default = "drop"

[firewall.deny]
sources = ["{denied4}", "{denied6}"]

[[firewall.service]]
name = "ssh"
proto = "tcp"
ports = [{SSH}]
from = ["{admin4}", "{admin6}"]

[[firewall.service]]
name = "web"
proto = "tcp"
ports = [{WEB}]

[[firewall.service]]
name = "dns-like"
proto = "udp"
ports = [{DNS_LIKE}]
from = ["{admin4}", "{admin6}"]
"#,
        iface = t.host_if.name(),
        denied4 = a.denied4,
        denied6 = a.denied6,
        admin4 = a.admin4,
        admin6 = a.admin6,
    )
}

pub(crate) fn banner(port: u16) -> String {
    format!("crmguard-test port {port}\n")
}

/// The TCP servers of the host namespace, one per port the scenarios probe.
struct Servers {
    _servers: Vec<TcpServer>,
}

fn start_servers(t: &Topology) -> Result<Servers> {
    let servers = [SSH, WEB, UNLISTED]
        .into_iter()
        .map(|port| TcpServer::start(&t.host, port, &banner(port)))
        .collect::<Result<_>>()?;
    Ok(Servers { _servers: servers })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Expect {
    /// The connection completes and the server's banner arrives.
    Banner,
    /// Nothing answers: the SYN was dropped.
    NoAnswer,
}

/// Connects from each `(source address in out, host port)` to the host and checks the outcome.
/// The probes run concurrently (each `NoAnswer` costs a full timeout); every failure is
/// reported, not only the first.
pub(crate) fn probe(t: &Topology, cases: &[(IpAddr, u16, Expect)]) -> Result<()> {
    let failures: Vec<String> = std::thread::scope(|scope| {
        let handles: Vec<_> = cases
            .iter()
            .map(|&(src, port, expect)| scope.spawn(move || probe_one(t, src, port, expect)))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow!("a probe panicked")))
            })
            .filter_map(|result| result.err().map(|e| format!("{e:#}")))
            .collect()
    });
    ensure!(failures.is_empty(), "{}", failures.join("\n"));
    Ok(())
}

fn probe_one(t: &Topology, src: IpAddr, port: u16, expect: Expect) -> Result<()> {
    let dst = t.host_addr(src, port);
    let timeout = match expect {
        Expect::Banner => CONNECT,
        Expect::NoAnswer => NO_ANSWER,
    };
    let outcome = net::tcp_connect(&t.out, Some(src), dst, timeout)?;
    let ok = match (&outcome, expect) {
        (TcpOutcome::Connected { banner: got }, Expect::Banner) => *got == banner(port),
        (TcpOutcome::TimedOut, Expect::NoAnswer) => true,
        _ => false,
    };
    ensure!(ok, "{src} -> {dst}: expected {expect:?}, got {outcome:?}");
    Ok(())
}

/// Admitted services answer: ssh from the admin network, web from anywhere, v4 and v6.
fn admitted_cases(t: &Topology) -> Vec<(IpAddr, u16, Expect)> {
    let a = &t.addrs;
    vec![
        (a.out4, SSH, Expect::Banner),
        (a.out6, SSH, Expect::Banner),
        (a.out4, WEB, Expect::Banner),
        (a.out6, WEB, Expect::Banner),
    ]
}

/// A listening port that no service admits stays silent.
fn unlisted_cases(t: &Topology) -> Vec<(IpAddr, u16, Expect)> {
    let a = &t.addrs;
    vec![
        (a.out4, UNLISTED, Expect::NoAnswer),
        (a.out6, UNLISTED, Expect::NoAnswer),
    ]
}

/// A denied source gets nothing, not even from a service open to anywhere.
fn denied_cases(t: &Topology) -> Vec<(IpAddr, u16, Expect)> {
    let a = &t.addrs;
    vec![
        (a.denied4, SSH, Expect::NoAnswer),
        (a.denied6, SSH, Expect::NoAnswer),
        (a.denied4, WEB, Expect::NoAnswer),
        (a.denied6, WEB, Expect::NoAnswer),
    ]
}

/// The three properties of a working filter at once.
fn enforcing_cases(t: &Topology) -> Vec<(IpAddr, u16, Expect)> {
    let mut cases = admitted_cases(t);
    cases.extend(unlisted_cases(t));
    cases.extend(denied_cases(t));
    cases
}

/// The kernel's name (`ip -d link`) for an attach mode of the config.
fn kernel_mode(mode: &str) -> &'static str {
    match mode {
        "generic" => "xdpgeneric",
        _ => "xdp",
    }
}

/// Waits until status reports `mode` for the host interface, and checks the kernel agrees.
fn expect_attached(t: &Topology, agent: &Agent, mode: &str) -> Result<()> {
    let iface = t.host_if.name();
    wait_for(
        COUNT,
        &format!("status to show {iface} attached in {mode} mode"),
        || {
            let reported = agent.attach_mode(iface)?;
            Ok((reported.as_deref() == Some(mode)).then_some(()))
        },
    )?;
    let kernel = t.host_if.xdp()?;
    ensure!(
        kernel.as_ref().map(|(m, _)| m.as_str()) == Some(kernel_mode(mode)),
        "status says {iface} is attached in {mode} mode, the kernel reports {kernel:?}"
    );
    Ok(())
}

/// Waits until the counter reaches `at_least` packets and returns it.
fn wait_count(
    agent: &Agent,
    iface: &str,
    action: &str,
    reason: &str,
    at_least: u64,
) -> Result<Counts> {
    wait_for(
        COUNT,
        &format!("{iface} {action}/{reason} to reach {at_least} packets"),
        || {
            let counts = agent.counts(iface, action, reason)?;
            Ok((counts.packets >= at_least).then_some(counts))
        },
    )
}

/// Without crmguard every probe of the scenarios gets an answer and every datagram and raw
/// frame arrives: the silence the other tests observe is the filter's doing.
#[test]
fn without_crmguard_everything_answers() -> Result<()> {
    if !privileged::require("firewall::without_crmguard_everything_answers") {
        return Ok(());
    }
    let t = Topology::dual_stack(100, 1)?;
    let a = t.addrs.clone();
    let _servers = start_servers(&t)?;
    let all_answer: Vec<_> = enforcing_cases(&t)
        .into_iter()
        .map(|(src, port, _)| (src, port, Expect::Banner))
        .collect();
    probe(&t, &all_answer)?;

    let receiver = UdpReceiver::start(&t.host, DISCARD)?;
    net::udp_send(&t.out, a.denied4, t.host_addr(a.denied4, DISCARD), 3, 10)?;
    net::udp_send(&t.out, a.denied6, t.host_addr(a.denied6, DISCARD), 3, 10)?;
    let raw = RawSocket::open(&t.out, t.out_if.name())?;
    let frame = net::udp_frame(
        &t.l2_to_host(Vlan::Untagged)?,
        SocketAddr::new(a.out4, 40000),
        t.host_addr(a.out4, DISCARD),
        b"raw",
    )?;
    raw.send(&frame)?;
    wait_for(COUNT, "7 datagrams at udp/9", || {
        Ok((receiver.received() >= 7).then_some(()))
    })?;
    ensure!(
        receiver.received() == 7,
        "{} datagrams",
        receiver.received()
    );
    Ok(())
}

#[test]
fn admitted_services_answer_over_ipv4_and_ipv6() -> Result<()> {
    if !privileged::require("firewall::admitted_services_answer_over_ipv4_and_ipv6") {
        return Ok(());
    }
    let t = Topology::dual_stack(101, 1)?;
    let _servers = start_servers(&t)?;
    let agent = Agent::start(&t.host, &policy(&t, "native"))?;
    expect_attached(&t, &agent, "native")?;

    probe(&t, &admitted_cases(&t))?;
    let passed = agent.counter(t.host_if.name(), "pass", "service")?;
    ensure!(
        passed > 0,
        "four connections went through, yet pass/service is 0"
    );
    Ok(())
}

#[test]
fn a_port_no_service_admits_gets_no_answer() -> Result<()> {
    if !privileged::require("firewall::a_port_no_service_admits_gets_no_answer") {
        return Ok(());
    }
    let t = Topology::dual_stack(102, 1)?;
    let _servers = start_servers(&t)?;
    let agent = Agent::start(&t.host, &policy(&t, "native"))?;
    expect_attached(&t, &agent, "native")?;

    // The server is there: from inside the host it answers.
    for family in [t.addrs.host4, t.addrs.host6] {
        let dst = t.host_addr(family, UNLISTED);
        let outcome = net::tcp_connect(&t.host, None, dst, CONNECT)?;
        ensure!(
            outcome
                == (TcpOutcome::Connected {
                    banner: banner(UNLISTED)
                }),
            "the server on {dst} does not answer locally: {outcome:?}"
        );
    }
    probe(&t, &unlisted_cases(&t))?;
    wait_count(&agent, t.host_if.name(), "drop", "default_drop", 2)?;
    Ok(())
}

#[test]
fn a_denied_source_gets_no_answer() -> Result<()> {
    if !privileged::require("firewall::a_denied_source_gets_no_answer") {
        return Ok(());
    }
    let t = Topology::dual_stack(103, 1)?;
    t.pin_neighbours()?;
    let _servers = start_servers(&t)?;
    let agent = Agent::start(&t.host, &policy(&t, "native"))?;
    expect_attached(&t, &agent, "native")?;

    // Denial is per address: a neighbour of the denied address in the same admin network
    // still gets through.
    let mut cases = denied_cases(&t);
    cases.push((t.addrs.out4, SSH, Expect::Banner));
    cases.push((t.addrs.out6, SSH, Expect::Banner));
    probe(&t, &cases)?;
    // At least one SYN per denied connection attempt.
    wait_count(&agent, t.host_if.name(), "drop", "denied_source", 4)?;
    Ok(())
}

#[test]
fn vlan_tagged_frames_are_judged_like_untagged_ones() -> Result<()> {
    if !privileged::require("firewall::vlan_tagged_frames_are_judged_like_untagged_ones") {
        return Ok(());
    }
    // No IPv6 stack on the outside: only the injected frames (and ARP) reach the host.
    let t = Topology::ipv4_only(104, 1)?;
    let agent = Agent::start(&t.host, &policy(&t, "native"))?;
    expect_attached(&t, &agent, "native")?;
    let iface = t.host_if.name();
    let raw = RawSocket::open(&t.out, t.out_if.name())?;

    let before_denied = agent.counts(iface, "drop", "denied_source")?;
    let before_default = agent.counts(iface, "drop", "default_drop")?;
    const PER_KIND: u16 = 5;
    let mut injected = 0u64;
    let tags = [
        Vlan::Dot1Q(10),
        Vlan::QinQ {
            outer: 100,
            inner: 10,
        },
    ];
    for vlan in tags {
        let l2 = t.l2_to_host(vlan)?;
        let families = [
            (t.addrs.denied4, t.addrs.out4),
            (t.addrs.denied6, t.addrs.out6),
        ];
        for (denied, admitted) in families {
            for i in 0..PER_KIND {
                // A SYN to ssh from the denied address: denied_source.
                let syn = net::tcp_syn_frame(
                    &l2,
                    SocketAddr::new(denied, 40000 + i),
                    t.host_addr(denied, SSH),
                )?;
                raw.send(&syn)
                    .with_context(|| format!("injecting a {vlan:?} SYN"))?;
                // UDP from an admitted address to a port no service admits: default_drop.
                let udp = net::udp_frame(
                    &l2,
                    SocketAddr::new(admitted, 40000 + i),
                    t.host_addr(admitted, DISCARD),
                    b"crmguard vlan test",
                )?;
                raw.send(&udp)
                    .with_context(|| format!("injecting a {vlan:?} datagram"))?;
            }
            injected += u64::from(PER_KIND);
        }
    }

    let denied = wait_count(
        &agent,
        iface,
        "drop",
        "denied_source",
        before_denied.packets + injected,
    )?;
    let default = wait_count(
        &agent,
        iface,
        "drop",
        "default_drop",
        before_default.packets + injected,
    )?;
    ensure!(
        denied.packets - before_denied.packets == injected,
        "{injected} tagged SYNs from the denied source, drop/denied_source grew by {}",
        denied.packets - before_denied.packets
    );
    ensure!(
        default.packets - before_default.packets == injected,
        "{injected} tagged datagrams to an unlisted port, drop/default_drop grew by {}",
        default.packets - before_default.packets
    );
    Ok(())
}

#[test]
fn counters_match_the_traffic_sent() -> Result<()> {
    if !privileged::require("firewall::counters_match_the_traffic_sent") {
        return Ok(());
    }
    // No IPv6 stack on the outside: only the test's datagrams (and ARP) reach the host.
    let t = Topology::ipv4_only(105, 1)?;
    let agent = Agent::start(&t.host, &policy(&t, "native"))?;
    expect_attached(&t, &agent, "native")?;
    let iface = t.host_if.name();
    let receiver = UdpReceiver::start(&t.host, DISCARD)?;

    const DATAGRAMS: u64 = 100;
    const PAYLOAD: usize = 100;
    let src = SocketAddr::new(t.addrs.out4, 40000);
    let dst = t.host_addr(t.addrs.out4, DISCARD);
    // The counters count whole frames, Ethernet header included, as the kernel sends them.
    let frame_len = net::udp_frame(&t.l2_to_host(Vlan::Untagged)?, src, dst, &[0; PAYLOAD])?.len();
    let frame_len = u64::try_from(frame_len)?;

    let before = agent.counts(iface, "drop", "default_drop")?;
    net::udp_send(&t.out, t.addrs.out4, dst, DATAGRAMS, PAYLOAD)?;
    let after = wait_count(
        &agent,
        iface,
        "drop",
        "default_drop",
        before.packets + DATAGRAMS,
    )?;
    ensure!(
        after.packets - before.packets == DATAGRAMS,
        "sent {DATAGRAMS} datagrams, drop/default_drop grew by {}",
        after.packets - before.packets
    );
    ensure!(
        after.bytes - before.bytes == DATAGRAMS * frame_len,
        "sent {DATAGRAMS} frames of {frame_len} bytes, drop/default_drop bytes grew by {}",
        after.bytes - before.bytes
    );
    ensure!(
        receiver.received() == 0,
        "{} datagrams got through",
        receiver.received()
    );

    // The Prometheus counter tells the same.
    let labels = [
        ("interface", iface),
        ("action", "drop"),
        ("reason", "default_drop"),
    ];
    wait_for(COUNT, "crmguard_xdp_packets_total to match status", || {
        let text = agent.metrics()?;
        let value = metric_value(&text, "crmguard_xdp_packets_total", &labels)
            .context("no crmguard_xdp_packets_total sample for the interface")?;
        let status = agent.counts(iface, "drop", "default_drop")?;
        Ok((value == status.packets as f64).then_some(()))
    })?;
    Ok(())
}

#[test]
fn enforcement_survives_kill_9_and_a_restart_adopts_it() -> Result<()> {
    if !privileged::require("firewall::enforcement_survives_kill_9_and_a_restart_adopts_it") {
        return Ok(());
    }
    let t = Topology::dual_stack(106, 1)?;
    t.pin_neighbours()?;
    let a = t.addrs.clone();
    let _servers = start_servers(&t)?;
    let mut agent = Agent::start(&t.host, &policy(&t, "native"))?;
    expect_attached(&t, &agent, "native")?;
    probe(&t, &enforcing_cases(&t))?;

    // Crash: the pinned link keeps the program attached and the last policy enforced.
    agent.kill9()?;
    ensure!(
        t.host_if.xdp()?.is_some(),
        "no XDP program on {} after the agent was killed",
        t.host_if.name()
    );
    probe(&t, &enforcing_cases(&t)).context("after kill -9")?;

    // Restart under a flood: what the policy drops must stay dropped while the new agent
    // starts and adopts the pinned state.
    let dns_like = UdpReceiver::start(&t.host, DNS_LIKE)?;
    let discard = UdpReceiver::start(&t.host, DISCARD)?;
    let floods = [
        UdpFlood::start(&t.out, a.denied4, t.host_addr(a.denied4, DNS_LIKE), 64)?,
        UdpFlood::start(&t.out, a.denied6, t.host_addr(a.denied6, DNS_LIKE), 64)?,
        UdpFlood::start(&t.out, a.out4, t.host_addr(a.out4, DISCARD), 64)?,
        UdpFlood::start(&t.out, a.out6, t.host_addr(a.out6, DISCARD), 64)?,
    ];
    let floods_sent = |floods: &[UdpFlood]| floods.iter().map(UdpFlood::sent).min().unwrap_or(0);
    wait_for(COUNT, "every flood to send 500 datagrams", || {
        Ok((floods_sent(&floods) >= 500).then_some(()))
    })?;
    agent.spawn()?;
    agent.wait_ready()?;
    expect_attached(&t, &agent, "native").context("after the restart")?;
    // Keep flooding past the adoption, across any swap the new agent makes.
    let at_ready = floods_sent(&floods);
    wait_for(COUNT, "every flood to send 500 more datagrams", || {
        Ok((floods_sent(&floods) >= at_ready + 500).then_some(()))
    })?;
    let sent: Vec<u64> = floods.into_iter().map(UdpFlood::stop).collect();
    ensure!(
        dns_like.received() == 0 && discard.received() == 0,
        "during the restart {} datagrams from the denied source reached udp/{DNS_LIKE} and {} \
         reached udp/{DISCARD} (floods sent {sent:?})",
        dns_like.received(),
        discard.received()
    );

    // The new agent reads the pinned counters: the floods were dropped by the filter, for the
    // reasons the policy gives.
    let iface = t.host_if.name();
    wait_count(&agent, iface, "drop", "denied_source", 1)?;
    wait_count(&agent, iface, "drop", "default_drop", 1)?;

    // The receivers do work: admitted datagrams arrive.
    net::udp_send(&t.out, a.out4, t.host_addr(a.out4, DNS_LIKE), 5, 64)?;
    net::udp_send(&t.out, a.out6, t.host_addr(a.out6, DNS_LIKE), 5, 64)?;
    wait_for(COUNT, "10 admitted datagrams at udp/5353", || {
        Ok((dns_like.received() >= 10).then_some(()))
    })?;
    probe(&t, &enforcing_cases(&t)).context("after the restart")?;
    Ok(())
}

#[test]
fn generic_mode_attaches_and_enforces() -> Result<()> {
    if !privileged::require("firewall::generic_mode_attaches_and_enforces") {
        return Ok(());
    }
    let t = Topology::dual_stack(107, 1)?;
    t.pin_neighbours()?;
    let _servers = start_servers(&t)?;
    let agent = Agent::start(&t.host, &policy(&t, "generic"))?;
    expect_attached(&t, &agent, "generic")?;

    probe(&t, &enforcing_cases(&t))?;
    wait_count(&agent, t.host_if.name(), "drop", "default_drop", 2)?;
    wait_count(&agent, t.host_if.name(), "drop", "denied_source", 4)?;
    if agent.counter(t.host_if.name(), "pass", "service")? == 0 {
        bail!("connections were admitted, yet pass/service is 0");
    }
    Ok(())
}

/// Starts `crmguard run` with the agent's configuration and waits for it to exit; returns its
/// exit code and standard error.
fn run_to_exit(t: &Topology, agent: &Agent, label: &str) -> Result<(Option<i32>, String)> {
    let mut cmd = std::process::Command::new(crmguard_lab::agent::binary()?);
    cmd.arg("run").arg("--config").arg(agent.config_path());
    let mut run = crmguard_lab::process::Process::spawn(&t.host, cmd, agent.dir(), label)?;
    let status = wait_for(
        crmguard_lab::agent::READY_TIMEOUT,
        "`crmguard run` to refuse the pinned maps and exit",
        || run.try_wait(),
    )?;
    Ok((status.code(), run.stderr()))
}

/// Writes `version` into the ABI stamp of the agent's pinned maps, as an agent of another ABI
/// version would have left it.
fn write_stamp(agent: &Agent, version: u32) -> Result<()> {
    let path = agent
        .bpffs_dir()
        .join("maps")
        .join(crmguard_datapath::stamp::STAMP_MAP);
    let data = aya::maps::MapData::from_pin(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    let mut stamp: aya::maps::Array<_, u32> =
        aya::maps::Array::try_from(aya::maps::Map::from_map_data(data)?)?;
    stamp.set(0, version, 0)?;
    Ok(())
}

#[test]
fn pinned_maps_of_another_abi_version_or_unstamped_are_refused() -> Result<()> {
    if !privileged::require("firewall::pinned_maps_of_another_abi_version_or_unstamped_are_refused")
    {
        return Ok(());
    }
    let t = Topology::dual_stack(108, 1)?;
    t.pin_neighbours()?;
    let _servers = start_servers(&t)?;
    let mut agent = Agent::start(&t.host, &policy(&t, "native"))?;
    expect_attached(&t, &agent, "native")?;
    agent.kill9()?;

    let foreign = crmguard_core::abi::ABI_VERSION + 1;
    let stamp = agent
        .bpffs_dir()
        .join("maps")
        .join(crmguard_datapath::stamp::STAMP_MAP);
    write_stamp(&agent, foreign)?;
    let (code, stderr) = run_to_exit(&t, &agent, "crmguard-refused")?;
    ensure!(
        code == Some(69),
        "`crmguard run` exited with {code:?}, not 69:\n{stderr}"
    );
    for expected in [
        format!("ABI version {foreign}").as_str(),
        "crmguard uninstall",
        "keeps enforcing",
    ] {
        ensure!(
            stderr.contains(expected),
            "the refusal does not say {expected:?}:\n{stderr}"
        );
    }
    // Nothing was detached or replaced: the old filter still enforces its policy.
    ensure!(
        t.host_if.xdp()?.is_some(),
        "no XDP program on {} after the refusal",
        t.host_if.name()
    );
    probe(&t, &enforcing_cases(&t)).context("after the refusal")?;
    let found = crmguard_datapath::stamp::read(&stamp)?;
    ensure!(
        found == foreign,
        "the refused set was restamped with {found}"
    );

    // A set pinned before stamps existed (no stamp at all) is of the last unstamped version,
    // whose maps this agent no longer lays out the same way (it has datagram flows and a
    // budget of new rate-limit buckets): it is refused too, and left as it is.
    std::fs::remove_file(&stamp)?;
    ensure!(
        crmguard_core::abi::ABI_VERSION != crmguard_datapath::stamp::LAST_UNSTAMPED_VERSION,
        "this agent speaks the unstamped version again: the case below must expect an adoption"
    );
    let (code, stderr) = run_to_exit(&t, &agent, "crmguard-unstamped")?;
    ensure!(
        code == Some(69),
        "`crmguard run` exited with {code:?}, not 69, on an unstamped set:\n{stderr}"
    );
    for expected in [
        "record no ABI version",
        "crmguard uninstall",
        "keeps enforcing",
    ] {
        ensure!(
            stderr.contains(expected),
            "the refusal of an unstamped set does not say {expected:?}:\n{stderr}"
        );
    }
    ensure!(!stamp.exists(), "the refused unstamped set was stamped");
    ensure!(
        t.host_if.xdp()?.is_some(),
        "no XDP program on {} after the refusal of an unstamped set",
        t.host_if.name()
    );
    probe(&t, &enforcing_cases(&t)).context("after the refusal of an unstamped set")?;
    Ok(())
}
