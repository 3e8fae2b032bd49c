//! A full disk under the audit log and under the state directory: each on a small tmpfs of its
//! own, filled by a file until the kernel says ENOSPC, then emptied again.
//!
//! The audit log: with `on_write_failure = "fail-closed"` no MFA session opens while the log
//! cannot be written (the portal answers 503 and the code is not spent); with `"fail-open"` the
//! session opens and `crmguard_audit_write_errors_total` counts the lost record. When space
//! returns records are written again and `crmguard audit verify` accepts the whole log.
//!
//! The state files: `crmguard ban add` on a full disk puts the ban in force but says that the
//! list could not be saved, leaves `bans.json` whole as it was (temp file, fsync, rename) and no
//! temp file behind, and the agent saves it by itself once space returns.

use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use crmguard_lab::agent::{Agent, Placement};
use crmguard_lab::net::TcpServer;
use crmguard_lab::privileged;
use crmguard_lab::topology::Topology;
use crmguard_lab::wait::wait_for;
use tempfile::TempDir;

use crate::access::{crm_answers, enroll, fresh_code, portal, Lab};
use crate::vpn::{
    gateway_endpoint, gateway_key, metric, wait_reachable, PeerSpec, ALLOWED_TCP, GATEWAY4,
};

const WRITE_ERRORS: &str = "crmguard_audit_write_errors_total";

/// A tmpfs of `size` mounted on a temporary directory; unmounted on drop.
struct Tmpfs {
    dir: TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Result<Tmpfs> {
        let dir = tempfile::Builder::new()
            .prefix("crmguard-full-")
            .tempdir()?;
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0755"),
                "tmpfs",
            ])
            .arg(dir.path())
            .output()?;
        ensure!(out.status.success(), "mount tmpfs: {out:?}");
        Ok(Tmpfs { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Fills the filesystem with one file until writes fail with ENOSPC; returns its path.
    fn fill(&self) -> Result<PathBuf> {
        let path = self.path().join("filler");
        let mut file = std::fs::File::create(&path)?;
        for chunk in [4096usize, 1] {
            let block = vec![0u8; chunk];
            loop {
                match file.write(&block) {
                    Ok(n) if n > 0 => {}
                    Ok(_) => break,
                    Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
                    Err(e) => return Err(e).context("filling the tmpfs"),
                }
            }
        }
        Ok(path)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// Reloads (each reload is an audit record) until the log's writes fail, as the metric counts.
fn reload_until_the_log_fails(agent: &Agent) -> Result<f64> {
    for _ in 0..100 {
        let errors = metric(agent, WRITE_ERRORS, &[])?;
        if errors > 0.0 {
            return Ok(errors);
        }
        let out = agent.cli(&["reload"])?;
        ensure!(out.status.success(), "reload: {out:?}");
    }
    bail!("100 reloads on a full disk and no audit write failed")
}

/// `crmguard audit verify` on the agent's log: its exit status and what it printed.
fn verify(agent: &Agent) -> Result<(bool, String)> {
    let path = agent.audit_path().to_string_lossy().into_owned();
    let out = agent.cli(&["audit", "verify", &path])?;
    Ok((
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    ))
}

fn audit_types(agent: &Agent) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(agent.audit_path())?;
    Ok(text
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .map(|v| v["type"].as_str().unwrap_or("").to_owned())
                .unwrap_or_else(|_| format!("<not a record: {l}>"))
        })
        .collect())
}

/// The audit log on a full disk, under `policy`; `(x, y)` names the topology.
fn audit_disk_full(policy: &str, y: u8) -> Result<()> {
    let fail_closed = policy == "fail-closed";
    let t = Topology::dual_stack(220, y)?;
    let fs = Tmpfs::mount("256k")?;
    let carol = PeerSpec::new("carol", 4)?;
    let lab = Lab::new(&t, "", "", &[(&carol, "sales")])?;
    let placement = Placement {
        audit_dir: Some(fs.path().join("audit")),
        audit_extra: format!("on_write_failure = \"{policy}\""),
        ..Placement::default()
    };
    let mut agent = Agent::configure_with(&t.host, &lab.body, &placement)?;
    agent.spawn()?;
    agent.wait_ready()?;
    let secret = enroll(&agent, "carol")?;
    let gateway = gateway_key(&agent)?;
    let _crm = TcpServer::start(&t.host, ALLOWED_TCP, "crm\n")?;
    let _wg = carol.connect(&t.out, &gateway, gateway_endpoint(t.addrs.host4))?;
    wait_reachable(&t.out, IpAddr::V4(GATEWAY4))?;
    ensure!(!crm_answers(&t.out)?, "the CRM answers before any session");

    let filler = fs.fill()?;
    let errors = reload_until_the_log_fails(&agent)?;
    let mut used = Vec::new();
    let body = format!("{{\"code\":\"{}\"}}", fresh_code(&secret, &mut used)?);
    let (status, text) = portal(&t.out, "POST", "/session", Some(&body))?;
    let errors_after = metric(&agent, WRITE_ERRORS, &[])?;
    eprintln!(
        "disk_full {policy}: sign-in on a full disk answered {status}; write errors {errors} -> {errors_after}"
    );
    ensure!(
        errors_after > errors,
        "the lost mfa_success record was not counted: {errors} -> {errors_after}"
    );
    if fail_closed {
        ensure!(
            status == 503 && text.contains("audit"),
            "fail-closed on a full disk: {status} {text}"
        );
        ensure!(!crm_answers(&t.out)?, "the CRM answers without a session");
    } else {
        ensure!(status == 200, "fail-open on a full disk: {status} {text}");
        ensure!(crm_answers(&t.out)?, "the CRM with a session");
    }
    // The agent goes on: the filter enforces and the agent answers.
    ensure!(agent.is_running()?, "the agent exited on a full disk");
    agent.status()?;

    // Space returns.
    let when_full = audit_types(&agent)?.len();
    std::fs::remove_file(&filler)?;
    if fail_closed {
        // The refused attempt did not spend the code.
        let (status, text) = portal(&t.out, "POST", "/session", Some(&body))?;
        ensure!(
            status == 200,
            "the same code once space returned: {status} {text}"
        );
        wait_for(Duration::from_secs(5), "the CRM with a session", || {
            Ok(crm_answers(&t.out)?.then_some(()))
        })?;
    }
    let reload = agent.cli(&["reload"])?;
    ensure!(reload.status.success(), "reload: {reload:?}");
    agent.stop()?;
    let types = audit_types(&agent)?;
    let (ok, said) = verify(&agent)?;
    eprintln!(
        "disk_full {policy}: {} records after recovery, verify: {}",
        types.len(),
        said.trim()
    );
    ensure!(
        ok,
        "audit verify after the disk filled and emptied: {said}\n{types:?}"
    );
    let after: Vec<&str> = types[when_full..].iter().map(String::as_str).collect();
    ensure!(
        after.contains(&"config_reload") && after.last() == Some(&"agent_stop"),
        "the records written once space returned: {after:?}"
    );
    if fail_closed {
        ensure!(
            types.iter().any(|t| t == "mfa_success"),
            "no mfa_success record: {types:?}"
        );
    }
    Ok(())
}

