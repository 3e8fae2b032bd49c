//! Rotation: the seal, the segment, the continuation, retention, a crash at each step, and
//! what `verify` says of segments checked together, alone, or with one missing.

use std::path::{Path, PathBuf};

use super::tests::{event, key, ok, ts, Log};
use super::*;
use crate::config::AuditRotation;

/// The smallest rotation the configuration allows: a dozen records per segment.
const SMALL: AuditRotation = AuditRotation {
    size: 4096,
    keep: 100,
};

/// Appends records `range` with `rotation`, rotating when due after each, and returns the
/// segments made.
fn write_rotating(log: &Log, range: std::ops::Range<u64>, rotation: AuditRotation) -> Vec<PathBuf> {
    let mut writer = Writer::open(&log.path, &log.checkpoint_path, key()).expect("audit test");
    let mut made = Vec::new();
    for i in range {
        writer.append(&event(i), ts(i)).expect("audit test");
        if let Some(rotated) = writer.rotate_if_due(rotation, ts(i)).expect("audit test") {
            assert!(rotated.not_removed.is_empty(), "{:?}", rotated.not_removed);
            // The continuation is in the checkpoint at once: the new log cannot lose it unseen.
            assert_eq!(log.checkpoint(), Some(writer.head()));
            made.push(rotated.segment);
        }
    }
    made
}

/// Every segment next to the log, oldest first, and the log.
fn all_files(log: &Log) -> Vec<PathBuf> {
    let mut files = segments(&log.path).expect("audit test");
    files.push(log.path.clone());
    files
}

fn check(files: &[PathBuf], tail: Tail) -> VerifyReport {
    verify_files(files, &key(), tail).expect("audit test")
}

fn records_of(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .expect("audit test")
        .lines()
        .map(|line| serde_json::from_str(line).expect("audit test"))
        .collect()
}

#[test]
fn a_rotated_log_is_one_chain_across_its_segments() {
    let log = Log::new();
    let made = write_rotating(&log, 0..100, SMALL);
    assert!(made.len() >= 5, "{} rotations", made.len());
    assert_eq!(segments(&log.path).expect("audit test"), made);
    let cp = log.checkpoint().expect("audit test");
    // 100 records, and a seal and a continuation per rotation.
    let total = 100 + 2 * u64::try_from(made.len()).expect("audit test");
    assert_eq!(cp.seq, total);
    assert_eq!(check(&all_files(&log), Tail::Live(cp)), ok(total));

    for (i, segment) in made.iter().enumerate() {
        let records = records_of(segment);
        let (first, last) = (&records[0], &records[records.len() - 1]);
        // Each segment but the first begins where the one before it was sealed.
        let expected_first = if i == 0 {
            "agent_start"
        } else {
            "audit_log_continued"
        };
        assert_eq!(first["type"], expected_first, "{}", segment.display());
        assert_eq!(last["type"], "audit_log_rotated");
        let name = segment.file_name().and_then(|n| n.to_str());
        assert_eq!(last["detail"]["segment"].as_str(), name);
        assert_eq!(
            segment_path(&log.path, last["seq"].as_u64().expect("seq")),
            *segment
        );
        assert!(last["detail"]["bytes"].as_u64() >= Some(SMALL.size));
        // Alone, with the host's checkpoint, a segment is whole up to its seal.
        let alone = check(std::slice::from_ref(segment), Tail::Segments(cp));
        assert_eq!(alone.broken, None, "{}", segment.display());
        assert_eq!(alone.sealed, last["seq"].as_u64());
        assert_eq!(alone.continues.is_some(), i > 0);
    }
    // The live log alone takes the chain up from the newest segment's seal; on the host that
    // is not enough, since the segments before it could have been removed.
    let live = records_of(&log.path);
    assert_eq!(live[0]["type"], "audit_log_continued");
    let newest = made.last().expect("a segment");
    let newest_name = newest
        .file_name()
        .and_then(|n| n.to_str())
        .expect("name")
        .to_owned();
    let on_host = check(std::slice::from_ref(&log.path), Tail::Live(cp));
    assert_eq!(
        on_host.broken.map(|b| (b.file, b.line, b.problem)),
        Some((
            0,
            1,
            Problem::SegmentMissing {
                segment: newest_name.clone()
            }
        ))
    );
    let alone = check(std::slice::from_ref(&log.path), Tail::Unchecked);
    assert_eq!(alone.broken, None);
    assert_eq!(
        alone.continues,
        Some(Continues {
            seq: live[0]["seq"].as_u64().expect("seq") - 1,
            segment: newest_name,
        })
    );
    assert_eq!(alone.sealed, None);
}

