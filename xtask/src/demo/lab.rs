//! The lab: network namespaces joined by veth pairs, and the addresses on each side.
//!
//! ```text
//!   cgdemo-out                                   cgdemo-host
//!   admin     10.250.0.2   fd00:250::2           10.250.0.1  fd00:250::1
//!   attacker  10.250.0.66  fd00:250::66  cgdemo-o <==> cgdemo-h  (XDP here)
//!   customer  10.251.0.5                         cgdemo-gw   10.77.0.1/24 (the agent's TUN)
//!   router    10.252.0.1   cgdemo-os
//!                             ||
//!   cgdemo-staff              ||
//!   staff     10.252.0.2   cgdemo-s
//!             10.77.0.2    cgdemo-wg (wireguard-go, tunnel to 10.250.0.1:51820)
//! ```
//!
//! The staff laptop sits behind the outside namespace, which routes its packets to the host:
//! they cross the filtered link like everyone else's.
//!
//! Names are fixed so that a demo killed before its cleanup is found and removed by the next
//! run. Commands run inside a namespace through `nsenter --net` only: they keep the host's mount
//! namespace, so pins under the host's /sys/fs/bpf outlive the agent (fail-static).

use std::ffi::OsStr;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crmguard_lab::cmd;

pub const HOST_NS: &str = "cgdemo-host";
pub const OUT_NS: &str = "cgdemo-out";
pub const STAFF_NS: &str = "cgdemo-staff";
pub const HOST_IF: &str = "cgdemo-h";
const OUT_IF: &str = "cgdemo-o";
/// The staff laptop's link to the outside namespace: its end, and the outside's end.
const STAFF_IF: &str = "cgdemo-s";
const OUT_STAFF_IF: &str = "cgdemo-os";
/// The outside namespace's address on the staff laptop's link, its default gateway.
const STAFF_ROUTER: &str = "10.252.0.1";

/// The agent's WireGuard TUN device, in the host namespace (`CRMGUARD_VPN_INTERFACE`).
pub const GATEWAY_WG_IF: &str = "cgdemo-gw";
/// The staff laptop's wireguard-go device.
pub const STAFF_WG_IF: &str = "cgdemo-wg";
/// Where userspace WireGuard devices keep their control sockets, `<interface>.sock`. The
/// directory is shared by every network namespace, hence the demo's own interface names.
pub const WG_SOCKET_DIR: &str = "/var/run/wireguard";

/// Every namespace of the lab.
const NAMESPACES: [&str; 3] = [OUT_NS, HOST_NS, STAFF_NS];

/// Prefix of the demo's pin directories (under /sys/fs/bpf) and work directories (under the
/// temporary directory); the demo's pid follows it.
pub const PREFIX: &str = "cgdemo-";

pub const BPFFS: &str = "/sys/fs/bpf";

pub struct Host {
    pub name: &'static str,
    pub v4: IpAddr,
    pub v6: Option<IpAddr>,
}

pub const HOST: Host = Host {
    name: "host",
    v4: IpAddr::V4(Ipv4Addr::new(10, 250, 0, 1)),
    v6: Some(IpAddr::V6(Ipv6Addr::new(0xfd00, 0x250, 0, 0, 0, 0, 0, 1))),
};
pub const ADMIN: Host = Host {
    name: "admin",
    v4: IpAddr::V4(Ipv4Addr::new(10, 250, 0, 2)),
    v6: Some(IpAddr::V6(Ipv6Addr::new(0xfd00, 0x250, 0, 0, 0, 0, 0, 2))),
};
pub const ATTACKER: Host = Host {
    name: "attacker",
    v4: IpAddr::V4(Ipv4Addr::new(10, 250, 0, 66)),
    v6: Some(IpAddr::V6(Ipv6Addr::new(
        0xfd00, 0x250, 0, 0, 0, 0, 0, 0x66,
    ))),
};
/// A source outside the admin network and not denied: reaches public services only.
pub const CUSTOMER: Host = Host {
    name: "customer",
    v4: IpAddr::V4(Ipv4Addr::new(10, 251, 0, 5)),
    v6: None,
};
/// A staff member's laptop on a network of its own, routed through the outside namespace.
pub const STAFF: Host = Host {
    name: "staff",
    v4: IpAddr::V4(Ipv4Addr::new(10, 252, 0, 2)),
    v6: None,
};

