//! Calendar and clock: the one place crmguard turns instants into dates and text and back.
//!
//! Everything here rests on `jiff`, so the calendar arithmetic (leap years, days since the
//! epoch, week days) and the time zone rules are a maintained library's, not ours. crmguard
//! writes three kinds of time:
//!
//! - [`format_time`]: RFC 3339 in UTC with microseconds, `2026-11-29T04:47:32.940789Z`, the
//!   `ts` of audit records, the times of `bans.json` and of `crmguard ban list`. Records
//!   already written are verified and parsed again, so this form never changes; the table
//!   test below pins it byte for byte. [`parse_time`] reads it back, and only it.
//! - [`format_unix_seconds`]: the same to the second, `2026-11-29T04:47:32Z`, for MFA
//!   sessions and the portal.
//! - [`Date`]: a calendar date, `2026-11-29`, the `created` of a peer, counted from midnight
//!   UTC.
//!
//! Role hours are the one thing read in the host's local time: [`week_minute`] takes the zone
//! as an argument, so tests pin one, and [`crate::acl::LocalTime::now`] passes the system's
//! (`TZ`, else `/etc/localtime`).

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jiff::fmt::temporal::DateTimePrinter;
use jiff::tz::TimeZone;
use jiff::{civil, SignedDuration, Timestamp};

/// Prints `YYYY-MM-DDTHH:MM:SS.ffffffZ`: always six digits of fraction, truncated.
const MICROS: DateTimePrinter = DateTimePrinter::new().precision(Some(6));

/// Prints `YYYY-MM-DDTHH:MM:SSZ`.
const SECONDS: DateTimePrinter = DateTimePrinter::new().precision(Some(0));

/// The wall clock in Unix seconds, the time TOTP codes and MFA sessions are counted in (0
/// before 1970).
pub fn unix_now() -> u64 {
    unix_seconds(SystemTime::now())
}

/// Whole seconds from the Unix epoch to `t`, rounded down; 0 before 1970.
pub fn unix_seconds(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs())
}

/// The time `unix` seconds after the Unix epoch, or `None` past what a `SystemTime` holds (a
/// number read from a file may be anything; adding it unchecked would panic).
pub fn from_unix_seconds(unix: u64) -> Option<SystemTime> {
    UNIX_EPOCH.checked_add(Duration::from_secs(unix))
}

/// Signed whole seconds from the Unix epoch to `t`, rounded towards the epoch, saturating at
/// the ends of `i64`.
pub fn unix_seconds_signed(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(since) => i64::try_from(since.as_secs()).unwrap_or(i64::MAX),
        Err(before) => i64::try_from(before.duration().as_secs()).map_or(i64::MIN, |s| -s),
    }
}

/// 1970-01-01T00:00:00, the Unix epoch as a UTC date and time.
const EPOCH: civil::DateTime = civil::DateTime::constant(1970, 1, 1, 0, 0, 0, 0);

/// The UTC date and time of `t`, or `None` before 1970 or after 9999.
///
/// This works on `jiff`'s civil date and time rather than its `Timestamp`, whose range stops
/// short of 9999-12-31 so that any offset can be applied to it; crmguard's texts are all UTC
/// and reach the last day of 9999.
fn utc_datetime(t: SystemTime) -> Option<civil::DateTime> {
    let since = SignedDuration::try_from(t.duration_since(UNIX_EPOCH).ok()?).ok()?;
    EPOCH.checked_add(since).ok()
}

/// [`utc_datetime`] clamped to 1970-01-01T00:00:00..=9999-12-31T23:59:59.999999999, the range
/// every text form here can show.
fn clamped(t: SystemTime) -> civil::DateTime {
    utc_datetime(t).unwrap_or(if t < UNIX_EPOCH {
        EPOCH
    } else {
        civil::DateTime::MAX
    })
}

/// Formats a time as RFC 3339 in UTC with microseconds, `2025-03-01T12:00:00.000000Z`, the
/// form of the audit log's `ts`. Nanoseconds below a microsecond are dropped, not rounded.
/// Times before 1970 are shown as `1970-01-01T00:00:00.000000Z` and times after 9999 as
/// `9999-12-31T23:59:59.999999Z`.
pub fn format_time(t: SystemTime) -> String {
    let mut text = MICROS.datetime_to_string(&clamped(t));
    text.push('Z');
    text
}

/// Formats Unix seconds as RFC 3339 in UTC to the second, `2025-03-01T12:00:00Z`. Times after
/// 9999 (say, `u64::MAX` for "never") are shown as `9999-12-31T23:59:59Z`.
pub fn format_unix_seconds(unix: u64) -> String {
    let time = from_unix_seconds(unix);
    let mut text = SECONDS.datetime_to_string(&time.map_or(civil::DateTime::MAX, clamped));
    text.push('Z');
    text
}

