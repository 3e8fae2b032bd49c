//! Log sources under the real `logrotate`: a writer appends numbered lines at a steady pace,
//! logrotate rotates the file five times while it does, and crmguard's follower must hand
//! over every line once.
//!
//! With `create` (rename, then a new file; the writer reopens its log when `postrotate` tells
//! it, as syslog daemons do on SIGHUP) nothing may be lost or repeated. With `copytruncate`
//! the lines written between logrotate's copy and its truncation are in neither file and lost
//! to every reader: there the test checks that no line is read twice or out of order and that
//! every line in a file (the live one or a copy, where the follower finds the lines it had not
//! read yet when the file was truncated) was read.
//!
//! The journal: a systemd-journald of the test's own, in a mount namespace whose `/run` is
//! private and whose journal directory is a temporary one, gets entries from `logger
//! --journald`; crmguard reads them with the real `journalctl --directory` and must hand over
//! the unit's new entries only, and after a restart continue after the last one.
//!
//! No network namespace is needed; root is, as logrotate refuses configurations it does not
//! trust and journald's entries only match `--unit` from root.

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use crmguard::logsource::journal::{self, Journalctl};
use crmguard::logsource::{match_line, pattern, Follower, Line};
use crmguard_lab::privileged;
use tempfile::TempDir;

/// Rotations per test, spaced so that each falls in the middle of the stream.
const ROTATIONS: u32 = 5;
const BETWEEN_ROTATIONS: Duration = Duration::from_millis(300);

fn require_tools() -> Result<()> {
    privileged::require_tools(&[("logrotate", "logrotate")])
}

/// The directory of one test: the log, logrotate's configuration and state, and the
/// follower's position.
struct Lab {
    dir: TempDir,
}

impl Lab {
    /// `mode` is the rotation's directives; `{reopen}` in it stands for the reopen flag.
    fn new(mode: &str) -> Result<Lab> {
        let dir = tempfile::tempdir()?;
        let log = dir.path().join("app.log");
        let mode = mode.replace("{reopen}", &dir.path().join("reopen").display().to_string());
        let conf = format!(
            "{log} {{\n  rotate 10\n  nocompress\n  missingok\n{mode}}}\n",
            log = log.display()
        );
        fs::write(dir.path().join("logrotate.conf"), conf)?;
        File::create(&log)?;
        Ok(Lab { dir })
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("app.log")
    }

    fn reopen_flag(&self) -> PathBuf {
        self.dir.path().join("reopen")
    }

    fn logrotate(&self) -> Result<()> {
        let out = Command::new("logrotate")
            .arg("-f")
            .arg("-s")
            .arg(self.dir.path().join("logrotate.status"))
            .arg(self.dir.path().join("logrotate.conf"))
            .output()
            .context("running logrotate")?;
        ensure!(
            out.status.success(),
            "logrotate failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    }

    /// Starts the follower and waits until it has looked at the file.
    fn follow(&self) -> Result<(Follower, Receiver<Line>)> {
        let state = self.dir.path().join("app.pos");
        let (tx, rx) = mpsc::channel();
        let follower = Follower::file("suite", self.log(), state.clone(), move |line| {
            // The receiver is gone only when the test is over.
            let _ = tx.send(line);
        })?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while !state.exists() {
            ensure!(
                Instant::now() < deadline,
                "the follower never saved a position"
            );
            thread::sleep(Duration::from_millis(5));
        }
        Ok((follower, rx))
    }

    /// The line numbers in the rotated copies, one set per copy.
    fn copies(&self) -> Result<Vec<Vec<u32>>> {
        (1..=ROTATIONS)
            .map(|k| numbers(&self.dir.path().join(format!("app.log.{k}"))))
            .collect()
    }
}

fn numbers(path: &Path) -> Result<Vec<u32>> {
    let text = fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    text.lines().map(number).collect()
}

fn number(line: &str) -> Result<u32> {
    line.strip_prefix("line ")
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("not a numbered line: {line:?}"))
}

/// Lines the writer writes at least, however busy the machine: the rotations must cut through
/// a steady stream, not a trickle.
const MIN_LINES: u32 = 5_000;

/// Appends `line N` at about five lines a millisecond until stopped (and at least
/// [`MIN_LINES`]); reopens the log when the reopen flag appears (and removes it). Returns how
/// many lines it wrote.
fn writer(log: PathBuf, reopen: PathBuf, stop: Arc<AtomicBool>) -> JoinHandle<Result<u32>> {
    thread::spawn(move || {
        let open = || {
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log)
                .with_context(|| format!("opening {}", log.display()))
        };
        let mut file = open()?;
        let mut n = 0;
        while !stop.load(Ordering::Relaxed) || n < MIN_LINES {
            if reopen.exists() {
                fs::remove_file(&reopen)?;
                file = open()?;
            }
            file.write_all(format!("line {n}\n").as_bytes())?;
            n += 1;
            if n % 5 == 0 {
                thread::sleep(Duration::from_millis(1));
            }
        }
        Ok(n)
    })
}

