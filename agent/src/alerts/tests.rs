use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use prometheus::Registry;

use super::fake::{Answer, FakeServer};
use super::*;

fn alert(detector: &str) -> Alert {
    Alert {
        detector: detector.to_owned(),
        severity: Severity::Warning,
        summary: "12 failed logins from alice in 60 s".to_owned(),
        peer: Some("alice".to_owned()),
        source: Some(IpAddr::from([10, 8, 0, 2])),
        labels: BTreeMap::from([
            ("service".to_owned(), "crm-web".to_owned()),
            ("http-status".to_owned(), "401".to_owned()),
        ]),
        at: UNIX_EPOCH + Duration::from_millis(1_777_629_600_123),
    }
}

fn fast(webhook: Option<String>, alertmanager: Option<String>) -> AlertConfig {
    let mut config = AlertConfig::new(webhook, alertmanager);
    config.instance = "crm-01".to_owned();
    config.retry = RetryPolicy {
        tries: 5,
        first_backoff: Duration::from_millis(10),
        max_total: Duration::from_secs(10),
        timeout: Duration::from_secs(2),
    };
    config
}

fn metrics() -> AlertMetrics {
    AlertMetrics::register(&Registry::new()).unwrap_or_else(|e| panic!("{e}"))
}

fn wait(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn webhook_retries_server_errors_and_delivers_once() {
    let server = FakeServer::start(|n, _| {
        if n < 2 {
            Answer::json(500, r#"{"error":"busy"}"#)
        } else {
            Answer::json(200, "{}")
        }
    });
    let metrics = metrics();
    let config = fast(Some(format!("{}/hooks/crm", server.url())), None);
    let (sink, worker) =
        AlertSink::start(&config, metrics.clone()).unwrap_or_else(|e| panic!("{e}"));
    sink.send(alert("login_failure"));
    wait("delivery", || metrics.get("webhook", "sent") == 1);
    drop(sink);
    worker.join().unwrap_or_else(|_| panic!("worker panicked"));

    let seen = server.seen();
    assert_eq!(seen.len(), 3, "two failures and one success");
    assert_eq!(metrics.get("webhook", "retried"), 2);
    assert_eq!(metrics.get("webhook", "dropped"), 0);
    for request in &seen {
        assert_eq!(request.method, "POST");
        assert_eq!(request.target, "/hooks/crm");
        assert_eq!(
            request.headers.get("content-type").map(String::as_str),
            Some("application/json")
        );
        assert_eq!(request.body, seen[0].body, "every try sends the same alert");
    }
    let body = seen[0].json();
    assert_eq!(
        body,
        serde_json::json!({
            "version": 1,
            "instance": "crm-01",
            "detector": "login_failure",
            "severity": "warning",
            "summary": "12 failed logins from alice in 60 s",
            "peer": "alice",
            "source": "10.8.0.2",
            "labels": {"service": "crm-web", "http-status": "401"},
            "at": "2026-05-01T10:00:00.123Z",
        })
    );
}

#[test]
fn client_errors_are_final_and_persistent_failures_give_up() {
    let refused = FakeServer::start(|_, _| Answer::json(400, r#"{"error":"bad"}"#));
    let down = FakeServer::start(|_, _| Answer::json(503, ""));
    let metrics = metrics();
    let mut config = fast(Some(refused.url()), Some(down.url()));
    config.retry.tries = 3;
    let (sink, worker) =
        AlertSink::start(&config, metrics.clone()).unwrap_or_else(|e| panic!("{e}"));
    sink.send(alert("scan"));
    drop(sink);
    worker.join().unwrap_or_else(|_| panic!("worker panicked"));
    assert_eq!(refused.seen().len(), 1, "a 400 is not retried");
    assert_eq!(metrics.get("webhook", "dropped"), 1);
    assert_eq!(metrics.get("webhook", "retried"), 0);
    assert_eq!(down.seen().len(), 3, "three tries in all");
    assert_eq!(metrics.get("alertmanager", "retried"), 2);
    assert_eq!(metrics.get("alertmanager", "dropped"), 1);
    assert_eq!(metrics.get("alertmanager", "sent"), 0);
}

#[test]
fn unreachable_destination_is_retried_within_the_time_budget() {
    // A port nothing listens on: bind, take the port, close.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("{e}"));
    let metrics = metrics();
    let mut config = fast(Some(format!("http://127.0.0.1:{port}")), None);
    config.retry.first_backoff = Duration::from_millis(40);
    config.retry.max_total = Duration::from_millis(100);
    let (sink, worker) =
        AlertSink::start(&config, metrics.clone()).unwrap_or_else(|e| panic!("{e}"));
    sink.send(alert("scan"));
    drop(sink);
    worker.join().unwrap_or_else(|_| panic!("worker panicked"));
    // Waits of 40 ms and 80 ms fit in 100 ms only for the first: one retry, then given up.
    assert_eq!(metrics.get("webhook", "retried"), 1);
    assert_eq!(metrics.get("webhook", "dropped"), 1);
}

#[test]
fn a_full_queue_drops_without_blocking() {
    let release = Arc::new(AtomicBool::new(false));
    let server = {
        let release = Arc::clone(&release);
        FakeServer::start(move |_, _| {
            while !release.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(2));
            }
            Answer::json(204, "")
        })
    };
    let metrics = metrics();
    let mut config = fast(Some(server.url()), None);
    config.queue = 2;
    let (sink, worker) =
        AlertSink::start(&config, metrics.clone()).unwrap_or_else(|e| panic!("{e}"));
    sink.send(alert("first"));
    wait("the first alert in flight", || server.seen().len() == 1);
    let started = Instant::now();
    for _ in 0..1000 {
        sink.send(alert("flood"));
    }
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "send must not wait for the destination: {:?}",
        started.elapsed()
    );
    assert_eq!(
        metrics.get("webhook", "dropped"),
        998,
        "two fit in the queue"
    );
    release.store(true, Ordering::SeqCst);
    drop(sink);
    worker.join().unwrap_or_else(|_| panic!("worker panicked"));
    assert_eq!(metrics.get("webhook", "sent"), 3);
    assert_eq!(server.seen().len(), 3);
}

#[test]
fn alertmanager_payload_is_the_v2_schema() {
    let server = FakeServer::start(|_, _| Answer::json(200, ""));
    let metrics = metrics();
    let mut config = fast(None, Some(format!("{}/", server.url())));
    config.resolve_after = Duration::from_secs(600);
    let (sink, worker) =
        AlertSink::start(&config, metrics.clone()).unwrap_or_else(|e| panic!("{e}"));
    let mut anonymous = alert("port-scan");
    anonymous.peer = None;
    anonymous
        .labels
        .insert("__reserved".to_owned(), "x".to_owned());
    anonymous
        .labels
        .insert("alertname".to_owned(), "spoof".to_owned());
    anonymous.labels.insert("empty".to_owned(), String::new());
    sink.send(anonymous);
    drop(sink);
    worker.join().unwrap_or_else(|_| panic!("worker panicked"));
    assert_eq!(metrics.get("alertmanager", "sent"), 1);
    let seen = server.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].target, "/api/v2/alerts");
    assert_eq!(
        seen[0].json(),
        serde_json::json!([{
            "labels": {
                "alertname": "crmguard_port_scan",
                "severity": "warning",
                "instance": "crm-01",
                "detector": "port-scan",
                "source": "10.8.0.2",
                "service": "crm-web",
                "http_status": "401",
                "_reserved": "x",
            },
            "annotations": {"summary": "12 failed logins from alice in 60 s"},
            "startsAt": "2026-05-01T10:00:00.123Z",
            "endsAt": "2026-05-01T10:10:00.123Z",
        }])
    );
}

