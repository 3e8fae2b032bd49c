//! Alert delivery: what crmguard's detectors report, sent to the operator's webhook and to a
//! Prometheus Alertmanager, without ever slowing down the path that raised it.
//!
//! [`AlertSink::send`] is a `try_send` into a bounded queue per destination: when a destination
//! is slow or down and its queue is full, the alert is dropped and counted, and the caller does
//! not wait. One worker thread per destination delivers with a small blocking HTTP client
//! ([`client`]), retrying failures (connection errors, timeouts, 5xx, 408, 429) with
//! exponential backoff ([`RetryPolicy`]); other 4xx answers are final. Every outcome is counted
//! in `crmguard_alerts_total{sink, result}`: `sent` once per delivered alert, `retried` once
//! per retry, `dropped` per alert lost to a full queue or given up.
//!
//! Destinations are `http://` only (see [`client`]).
//!
//! # The webhook's JSON (`version` 1)
//!
//! One POST per alert, `Content-Type: application/json`:
//!
//! ```json
//! {
//!   "version": 1,
//!   "instance": "crm-01",
//!   "detector": "login_failure",
//!   "severity": "warning",
//!   "summary": "12 failed logins from alice in 60 s",
//!   "peer": "alice",
//!   "source": "10.8.0.2",
//!   "labels": {"service": "crm-web"},
//!   "at": "2026-05-01T10:00:00.123Z"
//! }
//! ```
//!
//! `peer` and `source` are `null` when unknown; `at` is RFC 3339 in UTC; `severity` is `info`,
//! `warning` or `critical`. Any 2xx answer is a delivery.
//!
//! # Alertmanager
//!
//! `POST /api/v2/alerts` with a one-element array of the v2 `postableAlert`: labels
//! `alertname` (`crmguard_<detector>`), `severity`, `instance`, `detector`, `peer` and
//! `source` when known, then the alert's own labels (names made valid, never overriding those);
//! annotation `summary`; `startsAt` = the alert's time and `endsAt` = `startsAt` +
//! [`AlertConfig::resolve_after`], so that an alert nobody repeats resolves by itself.

pub mod client;
#[cfg(test)]
pub(crate) mod fake;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use prometheus::{IntCounterVec, Opts, Registry};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use client::{HttpError, Request, Url};

/// The queue of each destination when the configuration does not say.
pub const DEFAULT_QUEUE: usize = 1024;

/// How long after `startsAt` an Alertmanager alert resolves unless sent again.
pub const DEFAULT_RESOLVE_AFTER: Duration = Duration::from_secs(15 * 60);

/// How bad a detection is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Warning,
    Critical,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }
}

/// One detection to report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alert {
    /// The detector's name, e.g. `login_failure`; also `alertname` = `crmguard_<detector>`.
    pub detector: String,
    pub severity: Severity,
    /// One line for a human.
    pub summary: String,
    /// The VPN peer's name, when a peer is involved.
    pub peer: Option<String>,
    /// The address the detection is about.
    pub source: Option<IpAddr>,
    /// More labels (e.g. `service`); names that are not valid Prometheus label names are
    /// rewritten for Alertmanager (invalid characters become `_`).
    pub labels: BTreeMap<String, String>,
    pub at: SystemTime,
}

/// How a destination is retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included.
    pub tries: u32,
    /// The wait before the first retry; each further wait doubles.
    pub first_backoff: Duration,
    /// No retry starts after this much time since the first attempt.
    pub max_total: Duration,
    /// The deadline of one attempt (connect, send, read the answer).
    pub timeout: Duration,
}

impl Default for RetryPolicy {
    /// 5 tries, waits of 0.5 s, 1 s, 2 s, 4 s, within 60 s, 5 s per attempt.
    fn default() -> RetryPolicy {
        RetryPolicy {
            tries: 5,
            first_backoff: Duration::from_millis(500),
            max_total: Duration::from_secs(60),
            timeout: Duration::from_secs(5),
        }
    }
}

/// Where alerts go: the `[alerts]` section of the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlertConfig {
    /// The generic webhook, `http://...`.
    pub webhook: Option<String>,
    /// Alertmanager's base URL, e.g. `http://127.0.0.1:9093`.
    pub alertmanager: Option<String>,
    /// The queue of each destination, in alerts.
    pub queue: usize,
    /// The `instance` label and field: this host's name.
    pub instance: String,
    pub resolve_after: Duration,
    pub retry: RetryPolicy,
}

impl AlertConfig {
    /// The defaults for the given destinations, with this host's name as `instance`.
    pub fn new(webhook: Option<String>, alertmanager: Option<String>) -> AlertConfig {
        AlertConfig {
            webhook,
            alertmanager,
            queue: DEFAULT_QUEUE,
            instance: hostname(),
            resolve_after: DEFAULT_RESOLVE_AFTER,
            retry: RetryPolicy::default(),
        }
    }
}

