//! The agent's side of scheduled backups: starting one on the tick when it is due, on a
//! blocking thread, and recording its outcome (`crate::backup::schedule` decides and counts).

use std::time::SystemTime;

use tokio::sync::mpsc;

use super::{Agent, ConfigSource, PolicySource};
use crate::backup::schedule::{self, Outcome};

impl Agent {
    /// Starts a backup when one is due. The archive is written and drilled off the main loop
    /// (scrypt alone takes about a second); its outcome comes back through `done`.
    pub(super) fn backup_tick(&mut self, done: &mpsc::Sender<Outcome>) {
        // A fallback policy means the configuration file does not load: an archive of it
        // would fail its drill, and the good archives it rotated out would be lost.
        if self.policy_source != PolicySource::Config {
            return;
        }
        let now = SystemTime::now();
        if !self.backup.due(&self.config, now) {
            return;
        }
        let config = self.config.clone();
        let config_file = match &self.source {
            ConfigSource::File(path) => Some(path.clone()),
            ConfigSource::Embedded => None,
        };
        let done = done.clone();
        tokio::task::spawn_blocking(move || {
            let outcome = schedule::run(&config, config_file.as_deref(), now);
            let _ = done.blocking_send(outcome);
        });
    }

    /// Records a finished backup in the audit log.
    pub(super) fn backup_done(&mut self, outcome: &Outcome) {
        for event in self.backup.finish(outcome, self.config.backup.every) {
            self.audit.record(&event);
        }
    }
}
