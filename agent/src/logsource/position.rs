//! The follower's position, kept in a small JSON state file between runs: for a file, the
//! device and inode it was reading and the offset after the last line handed over; for the
//! journal, the cursor of the last entry handed over.
//!
//! The file is replaced atomically and durably (written beside it, synced, then renamed, and
//! the directory synced), so a crash or a power loss leaves the old position or the new one,
//! never a torn one. The followers save at most every `SAVE_EVERY`, so after a crash they may
//! read again the lines of that last fraction of a second, never skip any.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::{de::DeserializeOwned, Deserialize, Serialize};

/// Where a file follower stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilePosition {
    pub dev: u64,
    pub ino: u64,
    /// Bytes of the file handed over as lines (a partial last line is not counted).
    pub offset: u64,
}

/// Where a journal follower stopped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JournalPosition {
    /// The `__CURSOR` of the last entry handed over.
    pub cursor: String,
}

/// Reading or writing a state file.
#[derive(Debug, thiserror::Error)]
pub enum PositionError {
    #[error("reading the position file {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("parsing the position file {}", path.display())]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("writing the position file {}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// The saved position, or `None` when there is no state file yet.
pub fn load<T: DeserializeOwned>(path: &Path) -> Result<Option<T>, PositionError> {
    let text = match fs::read(path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(PositionError::Read {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    serde_json::from_slice(&text)
        .map(Some)
        .map_err(|source| PositionError::Parse {
            path: path.to_path_buf(),
            source,
        })
}

/// Replaces the saved position, atomically and durably (`atomic_file`): a torn or empty file
/// after a power loss would make the follower start at the end and miss the lines between.
pub fn save<T: Serialize>(path: &Path, position: &T) -> Result<(), PositionError> {
    let write_err = |source| PositionError::Write {
        path: path.to_path_buf(),
        source,
    };
    let mut text = serde_json::to_vec(position)
        .map_err(|e| write_err(io::Error::new(io::ErrorKind::InvalidData, e)))?;
    text.push(b'\n');
    crmguard_core::atomic_file::write(path, &text).map_err(write_err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_round_trip_and_a_missing_file_is_none() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let path = dir.path().join("pos.json");
        assert_eq!(load::<FilePosition>(&path).ok(), Some(None));
        let pos = FilePosition {
            dev: 2049,
            ino: 1234,
            offset: 99,
        };
        save(&path, &pos).unwrap_or_else(|e| panic!("save: {e}"));
        assert_eq!(load::<FilePosition>(&path).ok(), Some(Some(pos)));
        let cursor = JournalPosition {
            cursor: "s=abc;i=1f".to_owned(),
        };
        save(&path, &cursor).unwrap_or_else(|e| panic!("save: {e}"));
        assert_eq!(load::<JournalPosition>(&path).ok(), Some(Some(cursor)));
        // A journal position is not a file position.
        assert!(matches!(
            load::<FilePosition>(&path),
            Err(PositionError::Parse { .. })
        ));
    }

    /// A save that fails leaves no temporary file beside the position, and the next save of
    /// the same position is not skipped as already done.
    #[test]
    fn a_failed_save_leaves_nothing_behind_and_is_retried() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let path = dir.path().join("pos.json");
        let at = |offset| FilePosition {
            dev: 2049,
            ino: 1234,
            offset,
        };
        let names = || {
            let mut names: Vec<String> = std::fs::read_dir(dir.path())
                .unwrap_or_else(|e| panic!("read_dir: {e}"))
                .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
                .collect::<Result<_, _>>()
                .unwrap_or_else(|e| panic!("entry: {e}"));
            names.sort();
            names
        };
        let mut saver = crate::logsource::follow::Saver::new(&path);
        saver.save(&at(10), "test");
        assert_eq!(load::<FilePosition>(&path).ok(), Some(Some(at(10))));
        // A directory that is not empty where the file goes refuses the rename for every
        // user, root included.
        std::fs::remove_file(&path).unwrap_or_else(|e| panic!("remove: {e}"));
        std::fs::create_dir(&path).unwrap_or_else(|e| panic!("mkdir: {e}"));
        std::fs::write(path.join("x"), b"").unwrap_or_else(|e| panic!("write: {e}"));
        saver.save(&at(20), "test");
        assert_eq!(names(), ["pos.json"]);
        std::fs::remove_dir_all(&path).unwrap_or_else(|e| panic!("rmdir: {e}"));
        saver.save(&at(20), "test");
        assert_eq!(load::<FilePosition>(&path).ok(), Some(Some(at(20))));
        assert_eq!(names(), ["pos.json"]);
    }
}
