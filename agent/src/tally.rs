//! What the filter drops, or would drop in monitor mode, by reason and by service (protocol and
//! destination port), so that an operator running in monitor mode, or under the embedded
//! default policy, sees what enforcing would cost before switching.
//!
//! The source is the XDP program's sampled drop events (`cg_events`): the program sends at
//! most a budget of samples per CPU and second, so under a flood the tally sees a part of the
//! drops, not each one. The kernel's counters are exact per reason but know no ports; the tally
//! is exact per service only while drops stay under the sampling budget. `status` says so.
//!
//! The table is bounded ([`MAX_ENTRIES`]): a scan across every port fills it, and samples of
//! services not in it are counted as `unlisted` rather than growing it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The most (action, reason, service) entries kept.
pub const MAX_ENTRIES: usize = 256;

/// The tally.
#[derive(Debug, Default)]
pub struct DropTally {
    counts: BTreeMap<Key, u64>,
    /// Samples of entries that did not fit in the table.
    unlisted: u64,
    /// Every sample counted.
    sampled: u64,
    /// `sampled` when the tally was last reported by [`DropTally::news`].
    reported: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Key {
    action: String,
    reason: String,
    service: String,
}

/// The tally as `status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TallyStatus {
    /// Drop samples counted since the agent started.
    pub sampled: u64,
    /// Samples of services that did not fit in the table.
    pub unlisted: u64,
    /// Most samples first.
    pub entries: Vec<TallyEntry>,
}

/// One (action, reason, service) of the tally.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TallyEntry {
    /// `would_drop` in monitor mode, `drop` when enforcing.
    pub action: String,
    /// The reason, as the counters and metrics name it.
    pub reason: String,
    /// `tcp/8081`, `udp/53`, `icmp`, `icmpv6` or `proto/N`.
    pub service: String,
    /// Samples counted.
    pub samples: u64,
}

/// The name of a packet's service: protocol and destination port for TCP, UDP and SCTP, the
/// protocol alone otherwise.
pub fn service(proto: u8, dport: u16) -> String {
    match proto {
        6 => format!("tcp/{dport}"),
        17 => format!("udp/{dport}"),
        132 => format!("sctp/{dport}"),
        1 => "icmp".to_owned(),
        58 => "icmpv6".to_owned(),
        other => format!("proto/{other}"),
    }
}

impl DropTally {
    /// Counts one sampled drop.
    pub fn add(&mut self, action: &str, reason: &str, proto: u8, dport: u16) {
        self.sampled += 1;
        let key = Key {
            action: action.to_owned(),
            reason: reason.to_owned(),
            service: service(proto, dport),
        };
        if let Some(n) = self.counts.get_mut(&key) {
            *n += 1;
        } else if self.counts.len() < MAX_ENTRIES {
            self.counts.insert(key, 1);
        } else {
            self.unlisted += 1;
        }
    }

    /// The tally, most samples first (ties in name order).
    pub fn status(&self) -> TallyStatus {
        let mut entries: Vec<TallyEntry> = self
            .counts
            .iter()
            .map(|(key, n)| TallyEntry {
                action: key.action.clone(),
                reason: key.reason.clone(),
                service: key.service.clone(),
                samples: *n,
            })
            .collect();
        // Stable: equal counts keep the map's order.
        entries.sort_by_key(|e| std::cmp::Reverse(e.samples));
        TallyStatus {
            sampled: self.sampled,
            unlisted: self.unlisted,
            entries,
        }
    }

    /// The tally when it is to be reported: the first time it is asked, and afterwards only
    /// when samples arrived since the last report.
    pub fn news(&mut self) -> Option<TallyStatus> {
        if self.reported == Some(self.sampled) {
            return None;
        }
        self.reported = Some(self.sampled);
        Some(self.status())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(action: &str, reason: &str, service: &str, samples: u64) -> TallyEntry {
        TallyEntry {
            action: action.to_owned(),
            reason: reason.to_owned(),
            service: service.to_owned(),
            samples,
        }
    }

    #[test]
    fn samples_are_tallied_by_reason_and_service_most_first() {
        let mut tally = DropTally::default();
        for _ in 0..3 {
            tally.add("would_drop", "default_drop", 6, 8081);
        }
        tally.add("would_drop", "denied_source", 6, 22);
        tally.add("would_drop", "denied_source", 6, 22);
        tally.add("would_drop", "default_drop", 17, 8081);
        tally.add("would_drop", "icmp_policy", 1, 0);
        assert_eq!(
            tally.status(),
            TallyStatus {
                sampled: 7,
                unlisted: 0,
                entries: vec![
                    entry("would_drop", "default_drop", "tcp/8081", 3),
                    entry("would_drop", "denied_source", "tcp/22", 2),
                    entry("would_drop", "default_drop", "udp/8081", 1),
                    entry("would_drop", "icmp_policy", "icmp", 1),
                ],
            }
        );
    }

    #[test]
    fn the_table_is_bounded_and_counts_what_does_not_fit() {
        let mut tally = DropTally::default();
        for port in 0..2000u16 {
            tally.add("drop", "default_drop", 6, port);
        }
        // A service already listed is still counted.
        tally.add("drop", "default_drop", 6, 0);
        let status = tally.status();
        assert_eq!(status.entries.len(), MAX_ENTRIES);
        assert_eq!(status.sampled, 2001);
        assert_eq!(
            status.unlisted,
            2000 - u64::try_from(MAX_ENTRIES).expect("small")
        );
        assert_eq!(status.entries[0], entry("drop", "default_drop", "tcp/0", 2));
    }

    #[test]
    fn news_come_once_at_first_and_then_only_after_new_samples() {
        let mut tally = DropTally::default();
        assert_eq!(tally.news().map(|s| s.sampled), Some(0), "at least once");
        assert_eq!(tally.news(), None);
        tally.add("would_drop", "default_drop", 17, 53);
        assert_eq!(tally.news().map(|s| s.sampled), Some(1));
        assert_eq!(tally.news(), None);
    }

    #[test]
    fn services_are_named_by_protocol_and_port() {
        for (proto, port, name) in [
            (6, 443, "tcp/443"),
            (17, 53, "udp/53"),
            (132, 9, "sctp/9"),
            (1, 0, "icmp"),
            (58, 0, "icmpv6"),
            (47, 0, "proto/47"),
        ] {
            assert_eq!(service(proto, port), name);
        }
    }
}
