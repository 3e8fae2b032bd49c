//! Detection and response through the tunnel, with real programs: psql's wrong passwords end
//! the peer's MFA session, a large download suspends the peer, a roaming laptop and a peer
//! outside its role's hours raise alerts at a real Alertmanager and at a webhook receiver.
//!
//! ```text
//!   netns out   wireguard-go 10.77.0.N -> 10.X.Y.1:51820   [XDP] crmguard, TUN 10.77.0.1
//!               psql, curl, a TCP reader                     postgres :5432, portal :8443,
//!                                                            a bulk sender :5002
//!                                                            Alertmanager, webhook (127.0.0.1)
//! ```
//!
//! The agent runs in the topology's host namespace, so its alert receivers listen on that
//! namespace's loopback.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use crmguard_lab::agent::Agent;
use crmguard_lab::alerting::Alertmanager;
use crmguard_lab::net::{self, TcpOutcome, TcpServer};
use crmguard_lab::netns::NetNs;
use crmguard_lab::servers::Postgres;
use crmguard_lab::topology::Topology;
use crmguard_lab::wait::wait_for;
use crmguard_lab::{privileged, process, totp};
use serde_json::Value;
use tempfile::TempDir;

use crate::vpn::{
    gateway_endpoint, gateway_key, metric, wait_reachable, PeerSpec, GATEWAY4, SETTLE, WG_PORT,
};

/// The MFA portal's port.
const PORTAL: u16 = 8443;
/// PostgreSQL's port on the gateway's tunnel address.
const PG: u16 = 5432;
/// A service that sends a large download.
const BULK: u16 = 5002;
/// A service any role in these labs may reach.
const CRM: u16 = 8080;
const PASSWORD: &str = "right-Horse-7";
const WRONG: &str = "wrong-password";

fn require_tools() -> Result<()> {
    crate::vpn::require_tools()?;
    privileged::require_tools(&[("curl", "curl")])
}

// ---- the lab ---------------------------------------------------------------------------------

/// The agent's configuration: XDP on the host's link, default drop, `[vpn]`, `[mfa]`, the
/// given roles and peers (`(spec, role)`) and `extra` sections (`[detection.*]`, `[alerts]`).
struct Lab {
    body: String,
    scratch: TempDir,
}

impl Lab {
    fn new(t: &Topology, roles: &str, peers: &[(&PeerSpec, &str)], extra: &str) -> Result<Lab> {
        require_tools()?;
        let scratch = tempfile::tempdir()?;
        let mut body = format!(
            r#"[[interface]]
name = "{iface}"
xdp_mode = "native"

[firewall]
default = "drop"

[vpn]
listen_port = {WG_PORT}
address = "10.77.0.1/24"
address6 = "fd77::1/64"
private_key_file = "{dir}/wg.key"
peers_file = "{dir}/peers.toml"

[mfa]
issuer = "ACME CRM"
portal_port = {PORTAL}

{roles}
"#,
            iface = t.host_if.name(),
            dir = scratch.path().display(),
        );
        for (peer, role) in peers {
            body.push_str(&format!(
                "[[peer]]\nname = \"{}\"\npublic_key = \"{}\"\naddress = \"{}\"\nrole = \"{role}\"\n\n",
                peer.name,
                peer.keys.public,
                peer.v4(),
            ));
        }
        body.push_str(extra);
        Ok(Lab { body, scratch })
    }

    /// `[vpn] peers_file`.
    fn peers_file(&self) -> std::path::PathBuf {
        self.scratch.path().join("peers.toml")
    }
}

/// `crmguard mfa enroll NAME`, and the secret of the URI it printed.
fn enroll(agent: &Agent, name: &str) -> Result<Vec<u8>> {
    let out = agent.cli(&["mfa", "enroll", name])?;
    ensure!(out.status.success(), "mfa enroll {name}: {out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let uri = stdout
        .lines()
        .find(|l| l.starts_with("otpauth://"))
        .with_context(|| format!("no otpauth URI in:\n{stdout}"))?;
    totp::secret_of_uri(uri)
}

/// `curl` inside `ns` against the portal: the HTTP status and the body.
fn portal(ns: &NetNs, method: &str, path: &str, json: Option<&str>) -> Result<(u16, String)> {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "-m", "5", "-o", "-", "-w", "\n%{http_code}", "-X"])
        .arg(method);
    if let Some(body) = json {
        cmd.args(["-H", "Content-Type: application/json", "--data", body]);
    }
    cmd.arg(format!("http://{GATEWAY4}:{PORTAL}{path}"));
    let out = process::output_in(ns, cmd)?;
    ensure!(out.status.success(), "curl {method} {path}: {out:?}");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').context("curl printed no status")?;
    Ok((code.trim().parse()?, body.to_owned()))
}

