use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use prometheus::Registry;

use super::*;
use crate::alerts::fake::{Answer, FakeServer};

/// Answers of CrowdSec 1.4.6 (Debian bookworm) LAPI, captured with curl: the startup pull after
/// `cscli decisions add --ip 203.0.113.7 --duration 1h` and `--range 198.51.100.0/24 --duration
/// 30m`, the delta after `cscli decisions delete --ip 203.0.113.7`, a bad key, a login.
const STARTUP: &str = r#"{"deleted":null,"new":[{"duration":"29m59.146950511s","id":2,"origin":"cscli","scenario":"manual 'ban' from 'local'","scope":"Range","type":"ban","value":"198.51.100.0/24"},{"duration":"59m59.146948418s","id":1,"origin":"cscli","scenario":"manual 'ban' from 'local'","scope":"Ip","type":"ban","value":"203.0.113.7"}]}"#;
const DELTA: &str = r#"{"deleted":[{"duration":"-17.372513ms","id":1,"origin":"cscli","scenario":"manual 'ban' from 'local'","scope":"Ip","type":"ban","value":"203.0.113.7"}],"new":null}"#;
const EMPTY: &str = r#"{"deleted":null,"new":null}"#;
const FORBIDDEN: &str = r#"{"message":"access forbidden"}"#;
const LOGIN: &str = r#"{"code":200,"expire":"2099-12-06T06:07:00Z","token":"eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJleHAiOjE3OTY1MzcyMjAsImlkIjoibTEiLCJvcmlnX2lhdCI6MTc5NjUzMzYyMH0.63bfPGGnKnRgofubMBVIpmX9NmS0_zF7xemnlGEY1kg"}"#;
const TOKEN: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJleHAiOjE3OTY1MzcyMjAsImlkIjoibTEiLCJvcmlnX2lhdCI6MTc5NjUzMzYyMH0.63bfPGGnKnRgofubMBVIpmX9NmS0_zF7xemnlGEY1kg";

fn metrics() -> CrowdsecMetrics {
    CrowdsecMetrics::register(&Registry::new()).unwrap_or_else(|e| panic!("{e}"))
}

fn net(text: &str) -> IpNet {
    text.parse().unwrap_or_else(|e| panic!("{text}: {e}"))
}

