//! The agent's scheduled backups: every `[backup] every`, an archive named by its UTC time in
//! `[backup] dir`, the newest `keep` kept, each one drilled (`drill`) right after it is written.
//!
//! The work (reading the state, scrypt, writing, the drill) runs on a blocking thread
//! ([`run`]); the agent's loop asks [`Schedule::due`] on its tick and hands the [`Outcome`] to
//! [`Schedule::finish`], which returns the audit records (`backup_created`, `backup_restored`)
//! and sets the metrics it owns: `crmguard_backup_last_success_timestamp_seconds`, set only
//! when an archive was written and its drill passed, and `crmguard_backup_failures_total`
//! by `stage` (`create`, `drill`).
//!
//! Without `[backup] recipient` or `passphrase_file` nothing is scheduled: archives hold
//! private keys and TOTP secrets and are only written encrypted. The agent says so once.
//! Nor while the agent enforces a fallback policy because its configuration does not load: such
//! an archive would fail its drill and rotate good ones out.
//!
//! The first backup after a start is due `every` after the newest archive in `dir`, or at once
//! when there is none, so that restarts neither skip nor multiply backups.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use prometheus::{IntCounterVec, IntGauge, Opts, Registry};

use crmguard_core::audit::{Event, EventType, Outcome as AuditOutcome};
use crmguard_core::config::Config;

use super::{drill, keys, BackupError, Unsealing};

/// Archive names: `crmguard-YYYYMMDDTHHMMSSZ.age`.
const PREFIX: &str = "crmguard-";
const SUFFIX: &str = ".age";

/// The file name of an archive made at `time`.
pub fn archive_name(time: SystemTime) -> String {
    let stamp = jiff::Timestamp::try_from(time)
        .map(|t| t.strftime("%Y%m%dT%H%M%SZ").to_string())
        .unwrap_or_else(|_| "19700101T000000Z".to_owned());
    format!("{PREFIX}{stamp}{SUFFIX}")
}

/// Whether `name` is an archive name of [`archive_name`].
fn is_archive_name(name: &str) -> bool {
    name.strip_prefix(PREFIX)
        .and_then(|rest| rest.strip_suffix(SUFFIX))
        .is_some_and(|stamp| {
            stamp.len() == 16
                && stamp
                    .bytes()
                    .all(|b| b.is_ascii_digit() || b == b'T' || b == b'Z')
        })
}

/// Of the archive names in a directory, those to remove so that the newest `keep` stay. Other
/// files are never touched.
pub fn to_prune(names: &[String], keep: u32) -> Vec<String> {
    let mut archives: Vec<&String> = names.iter().filter(|n| is_archive_name(n)).collect();
    archives.sort();
    let keep = usize::try_from(keep).unwrap_or(usize::MAX);
    let excess = archives.len().saturating_sub(keep);
    archives.into_iter().take(excess).cloned().collect()
}

/// The archive names in `dir`, unsorted; empty when it does not exist.
fn archives_in(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| is_archive_name(n))
        .collect()
}

/// What one scheduled backup did.
#[derive(Debug)]
pub struct Outcome {
    /// The archive's path.
    pub path: PathBuf,
    /// When it was started.
    pub started: SystemTime,
    /// The archive, or why it could not be written.
    pub created: Result<super::Created, BackupError>,
    /// The drill, when the archive was written.
    pub drill: Option<Result<drill::Drill, BackupError>>,
    /// Old archives that could not be removed.
    pub prune_errors: Vec<String>,
}

