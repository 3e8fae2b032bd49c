//! Files under `state_dir/mfa`: the atomic write shared by the secrets and the session file,
//! and the session file itself (`state_dir/mfa/sessions.json`).
//!
//! A file is replaced whole: written to a temporary file in the same directory (mode 0600, not
//! through a symbolic link), flushed to disk, renamed over the old file, and the directory
//! flushed, so that a crash leaves the old content or the new, never a torn file. The
//! directory is created mode 0700 and kept so: it holds the secrets of every peer.

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::secrets::DIR_NAME;
use super::sessions::{DecodeError, Policy, Sessions};

/// The session file's name inside `state_dir/mfa`.
pub const SESSIONS_FILE: &str = "sessions.json";

/// Why the session file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot read the MFA session file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the MFA session file {path} is not valid; fix or remove it")]
    Invalid {
        path: PathBuf,
        #[source]
        source: DecodeError,
    },
    #[error("cannot write the MFA session file {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// `state_dir/mfa/sessions.json`.
pub fn sessions_path(state_dir: &Path) -> PathBuf {
    state_dir.join(DIR_NAME).join(SESSIONS_FILE)
}

/// Loads the session state saved under `state_dir`; a missing file is a fresh state. The
/// secrets are not in it: the caller attaches them with [`Sessions::set_secret`].
pub fn load_sessions(state_dir: &Path, policy: Policy) -> Result<Sessions, StoreError> {
    let path = sessions_path(state_dir);
    let text = match fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Sessions::new(policy)),
        Err(source) => return Err(StoreError::Read { path, source }),
    };
    Sessions::decode(&text, policy).map_err(|source| StoreError::Invalid { path, source })
}

/// Saves `sessions` under `state_dir`, atomically.
pub fn save_sessions(state_dir: &Path, sessions: &Sessions) -> Result<(), StoreError> {
    let path = sessions_path(state_dir);
    let text = sessions
        .encode()
        .map_err(io::Error::other)
        .and_then(|text| write_atomic(&path, text.as_bytes()));
    text.map_err(|source| StoreError::Write { path, source })
}

/// Replaces the file at `path` with `bytes` (see `crate::atomic_file`), in a
/// directory that only root can read, whatever its mode was before.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    if let Some(dir) = path.parent().filter(|d| d.exists()) {
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
    }
    crate::atomic_file::write(path, bytes)
}
