//! A headless Chromium driven over the DevTools protocol, for scenarios that need a real browser
//! (a login form typed into and submitted, a page that must or must not load through the
//! firewall).
//!
//! Chromium is started with `--remote-debugging-pipe`: DevTools messages are NUL-terminated JSON
//! on the child's fd 3 (to the browser) and fd 4 (from the browser). No TCP port is opened, so
//! the browser works the same inside a network namespace (started under `ip netns exec`, which
//! also gives it the namespace's view of `/sys`) as outside.
//!
//! Nothing here can hang a test: a reader thread forwards every message from fd 4 over a
//! channel, and every command waits for its reply (matched by `id`, events skipped) with a
//! deadline. When Chromium dies, the error carries its exit status and the tail of its output.
//!
//! A [`Browser`] runs in its own process group with a fresh `--user-data-dir`; dropping it (also
//! while a failing test unwinds) kills the whole group, reaps Chromium and removes the directory.
//! A [`Page`] is a flattened DevTools session on the first page target: `Input.*` events are
//! real user input (`isTrusted` is true), not DOM manipulation.

// `unsafe`: the pre-exec hook that hands Chromium its DevTools pipes on fds 3 and 4.
#![allow(unsafe_code)]

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use base64::Engine as _;
use nix::fcntl::OFlag;
use nix::sys::signal::{kill, killpg, Signal};
use nix::sys::wait::{waitid, Id, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use serde_json::{json, Value};
use tempfile::TempDir;

/// The browser the suite drives (Debian package `chromium`).
pub const CHROMIUM: &str = "/usr/bin/chromium";

/// How long a DevTools command may take unless its caller gives a deadline of its own.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(15);

/// How long Chromium may take to answer its first command.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a probe inside a deadline wait is given at least, even when the deadline is near:
/// a probe cut shorter than a round trip would only ever time out.
const MIN_PROBE: Duration = Duration::from_millis(500);

/// How many lines of Chromium's output an error carries.
const LOG_TAIL_LINES: usize = 30;

/// The flags every browser gets, before `--user-data-dir` and the start URL.
const FLAGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--disable-default-apps",
    "--remote-debugging-pipe",
    "--window-size=900,700",
    // No crash uploads. (`--disable-crashpad-for-testing` would also stop the crashpad handler,
    // which runs outside the process group, but then the network service crashes on start with
    // "FD ownership violation": `drop` finds the handler by its command line instead.)
    "--disable-breakpad",
];

/// A headless Chromium in its own process group, killed with its group and its profile
/// directory removed on drop.
#[derive(Debug)]
pub struct Browser {
    child: Child,
    /// fd 3 of the child: commands, each followed by a NUL.
    to_browser: File,
    /// Messages parsed from the child's fd 4 by the reader thread. Disconnected once the pipe
    /// reaches end of file, that is once every Chromium process has closed it.
    from_browser: Receiver<Value>,
    /// Set once the pipe from the browser closed: no command can succeed any more.
    dead: bool,
    next_id: u64,
    product: String,
    /// Chromium's stdout and stderr.
    log: PathBuf,
    /// Holds the profile and the log; declared last so it is removed after the kill in `drop`.
    dir: TempDir,
}

impl Browser {
    /// Starts Chromium on `about:blank`, inside the network namespace `netns` when given (under
    /// `ip netns exec NAME`), and waits until it answers on its DevTools pipe.
    pub fn start(netns: Option<&str>) -> Result<Browser> {
        Browser::start_with(netns, &[])
    }

