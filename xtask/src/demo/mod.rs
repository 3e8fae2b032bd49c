//! `cargo xtask demo`: crmguard filtering real connections in a lab of network namespaces.
//!
//! The demo builds the lab (lab.rs), writes a configuration (config.rs), starts real TCP
//! servers and the agent on the host side, then walks through allowed and dropped connections
//! (probe.rs) with the counters the agent reports for each, the metrics, fail-static after
//! `kill -9`, adoption on restart, a staff laptop's VPN access from `peer add` through MFA to
//! `peer disable` (vpn.rs), and `crmguard uninstall`. Every step states what it expects; the
//! demo exits non-zero when a step did not behave as expected.
//!
//! Whatever happens (an error, Ctrl-C, SIGTERM), the agent, the servers, wireguard-go, the
//! filter, the namespaces and the temporary files are removed on the way out; leftovers of a
//! demo that was killed outright are removed by the next one.

mod agent;
mod config;
mod lab;
mod probe;
mod vpn;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use self::agent::{Agent, Cli, Status};
use self::lab::{
    Host, Lab, ADMIN, ATTACKER, CUSTOMER, HOST, HOST_IF, HOST_NS, OUT_NS, STAFF, STAFF_NS,
};
use self::probe::{Outcome, Servers};
use crate::deps;
use crmguard_lab::cmd;
use crmguard_lab::workspace::Workspace;

#[derive(clap::Args)]
pub struct Args {
    /// Do not check or install Debian packages.
    #[arg(long)]
    no_deps: bool,
    /// Use this crmguard binary (for example /usr/sbin/crmguard) instead of building one.
    #[arg(long, value_name = "PATH")]
    bin: Option<PathBuf>,
}

static INTERRUPTED: LazyLock<Arc<AtomicBool>> = LazyLock::new(Arc::default);

/// Fails once Ctrl-C or SIGTERM arrived, so that the demo unwinds through its cleanup.
pub fn check_interrupt() -> Result<()> {
    if INTERRUPTED.load(Ordering::Relaxed) {
        bail!("interrupted");
    }
    Ok(())
}

pub fn run(args: &Args) -> Result<()> {
    if !args.no_deps {
        deps::ensure(deps::Task::Demo)?;
    }
    let bin = match &args.bin {
        Some(bin) => {
            std::path::absolute(bin).with_context(|| format!("cannot resolve {}", bin.display()))?
        }
        None => build()?,
    };
    if !bin.is_file() {
        bail!("{} does not exist", bin.display());
    }
    if !cmd::is_root() {
        // Namespaces, XDP and bpffs need root; the build above ran as this user.
        eprintln!("demo: the lab needs root; running it under sudo");
        let exe = std::env::current_exe().context("cannot find xtask's own path")?;
        let mut again = cmd::as_root(&exe.to_string_lossy(), &[])?;
        return cmd::run(again.args(["demo", "--no-deps", "--bin"]).arg(&bin));
    }
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, Arc::clone(&INTERRUPTED))
            .context("cannot install the Ctrl-C handler")?;
    }

    let mut demo = Demo::create(bin)?;
    let result = demo.show();
    drop(demo);
    result?;
    println!("\ndemo: every step behaved as expected; the lab is removed.");
    Ok(())
}

fn build() -> Result<PathBuf> {
    let ws = Workspace::load()?;
    cmd::run(
        ws.cargo()
            .args(["build", "--package", "crmguard", "--bin", "crmguard"]),
    )?;
    Ok(ws.bin("debug", "crmguard"))
}

/// The lab and everything in it; dropping it removes all of it.
struct Demo {
    cli: Cli,
    workdir: PathBuf,
    pin_dir: PathBuf,
    /// The namespaces; `None` until they are created and once they are removed.
    lab: Option<Lab>,
    /// A filter for this configuration may be attached or pinned: cleanup uninstalls it.
    installed: bool,
    /// Steps that did not behave as expected.
    failures: Vec<String>,
}

enum Probe {
    Tcp(u16),
    Ping,
}

