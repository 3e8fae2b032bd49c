use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::*;

pub(super) fn key() -> AuditKey {
    AuditKey::from_bytes([7; KEY_LEN])
}

/// A deterministic PRNG (splitmix64), so that a failure can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `low..high`.
    fn range(&mut self, low: usize, high: usize) -> usize {
        let span = u64::try_from(high - low).expect("audit test");
        low + usize::try_from(self.next() % span).expect("audit test")
    }
}

pub(super) fn ts(i: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_micros(1_740_830_400_000_000 + i * 1_234_567)
}

/// The records only the writer makes, which `verify` lists or treats apart.
const WRITER_ONLY: [EventType; 3] = [
    EventType::AuditCheckpointMissing,
    EventType::AuditLogRotated,
    EventType::AuditLogContinued,
];

/// A varied event: every type in turn (but those only the writer makes),
/// with and without addresses, strings with spaces and characters JSON escapes.
pub(super) fn event(i: u64) -> Event {
    let kinds: Vec<EventType> = EventType::ALL
        .iter()
        .copied()
        .filter(|kind| !WRITER_ONLY.contains(kind))
        .collect();
    let kind = kinds[usize::try_from(i).expect("audit test") % kinds.len()];
    let outcome = [Outcome::Success, Outcome::Failure, Outcome::Info]
        [usize::try_from(i % 3).expect("audit test")];
    let mut event = Event::new(kind, outcome, format!("peer-{}", i % 7))
        .with_detail(
            "note",
            format!("record {i} of the test log, \"quoted\" and caf\u{e9}"),
        )
        .with_detail("n", i);
    if i.is_multiple_of(2) {
        event = event.with_src(format!("203.0.113.{}", i % 250));
    }
    if i.is_multiple_of(3) {
        event = event.with_dst("10.20.0.5:443");
    }
    event
}

pub(super) struct Log {
    _dir: tempfile::TempDir,
    pub path: PathBuf,
    pub checkpoint_path: PathBuf,
}

impl Log {
    pub fn new() -> Log {
        let dir = tempfile::tempdir().expect("audit test");
        let path = dir.path().join("log/audit.jsonl");
        let checkpoint_path = dir.path().join("state").join(CHECKPOINT_FILE);
        Log {
            _dir: dir,
            path,
            checkpoint_path,
        }
    }

    pub fn write(&self, range: std::ops::Range<u64>) -> Writer {
        let mut writer =
            Writer::open(&self.path, &self.checkpoint_path, key()).expect("audit test");
        for i in range {
            writer.append(&event(i), ts(i)).expect("audit test");
        }
        writer
    }

    pub fn checkpoint(&self) -> Option<Checkpoint> {
        read_checkpoint(&self.checkpoint_path).expect("audit test")
    }

    fn verify(&self) -> VerifyReport {
        verify(&self.path, &key(), self.checkpoint()).expect("audit test")
    }
}

pub(super) fn ok(records: u64) -> VerifyReport {
    VerifyReport {
        records,
        broken: None,
        acknowledged: Vec::new(),
        checkpoints_missing: Vec::new(),
        ..VerifyReport::default()
    }
}

/// What `verify` reports for a log of `records` records, one of them (at `line`, `seq`) the
/// writer's record of a missing checkpoint.
fn ok_noting_a_missing_checkpoint(records: u64, line: u64, seq: u64) -> VerifyReport {
    VerifyReport {
        checkpoints_missing: vec![CheckpointMissing { file: 0, line, seq }],
        ..ok(records)
    }
}

/// The line (from 1) that holds byte `offset`, its `\n` counting as part of it.
fn line_of(content: &[u8], offset: usize) -> u64 {
    u64::try_from(content[..offset].iter().filter(|&&b| b == b'\n').count()).expect("audit test")
        + 1
}

fn lines(content: &[u8]) -> Vec<Vec<u8>> {
    content
        .split_inclusive(|&b| b == b'\n')
        .map(<[u8]>::to_vec)
        .collect()
}