/// Signs in at the portal from `ns` with a TOTP code of `secret` not used before (`used`).
fn sign_in(ns: &NetNs, secret: &[u8], used: &mut Vec<String>) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(35);
    let code = loop {
        let code = totp::code_now(secret)?;
        if !used.contains(&code) {
            break code;
        }
        ensure!(Instant::now() < deadline, "no fresh TOTP step within 35 s");
        std::thread::sleep(Duration::from_millis(250));
    };
    used.push(code.clone());
    let (status, body) = portal(
        ns,
        "POST",
        "/session",
        Some(&format!("{{\"code\":\"{code}\"}}")),
    )?;
    ensure!(status == 200, "signing in: {status} {body}");
    Ok(())
}

/// Whether `peer` has an MFA session, as `status --json` says.
fn has_session(agent: &Agent, peer: &str) -> Result<bool> {
    Ok(agent.status()?["mfa_sessions"][peer].is_string())
}

/// Connects from `ns` to the gateway's tunnel address at `port`.
fn connect(ns: &NetNs, port: u16) -> Result<TcpOutcome> {
    let dst = SocketAddr::new(IpAddr::V4(GATEWAY4), port);
    net::tcp_connect(ns, None, dst, Duration::from_secs(3))
}

/// The audit records of `agent` as JSON values.
fn audit_records(agent: &Agent) -> Result<Vec<Value>> {
    let text = std::fs::read_to_string(agent.dir().join("audit.jsonl"))?;
    text.lines()
        .map(|line| serde_json::from_str(line).context("an audit record"))
        .collect()
}

/// The `anomaly` records of `detector` about `peer`.
fn anomalies(agent: &Agent, detector: &str, peer: &str) -> Result<Vec<Value>> {
    Ok(audit_records(agent)?
        .into_iter()
        .filter(|r| {
            r["type"] == "anomaly"
                && r["detail"]["detector"] == detector
                && r["detail"]["peer"] == peer
        })
        .collect())
}

/// The audit log, for failure messages.
fn audit_log(agent: &Agent) -> String {
    std::fs::read_to_string(agent.dir().join("audit.jsonl")).unwrap_or_default()
}

fn detections(agent: &Agent, detector: &str) -> Result<f64> {
    metric(
        agent,
        "crmguard_detections_total",
        &[("detector", detector)],
    )
}

