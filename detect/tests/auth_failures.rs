//! `auth_failures`: thresholds, the sliding window, escalation, peers, the allowlist, history.

mod common;

use common::*;
use crmguard_detect::{Action, Detector, Detectors, History};

const CONFIG: &str = "[detection]\nallowlist = [\"192.0.2.0/24\", \"2001:db8:aa::/48\"]\n\
    [detection.auth_failures]\nthreshold = 5\nwindow = \"10m\"\nban = \"30m\"\nescalate = 2.0\nmax_ban = \"90m\"\n";

/// Feeds `n` failures of `source`, one per second from `from`, and returns every action.
fn fail(d: &mut Detectors, source: &str, from: u64, n: u64) -> Vec<Action> {
    (from..from + n)
        .flat_map(|s| d.observe(log_failure(s, source)))
        .collect()
}

#[test]
fn below_at_and_above_the_threshold() {
    let mut d = detectors(CONFIG);
    assert!(
        fail(&mut d, "203.0.113.7", 0, 4).is_empty(),
        "4 of 5 is below"
    );
    let actions = fail(&mut d, "203.0.113.7", 4, 1);
    assert_eq!(bans(&actions), [("203.0.113.7/32".into(), min(30), 1)]);
    match &actions[0] {
        Action::Ban { detector, why, .. } => {
            assert_eq!(*detector, Detector::AuthFailures);
            assert!(why.contains("5 failed sshd logins"), "{why}");
        }
        other => panic!("not a ban: {other:?}"),
    }
    // Failures while the ban lasts (logged late) count for nothing: no new ban.
    assert!(fail(&mut d, "203.0.113.7", 5, 20).is_empty());
    // After it, the count starts again: four failures do not act, the fifth does.
    assert!(fail(&mut d, "203.0.113.7", 1810, 4).is_empty());
    assert_eq!(bans(&fail(&mut d, "203.0.113.7", 1814, 1)).len(), 1);
    // Another address has its own count.
    assert!(fail(&mut d, "198.51.100.1", 10, 4).is_empty());
}

#[test]
fn the_window_slides() {
    let mut d = detectors(CONFIG);
    // Four failures at 0..4s, then one every 3 minutes: at 600s the first four fall out.
    assert!(fail(&mut d, "203.0.113.7", 0, 4).is_empty());
    for s in [601, 781, 961, 1141] {
        assert!(
            d.observe(log_failure(s, "203.0.113.7")).is_empty(),
            "old failures fell out of the window at {s}s"
        );
    }
    // A fifth within ten minutes of the four above.
    assert_eq!(bans(&d.observe(log_failure(1200, "203.0.113.7"))).len(), 1);
}

#[test]
fn bans_escalate_up_to_max_ban() {
    let mut d = detectors(CONFIG);
    let mut lengths = Vec::new();
    for round in 0..4 {
        let actions = fail(&mut d, "203.0.113.7", round * 3 * 3600, 5);
        lengths.extend(bans(&actions).into_iter().map(|(_, d, n)| (d, n)));
    }
    assert_eq!(
        lengths,
        [(min(30), 1), (min(60), 2), (min(90), 3), (min(90), 4)]
    );
    let offence = d.history().get(ip("203.0.113.7"));
    assert_eq!(offence.map(|o| o.count), Some(4));
}

#[test]
fn default_escalation_is_30m_60m_120m() {
    let mut d = detectors("[detection.auth_failures]\nmax_ban = \"2h\"\n");
    let got: Vec<_> = (0..4)
        .flat_map(|round| bans(&fail(&mut d, "2001:db8:1::9", round * 3 * 3600, 5)))
        .map(|(net, duration, _)| (net, duration))
        .collect();
    // An IPv6 source is counted and banned by its /64 (`[firewall.limits] ipv6_prefix`).
    let net = String::from("2001:db8:1::/64");
    assert_eq!(
        got,
        [
            (net.clone(), min(30)),
            (net.clone(), min(60)),
            (net.clone(), min(120)),
            (net, min(120))
        ]
    );
}

#[test]
fn history_round_trips_and_forgets() {
    let mut d = detectors(CONFIG);
    fail(&mut d, "203.0.113.7", 0, 5);
    fail(&mut d, "203.0.113.7", 2_000, 5);
    fail(&mut d, "2001:db8:1::9", 2_100, 5);
    let json = serde_json::to_string(d.history())
        .unwrap_or_else(|e| panic!("history does not serialize: {e}"));
    assert!(json.contains("\"203.0.113.7\":{\"count\":2"), "{json}");
    let back: History =
        serde_json::from_str(&json).unwrap_or_else(|e| panic!("history does not load: {e}"));
    assert_eq!(&back, d.history());

    // A restarted daemon continues the escalation.
    let mut d = Detectors::new(&detection(CONFIG), back.clone());
    assert_eq!(bans(&fail(&mut d, "203.0.113.7", 9_000, 5))[0].2, 3);

    // After a week without offences (more than 4 * max_ban), an address starts again.
    let mut d = Detectors::new(&detection(CONFIG), back);
    let week = 7 * 24 * 3600;
    assert_eq!(
        bans(&fail(&mut d, "203.0.113.7", 9_000 + week, 5))[0],
        ("203.0.113.7/32".into(), min(30), 1)
    );
    // The other address was forgotten by the sweep.
    assert_eq!(d.history().get(ip("2001:db8:1::")), None);
    assert_eq!(d.history().len(), 1);
}

