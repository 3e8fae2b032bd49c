//! The daemon's side of detection and response (contract layer 5).
//!
//! Observations reach the main loop through one bounded channel: inspection's failed logins
//! (from a thread that reads its subscription), the log sources' matched lines, the XDP drop
//! samples, the endpoint's handshakes and byte counters and the ACL's refusals outside a role's
//! hours (read each second). The detectors (`crmguard-detect`) turn them into actions, carried
//! out here: bans through the same ban list as `crmguard ban add` (saved, then the kernel),
//! MFA sessions ended (and a peer disabled for a while when configured), alerts to the webhook
//! and Alertmanager, and each of them an audit record and a count in
//! `crmguard_detections_total`. CrowdSec's decisions enter the same ban list under the source
//! `detector:crowdsec`, and crmguard's own bans are pushed to the Local API.
//!
//! Nothing here blocks the data path: the endpoint's threads only `try_send`, and a full channel
//! loses the observation (counted).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use ipnet::IpNet;
use prometheus::{IntCounter, IntCounterVec, Opts, Registry};
use tokio::sync::mpsc;

use crate::alerts::{self, AlertConfig, AlertMetrics, AlertSink, Severity};
use crate::crowdsec::{self, BouncerConfig, BouncerHandle, CrowdsecMetrics, Update, WatcherConfig};
use crate::inspection::InspectionEvents;
use crmguard_core::audit::{Event, EventType, Outcome};
use crmguard_core::config::Config;
use crmguard_detect::{Action, Detector, Detectors, History, Input, Observation};

/// Observations and decisions waiting for the main loop.
pub(crate) const CHANNEL: usize = 8_192;

/// How long a log source waits for room in the channel before it drops a line's failure.
const WAIT_FOR_ROOM: Duration = Duration::from_secs(2);

/// How much later than a ban of crmguard's own a CrowdSec decision for the same network may
/// end and still count as that ban (pushed, then pulled back): the push and the pull take
/// milliseconds; an hour's ban a detector escalated elsewhere is a different ban.
const ECHO_SLACK: Duration = Duration::from_secs(10);

/// What reaches the main loop.
#[derive(Debug)]
pub(crate) enum Incoming {
    Observe(Observation),
    Crowdsec(Update),
}

/// The sending side of the main loop's channel, shared by the threads that observe.
#[derive(Debug, Clone)]
pub(crate) struct Observer {
    tx: mpsc::Sender<Incoming>,
    lost: Arc<AtomicU64>,
}

