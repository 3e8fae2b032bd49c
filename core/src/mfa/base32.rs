//! RFC 4648 base32 (the standard alphabet, no padding), the form authenticator apps expect
//! TOTP secrets in. The coding is `data-encoding`'s; this module only fixes the variant and
//! the one leniency crmguard allows.

use data_encoding::{DecodeError, BASE32_NOPAD};

/// `bytes` in base32 without padding, upper case.
pub fn encode(bytes: &[u8]) -> String {
    BASE32_NOPAD.encode(bytes)
}

/// The bytes of unpadded base32 `text`. Lower case is accepted, as some apps and people
/// write it; padding, spaces and leftover bits that are not zero are not.
pub fn decode(text: &str) -> Result<Vec<u8>, DecodeError> {
    BASE32_NOPAD.decode(text.to_ascii_uppercase().as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 4648 section 10, with the padding removed.
    const VECTORS: &[(&str, &str)] = &[
        ("", ""),
        ("f", "MY"),
        ("fo", "MZXQ"),
        ("foo", "MZXW6"),
        ("foob", "MZXW6YQ"),
        ("fooba", "MZXW6YTB"),
        ("foobar", "MZXW6YTBOI"),
    ];

    #[test]
    fn rfc4648_vectors() {
        for (plain, encoded) in VECTORS {
            assert_eq!(encode(plain.as_bytes()), *encoded, "encode {plain:?}");
            assert_eq!(
                decode(encoded).as_deref(),
                Ok(plain.as_bytes()),
                "decode {encoded:?}"
            );
        }
    }

    #[test]
    fn decode_accepts_lower_case() {
        assert_eq!(decode("mzxw6ytboi").as_deref(), Ok(&b"foobar"[..]));
    }

    #[test]
    fn decode_refuses_bad_text() {
        for bad in [
            "MZXW6YQ=",
            "MZXW6YQ\n",
            "MZ XW",
            "MZ1",
            "M",
            "MZXW6Y",
            // "MZ" is "f"; "MZ" with a set leftover bit is not the encoding of anything.
            "M3",
        ] {
            assert!(decode(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn round_trip_all_lengths() {
        let bytes: Vec<u8> = (0..=40u8).map(|i| i.wrapping_mul(37)).collect();
        for len in 0..bytes.len() {
            let encoded = encode(&bytes[..len]);
            assert_eq!(decode(&encoded).as_deref(), Ok(&bytes[..len]));
        }
    }
}