/// Runs the writer, rotates the log [`ROTATIONS`] times while it writes, and returns the
/// number of lines written and the numbers of the lines the follower handed over.
fn stream(lab: &Lab) -> Result<(u32, Vec<u32>)> {
    let (follower, rx) = lab.follow()?;
    let stop = Arc::new(AtomicBool::new(false));
    let writing = writer(lab.log(), lab.reopen_flag(), Arc::clone(&stop));
    for _ in 0..ROTATIONS {
        thread::sleep(BETWEEN_ROTATIONS);
        lab.logrotate()?;
    }
    thread::sleep(BETWEEN_ROTATIONS);
    stop.store(true, Ordering::Relaxed);
    let written = writing
        .join()
        .map_err(|_| anyhow::anyhow!("the writer panicked"))??;
    // Everything written is read within a few polls; then the stream is quiet.
    let mut got = Vec::new();
    while let Ok(line) = rx.recv_timeout(Duration::from_secs(2)) {
        got.push(number(&line.text)?);
    }
    follower.stop();
    Ok((written, got))
}

#[test]
fn logrotate_create_under_a_steady_stream_loses_and_repeats_nothing() -> Result<()> {
    if !privileged::require(
        "logsource::logrotate_create_under_a_steady_stream_loses_and_repeats_nothing",
    ) {
        return Ok(());
    }
    require_tools()?;
    let lab = Lab::new("  create\n  postrotate\n    touch {reopen}\n  endscript\n")?;
    let (written, got) = stream(&lab)?;
    let copies = lab.copies()?;
    ensure!(
        copies.iter().all(|copy| !copy.is_empty()),
        "a rotation happened between two lines: {:?}",
        copies.iter().map(Vec::len).collect::<Vec<_>>()
    );
    // A line the writer put into the old file after the follower moved to the new one comes
    // after the new file's first lines: every line once, in any order.
    let unique: BTreeSet<u32> = got.iter().copied().collect();
    ensure!(
        unique.len() == got.len(),
        "{} lines read twice",
        got.len() - unique.len()
    );
    let expected: BTreeSet<u32> = (0..written).collect();
    let missing: Vec<u32> = expected.difference(&unique).copied().collect();
    ensure!(
        missing.is_empty(),
        "lost {} of {written} lines: {missing:?}",
        missing.len()
    );
    ensure!(unique == expected, "lines that were never written");
    Ok(())
}

