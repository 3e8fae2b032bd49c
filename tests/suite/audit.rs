//! The agent's audit log: what the agent does is recorded as a hash chain
//! that `crmguard audit verify` accepts, and an edited byte is caught.

use anyhow::{ensure, Context, Result};
use crmguard_lab::agent::{Agent, Placement};
use crmguard_lab::privileged;
use crmguard_lab::topology::Topology;

fn policy(t: &Topology) -> String {
    format!(
        "[[interface]]\nname = \"{}\"\nxdp_mode = \"native\"\n\n[firewall]\ndefault = \"drop\"\n",
        t.host_if.name()
    )
}

fn types(log: &str) -> Result<Vec<String>> {
    log.lines()
        .map(|line| {
            let record: serde_json::Value = serde_json::from_str(line).context("a record")?;
            Ok(record["type"].as_str().unwrap_or("").to_owned())
        })
        .collect()
}

#[test]
fn the_agent_records_its_actions_in_a_chain_that_verifies() -> Result<()> {
    if !privileged::require("audit::the_agent_records_its_actions_in_a_chain_that_verifies") {
        return Ok(());
    }
    let t = Topology::ipv4_only(150, 1)?;
    let mut agent = Agent::start(&t.host, &policy(&t))?;
    let reload = agent.cli(&["reload"])?;
    ensure!(reload.status.success(), "reload: {reload:?}");
    let banned = t.addrs.denied4.to_string();
    let add = agent.cli(&[
        "ban",
        "add",
        &banned,
        "--ttl",
        "1h",
        "--reason",
        "audit test",
    ])?;
    ensure!(add.status.success(), "ban add: {add:?}");
    let remove = agent.cli(&["ban", "remove", &banned])?;
    ensure!(remove.status.success(), "ban remove: {remove:?}");
    agent.stop()?;

    let log_path = agent.dir().join("audit.jsonl");
    let log = std::fs::read_to_string(&log_path).context("reading the audit log")?;
    assert_eq!(
        types(&log)?,
        [
            "agent_start",
            "config_reload",
            "ban_added",
            "ban_removed",
            "agent_stop"
        ],
        "the records, in order"
    );
    let path = log_path.to_string_lossy().into_owned();
    let verify = agent.cli(&["audit", "verify", &path])?;
    let stdout = String::from_utf8_lossy(&verify.stdout);
    ensure!(
        verify.status.success() && stdout.contains("ok: 5 records"),
        "audit verify: {verify:?}"
    );

    // One byte changed in the middle of the log is caught.
    let mut bytes = log.into_bytes();
    let middle = bytes.len() / 2;
    bytes[middle] = if bytes[middle] == b'0' { b'1' } else { b'0' };
    std::fs::write(&log_path, &bytes)?;
    let verify = agent.cli(&["audit", "verify", &path])?;
    ensure!(
        verify.status.code() == Some(1),
        "audit verify of an edited log: {verify:?}"
    );
    Ok(())
}

/// A power loss tears the log's last line (the agent is killed with a record half on disk):
/// the agent started again ends the torn line, acknowledges it with an `audit_torn_line`
/// record, and `audit verify` passes, naming the torn line, where it would otherwise fail on
/// every run from then on. Changing a torn byte is still caught.
#[test]
fn a_line_torn_by_a_crash_is_acknowledged_and_the_log_verifies() -> Result<()> {
    if !privileged::require("audit::a_line_torn_by_a_crash_is_acknowledged_and_the_log_verifies") {
        return Ok(());
    }
    let t = Topology::ipv4_only(151, 1)?;
    let mut agent = Agent::start(&t.host, &policy(&t))?;
    agent.kill9()?;
    let log_path = agent.audit_path().to_owned();
    let path = log_path.to_string_lossy().into_owned();
    let mut log = std::fs::read(&log_path).context("reading the audit log")?;
    let torn_line = log.iter().filter(|&&b| b == b'\n').count() + 1;
    log.extend_from_slice(b"{\"ts\":\"2020-01-01T18:00:00.0");
    std::fs::write(&log_path, &log)?;
    let verify = agent.cli(&["audit", "verify", &path])?;
    ensure!(
        verify.status.code() == Some(1),
        "audit verify of a torn log: {verify:?}"
    );

    agent.spawn()?;
    agent.wait_ready()?;
    agent.stop()?;
    let text = std::fs::read_to_string(&log_path)?;
    let records: Vec<&str> = text.lines().collect();
    ensure!(
        records
            .get(torn_line)
            .is_some_and(|line| line.contains("\"type\":\"audit_torn_line\"")
                && line.contains(&format!("\"line\":{torn_line}"))),
        "the record after the torn line: {text}"
    );
    let verify = agent.cli(&["audit", "verify", &path])?;
    let stdout = String::from_utf8_lossy(&verify.stdout);
    ensure!(
        verify.status.success()
            && stdout.contains(&format!(
                "line {torn_line}: 1 line(s), 29 bytes torn by a crash"
            ))
            && stdout.contains("ok: "),
        "audit verify after the restart: {verify:?}"
    );

    // The torn bytes are covered by their acknowledgement: one changed is caught.
    let mut bytes = text.into_bytes();
    let at = bytes
        .windows(10)
        .position(|w| w == b"2020-01-01")
        .context("the torn bytes")?;
    bytes[at] = b'3';
    std::fs::write(&log_path, &bytes)?;
    let verify = agent.cli(&["audit", "verify", &path])?;
    let stdout = String::from_utf8_lossy(&verify.stdout);
    ensure!(
        verify.status.code() == Some(1) && stdout.contains(&format!("line {torn_line} ")),
        "audit verify with a torn byte changed: {verify:?}"
    );
    Ok(())
}

