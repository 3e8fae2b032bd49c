//! Access lifecycle against real clients: TOTP sessions through the MFA portal (headless
//! Chromium and curl inside the tunnel), lockout, expiry, sessions across a restart, peer
//! provisioning and disabling, expired keys, inactive peers, and the audit log they leave.
//!
//! ```text
//!   netns out   wireguard-go 10.77.0.N -> 10.X.Y.1:51820   [XDP] crmguard, TUN 10.77.0.1
//!               chromium / curl -> http://10.77.0.1:8443/        portal + CRM (tcp/8080)
//! ```

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, ensure, Context, Result};
use crmguard_lab::agent::Agent;
use crmguard_lab::browser::Browser;
use crmguard_lab::net::{self, TcpOutcome, TcpServer};
use crmguard_lab::netns::NetNs;
use crmguard_lab::topology::Topology;
use crmguard_lab::wait::wait_for;
use crmguard_lab::wg::{genkey, Keys, WgClient};
use crmguard_lab::{privileged, process, totp};
use tempfile::TempDir;

use crate::vpn::{
    gateway_endpoint, gateway_key, metric, ping, second_link, wait_reachable, PeerSpec,
    ALLOWED_TCP, GATEWAY4, SETTLE, WG_PORT,
};

/// The portal's port.
pub(crate) const PORTAL: u16 = 8443;

fn require_tools() -> Result<()> {
    crate::vpn::require_tools()?;
    privileged::require_tools(&[("curl", "curl")])
}

/// The agent's config: XDP on `t.host_if`, default drop, `[vpn]` with `vpn_extra`, `[mfa]`
/// with `mfa_extra`, a `sales` role that needs MFA and a `staff` role that does not (both
/// reach the CRM on tcp/8080), and `peers` as `(spec, role)`.
pub(crate) struct Lab {
    pub(crate) body: String,
    scratch: TempDir,
}

impl Lab {
    pub(crate) fn new(
        t: &Topology,
        vpn_extra: &str,
        mfa_extra: &str,
        peers: &[(&PeerSpec, &str)],
    ) -> Result<Lab> {
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
{vpn_extra}

[mfa]
issuer = "ACME CRM"
portal_port = {PORTAL}
{mfa_extra}

[[role]]
name = "sales"
allow = ["tcp/{ALLOWED_TCP}"]
mfa = true

[[role]]
name = "staff"
allow = ["tcp/{ALLOWED_TCP}"]

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
        Ok(Lab { body, scratch })
    }

    fn peers_file(&self) -> PathBuf {
        self.scratch.path().join("peers.toml")
    }
}