#[test]
fn logrotate_copytruncate_under_a_steady_stream_reads_every_line_in_a_file_once() -> Result<()> {
    if !privileged::require(
        "logsource::logrotate_copytruncate_under_a_steady_stream_reads_every_line_in_a_file_once",
    ) {
        return Ok(());
    }
    require_tools()?;
    let lab = Lab::new("  copytruncate\n")?;
    let (written, got) = stream(&lab)?;
    if let Some(pair) = got.windows(2).find(|pair| pair[0] >= pair[1]) {
        bail!(
            "line {} read after line {}: read twice or out of order",
            pair[1],
            pair[0]
        );
    }
    let read: BTreeSet<u32> = got.iter().copied().collect();
    // Every line still in the live file was read.
    let live = numbers(&lab.log())?;
    let unread: Vec<&u32> = live.iter().filter(|n| !read.contains(n)).collect();
    ensure!(
        unread.is_empty(),
        "lines of the live file never read: {unread:?}"
    );
    // The lines the follower had not read when the file was truncated are in the copy, and
    // it reads them there.
    let mut in_copies = 0;
    for (k, copy) in lab.copies()?.iter().enumerate() {
        ensure!(!copy.is_empty(), "copy {} is empty", k + 1);
        in_copies += copy.len();
        let unread: Vec<&u32> = copy.iter().filter(|n| !read.contains(n)).collect();
        ensure!(
            unread.is_empty(),
            "lines of copy {} never read: {unread:?}",
            k + 1
        );
    }
    let read_count = u32::try_from(got.len()).unwrap_or(u32::MAX);
    eprintln!(
        "copytruncate: {written} lines written, {} read, {} lost to the rotation windows; {in_copies} in copies",
        got.len(),
        written.saturating_sub(read_count)
    );
    Ok(())
}

// ---- the journal -----------------------------------------------------------------------------

/// A systemd-journald in a mount namespace of its own, writing to a temporary directory.
/// Killed and reaped when dropped.
struct Journald {
    child: Child,
    dir: TempDir,
}

