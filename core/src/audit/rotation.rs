//! What the writer needs to rotate the log and to finish a rotation a crash stopped: the
//! segments it made (told from files that only carry such a name), and the new log, created
//! whole with its first record.
//!
//! A rotation renames the live log to its segment, appends the seal to it (through the file
//! still open), and then creates the new log with its continuation, a temporary file linked
//! into place, so that the new log never begins with a torn line. A crash between two steps
//! leaves one of four states that [`continue_after_rotation`] recognises from the checkpoint
//! and the segments' names alone: the segment unsealed, its seal cut short, the segment sealed
//! and no new log, or the checkpoint one record behind the seal.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use super::chain::{write_checkpoint, AuditKey, Checkpoint};
use super::record::{encode_line, Checked, Event, EventType, Outcome};
use super::segments::numbered;
use super::writer::{newest_good_line, WriteError, MAX_LINE};

/// The segments next to `live` that end with the seal their names give, oldest first. Files
/// that only carry such a name (without the key, nobody else can write a seal) are left out,
/// so that retention never counts or removes them in place of real segments.
pub(crate) fn genuine_segments(live: &Path, key: &AuditKey) -> io::Result<Vec<PathBuf>> {
    Ok(numbered(live)?
        .into_iter()
        .filter(|(seq, path)| {
            last_record(path, key).is_some_and(|last| last.is_seal_of(path, *seq))
        })
        .map(|(_, path)| path)
        .collect())
}

/// Whether `record` is the seal of a rotation.
pub(crate) fn is_seal(record: &Checked) -> bool {
    record.kind == EventType::AuditLogRotated.as_str()
}

/// The newest good record of a file, where its line ends, and the file's length.
struct Last {
    record: Checked,
    end: u64,
    len: u64,
}

impl Last {
    /// Whether the file ends with this record, the seal of the segment `seq` at `path`.
    fn is_seal_of(&self, path: &Path, seq: u64) -> bool {
        let named = self.record.detail.get("segment").and_then(|v| v.as_str());
        self.end == self.len
            && is_seal(&self.record)
            && self.record.seq == seq
            && named == Some(file_name(path).as_str())
    }
}

/// The newest good record of the file at `path`, looked for in its last megabyte or so (a
/// record is never longer), so that a large file planted under a segment's name costs little.
fn last_record(path: &Path, key: &AuditKey) -> Option<Last> {
    let file = File::open(path).ok()?;
    let len = file.metadata().ok()?.len();
    let floor = len.saturating_sub(u64::try_from(MAX_LINE).ok()? + 2);
    let (record, end) = newest_good_line(key, &file, floor, len).ok()??;
    Some(Last { record, end, len })
}

/// When the live log at `path` is missing or empty and a rotation made it so (`checkpoint` is
/// what `checkpoint_path` held when the writer opened the log), creates it with its first
/// record, the continuation of the newest segment, sealing that segment first when the crash
/// came before its seal. Returns the segment's file name when it did.
///
/// The newest segment is the one the checkpoint names: its seal, or the record before the
/// seal when the checkpoint or the seal was not written. Without a checkpoint (the state
/// directory lost as well) it is the newest segment with a record of the key's, sealed now
/// if it is not; the writer then records `audit_checkpoint_missing` after the continuation,
/// as for any log found without its checkpoint. Anything else (the live log removed) is no
/// rotation: the writer goes on after the checkpoint, and the gap shows. The checkpoint is
/// brought up to the continuation at once, so that the new log cannot lose it unseen.
pub(crate) fn continue_after_rotation(
    path: &Path,
    checkpoint_path: &Path,
    checkpoint: Option<Checkpoint>,
    key: &AuditKey,
) -> Result<Option<String>, WriteError> {
    let open_err = |source| WriteError::Open {
        path: path.to_owned(),
        source,
    };
    let empty = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta.is_file() && meta.len() == 0,
        Err(e) if e.kind() == io::ErrorKind::NotFound => true,
        Err(e) => return Err(open_err(e)),
    };
    if !empty {
        return Ok(None);
    }
    let seal = seal_after(path, key, checkpoint).map_err(open_err)?;
    let Some((seal, segment)) = seal else {
        return Ok(None);
    };
    let name = file_name(&segment);
    let event = Event::new(EventType::AuditLogContinued, Outcome::Info, "system")
        .with_detail("segment", name.clone())
        .with_detail("seq", seal.seq);
    let (line, mac) = encode_line(key, SystemTime::now(), seal.seq + 1, &event, &seal.mac)
        .map_err(WriteError::Encode)?;
    if std::fs::symlink_metadata(path).is_ok() {
        std::fs::remove_file(path).map_err(open_err)?;
    }
    crate::atomic_file::create_new(path, &line).map_err(open_err)?;
    let head = Checkpoint {
        seq: seal.seq + 1,
        mac,
    };
    write_checkpoint(checkpoint_path, &head)?;
    Ok(Some(name))
}

