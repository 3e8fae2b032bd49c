//! The archive file: a tar of the manifest, its signature and the files, encrypted with age.
//!
//! Inside, after decryption, is plain ustar: `MANIFEST.json`, `MANIFEST.sig` and one
//! `files/NAME` per file, so an operator holding the identity can also look at an archive with
//! `age -d -i KEY ARCHIVE | tar tv`. age's payload is authenticated in chunks and its last
//! chunk is marked, so a changed byte or a cut-off archive fails decryption here, before any
//! file is believed. This module neither signs nor checks signatures (`manifest` does) and
//! touches no file: it turns bytes into bytes.

use std::collections::BTreeMap;
use std::io::{Read, Write};

use age::secrecy::SecretString;

use super::manifest::FileData;

/// The manifest's name in the tar.
pub const MANIFEST_NAME: &str = "MANIFEST.json";
/// The signature's name in the tar.
pub const SIGNATURE_NAME: &str = "MANIFEST.sig";
/// The folder of the files in the tar.
const FILES_PREFIX: &str = "files/";
/// The most plaintext an archive may hold: crmguard's state is small, and a hostile archive
/// must not fill the memory.
const MAX_CONTENT: u64 = 512 * 1024 * 1024;

/// How an archive is encrypted.
pub enum Sealing {
    /// To these age X25519 recipients; any of their identities opens it.
    Recipients(Vec<age::x25519::Recipient>),
    /// To a passphrase (scrypt).
    Passphrase(SecretString),
}

/// How an archive is decrypted.
pub enum Unsealing {
    /// With any of these age X25519 identities.
    Identities(Vec<age::x25519::Identity>),
    /// With a passphrase.
    Passphrase(SecretString),
}

