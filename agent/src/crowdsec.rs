//! The CrowdSec Local API (LAPI): crmguard as a bouncer that enforces CrowdSec's ban decisions,
//! and as a watcher that reports its own detections so other bouncers enforce them too.
//!
//! **Bouncer** ([`Bouncer`]): `GET /v1/decisions/stream?startup=true` once (every decision in
//! force), then `?startup=false` every interval (what changed since), with `X-Api-Key`. The
//! answer's `new` and `deleted` lists become [`Decision`]s and [`Deletion`]s for the daemon.
//! Only `ban` decisions of scope `Ip` or `Range` are taken; a `new` decision whose remaining
//! duration is zero or negative has already expired and is skipped. Every failure (the API
//! unreachable, 403 for a bad key, another status, a body that is not the stream's JSON) is
//! logged, counted and kept in the [`CrowdsecStatus`], and produces no update at all: bans in
//! force stay in force until CrowdSec itself deletes them or they expire. A failed startup pull
//! is retried as a startup pull.
//!
//! **Watcher** ([`Watcher`]): `POST /v1/watchers/login` with the machine's id and password for a
//! JWT, renewed a minute before it expires or when the API answers 401; then `POST /v1/alerts`
//! with an alert carrying one ban decision (scenario `crmguard/<detector>`, scope `Ip`).
//! The decision's origin is `crowdsec`, the origin LAPI 1.4 gives decisions of its machines,
//! so that `cscli decisions list` shows it among local decisions.
//!
//! Both are blocking and meant for a worker thread ([`Bouncer::spawn`] runs the poll loop).
//! `http://` only (see [`crate::alerts::client`]); LAPI listens on loopback by default.

pub mod duration;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::IpAddr;
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ipnet::IpNet;
use prometheus::{IntCounterVec, IntGauge, Opts, Registry};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::alerts::client::{self, HttpError, Request, Url};
use crmguard_core::bans::BanStore;

/// The poll interval when the configuration does not say (CrowdSec's bouncers use 10 s).
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);

/// The deadline of one LAPI request.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// A ban CrowdSec decided: the network to drop and until when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// A host (`/32`, `/128`) for scope `Ip`, the network for scope `Range`.
    pub net: IpNet,
    /// The end of the ban: the time of the pull plus the remaining duration LAPI reported.
    pub until: SystemTime,
    /// Who decided: `cscli`, `crowdsec`, `CAPI`, `lists`...
    pub origin: String,
    pub scenario: String,
    /// LAPI's decision id; a [`Deletion`] names it.
    pub id: i64,
}

/// A ban CrowdSec lifted (deleted, or expired).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deletion {
    pub net: IpNet,
    pub origin: String,
    pub scenario: String,
    pub id: i64,
    /// The latest end of the other decisions still in force for `net`, when there are any
    /// (two scenarios, or CAPI and a local one, may ban one address): the deletion then lifts
    /// nothing, and the ban lasts until then. Set by the [`Bouncer`] from what its pulls told
    /// it.
    pub held_until: Option<SystemTime>,
}

/// One successful pull.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Update {
    /// A startup pull: `new` is every ban in force, and a ban from CrowdSec the daemon holds
    /// that is not in it is stale (from before a restart of either side).
    pub startup: bool,
    pub new: Vec<Decision>,
    pub deleted: Vec<Deletion>,
    /// Entries not taken: other types (`captcha`), other scopes (`Country`, `AS`), values that
    /// are not addresses, unreadable or non-positive durations.
    pub skipped: usize,
}

/// What `crmguard status` shows of CrowdSec.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CrowdsecStatus {
    /// The LAPI URL.
    pub url: String,
    /// Whether the last pull got an answer that was read (false before the first pull).
    pub reachable: bool,
    /// The last failure, cleared by a successful pull.
    pub last_error: Option<String>,
    /// Bans from CrowdSec in force now, as the pulls have told them.
    pub decisions: usize,
    /// The time of the last successful pull, seconds since the Unix epoch.
    pub last_pull_unix: Option<u64>,
    /// Failed pulls since start.
    pub errors: u64,
}

