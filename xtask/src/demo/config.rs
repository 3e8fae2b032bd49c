//! The demo's crmguard configuration: the lab's host-side interface, default drop, SSH from the
//! admin network, a web service for everyone, the attacker denied, no VPN.

use std::path::Path;

use super::lab::HOST_IF;

/// The metrics address inside the host namespace.
pub const METRICS: &str = "127.0.0.1:9184";

pub struct Paths<'a> {
    pub state_dir: &'a Path,
    pub bpffs_dir: &'a Path,
    pub control_socket: &'a Path,
}

pub fn render(paths: &Paths<'_>) -> String {
    let state_dir = quoted(paths.state_dir);
    let bpffs_dir = quoted(paths.bpffs_dir);
    let control_socket = quoted(paths.control_socket);
    let audit_path = quoted(&paths.state_dir.join("audit.jsonl"));
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
ports = [8080]

[metrics]
listen = "{METRICS}"

[audit]
path = {audit_path}
key_file = {audit_key}
"#
    )
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
        });
        assert!(text.contains("state_dir = \"/tmp/cgdemo-1/state\"\n"));
        assert!(text.contains("control_socket = \"/tmp/a \\\"b\\\"/control.sock\"\n"));
    }
}