    /// [`Browser::start`] with more command-line flags, such as `--host-resolver-rules`.
    pub fn start_with(netns: Option<&str>, extra: &[&str]) -> Result<Browser> {
        if !Path::new(CHROMIUM).is_file() {
            bail!("{CHROMIUM} is missing: apt-get install chromium");
        }
        let dir = tempfile::Builder::new()
            .prefix("crmguard-browser-")
            .tempdir()
            .context("creating the browser's temporary directory")?;
        let profile = dir.path().join("profile");
        std::fs::create_dir(&profile).with_context(|| format!("creating {}", profile.display()))?;
        let home = dir.path().join("home");
        std::fs::create_dir(&home).with_context(|| format!("creating {}", home.display()))?;
        let log = dir.path().join("chromium.log");
        let stderr = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let stdout = stderr
            .try_clone()
            .context("duplicating the log file for stdout")?;

        // Both pipes are close-on-exec in this process, so children other tests spawn meanwhile
        // do not inherit them; the child gets its ends as fds 3 and 4 in `pre_exec`.
        let (child_reads, to_browser) =
            nix::unistd::pipe2(OFlag::O_CLOEXEC).context("creating the pipe to the browser")?;
        let (from_browser, child_writes) =
            nix::unistd::pipe2(OFlag::O_CLOEXEC).context("creating the pipe from the browser")?;

        let mut cmd = match netns {
            Some(ns) => {
                let mut cmd = Command::new("ip");
                cmd.args(["netns", "exec", ns, CHROMIUM]);
                cmd
            }
            None => Command::new(CHROMIUM),
        };
        cmd.args(FLAGS)
            .args(extra)
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg("about:blank")
            // Whatever Chromium writes outside its profile ($HOME/.config, .cache, .pki) stays
            // in the temporary directory too.
            .env("HOME", &home)
            .env("XDG_CONFIG_HOME", home.join(".config"))
            .env("XDG_CACHE_HOME", home.join(".cache"))
            .env("XDG_DATA_HOME", home.join(".local/share"))
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .process_group(0);
        let (read_fd, write_fd) = (child_reads.as_raw_fd(), child_writes.as_raw_fd());
        // SAFETY: the closure runs in the forked child before exec and only calls fcntl(2) and
        // dup2(2), which are async-signal-safe; it allocates nothing and takes no lock. The two
        // descriptors stay open in the parent until `spawn` has returned.
        unsafe {
            cmd.pre_exec(move || pipe_fds_to_3_and_4(read_fd, write_fd));
        }
        let spawned = cmd.spawn();
        // The parent's copies of the child's ends must go, or the pipe from the browser would
        // never reach end of file when Chromium dies.
        drop(cmd);
        drop(child_reads);
        drop(child_writes);
        let child = spawned.with_context(|| match netns {
            Some(ns) => format!("starting {CHROMIUM} in netns {ns}"),
            None => format!("starting {CHROMIUM}"),
        })?;

        let (tx, rx) = mpsc::channel();
        let reader = BufReader::new(File::from(from_browser));
        let spawned_reader = std::thread::Builder::new()
            .name("chromium-devtools".to_owned())
            .spawn(move || read_messages(reader, &tx));
        let mut browser = Browser {
            child,
            to_browser: File::from(to_browser),
            from_browser: rx,
            dead: false,
            next_id: 0,
            product: String::new(),
            log,
            dir,
        };
        // Dropping `browser` on an error below kills Chromium and removes its directory.
        spawned_reader.context("spawning the DevTools reader thread")?;
        let version = browser
            .call(None, "Browser.getVersion", json!({}), STARTUP_TIMEOUT)
            .context("waiting for Chromium to answer on its DevTools pipe")?;
        version["product"]
            .as_str()
            .unwrap_or("Chromium (unknown version)")
            .clone_into(&mut browser.product);
        Ok(browser)
    }

    /// The pid of the browser process, also the id of its process group.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What `Browser.getVersion` said, e.g. `Chrome/156.0.8078.108`.
    pub fn product(&self) -> &str {
        &self.product
    }

