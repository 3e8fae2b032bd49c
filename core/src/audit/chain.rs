//! What links the records: the audit key, the MAC over a record and the checkpoint file that
//! remembers the end of the chain.

use std::fmt;
use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use data_encoding::HEXLOWER;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

/// The length of the audit key and of a MAC, in bytes.
pub const KEY_LEN: usize = 32;

/// The `prev` of the first record.
pub(crate) const ZERO_MAC: [u8; 32] = [0; 32];

type HmacSha256 = Hmac<Sha256>;

/// The secret that keys the audit log's MACs: 32 random bytes, the whole content of
/// `[audit] key_file`. Whoever holds it can forge records, so it is never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct AuditKey([u8; KEY_LEN]);

impl fmt::Debug for AuditKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AuditKey(..)")
    }
}

impl AuditKey {
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        AuditKey(bytes)
    }

    /// HMAC-SHA-256 of `message` under this key.
    pub(crate) fn mac(&self, message: &[u8]) -> [u8; 32] {
        self.hasher(message).finalize().into_bytes().into()
    }

    /// Whether `mac` is the MAC of `message`, compared in constant time.
    pub(crate) fn check(&self, message: &[u8], mac: &[u8]) -> bool {
        self.hasher(message).verify_slice(mac).is_ok()
    }

    fn hasher(&self, message: &[u8]) -> HmacSha256 {
        // HMAC takes keys of any length, so this cannot fail for a 32-byte key.
        let mut hasher = match HmacSha256::new_from_slice(&self.0) {
            Ok(hasher) => hasher,
            Err(_) => unreachable!("HMAC accepts keys of every length"),
        };
        hasher.update(message);
        hasher
    }
}

/// Why the audit key could not be read or created.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("the audit key {path} does not exist")]
    Missing { path: PathBuf },
    #[error("cannot read the audit key {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the audit key {path} holds {len} bytes, not {KEY_LEN}")]
    Length { path: PathBuf, len: usize },
    #[error("cannot create the audit key {path}")]
    Create {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl KeyError {
    /// Whether the key file is absent (a configuration problem rather than a failure).
    pub fn is_missing(&self) -> bool {
        matches!(self, KeyError::Missing { .. })
    }
}

/// Reads the audit key at `path`, which must exist.
pub fn load_key(path: &Path) -> Result<AuditKey, KeyError> {
    let bytes = match fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(KeyError::Missing {
                path: path.to_owned(),
            })
        }
        Err(source) => {
            return Err(KeyError::Read {
                path: path.to_owned(),
                source,
            })
        }
    };
    let key = <[u8; KEY_LEN]>::try_from(bytes.as_slice()).map_err(|_| KeyError::Length {
        path: path.to_owned(),
        len: bytes.len(),
    })?;
    Ok(AuditKey(key))
}

/// Reads the audit key at `path`, creating it first (32 random bytes, mode 0600) when it does
/// not exist. The key appears whole or not at all: it is written to a temporary file, flushed,
/// and linked into place, so that two agents starting at once end up with the same key.
pub fn load_or_create_key(path: &Path) -> Result<AuditKey, KeyError> {
    match load_key(path) {
        Err(KeyError::Missing { .. }) => {}
        other => return other,
    }
    let err = |source| KeyError::Create {
        path: path.to_owned(),
        source,
    };
    let mut key = [0u8; KEY_LEN];
    File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut key))
        .map_err(err)?;
    // When another process created the key first, its key is the one in use.
    crate::atomic_file::create_new(path, &key).map_err(err)?;
    load_key(path)
}

/// The end of the chain as the writer last recorded it: the `seq` and `mac` of the newest
/// record. A log whose last record is older than its checkpoint has lost its tail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checkpoint {
    pub seq: u64,
    pub mac: [u8; 32],
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct CheckpointRepr {
    seq: u64,
    mac: String,
}

/// Why the checkpoint could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("cannot read the audit checkpoint {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the audit checkpoint {path} is not valid")]
    Invalid { path: PathBuf },
    #[error("cannot write the audit checkpoint {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Reads the checkpoint at `path`; `None` when there is none (no record written yet).
pub fn read_checkpoint(path: &Path) -> Result<Option<Checkpoint>, CheckpointError> {
    let text = match fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(CheckpointError::Read {
                path: path.to_owned(),
                source,
            })
        }
    };
    let invalid = || CheckpointError::Invalid {
        path: path.to_owned(),
    };
    let repr: CheckpointRepr = serde_json::from_str(&text).map_err(|_| invalid())?;
    let mac = decode_mac(&repr.mac).ok_or_else(invalid)?;
    Ok(Some(Checkpoint { seq: repr.seq, mac }))
}

/// Replaces the checkpoint at `path` atomically.
pub(crate) fn write_checkpoint(
    path: &Path,
    checkpoint: &Checkpoint,
) -> Result<(), CheckpointError> {
    let err = |source| CheckpointError::Write {
        path: path.to_owned(),
        source,
    };
    let repr = CheckpointRepr {
        seq: checkpoint.seq,
        mac: HEXLOWER.encode(&checkpoint.mac),
    };
    let mut text = serde_json::to_string(&repr).map_err(|e| err(io::Error::other(e)))?;
    text.push('\n');
    replace_file(path, text.as_bytes()).map_err(err)
}

/// The 32 bytes of a MAC written as 64 lowercase hex digits; `None` for any other spelling.
pub(crate) fn decode_mac(text: &str) -> Option<[u8; 32]> {
    // `HEXLOWER` refuses upper case, so one MAC has one spelling.
    if HEXLOWER.decode_len(text.len()).ok()? != 32 {
        return None;
    }
    let mut mac = [0u8; 32];
    HEXLOWER.decode_mut(text.as_bytes(), &mut mac).ok()?;
    Some(mac)
}

/// Replaces the file at `path` with `bytes` through a flushed temporary file and a rename, so
/// that a crash leaves the old content or the new, never a mix. The directory is created mode
/// 0700 when missing.
fn replace_file(path: &Path, bytes: &[u8]) -> io::Result<()> {
    crate::atomic_file::write(path, bytes)
}
