//! Hours of the week during which a role may reach its services, written like
//! `Mon-Fri 07:00-21:00`, `Mon,Wed 09:00-17:00` or `Sat-Sun 00:00-24:00`.
//!
//! A spec is a set of week days followed by one time window that applies on each of them. Days
//! are `Mon` to `Sun` (any letter case), separated by commas, with ranges such as `Mon-Fri`; a
//! range may wrap around the week (`Fri-Mon`). The window starts at its first minute and ends
//! before its last one; it may end at `24:00` but may not pass midnight, so a night shift is
//! written with the days of both halves and two roles, or a window that covers both.

use std::fmt;
use std::str::FromStr;

const DAY_NAMES: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
const MINUTES_PER_DAY: u16 = 24 * 60;

/// A set of week days and a time window on each of them, in the host's local time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Hours {
    /// Bit `n` set means week day `n`, with 0 for Monday. Never zero.
    days: u8,
    /// The first minute of the window, counted from midnight.
    start_minute: u16,
    /// The minute after the last one of the window; greater than `start_minute`, at most 1440.
    end_minute: u16,
}

/// Why an hours spec was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HoursError {
    /// The spec is not `DAYS HH:MM-HH:MM`.
    #[error("`{0}` is not of the form `Mon-Fri 07:00-21:00`")]
    Shape(String),
    /// A time of the week is not `DAY HH:MM`.
    #[error("`{0}` is not a time of the week such as `Tue 22:00`")]
    WeekShape(String),
    /// A day name is not one of `Mon` to `Sun`.
    #[error("`{0}` is not a day; the days are Mon, Tue, Wed, Thu, Fri, Sat and Sun")]
    Day(String),
    /// A time is not `HH:MM` between `00:00` and `24:00`.
    #[error("`{0}` is not a time between 00:00 and 24:00")]
    Time(String),
    /// The window is empty or passes midnight.
    #[error("`{0}` must end after it starts and not pass midnight (24:00 is the latest end)")]
    Window(String),
}

impl Hours {
    /// Parses a spec such as `Mon-Fri 07:00-21:00`.
    pub fn parse(text: &str) -> Result<Hours, HoursError> {
        let mut parts = text.split_whitespace();
        let (Some(days), Some(window), None) = (parts.next(), parts.next(), parts.next()) else {
            return Err(HoursError::Shape(text.to_owned()));
        };
        let days = parse_days(days)?;
        let Some((start, end)) = window.split_once('-') else {
            return Err(HoursError::Shape(text.to_owned()));
        };
        let start_minute = parse_time(start)?;
        let end_minute = parse_time(end)?;
        if start_minute >= end_minute {
            return Err(HoursError::Window(window.to_owned()));
        }
        Ok(Hours {
            days,
            start_minute,
            end_minute,
        })
    }

    /// Whether the window is open on `weekday` (0 for Monday to 6 for Sunday) at
    /// `minute_of_day` (0 to 1439). Out-of-range arguments are never inside.
    pub fn contains(&self, weekday: u8, minute_of_day: u16) -> bool {
        self.includes_day(weekday)
            && minute_of_day >= self.start_minute
            && minute_of_day < self.end_minute
    }

    /// Whether `weekday` (0 for Monday) is one of the days.
    pub fn includes_day(&self, weekday: u8) -> bool {
        weekday < 7 && self.days & (1 << weekday) != 0
    }

    /// The first minute of the window, counted from midnight.
    pub fn start_minute(&self) -> u16 {
        self.start_minute
    }

    /// The minute at which the window closes, counted from midnight; at most 1440.
    pub fn end_minute(&self) -> u16 {
        self.end_minute
    }
}

impl FromStr for Hours {
    type Err = HoursError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Hours::parse(text)
    }
}