#[test]
fn chunked_and_unframed_answers_are_read() {
    let url = |s: &FakeServer| client::Url::parse(&s.url()).unwrap_or_else(|e| panic!("{e}"));
    let body = "{\"new\":[1,2,3],\"deleted\":null}".repeat(100);
    let expected = body.clone();
    let chunked = FakeServer::start(move |_, _| Answer {
        status: 200,
        body: body.as_bytes().to_vec(),
        chunked: Some(7),
    });
    let request = client::Request {
        method: "GET",
        path: "/v1/decisions/stream?startup=true",
        headers: &[("X-Api-Key", "k")],
        json: None,
    };
    let response = client::exchange(&url(&chunked), &request, Duration::from_secs(2))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(response.status, 200);
    assert_eq!(response.body, expected.as_bytes());
    let seen = chunked.seen();
    assert_eq!(seen[0].target, "/v1/decisions/stream?startup=true");
    assert_eq!(
        seen[0].headers.get("x-api-key").map(String::as_str),
        Some("k")
    );
    assert!(SystemTime::now() > UNIX_EPOCH);
}

#[test]
fn label_names_are_made_valid() {
    assert_eq!(label_name("http-status"), "http_status");
    assert_eq!(label_name("1st"), "_1st");
    assert_eq!(label_name("__x"), "_x");
    assert_eq!(label_name(""), "_");
    assert_eq!(label_name("ok_Name9"), "ok_Name9");
}

#[test]
fn https_is_refused_at_start() {
    let config = AlertConfig::new(Some("https://hooks.example.com/x".to_owned()), None);
    assert!(AlertSink::start(&config, metrics()).is_err());
}