enum Expect {
    Allowed,
    Dropped(&'static str),
}

#[derive(Clone, Copy)]
enum Family {
    V4,
    V6,
}
use Family::{V4, V6};

struct Step {
    from: &'static Host,
    family: Family,
    probe: Probe,
    expect: Expect,
}

const fn step(from: &'static Host, family: Family, probe: Probe, expect: Expect) -> Step {
    Step {
        from,
        family,
        probe,
        expect,
    }
}

impl Demo {
    fn create(bin: PathBuf) -> Result<Demo> {
        lab::remove_stale()?;
        lab::ensure_bpffs()?;
        let name = format!("{}{}", lab::PREFIX, std::process::id());
        let workdir = std::env::temp_dir().join(&name);
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&workdir)
            .with_context(|| format!("cannot create {}", workdir.display()))?;
        let mut demo = Demo {
            cli: Cli {
                bin,
                config: workdir.join("crmguard.toml"),
            },
            pin_dir: Path::new(lab::BPFFS).join(&name),
            workdir,
            lab: None,
            installed: false,
            failures: Vec::new(),
        };
        demo.lab = Some(Lab::create()?);
        let state_dir = demo.state_dir();
        std::fs::DirBuilder::new().mode(0o700).create(&state_dir)?;
        let text = config::render(&config::Paths {
            state_dir: &state_dir,
            bpffs_dir: &demo.pin_dir,
            control_socket: &demo.workdir.join("control.sock"),
            private_key_file: &demo.workdir.join("wg.key"),
            peers_file: &demo.workdir.join("peers.toml"),
        });
        std::fs::write(&demo.cli.config, text)
            .with_context(|| format!("cannot write {}", demo.cli.config.display()))?;
        Ok(demo)
    }