#[test]
fn history_rejects_nothing_it_wrote_and_ignores_empty_entries() {
    let back: History = serde_json::from_str(
        "{\"offences\":{\"203.0.113.7\":{\"count\":0,\"last_unix\":5},\"::ffff:198.51.100.1\":{\"count\":1,\"last_unix\":5}}}",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(back.len(), 1);
    let empty: History = serde_json::from_str("{}").unwrap_or_else(|e| panic!("{e}"));
    assert!(empty.is_empty());
}

#[test]
fn the_allowlist_is_never_acted_on() {
    let mut d = detectors(CONFIG);
    for source in [
        "192.0.2.10",
        "192.0.2.255",
        "2001:db8:aa:1::5",
        "::ffff:192.0.2.7",
    ] {
        assert!(
            fail(&mut d, source, 0, 50).is_empty(),
            "{source} is inside the allowlist"
        );
    }
    // A peer whose tunnel address is allowlisted is not suspended either.
    let actions: Vec<_> = (0..20)
        .flat_map(|s| d.observe(peer_failure(s, "alice-laptop", "192.0.2.40")))
        .collect();
    assert!(actions.is_empty());
    // Just outside the prefixes.
    assert_eq!(bans(&fail(&mut d, "192.0.3.1", 0, 5)).len(), 1);
    assert_eq!(bans(&fail(&mut d, "2001:db8:ab::1", 0, 5)).len(), 1);
}

#[test]
fn peers_are_suspended_not_banned() {
    let toml = "[detection.auth_failures]\nthreshold = 5\nper_peer_threshold = 3\nsuspend_disable = \"1h\"\n";
    let mut d = detectors(toml);
    let mut actions = Vec::new();
    for s in 0..3 {
        actions.extend(d.observe(peer_failure(s, "alice-laptop", "10.77.0.10")));
    }
    assert!(
        bans(&actions).is_empty(),
        "a tunnel address is never banned"
    );
    assert_eq!(actions.len(), 2, "{actions:?}");
    match &actions[0] {
        Action::Suspend {
            peer,
            detector,
            disable_for,
            ..
        } => {
            assert_eq!(peer, "alice-laptop");
            assert_eq!(*detector, Detector::AuthFailures);
            assert_eq!(*disable_for, Some(min(60)));
        }
        other => panic!("not a suspension: {other:?}"),
    }
    match &actions[1] {
        Action::Alert { peer, source, .. } => {
            assert_eq!(peer.as_deref(), Some("alice-laptop"));
            assert_eq!(*source, Some(ip("10.77.0.10")));
        }
        other => panic!("not an alert: {other:?}"),
    }
    // Two failures after acting do not act again; a peer's failures do not count for its
    // address seen in a log.
    assert!(d
        .observe(peer_failure(4, "alice-laptop", "10.77.0.10"))
        .is_empty());
    assert!(d
        .observe(peer_failure(5, "alice-laptop", "10.77.0.10"))
        .is_empty());
    assert!(d.history().is_empty());
}

#[test]
fn texts_from_outside_are_cleaned() {
    let mut d = detectors(CONFIG);
    let mut actions = Vec::new();
    for s in 0..5 {
        actions.extend(d.observe(crmguard_detect::Observation {
            at: at(s),
            input: crmguard_detect::Input::LoginFailure {
                source: ip("203.0.113.7"),
                peer: None,
                protocol: "sshd".into(),
                service: None,
                user: Some(format!("root\n\u{1b}[31m{}", "x".repeat(1000))),
            },
        }));
    }
    match &actions[..] {
        [Action::Ban { why, .. }] => {
            assert!(!why.chars().any(char::is_control), "{why:?}");
            assert!(why.chars().count() <= crmguard_detect::MAX_TEXT_CHARS);
        }
        other => panic!("expected one ban: {other:?}"),
    }
}

#[test]
fn loopback_and_unspecified_are_never_banned() {
    let mut d = detectors(CONFIG);
    for source in ["127.0.0.1", "::1", "0.0.0.0"] {
        assert!(fail(&mut d, source, 0, 10).is_empty(), "{source}");
    }
}

#[test]
fn update_keeps_counts_and_history() {
    let mut d = detectors(CONFIG);
    fail(&mut d, "203.0.113.7", 0, 5);
    assert!(fail(&mut d, "203.0.113.7", 1_810, 2).is_empty());
    d.update(&detection(
        "[detection.auth_failures]\nthreshold = 3\nban = \"1h\"\nescalate = 3.0\nmax_ban = \"24h\"\n",
    ));
    // Two failures already counted, the third reaches the new threshold; second offence.
    assert_eq!(
        bans(&fail(&mut d, "203.0.113.7", 1_812, 1)),
        [("203.0.113.7/32".into(), min(180), 2)]
    );
}

/// One host may use every address of its /64 in turn: the failures of its addresses add up,
/// and the ban is of the /64. `[firewall.limits] ipv6_prefix` sets the unit; at 128 every
/// address counts alone.
#[test]
fn ipv6_sources_are_counted_by_their_prefix() {
    let mut d = detectors(CONFIG);
    let rotated: Vec<Action> = (0..5)
        .flat_map(|i| d.observe(log_failure(i, &format!("2001:db8:5:6::{:x}", i + 1))))
        .collect();
    assert_eq!(bans(&rotated), [("2001:db8:5:6::/64".into(), min(30), 1)]);

    let mut d = detectors(&format!("{CONFIG}\n[firewall.limits]\nipv6_prefix = 128\n"));
    let rotated: Vec<Action> = (0..5)
        .flat_map(|i| d.observe(log_failure(i, &format!("2001:db8:5:6::{:x}", i + 1))))
        .collect();
    assert!(bans(&rotated).is_empty(), "{rotated:?}");
    assert_eq!(
        bans(&fail(&mut d, "2001:db8:5:6::1", 10, 5)),
        [("2001:db8:5:6::1/128".into(), min(30), 1)]
    );
}