/// `crmguard mfa enroll NAME`, and the secret of the URI it printed.
pub(crate) fn enroll(agent: &Agent, name: &str) -> Result<Vec<u8>> {
    let out = agent.cli(&["mfa", "enroll", name])?;
    ensure!(out.status.success(), "mfa enroll {name}: {out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let uri = stdout
        .lines()
        .find(|l| l.starts_with("otpauth://"))
        .with_context(|| format!("no otpauth URI in:\n{stdout}"))?;
    ensure!(
        uri.contains("issuer=ACME%20CRM") && uri.contains(&format!(":{name}?")),
        "{uri}"
    );
    totp::secret_of_uri(uri)
}

/// A code from `secret` that is right now and was not used yet: when the current step's code
/// was spent (`used`), waits for the next step.
pub(crate) fn fresh_code(secret: &[u8], used: &mut Vec<String>) -> Result<String> {
    let deadline = Instant::now() + Duration::from_secs(35);
    loop {
        let code = totp::code_now(secret)?;
        if !used.contains(&code) {
            used.push(code.clone());
            return Ok(code);
        }
        ensure!(Instant::now() < deadline, "no fresh TOTP step within 35 s");
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// A code that is wrong at every step the agent accepts (the current one and its neighbours).
fn wrong_code(secret: &[u8]) -> Result<String> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let near: Vec<String> = (0..4)
        .map(|i| totp::code_at(secret, now - 30 + i * 30))
        .collect::<Result<_>>()?;
    Ok((0..1_000_000)
        .map(|c| format!("{c:06}"))
        .find(|c| !near.contains(c))
        .unwrap_or_default())
}

/// `curl` inside `ns` against the portal: the HTTP status and the body.
pub(crate) fn portal(
    ns: &NetNs,
    method: &str,
    path: &str,
    json: Option<&str>,
) -> Result<(u16, String)> {
    let mut cmd = Command::new("curl");
    cmd.args([
        "-sS",
        "-m",
        "5",
        "-o",
        "-",
        "-w",
        "\n%{http_code}",
        "-X",
        method,
    ]);
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

/// Tries the CRM service from `ns` through the tunnel.
pub(crate) fn crm(ns: &NetNs) -> Result<TcpOutcome> {
    let dst = SocketAddr::new(IpAddr::V4(GATEWAY4), ALLOWED_TCP);
    net::tcp_connect(ns, None, dst, Duration::from_secs(3))
}

pub(crate) fn crm_answers(ns: &NetNs) -> Result<bool> {
    Ok(matches!(crm(ns)?, TcpOutcome::Connected { ref banner } if banner == "crm\n"))
}

/// The audit records of `agent` as JSON values.
pub(crate) fn audit_records(agent: &Agent) -> Result<Vec<serde_json::Value>> {
    let text = std::fs::read_to_string(agent.dir().join("audit.jsonl"))?;
    text.lines()
        .map(|line| serde_json::from_str(line).context("an audit record"))
        .collect()
}

fn has_record(records: &[serde_json::Value], kind: &str, actor: &str) -> bool {
    records
        .iter()
        .any(|r| r["type"] == kind && (r["actor"] == actor || r["detail"]["peer"] == actor))
}

/// `crmguard audit verify` on the agent's log must say ok.
pub(crate) fn audit_verifies(agent: &Agent) -> Result<()> {
    let path = agent.dir().join("audit.jsonl");
    let out = agent.cli(&["audit", "verify", &path.to_string_lossy()])?;
    ensure!(
        out.status.success(),
        "audit verify: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    Ok(())
}

/// Where a screenshot of the portal goes: `docs/img/NAME`.
fn screenshot_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../docs/img")
        .join(name)
}

/// Writes a screenshot after checking that it is a PNG.
fn save_screenshot(png: &[u8], name: &str) -> Result<()> {
    ensure!(
        png.starts_with(b"\x89PNG\r\n\x1a\n"),
        "the screenshot is not a PNG"
    );
    let path = screenshot_path(name);
    std::fs::create_dir_all(path.parent().context("docs/img")?)?;
    std::fs::write(&path, png).with_context(|| format!("writing {}", path.display()))
}

/// Chromium's flags for a Russian-speaking user: the interface language, and the
/// `Accept-Language` it sends (headless Chromium takes it from `--accept-lang` only), which
/// it sends as `ru-RU,ru;q=0.9,en-US;q=0.8,en;q=0.7`.
const RUSSIAN_BROWSER: &[&str] = &["--lang=ru", "--accept-lang=ru-RU,ru,en-US,en"];

#[test]
fn chromium_signs_in_at_the_portal_and_then_the_crm_answers() -> Result<()> {
    if !privileged::require("access::chromium_signs_in_at_the_portal_and_then_the_crm_answers") {
        return Ok(());
    }
    privileged::require_tools(&[("chromium", "chromium")])?;
    let t = Topology::dual_stack(161, 1)?;
    let alice = PeerSpec::new("alice", 2)?;
    let lab = Lab::new(
        &t,
        "",
        "session = \"12h\"\nidle = \"30m\"",
        &[(&alice, "sales")],
    )?;
    let agent = Agent::start(&t.host, &lab.body)?;
    let secret = enroll(&agent, "alice")?;
    let gateway = gateway_key(&agent)?;
    let _crm = TcpServer::start(&t.host, ALLOWED_TCP, "crm\n")?;
    let _wg = alice.connect(&t.out, &gateway, gateway_endpoint(t.addrs.host4))?;
    wait_reachable(&t.out, IpAddr::V4(GATEWAY4))?;

    // Without a session the CRM refuses at once (a reset from the ACL).
    let before = crm(&t.out)?;
    ensure!(
        before == TcpOutcome::Refused,
        "the CRM before signing in: {before:?}"
    );

    let mut browser = Browser::start(Some(t.out.name()))?;
    let mut page = browser.page()?;
    page.navigate(&format!("http://{GATEWAY4}:{PORTAL}/"), SETTLE)?;
    let shown = page.text("main")?;
    ensure!(
        shown.contains("alice") && shown.contains("No session is open"),
        "the portal page: {shown}"
    );
    let mut used = Vec::new();
    let code = fresh_code(&secret, &mut used)?;
    page.type_into("#code", &code)?;
    page.click("button[type=submit]")?;
    page.wait_for(
        "document.body.innerText.includes('Session open until')",
        SETTLE,
    )?;
    let lang = page.eval("document.documentElement.lang")?;
    ensure!(lang == "en", "<html lang> of the English page: {lang}");
    save_screenshot(&page.screenshot_png()?, "mfa-portal.png")?;
    drop(page);
    drop(browser);

    ensure!(
        crm_answers(&t.out)?,
        "the CRM after signing in: {:?}",
        crm(&t.out)?
    );
    let status = agent.status()?;
    ensure!(
        status["mfa_sessions"]["alice"].is_string(),
        "status has no session for alice: {}",
        status["mfa_sessions"]
    );
    ensure!(
        metric(&agent, "crmguard_mfa_attempts_total", &[("result", "ok")])? == 1.0,
        "crmguard_mfa_attempts_total{{result=ok}}"
    );
    ensure!(
        metric(&agent, "crmguard_vpn_peers", &[("state", "mfa_session")])? == 1.0,
        "crmguard_vpn_peers{{state=mfa_session}}"
    );

    // The JSON face of the portal, as a script sees it; then log out.
    let (code_status, body) = portal(&t.out, "GET", "/session", None)?;
    ensure!(
        code_status == 200 && body.contains("\"alice\""),
        "GET /session: {code_status} {body}"
    );
    let (code_status, body) = portal(&t.out, "DELETE", "/session", None)?;
    ensure!(
        code_status == 200 && body.contains("true"),
        "DELETE /session: {code_status} {body}"
    );
    let closed = crm(&t.out)?;
    ensure!(
        closed == TcpOutcome::Refused,
        "the CRM after logging out: {closed:?}"
    );

    // The same person with a browser set to Russian: the portal speaks Russian, the code
    // opens a session, and the page's own button ends it.
    let mut browser = Browser::start_with(Some(t.out.name()), RUSSIAN_BROWSER)?;
    let mut page = browser.page()?;
    page.navigate(&format!("http://{GATEWAY4}:{PORTAL}/"), SETTLE)?;
    let lang = page.eval("document.documentElement.lang")?;
    ensure!(lang == "ru", "<html lang> of the Russian page: {lang}");
    let shown = page.text("main")?;
    ensure!(
        shown.contains("Вы подключены как alice")
            && shown.contains("Сеанс не открыт")
            && !shown.contains("No session is open"),
        "the Russian portal page: {shown}"
    );
    let button = page.text("button[type=submit]")?;
    ensure!(button == "Открыть сеанс", "the Russian button: {button:?}");
    let code = fresh_code(&secret, &mut used)?;
    page.type_into("#code", &code)?;
    page.click("button[type=submit]")?;
    page.wait_for(
        "document.body.innerText.includes('Сеанс открыт до')",
        SETTLE,
    )?;
    save_screenshot(&page.screenshot_png()?, "mfa-portal-ru.png")?;
    ensure!(
        crm_answers(&t.out)?,
        "the CRM after signing in in Russian: {:?}",
        crm(&t.out)?
    );
    ensure!(
        metric(&agent, "crmguard_mfa_attempts_total", &[("result", "ok")])? == 2.0,
        "crmguard_mfa_attempts_total{{result=ok}} after the second sign-in"
    );
    page.click("form[action=\"/session/end\"] button")?;
    page.wait_for(
        "document.body.innerText.includes('Вы вышли: сеанс закрыт.')",
        SETTLE,
    )?;
    drop(page);
    drop(browser);
    let closed = crm(&t.out)?;
    ensure!(
        closed == TcpOutcome::Refused,
        "the CRM after logging out in Russian: {closed:?}"
    );

    // A denied packet is audited, folded per minute (flushed when the agent stops).
    let mut agent = agent;
    agent.stop()?;
    let records = audit_records(&agent)?;
    for (kind, actor) in [
        ("peer_handshake", "alice"),
        ("mfa_success", "alice"),
        ("mfa_session_end", "alice"),
        ("acl_denied", "alice"),
    ] {
        ensure!(
            has_record(&records, kind, actor),
            "no {kind} record for {actor}"
        );
    }
    audit_verifies(&agent)?;
    let log = std::fs::read_to_string(agent.dir().join("audit.jsonl"))?;
    eprintln!("--- audit log written by this test ---\n{log}--- end ---");
    tamper_with_a_real_log(&agent)?;
    Ok(())
}

/// 1,000 random single-byte edits, deletions, swaps and truncations of the agent's real log
/// are each caught; the untouched log verifies.
fn tamper_with_a_real_log(agent: &Agent) -> Result<()> {
    use crmguard_core::audit;
    let log = std::fs::read(agent.dir().join("audit.jsonl"))?;
    let key = audit::load_key(&agent.dir().join("audit.key")).context("the audit key")?;
    let checkpoint =
        audit::read_checkpoint(&agent.dir().join("state").join(audit::CHECKPOINT_FILE))?
            .context("the agent kept no checkpoint")?;
    let clean = audit::verify_bytes(&log, &key, Some(checkpoint));
    ensure!(
        clean.broken.is_none(),
        "the untouched log: {:?}",
        clean.broken
    );
    let lines: Vec<&[u8]> = log.split_inclusive(|&b| b == b'\n').collect();
    ensure!(
        lines.len() >= 5,
        "too few records to tamper with: {}",
        lines.len()
    );
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    let mut next = |n: usize| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        usize::try_from(state % u64::try_from(n).unwrap_or(1)).unwrap_or(0)
    };
    let mut caught = 0;
    for round in 0..1000 {
        let tampered: Vec<u8> = match round % 4 {
            0 => {
                let mut copy = log.clone();
                let at = next(copy.len());
                let flip = u8::try_from(1 + next(255)).unwrap_or(1);
                copy[at] ^= flip;
                copy
            }
            1 => {
                let k = next(lines.len());
                let mut copy = lines.clone();
                copy.remove(k);
                copy.concat()
            }
            2 => {
                let k = next(lines.len() - 1);
                let mut copy = lines.clone();
                copy.swap(k, k + 1);
                copy.concat()
            }
            _ => log[..next(log.len())].to_vec(),
        };
        if audit::verify_bytes(&tampered, &key, Some(checkpoint))
            .broken
            .is_some()
        {
            caught += 1;
        } else {
            bail!(
                "tampering round {round} (kind {}) was not detected",
                round % 4
            );
        }
    }
    eprintln!("audit verifier: {caught}/1000 tamperings of a real log detected");
    Ok(())
}

#[test]
fn wrong_codes_lock_the_peer_out_also_across_a_restart() -> Result<()> {
    if !privileged::require("access::wrong_codes_lock_the_peer_out_also_across_a_restart") {
        return Ok(());
    }
    let t = Topology::dual_stack(161, 3)?;
    let bob = PeerSpec::new("bob", 3)?;
    let lab = Lab::new(
        &t,
        "",
        "max_failures = 3\nlockout = \"10m\"",
        &[(&bob, "sales")],
    )?;
    let mut agent = Agent::start(&t.host, &lab.body)?;
    let secret = enroll(&agent, "bob")?;
    let gateway = gateway_key(&agent)?;
    // Outside the tunnel the portal cannot be reached, even with a route to the gateway's
    // tunnel address over the public link: nothing but WireGuard gets through there.
    let host4 = t.addrs.host4.to_string();
    let dropped = agent.counter(t.host_if.name(), "drop", "default_drop")?;
    t.out
        .ip(&["route", "add", &format!("{GATEWAY4}/32"), "via", &host4])?;
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "-m", "2", &format!("http://{GATEWAY4}:{PORTAL}/")]);
    let outside = process::output_in(&t.out, cmd)?;
    ensure!(
        !outside.status.success(),
        "the portal answered from outside the tunnel: {outside:?}"
    );
    ensure!(
        agent.counter(t.host_if.name(), "drop", "default_drop")? > dropped,
        "the XDP filter did not drop the attempt"
    );
    t.out
        .ip(&["route", "del", &format!("{GATEWAY4}/32"), "via", &host4])?;
    let _crm = TcpServer::start(&t.host, ALLOWED_TCP, "crm\n")?;
    let _wg = bob.connect(&t.out, &gateway, gateway_endpoint(t.addrs.host4))?;
    wait_reachable(&t.out, IpAddr::V4(GATEWAY4))?;

    let wrong = wrong_code(&secret)?;
    let body = format!("{{\"code\":\"{wrong}\"}}");
    for remaining in [2, 1] {
        let (status, text) = portal(&t.out, "POST", "/session", Some(&body))?;
        ensure!(
            status == 401 && text.contains(&format!("\"remaining\":{remaining}")),
            "wrong code: {status} {text}"
        );
    }
    let (status, text) = portal(&t.out, "POST", "/session", Some(&body))?;
    ensure!(status == 423, "the third wrong code: {status} {text}");
    // Locked out: even the right code is not looked at.
    let right = format!("{{\"code\":\"{}\"}}", totp::code_now(&secret)?);
    let (status, text) = portal(&t.out, "POST", "/session", Some(&right))?;
    ensure!(
        status == 423,
        "the right code while locked out: {status} {text}"
    );
    ensure!(
        crm(&t.out)? == TcpOutcome::Refused,
        "the CRM while locked out"
    );

    // The lockout is kept across a restart.
    agent.restart()?;
    wait_reachable(&t.out, IpAddr::V4(GATEWAY4))?;
    let (status, text) = portal(&t.out, "POST", "/session", Some(&right))?;
    ensure!(
        status == 423,
        "the right code after a restart: {status} {text}"
    );
    ensure!(
        metric(
            &agent,
            "crmguard_mfa_attempts_total",
            &[("result", "locked_out")]
        )? >= 1.0,
        "crmguard_mfa_attempts_total{{result=locked_out}}"
    );
    let records = audit_records(&agent)?;
    let failures = records
        .iter()
        .filter(|r| r["type"] == "mfa_failure" && r["actor"] == "bob")
        .count();
    ensure!(failures >= 4, "{failures} mfa_failure records for bob");
    audit_verifies(&agent)?;
    Ok(())
}