/// Why a LAPI call failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CrowdsecError {
    /// The configured URL is unusable.
    Config(String),
    /// No answer: refused, unreachable, timed out, or not HTTP.
    Unreachable(String),
    /// 401 or 403: a wrong bouncer key, machine password or token.
    Auth(u16, String),
    /// Another unexpected status.
    Status(u16, String),
    /// The answer is not the JSON the API documents.
    Malformed(String),
}

impl CrowdsecError {
    /// The `kind` label of `crmguard_crowdsec_errors_total`.
    pub fn kind(&self) -> &'static str {
        match self {
            CrowdsecError::Config(_) => "config",
            CrowdsecError::Unreachable(_) => "unreachable",
            CrowdsecError::Auth(..) => "auth",
            CrowdsecError::Status(..) => "status",
            CrowdsecError::Malformed(_) => "malformed",
        }
    }
}

impl fmt::Display for CrowdsecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CrowdsecError::Config(e) => write!(f, "configuration: {e}"),
            CrowdsecError::Unreachable(e) => write!(f, "CrowdSec LAPI unreachable: {e}"),
            CrowdsecError::Auth(status, body) => {
                write!(
                    f,
                    "CrowdSec LAPI refused the credentials (HTTP {status}): {body}"
                )
            }
            CrowdsecError::Status(status, body) => {
                write!(f, "CrowdSec LAPI answered HTTP {status}: {body}")
            }
            CrowdsecError::Malformed(e) => write!(f, "CrowdSec LAPI answer unreadable: {e}"),
        }
    }
}

impl std::error::Error for CrowdsecError {}

impl From<HttpError> for CrowdsecError {
    fn from(e: HttpError) -> CrowdsecError {
        match e {
            HttpError::Url(e) => CrowdsecError::Config(e),
            HttpError::Io(e) | HttpError::Protocol(e) => CrowdsecError::Unreachable(e),
        }
    }
}

/// `crmguard_crowdsec_decisions` and `crmguard_crowdsec_errors_total{kind}`.
#[derive(Debug, Clone)]
pub struct CrowdsecMetrics {
    decisions: IntGauge,
    errors: IntCounterVec,
}

impl CrowdsecMetrics {
    /// Creates the gauge and the counter (every kind at zero) and registers them.
    pub fn register(registry: &Registry) -> Result<CrowdsecMetrics, prometheus::Error> {
        let decisions = IntGauge::new(
            "crmguard_crowdsec_decisions",
            "CrowdSec ban decisions in force, as pulled from the Local API",
        )?;
        registry.register(Box::new(decisions.clone()))?;
        let errors = IntCounterVec::new(
            Opts::new(
                "crmguard_crowdsec_errors_total",
                "Failed CrowdSec Local API calls, by kind: unreachable, auth, status, malformed, config",
            ),
            &["kind"],
        )?;
        registry.register(Box::new(errors.clone()))?;
        for kind in ["config", "unreachable", "auth", "status", "malformed"] {
            errors.with_label_values(&[kind]);
        }
        Ok(CrowdsecMetrics { decisions, errors })
    }

    fn error(&self, e: &CrowdsecError) {
        self.errors.with_label_values(&[e.kind()]).inc();
    }

    /// The current value of `crmguard_crowdsec_errors_total{kind}`.
    pub fn errors(&self, kind: &str) -> u64 {
        self.errors.with_label_values(&[kind]).get()
    }

    /// The current value of `crmguard_crowdsec_decisions`.
    pub fn decisions(&self) -> i64 {
        self.decisions.get()
    }
}

/// How to reach LAPI as a bouncer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BouncerConfig {
    /// e.g. `http://127.0.0.1:8080`
    pub url: String,
    /// The key `cscli bouncers add NAME` printed.
    pub api_key: String,
    pub interval: Duration,
    pub timeout: Duration,
}

/// One decision as the stream writes it (`models.Decision`).
#[derive(Debug, Deserialize)]
struct RawDecision {
    #[serde(default)]
    duration: Option<String>,
    #[serde(default)]
    id: i64,
    #[serde(default)]
    origin: Option<String>,
    #[serde(default)]
    scenario: Option<String>,
    scope: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
    value: Option<String>,
}

/// `models.DecisionsStreamResponse`: both lists may be `null`.
#[derive(Debug, Deserialize)]
struct RawStream {
    #[serde(default)]
    new: Option<Vec<RawDecision>>,
    #[serde(default)]
    deleted: Option<Vec<RawDecision>>,
}

