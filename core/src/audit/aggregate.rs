//! Folds per-packet events (`acl_denied`, `inspection_violation`) into one record per
//! (type, peer, service, minute) with a count, so that a flood of denied packets costs a few
//! lines a minute instead of filling the disk.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::record::{Event, EventType, Outcome};

/// What one aggregated record counts.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct AggregateKey {
    pub kind: EventType,
    /// The peer name; the record's actor.
    pub peer: String,
    /// The configured service name.
    pub service: String,
    /// Minutes since the Unix epoch.
    pub minute: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Tally {
    count: u64,
    /// The first packet's addresses, as an example.
    src: Option<String>,
    dst: Option<String>,
}

/// Pending counts. Memory is bounded by peers x services x event types per open minute, all
/// configured names.
#[derive(Debug, Default)]
pub struct Aggregator {
    pending: BTreeMap<AggregateKey, Tally>,
}

impl Aggregator {
    pub fn new() -> Self {
        Aggregator::default()
    }

    /// Counts one event of `kind` by `peer` towards `service` at `at`.
    pub fn add(
        &mut self,
        kind: EventType,
        peer: &str,
        service: &str,
        at: SystemTime,
        src: Option<&str>,
        dst: Option<&str>,
    ) {
        let key = AggregateKey {
            kind,
            peer: peer.to_owned(),
            service: service.to_owned(),
            minute: minute_of(at),
        };
        let tally = self.pending.entry(key).or_insert_with(|| Tally {
            count: 0,
            src: src.map(str::to_owned),
            dst: dst.map(str::to_owned),
        });
        tally.count += 1;
    }

    /// Whether nothing is pending.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// The records of every minute that ended before `now`, in key order; they are no longer
    /// pending.
    pub fn flush(&mut self, now: SystemTime) -> Vec<Event> {
        let current = minute_of(now);
        let (closed, open): (BTreeMap<_, _>, BTreeMap<_, _>) = std::mem::take(&mut self.pending)
            .into_iter()
            .partition(|(key, _)| key.minute < current);
        self.pending = open;
        closed.into_iter().map(to_event).collect()
    }

    /// The records of everything pending, such as when the agent stops.
    pub fn flush_all(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.pending)
            .into_iter()
            .map(to_event)
            .collect()
    }
}

fn minute_of(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs() / 60
}

fn to_event((key, tally): (AggregateKey, Tally)) -> Event {
    let start = UNIX_EPOCH + Duration::from_secs(key.minute.saturating_mul(60));
    let mut event = Event::new(key.kind, Outcome::Failure, key.peer.clone())
        .with_detail("service", key.service)
        .with_detail("minute", crate::time::format_time(start))
        .with_detail("count", tally.count);
    event.src = tally.src;
    event.dst = tally.dst;
    event
}
