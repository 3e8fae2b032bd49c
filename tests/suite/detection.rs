//! Detection and response seen from outside: real attacks from the `out` namespace against a
//! host whose agent detects them and bans the source in XDP.
//!
//! - An SSH brute force against a real OpenSSH sshd, whose log the agent follows
//!   (`[[detection.log_source]]`, built-in pattern `sshd`): the source is banned within a
//!   second of the line that crosses the threshold being appended, the ban ends on time, and
//!   the second offence is banned twice as long. Metrics and audit records count both.
//! - A SYN scan of 100 closed ports at about 1,000 packets/s, seen only through the XDP
//!   filter's sampled drops: the scanner is banned; an administrator who keeps connecting to
//!   five open ports is not.
//! - CrowdSec: a real Local API; a decision added with `cscli` is enforced in XDP within two
//!   seconds and lifted when deleted; a scan one agent detects is pushed to the API and enforced
//!   by a second agent on another host, which keeps the ban when the API goes away.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use crmguard_lab::agent::{metric_value, Agent};
use crmguard_lab::alerting::CrowdsecLapi;
use crmguard_lab::net::{self, RawSocket, TcpOutcome, TcpServer, Vlan};
use crmguard_lab::privileged;
use crmguard_lab::servers::Sshd;
use crmguard_lab::topology::Topology;
use crmguard_lab::wait::wait_for;
use regex::Regex;
use serde_json::Value;

/// A detector's ban must be in the agent's list within this of the line or packets that
/// crossed its threshold.
const BAN_WITHIN: Duration = Duration::from_secs(1);
/// A CrowdSec decision must be enforced within this of `cscli` returning (one 1 s poll).
const DECISION_WITHIN: Duration = Duration::from_secs(2);
/// How long a probe from a banned source is given to be answered anyway (one SYN
/// retransmission falls inside it).
const NO_ANSWER: Duration = Duration::from_millis(1500);
/// Setup and housekeeping deadlines.
const SETTLE: Duration = Duration::from_secs(10);

fn fail(e: anyhow::Error) -> ! {
    panic!("{e:#}")
}

// ---------------------------------------------------------------------------------------------
// Common helpers
// ---------------------------------------------------------------------------------------------

/// `crmguard ban list --json`.
fn ban_list(agent: &Agent) -> Result<Vec<Value>> {
    let out = agent.cli(&["ban", "list", "--json"])?;
    ensure!(
        out.status.success(),
        "ban list failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let value: Value =
        serde_json::from_str(&text).with_context(|| format!("ban list printed {text}"))?;
    value
        .as_array()
        .cloned()
        .with_context(|| format!("ban list is not a list: {text}"))
}

/// The listed ban of exactly `addr`, if any.
fn ban_of(agent: &Agent, addr: IpAddr) -> Result<Option<Value>> {
    let net = format!("{}/{}", addr, if addr.is_ipv4() { 32 } else { 128 });
    Ok(ban_list(agent)?
        .into_iter()
        .find(|b| b["net"] == net.as_str()))
}

/// Polls the ban list every few milliseconds until `addr` is banned; returns the ban and when
/// it was first seen.
fn wait_ban(agent: &Agent, addr: IpAddr, within: Duration) -> Result<(Value, Instant)> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(ban) = ban_of(agent, addr)? {
            return Ok((ban, Instant::now()));
        }
        ensure!(
            Instant::now() < deadline,
            "{addr} not banned within {within:?}; bans: {:?}",
            ban_list(agent)?
        );
        thread::sleep(Duration::from_millis(5));
    }
}

/// How long a listed ban lasts: expires - created.
fn ban_length(ban: &Value) -> Result<Duration> {
    let time = |key: &str| {
        ban[key]
            .as_str()
            .and_then(crmguard_core::time::parse_time)
            .with_context(|| format!("ban without a {key}: {ban}"))
    };
    time("expires")?
        .duration_since(time("created")?)
        .context("a ban that expires before it was created")
}

fn metric(agent: &Agent, name: &str, labels: &[(&str, &str)]) -> Result<f64> {
    let text = agent.metrics()?;
    metric_value(&text, name, labels).with_context(|| format!("no {name}{labels:?} in:\n{text}"))
}

/// The agent's audit records.
fn audit(agent: &Agent) -> Result<Vec<Value>> {
    let text = std::fs::read_to_string(agent.dir().join("audit.jsonl"))?;
    text.lines()
        .map(|l| serde_json::from_str(l).with_context(|| format!("audit record {l}")))
        .collect()
}