#[test]
fn retention_keeps_the_newest_segments_and_names_those_it_removes() {
    let log = Log::new();
    let keep_two = AuditRotation { keep: 2, ..SMALL };
    let made = write_rotating(&log, 0..100, keep_two);
    let left = segments(&log.path).expect("audit test");
    assert_eq!(left, made[made.len() - 2..]);
    // The seal of each rotation names the segments removed with it, and only those.
    let mut named: Vec<String> = Vec::new();
    for segment in &left {
        let records = records_of(segment);
        let seal = &records[records.len() - 1];
        for name in seal["detail"]["expired"].as_array().expect("expired") {
            named.push(name.as_str().expect("a name").to_owned());
        }
    }
    for gone in &made[..made.len() - 2] {
        assert!(!gone.exists(), "{}", gone.display());
    }
    // One segment leaves as one comes: the two kept each named the one three rotations older.
    let name = |p: &PathBuf| {
        p.file_name()
            .and_then(|n| n.to_str())
            .expect("name")
            .to_owned()
    };
    let n = made.len();
    assert_eq!(named, [name(&made[n - 4]), name(&made[n - 3])]);
    // What is left still verifies, from the oldest segment kept.
    let cp = log.checkpoint().expect("audit test");
    let report = check(&all_files(&log), Tail::Live(cp));
    assert_eq!(report.broken, None);
    assert!(report.continues.is_some());
}

#[test]
fn a_missing_or_cut_segment_or_live_log_is_detected() {
    let log = Log::new();
    let made = write_rotating(&log, 0..80, SMALL);
    let cp = log.checkpoint().expect("audit test");
    let files = all_files(&log);

    // A segment removed from the middle: the next one does not continue the one before.
    let mut gap = files.clone();
    gap.remove(2);
    let report = check(&gap, Tail::Live(cp));
    let broken = report.broken.expect("a gap");
    assert_eq!((broken.file, broken.line), (2, 1));
    assert!(matches!(broken.problem, Problem::SeqGap { .. }));

    // A segment whose seal was cut off: alone, it is short of the checkpoint; with the rest,
    // the next segment does not continue it.
    let cut_dir = tempfile::tempdir().expect("audit test");
    let cut = cut_dir.path().join("audit-cut.jsonl");
    let content = std::fs::read(&made[1]).expect("audit test");
    let last_line = content[..content.len() - 1]
        .iter()
        .rposition(|&b| b == b'\n')
        .expect("lines");
    std::fs::write(&cut, &content[..=last_line]).expect("audit test");
    let alone = check(std::slice::from_ref(&cut), Tail::Segments(cp));
    assert!(matches!(
        alone.broken.map(|b| b.problem),
        Some(Problem::TailTruncated { .. })
    ));
    let mut with_cut = files.clone();
    with_cut[1] = cut;
    let report = check(&with_cut, Tail::Live(cp));
    assert_eq!(report.broken.map(|b| (b.file, b.line)), Some((2, 1)));

    // The live log removed: the segments are sealed, but the chain does not reach the
    // checkpoint, and the live log is what they are held against.
    let segments_only = &files[..files.len() - 1];
    assert!(matches!(
        check(segments_only, Tail::Live(cp))
            .broken
            .map(|b| b.problem),
        Some(Problem::TailTruncated { .. })
    ));
    assert_eq!(check(segments_only, Tail::Segments(cp)).broken, None);

    // The live log without its continuation record (the first): it starts mid-chain.
    let live = std::fs::read(&log.path).expect("audit test");
    let first_end = live.iter().position(|&b| b == b'\n').expect("lines");
    let headless = verify_bytes(&live[first_end + 1..], &key(), Some(cp));
    assert!(matches!(
        headless.broken.map(|b| b.problem),
        Some(Problem::SeqGap { expected: 1, .. })
    ));

    // Segments in the wrong order.
    let mut swapped = files;
    swapped.swap(0, 1);
    assert!(check(&swapped, Tail::Live(cp)).broken.is_some());
}