/// A log whose tail was cut off with its checkpoint removed fails `audit verify` (a cut tail
/// could not be seen without the checkpoint); `--without-checkpoint`, for a copy away from its
/// host, checks the records alone. The agent started again records that the checkpoint was
/// missing, naming the newest record it found, and `verify` lists that record from then on.
#[test]
fn a_removed_checkpoint_fails_verify_and_is_recorded_at_the_next_start() -> Result<()> {
    if !privileged::require(
        "audit::a_removed_checkpoint_fails_verify_and_is_recorded_at_the_next_start",
    ) {
        return Ok(());
    }
    let t = Topology::ipv4_only(152, 1)?;
    let mut agent = Agent::start(&t.host, &policy(&t))?;
    let reload = agent.cli(&["reload"])?;
    ensure!(reload.status.success(), "reload: {reload:?}");
    agent.stop()?;
    let log_path = agent.audit_path().to_owned();
    let path = log_path.to_string_lossy().into_owned();
    let checkpoint = agent
        .dir()
        .join("state")
        .join(crmguard_core::audit::CHECKPOINT_FILE);

    // The last record (agent_stop) cut off, and the checkpoint that would show it removed.
    let log = std::fs::read_to_string(&log_path).context("reading the audit log")?;
    let kept: Vec<&str> = log.lines().collect();
    ensure!(kept.len() >= 3, "the log: {log}");
    let kept = &kept[..kept.len() - 1];
    std::fs::write(&log_path, format!("{}\n", kept.join("\n")))?;
    std::fs::remove_file(&checkpoint).context("removing the checkpoint")?;
    let verify = agent.cli(&["audit", "verify", &path])?;
    let stdout = String::from_utf8_lossy(&verify.stdout);
    ensure!(
        verify.status.code() == Some(1) && stdout.contains("no checkpoint at"),
        "audit verify without the checkpoint: {verify:?}"
    );
    let copy = agent.cli(&["audit", "verify", "--without-checkpoint", &path])?;
    let stdout = String::from_utf8_lossy(&copy.stdout);
    ensure!(
        copy.status.success() && stdout.contains(&format!("ok: {} records", kept.len())),
        "audit verify --without-checkpoint: {copy:?}"
    );

    agent.spawn()?;
    agent.wait_ready()?;
    agent.stop()?;
    let text = std::fs::read_to_string(&log_path)?;
    let record: serde_json::Value = serde_json::from_str(
        text.lines()
            .nth(kept.len())
            .context("no record after the kept ones")?,
    )?;
    ensure!(
        record["type"] == "audit_checkpoint_missing"
            && record["detail"]["seq"] == kept.len()
            && record["detail"]["checkpoint"] == checkpoint.to_string_lossy().as_ref(),
        "the record after the kept ones: {record}"
    );
    let verify = agent.cli(&["audit", "verify", &path])?;
    let stdout = String::from_utf8_lossy(&verify.stdout);
    ensure!(
        verify.status.success()
            && stdout.contains(&format!(
                "line {} (seq {}): the agent found the checkpoint missing",
                kept.len() + 1,
                kept.len() + 1
            ))
            && stdout.contains("ok: "),
        "audit verify after the restart: {verify:?}"
    );
    Ok(())
}

