//! Escalation history: how many times each outside address was banned by a detector and when
//! last, so a repeat offender's next ban lasts longer. The daemon keeps it across restarts
//! (serialized with serde, for example to JSON in its state directory).
//!
//! An address whose last offence is older than [`forget_after`] starts again from its first
//! offence. At most [`MAX_ADDRESSES`] addresses are remembered; beyond that the one with the
//! oldest last offence is forgotten first.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The most addresses remembered.
pub const MAX_ADDRESSES: usize = 65_536;

/// The shortest time after which an offence is forgotten: a week.
pub const MIN_MEMORY: Duration = Duration::from_secs(7 * 24 * 60 * 60);

/// How long an offence is remembered: four times `max_ban`, and at least [`MIN_MEMORY`].
pub fn forget_after(max_ban: Duration) -> Duration {
    max_ban.saturating_mul(4).max(MIN_MEMORY)
}

/// The offences of one address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Offence {
    /// Offences remembered, at least 1.
    pub count: u32,
    /// The last one, in seconds since the Unix epoch.
    pub last_unix: u64,
}

/// The escalation history. Its serialized form is
/// `{"offences": {"203.0.113.7": {"count": 2, "last_unix": 1790000000}}}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "Stored", into = "Stored")]
pub struct History {
    offences: BTreeMap<IpAddr, Offence>,
    /// The same entries by age, to forget the oldest first.
    by_age: BTreeSet<(u64, IpAddr)>,
}

#[derive(Serialize, Deserialize)]
struct Stored {
    #[serde(default)]
    offences: BTreeMap<IpAddr, Offence>,
}

impl From<Stored> for History {
    fn from(stored: Stored) -> Self {
        let mut history = History::default();
        for (addr, offence) in stored.offences {
            if offence.count > 0 {
                history.insert(addr, offence);
            }
        }
        history.shrink();
        history
    }
}

impl From<History> for Stored {
    fn from(history: History) -> Self {
        Stored {
            offences: history.offences,
        }
    }
}

impl History {
    pub fn new() -> Self {
        History::default()
    }

    pub fn len(&self) -> usize {
        self.offences.len()
    }

    pub fn is_empty(&self) -> bool {
        self.offences.is_empty()
    }

    /// The offences remembered of `addr`.
    pub fn get(&self, addr: IpAddr) -> Option<Offence> {
        self.offences.get(&addr.to_canonical()).copied()
    }

    /// Every address with its offences.
    pub fn iter(&self) -> impl Iterator<Item = (IpAddr, Offence)> + '_ {
        self.offences
            .iter()
            .map(|(addr, offence)| (*addr, *offence))
    }

    /// Forgets every offence whose last one happened before `cutoff_unix`.
    pub fn forget_before(&mut self, cutoff_unix: u64) {
        while let Some(&(last, addr)) = self.by_age.first() {
            if last >= cutoff_unix {
                break;
            }
            self.by_age.remove(&(last, addr));
            self.offences.remove(&addr);
        }
    }

    /// Records an offence of `addr` at `now_unix` and returns its number: 1 for the first one,
    /// or when the previous one is older than `memory`.
    pub(crate) fn record(&mut self, addr: IpAddr, now_unix: u64, memory: Duration) -> u32 {
        let addr = addr.to_canonical();
        let previous = match self.offences.remove(&addr) {
            Some(old) => {
                self.by_age.remove(&(old.last_unix, addr));
                let forgotten = now_unix.saturating_sub(old.last_unix) >= memory.as_secs();
                if forgotten {
                    0
                } else {
                    old.count
                }
            }
            None => 0,
        };
        let count = previous.saturating_add(1);
        self.insert(
            addr,
            Offence {
                count,
                last_unix: now_unix,
            },
        );
        self.shrink();
        count
    }

    fn insert(&mut self, addr: IpAddr, offence: Offence) {
        if let Some(old) = self.offences.insert(addr, offence) {
            self.by_age.remove(&(old.last_unix, addr));
        }
        self.by_age.insert((offence.last_unix, addr));
    }

    fn shrink(&mut self) {
        while self.offences.len() > MAX_ADDRESSES {
            let Some((last, addr)) = self.by_age.pop_first() else {
                return;
            };
            let _ = last;
            self.offences.remove(&addr);
        }
    }
}

/// The length of ban number `offence` (1 for the first): `ban * escalate^(offence - 1)`, at
/// most `max_ban` (and `max_ban` when the factor is not a usable number).
pub(crate) fn escalated(ban: Duration, escalate: f64, max_ban: Duration, offence: u32) -> Duration {
    let exponent = i32::try_from(offence.saturating_sub(1))
        .unwrap_or(i32::MAX)
        .min(1024);
    let factor = escalate.max(1.0).powi(exponent);
    let seconds = ban.as_secs_f64() * factor;
    if !seconds.is_finite() || seconds >= max_ban.as_secs_f64() {
        return max_ban;
    }
    Duration::try_from_secs_f64(seconds)
        .unwrap_or(max_ban)
        .min(max_ban)
}
