//! `port_scan`, the memory bounds, `volume`, `new_endpoint` and `off_hours`.

mod common;

use common::*;
use crmguard_detect::{Action, Detector, Input, Observation, MAX_KEYS, MAX_WEIGHT};

fn bytes(secs: u64, peer: &str, tx_total: u64) -> Observation {
    Observation {
        at: at(secs),
        input: Input::PeerBytes {
            peer: peer.into(),
            rx_total: 0,
            tx_total,
        },
    }
}

fn handshake(secs: u64, peer: &str, endpoint: &str) -> Observation {
    Observation {
        at: at(secs),
        input: Input::Handshake {
            peer: peer.into(),
            endpoint: sock(endpoint),
        },
    }
}

fn denied(secs: u64, peer: &str, reason: &str) -> Observation {
    Observation {
        at: at(secs),
        input: Input::AclDenied {
            peer: peer.into(),
            service: "crm-db".into(),
            reason: reason.into(),
        },
    }
}

fn kinds(actions: &[Action]) -> Vec<&'static str> {
    actions
        .iter()
        .map(|a| match a {
            Action::Ban { .. } => "ban",
            Action::Suspend { .. } => "suspend",
            Action::Alert { .. } => "alert",
        })
        .collect()
}

#[test]
fn a_port_scan_is_banned_and_an_administrator_is_not() {
    let mut d = detectors("[detection]\nallowlist = [\"192.0.2.0/24\"]\n");
    // 100 ports at 1,000 packets per second.
    let actions: Vec<_> = (0..100u16)
        .flat_map(|i| d.observe(dropped(u64::from(i), "203.0.113.50", 1000 + i)))
        .collect();
    assert_eq!(bans(&actions), [("203.0.113.50/32".into(), min(60), 1)]);
    assert_eq!(actions[0].detector(), Detector::PortScan);
    // The same scan after the ban ended is banned again, as a second offence.
    let again: Vec<_> = (0..100u16)
        .flat_map(|i| d.observe(dropped(3_600_100 + u64::from(i), "203.0.113.50", 1000 + i)))
        .collect();
    assert_eq!(bans(&again), [("203.0.113.50/32".into(), min(60), 2)]);
    // An administrator hitting 5 ports, again and again.
    let admin: Vec<_> = (0..1000u64)
        .flat_map(|i| {
            d.observe(dropped(
                i * 50,
                "198.51.100.7",
                [22, 80, 443, 3306, 5432][(i % 5) as usize],
            ))
        })
        .collect();
    assert!(admin.is_empty(), "{admin:?}");
    // 19 ports is below the default 20; ports spread over more than a minute do not add up.
    let slow: Vec<_> = (0..40u16)
        .flat_map(|i| d.observe(dropped(u64::from(i) * 4000, "198.51.100.8", i + 1)))
        .collect();
    assert!(slow.is_empty(), "one port every 4s is 15 per minute");
    // The allowlist is never banned.
    let allowed: Vec<_> = (0..100u16)
        .flat_map(|i| d.observe(dropped(u64::from(i), "192.0.2.99", 1000 + i)))
        .collect();
    assert!(allowed.is_empty());
}

#[test]
fn portless_protocols_are_not_scans() {
    let mut d = detectors("");
    let actions: Vec<_> = (0..100u16)
        .flat_map(|i| {
            d.observe(Observation {
                at: at_ms(u64::from(i)),
                input: Input::Dropped {
                    source: ip("203.0.113.50"),
                    dst_port: i,
                    proto: 1,
                },
            })
        })
        .collect();
    assert!(actions.is_empty());
}