#[test]
fn a_session_survives_a_restart_and_then_expires() -> Result<()> {
    if !privileged::require("access::a_session_survives_a_restart_and_then_expires") {
        return Ok(());
    }
    let t = Topology::dual_stack(161, 5)?;
    let carol = PeerSpec::new("carol", 4)?;
    let lab = Lab::new(
        &t,
        "",
        "session = \"25s\"\nidle = \"1h\"",
        &[(&carol, "sales")],
    )?;
    let mut agent = Agent::start(&t.host, &lab.body)?;
    let secret = enroll(&agent, "carol")?;
    let gateway = gateway_key(&agent)?;
    let _crm = TcpServer::start(&t.host, ALLOWED_TCP, "crm\n")?;
    let _wg = carol.connect(&t.out, &gateway, gateway_endpoint(t.addrs.host4))?;
    wait_reachable(&t.out, IpAddr::V4(GATEWAY4))?;

    let mut used = Vec::new();
    let body = format!("{{\"code\":\"{}\"}}", fresh_code(&secret, &mut used)?);
    let (status, text) = portal(&t.out, "POST", "/session", Some(&body))?;
    let opened = Instant::now();
    ensure!(
        status == 200 && text.contains("\"expires\""),
        "opening: {status} {text}"
    );
    // A used code does not open a second session.
    let (status, _) = portal(&t.out, "POST", "/session", Some(&body))?;
    ensure!(status == 401, "a replayed code: {status}");
    ensure!(crm_answers(&t.out)?, "the CRM with a session");

    agent.restart()?;
    wait_for(
        SETTLE,
        "the CRM after the restart, without a new code",
        || Ok(crm_answers(&t.out)?.then_some(())),
    )?;
    ensure!(
        opened.elapsed() < Duration::from_secs(22),
        "the restart took too long to tell anything: {:?}",
        opened.elapsed()
    );

    // The session ends 25 s after the code, and access with it (the agent checks each second).
    wait_for(Duration::from_secs(30), "the session to expire", || {
        Ok((crm(&t.out)? == TcpOutcome::Refused).then_some(()))
    })?;
    let ended = opened.elapsed();
    ensure!(
        ended >= Duration::from_secs(24) && ended <= Duration::from_secs(28),
        "access closed {ended:?} after the code, the session lasts 25 s"
    );
    wait_for(SETTLE, "the mfa_session_end record", || {
        let records = audit_records(&agent)?;
        Ok(records
            .iter()
            .any(|r| {
                r["type"] == "mfa_session_end"
                    && r["actor"] == "carol"
                    && r["detail"]["reason"] == "expired"
            })
            .then_some(()))
    })?;
    Ok(())
}

