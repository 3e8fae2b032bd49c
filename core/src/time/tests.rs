use super::*;

fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

/// 2023-11-14T22:13:20Z.
const NOW: u64 = 1_700_000_000;

/// The form of audit records, `bans.json` and `crmguard ban list`, byte for byte: logs already
/// written must still verify and parse, so none of these may ever change.
#[test]
fn format_time_is_pinned() {
    let cases = [
        (UNIX_EPOCH, "1970-01-01T00:00:00.000000Z"),
        (at(951_782_400), "2000-02-29T00:00:00.000000Z"),
        (at(NOW), "2023-11-14T22:13:20.000000Z"),
        (
            at(1_795_927_652) + Duration::from_nanos(940_789_000),
            "2026-11-29T04:47:32.940789Z",
        ),
        // Below a microsecond is dropped, not rounded.
        (
            at(1_795_927_652) + Duration::from_nanos(940_789_999),
            "2026-11-29T04:47:32.940789Z",
        ),
        (
            at(4_102_444_799) + Duration::from_micros(999_999),
            "2099-12-31T23:59:59.999999Z",
        ),
        (at(253_402_300_799), "9999-12-31T23:59:59.000000Z"),
        // Outside what four digits of year can show: clamped, never a panic.
        (
            UNIX_EPOCH - Duration::from_secs(1),
            "1970-01-01T00:00:00.000000Z",
        ),
        (at(253_402_300_800), "9999-12-31T23:59:59.999999Z"),
        (at(u64::MAX / 2), "9999-12-31T23:59:59.999999Z"),
    ];
    for (t, text) in cases {
        assert_eq!(format_time(t), text, "{t:?}");
    }
}

#[test]
fn format_unix_seconds_is_pinned() {
    let cases = [
        (0, "1970-01-01T00:00:00Z"),
        (NOW, "2023-11-14T22:13:20Z"),
        (1_795_927_652, "2026-11-29T04:47:32Z"),
        (253_402_300_799, "9999-12-31T23:59:59Z"),
        (253_402_300_800, "9999-12-31T23:59:59Z"),
        (u64::MAX, "9999-12-31T23:59:59Z"),
    ];
    for (unix, text) in cases {
        assert_eq!(format_unix_seconds(unix), text, "{unix}");
    }
}

#[test]
fn parse_time_reads_what_format_time_writes() {
    for t in [
        UNIX_EPOCH,
        at(951_782_400),
        at(NOW),
        at(1_795_927_652) + Duration::from_micros(940_789),
        at(4_102_444_799) + Duration::from_micros(999_999),
        at(253_402_300_799) + Duration::from_micros(1),
    ] {
        assert_eq!(parse_time(&format_time(t)), Some(t), "{t:?}");
    }
}

#[test]
fn parse_time_accepts_only_the_written_form() {
    let cases = [
        ("2023-11-14T22:13:20Z", Some(at(NOW))),
        (
            "2023-11-14T22:13:20.5Z",
            Some(at(NOW) + Duration::from_millis(500)),
        ),
        ("2023-11-14T22:13:20.000000Z", Some(at(NOW))),
        (
            "2023-11-14T22:13:20.123456789Z",
            Some(at(NOW) + Duration::from_nanos(123_456_789)),
        ),
        ("1970-01-01T00:00:00Z", Some(UNIX_EPOCH)),
        ("", None),
        ("2023-11-14 22:13:20Z", None),
        ("2023-11-14t22:13:20Z", None),
        ("2023-11-14T22:13:20z", None),
        ("2023-11-14T22:13:20", None),
        ("2023-11-14T22:13:20+01:00", None),
        ("2023-11-14T22:13:20+00:00", None),
        ("2023-11-14T22:13:20-00:00", None),
        ("2023-11-14T22:13:20,5Z", None),
        ("2023-11-14T22:13Z", None),
        ("20231114T221320Z", None),
        ("2023-02-29T00:00:00Z", None),
        ("2023-13-01T00:00:00Z", None),
        ("2023-11-14T24:00:00Z", None),
        ("2016-12-31T23:59:60Z", None),
        ("1969-12-31T23:59:59Z", None),
        ("2023-11-14T22:13:20.Z", None),
        ("2023-11-14T22:13:20.1234567890Z", None),
        ("+023-11-14T22:13:20Z", None),
        ("+002023-11-14T22:13:20Z", None),
        ("2023-11-14T22:13:20Z[UTC]", None),
    ];
    for (text, expected) in cases {
        assert_eq!(parse_time(text), expected, "{text}");
    }
}

