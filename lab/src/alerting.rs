//! Real alerting and reputation services for the suite: a Prometheus Alertmanager and a
//! CrowdSec Local API (LAPI), each on a free port of 127.0.0.1 with its configuration, data and
//! log in a temporary directory of its own.
//!
//! The Debian packages' own services (`prometheus-alertmanager.service`, `crowdsec.service`,
//! `/etc/crowdsec`, `/var/lib/crowdsec`) are never used: every path the programs write is under
//! the directory, and CrowdSec runs as the LAPI alone (`-no-cs`: no log acquisition, parsers or
//! scenarios) without the Central API (`-no-capi`). Starting waits, with a deadline, until the
//! service accepts TCP connections; a service that exits first fails the start with the tail of
//! its log. Dropping a service stops it (SIGTERM, then SIGKILL) and removes its directory.

use std::fs;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};
use tempfile::TempDir;

use crate::cmd;
use crate::process::Process;
use crate::wait::wait_for;

/// How long a service may take to accept connections.
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a stopped service gets to exit after SIGTERM.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// A port of 127.0.0.1 that nothing listens on now (the kernel's choice, released at once).
pub fn free_port() -> Result<u16> {
    let listener =
        TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("binding 127.0.0.1:0 for a port")?;
    Ok(listener.local_addr()?.port())
}

/// A service process and its directory.
#[derive(Debug)]
struct Service {
    /// Declared before `dir`: the service writes into it until stopped.
    process: Process,
    dir: TempDir,
    port: u16,
}