    fn show(&mut self) -> Result<()> {
        let cli = self.cli.clone();
        section("The lab");
        let rows = [
            (OUT_NS, &ADMIN, "in the admin network"),
            ("", &ATTACKER, "in the admin network, but denied"),
            ("", &CUSTOMER, "anyone on the internet"),
            (HOST_NS, &HOST, "the CRM host"),
            (
                STAFF_NS,
                &STAFF,
                "a staff laptop elsewhere, routed through cgdemo-out",
            ),
        ];
        for (ns, host, role) in rows {
            println!(
                "  {ns:<12} {:<9} {:<12} {:<13} {role}",
                host.name,
                host.v4,
                show_v6(host)
            );
        }
        println!(
            "  joined by veth pairs; crmguard's XDP filter sits on {HOST_IF}, the host's side, \
             which every packet from outside crosses"
        );

        section("Configuration");
        println!("  {}", self.cli.config.display());
        let text = std::fs::read_to_string(&self.cli.config)?;
        for line in text
            .lines()
            .filter(|line| !line.is_empty() && !line.starts_with('#'))
        {
            println!("    {line}");
        }
        self.cli.check()?;
        println!("  crmguard check: the configuration is valid");

        section("Start");
        let _servers = Servers::start(&self.workdir)?;
        println!("  servers in {HOST_NS}, verified over loopback:");
        for (port, name, _) in probe::SERVERS {
            println!("    tcp/{port:<5} {name}");
        }
        self.installed = true;
        let mut agent = Agent::start(&self.cli, &self.workdir.join("agent.log"))?;
        let status = agent.wait_ready(&self.cli, Duration::from_secs(30))?;
        println!(
            "  agent pid {} answers: policy generation {}, mode {}",
            agent.pid(),
            status.generation,
            status.mode
        );
        for iface in &status.interfaces {
            println!(
                "    interface {} attached in {} mode",
                iface.name, iface.mode
            );
        }
        self.show_xdp("ip link")?;

        section("Traffic from outside (each attempt waits at most 2 s)");
        let traffic = [
            step(&ADMIN, V4, Probe::Tcp(22), Expect::Allowed),
            step(&ADMIN, V4, Probe::Tcp(8080), Expect::Allowed),
            step(
                &ADMIN,
                V4,
                Probe::Tcp(9999),
                Expect::Dropped("default_drop"),
            ),
            step(
                &ATTACKER,
                V4,
                Probe::Tcp(22),
                Expect::Dropped("denied_source"),
            ),
            step(
                &ATTACKER,
                V4,
                Probe::Tcp(8080),
                Expect::Dropped("denied_source"),
            ),
            step(&CUSTOMER, V4, Probe::Tcp(8080), Expect::Allowed),
            step(
                &CUSTOMER,
                V4,
                Probe::Tcp(22),
                Expect::Dropped("default_drop"),
            ),
            step(&ADMIN, V6, Probe::Tcp(22), Expect::Allowed),
            step(
                &ADMIN,
                V6,
                Probe::Tcp(9999),
                Expect::Dropped("default_drop"),
            ),
            step(
                &ATTACKER,
                V6,
                Probe::Tcp(22),
                Expect::Dropped("denied_source"),
            ),
            step(&ADMIN, V4, Probe::Ping, Expect::Allowed),
            step(&ADMIN, V6, Probe::Ping, Expect::Allowed),
            step(&ATTACKER, V4, Probe::Ping, Expect::Dropped("denied_source")),
        ];
        for s in &traffic {
            self.probe(s, Some(&cli))?;
        }

        section("Counters (crmguard status --json)");
        self.show_counters()?;

        section(&format!(
            "Metrics (curl http://{}/metrics, excerpt)",
            config::METRICS
        ));
        self.show_metrics();

        section("Fail-static: kill -9 the agent");
        let before = self.xdp()?;
        let pid = agent.pid();
        eprintln!("$ kill -9 {pid}");
        agent.kill9()?;
        println!("  agent pid {pid} killed with SIGKILL; nothing manages the filter now");
        let during = self.show_xdp("ip link, agent dead")?;
        if during.is_none() {
            self.fail("the filter disappeared with the agent".to_owned());
        }
        let outage = [
            step(
                &ATTACKER,
                V4,
                Probe::Tcp(22),
                Expect::Dropped("denied_source"),
            ),
            step(&ADMIN, V4, Probe::Tcp(22), Expect::Allowed),
            step(
                &ADMIN,
                V4,
                Probe::Tcp(9999),
                Expect::Dropped("default_drop"),
            ),
        ];
        for s in &outage {
            self.probe(s, None)?;
        }

        section("Restart: the agent adopts the pinned filter");
        let mut agent = Agent::start(&self.cli, &self.workdir.join("agent-restart.log"))?;
        let status = agent.wait_ready(&self.cli, Duration::from_secs(30))?;
        println!(
            "  agent pid {} answers: policy generation {}, mode {}",
            agent.pid(),
            status.generation,
            status.mode
        );
        for iface in &status.interfaces {
            let how = match iface.adopted {
                Some(true) => "adopted from the previous agent",
                Some(false) => "attached anew",
                None => "attached",
            };
            println!("    interface {} in {} mode, {how}", iface.name, iface.mode);
            if iface.adopted == Some(false) {
                self.fail(format!(
                    "the restarted agent did not adopt the filter on {}",
                    iface.name
                ));
            }
        }
        let after = self.show_xdp("ip link, after restart")?;
        match (&before, &after) {
            (Some(old), Some(new)) if old.prog_id == new.prog_id => println!(
                "  same program (id {}): the restarted agent adopted the attached filter",
                new.prog_id
            ),
            (Some(old), Some(new)) => println!(
                "  program id {} -> {}: the restarted agent replaced the program through the \
                 pinned link",
                old.prog_id, new.prog_id
            ),
            _ => self.fail("no filter attached after the restart".to_owned()),
        }
        self.probe(
            &step(
                &ATTACKER,
                V4,
                Probe::Tcp(22),
                Expect::Dropped("denied_source"),
            ),
            Some(&cli),
        )?;
        self.probe(
            &step(&ADMIN, V4, Probe::Tcp(22), Expect::Allowed),
            Some(&cli),
        )?;

        section("VPN staff access with MFA");
        self.show_vpn()?;

        section("Uninstall");
        eprintln!("$ kill -TERM {}", agent.pid());
        agent.stop()?;
        println!("  agent stopped with SIGTERM; the filter stays attached (fail-static)");
        if self.show_xdp("ip link, agent stopped")?.is_none() {
            self.fail("SIGTERM removed the filter; it should stay attached".to_owned());
        }
        self.cli.uninstall()?;
        self.installed = false;
        if self.show_xdp("ip link, after uninstall")?.is_some() {
            self.fail("`crmguard uninstall` left the filter attached".to_owned());
        }
        let pins = pinned_objects(&self.pin_dir);
        println!(
            "  pinned objects left in {}: {}",
            self.pin_dir.display(),
            pins.len()
        );
        if !pins.is_empty() {
            self.fail(format!(
                "`crmguard uninstall` left pins: {}",
                pins.join(", ")
            ));
        }
        println!("  with the filter gone, nothing stops the attacker any more:");
        self.probe(&step(&ATTACKER, V4, Probe::Tcp(22), Expect::Allowed), None)?;

        if !self.failures.is_empty() {
            bail!(
                "{} step(s) did not behave as expected:\n  {}",
                self.failures.len(),
                self.failures.join("\n  ")
            );
        }
        Ok(())
    }

