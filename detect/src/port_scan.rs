//! `port_scan`: one outside address hitting `distinct_ports` different ports within `window`,
//! seen in the XDP filter's drop samples, is banned for `ban`.
//!
//! Memory is bounded: at most [`crate::MAX_KEYS`] addresses, each with at most
//! `distinct_ports` ports (counting stops at the threshold, which acts), and at most
//! [`crate::MAX_WEIGHT`] ports in all; the least recently seen addresses go first.
//! A port is a pair of IP protocol and port: tcp/53 and udp/53 are two. Drops of an address
//! during its ban are not counted again.

use std::time::SystemTime;

use crmguard_core::config;
use ipnet::IpNet;

use crate::action::{clean, Action, Detector};
use crate::clock::{since, unix_secs};
use crate::history::History;
use crate::table::{Table, Weigh};
use crate::{MAX_KEYS, MAX_WEIGHT};

/// IP protocols whose drops carry a destination port.
const PORT_PROTOCOLS: [u8; 3] = [6, 17, 132];

/// The ports one address hit, each with when it was last hit; or, once banned, until when
/// its drops are ignored (the filter keeps dropping, and sampling, a banned address's
/// packets, which must not ban it again and again).
struct Ports {
    hits: Vec<(u8, u16, SystemTime)>,
    banned_until: Option<SystemTime>,
}

impl Weigh for Ports {
    fn weight(&self) -> usize {
        self.hits.len().max(1)
    }
}

pub(crate) struct PortScan {
    config: config::PortScan,
    sources: Table<IpNet, Ports>,
}

impl PortScan {
    pub(crate) fn new(config: config::PortScan) -> Self {
        PortScan {
            config,
            sources: Table::new(MAX_KEYS, MAX_WEIGHT),
        }
    }

    pub(crate) fn update(&mut self, config: config::PortScan) {
        self.config = config;
    }

    pub(crate) fn tracked(&self) -> (usize, usize) {
        (self.sources.len(), self.sources.weight())
    }

    /// Forgets the addresses with no port hit within `window` before `now`.
    pub(crate) fn sweep(&mut self, now: SystemTime) {
        let window = self.config.window;
        self.sources.retain(|ports| {
            ports.banned_until.is_some_and(|until| until > now)
                || ports.hits.iter().any(|(_, _, at)| since(*at, now) < window)
        });
    }

    /// `memory` is how long the history remembers an offence.
    pub(crate) fn observe(
        &mut self,
        at: SystemTime,
        source: IpNet,
        (proto, dst_port): (u8, u16),
        history: &mut History,
        memory: std::time::Duration,
        out: &mut Vec<Action>,
    ) {
        if !PORT_PROTOCOLS.contains(&proto) {
            return;
        }
        let limit = usize::try_from(self.config.distinct_ports.max(2)).unwrap_or(usize::MAX);
        let window = self.config.window;
        let ban = self.config.ban;
        let count = self.sources.with(
            &source,
            || Ports {
                hits: Vec::new(),
                banned_until: None,
            },
            |ports| {
                if ports.banned_until.is_some_and(|until| at < until) {
                    return 0;
                }
                ports.banned_until = None;
                ports.hits.retain(|(_, _, seen)| since(*seen, at) < window);
                match ports
                    .hits
                    .iter_mut()
                    .find(|(p, port, _)| *p == proto && *port == dst_port)
                {
                    Some(entry) => entry.2 = at,
                    None => ports.hits.push((proto, dst_port, at)),
                }
                let count = ports.hits.len();
                if count >= limit {
                    ports.hits.clear();
                    ports.banned_until = at.checked_add(ban);
                }
                count
            },
        );
        if count < limit {
            return;
        }
        let offence = history.record(source.addr(), unix_secs(at), memory);
        out.push(Action::Ban {
            net: source,
            duration: ban,
            detector: Detector::PortScan,
            offence,
            why: clean(&format!(
                "{count} distinct ports within {}s",
                window.as_secs()
            )),
        });
    }
}
