//! `crmguard run`: the agent's main loop.
//!
//! It owns the datapath and is the only writer of the kernel's policy and bans.
//! The control socket and the metrics endpoint reach it through a channel;
//! signals stop it (SIGTERM, SIGINT) or reload it (SIGHUP). Stopping leaves the
//! filter attached and pinned unless the operator asked for `--detach-on-exit`.
//!
//! A configuration that does not load or compile at start does not stop it: the
//! last good policy saved in `state_dir` is enforced, or the embedded default
//! (see `start_policy`), and reported until a reload succeeds.
//!
//! Bans: the ban list is loaded from `state_dir/bans.json` before the kernel is
//! touched (a list that cannot be read stops the start once the filter is
//! attached, leaving the bans pinned in the kernel as they are), written to the kernel
//! once the datapath is up, and every change goes to the list, then to the
//! file, then to the kernel. Ended bans are swept every second; the kernel's ban
//! maps are compared with the list on the reconcile tick and repaired.

mod backup;
mod confirm;
mod detection;
mod metrics;
mod monitor;
mod peers;
mod peers_file_cache;
mod portal;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use ipnet::IpNet;

use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;

use crate::access::Access;
use crate::control::{
    self, BanAdded, BanStatus, Command, CounterStatus, DropStatus, InterfaceFailure,
    InterfaceStatus, Request, Response, Status,
};
use crate::metrics::MetricsError;
use crmguard_core::audit::{self, Event, EventType, Outcome};
use crmguard_core::bans::persist::{self, PersistError};
use crmguard_core::bans::{Ban, BanStore, KernelKey, KernelValue, ManualBan, Safeguards};
use crmguard_core::config::last_good::Snapshot;
use crmguard_core::config::{self, Config, ConfigErrors, Mode};
use crmguard_core::explain;
use crmguard_core::interfaces;
use crmguard_core::policy::{self, CompiledPolicy, PolicyError};
use crmguard_datapath::bans::{self as kernel_bans, KernelBans, KernelBansError};
use crmguard_datapath::events::{DropEvent, EventReader, Recent};
use crmguard_datapath::{Datapath, DatapathError, InterfaceRequest};
use metrics::DaemonMetrics;

pub use confirm::{MAX_TIMEOUT as CONFIRM_MAX, MIN_TIMEOUT as CONFIRM_MIN};

/// Where the agent's configuration comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigSource {
    File(PathBuf),
    /// CONTRACT.md section 3: no config file exists.
    Embedded,
}

impl ConfigSource {
    pub fn load(&self) -> Result<Config, ConfigErrors> {
        match self {
            ConfigSource::File(path) => config::load(path),
            ConfigSource::Embedded => Ok(config::default_policy()),
        }
    }

    /// [`ConfigSource::load`], with the files it was read from, to be saved as the last good
    /// policy once it is applied.
    pub fn load_snapshot(&self) -> Result<(Config, Snapshot), ConfigErrors> {
        match self {
            ConfigSource::File(path) => Snapshot::load(path),
            ConfigSource::Embedded => Ok((config::default_policy(), Snapshot::embedded())),
        }
    }

    /// Where the agent keeps its state, attaches and is reached, also when the configuration
    /// does not load: the file's own sections when they are valid, else the defaults.
    pub fn plumbing(&self) -> Option<config::Plumbing> {
        match self {
            ConfigSource::File(path) => config::plumbing(path),
            ConfigSource::Embedded => Some(config::Plumbing::of(&config::default_policy())),
        }
    }

    pub fn describe(&self) -> String {
        match self {
            ConfigSource::File(path) => path.display().to_string(),
            ConfigSource::Embedded => "embedded default policy".to_owned(),
        }
    }
}

/// Which policy the agent enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicySource {
    /// The configuration's (the file's, or the embedded default when there is no file).
    Config,
    /// The configuration could not be loaded at start; the last policy applied is enforced.
    LastGood,
    /// The configuration could not be loaded at start and no last good policy could be used;
    /// the embedded default is enforced.
    Embedded,
}

impl PolicySource {
    /// The name `status` shows.
    pub fn as_str(self) -> &'static str {
        match self {
            PolicySource::Config => "config",
            PolicySource::LastGood => "last-good",
            PolicySource::Embedded => "embedded",
        }
    }
}

/// The policy the agent starts with.
struct Start {
    config: Config,
    policy: CompiledPolicy,
    /// The configuration's files, saved as the last good policy once applied; `None` for a
    /// fallback, which leaves the saved one as it is.
    snapshot: Option<Snapshot>,
    source: PolicySource,
    /// Why the configuration could not be used, for a fallback.
    error: Option<String>,
}

/// Loads and compiles the configuration; when that fails, the last good policy saved in the
/// state directory, else the embedded default. Only an embedded default that does not compile,
/// a build defect, is an error: a bad configuration at start must not leave the host
/// unfiltered.
fn start_policy(source: &ConfigSource) -> Result<Start, DaemonError> {
    // Files that hold a change applied by `reload --confirm` and never confirmed are not
    // trusted: they may lock the administrator out (see `confirm`).
    let distrusted = source
        .plumbing()
        .and_then(|p| confirm::distrusted(&p.agent.state_dir));
    let loaded = match distrusted {
        Some(reason) => Err(reason),
        None => source
            .load_snapshot()
            .map_err(|errors| describe(&DaemonError::Config(errors))),
    };
    let error = match loaded {
        Ok((config, snapshot)) => match compile_tested(&config) {
            Ok(policy) => {
                return Ok(Start {
                    config,
                    policy,
                    snapshot: Some(snapshot),
                    source: PolicySource::Config,
                    error: None,
                })
            }
            Err(e) => describe(&e),
        },
        Err(error) => error,
    };
    let plumbing = source.plumbing();
    let state_dir = match &plumbing {
        Some(p) => p.agent.state_dir.clone(),
        None => {
            let state_dir = config::default_policy().agent.state_dir;
            tracing::error!(
                config = %source.describe(),
                state_dir = %state_dir.display(),
                "the configuration's [agent] section cannot be read; looking for the last good policy in the default state directory, with the default paths"
            );
            state_dir
        }
    };
    match last_good(&state_dir) {
        Some((config, policy, saved_at)) => {
            tracing::error!(
                error = %error,
                config = %source.describe(),
                policy = PolicySource::LastGood.as_str(),
                saved_at = %saved_at,
                "the configuration cannot be used; enforcing the last good policy, as applied before (fix the configuration and run `crmguard reload`)"
            );
            Ok(Start {
                config,
                policy,
                snapshot: None,
                source: PolicySource::LastGood,
                error: Some(error),
            })
        }
        None => {
            let mut config = config::default_policy();
            // The embedded default has no peers, so its WireGuard endpoint would admit nobody;
            // starting one the operator did not configure would only create a key in /etc.
            config.vpn = None;
            if let Some(p) = plumbing {
                config.agent = p.agent;
                config.interfaces = p.interfaces;
                config.metrics = p.metrics;
                config.audit = p.audit;
            }
            let policy = policy::compile(&config)?;
            tracing::error!(
                error = %error,
                config = %source.describe(),
                policy = PolicySource::Embedded.as_str(),
                "the configuration cannot be used and there is no last good policy; enforcing the embedded default policy without its VPN: SSH open, everything else dropped (fix the configuration and run `crmguard reload`)"
            );
            Ok(Start {
                config,
                policy,
                snapshot: None,
                source: PolicySource::Embedded,
                error: Some(error),
            })
        }
    }
}

