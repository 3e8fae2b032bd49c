//! The daemon's audit log: the writer when the log could be opened, what to
//! do when it cannot be written, its rotation, and its metrics (`crmguard_audit_events_total`,
//! `crmguard_audit_write_errors_total`, `crmguard_audit_rotations_total`,
//! `crmguard_audit_rotation_errors_total`), which it owns and registers.
//!
//! An audit log that cannot be written never stops the firewall: the event
//! is logged as an error and counted in `crmguard_audit_write_errors_total`,
//! and the next event tries to open the log again. A record written while only its checkpoint
//! could not be updated counts as written: the next record updates it. `on_write_failure =
//! "fail-closed"` additionally makes `writable()` false, which is what the
//! MFA portal consults before opening new sessions.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use prometheus::{IntCounter, IntCounterVec, Opts, Registry};

use super::{load_or_create_key, Event, Writer, CHECKPOINT_FILE};
use crate::config::{Audit, AuditRotation, OnWriteFailure};

/// How long after a failed rotation the sink tries again: what made it fail (a full
/// directory, an append-only attribute, a name taken) seldom passes by the next record, and
/// each attempt lists and reads the segments.
const ROTATE_RETRY: Duration = Duration::from_secs(60);

pub struct Sink {
    path: PathBuf,
    key_file: PathBuf,
    checkpoint: PathBuf,
    policy: OnWriteFailure,
    rotation: AuditRotation,
    /// After a failed rotation, when the next may be tried.
    rotate_after: Option<Instant>,
    writer: Option<Writer>,
    /// Whether the last attempt to write failed.
    failing: bool,
    errors: u64,
    events: BTreeMap<&'static str, u64>,
    metrics: AuditMetrics,
}

/// The audit log's Prometheus metrics, counted as records are written.
#[derive(Clone)]
struct AuditMetrics {
    events: IntCounterVec,
    write_errors: IntCounter,
    rotations: IntCounter,
    rotation_errors: IntCounter,
}

impl AuditMetrics {
    fn new() -> AuditMetrics {
        // The names and help texts are constants that prometheus accepts; a failure here is a
        // programming error caught by the tests.
        AuditMetrics {
            events: IntCounterVec::new(
                Opts::new(
                    "crmguard_audit_events_total",
                    "Audit records written, by type",
                ),
                &["type"],
            )
            .expect("a valid metric definition"),
            write_errors: IntCounter::new(
                "crmguard_audit_write_errors_total",
                "Audit records that could not be written",
            )
            .expect("a valid metric definition"),
            rotations: IntCounter::new(
                "crmguard_audit_rotations_total",
                "Times the audit log was sealed and moved to a segment of its own",
            )
            .expect("a valid metric definition"),
            rotation_errors: IntCounter::new(
                "crmguard_audit_rotation_errors_total",
                "Rotations of the audit log that failed (the log stays whole and keeps growing)",
            )
            .expect("a valid metric definition"),
        }
    }
}

impl Sink {
    /// Opens the log of `audit`, with its checkpoint in `state_dir`. Never
    /// fails: a log that cannot be opened is retried on the next event.
    pub fn open(audit: &Audit, state_dir: &Path) -> Sink {
        let mut sink = Sink {
            path: audit.path.clone(),
            key_file: audit.key_file.clone(),
            checkpoint: state_dir.join(CHECKPOINT_FILE),
            policy: audit.on_write_failure,
            rotation: audit.rotation,
            rotate_after: None,
            writer: None,
            failing: false,
            errors: 0,
            events: BTreeMap::new(),
            metrics: AuditMetrics::new(),
        };
        sink.ensure_open();
        sink
    }

    fn ensure_open(&mut self) -> bool {
        if self.writer.is_some() {
            return true;
        }
        if let Some(dir) = self.path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let opened = load_or_create_key(&self.key_file)
            .map_err(|e| e.to_string())
            .and_then(|key| {
                Writer::open(&self.path, &self.checkpoint, key).map_err(|e| e.to_string())
            });
        match opened {
            Ok(writer) => {
                if let Some(damage) = writer.damage() {
                    tracing::warn!(
                        path = %self.path.display(),
                        line = damage.line,
                        lines = damage.lines,
                        bytes = damage.bytes,
                        seq = writer.head().seq,
                        "the audit log ended in a line torn by a crash; it is kept and acknowledged by an audit_torn_line record"
                    );
                }
                if let Some(segment) = writer.continued() {
                    tracing::warn!(
                        path = %self.path.display(),
                        segment,
                        "the audit log was being rotated when the agent stopped; the rotation is finished and the log continues that segment"
                    );
                }
                if let Some(seq) = writer.checkpoint_missing() {
                    tracing::warn!(
                        path = %self.path.display(),
                        checkpoint = %self.checkpoint.display(),
                        seq,
                        "the audit log holds records but its checkpoint is gone, so a tail cut off before now could not be seen; recorded as audit_checkpoint_missing"
                    );
                }
                self.writer = Some(writer);
                true
            }
            Err(e) => {
                tracing::error!(path = %self.path.display(), error = %e, "cannot open the audit log");
                false
            }
        }
    }

