//! WireGuard clients for the VPN scenarios: wireguard-go (an implementation independent of
//! crmguard's) in a namespace, configured with `wg`.
//!
//! wireguard-go keeps its control socket at `/var/run/wireguard/<ifname>.sock`, which is not per
//! network namespace, so every client gets a unique interface name. A [`WgClient`] kills its
//! process and removes the socket on drop; the interface goes away with the process.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tempfile::TempDir;

use crate::netns::NetNs;
use crate::process::{self, Process};
use crate::wait::wait_for;

/// Where WireGuard tools keep the sockets of userspace devices.
pub const SOCKET_DIR: &str = "/var/run/wireguard";

/// The control socket of the userspace WireGuard device `ifname`.
pub fn socket_path(ifname: &str) -> PathBuf {
    Path::new(SOCKET_DIR).join(format!("{ifname}.sock"))
}

/// A WireGuard key pair in base64.
#[derive(Debug, Clone)]
pub struct Keys {
    pub private: String,
    pub public: String,
}

/// A fresh key pair from `wg genkey` and `wg pubkey`.
pub fn genkey() -> Result<Keys> {
    let private = wg(&["genkey"], None)?.trim().to_owned();
    let public = wg(&["pubkey"], Some(&private))?.trim().to_owned();
    Ok(Keys { private, public })
}

/// A unique interface name (at most 15 bytes) starting with `prefix` (at most 4 bytes).
pub fn unique_ifname(prefix: &str) -> String {
    let name = format!("{prefix}{}", crate::unique_suffix());
    name.chars().take(15).collect()
}

