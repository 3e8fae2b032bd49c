//! Appends records to the audit log, one fsynced line at a time, and keeps the checkpoint.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::ops::Range;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use data_encoding::HEXLOWER;
use sha2::{Digest, Sha256};

use super::chain::ZERO_MAC;
use super::chain::{read_checkpoint, write_checkpoint, AuditKey, Checkpoint, CheckpointError};
use super::record::{check_line, encode_line, Checked, Event, EventType, Outcome};
use super::{rotation, segments};
use crate::atomic_file::sync_dir;
use crate::config::AuditRotation;

/// Why a record could not be written.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("cannot open the audit log {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot append to the audit log {path}")]
    Append {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot rotate the audit log {path}")]
    Rotate {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot encode an audit record")]
    Encode(#[source] serde_json::Error),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// The record is in the log, fsynced, but the checkpoint still names an older one: a log
    /// cut after the checkpoint's record would not be seen as cut. The next record writes the
    /// checkpoint again.
    #[error("audit record {seq} was written but the checkpoint could not be updated")]
    CheckpointBehind {
        seq: u64,
        #[source]
        source: CheckpointError,
    },
}

impl WriteError {
    /// The `seq` of the record when it was written despite the error.
    pub fn written(&self) -> Option<u64> {
        match self {
            WriteError::CheckpointBehind { seq, .. } => Some(*seq),
            _ => None,
        }
    }
}

/// Bytes at the end of the log after its newest good record: a line torn by a crash (or by a
/// failed write that could not be cut back), or lines that are not records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Damage {
    /// The first damaged line, counted from 1.
    pub line: u64,
    /// How many lines the damage spans, once ended with `\n`.
    pub lines: u64,
    /// Its length in bytes, with the `\n` that ends it.
    pub bytes: u64,
}

/// The audit log open for appending. One writer per log: the agent holds it.
///
/// A failed append does not leave the writer broken: the log is cut back to where it ended
/// before the record, and the next append opens it again and finds where the chain stands
/// from what is in the file (a line torn by a failure that could not be cut back is ended and
/// acknowledged, as after a crash). A failed checkpoint write is retried by the next append.
#[derive(Debug)]
pub struct Writer {
    /// `None` after a failed append, until the next append opens the log again.
    file: Option<File>,
    path: PathBuf,
    checkpoint_path: PathBuf,
    key: AuditKey,
    /// The `seq` and `mac` of the newest record, `seq` 0 before the first.
    head: Checkpoint,
    damage: Option<Damage>,
    /// The newest record's `seq` when [`Writer::open`] found records and no checkpoint.
    checkpoint_missing: Option<u64>,
    /// The segment [`Writer::open`] started the log after, finishing a rotation.
    continued: Option<String>,
}

impl Writer {
    /// Opens (or creates, mode 0600) the log at `path` and finds where the chain continues:
    /// after the last line whose MAC is good, or after the checkpoint at `checkpoint_path` when
    /// that is further on (so that a log which lost its tail, or was removed, continues with a
    /// visible gap instead of reusing sequence numbers and hiding the loss).
    ///
    /// Damage after the newest good record (a line torn by a crash) is left in place, ended
    /// with `\n`, and acknowledged by the next record, an `audit_torn_line` naming its first
    /// line, its length and its SHA-256 (see [`Writer::damage`]). `audit verify` steps over
    /// damage so acknowledged only when the acknowledgement continues the chain where the
    /// damage began: bytes lost in a crash before they were ever a record, not a record
    /// removed.
    ///
    /// A log that holds records but has no checkpoint (it was removed, or the state directory
    /// emptied) cannot show whether its tail was cut off before then, and the checkpoint the
    /// next record writes would vouch for whatever tail is left. So that is recorded first, as
    /// an `audit_checkpoint_missing` record naming the newest record found (see
    /// [`Writer::checkpoint_missing`]).
    pub fn open(path: &Path, checkpoint_path: &Path, key: AuditKey) -> Result<Writer, WriteError> {
        let open_err = |source| WriteError::Open {
            path: path.to_owned(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            if !dir.exists() {
                crate::atomic_file::create_dirs(dir).map_err(open_err)?;
            }
        }
        // After a rotation the new log is made whole with its first record before anything
        // else: a crash then cannot leave it beginning with a torn line.
        let checkpoint = read_checkpoint(checkpoint_path)?;
        let continued = rotation::continue_after_rotation(path, checkpoint_path, checkpoint, &key)?;
        let mut file = open_live(path).map_err(open_err)?;
        let (newest, damaged_from) = last_good(&key, &file).map_err(open_err)?;
        let mut head = newest.map_or(
            Checkpoint {
                seq: 0,
                mac: ZERO_MAC,
            },
            |record| Checkpoint {
                seq: record.seq,
                mac: record.mac,
            },
        );
        let checkpoint_missing = (checkpoint.is_none() && head.seq > 0).then_some(head.seq);
        if let Some(checkpoint) = checkpoint.filter(|cp| cp.seq > head.seq) {
            head = checkpoint;
        }
        let append_err = |source| WriteError::Append {
            path: path.to_owned(),
            source,
        };
        let damage = match damaged_from {
            Some(start) => Some(end_damage(&mut file, start).map_err(append_err)?),
            None => None,
        };
        let mut writer = Writer {
            file: Some(file),
            path: path.to_owned(),
            checkpoint_path: checkpoint_path.to_owned(),
            key,
            head,
            damage: None,
            checkpoint_missing: None,
            continued,
        };
        if let Some((damage, sha256)) = damage {
            let event = Event::new(EventType::AuditTornLine, Outcome::Failure, "system")
                .with_detail("line", damage.line)
                .with_detail("lines", damage.lines)
                .with_detail("bytes", damage.bytes)
                .with_detail("sha256", sha256);
            writer.append(&event, SystemTime::now())?;
            writer.damage = Some(damage);
        }
        if let Some(seq) = checkpoint_missing {
            let event = Event::new(
                EventType::AuditCheckpointMissing,
                Outcome::Failure,
                "system",
            )
            .with_detail("seq", seq)
            .with_detail("checkpoint", checkpoint_path.display().to_string());
            writer.append(&event, SystemTime::now())?;
            writer.checkpoint_missing = Some(seq);
        }
        Ok(writer)
    }

    /// The newest record's `seq` when [`Writer::open`] found the log holding records and no
    /// checkpoint, and recorded that. The agent should say so in its log; `audit verify`
    /// lists it.
    pub fn checkpoint_missing(&self) -> Option<u64> {
        self.checkpoint_missing
    }

    /// The damage that [`Writer::open`] found at the end of the log and acknowledged. The
    /// agent should say so in its log; `audit verify` notes it.
    pub fn damage(&self) -> Option<Damage> {
        self.damage
    }

    /// The newest record's `seq` and `mac` (`seq` 0 when there is none).
    pub fn head(&self) -> Checkpoint {
        self.head
    }

    /// Appends `event` as the next record, stamped `ts`, flushes it to disk, then updates the
    /// checkpoint. Returns the record's `seq`.
    ///
    /// When the append fails the next one first opens the log again ([`Writer::open`]): the
    /// chain continues from the last good record in the file, or from the checkpoint when that
    /// is further on, and a partial line is ended and left for `audit verify` to report. When
    /// only the checkpoint cannot be written the record stands
    /// ([`WriteError::CheckpointBehind`]) and the next append writes the checkpoint again.
    pub fn append(&mut self, event: &Event, ts: SystemTime) -> Result<u64, WriteError> {
        self.append_all(std::slice::from_ref(event), ts)
    }

    /// Appends `events` as the next records, all stamped `ts`, with one write, one flush and
    /// one checkpoint: a burst of records (a thousand peers' handshakes in one second) costs
    /// the disk one commit, not one each. All of them are in the log or none (a failure cuts
    /// the log back as [`Writer::append`] does). Returns the last record's `seq`; with no
    /// events, writes nothing and returns the head's.
    pub fn append_all(&mut self, events: &[Event], ts: SystemTime) -> Result<u64, WriteError> {
        if events.is_empty() {
            return Ok(self.head.seq);
        }
        if self.file.is_none() {
            *self = Writer::open(&self.path, &self.checkpoint_path, self.key.clone())?;
        }
        let Some(file) = self.file.as_mut() else {
            return Err(WriteError::Append {
                path: self.path.clone(),
                source: io::Error::other("the audit log is not open"),
            });
        };
        let mut line = Vec::new();
        let (mut seq, mut mac) = (self.head.seq, self.head.mac);
        for event in events {
            seq += 1;
            let (encoded, next) =
                encode_line(&self.key, ts, seq, event, &mac).map_err(WriteError::Encode)?;
            line.extend_from_slice(&encoded);
            mac = next;
        }
        // Where the log ends before this record: a write that fails part way (a full disk
        // takes the bytes that fit in the last block) is cut back to it, so that a failure
        // leaves no torn line in the middle of the log for `audit verify` to stop at.
        let end = file.metadata().map(|m| m.len());
        if let Err(source) = file.write_all(&line).and_then(|()| file.sync_data()) {
            if let Ok(end) = end {
                // Best effort: when this fails too, the next append finds the torn line and
                // ends it, as after a crash.
                let _ = file.set_len(end).and_then(|()| file.sync_data());
            }
            // What reached the file is unknown; the next append reads it back.
            self.file = None;
            return Err(WriteError::Append {
                path: self.path.clone(),
                source,
            });
        }
        self.head = Checkpoint { seq, mac };
        write_checkpoint(&self.checkpoint_path, &self.head)
            .map_err(|source| WriteError::CheckpointBehind { seq, source })?;
        Ok(seq)
    }

    /// Rotates the log when it holds `rotation.size` bytes or more: renames it to its segment
    /// ([`segments::segment_path`]), seals it there with an `audit_log_rotated` record,
    /// starts the new log with an `audit_log_continued` record chained to the seal, and
    /// removes the oldest segments beyond `rotation.keep`. Returns what was done, or `None`
    /// when the log is not that large yet.
    ///
    /// A rename that fails leaves the log as it was, with nothing written; the next call tries
    /// again. A failure or a crash after the rename is finished by the next
    /// [`Writer::open`] (`rotation::continue_after_rotation`): the segment is sealed if it is
    /// not, and the new log is created with its continuation.
    pub fn rotate_if_due(
        &mut self,
        rotation: AuditRotation,
        ts: SystemTime,
    ) -> Result<Option<Rotated>, WriteError> {
        let Some(file) = self.file.as_ref() else {
            return Ok(None);
        };
        let path = self.path.clone();
        let rotate_err = |source| WriteError::Rotate {
            path: path.clone(),
            source,
        };
        let bytes = file.metadata().map_err(rotate_err)?.len();
        if bytes < rotation.size {
            return Ok(None);
        }
        let segment = segments::segment_path(&self.path, self.head.seq + 1);
        let existing = rotation::genuine_segments(&self.path, &self.key).map_err(rotate_err)?;
        let keep = usize::try_from(rotation.keep).unwrap_or(usize::MAX).max(1);
        // The new segment counts among those kept.
        let expire = (existing.len() + 1).saturating_sub(keep);
        let expired: Vec<PathBuf> = existing.into_iter().take(expire).collect();
        // Renamed first: a rename refused (an append-only attribute, a name taken) leaves the
        // log as it was, with no seal in it.
        segments::rename_new(&self.path, &segment).map_err(rotate_err)?;
        // From here the open file is the segment; whatever fails, the next append opens the
        // log again, which finishes the rotation.
        let sealed = sync_dir(&self.path)
            .map_err(rotate_err)
            .and_then(|()| self.append(&rotation::seal_event(&segment, bytes, &expired), ts));
        self.file = None;
        sealed?;
        *self = Writer::open(&self.path, &self.checkpoint_path, self.key.clone())?;
        let mut rotated = Rotated {
            segment,
            removed: Vec::new(),
            not_removed: Vec::new(),
        };
        for old in expired {
            match std::fs::remove_file(&old) {
                Ok(()) => rotated.removed.push(old),
                Err(e) => rotated.not_removed.push((old, e)),
            }
        }
        if !rotated.removed.is_empty() {
            sync_dir(&self.path).map_err(rotate_err)?;
        }
        Ok(Some(rotated))
    }

    /// The segment this writer's log continues, when [`Writer::open`] started the log after a
    /// rotation (its own, or one a crash stopped).
    pub fn continued(&self) -> Option<&str> {
        self.continued.as_deref()
    }

    /// Makes the next append fail as a full disk would, to test recovery: the log is left
    /// open read-only, so the write is refused.
    #[cfg(test)]
    pub(crate) fn break_file(&mut self) -> io::Result<()> {
        self.file = Some(File::open(&self.path)?);
        Ok(())
    }
}

/// What a rotation did ([`Writer::rotate_if_due`]).
#[derive(Debug)]
pub struct Rotated {
    /// The segment the log was renamed to.
    pub segment: PathBuf,
    /// The oldest segments removed, beyond `[audit] rotate_keep`.
    pub removed: Vec<PathBuf>,
    /// Those that should have been and could not be; the next rotation tries again.
    pub not_removed: Vec<(PathBuf, io::Error)>,
}

/// Opens (or creates, mode 0600) the live log for appending, and makes its directory entry
/// durable.
fn open_live(path: &Path) -> io::Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    // The agent's user keeps appending to a log a root `crmguard` command started.
    crate::atomic_file::give_to_directory_owner(&file, path)?;
    sync_dir(path)?;
    Ok(file)
}

/// How much of the log is read at a time when looking for its last good record.
const CHUNK: usize = 64 * 1024;

/// A line longer than this is not a record the writer made: it is skipped without being held
/// in memory whole.
pub(super) const MAX_LINE: usize = 1 << 20;

/// The newest record whose MAC is good (`None` when there is none), and where the
/// damage after it begins, when there are bytes after it.
///
/// The log is read from its end, a chunk at a time, so that opening a log of any size holds at
/// most a chunk and one line in memory.
fn last_good(key: &AuditKey, file: &File) -> io::Result<(Option<Checked>, Option<u64>)> {
    let len = file.metadata()?.len();
    let (newest, end) = match newest_good_line(key, file, 0, len)? {
        Some((record, end)) => (Some(record), end),
        None => (None, 0),
    };
    Ok((newest, (end < len).then_some(end)))
}

/// Ends the damage from `start` to the end of the log with `\n` (and flushes it), and
/// measures it: where and how long it is, and its SHA-256 in lowercase hex. Reads through a
/// fixed buffer, however long the damage.
fn end_damage(file: &mut File, start: u64) -> io::Result<(Damage, String)> {
    let mut len = file.metadata()?.len();
    let mut last = [0u8; 1];
    file.read_exact_at(&mut last, len - 1)?;
    if last[0] != b'\n' {
        file.write_all(b"\n")?;
        file.sync_data()?;
        len += 1;
    }
    let mut sha = Sha256::new();
    let mut lines = 0u64;
    for_each_chunk(file, start..len, |chunk| {
        sha.update(chunk);
        lines += count_newlines_in(chunk);
    })?;
    let damage = Damage {
        line: count_newlines(file, start)?.saturating_add(1),
        lines,
        bytes: len - start,
    };
    Ok((damage, HEXLOWER.encode(&sha.finalize())))
}

/// The newest complete line of `file[floor..len]` that is a good record, reading backwards, and
/// the offset just after its `\n`. With `floor` above 0, a line that starts before it is not
/// looked at.
pub(super) fn newest_good_line(
    key: &AuditKey,
    file: &File,
    floor: u64,
    len: u64,
) -> io::Result<Option<(Checked, u64)>> {
    // `buf` holds file[pos..end]: bytes read but not yet taken apart into lines.
    let mut buf: Vec<u8> = Vec::new();
    let mut pos = len;
    // Everything after the last newline is a torn line, never a record.
    let mut complete = false;
    // The line being assembled grew past MAX_LINE: it is dropped until its start is found.
    let mut skipping = false;
    loop {
        if let Some(i) = buf.iter().rposition(|&b| b == b'\n') {
            if complete && !skipping {
                if let Ok(checked) = check_line(key, &buf[i + 1..]) {
                    let end = pos + buf.len() as u64 + 1;
                    return Ok(Some((checked, end)));
                }
            }
            complete = true;
            skipping = false;
            buf.truncate(i);
            continue;
        }
        if pos == floor && floor > 0 {
            // `buf` is the end of a line that starts before what may be read.
            return Ok(None);
        }
        if pos == 0 {
            // `buf` is the file's first line.
            let end = buf.len() as u64 + 1;
            return Ok(complete
                .then(|| check_line(key, &buf).ok())
                .flatten()
                .filter(|_| !skipping)
                .map(|checked| (checked, end)));
        }
        if buf.len() > MAX_LINE {
            skipping = true;
            buf.clear();
        }
        let step = (pos - floor).min(CHUNK as u64);
        pos -= step;
        let mut chunk = vec![0u8; usize::try_from(step).unwrap_or(CHUNK)];
        file.read_exact_at(&mut chunk, pos)?;
        chunk.extend_from_slice(&buf);
        buf = chunk;
    }
}

/// The number of newlines in `file[..len]`, read through a fixed buffer.
fn count_newlines(file: &File, len: u64) -> io::Result<u64> {
    let mut count = 0u64;
    for_each_chunk(file, 0..len, |chunk| count += count_newlines_in(chunk))?;
    Ok(count)
}

/// Hands `file[range]` to `f` a chunk at a time, through one fixed buffer.
fn for_each_chunk(file: &File, range: Range<u64>, mut f: impl FnMut(&[u8])) -> io::Result<()> {
    let mut buf = vec![0u8; CHUNK];
    let mut pos = range.start;
    while pos < range.end {
        let want = usize::try_from((range.end - pos).min(CHUNK as u64)).unwrap_or(CHUNK);
        file.read_exact_at(&mut buf[..want], pos)?;
        f(&buf[..want]);
        pos += u64::try_from(want).unwrap_or(u64::MAX);
    }
    Ok(())
}

fn count_newlines_in(bytes: &[u8]) -> u64 {
    u64::try_from(bytes.iter().filter(|&&b| b == b'\n').count()).unwrap_or(u64::MAX)
}