#[test]
fn a_million_sources_stay_bounded() {
    let mut d = detectors("[detection.auth_failures]\nthreshold = 10\n");
    for i in 0..1_000_000u32 {
        let [a, b, c, e] = (0x0b00_0000u32 + i).to_be_bytes();
        let source = format!("{a}.{b}.{c}.{e}");
        let ms = u64::from(i / 10);
        assert!(d.observe(dropped(ms, &source, 22)).is_empty());
        if i % 4 == 0 {
            assert!(d.observe(log_failure(ms / 1000, &source)).is_empty());
        }
    }
    let tracked = d.tracked();
    assert!(tracked.scan_sources <= MAX_KEYS, "{tracked:?}");
    assert!(tracked.scan_ports <= MAX_WEIGHT, "{tracked:?}");
    assert!(tracked.auth_keys <= MAX_KEYS, "{tracked:?}");
    assert!(tracked.scan_sources > 0 && tracked.auth_keys > 0);
    // The newest sources are still counted: a scan among them is banned.
    let actions: Vec<_> = (0..20u16)
        .flat_map(|p| d.observe(dropped(100_001, "11.15.66.63", 2000 + p)))
        .collect();
    assert_eq!(bans(&actions).len(), 1);
}

#[test]
fn volume_counts_a_sliding_hour() {
    let gib = 1u64 << 30;
    let mut d =
        detectors("[detection.volume]\nper_peer_bytes_per_hour = \"2GiB\"\naction = \"suspend\"\n");
    // The first reading is a baseline, however high.
    assert!(d.observe(bytes(0, "alice", 100 * gib)).is_empty());
    let mut total = 100 * gib;
    // 1 GiB at 10 minutes, 1 GiB at 70 minutes: never 2 GiB within an hour.
    for (secs, add) in [(600, gib), (4200, gib)] {
        total += add;
        assert!(
            d.observe(bytes(secs, "alice", total)).is_empty(),
            "at {secs}s"
        );
    }
    // A further 1 GiB + 1 byte at 80 minutes: 2 GiB + 1 within the last hour.
    total += gib + 1;
    let actions = d.observe(bytes(4800, "alice", total));
    assert_eq!(kinds(&actions), ["suspend", "alert"]);
    // Once per hour: more bytes 30 minutes later do not act again.
    total += 3 * gib;
    assert!(d.observe(bytes(6600, "alice", total)).is_empty());
    // More than an hour after acting, still above: it acts again.
    total += 3 * gib;
    assert_eq!(
        kinds(&d.observe(bytes(8500, "alice", total))),
        ["suspend", "alert"]
    );
}