    /// The directory holding the profile (`profile/`), Chromium's `$HOME` (`home/`) and its
    /// output (`chromium.log`).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Attaches to the first page target (the `about:blank` tab Chromium starts with).
    pub fn page(&mut self) -> Result<Page<'_>> {
        let deadline = Instant::now() + COMMAND_TIMEOUT;
        let target_id = self
            .poll(COMMAND_TIMEOUT, "a page target", |browser| {
                let targets =
                    browser.call(None, "Target.getTargets", json!({}), remaining(deadline))?;
                let id = targets["targetInfos"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|info| info["type"] == "page")
                    .and_then(|info| info["targetId"].as_str())
                    .map(str::to_owned);
                Ok(id)
            })
            .context("finding Chromium's first page")?;
        let attached = self.call(
            None,
            "Target.attachToTarget",
            json!({ "targetId": target_id, "flatten": true }),
            COMMAND_TIMEOUT,
        )?;
        let Some(session) = attached["sessionId"].as_str() else {
            bail!("Target.attachToTarget returned no sessionId: {attached}");
        };
        let mut page = Page {
            session: session.to_owned(),
            target_id,
            browser: self,
        };
        // A headless page never has the window focus; emulating it makes focus(), :focus and
        // focus events behave as for a user's foreground tab.
        page.call(
            "Emulation.setFocusEmulationEnabled",
            json!({ "enabled": true }),
            COMMAND_TIMEOUT,
        )?;
        Ok(page)
    }

    /// Sends one command (on `session` when given) and waits up to `timeout` for its reply,
    /// skipping events and late replies to earlier commands. A DevTools error reply is an error.
    fn call(
        &mut self,
        session: Option<&str>,
        method: &str,
        params: Value,
        timeout: Duration,
    ) -> Result<Value> {
        if self.dead {
            bail!("{method}: {}", self.diagnosis("the browser is gone"));
        }
        let deadline = Instant::now() + timeout;
        self.next_id += 1;
        let id = self.next_id;
        let mut message = json!({ "id": id, "method": method, "params": params });
        if let Some(session) = session {
            message["sessionId"] = Value::from(session);
        }
        let mut bytes = serde_json::to_vec(&message).context("encoding a DevTools command")?;
        bytes.push(0);
        if let Err(e) = self.to_browser.write_all(&bytes) {
            self.dead = true;
            let what = format!("writing {method} to the DevTools pipe failed ({e})");
            bail!("{}", self.diagnosis(&what));
        }
        loop {
            let reply = match self
                .from_browser
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                Ok(reply) => reply,
                Err(RecvTimeoutError::Timeout) => {
                    let what = format!("no reply to {method} within {timeout:?}");
                    bail!("{}", self.diagnosis(&what));
                }
                Err(RecvTimeoutError::Disconnected) => {
                    self.dead = true;
                    let what = format!("the DevTools pipe closed while waiting for {method}");
                    bail!("{}", self.diagnosis(&what));
                }
            };
            if reply["id"].as_u64() != Some(id) {
                continue; // an event, or the late reply to a command that timed out
            }
            if let Some(error) = reply.get("error") {
                bail!(
                    "{method} failed: {} (code {})",
                    error["message"].as_str().unwrap_or("no message"),
                    error["code"]
                );
            }
            return Ok(reply.get("result").cloned().unwrap_or(Value::Null));
        }
    }

    /// [`crate::wait::wait_for`] for DevTools probes: an error while the browser lives means
    /// "not yet" (a page between two documents cannot evaluate), but once the browser is gone
    /// the wait ends at once with that error.
    fn poll<T>(
        &mut self,
        timeout: Duration,
        what: &str,
        mut probe: impl FnMut(&mut Browser) -> Result<Option<T>>,
    ) -> Result<T> {
        crate::wait::wait_for(timeout, what, || match probe(self) {
            Ok(Some(value)) => Ok(Some(Ok(value))),
            Ok(None) => Ok(None),
            Err(e) if self.dead => Ok(Some(Err(e))),
            Err(e) => Err(e),
        })?
    }

    /// `what`, then whether Chromium still runs (or how it exited), then the tail of its output.
    fn diagnosis(&self, what: &str) -> String {
        // A pipe that just closed usually means an exit in progress: give it a moment to show.
        let until = Instant::now() + Duration::from_secs(2);
        let mut state = self.state();
        while self.dead && state.is_none() && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(20));
            state = self.state();
        }
        let state = state.unwrap_or_else(|| "still running".to_owned());
        format!(
            "{what}; chromium (pid {}) {state}; {}",
            self.child.id(),
            tail(&self.log, LOG_TAIL_LINES)
        )
    }

    /// How Chromium exited, `None` while it runs. Does not reap it (`WNOWAIT`): until `drop`
    /// reaps it, its pid, which is also its process group's id, cannot be reused.
    fn state(&self) -> Option<String> {
        let pid = Pid::from_raw(i32::try_from(self.child.id()).ok()?);
        let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
        match waitid(Id::Pid(pid), flags) {
            Ok(WaitStatus::Exited(_, code)) => Some(format!("exited with status {code}")),
            Ok(WaitStatus::Signaled(_, signal, _)) => Some(format!("was killed by {signal}")),
            Ok(_) => None,
            Err(e) => Some(format!("cannot be waited for ({e})")),
        }
    }
}

