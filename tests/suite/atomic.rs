//! Policy swaps are atomic: 1,000 reloads between two policies under a flood never let through a
//! packet that neither policy admits, and never drop a packet that both admit. A configuration
//! that does not validate is refused on reload and the running policy stays, untouched.
//!
//! Policies A and B both deny the source X (the topology's `.66` address) and both open udp/7003
//! from anywhere; A also opens udp/7000, B udp/7001; neither opens udp/7002. The floods:
//!
//! - X to udp/7000 and udp/7001: denied under both policies (`denied_source`);
//! - the admitted source N to udp/7002: closed under both (`default_drop`);
//! - N to udp/7003: open under both (`service`).
//!
//! Per-source limits are set far above the floods, so N's packets to udp/7003 have no way to be
//! dropped but `default_drop`, which only N's packets to udp/7002 may move. The receivers in the
//! host namespace count what arrives; the controls are that udp/7000-7002 receive nothing and
//! udp/7003 receives everything sent, with every counter accounted for exactly.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use crmguard_lab::agent::Agent;
use crmguard_lab::privileged;
use crmguard_lab::topology::Topology;
use crmguard_lab::wait::wait_for;
use serde_json::Value;

use crate::traffic::{
    self, control, expect, send_datagrams, wait_delta, Flood, FloodReport, Receiver, SETTLE,
};

const OPEN_IN_A: u16 = 7000;
const OPEN_IN_B: u16 = 7001;
const NEVER_OPEN: u16 = 7002;
const ALWAYS_OPEN: u16 = 7003;
const SWAPS: u32 = 1000;

fn body(t: &Topology, open: u16, extra: &str) -> String {
    format!(
        r#"[[interface]]
name = "{iface}"
xdp_mode = "native"

[firewall]
default = "drop"

[firewall.limits]
per_source_pps = 1000000
per_source_burst = 1000000

[firewall.deny]
sources = ["{denied}"]

[[firewall.service]]
name = "open-{open}"
proto = "udp"
ports = [{open}]

[[firewall.service]]
name = "always"
proto = "udp"
ports = [{ALWAYS_OPEN}]
{extra}"#,
        iface = t.host_if.name(),
        denied = t.addrs.denied4,
    )
}

fn generation_of(answer: &Value) -> Result<u64> {
    answer["generation"]
        .as_u64()
        .with_context(|| format!("no generation in {answer}"))
}

