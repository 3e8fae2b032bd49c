//! Durations as written in the configuration and on the command line: a whole number followed
//! by one unit, such as `30s`, `30m`, `12h`, `7d` or `2w`.
//!
//! One number and one unit keep the values easy to read in the file and in `crmguard status`;
//! combinations such as `1h30m` are not accepted. A zero duration is rejected because no
//! setting of crmguard has a sensible meaning for it.

use std::time::Duration;

/// Why a duration was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    /// The text is empty.
    #[error("empty duration; write for example `30s`, `30m`, `12h`, `7d` or `2w`")]
    Empty,
    /// The text has no number in front of the unit.
    #[error("`{0}` does not start with a whole number; write for example `30m`")]
    NotANumber(String),
    /// The number has no unit after it.
    #[error("`{0}` has no unit; write for example `{0}s`, `{0}m`, `{0}h`, `{0}d` or `{0}w`")]
    MissingUnit(String),
    /// The unit is not one of `s`, `m`, `h`, `d`, `w`.
    #[error("`{0}` has an unknown unit; the units are `s`, `m`, `h`, `d` and `w`")]
    UnknownUnit(String),
    /// The duration is zero.
    #[error("`{0}` is zero; a duration must be positive")]
    Zero(String),
    /// The duration does not fit the clock arithmetic of the agent.
    #[error("`{0}` is too long")]
    TooLong(String),
}

/// The longest accepted duration, about 100 years, so that adding it to a clock never
/// overflows.
const MAX_SECONDS: u64 = 100 * 366 * 24 * 60 * 60;

/// Parses a duration such as `30s`, `30m`, `12h`, `7d` or `2w`.
pub fn parse_duration(text: &str) -> Result<Duration, DurationError> {
    if text.is_empty() {
        return Err(DurationError::Empty);
    }
    let digits_end = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(digits_end);
    if number.is_empty() {
        return Err(DurationError::NotANumber(text.to_owned()));
    }
    let seconds_per_unit: u64 = match unit {
        "" => return Err(DurationError::MissingUnit(text.to_owned())),
        "s" => 1,
        "m" => 60,
        "h" => 60 * 60,
        "d" => 24 * 60 * 60,
        "w" => 7 * 24 * 60 * 60,
        _ => return Err(DurationError::UnknownUnit(text.to_owned())),
    };
    let count: u64 = number
        .parse()
        .map_err(|_| DurationError::TooLong(text.to_owned()))?;
    let seconds = count
        .checked_mul(seconds_per_unit)
        .filter(|s| *s <= MAX_SECONDS)
        .ok_or_else(|| DurationError::TooLong(text.to_owned()))?;
    if seconds == 0 {
        return Err(DurationError::Zero(text.to_owned()));
    }
    Ok(Duration::from_secs(seconds))
}

#[cfg(test)]
mod tests {
    use super::{parse_duration, DurationError};
    use std::time::Duration;

    fn check(text: &str, expected: Result<u64, DurationError>) {
        assert_eq!(
            parse_duration(text),
            expected.map(Duration::from_secs),
            "{text:?}"
        );
    }

    #[test]
    fn durations() {
        check("30s", Ok(30));
        check("30m", Ok(1800));
        check("12h", Ok(43_200));
        check("7d", Ok(604_800));
        check("2w", Ok(1_209_600));
        check("90d", Ok(7_776_000));
        check("007m", Ok(420));
        check("", Err(DurationError::Empty));
        check("10", Err(DurationError::MissingUnit("10".into())));
        check("5x", Err(DurationError::UnknownUnit("5x".into())));
        check("5 m", Err(DurationError::UnknownUnit("5 m".into())));
        check("1h30m", Err(DurationError::UnknownUnit("1h30m".into())));
        check("5M", Err(DurationError::UnknownUnit("5M".into())));
        check("m", Err(DurationError::NotANumber("m".into())));
        check("-5m", Err(DurationError::NotANumber("-5m".into())));
        check(" 5m", Err(DurationError::NotANumber(" 5m".into())));
        check("0s", Err(DurationError::Zero("0s".into())));
        check("0w", Err(DurationError::Zero("0w".into())));
        check(
            "99999999999999999999s",
            Err(DurationError::TooLong("99999999999999999999s".into())),
        );
        check("10000w", Err(DurationError::TooLong("10000w".into())));
    }

    #[test]
    fn messages() {
        assert_eq!(
            parse_duration("10").map_err(|e| e.to_string()),
            Err("`10` has no unit; write for example `10s`, `10m`, `10h`, `10d` or `10w`".into())
        );
    }
}