/// Waits until the audit log holds `count` records that satisfy `wanted`.
fn wait_audit(agent: &Agent, count: usize, what: &str, wanted: impl Fn(&Value) -> bool) {
    wait_for(SETTLE, what, || {
        Ok((audit(agent)?.iter().filter(|r| wanted(r)).count() >= count).then_some(()))
    })
    .unwrap_or_else(|e| fail(e));
}

/// A TCP connection from `ns`'s default source to `dst`: the first line the server sends, or
/// `None` when nothing answers within `timeout`.
fn first_line(
    ns: &crmguard_lab::netns::NetNs,
    dst: SocketAddr,
    timeout: Duration,
) -> Result<Option<String>> {
    ns.run_in(|| -> Result<Option<String>> {
        let mut stream = match TcpStream::connect_timeout(&dst, timeout) {
            Ok(s) => s,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock
                ) =>
            {
                return Ok(None)
            }
            Err(e) => return Err(e).with_context(|| format!("connecting to {dst}")),
        };
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut got = Vec::new();
        let mut byte = [0u8; 1];
        while stream.read(&mut byte)? == 1 && byte[0] != b'\n' {
            got.push(byte[0]);
        }
        Ok(Some(String::from_utf8_lossy(&got).trim_end().to_owned()))
    })?
}

// ---------------------------------------------------------------------------------------------
// sshd brute force
// ---------------------------------------------------------------------------------------------

const SSH: u16 = 22;

