//! Connection attempts from the outside namespaces to the host, each bounded by a timeout, and
//! the servers on the host that answer them.

use std::net::IpAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::config;
use super::lab::HOST_NS;
use crmguard_lab::cmd;
use crmguard_lab::netns::nsenter;
use crmguard_lab::process::Process;

/// How long a probe waits for an answer.
pub const TIMEOUT_S: u32 = 2;

/// The TCP servers on the host: port, what they stand for, and the line they greet with.
pub const SERVERS: &[(u16, &str, &str)] = &[
    (22, "ssh", "echo SSH-2.0-OpenSSH_9.2 crmguard-demo"),
    (
        config::CRM_PORT,
        "web",
        r#"printf 'HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nCRM customer portal\r\n'"#,
    ),
    (9999, "internal api", "echo CRM-INTERNAL-API ready"),
];

/// The servers, killed when dropped.
pub struct Servers(Vec<Process>);

impl Servers {
    /// Starts every server in the host namespace, their output in `log_dir`, and waits until
    /// each accepts on loopback.
    pub fn start(log_dir: &Path) -> Result<Servers> {
        let mut servers = Servers(Vec::new());
        for (port, name, reply) in SERVERS {
            let mut ncat = nsenter(HOST_NS, "ncat");
            ncat.args(["-lk", &port.to_string(), "-c", reply]);
            eprintln!("$ {} &", cmd::display(&ncat));
            let log = log_dir.join(format!("server-{port}.log"));
            let label = format!("the {name} server");
            servers
                .0
                .push(Process::spawn_logged(ncat, &label, &log, Duration::ZERO)?);
        }
        for (port, name, _) in SERVERS {
            wait_listening(*port).with_context(|| format!("the {name} server did not start"))?;
        }
        Ok(servers)
    }
}

fn wait_listening(port: u16) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut probe = nsenter(HOST_NS, "ncat");
        probe.args(["-z", "-w", "1", "127.0.0.1", &port.to_string()]);
        if cmd::succeeds(&mut probe) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("nothing listens on 127.0.0.1:{port} in {HOST_NS} after 5 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// What a connection attempt got back.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Connected (or got an echo reply); the first line the server sent.
    Answered(String),
    /// Nothing came back within the timeout.
    NoAnswer,
    /// The host answered with a TCP reset: no server on the port, no firewall in between, or
    /// a tunnel peer's role that does not reach the port (yet).
    Refused,
}

impl Outcome {
    /// The verdict column of a probe's line.
    pub fn verdict(&self) -> &'static str {
        match self {
            Outcome::Answered(_) => "ALLOWED",
            Outcome::NoAnswer => "DROPPED",
            Outcome::Refused => "REFUSED",
        }
    }

    /// What came back, in words.
    pub fn answer(&self) -> String {
        match self {
            Outcome::Answered(line) => format!("answered {line:?}"),
            Outcome::NoAnswer => format!("no answer within {TIMEOUT_S} s"),
            Outcome::Refused => "connection refused (reset)".to_owned(),
        }
    }
}

/// The line that shows one probe: the verdict, who, from where to where, what, and the answer.
pub fn line(outcome: &Outcome, who: &str, src: IpAddr, dst: IpAddr, what: &str) -> String {
    format!(
        "  {:<8} {who:<9} {src:<13} -> {dst:<12} {what:<12} {}",
        outcome.verdict(),
        outcome.answer()
    )
}

/// A TCP connection from `src` in namespace `ns` to `dst:port`, reading the server's first
/// line.
pub fn tcp(ns: &str, src: IpAddr, dst: IpAddr, port: u16) -> Result<Outcome> {
    let timeout = TIMEOUT_S.to_string();
    let mut ncat = nsenter(ns, "ncat");
    ncat.args(["--recv-only", "-w", &timeout, "-i", &timeout, "-s"])
        .arg(src.to_string())
        .arg(dst.to_string())
        .arg(port.to_string());
    let out = cmd::output(&mut ncat)?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    if out.status.success() || !stdout.is_empty() {
        let first = stdout.lines().next().unwrap_or_default().trim();
        return Ok(Outcome::Answered(first.to_owned()));
    }
    if stderr.contains("TIMEOUT") {
        return Ok(Outcome::NoAnswer);
    }
    if stderr.contains("refused") {
        return Ok(Outcome::Refused);
    }
    bail!("`{}` failed: {}", cmd::display(&ncat), stderr.trim());
}

/// One ICMP echo request from `src` in namespace `ns` to `dst`.
pub fn ping(ns: &str, src: IpAddr, dst: IpAddr) -> Result<Outcome> {
    let mut ping = nsenter(ns, "ping");
    ping.args(["-n", "-c", "1", "-W", &TIMEOUT_S.to_string(), "-I"])
        .arg(src.to_string())
        .arg(dst.to_string());
    let out = cmd::output(&mut ping)?;
    if !out.status.success() {
        return Ok(Outcome::NoAnswer);
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let reply = stdout
        .lines()
        .find(|line| line.contains("bytes from"))
        .and_then(|line| line.split_once("time="))
        .map_or("echo reply".to_owned(), |(_, time)| {
            format!("echo reply in {time}")
        });
    Ok(Outcome::Answered(reply))
}

/// Fetches a URL from inside the host namespace.
pub fn http_get_in_host(url: &str) -> Result<String> {
    let mut curl = nsenter(HOST_NS, "curl");
    curl.args(["-sS", "-m", &TIMEOUT_S.to_string(), url]);
    cmd::stdout_of(&mut curl)
}
