//! The TOTP second factor (CONTRACT.md section 2a): codes, the per-peer session and lockout
//! state, the peers' secrets on disk and the `otpauth://` URI that enrolls an authenticator.
//!
//! `totp`, `base32` and `sessions` are pure: they take the time as an argument and touch no
//! file or clock. `secrets` and `store` do the file IO under `state_dir/mfa`. Nothing here
//! logs or formats a secret except [`otpauth_uri`], whose output is meant for the operator's
//! terminal only. The portal where staff type their codes is the binary's (`crmguard::portal`).

pub mod base32;
pub mod secrets;
pub mod sessions;
pub mod store;
pub mod totp;

pub use secrets::Secret;

/// The `otpauth://` URI an authenticator app scans to enroll `peer`'s secret (CONTRACT.md
/// section 2a): `otpauth://totp/ISSUER:NAME?secret=BASE32&issuer=ISSUER&algorithm=SHA1&digits=6&period=30`.
///
/// The issuer and the name are percent-encoded where they hold anything but unreserved URI
/// characters (RFC 3986), so that an issuer such as `Acme CRM` stays one label.
pub fn otpauth_uri(issuer: &str, peer: &str, secret: &Secret) -> String {
    let issuer = percent_encode(issuer);
    format!(
        "otpauth://totp/{issuer}:{name}?secret={secret}&issuer={issuer}&algorithm=SHA1&digits={digits}&period={period}",
        name = percent_encode(peer),
        secret = base32::encode(secret.as_bytes()),
        digits = totp::DIGITS,
        period = totp::PERIOD_SECS,
    )
}

/// `text` with every byte outside RFC 3986's unreserved set written as `%XX`.
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn otpauth_uri_golden() {
        let secret = Secret::from_bytes(*b"12345678901234567890");
        assert_eq!(
            otpauth_uri("crmguard", "alice", &secret),
            "otpauth://totp/crmguard:alice?secret=GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ&issuer=crmguard&algorithm=SHA1&digits=6&period=30"
        );
    }

    #[test]
    fn otpauth_uri_percent_encodes_issuer_and_name() {
        let secret = Secret::from_bytes([0; 20]);
        assert_eq!(
            otpauth_uri("Acme CRM/EU", "bob.smith", &secret),
            "otpauth://totp/Acme%20CRM%2FEU:bob.smith?secret=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA&issuer=Acme%20CRM%2FEU&algorithm=SHA1&digits=6&period=30"
        );
    }
}