/// The client configuration `peer add` printed: (private key, address, gateway key, endpoint).
fn parse_client_config(text: &str) -> Result<(String, String, String, String)> {
    let field = |name: &str| -> Result<String> {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} = ")))
            .map(|v| v.trim().to_owned())
            .with_context(|| format!("no `{name} =` in:\n{text}"))
    };
    Ok((
        field("PrivateKey")?,
        field("Address")?,
        field("PublicKey")?,
        field("Endpoint")?,
    ))
}

/// `wg pubkey` of a private key.
fn public_of(private: &str) -> Result<String> {
    Ok(crmguard_lab::wg::wg(&["pubkey"], Some(private))?
        .trim()
        .to_owned())
}

/// Pings until the peer in `ns` gets no answer, within `deadline`, then makes sure of it.
fn wait_cut(ns: &NetNs, deadline: Duration, who: &str) -> Result<Duration> {
    let start = Instant::now();
    wait_for(deadline, &format!("{who} to be cut"), || {
        Ok((!ping(ns, IpAddr::V4(GATEWAY4), Duration::from_millis(200))?).then_some(()))
    })?;
    let took = start.elapsed();
    for _ in 0..3 {
        ensure!(
            !ping(ns, IpAddr::V4(GATEWAY4), Duration::from_millis(300))?,
            "{who} still reaches the gateway"
        );
    }
    Ok(took)
}