fn text(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

// ---- servers of the lab ----------------------------------------------------------------------

/// A thread accepting on `listener` (non-blocking) until `stop`, handing each connection to
/// `serve`.
fn accept_loop(
    listener: TcpListener,
    stop: Arc<AtomicBool>,
    mut serve: impl FnMut(TcpStream) + Send + 'static,
) -> Result<JoinHandle<()>> {
    listener.set_nonblocking(true)?;
    Ok(std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            match listener.accept() {
                Ok((stream, _)) => {
                    if stream.set_nonblocking(false).is_ok() {
                        serve(stream);
                    }
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }))
}

/// Stops an [`accept_loop`] on drop.
struct Stopper {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Stopper {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A webhook receiver on 127.0.0.1 of a namespace: answers 500 to the first `failures`
/// requests and 200 after; keeps every request's body.
struct Webhook {
    url: String,
    bodies: Arc<Mutex<Vec<Vec<u8>>>>,
    _stopper: Stopper,
}

impl Webhook {
    fn start(ns: &NetNs, failures: usize) -> Result<Webhook> {
        let listener = ns.run_in(|| TcpListener::bind((Ipv4Addr::LOCALHOST, 0)))??;
        let url = format!("http://{}/crm/alerts", listener.local_addr()?);
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let kept = Arc::clone(&bodies);
        let stop = Arc::new(AtomicBool::new(false));
        let thread = accept_loop(listener, Arc::clone(&stop), move |mut stream| {
            let Some(body) = read_request(&mut stream) else {
                return;
            };
            let n = {
                let mut kept = kept
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                kept.push(body);
                kept.len()
            };
            let status = if n <= failures {
                "500 Internal Server Error"
            } else {
                "200 OK"
            };
            let _ = stream.write_all(
                format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                    .as_bytes(),
            );
        })?;
        Ok(Webhook {
            url,
            bodies,
            _stopper: Stopper {
                stop,
                thread: Some(thread),
            },
        })
    }

    /// The bodies received so far, as JSON.
    fn received(&self) -> Result<Vec<Value>> {
        self.bodies
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .map(|b| serde_json::from_slice(b).context("a webhook body"))
            .collect()
    }
}

/// The body of one HTTP/1.1 request framed by Content-Length.
fn read_request(stream: &mut TcpStream) -> Option<Vec<u8>> {
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let mut buf = Vec::new();
    let mut chunk = [0_u8; 4096];
    loop {
        let n = stream.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
        let length: usize = head
            .lines()
            .find_map(|line| line.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())?;
        if buf.len() >= end + 4 + length {
            return Some(buf[end + 4..end + 4 + length].to_vec());
        }
    }
}

/// Alertmanager's alerts, read with curl inside `ns`.
fn alertmanager_alerts(ns: &NetNs, alertmanager: &Alertmanager) -> Result<Vec<Value>> {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "5"])
        .arg(format!("{}/api/v2/alerts", alertmanager.url()));
    let out = process::output_in(ns, cmd)?;
    ensure!(out.status.success(), "curl: {}", text(&out));
    let alerts: Value =
        serde_json::from_slice(&out.stdout).context("Alertmanager's /api/v2/alerts is not JSON")?;
    Ok(alerts.as_array().cloned().unwrap_or_default())
}

/// A TCP service on the gateway's tunnel address that sends `bytes` bytes to each client.
fn bulk_sender(ns: &NetNs, port: u16, bytes: usize) -> Result<Stopper> {
    let addr = SocketAddr::new(IpAddr::V4(GATEWAY4), port);
    let listener = ns.run_in(|| TcpListener::bind(addr))??;
    let stop = Arc::new(AtomicBool::new(false));
    let thread = accept_loop(listener, Arc::clone(&stop), move |mut stream| {
        let block = vec![0x5a_u8; 64 * 1024];
        let _ = stream.set_write_timeout(Some(Duration::from_secs(10)));
        let mut left = bytes;
        while left > 0 {
            let n = left.min(block.len());
            if stream.write_all(&block[..n]).is_err() {
                return;
            }
            left -= n;
        }
    })?;
    Ok(Stopper {
        stop,
        thread: Some(thread),
    })
}

/// Reads from `port` on the gateway inside `ns` until the server closes or nothing comes for
/// 3 s: the bytes received and when more than `mark` had arrived.
fn download(ns: &NetNs, port: u16, mark: usize) -> Result<(usize, Option<Instant>)> {
    let dst = SocketAddr::new(IpAddr::V4(GATEWAY4), port);
    ns.run_in(move || -> Result<(usize, Option<Instant>)> {
        let mut stream = TcpStream::connect_timeout(&dst, Duration::from_secs(5))?;
        stream.set_read_timeout(Some(Duration::from_secs(3)))?;
        let mut buf = vec![0_u8; 64 * 1024];
        let (mut got, mut crossed) = (0_usize, None);
        loop {
            match stream.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    got += n;
                    if got > mark && crossed.is_none() {
                        crossed = Some(Instant::now());
                    }
                }
            }
        }
        Ok((got, crossed))
    })?
}

// ---- the scenarios ---------------------------------------------------------------------------

/// A role that needs MFA and reaches `services`.
/// psql from `ns` to the gateway's PostgreSQL with `password`, asking for `SELECT 40 + 2`.
fn psql(ns: &NetNs, password: &str) -> Result<Output> {
    let mut cmd = Command::new("timeout");
    cmd.args(["20", "psql", "-X", "-w", "-tA", "-c", "SELECT 40 + 2"])
        .arg(format!(
            "host={GATEWAY4} port={PG} user=crm dbname=crm sslmode=disable connect_timeout=5"
        ))
        .env("PGPASSWORD", password);
    process::output_in(ns, cmd)
}

