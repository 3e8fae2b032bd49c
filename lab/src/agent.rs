//! A `crmguard run` daemon under test, and its command line.
//!
//! [`Agent`] owns a temporary directory (config file, state directory, control socket, logs),
//! a pin directory `/sys/fs/bpf/cgtest-<unique>` on the host's bpffs, and the daemon processes it
//! started, all in one network namespace and in the host mount namespace (see `process.rs`).
//! On drop it kills the daemon, runs `crmguard uninstall`, and removes the pin directory if
//! anything is left in it, so no XDP program or map outlives the test.
//!
//! The daemon runs as root unless [`Agent::run_as`] names a user and the capabilities it keeps,
//! as the systemd unit does; the `crmguard` commands of [`Agent::cli`] always run as root.
//!
//! It relies on the `status --json` contract:
//! `{"generation":N,"mode":"enforce","interfaces":[{"name":..,"ifindex":..,"mode":"native"}],
//!   "counters":[{"interface":..,"action":..,"reason":..,"packets":N,"bytes":M}]}`.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::Value;
use tempfile::TempDir;

use crate::netns::NetNs;
use crate::process::{self, Process};
use crate::wait::wait_for;

/// The agent's documented variable that names its TUN device (`crmguard_vpn::INTERFACE_ENV`).
/// wireguard-go and `wg` find userspace devices by name in `/var/run/wireguard`, which every
/// network namespace shares, so each agent of the lab gets a name of its own.
pub const VPN_INTERFACE_ENV: &str = "CRMGUARD_VPN_INTERFACE";

/// How long a starting agent may take to answer `status`.
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// How long a SIGTERMed agent may take to exit.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// The `crmguard` binary under test: `$CRMGUARD_BIN`, else `crmguard` in the target directory
/// that holds this test binary (`target/debug/deps/suite-*` -> `target/debug/crmguard`).
pub fn binary() -> Result<PathBuf> {
    if let Some(bin) = std::env::var_os("CRMGUARD_BIN") {
        let bin = PathBuf::from(bin);
        if !bin.is_file() {
            bail!("CRMGUARD_BIN={} is not a file", bin.display());
        }
        return Ok(bin);
    }
    let exe = std::env::current_exe().context("locating the test binary")?;
    let candidate = exe
        .parent()
        .and_then(Path::parent)
        .map(|dir| dir.join("crmguard"))
        .with_context(|| format!("no target directory above {}", exe.display()))?;
    if !candidate.is_file() {
        bail!(
            "no crmguard binary at {}: run `cargo build -p crmguard` first, or set CRMGUARD_BIN \
             to its absolute path",
            candidate.display()
        );
    }
    Ok(candidate)
}

/// Packet and byte counts of one (interface, action, reason) counter.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub packets: u64,
    pub bytes: u64,
}

/// Where an agent keeps what it writes, when a test chooses (the defaults are in the agent's
/// temporary directory), and `[audit]` keys beyond `path` and `key_file`.
#[derive(Debug, Clone, Default)]
pub struct Placement {
    pub state_dir: Option<PathBuf>,
    /// The directory of `[audit] path` (the file is `audit.jsonl` in it).
    pub audit_dir: Option<PathBuf>,
    /// Lines added to `[audit]`, e.g. `on_write_failure = "fail-open"`.
    pub audit_extra: String,
}

/// A crmguard daemon in a network namespace, with its own config, state and pins.
#[derive(Debug)]
pub struct Agent<'ns> {
    ns: &'ns NetNs,
    bin: PathBuf,
    config: PathBuf,
    state_dir: PathBuf,
    audit_path: PathBuf,
    bpffs_dir: PathBuf,
    metrics: SocketAddr,
    /// Environment variables set for every daemon started.
    env: Vec<(String, String)>,
    /// The user and capabilities the daemon runs with (`None`: root, every capability).
    run_as: Option<RunAs>,
    /// The name of the agent's WireGuard TUN device, unique per agent: the WireGuard tools'
    /// sockets in `/var/run/wireguard` are shared by every namespace.
    vpn_interface: String,
    /// Every daemon started, oldest first; only the last may still run. Kept so that a
    /// failing test shows the logs of all of them.
    runs: Vec<Process>,
    /// Declared last so that it is removed after the processes that write into it.
    dir: TempDir,
}

