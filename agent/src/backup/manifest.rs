//! The manifest of a backup archive: what it holds, the SHA-256 sum of each file, and who
//! signed it.
//!
//! The manifest is JSON, signed as written (the exact bytes) with the host's Ed25519 backup
//! signing key. age's recipients are public, so anyone could encrypt an archive to them: the
//! signature is what tells an archive this host made from one somebody else put together, and
//! the sums are what tie the files to the signed manifest. This module is pure: it reads and
//! writes no file.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// The archive format this module writes and reads.
pub const FORMAT: &str = "crmguard-backup/1";

/// The manifest as stored in the archive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// [`FORMAT`].
    pub format: String,
    /// When the archive was made (RFC 3339, UTC).
    pub created: String,
    /// The signer's Ed25519 public key in standard base64, as `backup create` prints it.
    pub signer: String,
    /// The files, sorted by name.
    pub files: Vec<FileEntry>,
}

/// One file of the archive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    /// The name inside the archive (see `contents`), which also says where it is restored.
    pub name: String,
    /// Where the file was on the host that made the archive.
    pub original: String,
    /// Its length in bytes.
    pub size: u64,
    /// Its permission bits, restored with it.
    pub mode: u32,
    /// The hex SHA-256 of its bytes.
    pub sha256: String,
}

/// One file to put in an archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileData {
    /// Where it was read from.
    pub original: String,
    /// Its permission bits.
    pub mode: u32,
    /// Its bytes.
    pub bytes: Vec<u8>,
}

/// Why an archive's manifest or files were refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ManifestError {
    #[error("the manifest is not valid JSON of a crmguard backup: {0}")]
    Malformed(String),
    #[error("the archive's format is `{0}`; this crmguard reads `{FORMAT}`")]
    Format(String),
    #[error("the manifest names no valid signer key (`{0}`)")]
    SignerKey(String),
    #[error("the archive was signed by another key: its signer is {archive}, expected {expected}")]
    OtherSigner { archive: String, expected: String },
    #[error("bad signature: the manifest was changed after it was signed by {0}")]
    BadSignature(String),
    #[error("the manifest's signature is not 64 bytes of base64")]
    SignatureMalformed,
    #[error("file `{name}` differs from the manifest: its SHA-256 is {actual}, the manifest says {expected}")]
    SumDiffers {
        name: String,
        expected: String,
        actual: String,
    },
    #[error("file `{0}` is in the manifest but not in the archive")]
    Missing(String),
    #[error("file `{0}` is in the archive but not in the manifest")]
    Unlisted(String),
    #[error("file `{0}` is listed twice in the manifest")]
    Duplicate(String),
}

/// The hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    let mut hex = String::with_capacity(64);
    for byte in digest {
        let _ = write!(hex, "{byte:02x}");
    }
    hex
}

/// A public key as `backup create` prints it and `--signer` takes it: standard base64.
pub fn encode_public(key: &VerifyingKey) -> String {
    STANDARD.encode(key.as_bytes())
}

/// Parses a public key written by [`encode_public`].
pub fn decode_public(text: &str) -> Option<VerifyingKey> {
    let bytes: [u8; 32] = STANDARD.decode(text.trim()).ok()?.try_into().ok()?;
    VerifyingKey::from_bytes(&bytes).ok()
}

impl Manifest {
    /// The manifest of `files`, signed (later) by `signer`.
    pub fn new(created: String, signer: &VerifyingKey, files: &BTreeMap<String, FileData>) -> Self {
        Manifest {
            format: FORMAT.to_owned(),
            created,
            signer: encode_public(signer),
            files: files
                .iter()
                .map(|(name, data)| FileEntry {
                    name: name.clone(),
                    original: data.original.clone(),
                    size: u64::try_from(data.bytes.len()).unwrap_or(u64::MAX),
                    mode: data.mode,
                    sha256: sha256_hex(&data.bytes),
                })
                .collect(),
        }
    }

