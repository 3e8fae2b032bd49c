//! `state_dir/bans.json`: the ban list on disk, so that bans survive a restart of the agent and
//! a reboot of the host.
//!
//! The file is replaced whole on every change: written to a temporary file in the same
//! directory, flushed to disk, renamed over the old file, and the directory flushed, so that a
//! crash at any moment leaves either the old list or the new one, never a torn file. It is
//! created mode 0600: the list says which addresses the host distrusts and who banned them.
//!
//! A file that cannot be read or understood is an error that names the file and what is wrong
//! with it, and the agent refuses to start. Starting with the bans that could be read would
//! silently unban the rest, which opens the host to exactly the sources an administrator or a
//! detector shut out. The operator fixes or removes the file and starts the agent again.
//!
//! Format (version 1):
//!
//! ```json
//! {"version": 1, "bans": [
//!   {"net": "203.0.113.7/32", "expires": "2025-03-01T12:00:00.000000Z",
//!    "reason": "credential stuffing", "source": {"manual": {"by": "admin:alice"}},
//!    "created": "2025-03-01T11:00:00.000000Z"},
//!   {"net": "198.51.100.0/24", "expires": null, "reason": "auth_failures",
//!    "source": {"detector": {"name": "auth_failures"}}, "created": "..."}]}
//! ```

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::{Ban, BanSource, BanStore, RestoreError};
use crate::time::{format_time, parse_time};

/// The name of the ban list inside `state_dir`.
pub const FILE_NAME: &str = "bans.json";

/// The format version this agent writes and reads.
pub const VERSION: u32 = 1;

/// Why the ban list could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    #[error("cannot read the ban list {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "the ban list {path} is not valid; fix or remove it (its bans are not in force until then)"
    )]
    Invalid {
        path: PathBuf,
        #[source]
        source: DecodeError,
    },
    #[error("cannot write the ban list {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl PersistError {
    /// Whether the file's content is at fault, rather than the system (an operator's problem
    /// to fix, exit 64, rather than a runtime failure).
    pub fn is_invalid(&self) -> bool {
        matches!(self, PersistError::Invalid { .. })
    }
}

/// What is wrong with the text of a ban list.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("not a ban list")]
    Json(#[source] serde_json::Error),
    #[error("version {0} is not supported (this crmguard reads version {VERSION})")]
    Version(u32),
    #[error("bans[{index}]: `{field}` is not an RFC 3339 UTC time: {value:?}")]
    Time {
        index: usize,
        field: &'static str,
        value: String,
    },
    #[error("bans[{index}] ({net}) appears twice")]
    Duplicate { index: usize, net: IpNet },
    #[error(transparent)]
    Ban(#[from] RestoreError),
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileRepr {
    version: u32,
    bans: Vec<BanRepr>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct BanRepr {
    net: IpNet,
    expires: Option<String>,
    reason: String,
    source: SourceRepr,
    created: String,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
enum SourceRepr {
    Manual { by: String },
    Detector { name: String },
}

/// The text of the ban list holding every ban of `store`, in network order.
pub fn encode(store: &BanStore) -> Result<String, serde_json::Error> {
    let file = FileRepr {
        version: VERSION,
        bans: store
            .iter()
            .map(|ban| BanRepr {
                net: ban.net,
                expires: ban.expires.map(format_time),
                reason: ban.reason.clone(),
                source: match &ban.source {
                    BanSource::Manual { by } => SourceRepr::Manual { by: by.clone() },
                    BanSource::Detector(name) => SourceRepr::Detector { name: name.clone() },
                },
                created: format_time(ban.created),
            })
            .collect(),
    };
    let mut text = serde_json::to_string_pretty(&file)?;
    text.push('\n');
    Ok(text)
}

/// Reads a ban list's text. Returns the store of the bans still in force at `now` and the bans
/// that ended while the agent was not running.
pub fn decode(text: &str, now: SystemTime) -> Result<(BanStore, Vec<Ban>), DecodeError> {
    let file: FileRepr = serde_json::from_str(text).map_err(DecodeError::Json)?;
    if file.version != VERSION {
        return Err(DecodeError::Version(file.version));
    }
    let mut bans = Vec::with_capacity(file.bans.len());
    let mut seen = std::collections::BTreeSet::new();
    for (index, repr) in file.bans.into_iter().enumerate() {
        if !seen.insert(repr.net) {
            return Err(DecodeError::Duplicate {
                index,
                net: repr.net,
            });
        }
        let time = |field: &'static str, value: &str| {
            parse_time(value).ok_or_else(|| DecodeError::Time {
                index,
                field,
                value: value.to_owned(),
            })
        };
        let expires = match &repr.expires {
            Some(value) => Some(time("expires", value)?),
            None => None,
        };
        let created = time("created", &repr.created)?;
        bans.push(Ban {
            net: repr.net,
            expires,
            reason: repr.reason,
            source: match repr.source {
                SourceRepr::Manual { by } => BanSource::Manual { by },
                SourceRepr::Detector { name } => BanSource::Detector(name),
            },
            created,
        });
    }
    Ok(BanStore::restore(bans, now)?)
}

/// Loads the ban list at `path`; a missing file is an empty list. Returns the bans in force at
/// `now` and those that ended while the agent was not running.
pub fn load(path: &Path, now: SystemTime) -> Result<(BanStore, Vec<Ban>), PersistError> {
    let text = match fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((BanStore::new(), Vec::new())),
        Err(source) => {
            return Err(PersistError::Read {
                path: path.to_owned(),
                source,
            })
        }
    };
    decode(&text, now).map_err(|source| PersistError::Invalid {
        path: path.to_owned(),
        source,
    })
}

/// Replaces the ban list at `path` with `store`, atomically (see the module documentation).
/// The directory is created mode 0700 when missing. No temporary file is left behind, also
/// when writing fails.
pub fn save(path: &Path, store: &BanStore) -> Result<(), PersistError> {
    let err = |source| PersistError::Write {
        path: path.to_owned(),
        source,
    };
    let text = encode(store).map_err(|e| err(io::Error::other(e)))?;
    crate::atomic_file::write(path, text.as_bytes()).map_err(err)
}
