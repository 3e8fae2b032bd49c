//! Child processes that run inside a network namespace but in the host's mount namespace.
//!
//! This is how the suite runs `crmguard`: `setns(CLONE_NEWNET)` between fork and exec, the same
//! as `nsenter --net=/run/netns/NAME`. Unlike `ip netns exec` it keeps the host's `/sys/fs/bpf`,
//! so links the agent pins there survive the agent (the fail-static property under test).
//!
//! A [`Process`] writes stdout and stderr to files and kills (SIGKILL) and reaps the child on
//! drop. On drop it also prints the tail of both files: the test harness shows that output only
//! for failing tests, which makes a failure diagnosable from the test log alone.

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

/// A running child whose output goes to files; killed and reaped on drop.
#[derive(Debug)]
pub struct Process {
    label: String,
    child: Child,
    status: Option<ExitStatus>,
    stdout: PathBuf,
    stderr: PathBuf,
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
            stdout,
            stderr,
        })
    }

    pub fn pid(&self) -> Pid {
        Pid::from_raw(i32::try_from(self.child.id()).unwrap_or(i32::MAX))
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

    pub fn stdout(&self) -> String {
        std::fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
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
        if let Err(e) = self.kill9() {
            eprintln!("killing {}: {e:#}", self.label);
        }
        self.print_logs();
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
