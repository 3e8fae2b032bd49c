//! Ban scenarios: `crmguard ban add|list|remove` against a running agent, checked by what the
//! outside sees.
//!
//! Each test builds its own `out` / `host` namespaces (see `crmguard_lab::topology`), runs
//! `crmguard run` in `host` with a policy that opens tcp/8080 to anywhere and drops the rest,
//! bans outside addresses with the command line, and probes the open port from them: a banned
//! source gets no answer at all, any other source gets the server's banner. The command line
//! runs as root, so manual bans are recorded as `admin:root`, with the login user when the
//! suite runs under sudo from a login session (`admin:root (login alice)`).

use std::net::IpAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};
use aya::maps::{Array, HashMap, MapData};
use crmguard_lab::agent::{metric_value, Agent};
use crmguard_lab::net::{self, TcpOutcome, TcpServer};
use crmguard_lab::privileged;
use crmguard_lab::process::{self, Process};
use crmguard_lab::topology::Topology;
use crmguard_lab::wait::wait_for;
use serde_json::Value;

/// The port every outside address may reach.
const WEB: u16 = 8080;

/// An admitted connection completes well within this.
const CONNECT: Duration = Duration::from_secs(5);
/// How long a connection from a banned source is given to be answered anyway: one SYN
/// retransmission (after 1 s) falls inside it.
const NO_ANSWER: Duration = Duration::from_millis(1500);
/// How long counters, metrics and the agent's own housekeeping (the sweep every second, the
/// reconcile every 5 s) may take to show an effect.
const SETTLE: Duration = Duration::from_secs(10);
/// How long a source whose ban ended may take to be answered again.
const UNBANNED: Duration = Duration::from_secs(10);

/// Default drop; tcp/8080 from anywhere; the `.66` outside addresses on the detection
/// allowlist (which detectors never ban and manual bans only with a warning).
fn policy(t: &Topology) -> String {
    format!(
        r#"[[interface]]
name = "{iface}"
xdp_mode = "native"

[firewall]
default = "drop"

[[firewall.service]]
name = "web"
proto = "tcp"
ports = [{WEB}]

[detection]
allowlist = ["{allow4}/32", "{allow6}/128"]
"#,
        iface = t.host_if.name(),
        allow4 = t.addrs.denied4,
        allow6 = t.addrs.denied6,
    )
}

fn banner() -> String {
    format!("crmguard-test port {WEB}\n")
}

/// The topology with the web server running in `host`. Permanent neighbour entries on the
/// outside keep IPv6 working across bans of the outside's own addresses.
fn lab(x: u8) -> Result<(Topology, TcpServer)> {
    let t = Topology::dual_stack(x, 1)?;
    t.pin_neighbours()?;
    let server = TcpServer::start(&t.host, WEB, &banner())?;
    Ok((t, server))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// The connection completes and the server's banner arrives.
    Banner,
    /// Nothing answers: the SYN was dropped.
    NoAnswer,
}

