//! The Debian packages and Rust components each task needs, and installing the missing ones.
//!
//! A task checks with `dpkg-query` first, so a machine that has everything pays one process
//! start. When something is missing it says which packages and why before `apt-get` runs.

use std::collections::BTreeSet;
use std::process::Command;

use anyhow::{bail, Context, Result};
use clap::ValueEnum;

use crmguard_lab::cmd;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Task {
    /// `cargo xtask test`: build, unit tests and the privileged suite.
    Test,
    /// `cargo xtask demo`: build and the network-namespace lab.
    Demo,
    /// `cargo xtask deb`: build and package.
    Deb,
    /// `cargo xtask deb-test`: package, then install, upgrade and remove it in a Debian root.
    DebTest,
    /// `cargo xtask lint`: rustfmt and clippy.
    Lint,
    /// `cargo xtask bench`: the XDP and VPN measurements.
    Bench,
    /// `cargo xtask fuzz`: the fuzz targets of inspection.
    Fuzz,
}

impl Task {
    fn command(self) -> &'static str {
        match self {
            Task::Test => "cargo xtask test",
            Task::Demo => "cargo xtask demo",
            Task::Deb => "cargo xtask deb",
            Task::DebTest => "cargo xtask deb-test",
            Task::Lint => "cargo xtask lint",
            Task::Bench => "cargo xtask bench",
            Task::Fuzz => "cargo xtask fuzz",
        }
    }
}

pub struct Package {
    pub name: &'static str,
    pub why: &'static str,
}

const fn pkg(name: &'static str, why: &'static str) -> Package {
    Package { name, why }
}

const CLANG: Package = pkg("clang", "compiles the XDP program (ebpf/*.c) to BPF");
const LIBBPF_DEV: Package = pkg("libbpf-dev", "bpf_helpers.h for the XDP program");
const IPROUTE2: Package = pkg("iproute2", "ip: network namespaces, veth pairs, XDP state");
const PING: Package = pkg("iputils-ping", "ping: ICMP checks between namespaces");
const NCAT: Package = pkg("ncat", "TCP clients and servers inside namespaces");
const CURL: Package = pkg(
    "curl",
    "fetches /metrics and talks to the MFA portal's JSON endpoint",
);

const TEST: &[Package] = &[
    CLANG,
    pkg("llvm", "llvm-objdump and llvm-strip for BPF objects"),
    LIBBPF_DEV,
    pkg("bpftool", "inspects loaded programs, maps and links"),
    IPROUTE2,
    pkg(
        "xdp-tools",
        "xdp-filter, the reference XDP filter to compare with",
    ),
    pkg("tcpdump", "captures packets on test interfaces"),
    CURL,
    PING,
    pkg("wireguard-tools", "wg: configures WireGuard peers"),
    pkg(
        "wireguard-go",
        "an independent WireGuard implementation to test against",
    ),
    pkg("iperf3", "throughput between namespaces"),
    pkg(
        "nftables",
        "nft: a NAT router in front of a WireGuard client (NAT with keepalive)",
    ),
    pkg("netsniff-ng", "trafgen: packet floods for leak tests"),
    pkg(
        "prometheus",
        "promtool: checks /metrics and the alert rules",
    ),
    NCAT,
    pkg(
        "dnsmasq-base",
        "dnsmasq: a real DNS server for the host's own lookups (allow_established)",
    ),
    pkg(
        "bind9-dnsutils",
        "dig: a real DNS client on the host (allow_established)",
    ),
    pkg(
        "python3",
        "python3 -m http.server: a real HTTP server for downloads (allow_established)",
    ),
    pkg(
        "python3-seccomp",
        "runs the agent under the unit's SystemCallFilter= (privileges)",
    ),
    pkg(
        "systemd",
        "systemd-analyze syscall-filter: the calls the unit's SystemCallFilter= allows",
    ),
    pkg(
        "chromium",
        "headless Chromium: signs in at the MFA portal through the tunnel",
    ),
    pkg(
        "openssl",
        "self-signed server certificates, s_client: TLS flows",
    ),
    pkg(
        "nginx-light",
        "a real TLS, HTTP/1.x and h2c server (corpus)",
    ),
    pkg(
        "postgresql-15",
        "a real PostgreSQL server: initdb, postgres (corpus)",
    ),
    pkg(
        "postgresql-client-15",
        "psql: real PostgreSQL client flows (corpus)",
    ),
    pkg("mariadb-server", "a real MySQL-protocol server (corpus)"),
    pkg(
        "mariadb-client",
        "mysql: real MySQL-protocol client flows (corpus)",
    ),
    pkg("redis-server", "a real Redis server (corpus)"),
    pkg("redis-tools", "redis-cli: real Redis client flows (corpus)"),
    pkg("openssh-server", "sshd: a real SSH server (corpus)"),
    pkg(
        "openssh-client",
        "ssh, ssh-keygen: SSH client flows, host keys (corpus)",
    ),
    pkg(
        "python3-aiosmtpd",
        "an SMTP server offering AUTH before STARTTLS (corpus)",
    ),
    pkg(
        "swaks",
        "real SMTP client flows with AUTH and STARTTLS (corpus)",
    ),
    pkg("libnet-ssleay-perl", "STARTTLS in swaks (corpus)"),
    pkg(
        "prometheus-alertmanager",
        "a real Alertmanager receiving crmguard's alerts on its v2 API",
    ),
    pkg(
        "crowdsec",
        "a real CrowdSec Local API and cscli for the bouncer and watcher clients",
    ),
    pkg(
        "logrotate",
        "rotates followed log files both ways (create and copytruncate)",
    ),
    pkg(
        "sshpass",
        "types wrong passwords into ssh for the brute-force tests",
    ),
];

