//! The audit verifier ([`verify_bytes`]) on arbitrary bytes and on real logs with one change.
//!
//! Input: a mode byte. Mode bit 0 clear: the rest is a log, checked with and without the
//! checkpoint of a real log; whatever it holds, no panic, and a report that says the log is
//! intact counts one record per line. Mode bit 0 set: the next bytes pick one of the real logs
//! (written by the audit [`Writer`] with a known key), a position (big-endian `u16`, modulo the
//! log's length), an operation (mode bits 1-2: replace the byte by itself XOR a nonzero value,
//! delete it, insert a byte before it, cut the log there) and a byte. The unchanged log must
//! verify; the changed one must not: any single-byte change of a valid log is detected, and
//! a log cut at any point is detected against its checkpoint. One of the real logs holds a
//! line torn by a crash and the writer's acknowledgement of it, so that changes to the torn
//! bytes and to their acknowledgement are detected too.

use std::sync::OnceLock;
use std::time::{Duration, UNIX_EPOCH};

use crmguard_core::audit::{
    verify_bytes, AuditKey, Checkpoint, Event, EventType, Outcome, VerifyReport, Writer,
};

/// The key the logs are written and checked with.
const KEY: [u8; 32] = [0x5a; 32];

/// A log the writer wrote, its records and its checkpoint.
struct Log {
    bytes: Vec<u8>,
    records: u64,
    head: Checkpoint,
}

fn key() -> AuditKey {
    AuditKey::from_bytes(KEY)
}

/// What an agent records in a day: start, a reload, handshakes, MFA, a ban, denials.
fn events() -> Vec<Event> {
    vec![
        Event::new(EventType::AgentStart, Outcome::Info, "system").with_detail("version", "0.1.0"),
        Event::new(EventType::ConfigReload, Outcome::Success, "admin:root")
            .with_detail("config", "/etc/crmguard/crmguard.toml"),
        Event::new(EventType::PeerHandshake, Outcome::Success, "alice")
            .with_src("203.0.113.5:51820")
            .with_dst("10.77.0.1"),
        Event::new(EventType::MfaFailure, Outcome::Failure, "bob")
            .with_src("10.77.0.11")
            .with_detail("remaining", 4),
        Event::new(EventType::MfaSuccess, Outcome::Success, "bob")
            .with_src("10.77.0.11")
            .with_detail("expires", 1_767_225_600u64),
        Event::new(EventType::BanAdded, Outcome::Success, "admin:alice")
            .with_src("198.51.100.0/24")
            .with_detail("reason", "scanner \"quoted\" \u{444}"),
        Event::new(EventType::AclDenied, Outcome::Failure, "bob")
            .with_src("10.77.0.11")
            .with_dst("10.77.0.1:5432")
            .with_detail("count", 17)
            .with_detail("reason", "role"),
        Event::new(EventType::AgentStop, Outcome::Info, "system"),
    ]
}

/// The real logs: one record, three, all of [`events`], and all of them with a line torn
/// after the third (acknowledged by one more record).
fn logs() -> &'static [Log] {
    static LOGS: OnceLock<Vec<Log>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let all = events();
        [
            (1, None),
            (3, None),
            (all.len(), None),
            (all.len(), Some(3)),
        ]
        .iter()
        .map(|&(n, torn_after)| write_log(&all[..n], torn_after))
        .collect()
    })
}

/// A power loss's tear: the start of a record, without its end.
const TORN: &[u8] = b"{\"ts\":\"2026-01-01T00:03:03.00";

/// Writes `events`, and a torn line after the first `torn_after` of them, which the writer
/// opened after it acknowledges.
fn write_log(events: &[Event], torn_after: Option<usize>) -> Log {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("a temporary directory: {e}"));
    let path = dir.path().join("audit.log");
    let checkpoint = dir.path().join("audit.checkpoint");
    let open = || {
        Writer::open(&path, &checkpoint, key())
            .unwrap_or_else(|e| panic!("opening the audit log: {e}"))
    };
    let mut writer = open();
    for (i, (event, second)) in events.iter().zip(0u64..).enumerate() {
        if torn_after == Some(i) {
            let mut file = std::fs::OpenOptions::new()
                .append(true)
                .open(&path)
                .unwrap_or_else(|e| panic!("opening the audit log: {e}"));
            std::io::Write::write_all(&mut file, TORN)
                .unwrap_or_else(|e| panic!("tearing the audit log: {e}"));
            writer = open();
            assert!(writer.damage().is_some(), "the tear was not acknowledged");
        }
        let ts = UNIX_EPOCH + Duration::from_secs(1_767_225_600 + second * 61);
        if let Err(e) = writer.append(event, ts) {
            panic!("appending to the audit log: {e}");
        }
    }
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("reading the audit log: {e}"));
    Log {
        bytes,
        records: writer.head().seq,
        head: writer.head(),
    }
}

