//! The VPN section: a staff member's laptop reaches the CRM through crmguard's WireGuard gateway
//! by the product's own commands (`peer add`, `mfa enroll`, `peer list`, `peer disable`,
//! `audit verify`), signs in at the MFA portal, and loses the tunnel the moment an administrator
//! disables it; the audit log keeps the story.
//!
//! The laptop is wireguard-go, a WireGuard implementation independent of crmguard's, in the
//! staff namespace, configured with `wg` and `ip` from the client configuration `peer add`
//! prints, the way wg-quick would. `oathtool` plays the authenticator app.
//!
//! This module owns the laptop's wireguard-go process and its control socket and removes both
//! when done, also on an error or Ctrl-C; the namespaces belong to lab.rs.

use std::fs::OpenOptions;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use super::agent::Status;
use super::config::{self, CRM_PORT, ISSUER, PORTAL_PORT, ROLE, VPN_GATEWAY, WG_PORT};
use super::lab::{HOST, STAFF_NS, STAFF_WG_IF};
use super::probe::{self, Outcome};
use super::{check_interrupt, Demo};
use crmguard_lab::netns::nsenter;
use crmguard_lab::process::{self, Process};
use crmguard_lab::{cmd, wg};

/// The staff member whose laptop the section provisions.
const PEER: &str = "alice";
/// How long the first packet through the tunnel may take to be answered: it starts the
/// handshake.
const REACH_WITHIN: Duration = Duration::from_secs(10);
/// How long the XDP counters may take to show the handshake.
const COUNTED_WITHIN: Duration = Duration::from_secs(2);
/// How long an audit record may take to appear. The agent notices handshakes by looking at the
/// gateway once a second, so it records one up to a second after it happened.
const AUDITED_WITHIN: Duration = Duration::from_secs(3);
/// The audit records about [`PEER`] the lifecycle must leave, by type.
const AUDITED: &[&str] = &[
    "peer_added",
    "peer_handshake",
    "mfa_success",
    "peer_disabled",
];
/// How many lines of the audit log the section prints.
const AUDIT_TAIL: usize = 6;

/// What a probe through the tunnel should get back.
#[derive(Clone, Copy)]
enum Want {
    /// The server's greeting.
    Answer,
    /// A TCP reset: the gateway's ACL refuses the connection at once.
    Reset,
    /// Nothing: the gateway drops the packets.
    Silence,
}

impl Want {
    fn met_by(self, outcome: &Outcome) -> bool {
        matches!(
            (self, outcome),
            (Want::Answer, Outcome::Answered(_))
                | (Want::Reset, Outcome::Refused)
                | (Want::Silence, Outcome::NoAnswer)
        )
    }

    fn verdict(self) -> &'static str {
        match self {
            Want::Answer => "ALLOWED",
            Want::Reset => "REFUSED",
            Want::Silence => "DROPPED",
        }
    }
}

/// Where a probe through the tunnel goes.
#[derive(Clone, Copy)]
enum Target {
    /// The CRM service on the gateway's tunnel address.
    Crm,
    /// The gateway's tunnel address itself (ICMP echo).
    Gateway,
}

/// What `crmguard` printed, and whether it exited 0.
struct Said {
    ok: bool,
    stdout: String,
}

