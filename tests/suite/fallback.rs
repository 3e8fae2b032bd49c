//! A configuration that cannot be loaded at start never leaves the host unfiltered: the agent
//! enforces the last policy it applied (saved in `state_dir`) or, without one, the embedded
//! default, and says so in `status`, in the metric `crmguard_policy_fallback` and in the audit
//! log. A ban list that cannot be read still stops the start, but only after the filter is
//! attached, with the bans already in the kernel left in force.
//!
//! The policy: default drop, `web` tcp/8080 from anywhere, the `.66` address denied through a
//! deny file. Servers listen on tcp/22 (open in the embedded default), tcp/8080 and tcp/8081
//! (which no policy opens).

use crate::firewall::{self, banner, Expect};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use crmguard_lab::agent::{metric_value, Agent};
use crmguard_lab::net::TcpServer;
use crmguard_lab::privileged;
use crmguard_lab::topology::Topology;
use crmguard_lab::wait::wait_for;
use serde_json::Value;

const SSH: u16 = 22;
const WEB: u16 = 8080;
/// A port with a listening server that no policy admits.
const CLOSED: u16 = 8081;

/// How long the agent may take to stop on its own.
const EXIT: Duration = Duration::from_secs(20);

fn deny_file(agent: &Agent) -> PathBuf {
    agent.dir().join("deny.txt")
}

/// The policy, its deny source in a deny file (`deny`: with the `[firewall.deny]` section).
fn body(t: &Topology, deny: Option<&Path>, extra: &str) -> String {
    let deny = deny.map_or_else(String::new, |path| {
        format!("[firewall.deny]\nfiles = [\"{}\"]\n", path.display())
    });
    format!(
        r#"[[interface]]
name = "{iface}"
xdp_mode = "native"

[firewall]
default = "drop"

{deny}
[[firewall.service]]
name = "web"
proto = "tcp"
ports = [{WEB}{extra}]
"#,
        iface = t.host_if.name(),
    )
}

fn servers(t: &Topology) -> Result<Vec<TcpServer>> {
    [SSH, WEB, CLOSED]
        .into_iter()
        .map(|port| TcpServer::start(&t.host, port, &banner(port)))
        .collect()
}

/// Connects from each source to each port concurrently: `true` expects the banner, `false` no
/// answer at all (the firewall tests' probe).
fn probe(t: &Topology, cases: &[(IpAddr, u16, bool)]) -> Result<()> {
    let cases: Vec<_> = cases
        .iter()
        .map(|&(src, port, answered)| {
            let expect = if answered {
                Expect::Banner
            } else {
                Expect::NoAnswer
            };
            (src, port, expect)
        })
        .collect();
    firewall::probe(t, &cases)
}

fn fallback_metric(agent: &Agent) -> Result<f64> {
    let text = agent.metrics()?;
    metric_value(&text, "crmguard_policy_fallback", &[])
        .with_context(|| format!("no crmguard_policy_fallback in\n{text}"))
}

/// Status and metric agree that `source` is enforced.
fn expect_source(agent: &Agent, source: &str) -> Result<Value> {
    let status = agent.status()?;
    ensure!(
        status["policy_source"] == source,
        "status shows policy_source {}, expected {source}",
        status["policy_source"]
    );
    let metric = fallback_metric(agent)?;
    let want = if source == "config" { 0.0 } else { 1.0 };
    ensure!(
        metric == want,
        "crmguard_policy_fallback is {metric} while enforcing {source}"
    );
    Ok(status)
}

fn cli_code(agent: &Agent, args: &[&str]) -> Result<Option<i32>> {
    Ok(agent.cli(args)?.status.code())
}

fn uninstall(t: &Topology, agent: &Agent) -> Result<()> {
    let out = agent.cli(&["uninstall"])?;
    ensure!(
        out.status.success(),
        "`crmguard uninstall` failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(
        t.host_if.xdp()?.is_none(),
        "XDP still attached after uninstall"
    );
    Ok(())
}

/// Waits until the agent stops on its own and returns how it ended.
fn wait_exit(agent: &mut Agent) -> Result<ExitStatus> {
    wait_for(EXIT, "the agent to stop", || {
        Ok((!agent.is_running()?).then_some(()))
    })?;
    agent.stop()
}