/// The lines of acknowledged damage in `report`.
fn acknowledged_lines(report: &VerifyReport) -> u64 {
    report.acknowledged.iter().map(|a| a.lines).sum()
}

fn consistent(content: &[u8], report: &VerifyReport) {
    match &report.broken {
        None => {
            let lines = content.iter().filter(|&&b| b == b'\n').count();
            assert_eq!(
                report.records + acknowledged_lines(report),
                u64::try_from(lines).unwrap_or(u64::MAX),
                "an intact log whose records and acknowledged lines are not its lines"
            );
            assert!(content.is_empty() || content.ends_with(b"\n"));
        }
        Some(broken) => {
            assert!(broken.line >= 1);
            assert!(
                broken.line <= report.records + acknowledged_lines(report) + 1,
                "broken at line {} after {} good records",
                broken.line,
                report.records
            );
            assert!(!broken.problem.to_string().is_empty());
        }
    }
}

pub fn run(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let key = key();
    if mode & 1 == 0 {
        let report = verify_bytes(rest, &key, None);
        consistent(rest, &report);
        let checkpoint = logs()[usize::from(mode >> 1) % logs().len()].head;
        let against = verify_bytes(rest, &key, Some(checkpoint));
        consistent(rest, &against);
        return;
    }
    let [which, high, low, byte, ..] = *rest else {
        return;
    };
    let log = &logs()[usize::from(which) % logs().len()];
    let intact = verify_bytes(&log.bytes, &key, Some(log.head));
    assert_eq!(
        (intact.records, intact.broken),
        (log.records, None),
        "the writer's own log does not verify"
    );
    let at = usize::from(u16::from_be_bytes([high, low])) % log.bytes.len();
    let mut changed = log.bytes.clone();
    let what = match (mode >> 1) & 3 {
        0 => {
            let flip = if byte == 0 { 1 } else { byte };
            changed[at] ^= flip;
            format!("byte {at} XOR {flip:#04x}")
        }
        1 => {
            changed.remove(at);
            format!("byte {at} deleted")
        }
        2 => {
            changed.insert(at, byte);
            format!("{byte:#04x} inserted at {at}")
        }
        _ => {
            changed.truncate(at);
            format!("cut at {at}")
        }
    };
    // A cut at a line's end leaves records that verify on their own: only the checkpoint
    // tells that the tail is missing.
    let against = verify_bytes(&changed, &key, Some(log.head));
    consistent(&changed, &against);
    assert!(
        against.broken.is_some(),
        "{what} went undetected against the checkpoint"
    );
    if (mode >> 1) & 3 != 3 {
        let alone = verify_bytes(&changed, &key, None);
        consistent(&changed, &alone);
        assert!(alone.broken.is_some(), "{what} went undetected");
    }
}

/// The real logs whole, and one mutation input per operation on each.
pub fn seeds() -> Vec<(String, Vec<u8>)> {
    let mut seeds = Vec::new();
    for (i, log) in logs().iter().enumerate() {
        let mut raw = vec![0];
        raw.extend_from_slice(&log.bytes);
        seeds.push((format!("audit-log-{}", log.records), raw));
        for op in 0u8..4 {
            let which = u8::try_from(i).unwrap_or(0);
            let at = u16::try_from(log.bytes.len() / 2)
                .unwrap_or(0)
                .to_be_bytes();
            seeds.push((
                format!("audit-log-{}-op{op}", log.records),
                vec![1 | (op << 1), which, at[0], at[1], b'x'],
            ));
        }
    }
    seeds
}