    /// Runs one probe and prints one line: the verdict, who, what, the answer, and the
    /// counters that grew meanwhile when the agent is there to report them.
    fn probe(&mut self, step: &Step, agent: Option<&Cli>) -> Result<()> {
        check_interrupt()?;
        let src = address(step.from, step.family)?;
        let dst = address(&HOST, step.family)?;
        let before = match agent {
            Some(cli) => Some(cli.status()?),
            None => None,
        };
        let (what, outcome) = match step.probe {
            Probe::Tcp(port) => (format!("tcp/{port}"), probe::tcp(OUT_NS, src, dst, port)?),
            Probe::Ping => (
                match step.family {
                    V4 => "icmp echo",
                    V6 => "icmpv6 echo",
                }
                .to_owned(),
                probe::ping(OUT_NS, src, dst)?,
            ),
        };
        let counted = match (agent, &before) {
            (Some(cli), Some(before)) => counters_grown(cli, before, &step.expect)?,
            _ => BTreeMap::new(),
        };
        // The counters that explain the outcome: pass reasons for an answer, drop reasons
        // for silence. (Neighbour discovery and the like count too; the table shows all.)
        let explains = match &outcome {
            Outcome::Answered(_) => "pass/",
            Outcome::NoAnswer => "drop/",
            Outcome::Refused => "",
        };
        let shown: Vec<String> = counted
            .iter()
            .filter(|(key, _)| key.starts_with(explains))
            .map(|(key, packets)| format!("{key} +{packets}"))
            .collect();
        let mut line = probe::line(&outcome, step.from.name, src, dst, &what);
        if !shown.is_empty() {
            line.push_str(&format!("  [{}]", shown.join(", ")));
        }
        let problem = match (&step.expect, &outcome) {
            (Expect::Allowed, Outcome::Answered(_)) => None,
            (Expect::Allowed, _) => Some("expected ALLOWED".to_owned()),
            (Expect::Dropped(reason), Outcome::NoAnswer) => {
                let key = format!("drop/{reason}");
                (agent.is_some() && !counted.contains_key(&key))
                    .then(|| format!("expected a {key} count"))
            }
            (Expect::Dropped(reason), _) => Some(format!("expected DROPPED ({reason})")),
        };
        if let Some(problem) = problem {
            line.push_str(&format!("  << UNEXPECTED: {problem}"));
            self.fail(format!(
                "{} {src} -> {dst} {what}: {problem}",
                step.from.name
            ));
        }
        println!("{line}");
        Ok(())
    }