fn bouncer(server: &FakeServer, metrics: &CrowdsecMetrics) -> Bouncer {
    let config = BouncerConfig {
        url: server.url(),
        api_key: "c6e7a2efb584a43bfdd9a61092a77baf".to_owned(),
        interval: Duration::from_millis(20),
        timeout: Duration::from_secs(2),
    };
    Bouncer::new(&config, metrics.clone()).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn startup_and_delta_streams() {
    let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let update = parse_stream(STARTUP.as_bytes(), true, now).unwrap_or_else(|e| panic!("{e}"));
    assert!(update.startup);
    assert_eq!(update.skipped, 0);
    assert_eq!(
        update.new,
        vec![
            Decision {
                net: net("198.51.100.0/24"),
                until: now + Duration::new(29 * 60 + 59, 146_950_511),
                origin: "cscli".to_owned(),
                scenario: "manual 'ban' from 'local'".to_owned(),
                id: 2,
            },
            Decision {
                net: net("203.0.113.7/32"),
                until: now + Duration::new(59 * 60 + 59, 146_948_418),
                origin: "cscli".to_owned(),
                scenario: "manual 'ban' from 'local'".to_owned(),
                id: 1,
            },
        ]
    );
    assert!(update.deleted.is_empty());

    let update = parse_stream(DELTA.as_bytes(), false, now).unwrap_or_else(|e| panic!("{e}"));
    assert!(!update.startup);
    assert!(update.new.is_empty());
    assert_eq!(
        update.deleted,
        vec![Deletion {
            net: net("203.0.113.7/32"),
            origin: "cscli".to_owned(),
            scenario: "manual 'ban' from 'local'".to_owned(),
            id: 1,
            held_until: None,
        }],
        "a deletion's negative duration does not matter"
    );
    let update = parse_stream(EMPTY.as_bytes(), false, now).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(update, Update::default());
}

#[test]
fn what_is_not_an_address_ban_is_skipped() {
    let body = r#"{"new":[
        {"duration":"-1.5s","id":10,"origin":"cscli","scenario":"s","scope":"Ip","type":"ban","value":"192.0.2.1"},
        {"duration":"0s","id":11,"origin":"cscli","scenario":"s","scope":"Ip","type":"ban","value":"192.0.2.2"},
        {"duration":"1h","id":12,"origin":"cscli","scenario":"s","scope":"Ip","type":"captcha","value":"192.0.2.3"},
        {"duration":"1h","id":13,"origin":"cscli","scenario":"s","scope":"Country","type":"ban","value":"XX"},
        {"duration":"1h","id":14,"origin":"cscli","scenario":"s","scope":"Ip","type":"ban","value":"not-an-ip"},
        {"duration":"1 hour","id":15,"origin":"cscli","scenario":"s","scope":"Ip","type":"ban","value":"192.0.2.5"},
        {"duration":"4h","id":16,"origin":"CAPI","scenario":"crowdsecurity/ssh-bf","scope":"ip","type":"ban","value":"2001:db8::7"},
        {"duration":"4h","id":17,"origin":"lists","scenario":"l","scope":"range","type":"Ban","value":"2001:db8:1::5/48"}
    ],"deleted":[
        {"duration":"1h","id":20,"origin":"cscli","scenario":"s","scope":"AS","type":"ban","value":"64496"}
    ]}"#;
    let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let update = parse_stream(body.as_bytes(), false, now).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(update.skipped, 7);
    let nets: Vec<(i64, IpNet)> = update.new.iter().map(|d| (d.id, d.net)).collect();
    assert_eq!(
        nets,
        vec![(16, net("2001:db8::7/128")), (17, net("2001:db8:1::/48"))],
        "ranges are truncated to their network"
    );
    assert_eq!(update.new[0].until, now + Duration::from_secs(4 * 3600));
    assert!(update.deleted.is_empty());
}

#[test]
fn malformed_answers_are_errors() {
    let now = SystemTime::now();
    for body in [
        "",
        "null",
        "[]",
        "<html>502 Bad Gateway</html>",
        r#"{"new":[{"id":"x"}]}"#,
        r#"{"new":{"id":1}}"#,
        r#"{"new":[{"duration":"1h","id":1,"scope":"Ip","type":"ban","value":"192.0.2.1"}"#,
    ] {
        match parse_stream(body.as_bytes(), false, now) {
            Err(CrowdsecError::Malformed(_)) => {}
            other => panic!("{body:?}: {other:?}"),
        }
    }
}

