//! Child processes that run inside a network namespace but in the host's mount namespace.
//!
//! This is how the suite runs `crmguard`: `setns(CLONE_NEWNET)` between fork and exec, the same
//! as `nsenter --net=/run/netns/NAME`. Unlike `ip netns exec` it keeps the host's `/sys/fs/bpf`,
//! so links the agent pins there survive the agent (the fail-static property under test).
//!
//! A [`Process`] writes stdout and stderr to files and kills (SIGKILL) and reaps the child on
//! drop. On drop it also prints the tail of both files: the test harness shows that output only
//! for failing tests, which makes a failure diagnosable from the test log alone.
//!
//! The demo and the bench run long-lived programs differently ([`Process::spawn_logged`]): the
//! command comes ready (usually from [`NetNs::command`]), both streams go to one log file the
//! user can read afterwards, the child gets a process group of its own so that Ctrl-C reaches
//! only the parent (which then stops its children in order), and on drop it is asked to exit
//! with SIGTERM before it is killed, without printing anything.

// `unsafe`: the pre-exec hook that enters a network namespace with setns(2).
#![allow(unsafe_code)]

use std::fs::File;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::sched::CloneFlags;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::netns::NetNs;

/// How many lines of each stream a dropped process prints.
const LOG_TAIL_LINES: usize = 200;

/// Makes `cmd` enter `ns`'s network namespace, and only it, before it executes.
fn enter_netns(cmd: &mut Command, ns: &NetNs) -> Result<()> {
    let file = ns.open()?;
    // SAFETY: the closure runs in the forked child before exec; it only calls setns(2), which is
    // async-signal-safe, and touches no lock or allocation of the parent. `file` was opened
    // with O_CLOEXEC, so the exec'd program does not inherit it.
    unsafe {
        cmd.pre_exec(move || {
            nix::sched::setns(&file, CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from)
        });
    }
    Ok(())
}

/// Runs `cmd` to completion inside `ns` (network namespace only) and returns its output, whatever
/// its exit status.
pub fn output_in(ns: &NetNs, mut cmd: Command) -> Result<Output> {
    enter_netns(&mut cmd, ns)?;
    cmd.output()
        .with_context(|| format!("running {cmd:?} in netns {}", ns.name()))
}

/// A running child whose output goes to files; stopped and reaped on drop.
#[derive(Debug)]
pub struct Process {
    label: String,
    child: Child,
    status: Option<ExitStatus>,
    logs: Logs,
    /// How a child still running when the process is dropped is stopped.
    on_drop: OnDrop,
    /// Files the child leaves behind when it is killed (a control socket), removed on drop.
    leftovers: Vec<PathBuf>,
}

#[derive(Debug)]
enum Logs {
    /// The suite's way: one file a stream, printed on drop.
    Split { stdout: PathBuf, stderr: PathBuf },
    /// The demo's and the bench's way: both streams in one file the user reads.
    Combined(PathBuf),
}

#[derive(Debug, Clone, Copy)]
enum OnDrop {
    /// SIGKILL, then print the tail of the logs.
    KillAndPrint,
    /// SIGTERM, this long to exit, then SIGKILL; nothing printed.
    Terminate(Duration),
}

impl Process {
    /// Spawns `cmd` inside `ns` (network namespace only), with stdout and stderr in
    /// `{log_dir}/{label}.stdout` and `.stderr`.
    pub fn spawn(ns: &NetNs, mut cmd: Command, log_dir: &Path, label: &str) -> Result<Process> {
        let stdout = log_dir.join(format!("{label}.stdout"));
        let stderr = log_dir.join(format!("{label}.stderr"));
        let out =
            File::create(&stdout).with_context(|| format!("creating {}", stdout.display()))?;
        let err =
            File::create(&stderr).with_context(|| format!("creating {}", stderr.display()))?;
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        enter_netns(&mut cmd, ns)?;
        let child = cmd
            .spawn()
            .with_context(|| format!("spawning {label}: {cmd:?} in netns {}", ns.name()))?;
        Ok(Process {
            label: label.to_owned(),
            child,
            status: None,
            logs: Logs::Split { stdout, stderr },
            on_drop: OnDrop::KillAndPrint,
            leftovers: Vec::new(),
        })
    }