    /// The bytes stored in the archive, and signed.
    pub fn to_bytes(&self) -> Vec<u8> {
        // A struct of strings and integers always serializes.
        let mut bytes = serde_json::to_vec_pretty(self).unwrap_or_default();
        bytes.push(b'\n');
        bytes
    }

    /// Parses the stored bytes.
    pub fn parse(bytes: &[u8]) -> Result<Manifest, ManifestError> {
        let manifest: Manifest =
            serde_json::from_slice(bytes).map_err(|e| ManifestError::Malformed(e.to_string()))?;
        if manifest.format != FORMAT {
            return Err(ManifestError::Format(manifest.format));
        }
        Ok(manifest)
    }

    /// Checks that `files` are exactly the files of the manifest, each with its sum. The first
    /// difference, in name order, is the error.
    pub fn check_files(&self, files: &BTreeMap<String, Vec<u8>>) -> Result<(), ManifestError> {
        let mut listed = BTreeMap::new();
        for entry in &self.files {
            if listed.insert(entry.name.as_str(), entry).is_some() {
                return Err(ManifestError::Duplicate(entry.name.clone()));
            }
        }
        for (name, entry) in &listed {
            let Some(bytes) = files.get(*name) else {
                return Err(ManifestError::Missing((*name).to_owned()));
            };
            let actual = sha256_hex(bytes);
            if actual != entry.sha256 {
                return Err(ManifestError::SumDiffers {
                    name: (*name).to_owned(),
                    expected: entry.sha256.clone(),
                    actual,
                });
            }
        }
        match files
            .keys()
            .find(|name| !listed.contains_key(name.as_str()))
        {
            Some(name) => Err(ManifestError::Unlisted(name.clone())),
            None => Ok(()),
        }
    }
}

/// The signature of the manifest's bytes, in standard base64 as the archive stores it.
pub fn sign(manifest_bytes: &[u8], key: &SigningKey) -> String {
    STANDARD.encode(key.sign(manifest_bytes).to_bytes())
}

