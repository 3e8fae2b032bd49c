//! `volume`: a peer pulling more than `per_peer_bytes_per_hour` from the CRM (what the gateway
//! sent it) within a sliding hour, counted to the minute, acts (`alert` or `suspend`) at most
//! once per hour per peer.
//!
//! The daemon reads the peer's cumulative counters every second. The first reading of a peer
//! only sets the baseline (when its bytes were sent is unknown); a reading lower than the last
//! one means the counters started again from zero, so the new value is all new bytes.

use std::cell::Cell;
use std::collections::VecDeque;
use std::time::{Duration, SystemTime};

use crmguard_core::config;

use crate::action::{clean, Action, Detector};
use crate::clock::{since, unix_secs};
use crate::response::respond;
use crate::table::{Table, Weigh};
use crate::MAX_KEYS;

const HOUR: Duration = Duration::from_secs(3600);
const MINUTES: u64 = 60;

struct Traffic {
    /// The last `tx_total` read.
    last_tx: u64,
    /// Bytes per minute (minutes since the epoch), oldest first, within the last hour.
    minutes: VecDeque<(u64, u64)>,
    last_fired: Option<SystemTime>,
}

impl Weigh for Traffic {
    fn weight(&self) -> usize {
        1
    }
}

impl Traffic {
    fn add(&mut self, at: SystemTime, bytes: u64) -> u64 {
        let minute = unix_secs(at) / 60;
        match self.minutes.back_mut() {
            // The clock stepping back adds to the latest minute rather than reorder them.
            Some((last, sum)) if *last >= minute => *sum = sum.saturating_add(bytes),
            _ => self.minutes.push_back((minute, bytes)),
        }
        let newest = self.minutes.back().map_or(minute, |(m, _)| *m);
        while self
            .minutes
            .front()
            .is_some_and(|(m, _)| newest.saturating_sub(*m) >= MINUTES)
        {
            self.minutes.pop_front();
        }
        self.minutes
            .iter()
            .fold(0u64, |total, (_, sum)| total.saturating_add(*sum))
    }
}

pub(crate) struct Volume {
    config: config::Volume,
    peers: Table<String, Traffic>,
}

impl Volume {
    pub(crate) fn new(config: config::Volume) -> Self {
        Volume {
            config,
            peers: Table::new(MAX_KEYS, MAX_KEYS),
        }
    }

    pub(crate) fn update(&mut self, config: config::Volume) {
        self.config = config;
    }

    pub(crate) fn tracked(&self) -> usize {
        self.peers.len()
    }

    pub(crate) fn observe(
        &mut self,
        at: SystemTime,
        peer: &str,
        tx_total: u64,
        out: &mut Vec<Action>,
    ) {
        let limit = self.config.per_peer_bytes_per_hour;
        let key = peer.to_owned();
        let new = Cell::new(false);
        let pulled = self.peers.with(
            &key,
            || {
                new.set(true);
                Traffic {
                    last_tx: tx_total,
                    minutes: VecDeque::new(),
                    last_fired: None,
                }
            },
            |traffic| {
                if new.get() {
                    return None;
                }
                let bytes = if tx_total >= traffic.last_tx {
                    tx_total - traffic.last_tx
                } else {
                    tx_total
                };
                traffic.last_tx = tx_total;
                let pulled = traffic.add(at, bytes);
                let quiet = traffic
                    .last_fired
                    .is_none_or(|fired| since(fired, at) >= HOUR || fired > at);
                if pulled > limit && quiet {
                    traffic.last_fired = Some(at);
                    Some(pulled)
                } else {
                    None
                }
            },
        );
        if let Some(pulled) = pulled {
            let what = clean(&format!(
                "pulled {pulled} bytes within an hour (limit {limit})"
            ));
            respond(
                Detector::Volume,
                self.config.action,
                peer,
                None,
                &what,
                None,
                out,
            );
        }
    }
}