    /// Spawns `cmd` as it is, in a process group of its own, with stdin closed and stdout and
    /// stderr both written to `log`. A child still running on drop gets SIGTERM and `grace` to
    /// exit before SIGKILL; with a zero `grace` it is killed at once.
    pub fn spawn_logged(
        mut cmd: Command,
        label: &str,
        log: &Path,
        grace: Duration,
    ) -> Result<Process> {
        let out = File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let err = out
            .try_clone()
            .with_context(|| format!("duplicating the descriptor of {}", log.display()))?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0)
            .spawn()
            .with_context(|| format!("spawning {label}: {cmd:?}"))?;
        Ok(Process {
            label: label.to_owned(),
            child,
            status: None,
            logs: Logs::Combined(log.to_path_buf()),
            on_drop: OnDrop::Terminate(grace),
            leftovers: Vec::new(),
        })
    }

    /// Removes `path` when the process is dropped, after the child is gone: what a killed
    /// program cannot clean up itself, such as wireguard-go's control socket.
    pub fn remove_on_drop(&mut self, path: PathBuf) {
        self.leftovers.push(path);
    }

    /// Fails naming the exit status and the end of the log when the child has exited.
    pub fn check_alive(&mut self) -> Result<()> {
        if let Some(status) = self.try_wait()? {
            bail!(
                "{} exited ({})\n{}",
                self.label,
                describe(status),
                self.log_tail(8)
            );
        }
        Ok(())
    }

    /// The last `lines` lines of the child's output (both streams).
    pub fn log_tail(&self, lines: usize) -> String {
        let text = match &self.logs {
            Logs::Split { .. } => format!("{}{}", self.stdout(), self.stderr()),
            Logs::Combined(log) => std::fs::read_to_string(log).unwrap_or_default(),
        };
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    pub fn pid(&self) -> Pid {
        Pid::from_raw(i32::try_from(self.child.id()).unwrap_or(i32::MAX))
    }

    /// The child's process id as the standard library and `/proc` give it.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    pub fn label(&self) -> &str {
        &self.label
    }

    /// The exit status if the child has exited (reaping it), `None` while it runs.
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        if self.status.is_none() {
            self.status = self
                .child
                .try_wait()
                .with_context(|| format!("waiting for {}", self.label))?;
        }
        Ok(self.status)
    }

    /// SIGKILL and reap. Killing an already exited child is not an error.
    pub fn kill9(&mut self) -> Result<ExitStatus> {
        if let Some(status) = self.try_wait()? {
            return Ok(status);
        }
        // ESRCH cannot happen: the child is not reaped yet, so its pid is still ours.
        kill(self.pid(), Signal::SIGKILL)
            .with_context(|| format!("sending SIGKILL to {}", self.label))?;
        let status = self
            .child
            .wait()
            .with_context(|| format!("reaping {}", self.label))?;
        self.status = Some(status);
        Ok(status)
    }

    /// SIGTERM, then waits up to `timeout` for the child to exit. A child still running then is
    /// killed and the timeout is an error.
    pub fn terminate(&mut self, timeout: Duration) -> Result<ExitStatus> {
        if let Some(status) = self.try_wait()? {
            return Ok(status);
        }
        kill(self.pid(), Signal::SIGTERM)
            .with_context(|| format!("sending SIGTERM to {}", self.label))?;
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.try_wait()? {
                return Ok(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill9()?;
        bail!("{} did not exit within {timeout:?} of SIGTERM", self.label)
    }

    /// What the child wrote to stdout (both streams for a combined log).
    pub fn stdout(&self) -> String {
        let path = match &self.logs {
            Logs::Split { stdout, .. } => stdout,
            Logs::Combined(log) => log,
        };
        std::fs::read_to_string(path).unwrap_or_default()
    }

    /// What the child wrote to stderr (nothing apart for a combined log).
    pub fn stderr(&self) -> String {
        match &self.logs {
            Logs::Split { stderr, .. } => std::fs::read_to_string(stderr).unwrap_or_default(),
            Logs::Combined(_) => String::new(),
        }
    }

    /// Prints the tail of both streams, labelled.
    pub fn print_logs(&self) {
        let status = match self.status {
            Some(status) => describe(status),
            None => "running".to_owned(),
        };
        eprintln!("----- {} ({status}) -----", self.label);
        for (stream, text) in [("stdout", self.stdout()), ("stderr", self.stderr())] {
            let lines: Vec<&str> = text.lines().collect();
            let skipped = lines.len().saturating_sub(LOG_TAIL_LINES);
            if skipped > 0 {
                eprintln!("[{stream}: {skipped} earlier lines not shown]");
            }
            for line in &lines[skipped..] {
                eprintln!("[{stream}] {line}");
            }
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        match self.on_drop {
            OnDrop::KillAndPrint => {
                if let Err(e) = self.kill9() {
                    eprintln!("killing {}: {e:#}", self.label);
                }
                self.print_logs();
            }
            OnDrop::Terminate(grace) if grace.is_zero() => {
                if let Err(e) = self.kill9() {
                    eprintln!("killing {}: {e:#}", self.label);
                }
            }
            OnDrop::Terminate(grace) => {
                if let Err(e) = self.terminate(grace) {
                    eprintln!("stopping {}: {e:#}", self.label);
                }
            }
        }
        for path in &self.leftovers {
            if let Err(e) = std::fs::remove_file(path) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    eprintln!("removing {}: {e}", path.display());
                }
            }
        }
    }
}

/// "exit 3" or "killed by SIGKILL".
pub fn describe(status: ExitStatus) -> String {
    if let Some(code) = status.code() {
        return format!("exit {code}");
    }
    match status.signal().map(Signal::try_from) {
        Some(Ok(signal)) => format!("killed by {signal}"),
        _ => format!("{status}"),
    }
}
