//! Checks an audit log: every line's MAC, the chain of `prev`, gapless `seq`, and the tail
//! against the checkpoint. Reports the first broken record only: everything after it is
//! suspect. Lines torn by a crash are stepped over when the writer acknowledged them
//! (`audit_torn_line`, see [`super::Writer::open`]) and are listed in the report, as are the
//! writer's records of a checkpoint it found missing (`audit_checkpoint_missing`).

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use data_encoding::HEXLOWER;
use sha2::{Digest, Sha256};

use super::chain::{AuditKey, Checkpoint, ZERO_MAC};
use super::record::{check_line, Checked, EventType, LineError};

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
    /// Damage the writer acknowledged, before the first broken record.
    pub acknowledged: Vec<Acknowledged>,
    /// The `audit_checkpoint_missing` records before the first broken record.
    pub checkpoints_missing: Vec<CheckpointMissing>,
}

/// A record of the writer finding the checkpoint gone while the log held records: a tail cut
/// off before then (with the checkpoint removed) could not be seen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointMissing {
    /// The record's line, counted from 1.
    pub line: u64,
    /// The record's `seq`.
    pub seq: u64,
}

/// Lines torn by a crash, which the record after them acknowledges: the chain goes on across
/// them from the record before, so no record was lost there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acknowledged {
    /// The first damaged line, counted from 1.
    pub line: u64,
    pub lines: u64,
    pub bytes: u64,
    /// The `seq` of the acknowledging `audit_torn_line` record.
    pub seq: u64,
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
    let mut report = VerifyReport {
        records: 0,
        broken: None,
        acknowledged: Vec::new(),
        checkpoints_missing: Vec::new(),
    };
    let mut last_seq = 0u64;
    let mut last_mac = ZERO_MAC;
    let mut start = 0usize;
    let mut line_no = 0u64;
    while start < content.len() {
        line_no += 1;
        let Some(len) = content[start..].iter().position(|&b| b == b'\n') else {
            return broken(report, line_no, None, Problem::TornLine);
        };
        let line = &content[start..start + len];
        let checked = match check_line(key, line) {
            Ok(checked) => checked,
            Err(e) => {
                let expected = (last_seq + 1, last_mac);
                if let Some((ack, at)) = acknowledgement(content, start, line_no, expected, key) {
                    line_no += ack.lines - 1;
                    start = at;
                    report.acknowledged.push(ack);
                    continue;
                }
                let problem = match e {
                    LineError::NotUtf8 => Problem::NotUtf8,
                    LineError::Json(e) => Problem::BadJson(e),
                    LineError::Form(what) => Problem::Malformed(what),
                    LineError::Mac => Problem::MacMismatch,
                };
                return broken(report, line_no, None, problem);
            }
        };
        start += len + 1;
        let expected = last_seq + 1;
        let seq = Some(checked.seq);
        if checked.seq > expected {
            let problem = Problem::SeqGap {
                expected,
                found: checked.seq,
            };
            return broken(report, line_no, seq, problem);
        }
        if checked.seq < expected {
            let problem = Problem::SeqOutOfOrder {
                expected,
                found: checked.seq,
            };
            return broken(report, line_no, seq, problem);
        }
        if checked.prev != last_mac {
            return broken(report, line_no, seq, Problem::PrevMismatch);
        }
        if let Some(cp) = checkpoint.filter(|cp| cp.seq == checked.seq) {
            if cp.mac != checked.mac {
                return broken(report, line_no, seq, Problem::CheckpointMismatch);
            }
        }
        if checked.kind == EventType::AuditCheckpointMissing.as_str() {
            report.checkpoints_missing.push(CheckpointMissing {
                line: line_no,
                seq: checked.seq,
            });
        }
        report.records += 1;
        last_seq = checked.seq;
        last_mac = checked.mac;
    }
    if let Some(cp) = checkpoint.filter(|cp| cp.seq > last_seq) {
        let problem = Problem::TailTruncated {
            checkpoint_seq: cp.seq,
            last_seq,
        };
        return broken(report, line_no + 1, Some(last_seq + 1), problem);
    }
    report
}

/// `report`, ended by the broken record at `line`.
fn broken(mut report: VerifyReport, line: u64, seq: Option<u64>, problem: Problem) -> VerifyReport {
    report.broken = Some(Broken { line, seq, problem });
    report
}

/// The acknowledgement of damage that begins at `content[start..]`, line `line`: the next good
/// record, when it is an `audit_torn_line` that continues the chain (`expected`: the `seq` and
/// `prev` the damaged line should have had) and names exactly these bytes. Returns it with
/// where the acknowledging record's line begins.
fn acknowledgement(
    content: &[u8],
    start: usize,
    line: u64,
    expected: (u64, [u8; 32]),
    key: &AuditKey,
) -> Option<(Acknowledged, usize)> {
    let mut at = start;
    let mut lines = 0u64;
    let record: Checked = loop {
        let len = content[at..].iter().position(|&b| b == b'\n')?;
        if let Ok(checked) = check_line(key, &content[at..at + len]) {
            break checked;
        }
        lines += 1;
        at += len + 1;
    };
    let damaged = &content[start..at];
    let bytes = u64::try_from(damaged.len()).ok()?;
    let named = |key: &str| record.detail.get(key).and_then(|v| v.as_u64());
    let sha256 = HEXLOWER.encode(&Sha256::digest(damaged));
    let acknowledges = record.kind == EventType::AuditTornLine.as_str()
        && (record.seq, record.prev) == expected
        && named("line") == Some(line)
        && named("lines") == Some(lines)
        && named("bytes") == Some(bytes)
        && record.detail.get("sha256").and_then(|v| v.as_str()) == Some(sha256.as_str());
    acknowledges.then_some((
        Acknowledged {
            line,
            lines,
            bytes,
            seq: record.seq,
        },
        at,
    ))
}