/// Writes the canonical spelling, with runs of three or more days as ranges:
/// `Mon-Fri 07:00-21:00`, `Mon,Wed 09:00-17:00`.
impl fmt::Display for Hours {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut groups = Vec::new();
        let mut day = 0u8;
        while day < 7 {
            if !self.includes_day(day) {
                day += 1;
                continue;
            }
            let first = day;
            while day + 1 < 7 && self.includes_day(day + 1) {
                day += 1;
            }
            let (from, to) = (DAY_NAMES[usize::from(first)], DAY_NAMES[usize::from(day)]);
            match day - first {
                0 => groups.push(from.to_owned()),
                1 => groups.push(format!("{from},{to}")),
                _ => groups.push(format!("{from}-{to}")),
            }
            day += 1;
        }
        write!(
            f,
            "{} {:02}:{:02}-{:02}:{:02}",
            groups.join(","),
            self.start_minute / 60,
            self.start_minute % 60,
            self.end_minute / 60,
            self.end_minute % 60
        )
    }
}

/// A minute of the week in the host's local time, written `Tue 22:00`: when a policy test or
/// `crmguard explain --peer` asks whether a role's hours allow a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WeekTime {
    /// The day of the week, 0 for Monday to 6 for Sunday.
    pub weekday: u8,
    /// Minutes since local midnight, 0 to 1439.
    pub minute_of_day: u16,
}

impl WeekTime {
    /// Every minute of the week, from Monday 00:00.
    pub fn all() -> impl Iterator<Item = WeekTime> {
        (0..7u8).flat_map(|weekday| {
            (0..MINUTES_PER_DAY).map(move |minute_of_day| WeekTime {
                weekday,
                minute_of_day,
            })
        })
    }

    /// Parses `Tue 22:00` (any letter case for the day).
    pub fn parse(text: &str) -> Result<WeekTime, HoursError> {
        let shape = || HoursError::WeekShape(text.to_owned());
        let mut parts = text.split_whitespace();
        let (Some(day), Some(time), None) = (parts.next(), parts.next(), parts.next()) else {
            return Err(shape());
        };
        let weekday = parse_day(day)?;
        let minute_of_day = parse_time(time)?;
        if minute_of_day >= MINUTES_PER_DAY {
            return Err(HoursError::Time(time.to_owned()));
        }
        Ok(WeekTime {
            weekday,
            minute_of_day,
        })
    }
}

/// `Tue 22:00`.
impl fmt::Display for WeekTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let day = DAY_NAMES.get(usize::from(self.weekday)).unwrap_or(&"?");
        write!(
            f,
            "{day} {:02}:{:02}",
            self.minute_of_day / 60,
            self.minute_of_day % 60
        )
    }
}

fn parse_days(text: &str) -> Result<u8, HoursError> {
    let mut days = 0u8;
    for item in text.split(',') {
        match item.split_once('-') {
            Some((first, last)) => {
                let first = parse_day(first)?;
                let last = parse_day(last)?;
                let mut day = first;
                loop {
                    days |= 1 << day;
                    if day == last {
                        break;
                    }
                    day = (day + 1) % 7;
                }
            }
            None => days |= 1 << parse_day(item)?,
        }
    }
    Ok(days)
}

fn parse_day(text: &str) -> Result<u8, HoursError> {
    let index = DAY_NAMES
        .iter()
        .position(|name| name.eq_ignore_ascii_case(text))
        .ok_or_else(|| HoursError::Day(text.to_owned()))?;
    u8::try_from(index).map_err(|_| HoursError::Day(text.to_owned()))
}

