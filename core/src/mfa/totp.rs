//! RFC 6238 time-based one-time passwords as authenticator apps make them: HMAC-SHA-1,
//! six digits, a 30-second step counted from the Unix epoch.
//!
//! Pure: the caller passes the time. A code is accepted for the current step and one step
//! either side (clocks of phones drift), and only for a step later than the last one the
//! peer used, so that a code seen over a shoulder or in a proxy log cannot be replayed, not
//! even an older code still inside the skew window (RFC 6238 section 5.2).

use hmac::{Hmac, Mac};
use sha1::Sha1;

/// Digits in a code.
pub const DIGITS: u32 = 6;

/// Seconds in a step.
pub const PERIOD_SECS: u64 = 30;

/// Steps of clock skew accepted either way.
pub const SKEW_STEPS: u64 = 1;

/// Why a code was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TotpError {
    #[error("a code is {DIGITS} digits")]
    Malformed,
    #[error("the code is wrong")]
    Wrong,
    #[error("the code was already used")]
    Reused,
}

/// The step that `unix_seconds` falls in.
pub fn step_at(unix_seconds: u64) -> u64 {
    unix_seconds / PERIOD_SECS
}

/// The code for `secret` at `unix_seconds`.
pub fn code_at(secret: &[u8], unix_seconds: u64) -> u32 {
    code_for_step(secret, step_at(unix_seconds))
}

/// The RFC 4226 HOTP value of `secret` for counter `step`, truncated to [`DIGITS`] digits.
fn code_for_step(secret: &[u8], step: u64) -> u32 {
    // HMAC takes keys of any length (longer ones are hashed), so this cannot fail.
    #[allow(clippy::expect_used)]
    let mut mac = Hmac::<Sha1>::new_from_slice(secret).expect("HMAC accepts keys of any length");
    mac.update(&step.to_be_bytes());
    let digest: [u8; 20] = mac.finalize().into_bytes().into();
    // Dynamic truncation (RFC 4226 section 5.3): the low nibble of the last byte picks four
    // bytes, at most digest[15..19], so the indexing stays in bounds.
    let offset = usize::from(digest[19] & 0x0f);
    let value = u32::from_be_bytes([
        digest[offset] & 0x7f,
        digest[offset + 1],
        digest[offset + 2],
        digest[offset + 3],
    ]);
    value % 10u32.pow(DIGITS)
}

/// Checks `code` against `secret` at `now` (Unix seconds). `last_used_step` is the step of
/// the peer's last accepted code, if any; a code for that step or an earlier one is refused.
/// Returns the step the code belongs to, which the caller keeps as the new `last_used_step`.
pub fn verify(
    secret: &[u8],
    code: &str,
    now: u64,
    last_used_step: Option<u64>,
) -> Result<u64, TotpError> {
    let code = parse_code(code).ok_or(TotpError::Malformed)?;
    let current = step_at(now);
    let first = current.saturating_sub(SKEW_STEPS);
    let last = current.saturating_add(SKEW_STEPS);
    // Every candidate step is computed, so the time taken does not say which one matched.
    let matching: Vec<u64> = (first..=last)
        .filter(|&step| code_for_step(secret, step) == code)
        .collect();
    if matching.is_empty() {
        return Err(TotpError::Wrong);
    }
    matching
        .into_iter()
        .find(|&step| last_used_step.is_none_or(|used| step > used))
        .ok_or(TotpError::Reused)
}

/// The value of a code of exactly [`DIGITS`] ASCII digits.
fn parse_code(code: &str) -> Option<u32> {
    let digits = usize::try_from(DIGITS).ok()?;
    if code.len() != digits || !code.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    code.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The SHA-1 secret of RFC 6238 Appendix B.
    const RFC_SECRET: &[u8] = b"12345678901234567890";

    /// RFC 6238 Appendix B, SHA-1 column: the 8-digit values modulo 10^6.
    const RFC_VECTORS: &[(u64, u32)] = &[
        (59, 287_082),
        (1_111_111_109, 81_804),
        (1_111_111_111, 50_471),
        (1_234_567_890, 5_924),
        (2_000_000_000, 279_037),
        (20_000_000_000, 353_130),
    ];

    #[test]
    fn rfc6238_sha1_vectors() {
        for &(time, expected) in RFC_VECTORS {
            assert_eq!(code_at(RFC_SECRET, time), expected, "T = {time}");
        }
    }

    fn code_text(time: u64) -> String {
        format!("{:06}", code_at(RFC_SECRET, time))
    }

    #[test]
    fn accepts_the_current_step_and_returns_it() {
        let now = 1_234_567_890;
        assert_eq!(
            verify(RFC_SECRET, &code_text(now), now, None),
            Ok(step_at(now))
        );
        assert_eq!(
            verify(RFC_SECRET, "005924", now, None),
            Ok(step_at(now)),
            "leading zeros are part of the code"
        );
    }

    #[test]
    fn skew_of_one_step_either_way_is_accepted_two_is_not() {
        let now = 1_111_111_111;
        let period = PERIOD_SECS;
        let check = |code_time: u64, expected: Result<u64, TotpError>| {
            assert_eq!(
                verify(RFC_SECRET, &code_text(code_time), now, None),
                expected,
                "code of {code_time} at {now}"
            );
        };
        check(now - period, Ok(step_at(now) - 1));
        check(now + period, Ok(step_at(now) + 1));
        check(now - 2 * period, Err(TotpError::Wrong));
        check(now + 2 * period, Err(TotpError::Wrong));
    }

    #[test]
    fn a_code_is_usable_once() {
        let now = 2_000_000_000;
        let code = code_text(now);
        let step = verify(RFC_SECRET, &code, now, None);
        assert_eq!(step, Ok(step_at(now)));
        assert_eq!(
            verify(RFC_SECRET, &code, now + 1, Some(step_at(now))),
            Err(TotpError::Reused)
        );
        // An older code still inside the skew window is refused after a newer one was used.
        assert_eq!(
            verify(
                RFC_SECRET,
                &code_text(now - PERIOD_SECS),
                now,
                Some(step_at(now))
            ),
            Err(TotpError::Reused)
        );
        // The next step's code is fine.
        assert_eq!(
            verify(
                RFC_SECRET,
                &code_text(now + PERIOD_SECS),
                now + PERIOD_SECS,
                Some(step_at(now))
            ),
            Ok(step_at(now) + 1)
        );
    }

    #[test]
    fn malformed_codes_are_refused() {
        for code in [
            "",
            "12345",
            "1234567",
            "12345a",
            " 12345",
            "+12345",
            "１２３４５６",
        ] {
            assert_eq!(
                verify(RFC_SECRET, code, 59, None),
                Err(TotpError::Malformed),
                "{code:?}"
            );
        }
    }

    #[test]
    fn wrong_code_is_refused() {
        let now = 59;
        let wrong = (code_at(RFC_SECRET, now) + 1) % 1_000_000;
        assert_eq!(
            verify(RFC_SECRET, &format!("{wrong:06}"), now, None),
            Err(TotpError::Wrong)
        );
    }

    #[test]
    fn step_zero_has_no_earlier_neighbour() {
        assert_eq!(verify(RFC_SECRET, &code_text(0), 0, None), Ok(0));
    }
}