    /// Appends one record (and fsyncs it). Returns whether it was written; callers that must
    /// not act unaudited check [`Sink::writable`] afterwards.
    pub fn record(&mut self, event: &Event) -> bool {
        self.record_all(std::slice::from_ref(event))
    }

    /// Appends `events` with one flush to disk ([`Writer::append_all`]): all are written or
    /// none. Returns whether they were.
    pub fn record_all(&mut self, events: &[Event]) -> bool {
        if events.is_empty() {
            return true;
        }
        let written = self.ensure_open()
            && match self
                .writer
                .as_mut()
                .map(|w| w.append_all(events, SystemTime::now()))
            {
                Some(Ok(_)) => true,
                Some(Err(e)) if e.written().is_some() => {
                    // The record is in the log; the writer rewrites the checkpoint with the
                    // next one.
                    tracing::error!(path = %self.path.display(), error = %crate::error_chain(&e), "the audit checkpoint is behind the log");
                    true
                }
                Some(Err(e)) => {
                    tracing::error!(path = %self.path.display(), error = %e, "cannot write the audit log");
                    // Reopen on the next event: the writer re-reads where the chain stands.
                    self.writer = None;
                    false
                }
                None => false,
            };
        for event in events {
            if written {
                *self.events.entry(event.kind.as_str()).or_default() += 1;
                self.metrics
                    .events
                    .with_label_values(&[event.kind.as_str()])
                    .inc();
            } else {
                self.errors += 1;
                self.metrics.write_errors.inc();
            }
        }
        self.failing = !written;
        if written {
            self.rotate_if_due();
        }
        written
    }

    /// Takes `[audit] rotate_size` and `rotate_keep` from a reloaded configuration.
    pub fn set_rotation(&mut self, rotation: AuditRotation) {
        self.rotation = rotation;
    }

    /// Rotates the log once it is `[audit] rotate_size` long. A rotation that fails leaves the
    /// log whole and growing; a record after [`ROTATE_RETRY`] tries again.
    fn rotate_if_due(&mut self) {
        if self.rotate_after.is_some_and(|at| Instant::now() < at) {
            return;
        }
        let Some(writer) = self.writer.as_mut() else {
            return;
        };
        match writer.rotate_if_due(self.rotation, SystemTime::now()) {
            Ok(None) => {}
            Ok(Some(rotated)) => {
                self.rotate_after = None;
                tracing::info!(
                    path = %self.path.display(),
                    segment = %rotated.segment.display(),
                    removed = rotated.removed.len(),
                    "rotated the audit log; `crmguard audit verify` checks the segments and the log together"
                );
                for (old, e) in &rotated.not_removed {
                    tracing::warn!(segment = %old.display(), error = %e, "cannot remove an audit segment beyond rotate_keep; the next rotation tries again");
                }
                self.metrics.rotations.inc();
            }
            Err(e) => {
                tracing::error!(path = %self.path.display(), error = %crate::error_chain(&e), "cannot rotate the audit log; it keeps growing until a rotation succeeds");
                self.metrics.rotation_errors.inc();
                self.rotate_after = Some(Instant::now() + ROTATE_RETRY);
            }
        }
    }

    /// Whether actions that must be audited may go on: false while the log
    /// fails and `on_write_failure` is `fail-closed`.
    pub fn writable(&self) -> bool {
        !(self.failing && self.policy == OnWriteFailure::FailClosed)
    }

    /// Records written since start, by type.
    pub fn events(&self) -> &BTreeMap<&'static str, u64> {
        &self.events
    }

    /// Records that could not be written since start.
    pub fn errors(&self) -> u64 {
        self.errors
    }

    /// Registers the log's metrics in `registry`, where they count from then on (and include
    /// what was counted before).
    pub fn register_metrics(&self, registry: &Registry) -> Result<(), prometheus::Error> {
        registry.register(Box::new(self.metrics.events.clone()))?;
        registry.register(Box::new(self.metrics.write_errors.clone()))?;
        registry.register(Box::new(self.metrics.rotations.clone()))?;
        registry.register(Box::new(self.metrics.rotation_errors.clone()))
    }
}

#[cfg(test)]
mod metrics_tests {
    use super::*;
    use prometheus::Encoder;