#[test]
fn a_bad_deny_file_at_start_enforces_the_last_good_policy() -> Result<()> {
    if !privileged::require("fallback::a_bad_deny_file_at_start_enforces_the_last_good_policy") {
        return Ok(());
    }
    let t = Topology::ipv4_only(180, 1)?;
    let _servers = servers(&t)?;
    let a = &t.addrs;
    let mut agent = Agent::configure(&t.host, "")?;
    let deny = deny_file(&agent);
    std::fs::write(&deny, format!("{}\n", a.denied4))?;
    let good = std::fs::read_to_string(agent.config_path())? + &body(&t, Some(&deny), "");
    crate::traffic::replace_config(&agent, &good)?;
    agent.spawn()?;
    agent.wait_ready()?;
    let enforcing = [
        (a.out4, WEB, true),
        (a.out4, CLOSED, false),
        (a.denied4, WEB, false),
    ];
    probe(&t, &enforcing)?;
    // Not under a running agent: it would go on reporting a filter that is gone.
    let out = agent.cli(&["uninstall"])?;
    ensure!(
        out.status.code() == Some(1)
            && String::from_utf8_lossy(&out.stderr).contains("an agent is running"),
        "uninstall under a running agent: {out:?}"
    );
    ensure!(
        t.host_if.xdp()?.is_some(),
        "the refused uninstall detached XDP"
    );

    // After a reboot nothing is attached; one bad line goes into the deny file.
    agent.stop()?;
    uninstall(&t, &agent)?;
    std::fs::write(&deny, format!("{}\nnot-an-address\n", a.denied4))?;
    ensure!(
        cli_code(&agent, &["check"])? == Some(64),
        "`crmguard check` accepted the bad deny file"
    );
    agent.spawn()?;
    agent.wait_ready()?;
    ensure!(t.host_if.xdp()?.is_some(), "no XDP program attached");
    let status = expect_source(&agent, "last-good")?;
    let error = status["policy_error"].as_str().unwrap_or_default();
    let place = format!("{}:2:1", deny.display());
    ensure!(
        error.contains(&place),
        "status's policy_error does not name {place}: {status}"
    );
    ensure!(
        status["audit_events"]["config_rejected"].as_u64() == Some(1),
        "no config_rejected audit record: {}",
        status["audit_events"]
    );
    probe(&t, &enforcing)?;

    // reload keeps refusing the bad file, and the fallback stays.
    ensure!(
        cli_code(&agent, &["reload"])? == Some(64),
        "`crmguard reload` accepted the bad deny file"
    );
    expect_source(&agent, "last-good")?;

    // Fixed and reloaded: out of fallback.
    std::fs::write(&deny, format!("{}\n", a.denied4))?;
    let out = agent.cli(&["reload"])?;
    ensure!(
        out.status.success(),
        "reloading the fixed configuration failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status = expect_source(&agent, "config")?;
    ensure!(
        status["policy_error"].is_null(),
        "policy_error after the fix: {status}"
    );
    probe(&t, &enforcing)?;

    // A broken deny file does not keep the filter on a host being cleaned up (the package's
    // removal runs `crmguard uninstall`).
    agent.stop()?;
    std::fs::write(&deny, "not-an-address\n")?;
    uninstall(&t, &agent)
}

#[test]
fn a_bad_config_without_a_last_good_policy_enforces_the_embedded_default() -> Result<()> {
    if !privileged::require(
        "fallback::a_bad_config_without_a_last_good_policy_enforces_the_embedded_default",
    ) {
        return Ok(());
    }
    let t = Topology::ipv4_only(180, 2)?;
    let _servers = servers(&t)?;
    let a = &t.addrs;
    // Port 0 is invalid; nothing was ever applied from this state directory.
    let mut agent = Agent::configure(&t.host, &body(&t, None, ", 0"))?;
    agent.spawn()?;
    agent.wait_ready()?;
    ensure!(t.host_if.xdp()?.is_some(), "no XDP program attached");
    let status = expect_source(&agent, "embedded")?;
    ensure!(
        status["policy_error"]
            .as_str()
            .is_some_and(|e| e.contains("firewall.service[0].ports[1]")),
        "policy_error does not name the bad key: {status}"
    );
    probe(
        &t,
        &[
            (a.out4, SSH, true),
            (a.out4, WEB, false),
            (a.out4, CLOSED, false),
        ],
    )?;
    // Under the embedded default, status says what it drops by reason and service, so that
    // the operator sees what a configuration would have to open.
    let tally = wait_for(Duration::from_secs(10), "the drop tally in status", || {
        let status = agent.status()?;
        let has = |port: u16| {
            status["drop_tally"]["entries"]
                .as_array()
                .is_some_and(|entries| {
                    entries.iter().any(|e| {
                        e["action"] == "drop"
                            && e["reason"] == "default_drop"
                            && e["service"] == format!("tcp/{port}")
                    })
                })
        };
        Ok((has(WEB) && has(CLOSED)).then_some(()))
    });
    tally.with_context(|| format!("status: {}", agent.status().unwrap_or_default()))?;
    // Nothing was saved as a last good policy from a fallback.
    ensure!(
        !agent
            .dir()
            .join("state")
            .join("last-good-policy.json")
            .exists(),
        "the embedded fallback was saved as the last good policy"
    );
    Ok(())
}

#[test]
fn an_unreadable_ban_list_stops_the_start_only_after_the_filter_is_attached() -> Result<()> {
    if !privileged::require(
        "fallback::an_unreadable_ban_list_stops_the_start_only_after_the_filter_is_attached",
    ) {
        return Ok(());
    }
    let t = Topology::ipv4_only(180, 3)?;
    let _servers = servers(&t)?;
    let a = &t.addrs;
    let mut agent = Agent::start(&t.host, &body(&t, None, ""))?;
    let banned = a.denied4.to_string();
    let out = agent.cli(&["ban", "add", &banned, "--reason", "suite test"])?;
    ensure!(
        out.status.success(),
        "ban add failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let enforcing = [
        (a.out4, WEB, true),
        (a.out4, CLOSED, false),
        (a.denied4, WEB, false),
    ];
    probe(&t, &enforcing)?;
    agent.stop()?;
    let bans = agent.dir().join("state").join("bans.json");
    std::fs::write(&bans, "{ not json")?;

    // With the filter still pinned: the start stops, the ban stays in force.
    agent.spawn()?;
    let status = wait_exit(&mut agent)?;
    ensure!(
        status.code() == Some(64),
        "the agent ended with {status:?}, expected exit 64"
    );
    ensure!(t.host_if.xdp()?.is_some(), "no XDP program attached");
    probe(&t, &enforcing)?;
    ensure!(
        std::fs::read_to_string(&bans)? == "{ not json",
        "the unreadable ban list was changed"
    );

    // After a reboot (nothing attached), the filter is attached before the start stops.
    uninstall(&t, &agent)?;
    agent.spawn()?;
    let status = wait_exit(&mut agent)?;
    ensure!(
        status.code() == Some(64),
        "the agent ended with {status:?}, expected exit 64"
    );
    ensure!(t.host_if.xdp()?.is_some(), "no XDP program attached");
    probe(&t, &[(a.out4, WEB, true), (a.out4, CLOSED, false)])
}
