//! Application-protocol inspection against real servers and real clients, through a
//! wireguard-go tunnel.
//!
//! crmguard runs in the host namespace with `[vpn]` and `[inspection]`; the servers (nginx,
//! PostgreSQL 15, MariaDB, Redis, sshd, an SMTP server offering AUTH before STARTTLS) listen on
//! the gateway's tunnel address 10.77.0.1 at their well-known ports, so the protocols come from
//! the defaults; the staff laptop is wireguard-go in `out`, and every client runs there.
//!
//! ```text
//!   netns out   wireguard-go 10.77.0.2 -> 10.X.Y.1:51820   [XDP] crmguard, TUN 10.77.0.1
//!               curl, openssl, Chromium, psql, mysql,       nginx :443 :80, postgres :5432,
//!               redis-cli, swaks, ssh                       mariadb :3306, redis :6379,
//!                                                           sshd :22, smtp :25
//! ```

use std::net::IpAddr;
use std::process::{Command, Output};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use crmguard_lab::agent::Agent;
use crmguard_lab::browser::Browser;
use crmguard_lab::privileged;
use crmguard_lab::process;
use crmguard_lab::servers::{self, MariaDb, Nginx, NginxPorts, Postgres, Redis, Smtp, Sshd};
use crmguard_lab::topology::Topology;
use crmguard_lab::wait::wait_for;
use crmguard_lab::wg::WgClient;

use crate::vpn::{
    gateway_endpoint, gateway_key, metric, wait_reachable, PeerSpec, GATEWAY4, SETTLE, WG_PORT,
};

const PASSWORD: &str = "right-Horse-7";
const WRONG: &str = "wrong-password";
const NGINX_USER: &str = "crm";

/// The inspection policy of these scenarios: the example's, with `protocol_mismatch = "drop"`.
const INSPECTION: &str = r#"
[inspection]
tls_min_version = "1.2"
sni_allow = ["crm.example.com", "*.crm.example.com"]
no_sni = "allow"
plaintext_credentials = "PLAINTEXT"
protocol_mismatch = "drop"

[[inspection.login_failure]]
method = "POST"
path = "/login"
status = 200
"#;

/// One lab: the topology and the agent's configuration.
struct Lab {
    t: Topology,
    alice: PeerSpec,
    body: String,
    _scratch: tempfile::TempDir,
}

/// A lab with its agent running and the laptop's tunnel up.
struct Running<'a> {
    t: &'a Topology,
    agent: Agent<'a>,
    _client: WgClient,
}

impl Lab {
    fn new(x: u8, y: u8, plaintext: &str) -> Result<Lab> {
        crmguard_lab::privileged::require_tools(&[
            ("wireguard-go", "wireguard-go"),
            ("wg", "wireguard-tools"),
            ("curl", "curl"),
        ])?;
        let t = Topology::ipv4_only(x, y)?;
        let alice = PeerSpec::new("alice", 2)?;
        let scratch = tempfile::tempdir()?;
        let body = format!(
            r#"[[interface]]
name = "{iface}"
xdp_mode = "native"

[firewall]
default = "drop"

[vpn]
listen_port = {WG_PORT}
address = "10.77.0.1/24"
address6 = "fd77::1/64"
private_key_file = "{dir}/wg.key"
peers_file = "{dir}/peers.toml"

[[role]]
name = "staff"
allow = ["tcp/443", "tcp/80", "tcp/5432", "tcp/3306", "tcp/6379", "tcp/22", "tcp/25"]

{peer}
{inspection}"#,
            iface = t.host_if.name(),
            dir = scratch.path().display(),
            peer = alice.toml(),
            inspection = INSPECTION.replace("PLAINTEXT", plaintext),
        );
        Ok(Lab {
            t,
            alice,
            body,
            _scratch: scratch,
        })
    }

    fn run(&self) -> Result<Running<'_>> {
        let agent = Agent::start(&self.t.host, &self.body)?;
        let gateway = gateway_key(&agent)?;
        let client =
            self.alice
                .connect(&self.t.out, &gateway, gateway_endpoint(self.t.addrs.host4))?;
        wait_reachable(&self.t.out, IpAddr::V4(GATEWAY4))?;
        Ok(Running {
            t: &self.t,
            agent,
            _client: client,
        })
    }
}

