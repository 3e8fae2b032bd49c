//! The demo's crmguard configuration: the lab's host-side interface, default drop, SSH from the
//! admin network, a web service (the CRM) for everyone, the attacker denied, and the WireGuard
//! gateway with a `sales` role that reaches the CRM through the tunnel after signing in (MFA).

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use super::lab::HOST_IF;

/// The metrics address inside the host namespace.
pub const METRICS: &str = "127.0.0.1:9184";
/// The CRM service: the `web` service of the firewall, and what the `sales` role may reach.
pub const CRM_PORT: u16 = 8080;
/// The gateway's WireGuard UDP port.
pub const WG_PORT: u16 = 51820;
/// The gateway's address inside the tunnel: staff reach the CRM and the MFA portal there.
pub const VPN_GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
/// The tunnel network's prefix length.
const VPN_PREFIX_LEN: u8 = 24;
/// The MFA portal's port on the gateway's tunnel address.
pub const PORTAL_PORT: u16 = 8443;
/// The `[mfa] issuer`, as authenticator apps show it.
pub const ISSUER: &str = "ACME CRM";
/// The role staff peers get: the CRM, after signing in.
pub const ROLE: &str = "sales";

pub struct Paths<'a> {
    pub state_dir: &'a Path,
    pub bpffs_dir: &'a Path,
    pub control_socket: &'a Path,
    pub private_key_file: &'a Path,
    pub peers_file: &'a Path,
}

pub fn render(paths: &Paths<'_>) -> String {
    let state_dir = quoted(paths.state_dir);
    let bpffs_dir = quoted(paths.bpffs_dir);
    let control_socket = quoted(paths.control_socket);
    let private_key_file = quoted(paths.private_key_file);
    let peers_file = quoted(paths.peers_file);
    let audit_path = quoted(&audit_path(paths.state_dir));
    let audit_key = quoted(&paths.state_dir.join("audit.key"));
    format!(
        r#"# crmguard configuration for the lab of `cargo xtask demo`.

[agent]
mode = "enforce"
state_dir = {state_dir}
bpffs_dir = {bpffs_dir}
control_socket = {control_socket}
log_format = "text"

[[interface]]
name = "{HOST_IF}"
xdp_mode = "native"

[firewall]
default = "drop"
allow_established = true
icmp = "essential"

[firewall.deny]
sources = ["10.250.0.66", "fd00:250::66"]

[[firewall.service]]
name = "ssh"
proto = "tcp"
ports = [22]
from = ["10.250.0.0/24", "fd00:250::/64"]

[[firewall.service]]
name = "web"
proto = "tcp"
ports = [{CRM_PORT}]

# The WireGuard gateway. The XDP filter lets well-formed WireGuard messages to listen_port
# through by itself; the tunnel's traffic is judged by the peer's role.
[vpn]
listen_port = {WG_PORT}
address = "{VPN_GATEWAY}/{VPN_PREFIX_LEN}"
private_key_file = {private_key_file}
peers_file = {peers_file}

[mfa]
portal_port = {PORTAL_PORT}
issuer = "{ISSUER}"

[[role]]
name = "{ROLE}"
allow = ["tcp/{CRM_PORT}"]
mfa = true

[metrics]
listen = "{METRICS}"

[audit]
path = {audit_path}
key_file = {audit_key}
"#
    )
}

/// The `[audit] path` of the configuration with `state_dir`.
pub fn audit_path(state_dir: &Path) -> PathBuf {
    state_dir.join("audit.jsonl")
}

/// A TOML basic string holding `path`.
fn quoted(path: &Path) -> String {
    let text = path.to_string_lossy();
    format!("\"{}\"", text.replace('\\', "\\\\").replace('"', "\\\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_toml_strings() {
        let text = render(&Paths {
            state_dir: Path::new("/tmp/cgdemo-1/state"),
            bpffs_dir: Path::new("/sys/fs/bpf/cgdemo-1"),
            control_socket: Path::new("/tmp/a \"b\"/control.sock"),
            private_key_file: Path::new("/tmp/cgdemo-1/wg.key"),
            peers_file: Path::new("/tmp/cgdemo-1/peers.toml"),
        });
        assert!(text.contains("state_dir = \"/tmp/cgdemo-1/state\"\n"));
        assert!(text.contains("control_socket = \"/tmp/a \\\"b\\\"/control.sock\"\n"));
        assert!(text.contains("peers_file = \"/tmp/cgdemo-1/peers.toml\"\n"));
    }
}
