//! `cargo xtask lint`: the checks CI runs before the tests.
//!
//! rustfmt and clippy (warnings are errors) over the whole workspace, the crate graph's rules,
//! `sh -n` over the shell scripts, the systemd unit's exposure (`systemd-analyze security`), and,
//! where promtool is installed, the Prometheus alert rules and their unit tests.

use std::process::Command;

use anyhow::{bail, Context, Result};

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

const UNIT: &str = "packaging/crmguard.service";
/// The highest "Overall exposure level" `systemd-analyze security` may give the unit.
const MAX_EXPOSURE: f64 = 2.0;

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
    check_unit_exposure(&ws)?;
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

/// Fails when `systemd-analyze security` rates the unit's exposure above [`MAX_EXPOSURE`].
/// Skipped, saying so, only where systemd-analyze is missing (lint installs the package
/// `systemd`, so that is a machine where installing failed or was refused).
fn check_unit_exposure(ws: &Workspace) -> Result<()> {
    if cmd::which("systemd-analyze").is_none() {
        eprintln!(
            "xtask: systemd-analyze is not installed (Debian package systemd): \
             the exposure of {UNIT} was NOT checked"
        );
        return Ok(());
    }
    let out = cmd::stdout_of(
        Command::new("systemd-analyze")
            .args(["security", "--offline=true", "--no-pager", UNIT])
            .current_dir(&ws.root),
    )?;
    let exposure = parse_exposure(&out).with_context(|| {
        format!("`systemd-analyze security {UNIT}` printed no overall exposure level:\n{out}")
    })?;
    if exposure > MAX_EXPOSURE {
        bail!(
            "{UNIT}: exposure {exposure:.1} is above {MAX_EXPOSURE:.1}; \
             `systemd-analyze security --offline=true {UNIT}` lists what raises it"
        );
    }
    eprintln!("xtask: {UNIT} exposure {exposure:.1} (at most {MAX_EXPOSURE:.1})");
    Ok(())
}

/// The number in `→ Overall exposure level for crmguard.service: 2.0 OK 🙂`.
fn parse_exposure(report: &str) -> Option<f64> {
    let line = report
        .lines()
        .find(|line| line.contains("Overall exposure level"))?;
    let (_, rest) = line.rsplit_once(": ")?;
    rest.split_whitespace().next()?.parse().ok()
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

#[cfg(test)]
mod tests {
    use super::parse_exposure;

    #[test]
    fn reads_the_overall_exposure_level() {
        let report = "✗ PrivateNetwork=   Service has access to the host's network   0.5\n\n\
            → Overall exposure level for crmguard.service: 2.0 OK 🙂\n";
        assert_eq!(parse_exposure(report), Some(2.0));
        assert_eq!(
            parse_exposure("→ Overall exposure level for x.service: 9.6 UNSAFE 😨"),
            Some(9.6)
        );
        assert_eq!(parse_exposure("no summary"), None);
    }
}
