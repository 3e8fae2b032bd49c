//! X25519 (RFC 7748) with x25519-dalek 2.0's API, computed by AWS-LC.
//!
//! The workspace patches `x25519-dalek` with this crate, so boringtun's Noise handshakes, the
//! peers file's low-order key check and age's backup recipients all use it. Why: a WireGuard
//! responder does three variable-base X25519 and one fixed-base per handshake, and in
//! curve25519-dalek's portable arithmetic those are nine tenths of a handshake's CPU time.
//! AWS-LC computes the same function (s2n-bignum's verified assembly on x86-64 and aarch64)
//! in half the time, which is what the gateway's handshake rate is made of.
//!
//! Semantics are x25519-dalek's: secrets are kept as given and clamped by the scalar
//! multiplication, a shared secret with a low-order point is all zeros (and not an error;
//! [`SharedSecret::was_contributory`] tells), secrets are zeroed when dropped.

#![allow(unsafe_code)]

use rand_core::{CryptoRng, RngCore};
use zeroize::{Zeroize, ZeroizeOnDrop};

/// The u-coordinate of the base point, 9.
pub const X25519_BASEPOINT_BYTES: [u8; 32] = {
    let mut b = [0u8; 32];
    b[0] = 9;
    b
};

/// The function X25519 of RFC 7748: scalar `k` (clamped here) times the point `u`.
pub fn x25519(k: [u8; 32], u: [u8; 32]) -> [u8; 32] {
    let mut k = k;
    let out = scalar_mult(&k, &u);
    k.zeroize();
    out
}

fn scalar_mult(k: &[u8; 32], u: &[u8; 32]) -> [u8; 32] {
    let mut out = [0u8; 32];
    // SAFETY: the three pointers are to 32-byte arrays, which is what X25519 reads and writes;
    // none of them is kept. Its return value only says whether `out` is all zeros, which
    // `SharedSecret::was_contributory` tells instead.
    unsafe {
        aws_lc_sys::X25519(out.as_mut_ptr(), k.as_ptr(), u.as_ptr());
    }
    out
}

fn base_mult(k: &[u8; 32]) -> [u8; 32] {
    let mut out = [0u8; 32];
    // SAFETY: both pointers are to 32-byte arrays, what the function reads and writes.
    unsafe {
        aws_lc_sys::X25519_public_from_private(out.as_mut_ptr(), k.as_ptr());
    }
    out
}

fn random_bytes<T: RngCore + CryptoRng>(mut csprng: T) -> [u8; 32] {
    let mut bytes = [0u8; 32];
    csprng.fill_bytes(&mut bytes);
    bytes
}

/// A public key: a u-coordinate, as received (not reduced, not checked).
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[derive(PartialEq, Eq, Hash, Copy, Clone, Debug, Zeroize)]
pub struct PublicKey([u8; 32]);

impl From<[u8; 32]> for PublicKey {
    fn from(bytes: [u8; 32]) -> PublicKey {
        PublicKey(bytes)
    }
}

impl PublicKey {
    pub fn to_bytes(&self) -> [u8; 32] {
        self.0
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl AsRef<[u8]> for PublicKey {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

/// The result of a Diffie-Hellman exchange.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct SharedSecret([u8; 32]);

impl SharedSecret {
    pub fn to_bytes(&self) -> [u8; 32] {
        self.0
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// False when the peer's point was of low order, so that the secret is all zeros and
    /// does not depend on this side's key. Constant time in the secret's bytes.
    pub fn was_contributory(&self) -> bool {
        self.0.iter().fold(0u8, |acc, b| acc | b) != 0
    }
}

impl AsRef<[u8]> for SharedSecret {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

/// Defines a secret key type: made from random bytes, turned into its public key, used for
/// Diffie-Hellman. The three kinds differ only in which of these uses they allow.
macro_rules! secret {
    ($(#[$meta:meta])* $name:ident) => {
        $(#[$meta])*
        #[derive(Zeroize, ZeroizeOnDrop)]
        pub struct $name([u8; 32]);

        impl $name {
            pub fn random_from_rng<T: RngCore + CryptoRng>(csprng: T) -> Self {
                $name(random_bytes(csprng))
            }

            #[deprecated = "renamed to `random_from_rng`"]
            pub fn new<T: RngCore + CryptoRng>(csprng: T) -> Self {
                Self::random_from_rng(csprng)
            }

            #[cfg(feature = "getrandom")]
            pub fn random() -> Self {
                Self::random_from_rng(rand_core::OsRng)
            }
        }

        impl<'a> From<&'a $name> for PublicKey {
            fn from(secret: &'a $name) -> PublicKey {
                PublicKey(base_mult(&secret.0))
            }
        }
    };
}

secret! {
    /// A secret for one exchange: `diffie_hellman` consumes it.
    EphemeralSecret
}

impl EphemeralSecret {
    pub fn diffie_hellman(self, their_public: &PublicKey) -> SharedSecret {
        SharedSecret(scalar_mult(&self.0, &their_public.0))
    }
}

secret! {
    /// A secret for several exchanges that cannot be saved or restored.
    #[derive(Clone)]
    ReusableSecret
}

impl ReusableSecret {
    pub fn diffie_hellman(&self, their_public: &PublicKey) -> SharedSecret {
        SharedSecret(scalar_mult(&self.0, &their_public.0))
    }
}

secret! {
    /// A long-lived secret, which can be saved as its bytes and restored from them.
    #[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
    #[derive(Clone)]
    StaticSecret
}

impl StaticSecret {
    pub fn diffie_hellman(&self, their_public: &PublicKey) -> SharedSecret {
        SharedSecret(scalar_mult(&self.0, &their_public.0))
    }

    pub fn to_bytes(&self) -> [u8; 32] {
        self.0
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl From<[u8; 32]> for StaticSecret {
    fn from(bytes: [u8; 32]) -> StaticSecret {
        StaticSecret(bytes)
    }
}

impl AsRef<[u8]> for StaticSecret {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

#[cfg(test)]
mod tests;