#[test]
fn a_full_audit_disk_fails_closed_and_the_log_recovers() -> Result<()> {
    if !privileged::require("disk_full::a_full_audit_disk_fails_closed_and_the_log_recovers") {
        return Ok(());
    }
    audit_disk_full("fail-closed", 3)
}

#[test]
fn a_full_audit_disk_fails_open_counting_errors_and_the_log_recovers() -> Result<()> {
    if !privileged::require(
        "disk_full::a_full_audit_disk_fails_open_counting_errors_and_the_log_recovers",
    ) {
        return Ok(());
    }
    audit_disk_full("fail-open", 5)
}

#[test]
fn a_ban_on_a_full_state_disk_fails_cleanly_and_keeps_the_old_file() -> Result<()> {
    if !privileged::require(
        "disk_full::a_ban_on_a_full_state_disk_fails_cleanly_and_keeps_the_old_file",
    ) {
        return Ok(());
    }
    let t = Topology::ipv4_only(220, 7)?;
    let fs = Tmpfs::mount("64k")?;
    let placement = Placement {
        state_dir: Some(fs.path().join("state")),
        ..Placement::default()
    };
    let body = format!(
        "[[interface]]\nname = \"{}\"\nxdp_mode = \"native\"\n\n[firewall]\ndefault = \"drop\"\n",
        t.host_if.name()
    );
    let mut agent = Agent::configure_with(&t.host, &body, &placement)?;
    agent.spawn()?;
    agent.wait_ready()?;
    let bans = agent.state_dir().join("bans.json");
    let add = |agent: &Agent, ip: &str| {
        agent.cli(&["ban", "add", ip, "--ttl", "1h", "--reason", "disk test"])
    };
    let first = add(&agent, "192.0.2.1")?;
    ensure!(first.status.success(), "ban add on free space: {first:?}");
    let before = std::fs::read(&bans).context("reading bans.json")?;
    let entries_before = list(agent.state_dir())?;

    let filler = fs.fill()?;
    let second = add(&agent, "192.0.2.2")?;
    let said = String::from_utf8_lossy(&second.stderr).into_owned();
    eprintln!(
        "disk_full state: ban add on a full disk: {}: {}",
        crmguard_lab::process::describe(second.status),
        said.trim()
    );
    ensure!(
        !second.status.success(),
        "ban add succeeded on a full disk: {second:?}"
    );
    ensure!(
        said.contains("could not be saved") && said.contains("No space left"),
        "the error does not say that the list is unsaved for want of space: {said}"
    );
    let after = std::fs::read(&bans)?;
    ensure!(after == before, "bans.json changed on a full disk");
    serde_json::from_slice::<serde_json::Value>(&after).context("bans.json is not whole")?;
    let entries_after = list(agent.state_dir())?;
    ensure!(
        entries_after == entries_before,
        "the state directory changed (a temp file left?): {entries_before:?} -> {entries_after:?}"
    );
    let listed = agent.cli(&["ban", "list"])?;
    let listed = String::from_utf8_lossy(&listed.stdout).into_owned();
    // As documented: the ban is in force all the same, and saving is retried every second.
    ensure!(
        listed.contains("192.0.2.2"),
        "the unsaved ban is not in force:\n{listed}"
    );
    ensure!(agent.is_running()?, "the agent exited on a full disk");

    std::fs::remove_file(&filler)?;
    let text = wait_for(
        Duration::from_secs(5),
        "the retried save of bans.json",
        || {
            let text = std::fs::read_to_string(&bans)?;
            Ok(text.contains("192.0.2.2").then_some(text))
        },
    )?;
    ensure!(
        text.contains("192.0.2.1"),
        "bans.json once space returned:\n{text}"
    );
    serde_json::from_str::<serde_json::Value>(&text).context("bans.json is not whole")?;
    let third = add(&agent, "192.0.2.3")?;
    ensure!(
        third.status.success(),
        "ban add once space returned: {third:?}"
    );
    agent.stop()?;
    Ok(())
}

/// The names in `dir`.
fn list(dir: &Path) -> Result<Vec<String>> {
    let mut names: Vec<String> = std::fs::read_dir(dir)?
        .map(|e| Ok(e?.file_name().to_string_lossy().into_owned()))
        .collect::<Result<_>>()?;
    names.sort();
    Ok(names)
}
