//! Network namespaces and the veth pairs that join them.
//!
//! A [`NetNs`] is a named namespace (`/run/netns/NAME`, made with `ip netns add`) with `lo` up.
//! Dropping it kills every process still inside it and deletes it, which also removes the
//! interfaces that live there. Code runs inside a namespace in two ways: [`NetNs::run_in`] runs a
//! closure on a fresh thread that entered only the network namespace (sockets it creates stay in
//! that namespace for their whole life), and [`NetNs::exec`] runs a command under
//! `ip netns exec`, which also gives the command its own mount namespace and `/sys` (fine for
//! `ip` and `sysctl`, wrong for anything that pins BPF objects: see `process.rs`).
//!
//! The suite names its namespaces uniquely ([`NetNs::new`]); the demo and the bench choose their
//! own names ([`NetNs::named`]) so that a run killed before its cleanup can be found and removed
//! by the next one ([`delete`]).

use std::ffi::OsStr;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use nix::sched::CloneFlags;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// A named network namespace, deleted on drop.
#[derive(Debug)]
pub struct NetNs {
    name: String,
}

impl NetNs {
    /// Creates the namespace `{prefix}-{unique}` and brings its loopback up.
    pub fn new(prefix: &str) -> Result<NetNs> {
        NetNs::named(&format!("{prefix}-{}", crate::unique_suffix()))
    }

    /// Creates the namespace `name` exactly and brings its loopback up; fails when it exists.
    pub fn named(name: &str) -> Result<NetNs> {
        let name = name.to_owned();
        run("ip", &["netns", "add", &name])?;
        let ns = NetNs { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The namespace's bind mount, what `setns` and `nsenter --net=` take.
    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// `program` with only this network namespace entered, through `nsenter --net` (see
    /// [`nsenter`]).
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        nsenter(&self.name, program)
    }

    /// An interface that already lives in this namespace (a TUN device, one end of a veth pair
    /// made elsewhere).
    pub fn iface(&self, name: &str) -> Iface {
        Iface {
            ns: self.name.clone(),
            name: name.to_owned(),
        }
    }

    /// Opens the namespace for `setns(2)`.
    pub fn open(&self) -> Result<File> {
        File::open(self.path()).with_context(|| format!("opening netns {}", self.name))
    }

    /// Runs `ip -n NAME args...` and returns its stdout.
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend_from_slice(args);
        run("ip", &full)
    }

    /// Runs `args` under `ip netns exec NAME` and returns its stdout; a non-zero exit is an error
    /// that carries the command's stderr.
    pub fn exec(&self, args: &[&str]) -> Result<String> {
        let mut full = vec!["netns", "exec", self.name.as_str()];
        full.extend_from_slice(args);
        run("ip", &full)
    }

    /// Runs `f` on a new thread that has entered this network namespace (and only it) and
    /// returns its result. A panic in `f` is propagated to the caller.
    pub fn run_in<T, F>(&self, f: F) -> Result<T>
    where
        T: Send,
        F: FnOnce() -> T + Send,
    {
        let file = self.open()?;
        let name = &self.name;
        std::thread::scope(|scope| {
            let handle = scope.spawn(move || -> Result<T> {
                nix::sched::setns(&file, CloneFlags::CLONE_NEWNET)
                    .with_context(|| format!("entering netns {name}"))?;
                Ok(f())
            });
            match handle.join() {
                Ok(result) => result,
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })
    }

    /// Sets a sysctl of this namespace, e.g. `net/ipv6/conf/X/disable_ipv6`.
    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        let path = PathBuf::from("/proc/sys").join(key);
        // /proc/sys/net resolves to the network namespace of the thread that opens it.
        self.run_in(|| std::fs::write(&path, value))?
            .with_context(|| format!("setting {} in netns {}", path.display(), self.name))
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        if let Err(e) = delete(&self.name) {
            eprintln!("{e:#}");
        }
    }
}

