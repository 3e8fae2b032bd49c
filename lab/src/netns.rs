//! Network namespaces and the veth pairs that join them.
//!
//! A [`NetNs`] is a named namespace (`/run/netns/NAME`, made with `ip netns add`) with `lo` up.
//! Dropping it kills every process still inside it and deletes it, which also removes the
//! interfaces that live there. Code runs inside a namespace in two ways: [`NetNs::run_in`] runs a
//! closure on a fresh thread that entered only the network namespace (sockets it creates stay in
//! that namespace for their whole life), and [`NetNs::exec`] runs a command under
//! `ip netns exec`, which also gives the command its own mount namespace and `/sys` (fine for
//! `ip` and `sysctl`, wrong for anything that pins BPF objects: see `process.rs`).

use std::fs::File;
use std::path::PathBuf;
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
        let name = format!("{prefix}-{}", crate::unique_suffix());
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

    /// The processes whose network namespace this is (`ip netns pids`).
    fn pids(&self) -> Result<Vec<Pid>> {
        let out = run("ip", &["netns", "pids", &self.name])?;
        out.split_whitespace()
            .map(|pid| {
                pid.parse::<i32>()
                    .map(Pid::from_raw)
                    .with_context(|| format!("`ip netns pids` printed {pid:?}"))
            })
            .collect()
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        // A process left inside would keep the namespace and its interfaces alive after the
        // name is gone. The test process itself is never inside (only its threads enter).
        match self.pids() {
            Ok(pids) => {
                for pid in pids.into_iter().filter(|pid| *pid != Pid::this()) {
                    let _ = kill(pid, Signal::SIGKILL);
                }
            }
            Err(e) => eprintln!("listing processes in netns {}: {e:#}", self.name),
        }
        if let Err(e) = run("ip", &["netns", "delete", &self.name]) {
            eprintln!("deleting netns {}: {e:#}", self.name);
        }
    }
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
    let a_name = format!("cga{suffix}");
    let b_name = format!("cgb{suffix}");
    if a_name.len() > 15 {
        bail!("interface name {a_name} is longer than 15 bytes");
    }
    run(
        "ip",
        &[
            "link", "add", &a_name, "netns", &a.name, "type", "veth", "peer", "name", &b_name,
            "netns", &b.name,
        ],
    )?;
    Ok((
        Iface {
            ns: a.name.clone(),
            name: a_name,
        },
        Iface {
            ns: b.name.clone(),
            name: b_name,
        },
    ))
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
        let details = self.details()?;
        let xdp = &details["xdp"];
        if xdp.is_null() {
            return Ok(None);
        }
        let mode = match xdp["mode"].as_u64() {
            Some(1) => "xdp",
            Some(2) => "xdpgeneric",
            Some(3) => "xdpoffload",
            _ => "unknown",
        };
        let id = xdp["prog"]["id"].as_u64().unwrap_or(0);
        Ok(Some((mode.to_owned(), id)))
    }
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
