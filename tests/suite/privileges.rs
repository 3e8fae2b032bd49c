//! The agent with the systemd unit's privileges: not root, only the capabilities
//! packaging/crmguard.service grants (read from the unit, so the two cannot drift apart).
//!
//! The daemon runs under setpriv(1) with the unit's `User=`, `AmbientCapabilities=` and
//! `CapabilityBoundingSet=`, and `NoNewPrivileges`, and under the unit's `SystemCallFilter=`
//! (expanded by `systemd-analyze syscall-filter`, loaded with python3's seccomp module, every
//! other call failing with EPERM as `SystemCallErrorNumber=EPERM` has it). It must attach XDP,
//! pin, adopt its pinned
//! filter after a kill -9, run the WireGuard endpoint that a wireguard-go peer reaches a service
//! through, and serve the MFA portal in the tunnel. The `crmguard` commands run as root, as an
//! administrator runs them, through the agent user's 0600 control socket.
//!
//! ```text
//!   netns out   wireguard-go 10.77.0.2 -> 10.190.1.1:51820   [XDP] crmguard (user, 3 caps)
//!               curl -> http://10.77.0.1:8443/session               portal + CRM (tcp/8080)
//! ```

use std::net::IpAddr;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, ensure, Context, Result};
use crmguard_lab::agent::{Agent, RunAs};
use crmguard_lab::net::TcpServer;
use crmguard_lab::privileged;
use crmguard_lab::topology::Topology;

use crate::access::{crm_answers, enroll, fresh_code, portal, PORTAL};
use crate::vpn::{
    gateway_endpoint, gateway_key, wait_reachable, PeerSpec, ALLOWED_TCP, GATEWAY4, WG_PORT,
};

/// The unit the package installs.
const UNIT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../packaging/crmguard.service");

/// What the unit says the agent runs as.
#[derive(Debug)]
struct UnitPrivileges {
    user: String,
    caps: Vec<String>,
    /// `SupplementaryGroups=`.
    groups: Vec<String>,
    /// The `ExecStartPre=+` command that prepares /run/wireguard, run as root.
    prepare_wireguard: String,
    /// The `ExecStartPre=+` command that prepares the pins' directory, run as root.
    prepare_bpffs: String,
}

/// The default `[agent] bpffs_dir`, which the unit prepares.
const UNIT_BPFFS_DIR: &str = "/sys/fs/bpf/crmguard";

/// Reads `User=`, `Group=`, `AmbientCapabilities=`, `CapabilityBoundingSet=` and the
/// `/run/wireguard` `ExecStartPre=` from the unit's text.
fn unit_privileges(text: &str) -> Result<UnitPrivileges> {
    let value = |key: &str| -> Vec<&str> {
        text.lines()
            .filter_map(|line| line.trim().strip_prefix(key)?.strip_prefix('='))
            .collect()
    };
    let one = |key: &str| -> Result<String> {
        match value(key).as_slice() {
            [v] => Ok(v.trim().to_owned()),
            other => bail!("{UNIT}: expected one {key}=, found {other:?}"),
        }
    };
    let user = one("User")?;
    ensure!(one("Group")? == user, "{UNIT}: Group= is not User=");
    let ambient: Vec<String> = one("AmbientCapabilities")?
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    let bounding: Vec<String> = one("CapabilityBoundingSet")?
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    ensure!(
        ambient == bounding,
        "{UNIT}: AmbientCapabilities {ambient:?} and CapabilityBoundingSet {bounding:?} differ"
    );
    ensure!(one("NoNewPrivileges")? == "yes", "{UNIT}: NoNewPrivileges");
    let script = |about: &str| -> Result<String> {
        let prepare = value("ExecStartPre")
            .into_iter()
            .find(|v| v.contains(about))
            .with_context(|| format!("{UNIT}: no ExecStartPre= for {about}"))?;
        prepare
            .strip_prefix("+/bin/sh -c '")
            .and_then(|rest| rest.strip_suffix('\''))
            .map(str::to_owned)
            .with_context(|| format!("{UNIT}: not a `+/bin/sh -c '...'` command: {prepare}"))
    };
    let groups = value("SupplementaryGroups")
        .iter()
        .flat_map(|v| v.split_whitespace())
        .map(str::to_owned)
        .collect();
    Ok(UnitPrivileges {
        user,
        caps: ambient,
        groups,
        prepare_wireguard: script("/run/wireguard")?,
        prepare_bpffs: script(UNIT_BPFFS_DIR)?,
    })
}