impl Demo {
    /// The section "VPN staff access with MFA". Needs the agent running with the demo's `[vpn]`.
    pub(super) fn show_vpn(&mut self) -> Result<()> {
        let status = self.cli.status()?;
        let Some(vpn) = status.vpn else {
            bail!("`crmguard status` reports no VPN gateway although the configuration has [vpn]");
        };
        if !vpn.running {
            bail!(
                "the VPN gateway does not run: {}",
                vpn.error.as_deref().unwrap_or("no reason given")
            );
        }
        let gateway_key = vpn
            .public_key
            .context("`crmguard status` names no public key for the VPN gateway")?;
        println!(
            "  gateway: TUN {} with {VPN_GATEWAY}, WireGuard on udp/{}, MFA portal on \
             {VPN_GATEWAY}:{PORTAL_PORT}",
            vpn.interface, vpn.listen_port
        );
        if vpn.listen_port != u64::from(WG_PORT) {
            self.fail(format!(
                "the gateway listens on udp/{}, the configuration says {WG_PORT}",
                vpn.listen_port
            ));
        }
        println!(
            "  (every `crmguard` below runs on the host with --config {})",
            self.cli.config.display()
        );

        println!("\n  The administrator registers {PEER}'s laptop in the role {ROLE}:");
        let endpoint = HOST.v4.to_string();
        let said = self.admin(&["peer", "add", PEER, "--role", ROLE, "--endpoint", &endpoint])?;
        if !said.ok {
            bail!("`crmguard peer add {PEER}` failed; its output is above");
        }
        let client = ClientConfig::parse(&said.stdout)?;
        self.check_client_config(&client, &said.stdout, &gateway_key);
        let peer_addr = client.tunnel_v4()?;

        println!("\n  On the laptop ({STAFF_NS}): wireguard-go, set up from that configuration");
        let key_file = self.workdir.join(format!("{PEER}.key"));
        write_secret(&key_file, &client.private_key)?;
        let before = self.cli.status()?;
        let device = WgDevice::start(
            STAFF_NS,
            STAFF_WG_IF,
            &self.workdir.join("wireguard-go.log"),
        )?;
        device.configure(&client, &key_file)?;
        self.show_reachable(peer_addr, &before)?;

        println!("\n  {PEER} enrolls in the second factor:");
        let said = self.admin(&["mfa", "enroll", PEER])?;
        if !said.ok {
            bail!("`crmguard mfa enroll {PEER}` failed; its output is above");
        }
        let uri = said
            .stdout
            .lines()
            .find(|line| line.starts_with("otpauth://"))
            .context("`crmguard mfa enroll` printed no otpauth:// URI")?;
        let issuer = format!("issuer={}", ISSUER.replace(' ', "%20"));
        if !uri.contains(&issuer) {
            self.fail(format!(
                "the otpauth URI names another issuer than {ISSUER:?}: {uri}"
            ));
        }
        let secret = otpauth_secret(uri)?;

        println!("\n  Before signing in, only the MFA portal is open to {PEER}, not the CRM:");
        self.through_tunnel(
            peer_addr,
            Target::Crm,
            Want::Reset,
            "no MFA session: the gateway's ACL resets",
        )?;

        println!("\n  What the authenticator app shows now:");
        let code = totp(&secret)?;
        println!("\n  {PEER} signs in at the portal with it, through the tunnel:");
        let answer = sign_in(&code)?;
        println!("    {answer}");
        let opened = serde_json::from_str::<Value>(&answer)
            .is_ok_and(|json| json["peer"] == PEER && json["expires"].is_string());
        if !opened {
            self.fail(format!(
                "signing in at the portal did not open a session: {answer}"
            ));
        }
        self.through_tunnel(
            peer_addr,
            Target::Crm,
            Want::Answer,
            "signed in: the role's services are open",
        )?;

        println!("\n  The administrator's view:");
        let said = self.admin(&["peer", "list"])?;
        let listed = said.stdout.lines().any(|line| {
            line.split_whitespace().next() == Some(PEER)
                && line.contains("admitted")
                && line.contains("session until")
        });
        if !said.ok || !listed {
            self.fail(format!(
                "`crmguard peer list` does not show {PEER} admitted with an MFA session"
            ));
        }

        println!("\n  The laptop is lost; the administrator disables {PEER}:");
        let said = self.admin(&["peer", "disable", PEER])?;
        if !said.ok || !said.stdout.contains(&format!("disabled {PEER}")) {
            self.fail(format!(
                "`crmguard peer disable {PEER}` did not say it disabled {PEER}"
            ));
        }
        println!("  right after the command returned:");
        self.through_tunnel(
            peer_addr,
            Target::Crm,
            Want::Silence,
            "disabled: the gateway drops the tunnel",
        )?;
        self.through_tunnel(
            peer_addr,
            Target::Gateway,
            Want::Silence,
            "the tunnel itself is gone",
        )?;
        drop(device);

        self.show_audit()
    }

