//! The peers' TOTP secrets: `state_dir/mfa/<peer>.secret`, one file per peer holding the
//! secret in base32 and a newline, mode 0600 in a directory of mode 0700.
//!
//! A secret is written atomically (see [`super::store`]), so a crash while enrolling leaves
//! the old secret or the new one. Enrolling again replaces the secret: the peer's old
//! authenticator entry stops working. Nothing here logs a secret, and [`Secret`]'s `Debug`
//! does not show it.

use std::fmt;
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use super::base32;
use super::store;

/// Bytes in a secret: 160 bits, the HMAC-SHA-1 output size RFC 4226 recommends.
pub const SECRET_LEN: usize = 20;

/// The directory inside `state_dir` that holds the MFA state.
pub const DIR_NAME: &str = "mfa";

/// A peer's TOTP secret.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret([u8; SECRET_LEN]);

impl Secret {
    pub fn from_bytes(bytes: [u8; SECRET_LEN]) -> Self {
        Secret(bytes)
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// Why a secret could not be made, read or written.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("`{0}` cannot name a secret file")]
    Name(String),
    #[error("cannot read random bytes from /dev/urandom")]
    Random(#[source] io::Error),
    #[error("cannot write the MFA secret {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot read the MFA secret {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the MFA secret {path} is not {SECRET_LEN} bytes of base32; enroll the peer again")]
    Invalid { path: PathBuf },
}

/// The file holding `peer`'s secret. Fails for names that could leave the directory or hide
/// as dot files; configured peer names never do.
pub fn path(state_dir: &Path, peer: &str) -> Result<PathBuf, SecretError> {
    if peer.is_empty() || peer.starts_with('.') || peer.contains(['/', '\0']) {
        return Err(SecretError::Name(peer.to_owned()));
    }
    Ok(state_dir.join(DIR_NAME).join(format!("{peer}.secret")))
}

/// Makes a new random secret for `peer` and stores it, replacing any earlier one.
pub fn enroll(state_dir: &Path, peer: &str) -> Result<Secret, SecretError> {
    let path = path(state_dir, peer)?;
    let secret = random_secret()?;
    let mut text = base32::encode(secret.as_bytes());
    text.push('\n');
    store::write_atomic(&path, text.as_bytes()).map_err(|source| SecretError::Write {
        path: path.clone(),
        source,
    })?;
    Ok(secret)
}

/// `peer`'s secret, or `None` when the peer is not enrolled.
pub fn load(state_dir: &Path, peer: &str) -> Result<Option<Secret>, SecretError> {
    let path = path(state_dir, peer)?;
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(SecretError::Read { path, source }),
    };
    let bytes = base32::decode(text.trim_end_matches('\n'))
        .ok()
        .and_then(|bytes| <[u8; SECRET_LEN]>::try_from(bytes).ok());
    match bytes {
        Some(bytes) => Ok(Some(Secret(bytes))),
        None => Err(SecretError::Invalid { path }),
    }
}

/// Deletes `peer`'s secret, as when the peer is removed: a peer added again under the same
/// name must enroll again. Returns whether there was one.
pub fn remove(state_dir: &Path, peer: &str) -> Result<bool, SecretError> {
    let path = path(state_dir, peer)?;
    match std::fs::remove_file(&path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(source) => Err(SecretError::Write { path, source }),
    }
}

fn random_secret() -> Result<Secret, SecretError> {
    let mut bytes = [0; SECRET_LEN];
    File::open("/dev/urandom")
        .and_then(|mut urandom| urandom.read_exact(&mut bytes))
        .map_err(SecretError::Random)?;
    Ok(Secret(bytes))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path)
            .map(|m| m.permissions().mode() & 0o777)
            .unwrap_or(0)
    }

    #[test]
    fn enroll_writes_a_private_file_and_load_reads_it() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let state_dir = dir.path().join("state");
        assert!(load(&state_dir, "alice").expect("readable").is_none());

        let secret = enroll(&state_dir, "alice").expect("enrolled");
        let file = state_dir.join("mfa/alice.secret");
        assert_eq!(mode(&file), 0o600);
        assert_eq!(mode(&state_dir.join("mfa")), 0o700);
        assert_eq!(
            load(&state_dir, "alice").expect("readable"),
            Some(secret.clone())
        );

        let entries: Vec<_> = std::fs::read_dir(state_dir.join("mfa"))
            .expect("mfa directory")
            .map(|e| e.expect("directory entry").file_name())
            .collect();
        assert_eq!(entries, vec![std::ffi::OsString::from("alice.secret")]);

        let text = std::fs::read_to_string(&file).expect("secret file");
        assert_eq!(text, format!("{}\n", base32::encode(secret.as_bytes())));
    }

    #[test]
    fn enrolling_again_replaces_the_secret() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let first = enroll(dir.path(), "alice").expect("enrolled");
        let second = enroll(dir.path(), "alice").expect("enrolled");
        assert_ne!(first, second);
        assert_eq!(load(dir.path(), "alice").expect("readable"), Some(second));
    }

    #[test]
    fn bad_names_are_refused() {
        let dir = tempfile::tempdir().expect("temporary directory");
        for name in ["", ".", "..", "../x", "a/b", ".hidden"] {
            assert!(
                matches!(enroll(dir.path(), name), Err(SecretError::Name(_))),
                "{name:?}"
            );
        }
    }

    #[test]
    fn a_damaged_file_is_an_error() {
        let dir = tempfile::tempdir().expect("temporary directory");
        std::fs::create_dir(dir.path().join("mfa")).expect("mfa directory");
        std::fs::write(dir.path().join("mfa/alice.secret"), "MZXW6\n").expect("written");
        assert!(matches!(
            load(dir.path(), "alice"),
            Err(SecretError::Invalid { .. })
        ));
    }

    #[test]
    fn debug_does_not_show_the_secret() {
        let secret = Secret::from_bytes(*b"12345678901234567890");
        assert_eq!(format!("{secret:?}"), "Secret(<redacted>)");
    }
}