/// The unit's user, made as the package's postinst makes it when missing, and removed on drop
/// only if it was made here.
struct SystemUser {
    name: String,
    uid: u32,
    gid: u32,
    created: bool,
}

impl SystemUser {
    fn ensure(name: &str) -> Result<SystemUser> {
        let created = id(name, "-u").is_err();
        if created {
            let out = Command::new("useradd")
                .args([
                    "--system",
                    "--user-group",
                    "--no-create-home",
                    "--home-dir",
                    "/nonexistent",
                    "--shell",
                    "/usr/sbin/nologin",
                    name,
                ])
                .output()?;
            ensure!(out.status.success(), "useradd {name}: {out:?}");
        }
        let user = SystemUser {
            name: name.to_owned(),
            uid: id(name, "-u")?,
            gid: id(name, "-g")?,
            created,
        };
        ensure!(user.uid != 0, "user {name} is root");
        Ok(user)
    }
}

impl Drop for SystemUser {
    fn drop(&mut self) {
        if self.created {
            match Command::new("userdel").arg(&self.name).output() {
                Ok(out) if out.status.success() => {}
                other => eprintln!("userdel {}: {other:?}", self.name),
            }
        }
    }
}

fn id(user: &str, what: &str) -> Result<u32> {
    let out = Command::new("id").args([what, user]).output()?;
    ensure!(out.status.success(), "no user {user}");
    Ok(String::from_utf8_lossy(&out.stdout).trim().parse()?)
}

/// A path's owner and mode, put back on drop.
struct Restore {
    path: PathBuf,
    uid: u32,
    gid: u32,
    mode: u32,
}

impl Restore {
    fn save(path: &Path) -> Result<Restore> {
        let meta = std::fs::metadata(path).with_context(|| format!("{}", path.display()))?;
        Ok(Restore {
            path: path.to_owned(),
            uid: meta.uid(),
            gid: meta.gid(),
            mode: meta.mode() & 0o7777,
        })
    }
}

impl Drop for Restore {
    fn drop(&mut self) {
        if let Err(e) = std::os::unix::fs::chown(&self.path, Some(self.uid), Some(self.gid)) {
            eprintln!("restoring the owner of {}: {e}", self.path.display());
        }
        let mode = std::fs::Permissions::from_mode(self.mode);
        if let Err(e) = std::fs::set_permissions(&self.path, mode) {
            eprintln!("restoring the mode of {}: {e}", self.path.display());
        }
    }
}

/// The `Uid:` and `CapEff:` lines of /proc/PID/status: (real, effective uid), effective caps.
fn identity(pid: u32) -> Result<((u32, u32), u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .map(str::trim)
            .with_context(|| format!("no {name} in /proc/{pid}/status"))
    };
    let uids: Vec<u32> = field("Uid:")?
        .split_whitespace()
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    ensure!(uids.len() >= 2, "Uid: {uids:?}");
    let caps = u64::from_str_radix(field("CapEff:")?, 16)?;
    Ok(((uids[0], uids[1]), caps))
}

/// The system calls the unit's `SystemCallFilter=` lines allow, as systemd reads them: the
/// first line that is not `~` starts an allow list, `~` lines take calls out, others add them,
/// and the calls of `@default` are always allowed.
fn unit_syscalls(text: &str) -> Result<std::collections::BTreeSet<String>> {
    let mut allowed = std::collections::BTreeSet::new();
    expand_syscalls("@default", &mut allowed)?;
    let mut lines = 0;
    for value in text
        .lines()
        .filter_map(|line| line.trim().strip_prefix("SystemCallFilter="))
    {
        let (deny, list) = match value.strip_prefix('~') {
            Some(list) => (true, list),
            None => (false, value),
        };
        ensure!(
            lines > 0 || !deny,
            "{UNIT}: the first SystemCallFilter= is a deny list"
        );
        let mut named = std::collections::BTreeSet::new();
        for item in list.split_whitespace() {
            expand_syscalls(item, &mut named)?;
        }
        if deny {
            allowed.retain(|call| !named.contains(call));
        } else {
            allowed.extend(named);
        }
        lines += 1;
    }
    ensure!(lines > 0, "{UNIT}: no SystemCallFilter=");
    Ok(allowed)
}