/// The seal the live log continues, given the checkpoint `cp` (when there is one), and its
/// segment: the newest segment whose name is not older than the checkpoint and which ends
/// with a record of the key's (files that only carry such a name are passed over). Sealed,
/// when its seal is the checkpoint's record or newer (the checkpoint was not brought up to
/// it: only the key's holder writes seals). Not yet sealed (a crash between the rename and
/// the seal), when its last record is the one before its name's seal and not older than the
/// checkpoint: the seal goes on now.
fn seal_after(
    path: &Path,
    key: &AuditKey,
    cp: Option<Checkpoint>,
) -> io::Result<Option<(Checkpoint, PathBuf)>> {
    // Whether the record `seq`, `mac` is the checkpoint's or newer.
    let current = |seq: u64, mac: &[u8; 32]| match cp {
        Some(cp) => seq > cp.seq || (seq == cp.seq && *mac == cp.mac),
        None => true,
    };
    // Newest first; files that only carry a segment's name have no record of the key's.
    for (seq, segment) in numbered(path)?.into_iter().rev() {
        if cp.is_some_and(|cp| seq < cp.seq) {
            break;
        }
        let Some(last) = last_record(&segment, key) else {
            continue;
        };
        let record = &last.record;
        if last.is_seal_of(&segment, seq) && current(record.seq, &record.mac) {
            let seal = Checkpoint {
                seq: record.seq,
                mac: record.mac,
            };
            return Ok(Some((seal, segment)));
        }
        let unsealed = !is_seal(record)
            && record.seq.checked_add(1) == Some(seq)
            && current(record.seq, &record.mac);
        if unsealed {
            return seal_now(key, seq, &last, segment).map(Some);
        }
    }
    Ok(None)
}

/// Appends the seal `seq` to `segment`, whose newest record is `last`. Bytes after that
/// record can only be a seal the crash cut short (after the rename nothing else is written
/// to the segment): they are cut off, and the seal says how many there were.
fn seal_now(
    key: &AuditKey,
    seq: u64,
    last: &Last,
    segment: PathBuf,
) -> io::Result<(Checkpoint, PathBuf)> {
    let mut event = seal_event(&segment, last.end, &[]);
    if last.len > last.end {
        event = event.with_detail("torn_bytes", last.len - last.end);
    }
    let (line, mac) = encode_line(key, SystemTime::now(), seq, &event, &last.record.mac)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    let file = OpenOptions::new().write(true).open(&segment)?;
    file.set_len(last.end)?;
    let written = file
        .write_all_at(&line, last.end)
        .and_then(|()| file.sync_data());
    if let Err(e) = written {
        // Cut back, so that the next attempt finds the segment as it was.
        let _ = file.set_len(last.end).and_then(|()| file.sync_data());
        return Err(e);
    }
    Ok((Checkpoint { seq, mac }, segment))
}

/// The seal of the segment at `segment`: its file name, its size before the seal, and the
/// segments removed with this rotation.
pub(crate) fn seal_event(segment: &Path, bytes: u64, expired: &[PathBuf]) -> Event {
    Event::new(EventType::AuditLogRotated, Outcome::Info, "system")
        .with_detail("segment", file_name(segment))
        .with_detail("bytes", bytes)
        .with_detail(
            "expired",
            expired.iter().map(|p| file_name(p)).collect::<Vec<_>>(),
        )
}

pub(crate) fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}
