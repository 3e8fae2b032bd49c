//! Sampled drop events from the XDP program (the `cg_events` ring buffer).
//!
//! The program samples at most `EVENTS_PER_CPU_PER_S` drops per CPU and
//! second, so a flood costs the agent a bounded amount of work. The agent
//! keeps the most recent ones for `crmguard status` and hands them to the
//! detectors.

use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, RawFd};
use std::path::Path;

use aya::maps::{Map, MapData, RingBuf};
use serde::{Deserialize, Serialize};

use super::maps::MapsError;
use crmguard_core::abi::{self, Action, Reason};

/// One decoded drop (or would-be drop in monitor mode).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DropEvent {
    /// CLOCK_MONOTONIC nanoseconds when the packet was judged.
    pub boot_ns: u64,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub proto: u8,
    pub sport: u16,
    pub dport: u16,
    pub action: String,
    pub reason: String,
    /// The counter slot of the interface (see `Attachment::slot`).
    pub ifslot: u32,
}

fn addr(bytes: [u8; 16], family: u8) -> IpAddr {
    let v6 = Ipv6Addr::from(bytes);
    match (family, v6.to_ipv4_mapped()) {
        (4, Some(v4)) => IpAddr::V4(v4),
        (4, None) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        _ => IpAddr::V6(v6),
    }
}

/// Decodes one record; None for a record of the wrong size or with an
/// action or reason this agent does not know.
pub fn decode(record: &[u8]) -> Option<DropEvent> {
    if record.len() != std::mem::size_of::<abi::Event>() {
        return None;
    }
    let mut event = abi::Event::default();
    // The record is exactly the bytes of a cg_event; copy them field by
    // field from their offsets in the C struct.
    let u64_at = |o: usize| {
        record
            .get(o..o + 8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_ne_bytes)
    };
    let u32_at = |o: usize| {
        record
            .get(o..o + 4)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_ne_bytes)
    };
    event.ts_ns = u64_at(0)?;
    event.src.copy_from_slice(record.get(8..24)?);
    event.dst.copy_from_slice(record.get(24..40)?);
    event.sport_be.copy_from_slice(record.get(40..42)?);
    event.dport_be.copy_from_slice(record.get(42..44)?);
    event.proto = *record.get(44)?;
    event.family = *record.get(45)?;
    event.action = *record.get(46)?;
    event.reason = *record.get(47)?;
    event.ifslot = u32_at(48)?;
    let action = Action::ALL.into_iter().find(|a| *a as u8 == event.action)?;
    let reason = Reason::from_u32(u32::from(event.reason))?;
    Some(DropEvent {
        boot_ns: event.ts_ns,
        src: addr(event.src, event.family),
        dst: addr(event.dst, event.family),
        proto: event.proto,
        sport: u16::from_be_bytes(event.sport_be),
        dport: u16::from_be_bytes(event.dport_be),
        action: action.name().to_owned(),
        reason: reason.name().to_owned(),
        ifslot: event.ifslot,
    })
}

/// The reader side of the ring buffer.
pub struct EventReader {
    ring: RingBuf<MapData>,
}

impl EventReader {
    pub fn open(maps_dir: &Path) -> Result<Self, MapsError> {
        let path = maps_dir.join("cg_events");
        let open_err = |source| MapsError::Open {
            path: path.clone(),
            source,
        };
        let data = MapData::from_pin(&path).map_err(open_err)?;
        let map = Map::from_map_data(data).map_err(open_err)?;
        let ring = RingBuf::try_from(map).map_err(open_err)?;
        Ok(Self { ring })
    }

    /// Takes every record waiting, shows each to `each` and keeps it in `recent`; returns how
    /// many could not be decoded.
    pub fn drain(&mut self, recent: &mut Recent, mut each: impl FnMut(&DropEvent)) -> u64 {
        let mut undecodable = 0;
        while let Some(item) = self.ring.next() {
            match decode(&item) {
                Some(event) => {
                    each(&event);
                    recent.push(event);
                }
                None => undecodable += 1,
            }
        }
        undecodable
    }
}

impl AsRawFd for EventReader {
    fn as_raw_fd(&self) -> RawFd {
        self.ring.as_raw_fd()
    }
}

/// The most recent events, bounded.
#[derive(Debug, Default)]
pub struct Recent {
    events: VecDeque<DropEvent>,
    total: u64,
}

/// How many events `status` keeps.
pub const RECENT: usize = 64;

impl Recent {
    pub fn push(&mut self, event: DropEvent) {
        if self.events.len() == RECENT {
            self.events.pop_front();
        }
        self.events.push_back(event);
        self.total += 1;
    }

    pub fn events(&self) -> impl Iterator<Item = &DropEvent> {
        self.events.iter()
    }

    /// Events received since the agent started.
    pub fn total(&self) -> u64 {
        self.total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(family: u8, action: u8, reason: u8) -> Vec<u8> {
        let mut r = vec![0u8; 56];
        r[0..8].copy_from_slice(&123u64.to_ne_bytes());
        let src: Ipv6Addr = if family == 4 {
            Ipv4Addr::new(203, 0, 113, 7).to_ipv6_mapped()
        } else {
            "2001:db8::7".parse().expect("v6")
        };
        r[8..24].copy_from_slice(&src.octets());
        r[40..42].copy_from_slice(&4000u16.to_be_bytes());
        r[42..44].copy_from_slice(&22u16.to_be_bytes());
        r[44] = 6;
        r[45] = family;
        r[46] = action;
        r[47] = reason;
        r[48..52].copy_from_slice(&1u32.to_ne_bytes());
        r
    }

    #[test]
    fn decodes_the_c_layout() {
        let event = decode(&record(4, 1, 2)).expect("event");
        assert_eq!(event.src, IpAddr::V4(Ipv4Addr::new(203, 0, 113, 7)));
        assert_eq!((event.sport, event.dport, event.proto), (4000, 22, 6));
        assert_eq!(
            (event.action.as_str(), event.reason.as_str()),
            ("drop", "denied_source")
        );
        assert_eq!(event.ifslot, 1);
        assert_eq!(event.boot_ns, 123);
        let v6 = decode(&record(6, 2, 4)).expect("event");
        assert_eq!(v6.src, "2001:db8::7".parse::<IpAddr>().expect("v6"));
        assert_eq!(v6.action, "would_drop");
    }

    #[test]
    fn refuses_what_it_does_not_know() {
        assert_eq!(decode(&[0u8; 10]), None);
        assert_eq!(decode(&record(4, 9, 2)), None);
        assert_eq!(decode(&record(4, 1, 30)), None);
    }

    #[test]
    fn recent_is_bounded() {
        let mut recent = Recent::default();
        for _ in 0..RECENT + 10 {
            recent.push(decode(&record(4, 1, 2)).expect("event"));
        }
        assert_eq!(recent.events().count(), RECENT);
        assert_eq!(recent.total(), u64::try_from(RECENT + 10).expect("small"));
    }
}
