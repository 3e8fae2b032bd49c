//! Alert delivery against real receivers: a Prometheus Alertmanager (Debian's
//! `prometheus-alertmanager`, its v2 API read back with curl) and a webhook receiver that fails
//! twice before accepting, both on 127.0.0.1. The alerts go through crmguard's `AlertSink`, the
//! path the daemon's detectors use.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{IpAddr, TcpListener};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result};
use crmguard::alerts::{Alert, AlertConfig, AlertMetrics, AlertSink, RetryPolicy, Severity};
use crmguard_lab::alerting::Alertmanager;
use crmguard_lab::privileged;
use crmguard_lab::wait::wait_for;
use serde_json::Value;

/// A webhook receiver: answers 500 to the first `failures` requests and 200 after; keeps the
/// body of every request it received.
struct Receiver {
    url: String,
    bodies: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl Receiver {
    fn start(failures: usize) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("bind: {e}"));
        let url = format!(
            "http://{}/crm/alerts",
            listener.local_addr().unwrap_or_else(|e| panic!("{e}"))
        );
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let kept = Arc::clone(&bodies);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let Some(body) = read_request(&mut stream) else {
                    continue;
                };
                let n = {
                    let mut kept = kept
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    kept.push(body);
                    kept.len()
                };
                let status = if n <= failures {
                    "500 Internal Server Error"
                } else {
                    "200 OK"
                };
                let _ = stream.write_all(
                    format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                        .as_bytes(),
                );
            }
        });
        Receiver { url, bodies }
    }

    fn bodies(&self) -> Vec<Vec<u8>> {
        self.bodies
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

/// The body of one HTTP/1.1 request framed by Content-Length.
fn read_request(stream: &mut std::net::TcpStream) -> Option<Vec<u8>> {
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let mut buf = Vec::new();
    let mut chunk = [0_u8; 4096];
    loop {
        let n = stream.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
        let length: usize = head
            .lines()
            .find_map(|line| line.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())?;
        if buf.len() >= end + 4 + length {
            return Some(buf[end + 4..end + 4 + length].to_vec());
        }
    }
}

fn alerts_in(alertmanager: &Alertmanager) -> Result<Value> {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "5"])
        .arg(format!("{}/api/v2/alerts", alertmanager.url()))
        .output()
        .context("running curl (apt-get install curl)")?;
    anyhow::ensure!(
        out.status.success(),
        "curl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).context("Alertmanager's /api/v2/alerts is not JSON")
}

#[test]
fn alerts_reach_alertmanager_and_a_failing_webhook_once() {
    if !privileged::require("alerts_reach_alertmanager_and_a_failing_webhook_once") {
        return;
    }
    let alertmanager = Alertmanager::start().unwrap_or_else(|e| panic!("{e:#}"));
    let receiver = Receiver::start(2);
    let registry = prometheus::Registry::new();
    let metrics = AlertMetrics::register(&registry).unwrap_or_else(|e| panic!("{e}"));
    let mut config = AlertConfig::new(Some(receiver.url.clone()), Some(alertmanager.url()));
    config.instance = "crm-suite".to_owned();
    config.retry = RetryPolicy {
        first_backoff: Duration::from_millis(100),
        ..RetryPolicy::default()
    };
    let (sink, worker) =
        AlertSink::start(&config, metrics.clone()).unwrap_or_else(|e| panic!("{e}"));
    sink.send(Alert {
        detector: "login_failure".to_owned(),
        severity: Severity::Critical,
        summary: "12 failed logins from alice in 60 s".to_owned(),
        peer: Some("alice".to_owned()),
        source: Some(IpAddr::from([10, 8, 0, 2])),
        labels: BTreeMap::from([("service".to_owned(), "crm-web".to_owned())]),
        at: SystemTime::now(),
    });

    let shown = wait_for(Duration::from_secs(20), "the alert in Alertmanager", || {
        let alerts = alerts_in(&alertmanager)?;
        Ok(alerts.as_array().and_then(|list| {
            list.iter()
                .find(|a| a["labels"]["alertname"] == "crmguard_login_failure")
                .cloned()
        }))
    })
    .unwrap_or_else(|e| panic!("{e:#}\n{}", alertmanager.log()));
    let labels = &shown["labels"];
    assert_eq!(labels["severity"], "critical");
    assert_eq!(labels["instance"], "crm-suite");
    assert_eq!(labels["detector"], "login_failure");
    assert_eq!(labels["peer"], "alice");
    assert_eq!(labels["source"], "10.8.0.2");
    assert_eq!(labels["service"], "crm-web");
    assert_eq!(
        shown["annotations"]["summary"],
        "12 failed logins from alice in 60 s"
    );
    assert_eq!(
        shown["status"]["state"], "active",
        "endsAt is in the future"
    );

    wait_for(Duration::from_secs(20), "the webhook delivery", || {
        Ok((metrics.get("webhook", "sent") == 1).then_some(()))
    })
    .unwrap_or_else(|e| panic!("{e:#}"));
    drop(sink);
    worker
        .join()
        .unwrap_or_else(|_| panic!("the alert worker panicked"));
    let bodies = receiver.bodies();
    assert_eq!(bodies.len(), 3, "two refused tries, then the accepted one");
    assert!(
        bodies.iter().all(|b| *b == bodies[0]),
        "the same alert each time"
    );
    let body: Value = serde_json::from_slice(&bodies[2]).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(body["detector"], "login_failure");
    assert_eq!(body["peer"], "alice");
    assert_eq!(metrics.get("webhook", "retried"), 2);
    assert_eq!(metrics.get("webhook", "dropped"), 0);
    assert_eq!(metrics.get("alertmanager", "sent"), 1);
    assert_eq!(metrics.get("alertmanager", "retried"), 0);
}