/// `program` run with only the network namespace `ns` entered.
pub fn in_ns(ns: &str, program: impl AsRef<OsStr>) -> Command {
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net=/run/netns/{ns}")).arg(program);
    cmd
}

fn ip(ns: &str, args: &str) -> Result<()> {
    cmd::stdout_of(
        Command::new("ip")
            .args(["-n", ns])
            .args(args.split_whitespace()),
    )?;
    Ok(())
}

/// Creates the namespaces, the veth pairs, the addresses and the routes. Expects no leftovers.
pub fn create() -> Result<()> {
    for ns in NAMESPACES {
        cmd::stdout_of(Command::new("ip").args(["netns", "add", ns]))?;
    }
    cmd::stdout_of(Command::new("ip").args([
        "link", "add", HOST_IF, "netns", HOST_NS, "type", "veth", "peer", "name", OUT_IF, "netns",
        OUT_NS,
    ]))?;
    ip(HOST_NS, "link set lo up")?;
    ip(OUT_NS, "link set lo up")?;
    ip(HOST_NS, &format!("addr add {}/24 dev {HOST_IF}", HOST.v4))?;
    for host in [ADMIN, ATTACKER, CUSTOMER] {
        ip(OUT_NS, &format!("addr add {}/24 dev {OUT_IF}", host.v4))?;
    }
    // `nodad`: the addresses are usable at once instead of after duplicate detection.
    for (ns, dev, host) in [
        (HOST_NS, HOST_IF, HOST),
        (OUT_NS, OUT_IF, ADMIN),
        (OUT_NS, OUT_IF, ATTACKER),
    ] {
        if let Some(v6) = host.v6 {
            ip(ns, &format!("addr add {v6}/64 dev {dev} nodad"))?;
        }
    }
    ip(HOST_NS, &format!("link set {HOST_IF} up"))?;
    ip(OUT_NS, &format!("link set {OUT_IF} up"))?;
    // The customer's network is not the host's: the host reaches it over the same link.
    ip(HOST_NS, &format!("route add 10.251.0.0/24 dev {HOST_IF}"))?;
    create_staff_link()
}

/// The staff laptop's link to the outside namespace, which forwards between it and the host.
fn create_staff_link() -> Result<()> {
    cmd::stdout_of(Command::new("ip").args([
        "link",
        "add",
        STAFF_IF,
        "netns",
        STAFF_NS,
        "type",
        "veth",
        "peer",
        "name",
        OUT_STAFF_IF,
        "netns",
        OUT_NS,
    ]))?;
    ip(STAFF_NS, "link set lo up")?;
    ip(
        STAFF_NS,
        &format!("addr add {}/24 dev {STAFF_IF}", STAFF.v4),
    )?;
    ip(
        OUT_NS,
        &format!("addr add {STAFF_ROUTER}/24 dev {OUT_STAFF_IF}"),
    )?;
    ip(STAFF_NS, &format!("link set {STAFF_IF} up"))?;
    ip(OUT_NS, &format!("link set {OUT_STAFF_IF} up"))?;
    ip(STAFF_NS, &format!("route add default via {STAFF_ROUTER}"))?;
    ip(
        HOST_NS,
        &format!("route add 10.252.0.0/24 via {} dev {HOST_IF}", ADMIN.v4),
    )?;
    // /proc/sys/net belongs to the network namespace of the process that opens it.
    cmd::stdout_of(in_ns(OUT_NS, "sysctl").args(["-qw", "net.ipv4.ip_forward=1"]))?;
    Ok(())
}

/// Deletes the namespaces (and with them the veth pairs) and the control sockets the
/// WireGuard devices may have left; quiet and best effort.
pub fn destroy() {
    for ns in NAMESPACES {
        if netns_exists(ns) {
            let _ = cmd::output(Command::new("ip").args(["netns", "del", ns]));
        }
    }
    for socket in [wg_socket(GATEWAY_WG_IF), wg_socket(STAFF_WG_IF)] {
        if socket.exists() {
            let _ = std::fs::remove_file(socket);
        }
    }
}

/// The control socket of the userspace WireGuard device `ifname`.
pub fn wg_socket(ifname: &str) -> PathBuf {
    Path::new(WG_SOCKET_DIR).join(format!("{ifname}.sock"))
}

fn netns_exists(ns: &str) -> bool {
    Path::new("/run/netns").join(ns).exists()
}

