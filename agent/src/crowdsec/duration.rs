//! Go duration strings, as CrowdSec writes a decision's remaining time: `3h59m58.123456789s`,
//! `-17.372513ms` (an expired decision, in the `deleted` list), `0`.
//!
//! The grammar and limits are those of Go's `time.ParseDuration`: an optional sign, then one or
//! more decimal numbers (with an optional fraction) each followed by a unit among `ns`, `us`,
//! `µs`, `μs`, `ms`, `s`, `m`, `h`; a bare `0` is allowed; the total must fit in an `i64` of
//! nanoseconds. Fractions are exact to the nanosecond (extra digits are truncated, as Go does).

/// Nanoseconds per unit.
fn unit(name: &str) -> Option<u128> {
    Some(match name {
        "ns" => 1,
        "us" | "\u{b5}s" | "\u{3bc}s" => 1_000,
        "ms" => 1_000_000,
        "s" => 1_000_000_000,
        "m" => 60_000_000_000,
        "h" => 3_600_000_000_000,
        _ => return None,
    })
}

/// Parses `text` into signed nanoseconds.
pub fn parse(text: &str) -> Result<i64, String> {
    let bad = || format!("invalid duration {text:?}");
    let (negative, mut rest) = match text.as_bytes().first() {
        Some(b'-') => (true, &text[1..]),
        Some(b'+') => (false, &text[1..]),
        _ => (false, text),
    };
    if rest == "0" {
        return Ok(0);
    }
    if rest.is_empty() {
        return Err(bad());
    }
    let mut total: u128 = 0;
    while !rest.is_empty() {
        let int_len = rest.bytes().take_while(u8::is_ascii_digit).count();
        let (int_digits, after) = rest.split_at(int_len);
        let (frac_digits, after) = match after.strip_prefix('.') {
            Some(frac) => {
                let frac_len = frac.bytes().take_while(u8::is_ascii_digit).count();
                frac.split_at(frac_len)
            }
            None => ("", after),
        };
        if int_digits.is_empty() && frac_digits.is_empty() {
            return Err(bad());
        }
        let unit_len = after
            .char_indices()
            .find(|&(_, c)| c == '.' || c.is_ascii_digit())
            .map_or(after.len(), |(i, _)| i);
        let (unit_name, after) = after.split_at(unit_len);
        let scale = unit(unit_name).ok_or_else(|| {
            if unit_name.is_empty() {
                format!("missing unit in duration {text:?}")
            } else {
                format!("unknown unit {unit_name:?} in duration {text:?}")
            }
        })?;
        let whole: u128 = if int_digits.is_empty() {
            0
        } else {
            int_digits.parse().map_err(|_| bad())?
        };
        let mut value = whole.checked_mul(scale).ok_or_else(bad)?;
        // The fraction, exact: digits * scale / 10^digits, truncated; digits past what can
        // matter (a scale is below 10^13) are dropped first.
        let frac_digits = &frac_digits[..frac_digits.len().min(18)];
        if !frac_digits.is_empty() {
            let digits: u128 = frac_digits.parse().map_err(|_| bad())?;
            let pow = 10_u128.pow(u32::try_from(frac_digits.len()).map_err(|_| bad())?);
            value = value.checked_add(digits * scale / pow).ok_or_else(bad)?;
        }
        total = total.checked_add(value).ok_or_else(bad)?;
        if total > 1_u128 << 63 {
            return Err(bad());
        }
        rest = after;
    }
    if negative {
        // -(1 << 63) is the one value whose magnitude does not fit positive.
        let magnitude = i128::try_from(total).map_err(|_| bad())?;
        i64::try_from(-magnitude).map_err(|_| bad())
    } else {
        i64::try_from(total).map_err(|_| bad())
    }
}

/// `std::time::Duration` as a Go duration CrowdSec accepts: whole seconds, at least `1s`.
pub fn format_seconds(duration: std::time::Duration) -> String {
    format!("{}s", duration.as_secs().max(1))
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn go_durations() {
        let cases: &[(&str, i64)] = &[
            ("0", 0),
            ("-0", 0),
            ("5s", 5_000_000_000),
            ("30s", 30_000_000_000),
            ("1478s", 1_478_000_000_000),
            ("-5s", -5_000_000_000),
            ("+5s", 5_000_000_000),
            ("1.5h", 5_400_000_000_000),
            (".5s", 500_000_000),
            ("1.s", 1_000_000_000),
            ("1.004s", 1_004_000_000),
            ("100.00100s", 100_001_000_000),
            ("1h1m1s", 3_661_000_000_000),
            ("3h59m58.123s", 14_398_123_000_000),
            ("29m59.146950511s", 1_799_146_950_511),
            ("59m59.146948418s", 3_599_146_948_418),
            ("-17.372513ms", -17_372_513),
            ("-7.119944804s", -7_119_944_804),
            ("1µs", 1_000),
            ("1μs", 1_000),
            ("1us", 1_000),
            ("10ns", 10),
            ("0.123456789123s", 123_456_789),
            ("2562047h47m16.854775807s", i64::MAX),
            ("-2562047h47m16.854775808s", i64::MIN),
        ];
        for &(text, want) in cases {
            assert_eq!(parse(text), Ok(want), "{text}");
        }
        for bad in [
            "",
            "3",
            "-",
            "s",
            ".s",
            "1d",
            "3h59",
            "1.2.3s",
            "1 s",
            "2562047h47m16.854775808s",
            "9999999999999999999999h",
            "--1s",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} parsed");
        }
    }
}