/// Runs `wg args...`, feeding `stdin` if given, and returns its stdout.
pub fn wg(args: &[&str], stdin: Option<&str>) -> Result<String> {
    use std::io::Write;
    use std::process::Stdio;
    let mut child = Command::new("wg")
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting `wg` (apt-get install wireguard-tools)")?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes())?;
        pipe.write_all(b"\n")?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "`wg {}` failed ({}): {}",
            args.join(" "),
            process::describe(out.status),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A wireguard-go device in a namespace.
#[derive(Debug)]
pub struct WgClient {
    name: String,
    ns_name: String,
    socket: PathBuf,
    /// Declared before `dir`: the process writes its logs there.
    process: Option<Process>,
    dir: TempDir,
}

impl WgClient {
    /// Starts wireguard-go in `ns` with `keys`, gives its interface `addresses` (CIDR) and
    /// brings it up.
    pub fn start(ns: &NetNs, keys: &Keys, addresses: &[&str]) -> Result<WgClient> {
        let name = unique_ifname("cgw");
        let dir = tempfile::Builder::new()
            .prefix("crmguard-wg-")
            .tempdir()
            .context("creating the client's directory")?;
        let mut cmd = Command::new("wireguard-go");
        cmd.arg(&name).env("WG_PROCESS_FOREGROUND", "1");
        let process = Process::spawn(ns, cmd, dir.path(), &format!("wireguard-go-{name}"))?;
        let socket = socket_path(&name);
        let mut client = WgClient {
            name,
            ns_name: ns.name().to_owned(),
            socket,
            process: Some(process),
            dir,
        };
        wait_for(Duration::from_secs(10), "wireguard-go's socket", || {
            Ok(client.socket.exists().then_some(()))
        })?;
        let key_file = client.dir.path().join("private.key");
        std::fs::write(&key_file, format!("{}\n", keys.private))?;
        wg(
            &[
                "set",
                &client.name,
                "private-key",
                &key_file.display().to_string(),
            ],
            None,
        )?;
        for addr in addresses {
            client.add_addr(ns, addr)?;
        }
        ns.ip(&["link", "set", &client.name, "up"])?;
        if let Some(p) = client.process.as_mut() {
            if let Some(status) = p.try_wait()? {
                bail!("wireguard-go exited: {}", process::describe(status));
            }
        }
        Ok(client)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Adds an address (CIDR) to the interface; IPv6 without duplicate address detection.
    pub fn add_addr(&self, ns: &NetNs, cidr: &str) -> Result<()> {
        let mut args = vec!["addr", "add", cidr, "dev", self.name.as_str()];
        if cidr.contains(':') {
            args.push("nodad");
        }
        ns.ip(&args).map(drop)
    }

    /// Adds or updates the peer `public` at `endpoint`, routing `allowed_ips` to it.
    pub fn set_peer(&self, public: &str, endpoint: SocketAddr, allowed_ips: &[&str]) -> Result<()> {
        let endpoint = endpoint.to_string();
        let allowed = allowed_ips.join(",");
        wg(
            &[
                "set",
                &self.name,
                "peer",
                public,
                "endpoint",
                &endpoint,
                "allowed-ips",
                &allowed,
            ],
            None,
        )
        .map(drop)
    }

    /// Sends a keepalive to `public` every `seconds` of silence (`persistent-keepalive`).
    pub fn set_keepalive(&self, public: &str, seconds: u16) -> Result<()> {
        wg(
            &[
                "set",
                &self.name,
                "peer",
                public,
                "persistent-keepalive",
                &seconds.to_string(),
            ],
            None,
        )
        .map(drop)
    }

    /// Moves the device to another UDP port.
    pub fn set_listen_port(&self, port: u16) -> Result<()> {
        wg(&["set", &self.name, "listen-port", &port.to_string()], None).map(drop)
    }

    /// The UDP port the device listens on.
    pub fn listen_port(&self) -> Result<u16> {
        let out = wg(&["show", &self.name, "listen-port"], None)?;
        out.trim()
            .parse()
            .with_context(|| format!("`wg show {} listen-port` printed {out:?}", self.name))
    }

    /// `wg show NAME dump`.
    pub fn dump(&self) -> Result<String> {
        wg(&["show", &self.name, "dump"], None)
    }

    /// The namespace the device lives in.
    pub fn ns_name(&self) -> &str {
        &self.ns_name
    }
}

impl Drop for WgClient {
    fn drop(&mut self) {
        // Killing the process removes its interface; its socket file stays behind.
        drop(self.process.take());
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// One peer line of `wg show IFACE dump`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DumpPeer {
    pub public_key: String,
    pub endpoint: Option<String>,
    pub allowed_ips: Vec<String>,
    /// Unix seconds, 0 for never.
    pub latest_handshake: u64,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
}

/// The interface line and peer lines of `wg show IFACE dump`: (public key, listen port, peers).
pub fn parse_dump(text: &str) -> Result<(String, u16, Vec<DumpPeer>)> {
    let mut lines = text.lines();
    let head: Vec<&str> = lines.next().context("empty dump")?.split('\t').collect();
    if head.len() < 4 {
        bail!(
            "interface line of the dump has {} fields: {text:?}",
            head.len()
        );
    }
    let public = head[1].to_owned();
    let port = head[2].parse().context("listen port")?;
    let mut peers = Vec::new();
    for line in lines {
        let f: Vec<&str> = line.split('\t').collect();
        if f.len() < 8 {
            bail!("peer line of the dump has {} fields: {line:?}", f.len());
        }
        peers.push(DumpPeer {
            public_key: f[0].to_owned(),
            endpoint: (f[2] != "(none)").then(|| f[2].to_owned()),
            allowed_ips: if f[3] == "(none)" {
                Vec::new()
            } else {
                f[3].split(',').map(str::to_owned).collect()
            },
            latest_handshake: f[4].parse().context("latest handshake")?,
            rx_bytes: f[5].parse().context("rx bytes")?,
            tx_bytes: f[6].parse().context("tx bytes")?,
        });
    }
    Ok((public, port, peers))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_dump() {
        let text = "cHJpdg==\tcHVi\t51820\toff\n\
                    YWxpY2U=\t(none)\t10.1.2.2:4000\t10.77.0.2/32,fd77::2/128\t1700000000\t100\t200\toff\n\
                    Ym9i\t(none)\t(none)\t10.77.0.3/32\t0\t0\t0\toff\n";
        let (public, port, peers) = parse_dump(text).expect("parses");
        assert_eq!((public.as_str(), port), ("cHVi", 51820));
        assert_eq!(peers.len(), 2);
        assert_eq!(peers[0].endpoint.as_deref(), Some("10.1.2.2:4000"));
        assert_eq!(peers[0].allowed_ips, ["10.77.0.2/32", "fd77::2/128"]);
        assert_eq!(peers[0].latest_handshake, 1_700_000_000);
        assert_eq!((peers[0].rx_bytes, peers[0].tx_bytes), (100, 200));
        assert_eq!(peers[1].endpoint, None);
    }
}
