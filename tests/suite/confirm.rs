//! `crmguard reload --confirm DURATION`: a policy change that undoes itself unless `crmguard
//! confirm` keeps it in time.
//!
//! Policy A opens udp/7103 from anywhere; policy B is A plus tcp/7104. A UDP stream to udp/7103
//! flows the whole time: every datagram sent must arrive, through the swap to B and the swap
//! back (no gap in filtering). tcp/7104 answers while B is pending and is dropped again once A
//! is back. After a rollback the files on disk still hold B, so a restarted agent enforces the
//! last confirmed policy, A; after a confirmation it enforces B.

use std::net::SocketAddr;
use std::process::Output;
use std::time::{Duration, SystemTime};

use anyhow::{ensure, Context, Result};
use crmguard_lab::agent::{metric_value, Agent};
use crmguard_lab::net::{self, TcpOutcome, TcpServer};
use crmguard_lab::privileged;
use crmguard_lab::topology::Topology;
use crmguard_lab::wait::wait_for;
use serde_json::Value;

use crate::traffic::{self, Flood, FloodReport, Receiver, SETTLE};

/// Open in both policies: the stream that must not lose a datagram.
const BOTH: u16 = 7103;
/// Open in B only.
const NEW_ONLY: u16 = 7104;

const CONNECT: Duration = Duration::from_secs(2);

fn policy(t: &Topology, extra: &str) -> String {
    format!(
        r#"[[interface]]
name = "{iface}"
xdp_mode = "native"

[firewall]
default = "drop"

[firewall.limits]
per_source_pps = 1000000
per_source_burst = 1000000

[[firewall.service]]
name = "stream"
proto = "udp"
ports = [{BOTH}]
{extra}"#,
        iface = t.host_if.name(),
    )
}

fn policy_a(t: &Topology) -> String {
    policy(t, "")
}

fn policy_b(t: &Topology) -> String {
    policy(
        t,
        &format!(
            r#"
[[firewall.service]]
name = "new"
proto = "tcp"
ports = [{NEW_ONLY}]
"#
        ),
    )
}

/// The stream through both policies and the server of the port only B opens.
struct Lab<'t> {
    t: &'t Topology,
    receiver: Receiver,
    stream: Flood,
    _server: TcpServer,
}

impl<'t> Lab<'t> {
    fn start(t: &'t Topology) -> Result<Self> {
        let receiver = Receiver::start(&t.host, BOTH)?;
        let _server = TcpServer::start(&t.host, NEW_ONLY, "new\n")?;
        let stream = Flood::start(
            &t.out,
            t.addrs.out4,
            t.host_addr(t.addrs.out4, BOTH),
            vec![0x5a; 32],
            1,
            Duration::from_millis(2),
        )?;
        wait_for(SETTLE, "the stream to be under way", || {
            Ok((receiver.total() >= 50).then_some(()))
        })?;
        Ok(Lab {
            t,
            receiver,
            stream,
            _server,
        })
    }

    fn new_port(&self) -> Result<TcpOutcome> {
        net::tcp_connect(
            &self.t.out,
            Some(self.t.addrs.out4),
            self.t.host_addr(self.t.addrs.out4, NEW_ONLY),
            CONNECT,
        )
    }

    /// Stops the stream and checks that every datagram arrived.
    fn lost(self) -> Result<u64> {
        let FloodReport { sent, .. } = self.stream.stop();
        let receiver = self.receiver;
        // Whatever is still on its way arrives within the deadline; a lost datagram never does.
        let _ = wait_for(SETTLE, "every datagram of the stream to arrive", || {
            Ok((receiver.total() >= sent).then_some(()))
        });
        eprintln!("stream: {sent} sent, {} received", receiver.total());
        Ok(sent.saturating_sub(receiver.total()))
    }
}

