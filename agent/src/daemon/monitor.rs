//! What enforcing would cost, for an agent that does not enforce the operator's policy yet: in
//! monitor mode, what enforce mode would have dropped; under the embedded default policy (no
//! configuration file), what the default drops. `status` shows it (`drop_tally`) and the log
//! repeats it while there is something new, so that the operator can switch with confidence.

use std::collections::BTreeMap;
use std::time::Duration;

use crmguard_core::config::Mode;

use super::{Agent, ConfigSource, PolicySource};

/// When the first report is logged after the start, and how often the next ones are, while
/// drops were sampled since the last.
pub(super) const FIRST_REPORT: Duration = Duration::from_secs(10);
pub(super) const REPORT_EVERY: Duration = Duration::from_secs(60);

/// The most services a log report names.
const SERVICES_LOGGED: usize = 10;

impl Agent {
    /// Whether the agent runs a policy that is not the operator's enforced one: monitor mode or
    /// the embedded default.
    pub(super) fn tallying(&self) -> bool {
        self.config.agent.mode == Mode::Monitor
            || self.source == ConfigSource::Embedded
            || self.policy_source == PolicySource::Embedded
    }

    /// Logs what was dropped (or would have been) by reason, exactly from the kernel's
    /// counters, and by service, from the sampled tally: once at first, then when drops were
    /// sampled since the last report.
    pub(super) fn report_tally(&mut self) {
        if !self.tallying() {
            return;
        }
        let Some(tally) = self.tally.news() else {
            return;
        };
        let monitor = self.config.agent.mode == Mode::Monitor;
        let action = if monitor { "would_drop" } else { "drop" };
        let mut by_reason: BTreeMap<String, u64> = BTreeMap::new();
        match self.datapath.counters() {
            Ok(counters) => {
                for c in counters.iter().filter(|c| c.action.name() == action) {
                    *by_reason.entry(c.reason.name().to_owned()).or_default() += c.stats.packets;
                }
            }
            Err(e) => {
                tracing::warn!(error = %crmguard_core::error_chain(&e), "cannot read the filter's counters for the drop report");
            }
        }
        let by_reason: Vec<String> = by_reason
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(reason, n)| format!("{reason}={n}"))
            .collect();
        let by_service: Vec<String> = tally
            .entries
            .iter()
            .filter(|e| e.action == action)
            .take(SERVICES_LOGGED)
            .map(|e| format!("{} {}={}", e.reason, e.service, e.samples))
            .collect();
        let by_reason = if by_reason.is_empty() {
            "none".to_owned()
        } else {
            by_reason.join(", ")
        };
        let by_service = if by_service.is_empty() {
            "none".to_owned()
        } else {
            by_service.join(", ")
        };
        if monitor {
            tracing::info!(
                packets_by_reason = %by_reason,
                samples_by_service = %by_service,
                samples = tally.sampled,
                "monitor mode: what enforce mode would have dropped so far (by service: sampled drop events; `crmguard status` shows the whole tally)"
            );
        } else {
            tracing::info!(
                packets_by_reason = %by_reason,
                samples_by_service = %by_service,
                samples = tally.sampled,
                "embedded default policy: what it dropped so far (by service: sampled drop events; `crmguard status` shows the whole tally)"
            );
        }
    }
}