/// Watches sshd's log every millisecond and keeps when each failed login of one source was
/// appended, as the built-in `sshd` pattern reads them.
struct LineClock {
    seen: Arc<Mutex<Vec<(Instant, String)>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl LineClock {
    fn start(log: PathBuf, source: IpAddr) -> LineClock {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let pattern = Regex::new(crmguard_core::log_patterns::SSHD)
            .unwrap_or_else(|e| panic!("the sshd pattern: {e}"));
        let (kept, stopped) = (Arc::clone(&seen), Arc::clone(&stop));
        let thread = thread::spawn(move || {
            let mut offset = 0usize;
            let mut partial = String::new();
            while !stopped.load(Ordering::Relaxed) {
                if let Ok(bytes) = std::fs::read(&log) {
                    if bytes.len() > offset {
                        let now = Instant::now();
                        partial.push_str(&String::from_utf8_lossy(&bytes[offset..]));
                        offset = bytes.len();
                        while let Some(end) = partial.find('\n') {
                            let line: String = partial.drain(..=end).collect();
                            let line = line.trim_end();
                            if crmguard::logsource::match_line(&pattern, line)
                                .is_some_and(|m| m.addr == source)
                            {
                                kept.lock()
                                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                                    .push((now, line.to_owned()));
                            }
                        }
                    }
                }
                thread::sleep(Duration::from_millis(1));
            }
        });
        LineClock {
            seen,
            stop,
            thread: Some(thread),
        }
    }

    fn lines(&self) -> Vec<(Instant, String)> {
        self.seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn count(&self) -> usize {
        self.lines().len()
    }
}

impl Drop for LineClock {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// One login with a wrong password from the outside, as a brute-force tool makes it.
fn ssh_wrong_password(t: &Topology) -> Result<()> {
    let out = t
        .out
        .command("sshpass")
        .args(["-p", "wrong-password", "ssh"])
        .args(["-o", "StrictHostKeyChecking=no"])
        .args(["-o", "UserKnownHostsFile=/dev/null"])
        .args(["-o", "PreferredAuthentications=password"])
        .args(["-o", "PubkeyAuthentication=no"])
        .args(["-o", "NumberOfPasswordPrompts=1"])
        .args(["-o", "ConnectTimeout=3"])
        .args(["-p", &SSH.to_string()])
        .arg(format!("nobody@{}", t.addrs.host4))
        .arg("true")
        .output()
        .context("running sshpass ssh (apt-get install sshpass openssh-client)")?;
    // ssh gives up after the one wrong password: sshd refused the login, it did not fail to
    // reach sshd.
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success() && stderr.contains("Permission denied"),
        "ssh with a wrong password: {:?}: {stderr}",
        out.status,
    );
    Ok(())
}

/// Wrong passwords until the log holds `total` failures of the attacker.
fn brute_force(t: &Topology, clock: &LineClock, total: usize) -> Result<()> {
    for _ in 0..total * 2 {
        if clock.count() >= total {
            return Ok(());
        }
        let before = clock.count();
        ssh_wrong_password(t)?;
        wait_for(Duration::from_secs(5), "sshd to log the failure", || {
            Ok((clock.count() > before).then_some(()))
        })?;
    }
    ensure!(clock.count() >= total, "{} failures logged", clock.count());
    Ok(())
}

fn sshd_policy(t: &Topology, log: &Path) -> String {
    format!(
        r#"[[interface]]
name = "{iface}"
xdp_mode = "native"

[firewall]
default = "drop"

[[firewall.service]]
name = "ssh"
proto = "tcp"
ports = [{SSH}]
from = ["{admin4}"]

[detection.auth_failures]
threshold = 3
window = "1m"
ban = "3s"
escalate = 2.0
max_ban = "1h"

[[detection.log_source]]
name = "sshd"
path = "{log}"
pattern = "sshd"
"#,
        iface = t.host_if.name(),
        admin4 = t.addrs.admin4,
        log = log.display(),
    )
}

#[test]
fn sshd_brute_force_from_outside_is_banned_in_xdp_then_escalated() {
    if !privileged::require(
        "detection::sshd_brute_force_from_outside_is_banned_in_xdp_then_escalated",
    ) {
        return;
    }
    privileged::require_tools(&[("sshpass", "sshpass")]).unwrap_or_else(|e| fail(e));
    let t = Topology::ipv4_only(200, 1).unwrap_or_else(|e| fail(e));
    let mut sshd = Sshd::start(&t.host, t.addrs.host4, SSH).unwrap_or_else(|e| fail(e));
    let log = sshd.server().log();
    let agent = Agent::start(&t.host, &sshd_policy(&t, &log)).unwrap_or_else(|e| fail(e));
    let attacker = t.addrs.out4;
    let ssh = SocketAddr::new(t.addrs.host4, SSH);
    let iface = t.host_if.name().to_owned();

    // The firewall lets the outside reach sshd.
    let banner = first_line(&t.out, ssh, Duration::from_secs(5))
        .unwrap_or_else(|e| fail(e))
        .unwrap_or_else(|| panic!("sshd does not answer from outside"));
    assert!(banner.starts_with("SSH-2.0-"), "{banner}");
    // The follower has looked at the file (it starts at its end).
    wait_for(SETTLE, "the log source's position", || {
        Ok(agent
            .dir()
            .join("state/logsource-sshd.json")
            .exists()
            .then_some(()))
    })
    .unwrap_or_else(|e| fail(e));

    let clock = LineClock::start(log.clone(), attacker);
    let mut latencies = Vec::new();
    let mut lengths = Vec::new();
    for offence in 1..=2usize {
        brute_force(&t, &clock, 3 * offence).unwrap_or_else(|e| fail(e));
        let lines = clock.lines();
        let (appended, line) = lines[3 * offence - 1].clone();
        let (ban, seen) = wait_ban(&agent, attacker, Duration::from_secs(5)).unwrap_or_else(|e| {
            panic!(
                "{e:#}\nsshd:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            )
        });
        let latency = seen.saturating_duration_since(appended);
        eprintln!("offence {offence}: {line:?} appended -> banned in the list after {latency:?}");
        assert!(
            latency <= BAN_WITHIN,
            "offence {offence}: banned {latency:?} after the line"
        );
        assert_eq!(ban["source"], "detector:auth_failures", "{ban}");
        let length = ban_length(&ban).unwrap_or_else(|e| fail(e));
        lengths.push(length);
        // In the kernel: sshd is out of reach, and the banned counter shows the SYNs.
        let before = agent
            .counter(&iface, "drop", "banned")
            .unwrap_or_else(|e| fail(e));
        let answer = first_line(&t.out, ssh, NO_ANSWER).unwrap_or_else(|e| fail(e));
        assert_eq!(
            answer, None,
            "offence {offence}: sshd answered a banned source"
        );
        let after = agent
            .counter(&iface, "drop", "banned")
            .unwrap_or_else(|e| fail(e));
        assert!(
            after > before,
            "drop/banned did not rise: {before} -> {after}"
        );
        // The ban ends: sshd answers again, about `length` after the ban began.
        let reached = wait_for(length + SETTLE, "sshd to answer again", || {
            Ok(first_line(&t.out, ssh, Duration::from_millis(300))?.map(|_| Instant::now()))
        })
        .unwrap_or_else(|e| fail(e));
        let lasted = reached.saturating_duration_since(seen);
        eprintln!("offence {offence}: ban of {length:?} in the list; sshd answered again after {lasted:?}");
        assert!(
            lasted + Duration::from_millis(200) >= length,
            "offence {offence}: the ban of {length:?} ended after {lasted:?}"
        );
        latencies.push(latency);
    }
    assert_eq!(lengths, [Duration::from_secs(3), Duration::from_secs(6)]);
    eprintln!("ban latencies after the threshold line: {latencies:?}");

    let detections = metric(
        &agent,
        "crmguard_detections_total",
        &[("detector", "auth_failures")],
    )
    .unwrap_or_else(|e| fail(e));
    assert_eq!(detections, 2.0);
    let bans = metric(
        &agent,
        "crmguard_bans_total",
        &[("reason", "auth_failures")],
    )
    .unwrap_or_else(|e| fail(e));
    assert_eq!(bans, 2.0);
    let net = format!("{attacker}/32");
    wait_audit(&agent, 2, "two ban_added records", |r| {
        r["type"] == "ban_added"
            && r["actor"] == "detector:auth_failures"
            && r["src"] == net.as_str()
    });
    wait_audit(&agent, 2, "two anomaly records", |r| {
        r["type"] == "anomaly"
            && r["actor"] == "detector:auth_failures"
            && r["detail"]["response"] == "ban"
            && r["src"] == net.as_str()
    });
}

// ---------------------------------------------------------------------------------------------
// Port scan
// ---------------------------------------------------------------------------------------------

/// The open ports of the port-scan lab.
const OPEN: [u16; 5] = [8081, 8082, 8083, 8084, 8085];
/// The first closed port scanned; 100 follow.
const SCANNED: u16 = 20_001;

fn scan_policy(t: &Topology, extra: &str) -> String {
    let mut text = format!(
        r#"[[interface]]
name = "{iface}"
xdp_mode = "native"

[firewall]
default = "drop"

[detection.port_scan]
distinct_ports = 20
window = "10s"
ban = "1m"
"#,
        iface = t.host_if.name(),
    );
    for port in OPEN {
        text.push_str(&format!(
            "\n[[firewall.service]]\nname = \"app{port}\"\nproto = \"tcp\"\nports = [{port}]\n"
        ));
    }
    text.push_str(extra);
    text
}

fn banner(port: u16) -> String {
    format!("crm app on {port}\n")
}

fn start_servers(t: &Topology) -> Vec<TcpServer> {
    OPEN.iter()
        .map(|&port| TcpServer::start(&t.host, port, &banner(port)).unwrap_or_else(|e| fail(e)))
        .collect()
}

/// What a SYN scan did.
#[derive(Debug)]
struct Scan {
    sent: usize,
    took: Duration,
    ended: Instant,
}

/// A SYN scan of `count` ports from `src` (raw frames, as `nmap -sS` sends them), one every
/// millisecond.
fn syn_scan(t: &Topology, src: IpAddr, count: u16) -> Result<Scan> {
    let raw = RawSocket::open(&t.out, t.out_if.name())?;
    let l2 = t.l2_to_host(Vlan::Untagged)?;
    let start = Instant::now();
    for i in 0..count {
        let frame = net::tcp_syn_frame(
            &l2,
            SocketAddr::new(src, 40_000 + i),
            SocketAddr::new(t.addrs.host4, SCANNED + i),
        )?;
        let due = start + Duration::from_millis(u64::from(i));
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            thread::sleep(wait);
        }
        raw.send(&frame)?;
    }
    Ok(Scan {
        sent: usize::from(count),
        took: start.elapsed(),
        ended: Instant::now(),
    })
}

fn drop_events_total(agent: &Agent) -> Result<u64> {
    let status = agent.status()?;
    status["drop_events_total"]
        .as_u64()
        .with_context(|| format!("no drop_events_total in {status}"))
}

/// A second outside address, an administrator's.
fn admin_addr(t: &Topology) -> IpAddr {
    let IpAddr::V4(out) = t.addrs.out4 else {
        unreachable!("out4 is IPv4")
    };
    let [a, b, c, _] = out.octets();
    IpAddr::V4(Ipv4Addr::new(a, b, c, 3))
}

/// The administrator connects to each open port `rounds` times; every connection must be
/// answered.
fn admin_session(t: &Topology, admin: IpAddr, rounds: usize) -> Result<()> {
    for _ in 0..rounds {
        for port in OPEN {
            let dst = SocketAddr::new(t.addrs.host4, port);
            let outcome = net::tcp_connect(&t.out, Some(admin), dst, Duration::from_secs(5))?;
            ensure!(
                outcome
                    == TcpOutcome::Connected {
                        banner: banner(port)
                    },
                "admin {admin} -> {dst}: {outcome:?}"
            );
        }
    }
    Ok(())
}

#[test]
fn port_scan_from_outside_is_banned_and_an_admin_is_not() {
    if !privileged::require("detection::port_scan_from_outside_is_banned_and_an_admin_is_not") {
        return;
    }
    let t = Topology::ipv4_only(200, 2).unwrap_or_else(|e| fail(e));
    let admin = admin_addr(&t);
    t.out_if
        .add_addr(&format!("{admin}/24"))
        .unwrap_or_else(|e| fail(e));
    let _servers = start_servers(&t);
    let agent = Agent::start(&t.host, &scan_policy(&t, "")).unwrap_or_else(|e| fail(e));
    let iface = t.host_if.name().to_owned();
    let scanner = t.addrs.out4;

    admin_session(&t, admin, 4).unwrap_or_else(|e| fail(e));

    let events_before = drop_events_total(&agent).unwrap_or_else(|e| fail(e));
    let default_before = agent
        .counter(&iface, "drop", "default_drop")
        .unwrap_or_else(|e| fail(e));
    let banned_before = agent
        .counter(&iface, "drop", "banned")
        .unwrap_or_else(|e| fail(e));
    let scan = syn_scan(&t, scanner, 100).unwrap_or_else(|e| fail(e));
    let (ban, seen) = wait_ban(&agent, scanner, Duration::from_secs(5)).unwrap_or_else(|e| fail(e));
    let after_scan = seen.saturating_duration_since(scan.ended);
    assert_eq!(ban["source"], "detector:port_scan", "{ban}");
    assert_eq!(
        ban_length(&ban).unwrap_or_else(|e| fail(e)),
        Duration::from_secs(60)
    );
    // Every scanned packet was dropped, by the default or (once banned) by the ban.
    let (default_drops, banned_drops) = wait_for(SETTLE, "the scan's drops counted", || {
        let d = agent.counter(&iface, "drop", "default_drop")? - default_before;
        let b = agent.counter(&iface, "drop", "banned")? - banned_before;
        Ok((usize::try_from(d + b)? >= scan.sent).then_some((d, b)))
    })
    .unwrap_or_else(|e| fail(e));
    let sampled = drop_events_total(&agent).unwrap_or_else(|e| fail(e)) - events_before;
    eprintln!(
        "port scan: {} SYNs in {:?}; {default_drops} dropped by the default, {banned_drops} by the ban; \
         {sampled} drop samples reached the agent; banned {after_scan:?} after the last SYN",
        scan.sent, scan.took
    );
    assert!(
        sampled >= 20,
        "only {sampled} of {default_drops} drops were sampled: too few to see 20 ports"
    );
    assert!(
        after_scan <= BAN_WITHIN,
        "banned {after_scan:?} after the scan"
    );

    // The scanner is dropped; the administrator still gets in, and was never banned.
    let outcome = net::tcp_connect(
        &t.out,
        Some(scanner),
        SocketAddr::new(t.addrs.host4, OPEN[0]),
        NO_ANSWER,
    )
    .unwrap_or_else(|e| fail(e));
    assert_eq!(outcome, TcpOutcome::TimedOut);
    admin_session(&t, admin, 2).unwrap_or_else(|e| fail(e));
    let bans = ban_list(&agent).unwrap_or_else(|e| fail(e));
    assert_eq!(bans.len(), 1, "only the scanner is banned: {bans:?}");

    // A longer scan at the same pace (1,000 ports in a second) from another address: the ban
    // must cut it short, and what got through before it shows how fast sampling and the
    // detector act.
    let second = {
        let IpAddr::V4(admin) = admin else {
            unreachable!("IPv4")
        };
        let [a, b, c, _] = admin.octets();
        IpAddr::V4(Ipv4Addr::new(a, b, c, 4))
    };
    t.out_if
        .add_addr(&format!("{second}/24"))
        .unwrap_or_else(|e| fail(e));
    let events_before = drop_events_total(&agent).unwrap_or_else(|e| fail(e));
    let default_before = agent
        .counter(&iface, "drop", "default_drop")
        .unwrap_or_else(|e| fail(e));
    let banned_before = agent
        .counter(&iface, "drop", "banned")
        .unwrap_or_else(|e| fail(e));
    let scan = syn_scan(&t, second, 1_000).unwrap_or_else(|e| fail(e));
    let (ban, _) = wait_ban(&agent, second, Duration::from_secs(5)).unwrap_or_else(|e| fail(e));
    assert_eq!(ban["source"], "detector:port_scan", "{ban}");
    let (default_drops, banned_drops) = wait_for(SETTLE, "the long scan's drops counted", || {
        let d = agent.counter(&iface, "drop", "default_drop")? - default_before;
        let b = agent.counter(&iface, "drop", "banned")? - banned_before;
        Ok((usize::try_from(d + b)? >= scan.sent).then_some((d, b)))
    })
    .unwrap_or_else(|e| fail(e));
    let sampled = drop_events_total(&agent).unwrap_or_else(|e| fail(e)) - events_before;
    eprintln!(
        "long scan: {} SYNs in {:?}; {default_drops} reached the default drop before the ban, \
         {banned_drops} were dropped as banned; {sampled} drop samples reached the agent",
        scan.sent, scan.took
    );
    assert!(
        banned_drops > 0 && default_drops < 500,
        "the ban did not cut the scan short: {default_drops} before, {banned_drops} after"
    );
    assert_eq!(
        metric(
            &agent,
            "crmguard_detections_total",
            &[("detector", "port_scan")]
        )
        .unwrap_or_else(|e| fail(e)),
        2.0
    );
    admin_session(&t, admin, 1).unwrap_or_else(|e| fail(e));
}

/// A port scan is seen in single packets, whose source anyone can forge: a scan spoofing an
/// address of an admin network (one a service's `from` list admits) bans nothing, while a
/// scan from another address, after it, is banned as always.
#[test]
fn a_spoofed_scan_never_bans_an_admin_network() {
    if !privileged::require("detection::a_spoofed_scan_never_bans_an_admin_network") {
        return;
    }
    let t = Topology::ipv4_only(200, 4).unwrap_or_else(|e| fail(e));
    let _servers = start_servers(&t);
    let admin_ssh = "\n[[firewall.service]]\nname = \"admin-ssh\"\nproto = \"tcp\"\n\
                     ports = [22]\nfrom = [\"198.18.7.0/24\"]\n";
    let agent = Agent::start(&t.host, &scan_policy(&t, admin_ssh)).unwrap_or_else(|e| fail(e));
    let spoofed = IpAddr::V4(Ipv4Addr::new(198, 18, 7, 9));

    let events_before = drop_events_total(&agent).unwrap_or_else(|e| fail(e));
    syn_scan(&t, spoofed, 100).unwrap_or_else(|e| fail(e));
    wait_for(SETTLE, "the spoofed scan's drop samples", || {
        Ok((drop_events_total(&agent)? - events_before >= 20).then_some(()))
    })
    .unwrap_or_else(|e| fail(e));

    let scanner = t.addrs.out4;
    syn_scan(&t, scanner, 100).unwrap_or_else(|e| fail(e));
    wait_ban(&agent, scanner, Duration::from_secs(5)).unwrap_or_else(|e| fail(e));
    let bans = ban_list(&agent).unwrap_or_else(|e| fail(e));
    assert_eq!(
        bans.iter().map(|b| b["net"].clone()).collect::<Vec<_>>(),
        [Value::from(format!("{scanner}/32"))],
        "only the real scanner is banned: {bans:?}"
    );
    // The refused ban is counted, for the operator to see that someone tried.
    wait_for(
        SETTLE,
        "the refused ban in crmguard_bans_refused_total",
        || {
            let refused = metric(
                &agent,
                "crmguard_bans_refused_total",
                &[("reason", "port_scan"), ("refusal", "trusted")],
            );
            Ok(refused.is_ok_and(|n| n >= 1.0).then_some(()))
        },
    )
    .unwrap_or_else(|e| fail(e));
}

// ---------------------------------------------------------------------------------------------
// CrowdSec
// ---------------------------------------------------------------------------------------------

/// Relays TCP connections made to 127.0.0.1:PORT inside a namespace to an address of the
/// suite's own namespace: how an agent in its namespace reaches the Local API, which listens
/// on the suite's loopback. Dropping it stops accepting.
struct Relay {
    port: u16,
    stop: Arc<AtomicBool>,
}

impl Relay {
    fn start(ns: &crmguard_lab::netns::NetNs, target: SocketAddr) -> Result<Relay> {
        let listener = ns.run_in(|| TcpListener::bind((Ipv4Addr::LOCALHOST, 0)))??;
        listener.set_nonblocking(true)?;
        let port = listener.local_addr()?.port();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        thread::spawn(move || {
            while !stopped.load(Ordering::Relaxed) {
                let client = match listener.accept() {
                    Ok((client, _)) => client,
                    Err(_) => {
                        thread::sleep(Duration::from_millis(10));
                        continue;
                    }
                };
                // Connected from this thread: the suite's namespace.
                let Ok(server) = TcpStream::connect_timeout(&target, Duration::from_secs(2)) else {
                    continue;
                };
                if client.set_nonblocking(false).is_ok() {
                    pipe(&client, &server);
                    pipe(&server, &client);
                }
            }
        });
        Ok(Relay { port, stop })
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

fn pipe(from: &TcpStream, to: &TcpStream) {
    let (Ok(mut from), Ok(mut to)) = (from.try_clone(), to.try_clone()) else {
        return;
    };
    thread::spawn(move || {
        let mut buf = [0u8; 16 * 1024];
        while let Ok(n) = from.read(&mut buf) {
            if n == 0 || to.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = to.shutdown(std::net::Shutdown::Write);
    });
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn lapi_target(lapi: &CrowdsecLapi) -> SocketAddr {
    let url = lapi.url();
    url.trim_start_matches("http://")
        .parse()
        .unwrap_or_else(|e| panic!("{url}: {e}"))
}

fn crowdsec_section(relay: &Relay, key: &str, machine: Option<(&str, &str)>) -> String {
    let mut text = format!(
        "\n[crowdsec]\nurl = \"{}\"\nbouncer_key = \"{key}\"\ninterval = \"1s\"\n",
        relay.url()
    );
    if let Some((id, password)) = machine {
        text.push_str(&format!(
            "machine_id = \"{id}\"\npassword = \"{password}\"\n"
        ));
    }
    text
}

/// Waits until `src` gets no answer from the open port, then checks the kernel counted it.
fn wait_dropped(t: &Topology, agent: &Agent, src: IpAddr, within: Duration) -> Result<Duration> {
    let start = Instant::now();
    let dst = SocketAddr::new(t.addrs.host4, OPEN[0]);
    let iface = t.host_if.name();
    let before = agent.counter(iface, "drop", "banned")?;
    loop {
        match net::tcp_connect(&t.out, Some(src), dst, Duration::from_millis(300))? {
            TcpOutcome::TimedOut => break,
            TcpOutcome::Connected { .. } | TcpOutcome::Refused => {}
        }
        if start.elapsed() > within + Duration::from_secs(3) {
            bail!("{src} still answered {:?} after", start.elapsed());
        }
        thread::sleep(Duration::from_millis(20));
    }
    let after = agent.counter(iface, "drop", "banned")?;
    ensure!(
        after > before,
        "drop/banned did not rise ({before} -> {after})"
    );
    Ok(start.elapsed())
}

fn wait_answered(t: &Topology, src: IpAddr, within: Duration) -> Result<Duration> {
    let start = Instant::now();
    let dst = SocketAddr::new(t.addrs.host4, OPEN[0]);
    wait_for(within, &format!("{src} to be answered again"), || {
        Ok(matches!(
            net::tcp_connect(&t.out, Some(src), dst, Duration::from_millis(300))?,
            TcpOutcome::Connected { .. }
        )
        .then_some(()))
    })?;
    Ok(start.elapsed())
}

#[test]
fn crowdsec_decisions_are_enforced_and_shared_between_agents() {
    if !privileged::require("detection::crowdsec_decisions_are_enforced_and_shared_between_agents")
    {
        return;
    }
    let lapi = CrowdsecLapi::start().unwrap_or_else(|e| fail(e));
    let key_a = lapi.add_bouncer("crmguard-a").unwrap_or_else(|e| fail(e));
    let key_b = lapi.add_bouncer("crmguard-b").unwrap_or_else(|e| fail(e));
    let password = "crmguard-a-watcher-password";
    lapi.add_machine("crmguard-a", password)
        .unwrap_or_else(|e| fail(e));

    // Host A and host B: the same addressing in namespaces of their own, so that the outside
    // address A sees attacking is the outside address B's outside uses.
    let ta = Topology::ipv4_only(200, 3).unwrap_or_else(|e| fail(e));
    let tb = Topology::ipv4_only(200, 3).unwrap_or_else(|e| fail(e));
    let _servers_a = start_servers(&ta);
    let _servers_b = start_servers(&tb);
    let relay_a = Relay::start(&ta.host, lapi_target(&lapi)).unwrap_or_else(|e| fail(e));
    let relay_b = Relay::start(&tb.host, lapi_target(&lapi)).unwrap_or_else(|e| fail(e));
    let agent_a = Agent::start(
        &ta.host,
        &scan_policy(
            &ta,
            &crowdsec_section(&relay_a, &key_a, Some(("crmguard-a", password))),
        ),
    )
    .unwrap_or_else(|e| fail(e));
    let agent_b = Agent::start(
        &tb.host,
        &scan_policy(&tb, &crowdsec_section(&relay_b, &key_b, None)),
    )
    .unwrap_or_else(|e| fail(e));

    // A decision added with cscli: dropped in XDP within a poll, lifted when deleted.
    let listed = ta.addrs.denied4;
    wait_answered(&ta, listed, SETTLE).unwrap_or_else(|e| fail(e));
    lapi.cscli(&[
        "decisions",
        "add",
        "--ip",
        &listed.to_string(),
        "--duration",
        "1h",
    ])
    .unwrap_or_else(|e| fail(e));
    let returned = Instant::now();
    let (ban, seen) = wait_ban(&agent_a, listed, DECISION_WITHIN + Duration::from_secs(3))
        .unwrap_or_else(|e| panic!("{e:#}\n{}", lapi.log()));
    let in_list = seen.saturating_duration_since(returned);
    assert_eq!(ban["source"], "detector:crowdsec", "{ban}");
    assert!(
        in_list <= DECISION_WITHIN,
        "in the ban list after {in_list:?}"
    );
    wait_dropped(&ta, &agent_a, listed, DECISION_WITHIN).unwrap_or_else(|e| fail(e));
    let dropped = returned.elapsed();
    eprintln!(
        "cscli decisions add: in A's ban list {in_list:?} after cscli returned; \
         a probe from it timed out (300 ms) by {dropped:?}"
    );
    lapi.cscli(&["decisions", "delete", "--ip", &listed.to_string()])
        .unwrap_or_else(|e| fail(e));
    let lifted = wait_answered(&ta, listed, DECISION_WITHIN).unwrap_or_else(|e| fail(e));
    eprintln!("cscli decisions delete: answered again after {lifted:?}");
    assert!(ban_of(&agent_a, listed)
        .unwrap_or_else(|e| fail(e))
        .is_none());

    // A detects a scan and pushes its ban; the API lists it; B enforces it.
    let scanner = ta.addrs.out4;
    wait_answered(&tb, scanner, SETTLE).unwrap_or_else(|e| fail(e));
    syn_scan(&ta, scanner, 100).unwrap_or_else(|e| fail(e));
    let (ban, banned_by_a) =
        wait_ban(&agent_a, scanner, Duration::from_secs(5)).unwrap_or_else(|e| fail(e));
    assert_eq!(ban["source"], "detector:port_scan", "{ban}");
    let decision = wait_for(SETTLE, "A's ban to become a decision", || {
        let decisions = lapi.decisions()?;
        Ok(decisions
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|alert| alert["decisions"].as_array().cloned().unwrap_or_default())
            .find(|d| d["value"] == scanner.to_string().as_str()))
    })
    .unwrap_or_else(|e| panic!("{e:#}\n{}", lapi.log()));
    assert_eq!(decision["scenario"], "crmguard/port_scan", "{decision}");
    assert_eq!(decision["type"], "ban", "{decision}");
    let (ban_b, banned_by_b) =
        wait_ban(&agent_b, scanner, Duration::from_secs(5)).unwrap_or_else(|e| fail(e));
    assert_eq!(ban_b["source"], "detector:crowdsec", "{ban_b}");
    eprintln!(
        "A's port-scan ban reached B's ban list {:?} later (pushed, then pulled each second)",
        banned_by_b.saturating_duration_since(banned_by_a)
    );
    wait_dropped(&tb, &agent_b, scanner, DECISION_WITHIN).unwrap_or_else(|e| fail(e));
    // A's own ban keeps its detector when its decision comes back from the API.
    let (ban, _) = wait_ban(&agent_a, scanner, SETTLE).unwrap_or_else(|e| fail(e));
    assert_eq!(ban["source"], "detector:port_scan", "{ban}");

    // The API goes away: B keeps enforcing what it had.
    drop(lapi);
    let status = wait_for(SETTLE, "B's bouncer to notice the API is gone", || {
        let status = agent_b.status()?;
        Ok((status["crowdsec"]["reachable"] == false
            && status["crowdsec"]["errors"].as_u64() >= Some(2))
        .then_some(status))
    })
    .unwrap_or_else(|e| fail(e));
    eprintln!(
        "B's CrowdSec status without the API: {}",
        status["crowdsec"]
    );
    assert!(
        ban_of(&agent_b, scanner)
            .unwrap_or_else(|e| fail(e))
            .is_some(),
        "B lost the ban when the API went away"
    );
    let outcome = net::tcp_connect(
        &tb.out,
        Some(scanner),
        SocketAddr::new(tb.addrs.host4, OPEN[0]),
        NO_ANSWER,
    )
    .unwrap_or_else(|e| fail(e));
    assert_eq!(outcome, TcpOutcome::TimedOut);
    drop(relay_a);
    drop(relay_b);
}