fn text(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn generation(status: &Value) -> Result<u64> {
    status["generation"]
        .as_u64()
        .with_context(|| format!("no generation in {status}"))
}

fn metric(agent: &Agent, name: &str) -> Result<f64> {
    let text = agent.metrics()?;
    metric_value(&text, name, &[]).with_context(|| format!("no {name} in\n{text}"))
}

fn audit_types(agent: &Agent) -> Result<Vec<String>> {
    let log = std::fs::read_to_string(agent.dir().join("audit.jsonl"))?;
    log.lines()
        .map(|line| {
            let record: Value = serde_json::from_str(line)?;
            Ok(record["type"].as_str().unwrap_or_default().to_owned())
        })
        .collect()
}

/// Applies B with `reload --confirm TIMEOUT` and checks that it is pending.
fn reload_pending(agent: &Agent, t: &Topology, timeout: &str) -> Result<Value> {
    traffic::replace_config(agent, &traffic::config_with_body(agent, &policy_b(t))?)?;
    let out = agent.cli(&["reload", "--confirm", timeout])?;
    ensure!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("PENDING"),
        "reload --confirm {timeout}: {}",
        text(&out)
    );
    let status = agent.status()?;
    ensure!(
        status["pending_change"]["deadline"].is_string(),
        "status shows no pending change: {status}"
    );
    let shown = agent.cli(&["status"])?;
    ensure!(
        String::from_utf8_lossy(&shown.stdout).contains("PENDING CHANGE"),
        "status text shows no pending change: {}",
        text(&shown)
    );
    ensure!(
        metric(agent, "crmguard_policy_change_pending")? == 1.0,
        "crmguard_policy_change_pending is not 1 while a change is pending"
    );
    Ok(status)
}

#[test]
fn an_unconfirmed_change_is_rolled_back_without_a_gap() -> Result<()> {
    if !privileged::require("confirm::an_unconfirmed_change_is_rolled_back_without_a_gap") {
        return Ok(());
    }
    let t = Topology::ipv4_only(210, 1)?;
    let mut agent = Agent::start(&t.host, &policy_a(&t))?;
    let lab = Lab::start(&t)?;
    let g0 = generation(&agent.status()?)?;
    ensure!(
        lab.new_port()? == TcpOutcome::TimedOut,
        "tcp/{NEW_ONLY} answers under policy A"
    );

    let pending = reload_pending(&agent, &t, "3s")?;
    ensure!(generation(&pending)? == g0 + 1, "pending: {pending}");
    ensure!(
        matches!(lab.new_port()?, TcpOutcome::Connected { .. }),
        "tcp/{NEW_ONLY} does not answer under the pending policy B"
    );

    // The deadline passes: A again, as a new generation, through the same swap.
    let status = wait_for(SETTLE, "the unconfirmed change to be rolled back", || {
        let status = agent.status()?;
        Ok(status["pending_change"].is_null().then_some(status))
    })?;
    ensure!(generation(&status)? == g0 + 2, "after rollback: {status}");
    ensure!(
        status["last_rollback"].is_string(),
        "status shows no rollback: {status}"
    );
    ensure!(
        lab.new_port()? == TcpOutcome::TimedOut,
        "tcp/{NEW_ONLY} still answers after the rollback"
    );
    let lost = lab.lost()?;
    ensure!(
        lost == 0,
        "{lost} datagrams of a stream both policies admit were lost"
    );

    ensure!(metric(&agent, "crmguard_policy_rollbacks_total")? == 1.0);
    ensure!(metric(&agent, "crmguard_policy_change_pending")? == 0.0);
    let confirm = agent.cli(&["confirm"])?;
    ensure!(
        confirm.status.code() == Some(1)
            && String::from_utf8_lossy(&confirm.stderr).contains("nothing to confirm"),
        "confirm after the rollback: {}",
        text(&confirm)
    );
    let types = audit_types(&agent)?;
    ensure!(
        types.iter().any(|t| t == "policy_pending")
            && types.iter().any(|t| t == "policy_rolled_back")
            && !types.iter().any(|t| t == "policy_confirmed"),
        "audit records: {types:?}"
    );

    // The file still holds B, which was never confirmed: a restart enforces A, the last good.
    agent.restart()?;
    let status = agent.status()?;
    ensure!(
        status["policy_source"] == "last-good",
        "after a restart: {status}"
    );
    let lab = Lab::start(&t)?;
    ensure!(
        lab.new_port()? == TcpOutcome::TimedOut,
        "tcp/{NEW_ONLY} answers after a restart: the unconfirmed policy came back"
    );
    // A plain reload is the administrator's word that the files are good.
    let reload = agent.cli(&["reload"])?;
    ensure!(reload.status.success(), "reload: {}", text(&reload));
    ensure!(
        matches!(lab.new_port()?, TcpOutcome::Connected { .. }),
        "tcp/{NEW_ONLY} does not answer after a plain reload"
    );
    ensure!(agent.status()?["policy_source"] == "config");
    ensure!(lab.lost()? == 0, "datagrams lost in the plain reload");
    Ok(())
}

