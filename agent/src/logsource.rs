//! Log sources: following a log file or a systemd unit's journal, and finding the source
//! address of a login failure in each line.
//!
//! A source is followed by a thread of its own ([`Follower`]), so a slow disk or a stuck
//! `journalctl` never blocks the daemon's runtime; every complete line is handed to a callback
//! with the time it was read. The follower keeps its position (the file's inode and offset, or
//! the journal cursor) in a small state file the caller names, so a restarted agent continues
//! where the last one stopped instead of replaying old failures or missing new ones.
//!
//! The daemon starts one [`Follower`] per configured source with [`Follower::start`], giving
//! it a state file of its own (one per source name) and a callback that runs [`match_line`]
//! with the source's compiled pattern and passes each [`LogMatch`] on, for instance through a
//! bounded channel to the runtime. [`BUILTIN`] and [`builtin`] give the patterns a
//! configuration may name (`pattern = "sshd"`). [`Follower::counters`] feeds the metrics.
//!
//! This module reads and matches; it does not count failures, ban or write audit records
//! (the detection layer does, from the [`LogMatch`]es it gets).

pub mod follow;
pub mod journal;
pub mod lines;
pub mod pattern;
pub mod position;
pub mod stop;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

pub use follow::{FollowError, Follower};
pub use pattern::{builtin, match_line, LogMatch, BUILTIN};

/// Where a source's lines come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// A log file, followed across rotation.
    File(PathBuf),
    /// The journal of one systemd unit (such as `ssh.service`), read through `journalctl`.
    Journal(String),
}

/// One line of a source, without its line terminator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    /// The line, with bytes that are not UTF-8 replaced by U+FFFD.
    pub text: String,
    /// When the follower read it (not the time the line itself may carry).
    pub read_at: SystemTime,
    /// The line was longer than [`lines::MAX_LINE`] bytes and this is its beginning; the rest
    /// was skipped.
    pub cut: bool,
}

/// What a follower has done, updated by its thread.
#[derive(Debug, Default)]
pub struct Counters {
    lines: AtomicU64,
    cut_lines: AtomicU64,
    rotations: AtomicU64,
    truncations: AtomicU64,
    journal_restarts: AtomicU64,
}

/// The [`Counters`] at one moment, for the daemon's metrics. Each only grows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    /// Lines handed to the callback.
    pub lines: u64,
    /// Lines longer than [`lines::MAX_LINE`] bytes, handed over cut.
    pub cut_lines: u64,
    /// Rotations by rename followed (a new file took the path).
    pub rotations: u64,
    /// Truncations followed (copytruncate): reading restarted at the file's start.
    pub truncations: u64,
    /// Times `journalctl` exited and was started again.
    pub journal_restarts: u64,
}

impl Counters {
    pub(crate) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// The counters' current values.
    pub fn totals(&self) -> Totals {
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        Totals {
            lines: get(&self.lines),
            cut_lines: get(&self.cut_lines),
            rotations: get(&self.rotations),
            truncations: get(&self.truncations),
            journal_restarts: get(&self.journal_restarts),
        }
    }
}

/// An error and its causes, joined by `: `, for a log message.
pub(crate) fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
