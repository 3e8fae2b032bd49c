//! Checks an audit log, or its rotated segments and the live log together: every line's MAC,
//! the chain of `prev`, gapless `seq` (across the files), and the tail against the checkpoint. Reports the first broken record only: everything after it is
//! suspect. Lines torn by a crash are stepped over when the writer acknowledged them
//! (`audit_torn_line`, see [`super::Writer::open`]) and are listed in the report, as are the
//! writer's records of a checkpoint it found missing (`audit_checkpoint_missing`).

use std::collections::BTreeSet;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use data_encoding::HEXLOWER;
use sha2::{Digest, Sha256};

use super::chain::{AuditKey, Checkpoint, ZERO_MAC};
use super::record::{check_line, Checked, EventType, LineError};
use super::rotation;

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
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifyReport {
    /// The records that passed, before the first broken one.
    pub records: u64,
    /// The first broken record; `None` when the log is intact.
    pub broken: Option<Broken>,
    /// Damage the writer acknowledged, before the first broken record.
    pub acknowledged: Vec<Acknowledged>,
    /// The `audit_checkpoint_missing` records before the first broken record.
    pub checkpoints_missing: Vec<CheckpointMissing>,
    /// Where the first record takes the chain up, when it continues a rotated segment that
    /// was not checked with it.
    pub continues: Option<Continues>,
    /// The `seq` of the last record when it is the seal of a rotation: the chain goes on in
    /// the next segment.
    pub sealed: Option<u64>,
}

/// The first record of a log rotated from an earlier segment (`audit_log_continued`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Continues {
    /// The `seq` of the earlier segment's last record, its seal.
    pub seq: u64,
    /// The earlier segment's file name.
    pub segment: String,
}

/// A record of the writer finding the checkpoint gone while the log held records: a tail cut
/// off before then (with the checkpoint removed) could not be seen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointMissing {
    /// The file, counted from 0 in the order checked.
    pub file: usize,
    /// The record's line, counted from 1.
    pub line: u64,
    /// The record's `seq`.
    pub seq: u64,
}

/// Lines torn by a crash, which the record after them acknowledges: the chain goes on across
/// them from the record before, so no record was lost there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acknowledged {
    /// The file, counted from 0 in the order checked.
    pub file: usize,
    /// The first damaged line, counted from 1 (in the file being checked).
    pub line: u64,
    pub lines: u64,
    pub bytes: u64,
    /// The `seq` of the acknowledging `audit_torn_line` record.
    pub seq: u64,
}

/// Where the log breaks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Broken {
    /// The file, counted from 0 in the order checked.
    pub file: usize,
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
    /// The first record continues a segment that is not checked with it, and no rotation in
    /// the checked records removed it: segments before this file are missing.
    SegmentMissing { segment: String },
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
            Problem::SegmentMissing { segment } => write!(
                f,
                "continues segment {segment}, which no rotation in the checked files removed: \
                 segments before this file are missing (`crmguard audit verify` without FILE \
                 checks the log with all its segments)"
            ),
        }
    }
}

/// What the start and the end of the checked records are held against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tail {
    /// Nothing: a copy of the log away from its host, or some of its segments.
    Unchecked,
    /// The live log with its segments, on its host: the records reach the checkpoint's, and
    /// when the first one continues a segment, a rotation among them removed that segment.
    Live(Checkpoint),
    /// Rotated segments without the live log: the records up to the checkpoint's match it,
    /// and unless they reach it, the last one is the seal of a rotation.
    Segments(Checkpoint),
    /// The live log with its segments, on its host, without the checkpoint: the start is held
    /// as for [`Tail::Live`], the end against nothing.
    Whole,
}

impl Tail {
    fn checkpoint(self) -> Option<Checkpoint> {
        match self {
            Tail::Unchecked | Tail::Whole => None,
            Tail::Live(cp) | Tail::Segments(cp) => Some(cp),
        }
    }
}