/// What an archive holds, not yet checked against its signature.
#[derive(Debug)]
pub struct Opened {
    /// `MANIFEST.json`, byte for byte as signed.
    pub manifest: Vec<u8>,
    /// `MANIFEST.sig`.
    pub signature: String,
    /// The files by name.
    pub files: BTreeMap<String, Vec<u8>>,
}

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("cannot encrypt the archive")]
    Encrypt(#[source] std::io::Error),
    #[error("cannot build the archive's tar")]
    Tar(#[source] std::io::Error),
    #[error("not an age-encrypted archive, or its header is cut off or damaged ({0})")]
    Header(String),
    #[error("wrong identity: the archive is not encrypted to any key of the identity file")]
    WrongIdentity,
    #[error("wrong passphrase: the archive's passphrase is another one")]
    WrongPassphrase,
    #[error("the archive is encrypted to a passphrase; give --passphrase-file")]
    NeedsPassphrase,
    #[error("the archive is encrypted to age recipients; give --identity")]
    NeedsIdentity,
    #[error("the archive is truncated or damaged at byte {offset} of its content ({size} bytes in the file): {reason}")]
    Truncated {
        offset: u64,
        size: usize,
        reason: String,
    },
    #[error("the archive holds more than {MAX_CONTENT} bytes")]
    TooLarge,
    #[error("the archive's content is not a crmguard backup: {0}")]
    Content(String),
}

/// Builds and encrypts an archive.
pub fn seal(
    manifest: &[u8],
    signature: &str,
    files: &BTreeMap<String, FileData>,
    sealing: &Sealing,
) -> Result<Vec<u8>, ArchiveError> {
    let mut tar = tar::Builder::new(Vec::new());
    append(&mut tar, MANIFEST_NAME, manifest, 0o600).map_err(ArchiveError::Tar)?;
    append(&mut tar, SIGNATURE_NAME, signature.as_bytes(), 0o600).map_err(ArchiveError::Tar)?;
    for (name, data) in files {
        append(
            &mut tar,
            &format!("{FILES_PREFIX}{name}"),
            &data.bytes,
            data.mode,
        )
        .map_err(ArchiveError::Tar)?;
    }
    let plain = tar.into_inner().map_err(ArchiveError::Tar)?;
    let encryptor = match sealing {
        Sealing::Recipients(recipients) => {
            age::Encryptor::with_recipients(recipients.iter().map(|r| r as &dyn age::Recipient))
                .map_err(|e| ArchiveError::Encrypt(std::io::Error::other(e.to_string())))?
        }
        Sealing::Passphrase(passphrase) => age::Encryptor::with_user_passphrase(passphrase.clone()),
    };
    let mut out = Vec::with_capacity(plain.len() + 1024);
    let mut writer = encryptor
        .wrap_output(&mut out)
        .map_err(ArchiveError::Encrypt)?;
    writer.write_all(&plain).map_err(ArchiveError::Encrypt)?;
    writer.finish().map_err(ArchiveError::Encrypt)?;
    Ok(out)
}

fn append(
    tar: &mut tar::Builder<Vec<u8>>,
    name: &str,
    bytes: &[u8],
    mode: u32,
) -> std::io::Result<()> {
    let mut header = tar::Header::new_ustar();
    header.set_size(u64::try_from(bytes.len()).unwrap_or(u64::MAX));
    header.set_mode(mode & 0o7777);
    header.set_entry_type(tar::EntryType::Regular);
    header.set_mtime(0);
    header.set_cksum();
    tar.append_data(&mut header, name, bytes)
}

/// Decrypts an archive and reads its tar. Nothing is checked beyond what age authenticates:
/// the caller checks the manifest and its signature.
pub fn open(bytes: &[u8], unsealing: &Unsealing) -> Result<Opened, ArchiveError> {
    let plain = decrypt(bytes, unsealing)?;
    let mut manifest = None;
    let mut signature = None;
    let mut files = BTreeMap::new();
    let mut archive = tar::Archive::new(plain.as_slice());
    let entries = archive
        .entries()
        .map_err(|e| ArchiveError::Content(e.to_string()))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| ArchiveError::Content(e.to_string()))?;
        let path = entry
            .path()
            .map_err(|e| ArchiveError::Content(e.to_string()))?
            .to_str()
            .map(str::to_owned)
            .ok_or_else(|| ArchiveError::Content("a name is not UTF-8".to_owned()))?;
        if entry.header().entry_type() != tar::EntryType::Regular {
            return Err(ArchiveError::Content(format!(
                "`{path}` is not a regular file"
            )));
        }
        let mut data = Vec::new();
        entry
            .read_to_end(&mut data)
            .map_err(|e| ArchiveError::Content(format!("`{path}`: {e}")))?;
        let duplicate = match path.as_str() {
            MANIFEST_NAME => manifest.replace(data).is_some(),
            SIGNATURE_NAME => {
                let text = String::from_utf8(data).map_err(|_| {
                    ArchiveError::Content(format!("`{SIGNATURE_NAME}` is not text"))
                })?;
                signature.replace(text).is_some()
            }
            _ => match path.strip_prefix(FILES_PREFIX) {
                Some(name) if !name.is_empty() => files.insert(name.to_owned(), data).is_some(),
                _ => return Err(ArchiveError::Content(format!("unexpected entry `{path}`"))),
            },
        };
        if duplicate {
            return Err(ArchiveError::Content(format!("`{path}` appears twice")));
        }
    }
    Ok(Opened {
        manifest: manifest.ok_or_else(|| ArchiveError::Content(format!("no `{MANIFEST_NAME}`")))?,
        signature: signature
            .ok_or_else(|| ArchiveError::Content(format!("no `{SIGNATURE_NAME}`")))?,
        files,
    })
}