impl Running<'_> {
    fn gateway(&self) -> IpAddr {
        IpAddr::V4(GATEWAY4)
    }

    /// Runs `program args` on the laptop with a deadline of 20 s.
    fn client(&self, program: &str, args: &[&str], env: &[(&str, &str)]) -> Result<Output> {
        let mut cmd = Command::new("timeout");
        cmd.arg("20").arg(program).args(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        process::output_in(&self.t.out, cmd)
    }

    fn metric(&self, name: &str, label: (&str, &str)) -> Result<f64> {
        metric(&self.agent, name, &[label])
    }

    fn violations(&self, kind: &str) -> Result<f64> {
        self.metric("crmguard_inspect_violations_total", ("kind", kind))
    }

    fn failures(&self, protocol: &str) -> Result<f64> {
        self.metric("crmguard_auth_failures_total", ("protocol", protocol))
    }

    fn flows(&self, protocol: &str) -> Result<f64> {
        self.metric("crmguard_inspect_flows_total", ("protocol", protocol))
    }

    /// Waits until `read` reaches `at_least`.
    fn wait_count(&self, what: &str, at_least: f64, read: impl Fn() -> Result<f64>) -> Result<()> {
        wait_for(SETTLE, what, || {
            let now = read()?;
            Ok((now >= at_least).then_some(()))
        })
        .with_context(|| format!("{what}: now {:?}", read().ok()))
    }

    /// The audit log's records, once the agent has stopped and flushed its folded minutes.
    fn audit_after_stop(&mut self) -> Result<Vec<serde_json::Value>> {
        self.agent.stop()?;
        let text = std::fs::read_to_string(self.agent.dir().join("audit.jsonl"))?;
        text.lines()
            .map(|line| serde_json::from_str(line).context("an audit record"))
            .collect()
    }
}