/// Compiles `config` and runs its own tests (`[[test]]`): a policy that breaks a promise of its
/// configuration is refused like one that does not compile.
fn compile_tested(config: &Config) -> Result<CompiledPolicy, DaemonError> {
    let policy = policy::compile(config)?;
    let failures = explain::check::run(config, &policy);
    if failures.is_empty() {
        Ok(policy)
    } else {
        Err(DaemonError::PolicyTests(failures))
    }
}

/// The last good policy saved in `state_dir`, compiled, and when it was saved; `None`, with
/// the reason logged, when there is none or it cannot be used.
fn last_good(state_dir: &Path) -> Option<(Config, CompiledPolicy, String)> {
    let snapshot = match Snapshot::read(state_dir) {
        Ok(Some(snapshot)) => snapshot,
        Ok(None) => {
            tracing::warn!(state_dir = %state_dir.display(), "no last good policy was saved");
            return None;
        }
        Err(e) => {
            tracing::error!(error = %crmguard_core::error_chain(&e), "the last good policy cannot be read");
            return None;
        }
    };
    let config = match snapshot.config() {
        Ok(config) => config,
        Err(errors) => {
            tracing::error!(error = %errors, "the last good policy no longer validates");
            return None;
        }
    };
    match policy::compile(&config) {
        Ok(policy) => Some((
            config,
            policy,
            snapshot.saved_at().unwrap_or("an unknown time").to_owned(),
        )),
        Err(e) => {
            tracing::error!(error = %crmguard_core::error_chain(&e), "the last good policy no longer compiles");
            None
        }
    }
}