    /// Runs `crmguard --config FILE ARGS...` as the administrator would on the host, and shows
    /// the command (without the --config every call carries) and what it printed.
    fn admin(&self, args: &[&str]) -> Result<Said> {
        let mut shown = Command::new("crmguard");
        shown.args(args);
        println!("  $ {}", cmd::display(&shown));
        let mut command = self.cli.admin(args);
        let out = cmd::output(&mut command)?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        print_indented(&stdout);
        print_indented(&String::from_utf8_lossy(&out.stderr));
        Ok(Said {
            ok: out.status.success(),
            stdout,
        })
    }

    /// The printed client configuration must name this gateway, be reachable at the lab
    /// host's address, and come with a QR code.
    fn check_client_config(&mut self, client: &ClientConfig, printed: &str, gateway_key: &str) {
        if client.public_key != gateway_key {
            self.fail(format!(
                "the client configuration names gateway key {}, the gateway has {gateway_key}",
                client.public_key
            ));
        }
        let endpoint = format!("{}:{WG_PORT}", HOST.v4);
        if client.endpoint != endpoint {
            self.fail(format!(
                "the client configuration's endpoint is {}, expected {endpoint}",
                client.endpoint
            ));
        }
        // The QR code is drawn with half and full blocks.
        if !printed.contains(['\u{2580}', '\u{2584}', '\u{2588}']) {
            self.fail("`crmguard peer add` printed no QR code".to_owned());
        }
    }

    /// Pings the gateway through the tunnel until it answers (the first packet starts the
    /// handshake), then shows that the XDP filter let the WireGuard messages through and waits
    /// for the agent to audit the handshake.
    fn show_reachable(&mut self, from: IpAddr, before: &Status) -> Result<()> {
        let dst = IpAddr::V4(VPN_GATEWAY);
        let start = Instant::now();
        let outcome = loop {
            check_interrupt()?;
            let outcome = probe::ping(STAFF_NS, from, dst)?;
            if matches!(outcome, Outcome::Answered(_)) || start.elapsed() >= REACH_WITHIN {
                break outcome;
            }
        };
        let took = start.elapsed();
        let passed = self.wireguard_passed(before)?;
        // A peer disabled before the agent noticed its handshake leaves no record of it, so the
        // section goes on only once the record is there.
        let (_, unrecorded) = self.await_audit(&["peer_handshake"])?;

        let mut line = probe::line(&outcome, PEER, from, dst, "icmp echo");
        if passed > 0 {
            line.push_str(&format!("  [pass/wireguard +{passed}]"));
        }
        let mut problems = Vec::new();
        match outcome {
            Outcome::Answered(_) => line.push_str(&format!(
                "\n           the first packet started the handshake; answered after {} ms",
                took.as_millis()
            )),
            _ => problems.push(format!(
                "the gateway did not answer through the tunnel within {} s",
                REACH_WITHIN.as_secs()
            )),
        }
        if passed == 0 {
            problems.push(format!(
                "the XDP filter counted no WireGuard packet to udp/{WG_PORT} as passed"
            ));
        }
        if !unrecorded.is_empty() {
            problems.push(format!(
                "the audit log has no peer_handshake record for {PEER} {} s after the handshake",
                AUDITED_WITHIN.as_secs()
            ));
        }
        for problem in problems {
            line.push_str(&format!("\n           << UNEXPECTED: {problem}"));
            self.fail(problem);
        }
        println!("{line}");
        Ok(())
    }