fn text(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn tls_is_held_to_its_version_and_names_and_a_chromium_page_loads() -> Result<()> {
    if !privileged::require(
        "inspection::tls_is_held_to_its_version_and_names_and_a_chromium_page_loads",
    ) {
        return Ok(());
    }
    let setup = Lab::new(171, 1, "alert")?;
    let mut lab = setup.run()?;
    let _nginx = Nginx::start(
        &lab.t.host,
        lab.gateway(),
        NginxPorts {
            tls: 443,
            http: 80,
            h2c: 8080,
        },
        NGINX_USER,
        PASSWORD,
    )?;
    let resolve = |name: &str| format!("{name}:443:{GATEWAY4}");

    // An allowed name over TLS 1.3 and 1.2: served.
    for version in ["--tlsv1.3", "--tlsv1.2"] {
        let out = lab.client(
            "curl",
            &[
                "-sS",
                "-k",
                version,
                "--tls-max",
                &version[6..],
                "--resolve",
                &resolve(servers::SERVER_NAME),
                "https://crm.example.com/",
            ],
            &[],
        )?;
        ensure!(
            out.status.success() && String::from_utf8_lossy(&out.stdout).contains("CRM"),
            "curl {version} with an allowed name: {}",
            text(&out)
        );
    }
    lab.wait_count("two TLS flows", 2.0, || lab.flows("tls"))?;

    // A name outside sni_allow: the flow is reset before the server answers.
    let out = lab.client(
        "curl",
        &[
            "-sS",
            "-k",
            "--resolve",
            &resolve("files.example.net"),
            "https://files.example.net/",
        ],
        &[],
    )?;
    ensure!(
        !out.status.success(),
        "a forbidden name was served: {}",
        text(&out)
    );
    lab.wait_count("the sni violation", 1.0, || lab.violations("sni"))?;

    // openssl forced to TLS 1.1 offers nothing acceptable: refused. TLS 1.3 passes.
    let connect = format!("{GATEWAY4}:443");
    let out = lab.client(
        "openssl",
        &[
            "s_client",
            "-connect",
            &connect,
            "-servername",
            servers::SERVER_NAME,
            "-tls1_1",
            "-cipher",
            "DEFAULT@SECLEVEL=0",
        ],
        &[],
    )?;
    ensure!(
        !out.status.success(),
        "TLS 1.1 was let through: {}",
        text(&out)
    );
    lab.wait_count("the tls_version violation", 1.0, || {
        lab.violations("tls_version")
    })?;
    let out = lab.client(
        "openssl",
        &[
            "s_client",
            "-connect",
            &connect,
            "-servername",
            servers::SERVER_NAME,
            "-tls1_3",
        ],
        &[],
    )?;
    ensure!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("TLSv1.3"),
        "TLS 1.3 with an allowed name: {}",
        text(&out)
    );

    // Chromium: its ClientHello carries a post-quantum key share and spans two segments of
    // the tunnel's MSS; identified as TLS, its name allowed, the page loads.
    let before = lab.flows("tls")?;
    let violations_before = lab.violations("sni")? + lab.violations("tls_version")?;
    let mut browser = Browser::start_with(
        Some(lab.t.out.name()),
        &[
            "--ignore-certificate-errors",
            &format!("--host-resolver-rules=MAP crm.example.com {GATEWAY4}"),
        ],
    )?;
    let mut page = browser.page()?;
    page.navigate("https://crm.example.com/", Duration::from_secs(20))?;
    page.wait_for("document.title === 'CRM'", Duration::from_secs(20))?;
    lab.wait_count("Chromium's flow identified as TLS", before + 1.0, || {
        lab.flows("tls")
    })?;
    ensure!(
        lab.violations("sni")? + lab.violations("tls_version")? == violations_before,
        "Chromium's handshake was flagged"
    );

    // Something that is not TLS on tcp/443: protocol_mismatch = drop resets it.
    let out = lab.client(
        "curl",
        &["-sS", "-m", "5", &format!("http://{GATEWAY4}:443/")],
        &[],
    )?;
    ensure!(
        !out.status.success(),
        "plain HTTP on tcp/443 got an answer: {}",
        text(&out)
    );
    lab.wait_count("the protocol_mismatch violation", 1.0, || {
        lab.violations("protocol_mismatch")
    })?;

    // crmguard status shows the table and the sampled violations.
    let status = lab.agent.status()?;
    let recent = &status["inspection"]["recent"];
    let kinds: Vec<&str> = recent
        .as_array()
        .context("status has no inspection.recent")?
        .iter()
        .filter_map(|v| v["kind"].as_str())
        .collect();
    for kind in ["sni", "tls_version", "protocol_mismatch"] {
        ensure!(
            kinds.contains(&kind),
            "status lacks a {kind} violation: {recent}"
        );
    }
    drop(page);
    drop(browser);
    let records = lab.audit_after_stop()?;
    ensure!(
        records.iter().any(|r| r["type"] == "inspection_violation"
            && r["actor"] == "alice"
            && r["detail"]["service"]
                .as_str()
                .is_some_and(|s| s.contains("sni"))),
        "no inspection_violation record for the forbidden name"
    );
    Ok(())
}