fn parse_time(text: &str) -> Result<u16, HoursError> {
    let bad = || HoursError::Time(text.to_owned());
    let (hour, minute) = text.split_once(':').ok_or_else(bad)?;
    if hour.len() != 2 || minute.len() != 2 {
        return Err(bad());
    }
    if !hour
        .bytes()
        .chain(minute.bytes())
        .all(|b| b.is_ascii_digit())
    {
        return Err(bad());
    }
    let hour: u16 = hour.parse().map_err(|_| bad())?;
    let minute: u16 = minute.parse().map_err(|_| bad())?;
    let total = hour * 60 + minute;
    if minute >= 60 || total > MINUTES_PER_DAY {
        return Err(bad());
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::{Hours, HoursError};

    /// Checks the parse of `text` against `(days as Mon..Sun flags, start, end)` or an error.
    fn check(text: &str, expected: Result<(&str, u16, u16), HoursError>) {
        let actual = Hours::parse(text).map(|h| {
            let days: String = (0..7)
                .map(|d| if h.includes_day(d) { 'x' } else { '.' })
                .collect();
            (days, h.start_minute(), h.end_minute())
        });
        let expected = expected.map(|(days, start, end)| (days.to_owned(), start, end));
        assert_eq!(actual, expected, "{text:?}");
    }

    #[test]
    fn parses() {
        check("Mon-Fri 07:00-21:00", Ok(("xxxxx..", 420, 1260)));
        check("Mon,Wed 09:00-17:00", Ok(("x.x....", 540, 1020)));
        check("Sat-Sun 00:00-24:00", Ok((".....xx", 0, 1440)));
        check("Fri-Mon 08:30-12:15", Ok(("x...xxx", 510, 735)));
        check("mon-tue,THU 00:00-00:01", Ok(("xx.x...", 0, 1)));
        check("Sun 23:59-24:00", Ok(("......x", 1439, 1440)));
        check("  Mon   07:00-08:00  ", Ok(("x......", 420, 480)));
        check("Mon-Mon 07:00-08:00", Ok(("x......", 420, 480)));
    }

    #[test]
    fn rejects() {
        check("", Err(HoursError::Shape("".into())));
        check("Mon-Fri", Err(HoursError::Shape("Mon-Fri".into())));
        check(
            "Mon 07:00 21:00",
            Err(HoursError::Shape("Mon 07:00 21:00".into())),
        );
        check("Mon 0700", Err(HoursError::Shape("Mon 0700".into())));
        check("Mon-Fre 07:00-21:00", Err(HoursError::Day("Fre".into())));
        check("Monday 07:00-21:00", Err(HoursError::Day("Monday".into())));
        check("Mon, 07:00-21:00", Err(HoursError::Day("".into())));
        check("Mon 7:00-21:00", Err(HoursError::Time("7:00".into())));
        check("Mon 07:60-21:00", Err(HoursError::Time("07:60".into())));
        check("Mon 07:00-24:01", Err(HoursError::Time("24:01".into())));
        check("Mon 07:00-25:00", Err(HoursError::Time("25:00".into())));
        check("Mon +7:00-21:00", Err(HoursError::Time("+7:00".into())));
        check(
            "Mon 21:00-07:00",
            Err(HoursError::Window("21:00-07:00".into())),
        );
        check(
            "Mon 07:00-07:00",
            Err(HoursError::Window("07:00-07:00".into())),
        );
    }

    #[test]
    fn contains() {
        let hours = Hours::parse("Mon-Fri 07:00-21:00").unwrap_or_else(|e| panic!("{e}"));
        let cases = [
            (0, 420, true),
            (0, 419, false),
            (4, 1259, true),
            (4, 1260, false),
            (5, 600, false),
            (6, 600, false),
            (7, 600, false),
            (2, 2000, false),
        ];
        for (weekday, minute, expected) in cases {
            assert_eq!(
                hours.contains(weekday, minute),
                expected,
                "{weekday} {minute}"
            );
        }
    }

    #[test]
    fn displays_canonically() {
        for (text, expected) in [
            ("Mon-Fri 07:00-21:00", "Mon-Fri 07:00-21:00"),
            ("wed,mon 09:00-17:00", "Mon,Wed 09:00-17:00"),
            ("Fri-Mon 00:00-24:00", "Mon,Fri-Sun 00:00-24:00"),
            ("Mon,Tue 08:05-09:00", "Mon,Tue 08:05-09:00"),
        ] {
            let hours = Hours::parse(text).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(hours.to_string(), expected);
        }
    }
}
