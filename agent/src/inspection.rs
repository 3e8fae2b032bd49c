//! The daemon's side of inspection: where the endpoint's inspection events go, and the flow
//! table as `crmguard status` shows it.
//!
//! Events are folded into audit records per (peer, service and kind, minute), as the ACL's
//! denials are, so a flood of failed logins cannot fill the disk; and they are handed to every
//! subscriber (the detection layer) through a bounded channel that never blocks the endpoint.

use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Mutex, PoisonError};
use std::time::SystemTime;

use crmguard_core::audit::{Aggregator, Event as AuditEvent, EventType};
use crmguard_inspect::{Event, EventSink, TableStatus, What};
use serde::{Deserialize, Serialize};

/// The endpoint's inspection events, as the daemon receives them.
#[derive(Debug, Default)]
pub struct InspectionEvents {
    pending: Mutex<Aggregator>,
    subscribers: Mutex<Vec<SyncSender<Event>>>,
    /// Events a full subscriber could not take.
    lost: std::sync::atomic::AtomicU64,
}

impl InspectionEvents {
    /// A stream of every event from now on, holding at most `capacity` unread ones; beyond
    /// that, events are lost for this subscriber (and counted) rather than slowing the VPN.
    pub fn subscribe(&self, capacity: usize) -> Receiver<Event> {
        let (tx, rx) = mpsc::sync_channel(capacity);
        self.subscribers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(tx);
        rx
    }

    /// Events lost to full subscribers.
    pub fn lost(&self) -> u64 {
        self.lost.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The audit records of the minutes that ended before `now`; with `all`, of every minute.
    pub fn take_records(&self, now: SystemTime, all: bool) -> Vec<AuditEvent> {
        let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        if all {
            pending.flush_all()
        } else {
            pending.flush(now)
        }
    }
}

impl EventSink for InspectionEvents {
    fn event(&self, event: Event) {
        let (kind, service) = match &event.what {
            What::AuthFailure => (
                EventType::AuthFailure,
                format!("{} ({})", event.service(), event.protocol),
            ),
            What::Violation { kind, response, .. } => (
                EventType::InspectionViolation,
                format!(
                    "{} ({}, {}: {})",
                    event.service(),
                    event.protocol,
                    kind,
                    response.as_str()
                ),
            ),
        };
        self.pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .add(
                kind,
                &event.peer,
                &service,
                SystemTime::now(),
                Some(&event.client.ip().to_string()),
                Some(&event.server.to_string()),
            );
        let mut subscribers = self
            .subscribers
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        subscribers.retain(|tx| match tx.try_send(event.clone()) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) => {
                self.lost.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                true
            }
            Err(TrySendError::Disconnected(_)) => false,
        });
    }
}

/// The flow table, as `crmguard status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InspectionStatus {
    pub enabled: bool,
    pub flows: usize,
    pub pending: usize,
    pub max_flows: u32,
    /// Bytes of one table entry (key and fixed state).
    pub flow_bytes: usize,
    pub reassembly_bytes: usize,
    pub evictions: u64,
    pub table_full: u64,
    pub midstream: u64,
    /// Open flows by protocol.
    pub protocols: Vec<(String, usize)>,
    /// The last violations, oldest first.
    pub recent: Vec<ViolationStatus>,
}

/// One sampled violation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ViolationStatus {
    pub time: String,
    pub peer: String,
    pub service: String,
    pub protocol: String,
    pub kind: String,
    pub response: String,
    pub detail: String,
}

impl From<TableStatus> for InspectionStatus {
    fn from(table: TableStatus) -> Self {
        InspectionStatus {
            enabled: table.enabled,
            flows: table.flows,
            pending: table.pending,
            max_flows: table.max_flows,
            flow_bytes: table.flow_bytes,
            reassembly_bytes: table.reassembly_bytes,
            evictions: table.evictions,
            table_full: table.table_full,
            midstream: table.midstream,
            protocols: table
                .open_by_protocol
                .iter()
                .map(|(p, n)| (p.as_str().to_owned(), *n))
                .collect(),
            recent: table
                .recent
                .iter()
                .filter_map(|r| match &r.event.what {
                    What::Violation {
                        kind,
                        response,
                        detail,
                    } => Some(ViolationStatus {
                        time: crmguard_core::time::format_time(
                            std::time::UNIX_EPOCH + std::time::Duration::from_secs(r.unix),
                        ),
                        peer: r.event.peer.clone(),
                        service: r.event.service(),
                        protocol: r.event.protocol.as_str().to_owned(),
                        kind: kind.as_str().to_owned(),
                        response: response.as_str().to_owned(),
                        detail: detail.clone(),
                    }),
                    What::AuthFailure => None,
                })
                .collect(),
        }
    }
}

impl InspectionStatus {
    /// The lines `crmguard status` prints.
    pub fn describe(&self) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        if !self.enabled {
            out.push_str("inspection: off\n");
            return out;
        }
        let _ = writeln!(
            out,
            "inspection: {} flows of {} ({} being identified), {} B per entry, {} B reassembly buffers",
            self.flows, self.max_flows, self.pending, self.flow_bytes, self.reassembly_bytes
        );
        let _ = writeln!(
            out,
            "  evictions {}  table full {}  midstream {}",
            self.evictions, self.table_full, self.midstream
        );
        if !self.protocols.is_empty() {
            let open: Vec<String> = self
                .protocols
                .iter()
                .map(|(p, n)| format!("{p} {n}"))
                .collect();
            let _ = writeln!(out, "  open flows: {}", open.join(", "));
        }
        for v in &self.recent {
            let _ = writeln!(
                out,
                "  {} {} {} {} {} ({}){}",
                v.time,
                v.peer,
                v.service,
                v.protocol,
                v.kind,
                v.response,
                if v.detail.is_empty() {
                    String::new()
                } else {
                    format!(": {}", v.detail)
                }
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crmguard_inspect::{Protocol, Response, ViolationKind};

    fn event(what: What) -> Event {
        Event {
            peer: "alice-laptop".to_owned(),
            client: "10.77.0.2:40000".parse().unwrap_or_else(|e| panic!("{e}")),
            server: "10.77.0.1:5432".parse().unwrap_or_else(|e| panic!("{e}")),
            protocol: Protocol::Postgresql,
            what,
        }
    }

    #[test]
    fn failures_are_folded_per_peer_service_and_minute_and_reach_subscribers() {
        let events = InspectionEvents::default();
        let rx = events.subscribe(2);
        for _ in 0..5 {
            events.event(event(What::AuthFailure));
        }
        events.event(event(What::Violation {
            kind: ViolationKind::PlaintextCredentials,
            response: Response::Alert,
            detail: "postgresql_cleartext".to_owned(),
        }));
        let records = events.take_records(SystemTime::now(), true);
        assert_eq!(records.len(), 2, "{records:?}");
        let failure = records
            .iter()
            .find(|r| r.kind == EventType::AuthFailure)
            .unwrap_or_else(|| panic!("no auth_failure in {records:?}"));
        assert_eq!(failure.actor, "alice-laptop");
        assert_eq!(
            failure.detail.get("count").and_then(|v| v.as_u64()),
            Some(5)
        );
        assert_eq!(
            failure.detail.get("service").and_then(|v| v.as_str()),
            Some("tcp/5432 (postgresql)")
        );
        // A subscriber that does not read keeps 2 and loses the rest, without blocking.
        assert_eq!(rx.try_iter().count(), 2);
        assert_eq!(events.lost(), 4);
    }
}
