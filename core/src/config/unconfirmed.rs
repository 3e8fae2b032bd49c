//! The mark of an unconfirmed configuration, `state_dir/unconfirmed-change.json`.
//!
//! `crmguard reload --confirm` applies the configuration files as they are now, but only
//! `crmguard confirm` makes them the last good policy (see [`super::last_good`]). Until then
//! the files on disk are not trusted: a change that locks the administrator out must not come
//! back when the agent restarts. The mark says so. It is written when the change is applied,
//! stays when the change is rolled back (the files still hold it), and goes only when a
//! configuration is confirmed or applied by a plain `crmguard reload`. An agent that starts
//! while the mark exists enforces the last good policy instead of the files.
//!
//! This module only reads and writes the mark; what it means is the agent's business.

use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The file name under `state_dir`.
pub const FILE_NAME: &str = "unconfirmed-change.json";

/// What became of the unconfirmed change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Applied and waiting for `crmguard confirm`.
    Pending,
    /// Not confirmed in time; the policy before it was applied again.
    RolledBack,
}

/// The mark's content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Unconfirmed {
    pub state: State,
    /// The configuration file the change was read from.
    pub config: PathBuf,
    /// When it was applied, RFC 3339.
    pub applied_at: String,
    /// When it is (or was) rolled back without `crmguard confirm`, RFC 3339.
    pub deadline: String,
    /// `admin:<unix user>`.
    pub by: String,
}

/// Why the mark cannot be read or written.
#[derive(Debug, thiserror::Error)]
pub enum UnconfirmedError {
    #[error("cannot read {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{} is not a mark of an unconfirmed change", path.display())]
    Decode {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("cannot encode the mark of an unconfirmed change")]
    Encode(#[source] serde_json::Error),
    #[error("cannot write {}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot remove {}", path.display())]
    Remove {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl Unconfirmed {
    /// `state_dir/unconfirmed-change.json`.
    pub fn path(state_dir: &Path) -> PathBuf {
        state_dir.join(FILE_NAME)
    }

    /// Replaces the mark in `state_dir` atomically.
    pub fn save(&self, state_dir: &Path) -> Result<(), UnconfirmedError> {
        let path = Self::path(state_dir);
        let mut text = serde_json::to_string_pretty(self).map_err(UnconfirmedError::Encode)?;
        text.push('\n');
        crate::atomic_file::write(&path, text.as_bytes())
            .map_err(|source| UnconfirmedError::Write { path, source })
    }

    /// The mark in `state_dir`; `None` when there is none.
    pub fn read(state_dir: &Path) -> Result<Option<Unconfirmed>, UnconfirmedError> {
        let path = Self::path(state_dir);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(UnconfirmedError::Read { path, source }),
        };
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|source| UnconfirmedError::Decode { path, source })
    }

    /// Removes the mark from `state_dir`, if there is one.
    pub fn clear(state_dir: &Path) -> Result<(), UnconfirmedError> {
        let path = Self::path(state_dir);
        match std::fs::remove_file(&path) {
            Ok(()) => crate::atomic_file::sync_dir(&path)
                .map_err(|source| UnconfirmedError::Remove { path, source }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(UnconfirmedError::Remove { path, source }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mark(state: State) -> Unconfirmed {
        Unconfirmed {
            state,
            config: PathBuf::from("/etc/crmguard/crmguard.toml"),
            applied_at: "2026-01-01T00:00:00.000000Z".to_owned(),
            deadline: "2026-01-01T00:02:00.000000Z".to_owned(),
            by: "admin:root".to_owned(),
        }
    }

    #[test]
    fn the_mark_is_saved_replaced_read_and_cleared() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state_dir = dir.path().join("state");
        assert_eq!(Unconfirmed::read(&state_dir).expect("read"), None);
        // Clearing no mark is not an error.
        Unconfirmed::clear(&state_dir).expect("clear nothing");

        mark(State::Pending).save(&state_dir).expect("save");
        assert_eq!(
            Unconfirmed::read(&state_dir).expect("read"),
            Some(mark(State::Pending))
        );
        mark(State::RolledBack).save(&state_dir).expect("replace");
        assert_eq!(
            Unconfirmed::read(&state_dir).expect("read"),
            Some(mark(State::RolledBack))
        );
        let text = std::fs::read_to_string(Unconfirmed::path(&state_dir)).expect("text");
        assert!(text.contains("\"state\": \"rolled_back\""), "{text}");

        Unconfirmed::clear(&state_dir).expect("clear");
        assert_eq!(Unconfirmed::read(&state_dir).expect("read"), None);
    }

    #[test]
    fn a_damaged_mark_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(Unconfirmed::path(dir.path()), "{not json").expect("write");
        let error = Unconfirmed::read(dir.path()).expect_err("damaged");
        assert!(
            error.to_string().contains(FILE_NAME),
            "the error names the file: {error}"
        );
    }
}
