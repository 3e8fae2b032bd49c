//! Checks an audit log: every line's MAC, the chain of `prev`, gapless `seq`, and the tail
//! against the checkpoint. Reports the first broken record only: everything after it is
//! suspect.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use super::chain::{AuditKey, Checkpoint, ZERO_MAC};
use super::record::{check_line, LineError};

/// Why the log could not be checked at all.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("cannot read the audit log {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// The outcome of a check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    /// The records that passed, before the first broken one.
    pub records: u64,
    /// The first broken record; `None` when the log is intact.
    pub broken: Option<Broken>,
}

/// Where the log breaks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Broken {
    /// The line, counted from 1.
    pub line: u64,
    /// The record's `seq` when it can be read, or the `seq` expected there.
    pub seq: Option<u64>,
    pub problem: Problem,
}

/// What is wrong at the first broken record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// The line is not UTF-8.
    NotUtf8,
    /// The line is not a JSON record (also a blank line, or a line torn by a crash that the
    /// writer later continued after).
    BadJson(String),
    /// The line is JSON but not spelled as the writer spells records.
    Malformed(&'static str),
    /// The MAC does not match: the record was edited.
    MacMismatch,
    /// `seq` skips ahead: records were deleted.
    SeqGap { expected: u64, found: u64 },
    /// `seq` goes back or repeats: records were inserted or reordered.
    SeqOutOfOrder { expected: u64, found: u64 },
    /// `prev` is not the previous record's `mac`.
    PrevMismatch,
    /// The last line has no `\n`: a write was cut short.
    TornLine,
    /// The log ends before the checkpoint's record: its tail was cut off.
    TailTruncated { checkpoint_seq: u64, last_seq: u64 },
    /// The record at the checkpoint's `seq` is not the one the checkpoint names.
    CheckpointMismatch,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::NotUtf8 => f.write_str("not UTF-8"),
            Problem::BadJson(e) => write!(f, "not a JSON record ({e})"),
            Problem::Malformed(what) => write!(f, "malformed record: {what}"),
            Problem::MacMismatch => f.write_str("mac mismatch: the record was altered"),
            Problem::SeqGap { expected, found } => write!(
                f,
                "seq gap: expected {expected}, found {found} (records deleted)"
            ),
            Problem::SeqOutOfOrder { expected, found } => write!(
                f,
                "seq out of order: expected {expected}, found {found} (records inserted or reordered)"
            ),
            Problem::PrevMismatch => f.write_str("prev is not the previous record's mac"),
            Problem::TornLine => f.write_str("the last line is incomplete (torn write)"),
            Problem::TailTruncated {
                checkpoint_seq,
                last_seq,
            } => write!(
                f,
                "tail truncated: the checkpoint names seq {checkpoint_seq}, the log ends at seq {last_seq}"
            ),
            Problem::CheckpointMismatch => {
                f.write_str("the record differs from the one the checkpoint names")
            }
        }
    }
}

/// Checks the log at `path` with `key`, and its tail against `checkpoint` when given.
pub fn verify(
    path: &Path,
    key: &AuditKey,
    checkpoint: Option<Checkpoint>,
) -> Result<VerifyReport, VerifyError> {
    let content = std::fs::read(path).map_err(|source| VerifyError::Read {
        path: path.to_owned(),
        source,
    })?;
    Ok(verify_bytes(&content, key, checkpoint))
}

/// Checks the content of a log.
pub fn verify_bytes(
    content: &[u8],
    key: &AuditKey,
    checkpoint: Option<Checkpoint>,
) -> VerifyReport {
    let mut records = 0u64;
    let mut last_seq = 0u64;
    let mut last_mac = ZERO_MAC;
    let broken = |line: u64, seq: Option<u64>, problem: Problem, records: u64| VerifyReport {
        records,
        broken: Some(Broken { line, seq, problem }),
    };
    let mut rest = content;
    let mut line_no = 0u64;
    while !rest.is_empty() {
        line_no += 1;
        let Some(end) = rest.iter().position(|&b| b == b'\n') else {
            return broken(line_no, None, Problem::TornLine, records);
        };
        let line = &rest[..end];
        rest = &rest[end + 1..];
        let checked = match check_line(key, line) {
            Ok(checked) => checked,
            Err(e) => {
                let problem = match e {
                    LineError::NotUtf8 => Problem::NotUtf8,
                    LineError::Json(e) => Problem::BadJson(e),
                    LineError::Form(what) => Problem::Malformed(what),
                    LineError::Mac => Problem::MacMismatch,
                };
                return broken(line_no, None, problem, records);
            }
        };
        let expected = last_seq + 1;
        let seq = Some(checked.seq);
        if checked.seq > expected {
            let problem = Problem::SeqGap {
                expected,
                found: checked.seq,
            };
            return broken(line_no, seq, problem, records);
        }
        if checked.seq < expected {
            let problem = Problem::SeqOutOfOrder {
                expected,
                found: checked.seq,
            };
            return broken(line_no, seq, problem, records);
        }
        if checked.prev != last_mac {
            return broken(line_no, seq, Problem::PrevMismatch, records);
        }
        if let Some(cp) = checkpoint.filter(|cp| cp.seq == checked.seq) {
            if cp.mac != checked.mac {
                return broken(line_no, seq, Problem::CheckpointMismatch, records);
            }
        }
        records += 1;
        last_seq = checked.seq;
        last_mac = checked.mac;
    }
    if let Some(cp) = checkpoint.filter(|cp| cp.seq > last_seq) {
        let problem = Problem::TailTruncated {
            checkpoint_seq: cp.seq,
            last_seq,
        };
        return broken(line_no + 1, Some(last_seq + 1), problem, records);
    }
    VerifyReport {
        records,
        broken: None,
    }
}