impl Service {
    fn start(label: &str, dir: TempDir, port: u16, mut command: Command) -> Result<Service> {
        command.current_dir(dir.path());
        let log = dir.path().join(format!("{label}.log"));
        let process = Process::spawn_logged(command, label, &log, STOP_GRACE)?;
        let mut service = Service { process, dir, port };
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let what = format!("{label} to accept connections on {addr}");
        wait_for(READY_TIMEOUT, &what, || {
            if let Err(e) = service.process.check_alive() {
                return Ok(Some(Err(e)));
            }
            Ok(TcpStream::connect_timeout(&addr, Duration::from_secs(1))
                .ok()
                .map(|_| Ok(())))
        })??;
        Ok(service)
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

fn tempdir(label: &str) -> Result<TempDir> {
    tempfile::Builder::new()
        .prefix(&format!("crmguard-{label}-"))
        .tempdir()
        .with_context(|| format!("creating the directory of {label}"))
}

/// `prometheus-alertmanager` (Debian package of the same name), one route to a receiver that
/// sends nowhere: alerts are only kept, for `GET /api/v2/alerts`.
#[derive(Debug)]
pub struct Alertmanager {
    service: Service,
}

impl Alertmanager {
    pub fn start() -> Result<Alertmanager> {
        let program = cmd::which("prometheus-alertmanager").context(
            "prometheus-alertmanager is not installed (apt-get install prometheus-alertmanager)",
        )?;
        let dir = tempdir("alertmanager")?;
        let config = dir.path().join("alertmanager.yml");
        fs::write(
            &config,
            "route:\n  receiver: keep\n  group_wait: 1s\nreceivers:\n  - name: keep\n",
        )
        .with_context(|| format!("writing {}", config.display()))?;
        let storage = dir.path().join("data");
        fs::create_dir(&storage)?;
        let port = free_port()?;
        let mut command = Command::new(program);
        command
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.path={}", storage.display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            // No gossip: a lone instance, no port 9094.
            .arg("--cluster.listen-address=");
        Ok(Alertmanager {
            service: Service::start("alertmanager", dir, port, command)?,
        })
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        self.service.url()
    }

    /// The log so far (for failure messages).
    pub fn log(&self) -> String {
        self.service.process.log_tail(40)
    }
}

/// CrowdSec's Local API alone (Debian package `crowdsec`, 1.4.6 in bookworm), with a SQLite
/// database, the Debian default profile (Ip-scoped alerts without decisions get a 4 h ban) and
/// `cscli` set up to administer it: a machine named `cscli` is created at start so that
/// `cscli decisions` works.
#[derive(Debug)]
pub struct CrowdsecLapi {
    service: Service,
}

/// The profile of Debian's `/etc/crowdsec/profiles.yaml`.
const PROFILES: &str = "name: default_ip_remediation
filters:
 - Alert.Remediation == true && Alert.GetScope() == \"Ip\"
decisions:
 - type: ban
   duration: 4h
on_success: break
";

impl CrowdsecLapi {
    pub fn start() -> Result<CrowdsecLapi> {
        let program = cmd::which("crowdsec")
            .context("crowdsec is not installed (apt-get install crowdsec)")?;
        let dir = tempdir("crowdsec")?;
        let d = dir.path();
        fs::create_dir(d.join("data"))?;
        fs::create_dir(d.join("hub"))?;
        let port = free_port()?;
        let config = format!(
            "common:
  daemonize: false
  log_media: stdout
  log_level: info
config_paths:
  config_dir: {d}/
  data_dir: {d}/data/
  simulation_path: {d}/simulation.yaml
  hub_dir: {d}/hub/
  index_path: {d}/hub/.index.json
  notification_dir: {d}/notifications/
  plugin_dir: /usr/lib/crowdsec/plugins/
db_config:
  type: sqlite
  db_path: {d}/data/crowdsec.db
  use_wal: false
  log_level: info
api:
  client:
    credentials_path: {d}/local_api_credentials.yaml
  server:
    log_level: info
    listen_uri: 127.0.0.1:{port}
    profiles_path: {d}/profiles.yaml
    trusted_ips:
      - 127.0.0.1
prometheus:
  enabled: false
",
            d = d.display()
        );
        fs::write(d.join("config.yaml"), config)?;
        fs::write(d.join("profiles.yaml"), PROFILES)?;
        fs::write(d.join("simulation.yaml"), "simulation: off\n")?;
        let mut command = Command::new(program);
        command
            .arg("-c")
            .arg(d.join("config.yaml"))
            .args(["-no-cs", "-no-capi"]);
        let lapi = CrowdsecLapi {
            service: Service::start("crowdsec", dir, port, command)?,
        };
        let credentials = lapi.dir().join("local_api_credentials.yaml");
        lapi.cscli(&[
            "machines",
            "add",
            "cscli",
            "--password",
            "crmguard-lab-cscli",
            "-f",
            &credentials.display().to_string(),
        ])
        .context("creating cscli's own machine")?;
        Ok(lapi)
    }

    pub fn url(&self) -> String {
        self.service.url()
    }

    /// The directory holding `config.yaml`.
    pub fn dir(&self) -> &Path {
        self.service.dir.path()
    }

    pub fn config(&self) -> PathBuf {
        self.dir().join("config.yaml")
    }

    /// `cscli -c CONFIG ARGS...`, its stdout.
    pub fn cscli(&self, args: &[&str]) -> Result<String> {
        cmd::stdout_of(
            Command::new("cscli")
                .arg("-c")
                .arg(self.config())
                .args(args),
        )
    }

    /// A new bouncer's API key.
    pub fn add_bouncer(&self, name: &str) -> Result<String> {
        let key = self.cscli(&["bouncers", "add", name, "-o", "raw"])?;
        Ok(key.trim().to_owned())
    }

    /// A new, validated machine (watcher) with `password`.
    pub fn add_machine(&self, name: &str, password: &str) -> Result<()> {
        let file = self.dir().join(format!("{name}.yaml"));
        self.cscli(&[
            "machines",
            "add",
            name,
            "--password",
            password,
            "-f",
            &file.display().to_string(),
        ])?;
        Ok(())
    }

    /// `cscli decisions list -o json`, parsed (`null` when there is none becomes `[]`).
    pub fn decisions(&self) -> Result<serde_json::Value> {
        let text = self.cscli(&["decisions", "list", "-o", "json"])?;
        let value: serde_json::Value = serde_json::from_str(text.trim())
            .with_context(|| format!("cscli decisions list: {text}"))?;
        Ok(if value.is_null() {
            serde_json::Value::Array(Vec::new())
        } else {
            value
        })
    }

    /// The log so far (for failure messages).
    pub fn log(&self) -> String {
        self.service.process.log_tail(40)
    }
}
