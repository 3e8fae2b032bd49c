//! `crmguard run`: the agent's main loop.
//!
//! It owns the datapath and is the only writer of the kernel's policy. The
//! control socket and the metrics endpoint reach it through a channel; signals
//! stop it (SIGTERM, SIGINT) or reload it (SIGHUP). Stopping leaves the filter
//! attached and pinned unless the operator asked for `--detach-on-exit`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;

use crate::config::{self, Config, ConfigErrors, Mode};
use crate::control::{self, Command, CounterStatus, InterfaceStatus, Request, Response, Status};
use crate::datapath::{self, Datapath, DatapathError, InterfaceRequest};
use crate::metrics::{self, Metrics, MetricsError};
use crate::policy::{self, CompiledPolicy, PolicyError};

/// Where the agent's configuration comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigSource {
    File(PathBuf),
    /// PRODUCT.md section 3: no config file exists.
    Embedded,
}

impl ConfigSource {
    pub fn load(&self) -> Result<Config, ConfigErrors> {
        match self {
            ConfigSource::File(path) => config::load(path),
            ConfigSource::Embedded => Ok(config::default_policy()),
        }
    }

    pub fn describe(&self) -> String {
        match self {
            ConfigSource::File(path) => path.display().to_string(),
            ConfigSource::Embedded => "embedded default policy".to_owned(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("invalid configuration")]
    Config(#[from] ConfigErrors),
    #[error("invalid policy")]
    Policy(#[from] PolicyError),
    #[error(transparent)]
    Datapath(#[from] DatapathError),
    #[error(transparent)]
    Control(#[from] control::ControlError),
    #[error(transparent)]
    Metrics(#[from] MetricsError),
    #[error("cannot list network interfaces")]
    Interfaces(#[source] std::io::Error),
    #[error("cannot install signal handlers")]
    Signals(#[source] std::io::Error),
}

/// Options of `crmguard run`.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub source: ConfigSource,
    pub detach_on_exit: bool,
}

/// The interfaces to attach to: the configured ones, or every interface but
/// loopback and the VPN's own TUN when none is configured.
fn interface_requests(config: &Config) -> Result<Vec<InterfaceRequest>, DaemonError> {
    if !config.interfaces.is_empty() {
        return Ok(config
            .interfaces
            .iter()
            .map(|i| InterfaceRequest {
                name: i.name.clone(),
                mode: i.xdp_mode,
            })
            .collect());
    }
    let mut names: Vec<String> = std::fs::read_dir("/sys/class/net")
        .map_err(DaemonError::Interfaces)?
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n != "lo" && n != VPN_INTERFACE)
        .collect();
    names.sort();
    Ok(names
        .into_iter()
        .map(|name| InterfaceRequest {
            name,
            mode: config::XdpMode::Auto,
        })
        .collect())
}

/// The name of the VPN's TUN device, never filtered by XDP.
pub const VPN_INTERFACE: &str = "crmguard0";

struct Agent {
    source: ConfigSource,
    config: Config,
    policy: CompiledPolicy,
    datapath: Datapath,
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
                })
                .collect(),
            counters,
        })
    }

    /// Re-reads the config and applies it. A config that does not load or
    /// compile is refused and the running policy stays in force.
    fn reload(&mut self) -> Result<u32, DaemonError> {
        let config = self.source.load()?;
        let policy = policy::compile(&config)?;
        let generation = self.datapath.apply(&policy)?;
        if config.interfaces != self.config.interfaces {
            tracing::warn!("interface changes take effect when the agent restarts");
        }
        self.config = config;
        self.policy = policy;
        Ok(generation)
    }

    fn handle(&mut self, request: Request) -> Response {
        match request {
            Request::Status => match self.status() {
                Ok(status) => Response::Status(status),
                Err(e) => Response::Error {
                    message: datapath::error_chain(&e),
                },
            },
            Request::Reload => match self.reload() {
                Ok(generation) => {
                    tracing::info!(generation, "policy reloaded");
                    Response::Reloaded { generation }
                }
                Err(e) => {
                    let message = describe(&e);
                    tracing::error!(error = %message, "reload refused; the running policy stays in force");
                    Response::Error { message }
                }
            },
        }
    }
}

/// Renders a daemon error with its sources, and config errors one per line.
pub fn describe(error: &DaemonError) -> String {
    match error {
        DaemonError::Config(errors) => format!("invalid configuration:\n{errors}"),
        other => datapath::error_chain(other),
    }
}

/// How often the kernel's maps are compared with the desired policy.
const RECONCILE_EVERY: Duration = Duration::from_secs(5);

/// Runs the agent until SIGTERM or SIGINT.
pub async fn run(options: RunOptions) -> Result<(), DaemonError> {
    let config = options.source.load()?;
    let policy = policy::compile(&config)?;
    if options.source == ConfigSource::Embedded {
        tracing::warn!("no configuration file; running the embedded default policy (SSH and WireGuard open, everything else dropped)");
    }
    // Bound first: a second agent must stop before it touches the kernel.
    let control_listener = control::bind(&config.agent.control_socket)?;
    let requests = interface_requests(&config)?;
    let datapath = Datapath::start(&config.agent.bpffs_dir, &requests, &policy)?;
    tracing::info!(
        generation = datapath.generation(),
        interfaces = datapath.attachments().len(),
        config = %options.source.describe(),
        "crmguard is enforcing"
    );

    let (tx, mut rx) = mpsc::channel::<Command>(64);
    let control_path = config.agent.control_socket.clone();
    tokio::spawn(control::serve(control_listener, tx.clone()));
    let metrics_listener = metrics::bind(config.metrics.listen).await?;
    tokio::spawn(metrics::serve(
        metrics_listener,
        Arc::new(Metrics::new()?),
        tx.clone(),
    ));
    drop(tx);

    let mut agent = Agent {
        source: options.source.clone(),
        config,
        policy,
        datapath,
    };
    let mut term = signal(SignalKind::terminate()).map_err(DaemonError::Signals)?;
    let mut int = signal(SignalKind::interrupt()).map_err(DaemonError::Signals)?;
    let mut hup = signal(SignalKind::hangup()).map_err(DaemonError::Signals)?;
    let mut reconcile = tokio::time::interval(RECONCILE_EVERY);

    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => { agent.handle(Request::Reload); }
            Some((request, reply)) = rx.recv() => {
                let _ = reply.send(agent.handle(request));
            }
            _ = reconcile.tick() => {
                match agent.datapath.reconcile(&agent.policy) {
                    Ok(0) => {}
                    Ok(n) => tracing::warn!(entries = n, "kernel policy differed from the configuration; repaired"),
                    Err(e) => tracing::error!(error = %datapath::error_chain(&e), "reconciling the kernel policy failed"),
                }
            }
        }
    }

    let _ = std::fs::remove_file(&control_path);
    if options.detach_on_exit {
        let removed = datapath::uninstall(&agent.config.agent.bpffs_dir)?;
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
    datapath::uninstall(bpffs_dir)
}
