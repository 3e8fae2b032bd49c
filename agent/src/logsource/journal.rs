//! Following one systemd unit's journal by running `journalctl`.
//!
//! `journalctl --follow --unit UNIT --output=json` prints one JSON object per entry; the
//! follower hands over its `MESSAGE` and keeps its `__CURSOR` as the position, so a restarted
//! agent (or a restarted `journalctl`) continues with `--after-cursor` after the last entry it
//! handed over. Without a saved cursor it starts with `--lines=0`: history is not replayed.
//! When `journalctl` exits it is started again after a pause that doubles from
//! [`MIN_BACKOFF`] to [`MAX_BACKOFF`], and falls back to the minimum once a run lasted
//! [`MAX_BACKOFF`]. A saved cursor that `journalctl` refuses (it exits at once, having printed
//! nothing) is dropped, and the next run starts at the journal's end.

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

/// How the journal is read: the program (the system's `journalctl`, or a wrapper that adds
/// options such as `--directory` for a journal kept elsewhere) and the first pause before it
/// is started again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Journalctl {
    pub program: PathBuf,
    pub min_backoff: Duration,
}

impl Default for Journalctl {
    fn default() -> Journalctl {
        Journalctl {
            program: PathBuf::from("journalctl"),
            min_backoff: MIN_BACKOFF,
        }
    }
}

/// Follows the journal of `unit` with the system's `journalctl`.
pub fn start<F>(name: &str, unit: String, state: PathBuf, sink: F) -> Result<Follower, FollowError>
where
    F: FnMut(Line) + Send + 'static,
{
    start_with(name, unit, state, Journalctl::default(), sink)
}