/// This host's name (`/proc/sys/kernel/hostname`), or `localhost` when unreadable.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_owned())
        .ok()
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}

/// `crmguard_alerts_total{sink, result}`.
#[derive(Debug, Clone)]
pub struct AlertMetrics {
    total: IntCounterVec,
}

/// The `sink` label values.
pub const SINKS: [&str; 2] = ["webhook", "alertmanager"];
/// The `result` label values.
pub const RESULTS: [&str; 3] = ["sent", "retried", "dropped"];

impl AlertMetrics {
    /// Creates the counter, every series at zero, and registers it in `registry`.
    pub fn register(registry: &Registry) -> Result<AlertMetrics, prometheus::Error> {
        let total = IntCounterVec::new(
            Opts::new(
                "crmguard_alerts_total",
                "Alerts by destination and result: sent, retried (per retry), dropped (queue full or given up)",
            ),
            &["sink", "result"],
        )?;
        registry.register(Box::new(total.clone()))?;
        for sink in SINKS {
            for result in RESULTS {
                total.with_label_values(&[sink, result]);
            }
        }
        Ok(AlertMetrics { total })
    }

    fn count(&self, sink: &str, result: &str) {
        self.total.with_label_values(&[sink, result]).inc();
    }

    /// The current value of one series (for `crmguard status` and tests).
    pub fn get(&self, sink: &str, result: &str) -> u64 {
        self.total.with_label_values(&[sink, result]).get()
    }
}

/// Which destination a worker serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Webhook,
    Alertmanager,
}

impl Kind {
    fn sink(self) -> &'static str {
        match self {
            Kind::Webhook => "webhook",
            Kind::Alertmanager => "alertmanager",
        }
    }
}

#[derive(Debug)]
struct Queue {
    kind: Kind,
    tx: SyncSender<Arc<Alert>>,
}

/// The sending side, cheap to clone; the workers stop once every clone is dropped and their
/// queues are drained.
#[derive(Debug, Clone)]
pub struct AlertSink {
    queues: Arc<Vec<Queue>>,
    metrics: AlertMetrics,
}

impl AlertSink {
    /// Checks the URLs and starts one worker per configured destination. The handle finishes
    /// when every worker has (after the last [`AlertSink`] clone is dropped). With no
    /// destination configured, [`send`](Self::send) does nothing.
    pub fn start(
        config: &AlertConfig,
        metrics: AlertMetrics,
    ) -> Result<(AlertSink, JoinHandle<()>), HttpError> {
        let mut destinations = Vec::new();
        if let Some(url) = &config.webhook {
            destinations.push((Kind::Webhook, Url::parse(url)?));
        }
        if let Some(url) = &config.alertmanager {
            destinations.push((Kind::Alertmanager, Url::parse(url)?));
        }
        let mut queues = Vec::new();
        let mut workers = Vec::new();
        for (kind, url) in destinations {
            let (tx, rx) = mpsc::sync_channel(config.queue.max(1));
            queues.push(Queue { kind, tx });
            let worker = Worker {
                kind,
                url,
                config: config.clone(),
                metrics: metrics.clone(),
            };
            let spawned = std::thread::Builder::new()
                .name(format!("alerts-{}", kind.sink()))
                .spawn(move || worker.run(&rx))
                .map_err(|e| HttpError::Io(format!("starting the alert worker: {e}")))?;
            workers.push(spawned);
        }
        let joiner = std::thread::Builder::new()
            .name("alerts".to_owned())
            .spawn(move || {
                for worker in workers {
                    if worker.join().is_err() {
                        tracing::error!("an alert worker panicked");
                    }
                }
            })
            .map_err(|e| HttpError::Io(format!("starting the alert worker: {e}")))?;
        Ok((
            AlertSink {
                queues: Arc::new(queues),
                metrics,
            },
            joiner,
        ))
    }

    /// Queues `alert` for every destination without waiting; a full queue drops it (counted).
    pub fn send(&self, alert: Alert) {
        let alert = Arc::new(alert);
        for queue in self.queues.iter() {
            match queue.tx.try_send(Arc::clone(&alert)) {
                Ok(()) => {}
                Err(TrySendError::Full(_)) => {
                    self.metrics.count(queue.kind.sink(), "dropped");
                    tracing::debug!(sink = queue.kind.sink(), "alert queue full, alert dropped");
                }
                Err(TrySendError::Disconnected(_)) => {
                    self.metrics.count(queue.kind.sink(), "dropped");
                }
            }
        }
    }
}

struct Worker {
    kind: Kind,
    url: Url,
    config: AlertConfig,
    metrics: AlertMetrics,
}