/// The network a ban decision covers, or `None` when it is not a ban on an address.
fn ban_net(raw: &RawDecision) -> Option<IpNet> {
    if !raw.kind.as_deref()?.eq_ignore_ascii_case("ban") {
        return None;
    }
    let value = raw.value.as_deref()?.trim();
    let scope = raw.scope.as_deref()?;
    if scope.eq_ignore_ascii_case("ip") {
        value.parse::<IpAddr>().ok().map(IpNet::from)
    } else if scope.eq_ignore_ascii_case("range") {
        value.parse::<IpNet>().ok().map(|net| net.trunc())
    } else {
        None
    }
}

/// Reads one stream answer pulled at `now`.
pub fn parse_stream(body: &[u8], startup: bool, now: SystemTime) -> Result<Update, CrowdsecError> {
    let malformed = |e: String| {
        CrowdsecError::Malformed(format!(
            "{e}: {}",
            String::from_utf8_lossy(&body[..body.len().min(200)])
        ))
    };
    // An object, not any JSON serde could map onto the struct (an array would do).
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| malformed(e.to_string()))?;
    if !value.is_object() {
        return Err(malformed("not a JSON object".to_owned()));
    }
    let raw: RawStream = serde_json::from_value(value).map_err(|e| malformed(e.to_string()))?;
    let mut update = Update {
        startup,
        ..Update::default()
    };
    for raw in raw.new.unwrap_or_default() {
        let Some(net) = ban_net(&raw) else {
            update.skipped += 1;
            continue;
        };
        let nanos = raw.duration.as_deref().map(duration::parse);
        let Some(Ok(nanos)) = nanos else {
            update.skipped += 1;
            continue;
        };
        let Ok(nanos) = u64::try_from(nanos) else {
            update.skipped += 1;
            continue;
        };
        if nanos == 0 {
            update.skipped += 1;
            continue;
        }
        let Some(until) = now.checked_add(Duration::from_nanos(nanos)) else {
            update.skipped += 1;
            continue;
        };
        update.new.push(Decision {
            net,
            until,
            origin: raw.origin.unwrap_or_default(),
            scenario: raw.scenario.unwrap_or_default(),
            id: raw.id,
        });
    }
    for raw in raw.deleted.unwrap_or_default() {
        // A deleted decision's duration is negative or what was left; it does not matter.
        let Some(net) = ban_net(&raw) else {
            update.skipped += 1;
            continue;
        };
        update.deleted.push(Deletion {
            net,
            origin: raw.origin.unwrap_or_default(),
            scenario: raw.scenario.unwrap_or_default(),
            id: raw.id,
            held_until: None,
        });
    }
    Ok(update)
}

/// What a pull lifted from the ban list.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Lifted {
    /// CrowdSec's bans removed: deleted, or not in a startup pull's list.
    pub removed: Vec<IpNet>,
    /// CrowdSec's bans whose decision was deleted while others still ban the network: they
    /// now end with the latest of those.
    pub shortened: Vec<IpNet>,
}

/// Lifts from `bans` what `update` says ended, touching only CrowdSec's own bans (source
/// `detector:crowdsec`): a ban of crmguard's own detectors or administrators stays whatever
/// CrowdSec says. On a startup pull, CrowdSec's bans the pull does not list are stale (from
/// before a restart of either side). A deletion whose network other decisions still ban lifts
/// nothing; the ban is brought forward to their latest end if it lasts longer.
pub fn lift(update: &Update, bans: &mut BanStore) -> Lifted {
    let crowdsecs = |bans: &BanStore, net: IpNet| {
        bans.get(net)
            .is_some_and(|b| b.source.label() == "crowdsec")
    };
    let stale: Vec<IpNet> = if update.startup {
        let listed: HashSet<IpNet> = update.new.iter().map(|d| d.net.trunc()).collect();
        bans.iter()
            .filter(|b| b.source.label() == "crowdsec" && !listed.contains(&b.net))
            .map(|b| b.net)
            .collect()
    } else {
        update
            .deleted
            .iter()
            .filter(|d| d.held_until.is_none() && crowdsecs(bans, d.net))
            .map(|d| d.net)
            .collect()
    };
    let mut lifted = Lifted::default();
    for net in stale {
        if bans.remove(net).is_ok() {
            lifted.removed.push(net);
        }
    }
    for deletion in &update.deleted {
        let Some(held) = deletion.held_until else {
            continue;
        };
        if crowdsecs(bans, deletion.net) && bans.shorten(deletion.net, held) {
            lifted.shortened.push(deletion.net);
        }
    }
    lifted
}