#[test]
fn a_confirmed_change_stays_and_becomes_the_last_good_policy() -> Result<()> {
    if !privileged::require("confirm::a_confirmed_change_stays_and_becomes_the_last_good_policy") {
        return Ok(());
    }
    let t = Topology::ipv4_only(210, 2)?;
    let mut agent = Agent::start(&t.host, &policy_a(&t))?;
    let lab = Lab::start(&t)?;
    let g0 = generation(&agent.status()?)?;

    let pending = reload_pending(&agent, &t, "4s")?;
    let deadline = pending["pending_change"]["deadline"]
        .as_str()
        .context("deadline")?
        .to_owned();
    ensure!(
        matches!(lab.new_port()?, TcpOutcome::Connected { .. }),
        "tcp/{NEW_ONLY} does not answer under the pending policy B"
    );

    // One change at a time: a second `reload --confirm` and a plain reload are refused.
    for args in [&["reload", "--confirm", "60s"][..], &["reload"][..]] {
        let out = agent.cli(args)?;
        ensure!(
            out.status.code() == Some(64)
                && String::from_utf8_lossy(&out.stderr).contains("crmguard confirm"),
            "{args:?} while a change is pending: {}",
            text(&out)
        );
    }

    let confirm = agent.cli(&["confirm"])?;
    ensure!(confirm.status.success(), "confirm: {}", text(&confirm));
    let status = agent.status()?;
    ensure!(
        status["pending_change"].is_null(),
        "still pending: {status}"
    );

    // Past the old deadline nothing rolls back.
    let past = SystemTime::now() + Duration::from_secs(5);
    wait_for(SETTLE, "the old deadline to pass", || {
        Ok((SystemTime::now() >= past).then_some(()))
    })?;
    let status = agent.status()?;
    ensure!(
        generation(&status)? == g0 + 1 && status["last_rollback"].is_null(),
        "after confirming before {deadline}: {status}"
    );
    ensure!(
        matches!(lab.new_port()?, TcpOutcome::Connected { .. }),
        "tcp/{NEW_ONLY} stopped answering after the confirmation"
    );
    ensure!(metric(&agent, "crmguard_policy_rollbacks_total")? == 0.0);
    ensure!(metric(&agent, "crmguard_policy_change_pending")? == 0.0);
    let lost = lab.lost()?;
    ensure!(
        lost == 0,
        "{lost} datagrams of a stream both policies admit were lost"
    );
    let types = audit_types(&agent)?;
    ensure!(
        types.iter().any(|t| t == "policy_pending")
            && types.iter().any(|t| t == "policy_confirmed")
            && !types.iter().any(|t| t == "policy_rolled_back"),
        "audit records: {types:?}"
    );
    let again = agent.cli(&["confirm"])?;
    ensure!(
        again.status.code() == Some(1),
        "a second confirm: {}",
        text(&again)
    );

    // Confirmed means last good: a restart enforces B from the files.
    agent.restart()?;
    let status = agent.status()?;
    ensure!(
        status["policy_source"] == "config",
        "after a restart: {status}"
    );
    let snapshot = std::fs::read_to_string(agent.dir().join("state/last-good-policy.json"))?;
    ensure!(
        snapshot.contains(&format!("ports = [{NEW_ONLY}]")),
        "the last good policy is not the confirmed one"
    );
    let _server = TcpServer::start(&t.host, NEW_ONLY, "new\n")?;
    let addr: SocketAddr = t.host_addr(t.addrs.out4, NEW_ONLY);
    let outcome = net::tcp_connect(&t.out, Some(t.addrs.out4), addr, CONNECT)?;
    ensure!(
        matches!(outcome, TcpOutcome::Connected { .. }),
        "tcp/{NEW_ONLY} after a restart: {outcome:?}"
    );
    Ok(())
}