/// A log written up to record 10 and renamed to its segment by hand, as a rotation does
/// first; returns the segment.
fn renamed_by_hand(log: &Log) -> PathBuf {
    let writer = log.write(0..10);
    let segment = segment_path(&log.path, writer.head().seq + 1);
    drop(writer);
    std::fs::rename(&log.path, &segment).expect("audit test");
    segment
}

/// Seals the segment at `segment` as the writer does, through a writer opened on it.
fn seal_by_hand(log: &Log, segment: &Path) {
    let mut writer = Writer::open(segment, &log.checkpoint_path, key()).expect("audit test");
    let name = segment.file_name().and_then(|n| n.to_str()).expect("name");
    let seal = Event::new(EventType::AuditLogRotated, Outcome::Info, "system")
        .with_detail("segment", name)
        .with_detail("bytes", 1)
        .with_detail("expired", Vec::<String>::new());
    writer.append(&seal, ts(10)).expect("audit test");
}

/// The log after a rotation a crash stopped: the segment sealed, the new log beginning with
/// the continuation, and the whole chain verifying on the host.
fn assert_finished(log: &Log, segment: &Path, records: u64) {
    let sealed = records_of(segment);
    assert_eq!(sealed[sealed.len() - 1]["type"], "audit_log_rotated");
    assert_eq!(sealed[sealed.len() - 1]["seq"].as_u64(), Some(11));
    let live = records_of(&log.path);
    assert_eq!(live[0]["type"], "audit_log_continued");
    assert_eq!(live[0]["detail"]["seq"].as_u64(), Some(11));
    let cp = log.checkpoint().expect("audit test");
    let report = check(&all_files(log), Tail::Live(cp));
    assert_eq!(report, ok(records));
}

#[test]
fn a_rotation_stopped_by_a_crash_is_finished_by_the_next_writer() {
    // Stopped after the rename, before the seal: the writer seals the segment. A file that
    // only carries a newer segment's name is passed over.
    let log = Log::new();
    let segment = renamed_by_hand(&log);
    let fake = segment_path(&log.path, 999_999);
    std::fs::write(&fake, b"not a segment\n").expect("audit test");
    log.write(11..13);
    std::fs::remove_file(&fake).expect("audit test");
    assert_finished(&log, &segment, 14);

    // Stopped after the seal, before the new log.
    let log = Log::new();
    let segment = renamed_by_hand(&log);
    seal_by_hand(&log, &segment);
    log.write(11..12);
    assert_finished(&log, &segment, 13);

    // The seal written, its checkpoint not.
    let log = Log::new();
    let segment = renamed_by_hand(&log);
    let behind = std::fs::read(&log.checkpoint_path).expect("audit test");
    seal_by_hand(&log, &segment);
    std::fs::write(&log.checkpoint_path, behind).expect("audit test");
    log.write(11..12);
    assert_finished(&log, &segment, 13);

    // Stopped while the seal was being written: the bytes of the seal cut short are cut off,
    // and the seal written whole says how many there were.
    let log = Log::new();
    let segment = renamed_by_hand(&log);
    let torn = b"{\"ts\":\"2026-12-07T23:5";
    let mut bytes = std::fs::read(&segment).expect("audit test");
    bytes.extend_from_slice(torn);
    std::fs::write(&segment, bytes).expect("audit test");
    log.write(11..12);
    assert_finished(&log, &segment, 13);
    let sealed = records_of(&segment);
    let seal = &sealed[sealed.len() - 1];
    assert_eq!(
        seal["detail"]["torn_bytes"].as_u64(),
        Some(torn.len() as u64)
    );

    // Stopped after the rename, with the state directory lost as well: the newest segment is
    // sealed all the same, and numbering goes on after it.
    let log = Log::new();
    renamed_by_hand(&log);
    std::fs::remove_file(&log.checkpoint_path).expect("audit test");
    let writer = log.write(11..12);
    assert_eq!(writer.checkpoint_missing(), Some(12));
    let live = records_of(&log.path);
    assert_eq!(live[0]["type"], "audit_log_continued");
    assert_eq!(live[1]["type"], "audit_checkpoint_missing");
    let report = check(&all_files(&log), Tail::Whole);
    assert_eq!((report.broken, report.records), (None, 14));

    // An empty file where the new log goes is replaced by the log with its first record.
    let log = Log::new();
    let segment = renamed_by_hand(&log);
    seal_by_hand(&log, &segment);
    std::fs::write(&log.path, b"").expect("audit test");
    log.write(11..12);
    assert_finished(&log, &segment, 13);
}