/// Adds a system call, or every call of an `@group` (and of the groups it names), to `into`.
fn expand_syscalls(item: &str, into: &mut std::collections::BTreeSet<String>) -> Result<()> {
    if !item.starts_with('@') {
        into.insert(item.to_owned());
        return Ok(());
    }
    let out = Command::new("systemd-analyze")
        .args(["syscall-filter", item])
        .output()
        .context("systemd-analyze syscall-filter")?;
    ensure!(
        out.status.success(),
        "systemd-analyze syscall-filter {item}: {out:?}"
    );
    let text = String::from_utf8(out.stdout)?;
    let mut members = 0;
    for line in text.lines().skip(1) {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        expand_syscalls(line, into)?;
        members += 1;
    }
    ensure!(members > 0, "systemd-analyze lists nothing in {item}");
    Ok(())
}

/// The `Seccomp:` line of /proc/PID/status: 2 when a filter is in force.
fn seccomp_mode(pid: u32) -> Result<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("Seccomp:"))
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("no Seccomp: in /proc/{pid}/status"))
}

/// The capability bit of a `CAP_*` name (capabilities(7)).
fn cap_bit(name: &str) -> Result<u64> {
    let number = match name {
        "CAP_NET_BIND_SERVICE" => 10,
        "CAP_NET_ADMIN" => 12,
        "CAP_NET_RAW" => 13,
        "CAP_SYS_ADMIN" => 21,
        "CAP_PERFMON" => 38,
        "CAP_BPF" => 39,
        other => bail!("capability {other} is not known to this test"),
    };
    Ok(1u64 << number)
}

#[test]
fn the_unit_parses_into_a_user_and_its_capabilities() -> Result<()> {
    let unit = unit_privileges(&std::fs::read_to_string(UNIT)?)?;
    ensure!(unit.user == "crmguard", "{unit:?}");
    ensure!(
        unit.groups == ["adm", "systemd-journal"],
        "the groups the log sources need: {unit:?}"
    );
    ensure!(
        !unit.caps.iter().any(|c| c == "CAP_SYS_ADMIN"),
        "the unit grants CAP_SYS_ADMIN: {unit:?}"
    );
    for cap in &unit.caps {
        cap_bit(cap)?;
    }
    Ok(())
}

#[test]
fn the_units_system_call_filter_allows_bpf_and_not_the_privileged_calls() -> Result<()> {
    if !privileged::require(
        "privileges::the_units_system_call_filter_allows_bpf_and_not_the_privileged_calls",
    ) {
        return Ok(());
    }
    privileged::require_tools(&[("systemd-analyze", "systemd")])?;
    let allowed = unit_syscalls(&std::fs::read_to_string(UNIT)?)?;
    for call in [
        "bpf",
        "read",
        "sendmmsg",
        "recvmmsg",
        "ioctl",
        "prlimit64",
        "execve",
    ] {
        ensure!(allowed.contains(call), "{call} is not allowed");
    }
    for call in [
        "setuid",
        "mount",
        "reboot",
        "init_module",
        "setrlimit",
        "chroot",
    ] {
        ensure!(!allowed.contains(call), "{call} is allowed");
    }
    Ok(())
}

