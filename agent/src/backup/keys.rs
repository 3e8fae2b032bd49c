//! The keys of backups: the host's Ed25519 signing key and its age drill identity, both in the
//! state directory, and the operator's identity, passphrase and signer given on the command
//! line.
//!
//! Both host keys are created on first use (mode 0600, written whole or not at all, never
//! replaced) and neither is put in an archive: the signing key stays the proof that an archive
//! came from this host, and the drill identity only lets this host check its own archives.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use age::secrecy::{ExposeSecret as _, SecretString};
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use ed25519_dalek::{SigningKey, VerifyingKey};

use crmguard_core::atomic_file;

/// The signing key's file in the state directory: the 32-byte Ed25519 seed in base64.
pub const SIGNING_KEY_FILE: &str = "backup-signing.key";

/// The drill identity's file in the state directory: an age X25519 identity
/// (`AGE-SECRET-KEY-1...`). Scheduled archives are also encrypted to it, so that the agent can
/// open each archive it writes and restore it into a scratch directory (the restore drill)
/// while the operator's own identity stays off the host.
pub const DRILL_IDENTITY_FILE: &str = "backup-drill.key";

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot create {path}")]
    Create {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} does not hold a backup signing key (32 bytes of base64)")]
    MalformedSigningKey { path: PathBuf },
    #[error("{path} holds no age identity (a line `AGE-SECRET-KEY-1...`) on line {line}")]
    MalformedIdentity { path: PathBuf, line: usize },
    #[error("{path} holds no age identity")]
    NoIdentity { path: PathBuf },
    #[error("{path} is empty; its first line is the passphrase")]
    EmptyPassphrase { path: PathBuf },
    #[error("`{0}` is not an age X25519 recipient")]
    Recipient(String),
    #[error("`{0}` is not a backup signer's public key (44 characters of base64, as `backup create` prints it)")]
    Signer(String),
}

/// The signing key's path.
pub fn signing_key_path(state_dir: &Path) -> PathBuf {
    state_dir.join(SIGNING_KEY_FILE)
}

/// The host's signing key, if it has one.
pub fn load_signing_key(state_dir: &Path) -> Result<Option<SigningKey>, KeyError> {
    let path = signing_key_path(state_dir);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(KeyError::Read { path, source }),
    };
    let seed: [u8; 32] = STANDARD
        .decode(text.trim())
        .ok()
        .and_then(|bytes| bytes.try_into().ok())
        .ok_or(KeyError::MalformedSigningKey { path })?;
    Ok(Some(SigningKey::from_bytes(&seed)))
}

/// The host's signing key, created when it has none. Returns whether it was created.
pub fn load_or_create_signing_key(state_dir: &Path) -> Result<(SigningKey, bool), KeyError> {
    if let Some(key) = load_signing_key(state_dir)? {
        return Ok((key, false));
    }
    let path = signing_key_path(state_dir);
    let mut seed = [0u8; 32];
    File::open("/dev/urandom")
        .and_then(|mut random| random.read_exact(&mut seed))
        .map_err(|source| KeyError::Create {
            path: path.clone(),
            source,
        })?;
    let text = format!("{}\n", STANDARD.encode(seed));
    let created =
        atomic_file::create_new(&path, text.as_bytes()).map_err(|source| KeyError::Create {
            path: path.clone(),
            source,
        })?;
    // Another process may have created it first: its key is the one.
    match load_signing_key(state_dir)? {
        Some(key) => Ok((key, created)),
        None => Err(KeyError::MalformedSigningKey { path }),
    }
}

/// The host's drill identity, created when it has none.
pub fn load_or_create_drill_identity(state_dir: &Path) -> Result<age::x25519::Identity, KeyError> {
    let path = state_dir.join(DRILL_IDENTITY_FILE);
    if !path.exists() {
        let identity = age::x25519::Identity::generate();
        let text = format!("{}\n", identity.to_string().expose_secret());
        atomic_file::create_new(&path, text.as_bytes()).map_err(|source| KeyError::Create {
            path: path.clone(),
            source,
        })?;
    }
    let mut identities = read_identity_file(&path)?;
    Ok(identities.remove(0))
}

/// The age X25519 identities of an identity file as `age-keygen` writes it: one
/// `AGE-SECRET-KEY-1...` per line, `#` comments and empty lines ignored. Never empty.
pub fn read_identity_file(path: &Path) -> Result<Vec<age::x25519::Identity>, KeyError> {
    let text = std::fs::read_to_string(path).map_err(|source| KeyError::Read {
        path: path.to_owned(),
        source,
    })?;
    let mut identities = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let identity =
            line.parse::<age::x25519::Identity>()
                .map_err(|_| KeyError::MalformedIdentity {
                    path: path.to_owned(),
                    line: index + 1,
                })?;
        identities.push(identity);
    }
    if identities.is_empty() {
        return Err(KeyError::NoIdentity {
            path: path.to_owned(),
        });
    }
    Ok(identities)
}

/// The passphrase of a passphrase file: its first line, without the line end.
pub fn read_passphrase_file(path: &Path) -> Result<SecretString, KeyError> {
    let text = std::fs::read_to_string(path).map_err(|source| KeyError::Read {
        path: path.to_owned(),
        source,
    })?;
    let line = text.lines().next().unwrap_or("");
    if line.is_empty() {
        return Err(KeyError::EmptyPassphrase {
            path: path.to_owned(),
        });
    }
    Ok(SecretString::from(line.to_owned()))
}

/// Parses `[backup] recipient`.
pub fn parse_recipient(text: &str) -> Result<age::x25519::Recipient, KeyError> {
    text.parse()
        .map_err(|_| KeyError::Recipient(text.to_owned()))
}

/// Parses `--signer`.
pub fn parse_signer(text: &str) -> Result<VerifyingKey, KeyError> {
    super::manifest::decode_public(text).ok_or_else(|| KeyError::Signer(text.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn the_signing_key_is_created_once_with_mode_0600() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(load_signing_key(dir.path()).expect("read").is_none());
        let (key, created) = load_or_create_signing_key(dir.path()).expect("created");
        assert!(created);
        let (again, created) = load_or_create_signing_key(dir.path()).expect("loaded");
        assert!(!created);
        assert_eq!(key.verifying_key(), again.verifying_key());
        let mode = std::fs::metadata(signing_key_path(dir.path()))
            .expect("metadata")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn the_drill_identity_is_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = load_or_create_drill_identity(dir.path()).expect("created");
        let second = load_or_create_drill_identity(dir.path()).expect("loaded");
        assert_eq!(
            first.to_public().to_string(),
            second.to_public().to_string()
        );
    }

    #[test]
    fn identity_files_skip_comments_and_name_bad_lines() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("key.txt");
        let identity = age::x25519::Identity::generate();
        std::fs::write(
            &path,
            format!(
                "# created: 2026-12-06\n# public key: {}\n{}\n",
                identity.to_public(),
                identity.to_string().expose_secret()
            ),
        )
        .expect("written");
        assert_eq!(read_identity_file(&path).expect("read").len(), 1);
        std::fs::write(&path, "# nothing\nAGE-SECRET-KEY-1BOGUS\n").expect("written");
        let Err(error) = read_identity_file(&path) else {
            panic!("a bogus identity was accepted");
        };
        assert_eq!(
            error.to_string(),
            format!(
                "{} holds no age identity (a line `AGE-SECRET-KEY-1...`) on line 2",
                path.display()
            )
        );
    }
}
