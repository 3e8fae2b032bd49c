//! `crmguard reload --confirm DURATION` and `crmguard confirm`: a policy change that undoes
//! itself unless the administrator confirms it in time, so that a change that cuts the
//! administrator's own connection cannot lock them out.
//!
//! The change is applied like any reload (one atomic swap). The configuration and compiled
//! policy in force before it are kept in memory, exactly as they were loaded then: the files on
//! disk already hold the change. Without `crmguard confirm` before the deadline they are applied
//! again through the same swap, so filtering never stops, and the change is audited and counted
//! as rolled back.
//!
//! One change waits at a time: a second `reload --confirm`, a plain `reload` (or SIGHUP) and a
//! peer change that reloads are refused until the pending one is confirmed or rolled back, so
//! that what a rollback returns to is always the policy confirmed last.
//!
//! Only a confirmed change becomes the last good policy (`state_dir/last-good-policy.json`),
//! and the unconfirmed files are marked (`state_dir/unconfirmed-change.json`, see
//! [`crmguard_core::config::unconfirmed`]) until a configuration is confirmed or reloaded
//! plainly: an agent that restarts while the change waits, or after it was rolled back,
//! enforces the last good policy and not the files.

use std::path::Path;
use std::time::{Duration, SystemTime};

use crmguard_core::audit::{Event, EventType, Outcome};
use crmguard_core::config::last_good::Snapshot;
use crmguard_core::config::unconfirmed::{State, Unconfirmed};
use crmguard_core::config::Config;
use crmguard_core::policy::CompiledPolicy;
use crmguard_core::time::format_time;

use super::{describe, save_last_good, Agent, DaemonError, PolicySource};
use crate::control::{PendingStatus, Response};

/// The shortest and longest time `reload --confirm` may wait.
pub const MIN_TIMEOUT: Duration = Duration::from_secs(1);
pub const MAX_TIMEOUT: Duration = Duration::from_secs(3600);

/// How long after a rollback that failed to reach the kernel it is tried again.
const RETRY_ROLLBACK: Duration = Duration::from_secs(1);

/// A change applied by `reload --confirm` and not confirmed yet.
pub(super) struct Pending {
    /// The configuration and policy in force before the change, as they were loaded then.
    previous_config: Config,
    previous_policy: CompiledPolicy,
    previous_source: PolicySource,
    previous_error: Option<String>,
    /// The generation in force before the change.
    previous_generation: u32,
    /// The change's files, saved as the last good policy when it is confirmed.
    snapshot: Snapshot,
    /// The generation of the change.
    generation: u32,
    /// When it was applied.
    applied_at: SystemTime,
    /// When it is rolled back.
    deadline: tokio::time::Instant,
    deadline_wall: SystemTime,
    by: String,
}

impl Pending {
    /// Applies to the configuration a rollback would restore a cut made to the running one
    /// meanwhile (a peer removed or disabled), so that the rollback does not undo it.
    pub(super) fn cut_previous(&mut self, cut: &dyn Fn(&mut Config)) {
        cut(&mut self.previous_config);
    }
}