fn sales_role(services: &str) -> String {
    format!("[[role]]\nname = \"sales\"\nallow = [{services}]\nmfa = true\n")
}

#[test]
fn wrong_psql_passwords_end_the_peers_mfa_session() -> Result<()> {
    if !privileged::require("detection_vpn::wrong_psql_passwords_end_the_peers_mfa_session") {
        return Ok(());
    }
    privileged::require_tools(&[("psql", "postgresql-client-15")])?;
    let t = Topology::ipv4_only(183, 1)?;
    let alice = PeerSpec::new("alice", 2)?;
    let lab = Lab::new(
        &t,
        &sales_role(&format!("\"tcp/{PG}\"")),
        &[(&alice, "sales")],
        "[detection.auth_failures]\nper_peer_threshold = 3\nwindow = \"1m\"\n",
    )?;
    let agent = Agent::start(&t.host, &lab.body)?;
    let secret = enroll(&agent, "alice")?;
    let gateway = gateway_key(&agent)?;
    let _pg = Postgres::start(&t.host, IpAddr::V4(GATEWAY4), PG, PASSWORD)?;
    let _wg = alice.connect(&t.out, &gateway, gateway_endpoint(t.addrs.host4))?;
    wait_reachable(&t.out, IpAddr::V4(GATEWAY4))?;

    let psql = |password: &str| psql(&t.out, password);
    let works = |out: &Output| out.status.success() && out.stdout.starts_with(b"42");

    // Without a session the database is out of reach; with one, psql works.
    ensure!(
        connect(&t.out, PG)? == TcpOutcome::Refused,
        "postgres before signing in"
    );
    let mut used = Vec::new();
    sign_in(&t.out, &secret, &mut used)?;
    let out = psql(PASSWORD)?;
    ensure!(works(&out), "psql with a session: {}", text(&out));

    let denied_before = metric(
        &agent,
        "crmguard_acl_denied_by_reason_total",
        &[("reason", "mfa_required")],
    )?;

    // Three wrong passwords within the window: the third ends the session.
    let mut last_failure = Instant::now();
    for i in 1..=3 {
        let out = psql(WRONG)?;
        last_failure = Instant::now();
        ensure!(
            !out.status.success()
                && String::from_utf8_lossy(&out.stderr).contains("password authentication failed"),
            "wrong password {i}: {}",
            text(&out)
        );
    }
    wait_for(SETTLE, "alice's MFA session to end", || {
        Ok((!has_session(&agent, "alice")?).then_some(()))
    })
    .with_context(|| format!("the audit log:\n{}", audit_log(&agent)))?;
    let took = last_failure.elapsed();
    eprintln!("the MFA session ended {took:?} after the third wrong password");
    ensure!(
        took < Duration::from_secs(3),
        "the session ended {took:?} after the third failure"
    );

    // Now alice reaches only the portal: postgres is refused by the ACL (mfa_required).
    let refused = connect(&t.out, PG)?;
    ensure!(
        refused == TcpOutcome::Refused,
        "postgres after the suspension: {refused:?}"
    );
    let out = psql(PASSWORD)?;
    ensure!(
        !out.status.success(),
        "psql worked without a session: {}",
        text(&out)
    );
    let (status, body) = portal(&t.out, "GET", "/session", None)?;
    ensure!(
        status == 200 && body.contains("alice"),
        "the portal after the suspension: {status} {body}"
    );
    let mfa_denied = metric(
        &agent,
        "crmguard_acl_denied_by_reason_total",
        &[("reason", "mfa_required")],
    )?;
    ensure!(
        mfa_denied > denied_before,
        "the refusal was not counted as mfa_required ({denied_before} -> {mfa_denied})"
    );

    // Signing in again opens the way again.
    sign_in(&t.out, &secret, &mut used)?;
    let out = psql(PASSWORD)?;
    ensure!(works(&out), "psql after signing in again: {}", text(&out));

    let found = anomalies(&agent, "auth_failures", "alice")?;
    ensure!(
        found.iter().any(|r| r["detail"]["response"] == "suspend"),
        "no anomaly record with the suspension:\n{}",
        audit_log(&agent)
    );
    ensure!(
        found.iter().any(|r| r["detail"]["summary"]
            .as_str()
            .is_some_and(|s| s.contains("3 failed postgresql logins"))),
        "the anomaly does not say what happened: {found:?}"
    );
    let records = audit_records(&agent)?;
    ensure!(
        records.iter().any(|r| r["type"] == "mfa_session_end"
            && r["actor"] == "alice"
            && r["detail"]["reason"]
                .as_str()
                .is_some_and(|s| s.contains("auth_failures"))),
        "no mfa_session_end record naming the detector:\n{}",
        audit_log(&agent)
    );
    let counted = detections(&agent, "auth_failures")?;
    ensure!(
        counted == 1.0,
        "crmguard_detections_total{{detector=auth_failures}} = {counted}, one detection"
    );
    Ok(())
}