/// Checks the log at `path` with `key`, and its tail against `checkpoint` when given.
pub fn verify(
    path: &Path,
    key: &AuditKey,
    checkpoint: Option<Checkpoint>,
) -> Result<VerifyReport, VerifyError> {
    let tail = checkpoint.map_or(Tail::Unchecked, Tail::Live);
    verify_files(std::slice::from_ref(&path.to_owned()), key, tail)
}

/// Checks the files at `paths` as one chain, in the order given (the oldest segment first,
/// the live log last), and its end as `tail` says. Reads one file at a time.
pub fn verify_files(
    paths: &[PathBuf],
    key: &AuditKey,
    tail: Tail,
) -> Result<VerifyReport, VerifyError> {
    let mut chain = Chain::new(key, tail.checkpoint());
    for (file, path) in paths.iter().enumerate() {
        let content = std::fs::read(path).map_err(|source| VerifyError::Read {
            path: path.to_owned(),
            source,
        })?;
        if !chain.feed(file, &content) {
            break;
        }
    }
    Ok(chain.finish(tail))
}

/// Checks the content of a log, and its tail against `checkpoint` when given.
pub fn verify_bytes(
    content: &[u8],
    key: &AuditKey,
    checkpoint: Option<Checkpoint>,
) -> VerifyReport {
    let mut chain = Chain::new(key, checkpoint);
    chain.feed(0, content);
    chain.finish(checkpoint.map_or(Tail::Unchecked, Tail::Live))
}

/// The check of a chain of records, fed one file at a time.
struct Chain<'k> {
    key: &'k AuditKey,
    checkpoint: Option<Checkpoint>,
    report: VerifyReport,
    last_seq: u64,
    last_mac: [u8; 32],
    /// The file and line after the last record read.
    file: usize,
    line_no: u64,
    /// Whether the newest record is the seal of a rotation.
    sealed: bool,
    /// The segments the seals read so far removed (`detail.expired`).
    expired: BTreeSet<String>,
}

impl<'k> Chain<'k> {
    fn new(key: &'k AuditKey, checkpoint: Option<Checkpoint>) -> Self {
        Chain {
            key,
            checkpoint,
            report: VerifyReport::default(),
            last_seq: 0,
            last_mac: ZERO_MAC,
            file: 0,
            line_no: 0,
            sealed: false,
            expired: BTreeSet::new(),
        }
    }

    /// Checks the records of file number `file`; false once the chain is broken.
    fn feed(&mut self, file: usize, content: &[u8]) -> bool {
        self.file = file;
        self.line_no = 0;
        let mut start = 0usize;
        while start < content.len() {
            self.line_no += 1;
            let Some(len) = content[start..].iter().position(|&b| b == b'\n') else {
                return self.broken(None, Problem::TornLine);
            };
            let line = &content[start..start + len];
            let checked = match check_line(self.key, line) {
                Ok(checked) => checked,
                Err(e) => {
                    let expected = (self.last_seq + 1, self.last_mac);
                    let ack = acknowledgement(content, start, self.line_no, expected, self.key);
                    if let Some((ack, at)) = ack {
                        self.line_no += ack.lines - 1;
                        start = at;
                        self.report.acknowledged.push(Acknowledged { file, ..ack });
                        continue;
                    }
                    let problem = match e {
                        LineError::NotUtf8 => Problem::NotUtf8,
                        LineError::Json(e) => Problem::BadJson(e),
                        LineError::Form(what) => Problem::Malformed(what),
                        LineError::Mac => Problem::MacMismatch,
                    };
                    return self.broken(None, problem);
                }
            };
            start += len + 1;
            if !self.record(&checked) {
                return false;
            }
        }
        true
    }