    #[test]
    fn the_log_counts_its_records_and_failures() {
        let dir = tempfile::tempdir().expect("tempdir");
        let audit = crate::config::Audit {
            path: dir.path().join("audit.jsonl"),
            key_file: dir.path().join("audit.key"),
            on_write_failure: OnWriteFailure::FailOpen,
            rotation: AuditRotation::default(),
        };
        let mut sink = Sink::open(&audit, dir.path());
        let registry = Registry::new();
        sink.register_metrics(&registry).expect("register");
        let event = Event::new(
            super::super::EventType::AgentStart,
            super::super::Outcome::Info,
            "system",
        );
        assert!(sink.record(&event));
        std::fs::remove_file(&audit.key_file).expect("remove the key");
        std::fs::remove_file(&audit.path).expect("remove the log");
        std::fs::create_dir(&audit.path).expect("a directory where the log was");
        sink.writer = None;
        assert!(!sink.record(&event));
        let mut text = Vec::new();
        prometheus::TextEncoder::new()
            .encode(&registry.gather(), &mut text)
            .expect("encode");
        let text = String::from_utf8(text).expect("utf-8");
        for line in [
            "# HELP crmguard_audit_events_total Audit records written, by type\n",
            "# TYPE crmguard_audit_events_total counter\n",
            "crmguard_audit_events_total{type=\"agent_start\"} 1\n",
            "# HELP crmguard_audit_write_errors_total Audit records that could not be written\n",
            "# TYPE crmguard_audit_write_errors_total counter\n",
            "crmguard_audit_write_errors_total 1\n",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
    }

    /// A record written while its checkpoint cannot be is counted as written and does not make
    /// a fail-closed log refuse audited actions; the next record brings the checkpoint up.
    #[test]
    fn a_checkpoint_behind_the_log_is_not_a_lost_record() {
        let dir = tempfile::tempdir().expect("tempdir");
        let audit = crate::config::Audit {
            path: dir.path().join("audit.jsonl"),
            key_file: dir.path().join("audit.key"),
            on_write_failure: OnWriteFailure::FailClosed,
            rotation: AuditRotation::default(),
        };
        let mut sink = Sink::open(&audit, dir.path());
        let event = Event::new(
            super::super::EventType::AgentStart,
            super::super::Outcome::Info,
            "system",
        );
        assert!(sink.record(&event));
        let checkpoint = dir.path().join(CHECKPOINT_FILE);
        std::fs::remove_file(&checkpoint).expect("remove the checkpoint");
        std::fs::create_dir(&checkpoint).expect("a directory where the checkpoint was");
        assert!(sink.record(&event), "the record is in the log");
        assert!(sink.writable());
        assert_eq!(
            (sink.errors(), sink.events().get("agent_start")),
            (0, Some(&2))
        );
        std::fs::remove_dir(&checkpoint).expect("remove the directory");
        assert!(sink.record(&event));
        let head = super::super::read_checkpoint(&checkpoint).expect("read");
        assert_eq!(head.map(|c| c.seq), Some(3));
    }

    /// The sink rotates the log at its size and counts rotations, and failed ones, which
    /// leave the log whole.
    #[test]
    fn the_sink_rotates_and_counts_rotations_and_failures() {
        let dir = tempfile::tempdir().expect("tempdir");
        let audit = crate::config::Audit {
            path: dir.path().join("audit.jsonl"),
            key_file: dir.path().join("audit.key"),
            on_write_failure: OnWriteFailure::FailClosed,
            rotation: AuditRotation {
                size: 4096,
                keep: 5,
            },
        };
        let mut sink = Sink::open(&audit, dir.path());
        let event = Event::new(
            super::super::EventType::AgentStart,
            super::super::Outcome::Info,
            "system",
        )
        .with_detail("note", "x".repeat(200));
        let segments = || super::super::segments(&audit.path).expect("list");
        let mut records = 0;
        while segments().is_empty() {
            assert!(records < 100, "no rotation after {records} records");
            assert!(sink.record(&event));
            records += 1;
        }
        assert_eq!(sink.metrics.rotations.get(), 1);
        assert_eq!(sink.metrics.rotation_errors.get(), 0);
        // A directory where the next segment goes: the rotation fails, the records go on.
        let head = sink.writer.as_ref().map(|w| w.head().seq).expect("open");
        let mut blocked = Vec::new();
        for seq in head + 1..head + 40 {
            let path = super::super::segment_path(&audit.path, seq);
            std::fs::create_dir(&path).expect("mkdir");
            blocked.push(path);
        }
        for _ in 0..records {
            assert!(sink.record(&event));
        }
        // One failure, and no retry before `ROTATE_RETRY`.
        assert_eq!(sink.metrics.rotation_errors.get(), 1);
        assert_eq!(sink.metrics.rotations.get(), 1);
        let log = std::fs::read_to_string(&audit.path).expect("read");
        assert_eq!(log.matches("audit_log_rotated").count(), 0, "no seal");
        // Once the name is free and the pause over, the next record rotates.
        for path in &blocked {
            std::fs::remove_dir(path).expect("rmdir");
        }
        sink.rotate_after = None;
        assert!(sink.record(&event));
        assert_eq!(sink.metrics.rotations.get(), 2);
        assert!(sink.writable());
        let report = super::super::verify_files(
            &[segments(), vec![audit.path.clone()]].concat(),
            &super::super::load_key(&audit.key_file).expect("key"),
            super::super::Tail::Live(
                super::super::read_checkpoint(&dir.path().join(CHECKPOINT_FILE))
                    .expect("read")
                    .expect("a checkpoint"),
            ),
        )
        .expect("verify");
        assert_eq!(report.broken, None);
    }
}