fn decrypt(bytes: &[u8], unsealing: &Unsealing) -> Result<Vec<u8>, ArchiveError> {
    let decryptor =
        age::Decryptor::new_buffered(bytes).map_err(|e| ArchiveError::Header(e.to_string()))?;
    let reader = match (unsealing, decryptor.is_scrypt()) {
        (Unsealing::Identities(identities), false) => decryptor
            .decrypt(identities.iter().map(|i| i as &dyn age::Identity))
            .map_err(|e| match e {
                age::DecryptError::NoMatchingKeys
                | age::DecryptError::KeyDecryptionFailed
                | age::DecryptError::DecryptionFailed => ArchiveError::WrongIdentity,
                other => ArchiveError::Header(other.to_string()),
            })?,
        (Unsealing::Passphrase(passphrase), true) => {
            let identity = age::scrypt::Identity::new(passphrase.clone());
            decryptor
                .decrypt(std::iter::once(&identity as &dyn age::Identity))
                .map_err(|e| match e {
                    age::DecryptError::NoMatchingKeys
                    | age::DecryptError::KeyDecryptionFailed
                    | age::DecryptError::DecryptionFailed => ArchiveError::WrongPassphrase,
                    other => ArchiveError::Header(other.to_string()),
                })?
        }
        (Unsealing::Identities(_), true) => return Err(ArchiveError::NeedsPassphrase),
        (Unsealing::Passphrase(_), false) => return Err(ArchiveError::NeedsIdentity),
    };
    let mut plain = Vec::new();
    let mut limited = reader.take(MAX_CONTENT + 1);
    let mut buffer = [0u8; 64 * 1024];
    loop {
        match limited.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => plain.extend_from_slice(&buffer[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                return Err(ArchiveError::Truncated {
                    offset: u64::try_from(plain.len()).unwrap_or(u64::MAX),
                    size: bytes.len(),
                    reason: e.to_string(),
                })
            }
        }
    }
    if u64::try_from(plain.len()).unwrap_or(u64::MAX) > MAX_CONTENT {
        return Err(ArchiveError::TooLarge);
    }
    Ok(plain)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files() -> BTreeMap<String, FileData> {
        BTreeMap::from([(
            "state/bans.json".to_owned(),
            FileData {
                original: "/var/lib/crmguard/bans.json".to_owned(),
                mode: 0o600,
                bytes: b"{\"bans\":[]}".to_vec(),
            },
        )])
    }

    fn sealed(identity: &age::x25519::Identity) -> Vec<u8> {
        seal(
            b"{}",
            "c2lnbmF0dXJl",
            &files(),
            &Sealing::Recipients(vec![identity.to_public()]),
        )
        .expect("sealed")
    }

    #[test]
    fn round_trip_to_a_recipient() {
        let identity = age::x25519::Identity::generate();
        let opened =
            open(&sealed(&identity), &Unsealing::Identities(vec![identity])).expect("opened");
        assert_eq!(opened.manifest, b"{}");
        assert_eq!(opened.signature, "c2lnbmF0dXJl");
        assert_eq!(
            opened.files,
            BTreeMap::from([("state/bans.json".to_owned(), b"{\"bans\":[]}".to_vec())])
        );
    }

    #[test]
    fn round_trip_to_a_passphrase_and_a_wrong_one() {
        let passphrase = SecretString::from("correct horse".to_owned());
        let archive = seal(
            b"{}",
            "sig",
            &files(),
            &Sealing::Passphrase(passphrase.clone()),
        )
        .expect("sealed");
        let opened = open(&archive, &Unsealing::Passphrase(passphrase)).expect("opened");
        assert_eq!(opened.files.len(), 1);
        let wrong = open(
            &archive,
            &Unsealing::Passphrase(SecretString::from("battery staple".to_owned())),
        );
        assert!(
            matches!(wrong, Err(ArchiveError::WrongPassphrase)),
            "{wrong:?}"
        );
        let identity = open(
            &archive,
            &Unsealing::Identities(vec![age::x25519::Identity::generate()]),
        );
        assert!(
            matches!(identity, Err(ArchiveError::NeedsPassphrase)),
            "{identity:?}"
        );
    }

    #[test]
    fn a_wrong_identity_is_named() {
        let archive = sealed(&age::x25519::Identity::generate());
        let error = open(
            &archive,
            &Unsealing::Identities(vec![age::x25519::Identity::generate()]),
        )
        .expect_err("refused");
        assert!(matches!(error, ArchiveError::WrongIdentity), "{error:?}");
        assert_eq!(
            error.to_string(),
            "wrong identity: the archive is not encrypted to any key of the identity file"
        );
    }

    #[test]
    fn a_truncated_archive_says_where() {
        let identity = age::x25519::Identity::generate();
        let archive = sealed(&identity);
        let cut = &archive[..archive.len() - 10];
        let error = open(cut, &Unsealing::Identities(vec![identity])).expect_err("refused");
        let ArchiveError::Truncated { offset, size, .. } = &error else {
            panic!("not a truncation: {error:?}");
        };
        assert_eq!((*offset, *size), (0, archive.len() - 10));
        assert!(
            error
                .to_string()
                .starts_with("the archive is truncated or damaged at byte 0 of its content"),
            "{error}"
        );
        let header_only = &archive[..40];
        let error = open(
            header_only,
            &Unsealing::Identities(vec![age::x25519::Identity::generate()]),
        )
        .expect_err("refused");
        assert!(matches!(error, ArchiveError::Header(_)), "{error:?}");
    }

    #[test]
    fn a_changed_byte_fails_decryption() {
        let identity = age::x25519::Identity::generate();
        let mut archive = sealed(&identity);
        let last = archive.len() - 1;
        archive[last] ^= 0x01;
        let error = open(&archive, &Unsealing::Identities(vec![identity])).expect_err("refused");
        assert!(matches!(error, ArchiveError::Truncated { .. }), "{error:?}");
    }
}
