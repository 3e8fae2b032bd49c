//! TOTP codes (RFC 6238: HMAC-SHA-1, 6 digits, 30 s) computed the way an authenticator app
//! does, independently of the agent's own implementation, from an `otpauth://` URI that
//! `crmguard mfa enroll` printed.

use anyhow::{bail, Context, Result};
use hmac::{Hmac, Mac};
use sha1::Sha1;

/// The base32 secret of an `otpauth://totp/...?secret=...&...` URI, decoded.
pub fn secret_of_uri(uri: &str) -> Result<Vec<u8>> {
    let query = uri
        .strip_prefix("otpauth://totp/")
        .and_then(|rest| rest.split_once('?'))
        .map(|(_, query)| query)
        .with_context(|| format!("not an otpauth TOTP URI: {uri}"))?;
    let secret = query
        .split('&')
        .find_map(|pair| pair.strip_prefix("secret="))
        .with_context(|| format!("no secret in {uri}"))?;
    base32(secret)
}

/// RFC 4648 base32 without padding, as authenticator apps read it.
fn base32(text: &str) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    let (mut buffer, mut bits) = (0u32, 0u32);
    for c in text.trim_end_matches('=').chars() {
        let value = match c {
            'A'..='Z' => u32::from(c) - u32::from('A'),
            '2'..='7' => u32::from(c) - u32::from('2') + 26,
            _ => bail!("`{c}` is not a base32 character"),
        };
        buffer = (buffer << 5) | value;
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push(u8::try_from((buffer >> bits) & 0xff)?);
        }
    }
    Ok(out)
}

/// The 6-digit code at Unix time `unix_seconds`.
pub fn code_at(secret: &[u8], unix_seconds: u64) -> Result<String> {
    let mut mac = Hmac::<Sha1>::new_from_slice(secret).context("HMAC key")?;
    mac.update(&(unix_seconds / 30).to_be_bytes());
    let digest = mac.finalize().into_bytes();
    let offset = usize::from(digest[19] & 0x0f);
    let value = u32::from_be_bytes([
        digest[offset] & 0x7f,
        digest[offset + 1],
        digest[offset + 2],
        digest[offset + 3],
    ]);
    Ok(format!("{:06}", value % 1_000_000))
}

/// The code now.
pub fn code_now(secret: &[u8]) -> Result<String> {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?;
    code_at(secret, now.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc6238_sha1_vectors() -> Result<()> {
        let secret = b"12345678901234567890";
        for (time, code) in [
            (59, "287082"),
            (1_111_111_109, "081804"),
            (1_234_567_890, "005924"),
            (2_000_000_000, "279037"),
        ] {
            assert_eq!(code_at(secret, time)?, code);
        }
        Ok(())
    }

    #[test]
    fn secret_from_uri() -> Result<()> {
        let uri = "otpauth://totp/ACME%20CRM:alice?secret=GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ&issuer=ACME%20CRM&algorithm=SHA1&digits=6&period=30";
        assert_eq!(secret_of_uri(uri)?, b"12345678901234567890");
        Ok(())
    }
}