impl Journald {
    fn start() -> Result<Journald> {
        let dir = tempfile::tempdir()?;
        let script = format!(
            "mount -t tmpfs tmpfs /run && mkdir -p /run/log/journal /run/systemd/journal \
             && mount --bind {} /run/log/journal && exec /lib/systemd/systemd-journald",
            dir.path().display()
        );
        let child = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c", &script])
            .stdin(Stdio::null())
            .spawn()
            .context("starting systemd-journald")?;
        let journald = Journald { child, dir };
        let socket = format!(
            "/proc/{}/root/run/systemd/journal/socket",
            journald.child.id()
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while !Path::new(&socket).exists() {
            ensure!(
                Instant::now() < deadline,
                "journald never opened its socket"
            );
            thread::sleep(Duration::from_millis(20));
        }
        Ok(journald)
    }

    /// Writes one entry with `OBJECT_SYSTEMD_UNIT=unit`, which `journalctl --unit` matches in
    /// entries from root, as it does `_SYSTEMD_UNIT` for the unit's own processes.
    fn log(&self, unit: &str, message: &str) -> Result<()> {
        let mut logger = Command::new("nsenter")
            .arg(format!("--target={}", self.child.id()))
            .args(["--mount", "logger", "--journald"])
            .stdin(Stdio::piped())
            .spawn()
            .context("running logger")?;
        let entry =
            format!("MESSAGE={message}\nOBJECT_SYSTEMD_UNIT={unit}\nSYSLOG_IDENTIFIER=sshd\n");
        logger
            .stdin
            .take()
            .context("logger's input")?
            .write_all(entry.as_bytes())?;
        let status = logger.wait()?;
        ensure!(status.success(), "logger failed: {status}");
        Ok(())
    }

    /// `journalctl` reading this journal: a wrapper that adds `--directory`.
    fn journalctl(&self, scratch: &Path) -> Result<Journalctl> {
        let program = scratch.join("journalctl");
        fs::write(
            &program,
            format!(
                "#!/bin/sh\nexec journalctl --directory={} \"$@\"\n",
                self.dir.path().display()
            ),
        )?;
        fs::set_permissions(&program, fs::Permissions::from_mode(0o755))?;
        Ok(Journalctl {
            program,
            min_backoff: Duration::from_millis(200),
        })
    }
}

impl Drop for Journald {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn follow_journal(journald: &Journald, scratch: &Path) -> Result<(Follower, Receiver<Line>)> {
    let (tx, rx) = mpsc::channel();
    let follower = journal::start_with(
        "ssh",
        "ssh.service".to_owned(),
        scratch.join("ssh.pos"),
        journald.journalctl(scratch)?,
        move |line| {
            // The receiver is gone only when the test is over.
            let _ = tx.send(line);
        },
    )?;
    Ok((follower, rx))
}

/// The next line, within a deadline.
fn next(rx: &Receiver<Line>) -> Result<String> {
    Ok(rx
        .recv_timeout(Duration::from_secs(10))
        .context("no line from the journal")?
        .text)
}

#[test]
fn journal_of_a_unit_from_its_end_and_after_the_last_cursor() -> Result<()> {
    if !privileged::require("logsource::journal_of_a_unit_from_its_end_and_after_the_last_cursor") {
        return Ok(());
    }
    privileged::require_tools(&[
        ("journalctl", "systemd"),
        ("logger", "bsdutils"),
        ("unshare", "util-linux"),
        ("nsenter", "util-linux"),
    ])?;
    ensure!(
        Path::new("/lib/systemd/systemd-journald").exists(),
        "systemd-journald is not installed: apt-get install systemd"
    );
    let journald = Journald::start()?;
    let scratch = tempfile::tempdir()?;
    journald.log(
        "ssh.service",
        "Failed password for root from 192.0.2.99 port 22 ssh2",
    )?;
    let (follower, rx) = follow_journal(&journald, scratch.path())?;

    // journalctl starts at the journal's end: markers until the first arrives, and the entry
    // written before it is never handed over.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut marker = 0;
    loop {
        ensure!(
            Instant::now() < deadline,
            "journalctl never followed the journal"
        );
        journald.log("ssh.service", &format!("marker {marker}"))?;
        marker += 1;
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(300)) {
            ensure!(
                line.text.starts_with("marker "),
                "history replayed: {:?}",
                line.text
            );
            break;
        }
    }
    while let Ok(line) = rx.recv_timeout(Duration::from_millis(500)) {
        ensure!(
            line.text.starts_with("marker "),
            "history replayed: {:?}",
            line.text
        );
    }

    let sshd = regex::Regex::new(pattern::SSHD)?;
    journald.log(
        "cron.service",
        "Failed password for root from 192.0.2.50 port 22 ssh2",
    )?;
    journald.log(
        "ssh.service",
        "Failed password for root from 192.0.2.1 port 22 ssh2",
    )?;
    journald.log("ssh.service", "Invalid user bob from 2001:db8::7 port 4444")?;
    let mut found = Vec::new();
    for _ in 0..2 {
        let line = next(&rx)?;
        let m = match_line(&sshd, &line).with_context(|| format!("no match in {line:?}"))?;
        found.push(m.addr.to_string());
    }
    ensure!(found == ["192.0.2.1", "2001:db8::7"], "{found:?}");
    follower.stop();

    // Written while the agent is down, then read after the saved cursor, once.
    journald.log("ssh.service", "while down 1")?;
    journald.log("ssh.service", "while down 2")?;
    let (follower, rx) = follow_journal(&journald, scratch.path())?;
    ensure!(next(&rx)? == "while down 1");
    ensure!(next(&rx)? == "while down 2");
    journald.log("ssh.service", "after restart")?;
    ensure!(next(&rx)? == "after restart");
    if let Ok(line) = rx.recv_timeout(Duration::from_millis(500)) {
        bail!("unexpected line {:?}", line.text);
    }
    ensure!(
        follower.counters().totals().journal_restarts == 0,
        "journalctl exited"
    );
    follower.stop();
    Ok(())
}