#[test]
fn provisioned_peers_connect_and_a_disabled_peer_is_cut_within_1s() -> Result<()> {
    if !privileged::require(
        "access::provisioned_peers_connect_and_a_disabled_peer_is_cut_within_1s",
    ) {
        return Ok(());
    }
    let t = Topology::dual_stack(161, 7)?;
    let (out2, _out2_if, _host2_if, host2) = second_link(&t, 161, 7)?;
    let lab = Lab::new(&t, "", "", &[])?;
    let agent = Agent::start(&t.host, &lab.body)?;
    let gateway = gateway_key(&agent)?;
    let _crm = TcpServer::start(&t.host, ALLOWED_TCP, "crm\n")?;

    // A device that made its own keys.
    let dave_keys = genkey()?;
    let out = agent.cli(&[
        "peer",
        "add",
        "dave",
        "--role",
        "staff",
        "--public-key",
        &dave_keys.public,
    ])?;
    ensure!(out.status.success(), "peer add dave: {out:?}");
    let said = String::from_utf8_lossy(&out.stdout);
    ensure!(
        said.contains("added dave") && said.contains("10.77.0.2"),
        "{said}"
    );
    let file = std::fs::read_to_string(lab.peers_file())?;
    ensure!(file.contains(&dave_keys.public), "the peers file:\n{file}");
    let dave = WgClient::start(&t.out, &dave_keys, &["10.77.0.2/24"])?;
    dave.set_peer(&gateway, gateway_endpoint(t.addrs.host4), &["10.77.0.0/24"])?;
    wait_reachable(&t.out, IpAddr::V4(GATEWAY4))?;
    ensure!(
        crm_answers(&t.out)?,
        "the CRM for dave (staff needs no MFA)"
    );

    // A device that gets its keys from crmguard: the printed configuration works as it is.
    let out = agent.cli(&[
        "peer",
        "add",
        "erin",
        "--role",
        "staff",
        "--endpoint",
        &host2.to_string(),
        "--lang",
        "ru",
    ])?;
    ensure!(out.status.success(), "peer add erin: {out:?}");
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    // The instructions for erin are in Russian; staff needs no MFA, so no portal is named.
    for expected in [
        "Подключение WireGuard для erin\n",
        "Телефон или планшет: установите приложение WireGuard",
        "Компьютер: сохраните текст ниже в файл erin.conf",
        "Затем включите туннель",
        "Никому не передавайте эту конфигурацию",
    ] {
        ensure!(said.contains(expected), "no {expected:?} in:\n{said}");
    }
    ensure!(
        !said.contains("второй фактор") && !said.contains("Phone or tablet"),
        "{said}"
    );
    let (private, address, gateway_in_config, endpoint) = parse_client_config(&said)?;
    ensure!(
        gateway_in_config == gateway,
        "the config's gateway key {gateway_in_config}"
    );
    ensure!(
        endpoint == format!("{host2}:{WG_PORT}"),
        "the config's endpoint {endpoint}"
    );
    ensure!(
        address.starts_with("10.77.0.3/32"),
        "erin's address {address}"
    );
    ensure!(
        said.contains('\u{2580}') || said.contains('\u{2584}') || said.contains('\u{2588}'),
        "no QR code printed"
    );
    let file = std::fs::read_to_string(lab.peers_file())?;
    ensure!(
        !file.contains(&private),
        "the private key was written to the peers file"
    );
    let erin_keys = Keys {
        public: public_of(&private)?,
        private,
    };
    let erin = WgClient::start(&out2, &erin_keys, &["10.77.0.3/24"])?;
    erin.set_peer(&gateway, gateway_endpoint(host2), &["10.77.0.0/24"])?;
    wait_reachable(&out2, IpAddr::V4(GATEWAY4))?;

    // `peer list` shows both, admitted, with their key age.
    let out = agent.cli(&["peer", "list", "--json"])?;
    ensure!(out.status.success(), "peer list: {out:?}");
    let list: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let names: Vec<&str> = list
        .as_array()
        .context("a JSON array")?
        .iter()
        .filter(|p| p["state"] == "admitted" && p["key_age_days"] == 0)
        .filter_map(|p| p["name"].as_str())
        .collect();
    ensure!(names == ["dave", "erin"], "peer list: {list}");

    // Disabling dave cuts him within a second; erin keeps her tunnel.
    let out = agent.cli(&["peer", "disable", "dave"])?;
    ensure!(out.status.success(), "peer disable: {out:?}");
    let took = wait_cut(&t.out, Duration::from_secs(1), "dave")?;
    eprintln!("dave was cut {took:?} after `peer disable` returned");
    ensure!(
        ping(&out2, IpAddr::V4(GATEWAY4), Duration::from_secs(1))?,
        "erin lost the gateway"
    );
    let file = std::fs::read_to_string(lab.peers_file())?;
    ensure!(
        file.contains("enabled = false"),
        "the peers file after disable:\n{file}"
    );

    // Enabled again, he reconnects at once: the gateway starts the handshake to where it last
    // saw him instead of waiting for his client's retry timer.
    let out = agent.cli(&["peer", "enable", "dave"])?;
    ensure!(out.status.success(), "peer enable: {out:?}");
    wait_for(Duration::from_secs(3), "dave to reconnect", || {
        Ok(ping(&t.out, IpAddr::V4(GATEWAY4), Duration::from_millis(300))?.then_some(()))
    })?;

    // Removing erin cuts her within a second too.
    let out = agent.cli(&["peer", "remove", "erin"])?;
    ensure!(out.status.success(), "peer remove: {out:?}");
    wait_cut(&out2, Duration::from_secs(1), "erin")?;

    // Refusals change nothing and exit 64.
    let out = agent.cli(&[
        "peer",
        "add",
        "frank",
        "--role",
        "nosuchrole",
        "--public-key",
        &genkey()?.public,
    ])?;
    ensure!(out.status.code() == Some(64), "an unknown role: {out:?}");
    let out = agent.cli(&[
        "peer",
        "add",
        "gina",
        "--role",
        "staff",
        "--public-key",
        &dave_keys.public,
    ])?;
    ensure!(out.status.code() == Some(64), "a key in use: {out:?}");

    let records = audit_records(&agent)?;
    for (kind, peer) in [
        ("peer_added", "dave"),
        ("peer_added", "erin"),
        ("peer_disabled", "dave"),
        ("peer_removed", "erin"),
    ] {
        ensure!(
            has_record(&records, kind, peer),
            "no {kind} record for {peer}"
        );
    }
    audit_verifies(&agent)?;
    Ok(())
}