impl Browser {
    /// Kills every process whose command line names this browser's directory and so belongs to
    /// it, but may not be in its process group: the crashpad handler (`--database=` under our
    /// `$HOME`) makes its own group.
    fn kill_stragglers(&self) {
        let marker = self.dir.path().as_os_str().as_bytes();
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return;
        };
        for entry in entries.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<i32>().ok())
            else {
                continue;
            };
            let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
                continue; // gone meanwhile
            };
            if cmdline.windows(marker.len()).any(|window| window == marker) {
                match kill(Pid::from_raw(pid), Signal::SIGKILL) {
                    Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
                    Err(e) => eprintln!("killing chromium's process {pid}: {e}"),
                }
            }
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // The whole group: the browser process and the zygote, renderer and utility processes it
        // forked (under `ip netns exec` the group leader is Chromium itself, `ip` execs it).
        // The leader is not reaped yet, so the group id still names this group.
        if let Ok(pgid) = i32::try_from(self.child.id()) {
            match killpg(Pid::from_raw(pgid), Signal::SIGKILL) {
                Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
                Err(e) => eprintln!("killing chromium's process group {pgid}: {e}"),
            }
        }
        self.kill_stragglers();
        if let Err(e) = self.child.wait() {
            eprintln!("reaping chromium (pid {}): {e}", self.child.id());
        }
        // The reader thread is not joined: it ends by itself once the pipe reaches end of file,
        // and must not block this drop if some process outside the group still held the pipe.
        // The directory (profile and log) is removed when `dir` drops, after this.
    }
}

/// Runs in the forked child: makes `read_fd` its fd 3 and `write_fd` its fd 4, both inherited
/// across exec (dup2 leaves the new descriptor without close-on-exec).
fn pipe_fds_to_3_and_4(read_fd: i32, write_fd: i32) -> std::io::Result<()> {
    // First move both above 4, so that neither dup2 below can overwrite the other's source and
    // neither is a no-op dup2 onto itself (which would keep close-on-exec). The copies are
    // close-on-exec and vanish at exec.
    // SAFETY: fcntl and dup2 on descriptors this process owns; no memory is passed.
    unsafe {
        let read_high = libc::fcntl(read_fd, libc::F_DUPFD_CLOEXEC, 10);
        if read_high < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let write_high = libc::fcntl(write_fd, libc::F_DUPFD_CLOEXEC, 10);
        if write_high < 0 {
            return Err(std::io::Error::last_os_error());
        }
        if libc::dup2(read_high, 3) < 0 || libc::dup2(write_high, 4) < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// The reader thread: forwards every NUL-terminated JSON message until end of file, or until
/// the browser is dropped.
fn read_messages(mut reader: BufReader<File>, tx: &mpsc::Sender<Value>) {
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match reader.read_until(0, &mut buf) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) => {
                eprintln!("reading chromium's DevTools pipe: {e}");
                return;
            }
        }
        if buf.last() == Some(&0) {
            buf.pop();
        }
        match serde_json::from_slice::<Value>(&buf) {
            Ok(message) => {
                if tx.send(message).is_err() {
                    return;
                }
            }
            Err(e) => eprintln!(
                "chromium sent a message that is not JSON ({e}): {}",
                String::from_utf8_lossy(&buf)
            ),
        }
    }
}