/// Saves the policy just applied as the last good one. A failure is logged: the policy is in
/// force, only the fallback of a later start is older.
fn save_last_good(snapshot: &Snapshot, state_dir: &Path) {
    match snapshot.save(state_dir, SystemTime::now()) {
        Ok(()) => tracing::debug!(state_dir = %state_dir.display(), "last good policy saved"),
        Err(e) => tracing::error!(
            error = %crmguard_core::error_chain(&e),
            "cannot save the applied policy as the last good one; a start with a broken configuration would enforce an older one"
        ),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("invalid configuration")]
    Config(#[from] ConfigErrors),
    #[error("invalid policy")]
    Policy(#[from] PolicyError),
    #[error("the policy breaks {} of its own tests", .0.len())]
    PolicyTests(Vec<explain::check::Failure>),
    #[error(transparent)]
    Datapath(#[from] DatapathError),
    #[error(transparent)]
    Control(#[from] control::ControlError),
    #[error(transparent)]
    Metrics(#[from] MetricsError),
    #[error("cannot list network interfaces")]
    Interfaces(#[source] crmguard_datapath::links::LinksError),
    #[error("cannot install signal handlers")]
    Signals(#[source] std::io::Error),
    #[error(transparent)]
    BansFile(#[from] PersistError),
    #[error("writing the bans into the kernel")]
    KernelBans(#[from] KernelBansError),
    #[error("opening the XDP program's drop events")]
    EventMaps(#[from] crmguard_datapath::MapsError),
    #[error("a change applied by `crmguard reload --confirm` waits for `crmguard confirm` until {deadline}; confirm it, or let it roll back, before changing the policy again")]
    ChangePending { deadline: String },
    #[error(transparent)]
    DatapathMetrics(#[from] crmguard_datapath::metrics::DatapathMetricsError),
}

/// Options of `crmguard run`.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub source: ConfigSource,
    pub detach_on_exit: bool,
}

/// Under systemd (`Type=notify`), says the agent is ready: its filter is attached and
/// enforces. Until then `network-pre.target`, which the unit comes before, is not reached, so
/// the network is configured only once the host is filtered. Without `NOTIFY_SOCKET` (not
/// started by systemd) nothing is sent.
fn tell_service_manager_ready(datapath: &Datapath) {
    let names: Vec<&str> = datapath
        .attachments()
        .iter()
        .map(|a| a.name.as_str())
        .collect();
    let status = format!(
        "enforcing policy generation {} on {}",
        datapath.generation(),
        if names.is_empty() {
            "no interface".to_owned()
        } else {
            names.join(", ")
        }
    );
    let ready = [
        sd_notify::NotifyState::Ready,
        sd_notify::NotifyState::Status(&status),
    ];
    if let Err(e) = sd_notify::notify(&ready) {
        tracing::warn!(error = %e, "cannot tell systemd that the agent is ready (NOTIFY_SOCKET)");
    }
}

/// The interfaces to attach to: the configured ones (each required), or the ones
/// [`crmguard_core::interfaces::select`] chooses by role among the links of the agent's own
/// namespace when none is configured, with the reason of each. `log` says which links were
/// chosen and which left out, and why (at the start; the periodic re-check is quiet).
fn interface_requests(
    config: &Config,
    log: bool,
) -> Result<(Vec<InterfaceRequest>, BTreeMap<String, String>), DaemonError> {
    if !config.interfaces.is_empty() {
        let requests = config
            .interfaces
            .iter()
            .map(|i| InterfaceRequest {
                name: i.name.clone(),
                mode: i.xdp_mode,
                required: true,
            })
            .collect();
        return Ok((requests, BTreeMap::new()));
    }
    let namespace = crmguard_datapath::links::read().map_err(DaemonError::Interfaces)?;
    let verdicts = interfaces::select(
        &namespace.links,
        &namespace.default_routes,
        &crmguard_vpn::interface_name(),
    );
    let mut requests = Vec::new();
    let mut reasons = BTreeMap::new();
    for verdict in verdicts {
        match verdict.outcome {
            Ok(chosen) => {
                if log {
                    tracing::info!(interface = %verdict.name, reason = %chosen, "no [[interface]] listed: filtering this interface");
                }
                reasons.insert(verdict.name.clone(), chosen.to_string());
                requests.push(InterfaceRequest {
                    name: verdict.name,
                    mode: config::XdpMode::Auto,
                    required: false,
                });
            }
            Err(left_out) if log => {
                tracing::info!(interface = %verdict.name, reason = %left_out, "no [[interface]] listed: not filtering this interface");
            }
            Err(_) => {}
        }
    }
    Ok((requests, reasons))
}

/// The default name of the VPN's TUN device, never filtered by XDP (see
/// [`crmguard_vpn::interface_name`]).
pub const VPN_INTERFACE: &str = crmguard_vpn::DEFAULT_INTERFACE;

struct Agent {
    source: ConfigSource,
    config: Config,
    policy: CompiledPolicy,
    datapath: Datapath,
    /// The datapath's metrics that follow the filtered interfaces.
    datapath_metrics: crmguard_datapath::metrics::DatapathMetrics,
    /// Why each interface the agent chose by itself was chosen.
    chosen_because: BTreeMap<String, String>,
    /// The daemon's metrics, and the VPN's and the ACL's, which it feeds.
    metrics: DaemonMetrics,
    bans: BanStore,
    kernel_bans: KernelBans,
    /// `state_dir/bans.json`.
    bans_path: PathBuf,
    /// Whether the last save of the ban list failed; the sweep retries until it succeeds.
    bans_unsaved: bool,
    /// Sampled drops from the XDP program.
    recent: Recent,
    /// The audit log.
    audit: audit::Sink,
    /// What the last comparison of kernel and policy found.
    divergence: u64,
    /// When a policy was last swapped in; the previous one is released a
    /// while after.
    last_swap: Instant,
    /// The WireGuard endpoint.
    vpn: crmguard_vpn::Supervisor,
    /// Inspection's flow table (shared with the endpoint's threads).
    inspector: std::sync::Arc<crmguard_inspect::Inspector>,
    /// Inspection's events: folded audit records and the subscribers'.
    inspection_events: std::sync::Arc<crate::inspection::InspectionEvents>,
    /// The detectors and where their actions go.
    detection: detection::Detection,
    /// The log sources' followers (threads); stopped with the agent.
    log_followers: Vec<crate::logsource::Follower>,
    /// The peers' MFA sessions and lifecycle.
    access: Access,
    /// The MFA portal's listeners.
    portal: portal::PortalHost,
    /// Which policy is enforced: the configuration's, or a fallback.
    policy_source: PolicySource,
    /// Why the configuration could not be used, while a fallback is enforced.
    fallback_error: Option<String>,
    /// When an administrator last enabled each peer (`state_dir/peers-enabled.json`), which
    /// counts as activity for `vpn.disable_inactive_after`.
    enabled_at: BTreeMap<String, u64>,
    /// The peers file as the inactivity check last read it.
    peers_file: peers_file_cache::PeersFileCache,
    /// A change applied by `reload --confirm`, rolled back unless confirmed.
    pending: Option<confirm::Pending>,
    /// When the last unconfirmed change was rolled back, RFC 3339.
    last_rollback: Option<String>,
    /// Sampled drops by reason and service (see [`crate::tally`]).
    tally: crate::tally::DropTally,
    /// Scheduled backups: when the next is due, and their metrics.
    backup: crate::backup::schedule::Schedule,
}

impl Agent {
    fn status(&self) -> Result<Status, DatapathError> {
        let counters = self
            .datapath
            .counters()?
            .into_iter()
            .filter(|c| c.stats.packets != 0)
            .map(|c| CounterStatus {
                interface: c.interface,
                action: c.action.name().to_owned(),
                reason: c.reason.name().to_owned(),
                packets: c.stats.packets,
                bytes: c.stats.bytes,
            })
            .collect();
        Ok(Status {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            config: self.source.describe(),
            mode: match self.config.agent.mode {
                Mode::Enforce => "enforce".to_owned(),
                Mode::Monitor => "monitor".to_owned(),
            },
            generation: self.datapath.generation(),
            interfaces: self
                .datapath
                .attachments()
                .iter()
                .map(|a| InterfaceStatus {
                    name: a.name.clone(),
                    ifindex: a.ifindex,
                    mode: a.mode.name().to_owned(),
                    adopted: a.adopted,
                    egress: a.egress.map(|m| m.name().to_owned()),
                    chosen_because: self.chosen_because.get(&a.name).cloned(),
                })
                .collect(),
            interfaces_failed: self
                .datapath
                .failures()
                .iter()
                .map(|f| InterfaceFailure {
                    name: f.name.clone(),
                    error: f.error.clone(),
                })
                .collect(),
            counters,
            bans: self.bans.iter().map(BanStatus::from).collect(),
            policy_divergence_entries: self.divergence,
            drop_events_total: self.recent.total(),
            recent_drops: self.recent.events().map(|e| self.drop_status(e)).collect(),
            audit_events: self
                .audit
                .events()
                .iter()
                .map(|(kind, n)| ((*kind).to_owned(), *n))
                .collect(),
            audit_write_errors: self.audit.errors(),
            vpn: self.vpn.status(),
            crowdsec: self.detection.crowdsec_status(),
            inspection: self.vpn.status().map(|_| {
                crate::inspection::InspectionStatus::from(
                    self.inspector
                        .status(&crmguard_inspect::Policy::new(&self.config.inspection)),
                )
            }),
            mfa_attempts: self
                .access
                .attempts()
                .iter()
                .map(|(result, n)| ((*result).to_owned(), *n))
                .collect(),
            mfa_sessions: self.mfa_sessions(),
            key_expiry: self.key_expiry(),
            portal: self.portal.status(),
            policy_source: self.policy_source.as_str().to_owned(),
            policy_error: self.fallback_error.clone(),
            pending_change: self.pending_status(),
            last_rollback: self.last_rollback.clone(),
            drop_tally: self.tallying().then(|| self.tally.status()),
        })
    }

    /// Attaches the filter to the interfaces that should have it and do not: a listed
    /// `[[interface]]` that appeared, or was deleted and created again, since the start; with
    /// none listed, those that took the uplink's role since (the namespace's links are judged
    /// again). Those that failed before are tried again. A filtered interface keeps its filter
    /// even when it loses the role or leaves the list.
    fn recheck_interfaces(&mut self) {
        let (requests, reasons) = match interface_requests(&self.config, false) {
            Ok(found) => found,
            Err(e) => {
                tracing::error!(error = %crmguard_core::error_chain(&e), "cannot list the network interfaces; new interfaces are not filtered");
                return;
            }
        };
        let before = (
            self.datapath.attachments().to_vec(),
            self.datapath.failures().to_vec(),
        );
        let attached = self.datapath.attach_more(&requests);
        let changed = self.datapath.attachments() != before.0.as_slice()
            || self.datapath.failures() != before.1.as_slice();
        for name in attached {
            match reasons.get(&name) {
                Some(reason) => {
                    tracing::info!(interface = %name, %reason, "a new interface took the uplink's role: filtering it");
                    self.chosen_because.insert(name, reason.clone());
                }
                None => {
                    tracing::info!(interface = %name, "a listed interface appeared: filtering it")
                }
            }
        }
        if changed {
            self.datapath_metrics
                .track(self.datapath.attachments(), self.datapath.failures());
        }
    }

    fn drop_status(&self, event: &DropEvent) -> DropStatus {
        let interface = self
            .datapath
            .attachments()
            .iter()
            .find(|a| a.slot == event.ifslot)
            .map_or_else(|| format!("slot {}", event.ifslot), |a| a.name.clone());
        DropStatus {
            interface,
            action: event.action.clone(),
            reason: event.reason.clone(),
            src: event.src.to_string(),
            dst: event.dst.to_string(),
            proto: event.proto,
            sport: event.sport,
            dport: event.dport,
        }
    }

    /// Re-reads the config and applies it. A config that does not load or
    /// compile is refused and the running policy stays in force, and so is any
    /// reload while a `reload --confirm` change waits for its confirmation.
    fn reload(&mut self) -> Result<u32, DaemonError> {
        self.refuse_while_pending()?;
        let (config, snapshot, policy) = self.load_candidate()?;
        let generation = self.install(config, policy)?;
        self.config_in_force();
        save_last_good(&snapshot, &self.config.agent.state_dir);
        confirm::clear_mark(&self.config.agent.state_dir);
        Ok(generation)
    }

    /// Loads, compiles and tests the configuration, touching nothing.
    fn load_candidate(&self) -> Result<(Config, Snapshot, CompiledPolicy), DaemonError> {
        let (config, snapshot) = self.source.load_snapshot()?;
        let policy = compile_tested(&config)?;
        Ok((config, snapshot, policy))
    }

    /// Notes that the configuration's policy is in force, replacing a fallback.
    fn config_in_force(&mut self) {
        if self.policy_source != PolicySource::Config {
            tracing::info!(
                previous = self.policy_source.as_str(),
                "the configuration loads again; its policy replaces the fallback"
            );
            self.policy_source = PolicySource::Config;
            self.fallback_error = None;
        }
        self.metrics.fallback(self.policy_source);
    }

    /// Swaps `policy` into the kernel in one step (the datapath's atomic swap, so that no
    /// packet meets a half-written policy), then brings the VPN, the access rules, the portal
    /// and the detectors up to `config`. Returns the new generation; when the swap fails,
    /// nothing changed.
    fn install(&mut self, config: Config, policy: CompiledPolicy) -> Result<u32, DaemonError> {
        // Handshakes and session changes since the last tick are recorded before peers
        // that the new configuration drops are cut.
        self.access_tick();
        let generation = self.datapath.apply(&policy)?;
        self.last_swap = Instant::now();
        let listed_before = self.config.interfaces.clone();
        let previous = std::mem::replace(&mut self.config, config);
        if self.config.interfaces != listed_before {
            // Interfaces the new list adds are filtered now; those it leaves out keep their
            // filter until the agent restarts (a reload never opens an interface).
            tracing::info!("the interface list changed: filtering the interfaces it adds");
            self.recheck_interfaces();
        }
        self.policy = policy;
        self.audit.set_rotation(self.config.audit.rotation);
        let connected = self.connected_peers();
        self.vpn.apply(&self.config, true);
        self.access.reload(&self.config);
        self.cut_departed(&previous, &connected);
        self.portal.apply(&self.config);
        self.detection.update(&previous, &self.config);
        if previous.detection.log_sources != self.config.detection.log_sources {
            for follower in std::mem::take(&mut self.log_followers) {
                follower.stop();
            }
            self.log_followers =
                detection::start_log_sources(&self.config, &self.detection.observer);
        }
        Ok(generation)
    }

    fn handle(&mut self, request: Request) -> Response {
        match request {
            Request::Status => match self.status() {
                Ok(status) => Response::Status(Box::new(status)),
                Err(e) => Response::Error {
                    message: crmguard_core::error_chain(&e),
                },
            },
            Request::BanAdd {
                net,
                ttl_secs,
                reason,
                by,
                force,
            } => self.ban_add(ManualBan {
                net,
                ttl: ttl_secs.map(Duration::from_secs),
                reason,
                by,
                force,
            }),
            Request::BanList => Response::Bans {
                bans: self.bans.iter().map(BanStatus::from).collect(),
            },
            Request::BanRemove { net } => self.ban_remove(net),
            Request::PeerAdd {
                name,
                role,
                public_key,
                by,
            } => self.peer_add(&name, &role, &public_key, &by),
            Request::PeerRemove { name, by } => self.peer_remove(&name, &by),
            Request::PeerSetEnabled { name, enabled, by } => {
                self.peer_set_enabled(&name, enabled, &by)
            }
            Request::PeerList => Response::Peers {
                peers: self.peer_list(),
            },
            Request::MfaEnrolled { name, by } => {
                if self.config.peer(&name).is_none() {
                    return Response::Refused {
                        message: format!("no peer named `{name}`"),
                    };
                }
                self.access.enrolled(&name, &by, &self.vpn, &mut self.audit);
                Response::Enrolled
            }
            Request::BackupCreated {
                file,
                files,
                size,
                signer,
                by,
            } => {
                self.audit.record(&crate::backup::backup_created(
                    &by, &file, files, size, &signer,
                ));
                Response::Recorded
            }
            Request::Explain { query } => self.explain(&query),
            Request::ReloadConfirm { timeout_secs, by } => {
                self.reload_confirm(Duration::from_secs(timeout_secs), &by)
            }
            Request::Confirm { by } => self.confirm(&by),
            Request::Reload if self.pending.is_some() => {
                let message = self
                    .refuse_while_pending()
                    .err()
                    .map(|e| e.to_string())
                    .unwrap_or_default();
                tracing::warn!(error = %message, "reload refused");
                Response::Refused { message }
            }
            Request::Reload => match self.reload() {
                Ok(generation) => {
                    tracing::info!(generation, "policy reloaded");
                    self.audit.record(
                        &Event::new(EventType::ConfigReload, Outcome::Success, "system")
                            .with_detail("config", self.source.describe())
                            .with_detail("generation", generation),
                    );
                    Response::Reloaded { generation }
                }
                Err(e) => {
                    let message = describe(&e);
                    tracing::error!(error = %message, "reload refused; the running policy stays in force");
                    self.audit.record(
                        &Event::new(EventType::ConfigRejected, Outcome::Failure, "system")
                            .with_detail("config", self.source.describe())
                            .with_detail("error", message.clone()),
                    );
                    Response::Error { message }
                }
            },
        }
    }
}

impl Agent {
    /// `crmguard explain`, from the policy in force, the bans in force and the peers' MFA
    /// sessions as they stand.
    fn explain(&self, query: &explain::Query) -> Response {
        let now = SystemTime::now();
        let unix_now = crmguard_core::time::unix_seconds(now);
        let sessions = |peer: &str| self.access.sessions().is_open(peer, unix_now);
        let ctx = explain::Context {
            config: &self.config,
            policy: &self.policy,
            bans: &self.bans,
            portal_listening: self.portal.is_listening(),
            sessions: Some(&sessions),
        };
        match explain::answer(&ctx, query, now) {
            Ok(explanation) => Response::Explained {
                explanation,
                generation: self.datapath.generation(),
            },
            Err(e) => Response::Refused {
                message: e.to_string(),
            },
        }
    }

    /// `crmguard ban add`: the list, then the file, then the kernel. A ban that cannot be
    /// saved or written to the kernel stays in the list, is retried, and the answer says so.
    /// The host's own addresses and the tunnel's networks, which bans must not cover.
    fn guarded_networks(&self) -> (Vec<IpAddr>, Vec<IpNet>) {
        let tunnel_nets: Vec<IpNet> = self
            .config
            .vpn
            .iter()
            .flat_map(|vpn| {
                [
                    Some(IpNet::V4(vpn.address.trunc())),
                    vpn.address6.map(|a| IpNet::V6(a.trunc())),
                ]
            })
            .flatten()
            .collect();
        (host_addresses(), tunnel_nets)
    }

    fn ban_add(&mut self, request: ManualBan) -> Response {
        let now = SystemTime::now();
        let (host_addrs, tunnel_nets) = self.guarded_networks();
        let guard = Safeguards {
            allowlist: &self.config.detection.allowlist,
            host_addrs: &host_addrs,
            tunnel_nets: &tunnel_nets,
            trusted: &[],
        };
        let added = match self.bans.add_manual(request, &guard, now) {
            Ok(added) => added,
            Err(e) => {
                return Response::Refused {
                    message: format!("ban refused: {e}"),
                }
            }
        };
        let ban = &added.ban;
        self.metrics.ban_added(ban.source.label());
        tracing::info!(
            source = %ban.source.describe(),
            reason = %ban.reason,
            expires = %describe_expiry(ban),
            replaced = added.replaced.is_some(),
            "ban added"
        );
        tracing::debug!(net = %ban.net, "ban added");
        self.audit.record(
            &Event::new(EventType::BanAdded, Outcome::Success, ban.source.describe())
                .with_src(ban.net.to_string())
                .with_detail("reason", ban.reason.clone())
                .with_detail("expires", describe_expiry(ban)),
        );
        for warning in &added.warnings {
            tracing::warn!(source = %ban.source.describe(), "a manual ban overlaps [detection] allowlist");
            tracing::debug!(%warning, "ban warning");
        }
        let mut errors = Vec::new();
        if let Err(e) = self.save_bans() {
            errors.push(unsaved_message(&e));
        }
        if let Err(e) = self.update_kernel(&[ban.net]) {
            errors.push(format!(
                "the ban is in the agent's list, but the kernel refused it and it is not enforced yet (retried every {}s): {}",
                RECONCILE_EVERY.as_secs(),
                crmguard_core::error_chain(&e)
            ));
        }
        Response::Banned(BanAdded {
            ban: BanStatus::from(ban),
            replaced: added.replaced.as_ref().map(BanStatus::from),
            warnings: added.warnings.iter().map(ToString::to_string).collect(),
            error: (!errors.is_empty()).then(|| errors.join("\n")),
        })
    }

    /// `crmguard ban remove`: the list, then the file, then the kernel.
    fn ban_remove(&mut self, net: IpNet) -> Response {
        let ban = match self.bans.remove(net) {
            Ok(ban) => ban,
            Err(e) => {
                return Response::Error {
                    message: e.to_string(),
                }
            }
        };
        tracing::info!(source = %ban.source.describe(), reason = %ban.reason, "ban removed");
        tracing::debug!(net = %ban.net, "ban removed");
        self.audit.record(
            &Event::new(
                EventType::BanRemoved,
                Outcome::Success,
                ban.source.describe(),
            )
            .with_src(ban.net.to_string())
            .with_detail("reason", ban.reason.clone()),
        );
        let mut errors = Vec::new();
        if let Err(e) = self.save_bans() {
            errors.push(unsaved_message(&e));
        }
        if let Err(e) = self.update_kernel(&[ban.net]) {
            errors.push(format!(
                "the ban is off the agent's list, but the kernel still holds it (retried every {}s): {}",
                RECONCILE_EVERY.as_secs(),
                crmguard_core::error_chain(&e)
            ));
        }
        Response::BanRemoved {
            ban: BanStatus::from(&ban),
            error: (!errors.is_empty()).then(|| errors.join("\n")),
        }
    }

    /// Brings the kernel entries that depend on the bans of `nets` up to date with the list.
    fn update_kernel(&mut self, nets: &[IpNet]) -> Result<(), KernelBansError> {
        let now_kernel = kernel_bans::kernel_now()?;
        let now_wall = SystemTime::now();
        let changes: BTreeMap<KernelKey, Option<KernelValue>> = nets
            .iter()
            .flat_map(|net| self.bans.kernel_changes(*net, now_wall, now_kernel))
            .collect();
        self.kernel_bans.update(changes)
    }

    /// Writes the ban list to disk. A failure is logged once, when saving starts to fail, and
    /// the recovery once, when it works again.
    fn save_bans(&mut self) -> Result<(), PersistError> {
        match persist::save(&self.bans_path, &self.bans) {
            Ok(()) => {
                if self.bans_unsaved {
                    tracing::info!(path = %self.bans_path.display(), "the ban list is saved again");
                }
                self.bans_unsaved = false;
                Ok(())
            }
            Err(e) => {
                if !self.bans_unsaved {
                    tracing::error!(
                        error = %crmguard_core::error_chain(&e),
                        "cannot save the ban list; bans added now are lost if the agent restarts before saving works again (retried every second)"
                    );
                }
                self.bans_unsaved = true;
                Err(e)
            }
        }
    }

    /// Removes the bans that have ended from the list, the kernel and the file. The kernel
    /// already ignores them; removing the entries keeps the maps small.
    fn sweep_bans(&mut self) {
        let ended = self.bans.expire(SystemTime::now());
        if ended.is_empty() {
            if self.bans_unsaved {
                // A failure is logged by save_bans.
                let _ = self.save_bans();
            }
            return;
        }
        for ban in &ended {
            tracing::info!(source = %ban.source.describe(), reason = %ban.reason, "ban expired");
            tracing::debug!(net = %ban.net, "ban expired");
            self.audit.record(
                &Event::new(EventType::BanExpired, Outcome::Info, "system")
                    .with_src(ban.net.to_string())
                    .with_detail("reason", ban.reason.clone()),
            );
        }
        let nets: Vec<IpNet> = ended.iter().map(|ban| ban.net).collect();
        if let Err(e) = self.update_kernel(&nets) {
            tracing::error!(error = %crmguard_core::error_chain(&e), "removing ended bans from the kernel failed; the kernel ignores them anyway, and the reconcile retries");
        }
        // A failure is logged by save_bans and retried by the next sweep.
        let _ = self.save_bans();
    }

    /// Makes the kernel's ban maps equal to the list; returns how many entries differed.
    fn reconcile_bans(&mut self) -> Result<u64, KernelBansError> {
        self.sweep_bans();
        let now_kernel = kernel_bans::kernel_now()?;
        self.kernel_bans
            .sync(&self.bans, SystemTime::now(), now_kernel)
    }
}

/// `2025-03-01T12:00:00.000000Z`, or `never` for a ban until removed.
fn describe_expiry(ban: &Ban) -> String {
    ban.expires
        .map_or_else(|| "never".to_owned(), crmguard_core::time::format_time)
}

fn unsaved_message(error: &PersistError) -> String {
    format!(
        "the ban is in force, but the ban list could not be saved, so it would be lost if the agent restarted now (retried every second): {}",
        crmguard_core::error_chain(error)
    )
}

/// The addresses of this host's interfaces, loopback excepted: a ban that contains one needs
/// `--force`. When they cannot be listed the check is skipped with a warning rather than
/// refusing every ban.
fn host_addresses() -> Vec<IpAddr> {
    let addrs = match nix::ifaddrs::getifaddrs() {
        Ok(addrs) => addrs,
        Err(e) => {
            tracing::warn!(error = %e, "cannot list this host's addresses; bans are not checked against them");
            return Vec::new();
        }
    };
    let mut out: Vec<IpAddr> = addrs
        .filter_map(|ifaddr| {
            let address = ifaddr.address?;
            if let Some(v4) = address.as_sockaddr_in() {
                return Some(IpAddr::V4(v4.ip()));
            }
            address.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip()))
        })
        .filter(|addr| !addr.is_loopback())
        .collect();
    out.sort();
    out.dedup();
    out
}

/// Renders a daemon error with its sources, and config errors one per line.
pub fn describe(error: &DaemonError) -> String {
    match error {
        DaemonError::Config(errors) => format!("invalid configuration:\n{errors}"),
        DaemonError::PolicyTests(failures) => {
            let lines: Vec<String> = failures.iter().map(ToString::to_string).collect();
            format!("{error}:\n{}", lines.join("\n"))
        }
        other => crmguard_core::error_chain(other),
    }
}

/// How often the kernel's maps are compared with the desired policy and bans.
const RECONCILE_EVERY: Duration = Duration::from_secs(5);

/// How often sampled drop events are taken from the ring buffer. It holds
/// thousands of them and the program samples at most a few hundred a second
/// per CPU, so nothing is lost in between.
const DRAIN_EVENTS_EVERY: Duration = Duration::from_millis(200);

/// How long after a swap the previous policy's large maps are released.
const RELEASE_AFTER: Duration = Duration::from_secs(2);

/// How often ended bans are removed.
const SWEEP_BANS_EVERY: Duration = Duration::from_secs(1);

/// Runs the agent until SIGTERM or SIGINT.
pub async fn run(options: RunOptions) -> Result<(), DaemonError> {
    // Connections are bounded per listener; the rest of the descriptors (maps, sockets, the
    // audit log) need room too, so the agent takes every descriptor the service manager allows.
    match crate::listen::raise_nofile_limit() {
        Ok((soft, hard)) => {
            tracing::info!(soft_before = soft, limit = hard, "open files limit")
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot raise the open files limit; keeping the one inherited")
        }
    }
    let Start {
        config,
        policy,
        snapshot,
        source: policy_source,
        error: fallback_error,
    } = start_policy(&options.source)?;
    if options.source == ConfigSource::Embedded {
        tracing::warn!("no configuration file; running the embedded default policy (SSH and WireGuard open, everything else dropped)");
    }
    // Read before the kernel is touched, and not written to the kernel when it cannot be read:
    // going on without it would lift every ban in it. The filter is attached all the same,
    // with the bans already pinned in the kernel, before the start stops.
    let bans_path = config.agent.state_dir.join(persist::FILE_NAME);
    let loaded_bans = persist::load(&bans_path, SystemTime::now());
    // Bound first: a second agent must stop before it touches the kernel.
    let control_listener = control::bind(&config.agent.control_socket)?;
    let (requests, chosen_because) = interface_requests(&config, true)?;
    // One registry; each part registers the metrics it owns. Scrapes ask the main loop to
    // refresh the daemon's metrics over a channel of their own, never the admin commands'.
    let registry = prometheus::Registry::new();
    let metrics = DaemonMetrics::register(&registry).map_err(MetricsError::Register)?;
    // The VPN endpoint starts before the XDP program is loaded: the kernel's verifier takes
    // seconds, and on a restart the pinned filter already lets WireGuard through and enforces
    // the last policy meanwhile, so staff sessions come back as soon as the endpoint is up
    // instead of after the load. On a first start there is no filter yet either way; the
    // endpoint admits only its peers, under its own ACL.
    // Whether the MFA portal listens: the ACL lets every peer reach its port only then.
    let portal_listening = std::sync::Arc::new(crmguard_core::acl::PortalListening::default());
    // Inspection's table and counters outlive endpoint restarts; its events come back here.
    let inspection_events = std::sync::Arc::new(crate::inspection::InspectionEvents::default());
    let inspector = std::sync::Arc::new(crmguard_inspect::Inspector::new(
        config.inspection.max_flows,
        crmguard_inspect::InspectMetrics::register(&registry).map_err(MetricsError::Register)?,
        Box::new(std::sync::Arc::clone(&inspection_events)),
    ));
    let vpn = crmguard_vpn::Supervisor::start(
        &config,
        metrics.acl().clone(),
        std::sync::Arc::clone(&portal_listening),
        std::sync::Arc::clone(&inspector),
    );
    let datapath = Datapath::start(&config.agent.bpffs_dir, &requests, &policy)?;
    if let Some(snapshot) = &snapshot {
        save_last_good(snapshot, &config.agent.state_dir);
    }
    let (bans, ended) = match loaded_bans {
        Ok(loaded) => loaded,
        Err(e) => {
            tracing::error!(
                error = %crmguard_core::error_chain(&e),
                generation = datapath.generation(),
                interfaces = datapath.attachments().len(),
                policy = policy_source.as_str(),
                "the ban list cannot be read; the filter is attached and the bans already in the kernel stay in force, but the agent stops: repair or restore the file and start it again"
            );
            drop(control_listener);
            let _ = std::fs::remove_file(&config.agent.control_socket);
            return Err(e.into());
        }
    };
    // The maps directory of the datapath's pin layout (see `datapath`).
    let config_maps_dir = config.agent.bpffs_dir.join("maps");
    let mut kernel_bans = KernelBans::open(&config_maps_dir)?;
    let changed = kernel_bans.sync(&bans, SystemTime::now(), kernel_bans::kernel_now()?)?;
    tracing::info!(
        bans = bans.len(),
        ended_while_stopped = ended.len(),
        kernel_entries_changed = changed,
        "bans in force"
    );
    tracing::info!(
        generation = datapath.generation(),
        interfaces = datapath.attachments().len(),
        config = %options.source.describe(),
        policy = policy_source.as_str(),
        "crmguard is enforcing"
    );
    tell_service_manager_ready(&datapath);

    let (tx, mut rx) = mpsc::channel::<Command>(64);
    let (portal_tx, mut portal_rx) = mpsc::channel::<portal::PortalCommand>(64);
    let control_path = config.agent.control_socket.clone();
    tokio::spawn(control::serve(control_listener, tx.clone()));
    drop(tx);
    let datapath_metrics = crmguard_datapath::metrics::register(
        &registry,
        &config_maps_dir,
        datapath.attachments(),
        datapath.failures(),
    )?;
    metrics.fallback(policy_source);
    let (refresh_tx, mut refresh_rx) = mpsc::channel::<crate::metrics::Refresh>(1);
    let metrics_listener = crate::metrics::bind(config.metrics.listen).await?;
    tokio::spawn(crate::metrics::serve(
        metrics_listener,
        registry.clone(),
        refresh_tx,
    ));
    let (detection, observer, mut detect_rx) =
        detection::Detection::start(&config, &registry, &inspection_events)
            .map_err(MetricsError::Register)?;
    let log_followers = detection::start_log_sources(&config, &observer);

    let mut audit = audit::Sink::open(&config.audit, &config.agent.state_dir);
    audit
        .register_metrics(&registry)
        .map_err(MetricsError::Register)?;
    audit.record(
        &Event::new(EventType::AgentStart, Outcome::Info, "system")
            .with_detail("version", env!("CARGO_PKG_VERSION"))
            .with_detail("config", options.source.describe())
            .with_detail("generation", datapath.generation()),
    );
    if let Some(error) = &fallback_error {
        audit.record(
            &Event::new(EventType::ConfigRejected, Outcome::Failure, "system")
                .with_detail("config", options.source.describe())
                .with_detail("error", error.clone())
                .with_detail("enforced", policy_source.as_str()),
        );
    }
    let access = Access::open(&config);
    access
        .register_metrics(&registry)
        .map_err(MetricsError::Register)?;
    let backup =
        crate::backup::schedule::Schedule::register(&registry).map_err(MetricsError::Register)?;
    let (backup_tx, mut backup_rx) = mpsc::channel::<crate::backup::schedule::Outcome>(1);
    let config_state_dir = config.agent.state_dir.clone();
    let mut portal = portal::PortalHost::new(portal_tx, portal_listening);
    portal.apply(&config);
    let mut agent = Agent {
        source: options.source.clone(),
        config,
        policy,
        datapath,
        datapath_metrics,
        chosen_because,
        metrics,
        bans,
        kernel_bans,
        bans_path,
        bans_unsaved: false,
        recent: Recent::default(),
        audit,
        divergence: 0,
        last_swap: Instant::now(),
        vpn,
        inspector,
        inspection_events,
        detection,
        log_followers,
        access,
        portal,
        policy_source,
        fallback_error,
        enabled_at: crmguard_core::provision::load_enabled_at(&config_state_dir),
        peers_file: peers_file_cache::PeersFileCache::default(),
        pending: None,
        last_rollback: None,
        tally: crate::tally::DropTally::default(),
        backup,
    };
    if !ended.is_empty() {
        // The file still lists the bans that ended while the agent was stopped. A failure is
        // logged by save_bans and retried by the sweep.
        let _ = agent.save_bans();
    }
    let mut term = signal(SignalKind::terminate()).map_err(DaemonError::Signals)?;
    let mut int = signal(SignalKind::interrupt()).map_err(DaemonError::Signals)?;
    let mut hup = signal(SignalKind::hangup()).map_err(DaemonError::Signals)?;
    let mut reconcile = tokio::time::interval(RECONCILE_EVERY);
    let mut events = EventReader::open(&config_maps_dir)?;
    let mut drain_events = tokio::time::interval(DRAIN_EVENTS_EVERY);
    let mut sweep = tokio::time::interval(SWEEP_BANS_EVERY);
    let mut report = tokio::time::interval_at(
        tokio::time::Instant::now() + monitor::FIRST_REPORT,
        monitor::REPORT_EVERY,
    );

    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => { agent.handle(Request::Reload); }
            () = confirm::expiry(agent.pending_deadline()) => agent.roll_back(),
            Some((request, reply)) = rx.recv() => {
                let _ = reply.send(agent.handle(request));
            }
            Some(done) = refresh_rx.recv() => {
                agent.refresh_metrics();
                let _ = done.send(());
            }
            Some((request, reply)) = portal_rx.recv() => {
                let answer = agent.access.portal(&request, &agent.config, &agent.vpn, &mut agent.audit);
                let _ = reply.send(answer);
            }
            Some(incoming) = detect_rx.recv() => agent.detect(incoming),
            Some(outcome) = backup_rx.recv() => agent.backup_done(&outcome),
            _ = drain_events.tick() => {
                let now = SystemTime::now();
                let tally = &mut agent.tally;
                let undecodable = events.drain(&mut agent.recent, |event| {
                    tally.add(&event.action, &event.reason, event.proto, event.dport);
                    observer.observe(
                        now,
                        crmguard_detect::Input::Dropped {
                            source: event.src,
                            dst_port: event.dport,
                            proto: event.proto,
                        },
                    );
                });
                if undecodable > 0 {
                    tracing::warn!(records = undecodable, "drop events this agent cannot decode (is the program newer than the agent?)");
                }
            }
            _ = reconcile.tick() => {
                match agent.datapath.reconcile(&agent.policy) {
                    Ok(0) => agent.divergence = 0,
                    Ok(n) => {
                        agent.divergence = n;
                        agent.last_swap = Instant::now();
                        tracing::warn!(entries = n, "kernel policy differed from the configuration; repaired");
                    }
                    Err(e) => tracing::error!(error = %crmguard_core::error_chain(&e), "reconciling the kernel policy failed"),
                }
                if agent.last_swap.elapsed() >= RELEASE_AFTER {
                    if let Err(e) = agent.datapath.release_previous() {
                        tracing::error!(error = %crmguard_core::error_chain(&e), "releasing the previous policy's maps failed");
                    }
                }
                agent.recheck_interfaces();
                // Peers whose keys aged past key_max_age are cut.
                agent.vpn.apply(&agent.config, false);
                agent.disable_inactive();
                match agent.reconcile_bans() {
                    Ok(0) => {}
                    Ok(n) => tracing::warn!(entries = n, "kernel ban maps differed from the ban list; repaired"),
                    Err(e) => tracing::error!(error = %crmguard_core::error_chain(&e), "reconciling the kernel's bans failed"),
                }
            }
            _ = report.tick() => agent.report_tally(),
            _ = sweep.tick() => {
                agent.sweep_bans();
                agent.access_tick();
                agent.detection_tick(&observer);
                agent.backup_tick(&backup_tx);
            }
        }
    }

    if let Err(e) = sd_notify::notify(&[sd_notify::NotifyState::Stopping]) {
        tracing::debug!(error = %e, "cannot tell systemd that the agent stops");
    }
    // What happened since the last tick is recorded before the stop.
    for follower in std::mem::take(&mut agent.log_followers) {
        follower.stop();
    }
    agent.access_tick();
    agent.access.flush(&mut agent.audit);
    for event in agent.metrics.acl().take_denials(SystemTime::now(), true) {
        agent.audit.record(&event);
    }
    for event in agent
        .inspection_events
        .take_records(SystemTime::now(), true)
    {
        agent.audit.record(&event);
    }
    agent.audit.record(
        &Event::new(EventType::AgentStop, Outcome::Info, "system")
            .with_detail("filter_kept", !options.detach_on_exit),
    );
    // Last: while the socket exists, commands wait for this agent instead of writing the
    // audit log themselves.
    let _ = std::fs::remove_file(&control_path);
    agent.vpn.stop();
    if options.detach_on_exit {
        let removed = crmguard_datapath::uninstall(&agent.config.agent.bpffs_dir)?;
        tracing::info!(interfaces = ?removed, "stopped; the XDP filter was removed (--detach-on-exit)");
    } else {
        tracing::info!(
            "stopped; the XDP filter stays attached and keeps enforcing the last policy"
        );
    }
    Ok(())
}

/// `crmguard uninstall`: removes the filter and its pinned state.
pub fn uninstall(bpffs_dir: &Path) -> Result<Vec<String>, DatapathError> {
    crmguard_datapath::uninstall(bpffs_dir)
}
