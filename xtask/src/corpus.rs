//! `cargo xtask corpus`: a labelled corpus of real protocol flows for the identification tests
//! of crmguard's inspection layer (`inspect/`).
//!
//! It builds a lab network namespace, starts real servers in it on 127.0.0.1 (nginx for TLS,
//! HTTP/1.x and h2c, PostgreSQL, MariaDB, Redis, sshd, an SMTP server), and runs each protocol's
//! real client many times with varied users, passwords, databases, paths and options. Every
//! client talks to a recording relay (in this process, inside the namespace) that forwards to
//! the real server and keeps the first bytes of each direction of each TCP connection: exactly
//! the window crmguard's inspection sees (8 KiB from the client, 4 KiB from the server).
//!
//! The output is one directory per protocol with `NNNN.client` and `NNNN.server` per connection
//! and an `index.tsv` naming the client command and its exit status, plus `VERSIONS.txt` and
//! `README.md`. Clients that fail on purpose (a wrong password) are fine; a connection that
//! carried no byte either way, or a client run that never reached the relay, is reported and
//! fails the run. Servers, relays and the namespace are removed on every exit path, Ctrl-C
//! included.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use nix::sched::CloneFlags;

use crmguard_lab::cmd;
use crmguard_lab::netns::NetNs;
use crmguard_lab::process::{describe, output_in};
use crmguard_lab::servers::{
    MariaDb, Nginx, NginxPorts, Postgres, Redis, Smtp, Sshd, DB_NAME, DB_USER, SERVER_NAME,
};
use crmguard_lab::wait::wait_for;

/// Bytes of each connection kept from the client, as crmguard's inspection window.
const CLIENT_KEEP: usize = 8192;
/// Bytes of each connection kept from the server.
const SERVER_KEEP: usize = 4096;

/// How long one client run may take before `timeout` kills it.
const CLIENT_TIMEOUT_SECS: u32 = 40;
/// How long the relay waits on a silent socket before it gives the connection up.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the relay may take to finish the connections of a client that has exited.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(45);

const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
const CHROMIUM: &str = "/usr/bin/chromium";

const WEB_USER: &str = "crm-admin";
const WEB_PASSWORD: &str = "Basic-pass-42";
const PG_PASSWORD: &str = "pg-Secret-7";
const MYSQL_PASSWORD: &str = "my-Secret-9";
const REDIS_PASSWORD: &str = "redis-Secret-3";
const SMTP_USER: &str = "mailer";
const SMTP_PASSWORD: &str = "smtp-Secret-5";

#[derive(clap::Args)]
pub struct Args {
    /// Connections to record per protocol.
    #[arg(long, default_value_t = 200)]
    flows: usize,
    /// Output directory (each protocol's directory in it is replaced).
    #[arg(long, default_value = "inspect/corpus")]
    out: PathBuf,
}

pub fn run(args: &Args) -> Result<()> {
    let out = std::path::absolute(&args.out)
        .with_context(|| format!("cannot resolve {}", args.out.display()))?;
    if !cmd::is_root() {
        eprintln!("corpus: the lab's network namespace needs root; running under sudo");
        let exe = std::env::current_exe().context("cannot find xtask's own path")?;
        let mut again = cmd::as_root(&exe.to_string_lossy(), &[])?;
        return cmd::run(
            again
                .args(["corpus", "--flows", &args.flows.to_string(), "--out"])
                .arg(&out),
        );
    }
    if args.flows == 0 || args.flows > 9999 {
        bail!("--flows must be between 1 and 9999");
    }
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, interrupted_flag())
            .context("cannot install the Ctrl-C handler")?;
    }
    fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let lab = Lab::start()?;
    let versions = versions()?;
    fs::write(out.join("VERSIONS.txt"), &versions)?;
    let mut summary = BTreeMap::new();
    let mut problems = Vec::new();
    for protocol in Protocol::ALL {
        let (count, bytes, mut found) = record(&lab, protocol, args.flows, &out)?;
        eprintln!(
            "corpus: {}: {count} flows, {bytes} bytes, {} problems",
            protocol.name(),
            found.len()
        );
        summary.insert(protocol.name(), (count, bytes));
        problems.append(&mut found);
    }
    drop(lab);
    fs::write(out.join("README.md"), readme(args.flows, &summary))?;
    give_back(&out)?;
    let total: usize = summary.values().map(|(_, bytes)| bytes).sum();
    eprintln!("corpus: {total} bytes in {}", out.display());
    if !problems.is_empty() {
        for problem in &problems {
            eprintln!("corpus: {problem}");
        }
        bail!("{} flows or client runs went wrong", problems.len());
    }
    Ok(())
}