/// Follows the journal of `unit` with `journalctl`.
pub fn start_with<F>(
    name: &str,
    unit: String,
    state: PathBuf,
    runner: Journalctl,
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
    runner: &Journalctl,
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
        let resumed_from = cursor.clone();
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
        // journalctl refuses a cursor it cannot parse (and exits) before printing anything;
        // starting again with it would fail forever.
        let refused = resumed_from.is_some()
            && resumed_from == cursor
            && result.as_ref().map_or(true, |status| !status.success());
        if refused {
            tracing::warn!(
                source = name,
                unit,
                "journalctl refused the saved cursor; continuing at the journal's end"
            );
            cursor = None;
        }
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
        // Without it, fields longer than 4096 bytes are printed as null.
        "--all".to_owned(),
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
    runner: &Journalctl,
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

#[cfg(test)]
mod tests {
    use std::fs;
    use std::os::unix::fs::PermissionsExt;
    use std::sync::mpsc;

    use super::*;

    #[test]
    fn entries_give_their_message_and_cursor() {
        let check = |line: &str, expected: Option<Entry>| {
            assert_eq!(parse_entry(line.as_bytes()), expected, "{line}");
        };
        check(
            r#"{"__CURSOR":"s=1;i=2","MESSAGE":"Failed password for root from 192.0.2.1 port 22 ssh2","_SYSTEMD_UNIT":"ssh.service"}"#,
            Some(Entry {
                cursor: Some("s=1;i=2".to_owned()),
                message: Some(b"Failed password for root from 192.0.2.1 port 22 ssh2".to_vec()),
            }),
        );
        check(
            r#"{"__CURSOR":"c","MESSAGE":[104,105,255]}"#,
            Some(Entry {
                cursor: Some("c".to_owned()),
                message: Some(b"hi\xff".to_vec()),
            }),
        );
        check(
            r#"{"__CURSOR":"c","MESSAGE":null}"#,
            Some(Entry {
                cursor: Some("c".to_owned()),
                message: None,
            }),
        );
        check(
            r#"{"__CURSOR":"c","MESSAGE":[300]}"#,
            Some(Entry {
                cursor: Some("c".to_owned()),
                message: None,
            }),
        );
        check("-- No entries --", None);
        check("[1,2]", None);
    }

    #[test]
    fn the_first_run_skips_history_and_later_runs_continue_after_the_cursor() {
        assert_eq!(
            arguments("ssh.service", None),
            [
                "--follow",
                "--quiet",
                "--no-pager",
                "--unit=ssh.service",
                "--output=json",
                "--all",
                "--lines=0"
            ]
        );
        assert_eq!(
            arguments("ssh.service", Some("s=1;i=2"))
                .last()
                .map(String::as_str),
            Some("--after-cursor=s=1;i=2")
        );
    }

    /// A stand-in for journalctl: records its arguments, prints two entries and exits on its
    /// first run, prints one more and keeps following on its second.
    const FAKE: &str = r#"#!/bin/sh
dir=$(dirname "$0")
echo "$*" >> "$dir/args"
runs=$(wc -l < "$dir/args")
if [ "$runs" -eq 1 ]; then
  echo '{"__CURSOR":"c1","MESSAGE":"one"}'
  echo '{"__CURSOR":"c2","MESSAGE":[116,119,111]}'
  exit 1
fi
echo '{"__CURSOR":"c3","MESSAGE":"three"}'
exec sleep 60
"#;

    #[test]
    fn journalctl_is_restarted_after_the_last_cursor_and_stopped_at_once() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let program = dir.path().join("journalctl");
        fs::write(&program, FAKE).unwrap_or_else(|e| panic!("{e}"));
        fs::set_permissions(&program, fs::Permissions::from_mode(0o755))
            .unwrap_or_else(|e| panic!("{e}"));
        let state = dir.path().join("ssh.pos");
        let (tx, rx) = mpsc::channel();
        let runner = Journalctl {
            program,
            min_backoff: Duration::from_millis(50),
        };
        let follower = start_with(
            "ssh",
            "ssh.service".to_owned(),
            state.clone(),
            runner,
            move |line: Line| {
                let _ = tx.send(line.text);
            },
        )
        .unwrap_or_else(|e| panic!("start: {e}"));
        let got: Vec<String> = (0..3)
            .map(|_| {
                rx.recv_timeout(Duration::from_secs(20))
                    .unwrap_or_else(|e| panic!("{e}"))
            })
            .collect();
        assert_eq!(got, ["one", "two", "three"]);
        assert_eq!(follower.counters().totals().journal_restarts, 1);
        let stopping = Instant::now();
        follower.stop();
        assert!(
            stopping.elapsed() < Duration::from_secs(5),
            "stopping waited for journalctl"
        );
        let args = fs::read_to_string(dir.path().join("args")).unwrap_or_else(|e| panic!("{e}"));
        let runs: Vec<&str> = args.lines().collect();
        assert_eq!(
            runs,
            [
                "--follow --quiet --no-pager --unit=ssh.service --output=json --all --lines=0",
                "--follow --quiet --no-pager --unit=ssh.service --output=json --all --after-cursor=c2",
            ]
        );
        assert_eq!(
            position::load::<JournalPosition>(&state).ok(),
            Some(Some(JournalPosition {
                cursor: "c3".to_owned()
            }))
        );
    }

    #[test]
    fn a_refused_cursor_is_dropped() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let program = dir.path().join("journalctl");
        let script = r#"#!/bin/sh
echo "$*" >> "$(dirname "$0")/args"
case "$*" in
  *--after-cursor=*) echo "Failed to seek to cursor: Invalid argument" >&2; exit 1 ;;
esac
echo '{"__CURSOR":"good","MESSAGE":"fresh"}'
exec sleep 60
"#;
        fs::write(&program, script).unwrap_or_else(|e| panic!("{e}"));
        fs::set_permissions(&program, fs::Permissions::from_mode(0o755))
            .unwrap_or_else(|e| panic!("{e}"));
        let state = dir.path().join("ssh.pos");
        position::save(
            &state,
            &JournalPosition {
                cursor: "bad".to_owned(),
            },
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let (tx, rx) = mpsc::channel();
        let runner = Journalctl {
            program,
            min_backoff: Duration::from_millis(50),
        };
        let follower = start_with(
            "ssh",
            "ssh.service".to_owned(),
            state.clone(),
            runner,
            move |line: Line| {
                let _ = tx.send(line.text);
            },
        )
        .unwrap_or_else(|e| panic!("start: {e}"));
        assert_eq!(
            rx.recv_timeout(Duration::from_secs(20)).ok().as_deref(),
            Some("fresh")
        );
        follower.stop();
        let args = fs::read_to_string(dir.path().join("args")).unwrap_or_else(|e| panic!("{e}"));
        let last: Vec<&str> = args
            .lines()
            .map(|run| run.rsplit(' ').next().unwrap_or(""))
            .collect();
        assert_eq!(last, ["--after-cursor=bad", "--lines=0"]);
        assert_eq!(
            position::load::<JournalPosition>(&state).ok(),
            Some(Some(JournalPosition {
                cursor: "good".to_owned()
            }))
        );
    }
}