/// Removes what an earlier demo left behind when it was killed before its cleanup: processes in
/// the demo namespaces (the agent, servers, wireguard-go), the namespaces, WireGuard control
/// sockets, pin directories and work directories. Refuses while another demo is running.
pub fn remove_stale() -> Result<()> {
    let own = std::process::id();
    let workdirs = with_prefix(&std::env::temp_dir())?;
    for (pid, _) in &workdirs {
        if *pid != own && is_demo(*pid) {
            bail!("another `cargo xtask demo` is running (pid {pid}); wait for it to finish");
        }
    }
    for ns in NAMESPACES {
        if !netns_exists(ns) {
            continue;
        }
        let pids = cmd::stdout_of(Command::new("ip").args(["netns", "pids", ns]))?;
        for pid in pids
            .split_whitespace()
            .filter_map(|pid| pid.parse::<i32>().ok())
        {
            eprintln!("demo: stopping pid {pid}, left in namespace {ns} by an earlier demo");
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        eprintln!("demo: removing namespace {ns}, left by an earlier demo");
    }
    for (pid, dir) in with_prefix(Path::new(BPFFS))? {
        if pid != own {
            eprintln!("demo: removing {}, left by an earlier demo", dir.display());
            std::fs::remove_dir_all(&dir)
                .with_context(|| format!("cannot remove {}", dir.display()))?;
        }
    }
    destroy();
    for (pid, dir) in workdirs {
        if pid != own {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
    Ok(())
}

/// Entries `cgdemo-<pid>` of `dir`, with their pid.
fn with_prefix(dir: &Path) -> Result<Vec<(u32, PathBuf)>> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(Vec::new());
    };
    let mut found = Vec::new();
    for entry in entries {
        let entry = entry.with_context(|| format!("cannot list {}", dir.display()))?;
        let name = entry.file_name();
        let pid = name
            .to_str()
            .and_then(|name| name.strip_prefix(PREFIX))
            .and_then(|pid| pid.parse().ok());
        if let Some(pid) = pid {
            found.push((pid, entry.path()));
        }
    }
    Ok(found)
}

/// Whether `pid` is a live xtask process (a zombie, dead but not yet reaped, is not).
fn is_demo(pid: u32) -> bool {
    // /proc/PID/stat: "PID (COMM) STATE ...".
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let Some((head, tail)) = stat.rsplit_once(") ") else {
        return false;
    };
    let comm = head.split_once(" (").map_or("", |(_, comm)| comm);
    comm == "xtask" && !tail.starts_with(['Z', 'X'])
}

/// Mounts bpffs at /sys/fs/bpf when it is not mounted yet (systemd does this at boot; bare
/// containers and minimal machines do not).
pub fn ensure_bpffs() -> Result<()> {
    let mounts =
        std::fs::read_to_string("/proc/self/mounts").context("cannot read /proc/self/mounts")?;
    let mounted = mounts.lines().any(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        fields.get(1) == Some(&BPFFS) && fields.get(2) == Some(&"bpf")
    });
    if !mounted {
        eprintln!("demo: mounting bpffs at {BPFFS} (pinned filters live there)");
        cmd::run(Command::new("mount").args(["-t", "bpf", "bpf", BPFFS]))?;
    }
    Ok(())
}

/// What is attached at XDP on the host-side interface.
pub struct Xdp {
    pub mode: &'static str,
    pub prog_id: u64,
    pub prog_name: String,
}

impl std::fmt::Display for Xdp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} mode, program {:?} (id {})",
            self.mode, self.prog_name, self.prog_id
        )
    }
}

/// The XDP program attached to the host-side interface, from `ip -j -d link show`.
pub fn xdp_on_host_if() -> Result<Option<Xdp>> {
    let text = cmd::stdout_of(
        Command::new("ip").args(["-n", HOST_NS, "-j", "-d", "link", "show", "dev", HOST_IF]),
    )?;
    let links: Value = serde_json::from_str(&text).context("cannot parse `ip -j link` output")?;
    let xdp = &links[0]["xdp"];
    let Some(prog_id) = xdp["prog"]["id"].as_u64() else {
        return Ok(None);
    };
    // Attach modes as iproute2 reports them (XDP_ATTACHED_* in the kernel's uapi).
    let mode = match xdp["mode"].as_u64() {
        Some(1) => "native",
        Some(2) => "generic",
        Some(3) => "offload",
        _ => "unknown",
    };
    let prog_name = xdp["prog"]["name"].as_str().unwrap_or_default().to_owned();
    Ok(Some(Xdp {
        mode,
        prog_id,
        prog_name,
    }))
}