impl<'ns> Agent<'ns> {
    /// Writes the config (the harness's `[agent]` and `[metrics]` sections, then `body`),
    /// starts `crmguard run` in `ns` and waits until it answers `status`.
    pub fn start(ns: &'ns NetNs, body: &str) -> Result<Agent<'ns>> {
        let mut agent = Agent::configure(ns, body)?;
        agent.spawn()?;
        agent.wait_ready()?;
        Ok(agent)
    }

    /// Writes the config without starting anything.
    pub fn configure(ns: &'ns NetNs, body: &str) -> Result<Agent<'ns>> {
        Agent::configure_with(ns, body, &Placement::default())
    }

    /// [`Agent::configure`] with the state directory, the audit log's directory and more
    /// `[audit]` keys chosen by the test (a small filesystem to fill, a failure policy).
    pub fn configure_with(ns: &'ns NetNs, body: &str, placement: &Placement) -> Result<Agent<'ns>> {
        crate::privileged::ensure_bpffs()?;
        let bin = binary()?;
        let dir = tempfile::Builder::new()
            .prefix("crmguard-test-")
            .tempdir()
            .context("creating the agent's temporary directory")?;
        let state_dir = match &placement.state_dir {
            Some(state_dir) => state_dir.clone(),
            None => dir.path().join("state"),
        };
        std::fs::create_dir_all(&state_dir)
            .with_context(|| format!("creating {}", state_dir.display()))?;
        let audit_path = placement
            .audit_dir
            .as_deref()
            .unwrap_or(dir.path())
            .join("audit.jsonl");
        let bpffs_dir =
            Path::new(crate::privileged::BPFFS).join(format!("cgtest-{}", crate::unique_suffix()));
        let metrics = free_loopback_port(ns)?;
        let vpn_interface = format!("cgg{}", crate::unique_suffix());
        let config = dir.path().join("crmguard.toml");
        let text = format!(
            "[agent]\n\
             mode = \"enforce\"\n\
             state_dir = {}\n\
             bpffs_dir = {}\n\
             control_socket = {}\n\
             log_format = \"text\"\n\
             \n\
             [metrics]\n\
             listen = \"{metrics}\"\n\
             \n\
             [audit]\n\
             path = {}\n\
             key_file = {}\n\
             {}\n\
             \n\
             {body}\n",
            toml_string(&state_dir),
            toml_string(&bpffs_dir),
            toml_string(&dir.path().join("control.sock")),
            toml_string(&audit_path),
            toml_string(&dir.path().join("audit.key")),
            placement.audit_extra,
        );
        std::fs::write(&config, text).with_context(|| format!("writing {}", config.display()))?;
        Ok(Agent {
            ns,
            bin,
            config,
            state_dir,
            audit_path,
            bpffs_dir,
            metrics,
            env: vec![(VPN_INTERFACE_ENV.to_owned(), vpn_interface.clone())],
            run_as: None,
            vpn_interface,
            runs: Vec::new(),
            dir,
        })
    }

    /// Runs the daemons started from now on as `run_as`: its temporary directory (control
    /// socket, audit log and key), state directory and pin directory become the user's, as the
    /// package makes `/run/crmguard`, `/var/lib/crmguard` and `/sys/fs/bpf/crmguard`.
    pub fn run_as(&mut self, run_as: RunAs) -> Result<()> {
        if !self.bpffs_dir.exists() {
            std::fs::create_dir(&self.bpffs_dir)
                .with_context(|| format!("creating {}", self.bpffs_dir.display()))?;
        }
        for path in [
            self.dir.path().to_path_buf(),
            self.dir.path().join("state"),
            self.bpffs_dir.clone(),
        ] {
            std::os::unix::fs::chown(&path, Some(run_as.uid), Some(run_as.gid))
                .with_context(|| format!("giving {} to user {}", path.display(), run_as.user))?;
        }
        self.run_as = Some(run_as);
        Ok(())
    }

    /// Sets an environment variable for the daemons started from now on.
    pub fn set_env(&mut self, key: &str, value: &str) {
        self.env.push((key.to_owned(), value.to_owned()));
    }

    /// The agent's WireGuard TUN device (`wg show NAME` reaches the agent by it).
    pub fn vpn_interface(&self) -> &str {
        &self.vpn_interface
    }

    pub fn config_path(&self) -> &Path {
        &self.config
    }

    /// `[agent] state_dir`.
    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// `[audit] path`.
    pub fn audit_path(&self) -> &Path {
        &self.audit_path
    }

    pub fn bpffs_dir(&self) -> &Path {
        &self.bpffs_dir
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The `[metrics] listen` address, inside the agent's namespace.
    pub fn metrics_addr(&self) -> SocketAddr {
        self.metrics
    }

    /// Starts `crmguard run --config FILE` without waiting for it to be ready.
    pub fn spawn(&mut self) -> Result<()> {
        if self.is_running()? {
            bail!("an agent is already running");
        }
        let mut cmd = match &self.run_as {
            Some(run_as) => run_as.command(&self.bin),
            None => Command::new(&self.bin),
        };
        cmd.arg("run").arg("--config").arg(&self.config);
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        let label = format!("crmguard-run-{}", self.runs.len() + 1);
        let process = Process::spawn(self.ns, cmd, self.dir.path(), &label)?;
        self.runs.push(process);
        Ok(())
    }

    /// The process id of the last started daemon (its descriptors are in /proc/PID/fd).
    pub fn pid(&self) -> Option<u32> {
        self.runs.last().map(Process::id)
    }

    /// Whether the last started daemon is still running.
    pub fn is_running(&mut self) -> Result<bool> {
        match self.runs.last_mut() {
            Some(run) => Ok(run.try_wait()?.is_none()),
            None => Ok(false),
        }
    }

    /// Waits until `crmguard status` succeeds; fails at once if the daemon exits meanwhile.
    pub fn wait_ready(&mut self) -> Result<()> {
        let mut exited = None;
        wait_for(READY_TIMEOUT, "`crmguard status` to succeed", || {
            let Some(run) = self.runs.last_mut() else {
                bail!("no agent was started");
            };
            if let Some(status) = run.try_wait()? {
                exited = Some(status);
                return Ok(Some(()));
            }
            let out = self.cli(&["status", "--json"])?;
            if !out.status.success() {
                bail!("{}", String::from_utf8_lossy(&out.stderr).trim());
            }
            Ok(Some(()))
        })?;
        if let Some(status) = exited {
            bail!(
                "crmguard run exited ({}) before it was ready",
                process::describe(status)
            );
        }
        Ok(())
    }

    /// Runs `crmguard ARGS --config FILE` in the agent's namespace (host mount namespace) and
    /// returns its output whatever its exit status.
    pub fn cli(&self, args: &[&str]) -> Result<Output> {
        let mut cmd = Command::new(&self.bin);
        cmd.args(args).arg("--config").arg(&self.config);
        process::output_in(self.ns, cmd)
    }

    /// `crmguard status --json`, parsed.
    pub fn status(&self) -> Result<Value> {
        let out = self.cli(&["status", "--json"])?;
        if !out.status.success() {
            bail!(
                "`crmguard status --json` failed ({}): {}",
                process::describe(out.status),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        serde_json::from_slice(&out.stdout).with_context(|| {
            format!(
                "`crmguard status --json` printed no JSON: {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }

    /// The packets and bytes counted on `iface` with `action` and `reason` (zero when the status
    /// lists no such counter).
    pub fn counts(&self, iface: &str, action: &str, reason: &str) -> Result<Counts> {
        counts_in(&self.status()?, iface, action, reason)
    }

    /// The packets counted on `iface` with `action` and `reason`.
    pub fn counter(&self, iface: &str, action: &str, reason: &str) -> Result<u64> {
        Ok(self.counts(iface, action, reason)?.packets)
    }

    /// The attach mode (`native`/`generic`) status reports for `iface`, `None` if not listed.
    pub fn attach_mode(&self, iface: &str) -> Result<Option<String>> {
        attach_mode_in(&self.status()?, iface)
    }

    /// `GET /metrics` from the agent's metrics listener.
    pub fn metrics(&self) -> Result<String> {
        crate::net::http_get(self.ns, self.metrics, "/metrics")
    }

    /// SIGKILL the daemon, as a crash would: nothing of its shutdown path runs.
    pub fn kill9(&mut self) -> Result<ExitStatus> {
        let Some(run) = self.runs.last_mut() else {
            bail!("no agent was started");
        };
        run.kill9()
    }

    /// SIGTERM the daemon and wait for it to exit.
    pub fn stop(&mut self) -> Result<ExitStatus> {
        let Some(run) = self.runs.last_mut() else {
            bail!("no agent was started");
        };
        run.terminate(STOP_TIMEOUT)
    }

    /// Stops the daemon (SIGTERM), starts a new one with the same config, waits until ready.
    pub fn restart(&mut self) -> Result<()> {
        self.stop()?;
        self.spawn()?;
        self.wait_ready()
    }
}

impl Drop for Agent<'_> {
    fn drop(&mut self) {
        if let Some(run) = self.runs.last_mut() {
            if let Err(e) = run.kill9() {
                eprintln!("killing {}: {e:#}", run.label());
            }
        }
        match self.cli(&["uninstall"]) {
            Ok(out) if out.status.success() => {}
            Ok(out) => eprintln!(
                "`crmguard uninstall` failed ({}): {}{}",
                process::describe(out.status),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
            Err(e) => eprintln!("running `crmguard uninstall`: {e:#}"),
        }
        // A killed agent leaves its WireGuard configuration socket behind.
        let _ = std::fs::remove_file(
            Path::new("/var/run/wireguard").join(format!("{}.sock", self.vpn_interface)),
        );
        // bpffs supports unlink and rmdir, so this removes whatever pins are left.
        if self.bpffs_dir.exists() {
            if let Err(e) = std::fs::remove_dir_all(&self.bpffs_dir) {
                eprintln!("removing {}: {e}", self.bpffs_dir.display());
            }
        }
    }
}

/// A user and the capabilities a daemon keeps, applied by setpriv(1) the way systemd applies
/// `User=`, `Group=`, `AmbientCapabilities=`, `CapabilityBoundingSet=` and `NoNewPrivileges=`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunAs {
    pub user: String,
    pub uid: u32,
    pub gid: u32,
    /// Capability names as capabilities(7) writes them: `CAP_BPF`.
    pub caps: Vec<String>,
    /// Groups besides the user's own (`SupplementaryGroups=`).
    pub groups: Vec<String>,
    /// A file of the system call names the daemon may make, one per line: every other call
    /// fails with EPERM, as `SystemCallFilter=` with `SystemCallErrorNumber=EPERM` has it.
    pub syscalls: Option<PathBuf>,
}

/// Debian's python3, into which python3-seccomp installs its module (a `python3` earlier on
/// PATH, such as a pyenv one, does not see it).
pub const DEBIAN_PYTHON: &str = "/usr/bin/python3";

/// Loads a seccomp filter that allows the calls named in argv[1] (names this architecture or
/// libseccomp does not know are left out, as systemd leaves them out) and fails every other
/// with EPERM, then executes argv[2..]. It runs after setpriv, as the unit's user with no new
/// privileges, so that the filter also covers the daemon's every thread.
const SECCOMP_EXEC: &str = r#"
import errno, os, sys, seccomp
allowed = seccomp.SyscallFilter(defaction=seccomp.ERRNO(errno.EPERM))
for name in open(sys.argv[1]).read().split():
    try:
        allowed.add_rule(seccomp.ALLOW, name)
    except (RuntimeError, ValueError, OSError):
        pass
allowed.load()
os.execv(sys.argv[2], sys.argv[2:])
"#;

impl RunAs {
    /// `setpriv ... -- BIN`: the user, its groups, the capabilities inherited, ambient and in
    /// the bounding set (all the same), and no new privileges; with `syscalls`, BIN runs under
    /// that system call filter (Debian's python3-seccomp loads it).
    pub fn command(&self, bin: &Path) -> Command {
        let mut cmd = Command::new("setpriv");
        cmd.args(self.setpriv_args());
        if let Some(syscalls) = &self.syscalls {
            cmd.args([DEBIAN_PYTHON, "-c", SECCOMP_EXEC]).arg(syscalls);
        }
        cmd.arg(bin);
        cmd
    }

    fn setpriv_args(&self) -> Vec<String> {
        let mut set = String::from("-all");
        for cap in &self.caps {
            let name = cap.strip_prefix("CAP_").unwrap_or(cap).to_ascii_lowercase();
            set.push_str(",+");
            set.push_str(&name);
        }
        let mut args: Vec<String> = ["--reuid", &self.user, "--regid", &self.user]
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
        if self.groups.is_empty() {
            args.push("--init-groups".to_owned());
        } else {
            // The user's group, as initgroups gives a system user, and the others.
            let mut groups = vec![self.user.clone()];
            groups.extend(self.groups.iter().cloned());
            args.push("--groups".to_owned());
            args.push(groups.join(","));
        }
        for option in ["--inh-caps", "--ambient-caps", "--bounding-set"] {
            args.push(option.to_owned());
            args.push(set.clone());
        }
        args.push("--no-new-privs".to_owned());
        args.push("--".to_owned());
        args
    }
}

fn counts_in(status: &Value, iface: &str, action: &str, reason: &str) -> Result<Counts> {
    let counters = status["counters"]
        .as_array()
        .with_context(|| format!("status has no \"counters\" list: {status}"))?;
    let mut total = Counts::default();
    for c in counters {
        if c["interface"] == iface && c["action"] == action && c["reason"] == reason {
            let field = |name: &str| {
                c[name]
                    .as_u64()
                    .with_context(|| format!("counter without a numeric {name:?}: {c}"))
            };
            total.packets += field("packets")?;
            total.bytes += field("bytes")?;
        }
    }
    Ok(total)
}

fn attach_mode_in(status: &Value, iface: &str) -> Result<Option<String>> {
    let interfaces = status["interfaces"]
        .as_array()
        .with_context(|| format!("status has no \"interfaces\" list: {status}"))?;
    Ok(interfaces
        .iter()
        .find(|i| i["name"] == iface)
        .and_then(|i| i["mode"].as_str())
        .map(str::to_owned))
}

/// The value of the sample of metric `name` whose labels include all of `labels`, from a
/// Prometheus text exposition; `None` when there is no such sample.
pub fn metric_value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(parse_sample)
        .find(|sample| {
            sample.name == name
                && labels
                    .iter()
                    .all(|(k, v)| sample.labels.iter().any(|(sk, sv)| sk == k && sv == v))
        })
        .map(|sample| sample.value)
}

/// One sample of a Prometheus text exposition.
struct Sample {
    name: String,
    labels: Vec<(String, String)>,
    value: f64,
}

/// Parses one sample line: `name{k="v",...} value [timestamp]`.
fn parse_sample(line: &str) -> Option<Sample> {
    let (name, rest) = match line.find(['{', ' ']) {
        Some(i) => line.split_at(i),
        None => return None,
    };
    let mut labels = Vec::new();
    let mut chars = rest.chars().peekable();
    if chars.peek() == Some(&'{') {
        chars.next();
        loop {
            match chars.peek() {
                Some('}') => {
                    chars.next();
                    break;
                }
                Some(',') | Some(' ') => {
                    chars.next();
                }
                Some(_) => {
                    let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
                    if chars.next() != Some('"') {
                        return None;
                    }
                    let mut value = String::new();
                    loop {
                        match chars.next()? {
                            '"' => break,
                            '\\' => match chars.next()? {
                                'n' => value.push('\n'),
                                other => value.push(other),
                            },
                            c => value.push(c),
                        }
                    }
                    labels.push((key.trim().to_owned(), value));
                }
                None => return None,
            }
        }
    }
    let rest: String = chars.collect();
    let value = rest.split_whitespace().next()?.parse().ok()?;
    Some(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

/// A TCP port free on 127.0.0.1 in `ns`. The namespace is the test's own, so nothing else
/// takes the port between this probe and the agent's bind.
fn free_loopback_port(ns: &NetNs) -> Result<SocketAddr> {
    ns.run_in(|| {
        TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).and_then(|listener| listener.local_addr())
    })?
    .context("finding a free port for the metrics listener")
}

/// A TOML basic string holding a path.
fn toml_string(path: &Path) -> String {
    let text = path.display().to_string();
    format!("\"{}\"", text.replace('\\', "\\\\").replace('"', "\\\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status() -> Value {
        serde_json::json!({
            "generation": 3,
            "mode": "enforce",
            "interfaces": [{"name": "veth-h", "ifindex": 3, "mode": "native"}],
            "counters": [
                {"interface": "veth-h", "action": "drop", "reason": "default_drop",
                 "packets": 7, "bytes": 700},
                {"interface": "veth-h", "action": "pass", "reason": "service",
                 "packets": 2, "bytes": 120},
                {"interface": "other", "action": "drop", "reason": "default_drop",
                 "packets": 1, "bytes": 60}
            ]
        })
    }

    #[test]
    fn reads_counters_by_interface_action_and_reason() {
        let check = |iface, action, reason, expected| {
            assert_eq!(
                counts_in(&status(), iface, action, reason).expect("well-formed status"),
                expected,
                "{iface}/{action}/{reason}"
            );
        };
        let counts = |packets, bytes| Counts { packets, bytes };
        check("veth-h", "drop", "default_drop", counts(7, 700));
        check("veth-h", "pass", "service", counts(2, 120));
        check("veth-h", "drop", "denied_source", counts(0, 0));
        check("other", "drop", "default_drop", counts(1, 60));
    }

    #[test]
    fn reads_attach_modes() {
        assert_eq!(
            attach_mode_in(&status(), "veth-h").expect("well-formed status"),
            Some("native".to_owned())
        );
        assert_eq!(
            attach_mode_in(&status(), "eth9").expect("well-formed status"),
            None
        );
    }

    #[test]
    fn a_status_without_counters_is_an_error() {
        assert!(counts_in(&serde_json::json!({}), "a", "drop", "x").is_err());
    }

    #[test]
    fn finds_metric_samples_by_labels() {
        let text = "# HELP crmguard_xdp_packets_total Packets.\n\
            # TYPE crmguard_xdp_packets_total counter\n\
            crmguard_xdp_packets_total{action=\"drop\",interface=\"veth-h\",reason=\"default_drop\"} 100\n\
            crmguard_xdp_packets_total{action=\"pass\",interface=\"veth-h\",reason=\"service\"} 4\n\
            crmguard_policy_generation 3\n\
            odd{k=\"a \\\"quoted\\\" value\"} 1.5e2\n";
        let labels = [("interface", "veth-h"), ("reason", "default_drop")];
        assert_eq!(
            metric_value(text, "crmguard_xdp_packets_total", &labels),
            Some(100.0)
        );
        assert_eq!(
            metric_value(text, "crmguard_policy_generation", &[]),
            Some(3.0)
        );
        assert_eq!(
            metric_value(text, "odd", &[("k", "a \"quoted\" value")]),
            Some(150.0)
        );
        assert_eq!(
            metric_value(text, "crmguard_xdp_packets_total", &[("reason", "banned")]),
            None
        );
    }

    #[test]
    fn setpriv_gets_the_user_and_the_same_capabilities_everywhere() {
        let run_as = RunAs {
            user: "crmguard".to_owned(),
            uid: 990,
            gid: 990,
            caps: vec!["CAP_BPF".to_owned(), "CAP_NET_ADMIN".to_owned()],
            groups: vec!["adm".to_owned()],
            syscalls: None,
        };
        let set = "-all,+bpf,+net_admin";
        assert_eq!(
            run_as.setpriv_args(),
            [
                "--reuid",
                "crmguard",
                "--regid",
                "crmguard",
                "--groups",
                "crmguard,adm",
                "--inh-caps",
                set,
                "--ambient-caps",
                set,
                "--bounding-set",
                set,
                "--no-new-privs",
                "--"
            ]
        );
    }

    #[test]
    fn paths_become_toml_strings() {
        assert_eq!(toml_string(Path::new("/tmp/a\"b")), "\"/tmp/a\\\"b\"");
    }
}
