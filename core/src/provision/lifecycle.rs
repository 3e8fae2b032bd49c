//! The time-dependent facts of peers: key expiry and which
//! peers the agent disables for inactivity. Pure: callers pass the time.
//!
//! A peer's `created` date counts from midnight UTC. Its key expires `vpn.key_max_age` later
//! ([`key_expires_at`], the endpoint's own function); from then on (strictly after that
//! instant) the endpoint refuses the peer until it is re-keyed with `crmguard peer add`.

use std::collections::HashMap;
use std::time::SystemTime;

use super::PeersFile;
use crate::config::Config;
pub use crate::peers::{key_expired, key_expires_at};

/// Signed whole seconds from `now` to `then`, rounded down, so that the result is negative
/// exactly when `then` is before `now`.
pub fn seconds_until(then: SystemTime, now: SystemTime) -> i64 {
    match then.duration_since(now) {
        Ok(ahead) => i64::try_from(ahead.as_secs()).unwrap_or(i64::MAX),
        Err(err) => {
            let behind = err.duration();
            let seconds = behind
                .as_secs()
                .saturating_add(u64::from(behind.subsec_nanos() > 0));
            i64::try_from(seconds).map_or(i64::MIN, |s| -s)
        }
    }
}

/// The enabled peers of the peers file that have been inactive for longer than
/// `vpn.disable_inactive_after` at `now`, in file order, for the agent to disable.
///
/// A peer's last activity is the later of its last handshake (`last_handshakes`, seconds since
/// the Unix epoch, by peer name) and midnight UTC of its `created` date, so that a peer that was
/// just added or re-keyed gets the full period to connect. A peer with neither is skipped.
///
/// Inline peers (those written in `crmguard.toml`) are never selected: they are the operator's
/// hand-written configuration, which crmguard does not edit. Only peers of `file` are
/// considered, whether or not `config` lists them too.
pub fn inactive_peers(
    config: &Config,
    file: &PeersFile,
    last_handshakes: &HashMap<String, u64>,
    now: SystemTime,
) -> Vec<String> {
    let Some(vpn) = &config.vpn else {
        return Vec::new();
    };
    file.peers()
        .iter()
        .filter(|peer| peer.enabled)
        .filter(|peer| {
            let handshake = last_handshakes
                .get(&peer.name)
                .and_then(|secs| crate::time::from_unix_seconds(*secs));
            let created = peer.created.map(|d| d.midnight_utc());
            let Some(last_active) = handshake.max(created) else {
                return false;
            };
            now.duration_since(last_active)
                .is_ok_and(|idle| idle > vpn.disable_inactive_after)
        })
        .map(|peer| peer.name.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;
    use std::path::Path;

    use std::time::{Duration, UNIX_EPOCH};

    use super::*;
    use crate::config::{Date, Peer};
    use crate::time::utc_date;

    const DAY: u64 = 24 * 60 * 60;

    fn date(text: &str) -> Date {
        Date::parse(text).expect("date")
    }

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    /// 2026-11-01 is day 20_758 of the Unix epoch.
    const NOV_1: u64 = 20_758 * DAY;

    #[test]
    fn dates_and_midnights() {
        assert_eq!(date("2026-11-01").days_since_unix_epoch(), 20_758);
        assert_eq!(date("2026-11-01").midnight_utc(), at(NOV_1));
        assert_eq!(date("1970-01-01").midnight_utc(), UNIX_EPOCH);
        for (secs, expected) in [
            (0, Some("1970-01-01")),
            (NOV_1, Some("2026-11-01")),
            (NOV_1 - 1, Some("2026-10-31")),
            (NOV_1 + DAY - 1, Some("2026-11-01")),
            (11_016 * DAY, Some("2000-02-29")),
            (11_017 * DAY, Some("2000-03-01")),
            (2_932_896 * DAY, Some("9999-12-31")),
            (2_932_897 * DAY, None),
        ] {
            let actual = utc_date(at(secs)).map(|d| d.to_string());
            assert_eq!(actual.as_deref(), expected, "{secs}");
        }
        assert_eq!(utc_date(UNIX_EPOCH - Duration::from_secs(1)), None);
        // Every date maps back to itself.
        for day in (0..2_932_897).step_by(997) {
            let d = utc_date(at(day * DAY)).expect("in range");
            assert_eq!(
                d.days_since_unix_epoch(),
                i64::try_from(day).expect("small")
            );
        }
    }

    #[test]
    fn key_expiry_agrees_with_the_endpoint() {
        let created = date("2026-11-01");
        let max_age = Duration::from_secs(90 * DAY);
        let expires = at(NOV_1 + 90 * DAY);
        assert_eq!(key_expires_at(created, max_age), expires);
        assert!(!key_expired(created, max_age, expires));
        assert!(key_expired(
            created,
            max_age,
            expires + Duration::from_millis(1)
        ));
        assert!(!key_expired(created, max_age, at(NOV_1 - DAY)));
        assert_eq!(seconds_until(expires, expires), 0);
        assert_eq!(
            seconds_until(expires, expires - Duration::from_millis(500)),
            0
        );
        assert_eq!(
            seconds_until(expires, expires + Duration::from_millis(1)),
            -1
        );
        assert_eq!(
            seconds_until(expires, expires + Duration::from_secs(60)),
            -60
        );
        assert_eq!(
            seconds_until(expires, at(NOV_1)),
            i64::try_from(90 * DAY).expect("small")
        );
        // The endpoint's table, built at the same instants, agrees.
        let text = "[vpn]\nkey_max_age = \"90d\"\n[[role]]\nname = \"staff\"\n\
                    [[peer]]\nname = \"p\"\npublic_key = \"AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=\"\n\
                    address = \"10.77.0.2\"\nrole = \"staff\"\ncreated = \"2026-11-01\"\n";
        let config = crate::config::parse(text, Path::new("t.toml")).expect("valid");
        for now in [expires, expires + Duration::from_millis(1)] {
            let (admitted, _) = crate::peers::admitted(&config, now);
            assert_eq!(admitted.is_empty(), key_expired(created, max_age, now));
        }
    }

    fn config_with(peers: &str) -> Config {
        let text = format!(
            "[vpn]\naddress = \"10.77.0.1/24\"\nkey_max_age = \"30d\"\n\
             disable_inactive_after = \"10d\"\n[[role]]\nname = \"staff\"\n{peers}"
        );
        crate::config::parse(&text, Path::new("t.toml")).expect("valid")
    }

    fn peer_toml(name: &str, key: u8, last: u8, created: Option<&str>) -> String {
        let created = created.map_or(String::new(), |c| format!("created = \"{c}\"\n"));
        format!(
            "[[peer]]\nname = \"{name}\"\npublic_key = \"{}\"\naddress = \"10.77.0.{last}\"\n\
             role = \"staff\"\n{created}",
            crate::keys::encode(&[key; 32])
        )
    }

    #[test]
    fn inactivity_selects_idle_enabled_file_peers() {
        // Inline peer `old-inline` has been idle for ages but is never selected.
        let config = config_with(&peer_toml("old-inline", 9, 9, Some("2020-01-01")));
        let file_peer = |name: &str, created: Option<&str>, enabled: bool| Peer {
            name: name.to_owned(),
            public_key: [name.len().try_into().expect("small"); 32],
            address: Ipv4Addr::new(10, 77, 0, 20),
            address6: None,
            role: "staff".to_owned(),
            created: created.map(date),
            enabled,
        };
        let file = PeersFile::from_peers(vec![
            file_peer("idle", Some("2026-10-01"), true),
            file_peer("recent-handshake", Some("2026-10-01"), true),
            file_peer("never-connected", Some("2026-10-01"), true),
            file_peer("new", Some("2026-10-25"), true),
            file_peer("rekeyed", Some("2026-10-30"), true),
            file_peer("disabled", Some("2026-10-01"), false),
            file_peer("undated", None, true),
            file_peer("exactly-ten-days", Some("2026-10-01"), true),
            file_peer("garbled-handshake", Some("2026-10-01"), true),
        ]);
        let now = at(NOV_1);
        let handshakes = HashMap::from([
            ("idle".to_owned(), NOV_1 - 11 * DAY),
            ("recent-handshake".to_owned(), NOV_1 - DAY),
            ("rekeyed".to_owned(), NOV_1 - 20 * DAY),
            ("exactly-ten-days".to_owned(), NOV_1 - 10 * DAY),
            ("old-inline".to_owned(), NOV_1 - 100 * DAY),
            // Past what a time holds (a damaged state file): as if it never connected.
            ("garbled-handshake".to_owned(), u64::MAX),
        ]);
        assert_eq!(
            inactive_peers(&config, &file, &handshakes, now),
            ["idle", "never-connected", "garbled-handshake"]
        );
        let no_vpn = crate::config::parse("", Path::new("t.toml")).expect("valid");
        assert!(inactive_peers(&no_vpn, &file, &handshakes, now).is_empty());
    }
}