/// Connects to the web port from each source concurrently and checks every outcome; every
/// failure is reported, not only the first.
fn probe(t: &Topology, cases: &[(IpAddr, Expect)]) -> Result<()> {
    let failures: Vec<String> = std::thread::scope(|scope| {
        let handles: Vec<_> = cases
            .iter()
            .map(|&(src, expect)| scope.spawn(move || probe_one(t, src, expect)))
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

fn probe_one(t: &Topology, src: IpAddr, expect: Expect) -> Result<()> {
    let dst = t.host_addr(src, WEB);
    let timeout = match expect {
        Expect::Banner => CONNECT,
        Expect::NoAnswer => NO_ANSWER,
    };
    let outcome = net::tcp_connect(&t.out, Some(src), dst, timeout)?;
    let ok = match (&outcome, expect) {
        (TcpOutcome::Connected { banner: got }, Expect::Banner) => *got == banner(),
        (TcpOutcome::TimedOut, Expect::NoAnswer) => true,
        _ => false,
    };
    ensure!(ok, "{src} -> {dst}: expected {expect:?}, got {outcome:?}");
    Ok(())
}

/// Waits until `src` is answered again, each attempt with a short timeout.
fn wait_answered(t: &Topology, src: IpAddr, what: &str) -> Result<()> {
    let dst = t.host_addr(src, WEB);
    wait_for(UNBANNED, what, || {
        match net::tcp_connect(&t.out, Some(src), dst, Duration::from_millis(500))? {
            TcpOutcome::Connected { banner: got } if got == banner() => Ok(Some(())),
            _ => Ok(None),
        }
    })
}

/// `crmguard ARGS` against the agent; fails unless it exits 0. Returns stdout.
fn cli_ok(agent: &Agent, args: &[&str]) -> Result<String> {
    let out = agent.cli(args)?;
    ensure!(
        out.status.success(),
        "`crmguard {}` failed ({}): {}{}",
        args.join(" "),
        process::describe(out.status),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Checks that `crmguard ARGS` exited `code` and said `needle` on stderr.
fn expect_exit(out: &Output, args: &[&str], code: i32, needle: &str) -> Result<()> {
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        out.status.code() == Some(code) && stderr.contains(needle),
        "`crmguard {}`: expected exit {code} and {needle:?} on stderr, got {}: {}{}",
        args.join(" "),
        process::describe(out.status),
        String::from_utf8_lossy(&out.stdout),
        stderr
    );
    Ok(())
}

/// `crmguard ban list --json`.
fn ban_list(agent: &Agent) -> Result<Vec<Value>> {
    let text = cli_ok(agent, &["ban", "list", "--json"])?;
    let value: Value = serde_json::from_str(&text)
        .with_context(|| format!("`ban list --json` printed no JSON: {text}"))?;
    value
        .as_array()
        .cloned()
        .with_context(|| format!("`ban list --json` is not a list: {text}"))
}

/// The networks `ban list --json` shows.
fn listed_nets(agent: &Agent) -> Result<Vec<String>> {
    ban_list(agent)?
        .iter()
        .map(|ban| {
            ban["net"]
                .as_str()
                .map(str::to_owned)
                .with_context(|| format!("a listed ban without a net: {ban}"))
        })
        .collect()
}

/// Waits until drop/banned on the host interface reaches `at_least` packets.
fn wait_banned_count(t: &Topology, agent: &Agent, at_least: u64) -> Result<u64> {
    let iface = t.host_if.name();
    wait_for(
        SETTLE,
        &format!("{iface} drop/banned to reach {at_least} packets"),
        || {
            let packets = agent.counter(iface, "drop", "banned")?;
            Ok((packets >= at_least).then_some(packets))
        },
    )
}

fn host(addr: IpAddr) -> String {
    match addr {
        IpAddr::V4(_) => format!("{addr}/32"),
        IpAddr::V6(_) => format!("{addr}/128"),
    }
}

#[test]
fn a_ban_drops_a_source_until_it_expires() -> Result<()> {
    if !privileged::require("bans::a_ban_drops_a_source_until_it_expires") {
        return Ok(());
    }
    let (t, _server) = lab(110)?;
    let a = t.addrs.clone();
    let agent = Agent::start(&t.host, &policy(&t))?;
    probe(&t, &[(a.out4, Expect::Banner), (a.out6, Expect::Banner)])?;
    let before = agent.counter(t.host_if.name(), "drop", "banned")?;

    // Long enough for the probe below (1.5 s) to fall inside the ban with room to spare.
    let out4 = a.out4.to_string();
    let said = cli_ok(
        &agent,
        &["ban", "add", &out4, "--ttl", "3s", "--reason", "suite test"],
    )?;
    ensure!(
        said.starts_with(&format!("banned {} until ", host(a.out4))),
        "{said}"
    );
    // A ban is per source: the other address of the same client is still answered.
    probe(&t, &[(a.out4, Expect::NoAnswer), (a.out6, Expect::Banner)])?;
    wait_banned_count(&t, &agent, before + 1)?;

    let bans = ban_list(&agent)?;
    ensure!(
        bans.len() == 1
            && bans[0]["net"] == host(a.out4)
            && bans[0]["reason"] == "suite test"
            && bans[0]["source"] == crmguard::control::caller::this_process().as_str()
            && bans[0]["expires"].is_string(),
        "ban list: {bans:?}"
    );
    let metrics = agent.metrics()?;
    let total = metric_value(&metrics, "crmguard_bans_total", &[("reason", "manual")]);
    ensure!(
        total == Some(1.0),
        "crmguard_bans_total{{reason=\"manual\"}} is {total:?}"
    );
    ensure!(
        !metrics.contains("suite test"),
        "the free-text reason became a label:\n{metrics}"
    );

    // The ban ends on its own; the sweep removes it from the list and the gauge.
    wait_answered(
        &t,
        a.out4,
        "the banned source to be answered after the ban expired",
    )?;
    wait_for(SETTLE, "the ended ban to leave `ban list`", || {
        Ok(listed_nets(&agent)?.is_empty().then_some(()))
    })?;
    wait_for(SETTLE, "crmguard_bans_active to drop to 0", || {
        let text = agent.metrics()?;
        Ok((metric_value(&text, "crmguard_bans_active", &[]) == Some(0.0)).then_some(()))
    })?;
    let status = agent.status()?;
    ensure!(
        status["bans"].as_array().is_some_and(Vec::is_empty),
        "status still lists bans: {}",
        status["bans"]
    );
    Ok(())
}

#[test]
fn the_kernel_ends_a_ban_while_the_agent_is_down() -> Result<()> {
    if !privileged::require("bans::the_kernel_ends_a_ban_while_the_agent_is_down") {
        return Ok(());
    }
    let (t, _server) = lab(111)?;
    let a = t.addrs.clone();
    let mut agent = Agent::start(&t.host, &policy(&t))?;

    cli_ok(&agent, &["ban", "add", &a.out4.to_string(), "--ttl", "4s"])?;
    // Crash: nothing of the agent runs from here on.
    agent.kill9()?;
    probe(&t, &[(a.out4, Expect::NoAnswer), (a.out6, Expect::Banner)])
        .context("the ban while the agent is down")?;
    // The kernel compares the ban's expiry with its own clock and lets the source through.
    wait_answered(&t, a.out4, "the kernel to end the ban without the agent")?;

    // A new agent drops the ban that ended while it was down, from its list and its file.
    agent.spawn()?;
    agent.wait_ready()?;
    ensure!(listed_nets(&agent)?.is_empty(), "an ended ban is listed");
    let file = std::fs::read_to_string(bans_file(&agent)).context("reading bans.json")?;
    ensure!(
        !file.contains(&a.out4.to_string()),
        "bans.json still lists the ended ban:\n{file}"
    );
    probe(&t, &[(a.out4, Expect::Banner)])?;
    Ok(())
}

fn bans_file(agent: &Agent) -> PathBuf {
    agent.dir().join("state").join("bans.json")
}

#[test]
fn bans_survive_a_restart_of_the_agent() -> Result<()> {
    if !privileged::require("bans::bans_survive_a_restart_of_the_agent") {
        return Ok(());
    }
    let (t, _server) = lab(112)?;
    let a = t.addrs.clone();
    let mut agent = Agent::start(&t.host, &policy(&t))?;

    cli_ok(
        &agent,
        &["ban", "add", &a.out4.to_string(), "--reason", "persisted"],
    )?;
    cli_ok(&agent, &["ban", "add", &a.out6.to_string(), "--ttl", "1h"])?;
    let before = ban_list(&agent)?;
    let mode = std::fs::metadata(bans_file(&agent))
        .context("bans.json after a ban")?
        .permissions()
        .mode();
    ensure!(
        mode & 0o777 == 0o600,
        "bans.json has mode {:o}",
        mode & 0o777
    );

    // Stop, and take everything out of the kernel: what comes back can only come from the
    // file.
    agent.stop()?;
    cli_ok(&agent, &["uninstall"])?;
    probe(&t, &[(a.out4, Expect::Banner), (a.out6, Expect::Banner)])
        .context("with crmguard uninstalled")?;

    agent.spawn()?;
    agent.wait_ready()?;
    let after = ban_list(&agent)?;
    ensure!(
        after == before,
        "before the restart: {before:?}\nafter: {after:?}"
    );
    let counted = agent.counter(t.host_if.name(), "drop", "banned")?;
    probe(
        &t,
        &[(a.out4, Expect::NoAnswer), (a.out6, Expect::NoAnswer)],
    )
    .context("after the restart")?;
    wait_banned_count(&t, &agent, counted + 2)?;
    Ok(())
}

#[test]
fn prefix_bans_cover_their_networks() -> Result<()> {
    if !privileged::require("bans::prefix_bans_cover_their_networks") {
        return Ok(());
    }
    let (t, _server) = lab(113)?;
    let a = t.addrs.clone();
    let agent = Agent::start(&t.host, &policy(&t))?;

    // The outside shares its /24 with the host: such a ban needs --force.
    let with_host_bits = format!("{}/24", a.out4);
    let args = ["ban", "add", with_host_bits.as_str()];
    expect_exit(&agent.cli(&args)?, &args, 64, "an address of this host")?;
    ensure!(listed_nets(&agent)?.is_empty(), "a refused ban is listed");

    // Host bits are cleared: the ban is of the network.
    let said = cli_ok(&agent, &["ban", "add", &with_host_bits, "--force"])?;
    ensure!(said.contains(&format!("banned {} ", a.admin4)), "{said}");
    ensure!(listed_nets(&agent)? == [a.admin4.clone()], "ban list");
    let before = agent.counter(t.host_if.name(), "drop", "banned")?;
    probe(
        &t,
        &[
            (a.out4, Expect::NoAnswer),
            (a.denied4, Expect::NoAnswer),
            (a.out6, Expect::Banner),
        ],
    )
    .context("with the IPv4 /24 banned")?;
    wait_banned_count(&t, &agent, before + 2)?;

    cli_ok(&agent, &["ban", "remove", &a.admin4])?;
    cli_ok(&agent, &["ban", "add", &a.admin6, "--force"])?;
    probe(
        &t,
        &[
            (a.out6, Expect::NoAnswer),
            (a.denied6, Expect::NoAnswer),
            (a.out4, Expect::Banner),
        ],
    )
    .context("with the IPv6 /64 banned")?;
    Ok(())
}

#[test]
fn an_ended_prefix_ban_does_not_hide_a_longer_one_around_it() -> Result<()> {
    if !privileged::require("bans::an_ended_prefix_ban_does_not_hide_a_longer_one_around_it") {
        return Ok(());
    }
    let (t, _server) = lab(118)?;
    let a = t.addrs.clone();
    let mut agent = Agent::start(&t.host, &policy(&t))?;
    let IpAddr::V4(out4) = a.out4 else {
        bail!("the topology's out4 is not IPv4");
    };
    let [first, second, _, _] = out4.octets();
    let outer = format!("{first}.{second}.0.0/16");
    cli_ok(&agent, &["ban", "add", &outer, "--force"])?;
    cli_ok(&agent, &["ban", "add", &a.admin4, "--force", "--ttl", "2s"])?;
    let inner_ends = Instant::now() + Duration::from_secs(2);

    // Without the agent nothing deletes the ended /24 entry; the kernel, which finds only the
    // longest matching prefix, must still see the /16.
    agent.kill9()?;
    // Nothing outside shows when the /24 ban has ended (the /16 drops the same packets), so
    // this waits for the clock.
    wait_for(SETTLE, "the /24 ban to end", || {
        Ok((Instant::now() >= inner_ends + Duration::from_millis(500)).then_some(()))
    })?;
    probe(&t, &[(a.out4, Expect::NoAnswer), (a.out6, Expect::Banner)])
        .context("after the /24 inside the banned /16 ended")?;
    Ok(())
}

#[test]
fn ban_remove_lifts_a_ban_at_once() -> Result<()> {
    if !privileged::require("bans::ban_remove_lifts_a_ban_at_once") {
        return Ok(());
    }
    let (t, _server) = lab(114)?;
    let a = t.addrs.clone();
    let agent = Agent::start(&t.host, &policy(&t))?;

    let out4 = a.out4.to_string();
    let said = cli_ok(&agent, &["ban", "add", &out4])?;
    ensure!(said.contains("until removed"), "{said}");
    probe(&t, &[(a.out4, Expect::NoAnswer)])?;

    let said = cli_ok(&agent, &["ban", "remove", &out4])?;
    ensure!(said.contains(&host(a.out4)), "{said}");
    // The first attempt after the command returns is answered.
    probe(&t, &[(a.out4, Expect::Banner)]).context("right after `ban remove`")?;
    ensure!(listed_nets(&agent)?.is_empty(), "a removed ban is listed");

    let args = ["ban", "remove", out4.as_str()];
    expect_exit(&agent.cli(&args)?, &args, 1, "is not banned")?;
    Ok(())
}

#[test]
fn ban_add_refuses_what_must_not_be_banned() -> Result<()> {
    if !privileged::require("bans::ban_add_refuses_what_must_not_be_banned") {
        return Ok(());
    }
    let (t, _server) = lab(115)?;
    let a = t.addrs.clone();
    let mut agent = Agent::start(&t.host, &policy(&t))?;

    let refused: &[(&[&str], &str)] = &[
        (&["ban", "add", "0.0.0.0/0"], "every address"),
        (&["ban", "add", "0.0.0.0/0", "--force"], "every address"),
        (&["ban", "add", "::/0", "--force"], "every address"),
        (&["ban", "add", "10.0.0.0/7"], "shorter than /8"),
        (&["ban", "add", "2001:db8::/31"], "shorter than /32"),
        (&["ban", "add", "127.0.0.1", "--force"], "loopback"),
        (&["ban", "add", "10.0.0.300"], "not an IP address or prefix"),
        (
            &["ban", "add", "203.0.113.7", "--ttl", "5x"],
            "unknown unit",
        ),
        (&["ban", "add", "203.0.113.7", "--ttl", "0s"], "is zero"),
        (&["ban", "remove", "not-an-address"], "not an IP address"),
    ];
    for (args, needle) in refused {
        expect_exit(&agent.cli(args)?, args, 64, needle)?;
    }
    ensure!(listed_nets(&agent)?.is_empty(), "a refused ban is listed");

    // An allowlisted address may be banned by hand, with a warning.
    let allowed = a.denied4.to_string();
    let args = ["ban", "add", allowed.as_str(), "--ttl", "1h"];
    expect_exit(&agent.cli(&args)?, &args, 0, "[detection] allowlist")?;
    ensure!(listed_nets(&agent)? == [host(a.denied4)], "ban list");

    // Without an agent the command fails at runtime, not as bad usage.
    agent.stop()?;
    let args = ["ban", "list"];
    expect_exit(&agent.cli(&args)?, &args, 1, "cannot reach the agent")?;
    Ok(())
}

#[test]
fn a_ban_deleted_from_the_kernel_is_restored() -> Result<()> {
    if !privileged::require("bans::a_ban_deleted_from_the_kernel_is_restored") {
        return Ok(());
    }
    let (t, _server) = lab(116)?;
    let a = t.addrs.clone();
    let agent = Agent::start(&t.host, &policy(&t))?;
    cli_ok(&agent, &["ban", "add", &a.out4.to_string()])?;

    let IpAddr::V4(out4) = a.out4 else {
        bail!("the topology's out4 is not IPv4");
    };
    let key = out4.octets();
    let path = agent.bpffs_dir().join("maps").join("cg_ban4");
    let open = || -> Result<HashMap<MapData, [u8; 4], [u8; 16]>> {
        let data =
            MapData::from_pin(&path).with_context(|| format!("opening {}", path.display()))?;
        let map = aya::maps::Map::from_map_data(data)?;
        Ok(HashMap::try_from(map)?)
    };
    let mut map = open()?;
    ensure!(map.get(&key, 0).is_ok(), "no kernel entry for {out4}");
    // An operator with bpftool deletes the entry by hand.
    map.remove(&key).context("deleting the kernel entry")?;
    probe(&t, &[(a.out4, Expect::Banner)]).context("with the kernel entry deleted")?;

    wait_for(SETTLE, "the agent to restore the kernel entry", || {
        Ok(open()?.get(&key, 0).is_ok().then_some(()))
    })?;
    probe(&t, &[(a.out4, Expect::NoAnswer)]).context("after the repair")?;

    // The flags that tell the filter which ban maps to look in are repaired too.
    let flags_path = agent.bpffs_dir().join("maps").join("cg_ban_flags");
    let open_flags = || -> Result<Array<MapData, u32>> {
        let data = MapData::from_pin(&flags_path)
            .with_context(|| format!("opening {}", flags_path.display()))?;
        Ok(Array::try_from(aya::maps::Map::from_map_data(data)?)?)
    };
    open_flags()?
        .set(0, 0, 0)
        .context("clearing cg_ban_flags")?;
    probe(&t, &[(a.out4, Expect::Banner)]).context("with cg_ban_flags cleared")?;
    wait_for(SETTLE, "the agent to restore cg_ban_flags", || {
        Ok((open_flags()?.get(&0, 0)? != 0).then_some(()))
    })?;
    probe(&t, &[(a.out4, Expect::NoAnswer)]).context("after the flags were repaired")?;
    Ok(())
}

#[test]
fn an_unreadable_ban_list_stops_the_start() -> Result<()> {
    if !privileged::require("bans::an_unreadable_ban_list_stops_the_start") {
        return Ok(());
    }
    let (t, _server) = lab(117)?;
    let agent = Agent::configure(&t.host, &policy(&t))?;
    let file = bans_file(&agent);
    std::fs::write(&file, "{\"version\":1,\"bans\":[{\"net\":").context("writing bans.json")?;

    let mut cmd = Command::new(crmguard_lab::agent::binary()?);
    cmd.arg("run").arg("--config").arg(agent.config_path());
    let mut run = Process::spawn(&t.host, cmd, agent.dir(), "crmguard-run-corrupt")?;
    // The filter is attached first: the program's verification alone takes seconds on a busy
    // machine.
    let status = wait_for(Duration::from_secs(60), "crmguard run to exit", || {
        run.try_wait()
    })?;
    ensure!(
        status.code() == Some(64),
        "crmguard run with a corrupt bans.json: {}",
        process::describe(status)
    );
    let stderr = run.stderr();
    ensure!(
        stderr.contains(&file.display().to_string()) && stderr.contains("line 1"),
        "the error does not name the file and the place: {stderr}"
    );
    // Refused, but only after the filter was attached: the host is never left unfiltered
    // (fallback.rs checks that the bans already in the kernel stay in force).
    ensure!(
        t.host_if.xdp()?.is_some(),
        "an agent that refused the ban list left the host unfiltered"
    );
    Ok(())
}

#[test]
fn manual_bans_name_the_admin_the_kernel_reports_not_the_request() -> Result<()> {
    if !privileged::require("bans::manual_bans_name_the_admin_the_kernel_reports_not_the_request") {
        return Ok(());
    }
    use std::io::{BufRead, BufReader, Write};

    let (t, _server) = lab(119)?;
    let agent = Agent::start(&t.host, &policy(&t))?;

    // `sudo crmguard ban add` by someone who logged in as `nobody`: the kernel keeps the
    // login user (loginuid) across sudo, and the agent reads it from the connection's pid.
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg("echo 65534 > /proc/self/loginuid && exec \"$0\" \"$@\"")
        .arg(crmguard_lab::agent::binary()?)
        .args(["ban", "add", "203.0.113.76", "--reason", "by a login user"])
        .arg("--config")
        .arg(agent.config_path());
    let out = process::output_in(&t.host, cmd)?;
    ensure!(out.status.success(), "ban add with a loginuid: {out:?}");

    // A client that writes someone else's name into the request.
    let mut stream = std::os::unix::net::UnixStream::connect(agent.dir().join("control.sock"))?;
    stream.set_read_timeout(Some(SETTLE))?;
    stream.write_all(
        b"{\"cmd\":\"ban_add\",\"net\":\"203.0.113.77/32\",\"ttl_secs\":null,\
          \"reason\":\"forged\",\"by\":\"admin:mallory\"}\n",
    )?;
    let mut answer = String::new();
    BufReader::new(stream).read_line(&mut answer)?;
    ensure!(
        answer.contains("\"banned\""),
        "the forged request: {answer}"
    );

    let bans = ban_list(&agent)?;
    let source_of = |net: &str| {
        bans.iter()
            .find(|ban| ban["net"] == net)
            .and_then(|ban| ban["source"].as_str())
            .map(str::to_owned)
    };
    let login = source_of("203.0.113.76/32");
    ensure!(
        login.as_deref() == Some("admin:root (login nobody)"),
        "the login user's ban: {login:?} in {bans:?}"
    );
    let forged = source_of("203.0.113.77/32");
    ensure!(
        forged
            .as_deref()
            .is_some_and(|s| s.starts_with("admin:root") && !s.contains("mallory")),
        "the forged ban: {forged:?} in {bans:?}"
    );
    Ok(())
}