/// Makes one scheduled backup of `config` (read from `config_file`) at `now`: writes the
/// archive, prunes old ones, drills the new one. Blocking.
pub fn run(config: &Config, config_file: Option<&Path>, now: SystemTime) -> Outcome {
    let dir = &config.backup.dir;
    let path = dir.join(archive_name(now));
    let mut outcome = Outcome {
        path: path.clone(),
        started: now,
        created: Err(BackupError::NotConfigured),
        drill: None,
        prune_errors: Vec::new(),
    };
    let state_dir = &config.agent.state_dir;
    let prepared = (|| {
        let drill_identity = match &config.backup.encryption {
            Some(crmguard_core::config::BackupEncryption::Recipient(_)) => {
                Some(keys::load_or_create_drill_identity(state_dir)?)
            }
            _ => None,
        };
        let sealing = super::sealing(config, drill_identity.as_ref())?;
        let unsealing = match drill_identity {
            Some(identity) => Unsealing::Identities(vec![identity]),
            None => super::local_unsealing(config)?.ok_or(BackupError::NotConfigured)?,
        };
        Ok::<_, BackupError>((sealing, unsealing))
    })();
    let (sealing, unsealing) = match prepared {
        Ok(pair) => pair,
        Err(e) => {
            outcome.created = Err(e);
            return outcome;
        }
    };
    let made =
        std::os::unix::fs::DirBuilderExt::mode(std::fs::DirBuilder::new().recursive(true), 0o700)
            .create(dir);
    if let Err(source) = made {
        outcome.created = Err(BackupError::Write {
            path: dir.clone(),
            source,
        });
        return outcome;
    }
    outcome.created = super::create(config, config_file, &sealing, &path, now);
    let Ok(created) = &outcome.created else {
        return outcome;
    };
    let signer = super::keys::parse_signer(&created.signer).map_err(BackupError::from);
    let drill_config_file = config_file
        .map(Path::to_owned)
        .unwrap_or_else(|| PathBuf::from("/etc/crmguard/crmguard.toml"));
    let drill =
        signer.and_then(|signer| drill::run(&path, &unsealing, &signer, &drill_config_file));
    // Old archives go only once the new one has passed its drill: a run of failing drills
    // (a configuration file broken on disk, say) never prunes the last good archives.
    if drill.is_ok() {
        for name in to_prune(&archives_in(dir), config.backup.keep) {
            if let Err(e) = std::fs::remove_file(dir.join(&name)) {
                outcome.prune_errors.push(format!("{name}: {e}"));
            }
        }
    }
    outcome.drill = Some(drill);
    outcome
}

/// When the next backup is due, and the metrics.
pub struct Schedule {
    next: Option<SystemTime>,
    /// Whether a backup is running on its thread.
    running: bool,
    /// Whether the agent has said that backups are off, since they were last on.
    said_off: bool,
    last_success: IntGauge,
    /// `[backup] every` in seconds while scheduled backups are on, 0 while they are off: the
    /// stale-backup alert compares the age of the last success with it.
    interval: IntGauge,
    failures: IntCounterVec,
}

impl Schedule {
    /// A schedule whose metrics are registered in `registry`.
    pub fn register(registry: &Registry) -> Result<Schedule, prometheus::Error> {
        let last_success = IntGauge::new(
            "crmguard_backup_last_success_timestamp_seconds",
            "When the last scheduled backup was written and passed its restore drill (Unix seconds; 0 before the first)",
        )?;
        let interval = IntGauge::new(
            "crmguard_backup_interval_seconds",
            "[backup] every in seconds while scheduled backups are on; 0 while they are off",
        )?;
        let failures = IntCounterVec::new(
            Opts::new(
                "crmguard_backup_failures_total",
                "Scheduled backups that failed, by stage: create (the archive was not written) or drill (it was written but its restore drill failed)",
            ),
            &["stage"],
        )?;
        for stage in ["create", "drill"] {
            failures.with_label_values(&[stage]);
        }
        registry.register(Box::new(last_success.clone()))?;
        registry.register(Box::new(interval.clone()))?;
        registry.register(Box::new(failures.clone()))?;
        Ok(Schedule {
            next: None,
            running: false,
            said_off: false,
            last_success,
            interval,
            failures,
        })
    }