/// Waits until `deadline`, or forever without one: a branch of the main loop that fires only
/// while a change is pending.
pub(super) async fn expiry(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Removes the mark of unconfirmed files once a configuration is confirmed or applied plainly.
/// A failure is logged: the policy is in force, but a restart would enforce the last good
/// policy instead of the files until the mark can go.
pub(super) fn clear_mark(state_dir: &Path) {
    if let Err(e) = Unconfirmed::clear(state_dir) {
        tracing::error!(
            error = %crmguard_core::error_chain(&e),
            "cannot remove the mark of an unconfirmed configuration; a restart would enforce the last good policy instead of the configuration"
        );
    }
}

/// Puts back the mark that was there before a change that could not be applied.
fn restore_mark(earlier: Option<&Unconfirmed>, state_dir: &Path) {
    let Some(mark) = earlier else {
        clear_mark(state_dir);
        return;
    };
    if let Err(e) = mark.save(state_dir) {
        tracing::error!(
            error = %crmguard_core::error_chain(&e),
            "cannot put back the mark of an earlier unconfirmed change"
        );
    }
}

/// Why the configuration files are not used at a start, when an unconfirmed change marks
/// them; `None` when they are trusted.
pub(super) fn distrusted(state_dir: &Path) -> Option<String> {
    match Unconfirmed::read(state_dir) {
        Ok(None) => None,
        Ok(Some(mark)) => Some(match mark.state {
            State::Pending => format!(
                "a change applied by {} with `crmguard reload --confirm` at {} was waiting for `crmguard confirm` (deadline {}) when the agent stopped; it was never confirmed",
                mark.by, mark.applied_at, mark.deadline
            ),
            State::RolledBack => format!(
                "a change applied by {} with `crmguard reload --confirm` at {} was rolled back at {} because it was not confirmed; the configuration files still hold it",
                mark.by, mark.applied_at, mark.deadline
            ),
        }),
        Err(e) => Some(format!(
            "the mark of an unconfirmed change cannot be read, so the configuration files are not trusted: {}",
            crmguard_core::error_chain(&e)
        )),
    }
}

impl Agent {
    /// The deadline of the pending change, for the main loop.
    pub(super) fn pending_deadline(&self) -> Option<tokio::time::Instant> {
        self.pending.as_ref().map(|p| p.deadline)
    }

    /// `status`'s view of the pending change.
    pub(super) fn pending_status(&self) -> Option<PendingStatus> {
        self.pending.as_ref().map(|p| PendingStatus {
            generation: p.generation,
            deadline: format_time(p.deadline_wall),
            seconds_left: p
                .deadline
                .saturating_duration_since(tokio::time::Instant::now())
                .as_secs(),
            by: p.by.clone(),
        })
    }

    /// Refuses a reload while a change waits for its confirmation.
    pub(super) fn refuse_while_pending(&self) -> Result<(), DaemonError> {
        match &self.pending {
            Some(p) => Err(DaemonError::ChangePending {
                deadline: format_time(p.deadline_wall),
            }),
            None => Ok(()),
        }
    }

    /// `crmguard reload --confirm`.
    pub(super) fn reload_confirm(&mut self, timeout: Duration, by: &str) -> Response {
        if !(MIN_TIMEOUT..=MAX_TIMEOUT).contains(&timeout) {
            return Response::Refused {
                message: format!(
                    "the confirmation time must be between {}s and {}s",
                    MIN_TIMEOUT.as_secs(),
                    MAX_TIMEOUT.as_secs()
                ),
            };
        }
        if let Err(e) = self.refuse_while_pending() {
            return Response::Refused {
                message: e.to_string(),
            };
        }
        let (config, snapshot, policy) = match self.load_candidate() {
            Ok(candidate) => candidate,
            Err(e) => return self.rejected(&e),
        };
        let previous_config = self.config.clone();
        let previous_policy = self.policy.clone();
        let previous_generation = self.datapath.generation();
        // Marked before the swap: an agent that dies right after it must not trust the files.
        let now = SystemTime::now();
        let deadline_wall = now + timeout;
        let state_dir = config.agent.state_dir.clone();
        let mark = Unconfirmed {
            state: State::Pending,
            config: snapshot.config_path().to_path_buf(),
            applied_at: format_time(now),
            deadline: format_time(deadline_wall),
            by: by.to_owned(),
        };
        // A mark left by an earlier change that was never confirmed stays if this one fails.
        let earlier = Unconfirmed::read(&state_dir).ok().flatten();
        if let Err(e) = mark.save(&state_dir) {
            let message = format!(
                "the change is not applied: a restart could not tell that it is unconfirmed: {}",
                crmguard_core::error_chain(&e)
            );
            tracing::error!(error = %message, "reload --confirm refused");
            return Response::Error { message };
        }
        let generation = match self.install(config, policy) {
            Ok(generation) => generation,
            Err(e) => {
                restore_mark(earlier.as_ref(), &state_dir);
                return self.rejected(&e);
            }
        };
        let previous_source = self.policy_source;
        let previous_error = self.fallback_error.clone();
        self.config_in_force();
        self.pending = Some(Pending {
            previous_config,
            previous_policy,
            previous_source,
            previous_error,
            previous_generation,
            snapshot,
            generation,
            applied_at: now,
            deadline: tokio::time::Instant::now() + timeout,
            deadline_wall,
            by: by.to_owned(),
        });
        self.metrics.change_pending(true);
        let deadline = format_time(deadline_wall);
        tracing::warn!(
            generation,
            previous_generation,
            %deadline,
            by,
            "policy applied; it is rolled back at the deadline unless `crmguard confirm` keeps it"
        );
        self.audit.record(
            &Event::new(EventType::PolicyPending, Outcome::Info, by)
                .with_detail("config", self.source.describe())
                .with_detail("generation", generation)
                .with_detail("previous_generation", previous_generation)
                .with_detail("deadline", deadline.clone()),
        );
        Response::ReloadedPending {
            generation,
            deadline,
            timeout_secs: timeout.as_secs(),
        }
    }

    /// A reload that failed before the swap: audited and answered like `crmguard reload`'s.
    fn rejected(&mut self, error: &DaemonError) -> Response {
        let message = describe(error);
        tracing::error!(error = %message, "reload refused; the running policy stays in force");
        self.audit.record(
            &Event::new(EventType::ConfigRejected, Outcome::Failure, "system")
                .with_detail("config", self.source.describe())
                .with_detail("error", message.clone()),
        );
        Response::Error { message }
    }

    /// `crmguard confirm`: the pending change stays and becomes the last good policy.
    pub(super) fn confirm(&mut self, by: &str) -> Response {
        let Some(pending) = self.pending.take() else {
            let message = match &self.last_rollback {
                Some(at) => format!(
                    "nothing to confirm: no change is pending; the last unconfirmed change was rolled back at {at}"
                ),
                None => "nothing to confirm: no change applied by `crmguard reload --confirm` is pending".to_owned(),
            };
            return Response::Error { message };
        };
        self.metrics.change_pending(false);
        let state_dir = self.config.agent.state_dir.clone();
        save_last_good(&pending.snapshot, &state_dir);
        clear_mark(&state_dir);
        tracing::info!(
            generation = pending.generation,
            by,
            "pending policy confirmed"
        );
        self.audit.record(
            &Event::new(EventType::PolicyConfirmed, Outcome::Success, by)
                .with_detail("config", self.source.describe())
                .with_detail("generation", pending.generation),
        );
        Response::Confirmed {
            generation: pending.generation,
        }
    }

    /// The deadline passed without `crmguard confirm`: the policy in force before the change
    /// goes back into the kernel by the same swap. When the swap fails the change stays
    /// pending and the rollback is tried again shortly.
    pub(super) fn roll_back(&mut self) {
        let Some(pending) = self.pending.take() else {
            return;
        };
        let unconfirmed = pending.generation;
        match self.install(
            pending.previous_config.clone(),
            pending.previous_policy.clone(),
        ) {
            Ok(generation) => {
                self.policy_source = pending.previous_source;
                self.fallback_error = pending.previous_error.clone();
                self.metrics.fallback(self.policy_source);
                self.metrics.change_pending(false);
                self.metrics.rolled_back();
                let now = SystemTime::now();
                self.last_rollback = Some(format_time(now));
                self.mark_rolled_back(&pending, now);
                tracing::warn!(
                    unconfirmed_generation = unconfirmed,
                    restored_generation = pending.previous_generation,
                    generation,
                    by = %pending.by,
                    "the policy applied with `reload --confirm` was not confirmed in time; the policy before it is in force again"
                );
                self.audit.record(
                    &Event::new(EventType::PolicyRolledBack, Outcome::Success, "system")
                        .with_detail("config", self.source.describe())
                        .with_detail("unconfirmed_generation", unconfirmed)
                        .with_detail("restored_generation", pending.previous_generation)
                        .with_detail("generation", generation)
                        .with_detail("applied_by", pending.by.clone()),
                );
            }
            Err(e) => {
                let message = describe(&e);
                tracing::error!(
                    error = %message,
                    generation = unconfirmed,
                    "rolling back the unconfirmed policy failed; it stays in force and the rollback is tried again"
                );
                self.audit.record(
                    &Event::new(EventType::PolicyRolledBack, Outcome::Failure, "system")
                        .with_detail("config", self.source.describe())
                        .with_detail("unconfirmed_generation", unconfirmed)
                        .with_detail("error", message),
                );
                self.pending = Some(Pending {
                    deadline: tokio::time::Instant::now() + RETRY_ROLLBACK,
                    ..pending
                });
            }
        }
    }

    /// Keeps the files marked after a rollback: they still hold the change.
    fn mark_rolled_back(&self, pending: &Pending, now: SystemTime) {
        let mark = Unconfirmed {
            state: State::RolledBack,
            config: pending.snapshot.config_path().to_path_buf(),
            applied_at: format_time(pending.applied_at),
            deadline: format_time(now),
            by: pending.by.clone(),
        };
        if let Err(e) = mark.save(&self.config.agent.state_dir) {
            tracing::error!(
                error = %crmguard_core::error_chain(&e),
                "cannot mark the configuration files as rolled back; a restart reads them as still pending, and enforces the last good policy all the same"
            );
        }
    }
}