/// `YYYY-MM-DD` of `days` ago (UTC).
pub(crate) fn date_days_ago(days: u64) -> Result<String> {
    let out = Command::new("date")
        .args(["-u", "-d", &format!("{days} days ago"), "+%Y-%m-%d"])
        .output()?;
    ensure!(out.status.success(), "date: {out:?}");
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

#[test]
fn an_expired_key_is_refused_until_rekeyed_and_inactive_peers_are_disabled() -> Result<()> {
    if !privileged::require(
        "access::an_expired_key_is_refused_until_rekeyed_and_inactive_peers_are_disabled",
    ) {
        return Ok(());
    }
    let t = Topology::dual_stack(161, 9)?;
    let lab = Lab::new(
        &t,
        "key_max_age = \"30d\"\ndisable_inactive_after = \"5d\"",
        "",
        &[],
    )?;
    let old = genkey()?;
    let quiet = genkey()?;
    std::fs::write(
        lab.peers_file(),
        format!(
            "[[peer]]\nname = \"hank\"\npublic_key = \"{}\"\naddress = \"10.77.0.5\"\nrole = \"staff\"\ncreated = \"{}\"\n\n\
             [[peer]]\nname = \"ivy\"\npublic_key = \"{}\"\naddress = \"10.77.0.6\"\nrole = \"staff\"\ncreated = \"{}\"\n",
            old.public,
            date_days_ago(40)?,
            quiet.public,
            date_days_ago(10)?,
        ),
    )?;
    let agent = Agent::start(&t.host, &lab.body)?;
    let gateway = gateway_key(&agent)?;

    // Hank's key is 40 days old: the gateway does not answer his handshakes.
    let hank = WgClient::start(&t.out, &old, &["10.77.0.5/24"])?;
    hank.set_peer(&gateway, gateway_endpoint(t.addrs.host4), &["10.77.0.0/24"])?;
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        ensure!(
            !ping(&t.out, IpAddr::V4(GATEWAY4), Duration::from_millis(500))?,
            "a peer with an expired key reached the gateway"
        );
    }
    let expiry = metric(
        &agent,
        "crmguard_vpn_key_expiry_seconds",
        &[("peer", "hank")],
    )?;
    ensure!(
        expiry < -9.0 * 86_400.0,
        "crmguard_vpn_key_expiry_seconds{{peer=hank}} = {expiry}"
    );
    let status = agent.status()?;
    ensure!(
        status["vpn"]["excluded"].to_string().contains("hank"),
        "status does not list hank as refused: {}",
        status["vpn"]["excluded"]
    );

    // Ivy never made a handshake in the 10 days since her key was made: disabled (the check
    // runs every 5 s).
    wait_for(
        Duration::from_secs(12),
        "ivy to be disabled for inactivity",
        || {
            let file = std::fs::read_to_string(lab.peers_file())?;
            let ivy = file
                .split("[[peer]]")
                .find(|p| p.contains("\"ivy\""))
                .unwrap_or("");
            Ok(ivy.contains("enabled = false").then_some(()))
        },
    )?;
    wait_for(SETTLE, "the audit records of hank and ivy", || {
        let records = audit_records(&agent)?;
        let ivy = records.iter().any(|r| {
            r["type"] == "peer_disabled"
                && r["detail"]["peer"] == "ivy"
                && r["detail"]["reason"] == "inactive"
        });
        Ok((ivy && has_record(&records, "peer_expired", "hank")).then_some(()))
    })
    .with_context(|| {
        let log = std::fs::read_to_string(agent.dir().join("audit.jsonl")).unwrap_or_default();
        format!("the audit log:\n{log}")
    })?;

    // Re-keying hank (same name, new key) lets him in again, on the same address.
    drop(hank);
    let fresh = genkey()?;
    let out = agent.cli(&[
        "peer",
        "add",
        "hank",
        "--role",
        "staff",
        "--public-key",
        &fresh.public,
    ])?;
    ensure!(out.status.success(), "re-keying hank: {out:?}");
    let said = String::from_utf8_lossy(&out.stdout);
    ensure!(
        said.contains("re-keyed hank") && said.contains("10.77.0.5"),
        "{said}"
    );
    let hank = WgClient::start(&t.out, &fresh, &["10.77.0.5/24"])?;
    hank.set_peer(&gateway, gateway_endpoint(t.addrs.host4), &["10.77.0.0/24"])?;
    wait_reachable(&t.out, IpAddr::V4(GATEWAY4))?;
    let expiry = metric(
        &agent,
        "crmguard_vpn_key_expiry_seconds",
        &[("peer", "hank")],
    )?;
    ensure!(expiry > 29.0 * 86_400.0, "after re-keying: {expiry}");

    // Enabled again by an administrator, ivy gets the full period to connect: the checks
    // that follow (every 5 s) leave her enabled.
    let out = agent.cli(&["peer", "enable", "ivy"])?;
    ensure!(out.status.success(), "peer enable ivy: {out:?}");
    let enabled = Instant::now();
    while enabled.elapsed() < Duration::from_secs(11) {
        let file = std::fs::read_to_string(lab.peers_file())?;
        let ivy = file
            .split("[[peer]]")
            .find(|p| p.contains("\"ivy\""))
            .unwrap_or("");
        ensure!(
            ivy.contains("enabled = true"),
            "ivy was disabled again {:?} after `peer enable`:\n{file}",
            enabled.elapsed()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    audit_verifies(&agent)?;
    Ok(())
}

#[test]
fn the_portal_port_reaches_only_crmguards_own_portal() -> Result<()> {
    if !privileged::require("access::the_portal_port_reaches_only_crmguards_own_portal") {
        return Ok(());
    }
    let t = Topology::dual_stack(161, 3)?;
    let carol = PeerSpec::new("carol", 3)?;
    let lab = Lab::new(&t, "", "", &[(&carol, "staff")])?;

    // While crmguard's portal listens, every peer reaches it on its port.
    let mut agent = Agent::start(&t.host, &lab.body)?;
    let gateway = gateway_key(&agent)?;
    let _wg = carol.connect(&t.out, &gateway, gateway_endpoint(t.addrs.host4))?;
    wait_reachable(&t.out, IpAddr::V4(GATEWAY4))?;
    let (status, body) = portal(&t.out, "GET", "/session", None)?;
    ensure!(
        status == 200 && body.contains("\"peer\":\"carol\""),
        "crmguard's portal did not answer: {status} {body}"
    );
    agent.stop()?;

    // Another program that owns the port first keeps the portal from binding. The port is
    // then judged by the role like any other, and no role may list it: the peer gets a reset
    // and the program is not reachable through the tunnel.
    let squatter = TcpServer::start(&t.host, PORTAL, "squatter\n")?;
    agent.spawn()?;
    agent.wait_ready()?;
    wait_for(
        Duration::from_secs(10),
        "the portal to report it cannot listen",
        || Ok((!agent.status()?["portal"]["error"].is_null()).then_some(())),
    )?;
    wait_reachable(&t.out, IpAddr::V4(GATEWAY4))?;
    let dst = SocketAddr::new(IpAddr::V4(GATEWAY4), PORTAL);
    let outcome = net::tcp_connect(&t.out, None, dst, Duration::from_secs(3))?;
    ensure!(
        outcome == TcpOutcome::Refused && squatter.accepted() == 0,
        "a peer reached the portal's port while crmguard's portal was not listening: {outcome:?}, {} accepted",
        squatter.accepted()
    );
    Ok(())
}

/// Where the page of another site is served, inside the staff member's namespace.
const OTHER_SITE: u16 = 8099;

/// The English text of the portal's refusal of a cross-site request.
const CROSS_SITE_REFUSED: &str = "Requests from other sites' pages are refused";

#[test]
fn pages_of_other_sites_cannot_log_a_staff_member_out_or_spend_their_attempts() -> Result<()> {
    if !privileged::require(
        "access::pages_of_other_sites_cannot_log_a_staff_member_out_or_spend_their_attempts",
    ) {
        return Ok(());
    }
    privileged::require_tools(&[("chromium", "chromium"), ("python3", "python3")])?;
    let t = Topology::dual_stack(161, 11)?;
    let alice = PeerSpec::new("alice", 2)?;
    let lab = Lab::new(&t, "", "max_failures = 3", &[(&alice, "sales")])?;
    let agent = Agent::start(&t.host, &lab.body)?;
    let _crm = TcpServer::start(&t.host, ALLOWED_TCP, "crm\n")?;
    let secret = enroll(&agent, "alice")?;
    let gateway = gateway_key(&agent)?;
    let _wg = alice.connect(&t.out, &gateway, gateway_endpoint(t.addrs.host4))?;
    wait_reachable(&t.out, IpAddr::V4(GATEWAY4))?;
    let mut used = Vec::new();
    let code = fresh_code(&secret, &mut used)?;
    let (status, body) = portal(
        &t.out,
        "POST",
        "/session",
        Some(&format!("{{\"code\":\"{code}\"}}")),
    )?;
    ensure!(status == 200, "signing in: {status} {body}");

    // A page of another site, open in the staff member's browser, posts a log-out form to
    // the portal as soon as it loads.
    let site = tempfile::tempdir()?;
    let portal_url = format!("http://{GATEWAY4}:{PORTAL}");
    std::fs::write(
        site.path().join("logout.html"),
        format!(
            "<!doctype html><form id=f method=post action=\"{portal_url}/session/end\"></form>\
             <script>document.getElementById('f').submit()</script>"
        ),
    )?;
    let mut cmd = Command::new("python3");
    cmd.args([
        "-m",
        "http.server",
        &OTHER_SITE.to_string(),
        "--bind",
        "127.0.0.1",
    ])
    .arg("--directory")
    .arg(site.path());
    let _site_server = process::Process::spawn(&t.out, cmd, site.path(), "other-site")?;
    let page_url = format!("http://127.0.0.1:{OTHER_SITE}/logout.html");
    wait_for(SETTLE, "the other site's server", || {
        let mut curl = Command::new("curl");
        curl.args(["-sS", "-m", "2", "-o", "/dev/null", &page_url]);
        Ok(process::output_in(&t.out, curl)?
            .status
            .success()
            .then_some(()))
    })?;

    let mut browser = Browser::start(Some(t.out.name()))?;
    let mut page = browser.page()?;
    page.navigate(&page_url, SETTLE)?;
    // The form really reached the portal: the browser shows the portal's refusal.
    page.wait_for(
        &format!(
            "location.href.startsWith('{portal_url}') && document.body.innerText.includes(\"{CROSS_SITE_REFUSED}\")"
        ),
        SETTLE,
    )?;

    // A sandboxed or `data:` page posts with `Origin: null`: three wrong codes would lock
    // alice out (max_failures = 3).
    for _ in 0..3 {
        page.navigate(
            &format!(
                "data:text/html,<form id=f method=post action='{portal_url}/session'>\
                 <input name=code value=000000></form>\
                 <script>document.getElementById('f').submit()</script>"
            ),
            SETTLE,
        )?;
        page.wait_for(
            &format!(
                "location.href.startsWith('{portal_url}') && document.body.innerText.includes(\"{CROSS_SITE_REFUSED}\")"
            ),
            SETTLE,
        )?;
    }
    drop(page);
    drop(browser);

    // Alice is still signed in, was never locked out, and no attempt was counted.
    let (status, body) = portal(&t.out, "GET", "/session", None)?;
    ensure!(
        status == 200 && body.contains("\"session_expires\":\""),
        "GET /session after the other site's posts: {status} {body}"
    );
    ensure!(crm_answers(&t.out)?, "the CRM after the other site's posts");
    for result in ["wrong", "locked_out"] {
        let counted = metric(&agent, "crmguard_mfa_attempts_total", &[("result", result)])?;
        ensure!(
            counted == 0.0,
            "crmguard_mfa_attempts_total{{result={result}}} = {counted}"
        );
    }
    let records = audit_records(&agent)?;
    ensure!(
        !records
            .iter()
            .any(|r| r["type"] == "mfa_failure" || r["type"] == "mfa_session_end"),
        "the other site's posts left records: {records:?}"
    );
    Ok(())
}

/// Connections one staff device opens to the portal at once.
const PORTAL_FLOOD: usize = 5000;

#[test]
fn a_device_flooding_the_portal_does_not_keep_others_from_signing_in() -> Result<()> {
    if !privileged::require(
        "access::a_device_flooding_the_portal_does_not_keep_others_from_signing_in",
    ) {
        return Ok(());
    }
    crate::limits_fds::raise_own_limit()?;
    let t = Topology::dual_stack(161, 13)?;
    let (bob_ns, _bob_if, _bob_host_if, bob_gateway) = second_link(&t, 161, 13)?;
    let alice = PeerSpec::new("alice", 2)?;
    let bob = PeerSpec::new("bob", 3)?;
    let lab = Lab::new(&t, "", "", &[(&alice, "sales"), (&bob, "sales")])?;
    let agent = Agent::start(&t.host, &lab.body)?;
    let _crm = TcpServer::start(&t.host, ALLOWED_TCP, "crm\n")?;
    let bob_secret = enroll(&agent, "bob")?;
    let gateway = gateway_key(&agent)?;
    let _alice_wg = alice.connect(&t.out, &gateway, gateway_endpoint(t.addrs.host4))?;
    let _bob_wg = bob.connect(&bob_ns, &gateway, gateway_endpoint(bob_gateway))?;
    wait_reachable(&t.out, IpAddr::V4(GATEWAY4))?;
    wait_reachable(&bob_ns, IpAddr::V4(GATEWAY4))?;
    let pid = agent.pid().context("the agent's pid")?;
    let descriptors = || crate::limits_fds::open_descriptors(pid);
    let baseline = descriptors()?;

    // Alice's device opens connection after connection to the portal and sends nothing.
    let portal_addr = SocketAddr::new(IpAddr::V4(GATEWAY4), PORTAL);
    let (held, refused) = t
        .out
        .run_in(|| -> Result<(Vec<std::net::TcpStream>, usize)> {
            let mut held = Vec::with_capacity(PORTAL_FLOOD);
            let mut refused = 0;
            for _ in 0..PORTAL_FLOOD {
                match std::net::TcpStream::connect_timeout(&portal_addr, Duration::from_secs(5)) {
                    Ok(stream) => held.push(stream),
                    Err(_) => refused += 1,
                }
            }
            Ok((held, refused))
        })??;
    eprintln!(
        "{PORTAL_FLOOD} connections from one device: {} accepted by the kernel, {refused} refused; \
         agent descriptors {baseline} before, {} during",
        held.len(),
        descriptors()?
    );

    // Meanwhile Bob signs in, the administrator's commands answer, and the audit log takes
    // the record.
    let started = Instant::now();
    let code = fresh_code(&bob_secret, &mut Vec::new())?;
    let (status, body) = portal(
        &bob_ns,
        "POST",
        "/session",
        Some(&format!("{{\"code\":\"{code}\"}}")),
    )?;
    ensure!(
        status == 200,
        "bob signing in during the flood: {status} {body}"
    );
    let signed_in = started.elapsed();
    ensure!(crm_answers(&bob_ns)?, "the CRM for bob during the flood");
    let out = agent.cli(&["status"])?;
    ensure!(
        out.status.success(),
        "crmguard status during the flood: {out:?}"
    );
    ensure!(
        has_record(&audit_records(&agent)?, "mfa_success", "bob"),
        "no mfa_success record for bob"
    );
    audit_verifies(&agent)?;
    // The portal holds at most a bounded share of descriptors for one device.
    let during = descriptors()?;
    ensure!(
        during < baseline + 64,
        "the agent holds {during} descriptors during the flood, {baseline} before"
    );
    eprintln!("bob signed in {signed_in:?} into the flood; agent descriptors {during}");
    drop(held);
    Ok(())
}