#[test]
fn intact_log_verifies() {
    let log = Log::new();
    log.write(0..200);
    assert_eq!(log.verify(), ok(200));
    let checkpoint = log.checkpoint().expect("audit test");
    assert_eq!(checkpoint.seq, 200);
    let content = std::fs::read(&log.path).expect("audit test");
    let first = std::str::from_utf8(
        &content[..content
            .iter()
            .position(|&b| b == b'\n')
            .expect("audit test")],
    )
    .expect("audit test");
    assert!(first.starts_with(
        "{\"ts\":\"2025-03-01T12:00:00.000000Z\",\"seq\":1,\"type\":\"agent_start\",\"outcome\":\"success\",\"actor\":\"peer-0\",\"src\":\"203.0.113.0\",\"dst\":\"10.20.0.5:443\",\"detail\":{"
    ), "{first}");
    assert!(first.contains(&format!(",\"prev\":\"{}\",\"mac\":\"", "0".repeat(64))));
    let mode = std::fs::metadata(&log.path)
        .expect("audit test")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[test]
fn every_tampering_is_detected_at_the_right_line() {
    const ROUNDS: usize = 1000;
    let log = Log::new();
    log.write(0..200);
    let original = std::fs::read(&log.path).expect("audit test");
    let checkpoint = log.checkpoint();
    let records = lines(&original);
    let n = records.len();
    assert_eq!(n, 200);
    // Offsets of the fields a targeted edit aims at.
    let find_all = |needle: &[u8]| -> Vec<usize> {
        original
            .windows(needle.len())
            .enumerate()
            .filter(|(_, w)| *w == needle)
            .map(|(i, _)| i + needle.len())
            .collect()
    };
    let macs = find_all(b"\"mac\":\"");
    let prevs = find_all(b"\"prev\":\"");
    let spaces: Vec<usize> = (0..original.len())
        .filter(|&i| original[i] == b' ')
        .collect();
    let newlines: Vec<usize> = (0..original.len())
        .filter(|&i| original[i] == b'\n')
        .collect();

    let mut rng = Rng(0x00c0_ffee_2025);
    let mut detected = 0;
    let mut tried = [0u32; 12];
    for round in 0..ROUNDS {
        let choice = rng.range(0, 12);
        tried[choice] += 1;
        let (content, expected_line, what) = match choice {
            // Single-byte edits: anywhere, in a mac, in a prev, in whitespace, at a line end.
            0..=6 => {
                let offset = match choice {
                    0..=2 => rng.range(0, original.len()),
                    3 => macs[rng.range(0, macs.len())] + rng.range(0, 64),
                    4 => prevs[rng.range(0, prevs.len())] + rng.range(0, 64),
                    5 => spaces[rng.range(0, spaces.len())],
                    _ => newlines[rng.range(0, newlines.len())],
                };
                let mut content = original.clone();
                let flip = u8::try_from(rng.range(1, 256)).expect("audit test");
                content[offset] ^= flip;
                (
                    content,
                    line_of(&original, offset),
                    format!("edit at byte {offset}"),
                )
            }
            7 => {
                let k = rng.range(0, n);
                let mut copy = records.clone();
                copy.remove(k);
                (
                    copy.concat(),
                    u64::try_from(k + 1).expect("audit test"),
                    format!("delete record {}", k + 1),
                )
            }
            8 => {
                let i = rng.range(0, n - 1);
                let j = rng.range(i + 1, n);
                let mut copy = records.clone();
                copy.swap(i, j);
                (
                    copy.concat(),
                    u64::try_from(i + 1).expect("audit test"),
                    format!("swap {} and {}", i + 1, j + 1),
                )
            }
            9 => {
                let a = rng.range(0, n);
                let p = rng.range(0, n + 1);
                let mut copy = records.clone();
                copy.insert(p, records[a].clone());
                // A copy that lands where the original stood pushes the original down one line.
                let line = if a == p { p + 2 } else { p + 1 };
                (
                    copy.concat(),
                    u64::try_from(line).expect("audit test"),
                    format!("insert a copy of {} at {}", a + 1, p + 1),
                )
            }
            10 => {
                let cut = rng.range(1, n + 1);
                let kept = records[..n - cut].concat();
                (
                    kept,
                    u64::try_from(n - cut + 1).expect("audit test"),
                    format!("drop the last {cut} records"),
                )
            }
            _ => {
                // Cut inside a line: after at least its first byte, before its `\n` is complete.
                let k = rng.range(0, n);
                let start: usize = records[..k].iter().map(Vec::len).sum();
                let cut = start + rng.range(1, records[k].len());
                (
                    original[..cut].to_vec(),
                    u64::try_from(k + 1).expect("audit test"),
                    format!("cut at byte {cut}"),
                )
            }
        };
        assert_ne!(content, original, "round {round}: {what} changed nothing");
        let report = verify_bytes(&content, &key(), checkpoint);
        let Some(broken) = report.broken else {
            panic!("round {round}: {what} was not detected");
        };
        assert_eq!(
            broken.line, expected_line,
            "round {round}: {what}: {broken:?}"
        );
        assert_eq!(report.records, expected_line - 1, "round {round}: {what}");
        detected += 1;
    }
    assert_eq!(detected, ROUNDS);
    // Every kind of tampering was tried many times.
    assert!(tried.iter().all(|&count| count >= 40), "{tried:?}");
}

#[test]
fn problems_are_named() {
    let log = Log::new();
    log.write(0..20);
    let original = std::fs::read(&log.path).expect("audit test");
    let records = lines(&original);
    let checkpoint = log.checkpoint();
    let check = |content: Vec<u8>, line: u64, seq: Option<u64>, problem: Problem| {
        let report = verify_bytes(&content, &key(), checkpoint);
        assert_eq!(
            report.broken,
            Some(Broken {
                file: 0,
                line,
                seq,
                problem
            })
        );
    };
    // An edit inside the detail of record 3.
    let mut edited = records.clone();
    let pos = edited[2]
        .windows(6)
        .position(|w| w == b"record")
        .expect("audit test");
    edited[2][pos] = b'R';
    check(edited.concat(), 3, None, Problem::MacMismatch);
    // Record 5 deleted.
    let mut deleted = records.clone();
    deleted.remove(4);
    check(
        deleted.concat(),
        5,
        Some(6),
        Problem::SeqGap {
            expected: 5,
            found: 6,
        },
    );
    // Record 8 repeated.
    let mut repeated = records.clone();
    repeated.insert(8, records[7].clone());
    check(
        repeated.concat(),
        9,
        Some(8),
        Problem::SeqOutOfOrder {
            expected: 9,
            found: 8,
        },
    );
    // The last 3 records cut off.
    check(
        records[..17].concat(),
        18,
        Some(18),
        Problem::TailTruncated {
            checkpoint_seq: 20,
            last_seq: 17,
        },
    );
    // The last line torn.
    check(
        original[..original.len() - 1].to_vec(),
        20,
        None,
        Problem::TornLine,
    );
    // A checkpoint that names another record 20.
    let other = Checkpoint {
        seq: 20,
        mac: [1; 32],
    };
    let report = verify_bytes(&original, &key(), Some(other));
    assert_eq!(
        report.broken,
        Some(Broken {
            file: 0,
            line: 20,
            seq: Some(20),
            problem: Problem::CheckpointMismatch
        })
    );
    // The wrong key breaks the first record.
    let report = verify_bytes(&original, &AuditKey::from_bytes([8; KEY_LEN]), None);
    assert_eq!(
        report.broken.map(|b| (b.line, b.problem)),
        Some((1, Problem::MacMismatch))
    );
    // Without a checkpoint a clean cut at a record boundary cannot be seen.
    assert_eq!(verify_bytes(&records[..10].concat(), &key(), None), ok(10));
}

#[test]
fn a_reopened_writer_continues_the_chain() {
    let log = Log::new();
    drop(log.write(0..10));
    let writer = log.write(10..20);
    assert_eq!(writer.head().seq, 20);
    assert_eq!(writer.damage(), None);
    assert_eq!(log.verify(), ok(20));
}

/// A torn last line of 14 bytes at line 6, ended with `\n`.
const TORN_AT_6: Damage = Damage {
    line: 6,
    lines: 1,
    bytes: 15,
};

/// What `verify` reports for a log of `records` records whose damage `damage` record `seq`
/// acknowledged.
fn acknowledged(records: u64, damage: Damage, seq: u64) -> VerifyReport {
    VerifyReport {
        records,
        broken: None,
        acknowledged: vec![Acknowledged {
            file: 0,
            line: damage.line,
            lines: damage.lines,
            bytes: damage.bytes,
            seq,
        }],
        checkpoints_missing: Vec::new(),
        ..VerifyReport::default()
    }
}

/// A power loss tears the last line; the next writer ends it and acknowledges it with the
/// next record, and `verify` steps over it from then on, listing it.
#[test]
fn a_torn_line_is_acknowledged_and_verify_steps_over_it() {
    let log = Log::new();
    drop(log.write(0..5));
    let mut content = std::fs::read(&log.path).expect("audit test");
    content.extend_from_slice(b"{\"ts\":\"2025-03");
    std::fs::write(&log.path, &content).expect("audit test");
    let broken = log.verify().broken.expect("audit test");
    assert_eq!((broken.line, broken.problem), (6, Problem::TornLine));

    let writer = log.write(5..8);
    assert_eq!(writer.damage(), Some(TORN_AT_6));
    // Record 6 acknowledges the tear; records 7 to 9 follow it.
    assert_eq!(writer.head().seq, 9);
    assert_eq!(log.verify(), acknowledged(9, TORN_AT_6, 6));
    let content = std::fs::read(&log.path).expect("audit test");
    let ack = String::from_utf8(lines(&content)[6].clone()).expect("audit test");
    assert!(
        ack.contains("\"type\":\"audit_torn_line\"") && ack.contains("\"line\":6"),
        "{ack}"
    );

    // A writer opened again finds nothing more to acknowledge.
    let writer = log.write(8..9);
    assert_eq!((writer.head().seq, writer.damage()), (10, None));
    assert_eq!(log.verify(), acknowledged(10, TORN_AT_6, 6));
}

/// The acknowledgement covers exactly the bytes it names, and only where the chain went on
/// across them: an edit of the torn bytes, or of a record turned into damage, stays broken.
#[test]
fn an_acknowledgement_does_not_cover_a_lost_record_or_other_bytes() {
    let log = Log::new();
    drop(log.write(0..5));
    let mut content = std::fs::read(&log.path).expect("audit test");
    content.extend_from_slice(b"{\"ts\":\"2025-03");
    std::fs::write(&log.path, &content).expect("audit test");
    drop(log.write(5..6));
    let good = std::fs::read(&log.path).expect("audit test");

    // Other bytes in place of the torn ones: the acknowledgement's SHA-256 does not match.
    let mut swapped = lines(&good);
    swapped[5] = b"{\"ts\":\"2025-04\n".to_vec();
    let report = verify_bytes(&swapped.concat(), &key(), log.checkpoint());
    let broken = report.broken.expect("audit test");
    assert_eq!((broken.line, report.records), (6, 5), "{broken:?}");
    assert!(matches!(broken.problem, Problem::BadJson(_)), "{broken:?}");

    // One more damaged line inserted before the acknowledgement: the count differs.
    let mut longer = lines(&good);
    longer.insert(5, b"garbage\n".to_vec());
    let broken = verify_bytes(&longer.concat(), &key(), log.checkpoint())
        .broken
        .expect("audit test");
    assert_eq!(broken.line, 6);

    // A record altered after the checkpoint named it: a later writer acknowledges the bad
    // line, but its acknowledgement continues after the checkpoint's record, not where the
    // bad line began, so the edit is still found.
    let log = Log::new();
    drop(log.write(0..5));
    let content = std::fs::read(&log.path).expect("audit test");
    let mut edited = lines(&content);
    let last = edited[4].clone();
    edited[4] = String::from_utf8(last)
        .expect("audit test")
        .replacen("record 4", "record X", 1)
        .into_bytes();
    std::fs::write(&log.path, edited.concat()).expect("audit test");
    let writer = log.write(5..6);
    assert_eq!(writer.damage().map(|d| d.line), Some(5));
    assert_eq!(writer.head().seq, 7);
    let report = log.verify();
    let broken = report.broken.expect("audit test");
    assert_eq!(
        (broken.line, broken.problem, report.acknowledged),
        (5, Problem::MacMismatch, Vec::new())
    );
}

/// A crash after the tear was ended but before its acknowledgement was written: the next
/// writer acknowledges the ended line all the same.
#[test]
fn an_ended_unacknowledged_tear_is_acknowledged_by_the_next_writer() {
    let log = Log::new();
    drop(log.write(0..5));
    let mut content = std::fs::read(&log.path).expect("audit test");
    content.extend_from_slice(b"{\"ts\":\"2025-03\n");
    std::fs::write(&log.path, &content).expect("audit test");
    let writer = log.write(5..6);
    assert_eq!(writer.damage(), Some(TORN_AT_6));
    assert_eq!(log.verify(), acknowledged(7, TORN_AT_6, 6));
}

#[test]
fn the_chain_is_found_from_the_end_of_a_log_many_chunks_long() {
    let log = Log::new();
    drop(log.write(0..1500));
    assert!(std::fs::metadata(&log.path).expect("audit test").len() > 4 * 64 * 1024);
    // Without the checkpoint, only the log itself says where the chain stands (and the
    // writer records that the checkpoint was gone before it goes on).
    std::fs::remove_file(&log.checkpoint_path).expect("audit test");
    let writer = log.write(1500..1501);
    assert_eq!((writer.head().seq, writer.damage()), (1502, None));
    assert_eq!(writer.checkpoint_missing(), Some(1500));
    assert_eq!(
        log.verify(),
        ok_noting_a_missing_checkpoint(1502, 1501, 1501)
    );
}

/// A log that holds records but has no checkpoint gets a record saying so before anything
/// else, naming the newest record it held; `verify` lists it. An empty log without one (a
/// first start) and a log with its checkpoint get none.
#[test]
fn a_missing_checkpoint_is_recorded_when_the_log_holds_records() {
    let log = Log::new();
    let writer = log.write(0..0);
    assert_eq!((writer.head().seq, writer.checkpoint_missing()), (0, None));
    drop(log.write(0..3));
    let writer = log.write(3..3);
    assert_eq!((writer.head().seq, writer.checkpoint_missing()), (3, None));

    // The tail cut and the checkpoint removed: what is left is vouched for by nothing but
    // the record of the missing checkpoint.
    let content = std::fs::read(&log.path).expect("audit test");
    std::fs::write(&log.path, lines(&content)[..2].concat()).expect("audit test");
    std::fs::remove_file(&log.checkpoint_path).expect("audit test");
    assert_eq!(
        verify_bytes(&lines(&content)[..2].concat(), &key(), None),
        ok(2)
    );
    let writer = log.write(3..4);
    assert_eq!(
        (writer.head().seq, writer.checkpoint_missing()),
        (4, Some(2))
    );
    let content = std::fs::read(&log.path).expect("audit test");
    let record: serde_json::Value =
        serde_json::from_slice(&lines(&content)[2]).expect("audit test");
    assert_eq!(
        (
            &record["type"],
            &record["outcome"],
            &record["seq"],
            &record["detail"]["seq"]
        ),
        (
            &serde_json::json!("audit_checkpoint_missing"),
            &serde_json::json!("failure"),
            &serde_json::json!(3),
            &serde_json::json!(2)
        ),
        "{record}"
    );
    assert_eq!(
        record["detail"]["checkpoint"].as_str(),
        log.checkpoint_path.to_str()
    );
    assert_eq!(log.verify(), ok_noting_a_missing_checkpoint(4, 3, 3));
    // The checkpoint is back: the next writer records nothing.
    let writer = log.write(4..4);
    assert_eq!((writer.head().seq, writer.checkpoint_missing()), (4, None));
}

#[test]
fn an_overlong_line_is_stepped_over_without_losing_the_chain() {
    let log = Log::new();
    drop(log.write(0..20));
    let good = std::fs::read(&log.path).expect("audit test");
    std::fs::remove_file(&log.checkpoint_path).expect("audit test");

    // A 3 MiB garbage line after the records, ended, or left torn at the end: the chain
    // continues from record 20 with the acknowledgement of the garbage.
    let garbage = Damage {
        line: 21,
        lines: 1,
        bytes: (3 << 20) + 1,
    };
    for ended in [true, false] {
        let mut content = good.clone();
        content.extend(std::iter::repeat_n(b'x', 3 << 20));
        if ended {
            content.push(b'\n');
        }
        std::fs::write(&log.path, &content).expect("audit test");
        let _ = std::fs::remove_file(&log.checkpoint_path);
        let writer = Writer::open(&log.path, &log.checkpoint_path, key()).expect("audit test");
        assert_eq!(
            (writer.head().seq, writer.damage()),
            (22, Some(garbage)),
            "ended: {ended}"
        );
        // The acknowledgement first (it continues the chain where the garbage began), then
        // the record of the missing checkpoint.
        let expected = VerifyReport {
            checkpoints_missing: vec![CheckpointMissing {
                file: 0,
                line: 23,
                seq: 22,
            }],
            ..acknowledged(22, garbage, 21)
        };
        assert_eq!(log.verify(), expected, "ended: {ended}");
    }
}

#[test]
fn a_log_of_one_record_or_of_garbage_only_is_read() {
    let log = Log::new();
    drop(log.write(0..1));
    std::fs::remove_file(&log.checkpoint_path).expect("audit test");
    let writer = Writer::open(&log.path, &log.checkpoint_path, key()).expect("audit test");
    assert_eq!(
        (writer.head().seq, writer.checkpoint_missing()),
        (2, Some(1))
    );

    std::fs::write(&log.path, b"not a record\nnor this").expect("audit test");
    std::fs::remove_file(&log.checkpoint_path).expect("audit test");
    let writer = Writer::open(&log.path, &log.checkpoint_path, key()).expect("audit test");
    let garbage = Damage {
        line: 1,
        lines: 2,
        bytes: 22,
    };
    assert_eq!((writer.head().seq, writer.damage()), (1, Some(garbage)));
    assert_eq!(log.verify(), acknowledged(1, garbage, 1));
}

#[test]
fn a_writer_after_a_lost_tail_leaves_a_gap() {
    let log = Log::new();
    drop(log.write(0..10));
    let content = std::fs::read(&log.path).expect("audit test");
    std::fs::write(&log.path, lines(&content)[..7].concat()).expect("audit test");
    log.write(10..12);
    let broken = log.verify().broken.expect("audit test");
    assert_eq!(
        (broken.line, broken.problem),
        (
            8,
            Problem::SeqGap {
                expected: 8,
                found: 11
            }
        )
    );
}

#[test]
fn the_key_is_created_once_with_mode_0600() {
    let dir = tempfile::tempdir().expect("audit test");
    let path = dir.path().join("etc/audit.key");
    let error = load_key(&path).expect_err("no key yet");
    assert!(error.is_missing(), "{error}");
    let created = load_or_create_key(&path).expect("audit test");
    let bytes = std::fs::read(&path).expect("audit test");
    assert_eq!(bytes.len(), KEY_LEN);
    assert_eq!(
        std::fs::metadata(&path)
            .expect("audit test")
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
    assert_eq!(load_or_create_key(&path).expect("audit test"), created);
    assert_eq!(load_key(&path).expect("audit test"), created);
    let leftovers: Vec<_> = std::fs::read_dir(path.parent().expect("audit test"))
        .expect("audit test")
        .collect();
    assert_eq!(leftovers.len(), 1);
    assert_eq!(format!("{created:?}"), "AuditKey(..)");

    std::fs::write(&path, b"short").expect("audit test");
    assert!(matches!(
        load_key(&path),
        Err(KeyError::Length { len: 5, .. })
    ));
}

#[test]
fn per_packet_events_are_counted_per_peer_service_and_minute() {
    let minute = |m: u64, s: u64| UNIX_EPOCH + Duration::from_secs(1_740_830_400 + m * 60 + s);
    let mut agg = Aggregator::new();
    for i in 0..1000 {
        agg.add(
            EventType::AclDenied,
            "alice",
            "postgres",
            minute(0, i % 60),
            Some("10.20.0.2"),
            Some("10.0.0.5:5432"),
        );
    }
    for _ in 0..5 {
        agg.add(
            EventType::AclDenied,
            "alice",
            "ssh",
            minute(1, 3),
            None,
            None,
        );
    }
    assert!(agg.flush(minute(0, 59)).is_empty());
    let flushed = agg.flush(minute(1, 10));
    let expected = Event::new(EventType::AclDenied, Outcome::Failure, "alice")
        .with_src("10.20.0.2")
        .with_dst("10.0.0.5:5432")
        .with_detail("service", "postgres")
        .with_detail("minute", "2025-03-01T12:00:00.000000Z")
        .with_detail("count", 1000);
    assert_eq!(flushed, vec![expected]);
    let rest = agg.flush_all();
    assert_eq!(rest.len(), 1);
    assert_eq!(rest[0].detail["count"], 5);
    assert!(agg.is_empty());

    // The aggregated records go through the writer like any other.
    let log = Log::new();
    let mut writer = Writer::open(&log.path, &log.checkpoint_path, key()).expect("audit test");
    for event in &rest {
        writer.append(event, minute(2, 0)).expect("audit test");
    }
    assert_eq!(log.verify(), ok(1));
}

/// What a failed append left in the log, as the next append finds it.
#[derive(Debug, Clone, Copy)]
enum Failure {
    /// Nothing reached the file (the disk was full before the first byte).
    Nothing,
    /// Part of the line reached the file.
    Torn,
    /// The whole line reached the file although the write or the flush reported an error.
    Landed,
}

/// A failed append does not break the writer: the next append opens the log again and the
/// chain goes on from what is in the file, with no `seq` reused or skipped.
#[test]
fn the_writer_recovers_from_a_failed_append() {
    for failure in [Failure::Nothing, Failure::Torn, Failure::Landed] {
        let log = Log::new();
        let mut writer = log.write(0..5);
        match failure {
            Failure::Nothing => {}
            Failure::Torn => {
                let mut content = std::fs::read(&log.path).expect("audit test");
                content.extend_from_slice(b"{\"ts\":\"2025-03");
                std::fs::write(&log.path, &content).expect("audit test");
            }
            Failure::Landed => {
                let mut other =
                    Writer::open(&log.path, &log.checkpoint_path, key()).expect("audit test");
                other.append(&event(5), ts(5)).expect("audit test");
            }
        }
        writer.break_file().expect("audit test");
        let failed = writer.append(&event(5), ts(5));
        assert!(
            matches!(failed, Err(WriteError::Append { .. })),
            "{failure:?}: {failed:?}"
        );
        // After a tear, record 6 acknowledges it.
        let first_after = match failure {
            Failure::Landed | Failure::Torn => 7,
            Failure::Nothing => 6,
        };
        let seq = writer.append(&event(6), ts(6)).expect("audit test");
        assert_eq!(seq, first_after, "{failure:?}");
        writer.append(&event(7), ts(7)).expect("audit test");
        assert_eq!(log.checkpoint().map(|c| c.seq), Some(first_after + 1));
        let report = log.verify();
        match failure {
            Failure::Nothing | Failure::Landed => {
                assert_eq!(report, ok(first_after + 1), "{failure:?}")
            }
            Failure::Torn => {
                assert_eq!(writer.damage(), Some(TORN_AT_6));
                assert_eq!(report, acknowledged(8, TORN_AT_6, 6));
            }
        }
    }
}

/// A burst of records goes in with one write: chained one after the other, the checkpoint at
/// the last; a burst that fails leaves none of its records, and the chain goes on after the
/// records before it.
#[test]
fn a_burst_of_records_is_written_whole_or_not_at_all() {
    let log = Log::new();
    let mut writer = log.write(0..2);
    let burst: Vec<Event> = (2..7).map(event).collect();
    assert_eq!(writer.append_all(&burst, ts(2)).expect("audit test"), 7);
    assert_eq!(writer.append_all(&[], ts(3)).expect("audit test"), 7);
    assert_eq!(log.checkpoint().map(|c| c.seq), Some(7));
    assert_eq!(log.verify(), ok(7));
    let before = std::fs::read(&log.path).expect("audit test");

    writer.break_file().expect("audit test");
    let failed = writer.append_all(&burst, ts(4));
    assert!(
        matches!(failed, Err(WriteError::Append { .. })),
        "{failed:?}"
    );
    assert_eq!(std::fs::read(&log.path).expect("audit test"), before);
    assert_eq!(writer.append(&event(7), ts(5)).expect("audit test"), 8);
    assert_eq!(log.verify(), ok(8));
}

/// A checkpoint that cannot be written leaves the record in the log and the writer working;
/// the next record writes the checkpoint again.
#[test]
fn a_failed_checkpoint_write_is_retried_by_the_next_record() {
    let log = Log::new();
    let mut writer = log.write(0..3);
    std::fs::remove_file(&log.checkpoint_path).expect("audit test");
    // A directory where the checkpoint goes: the rename over it fails.
    std::fs::create_dir(&log.checkpoint_path).expect("audit test");
    let behind = writer.append(&event(3), ts(3));
    let Err(e) = behind else {
        panic!("the checkpoint write should fail");
    };
    assert_eq!(e.written(), Some(4), "{e:?}");
    assert_eq!(writer.head().seq, 4);
    assert_eq!(
        verify_bytes(&std::fs::read(&log.path).expect("audit test"), &key(), None),
        ok(4)
    );
    std::fs::remove_dir(&log.checkpoint_path).expect("audit test");
    assert_eq!(writer.append(&event(4), ts(4)).expect("audit test"), 5);
    assert_eq!(log.checkpoint().map(|c| c.seq), Some(5));
    assert_eq!(log.verify(), ok(5));
}