#[test]
fn database_logins_are_seen_failing_and_cleartext_passwords_flagged() -> Result<()> {
    if !privileged::require(
        "inspection::database_logins_are_seen_failing_and_cleartext_passwords_flagged",
    ) {
        return Ok(());
    }
    let setup = Lab::new(171, 2, "alert")?;
    let mut lab = setup.run()?;
    let gw = lab.gateway();
    let _pg = Postgres::start(&lab.t.host, gw, 5432, PASSWORD)?;
    let _maria = MariaDb::start(&lab.t.host, gw, 3306, PASSWORD)?;
    let _redis = Redis::start(&lab.t.host, gw, 6379, PASSWORD)?;
    let psql = |sslmode: &str, password: &str| {
        lab.client(
            "psql",
            &[
                &format!("host={GATEWAY4} port=5432 user=crm dbname=crm sslmode={sslmode}"),
                "-X",
                "-A",
                "-t",
                "-c",
                "select 40 + 2",
            ],
            &[("PGPASSWORD", password)],
        )
    };

    // PostgreSQL without TLS, wrong password: the failure is seen and the cleartext password
    // flagged (pg_hba asks for `password`).
    let out = psql("disable", WRONG)?;
    ensure!(
        !out.status.success(),
        "a wrong password logged in: {}",
        text(&out)
    );
    lab.wait_count("the PostgreSQL failure", 1.0, || lab.failures("postgresql"))?;
    lab.wait_count("the cleartext password", 1.0, || {
        lab.violations("plaintext_credentials")
    })?;

    // With TLS: the exchange is encrypted, so nothing is flagged and the failure is not
    // visible on the wire (the server's own log is detection's source for it).
    let flagged = lab.violations("plaintext_credentials")?;
    let failures = lab.failures("postgresql")?;
    let out = psql("require", WRONG)?;
    ensure!(
        !out.status.success(),
        "a wrong password logged in over TLS: {}",
        text(&out)
    );
    ensure!(
        lab.violations("plaintext_credentials")? == flagged,
        "a password inside TLS was flagged"
    );
    ensure!(
        lab.failures("postgresql")? == failures,
        "a failure inside TLS was counted"
    );

    // The right password works (alert does not drop).
    let out = psql("disable", PASSWORD)?;
    ensure!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "42",
        "the right password: {}",
        text(&out)
    );
    lab.wait_count("four PostgreSQL flows", 3.0, || lab.flows("postgresql"))?;

    // MariaDB, wrong password: ERR 1045.
    let out = lab.client(
        "mysql",
        &[
            "-h",
            &GATEWAY4.to_string(),
            "-P",
            "3306",
            "-u",
            "crm",
            &format!("-p{WRONG}"),
            "--skip-ssl",
            "-e",
            "select 1",
        ],
        &[],
    )?;
    ensure!(
        !out.status.success(),
        "mysql with a wrong password: {}",
        text(&out)
    );
    lab.wait_count("the MySQL failure", 1.0, || lab.failures("mysql"))?;

    // Redis, wrong password: WRONGPASS, and AUTH in the clear.
    let flagged = lab.violations("plaintext_credentials")?;
    let out = lab.client(
        "redis-cli",
        &[
            "-h",
            &GATEWAY4.to_string(),
            "-p",
            "6379",
            "--no-auth-warning",
            "-a",
            WRONG,
            "PING",
        ],
        &[],
    )?;
    ensure!(
        !String::from_utf8_lossy(&out.stdout).contains("PONG"),
        "redis with a wrong password: {}",
        text(&out)
    );
    lab.wait_count("the Redis failure", 1.0, || lab.failures("redis"))?;
    lab.wait_count("AUTH in the clear", flagged + 1.0, || {
        lab.violations("plaintext_credentials")
    })?;

    let records = lab.audit_after_stop()?;
    for protocol in ["postgresql", "mysql", "redis"] {
        ensure!(
            records.iter().any(|r| r["type"] == "auth_failure"
                && r["actor"] == "alice"
                && r["detail"]["service"]
                    .as_str()
                    .is_some_and(|s| s.contains(protocol))),
            "no auth_failure record for {protocol}"
        );
    }
    Ok(())
}