/// The pulling side: one request per [`poll`](Self::poll).
#[derive(Debug)]
pub struct Bouncer {
    url: Url,
    api_key: String,
    interval: Duration,
    timeout: Duration,
    /// Whether a startup pull has succeeded.
    started: bool,
    /// Decision id -> the network it bans and its end: the count in force, and whether a
    /// deleted decision's network is still banned by another.
    in_force: HashMap<i64, (IpNet, SystemTime)>,
    status: CrowdsecStatus,
    metrics: CrowdsecMetrics,
}

impl Bouncer {
    pub fn new(config: &BouncerConfig, metrics: CrowdsecMetrics) -> Result<Bouncer, CrowdsecError> {
        let url = Url::parse(&config.url)?;
        if config.api_key.is_empty() || config.api_key.contains(['\r', '\n']) {
            return Err(CrowdsecError::Config(
                "the bouncer key is empty or has a line break".to_owned(),
            ));
        }
        Ok(Bouncer {
            status: CrowdsecStatus {
                url: url.display(),
                ..CrowdsecStatus::default()
            },
            url,
            api_key: config.api_key.clone(),
            interval: config.interval,
            timeout: config.timeout,
            started: false,
            in_force: HashMap::new(),
            metrics,
        })
    }

    /// Pulls once: the startup set until one has succeeded, then the changes. On failure the
    /// error is logged, counted and kept in the status, and nothing changes.
    pub fn poll(&mut self) -> Result<Update, CrowdsecError> {
        let now = SystemTime::now();
        match self.pull(now) {
            Ok(mut update) => {
                self.apply(&mut update, now);
                self.started = true;
                self.status.reachable = true;
                self.status.last_error = None;
                self.status.last_pull_unix =
                    now.duration_since(UNIX_EPOCH).ok().map(|d| d.as_secs());
                Ok(update)
            }
            Err(e) => {
                tracing::warn!(url = %self.url.display(), error = %e, "CrowdSec pull failed; bans in force are kept");
                self.metrics.error(&e);
                self.status.reachable =
                    !matches!(e, CrowdsecError::Unreachable(_) | CrowdsecError::Config(_));
                self.status.last_error = Some(e.to_string());
                self.status.errors += 1;
                self.prune(now);
                Err(e)
            }
        }
    }

    fn pull(&self, now: SystemTime) -> Result<Update, CrowdsecError> {
        let startup = !self.started;
        let path = format!("/v1/decisions/stream?startup={startup}");
        let request = Request {
            method: "GET",
            path: &path,
            headers: &[("X-Api-Key", &self.api_key), ("Accept", "application/json")],
            json: None,
        };
        let response = client::exchange(&self.url, &request, self.timeout)?;
        match response.status {
            200 => parse_stream(&response.body, startup, now),
            401 | 403 => Err(CrowdsecError::Auth(
                response.status,
                response.body_excerpt(),
            )),
            status => Err(CrowdsecError::Status(status, response.body_excerpt())),
        }
    }

    /// Takes `update` into the decisions in force, and marks each deletion whose network
    /// another decision still bans.
    fn apply(&mut self, update: &mut Update, now: SystemTime) {
        if update.startup {
            self.in_force.clear();
        }
        for deletion in &update.deleted {
            self.in_force.remove(&deletion.id);
        }
        for decision in &update.new {
            self.in_force
                .insert(decision.id, (decision.net, decision.until));
        }
        self.prune(now);
        if update.deleted.is_empty() {
            return;
        }
        // One pass over the decisions in force, however many deletions the pull carried.
        let mut held: HashMap<IpNet, SystemTime> =
            update.deleted.iter().map(|d| (d.net, UNIX_EPOCH)).collect();
        for (net, until) in self.in_force.values() {
            if let Some(latest) = held.get_mut(net) {
                *latest = (*latest).max(*until);
            }
        }
        for deletion in &mut update.deleted {
            deletion.held_until = held.get(&deletion.net).copied().filter(|t| *t > now);
        }
    }