    fn show_counters(&mut self) -> Result<()> {
        let status = self.cli.status()?;
        println!(
            "  {:<12} {:<10} {:<16} {:>8} {:>10}",
            "interface", "action", "reason", "packets", "bytes"
        );
        let rows: Vec<_> = status.counters.iter().filter(|c| c.packets > 0).collect();
        for c in &rows {
            println!(
                "  {:<12} {:<10} {:<16} {:>8} {:>10}",
                c.interface, c.action, c.reason, c.packets, c.bytes
            );
        }
        if rows.is_empty() {
            self.fail("the agent reports no counted packets".to_owned());
        }
        Ok(())
    }

    fn show_metrics(&mut self) {
        const SHOWN: &[&str] = &[
            "crmguard_build_info",
            "crmguard_xdp_attached",
            "crmguard_policy_generation",
            "crmguard_policy_divergence_entries",
            "crmguard_xdp_packets_total",
        ];
        let url = format!("http://{}/metrics", config::METRICS);
        let text = match probe::http_get_in_host(&url) {
            Ok(text) => text,
            Err(err) => {
                self.fail(format!("GET {url}: {err:#}"));
                return;
            }
        };
        let lines: Vec<&str> = text
            .lines()
            .filter(|line| SHOWN.iter().any(|name| line.starts_with(name)))
            .filter(|line| {
                !(line.starts_with("crmguard_xdp_packets_total") && line.ends_with(" 0"))
            })
            .take(24)
            .collect();
        for line in &lines {
            println!("  {line}");
        }
        if lines.is_empty() {
            self.fail(format!("{url} serves none of {}", SHOWN.join(", ")));
        }
    }

    fn show_xdp(&self, label: &str) -> Result<Option<lab::Xdp>> {
        let xdp = self.xdp()?;
        match &xdp {
            Some(xdp) => println!("  {label}: XDP on {HOST_IF}: {xdp}"),
            None => println!("  {label}: no XDP program on {HOST_IF}"),
        }
        Ok(xdp)
    }

    /// What is attached at XDP on the host-side interface.
    fn xdp(&self) -> Result<Option<lab::Xdp>> {
        self.lab
            .as_ref()
            .context("the lab is not there")?
            .xdp_on_host_if()
    }

    fn fail(&mut self, problem: String) {
        self.failures.push(problem);
    }

    /// The agent's `state_dir`: peers' MFA secrets and sessions, bans, the audit log.
    fn state_dir(&self) -> PathBuf {
        self.workdir.join("state")
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        println!("\ndemo: removing the lab");
        if self.installed {
            if let Err(err) = self.cli.uninstall() {
                eprintln!("demo: {err:#}");
            }
        }
        drop(self.lab.take());
        for dir in [&self.pin_dir, &self.workdir] {
            if dir.exists() {
                if let Err(err) = std::fs::remove_dir_all(dir) {
                    eprintln!("demo: cannot remove {}: {err}", dir.display());
                }
            }
        }
    }
}

/// The counters that grew since `before`, per `action/reason`. For an expected drop the agent
/// is polled for up to 2 s, in case it reads the kernel's counters periodically.
fn counters_grown(cli: &Cli, before: &Status, expect: &Expect) -> Result<BTreeMap<String, u64>> {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let growth = cli.status()?.growth_since(before);
        let done = match expect {
            Expect::Dropped(reason) => growth.contains_key(&format!("drop/{reason}")),
            Expect::Allowed => true,
        };
        if done || Instant::now() >= deadline {
            return Ok(growth);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn address(host: &Host, family: Family) -> Result<IpAddr> {
    match family {
        V4 => Ok(host.v4),
        V6 => host
            .v6
            .with_context(|| format!("the {} has no IPv6 address in the lab", host.name)),
    }
}

fn show_v6(host: &Host) -> String {
    host.v6.map(|v6| v6.to_string()).unwrap_or_default()
}

fn section(title: &str) {
    println!("\n== {title} ==");
}

/// Names of whatever is still pinned under `dir`.
fn pinned_objects(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .filter_map(|entry| entry.ok())
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}