    /// Packets the XDP filter passed as WireGuard since `before`, polled for up to
    /// [`COUNTED_WITHIN`] in case the agent reads the kernel's counters periodically.
    fn wireguard_passed(&self, before: &Status) -> Result<u64> {
        let deadline = Instant::now() + COUNTED_WITHIN;
        loop {
            check_interrupt()?;
            let passed = self
                .cli
                .status()?
                .growth_since(before)
                .get("pass/wireguard")
                .copied()
                .unwrap_or(0);
            if passed > 0 || Instant::now() >= deadline {
                return Ok(passed);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The audit log once it has a record about [`PEER`] of each type in `wanted`, or after
    /// [`AUDITED_WITHIN`]; and the types still missing then.
    fn await_audit(&self, wanted: &[&'static str]) -> Result<(String, Vec<&'static str>)> {
        let path = config::audit_path(&self.state_dir());
        let deadline = Instant::now() + AUDITED_WITHIN;
        loop {
            check_interrupt()?;
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            let missing = missing_records(&text, wanted);
            if missing.is_empty() || Instant::now() >= deadline {
                return Ok((text, missing));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// One probe from the laptop's tunnel address to the gateway, with the reason the outcome
    /// is what it is.
    fn through_tunnel(&mut self, from: IpAddr, to: Target, want: Want, why: &str) -> Result<()> {
        check_interrupt()?;
        let dst = IpAddr::V4(VPN_GATEWAY);
        let (what, outcome) = match to {
            Target::Crm => (
                format!("tcp/{CRM_PORT}"),
                probe::tcp(STAFF_NS, from, dst, CRM_PORT)?,
            ),
            Target::Gateway => ("icmp echo".to_owned(), probe::ping(STAFF_NS, from, dst)?),
        };
        let mut line = probe::line(&outcome, PEER, from, dst, &what);
        if want.met_by(&outcome) {
            line.push_str(&format!("  ({why})"));
        } else {
            let problem = format!("expected {}: {why}", want.verdict());
            line.push_str(&format!("  << UNEXPECTED: {problem}"));
            self.fail(format!("{PEER} {from} -> {dst} {what}: {problem}"));
        }
        println!("{line}");
        Ok(())
    }

    /// The last records of the audit log, once the lifecycle's records are all in it, and
    /// `crmguard audit verify` on the whole log.
    fn show_audit(&mut self) -> Result<()> {
        let path = config::audit_path(&self.state_dir());
        let (text, missing) = self.await_audit(AUDITED)?;
        println!(
            "\n  The audit log ({}), last {AUDIT_TAIL} records:",
            path.display()
        );
        let lines: Vec<&str> = text.lines().collect();
        for line in &lines[lines.len().saturating_sub(AUDIT_TAIL)..] {
            println!("    {line}");
        }
        if !missing.is_empty() {
            self.fail(format!(
                "the audit log has no {} record for {PEER}",
                missing.join(", ")
            ));
        }
        // The log with any segments rotation left, as an administrator checks it.
        let said = self.admin(&["audit", "verify"])?;
        if !said.ok || !said.stdout.starts_with("ok:") {
            self.fail("`crmguard audit verify` did not find the audit log intact".to_owned());
        }
        Ok(())
    }
}

/// The types of `wanted` that have no record about [`PEER`] in the audit log `text`.
fn missing_records(text: &str, wanted: &[&'static str]) -> Vec<&'static str> {
    let records: Vec<Value> = text
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect();
    wanted
        .iter()
        .copied()
        .filter(|kind| {
            !records.iter().any(|record| {
                record["type"] == *kind
                    && (record["actor"] == PEER || record["detail"]["peer"] == PEER)
            })
        })
        .collect()
}

/// `oathtool --totp -b SECRET`: the code an authenticator app shows for `secret` now.
fn totp(secret: &str) -> Result<String> {
    let mut oathtool = Command::new("oathtool");
    oathtool.args(["--totp", "-b", secret]);
    println!("  $ {}", cmd::display(&oathtool));
    let code = cmd::stdout_of(&mut oathtool)?.trim().to_owned();
    println!("    {code}");
    if code.len() != 6 || !code.bytes().all(|b| b.is_ascii_digit()) {
        bail!("`oathtool` printed {code:?}, not a six-digit code");
    }
    Ok(code)
}

/// POSTs `code` to the MFA portal from the laptop, as a script would; the portal's JSON answer.
fn sign_in(code: &str) -> Result<String> {
    let url = format!("http://{VPN_GATEWAY}:{PORTAL_PORT}/session");
    let body = format!(r#"{{"code":"{code}"}}"#);
    let answer = on_laptop(
        "curl",
        &[
            "-s",
            "-m",
            "5",
            "-X",
            "POST",
            &url,
            "-H",
            "Content-Type: application/json",
            "-d",
            &body,
        ],
    )?;
    Ok(answer.trim().to_owned())
}

/// Runs `program args...` in the staff namespace, shown with the laptop's prompt; its stdout.
fn on_laptop(program: &str, args: &[&str]) -> Result<String> {
    let mut shown = Command::new(program);
    shown.args(args);
    println!("  staff$ {}", cmd::display(&shown));
    let mut command = nsenter(STAFF_NS, program);
    command.args(args);
    cmd::stdout_of(&mut command)
}

/// Writes `secret` to a new file only its owner can read.
fn write_secret(path: &Path, secret: &str) -> Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    writeln!(file, "{secret}").with_context(|| format!("cannot write {}", path.display()))
}

fn print_indented(text: &str) {
    for line in text.lines() {
        if line.is_empty() {
            println!();
        } else {
            println!("    {line}");
        }
    }
}

/// The base32 secret of an `otpauth://totp/...?secret=...` URI.
fn otpauth_secret(uri: &str) -> Result<String> {
    let (_, query) = uri
        .split_once('?')
        .with_context(|| format!("the otpauth URI has no query: {uri}"))?;
    query
        .split('&')
        .find_map(|pair| pair.strip_prefix("secret="))
        .filter(|secret| !secret.is_empty())
        .map(str::to_owned)
        .with_context(|| format!("the otpauth URI has no secret: {uri}"))
}

/// The wg-quick client configuration `crmguard peer add` prints, as far as the laptop needs it.
#[derive(Debug, PartialEq, Eq)]
struct ClientConfig {
    private_key: String,
    /// `Address`: the laptop's tunnel addresses, with prefix lengths.
    addresses: Vec<String>,
    /// `PublicKey` of the `[Peer]`: the gateway.
    public_key: String,
    endpoint: String,
    allowed_ips: Vec<String>,
    persistent_keepalive: Option<String>,
}

impl ClientConfig {
    fn parse(text: &str) -> Result<ClientConfig> {
        let value = |key: &str| {
            text.lines().find_map(|line| {
                let (name, value) = line.split_once('=')?;
                (name.trim() == key).then(|| value.trim().to_owned())
            })
        };
        let required = |key: &str| {
            value(key).with_context(|| format!("no `{key} =` in the printed configuration"))
        };
        let list = |key: &str| -> Result<Vec<String>> {
            Ok(required(key)?
                .split(',')
                .map(str::trim)
                .filter(|item| !item.is_empty())
                .map(str::to_owned)
                .collect())
        };
        Ok(ClientConfig {
            private_key: required("PrivateKey")?,
            addresses: list("Address")?,
            public_key: required("PublicKey")?,
            endpoint: required("Endpoint")?,
            allowed_ips: list("AllowedIPs")?,
            persistent_keepalive: value("PersistentKeepalive"),
        })
    }

    /// The laptop's IPv4 address inside the tunnel.
    fn tunnel_v4(&self) -> Result<IpAddr> {
        self.addresses
            .iter()
            .filter_map(|cidr| cidr.split('/').next()?.parse::<Ipv4Addr>().ok())
            .map(IpAddr::V4)
            .next()
            .with_context(|| {
                format!(
                    "no IPv4 address in `Address = {}`",
                    self.addresses.join(", ")
                )
            })
    }
}

/// The laptop's wireguard-go device. Dropping it kills the process, which takes the interface
/// with it, and removes the control socket, which a killed wireguard-go leaves behind.
struct WgDevice {
    ifname: &'static str,
    process: Process,
    socket: PathBuf,
}

impl WgDevice {
    /// Starts wireguard-go for `ifname` in `ns`, in the foreground (so that the demo owns the
    /// process) and in a process group of its own (so that Ctrl-C reaches only the demo), and
    /// waits for its control socket.
    fn start(ns: &str, ifname: &'static str, log: &Path) -> Result<WgDevice> {
        let mut wireguard = nsenter(ns, "wireguard-go");
        wireguard
            .args(["-f", ifname])
            .env("WG_PROCESS_FOREGROUND", "1");
        println!("  staff$ WG_PROCESS_FOREGROUND=1 wireguard-go -f {ifname} &");
        let mut process = Process::spawn_logged(wireguard, "wireguard-go", log, Duration::ZERO)?;
        let socket = wg::socket_path(ifname);
        process.remove_on_drop(socket.clone());
        let mut device = WgDevice {
            ifname,
            process,
            socket,
        };
        device.wait_socket()?;
        Ok(device)
    }

    fn wait_socket(&mut self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            check_interrupt()?;
            if self.socket.exists() {
                return Ok(());
            }
            if let Some(status) = self.process.try_wait()? {
                bail!(
                    "wireguard-go exited ({}) before it opened {}:\n{}",
                    process::describe(status),
                    self.socket.display(),
                    self.process.stdout()
                );
            }
            if Instant::now() >= deadline {
                bail!(
                    "wireguard-go did not open {} within 5 s",
                    self.socket.display()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// What wg-quick would do with `client`: the key, the gateway as the one peer, the
    /// addresses, the link up, and a route for each of the allowed networks.
    fn configure(&self, client: &ClientConfig, key_file: &Path) -> Result<()> {
        let key_file = key_file.to_string_lossy();
        let allowed = client.allowed_ips.join(",");
        let mut wg = vec![
            "set",
            self.ifname,
            "private-key",
            &key_file,
            "peer",
            &client.public_key,
            "endpoint",
            &client.endpoint,
            "allowed-ips",
            &allowed,
        ];
        if let Some(seconds) = &client.persistent_keepalive {
            wg.extend(["persistent-keepalive", seconds]);
        }
        on_laptop("wg", &wg)?;
        for address in &client.addresses {
            on_laptop("ip", &["address", "add", address, "dev", self.ifname])?;
        }
        on_laptop("ip", &["link", "set", self.ifname, "up"])?;
        for net in &client.allowed_ips {
            on_laptop("ip", &["route", "add", net, "dev", self.ifname])?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_printed_client_configuration() {
        let printed = "added alice (role sales, address 10.77.0.2)\n\
                       \u{2588}\u{2580} (the QR code)\n\
                       # crmguard: WireGuard client configuration for peer alice\n\
                       [Interface]\n\
                       PrivateKey = cHJpdmF0ZQ==\n\
                       Address = 10.77.0.2/32, fd77::2/128\n\
                       \n\
                       [Peer]\n\
                       PublicKey = cHVibGlj\n\
                       Endpoint = 10.250.0.1:51820\n\
                       AllowedIPs = 10.77.0.0/24, fd77::/64\n\
                       PersistentKeepalive = 25\n\
                       This is the only copy of alice's private key: give the configuration to \
                       the user now; crmguard keeps only the public key.\n";
        let client = ClientConfig::parse(printed).expect("parses");
        assert_eq!(
            client,
            ClientConfig {
                private_key: "cHJpdmF0ZQ==".to_owned(),
                addresses: vec!["10.77.0.2/32".to_owned(), "fd77::2/128".to_owned()],
                public_key: "cHVibGlj".to_owned(),
                endpoint: "10.250.0.1:51820".to_owned(),
                allowed_ips: vec!["10.77.0.0/24".to_owned(), "fd77::/64".to_owned()],
                persistent_keepalive: Some("25".to_owned()),
            }
        );
        assert_eq!(
            client.tunnel_v4().expect("an IPv4 address"),
            IpAddr::V4(Ipv4Addr::new(10, 77, 0, 2))
        );
        let missing = ClientConfig::parse("[Interface]\nPrivateKey = a\n");
        assert_eq!(
            missing.map_err(|e| e.to_string()),
            Err("no `Address =` in the printed configuration".to_owned())
        );
    }

    #[test]
    fn finds_the_secret_of_an_otpauth_uri() {
        let check = |uri: &str, expected: Option<&str>| {
            assert_eq!(otpauth_secret(uri).ok().as_deref(), expected, "{uri}");
        };
        check(
            "otpauth://totp/ACME%20CRM:alice?secret=GEZDGNBV&issuer=ACME%20CRM&digits=6",
            Some("GEZDGNBV"),
        );
        check("otpauth://totp/x:alice?issuer=x&secret=ABC", Some("ABC"));
        check("otpauth://totp/x:alice?issuer=x&secret=", None);
        check("otpauth://totp/x:alice", None);
    }

    #[test]
    fn counts_missing_audit_records() {
        let log = r#"{"type":"peer_added","actor":"admin:root","detail":{"peer":"alice"}}
{"type":"peer_handshake","actor":"alice"}
{"type":"mfa_success","actor":"bob"}
"#;
        assert_eq!(
            missing_records(log, AUDITED),
            vec!["mfa_success", "peer_disabled"]
        );
        assert_eq!(
            missing_records(log, &["peer_handshake"]),
            Vec::<&str>::new()
        );
    }
}
