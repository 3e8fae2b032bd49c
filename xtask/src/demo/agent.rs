//! The crmguard daemon inside the lab, and the CLI calls the demo makes to it: `check`,
//! `status --json`, `uninstall`, and the administrator's commands the VPN section shows.
//!
//! The daemon runs in the host namespace's network only (see lab.rs), in a process group of its
//! own so that Ctrl-C reaches the demo, which then stops it in order. Its WireGuard device gets
//! the lab's own name, because the control sockets of userspace WireGuard devices share one
//! directory across namespaces.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use crmguard_lab::process::{self, Process};
use nix::unistd::Pid;
use serde_json::Value;

use super::lab::{GATEWAY_WG_IF, HOST_NS};
use crmguard_lab::cmd;
use crmguard_lab::netns::nsenter;

/// Renames the agent's WireGuard TUN device (crmguard's `vpn::INTERFACE_ENV`).
const VPN_INTERFACE_ENV: &str = "CRMGUARD_VPN_INTERFACE";

/// How long the agent has to exit after SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// The crmguard binary and the configuration file every call uses.
#[derive(Clone)]
pub struct Cli {
    pub bin: PathBuf,
    pub config: PathBuf,
}

impl Cli {
    fn command(&self, subcommand: &str) -> Command {
        let mut cmd = Command::new(&self.bin);
        cmd.arg(subcommand).arg("--config").arg(&self.config);
        cmd
    }