/// Whether the peers file of `lab` has `name` enabled.
fn enabled_in_file(lab: &Lab, name: &str) -> Result<bool> {
    let file = std::fs::read_to_string(lab.peers_file())?;
    let block = file
        .split("[[peer]]")
        .find(|p| p.contains(&format!("name = \"{name}\"")))
        .with_context(|| format!("{name} is not in the peers file:\n{file}"))?;
    Ok(!block.contains("enabled = false"))
}

/// Three wrong psql passwords from a peer of the peers file, with `suspend_disable`: the peer
/// is disabled, and enabled again when the time is up. An administrator who disables a peer
/// during that time has the last word: the detector's time ending does not enable it again.
#[test]
fn a_detectors_timed_disable_ends_unless_an_administrator_disabled_the_peer() -> Result<()> {
    if !privileged::require(
        "detection_vpn::a_detectors_timed_disable_ends_unless_an_administrator_disabled_the_peer",
    ) {
        return Ok(());
    }
    privileged::require_tools(&[("psql", "postgresql-client-15")])?;
    const DISABLED_FOR: Duration = Duration::from_secs(6);
    let t = Topology::ipv4_only(184, 1)?;
    let alice = PeerSpec::new("alice", 2)?;
    let bob = PeerSpec::new("bob", 3)?;
    let lab = Lab::new(
        &t,
        &sales_role(&format!("\"tcp/{PG}\"")),
        &[],
        &format!(
            "[detection.auth_failures]\nper_peer_threshold = 3\nwindow = \"1m\"\nsuspend_disable = \"{}s\"\n",
            DISABLED_FOR.as_secs()
        ),
    )?;
    let file: String = [&alice, &bob]
        .iter()
        .map(|p| p.toml().replace("role = \"staff\"", "role = \"sales\""))
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(lab.peers_file(), file)?;
    let agent = Agent::start(&t.host, &lab.body)?;
    let gateway = gateway_key(&agent)?;
    let _pg = Postgres::start(&t.host, IpAddr::V4(GATEWAY4), PG, PASSWORD)?;
    let psql = |password: &str| psql(&t.out, password);
    // Each in turn signs in and gets three passwords wrong: disabled by the detector.
    let mut disabled_at = Vec::new();
    for peer in [&alice, &bob] {
        let secret = enroll(&agent, peer.name)?;
        let wg = peer.connect(&t.out, &gateway, gateway_endpoint(t.addrs.host4))?;
        wait_reachable(&t.out, IpAddr::V4(GATEWAY4))?;
        sign_in(&t.out, &secret, &mut Vec::new())?;
        for i in 1..=3 {
            let out = psql(WRONG)?;
            ensure!(
                !out.status.success(),
                "{} wrong password {i}: {}",
                peer.name,
                text(&out)
            );
        }
        wait_for(SETTLE, &format!("{} to be disabled", peer.name), || {
            Ok((!enabled_in_file(&lab, peer.name)?).then_some(()))
        })
        .with_context(|| format!("the audit log:\n{}", audit_log(&agent)))?;
        disabled_at.push(Instant::now());
        drop(wg);
    }
    // The administrator disables bob while the detector's time runs.
    let out = agent.cli(&["peer", "disable", "bob"])?;
    ensure!(out.status.success(), "peer disable bob: {out:?}");

    // Alice's time ends: enabled again.
    wait_for(DISABLED_FOR + SETTLE, "alice to be enabled again", || {
        Ok(enabled_in_file(&lab, "alice")?.then_some(()))
    })?;
    // Bob stays disabled past the end of his time, and past two of the checks (each second).
    let until = disabled_at[1] + DISABLED_FOR + Duration::from_secs(3);
    while Instant::now() < until {
        ensure!(
            !enabled_in_file(&lab, "bob")?,
            "bob was enabled again after the administrator disabled him"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    let records = audit_records(&agent)?;
    ensure!(
        records.iter().any(|r| r["type"] == "peer_enabled"
            && r["actor"] == "detector:suspend_disable"
            && r["detail"]["peer"] == "alice"),
        "no record of alice enabled when her time ended:\n{}",
        audit_log(&agent)
    );
    Ok(())
}

#[test]
fn a_large_download_suspends_the_peer() -> Result<()> {
    if !privileged::require("detection_vpn::a_large_download_suspends_the_peer") {
        return Ok(());
    }
    const LIMIT: usize = 5 << 20;
    let t = Topology::ipv4_only(183, 2)?;
    let alice = PeerSpec::new("alice", 2)?;
    let lab = Lab::new(
        &t,
        &sales_role(&format!("\"tcp/{BULK}\", \"tcp/{CRM}\"")),
        &[(&alice, "sales")],
        "[detection.volume]\nper_peer_bytes_per_hour = \"5MiB\"\naction = \"suspend\"\n",
    )?;
    let agent = Agent::start(&t.host, &lab.body)?;
    let secret = enroll(&agent, "alice")?;
    let gateway = gateway_key(&agent)?;
    let _bulk = bulk_sender(&t.host, BULK, 10 << 20)?;
    let _crm = TcpServer::start(&t.host, CRM, "crm\n")?;
    let _wg = alice.connect(&t.out, &gateway, gateway_endpoint(t.addrs.host4))?;
    wait_reachable(&t.out, IpAddr::V4(GATEWAY4))?;
    let mut used = Vec::new();
    sign_in(&t.out, &secret, &mut used)?;

    // Small traffic is fine.
    ensure!(
        matches!(connect(&t.out, CRM)?, TcpOutcome::Connected { .. }),
        "the CRM with a session"
    );
    ensure!(
        anomalies(&agent, "volume", "alice")?.is_empty(),
        "an anomaly before the download"
    );

    let (got, crossed) = download(&t.out, BULK, LIMIT)?;
    let crossed = crossed.with_context(|| format!("only {got} bytes arrived"))?;
    eprintln!("the download brought {got} bytes");
    wait_for(Duration::from_secs(8), "alice to be suspended", || {
        Ok((!has_session(&agent, "alice")?).then_some(()))
    })
    .with_context(|| format!("the audit log:\n{}", audit_log(&agent)))?;
    let took = crossed.elapsed();
    eprintln!("alice was suspended {took:?} after more than 5 MiB had arrived");
    ensure!(
        took < Duration::from_secs(4),
        "suspended {took:?} after crossing the limit"
    );
    let refused = connect(&t.out, CRM)?;
    ensure!(
        refused == TcpOutcome::Refused,
        "the CRM after the suspension: {refused:?}"
    );
    let found = anomalies(&agent, "volume", "alice")?;
    ensure!(
        found.iter().any(|r| r["detail"]["response"] == "suspend"),
        "no anomaly record with the suspension:\n{}",
        audit_log(&agent)
    );
    ensure!(
        audit_records(&agent)?
            .iter()
            .any(|r| r["type"] == "mfa_session_end" && r["actor"] == "alice"),
        "no mfa_session_end record"
    );
    ensure!(detections(&agent, "volume")? == 1.0, "one volume detection");

    // Signed in again, the peer works: the detector acts at most once an hour.
    sign_in(&t.out, &secret, &mut used)?;
    ensure!(
        matches!(connect(&t.out, CRM)?, TcpOutcome::Connected { .. }),
        "the CRM after signing in again"
    );
    Ok(())
}

#[test]
fn a_roaming_peer_raises_one_alert_at_alertmanager_and_a_failing_webhook() -> Result<()> {
    if !privileged::require(
        "detection_vpn::a_roaming_peer_raises_one_alert_at_alertmanager_and_a_failing_webhook",
    ) {
        return Ok(());
    }
    let t = Topology::ipv4_only(183, 3)?;
    let alice = PeerSpec::new("alice", 2)?;
    let alertmanager = t.host.run_in(Alertmanager::start)??;
    let webhook = Webhook::start(&t.host, 1)?;
    let lab = Lab::new(
        &t,
        &format!("[[role]]\nname = \"staff\"\nallow = [\"tcp/{CRM}\"]\n"),
        &[(&alice, "staff")],
        &format!(
            "[detection.new_endpoint]\naction = \"alert\"\n\n[alerts]\nwebhook = \"{}\"\nalertmanager = \"{}\"\n",
            webhook.url,
            alertmanager.url()
        ),
    )?;
    let agent = Agent::start(&t.host, &lab.body)?;
    let gateway = gateway_key(&agent)?;
    let client = alice.connect(&t.out, &gateway, gateway_endpoint(t.addrs.host4))?;
    wait_reachable(&t.out, IpAddr::V4(GATEWAY4))?;
    // The first handshake is learned (seen in the same second as its audit record), not
    // reported.
    wait_for(SETTLE, "alice's handshake to be seen", || {
        Ok(audit_records(&agent)?
            .iter()
            .any(|r| r["type"] == "peer_handshake" && r["actor"] == "alice")
            .then_some(()))
    })?;

    // The laptop moves to another network: a new address in another /24 and the gateway's
    // address on that network. The session is followed, no new handshake is needed.
    let (x, y) = (183, 3 + 100);
    t.host_if.add_addr(&format!("10.{x}.{y}.1/24"))?;
    t.out_if.add_addr(&format!("10.{x}.{y}.2/24"))?;
    let moved_at = Instant::now();
    client.set_peer(
        &gateway,
        gateway_endpoint(IpAddr::V4(Ipv4Addr::new(10, x, y, 1))),
        &["10.77.0.0/24", "fd77::/64"],
    )?;
    wait_reachable(&t.out, IpAddr::V4(GATEWAY4))?;
    ensure!(
        anomalies(&agent, "new_endpoint", "alice")?.len() <= 1,
        "more than one anomaly"
    );
    let record = wait_for(SETTLE, "the new_endpoint anomaly", || {
        Ok(anomalies(&agent, "new_endpoint", "alice")?
            .into_iter()
            .next())
    })
    .with_context(|| format!("the audit log:\n{}", audit_log(&agent)))?;
    eprintln!("anomaly recorded {:?} after the move", moved_at.elapsed());
    ensure!(
        record["src"] == format!("10.{x}.{y}.2") && record["detail"]["response"] == "alert",
        "the anomaly record: {record}"
    );

    let shown = wait_for(Duration::from_secs(15), "the alert in Alertmanager", || {
        Ok(alertmanager_alerts(&t.host, &alertmanager)?
            .into_iter()
            .find(|a| a["labels"]["alertname"] == "crmguard_new_endpoint"))
    })
    .with_context(|| alertmanager.log())?;
    eprintln!(
        "alert in Alertmanager {:?} after the move",
        moved_at.elapsed()
    );
    ensure!(
        shown["labels"]["peer"] == "alice"
            && shown["labels"]["source"] == format!("10.{x}.{y}.2")
            && shown["status"]["state"] == "active",
        "the alert in Alertmanager: {shown}"
    );

    // The webhook refused the first try; the retry is accepted, and nothing more comes.
    wait_for(Duration::from_secs(15), "the webhook's second try", || {
        Ok((webhook.received()?.len() >= 2).then_some(()))
    })?;
    eprintln!(
        "webhook accepted the alert {:?} after the move",
        moved_at.elapsed()
    );
    let quiet = Instant::now();
    while quiet.elapsed() < Duration::from_secs(6) {
        let n = webhook.received()?.len();
        ensure!(
            n == 2,
            "the webhook received {n} requests, one refused and one accepted"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let bodies = webhook.received()?;
    ensure!(
        bodies[0] == bodies[1],
        "the retry is the same alert: {bodies:?}"
    );
    ensure!(
        bodies[1]["detector"] == "new_endpoint" && bodies[1]["peer"] == "alice",
        "the webhook's alert: {}",
        bodies[1]
    );
    ensure!(
        alertmanager_alerts(&t.host, &alertmanager)?
            .iter()
            .filter(|a| a["labels"]["alertname"] == "crmguard_new_endpoint")
            .count()
            == 1,
        "one alert in Alertmanager"
    );
    ensure!(
        anomalies(&agent, "new_endpoint", "alice")?.len() == 1,
        "one anomaly record"
    );
    ensure!(
        detections(&agent, "new_endpoint")? == 1.0,
        "one new_endpoint detection"
    );
    Ok(())
}

/// The three-letter name of a weekday (0 = Monday), as `hours` spells it.
fn day_name(weekday: u8) -> &'static str {
    ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"][usize::from(weekday % 7)]
}

#[test]
fn a_peer_outside_its_hours_raises_an_alert() -> Result<()> {
    if !privileged::require("detection_vpn::a_peer_outside_its_hours_raises_an_alert") {
        return Ok(());
    }
    let t = Topology::ipv4_only(183, 4)?;
    let night = PeerSpec::new("nightshift-laptop", 3)?;
    let webhook = Webhook::start(&t.host, 0)?;
    // Three days away, all day: never now, whatever the host's local time.
    let today = crmguard_core::acl::LocalTime::now()?.weekday;
    let lab = Lab::new(
        &t,
        &format!(
            "[[role]]\nname = \"nightshift\"\nallow = [\"tcp/{CRM}\"]\nhours = \"{} 00:00-24:00\"\n",
            day_name(today + 3)
        ),
        &[(&night, "nightshift")],
        &format!(
            "[detection.off_hours]\naction = \"alert\"\n\n[alerts]\nwebhook = \"{}\"\n",
            webhook.url
        ),
    )?;
    let agent = Agent::start(&t.host, &lab.body)?;
    let gateway = gateway_key(&agent)?;
    let crm = TcpServer::start(&t.host, CRM, "crm\n")?;
    let _wg = night.connect(&t.out, &gateway, gateway_endpoint(t.addrs.host4))?;
    wait_reachable(&t.out, IpAddr::V4(GATEWAY4))?;
    ensure!(
        anomalies(&agent, "off_hours", night.name)?.is_empty(),
        "an anomaly before any attempt"
    );

    let tried = Instant::now();
    let outcome = connect(&t.out, CRM)?;
    ensure!(
        outcome == TcpOutcome::Refused && crm.accepted() == 0,
        "outside its hours the peer got {outcome:?}"
    );
    let record = wait_for(SETTLE, "the off_hours anomaly", || {
        Ok(anomalies(&agent, "off_hours", night.name)?
            .into_iter()
            .next())
    })
    .with_context(|| format!("the audit log:\n{}", audit_log(&agent)))?;
    eprintln!("anomaly recorded {:?} after the refusal", tried.elapsed());
    ensure!(
        record["detail"]["response"] == "alert"
            && record["detail"]["summary"]
                .as_str()
                .is_some_and(|s| s.contains("tcp/8080")),
        "the anomaly record: {record}"
    );
    let body = wait_for(SETTLE, "the alert at the webhook", || {
        Ok(webhook.received()?.into_iter().next())
    })?;
    eprintln!("alert delivered {:?} after the refusal", tried.elapsed());
    ensure!(
        body["detector"] == "off_hours" && body["peer"] == night.name,
        "the alert: {body}"
    );
    ensure!(detections(&agent, "off_hours")? == 1.0, "one detection");

    // More refusals within the quiet period raise nothing more.
    for _ in 0..3 {
        ensure!(
            connect(&t.out, CRM)? == TcpOutcome::Refused,
            "still refused"
        );
    }
    let quiet = Instant::now();
    while quiet.elapsed() < Duration::from_secs(3) {
        ensure!(
            webhook.received()?.len() == 1,
            "a second alert within the quiet period"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    if anomalies(&agent, "off_hours", night.name)?.len() != 1 {
        bail!("more than one anomaly record:\n{}", audit_log(&agent));
    }
    Ok(())
}
