//! Following one systemd unit's journal by running `journalctl`.
//!
//! `journalctl --follow --unit UNIT --output=json` prints one JSON object per entry; the
//! follower hands over its `MESSAGE` and keeps its `__CURSOR` as the position, so a restarted
//! agent (or a restarted `journalctl`) continues with `--after-cursor` after the last entry it
//! handed over. Without a saved cursor it starts with `--lines=0`: history is not replayed.
//! When `journalctl` exits it is started again after a pause that doubles from
//! [`MIN_BACKOFF`] to [`MAX_BACKOFF`], and falls back to the minimum once a run lasted
//! [`MAX_BACKOFF`].

use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::follow::{Deliver, FollowError, Follower, Saver};
use super::lines::{Lines, Split};
use super::position::{self, JournalPosition};
use super::stop::Stop;
use super::{error_chain, Counters, Line};

/// The first pause before `journalctl` is started again.
pub const MIN_BACKOFF: Duration = Duration::from_secs(1);
/// The longest pause.
pub const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// The program to run and the first pause; tests replace `journalctl` with a script.
#[derive(Debug, Clone)]
pub(crate) struct Runner {
    pub(crate) program: PathBuf,
    pub(crate) min_backoff: Duration,
}

/// Follows the journal of `unit` with the system's `journalctl`.
pub fn start<F>(name: &str, unit: String, state: PathBuf, sink: F) -> Result<Follower, FollowError>
where
    F: FnMut(Line) + Send + 'static,
{
    let runner = Runner {
        program: PathBuf::from("journalctl"),
        min_backoff: MIN_BACKOFF,
    };
    start_with(name, unit, state, runner, sink)
}

pub(crate) fn start_with<F>(
    name: &str,
    unit: String,
    state: PathBuf,
    runner: Runner,
    sink: F,
) -> Result<Follower, FollowError>
where
    F: FnMut(Line) + Send + 'static,
{
    let child: Arc<Mutex<Option<Child>>> = Arc::default();
    let kill = {
        let child = Arc::clone(&child);
        Box::new(move || kill(&child)) as Box<dyn FnOnce() + Send>
    };
    let source = name.to_owned();
    Follower::spawn(name, Some(kill), move |stop, counters| {
        let mut deliver = Deliver { sink, counters };
        follow_journal(&source, &unit, &state, &runner, &child, stop, &mut deliver);
    })
}

fn kill(child: &Mutex<Option<Child>>) {
    if let Some(child) = child
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .as_mut()
    {
        // It may have exited already; then there is nothing to stop.
        let _ = child.kill();
    }
}

fn follow_journal<F: FnMut(Line)>(
    name: &str,
    unit: &str,
    state: &Path,
    runner: &Runner,
    slot: &Mutex<Option<Child>>,
    stop: &Stop,
    deliver: &mut Deliver<'_, F>,
) {
    let mut cursor = position::load::<JournalPosition>(state)
        .unwrap_or_else(|e| {
            tracing::warn!(source = name, error = %error_chain(&e), "ignoring the saved journal cursor; starting at the journal's end");
            None
        })
        .map(|p| p.cursor);
    let mut saver = Saver::new(state);
    let mut backoff = runner.min_backoff;
    while !stop.is_stopped() {
        let started = Instant::now();
        let result = run_once(
            name,
            unit,
            runner,
            slot,
            stop,
            &mut cursor,
            &mut saver,
            deliver,
        );
        if let Some(cursor) = &cursor {
            saver.save(
                &JournalPosition {
                    cursor: cursor.clone(),
                },
                name,
            );
        }
        if stop.is_stopped() {
            break;
        }
        Counters::bump(&deliver.counters.journal_restarts);
        match result {
            Ok(status) => {
                tracing::warn!(source = name, unit, %status, "journalctl exited; starting it again")
            }
            Err(e) => {
                tracing::warn!(source = name, unit, error = %e, "cannot run journalctl; trying again")
            }
        }
        if started.elapsed() >= MAX_BACKOFF {
            backoff = runner.min_backoff;
        }
        if stop.wait(backoff) {
            break;
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// The arguments of one `journalctl` run.
pub(crate) fn arguments(unit: &str, cursor: Option<&str>) -> Vec<String> {
    let mut args = vec![
        "--follow".to_owned(),
        "--quiet".to_owned(),
        "--no-pager".to_owned(),
        format!("--unit={unit}"),
        "--output=json".to_owned(),
    ];
    match cursor {
        Some(cursor) => args.push(format!("--after-cursor={cursor}")),
        None => args.push("--lines=0".to_owned()),
    }
    args
}

/// Runs `journalctl` until it exits or the follower is stopped.
#[allow(clippy::too_many_arguments)]
fn run_once<F: FnMut(Line)>(
    name: &str,
    unit: &str,
    runner: &Runner,
    slot: &Mutex<Option<Child>>,
    stop: &Stop,
    cursor: &mut Option<String>,
    saver: &mut Saver<JournalPosition>,
    deliver: &mut Deliver<'_, F>,
) -> io::Result<std::process::ExitStatus> {
    let mut child = Command::new(&runner.program)
        .args(arguments(unit, cursor.as_deref()))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let mut stdout = child
        .stdout
        .take()
        .ok_or_else(|| io::Error::other("journalctl's output was not captured"))?;
    *slot.lock().unwrap_or_else(PoisonError::into_inner) = Some(child);
    // A stop that came before the child was in the slot did not kill it.
    if stop.is_stopped() {
        kill(slot);
    }
    let mut lines = Lines::default();
    let mut buf = vec![0; 64 * 1024];
    loop {
        let n = match stdout.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        lines.feed(&buf[..n], &mut |split: Split<'_>| {
            let Some(entry) = parse_entry(split.bytes) else {
                return;
            };
            if let Some(new) = entry.cursor {
                *cursor = Some(new);
            }
            if let Some(message) = entry.message {
                deliver.line(Split {
                    bytes: &message,
                    cut: split.cut,
                });
            }
        });
        if let Some(cursor) = cursor {
            saver.save_soon(
                &JournalPosition {
                    cursor: cursor.clone(),
                },
                name,
            );
        }
    }
    let child = slot.lock().unwrap_or_else(PoisonError::into_inner).take();
    match child {
        Some(mut child) => child.wait(),
        None => Err(io::Error::other("journalctl's process was lost")),
    }
}

/// One journal entry as `--output=json` prints it.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Entry {
    pub(crate) cursor: Option<String>,
    /// `MESSAGE`, which the journal gives as a string, or as an array of bytes when it is not
    /// UTF-8; `None` when absent or null.
    pub(crate) message: Option<Vec<u8>>,
}

/// Parses one line of `journalctl --output=json`; `None` for anything that is not an entry.
pub(crate) fn parse_entry(line: &[u8]) -> Option<Entry> {
    let value: serde_json::Value = serde_json::from_slice(line).ok()?;
    let object = value.as_object()?;
    let cursor = object
        .get("__CURSOR")
        .and_then(|c| c.as_str())
        .map(str::to_owned);
    let message = match object.get("MESSAGE") {
        Some(serde_json::Value::String(text)) => Some(text.clone().into_bytes()),
        Some(serde_json::Value::Array(bytes)) => bytes
            .iter()
            .map(|b| b.as_u64().and_then(|b| u8::try_from(b).ok()))
            .collect(),
        _ => None,
    };
    Some(Entry { cursor, message })
}
