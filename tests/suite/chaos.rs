//! The agent killed and restarted over and over, `kill -9` and SIGTERM mixed by a seeded
//! generator, while a tunnel user sends traffic and a denied source floods closed ports.
//!
//! One round in four the new agent is killed again while it starts (loading the program,
//! attaching, adopting the pins) before a last one comes up.
//!
//! What must hold in every round: nothing from the denied source reaches its listeners (the
//! pinned filter enforces while no agent runs), the user's traffic flows again within 2 s of
//! the kill (the outage as the user sees it: from the signal to the first answer to a probe sent
//! after it), and the agent leaves nothing behind: the last agent holds as many descriptors,
//! pins and TUN devices as the first, and no namespace appears.
//!
//! `CRMGUARD_CHAOS_ROUNDS` (default 50) and `CRMGUARD_CHAOS_SEED` choose the run.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use crmguard_lab::privileged;
use crmguard_lab::topology::Topology;
use crmguard_lab::wait::wait_for;

use crate::fault_lab::{
    env_number, foreign_namespaces, median_max, panics, DeniedFloods, Echo, Holdings, Prober, Rng,
};
use crate::vpn::{
    gateway_endpoint, gateway_key, setup, start_agent, wait_reachable, PeerSpec, GATEWAY4, SETTLE,
};

/// The longest outage a user may see after a kill.
const OUTAGE: Duration = Duration::from_secs(2);

/// How many more descriptors the last agent may hold than the first: the control socket's and
/// the metrics listener's clients come and go (a probe may be connected at the moment of the
/// count).
const FD_JITTER: usize = 2;

