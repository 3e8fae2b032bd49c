//! The agent under a steady mix for a while: a tunnel user's traffic, a denied source flooding
//! at a moderate rate, requests to the MFA portal, and every period a `crmguard reload` and a
//! `crmguard ban add` (whose bans expire two periods later).
//!
//! Sampled every 2 s: the agent's resident set (VmRSS), its descriptors and
//! `crmguard_policy_divergence_entries`. What must hold: after the warm-up (the first 20% of the
//! run) the resident set grows less than 5%, the descriptor count stays within a small band,
//! divergence stays 0, nothing denied arrives, and the agent's log has no panic.
//!
//! `CRMGUARD_SOAK_MINUTES` sets the length (default 5; 30 for a long run, fractions for a
//! quick look); the period is a tenth of the run, between 5 s and 60 s.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use crmguard_lab::net::http_get;
use crmguard_lab::privileged;
use crmguard_lab::topology::Topology;

use crate::fault_lab::{fd_count, panics, rss_kib, DeniedFloods, Echo, Prober};
use crate::vpn::{
    gateway_endpoint, gateway_key, metric, setup, start_agent, wait_reachable, PeerSpec, GATEWAY4,
    SETTLE,
};

/// How much the resident set may grow after the warm-up.
const RSS_GROWTH: f64 = 0.05;
/// How far the descriptor count may move from its value after the warm-up: a scrape's or a
/// command's connection may be open at the moment of a sample.
const FD_BAND: usize = 3;
const SAMPLE_EVERY: Duration = Duration::from_secs(2);
const PORTAL_PORT: u16 = 8443;

fn soak_minutes() -> Result<f64> {
    match std::env::var("CRMGUARD_SOAK_MINUTES") {
        Ok(text) => text
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|m| *m > 0.0)
            .with_context(|| format!("CRMGUARD_SOAK_MINUTES={text:?} is not a positive number")),
        Err(_) => Ok(5.0),
    }
}

struct Sample {
    at: Duration,
    rss_kib: u64,
    fds: usize,
}