/// The last `lines` lines of Chromium's output, labelled, for error messages.
fn tail(log: &Path, lines: usize) -> String {
    let text = match std::fs::read_to_string(log) {
        Ok(text) => text,
        Err(e) => return format!("its output ({}) cannot be read: {e}", log.display()),
    };
    // Without a D-Bus (containers, CI) Chromium complains about it many times a second; that
    // noise would push what matters out of the tail.
    let (noise, all): (Vec<&str>, Vec<&str>) =
        text.lines().partition(|line| line.contains(":ERROR:dbus/"));
    let noise = match noise.len() {
        0 => String::new(),
        n => format!(", {n} D-Bus complaints left out"),
    };
    if all.is_empty() {
        return format!("it printed nothing{noise}");
    }
    let skipped = all.len().saturating_sub(lines);
    let last = if skipped > 0 {
        format!(" (last {} lines)", all.len() - skipped)
    } else {
        String::new()
    };
    format!("its output{last}{noise}:\n{}", all[skipped..].join("\n"))
}

/// What is left until `deadline`, but at least [`MIN_PROBE`].
fn remaining(deadline: Instant) -> Duration {
    deadline
        .saturating_duration_since(Instant::now())
        .max(MIN_PROBE)
}

/// JavaScript truthiness of a value `Runtime.evaluate` returned by value.
fn truthy(value: &Value) -> bool {
    match value {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0 && !f.is_nan()),
        Value::String(s) => !s.is_empty(),
        Value::Array(_) | Value::Object(_) => true,
    }
}

/// A JavaScript string literal for `text`.
fn js_string(text: &str) -> String {
    // JSON strings are JavaScript string literals (since ES2019 also with U+2028/U+2029).
    Value::from(text).to_string()
}

/// A JavaScript expression that evaluates to the element `selector` matches, or throws an Error
/// naming the selector.
fn element(selector: &str) -> String {
    let sel = js_string(selector);
    format!(
        "(() => {{ const el = document.querySelector({sel}); \
         if (!el) throw new Error('no element matches ' + {sel}); return el; }})()"
    )
}

/// The text of an exception `Runtime.evaluate` reported.
fn exception_text(details: &Value) -> String {
    details["exception"]["description"]
        .as_str()
        .or_else(|| details["exception"]["value"].as_str())
        .or_else(|| details["text"].as_str())
        .unwrap_or("an exception without a description")
        .to_owned()
}

/// A DevTools session attached to one page target of a [`Browser`].
#[derive(Debug)]
pub struct Page<'b> {
    browser: &'b mut Browser,
    session: String,
    target_id: String,
}