#[test]
fn kill_and_restart_50_times_under_traffic_and_floods() -> Result<()> {
    if !privileged::require("chaos::kill_and_restart_50_times_under_traffic_and_floods") {
        return Ok(());
    }
    let rounds = env_number("CRMGUARD_CHAOS_ROUNDS", 50)?;
    let seed = env_number("CRMGUARD_CHAOS_SEED", 0x00c4_a05e)?;
    let namespaces_before = foreign_namespaces();
    let started = Instant::now();
    {
        let t = Topology::dual_stack(220, 1)?;
        t.pin_neighbours()?;
        let alice = PeerSpec::new("alice", 2)?;
        let mut s = setup(&[&t.host_if], &[&alice])?;
        s.body.push_str(&format!(
            "\n[firewall.deny]\nsources = [\"{}\", \"{}\"]\n",
            t.addrs.denied4, t.addrs.denied6
        ));
        let mut agent = start_agent(&t.host, &s)?;
        let gateway = gateway_key(&agent)?;
        let _echo = Echo::start(&t.host)?;
        let client = alice.connect(&t.out, &gateway, gateway_endpoint(t.addrs.host4))?;
        wait_reachable(&t.out, IpAddr::V4(GATEWAY4))?;
        // The agent remembers alice's endpoint, so that a new agent reaches out to her.
        let port = client.listen_port()?;
        let endpoints = agent.dir().join("state").join("vpn-endpoints.json");
        wait_for(SETTLE, "alice's endpoint on disk", || {
            Ok(std::fs::read_to_string(&endpoints)
                .map(|text| text.contains(&format!(":{port}\"")))
                .unwrap_or(false)
                .then_some(()))
        })?;
        let prober = Prober::start(&t.out)?;
        let floods = DeniedFloods::start(&t, Duration::from_millis(2), None)?;
        prober.wait_flowing(SETTLE)?;
        let first = Holdings::of(&agent, &t.host)?;
        ensure!(
            first.tun_devices == 1,
            "the first agent has {} TUN devices",
            first.tun_devices
        );

        let mut rng = Rng::new(seed);
        let mut outages = Vec::new();
        let mut readies = Vec::new();
        let (mut kills, mut terms, mut early) = (0, 0, 0);
        for round in 1..=rounds {
            prober.wait_flowing(SETTLE)?;
            let kill9 = rng.next().is_multiple_of(2);
            let signalled = Instant::now();
            if kill9 {
                agent.kill9()?;
                kills += 1;
            } else {
                agent.stop()?;
                terms += 1;
            }
            let mut exited = Instant::now();
            agent.spawn()?;
            // One round in four, the new agent crashes while it starts (loading and attaching
            // the program, adopting the pins), and another one starts after it.
            if rng.next().is_multiple_of(4) {
                let after = Duration::from_millis(rng.next() % 2500);
                std::thread::sleep(after);
                agent.kill9()?;
                exited = Instant::now();
                early += 1;
                eprintln!(
                    "round {round:2}: the new agent killed -9 {} ms into its start",
                    after.as_millis()
                );
                agent.spawn()?;
            }
            agent.wait_ready()?;
            let ready = signalled.elapsed();
            // The outage as the user sees it: from the last answer the old agent gave (a
            // SIGTERMed agent serves until it exits) to the first answer to a probe sent after
            // it was gone.
            let back_at = wait_for(Duration::from_secs(20), "alice's traffic again", || {
                Ok(prober.first_answer_after(exited))
            })?;
            let last_ok = prober.last_answer_before(exited).unwrap_or(signalled);
            let outage = back_at - last_ok;
            let gone = exited - signalled;
            let back = back_at - signalled;
            let passed = floods.passed();
            let holdings = Holdings::of(&agent, &t.host)?;
            eprintln!(
                "round {round:2} {:8}: exited after {:4} ms, ready after {:5} ms, traffic back \
                 after {:5} ms, outage {:5} ms; fds {}, tun {}, pins {}, denied passed {passed}",
                if kill9 { "kill -9" } else { "SIGTERM" },
                gone.as_millis(),
                ready.as_millis(),
                back.as_millis(),
                outage.as_millis(),
                holdings.fds,
                holdings.tun_devices,
                holdings.pins.len(),
            );
            ensure!(passed == 0, "round {round}: {passed} denied packets passed");
            ensure!(
                holdings.tun_devices == 1,
                "round {round}: {} TUN devices",
                holdings.tun_devices
            );
            outages.push(outage);
            readies.push(ready);
        }
        // Settle before the last count, as before the first.
        prober.wait_flowing(SETTLE)?;
        let last = Holdings::of(&agent, &t.host)?;
        let (udp_sent, tcp_tried, udp_got, tcp_accepted) = floods.counts();
        let (probes, answers) = prober.totals();
        let (ready_median, ready_max) = median_max(&readies);
        let (median, max) = median_max(&outages);
        eprintln!(
            "chaos: {rounds} rounds (seed {seed:#x}: {kills} kill -9, {terms} SIGTERM, {early} more \
             kill -9 during a start) in {:.1} s\n\
             chaos: agent ready after the signal: median {} ms, max {} ms\n\
             chaos: the user's outage (last answer from the old agent to the first from the new): \
             median {} ms, max {} ms\n\
             chaos: denied flood: {udp_sent} datagrams and {tcp_tried} connection attempts sent, \
             {udp_got} datagrams and {tcp_accepted} connections arrived\n\
             chaos: probes: {probes} sent, {answers} answered\n\
             chaos: fds first {} last {}; pins first {} last {}; tun first {} last {}",
            started.elapsed().as_secs_f64(),
            ready_median.as_millis(),
            ready_max.as_millis(),
            median.as_millis(),
            max.as_millis(),
            first.fds,
            last.fds,
            first.pins.len(),
            last.pins.len(),
            first.tun_devices,
            last.tun_devices,
        );
        ensure!(
            udp_got + tcp_accepted == 0,
            "{udp_got} denied datagrams and {tcp_accepted} denied connections arrived"
        );
        ensure!(
            udp_sent > 0 && tcp_tried > 0,
            "the flood sent nothing: {udp_sent} datagrams, {tcp_tried} connection attempts"
        );
        let slow: Vec<String> = outages
            .iter()
            .enumerate()
            .filter(|(_, d)| **d > OUTAGE)
            .map(|(i, d)| format!("round {}: {} ms", i + 1, d.as_millis()))
            .collect();
        ensure!(
            slow.is_empty(),
            "traffic took longer than {OUTAGE:?} to come back: {slow:?}"
        );
        ensure!(
            last.pins == first.pins,
            "the pins changed: first {:?}, last {:?}",
            first.pins,
            last.pins
        );
        ensure!(
            last.fds <= first.fds + FD_JITTER,
            "descriptors grew from {} to {}",
            first.fds,
            last.fds
        );
        let panicked = panics(&agent)?;
        ensure!(panicked.is_empty(), "the agent panicked: {panicked:?}");
        drop(floods);
        drop(prober);
        drop(client);
        drop(agent);
        let names = [t.out.name().to_owned(), t.host.name().to_owned()];
        drop(t);
        for name in names {
            ensure!(
                !crmguard_lab::netns::exists(&name),
                "namespace {name} is still there"
            );
        }
    }
    let appeared: Vec<String> = foreign_namespaces()
        .difference(&namespaces_before)
        .cloned()
        .collect();
    ensure!(appeared.is_empty(), "namespaces left behind: {appeared:?}");
    Ok(())
}
