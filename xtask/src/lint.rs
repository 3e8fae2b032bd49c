//! `cargo xtask lint`: the checks CI runs before the tests.
//!
//! rustfmt and clippy (warnings are errors) over the whole workspace, `sh -n` over the shell
//! scripts, and, where promtool is installed, the Prometheus alert rules and their unit tests.

use std::process::Command;

use anyhow::Result;

use crate::workspace::Workspace;
use crate::{cmd, deps};

const SHELL_SCRIPTS: &[&str] = &[
    ".ci/run",
    "packaging/debian/postinst",
    "packaging/debian/prerm",
    "packaging/debian/postrm",
];
const ALERT_RULES: &str = "packaging/prometheus/crmguard-alerts.yml";
const ALERT_TESTS: &str = "packaging/prometheus/tests/crmguard-alerts.test.yml";

pub fn run() -> Result<()> {
    deps::ensure(deps::Task::Lint)?;
    let ws = Workspace::load()?;
    cmd::run(ws.cargo().args(["fmt", "--all", "--", "--check"]))?;
    cmd::run(ws.cargo().args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
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