/// Checks an archive's manifest and its signature against the `expected` signer, then the
/// files against the manifest; returns the parsed manifest.
pub fn verify(
    manifest_bytes: &[u8],
    signature: &str,
    files: &BTreeMap<String, Vec<u8>>,
    expected: &VerifyingKey,
) -> Result<Manifest, ManifestError> {
    let manifest = Manifest::parse(manifest_bytes)?;
    let Some(signer) = decode_public(&manifest.signer) else {
        return Err(ManifestError::SignerKey(manifest.signer));
    };
    if signer != *expected {
        return Err(ManifestError::OtherSigner {
            archive: manifest.signer,
            expected: encode_public(expected),
        });
    }
    let signature = STANDARD
        .decode(signature.trim())
        .ok()
        .and_then(|bytes| Signature::from_slice(&bytes).ok())
        .ok_or(ManifestError::SignatureMalformed)?;
    expected
        .verify_strict(manifest_bytes, &signature)
        .map_err(|_| ManifestError::BadSignature(manifest.signer.clone()))?;
    manifest.check_files(files)?;
    Ok(manifest)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    fn files() -> BTreeMap<String, FileData> {
        [
            ("config", "/etc/crmguard/crmguard.toml", "[agent]\n"),
            ("state/bans.json", "/var/lib/crmguard/bans.json", "{}"),
            (
                "state/mfa/alice.secret",
                "/var/lib/crmguard/mfa/alice.secret",
                "MZXW6\n",
            ),
        ]
        .into_iter()
        .map(|(name, original, text)| {
            (
                name.to_owned(),
                FileData {
                    original: original.to_owned(),
                    mode: 0o600,
                    bytes: text.as_bytes().to_vec(),
                },
            )
        })
        .collect()
    }

    fn stored(files: &BTreeMap<String, FileData>) -> BTreeMap<String, Vec<u8>> {
        files
            .iter()
            .map(|(name, data)| (name.clone(), data.bytes.clone()))
            .collect()
    }

    fn signed(signer: &SigningKey) -> (Vec<u8>, String) {
        let manifest = Manifest::new(
            "2026-12-06T07:00:00Z".to_owned(),
            &signer.verifying_key(),
            &files(),
        );
        let bytes = manifest.to_bytes();
        let signature = sign(&bytes, signer);
        (bytes, signature)
    }

    #[test]
    fn round_trip() {
        let signer = key(1);
        let (bytes, signature) = signed(&signer);
        let manifest = verify(
            &bytes,
            &signature,
            &stored(&files()),
            &signer.verifying_key(),
        )
        .expect("verified");
        assert_eq!(manifest.files.len(), 3);
        assert_eq!(manifest.files[1].name, "state/bans.json");
        assert_eq!(manifest.files[1].sha256, sha256_hex(b"{}"));
        assert_eq!(Manifest::parse(&manifest.to_bytes()), Ok(manifest));
    }

    #[test]
    fn a_changed_byte_names_the_file() {
        let signer = key(1);
        let (bytes, signature) = signed(&signer);
        let mut files = stored(&files());
        if let Some(secret) = files.get_mut("state/mfa/alice.secret") {
            secret[0] ^= 1;
        }
        let error =
            verify(&bytes, &signature, &files, &signer.verifying_key()).expect_err("refused");
        assert_eq!(
            error,
            ManifestError::SumDiffers {
                name: "state/mfa/alice.secret".to_owned(),
                expected: sha256_hex(b"MZXW6\n"),
                actual: sha256_hex(b"LZXW6\n"),
            }
        );
    }

    #[test]
    fn missing_and_unlisted_files_are_named() {
        let signer = key(1);
        let (bytes, signature) = signed(&signer);
        let mut files = stored(&files());
        files.remove("state/bans.json");
        let error = verify(&bytes, &signature, &files, &signer.verifying_key());
        assert_eq!(
            error,
            Err(ManifestError::Missing("state/bans.json".to_owned()))
        );
        let mut files = stored(&self::files());
        files.insert("state/extra".to_owned(), Vec::new());
        let error = verify(&bytes, &signature, &files, &signer.verifying_key());
        assert_eq!(
            error,
            Err(ManifestError::Unlisted("state/extra".to_owned()))
        );
    }

    #[test]
    fn an_edited_manifest_fails_the_signature() {
        let signer = key(1);
        let (bytes, signature) = signed(&signer);
        let text = String::from_utf8(bytes).expect("utf-8");
        let edited = text.replace("2026-12-06T07:00:00Z", "2026-12-06T08:00:00Z");
        let error = verify(
            edited.as_bytes(),
            &signature,
            &stored(&files()),
            &signer.verifying_key(),
        );
        assert_eq!(
            error,
            Err(ManifestError::BadSignature(encode_public(
                &signer.verifying_key()
            )))
        );
    }

    #[test]
    fn another_signer_is_refused() {
        let (bytes, signature) = signed(&key(2));
        let expected = key(1).verifying_key();
        let error = verify(&bytes, &signature, &stored(&files()), &expected);
        assert_eq!(
            error,
            Err(ManifestError::OtherSigner {
                archive: encode_public(&key(2).verifying_key()),
                expected: encode_public(&expected),
            })
        );
    }

    #[test]
    fn a_manifest_that_claims_the_expected_signer_still_needs_its_signature() {
        // Signed by key 2, but the manifest names key 1.
        let expected = key(1).verifying_key();
        let manifest = Manifest::new("2026-12-06T07:00:00Z".to_owned(), &expected, &files());
        let bytes = manifest.to_bytes();
        let signature = sign(&bytes, &key(2));
        let error = verify(&bytes, &signature, &stored(&files()), &expected);
        assert_eq!(
            error,
            Err(ManifestError::BadSignature(encode_public(&expected)))
        );
    }

    #[test]
    fn public_keys_round_trip() {
        let public = key(3).verifying_key();
        assert_eq!(decode_public(&encode_public(&public)), Some(public));
        assert_eq!(decode_public("not base64"), None);
    }
}