    fn prune(&mut self, now: SystemTime) {
        self.in_force.retain(|_, (_, until)| *until > now);
        self.status.decisions = self.in_force.len();
        self.metrics
            .decisions
            .set(i64::try_from(self.in_force.len()).unwrap_or(i64::MAX));
    }

    pub fn status(&self) -> CrowdsecStatus {
        self.status.clone()
    }

    /// Runs the poll loop on a thread of its own: a pull at once, then one per interval;
    /// every successful pull goes to `on_update` (also an empty one, so the daemon sees the
    /// pulls happen). Failures only update the status.
    pub fn spawn(
        mut self,
        mut on_update: impl FnMut(Update) + Send + 'static,
    ) -> std::io::Result<BouncerHandle> {
        let status = Arc::new(Mutex::new(self.status()));
        let (stop, stopped) = mpsc::channel::<()>();
        let shared = Arc::clone(&status);
        let thread = std::thread::Builder::new()
            .name("crowdsec-bouncer".to_owned())
            .spawn(move || loop {
                let pulled = self.poll();
                *shared.lock().unwrap_or_else(PoisonError::into_inner) = self.status();
                if let Ok(update) = pulled {
                    on_update(update);
                }
                match stopped.recv_timeout(self.interval) {
                    Err(RecvTimeoutError::Timeout) => {}
                    Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
                }
            })?;
        Ok(BouncerHandle {
            status,
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

/// The running poll loop; dropping it stops the loop (after the pull in progress).
#[derive(Debug)]
pub struct BouncerHandle {
    status: Arc<Mutex<CrowdsecStatus>>,
    stop: Option<Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl BouncerHandle {
    /// The status after the last pull.
    pub fn status(&self) -> CrowdsecStatus {
        self.status
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl Drop for BouncerHandle {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::error!("the CrowdSec poll loop panicked");
            }
        }
    }
}

/// How to reach LAPI as a watcher (a CrowdSec "machine").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatcherConfig {
    pub url: String,
    /// As in `cscli machines add NAME --password P`.
    pub machine_id: String,
    pub password: String,
    pub timeout: Duration,
}

/// A ban crmguard decided, to be shared through LAPI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ban {
    /// The detector; the scenario is `crmguard/<detector>`.
    pub detector: String,
    pub source: IpAddr,
    pub duration: Duration,
    /// One line for a human (the alert's `message`).
    pub message: String,
    pub at: SystemTime,
}

/// The login answer (`models.WatcherAuthResponse`).
#[derive(Debug, Deserialize)]
struct LoginAnswer {
    token: String,
    expire: String,
}

/// Renew this long before the token's expiry.
const TOKEN_MARGIN: Duration = Duration::from_secs(60);

/// The pushing side; keeps its JWT between pushes.
#[derive(Debug)]
pub struct Watcher {
    url: Url,
    machine_id: String,
    password: String,
    timeout: Duration,
    /// The token and when it expires.
    token: Option<(String, SystemTime)>,
    metrics: CrowdsecMetrics,
}

impl Watcher {
    pub fn new(config: &WatcherConfig, metrics: CrowdsecMetrics) -> Result<Watcher, CrowdsecError> {
        Ok(Watcher {
            url: Url::parse(&config.url)?,
            machine_id: config.machine_id.clone(),
            password: config.password.clone(),
            timeout: config.timeout,
            token: None,
            metrics,
        })
    }

    fn counted<T>(&self, result: Result<T, CrowdsecError>) -> Result<T, CrowdsecError> {
        if let Err(e) = &result {
            tracing::warn!(url = %self.url.display(), error = %e, "CrowdSec watcher call failed");
            self.metrics.error(e);
        }
        result
    }

    /// Logs in, replacing any token.
    pub fn login(&mut self) -> Result<(), CrowdsecError> {
        let result = self.try_login();
        self.counted(result)
    }

    fn try_login(&mut self) -> Result<(), CrowdsecError> {
        self.token = None;
        let body = json!({
            "machine_id": self.machine_id,
            "password": self.password,
            "scenarios": ["crmguard/*"],
        })
        .to_string()
        .into_bytes();
        let request = Request {
            method: "POST",
            path: "/v1/watchers/login",
            headers: &[],
            json: Some(&body),
        };
        let response = client::exchange(&self.url, &request, self.timeout)?;
        match response.status {
            200 => {}
            401 | 403 => {
                return Err(CrowdsecError::Auth(
                    response.status,
                    response.body_excerpt(),
                ))
            }
            status => return Err(CrowdsecError::Status(status, response.body_excerpt())),
        }
        let answer: LoginAnswer = serde_json::from_slice(&response.body)
            .map_err(|e| CrowdsecError::Malformed(format!("login answer: {e}")))?;
        let expire = answer.expire.parse::<jiff::Timestamp>().map_err(|e| {
            CrowdsecError::Malformed(format!("token expiry {:?}: {e}", answer.expire))
        })?;
        let expire = u64::try_from(expire.as_second())
            .ok()
            .and_then(|secs| UNIX_EPOCH.checked_add(Duration::from_secs(secs)))
            .ok_or_else(|| CrowdsecError::Malformed(format!("token expiry {:?}", answer.expire)))?;
        if answer.token.is_empty() || answer.token.contains(['\r', '\n']) {
            return Err(CrowdsecError::Malformed(
                "empty or multi-line token".to_owned(),
            ));
        }
        self.token = Some((answer.token, expire));
        Ok(())
    }

    /// A token valid for at least [`TOKEN_MARGIN`], logging in when needed.
    fn token(&mut self) -> Result<String, CrowdsecError> {
        let fresh = self.token.as_ref().filter(|(_, expire)| {
            SystemTime::now()
                .checked_add(TOKEN_MARGIN)
                .is_some_and(|soon| soon < *expire)
        });
        if let Some((token, _)) = fresh {
            return Ok(token.clone());
        }
        self.try_login()?;
        self.token
            .as_ref()
            .map(|(token, _)| token.clone())
            .ok_or_else(|| CrowdsecError::Malformed("no token after login".to_owned()))
    }

    /// Pushes `ban` as an alert with one ban decision; returns the alert ids LAPI created.
    /// A 401 (token revoked, or LAPI restarted with a new secret) logs in again once.
    pub fn push(&mut self, ban: &Ban) -> Result<Vec<String>, CrowdsecError> {
        let result = self.try_push(ban);
        self.counted(result)
    }

    fn try_push(&mut self, ban: &Ban) -> Result<Vec<String>, CrowdsecError> {
        let body = alert_json(ban).to_string().into_bytes();
        for attempt in 0..2 {
            let token = self.token()?;
            let authorization = format!("Bearer {token}");
            let request = Request {
                method: "POST",
                path: "/v1/alerts",
                headers: &[("Authorization", &authorization)],
                json: Some(&body),
            };
            let response = client::exchange(&self.url, &request, self.timeout)?;
            match response.status {
                200 | 201 => {
                    return serde_json::from_slice::<Vec<String>>(&response.body)
                        .map_err(|e| CrowdsecError::Malformed(format!("alert ids: {e}")));
                }
                401 if attempt == 0 => self.token = None,
                401 | 403 => {
                    return Err(CrowdsecError::Auth(
                        response.status,
                        response.body_excerpt(),
                    ))
                }
                status => return Err(CrowdsecError::Status(status, response.body_excerpt())),
            }
        }
        Err(CrowdsecError::Auth(
            401,
            "refused after a fresh login".to_owned(),
        ))
    }
}

/// The body of `POST /v1/alerts` for `ban` (`models.AddAlertsRequest`: an array of alerts).
pub fn alert_json(ban: &Ban) -> serde_json::Value {
    let scenario = format!("crmguard/{}", ban.detector);
    let ip = ban.source.to_string();
    let at = crate::alerts::rfc3339(ban.at);
    json!([{
        "scenario": scenario,
        "scenario_hash": "",
        "scenario_version": "",
        "message": ban.message,
        "events_count": 1,
        "events": [{
            "timestamp": at,
            "meta": [
                {"key": "source_ip", "value": ip},
                {"key": "service", "value": "crmguard"},
            ],
        }],
        "start_at": at,
        "stop_at": at,
        "capacity": 0,
        "leakspeed": "0",
        "simulated": false,
        "source": {"scope": "Ip", "value": ip, "ip": ip},
        "decisions": [{
            "duration": duration::format_seconds(ban.duration),
            "origin": "crowdsec",
            "scenario": scenario,
            "scope": "Ip",
            "type": "ban",
            "value": ip,
        }],
    }])
}