    /// Whether a backup of `config` should start now; marks it running when so.
    pub fn due(&mut self, config: &Config, now: SystemTime) -> bool {
        if config.backup.encryption.is_none() {
            if !self.said_off {
                tracing::info!("scheduled backups are off: set [backup] recipient or passphrase_file to turn them on");
                self.said_off = true;
            }
            self.next = None;
            self.interval.set(0);
            return false;
        }
        self.said_off = false;
        self.interval
            .set(i64::try_from(config.backup.every.as_secs()).unwrap_or(i64::MAX));
        if self.running {
            return false;
        }
        let next = match self.next {
            Some(next) => next,
            None => {
                let newest = newest_archive(&config.backup.dir);
                // After a start, the newest archive stands for the last success until this
                // agent's first backup, so that a restart does not hide a stale backup.
                if self.last_success.get() == 0 {
                    if let Some(seconds) = newest.and_then(unix_seconds) {
                        self.last_success.set(seconds);
                    }
                }
                let next = newest.map_or(now, |newest| newest + config.backup.every);
                self.next = Some(next);
                next
            }
        };
        if now < next {
            return false;
        }
        self.running = true;
        true
    }

    /// Records a finished backup: metrics, the next due time, the log; returns the audit
    /// records to write.
    pub fn finish(&mut self, outcome: &Outcome, every: Duration) -> Vec<Event> {
        self.running = false;
        self.next = Some(outcome.started + every);
        let file = outcome.path.display().to_string();
        let mut events = Vec::new();
        let created = match &outcome.created {
            Ok(created) => created,
            Err(e) => {
                let error = crmguard_core::error_chain(e);
                tracing::warn!(file = %file, error = %error, "the scheduled backup failed");
                self.failures.with_label_values(&["create"]).inc();
                events.push(
                    Event::new(EventType::BackupCreated, AuditOutcome::Failure, "system")
                        .with_detail("file", file)
                        .with_detail("error", error),
                );
                return events;
            }
        };
        for error in &outcome.prune_errors {
            tracing::warn!(error = %error, "an old backup could not be removed");
        }
        events.push(created.event("system", &outcome.path));
        match &outcome.drill {
            Some(Ok(drill)) => {
                tracing::info!(file = %file, files = drill.files, "backup written and its restore drill passed");
                self.last_success
                    .set(unix_seconds(outcome.started).unwrap_or(0));
                events.push(
                    Event::new(EventType::BackupRestored, AuditOutcome::Success, "system")
                        .with_detail("file", file)
                        .with_detail("drill", true)
                        .with_detail("files", drill.files)
                        .with_detail("config_checked", drill.config_checked)
                        .with_detail("result", "ok"),
                );
            }
            Some(Err(e)) => {
                let error = crmguard_core::error_chain(e);
                tracing::warn!(file = %file, error = %error, "the restore drill of a backup failed");
                self.failures.with_label_values(&["drill"]).inc();
                events.push(
                    Event::new(EventType::BackupRestored, AuditOutcome::Failure, "system")
                        .with_detail("file", file)
                        .with_detail("drill", true)
                        .with_detail("result", error),
                );
            }
            None => {}
        }
        events
    }
}

/// The modification time of the newest archive in `dir`: the first backup after a start is due
/// `every` after it, or at once without one.
fn newest_archive(dir: &Path) -> Option<SystemTime> {
    archives_in(dir)
        .iter()
        .filter_map(|name| {
            std::fs::metadata(dir.join(name))
                .and_then(|m| m.modified())
                .ok()
        })
        .max()
}

fn unix_seconds(t: SystemTime) -> Option<i64> {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .ok()
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archive_names_carry_the_utc_time() {
        let time = SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_541_540);
        assert_eq!(archive_name(time), "crmguard-20261206T071900Z.age");
        assert!(is_archive_name(&archive_name(time)));
        assert!(!is_archive_name("crmguard-latest.age"));
    }

    #[test]
    fn pruning_keeps_the_newest_and_ignores_other_files() {
        let names: Vec<String> = [
            "crmguard-20261206T071900Z.age",
            "notes.txt",
            "crmguard-20261204T071900Z.age",
            "crmguard-20261205T071900Z.age",
            ".crmguard-20261206T071901Z.age.tmp.12",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        assert_eq!(to_prune(&names, 2), ["crmguard-20261204T071900Z.age"]);
        assert_eq!(
            to_prune(&names, 1),
            [
                "crmguard-20261204T071900Z.age",
                "crmguard-20261205T071900Z.age"
            ]
        );
        assert!(to_prune(&names, 3).is_empty());
    }
}