/// The policy generation, from the control socket (the CLI would read the config file, which
/// some tests break on purpose).
fn generation(agent: &Agent) -> Result<u64> {
    let answer = control(agent, r#"{"cmd":"status"}"#)?;
    ensure!(answer["result"] == "status", "status refused: {answer}");
    generation_of(&answer)
}

#[test]
fn a_thousand_swaps_under_a_flood_leak_nothing_and_drop_nothing() -> Result<()> {
    if !privileged::require("atomic::a_thousand_swaps_under_a_flood_leak_nothing_and_drop_nothing")
    {
        return Ok(());
    }
    let t = Topology::ipv4_only(122, 1)?;
    let a = body(&t, OPEN_IN_A, "");
    let b = body(&t, OPEN_IN_B, "");
    let agent = Agent::start(&t.host, &a)?;
    let iface = t.host_if.name();
    let text_a = traffic::config_with_body(&agent, &a)?;
    let text_b = traffic::config_with_body(&agent, &b)?;
    let receivers = [OPEN_IN_A, OPEN_IN_B, NEVER_OPEN, ALWAYS_OPEN]
        .map(|port| Receiver::start(&t.host, port).map(|r| (port, r)))
        .into_iter()
        .collect::<Result<Vec<_>>>()?;
    let (x, n) = (t.addrs.denied4, t.addrs.out4);
    let to = |port| t.host_addr(n, port);
    let before = traffic::counters(&agent, iface)?;
    let g0 = generation(&agent)?;

    let pace = Duration::from_millis(1);
    let floods = [
        Flood::start(&t.out, x, to(OPEN_IN_A), vec![0xa0; 32], 2, pace)?,
        Flood::start(&t.out, x, to(OPEN_IN_B), vec![0xb0; 32], 2, pace)?,
        Flood::start(&t.out, n, to(NEVER_OPEN), vec![0xc0; 32], 2, pace)?,
        Flood::start(&t.out, n, to(ALWAYS_OPEN), vec![0xd0; 32], 4, pace)?,
    ];
    wait_for(SETTLE, "every flood to be under way", || {
        Ok(floods.iter().all(|f| f.sent() >= 200).then_some(()))
    })?;

    let started = Instant::now();
    let mut expected_generation = g0;
    for swap in 0..SWAPS {
        let text = if swap % 2 == 0 { &text_b } else { &text_a };
        traffic::replace_config(&agent, text)?;
        let answer = control(&agent, r#"{"cmd":"reload"}"#)?;
        ensure!(
            answer["result"] == "reloaded",
            "swap {swap}: reload refused: {answer}"
        );
        expected_generation += 1;
        let got = generation_of(&answer)?;
        ensure!(
            got == expected_generation,
            "swap {swap}: generation {got}, expected {expected_generation}"
        );
    }
    let swapping = started.elapsed();
    // Keep the floods running a little past the last swap.
    let at_end: Vec<u64> = floods.iter().map(Flood::sent).collect();
    wait_for(SETTLE, "every flood to send 100 more datagrams", || {
        Ok(floods
            .iter()
            .zip(&at_end)
            .all(|(f, n)| f.sent() >= n + 100)
            .then_some(()))
    })?;
    let [to_a, to_b, closed, open]: [FloodReport; 4] = floods.map(Flood::stop);
    eprintln!(
        "{SWAPS} swaps in {swapping:?}; sent: udp/{OPEN_IN_A} {}, udp/{OPEN_IN_B} {}, \
         udp/{NEVER_OPEN} {}, udp/{ALWAYS_OPEN} {}",
        to_a.sent, to_b.sent, closed.sent, open.sent
    );

    // Every packet is judged the way both policies agree on, and nothing else moved.
    wait_delta(
        &agent,
        iface,
        &before,
        &expect(&[
            ("drop", "denied_source", to_a.sent + to_b.sent),
            ("drop", "default_drop", closed.sent),
            ("pass", "service", open.sent),
        ]),
    )
    .context("the counters after the swaps")?;
    let received = |port: u16| {
        receivers
            .iter()
            .find(|(p, _)| *p == port)
            .map_or(0, |(_, r)| r.total())
    };
    wait_for(SETTLE, "every datagram to udp/7003 at its receiver", || {
        Ok((received(ALWAYS_OPEN) >= open.sent).then_some(()))
    })?;
    for port in [OPEN_IN_A, OPEN_IN_B, NEVER_OPEN] {
        ensure!(
            received(port) == 0,
            "{} datagrams that no policy admits reached udp/{port} during the swaps",
            received(port)
        );
    }
    ensure!(
        received(ALWAYS_OPEN) == open.sent,
        "udp/{ALWAYS_OPEN}, open in both policies: {} sent, {} received",
        open.sent,
        received(ALWAYS_OPEN)
    );
    let g1 = generation(&agent)?;
    ensure!(
        g1 == g0 + u64::from(SWAPS),
        "generation went from {g0} to {g1} over {SWAPS} reloads"
    );
    Ok(())
}

#[test]
fn a_bad_config_on_reload_is_refused_and_the_running_policy_stays() -> Result<()> {
    if !privileged::require(
        "atomic::a_bad_config_on_reload_is_refused_and_the_running_policy_stays",
    ) {
        return Ok(());
    }
    let t = Topology::ipv4_only(122, 2)?;
    let a = body(&t, OPEN_IN_A, "");
    let agent = Agent::start(&t.host, &a)?;
    let iface = t.host_if.name();
    let receivers = [OPEN_IN_A, OPEN_IN_B, NEVER_OPEN]
        .map(|port| Receiver::start(&t.host, port))
        .into_iter()
        .collect::<Result<Vec<_>>>()?;
    let (x, n) = (t.addrs.denied4, t.addrs.out4);
    let g0 = generation(&agent)?;
    let good = std::fs::read_to_string(agent.config_path())?;

    // Edits that would open udp/7001 and udp/7002 and lift the deny, each with one mistake.
    let opening = |mistake: &str| {
        format!(
            "{}\n[[firewall.service]]\nname = \"more\"\nproto = \"udp\"\n{mistake}\n",
            body(&t, OPEN_IN_B, "").replace(&format!("sources = [\"{x}\"]"), "sources = []")
        )
    };
    let bad = [
        (
            "a misspelled key",
            opening(&format!("prots = [{NEVER_OPEN}]")),
        ),
        ("port 0", opening(&format!("ports = [{NEVER_OPEN}, 0]"))),
        (
            "a TOML syntax error",
            opening(&format!("ports = [{NEVER_OPEN}")),
        ),
    ];
    for (what, text) in &bad {
        traffic::replace_config(&agent, &traffic::config_with_body(&agent, text)?)?;
        let out = agent.cli(&["reload"])?;
        ensure!(
            out.status.code() == Some(64),
            "`crmguard reload` with {what}: {:?}, expected exit 64; stderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        // The agent itself refuses it too, whoever asks.
        let answer = control(&agent, r#"{"cmd":"reload"}"#)?;
        ensure!(
            answer["result"] == "error",
            "the agent accepted a config with {what}: {answer}"
        );
        let g = generation(&agent)?;
        ensure!(
            g == g0,
            "after refusing {what} the generation moved from {g0} to {g}"
        );
    }

    // With the bad file still in place, traffic is judged by policy A as before.
    let before = traffic::counters(&agent, iface)?;
    let five = vec![b"probe".to_vec(); 5];
    let to = |port| SocketAddr::new(t.addrs.host4, port);
    send_datagrams(&t.out, n, to(OPEN_IN_A), &five)?;
    send_datagrams(&t.out, n, to(OPEN_IN_B), &five)?;
    send_datagrams(&t.out, n, to(NEVER_OPEN), &five)?;
    send_datagrams(&t.out, x, to(OPEN_IN_A), &five)?;
    wait_delta(
        &agent,
        iface,
        &before,
        &expect(&[
            ("pass", "service", 5),
            ("drop", "default_drop", 10),
            ("drop", "denied_source", 5),
        ]),
    )?;
    wait_for(SETTLE, "5 datagrams at udp/7000", || {
        Ok((receivers[0].from(n).datagrams == 5).then_some(()))
    })?;
    let leaked: Vec<(IpAddr, u64)> = [(x, receivers[0].from(x).datagrams)]
        .into_iter()
        .chain(receivers[1..].iter().map(|r| (n, r.total())))
        .filter(|(_, count)| *count != 0)
        .collect();
    if !leaked.is_empty() {
        bail!("datagrams that policy A drops got through after the refused reloads: {leaked:?}");
    }

    // The good config reloads again, as the next generation.
    traffic::replace_config(&agent, &good)?;
    let out = agent.cli(&["reload"])?;
    ensure!(
        out.status.success(),
        "reloading the good config again failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let g = generation(&agent)?;
    ensure!(
        g == g0 + 1,
        "generation {g} after one good reload from {g0}"
    );
    Ok(())
}
