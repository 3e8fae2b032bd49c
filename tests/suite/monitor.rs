//! Monitor mode: the filter judges every packet as in enforce mode but drops nothing. A denied
//! source and a port no service admits both get through, a source over its rate limit loses
//! nothing, and the counters show each would-be drop as `would_drop` with the reason enforce mode
//! would have dropped it for, and no `drop` at all.

use std::time::Duration;

use anyhow::{ensure, Result};
use crmguard_lab::agent::Agent;
use crmguard_lab::net::{self, TcpOutcome, TcpServer};
use crmguard_lab::privileged;
use crmguard_lab::topology::Topology;
use crmguard_lab::wait::wait_for;

use crate::traffic::{self, expect, get, send_datagrams, wait_delta, Receiver, SETTLE};

const SSH: u16 = 22;
/// A TCP port with a listening server that no service admits.
const CLOSED: u16 = 8081;
const INGEST: u16 = 7400;
const INGEST_RATE: u32 = 10;

const CONNECT: Duration = Duration::from_secs(5);

fn policy(t: &Topology) -> String {
    format!(
        r#"[[interface]]
name = "{iface}"
xdp_mode = "native"

[firewall]
default = "drop"

[firewall.deny]
sources = ["{denied}"]

[[firewall.service]]
name = "ssh"
proto = "tcp"
ports = [{SSH}]
from = ["{admin}"]

[[firewall.service]]
name = "ingest"
proto = "udp"
ports = [{INGEST}]
per_source_pps = {INGEST_RATE}
"#,
        iface = t.host_if.name(),
        denied = t.addrs.denied4,
        admin = t.addrs.admin4,
    )
}