impl Page<'_> {
    pub fn target_id(&self) -> &str {
        &self.target_id
    }

    /// Sends a command on this page's session. For what the typed helpers do not cover.
    pub fn call(&mut self, method: &str, params: Value, timeout: Duration) -> Result<Value> {
        self.browser
            .call(Some(&self.session), method, params, timeout)
    }

    /// Loads `url` and waits until the new document's `readyState` is `complete`, for at most
    /// `deadline` in all. A network-level failure (`errorText`, e.g. `net::ERR_CONNECTION_REFUSED`,
    /// what a dropping firewall ends in as `net::ERR_TIMED_OUT` or a deadline error) is an error;
    /// an HTTP error status is not (the page shows it).
    pub fn navigate(&mut self, url: &str, deadline: Duration) -> Result<()> {
        let until = Instant::now() + deadline;
        // Marks the current document, so that the wait below cannot mistake it, still complete,
        // for the new one.
        self.eval_with("window.__crmguardOldDocument = true", remaining(until))
            .context("marking the current document before navigating")?;
        let result = self
            .call("Page.navigate", json!({ "url": url }), remaining(until))
            .with_context(|| format!("navigating to {url}"))?;
        if let Some(error) = result["errorText"].as_str().filter(|e| !e.is_empty()) {
            bail!("navigating to {url}: {error}");
        }
        // Without a loaderId the navigation stayed in the same document (a fragment change).
        let condition = if result["loaderId"].as_str().is_some() {
            "!window.__crmguardOldDocument && document.readyState === 'complete'"
        } else {
            "document.readyState === 'complete'"
        };
        let left = until.saturating_duration_since(Instant::now());
        self.wait_for(condition, left)
            .with_context(|| format!("waiting for {url} to load"))
    }

    /// Evaluates `js` in the page (awaiting a promise) and returns its value as JSON
    /// (`undefined` becomes null). A thrown exception is an error carrying its text.
    pub fn eval(&mut self, js: &str) -> Result<Value> {
        self.eval_with(js, COMMAND_TIMEOUT)
    }

    fn eval_with(&mut self, js: &str, timeout: Duration) -> Result<Value> {
        let result = self.call(
            "Runtime.evaluate",
            json!({
                "expression": js,
                "returnByValue": true,
                "awaitPromise": true,
            }),
            timeout,
        )?;
        if let Some(details) = result.get("exceptionDetails") {
            bail!("evaluating {js:?} threw: {}", exception_text(details));
        }
        Ok(result["result"]
            .get("value")
            .cloned()
            .unwrap_or(Value::Null))
    }

    /// Polls the JavaScript expression `js_condition` until it is truthy, for at most
    /// `deadline`. Evaluation errors (an element not there yet, a document being replaced)
    /// count as "not yet" and the last one is in the timeout error; a dead browser fails at once.
    pub fn wait_for(&mut self, js_condition: &str, deadline: Duration) -> Result<()> {
        let until = Instant::now() + deadline;
        let session = self.session.clone();
        let what = format!("`{js_condition}` in the page");
        self.browser.poll(deadline, &what, |browser| {
            let result = browser.call(
                Some(&session),
                "Runtime.evaluate",
                json!({
                    "expression": js_condition,
                    "returnByValue": true,
                    "awaitPromise": true,
                }),
                remaining(until).min(COMMAND_TIMEOUT),
            )?;
            if let Some(details) = result.get("exceptionDetails") {
                bail!("it threw: {}", exception_text(details));
            }
            Ok(truthy(&result["result"]["value"]).then_some(()))
        })
    }

    /// Focuses the element `css_selector` matches and types `text` into it with
    /// `Input.insertText`: the page sees trusted `beforeinput`/`input` events as from a user
    /// (an IME commit), not a script setting `.value`.
    pub fn type_into(&mut self, css_selector: &str, text: &str) -> Result<()> {
        let sel = js_string(css_selector);
        let focus = format!(
            "(() => {{ const el = {el}; el.scrollIntoView({{ block: 'center' }}); el.focus(); \
             if (document.activeElement !== el) throw new Error({sel} + ' does not take the focus'); \
             return true; }})()",
            el = element(css_selector)
        );
        self.eval(&focus)
            .with_context(|| format!("focusing {css_selector}"))?;
        self.call("Input.insertText", json!({ "text": text }), COMMAND_TIMEOUT)
            .with_context(|| format!("typing into {css_selector}"))?;
        Ok(())
    }

    /// Clicks the centre of the element `css_selector` matches with a left mouse press and
    /// release (`Input.dispatchMouseEvent`), after scrolling it into view. Fails when the element
    /// has no area or another element covers its centre (a user could not click it either).
    pub fn click(&mut self, css_selector: &str) -> Result<()> {
        let sel = js_string(css_selector);
        let locate = format!(
            "(() => {{ const el = {el}; el.scrollIntoView({{ block: 'center', inline: 'center' }}); \
             const r = el.getBoundingClientRect(); \
             if (r.width <= 0 || r.height <= 0) throw new Error({sel} + ' has no area'); \
             const x = r.left + r.width / 2, y = r.top + r.height / 2; \
             const hit = document.elementFromPoint(x, y); \
             if (!hit || !(hit === el || el.contains(hit))) throw new Error({sel} + ' is covered at (' \
               + x + ', ' + y + ') by ' + (hit ? hit.outerHTML.slice(0, 120) : 'nothing')); \
             return {{ x, y }}; }})()",
            el = element(css_selector)
        );
        let point = self
            .eval(&locate)
            .with_context(|| format!("locating {css_selector}"))?;
        let (Some(x), Some(y)) = (point["x"].as_f64(), point["y"].as_f64()) else {
            bail!("locating {css_selector} gave {point}");
        };
        for (kind, buttons) in [("mouseMoved", 0), ("mousePressed", 1), ("mouseReleased", 0)] {
            let mut params = json!({ "type": kind, "x": x, "y": y, "buttons": buttons });
            if kind != "mouseMoved" {
                params["button"] = Value::from("left");
                params["clickCount"] = Value::from(1);
            }
            self.call("Input.dispatchMouseEvent", params, COMMAND_TIMEOUT)
                .with_context(|| format!("clicking {css_selector} ({kind} at {x}, {y})"))?;
        }
        Ok(())
    }

    /// The `innerText` of the element `css_selector` matches.
    pub fn text(&mut self, css_selector: &str) -> Result<String> {
        let js = format!("{}.innerText", element(css_selector));
        let value = self.eval(&js)?;
        match value {
            Value::String(text) => Ok(text),
            other => bail!("the innerText of {css_selector} is not a string: {other}"),
        }
    }

    /// A PNG of the viewport (`Page.captureScreenshot`).
    pub fn screenshot_png(&mut self) -> Result<Vec<u8>> {
        let result = self.call(
            "Page.captureScreenshot",
            json!({ "format": "png" }),
            COMMAND_TIMEOUT,
        )?;
        let Some(data) = result["data"].as_str() else {
            bail!("Page.captureScreenshot returned no data");
        };
        base64::engine::general_purpose::STANDARD
            .decode(data)
            .context("decoding the screenshot's base64")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truthiness_follows_javascript() {
        for falsy in [json!(null), json!(false), json!(0), json!(0.0), json!("")] {
            assert!(!truthy(&falsy), "{falsy}");
        }
        for true_ in [
            json!(true),
            json!(1),
            json!(-0.5),
            json!("0"),
            json!([]),
            json!({}),
        ] {
            assert!(truthy(&true_), "{true_}");
        }
    }

    #[test]
    fn selectors_are_quoted_as_javascript_strings() {
        assert_eq!(
            js_string(r#"input[name="a'b"]"#),
            r#""input[name=\"a'b\"]""#
        );
        assert!(element("#x").contains(r##"document.querySelector("#x")"##));
    }

    #[test]
    fn the_log_tail_keeps_the_last_lines() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let log = dir.path().join("log");
        std::fs::write(&log, "1\n2\n3\n").expect("writing the log");
        assert_eq!(tail(&log, 2), "its output (last 2 lines):\n2\n3");
        assert_eq!(tail(&log, 5), "its output:\n1\n2\n3");
        std::fs::write(&log, "a\n[1:2:3:ERROR:dbus/bus.cc:405] no bus\nb\n").expect("writing");
        assert_eq!(
            tail(&log, 5),
            "its output, 1 D-Bus complaints left out:\na\nb"
        );
        std::fs::write(&log, "").expect("emptying the log");
        assert_eq!(tail(&log, 5), "it printed nothing");
    }
}