/// A LAPI script: startup, then a failure of each kind, then the delta. No failure may produce
/// an update, and the count in force must only change on the real answers.
#[test]
fn bouncer_survives_failures_without_deleting() {
    let server = FakeServer::start(|n, seen| {
        let startup = seen.target.ends_with("startup=true");
        match n {
            0 => {
                assert!(startup, "the first pull is a startup pull");
                Answer::json(403, FORBIDDEN)
            }
            1 => {
                assert!(
                    startup,
                    "a failed startup pull is retried as a startup pull"
                );
                Answer {
                    status: 200,
                    body: STARTUP.as_bytes().to_vec(),
                    chunked: Some(64),
                }
            }
            2 => Answer::json(200, r#"{"new": [ {"#),
            3 => Answer::json(500, r#"{"message":"database is locked"}"#),
            4 => Answer::json(200, EMPTY),
            _ => {
                assert!(!startup);
                Answer::json(200, DELTA)
            }
        }
    });
    let metrics = metrics();
    let mut bouncer = bouncer(&server, &metrics);
    assert!(matches!(bouncer.poll(), Err(CrowdsecError::Auth(403, _))));
    let status = bouncer.status();
    assert!(status.reachable && status.last_pull_unix.is_none() && status.errors == 1);
    assert!(status
        .last_error
        .as_deref()
        .is_some_and(|e| e.contains("403")));

    let update = bouncer.poll().unwrap_or_else(|e| panic!("{e}"));
    assert!(update.startup && update.new.len() == 2);
    assert_eq!(metrics.decisions(), 2);
    let status = bouncer.status();
    assert!(status.reachable && status.last_error.is_none() && status.last_pull_unix.is_some());

    assert!(matches!(bouncer.poll(), Err(CrowdsecError::Malformed(_))));
    assert!(matches!(bouncer.poll(), Err(CrowdsecError::Status(500, _))));
    assert_eq!(metrics.decisions(), 2, "failures delete nothing");
    assert_eq!(bouncer.status().decisions, 2);

    let update = bouncer.poll().unwrap_or_else(|e| panic!("{e}"));
    assert!(!update.startup && update.new.is_empty() && update.deleted.is_empty());
    let update = bouncer.poll().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(update.deleted.len(), 1);
    assert_eq!(metrics.decisions(), 1);

    assert_eq!(metrics.errors("auth"), 1);
    assert_eq!(metrics.errors("malformed"), 1);
    assert_eq!(metrics.errors("status"), 1);
    assert_eq!(bouncer.status().errors, 3);
    for seen in server.seen() {
        assert_eq!(seen.method, "GET");
        assert_eq!(
            seen.headers.get("x-api-key").map(String::as_str),
            Some("c6e7a2efb584a43bfdd9a61092a77baf")
        );
    }
    drop(server);
    // The API gone: unreachable, counted, still nothing deleted.
    assert!(matches!(bouncer.poll(), Err(CrowdsecError::Unreachable(_))));
    assert!(!bouncer.status().reachable);
    assert_eq!(metrics.errors("unreachable"), 1);
    assert_eq!(metrics.decisions(), 1);
}

/// Two decisions ban one address (a scenario's and a manual one): deleting one lifts
/// nothing and says until when the other holds the address; deleting the other lifts it.
#[test]
fn a_deleted_decision_names_the_end_of_another_that_bans_the_same_address() {
    const TWO: &str = r#"{"deleted":null,"new":[{"duration":"1h","id":1,"origin":"crowdsec","scenario":"crowdsecurity/ssh-bf","scope":"Ip","type":"ban","value":"203.0.113.7"},{"duration":"4h","id":2,"origin":"cscli","scenario":"manual 'ban' from 'local'","scope":"Ip","type":"ban","value":"203.0.113.7"},{"duration":"2h","id":3,"origin":"cscli","scenario":"manual 'ban' from 'local'","scope":"Ip","type":"ban","value":"198.51.100.9"}]}"#;
    const DELETE_2: &str = r#"{"deleted":[{"duration":"-1s","id":2,"origin":"cscli","scenario":"manual 'ban' from 'local'","scope":"Ip","type":"ban","value":"203.0.113.7"},{"duration":"-1s","id":3,"origin":"cscli","scenario":"manual 'ban' from 'local'","scope":"Ip","type":"ban","value":"198.51.100.9"}],"new":null}"#;
    const DELETE_1: &str = r#"{"deleted":[{"duration":"-1s","id":1,"origin":"crowdsec","scenario":"crowdsecurity/ssh-bf","scope":"Ip","type":"ban","value":"203.0.113.7"}],"new":null}"#;
    let server = FakeServer::start(|n, _| match n {
        0 => Answer::json(200, TWO),
        1 => Answer::json(200, DELETE_2),
        _ => Answer::json(200, DELETE_1),
    });
    let metrics = metrics();
    let mut bouncer = bouncer(&server, &metrics);
    let startup = bouncer.poll().unwrap_or_else(|e| panic!("{e}"));
    let one_hour = startup
        .new
        .iter()
        .find(|d| d.id == 1)
        .map(|d| d.until)
        .unwrap_or_else(|| panic!("decision 1: {startup:?}"));

    // Each deletion's id, and until when other decisions hold its address.
    let mut held = || -> Vec<(i64, Option<SystemTime>)> {
        let update = bouncer.poll().unwrap_or_else(|e| panic!("{e}"));
        update
            .deleted
            .iter()
            .map(|d| (d.id, d.held_until))
            .collect()
    };
    assert_eq!(held(), vec![(2, Some(one_hour)), (3, None)]);
    assert_eq!(metrics.decisions(), 1);
    assert_eq!(held(), vec![(1, None)]);
    assert_eq!(metrics.decisions(), 0);
}

/// What a pull lifts: only CrowdSec's own bans; a deleted decision whose address another
/// still bans brings the ban's end forward instead of lifting it.
#[test]
fn a_pull_lifts_only_crowdsecs_bans_and_shortens_those_still_held() {
    use crmguard_core::bans::{BanStore, ManualBan, Safeguards};
    let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let guard = Safeguards {
        allowlist: &[],
        host_addrs: &[],
        tunnel_nets: &[],
        trusted: &[],
    };
    let hours = |h: u64| Duration::from_secs(h * 3600);
    let mut bans = BanStore::new();
    for (addr, detector) in [
        ("203.0.113.1/32", "crowdsec"),
        ("203.0.113.2/32", "crowdsec"),
        ("203.0.113.3/32", "port_scan"),
    ] {
        bans.add_detected(net(addr), hours(3), detector, &guard, now)
            .unwrap_or_else(|e| panic!("{e}"));
    }
    let manual = ManualBan {
        net: net("203.0.113.4/32"),
        ttl: None,
        reason: None,
        by: "admin:alice".to_owned(),
        force: false,
    };
    bans.add_manual(manual, &guard, now)
        .unwrap_or_else(|e| panic!("{e}"));
    let deletion = |addr: &str, held_until: Option<SystemTime>| Deletion {
        net: net(addr),
        origin: "cscli".to_owned(),
        scenario: "manual".to_owned(),
        id: 1,
        held_until,
    };
    let update = Update {
        deleted: vec![
            deletion("203.0.113.1/32", Some(now + hours(1))),
            deletion("203.0.113.2/32", None),
            deletion("203.0.113.3/32", None),
            deletion("203.0.113.4/32", None),
        ],
        ..Update::default()
    };
    let lifted = lift(&update, &mut bans);
    assert_eq!(
        lifted,
        Lifted {
            removed: vec![net("203.0.113.2/32")],
            shortened: vec![net("203.0.113.1/32")],
        }
    );
    let end = |addr: &str| bans.get(net(addr)).map(|b| b.expires);
    assert_eq!(end("203.0.113.1/32"), Some(Some(now + hours(1))));
    assert_eq!(end("203.0.113.3/32"), Some(Some(now + hours(3))));
    assert_eq!(end("203.0.113.4/32"), Some(None));
    // A deletion held longer than the ban changes nothing.
    let update = Update {
        deleted: vec![deletion("203.0.113.1/32", Some(now + hours(2)))],
        ..Update::default()
    };
    assert_eq!(lift(&update, &mut bans), Lifted::default());

    // A startup pull that no longer lists CrowdSec's ban: stale, removed; the others stay.
    let update = Update {
        startup: true,
        ..Update::default()
    };
    assert_eq!(
        lift(&update, &mut bans).removed,
        vec![net("203.0.113.1/32")]
    );
    assert_eq!(bans.len(), 2);
}

#[test]
fn spawned_loop_polls_and_stops_on_drop() {
    let server = FakeServer::start(|n, _| match n {
        0 => Answer::json(200, STARTUP),
        _ => Answer::json(200, EMPTY),
    });
    let metrics = metrics();
    let updates = Arc::new(Mutex::new(Vec::new()));
    let handle = {
        let updates = Arc::clone(&updates);
        bouncer(&server, &metrics)
            .spawn(move |update| {
                updates
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .push(update);
            })
            .unwrap_or_else(|e| panic!("{e}"))
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while server.seen().len() < 3 {
        assert!(Instant::now() < deadline, "the loop does not poll");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(handle.status().decisions, 2);
    drop(handle);
    let pulls = server.seen().len();
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(server.seen().len(), pulls, "the loop stopped");
    let updates = updates
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    assert!(updates[0].startup && updates[0].new.len() == 2);
    assert!(updates[1..].iter().all(|u| !u.startup && u.new.is_empty()));
}

fn ban() -> Ban {
    Ban {
        detector: "login_failure".to_owned(),
        source: IpAddr::from([192, 0, 2, 9]),
        duration: Duration::from_secs(7200),
        message: "crmguard: 12 failed logins".to_owned(),
        at: UNIX_EPOCH + Duration::from_secs(1_777_629_600),
    }
}

#[test]
fn watcher_logs_in_and_pushes_an_alert_with_a_ban() {
    let server = FakeServer::start(|_, seen| match seen.target.as_str() {
        "/v1/watchers/login" => Answer::json(200, LOGIN),
        "/v1/alerts" => Answer::json(201, r#"["3"]"#),
        other => panic!("unexpected {other}"),
    });
    let config = WatcherConfig {
        url: server.url(),
        machine_id: "crmguard-host".to_owned(),
        password: "secretpassw0rd".to_owned(),
        timeout: Duration::from_secs(2),
    };
    let mut watcher = Watcher::new(&config, metrics()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(watcher.push(&ban()), Ok(vec!["3".to_owned()]));
    assert_eq!(watcher.push(&ban()), Ok(vec!["3".to_owned()]));
    let seen = server.seen();
    let targets: Vec<&str> = seen.iter().map(|s| s.target.as_str()).collect();
    assert_eq!(
        targets,
        ["/v1/watchers/login", "/v1/alerts", "/v1/alerts"],
        "the token is kept while valid"
    );
    assert_eq!(
        seen[0].json(),
        serde_json::json!({
            "machine_id": "crmguard-host",
            "password": "secretpassw0rd",
            "scenarios": ["crmguard/*"],
        })
    );
    assert_eq!(
        seen[1].headers.get("authorization").map(String::as_str),
        Some(format!("Bearer {TOKEN}").as_str())
    );
    let alert = seen[1].json();
    let alert = &alert[0];
    assert_eq!(alert["scenario"], "crmguard/login_failure");
    assert_eq!(
        alert["source"],
        serde_json::json!({"scope": "Ip", "value": "192.0.2.9", "ip": "192.0.2.9"})
    );
    assert_eq!(alert["start_at"], "2026-05-01T10:00:00Z");
    assert_eq!(
        alert["decisions"],
        serde_json::json!([{
            "duration": "7200s",
            "origin": "crowdsec",
            "scenario": "crmguard/login_failure",
            "scope": "Ip",
            "type": "ban",
            "value": "192.0.2.9",
        }])
    );
    for field in [
        "scenario_hash",
        "scenario_version",
        "message",
        "events_count",
        "events",
        "stop_at",
        "capacity",
        "leakspeed",
        "simulated",
    ] {
        assert!(alert.get(field).is_some(), "LAPI requires {field}");
    }
}

#[test]
fn watcher_logs_in_again_on_401_and_reports_bad_passwords() {
    let pushes = Arc::new(AtomicUsize::new(0));
    let server = {
        let pushes = Arc::clone(&pushes);
        FakeServer::start(move |_, seen| match seen.target.as_str() {
            "/v1/watchers/login" if seen.json()["password"] == "wrong" => Answer::json(
                401,
                r#"{"code":401,"message":"incorrect Username or Password"}"#,
            ),
            "/v1/watchers/login" => Answer::json(200, LOGIN),
            _ if pushes.fetch_add(1, Ordering::SeqCst) == 0 => {
                Answer::json(401, r#"{"code":401,"message":"Token is expired"}"#)
            }
            _ => Answer::json(201, r#"["4"]"#),
        })
    };
    let mut config = WatcherConfig {
        url: server.url(),
        machine_id: "crmguard-host".to_owned(),
        password: "secretpassw0rd".to_owned(),
        timeout: Duration::from_secs(2),
    };
    let mut watcher = Watcher::new(&config, metrics()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(watcher.push(&ban()), Ok(vec!["4".to_owned()]));
    let targets: Vec<String> = server.seen().into_iter().map(|s| s.target).collect();
    assert_eq!(
        targets,
        [
            "/v1/watchers/login",
            "/v1/alerts",
            "/v1/watchers/login",
            "/v1/alerts"
        ]
    );

    config.password = "wrong".to_owned();
    let metrics = metrics();
    let mut watcher = Watcher::new(&config, metrics.clone()).unwrap_or_else(|e| panic!("{e}"));
    assert!(matches!(
        watcher.push(&ban()),
        Err(CrowdsecError::Auth(401, _))
    ));
    assert_eq!(metrics.errors("auth"), 1);
}