#[test]
fn a_counter_reset_counts_from_zero() {
    let gib = 1u64 << 30;
    let mut d = detectors("[detection.volume]\nper_peer_bytes_per_hour = \"1GiB\"\n");
    assert!(d.observe(bytes(0, "bob", 900 << 20)).is_empty());
    // The tunnel restarted: 100 MiB since. Not 2^64 - 800 MiB.
    assert!(d.observe(bytes(1, "bob", 100 << 20)).is_empty());
    // Another 1 GiB on top: above the limit, alert only.
    let actions = d.observe(bytes(2, "bob", (100 << 20) + gib));
    assert_eq!(kinds(&actions), ["alert"]);
    match &actions[0] {
        Action::Alert { detector, peer, .. } => {
            assert_eq!(*detector, Detector::Volume);
            assert_eq!(peer.as_deref(), Some("bob"));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn new_endpoint_networks() {
    let mut d = detectors("[detection]\nallowlist = [\"192.0.2.0/24\"]\n");
    // The first endpoint is learned silently; roaming within its /24 is not new.
    assert!(d
        .observe(handshake(0, "alice", "198.51.100.7:40000"))
        .is_empty());
    assert!(d
        .observe(handshake(120, "alice", "198.51.100.200:41000"))
        .is_empty());
    let actions = d.observe(handshake(240, "alice", "198.51.101.7:40000"));
    assert_eq!(kinds(&actions), ["alert"]);
    match &actions[0] {
        Action::Alert {
            source, summary, ..
        } => {
            assert_eq!(*source, Some(ip("198.51.101.7")));
            assert!(summary.contains("198.51.101.0/24"), "{summary}");
        }
        other => panic!("{other:?}"),
    }
    // Known now, and the old one is still known.
    assert!(d
        .observe(handshake(360, "alice", "198.51.101.9:1"))
        .is_empty());
    assert!(d
        .observe(handshake(480, "alice", "198.51.100.1:1"))
        .is_empty());
    // IPv6: the /48.
    assert!(d
        .observe(handshake(0, "bob", "[2001:db8:1:2::5]:51820"))
        .is_empty());
    assert!(d
        .observe(handshake(1, "bob", "[2001:db8:1:ffff::9]:51820"))
        .is_empty());
    assert_eq!(
        kinds(&d.observe(handshake(2, "bob", "[2001:db8:2::5]:51820"))),
        ["alert"]
    );
    // An allowlisted endpoint is learned without acting.
    assert!(d.observe(handshake(3, "bob", "192.0.2.10:5000")).is_empty());
}

#[test]
fn new_endpoint_suspends_when_told_and_forgets_the_least_recent() {
    let mut d = detectors("[detection.new_endpoint]\naction = \"suspend\"\n");
    assert!(d.observe(handshake(0, "carol", "203.0.113.1:1")).is_empty());
    for i in 1..=64u64 {
        let actions = d.observe(handshake(i, "carol", &format!("198.51.{i}.1:1")));
        assert_eq!(kinds(&actions), ["suspend", "alert"]);
    }
    // 65 networks were used; the first one was pushed out and is new again.
    assert_eq!(
        kinds(&d.observe(handshake(100, "carol", "203.0.113.1:1"))),
        ["suspend", "alert"]
    );
    assert!(d
        .observe(handshake(101, "carol", "198.51.64.1:1"))
        .is_empty());
}

#[test]
fn off_hours_is_rate_limited_per_peer() {
    let mut d = detectors("");
    assert_eq!(
        kinds(&d.observe(denied(0, "alice", "outside_hours"))),
        ["alert"]
    );
    assert!(d.observe(denied(60, "alice", "outside_hours")).is_empty());
    assert!(d.observe(denied(599, "alice", "outside_hours")).is_empty());
    assert_eq!(
        kinds(&d.observe(denied(0, "bob", "outside_hours"))),
        ["alert"]
    );
    assert_eq!(
        kinds(&d.observe(denied(600, "alice", "outside_hours"))),
        ["alert"]
    );
    // Other refusals are not off-hours use.
    assert!(d.observe(denied(5000, "carol", "role")).is_empty());
}

#[test]
fn update_keeps_state_and_takes_the_new_actions() {
    let mut d = detectors("");
    assert!(d
        .observe(handshake(0, "alice", "198.51.100.7:1"))
        .is_empty());
    assert_eq!(
        kinds(&d.observe(denied(0, "alice", "outside_hours"))),
        ["alert"]
    );
    d.update(&detection(
        "[detection.new_endpoint]\naction = \"suspend\"\n[detection.off_hours]\naction = \"suspend\"\n",
    ));
    // The learned endpoint and the off-hours quiet period survived the reload.
    assert!(d
        .observe(handshake(10, "alice", "198.51.100.9:1"))
        .is_empty());
    assert!(d.observe(denied(10, "alice", "outside_hours")).is_empty());
    assert_eq!(
        kinds(&d.observe(handshake(20, "alice", "203.0.113.9:1"))),
        ["suspend", "alert"]
    );
    assert_eq!(
        kinds(&d.observe(denied(700, "alice", "outside_hours"))),
        ["suspend", "alert"]
    );
}

#[test]
fn a_clock_stepping_back_does_not_panic_or_mute() {
    let mut d = detectors("");
    let late = d.observe(denied(10_000, "alice", "outside_hours"));
    assert_eq!(kinds(&late), ["alert"]);
    assert_eq!(
        kinds(&d.observe(denied(5, "alice", "outside_hours"))),
        ["alert"]
    );
    for s in [100, 3, 50, 0, 7] {
        let _ = d.observe(log_failure(s, "203.0.113.7"));
        let _ = d.observe(bytes(s, "bob", s * 1000));
    }
    let _ = d.observe(Observation {
        at: std::time::UNIX_EPOCH - std::time::Duration::from_secs(10),
        input: Input::PeerBytes {
            peer: String::new(),
            rx_total: u64::MAX,
            tx_total: u64::MAX,
        },
    });
}
