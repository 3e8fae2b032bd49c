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

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crmguard_lab::netns::{self, Iface, NetNs, XdpMode};
use crmguard_lab::{privileged, wg};

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

/// Every namespace of the lab.
const NAMESPACES: [&str; 3] = [OUT_NS, HOST_NS, STAFF_NS];

/// Prefix of the demo's pin directories (under /sys/fs/bpf) and work directories (under the
/// temporary directory); the demo's pid follows it.
pub const PREFIX: &str = "cgdemo-";

pub use crmguard_lab::privileged::BPFFS;

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

/// The lab's namespaces and the host's filtered interface; dropping it deletes the namespaces
/// (and with them the veth pairs and anything still running inside) and the control sockets
/// the WireGuard devices may have left.
pub struct Lab {
    pub host_if: Iface,
    _namespaces: [NetNs; 3],
}

impl Lab {
    /// Creates the namespaces, the veth pairs, the addresses and the routes. Expects no
    /// leftovers.
    pub fn create() -> Result<Lab> {
        let out = NetNs::named(OUT_NS)?;
        let host = NetNs::named(HOST_NS)?;
        let staff = NetNs::named(STAFF_NS)?;
        let (host_if, out_if) = netns::veth_pair_named(&host, HOST_IF, &out, OUT_IF)?;
        host_if.add_addr(&format!("{}/24", HOST.v4))?;
        for host in [ADMIN, ATTACKER, CUSTOMER] {
            out_if.add_addr(&format!("{}/24", host.v4))?;
        }
        // IPv6 addresses get `nodad`: usable at once instead of after duplicate detection.
        for (iface, host) in [(&host_if, HOST), (&out_if, ADMIN), (&out_if, ATTACKER)] {
            if let Some(v6) = host.v6 {
                iface.add_addr(&format!("{v6}/64"))?;
            }
        }
        host_if.up()?;
        out_if.up()?;
        // The customer's network is not the host's: the host reaches it over the same link.
        host.ip(&["route", "add", "10.251.0.0/24", "dev", HOST_IF])?;
        create_staff_link(&host, &out, &staff)?;
        Ok(Lab {
            host_if,
            _namespaces: [out, host, staff],
        })
    }

    /// The XDP program attached to the host-side interface.
    pub fn xdp_on_host_if(&self) -> Result<Option<Xdp>> {
        Ok(self.host_if.xdp_program()?.map(|prog| Xdp {
            mode: match prog.mode {
                XdpMode::Native => "native",
                XdpMode::Generic => "generic",
                XdpMode::Offload => "offload",
                XdpMode::Unknown => "unknown",
            },
            prog_id: prog.id,
            prog_name: prog.name,
        }))
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // The namespaces go with the fields, after this.
        for socket in [wg::socket_path(GATEWAY_WG_IF), wg::socket_path(STAFF_WG_IF)] {
            if socket.exists() {
                let _ = std::fs::remove_file(socket);
            }
        }
    }
}

/// The staff laptop's link to the outside namespace, which forwards between it and the host.
fn create_staff_link(host: &NetNs, out: &NetNs, staff: &NetNs) -> Result<()> {
    let (staff_if, router_if) = netns::veth_pair_named(staff, STAFF_IF, out, OUT_STAFF_IF)?;
    staff_if.add_addr(&format!("{}/24", STAFF.v4))?;
    router_if.add_addr(&format!("{STAFF_ROUTER}/24"))?;
    staff_if.up()?;
    router_if.up()?;
    staff.ip(&["route", "add", "default", "via", STAFF_ROUTER])?;
    host.ip(&[
        "route",
        "add",
        "10.252.0.0/24",
        "via",
        &ADMIN.v4.to_string(),
        "dev",
        HOST_IF,
    ])?;
    out.sysctl("net/ipv4/ip_forward", "1")
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
        if netns::exists(ns) {
            eprintln!("demo: removing namespace {ns} and what runs in it, left by an earlier demo");
            netns::delete(ns)?;
        }
    }
    for (pid, dir) in with_prefix(Path::new(BPFFS))? {
        if pid != own {
            eprintln!("demo: removing {}, left by an earlier demo", dir.display());
            std::fs::remove_dir_all(&dir)
                .with_context(|| format!("cannot remove {}", dir.display()))?;
        }
    }
    for socket in [wg::socket_path(GATEWAY_WG_IF), wg::socket_path(STAFF_WG_IF)] {
        if socket.exists() {
            let _ = std::fs::remove_file(socket);
        }
    }
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
    if privileged::mount_bpffs_if_missing()? {
        eprintln!("demo: mounted bpffs at {BPFFS} (pinned filters live there)");
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