const DEMO: &[Package] = &[
    CLANG,
    LIBBPF_DEV,
    IPROUTE2,
    PING,
    NCAT,
    CURL,
    pkg(
        "procps",
        "sysctl: lets the outside namespace route the staff laptop's packets to the host",
    ),
    pkg(
        "wireguard-go",
        "the staff laptop's WireGuard client, independent of crmguard's gateway",
    ),
    pkg(
        "wireguard-tools",
        "wg: configures the laptop's tunnel from the printed client configuration",
    ),
    pkg(
        "oathtool",
        "the authenticator app: computes the TOTP code the laptop signs in with",
    ),
];

const DEB: &[Package] = &[
    CLANG,
    LIBBPF_DEV,
    pkg(
        "dpkg-dev",
        "dpkg-shlibdeps: the package's library dependencies",
    ),
    pkg(
        "binutils",
        "strip: drops debug info from the packaged binary",
    ),
];

const DEB_TEST: &[Package] = &[
    CLANG,
    LIBBPF_DEV,
    pkg(
        "dpkg-dev",
        "dpkg-shlibdeps: the package's library dependencies",
    ),
    pkg(
        "binutils",
        "strip: drops debug info from the packaged binary",
    ),
    pkg(
        "debootstrap",
        "a throwaway Debian root to install, upgrade and purge the package in",
    ),
    IPROUTE2,
    pkg("man-db", "man -l: renders the installed man pages"),
];

const BENCH: &[Package] = &[
    CLANG,
    LIBBPF_DEV,
    pkg(
        "bpftool",
        "runs xdp-filter's program for the XDP comparison",
    ),
    IPROUTE2,
    PING,
    pkg(
        "xdp-tools",
        "xdp-filter, the XDP filter crmguard is compared with",
    ),
    pkg("iperf3", "single-stream TCP goodput through each tunnel"),
    pkg(
        "netsniff-ng",
        "trafgen: floods a veth for the XDP packets-per-second rows",
    ),
    pkg("ethtool", "ethtool -S: the packets veth's XDP program saw"),
    pkg(
        "wireguard-go",
        "the WireGuard implementation crmguard's gateway is compared with",
    ),
    pkg(
        "wireguard-tools",
        "wg: configures the tunnel ends and shows their handshakes",
    ),
    pkg(
        "linux-perf",
        "perf stat: counts the gateway's syscalls without slowing it down",
    ),
    pkg(
        "strace",
        "strace -c: counts the gateway's syscalls where perf cannot",
    ),
];

/// The fuzz targets need nothing but a C++ compiler: libFuzzer is built from source by the
/// `libfuzzer-sys` crate, and the instrumentation is the stable compiler's own.
const FUZZ: &[Package] = &[pkg(
    "g++",
    "compiles libFuzzer, which the libfuzzer-sys crate builds from its C++ source",
)];

/// Lint checks the alert rules with promtool when it is there, without installing it.
const LINT: &[Package] = &[pkg(
    "systemd",
    "systemd-analyze security: the unit's exposure stays at most 2.0",
)];

pub fn packages(task: Task) -> &'static [Package] {
    match task {
        Task::Test => TEST,
        Task::Demo => DEMO,
        Task::Deb => DEB,
        Task::DebTest => DEB_TEST,
        Task::Lint => LINT,
        Task::Bench => BENCH,
        Task::Fuzz => FUZZ,
    }
}

fn components(task: Task) -> &'static [&'static str] {
    match task {
        Task::Test | Task::Lint => &["rustfmt", "clippy"],
        Task::Demo | Task::Deb | Task::DebTest | Task::Bench | Task::Fuzz => &[],
    }
}

