//! The gateway's WireGuard private key: `[vpn] private_key_file`.
//!
//! The file holds the key as 44 characters of standard base64, like `wg genkey` writes it. When
//! the file does not exist the agent creates it with a fresh key: mode 0600, written to a
//! temporary file in the same directory and renamed into place, so that a crash never leaves a
//! half-written key behind. The public key is logged so the operator can hand it to clients.

use std::fs::{self, File};
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use x25519_dalek::{PublicKey, StaticSecret};

/// The gateway's key pair.
#[derive(Clone)]
pub struct KeyPair {
    pub secret: StaticSecret,
    pub public: PublicKey,
}

impl std::fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyPair")
            .field("public", &encode(self.public.as_bytes()))
            .finish_non_exhaustive()
    }
}

impl KeyPair {
    pub fn from_private(bytes: [u8; 32]) -> KeyPair {
        let secret = StaticSecret::from(bytes);
        let public = PublicKey::from(&secret);
        KeyPair { secret, public }
    }

    /// The public key in base64, as clients configure it.
    pub fn public_base64(&self) -> String {
        encode(self.public.as_bytes())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read the private key file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the private key file {path} does not hold a base64 WireGuard key (44 characters, 32 bytes)")]
    Malformed { path: PathBuf },
    #[error("cannot create the private key file {path}")]
    Create {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Standard base64 of a key.
pub fn encode(key: &[u8; 32]) -> String {
    STANDARD.encode(key)
}

/// Decodes 44 characters of standard base64 into a key.
pub fn decode(text: &str) -> Option<[u8; 32]> {
    let bytes = STANDARD.decode(text.trim()).ok()?;
    bytes.try_into().ok()
}

/// Whether `public` is a point of small order on Curve25519 (or an encoding of one): the
/// Diffie-Hellman result with it is the same for every private key, all zeros, so a handshake
/// with such a peer key proves nothing. WireGuard refuses these keys; so does crmguard.
///
/// Every scalar is a multiple of the cofactor 8 after clamping, which removes the small-order
/// part of a point: the result is zero exactly when nothing else is left.
pub fn is_low_order(public: &[u8; 32]) -> bool {
    const ANY_SCALAR: [u8; 32] = [0x5a; 32];
    x25519_dalek::x25519(ANY_SCALAR, *public) == [0u8; 32]
}

/// Reads the key at `path`, or creates the file with a fresh key when it does not exist.
/// Returns the key pair and whether the file was created.
pub fn load_or_create(path: &Path) -> Result<(KeyPair, bool), KeyError> {
    match fs::read_to_string(path) {
        Ok(text) => {
            let bytes = decode(&text).ok_or_else(|| KeyError::Malformed {
                path: path.to_owned(),
            })?;
            if let Ok(meta) = fs::metadata(path) {
                if meta.permissions().mode() & 0o077 != 0 {
                    tracing::warn!(
                        path = %path.display(),
                        mode = format!("{:o}", meta.permissions().mode() & 0o777),
                        "the WireGuard private key file is readable by others than its owner; chmod 600 it"
                    );
                }
            }
            Ok((KeyPair::from_private(bytes), false))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let bytes = fresh_private_key().map_err(|source| KeyError::Create {
                path: path.to_owned(),
                source,
            })?;
            // Never replaces a key: when the agent's start and a `crmguard peer add` (or two of
            // them) race on a fresh host, one key wins and the other side reads it, so that no
            // handout carries a gateway key the host does not keep.
            let created =
                crate::atomic_file::create_new(path, format!("{}\n", encode(&bytes)).as_bytes())
                    .map_err(|source| KeyError::Create {
                        path: path.to_owned(),
                        source,
                    })?;
            if created {
                Ok((KeyPair::from_private(bytes), true))
            } else {
                load_or_create(path)
            }
        }
        Err(source) => Err(KeyError::Read {
            path: path.to_owned(),
            source,
        }),
    }
}

/// 32 random bytes from the kernel, clamped as Curve25519 private keys are (what `wg genkey`
/// prints).
pub fn fresh_private_key() -> std::io::Result<[u8; 32]> {
    let mut key = [0u8; 32];
    File::open("/dev/urandom")?.read_exact(&mut key)?;
    key[0] &= 248;
    key[31] &= 127;
    key[31] |= 64;
    Ok(key)
}

/// Writes `contents` to `path` atomically, mode 0600 (see `crate::atomic_file`).
pub fn write_atomic(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    crate::atomic_file::write(path, contents)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(text: &str) -> [u8; 32] {
        let mut out = [0u8; 32];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte =
                u8::from_str_radix(&text[2 * i..2 * i + 2], 16).unwrap_or_else(|e| panic!("{e}"));
        }
        out
    }

    #[test]
    fn low_order_points_are_recognised_and_real_keys_are_not() {
        // The points of order 1, 2, 4 and 8, and the encodings at and around p.
        for point in [
            "0000000000000000000000000000000000000000000000000000000000000000",
            "0100000000000000000000000000000000000000000000000000000000000000",
            "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800",
            "5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157",
            "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
            "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
            "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        ] {
            assert!(is_low_order(&hex(point)), "{point}");
        }
        for _ in 0..32 {
            let pair = KeyPair::from_private(fresh_private_key().unwrap_or_else(|e| panic!("{e}")));
            assert!(!is_low_order(pair.public.as_bytes()));
        }
    }

    #[test]
    fn creates_a_key_once_and_reads_it_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("sub").join("wg.key");
        let (first, created) = load_or_create(&path).expect("created");
        assert!(created);
        let mode = fs::metadata(&path).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let text = fs::read_to_string(&path).expect("read");
        assert_eq!(text.trim().len(), 44);
        let (second, created) = load_or_create(&path).expect("read back");
        assert!(!created);
        assert_eq!(first.public.as_bytes(), second.public.as_bytes());
        // Nothing but the key is left in the directory.
        let names: Vec<_> = fs::read_dir(path.parent().expect("dir"))
            .expect("list")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("wg.key")]);
    }

    /// The agent's start and `crmguard peer add` on a fresh host: one key wins, and every side
    /// ends with it.
    #[test]
    fn racing_creators_all_end_with_one_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("wg.key");
        let results: Vec<(KeyPair, bool)> = std::thread::scope(|scope| {
            let racers: Vec<_> = (0..8)
                .map(|_| scope.spawn(|| load_or_create(&path).expect("key")))
                .collect();
            racers
                .into_iter()
                .map(|r| r.join().expect("racer"))
                .collect()
        });
        assert_eq!(results.iter().filter(|(_, created)| *created).count(), 1);
        let (kept, _) = load_or_create(&path).expect("read back");
        for (pair, _) in &results {
            assert_eq!(pair.public.as_bytes(), kept.public.as_bytes());
        }
    }

    #[test]
    fn matches_wireguard_key_derivation() {
        // RFC 7748 section 6.1, Alice's key pair.
        let private = "dwdtCnMYpX08FsFyUbJmRd9ML4frwJkqsXf7pR25LCo=";
        let public = "hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo=";
        let pair = KeyPair::from_private(decode(private).expect("valid"));
        assert_eq!(pair.public_base64(), public);
    }

    #[test]
    fn refuses_a_malformed_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("wg.key");
        fs::write(&path, "not a key\n").expect("write");
        assert!(matches!(
            load_or_create(&path),
            Err(KeyError::Malformed { .. })
        ));
        assert!(decode("AAAA").is_none());
    }
}