    /// Checks one record that passed the checks of a line alone.
    fn record(&mut self, checked: &Checked) -> bool {
        if self.report.records == 0 && self.report.acknowledged.is_empty() {
            if let Some(continues) = continuation(checked) {
                // The first record continues a segment that is not part of this check: the
                // chain is taken up from its `prev`. Only the writer can make such a record.
                self.last_seq = continues.seq;
                self.last_mac = checked.prev;
                self.report.continues = Some(continues);
            }
        }
        let expected = self.last_seq + 1;
        let seq = Some(checked.seq);
        if checked.seq > expected {
            let problem = Problem::SeqGap {
                expected,
                found: checked.seq,
            };
            return self.broken(seq, problem);
        }
        if checked.seq < expected {
            let problem = Problem::SeqOutOfOrder {
                expected,
                found: checked.seq,
            };
            return self.broken(seq, problem);
        }
        if checked.prev != self.last_mac {
            return self.broken(seq, Problem::PrevMismatch);
        }
        if let Some(cp) = self.checkpoint.filter(|cp| cp.seq == checked.seq) {
            if cp.mac != checked.mac {
                return self.broken(seq, Problem::CheckpointMismatch);
            }
        }
        if checked.kind == EventType::AuditCheckpointMissing.as_str() {
            self.report.checkpoints_missing.push(CheckpointMissing {
                file: self.file,
                line: self.line_no,
                seq: checked.seq,
            });
        }
        self.report.records += 1;
        self.last_seq = checked.seq;
        self.last_mac = checked.mac;
        self.sealed = rotation::is_seal(checked);
        if self.sealed {
            let names = checked.detail.get("expired").and_then(|v| v.as_array());
            for name in names.into_iter().flatten().filter_map(|v| v.as_str()) {
                self.expired.insert(name.to_owned());
            }
        }
        true
    }

    /// Ends the check: the chain's end against `tail`.
    fn finish(mut self, tail: Tail) -> VerifyReport {
        if self.report.broken.is_some() {
            return self.report;
        }
        self.report.sealed = self.sealed.then_some(self.last_seq);
        let whole = matches!(tail, Tail::Live(_) | Tail::Whole);
        if let (true, Some(continues)) = (whole, &self.report.continues) {
            // On the host the check starts at the oldest segment left: one retention removed.
            if !self.expired.contains(&continues.segment) {
                let problem = Problem::SegmentMissing {
                    segment: continues.segment.clone(),
                };
                let seq = Some(continues.seq + 1);
                (self.file, self.line_no) = (0, 1);
                self.broken(seq, problem);
                return self.report;
            }
        }
        let short = |cp: &Checkpoint| cp.seq > self.last_seq;
        let truncated = match tail {
            Tail::Unchecked | Tail::Whole => None,
            Tail::Live(cp) => Some(cp).filter(short),
            Tail::Segments(cp) => Some(cp).filter(|cp| short(cp) && !self.sealed),
        };
        if let Some(cp) = truncated {
            let problem = Problem::TailTruncated {
                checkpoint_seq: cp.seq,
                last_seq: self.last_seq,
            };
            self.line_no += 1;
            self.broken(Some(self.last_seq + 1), problem);
        }
        self.report
    }

    /// Ends the check at the current line with `problem`; returns false.
    fn broken(&mut self, seq: Option<u64>, problem: Problem) -> bool {
        self.report.broken = Some(Broken {
            file: self.file,
            line: self.line_no,
            seq,
            problem,
        });
        false
    }
}

/// The segment `checked` continues, when it is the first record of a log rotated from one.
fn continuation(checked: &Checked) -> Option<Continues> {
    if checked.kind != EventType::AuditLogContinued.as_str() {
        return None;
    }
    let seq = checked.detail.get("seq").and_then(|v| v.as_u64())?;
    let segment = checked.detail.get("segment").and_then(|v| v.as_str())?;
    (seq.checked_add(1) == Some(checked.seq)).then(|| Continues {
        seq,
        segment: segment.to_owned(),
    })
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
            file: 0,
            line,
            lines,
            bytes,
            seq: record.seq,
        },
        at,
    ))
}
