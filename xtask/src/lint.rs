//! `cargo xtask lint`: the checks CI runs before the tests.
//!
//! rustfmt and clippy (warnings are errors) over the whole workspace, the crate graph's rules,
//! `sh -n` over the shell scripts, and, where promtool is installed, the Prometheus alert rules
//! and their unit tests.

use std::process::Command;

use anyhow::Result;

use crate::deps;
use crmguard_lab::cmd;
use crmguard_lab::workspace::Workspace;

const SHELL_SCRIPTS: &[&str] = &[
    ".ci/run",
    "packaging/debian/postinst",
    "packaging/debian/prerm",
    "packaging/debian/postrm",
];
/// Crates that must never be in a package's dependency tree (normal and build edges), and why.
/// xtask installs the system packages; anything it compiles before that must not need them. The
/// core must build and test without a build script of ours, aya, tokio or root.
const FORBIDDEN_DEPENDENCIES: &[(&str, &[&str], &str)] = &[
    (
        "xtask",
        &[
            "crmguard-datapath",
            "crmguard",
            "crmguard-bench",
            "crmguard-tests",
        ],
        "xtask must build on a machine without clang, before it installs clang",
    ),
    (
        "crmguard-lab",
        &[
            "crmguard-datapath",
            "crmguard-core",
            "crmguard-vpn",
            "aya",
            "tokio",
        ],
        "the lab is built by xtask, before the packages are installed",
    ),
    (
        "crmguard-core",
        &["crmguard-datapath", "aya", "tokio", "tun-rs", "quinn-udp"],
        "the core is pure: no build script of ours, no kernel, no async runtime",
    ),
    (
        "crmguard-detect",
        &[
            "crmguard-datapath",
            "crmguard-vpn",
            "crmguard-inspect",
            "crmguard",
            "aya",
            "tokio",
            "tun-rs",
            "quinn-udp",
        ],
        "detectors are pure state machines: the daemon feeds them and carries out their actions",
    ),
    (
        "crmguard-inspect",
        &[
            "crmguard-datapath",
            "crmguard-vpn",
            "crmguard",
            "aya",
            "tokio",
            "tun-rs",
            "quinn-udp",
        ],
        "inspection is pure like the core: it decides, the endpoint does the IO",
    ),
    (
        "crmguard-vpn",
        &["crmguard-datapath", "crmguard", "aya", "tokio"],
        "the tunnel does not depend on the XDP side or on the daemon",
    ),
    (
        "crmguard-datapath",
        &["crmguard-vpn", "crmguard", "tokio"],
        "the datapath does not depend on the tunnel or on the daemon",
    ),
];

const ALERT_RULES: &str = "packaging/prometheus/crmguard-alerts.yml";
const ALERT_TESTS: &str = "packaging/prometheus/tests/crmguard-alerts.test.yml";

pub fn run() -> Result<()> {
    deps::ensure(deps::Task::Lint)?;
    let ws = Workspace::load()?;
    cmd::run(ws.cargo().args(["fmt", "--all", "--", "--check"]))?;
    // The fuzz crate is outside the workspace (it builds with coverage instrumentation).
    cmd::run(
        ws.cargo()
            .args(["fmt", "--manifest-path", "fuzz/Cargo.toml", "--", "--check"]),
    )?;
    cmd::run(ws.cargo().args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    check_dependencies(&ws)?;
    for script in SHELL_SCRIPTS {
        let interpreter = if script.starts_with(".ci/") {
            "bash"
        } else {
            "sh"
        };
        cmd::run(
            Command::new(interpreter)
                .arg("-n")
                .arg(ws.root.join(script)),
        )?;
    }
    if cmd::which("promtool").is_some() {
        cmd::run(
            Command::new("promtool")
                .args(["check", "rules", ALERT_RULES])
                .current_dir(&ws.root),
        )?;
        cmd::run(
            Command::new("promtool")
                .args(["test", "rules", ALERT_TESTS])
                .current_dir(&ws.root),
        )?;
    } else {
        eprintln!(
            "xtask: promtool is not installed (Debian package prometheus): \
             {ALERT_RULES} was not checked"
        );
    }
    Ok(())
}

/// Fails when a package's dependency tree holds a crate [`FORBIDDEN_DEPENDENCIES`] keeps out of it.
fn check_dependencies(ws: &Workspace) -> Result<()> {
    for (package, forbidden, why) in FORBIDDEN_DEPENDENCIES {
        let tree = cmd::stdout_of(ws.cargo().args([
            "tree",
            "--package",
            package,
            "--edges",
            "normal,build",
            "--prefix",
            "none",
            "--format",
            "{p}",
        ]))?;
        let names: std::collections::BTreeSet<&str> = tree
            .lines()
            .filter_map(|line| line.split_whitespace().next())
            .collect();
        let found: Vec<&str> = forbidden
            .iter()
            .copied()
            .filter(|name| names.contains(name))
            .collect();
        if !found.is_empty() {
            anyhow::bail!("{package} depends on {}: {why}", found.join(", "));
        }
        eprintln!(
            "xtask: {package} depends on none of {}",
            forbidden.join(", ")
        );
    }
    Ok(())
}