#[test]
fn a_steady_mix_for_minutes_keeps_memory_descriptors_and_policy_flat() -> Result<()> {
    if !privileged::require(
        "soak::a_steady_mix_for_minutes_keeps_memory_descriptors_and_policy_flat",
    ) {
        return Ok(());
    }
    let run = Duration::from_secs_f64(soak_minutes()? * 60.0);
    let period = (run / 10).clamp(Duration::from_secs(5), Duration::from_secs(60));
    let warm_up = run / 5;
    let t = Topology::dual_stack(220, 9)?;
    t.pin_neighbours()?;
    let alice = PeerSpec::new("alice", 2)?;
    let mut s = setup(&[&t.host_if], &[&alice])?;
    s.body.push_str(&format!(
        "\n[firewall.deny]\nsources = [\"{}\", \"{}\"]\n",
        t.addrs.denied4, t.addrs.denied6
    ));
    let mut agent = start_agent(&t.host, &s)?;
    let pid = agent.pid().context("no agent")?;
    let gateway = gateway_key(&agent)?;
    let _echo = Echo::start(&t.host)?;
    let _client = alice.connect(&t.out, &gateway, gateway_endpoint(t.addrs.host4))?;
    wait_reachable(&t.out, IpAddr::V4(GATEWAY4))?;
    let prober = Prober::start(&t.out)?;
    prober.wait_flowing(SETTLE)?;
    // About 500 datagrams and 50 connection attempts a second from the denied source.
    let floods = DeniedFloods::start(
        &t,
        Duration::from_millis(20),
        Some(Duration::from_millis(2)),
    )?;
    let portal = SocketAddr::new(IpAddr::V4(GATEWAY4), PORTAL_PORT);

    let started = Instant::now();
    let mut samples: Vec<Sample> = Vec::new();
    let mut next_sample = started;
    let mut next_action = started + period;
    let (mut reloads, mut bans, mut portal_ok, mut portal_failed) = (0u32, 0u32, 0u32, 0u32);
    let mut divergence_max = 0.0f64;
    while started.elapsed() < run {
        let now = Instant::now();
        if now >= next_sample {
            ensure!(
                agent.is_running()?,
                "the agent exited after {:?}",
                started.elapsed()
            );
            let divergence = metric(&agent, "crmguard_policy_divergence_entries", &[])?;
            divergence_max = divergence_max.max(divergence);
            ensure!(
                divergence == 0.0,
                "policy divergence {divergence} after {:?}",
                started.elapsed()
            );
            samples.push(Sample {
                at: started.elapsed(),
                rss_kib: rss_kib(pid)?,
                fds: fd_count(pid)?,
            });
            next_sample += SAMPLE_EVERY;
        }
        if now >= next_action {
            let reload = agent.cli(&["reload"])?;
            ensure!(reload.status.success(), "reload {reloads}: {reload:?}");
            reloads += 1;
            let addr = format!("198.51.100.{}", bans % 250 + 1);
            let ttl = format!("{}s", (period * 2).as_secs());
            let ban = agent.cli(&["ban", "add", &addr, "--ttl", &ttl, "--reason", "soak"])?;
            ensure!(ban.status.success(), "ban add {addr}: {ban:?}");
            bans += 1;
            next_action += period;
        }
        // A portal request through the tunnel, about every 200 ms between the rest.
        match http_get(&t.out, portal, "/") {
            Ok(_) => portal_ok += 1,
            Err(e) => {
                portal_failed += 1;
                if portal_failed <= 3 {
                    eprintln!("soak: portal request failed: {e:#}");
                }
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let passed = floods.passed();
    let (udp_sent, tcp_tried, _, _) = floods.counts();
    let (probes, answers) = prober.totals();
    // The tunnel still works at the end.
    prober.wait_flowing(SETTLE)?;
    let panicked = panics(&agent)?;
    agent.stop()?;

    let after_warm_up: Vec<&Sample> = samples.iter().filter(|s| s.at >= warm_up).collect();
    ensure!(
        after_warm_up.len() >= 3,
        "only {} samples after the warm-up",
        after_warm_up.len()
    );
    let rss_start = samples.first().map_or(0, |s| s.rss_kib);
    let rss_warm = after_warm_up[0].rss_kib;
    let rss_end = samples.last().map_or(0, |s| s.rss_kib);
    let rss_max = after_warm_up.iter().map(|s| s.rss_kib).max().unwrap_or(0);
    let growth = (rss_end as f64 - rss_warm as f64) / rss_warm as f64;
    let fds_warm = after_warm_up[0].fds;
    let fds_min = after_warm_up.iter().map(|s| s.fds).min().unwrap_or(0);
    let fds_max = after_warm_up.iter().map(|s| s.fds).max().unwrap_or(0);
    let all_fds_min = samples.iter().map(|s| s.fds).min().unwrap_or(0);
    let all_fds_max = samples.iter().map(|s| s.fds).max().unwrap_or(0);
    eprintln!(
        "soak: {:.1} min, period {} s, warm-up {} s, {} samples\n\
         soak: RSS start {rss_start} KiB, after warm-up {rss_warm} KiB, end {rss_end} KiB \
         (max after warm-up {rss_max} KiB), growth {:+.2}%\n\
         soak: fds after warm-up {fds_warm}, min {fds_min}, max {fds_max} (whole run {all_fds_min}..{all_fds_max})\n\
         soak: {reloads} reloads, {bans} bans, portal {portal_ok} answered / {portal_failed} failed, \
         divergence max {divergence_max}\n\
         soak: tunnel probes {probes} sent, {answers} answered; denied {udp_sent} datagrams and \
         {tcp_tried} connection attempts sent, {passed} arrived",
        run.as_secs_f64() / 60.0,
        period.as_secs(),
        warm_up.as_secs(),
        samples.len(),
        growth * 100.0,
    );
    ensure!(passed == 0, "{passed} denied packets arrived");
    ensure!(panicked.is_empty(), "the agent panicked: {panicked:?}");
    ensure!(
        growth < RSS_GROWTH,
        "RSS grew {:.2}% after the warm-up ({rss_warm} -> {rss_end} KiB)",
        growth * 100.0
    );
    ensure!(
        fds_max <= fds_warm + FD_BAND && fds_min + FD_BAND >= fds_warm,
        "descriptors moved out of ±{FD_BAND} of {fds_warm}: {fds_min}..{fds_max}"
    );
    ensure!(portal_failed == 0, "{portal_failed} portal requests failed");
    ensure!(reloads >= 3 && bans >= 3, "{reloads} reloads, {bans} bans");
    // Nearly every probe is answered: a steady agent drops none but the last few in flight.
    ensure!(
        answers + 50 >= probes,
        "{probes} tunnel probes sent, {answers} answered"
    );
    Ok(())
}