impl Observer {
    /// Hands `incoming` to the main loop without waiting; a full channel loses it (counted).
    pub(crate) fn send(&self, incoming: Incoming) {
        if self.tx.try_send(incoming).is_err() {
            self.lost.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub(crate) fn observe(&self, at: SystemTime, input: Input) {
        self.send(Incoming::Observe(Observation { at, input }));
    }

    /// Hands an observation to the main loop, waiting up to [`WAIT_FOR_ROOM`] while the
    /// channel is full: for the log sources, whose followers can simply read on later, so a
    /// burst of lines loses none. The wait is bounded because the main loop stops a follower
    /// (and waits for its thread) on a reload and at exit.
    pub(crate) fn observe_waiting(&self, at: SystemTime, input: Input) {
        let mut incoming = Incoming::Observe(Observation { at, input });
        let deadline = std::time::Instant::now() + WAIT_FOR_ROOM;
        loop {
            match self.tx.try_send(incoming) {
                Ok(()) => return,
                Err(mpsc::error::TrySendError::Full(back))
                    if std::time::Instant::now() < deadline =>
                {
                    incoming = back;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(_) => {
                    self.lost.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            }
        }
    }
}

/// The detectors, their state file, and where their actions go.
pub(crate) struct Detection {
    pub(crate) detectors: Detectors,
    history_file: PathBuf,
    history_saved: String,
    detections: IntCounterVec,
    lost_counter: IntCounter,
    lost: Arc<AtomicU64>,
    lost_reported: u64,
    alerts: Option<AlertSink>,
    watcher: Option<std::sync::mpsc::SyncSender<crowdsec::Ban>>,
    bouncer: Option<BouncerHandle>,
    /// The last handshake time and endpoint seen per peer, so each new handshake, and each
    /// move of a roaming peer to another endpoint within its session, is observed once.
    handshakes: BTreeMap<String, (u64, String)>,
    /// Peers disabled by a detector, and when they are enabled again.
    pub(crate) disabled_until: BTreeMap<String, SystemTime>,
    /// Where the log sources started on a reload send their lines.
    pub(crate) observer: Observer,
}

impl Detection {
    /// Loads the escalation history, starts the alert sinks, the CrowdSec clients and the
    /// thread that reads inspection's events; returns the channel's receiving end too.
    pub(crate) fn start(
        config: &Config,
        registry: &Registry,
        inspection: &InspectionEvents,
    ) -> Result<(Detection, Observer, mpsc::Receiver<Incoming>), prometheus::Error> {
        let (tx, rx) = mpsc::channel(CHANNEL);
        let lost = Arc::new(AtomicU64::new(0));
        let observer = Observer {
            tx,
            lost: Arc::clone(&lost),
        };
        let detections = IntCounterVec::new(
            Opts::new(
                "crmguard_detections_total",
                "Detections that led to an action (ban, suspension, alert), by detector",
            ),
            &["detector"],
        )?;
        registry.register(Box::new(detections.clone()))?;
        for detector in Detector::ALL {
            detections.with_label_values(&[detector.name()]);
        }
        let lost_counter = IntCounter::new(
            "crmguard_detection_observations_lost_total",
            "Observations the detectors never saw because their queue was full",
        )?;
        registry.register(Box::new(lost_counter.clone()))?;
        let alert_metrics = AlertMetrics::register(registry)?;
        let crowdsec_metrics = CrowdsecMetrics::register(registry)?;

        let history_file = config.agent.state_dir.join("detection-history.json");
        let history = load_history(&history_file);
        let history_saved = serde_json::to_string(&history).unwrap_or_default();
        let detectors = Detectors::new(&config.detection, history);

        let alerts = start_alerts(config, alert_metrics);
        let (bouncer, watcher) = start_crowdsec(config, crowdsec_metrics, &observer);
        forward_inspection(inspection, observer.clone());
        Ok((
            Detection {
                detectors,
                history_file,
                history_saved,
                detections,
                lost_counter,
                lost,
                lost_reported: 0,
                alerts,
                watcher,
                bouncer,
                handshakes: BTreeMap::new(),
                disabled_until: BTreeMap::new(),
                observer: observer.clone(),
            },
            observer,
            rx,
        ))
    }

    /// The CrowdSec bouncer's state, for `crmguard status`.
    pub(crate) fn crowdsec_status(&self) -> Option<crowdsec::CrowdsecStatus> {
        self.bouncer.as_ref().map(BouncerHandle::status)
    }

    /// Counts a detection.
    pub(crate) fn counted(&self, detector: Detector) {
        self.detections.with_label_values(&[detector.name()]).inc();
    }

    /// Brings the lost-observations counter up to date.
    pub(crate) fn refresh_lost(&mut self) {
        let lost = self.lost.load(Ordering::Relaxed);
        if lost > self.lost_reported {
            self.lost_counter.inc_by(lost - self.lost_reported);
            self.lost_reported = lost;
        }
    }

    /// Sends an alert, when a sink is configured.
    pub(crate) fn alert(
        &self,
        detector: &str,
        severity: Severity,
        summary: String,
        peer: Option<String>,
        source: Option<IpAddr>,
    ) {
        if let Some(sink) = &self.alerts {
            sink.send(alerts::Alert {
                detector: detector.to_owned(),
                severity,
                summary,
                peer,
                source,
                labels: BTreeMap::new(),
                at: SystemTime::now(),
            });
        }
    }

    /// Pushes one of crmguard's own bans to CrowdSec, when a watcher is configured.
    pub(crate) fn share(&self, detector: Detector, source: IpAddr, duration: Duration, why: &str) {
        if let Some(watcher) = &self.watcher {
            let _ = watcher.try_send(crowdsec::Ban {
                detector: detector.name().to_owned(),
                source,
                duration,
                message: why.to_owned(),
                at: SystemTime::now(),
            });
        }
    }

    /// Saves the escalation history when it changed (atomically: a crash leaves the old or the
    /// new file, never half of one).
    pub(crate) fn save_history(&mut self) {
        let text = serde_json::to_string(self.detectors.history()).unwrap_or_default();
        if text == self.history_saved {
            return;
        }
        match crmguard_core::atomic_file::write(&self.history_file, text.as_bytes()) {
            Ok(()) => self.history_saved = text,
            Err(e) => tracing::error!(
                path = %self.history_file.display(),
                error = %e,
                "cannot save the detectors' escalation history (retried at the next ban)"
            ),
        }
    }

    /// The observations of one second of the endpoint's state: new handshakes, peers seen at
    /// a new endpoint, and the peers' byte counters.
    ///
    /// A roaming peer keeps its session: WireGuard follows it to the new endpoint on its next
    /// authenticated packet, without a handshake. Its move is observed like a handshake from
    /// there, so `new_endpoint` sees the network it moved to at once rather than at the next
    /// rekey, up to two minutes later.
    pub(crate) fn observe_vpn(
        &mut self,
        status: &crmguard_vpn::status::VpnStatus,
        observer: &Observer,
    ) {
        let now = SystemTime::now();
        for peer in &status.peers {
            if let (Some(at), Some(endpoint)) = (peer.latest_handshake, peer.endpoint.as_deref()) {
                let now_seen = (at, endpoint.to_owned());
                let seen = self.handshakes.insert(peer.name.clone(), now_seen.clone());
                if seen != Some(now_seen) {
                    if let Ok(endpoint) = endpoint.parse::<SocketAddr>() {
                        observer.observe(
                            now,
                            Input::Handshake {
                                peer: peer.name.clone(),
                                endpoint,
                            },
                        );
                    }
                }
            }
            observer.observe(
                now,
                Input::PeerBytes {
                    peer: peer.name.clone(),
                    rx_total: peer.rx_bytes,
                    tx_total: peer.tx_bytes,
                },
            );
        }
    }

    /// Applies a reload's `[detection]`; `[alerts]` and `[crowdsec]` take effect at the next
    /// start.
    pub(crate) fn update(&mut self, previous: &Config, config: &Config) {
        self.detectors.update(&config.detection);
        if previous.alerts != config.alerts || previous.crowdsec != config.crowdsec {
            tracing::warn!("[alerts] and [crowdsec] changes take effect when the agent restarts");
        }
    }
}

/// The summary of an action, for logs, audit records and alerts.
pub(crate) fn describe(action: &Action) -> String {
    match action {
        Action::Ban {
            net,
            duration,
            offence,
            why,
            ..
        } => format!(
            "banned {net} for {} (offence {offence}): {why}",
            humanize(*duration)
        ),
        Action::Suspend {
            peer,
            why,
            disable_for,
            ..
        } => match disable_for {
            Some(d) => format!(
                "ended the MFA session of {peer} and disabled it for {}: {why}",
                humanize(*d)
            ),
            None => format!("ended the MFA session of {peer}: {why}"),
        },
        Action::Alert { summary, .. } => summary.clone(),
    }
}

fn humanize(d: Duration) -> String {
    let s = d.as_secs();
    if s.is_multiple_of(3600) && s > 0 {
        format!("{}h", s / 3600)
    } else if s.is_multiple_of(60) && s > 0 {
        format!("{}m", s / 60)
    } else {
        format!("{s}s")
    }
}

/// The audit record of an action (bans also get their `ban_added`).
pub(crate) fn anomaly(action: &Action) -> Event {
    let detector = action.detector();
    let mut event = Event::new(
        EventType::Anomaly,
        Outcome::Failure,
        format!("detector:{}", detector.name()),
    )
    .with_detail("detector", detector.name())
    .with_detail("summary", describe(action));
    match action {
        Action::Ban { net, .. } => {
            event = event
                .with_src(net.to_string())
                .with_detail("response", "ban");
        }
        Action::Suspend { peer, .. } => {
            event = event
                .with_detail("peer", peer.clone())
                .with_detail("response", "suspend");
        }
        Action::Alert { peer, source, .. } => {
            if let Some(source) = source {
                event = event.with_src(source.to_string());
            }
            if let Some(peer) = peer {
                event = event.with_detail("peer", peer.clone());
            }
            event = event.with_detail("response", "alert");
        }
    }
    event
}

fn load_history(path: &std::path::Path) -> History {
    match std::fs::read(path) {
        Ok(bytes) => match serde_json::from_slice(&bytes) {
            Ok(history) => history,
            Err(e) => {
                let kept = crmguard_core::atomic_file::keep_aside_noted(path);
                tracing::error!(path = %path.display(), error = %e, kept = %kept, "the detectors' escalation history cannot be read; starting without it");
                History::default()
            }
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => History::default(),
        Err(e) => {
            tracing::error!(path = %path.display(), error = %e, "the detectors' escalation history cannot be read; starting without it");
            History::default()
        }
    }
}

fn start_alerts(config: &Config, metrics: AlertMetrics) -> Option<AlertSink> {
    let (webhook, alertmanager) = (
        config.alerts.webhook.clone(),
        config.alerts.alertmanager.clone(),
    );
    if webhook.is_none() && alertmanager.is_none() {
        return None;
    }
    let mut alert_config = AlertConfig::new(webhook, alertmanager);
    alert_config.queue = usize::try_from(config.alerts.queue).unwrap_or(alerts::DEFAULT_QUEUE);
    match AlertSink::start(&alert_config, metrics) {
        // The workers end when the sink is dropped with the daemon.
        Ok((sink, _workers)) => Some(sink),
        Err(e) => {
            tracing::error!(error = %e, "alerts cannot be delivered");
            None
        }
    }
}

fn start_crowdsec(
    config: &Config,
    metrics: CrowdsecMetrics,
    observer: &Observer,
) -> (
    Option<BouncerHandle>,
    Option<std::sync::mpsc::SyncSender<crowdsec::Ban>>,
) {
    let Some(cs) = &config.crowdsec else {
        return (None, None);
    };
    let bouncer = cs.bouncer_key.as_ref().and_then(|key| {
        let bouncer = crowdsec::Bouncer::new(
            &BouncerConfig {
                url: cs.url.clone(),
                api_key: key.clone(),
                interval: cs.interval,
                timeout: Duration::from_secs(10),
            },
            metrics.clone(),
        );
        let observer = observer.clone();
        match bouncer.map(|b| b.spawn(move |update| observer.send(Incoming::Crowdsec(update)))) {
            Ok(Ok(handle)) => Some(handle),
            Ok(Err(e)) => {
                tracing::error!(error = %e, "cannot start the CrowdSec bouncer");
                None
            }
            Err(e) => {
                tracing::error!(error = %e, "the CrowdSec bouncer's configuration is unusable");
                None
            }
        }
    });
    let watcher = cs.watcher.as_ref().and_then(|(machine_id, password)| {
        let watcher = crowdsec::Watcher::new(
            &WatcherConfig {
                url: cs.url.clone(),
                machine_id: machine_id.clone(),
                password: password.clone(),
                timeout: Duration::from_secs(10),
            },
            metrics.clone(),
        );
        let mut watcher = match watcher {
            Ok(w) => w,
            Err(e) => {
                tracing::error!(error = %e, "the CrowdSec watcher's configuration is unusable");
                return None;
            }
        };
        let (tx, rx) = std::sync::mpsc::sync_channel::<crowdsec::Ban>(1_024);
        let spawned = std::thread::Builder::new()
            .name("crowdsec-watcher".to_owned())
            .spawn(move || {
                for ban in rx {
                    if let Err(e) = watcher.push(&ban) {
                        tracing::warn!(error = %e, source = %ban.source, "cannot push a ban to CrowdSec");
                    }
                }
            });
        match spawned {
            Ok(_) => Some(tx),
            Err(e) => {
                tracing::error!(error = %e, "cannot start the CrowdSec watcher");
                None
            }
        }
    });
    (bouncer, watcher)
}

/// Reads inspection's events on a thread of its own and hands their failed logins to the
/// detectors.
fn forward_inspection(events: &InspectionEvents, observer: Observer) {
    let rx = events.subscribe(4_096);
    let spawned = std::thread::Builder::new()
        .name("detect-inspect".to_owned())
        .spawn(move || {
            for event in rx {
                if event.what == crmguard_inspect::What::AuthFailure {
                    observer.observe(
                        SystemTime::now(),
                        Input::LoginFailure {
                            source: event.client.ip(),
                            peer: Some(event.peer.clone()),
                            protocol: event.protocol.as_str().to_owned(),
                            service: Some(event.service()),
                            user: None,
                        },
                    );
                }
            }
        });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start the thread that reads inspection's events");
    }
}

impl super::Agent {
    /// What arrived on the detection channel.
    pub(super) fn detect(&mut self, incoming: Incoming) {
        match incoming {
            Incoming::Observe(observation) => {
                let actions = self.detection.detectors.observe(observation);
                // One observation makes at most one detection, whatever number of actions
                // answer it (a suspension comes with its alert).
                if let Some(first) = actions.first() {
                    self.detection.counted(first.detector());
                }
                let banned = actions.iter().any(|a| matches!(a, Action::Ban { .. }));
                let mut suspended = BTreeSet::new();
                for action in actions {
                    // A suspension's own alert is not a second anomaly.
                    let record = match &action {
                        Action::Suspend { peer, .. } => {
                            suspended.insert(peer.clone());
                            true
                        }
                        Action::Alert {
                            peer: Some(peer), ..
                        } => !suspended.contains(peer),
                        _ => true,
                    };
                    self.carry_out(action, record);
                }
                if banned {
                    self.detection.save_history();
                }
            }
            Incoming::Crowdsec(update) => self.apply_crowdsec(update),
        }
    }

    fn carry_out(&mut self, action: Action, record: bool) {
        let detector = action.detector();
        if record {
            tracing::warn!(detector = detector.name(), "{}", describe(&action));
            self.audit.record(&anomaly(&action));
        }
        match action {
            Action::Ban {
                net, duration, why, ..
            } => {
                if self.ban_detected(net, duration, detector.name(), &why) {
                    self.detection.alert(
                        detector.name(),
                        Severity::Warning,
                        format!("{net} banned for {}: {why}", humanize(duration)),
                        None,
                        Some(net.addr()),
                    );
                    self.detection.share(detector, net.addr(), duration, &why);
                }
            }
            Action::Suspend {
                peer,
                why,
                disable_for,
                ..
            } => {
                let ended = self.access.suspend(
                    &peer,
                    detector.name(),
                    &self.config,
                    &self.vpn,
                    &mut self.audit,
                );
                tracing::info!(%peer, session_was_open = ended, "peer suspended: {why}");
                if let Some(d) = disable_for {
                    let by = format!("detector:{}", detector.name());
                    let answer = self.peer_set_enabled(&peer, false, &by);
                    if matches!(
                        answer,
                        crate::control::Response::Error { .. }
                            | crate::control::Response::Refused { .. }
                    ) {
                        tracing::warn!(%peer, ?answer, "a detector could not disable the peer");
                    } else {
                        self.detection
                            .disabled_until
                            .insert(peer.clone(), SystemTime::now() + d);
                    }
                }
            }
            Action::Alert {
                peer,
                source,
                summary,
                ..
            } => {
                self.detection
                    .alert(detector.name(), Severity::Warning, summary, peer, source);
            }
        }
    }

    /// Adds a detector's ban to the list, the file and the kernel; true when it is new or
    /// longer than the one in force.
    fn ban_detected(&mut self, net: IpNet, duration: Duration, source: &str, why: &str) -> bool {
        let Some(ban) = self.list_ban(net, duration, source) else {
            return false;
        };
        self.audit.record(
            &Event::new(EventType::BanAdded, Outcome::Success, ban.source.describe())
                .with_src(ban.net.to_string())
                .with_detail("reason", why.to_owned())
                .with_detail("expires", super::describe_expiry(&ban)),
        );
        self.persist_bans(&[ban.net]);
        true
    }

    /// Adds a ban to the list only (no file, no kernel, no record); the ban when it took.
    fn list_ban(
        &mut self,
        net: IpNet,
        duration: Duration,
        source: &str,
    ) -> Option<crmguard_core::bans::Ban> {
        let now = SystemTime::now();
        let (host_addrs, tunnel_nets) = self.guarded_networks();
        // A port scan is seen in single packets, whose source anyone can forge: it never bans
        // the admin networks. Failed logins come from connections that completed a handshake.
        let trusted = if source == crmguard_detect::Detector::PortScan.name() {
            crmguard_core::bans::trusted_networks(&self.config)
        } else {
            Vec::new()
        };
        let guard = crmguard_core::bans::Safeguards {
            allowlist: &self.config.detection.allowlist,
            host_addrs: &host_addrs,
            tunnel_nets: &tunnel_nets,
            trusted: &trusted,
        };
        match self.bans.add_detected(net, duration, source, &guard, now) {
            Ok(Some(added)) => {
                self.metrics.ban_added(added.ban.source.label());
                Some(added.ban)
            }
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(%net, source, error = %e, "a detector's ban was refused");
                self.metrics.ban_refused(source, e.kind());
                None
            }
        }
    }

    /// Saves the ban list and brings the kernel's entries of `nets` to it.
    fn persist_bans(&mut self, nets: &[IpNet]) {
        if nets.is_empty() {
            return;
        }
        if let Err(e) = self.save_bans() {
            tracing::debug!(error = %e, "ban list unsaved; retried");
        }
        if let Err(e) = self.update_kernel(nets) {
            tracing::error!(error = %crmguard_core::error_chain(&e), "the kernel refused ban changes (retried at the next reconciliation)");
        }
    }

    /// CrowdSec's decisions: new bans enter the list as `detector:crowdsec`; what the pull
    /// lifts goes as [`crowdsec::lift`] says. One save, one kernel update and one audit record
    /// per pull, however many decisions it carries.
    fn apply_crowdsec(&mut self, update: Update) {
        let now = SystemTime::now();
        let lifted = crowdsec::lift(&update, &mut self.bans);
        let (removed, shortened) = (lifted.removed.len(), lifted.shortened.len());
        let mut changed: Vec<IpNet> = lifted.removed;
        changed.extend(lifted.shortened);
        for decision in &update.new {
            let Ok(ttl) = decision.until.duration_since(now) else {
                continue;
            };
            if self.covered_locally(decision.net, decision.until, now) {
                continue;
            }
            if let Some(ban) = self.list_ban(decision.net, ttl, "crowdsec") {
                changed.push(ban.net);
            }
        }
        let added = changed.len() - removed - shortened;
        if changed.is_empty() {
            return;
        }
        self.persist_bans(&changed);
        tracing::info!(
            added,
            removed,
            shortened,
            startup = update.startup,
            "CrowdSec decisions applied"
        );
        self.audit.record(
            &Event::new(EventType::BanAdded, Outcome::Success, "detector:crowdsec")
                .with_detail("crowdsec_added", added)
                .with_detail("crowdsec_removed", removed)
                .with_detail("crowdsec_shortened", shortened)
                .with_detail("startup", update.startup),
        );
    }

    /// Whether a ban of crmguard's own (a detector's or an administrator's) already covers a
    /// CrowdSec decision for `net` ending at `until`. It does when it is in force and ends no
    /// earlier than [`ECHO_SLACK`] before the decision: above all the decision that a ban this
    /// agent pushed to the Local API becomes, pulled back a moment later with an end a few
    /// milliseconds after the ban's. Taking it would turn the detector's ban into CrowdSec's
    /// (its source, reason and metrics), and a `cscli decisions delete` would then lift it.
    fn covered_locally(&self, net: IpNet, until: SystemTime, now: SystemTime) -> bool {
        self.bans.get(net).is_some_and(|ban| {
            ban.source.label() != "crowdsec"
                && ban.is_active(now)
                && ban
                    .expires
                    .is_none_or(|expires| expires + ECHO_SLACK >= until)
        })
    }

    /// The once-a-second work: the endpoint's handshakes and counters, the ACL's refusals
    /// outside hours, peers whose detector-imposed disabling ended.
    pub(super) fn detection_tick(&mut self, observer: &Observer) {
        if let Some(status) = self.vpn.status() {
            self.detection.observe_vpn(&status, observer);
        }
        let now = SystemTime::now();
        for (peer, service) in self.metrics.acl().take_outside_hours() {
            observer.observe(
                now,
                Input::AclDenied {
                    peer,
                    service,
                    reason: "outside_hours".to_owned(),
                },
            );
        }
        let due: Vec<String> = self
            .detection
            .disabled_until
            .iter()
            .filter(|(_, until)| **until <= now)
            .map(|(peer, _)| peer.clone())
            .collect();
        for peer in due {
            self.detection.disabled_until.remove(&peer);
            let answer = self.peer_set_enabled(&peer, true, "detector:suspend_disable");
            tracing::info!(%peer, ?answer, "the detector's disabling of the peer ended");
        }
        self.detection.refresh_lost();
    }
}

/// Starts a follower for each `[[detection.log_source]]`: its matched lines become failed
/// logins for the detectors, under the source's name. Its position is kept in
/// `state_dir/logsource-NAME.json`, so a restart neither loses nor repeats a line.
pub(crate) fn start_log_sources(
    config: &Config,
    observer: &Observer,
) -> Vec<crate::logsource::Follower> {
    let mut followers = Vec::new();
    for source in &config.detection.log_sources {
        let origin = match &source.origin {
            crmguard_core::config::LogOrigin::File(path) => {
                crate::logsource::Origin::File(path.clone())
            }
            crmguard_core::config::LogOrigin::Journal(unit) => {
                crate::logsource::Origin::Journal(unit.clone())
            }
        };
        let state = config
            .agent
            .state_dir
            .join(format!("logsource-{}.json", source.name));
        let pattern = source.pattern.clone();
        let name = source.name.clone();
        let observer = observer.clone();
        let started = crate::logsource::Follower::start(&source.name, origin, state, move |line| {
            if let Some(found) = crate::logsource::match_line(&pattern, &line.text) {
                observer.observe_waiting(
                    line.read_at,
                    Input::LoginFailure {
                        source: found.addr,
                        peer: None,
                        protocol: name.clone(),
                        service: None,
                        user: found.user,
                    },
                );
            }
        });
        match started {
            Ok(follower) => followers.push(follower),
            Err(e) => {
                tracing::error!(source = %source.name, error = %e, "cannot follow a log source")
            }
        }
    }
    followers
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An escalation history that cannot be read is moved aside, its bytes kept for the
    /// operator, and the detectors start without it; a missing one is simply empty.
    #[test]
    fn an_unreadable_history_is_kept_aside_and_the_detectors_start_afresh() {
        let dir = tempfile::tempdir().expect("detection test");
        let path = dir.path().join("detection-history.json");
        assert_eq!(load_history(&path), History::default());
        assert_eq!(
            std::fs::read_dir(dir.path())
                .expect("detection test")
                .count(),
            0
        );

        std::fs::write(&path, b"{\"offences\": {\"203.0.113.7\": {\"cou").expect("detection test");
        assert_eq!(load_history(&path), History::default());
        assert!(!path.exists(), "the unreadable file was left in place");
        let aside: Vec<_> = std::fs::read_dir(dir.path())
            .expect("detection test")
            .map(|entry| entry.expect("detection test").path())
            .collect();
        assert_eq!(aside.len(), 1, "{aside:?}");
        assert!(
            aside[0]
                .to_string_lossy()
                .contains("detection-history.json.unreadable-"),
            "{aside:?}"
        );
        assert_eq!(
            std::fs::read(&aside[0]).expect("detection test"),
            b"{\"offences\": {\"203.0.113.7\": {\"cou"
        );
    }
}