#[test]
fn the_agent_runs_as_the_units_user_with_only_its_capabilities() -> Result<()> {
    if !privileged::require(
        "privileges::the_agent_runs_as_the_units_user_with_only_its_capabilities",
    ) {
        return Ok(());
    }
    crate::vpn::require_tools()?;
    privileged::require_tools(&[
        ("setpriv", "util-linux"),
        ("useradd", "passwd"),
        ("curl", "curl"),
        ("systemd-analyze", "systemd"),
    ])?;
    let seccomp = Command::new(crmguard_lab::agent::DEBIAN_PYTHON)
        .args(["-c", "import seccomp"])
        .output()
        .context(crmguard_lab::agent::DEBIAN_PYTHON)?;
    ensure!(
        seccomp.status.success(),
        "python3's seccomp module is missing (apt-get install python3-seccomp)"
    );
    let unit_text = std::fs::read_to_string(UNIT)?;
    let unit = unit_privileges(&unit_text)?;
    let syscalls = unit_syscalls(&unit_text)?;
    let user = SystemUser::ensure(&unit.user)?;

    // What the unit's ExecStartPre does, and what Debian's udev rule gives /dev/net/tun (0666);
    // both put back afterwards.
    std::fs::create_dir_all("/run/wireguard")?;
    let _wireguard_dir = Restore::save(Path::new("/run/wireguard"))?;
    let out = Command::new("sh")
        .args(["-c", &unit.prepare_wireguard])
        .output()?;
    ensure!(out.status.success(), "{}: {out:?}", unit.prepare_wireguard);
    let tun = Path::new("/dev/net/tun");
    let _tun_mode = Restore::save(tun)?;
    if std::fs::metadata(tun)?.mode() & 0o006 != 0o006 {
        std::fs::set_permissions(tun, std::fs::Permissions::from_mode(0o666))?;
    }

    // The pins' directory as the unit makes it, under /sys/fs/bpf with the mode systemd
    // mounts it with (0700), which the agent's user cannot pass through by itself.
    let bpffs = Path::new(privileged::BPFFS);
    privileged::ensure_bpffs()?;
    let _bpffs_mode = Restore::save(bpffs)?;
    std::fs::set_permissions(bpffs, std::fs::Permissions::from_mode(0o700))?;

    let t = Topology::dual_stack(190, 1)?;
    let alice = PeerSpec::new("alice", 2)?;
    let mut agent = Agent::configure(&t.host, "")?;
    // The VPN's key and peers file live where the agent's user may write (the key is made on
    // first start), like /etc/crmguard/wg.key made by postinst and given to the user.
    let vpn_dir = agent.dir().join("vpn");
    std::fs::create_dir(&vpn_dir)?;
    std::os::unix::fs::chown(&vpn_dir, Some(user.uid), Some(user.gid))?;
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

[mfa]
issuer = "ACME CRM"
portal_port = {PORTAL}

[[role]]
name = "sales"
allow = ["tcp/{ALLOWED_TCP}"]
mfa = true

[[peer]]
name = "alice"
public_key = "{key}"
address = "{addr}"
role = "sales"
"#,
        iface = t.host_if.name(),
        dir = vpn_dir.display(),
        key = alice.keys.public,
        addr = alice.v4(),
    );
    let config = std::fs::read_to_string(agent.config_path())?;
    std::fs::write(agent.config_path(), format!("{config}\n{body}"))?;
    let prepare_pins = unit
        .prepare_bpffs
        .replace(UNIT_BPFFS_DIR, &agent.bpffs_dir().display().to_string());
    let out = Command::new("sh").args(["-c", &prepare_pins]).output()?;
    ensure!(out.status.success(), "{prepare_pins}: {out:?}");
    let syscalls_file = agent.dir().join("syscalls.allow");
    let list: Vec<&str> = syscalls.iter().map(String::as_str).collect();
    std::fs::write(&syscalls_file, list.join("\n"))?;
    agent.run_as(RunAs {
        user: user.name.clone(),
        uid: user.uid,
        gid: user.gid,
        caps: unit.caps.clone(),
        groups: unit.groups.clone(),
        syscalls: Some(syscalls_file),
    })?;
    agent.spawn()?;
    agent.wait_ready()?;

    // It is the user, with exactly the unit's capabilities.
    let mut expected = 0u64;
    for cap in &unit.caps {
        expected |= cap_bit(cap)?;
    }
    let pid = agent.pid().context("no agent process")?;
    let check_identity = |pid: u32| -> Result<()> {
        let ((ruid, euid), caps) = identity(pid)?;
        ensure!(
            ruid == user.uid && euid == user.uid,
            "the agent runs as uid {ruid}/{euid}, not {} ({})",
            user.uid,
            user.name
        );
        ensure!(
            caps == expected,
            "the agent's effective capabilities are {caps:#x}, the unit's {expected:#x}"
        );
        ensure!(
            seccomp_mode(pid)? == 2,
            "the agent runs without the unit's system call filter"
        );
        Ok(())
    };
    check_identity(pid)?;

    // XDP attached; the pins are the user's.
    ensure!(
        agent.attach_mode(t.host_if.name())? == Some("native".to_owned()),
        "status: {}",
        agent.status()?
    );
    let pins = agent.bpffs_dir().join("links");
    let mut pinned = 0;
    for entry in std::fs::read_dir(&pins).with_context(|| format!("{}", pins.display()))? {
        let entry = entry?;
        ensure!(
            entry.metadata()?.uid() == user.uid,
            "{} is not the agent user's",
            entry.path().display()
        );
        pinned += 1;
    }
    ensure!(pinned > 0, "nothing pinned in {}", pins.display());

    // The tunnel and the portal in it: a wireguard-go peer signs in with a TOTP code and then
    // reaches the CRM.
    let secret = enroll(&agent, "alice")?;
    let gateway = gateway_key(&agent)?;
    let _crm = TcpServer::start(&t.host, ALLOWED_TCP, "crm\n")?;
    let wg_client = alice.connect(&t.out, &gateway, gateway_endpoint(t.addrs.host4))?;
    // The client handshakes again soon after the gateway lost its keys to the kill -9.
    wg_client.set_keepalive(&gateway, 5)?;
    wait_reachable(&t.out, IpAddr::V4(GATEWAY4))?;
    ensure!(!crm_answers(&t.out)?, "the CRM answers without a session");
    let mut used = Vec::new();
    let code = format!("{{\"code\":\"{}\"}}", fresh_code(&secret, &mut used)?);
    let (status, text) = portal(&t.out, "POST", "/session", Some(&code))?;
    ensure!(
        status == 200 && text.contains("\"expires\""),
        "the portal: {status} {text}"
    );
    ensure!(crm_answers(&t.out)?, "the CRM with a session");
    // `wg show` (root) reaches the user's configuration socket.
    let wg = crmguard_lab::wg::wg(&["show", agent.vpn_interface()], None)?;
    ensure!(wg.contains(&alice.keys.public), "wg show:\n{wg}");

    // The session is on disk, written by the agent's user.
    let sessions = agent.dir().join("state").join("mfa").join("sessions.json");
    crmguard_lab::wait::wait_for(crate::vpn::SETTLE, "the MFA session on disk", || {
        Ok(std::fs::read_to_string(&sessions)
            .map(|text| text.contains("alice"))
            .unwrap_or(false)
            .then_some(()))
    })?;
    ensure!(
        std::fs::metadata(&sessions)?.uid() == user.uid,
        "{} is not the agent user's",
        sessions.display()
    );

    // A crash, and a new agent as the same user: it adopts the pinned filter and the peer's
    // session comes back.
    agent.kill9()?;
    agent.spawn()?;
    agent.wait_ready()?;
    check_identity(agent.pid().context("no agent process")?)?;
    let status = agent.status()?;
    let adopted = status["interfaces"]
        .as_array()
        .and_then(|list| list.iter().find(|i| i["name"] == t.host_if.name()))
        .map(|i| i["adopted"] == true);
    ensure!(
        adopted == Some(true),
        "the restarted agent did not adopt the pinned filter: {status}"
    );
    crmguard_lab::wait::wait_for(
        std::time::Duration::from_secs(20),
        "the CRM through the tunnel after the restart",
        || Ok(crm_answers(&t.out)?.then_some(())),
    )?;
    let (status, _) = portal(&t.out, "GET", "/session", None)?;
    ensure!(status == 200, "the portal after the restart: {status}");

    // Neither agent was refused anything (a refusal the agent survives is logged, not fatal).
    for run in ["crmguard-run-1", "crmguard-run-2"] {
        for stream in ["stdout", "stderr"] {
            let path = agent.dir().join(format!("{run}.{stream}"));
            let log = std::fs::read_to_string(&path)
                .with_context(|| format!("reading {}", path.display()))?;
            for needle in ["Operation not permitted", "Permission denied"] {
                ensure!(
                    !log.contains(needle),
                    "{} has {needle:?}:\n{log}",
                    path.display()
                );
            }
        }
    }
    Ok(())
}