#[test]
fn unix_seconds_round_down_and_saturate() {
    let cases = [
        (UNIX_EPOCH, 0, 0),
        (at(NOW) + Duration::from_millis(999), NOW, 1_700_000_000),
        (UNIX_EPOCH - Duration::from_millis(1500), 0, -1),
    ];
    for (t, unsigned, signed) in cases {
        assert_eq!(unix_seconds(t), unsigned, "{t:?}");
        assert_eq!(unix_seconds_signed(t), signed, "{t:?}");
    }
}

/// Role hours are in the host's local time; these pin zones so that the test does not depend
/// on the machine's.
#[test]
fn week_minute_in_a_given_zone() {
    let berlin = TimeZone::get("Europe/Berlin").unwrap_or_else(|e| panic!("{e}"));
    let new_york = TimeZone::posix("EST5EDT,M3.2.0,M11.1.0").unwrap_or_else(|e| panic!("{e}"));
    let cases = [
        // 1970-01-01 was a Thursday.
        (&TimeZone::UTC, 0, Some((3, 0))),
        // 2023-11-14T22:13:20Z is a Tuesday; 23:13 in Berlin, 17:13 in New York.
        (&TimeZone::UTC, 1_700_000_000, Some((1, 22 * 60 + 13))),
        (&berlin, 1_700_000_000, Some((1, 23 * 60 + 13))),
        (&new_york, 1_700_000_000, Some((1, 17 * 60 + 13))),
        // 2026-11-29T04:47:32Z is a Sunday in UTC and Berlin, still Saturday in New York.
        (&TimeZone::UTC, 1_795_927_652, Some((6, 4 * 60 + 47))),
        (&berlin, 1_795_927_652, Some((6, 5 * 60 + 47))),
        (&new_york, 1_795_927_652, Some((5, 23 * 60 + 47))),
        // Berlin's summer time starts 2026-03-29 at 01:00Z: local 01:59 is followed by 03:00.
        (&berlin, 1_774_745_999, Some((6, 60 + 59))),
        (&berlin, 1_774_746_000, Some((6, 3 * 60))),
        // Before 1970 is fine (the clock may be wrong); beyond `jiff`'s range is not.
        (&TimeZone::UTC, -1, Some((2, 1439))),
        (&TimeZone::UTC, i64::MAX, None),
        (&TimeZone::UTC, i64::MIN, None),
    ];
    for (zone, unix, expected) in cases {
        assert_eq!(week_minute(unix, zone), expected, "{unix} in {zone:?}");
    }
}

#[test]
fn dates() {
    let cases = [
        ((1970, 1, 1), Some(0)),
        ((2000, 2, 29), Some(11_016)),
        ((2026, 11, 1), Some(20_758)),
        ((9999, 12, 31), Some(2_932_896)),
        ((2100, 2, 29), None),
        ((2026, 4, 31), None),
        ((2026, 0, 1), None),
        ((2026, 1, 0), None),
        ((1969, 12, 31), None),
        ((10_000, 1, 1), None),
    ];
    for ((year, month, day), expected) in cases {
        let date = Date::new(year, month, day);
        assert_eq!(
            date.map(|d| d.days_since_unix_epoch()),
            expected,
            "{year}-{month}-{day}"
        );
        if let Some(date) = date {
            assert_eq!(Date::parse(&date.to_string()), Some(date));
            assert_eq!(utc_date(date.midnight_utc()), Some(date));
        }
    }
}

/// A number of seconds read from a state file may be anything: past what a `SystemTime` holds
/// it is no time at all, never a panic.
#[test]
fn unix_seconds_past_the_range_are_no_time() {
    assert_eq!(from_unix_seconds(0), Some(UNIX_EPOCH));
    assert_eq!(from_unix_seconds(NOW), Some(at(NOW)));
    assert_eq!(from_unix_seconds(u64::MAX), None);
    assert_eq!(format_unix_seconds(u64::MAX), "9999-12-31T23:59:59Z");
}