#[test]
fn segments_removed_before_the_oldest_kept_one_fail_the_check_on_the_host() {
    let log = Log::new();
    let keep_three = AuditRotation { keep: 3, ..SMALL };
    let made = write_rotating(&log, 0..120, keep_three);
    assert!(made.len() >= 6, "{} rotations", made.len());
    let cp = log.checkpoint().expect("audit test");
    // What retention left verifies: its seals name the segment the oldest one continues.
    assert_eq!(check(&all_files(&log), Tail::Live(cp)).broken, None);
    // The oldest kept segment removed as well: nothing accounts for the one the next
    // continues.
    let kept = segments(&log.path).expect("audit test");
    std::fs::remove_file(&kept[0]).expect("audit test");
    let report = check(&all_files(&log), Tail::Live(cp));
    let gone = kept[0]
        .file_name()
        .and_then(|n| n.to_str())
        .expect("name")
        .to_owned();
    assert_eq!(
        report.broken.map(|b| (b.file, b.line, b.problem)),
        Some((0, 1, Problem::SegmentMissing { segment: gone }))
    );
    // The same without the checkpoint.
    let report = check(&all_files(&log), Tail::Whole);
    assert!(matches!(
        report.broken.map(|b| b.problem),
        Some(Problem::SegmentMissing { .. })
    ));
    // Every segment removed: the live log alone is not the host's whole log either.
    for segment in &kept[1..] {
        std::fs::remove_file(segment).expect("audit test");
    }
    let report = check(&all_files(&log), Tail::Live(cp));
    assert!(matches!(
        report.broken.map(|b| b.problem),
        Some(Problem::SegmentMissing { .. })
    ));
}

#[test]
fn retention_counts_and_removes_only_the_segments_the_writer_made() {
    let log = Log::new();
    let keep_two = AuditRotation { keep: 2, ..SMALL };
    let made = write_rotating(&log, 0..30, keep_two);
    assert_eq!(made.len(), 2, "two rotations in 30 records");
    // Files that only carry a segment's name, newer than every real one.
    let dir = log.path.parent().expect("a directory");
    let fakes = [
        dir.join("audit-999999999998.jsonl"),
        dir.join("audit-999999999999.jsonl"),
    ];
    std::fs::write(&fakes[0], b"").expect("audit test");
    std::fs::write(&fakes[1], b"{\"seq\":999999999999}\n").expect("audit test");
    // Copies of a real segment: under another spelling of its name (not a segment's name),
    // and under a newer segment's name (whose seal it does not end with).
    let newest = made.last().expect("a segment");
    let spelled = dir.join(format!(
        "audit-0{}",
        newest
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix("audit-"))
            .expect("a segment's name")
    ));
    let copies = [spelled, segment_path(&log.path, 999_999_999_997)];
    for copy in &copies {
        std::fs::copy(newest, copy).expect("audit test");
    }
    let more = write_rotating(&log, 30..50, keep_two);
    assert!(!more.is_empty());
    for fake in fakes.iter().chain(&copies) {
        assert!(fake.exists(), "{} removed", fake.display());
    }
    // The real segments were kept as if the fakes were not there: the two newest.
    let all: Vec<PathBuf> = made.iter().chain(&more).cloned().collect();
    for (i, segment) in all.iter().enumerate() {
        assert_eq!(
            segment.exists(),
            i + 2 >= all.len(),
            "{}",
            segment.display()
        );
    }
}