#[test]
fn smtp_auth_before_starttls_ssh_and_basic_auth_under_alert_then_drop() -> Result<()> {
    if !privileged::require(
        "inspection::smtp_auth_before_starttls_ssh_and_basic_auth_under_alert_then_drop",
    ) {
        return Ok(());
    }
    let setup = Lab::new(171, 3, "alert")?;
    let lab = setup.run()?;
    let gw = lab.gateway();
    let _smtp = Smtp::start(&lab.t.host, gw, 25, "crm", PASSWORD)?;
    let _sshd = Sshd::start(&lab.t.host, gw, 22)?;
    let _nginx = Nginx::start(
        &lab.t.host,
        gw,
        NginxPorts {
            tls: 443,
            http: 80,
            h2c: 8080,
        },
        NGINX_USER,
        PASSWORD,
    )?;

    // SMTP AUTH before STARTTLS with a wrong password: 535 counted, the password flagged.
    let out = lab.client(
        "swaks",
        &[
            "--server",
            &format!("{GATEWAY4}:25"),
            "--to",
            "sales@crm.example.com",
            "--from",
            "alice@crm.example.com",
            "--auth",
            "LOGIN",
            "--auth-user",
            "crm",
            "--auth-password",
            WRONG,
            "--timeout",
            "10",
        ],
        &[],
    )?;
    ensure!(
        !out.status.success(),
        "swaks with a wrong password: {}",
        text(&out)
    );
    lab.wait_count("the SMTP failure", 1.0, || lab.failures("smtp"))?;
    lab.wait_count("AUTH before STARTTLS", 1.0, || {
        lab.violations("plaintext_credentials")
    })?;

    // ssh: identified, nothing flagged.
    let flagged = lab.violations("plaintext_credentials")?;
    let _ = lab.client(
        "ssh",
        &[
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "BatchMode=yes",
            "-o",
            "ConnectTimeout=10",
            &format!("nobody@{GATEWAY4}"),
            "true",
        ],
        &[],
    )?;
    lab.wait_count("the SSH flow", 1.0, || lab.flows("ssh"))?;
    ensure!(
        lab.violations("plaintext_credentials")? == flagged,
        "ssh was flagged"
    );
    ensure!(
        lab.violations("protocol_mismatch")? == 0.0,
        "ssh was a mismatch"
    );

    // Basic auth over plain HTTP: flagged under alert, and served.
    let basic = format!("{NGINX_USER}:{PASSWORD}");
    let url = format!("http://{GATEWAY4}/private/");
    let out = lab.client("curl", &["-sS", "-f", "-u", &basic, &url], &[])?;
    ensure!(
        out.status.success(),
        "basic auth under alert: {}",
        text(&out)
    );
    lab.wait_count("Basic in the clear", flagged + 1.0, || {
        lab.violations("plaintext_credentials")
    })?;

    // A wrong password: 401, a failed login. A web form whose failure answers 200 (the
    // operator's login_failure rule): a failed login too, and its password field is flagged.
    let failures = lab.failures("http")?;
    let out = lab.client(
        "curl",
        &[
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-u",
            &format!("{NGINX_USER}:{WRONG}"),
            &url,
        ],
        &[],
    )?;
    ensure!(
        String::from_utf8_lossy(&out.stdout) == "401",
        "a wrong password: {}",
        text(&out)
    );
    lab.wait_count("the 401", failures + 1.0, || lab.failures("http"))?;
    let flagged = lab.violations("plaintext_credentials")?;
    let out = lab.client(
        "curl",
        &[
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-d",
            "user=alice&password=guess",
            &format!("http://{GATEWAY4}/login"),
        ],
        &[],
    )?;
    ensure!(
        String::from_utf8_lossy(&out.stdout) == "200",
        "the login form: {}",
        text(&out)
    );
    lab.wait_count("the form's failed login", failures + 2.0, || {
        lab.failures("http")
    })?;
    lab.wait_count("the form's password", flagged + 1.0, || {
        lab.violations("plaintext_credentials")
    })?;

    // Under drop (a reload), the same request is cut by a reset and never served.
    let config = std::fs::read_to_string(lab.agent.config_path())?;
    std::fs::write(
        lab.agent.config_path(),
        config.replace(
            "plaintext_credentials = \"alert\"",
            "plaintext_credentials = \"drop\"",
        ),
    )?;
    let reload = lab.agent.cli(&["reload"])?;
    ensure!(reload.status.success(), "reload: {}", text(&reload));
    let flagged = lab.violations("plaintext_credentials")?;
    let out = lab.client("curl", &["-sS", "-f", "-m", "5", "-u", &basic, &url], &[])?;
    ensure!(
        !out.status.success(),
        "basic auth under drop was served: {}",
        text(&out)
    );
    lab.wait_count("the dropped credential", flagged + 1.0, || {
        lab.violations("plaintext_credentials")
    })?;
    let status = lab.agent.status()?;
    let recent = status["inspection"]["recent"]
        .as_array()
        .context("status has no inspection.recent")?
        .clone();
    ensure!(
        recent
            .iter()
            .any(|v| v["kind"] == "plaintext_credentials" && v["response"] == "reset"),
        "no reset plaintext_credentials in status: {recent:?}"
    );
    Ok(())
}