/// `program` run by `nsenter --net=/run/netns/NAME`: only the network namespace is entered, the
/// host's mount namespace (and so its `/sys/fs/bpf`) is kept, and nsenter execs the program, so
/// the child's pid is the program's. Unlike a `pre_exec` hook the command line shows where it
/// runs, which is what the demo prints.
pub fn nsenter(ns: &str, program: impl AsRef<OsStr>) -> Command {
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net=/run/netns/{ns}")).arg(program);
    cmd
}

/// Whether the namespace `name` exists.
pub fn exists(name: &str) -> bool {
    Path::new("/run/netns").join(name).exists()
}

/// Every namespace name under `/run/netns`, for finding what an earlier run left behind.
pub fn list() -> Vec<String> {
    std::fs::read_dir("/run/netns")
        .map(|entries| {
            entries
                .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Kills every process inside the namespace `name` and deletes it, which also removes the
/// interfaces that live there. A process left inside would keep the namespace and its
/// interfaces alive after the name is gone. The calling process itself is never inside (only
/// its threads enter).
pub fn delete(name: &str) -> Result<()> {
    // A namespace whose processes cannot be listed is still deleted: its name at least goes.
    match pids(name) {
        Ok(pids) => {
            for pid in pids.into_iter().filter(|pid| *pid != Pid::this()) {
                let _ = kill(pid, Signal::SIGKILL);
            }
        }
        Err(e) => eprintln!("listing processes in netns {name}: {e:#}"),
    }
    run("ip", &["netns", "delete", name])
        .map(drop)
        .with_context(|| format!("deleting netns {name}"))
}

/// The processes whose network namespace is `name` (`ip netns pids`).
fn pids(name: &str) -> Result<Vec<Pid>> {
    let out = run("ip", &["netns", "pids", name])?;
    out.split_whitespace()
        .map(|pid| {
            pid.parse::<i32>()
                .map(Pid::from_raw)
                .with_context(|| format!("`ip netns pids` printed {pid:?}"))
        })
        .collect()
}

/// One end of a veth pair: an interface name inside a namespace.
#[derive(Debug, Clone)]
pub struct Iface {
    ns: String,
    name: String,
}

/// Creates a veth pair with one end in `a` and the other in `b`, both down and without
/// addresses. The names are unique per test process and at most 15 bytes.
pub fn veth_pair(a: &NetNs, b: &NetNs) -> Result<(Iface, Iface)> {
    let suffix = crate::unique_suffix();
    veth_pair_named(a, &format!("cga{suffix}"), b, &format!("cgb{suffix}"))
}

/// Creates a veth pair `a_name` in `a` and `b_name` in `b` (which may be the same namespace),
/// both down and without addresses.
pub fn veth_pair_named(a: &NetNs, a_name: &str, b: &NetNs, b_name: &str) -> Result<(Iface, Iface)> {
    for name in [a_name, b_name] {
        if name.len() > 15 {
            bail!("interface name {name} is longer than 15 bytes");
        }
    }
    run(
        "ip",
        &[
            "link", "add", a_name, "netns", &a.name, "type", "veth", "peer", "name", b_name,
            "netns", &b.name,
        ],
    )?;
    Ok((a.iface(a_name), b.iface(b_name)))
}

impl Iface {
    pub fn name(&self) -> &str {
        &self.name
    }

    fn ip(&self, args: &[&str]) -> Result<String> {
        let mut full = vec!["-n", self.ns.as_str()];
        full.extend_from_slice(args);
        run("ip", &full)
    }

    /// Adds an address in CIDR notation. IPv6 addresses skip duplicate address detection
    /// (`nodad`), so they are usable at once instead of after DAD's delay.
    pub fn add_addr(&self, cidr: &str) -> Result<()> {
        let mut args = vec!["addr", "add", cidr, "dev", self.name.as_str()];
        if cidr.contains(':') {
            args.push("nodad");
        }
        self.ip(&args).map(drop)
    }

    pub fn up(&self) -> Result<()> {
        self.ip(&["link", "set", &self.name, "up"]).map(drop)
    }

    fn details(&self) -> Result<serde_json::Value> {
        let out = self.ip(&["-j", "-d", "link", "show", "dev", &self.name])?;
        let mut list: Vec<serde_json::Value> = serde_json::from_str(&out)
            .with_context(|| format!("parsing `ip -j link show` output {out:?}"))?;
        if list.len() != 1 {
            bail!(
                "`ip -j link show dev {}` listed {} links",
                self.name,
                list.len()
            );
        }
        Ok(list.remove(0))
    }

    pub fn ifindex(&self) -> Result<u32> {
        let details = self.details()?;
        details["ifindex"]
            .as_u64()
            .and_then(|i| u32::try_from(i).ok())
            .with_context(|| format!("no ifindex for {} in {details}", self.name))
    }

    pub fn mac(&self) -> Result<[u8; 6]> {
        let details = self.details()?;
        let text = details["address"]
            .as_str()
            .with_context(|| format!("no MAC address for {} in {details}", self.name))?;
        parse_mac(text)
    }

    /// The XDP attachment `ip -d link` reports: `None`, or the mode (`"xdp"` for native,
    /// `"xdpgeneric"`) with the program id.
    pub fn xdp(&self) -> Result<Option<(String, u64)>> {
        Ok(self.xdp_program()?.map(|prog| {
            let mode = match prog.mode {
                XdpMode::Native => "xdp",
                XdpMode::Generic => "xdpgeneric",
                XdpMode::Offload => "xdpoffload",
                XdpMode::Unknown => "unknown",
            };
            (mode.to_owned(), prog.id)
        }))
    }

    /// The XDP program attached here, as `ip -d link` reports it, or `None`.
    pub fn xdp_program(&self) -> Result<Option<XdpProgram>> {
        let details = self.details()?;
        let xdp = &details["xdp"];
        if xdp.is_null() {
            return Ok(None);
        }
        // Attach modes as iproute2 reports them (XDP_ATTACHED_* in the kernel's uapi).
        let mode = match xdp["mode"].as_u64() {
            Some(1) => XdpMode::Native,
            Some(2) => XdpMode::Generic,
            Some(3) => XdpMode::Offload,
            _ => XdpMode::Unknown,
        };
        Ok(Some(XdpProgram {
            mode,
            id: xdp["prog"]["id"].as_u64().unwrap_or(0),
            name: xdp["prog"]["name"].as_str().unwrap_or_default().to_owned(),
        }))
    }

    /// Packets the interface has received plus those it has sent (`ip -s link`).
    pub fn packets(&self) -> Result<u64> {
        let out = self.ip(&["-j", "-s", "link", "show", "dev", &self.name])?;
        let links: serde_json::Value = serde_json::from_str(&out)
            .with_context(|| format!("parsing `ip -j -s link show` output {out:?}"))?;
        let stats = &links[0]["stats64"];
        Ok(stats["rx"]["packets"].as_u64().unwrap_or(0)
            + stats["tx"]["packets"].as_u64().unwrap_or(0))
    }
}

/// How an XDP program is attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XdpMode {
    Native,
    Generic,
    Offload,
    Unknown,
}

/// The XDP program attached to an interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XdpProgram {
    pub mode: XdpMode,
    pub id: u64,
    pub name: String,
}

fn parse_mac(text: &str) -> Result<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for byte in &mut mac {
        let part = parts
            .next()
            .with_context(|| format!("MAC address {text:?} is too short"))?;
        *byte = u8::from_str_radix(part, 16)
            .with_context(|| format!("MAC address {text:?} has a bad byte {part:?}"))?;
    }
    if parts.next().is_some() {
        bail!("MAC address {text:?} is too long");
    }
    Ok(mac)
}

/// Runs a command to completion and returns its stdout, or an error with its stderr.
pub(crate) fn run(program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("starting `{program} {}`", args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "`{program} {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_mac_addresses() {
        assert_eq!(
            parse_mac("02:ab:00:10:ff:9c").expect("valid"),
            [0x02, 0xab, 0x00, 0x10, 0xff, 0x9c]
        );
        assert!(parse_mac("02:ab:00:10:ff").is_err());
        assert!(parse_mac("02:ab:00:10:ff:9c:00").is_err());
        assert!(parse_mac("02:ab:00:10:ff:zz").is_err());
    }
}