impl Worker {
    fn run(&self, rx: &Receiver<Arc<Alert>>) {
        while let Ok(alert) = rx.recv() {
            let (path, body) = match self.kind {
                Kind::Webhook => ("", webhook_json(&alert, &self.config.instance)),
                Kind::Alertmanager => (
                    "/api/v2/alerts",
                    alertmanager_json(&alert, &self.config.instance, self.config.resolve_after),
                ),
            };
            let body = body.to_string().into_bytes();
            let request = Request {
                method: "POST",
                path,
                headers: &[],
                json: Some(&body),
            };
            self.deliver(&request);
        }
    }

    /// Tries `request` under the retry policy and counts the outcome.
    fn deliver(&self, request: &Request<'_>) {
        let sink = self.kind.sink();
        let policy = self.config.retry;
        let started = Instant::now();
        let mut backoff = policy.first_backoff;
        for attempt in 1..=policy.tries.max(1) {
            let error = match client::exchange(&self.url, request, policy.timeout) {
                Ok(response) if (200..300).contains(&response.status) => {
                    self.metrics.count(sink, "sent");
                    return;
                }
                Ok(response) if retryable(response.status) => {
                    format!("HTTP {}: {}", response.status, response.body_excerpt())
                }
                Ok(response) => {
                    tracing::warn!(
                        sink,
                        url = %self.url.display(),
                        status = response.status,
                        body = %response.body_excerpt(),
                        "alert refused, dropped"
                    );
                    self.metrics.count(sink, "dropped");
                    return;
                }
                Err(e) => e.to_string(),
            };
            let out_of_time = started.elapsed() + backoff > policy.max_total;
            if attempt >= policy.tries || out_of_time {
                tracing::warn!(sink, url = %self.url.display(), attempts = attempt, error = %error, "alert not delivered, dropped");
                self.metrics.count(sink, "dropped");
                return;
            }
            tracing::debug!(sink, attempt, error = %error, "alert delivery failed, retrying");
            self.metrics.count(sink, "retried");
            std::thread::sleep(backoff);
            backoff = backoff.saturating_mul(2);
        }
    }
}

/// Whether an answer is worth another try: server errors, request timeout, rate limiting.
fn retryable(status: u16) -> bool {
    status >= 500 || status == 408 || status == 429
}

/// RFC 3339 in UTC, e.g. `2026-05-01T10:00:00.123Z`.
pub fn rfc3339(at: SystemTime) -> String {
    match jiff::Timestamp::try_from(at) {
        Ok(stamp) => stamp.to_string(),
        Err(_) => "1970-01-01T00:00:00Z".to_owned(),
    }
}

/// The webhook's body (schema in the module documentation).
pub fn webhook_json(alert: &Alert, instance: &str) -> Value {
    json!({
        "version": 1,
        "instance": instance,
        "detector": alert.detector,
        "severity": alert.severity.as_str(),
        "summary": alert.summary,
        "peer": alert.peer,
        "source": alert.source.map(|ip| ip.to_string()),
        "labels": alert.labels,
        "at": rfc3339(alert.at),
    })
}

/// A valid Prometheus label name made from `name`: `[a-zA-Z_][a-zA-Z0-9_]*`, not starting
/// with the reserved `__`.
fn label_name(name: &str) -> String {
    let mut out: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    if out.is_empty() || out.starts_with(|c: char| c.is_ascii_digit()) {
        out.insert(0, '_');
    }
    while out.starts_with("__") {
        out.remove(0);
    }
    out
}

/// The Alertmanager v2 body: a one-element array of `postableAlert`.
pub fn alertmanager_json(alert: &Alert, instance: &str, resolve_after: Duration) -> Value {
    let mut labels = BTreeMap::new();
    for (name, value) in &alert.labels {
        labels.insert(label_name(name), value.clone());
    }
    labels.insert(
        "alertname".to_owned(),
        format!("crmguard_{}", label_name(&alert.detector)),
    );
    labels.insert("severity".to_owned(), alert.severity.as_str().to_owned());
    labels.insert("instance".to_owned(), instance.to_owned());
    labels.insert("detector".to_owned(), alert.detector.clone());
    if let Some(peer) = &alert.peer {
        labels.insert("peer".to_owned(), peer.clone());
    }
    if let Some(source) = alert.source {
        labels.insert("source".to_owned(), source.to_string());
    }
    // Alertmanager refuses empty label values.
    labels.retain(|_, value| !value.is_empty());
    let ends = alert.at.checked_add(resolve_after).unwrap_or(alert.at);
    json!([{
        "labels": labels,
        "annotations": {"summary": alert.summary},
        "startsAt": rfc3339(alert.at),
        "endsAt": rfc3339(ends),
    }])
}