/// Installs whatever `task` needs and the machine lacks.
pub fn ensure(task: Task) -> Result<()> {
    ensure_packages(task)?;
    ensure_components(components(task))
}

fn ensure_packages(task: Task) -> Result<()> {
    let wanted = packages(task);
    let names: Vec<&str> = wanted.iter().map(|p| p.name).collect();
    if cmd::which("dpkg-query").is_none() {
        bail!(
            "`{}` needs these Debian packages and this is not a Debian system (no dpkg-query): \
             {}; install their equivalents and pass --no-deps",
            task.command(),
            names.join(" ")
        );
    }
    let missing = missing(&names)?;
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!(
        "xtask: `{}` needs these Debian packages, which are not installed:",
        task.command()
    );
    for package in wanted.iter().filter(|p| missing.contains(p.name)) {
        eprintln!("  {:<16} {}", package.name, package.why);
    }
    let missing: Vec<&str> = missing.into_iter().collect();
    let Ok(mut update) = cmd::as_root("apt-get", &[]) else {
        bail!(
            "installing packages needs root or sudo; as root run: apt-get install {}",
            missing.join(" ")
        );
    };
    eprintln!("xtask: installing them with apt-get");
    if missing.contains(&"crowdsec") {
        offline_crowdsec()?;
    }
    cmd::run(update.arg("update"))?;
    let mut install = cmd::as_root("apt-get", &[("DEBIAN_FRONTEND", "noninteractive".into())])?;
    cmd::run(
        install
            .args(["install", "-y", "--no-install-recommends"])
            .args(&missing),
    )?;
    let still = self::missing(&missing)?;
    if !still.is_empty() {
        bail!(
            "apt-get did not install: {}",
            Vec::from_iter(still).join(" ")
        );
    }
    Ok(())
}

/// Debian's crowdsec package registers with CrowdSec's central API while it installs, and its
/// installation fails where that API cannot be reached (CI, a lab without the Internet). A
/// credentials file that exists before the install opts out, as the package's README says; the
/// tests only run the Local API, which needs none of it.
fn offline_crowdsec() -> Result<()> {
    const FILE: &str = "/etc/crowdsec/online_api_credentials.yaml";
    eprintln!("xtask: creating {FILE} so that crowdsec installs without registering online");
    let mut sh = cmd::as_root("sh", &[])?;
    cmd::run(sh.args([
        "-c",
        &format!(
            "mkdir -p /etc/crowdsec && {{ [ -e {FILE} ] || echo '# no online API: crmguard tests use the Local API only' > {FILE}; }}"
        ),
    ]))
}

/// The subset of `names` that dpkg does not list as installed.
fn missing<'a>(names: &[&'a str]) -> Result<BTreeSet<&'a str>> {
    // dpkg-query exits 1 when a name is unknown to it; what it printed is still right.
    let out = cmd::output(
        Command::new("dpkg-query")
            .arg("-W")
            .arg("-f=${Package} ${Status}\n")
            .args(names),
    )?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(not_installed(names, &text))
}

fn not_installed<'a>(names: &[&'a str], dpkg_query: &str) -> BTreeSet<&'a str> {
    let installed: BTreeSet<&str> = dpkg_query
        .lines()
        .filter(|line| line.ends_with(" install ok installed"))
        .filter_map(|line| line.split_whitespace().next())
        .collect();
    names
        .iter()
        .copied()
        .filter(|name| !installed.contains(name))
        .collect()
}

fn ensure_components(wanted: &[&str]) -> Result<()> {
    if wanted.is_empty() {
        return Ok(());
    }
    let missing: Vec<&str> = wanted
        .iter()
        .copied()
        .filter(|component| !component_works(component))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if cmd::which("rustup").is_none() {
        bail!(
            "the Rust components {} are missing and rustup is not installed to add them",
            missing.join(" ")
        );
    }
    eprintln!(
        "xtask: adding Rust components {} (cargo fmt, cargo clippy)",
        missing.join(" ")
    );
    cmd::run(
        Command::new("rustup")
            .args(["component", "add"])
            .args(&missing),
    )
    .context("cannot add Rust components")
}

/// `cargo fmt --version` / `cargo clippy --version` answer when the component is present.
fn component_works(component: &str) -> bool {
    let subcommand = match component {
        "rustfmt" => "fmt",
        other => other,
    };
    let program = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    cmd::succeeds(Command::new(program).args([subcommand, "--version"]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn installed_packages_are_not_missing() {
        let dpkg = "clang install ok installed\n\
                    ncat deinstall ok config-files\n\
                    curl install ok installed\n";
        let missing = not_installed(&["clang", "ncat", "curl", "iperf3"], dpkg);
        assert_eq!(Vec::from_iter(missing), vec!["iperf3", "ncat"]);
    }
}