    /// `crmguard check`: the configuration is valid, or its problems are the error.
    pub fn check(&self) -> Result<()> {
        let mut check = self.command("check");
        let out = cmd::output(&mut check)?;
        if !out.status.success() {
            bail!(
                "`{}` rejected the demo configuration ({}):\n{}{}",
                cmd::display(&check),
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    /// `crmguard status --json`, parsed.
    pub fn status(&self) -> Result<Status> {
        let text = cmd::stdout_of(self.command("status").arg("--json"))?;
        let value: Value =
            serde_json::from_str(&text).context("`crmguard status --json` printed no JSON")?;
        Ok(Status::from_json(&value))
    }

    /// `crmguard --config FILE ARGS...`, as an administrator types it on the host.
    pub fn admin(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.bin);
        cmd.arg("--config").arg(&self.config).args(args);
        cmd
    }

    /// `crmguard uninstall`, run in the host namespace where the interfaces are.
    pub fn uninstall(&self) -> Result<()> {
        let mut uninstall = nsenter(HOST_NS, &self.bin);
        uninstall.arg("uninstall").arg("--config").arg(&self.config);
        cmd::run(&mut uninstall)
    }
}

/// `crmguard run` in the host namespace; stopped with SIGTERM when dropped.
pub struct Agent {
    process: Process,
    log: PathBuf,
}

impl Agent {
    /// Starts `crmguard run` in the host namespace, its output going to `log`.
    pub fn start(cli: &Cli, log: &Path) -> Result<Agent> {
        let mut run = nsenter(HOST_NS, &cli.bin);
        run.arg("run")
            .arg("--config")
            .arg(&cli.config)
            .env(VPN_INTERFACE_ENV, GATEWAY_WG_IF);
        eprintln!(
            "$ {VPN_INTERFACE_ENV}={GATEWAY_WG_IF} {} >{} 2>&1 &",
            cmd::display(&run),
            log.display()
        );
        let process = Process::spawn_logged(run, "the agent", log, STOP_GRACE)?;
        Ok(Agent {
            process,
            log: log.to_path_buf(),
        })
    }

    pub fn pid(&self) -> Pid {
        self.process.pid()
    }

    /// Polls `crmguard status` until it answers, the agent exits, or `timeout` passes.
    pub fn wait_ready(&mut self, cli: &Cli, timeout: Duration) -> Result<Status> {
        let deadline = Instant::now() + timeout;
        loop {
            super::check_interrupt()?;
            if let Some(status) = self.process.try_wait()? {
                bail!(
                    "the agent exited ({}) before it answered\n{}",
                    process::describe(status),
                    self.log_tail()
                );
            }
            let last_error = match cli.status() {
                Ok(status) => return Ok(status),
                Err(err) => err,
            };
            if Instant::now() >= deadline {
                bail!(
                    "the agent did not answer `crmguard status` within {timeout:?}: {last_error:#}\n{}",
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGKILL: the agent gets no chance to clean up, like a crash or the OOM killer.
    pub fn kill9(mut self) -> Result<()> {
        self.process.kill9().map(drop)
    }

    /// SIGTERM and wait: the agent exits and leaves the filter attached.
    pub fn stop(mut self) -> Result<()> {
        let status = self.process.terminate(STOP_GRACE)?;
        if !status.success() {
            eprintln!(
                "demo: the agent exited with {}\n{}",
                process::describe(status),
                self.log_tail()
            );
        }
        Ok(())
    }

    /// The last lines of the agent's log, for error messages.
    pub fn log_tail(&self) -> String {
        format!(
            "--- last lines of {} ---\n{}",
            self.log.display(),
            self.process.log_tail(20)
        )
    }
}

/// What `crmguard status --json` reports, as far as the demo shows it.
pub struct Status {
    pub generation: u64,
    pub mode: String,
    pub interfaces: Vec<Interface>,
    pub counters: Vec<Counter>,
    /// The WireGuard gateway, when `[vpn]` is configured.
    pub vpn: Option<Vpn>,
}

/// The WireGuard gateway as `status --json` reports it.
pub struct Vpn {
    pub running: bool,
    /// Why the gateway does not run, when it does not.
    pub error: Option<String>,
    pub interface: String,
    pub listen_port: u64,
    /// The gateway's public key in base64, as clients configure it.
    pub public_key: Option<String>,
}

pub struct Interface {
    pub name: String,
    pub mode: String,
    /// Whether the agent found this interface's filter pinned by an earlier agent.
    pub adopted: Option<bool>,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Counter {
    pub interface: String,
    pub action: String,
    pub reason: String,
    pub packets: u64,
    pub bytes: u64,
}

impl Status {
    fn from_json(value: &Value) -> Status {
        let text = |value: &Value| value.as_str().unwrap_or("?").to_owned();
        let list = |key: &str| value[key].as_array().cloned().unwrap_or_default();
        let mut counters: Vec<Counter> = list("counters")
            .iter()
            .map(|c| Counter {
                interface: text(&c["interface"]),
                action: text(&c["action"]),
                reason: text(&c["reason"]),
                packets: c["packets"].as_u64().unwrap_or(0),
                bytes: c["bytes"].as_u64().unwrap_or(0),
            })
            .collect();
        counters.sort();
        Status {
            generation: value["generation"].as_u64().unwrap_or(0),
            mode: text(&value["mode"]),
            interfaces: list("interfaces")
                .iter()
                .map(|i| Interface {
                    name: text(&i["name"]),
                    mode: text(&i["mode"]),
                    adopted: i["adopted"].as_bool(),
                })
                .collect(),
            counters,
            vpn: value
                .get("vpn")
                .filter(|vpn| vpn.is_object())
                .map(|vpn| Vpn {
                    running: vpn["running"].as_bool().unwrap_or(false),
                    error: vpn["error"].as_str().map(str::to_owned),
                    interface: text(&vpn["interface"]),
                    listen_port: vpn["listen_port"].as_u64().unwrap_or(0),
                    public_key: vpn["public_key"].as_str().map(str::to_owned),
                }),
        }
    }

    /// Packets counted per `action/reason` since `before`, only those that grew.
    pub fn growth_since(&self, before: &Status) -> BTreeMap<String, u64> {
        let sum = |status: &Status| {
            let mut sums: BTreeMap<String, u64> = BTreeMap::new();
            for c in &status.counters {
                *sums
                    .entry(format!("{}/{}", c.action, c.reason))
                    .or_default() += c.packets;
            }
            sums
        };
        let old = sum(before);
        sum(self)
            .into_iter()
            .filter_map(|(key, now)| {
                let grown = now.saturating_sub(old.get(&key).copied().unwrap_or(0));
                (grown > 0).then_some((key, grown))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(json: &str) -> Status {
        Status::from_json(&serde_json::from_str(json).expect("test JSON"))
    }

    #[test]
    fn growth_counts_only_what_grew() {
        let before = status(
            r#"{"generation":1,"mode":"enforce","interfaces":[],"counters":[
                {"interface":"cgdemo-h","action":"drop","reason":"default_drop","packets":4,"bytes":240},
                {"interface":"cgdemo-h","action":"pass","reason":"service","packets":7,"bytes":500}]}"#,
        );
        let after = status(
            r#"{"generation":1,"mode":"enforce","interfaces":[{"name":"cgdemo-h","ifindex":2,"mode":"native"}],"counters":[
                {"interface":"cgdemo-h","action":"drop","reason":"default_drop","packets":4,"bytes":240},
                {"interface":"cgdemo-h","action":"drop","reason":"denied_source","packets":2,"bytes":120},
                {"interface":"cgdemo-h","action":"pass","reason":"service","packets":9,"bytes":600}]}"#,
        );
        let growth = Vec::from_iter(after.growth_since(&before));
        assert_eq!(
            growth,
            vec![
                ("drop/denied_source".to_owned(), 2),
                ("pass/service".to_owned(), 2)
            ]
        );
        assert_eq!(after.interfaces[0].mode, "native");
    }
}
