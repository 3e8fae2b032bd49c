//! RFC 4648 base32 (the standard alphabet, no padding), the form authenticator apps expect
//! TOTP secrets in.

/// The RFC 4648 section 6 alphabet.
const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";

/// Why a text is not base32.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Base32Error {
    #[error("`{0}` is not a base32 character")]
    Character(char),
    #[error("{0} characters cannot be the unpadded base32 of whole bytes")]
    Length(usize),
}

/// `bytes` in base32 without padding.
pub fn encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(5) * 8);
    let mut buffer: u32 = 0;
    let mut bits = 0;
    for &byte in bytes {
        buffer = (buffer << 8) | u32::from(byte);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(symbol(buffer >> bits));
        }
    }
    if bits > 0 {
        out.push(symbol(buffer << (5 - bits)));
    }
    out
}

/// The bytes of unpadded base32 `text`. Lower case is accepted, as some apps and people
/// write it; padding, spaces and leftover bits that are not zero are not.
pub fn decode(text: &str) -> Result<Vec<u8>, Base32Error> {
    // Valid unpadded lengths leave 0, 2, 4, 5 or 7 characters in the last group of 8.
    if matches!(text.len() % 8, 1 | 3 | 6) {
        return Err(Base32Error::Length(text.len()));
    }
    let mut out = Vec::with_capacity(text.len() * 5 / 8);
    let mut buffer: u32 = 0;
    let mut bits = 0;
    for c in text.chars() {
        let value = value(c).ok_or(Base32Error::Character(c))?;
        buffer = (buffer << 5) | u32::from(value);
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push(low_byte(buffer >> bits));
        }
    }
    if buffer & ((1 << bits) - 1) != 0 {
        return Err(Base32Error::Length(text.len()));
    }
    Ok(out)
}

/// The symbol of the low five bits of `value`.
fn symbol(value: u32) -> char {
    let index = usize::from(low_byte(value) & 0x1f);
    char::from(ALPHABET[index])
}

fn low_byte(value: u32) -> u8 {
    value.to_le_bytes()[0]
}

/// The value of base32 symbol `c`, either case.
fn value(c: char) -> Option<u8> {
    let byte = u8::try_from(c.to_ascii_uppercase()).ok()?;
    let index = ALPHABET.iter().position(|&symbol| symbol == byte)?;
    u8::try_from(index).ok()
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
        assert_eq!(decode("MZXW6YQ="), Err(Base32Error::Character('=')));
        assert_eq!(decode("MZ1"), Err(Base32Error::Length(3)));
        assert_eq!(decode("M"), Err(Base32Error::Length(1)));
        // "MZ" is "f"; "MZ" with a set leftover bit is not the encoding of anything.
        assert_eq!(decode("M3"), Err(Base32Error::Length(2)));
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