/// Set by SIGINT and SIGTERM: the loops stop and every guard runs.
fn interrupted_flag() -> Arc<AtomicBool> {
    static FLAG: std::sync::OnceLock<Arc<AtomicBool>> = std::sync::OnceLock::new();
    Arc::clone(FLAG.get_or_init(|| Arc::new(AtomicBool::new(false))))
}

fn interrupted() -> bool {
    interrupted_flag().load(Ordering::Relaxed)
}

/// Hands the corpus to the user who ran xtask through sudo.
fn give_back(out: &Path) -> Result<()> {
    let (Ok(uid), Ok(gid)) = (std::env::var("SUDO_UID"), std::env::var("SUDO_GID")) else {
        return Ok(());
    };
    cmd::stdout_of(
        Command::new("chown")
            .arg("-R")
            .arg(format!("{uid}:{gid}"))
            .arg(out),
    )
    .map(drop)
}

/// The namespace and every server, on 127.0.0.1 inside it. Servers are declared before the
/// namespace: they stop before it goes.
struct Lab {
    nginx: Nginx,
    postgres: Postgres,
    mariadb: MariaDb,
    redis: Redis,
    sshd: Sshd,
    smtp: Smtp,
    ns: NetNs,
}

impl Lab {
    fn start() -> Result<Lab> {
        let ns = NetNs::new("cgcorpus")?;
        eprintln!("corpus: lab namespace {}", ns.name());
        let ports = NginxPorts {
            tls: 443,
            http: 80,
            h2c: 8080,
        };
        let nginx = Nginx::start(&ns, LOOPBACK, ports, WEB_USER, WEB_PASSWORD)?;
        let postgres = Postgres::start(&ns, LOOPBACK, 5432, PG_PASSWORD)?;
        let mariadb = MariaDb::start(&ns, LOOPBACK, 3306, MYSQL_PASSWORD)?;
        let redis = Redis::start(&ns, LOOPBACK, 6379, REDIS_PASSWORD)?;
        let sshd = Sshd::start(&ns, LOOPBACK, 22)?;
        let smtp = Smtp::start(&ns, LOOPBACK, 587, SMTP_USER, SMTP_PASSWORD)?;
        eprintln!("corpus: all servers are up");
        Ok(Lab {
            nginx,
            postgres,
            mariadb,
            redis,
            sshd,
            smtp,
            ns,
        })
    }

    fn upstream(&self, protocol: Protocol) -> SocketAddr {
        let port = match protocol {
            Protocol::Tls => self.nginx.ports().tls,
            Protocol::Http => self.nginx.ports().http,
            Protocol::Http2 => self.nginx.ports().h2c,
            Protocol::Postgresql => self.postgres.port(),
            Protocol::Mysql => self.mariadb.port(),
            Protocol::Redis => self.redis.port(),
            Protocol::Ssh => self.sshd.port(),
            Protocol::Smtp => self.smtp.port(),
        };
        SocketAddr::new(LOOPBACK, port)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Protocol {
    Tls,
    Http,
    Http2,
    Postgresql,
    Mysql,
    Redis,
    Ssh,
    Smtp,
}

impl Protocol {
    const ALL: [Protocol; 8] = [
        Protocol::Tls,
        Protocol::Http,
        Protocol::Http2,
        Protocol::Postgresql,
        Protocol::Mysql,
        Protocol::Redis,
        Protocol::Ssh,
        Protocol::Smtp,
    ];

    fn name(self) -> &'static str {
        match self {
            Protocol::Tls => "tls",
            Protocol::Http => "http",
            Protocol::Http2 => "http2",
            Protocol::Postgresql => "postgresql",
            Protocol::Mysql => "mysql",
            Protocol::Redis => "redis",
            Protocol::Ssh => "ssh",
            Protocol::Smtp => "smtp",
        }
    }
}

/// One run of a real client.
struct ClientRun {
    argv: Vec<String>,
    env: Vec<(String, String)>,
    /// A file fed to the client's stdin.
    stdin: Option<PathBuf>,
    /// Run under `ip netns exec` (which also gives the namespace's `/sys`), as Chromium needs.
    netns_exec: bool,
}

impl ClientRun {
    fn new(argv: &[&str]) -> ClientRun {
        ClientRun {
            argv: argv.iter().map(|arg| (*arg).to_owned()).collect(),
            env: Vec::new(),
            stdin: None,
            netns_exec: false,
        }
    }

    fn arg(mut self, arg: impl Into<String>) -> ClientRun {
        self.argv.push(arg.into());
        self
    }

    fn args<S: Into<String>>(mut self, args: impl IntoIterator<Item = S>) -> ClientRun {
        self.argv.extend(args.into_iter().map(Into::into));
        self
    }

    fn env(mut self, key: &str, value: &str) -> ClientRun {
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }

    /// The command line as it is recorded in the index (environment first).
    fn display(&self) -> String {
        let mut command = if self.netns_exec {
            Command::new("ip")
        } else {
            Command::new(&self.argv[0])
        };
        if self.netns_exec {
            command.args(["netns", "exec", "NS"]).args(&self.argv);
        } else {
            command.args(&self.argv[1..]);
        }
        let env: Vec<String> = self.env.iter().map(|(k, v)| format!("{k}={v} ")).collect();
        let stdin = match &self.stdin {
            Some(path) => format!(
                " < {}",
                path.file_name().unwrap_or_default().to_string_lossy()
            ),
            None => String::new(),
        };
        format!("{}{}{stdin}", env.concat(), cmd::display(&command))
    }

    /// Runs the client inside `ns` under `timeout`; returns its exit status as text.
    fn run(&self, ns: &NetNs) -> Result<String> {
        let timeout = [
            "timeout".to_owned(),
            "-k".to_owned(),
            "5".to_owned(),
            CLIENT_TIMEOUT_SECS.to_string(),
        ];
        let output = if self.netns_exec {
            let mut command = Command::new("ip");
            command
                .args(["netns", "exec", ns.name()])
                .args(&timeout)
                .args(&self.argv)
                .envs(self.env.iter().map(|(k, v)| (k, v)));
            command
                .output()
                .with_context(|| format!("running {}", self.display()))?
        } else {
            let mut command = Command::new(&timeout[0]);
            command
                .args(&timeout[1..])
                .args(&self.argv)
                .envs(self.env.iter().map(|(k, v)| (k, v)));
            if let Some(path) = &self.stdin {
                command.stdin(
                    File::open(path).with_context(|| format!("opening {}", path.display()))?,
                );
            }
            output_in(ns, command)?
        };
        if output.status.code() == Some(124) || output.status.code() == Some(137) {
            bail!(
                "`{}` timed out; stderr: {}",
                self.display(),
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        Ok(describe(output.status))
    }
}

/// Records `flows` connections of `protocol` into `out/<protocol>/`; returns the count, their
/// bytes and the problems seen.
fn record(
    lab: &Lab,
    protocol: Protocol,
    flows: usize,
    out: &Path,
) -> Result<(usize, usize, Vec<String>)> {
    let dir = out.join(protocol.name());
    if dir.exists() {
        fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    fs::create_dir_all(&dir)?;
    let scratch = Scratch::create(protocol)?;
    let relay = Relay::start(&lab.ns, lab.upstream(protocol))?;
    let mut index = String::from("flow\tclient_bytes\tserver_bytes\tclient_exit\tcommand\n");
    let mut problems = Vec::new();
    let mut recorded = 0;
    let mut bytes = 0;
    let mut run = 0;
    while recorded < flows {
        if interrupted() {
            bail!("interrupted");
        }
        if run > flows * 3 {
            bail!(
                "{}: {run} client runs recorded only {recorded} flows",
                protocol.name()
            );
        }
        let client = client_run(protocol, run, relay.port, scratch.path())?;
        let marker = relay.idle_polls();
        let status = client.run(&lab.ns)?;
        let connections = relay.drain(marker)?;
        if connections.is_empty() {
            problems.push(format!(
                "{}: `{}` ({status}) made no connection",
                protocol.name(),
                client.display()
            ));
        }
        for flow in connections {
            if recorded == flows {
                break;
            }
            if flow.client.is_empty() && flow.server.is_empty() {
                problems.push(format!(
                    "{}: a connection of `{}` ({status}) carried no byte either way",
                    protocol.name(),
                    client.display()
                ));
                continue;
            }
            recorded += 1;
            let name = format!("{recorded:04}");
            fs::write(dir.join(format!("{name}.client")), &flow.client)?;
            fs::write(dir.join(format!("{name}.server")), &flow.server)?;
            bytes += flow.client.len() + flow.server.len();
            let _ = writeln!(
                index,
                "{name}\t{}\t{}\t{status}\t{}",
                flow.client.len(),
                flow.server.len(),
                client.display().replace('\t', " ")
            );
        }
        run += 1;
    }
    fs::write(dir.join("index.tsv"), index)?;
    Ok((recorded, bytes, problems))
}

/// A directory for the clients' files (requests, browser profiles), removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn create(protocol: Protocol) -> Result<Scratch> {
        let path = std::env::temp_dir().join(format!(
            "crmguard-corpus-{}-{}",
            std::process::id(),
            protocol.name()
        ));
        fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Scratch(path))
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Err(e) = fs::remove_dir_all(&self.0) {
            eprintln!("removing {}: {e}", self.0.display());
        }
    }
}

/// The `run`th client run of `protocol`, against the relay on `port`.
fn client_run(protocol: Protocol, run: usize, port: u16, scratch: &Path) -> Result<ClientRun> {
    Ok(match protocol {
        Protocol::Tls => tls_client(run, port, scratch)?,
        Protocol::Http => http_client(run, port),
        Protocol::Http2 => http2_client(run, port),
        Protocol::Postgresql => postgresql_client(run, port),
        Protocol::Mysql => mysql_client(run, port),
        Protocol::Redis => redis_client(run, port),
        Protocol::Ssh => ssh_client(run, port),
        Protocol::Smtp => smtp_client(run, port),
    })
}

/// A path on the nginx site: the page, the basic-auth area, the login endpoint, a 404.
fn web_path(run: usize) -> String {
    match run % 6 {
        0 => "/".to_owned(),
        1 => "/index.html".to_owned(),
        2 => "/private/".to_owned(),
        3 => "/login".to_owned(),
        4 => format!("/private/records?page={run}"),
        _ => format!("/static/app-{run}.js"),
    }
}

/// curl's options for the request itself: method, body, credentials, headers.
fn web_request(run: usize) -> Vec<String> {
    let mut args = vec!["-A".to_owned(), format!("crm-sync/{}.{}", run % 7, run)];
    let path = web_path(run);
    if path == "/login" {
        args.extend([
            "-d".to_owned(),
            format!("user=agent{run}&password=pw{}", run * 31),
        ]);
    }
    if path.starts_with("/private") {
        match run % 4 {
            0 => args.extend(["-u".to_owned(), format!("{WEB_USER}:{WEB_PASSWORD}")]),
            1 => args.extend(["-u".to_owned(), format!("{WEB_USER}:wrong{run}")]),
            2 => args.extend(["-u".to_owned(), format!("user{run}:{WEB_PASSWORD}")]),
            _ => {}
        }
    }
    if run.is_multiple_of(5) {
        args.extend([
            "-H".to_owned(),
            format!("Cookie: session={:016x}", run * 7919),
        ]);
    }
    if run % 9 == 4 {
        args.extend(["-H".to_owned(), "Accept-Language: de-DE".to_owned()]);
    }
    args
}

fn tls_client(run: usize, port: u16, scratch: &Path) -> Result<ClientRun> {
    let url = format!("https://{SERVER_NAME}:{port}{}", web_path(run));
    if run % 40 == 39 && Path::new(CHROMIUM).exists() {
        let profile = scratch.join(format!("chromium-{run}"));
        let mut client = ClientRun::new(&[
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-quic",
            "--ignore-certificate-errors",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(format!("--host-resolver-rules=MAP {SERVER_NAME} 127.0.0.1"))
        .arg("--dump-dom")
        .arg(format!("https://{SERVER_NAME}:{port}/"));
        client.netns_exec = true;
        return Ok(client);
    }
    if run % 10 == 6 || run % 10 == 7 {
        let request = scratch.join(format!("request-{run}.txt"));
        fs::write(
            &request,
            format!(
                "GET {} HTTP/1.1\r\nHost: {SERVER_NAME}\r\nUser-Agent: probe/{run}\r\n\
                 Connection: close\r\n\r\n",
                web_path(run)
            ),
        )?;
        let version = if run % 10 == 6 { "-tls1_2" } else { "-tls1_3" };
        let mut client = ClientRun::new(&["openssl", "s_client", "-quiet", version])
            .arg("-connect")
            .arg(format!("127.0.0.1:{port}"))
            .args(["-servername", SERVER_NAME]);
        if run % 20 == 7 {
            client = client.args(["-alpn", "http/1.1"]);
        }
        client.stdin = Some(request);
        return Ok(client);
    }
    let versions: &[&str] = match run % 10 {
        0 => &["--tlsv1.2", "--tls-max", "1.2"],
        1 => &["--tlsv1.3"],
        2 => &[],
        3 => &["--tlsv1.2", "--tls-max", "1.2", "--http1.1"],
        4 => &["--tlsv1.3", "--http2"],
        5 => &[
            "--tlsv1.2",
            "--tls-max",
            "1.2",
            "--ciphers",
            "ECDHE-RSA-AES128-GCM-SHA256",
        ],
        8 => &[
            "--tlsv1.3",
            "--tls13-ciphers",
            "TLS_CHACHA20_POLY1305_SHA256",
        ],
        _ => &["--tlsv1.2", "--http1.1"],
    };
    Ok(ClientRun::new(&["curl", "-sS", "-k", "-o", "/dev/null"])
        .arg("--resolve")
        .arg(format!("{SERVER_NAME}:{port}:127.0.0.1"))
        .args(versions.iter().copied())
        .args(web_request(run))
        .arg(url))
}

fn http_client(run: usize, port: u16) -> ClientRun {
    let base = format!("http://127.0.0.1:{port}");
    let mut client = ClientRun::new(&["curl", "-sS", "-o", "/dev/null"]);
    client = match run % 5 {
        0 => client.arg("--http1.0"),
        1 => client.arg("--http1.1"),
        // HEAD, except where curl would also send the login form (it refuses both).
        2 if web_path(run) != "/login" => client.arg("-I"),
        3 => client.args(["-H", "Connection: keep-alive"]),
        _ => client,
    };
    client = client
        .args(web_request(run))
        .arg(format!("{base}{}", web_path(run)));
    if run % 7 == 3 {
        // A second request on the same connection.
        client = client
            .args(["-o", "/dev/null"])
            .arg(format!("{base}/index.html"));
    }
    client
}

fn http2_client(run: usize, port: u16) -> ClientRun {
    let base = format!("http://127.0.0.1:{port}");
    let mut client = ClientRun::new(&["curl", "-sS", "-o", "/dev/null", "--http2-prior-knowledge"]);
    if run % 4 == 2 {
        client = client.arg("-I");
    }
    client
        .args(web_request(run))
        .arg(format!("{base}{}", web_path(run)))
}

fn postgresql_client(run: usize, port: u16) -> ClientRun {
    let user = if run % 6 == 5 {
        format!("report{run}")
    } else {
        DB_USER.to_owned()
    };
    let database = match run % 5 {
        3 => "postgres".to_owned(),
        4 => format!("crm_archive{run}"),
        _ => DB_NAME.to_owned(),
    };
    let sslmode = [
        "disable", "require", "prefer", "disable", "require", "allow",
    ][run % 6];
    let mut conninfo =
        format!("host=127.0.0.1 port={port} user={user} dbname={database} sslmode={sslmode}");
    if run.is_multiple_of(3) {
        conninfo.push_str(&format!(" application_name=crm-worker-{run}"));
    }
    if run % 4 == 1 {
        conninfo.push_str(" gssencmode=disable");
    }
    let mut client = ClientRun::new(&["psql", "-X", "-w", "-c"])
        .arg(format!("select {run}"))
        .arg(conninfo);
    match run % 7 {
        0..=3 => client = client.env("PGPASSWORD", PG_PASSWORD),
        4 | 5 => client = client.env("PGPASSWORD", &format!("wrong-{run}")),
        _ => {}
    }
    client
}

fn mysql_client(run: usize, port: u16) -> ClientRun {
    let user = if run % 6 == 5 {
        format!("report{run}")
    } else {
        DB_USER.to_owned()
    };
    let mut client = ClientRun::new(&["mysql", "--no-defaults", "--protocol=TCP", "-h"])
        .arg("127.0.0.1")
        .arg("-P")
        .arg(port.to_string())
        .arg("-u")
        .arg(user);
    client = match run % 7 {
        0..=3 => client.arg(format!("-p{MYSQL_PASSWORD}")),
        4 | 5 => client.arg(format!("-pwrong-{run}")),
        _ => client,
    };
    client = match run % 3 {
        0 => client.arg("--ssl"),
        1 => client.arg("--skip-ssl"),
        _ => client,
    };
    if run % 4 == 1 {
        client = client.args(["-D", DB_NAME]);
    }
    if run % 5 == 2 {
        client = client.arg("--compress");
    }
    client.arg("-e").arg(format!("select {run}"))
}

fn redis_client(run: usize, port: u16) -> ClientRun {
    let mut client = ClientRun::new(&["redis-cli", "-h", "127.0.0.1", "-p"]).arg(port.to_string());
    client = match run % 6 {
        0..=2 => client.args(["--no-auth-warning", "-a", REDIS_PASSWORD]),
        3 => client
            .args(["--no-auth-warning", "-a"])
            .arg(format!("wrong-{run}")),
        4 => client.args([
            "--no-auth-warning",
            "--user",
            "default",
            "--pass",
            REDIS_PASSWORD,
        ]),
        _ => client,
    };
    if run % 4 == 1 {
        client = client.arg("-3");
    }
    match run % 5 {
        0 => client.arg("PING"),
        1 => client
            .arg("SET")
            .arg(format!("session:{run}"))
            .arg(format!("agent-{}", run * 13)),
        2 => client.arg("GET").arg(format!("session:{}", run - 1)),
        3 => client.arg("INCR").arg(format!("counter:{}", run % 11)),
        _ => client.args(["INFO", "server"]),
    }
}

fn ssh_client(run: usize, port: u16) -> ClientRun {
    let user = match run % 4 {
        0 => "nobody".to_owned(),
        1 => "crm".to_owned(),
        2 => format!("admin{run}"),
        _ => "root".to_owned(),
    };
    let mut client = ClientRun::new(&[
        "ssh",
        "-F",
        "/dev/null",
        "-o",
        "StrictHostKeyChecking=no",
        "-o",
        "UserKnownHostsFile=/dev/null",
        "-o",
        "BatchMode=yes",
        "-o",
        "ConnectTimeout=10",
        "-p",
    ])
    .arg(port.to_string());
    let cipher = [
        None,
        Some("aes128-ctr"),
        Some("aes256-gcm@openssh.com"),
        Some("chacha20-poly1305@openssh.com"),
        Some("aes256-ctr"),
    ][run % 5];
    if let Some(cipher) = cipher {
        client = client.arg("-c").arg(cipher);
    }
    let kex = [
        None,
        Some("curve25519-sha256"),
        Some("ecdh-sha2-nistp256"),
        Some("diffie-hellman-group14-sha256"),
        Some("sntrup761x25519-sha512@openssh.com"),
        Some("diffie-hellman-group16-sha512"),
    ][run % 6];
    if let Some(kex) = kex {
        client = client.arg("-o").arg(format!("KexAlgorithms={kex}"));
    }
    let host_key = [
        None,
        Some("ssh-ed25519"),
        Some("ecdsa-sha2-nistp256"),
        Some("rsa-sha2-512"),
        Some("rsa-sha2-256"),
        Some("ssh-ed25519"),
        None,
    ][run % 7];
    if let Some(host_key) = host_key {
        client = client
            .arg("-o")
            .arg(format!("HostKeyAlgorithms={host_key}"));
    }
    if run % 3 == 2 {
        client = client.args(["-o", "PubkeyAuthentication=no"]);
    }
    if run % 8 == 5 {
        client = client.args(["-o", "Compression=yes"]);
    }
    client.arg(format!("{user}@127.0.0.1")).arg("true")
}

fn smtp_client(run: usize, port: u16) -> ClientRun {
    let mut client = ClientRun::new(&["swaks", "--server"])
        .arg(format!("127.0.0.1:{port}"))
        .arg("--to")
        .arg(format!("customer{run}@example.org"))
        .arg("--from")
        .arg(format!("crm-notify{}@example.com", run % 9))
        .arg("--ehlo")
        .arg(format!("crm{}.example.com", run % 13))
        .arg("--header")
        .arg(format!("Subject: invoice {run}"));
    let mechanism = ["LOGIN", "PLAIN", "LOGIN", "PLAIN", ""][run % 5];
    if !mechanism.is_empty() {
        let (user, password) = match run % 3 {
            0 | 1 => (SMTP_USER.to_owned(), SMTP_PASSWORD.to_owned()),
            _ => (SMTP_USER.to_owned(), format!("wrong-{run}")),
        };
        client = client
            .arg("--auth")
            .arg(mechanism)
            .arg("--auth-user")
            .arg(user)
            .arg("--auth-password")
            .arg(password);
    }
    if run % 4 < 2 {
        client = client.arg("-tls");
    }
    if run % 6 == 4 {
        client = client.args(["--quit-after", "EHLO"]);
    }
    client
}

/// The first bytes of one relayed TCP connection.
struct Flow {
    client: Vec<u8>,
    server: Vec<u8>,
}

/// A recording TCP relay inside the lab namespace: it accepts on 127.0.0.1 (an ephemeral
/// port), connects each client to the real server and copies both directions, keeping the
/// first bytes of each.
struct Relay {
    port: u16,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

struct Shared {
    stop: AtomicBool,
    /// Accepted connections not yet finished.
    active: AtomicUsize,
    /// How many times the accept loop found no connection waiting.
    idle_polls: AtomicU64,
    /// Finished connections by their accept order.
    done: Mutex<BTreeMap<u64, Flow>>,
    workers: Mutex<Vec<JoinHandle<()>>>,
}

impl Relay {
    fn start(ns: &NetNs, upstream: SocketAddr) -> Result<Relay> {
        let listener = ns
            .run_in(|| TcpListener::bind((Ipv4Addr::LOCALHOST, 0)))?
            .context("binding the relay")?;
        listener.set_nonblocking(true)?;
        let port = listener.local_addr()?.port();
        let shared = Arc::new(Shared {
            stop: AtomicBool::new(false),
            active: AtomicUsize::new(0),
            idle_polls: AtomicU64::new(0),
            done: Mutex::new(BTreeMap::new()),
            workers: Mutex::new(Vec::new()),
        });
        let ns_path = ns.path();
        let accept = {
            let shared = Arc::clone(&shared);
            std::thread::spawn(move || accept_loop(&listener, upstream, &ns_path, &shared))
        };
        Ok(Relay {
            port,
            shared,
            accept: Some(accept),
        })
    }

    fn idle_polls(&self) -> u64 {
        self.shared.idle_polls.load(Ordering::SeqCst)
    }

    /// Waits until the accept loop has found its backlog empty after `marker` and every
    /// accepted connection has finished; returns those connections in accept order.
    fn drain(&self, marker: u64) -> Result<Vec<Flow>> {
        wait_for(DRAIN_TIMEOUT, "the relay's connections to finish", || {
            Ok(
                (self.idle_polls() > marker + 1 && self.shared.active.load(Ordering::SeqCst) == 0)
                    .then_some(()),
            )
        })?;
        let mut done = self
            .shared
            .done
            .lock()
            .map_err(|_| anyhow::anyhow!("a relay thread panicked"))?;
        Ok(std::mem::take(&mut *done).into_values().collect())
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(accept) = self.accept.take() {
            let _ = accept.join();
        }
        let workers = match self.shared.workers.lock() {
            Ok(mut workers) => std::mem::take(&mut *workers),
            Err(_) => Vec::new(),
        };
        for worker in workers {
            let _ = worker.join();
        }
    }
}

fn accept_loop(listener: &TcpListener, upstream: SocketAddr, ns_path: &Path, shared: &Arc<Shared>) {
    let mut next = 0u64;
    while !shared.stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((client, _)) => {
                shared.active.fetch_add(1, Ordering::SeqCst);
                let id = next;
                next += 1;
                let shared_for_worker = Arc::clone(shared);
                let ns_path = ns_path.to_path_buf();
                let worker = std::thread::spawn(move || {
                    let flow = match relay_connection(client, upstream, &ns_path) {
                        Ok(flow) => flow,
                        Err(e) => {
                            eprintln!("corpus: relay connection {id}: {e:#}");
                            Flow {
                                client: Vec::new(),
                                server: Vec::new(),
                            }
                        }
                    };
                    if let Ok(mut done) = shared_for_worker.done.lock() {
                        done.insert(id, flow);
                    }
                    shared_for_worker.active.fetch_sub(1, Ordering::SeqCst);
                });
                if let Ok(mut workers) = shared.workers.lock() {
                    workers.push(worker);
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                shared.idle_polls.fetch_add(1, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => {
                eprintln!("corpus: relay accept: {e}");
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }
}

/// Connects `client` to `upstream` from inside the namespace and copies both directions until
/// both are closed, keeping the first bytes of each.
fn relay_connection(client: TcpStream, upstream: SocketAddr, ns_path: &Path) -> Result<Flow> {
    let ns = File::open(ns_path).with_context(|| format!("opening {}", ns_path.display()))?;
    nix::sched::setns(&ns, CloneFlags::CLONE_NEWNET).context("entering the lab namespace")?;
    client.set_nonblocking(false)?;
    let server = TcpStream::connect_timeout(&upstream, Duration::from_secs(5))
        .with_context(|| format!("connecting to {upstream}"))?;
    for stream in [&client, &server] {
        stream.set_read_timeout(Some(IDLE_TIMEOUT))?;
        stream.set_nodelay(true)?;
    }
    let (client_in, server_out) = (client.try_clone()?, server.try_clone()?);
    let upward = std::thread::spawn(move || copy(&client_in, &server_out, CLIENT_KEEP));
    let server_bytes = copy(&server, &client, SERVER_KEEP);
    let client_bytes = upward
        .join()
        .map_err(|_| anyhow::anyhow!("the client-to-server copy panicked"))?;
    Ok(Flow {
        client: client_bytes,
        server: server_bytes,
    })
}

/// Copies `from` to `to` until `from` ends, keeping its first `keep` bytes. The end of `from`
/// is passed on as a half close; an error on either side closes both sockets.
fn copy(from: &TcpStream, to: &TcpStream, keep: usize) -> Vec<u8> {
    let mut kept = Vec::new();
    let mut buf = [0u8; 16384];
    let mut reader = from;
    let mut writer = to;
    loop {
        match reader.read(&mut buf) {
            Ok(0) => {
                let _ = to.shutdown(Shutdown::Write);
                break;
            }
            Ok(n) => {
                let room = keep.saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
                if writer.write_all(&buf[..n]).is_err() {
                    let _ = from.shutdown(Shutdown::Both);
                    let _ = to.shutdown(Shutdown::Both);
                    break;
                }
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => {
                let _ = from.shutdown(Shutdown::Both);
                let _ = to.shutdown(Shutdown::Both);
                break;
            }
        }
    }
    kept
}

/// The Debian packages of every server and client, and what the programs say of themselves.
fn versions() -> Result<String> {
    let packages = [
        "nginx-light",
        "postgresql-15",
        "postgresql-client-15",
        "mariadb-server",
        "mariadb-client",
        "redis-server",
        "redis-tools",
        "openssh-server",
        "openssh-client",
        "python3-aiosmtpd",
        "swaks",
        "openssl",
        "curl",
        "chromium",
    ];
    let listed = cmd::output(
        Command::new("dpkg-query")
            .arg("-W")
            .arg("-f=${Package}\t${Version}\n")
            .args(packages),
    )?;
    let mut text = String::from("# Debian packages (dpkg-query -W)\n");
    text.push_str(&String::from_utf8_lossy(&listed.stdout));
    text.push_str("\n# The programs\n");
    let programs: [&[&str]; 10] = [
        &["/usr/sbin/nginx", "-v"],
        &["/usr/lib/postgresql/15/bin/postgres", "--version"],
        &["psql", "--version"],
        &["/usr/sbin/mariadbd", "--version"],
        &["mysql", "--version"],
        &["redis-server", "--version"],
        &["redis-cli", "--version"],
        &["ssh", "-V"],
        &["openssl", "version"],
        &["curl", "--version"],
    ];
    for argv in programs {
        let out = cmd::output(Command::new(argv[0]).args(&argv[1..]))?;
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let first = said.lines().next().unwrap_or_default();
        let _ = writeln!(text, "{}: {first}", argv.join(" "));
    }
    Ok(text)
}

fn readme(flows: usize, summary: &BTreeMap<&str, (usize, usize)>) -> String {
    let mut table = String::new();
    for (protocol, (count, bytes)) in summary {
        let _ = writeln!(table, "| `{protocol}` | {count} | {bytes} |");
    }
    format!(
        "# A corpus of real protocol flows\n\
         \n\
         Real clients talking to real servers, one connection per flow, for the identification \
         tests of the inspection parsers. Generated (as root, it builds a network namespace) by\n\
         \n\
         ```sh\n\
         cargo xtask corpus --flows {flows} --out inspect/corpus\n\
         ```\n\
         \n\
         which is `xtask/src/corpus.rs` with the servers of `lab/src/servers.rs`. Do not edit \
         the files by hand: run the generator again. The versions of every server and client \
         are in `VERSIONS.txt`.\n\
         \n\
         ## How\n\
         \n\
         The generator creates a lab network namespace with only `lo`, starts in it, on \
         127.0.0.1: nginx (TLS 1.2/1.3 with a self-signed certificate for `{SERVER_NAME}`, \
         HTTP/1.x, and HTTP/2 with prior knowledge on a plain port; a page, a `/private/` area \
         behind basic authentication, a POST-only `/login`), PostgreSQL 15 (`password` \
         authentication with and without TLS), MariaDB (TLS available), Redis (with \
         `requirepass`), OpenSSH's sshd, and an SMTP server (aiosmtpd) that offers AUTH before \
         STARTTLS. Each client connects to a relay in the generator that forwards to the real \
         server and records the first 8192 bytes the client sent and the first 4096 bytes the \
         server sent on that connection: the window crmguard's inspection sees.\n\
         \n\
         Clients (real programs, with varied users, passwords right and wrong, databases, \
         paths, methods, TLS versions, ciphers, key exchanges and options): `tls`: curl \
         (`--tlsv1.2`/`--tlsv1.3`/`--tls-max`, ALPN h2 and http/1.1), `openssl s_client`, and \
         headless Chromium for a few; `http`: curl with HTTP/1.0 and 1.1, GET/HEAD/POST, basic \
         authentication; `http2`: curl `--http2-prior-knowledge`; `postgresql`: psql with \
         `sslmode` disable/allow/prefer/require; `mysql`: the MariaDB client with `--ssl`, \
         `--skip-ssl`, `--compress`; `redis`: redis-cli with RESP2 and RESP3 (`-3`), AUTH right, \
         wrong and absent; `ssh`: OpenSSH's client (its login always fails, after the key \
         exchange); `smtp`: swaks with AUTH LOGIN/PLAIN before or after STARTTLS (`-tls`), \
         right and wrong passwords, and without AUTH.\n\
         \n\
         A client that fails on purpose (a wrong password) still makes a flow. A connection \
         with no byte either way is not kept; the generator reports it and fails.\n\
         \n\
         ## Format\n\
         \n\
         `<protocol>/NNNN.client` and `<protocol>/NNNN.server` are the raw bytes of flow NNNN \
         (from 0001), client to server and server to client, each contiguous from the first \
         byte of the TCP stream and cut at 8192 and 4096 bytes. Either may be empty (a server \
         that waits for the client, a client that gave up). `<protocol>/index.tsv` has one line \
         per flow: its number, the byte counts, the client's exit status and its command line \
         (`NS` stands for the lab namespace; the port is the relay's, which changes each run). \
         A client run that opened several connections (Chromium, libpq's `sslmode=allow` \
         retry) has one flow for each.\n\
         \n\
         | protocol | flows | bytes |\n\
         |---|---|---|\n\
         {table}"
    )
}