#[test]
fn monitor_mode_counts_would_be_drops_and_drops_nothing() -> Result<()> {
    if !privileged::require("monitor::monitor_mode_counts_would_be_drops_and_drops_nothing") {
        return Ok(());
    }
    let t = Topology::ipv4_only(123, 1)?;
    let _servers = [
        TcpServer::start(&t.host, SSH, "ssh\n")?,
        TcpServer::start(&t.host, CLOSED, "closed\n")?,
    ];
    let mut agent = Agent::configure(&t.host, &policy(&t))?;
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
    let status = agent.status()?;
    ensure!(
        status["mode"] == "monitor",
        "status reports mode {}",
        status["mode"]
    );
    let iface = t.host_if.name();
    let before = traffic::counters(&agent, iface)?;

    // The denied source reaches ssh, the admitted one a port no service admits.
    for (src, port) in [(t.addrs.denied4, SSH), (t.addrs.out4, CLOSED)] {
        let outcome = net::tcp_connect(&t.out, Some(src), t.host_addr(src, port), CONNECT)?;
        ensure!(
            matches!(outcome, TcpOutcome::Connected { .. }),
            "monitor mode: {src} -> tcp/{port}: {outcome:?}"
        );
    }
    // Each connection is at least its SYN and the ACK of the handshake.
    let tcp = traffic::wait_delta_until(
        &agent,
        iface,
        &before,
        "would_drop counts of both connections",
        |d| get(d, "would_drop", "denied_source") >= 2 && get(d, "would_drop", "default_drop") >= 2,
    )?;
    ensure!(
        tcp.keys().all(|(action, reason)| action == "would_drop"
            && (reason == "denied_source" || reason == "default_drop")),
        "the two connections moved other counters: {tcp:?}"
    );

    // Status names what enforce mode would have dropped by reason and service, from the
    // sampled drop events; the log says it too.
    let tally = wait_for(
        SETTLE,
        "both connections in the tally of would-be drops",
        || {
            let status = agent.status()?;
            let has = |reason: &str, service: &str| {
                status["drop_tally"]["entries"]
                    .as_array()
                    .is_some_and(|entries| {
                        entries.iter().any(|e| {
                            e["action"] == "would_drop"
                                && e["reason"] == reason
                                && e["service"] == service
                                && e["samples"].as_u64().unwrap_or(0) >= 1
                        })
                    })
            };
            Ok((has("denied_source", &format!("tcp/{SSH}"))
                && has("default_drop", &format!("tcp/{CLOSED}")))
            .then_some(status))
        },
    )?;
    ensure!(
        tally["drop_tally"]["entries"]
            .as_array()
            .is_some_and(|entries| entries.iter().all(|e| e["action"] == "would_drop")),
        "monitor mode tallied real drops: {}",
        tally["drop_tally"]
    );
    let text = agent.cli(&["status"])?;
    let text = String::from_utf8_lossy(&text.stdout);
    ensure!(
        text.contains("MONITOR MODE: enforce mode would have dropped")
            && text.contains(&format!("tcp/{CLOSED}")),
        "status text: {text}"
    );
    let log = agent.dir().join("crmguard-run-1.stderr");
    wait_for(
        Duration::from_secs(30),
        "the log to report the would-be drops by service",
        || {
            let text = std::fs::read_to_string(&log)?;
            Ok(text
                .lines()
                .any(|line| {
                    line.contains("monitor mode: what enforce mode would have dropped")
                        && line.contains(&format!("denied_source tcp/{SSH}="))
                        && line.contains(&format!("default_drop tcp/{CLOSED}="))
                })
                .then_some(()))
        },
    )?;

    // A source far over the ingest rate loses nothing; the excess is counted as would-be drops.
    let receiver = Receiver::start(&t.host, INGEST)?;
    let before = traffic::counters(&agent, iface)?;
    const BURST: u64 = 100;
    send_datagrams(
        &t.out,
        t.addrs.out4,
        t.host_addr(t.addrs.out4, INGEST),
        &vec![b"x".to_vec(); usize::try_from(BURST).expect("a small burst")],
    )?;
    wait_for(SETTLE, "all 100 datagrams at the ingest port", || {
        Ok((receiver.total() == BURST).then_some(()))
    })?;
    let udp = traffic::wait_delta_until(&agent, iface, &before, "100 datagrams judged", |d| {
        d.values().sum::<u64>() >= BURST
    })?;
    let passed = get(&udp, "pass", "service");
    eprintln!("{BURST} back-to-back datagrams at {INGEST_RATE}/s: {passed} within the limit");
    // The burst of the rate limit (one more is tolerated here: the exact size of a burst is
    // limits::a_burst_admits_exactly_its_size_back_to_back's business).
    ensure!(
        (u64::from(INGEST_RATE)..=u64::from(INGEST_RATE) + 1).contains(&passed),
        "pass/service {passed} of {BURST} datagrams at a limit of {INGEST_RATE}/s: {udp:?}"
    );
    wait_delta(
        &agent,
        iface,
        &before,
        &expect(&[
            ("pass", "service", passed),
            ("would_drop", "rate_limited", BURST - passed),
        ]),
    )?;

    // Nothing, ever, was dropped.
    let all = traffic::counters(&agent, iface)?;
    let dropped: Vec<_> = all
        .iter()
        .filter(|((action, _), n)| action == "drop" && **n != 0)
        .collect();
    ensure!(
        dropped.is_empty(),
        "monitor mode dropped packets: {dropped:?}"
    );

    // Going to enforce as docs/OPERATIONS.md says: the mode line changed, applied with a
    // rollback guard, confirmed. The closed port is then dropped.
    let text = std::fs::read_to_string(agent.config_path())?;
    std::fs::write(
        agent.config_path(),
        text.replacen("mode = \"monitor\"\n", "mode = \"enforce\"\n", 1),
    )?;
    for args in [&["reload", "--confirm", "120s"][..], &["confirm"][..]] {
        let out = agent.cli(args)?;
        ensure!(out.status.success(), "crmguard {}: {out:?}", args.join(" "));
    }
    let status = agent.status()?;
    ensure!(
        status["mode"] == "enforce" && status["pending_change"].is_null(),
        "after reload --confirm and confirm: mode {}, pending {}",
        status["mode"],
        status["pending_change"]
    );
    let outcome = net::tcp_connect(
        &t.out,
        Some(t.addrs.out4),
        t.host_addr(t.addrs.out4, CLOSED),
        Duration::from_secs(2),
    )?;
    ensure!(
        outcome == TcpOutcome::TimedOut,
        "enforce mode: tcp/{CLOSED}: {outcome:?}"
    );
    Ok(())
}