#[test]
fn a_lost_state_directory_and_live_log_continue_after_the_newest_seal() {
    let log = Log::new();
    let made = write_rotating(&log, 0..40, SMALL);
    let newest = made.last().expect("a segment");
    let records = records_of(newest);
    let seal_seq = records[records.len() - 1]["seq"].as_u64().expect("seq");
    std::fs::remove_file(&log.path).expect("audit test");
    std::fs::remove_file(&log.checkpoint_path).expect("audit test");
    let writer = log.write(40..41);
    assert_eq!(writer.checkpoint_missing(), Some(seal_seq + 1));
    let live = records_of(&log.path);
    assert_eq!(live[0]["type"], "audit_log_continued");
    assert_eq!(live[0]["seq"].as_u64(), Some(seal_seq + 1));
    assert_eq!(live[1]["type"], "audit_checkpoint_missing");
    // Numbering goes on, so that the next segments sort after the old ones.
    let cp = log.checkpoint().expect("audit test");
    let report = check(&all_files(&log), Tail::Live(cp));
    assert_eq!(report.broken, None);
    assert_eq!(report.checkpoints_missing.len(), 1);
}

#[test]
fn a_removed_live_log_does_not_pass_for_a_rotation() {
    // The log removed (no seal): the next one leaves the gap in sight, as before rotation.
    let log = Log::new();
    log.write(0..10);
    std::fs::remove_file(&log.path).expect("audit test");
    log.write(10..11);
    assert_ne!(records_of(&log.path)[0]["type"], "audit_log_continued");
    let report = check(std::slice::from_ref(&log.path), Tail::Unchecked);
    assert!(matches!(
        report.broken.map(|b| b.problem),
        Some(Problem::SeqGap {
            expected: 1,
            found: 11
        })
    ));

    // The live log that continued a segment removed: the checkpoint is past the segment's
    // seal, so no continuation either.
    let log = Log::new();
    write_rotating(&log, 0..30, SMALL);
    let newest = segments(&log.path)
        .expect("audit test")
        .pop()
        .expect("a segment");
    std::fs::remove_file(&log.path).expect("audit test");
    log.write(30..31);
    let live = records_of(&log.path);
    assert_ne!(live[0]["type"], "audit_log_continued");
    assert!(newest.exists());
}

#[test]
fn a_log_below_the_size_is_left_alone_and_a_name_in_the_way_stops_the_rotation() {
    let log = Log::new();
    let mut writer = log.write(0..3);
    assert!(writer
        .rotate_if_due(SMALL, ts(3))
        .expect("audit test")
        .is_none());
    // A file where the segment should go: the rotation stops before its seal, and the log
    // stays whole and grows.
    let seal_seq = writer.head().seq + 1;
    std::fs::write(segment_path(&log.path, seal_seq), b"in the way").expect("audit test");
    let tiny = AuditRotation { size: 1, keep: 10 };
    let err = writer.rotate_if_due(tiny, ts(4)).expect_err("refused");
    assert!(matches!(err, WriteError::Rotate { .. }), "{err}");
    writer.append(&event(5), ts(5)).expect("audit test");
    let cp = log.checkpoint().expect("audit test");
    let report = check(std::slice::from_ref(&log.path), Tail::Live(cp));
    assert_eq!(report, ok(seal_seq));
    assert!(!std::fs::read_to_string(&log.path)
        .expect("audit test")
        .contains("audit_log_rotated"));
}