/// The mark of an unconfirmed change is what a restart trusts: an agent killed while a change
/// is pending comes back with the last confirmed policy, not the files.
#[test]
fn an_agent_killed_while_a_change_is_pending_comes_back_with_the_last_good_policy() -> Result<()> {
    if !privileged::require(
        "confirm::an_agent_killed_while_a_change_is_pending_comes_back_with_the_last_good_policy",
    ) {
        return Ok(());
    }
    let t = Topology::ipv4_only(210, 3)?;
    let mut agent = Agent::start(&t.host, &policy_a(&t))?;
    let _server = TcpServer::start(&t.host, NEW_ONLY, "new\n")?;
    reload_pending(&agent, &t, "600s")?;
    agent.kill9()?;
    agent.spawn()?;
    agent.wait_ready()?;
    let status = agent.status()?;
    ensure!(
        status["policy_source"] == "last-good"
            && status["policy_error"]
                .as_str()
                .is_some_and(|e| e.contains("never confirmed")),
        "after a restart during a pending change: {status}"
    );
    let outcome = net::tcp_connect(
        &t.out,
        Some(t.addrs.out4),
        t.host_addr(t.addrs.out4, NEW_ONLY),
        CONNECT,
    )?;
    ensure!(
        outcome == TcpOutcome::TimedOut,
        "tcp/{NEW_ONLY} after a restart: {outcome:?}"
    );
    Ok(())
}

/// The keys the endpoint admits, as `wg show IFACE peers` lists them.
fn admitted(agent: &Agent) -> Result<Vec<String>> {
    let out = crmguard_lab::wg::wg(&["show", agent.vpn_interface(), "peers"], None)?;
    Ok(out.lines().map(str::to_owned).collect())
}

/// A device disabled while a `reload --confirm` change waits is cut at once (the reload the
/// edit asks for is refused while the change waits), and the rollback does not bring it back:
/// the configuration it restores is cut the same way.
#[test]
fn a_peer_cut_while_a_change_is_pending_stays_cut_after_the_rollback() -> Result<()> {
    if !privileged::require(
        "confirm::a_peer_cut_while_a_change_is_pending_stays_cut_after_the_rollback",
    ) {
        return Ok(());
    }
    privileged::require_tools(&[("wg", "wireguard-tools")])?;
    let t = Topology::ipv4_only(210, 4)?;
    let scratch = tempfile::tempdir()?;
    let vpn = format!(
        "\n[vpn]\nlisten_port = 51877\naddress = \"10.77.0.1/24\"\n\
         private_key_file = \"{dir}/wg.key\"\npeers_file = \"{dir}/peers.toml\"\n\n\
         [[role]]\nname = \"staff\"\nallow = [\"tcp/{NEW_ONLY}\"]\n",
        dir = scratch.path().display()
    );
    let agent = Agent::start(&t.host, &(policy_a(&t) + &vpn))?;
    let add = agent.cli(&["peer", "add", "eve", "--role", "staff"])?;
    ensure!(add.status.success(), "peer add: {}", text(&add));
    let eve = wait_for(SETTLE, "eve to be admitted", || {
        let keys = admitted(&agent)?;
        Ok((keys.len() == 1).then(|| keys[0].clone()))
    })?;

    traffic::replace_config(
        &agent,
        &traffic::config_with_body(&agent, &(policy_b(&t) + &vpn))?,
    )?;
    let out = agent.cli(&["reload", "--confirm", "4s"])?;
    ensure!(out.status.success(), "reload --confirm: {}", text(&out));
    let disable = agent.cli(&["peer", "disable", "eve"])?;
    ensure!(
        admitted(&agent)?.is_empty(),
        "eve ({eve}) is admitted after `peer disable`: {}",
        text(&disable)
    );

    wait_for(SETTLE, "the unconfirmed change to be rolled back", || {
        Ok(agent.status()?["pending_change"].is_null().then_some(()))
    })?;
    ensure!(
        agent.status()?["last_rollback"].is_string(),
        "no rollback happened"
    );
    let keys = admitted(&agent)?;
    ensure!(keys.is_empty(), "the rollback admitted {keys:?} again");
    Ok(())
}
