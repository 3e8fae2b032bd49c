//! crmguard's CrowdSec clients against a real Local API (Debian's `crowdsec` 1.4.6, LAPI only,
//! on 127.0.0.1): bans added and deleted with `cscli` reach the bouncer within a poll, a wrong
//! bouncer key is refused and deletes nothing, and a ban pushed by the watcher becomes a
//! decision `cscli decisions list` shows and other bouncers pull.

use std::net::IpAddr;
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime};

use crmguard::crowdsec::{
    Ban, Bouncer, BouncerConfig, CrowdsecError, CrowdsecMetrics, Update, Watcher, WatcherConfig,
};
use crmguard_lab::alerting::CrowdsecLapi;
use crmguard_lab::privileged;
use ipnet::IpNet;

const INTERVAL: Duration = Duration::from_secs(1);
/// A change must show within one interval plus this.
const SLACK: Duration = Duration::from_secs(2);

fn net(text: &str) -> IpNet {
    text.parse().unwrap_or_else(|e| panic!("{text}: {e}"))
}

/// Waits for an update that satisfies `found`.
fn next_matching(
    updates: &mpsc::Receiver<Update>,
    within: Duration,
    what: &str,
    found: impl Fn(&Update) -> bool,
) -> Update {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match updates.recv_timeout(left) {
            Ok(update) if found(&update) => return update,
            Ok(_) => {}
            Err(e) => panic!("no update with {what} within {within:?}: {e}"),
        }
    }
}

#[test]
fn crowdsec_bouncer_and_watcher_against_a_real_lapi() {
    if !privileged::require("crowdsec_bouncer_and_watcher_against_a_real_lapi") {
        return;
    }
    let lapi = CrowdsecLapi::start().unwrap_or_else(|e| panic!("{e:#}"));
    let key = lapi
        .add_bouncer("crmguard-suite")
        .unwrap_or_else(|e| panic!("{e:#}\n{}", lapi.log()));
    lapi.cscli(&[
        "decisions",
        "add",
        "--ip",
        "203.0.113.7",
        "--duration",
        "1h",
    ])
    .unwrap_or_else(|e| panic!("{e:#}"));

    let registry = prometheus::Registry::new();
    let metrics = CrowdsecMetrics::register(&registry).unwrap_or_else(|e| panic!("{e}"));

    // A wrong key: refused, counted, nothing handed over.
    let mut wrong = Bouncer::new(
        &BouncerConfig {
            url: lapi.url(),
            api_key: "0000000000000000000000000000000f".to_owned(),
            interval: INTERVAL,
            timeout: Duration::from_secs(5),
        },
        metrics.clone(),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    match wrong.poll() {
        Err(CrowdsecError::Auth(403, _)) => {}
        other => panic!("a wrong key must be refused with 403: {other:?}"),
    }
    assert_eq!(metrics.errors("auth"), 1);
    assert!(wrong.status().last_error.is_some());

    let (tx, updates) = mpsc::channel();
    let bouncer = Bouncer::new(
        &BouncerConfig {
            url: lapi.url(),
            api_key: key,
            interval: INTERVAL,
            timeout: Duration::from_secs(5),
        },
        metrics.clone(),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let started = SystemTime::now();
    let handle = bouncer
        .spawn(move |update| {
            let _ = tx.send(update);
        })
        .unwrap_or_else(|e| panic!("{e}"));

    let startup = next_matching(&updates, INTERVAL + SLACK, "the startup set", |u| u.startup);
    let ban = startup
        .new
        .iter()
        .find(|d| d.net == net("203.0.113.7/32"))
        .unwrap_or_else(|| panic!("203.0.113.7 not in the startup set: {startup:?}"));
    assert_eq!(ban.origin, "cscli");
    let left = ban
        .until
        .duration_since(started)
        .unwrap_or_else(|e| panic!("the ban ends in the past: {e}"));
    assert!(
        left > Duration::from_secs(3540) && left <= Duration::from_secs(3600),
        "1h ban with {left:?} left"
    );
    assert_eq!(handle.status().decisions, 1);
    assert!(handle.status().reachable);

    // A range added now shows in the next delta; its deletion in the one after.
    lapi.cscli(&[
        "decisions",
        "add",
        "--range",
        "198.51.100.0/24",
        "--duration",
        "30m",
    ])
    .unwrap_or_else(|e| panic!("{e:#}"));
    next_matching(&updates, INTERVAL + SLACK, "the new range", |u| {
        !u.startup && u.new.iter().any(|d| d.net == net("198.51.100.0/24"))
    });
    lapi.cscli(&["decisions", "delete", "--ip", "203.0.113.7"])
        .unwrap_or_else(|e| panic!("{e:#}"));
    next_matching(&updates, INTERVAL + SLACK, "the deletion", |u| {
        u.deleted.iter().any(|d| d.net == net("203.0.113.7/32"))
    });
    // The status is updated before the update is handed over.
    assert_eq!(handle.status().decisions, 1, "only the range is left");
    assert_eq!(metrics.decisions(), 1);

    // The watcher: its ban becomes a LAPI decision, listed by cscli and pulled by bouncers.
    lapi.add_machine("crmguard-suite", "crmguard-suite-password-1")
        .unwrap_or_else(|e| panic!("{e:#}"));
    let mut watcher = Watcher::new(
        &WatcherConfig {
            url: lapi.url(),
            machine_id: "crmguard-suite".to_owned(),
            password: "crmguard-suite-password-1".to_owned(),
            timeout: Duration::from_secs(5),
        },
        metrics.clone(),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let ids = watcher
        .push(&Ban {
            detector: "login_failure".to_owned(),
            source: IpAddr::from([192, 0, 2, 10]),
            duration: Duration::from_secs(7200),
            message: "crmguard: 12 failed logins from 192.0.2.10".to_owned(),
            at: SystemTime::now(),
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", lapi.log()));
    assert_eq!(ids.len(), 1, "one alert created: {ids:?}");

    let listed = lapi.decisions().unwrap_or_else(|e| panic!("{e:#}"));
    let alerts = listed
        .as_array()
        .unwrap_or_else(|| panic!("cscli decisions list: {listed}"));
    let pushed = alerts
        .iter()
        .flat_map(|alert| alert["decisions"].as_array().cloned().unwrap_or_default())
        .find(|d| d["value"] == "192.0.2.10")
        .unwrap_or_else(|| panic!("the pushed ban is not listed: {listed:#}"));
    assert_eq!(pushed["scenario"], "crmguard/login_failure");
    assert_eq!(pushed["type"], "ban");
    assert_eq!(pushed["scope"], "Ip");
    assert_eq!(pushed["origin"], "crowdsec");

    let update = next_matching(&updates, INTERVAL + SLACK, "the pushed ban", |u| {
        u.new.iter().any(|d| d.net == net("192.0.2.10/32"))
    });
    let decision = update
        .new
        .iter()
        .find(|d| d.net == net("192.0.2.10/32"))
        .unwrap_or_else(|| panic!("vanished"));
    assert_eq!(decision.scenario, "crmguard/login_failure");

    // A wrong machine password is refused and counted.
    let mut impostor = Watcher::new(
        &WatcherConfig {
            url: lapi.url(),
            machine_id: "crmguard-suite".to_owned(),
            password: "not-the-password".to_owned(),
            timeout: Duration::from_secs(5),
        },
        metrics.clone(),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    match impostor.login() {
        Err(CrowdsecError::Auth(..)) => {}
        other => panic!("a wrong password must be refused: {other:?}"),
    }
    drop(handle);
}