/// A log that reaches `[audit] rotate_size` is sealed and renamed to a segment, the new log
/// continues the chain, and only the newest `rotate_keep` segments stay. `audit verify`
/// without a file checks the segments and the live log as one chain; a segment taken away
/// from the middle fails it.
#[test]
fn the_log_rotates_at_its_size_and_the_segments_verify_as_one_chain() -> Result<()> {
    if !privileged::require(
        "audit::the_log_rotates_at_its_size_and_the_segments_verify_as_one_chain",
    ) {
        return Ok(());
    }
    let t = Topology::ipv4_only(153, 1)?;
    let placement = Placement {
        audit_extra: "rotate_size = \"4KiB\"\nrotate_keep = 3\n".to_owned(),
        ..Placement::default()
    };
    let mut agent = Agent::configure_with(&t.host, &policy(&t), &placement)?;
    agent.spawn()?;
    agent.wait_ready()?;
    let log_path = agent.audit_path().to_owned();
    let segments = || crmguard_core::audit::segments(&log_path).context("listing the segments");
    // Each ban added and lifted is two records of about 300 bytes.
    let banned = t.addrs.denied4.to_string();
    let mut rounds = 0;
    while segments()?.len() < 3 {
        ensure!(rounds < 200, "no third segment after {rounds} bans");
        rounds += 1;
        for args in [
            vec!["ban", "add", &banned, "--ttl", "1h", "--reason", "rotation"],
            vec!["ban", "remove", &banned],
        ] {
            let out = agent.cli(&args)?;
            ensure!(out.status.success(), "{args:?}: {out:?}");
        }
    }
    // Two more rotations' worth: the oldest segments go.
    let first = segments()?;
    for _ in 0..30 {
        for args in [
            vec!["ban", "add", &banned, "--ttl", "1h", "--reason", "rotation"],
            vec!["ban", "remove", &banned],
        ] {
            let out = agent.cli(&args)?;
            ensure!(out.status.success(), "{args:?}: {out:?}");
        }
    }
    agent.stop()?;
    let kept = segments()?;
    ensure!(kept.len() == 3, "segments kept: {kept:?}");
    ensure!(
        !first[0].exists(),
        "the oldest segment stayed: {first:?} {kept:?}"
    );
    for segment in &kept {
        let text = std::fs::read_to_string(segment)?;
        let names = types(&text)?;
        ensure!(
            names.first().map(String::as_str) == Some("audit_log_continued")
                && names.last().map(String::as_str) == Some("audit_log_rotated"),
            "{}: {names:?}",
            segment.display()
        );
        ensure!(
            text.len() >= 4096 && text.len() < 4096 + 1024,
            "{}: {} bytes",
            segment.display(),
            text.len()
        );
    }
    let live = types(&std::fs::read_to_string(&log_path)?)?;
    ensure!(
        live.first().map(String::as_str) == Some("audit_log_continued")
            && live.last().map(String::as_str) == Some("agent_stop"),
        "the live log: {live:?}"
    );

    let verify = agent.cli(&["audit", "verify"])?;
    let stdout = String::from_utf8_lossy(&verify.stdout);
    ensure!(
        verify.status.success() && stdout.contains("ok: ") && stdout.contains("continues segment"),
        "audit verify of the segments and the log: {verify:?}"
    );
    for segment in &kept {
        let name = segment.file_name().context("a name")?.to_string_lossy();
        ensure!(
            !stdout.contains(&format!("continues segment {name}")),
            "a kept segment is checked, not continued: {stdout}"
        );
    }
    // One segment alone is whole up to its seal.
    let alone = agent.cli(&["audit", "verify", &kept[1].to_string_lossy()])?;
    let stdout = String::from_utf8_lossy(&alone.stdout);
    ensure!(
        alone.status.success() && stdout.contains("ends with the rotation to the next segment"),
        "audit verify of one segment: {alone:?}"
    );
    // The oldest segment taken away: the next one continues a segment no rotation removed.
    let aside = agent.dir().join("oldest.jsonl");
    std::fs::rename(&kept[0], &aside)?;
    let verify = agent.cli(&["audit", "verify"])?;
    let stdout = String::from_utf8_lossy(&verify.stdout);
    ensure!(
        verify.status.code() == Some(1)
            && stdout.contains(&format!("{}: line 1 ", kept[1].display()))
            && stdout.contains("segments before this file are missing"),
        "audit verify with the oldest segment missing: {verify:?}"
    );
    std::fs::rename(&aside, &kept[0])?;
    // A segment removed from the middle breaks the chain where the next one begins.
    std::fs::remove_file(&kept[1])?;
    let verify = agent.cli(&["audit", "verify"])?;
    let stdout = String::from_utf8_lossy(&verify.stdout);
    let next = kept[2].display().to_string();
    ensure!(
        verify.status.code() == Some(1) && stdout.contains(&format!("{next}: line 1 ")),
        "audit verify with a segment missing: {verify:?}"
    );
    Ok(())
}