/// Parses what [`format_time`] writes: `YYYY-MM-DDTHH:MM:SS`, an optional fraction of one to
/// nine digits, and `Z`, from 1970 to 9999.
///
/// Only that exact form is accepted: `jiff` parses the text, and the result must print back
/// to the same bytes at the same precision. So other offsets, lower case, a space for `T`, a
/// comma for the dot, a leap second or a year of more than four digits are all refused;
/// crmguard writes UTC only, and a text it did not write is not trusted to mean what it says.
pub fn parse_time(text: &str) -> Option<SystemTime> {
    let local = text.strip_suffix('Z')?;
    // `YYYY-MM-DDTHH:MM:SS` is 19 bytes; a fraction adds a dot and its digits.
    let digits = match local.len() {
        19 => 0,
        21..=29 => u8::try_from(local.len() - 20).ok()?,
        _ => return None,
    };
    let datetime: civil::DateTime = local.parse().ok()?;
    let canonical = DateTimePrinter::new()
        .precision(Some(digits))
        .datetime_to_string(&datetime);
    if canonical != local {
        return None;
    }
    let since = Duration::try_from(datetime.duration_since(EPOCH)).ok()?;
    UNIX_EPOCH.checked_add(since)
}

/// The moment of the week of `unix_seconds` in `zone`: the week day (0 for Monday to 6 for
/// Sunday) and the minute since local midnight (0 to 1439); `None` when `jiff` cannot show
/// the time (beyond year 9999 or before -9999).
pub fn week_minute(unix_seconds: i64, zone: &TimeZone) -> Option<(u8, u16)> {
    let local = zone.to_datetime(Timestamp::from_second(unix_seconds).ok()?);
    let weekday = u8::try_from(local.weekday().to_monday_zero_offset()).ok()?;
    let minute = u16::try_from(i32::from(local.hour()) * 60 + i32::from(local.minute())).ok()?;
    Some((weekday, minute))
}

/// The UTC calendar date at `time`, such as the `today` of a new peer; `None` before 1970 or
/// after 9999.
pub fn utc_date(time: SystemTime) -> Option<Date> {
    let date = utc_datetime(time)?.date();
    Date::new(
        u16::try_from(date.year()).ok()?,
        u8::try_from(date.month()).ok()?,
        u8::try_from(date.day()).ok()?,
    )
}

/// A calendar date, as used for `created` of a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Date {
    /// The year, 1970 to 9999.
    pub year: u16,
    /// The month, 1 to 12.
    pub month: u8,
    /// The day of the month, 1 to 28, 29, 30 or 31 as the month has.
    pub day: u8,
}

impl Date {
    /// Builds a date, or `None` when the day does not exist or the year is before 1970.
    pub fn new(year: u16, month: u8, day: u8) -> Option<Date> {
        if !(1970..=9999).contains(&year) {
            return None;
        }
        civil::Date::new(
            i16::try_from(year).ok()?,
            i8::try_from(month).ok()?,
            i8::try_from(day).ok()?,
        )
        .ok()?;
        Some(Date { year, month, day })
    }

    /// Parses `YYYY-MM-DD`, exactly: `jiff` reads the date, and it must print back to the same
    /// text, so a time, a missing zero or a signed or six-digit year is refused.
    pub fn parse(text: &str) -> Option<Date> {
        let date: civil::Date = text.parse().ok()?;
        if date.to_string() != text {
            return None;
        }
        Date::new(
            u16::try_from(date.year()).ok()?,
            u8::try_from(date.month()).ok()?,
            u8::try_from(date.day()).ok()?,
        )
    }

    /// The same date in `jiff`. A `Date` is always a valid date from 1970 to 9999, which
    /// `jiff` can hold; the fallback to the epoch is never taken.
    fn civil(&self) -> civil::Date {
        let year = i16::try_from(self.year).unwrap_or(1970);
        let month = i8::try_from(self.month).unwrap_or(1);
        let day = i8::try_from(self.day).unwrap_or(1);
        civil::Date::new(year, month, day).unwrap_or(civil::Date::constant(1970, 1, 1))
    }

    /// Days from 1970-01-01 to this date.
    pub fn days_since_unix_epoch(&self) -> i64 {
        let since = self
            .civil()
            .duration_since(civil::Date::constant(1970, 1, 1));
        since.as_secs().div_euclid(86_400)
    }

    /// Midnight UTC at the start of this date.
    pub fn midnight_utc(&self) -> SystemTime {
        // A `Date` is never before 1970, so the day count is never negative; a `Date` is never
        // after 9999, so the sum fits a `SystemTime`.
        let days = u64::try_from(self.days_since_unix_epoch()).unwrap_or(0);
        UNIX_EPOCH + Duration::from_secs(days.saturating_mul(86_400))
    }
}

impl fmt::Display for Date {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04}-{:02}-{:02}", self.year, self.month, self.day)
    }
}

#[cfg(test)]
mod tests;
