//! The whole inspection engine: one [`Inspector`] fed a sequence of TCP packets between a few
//! peers and the gateway, under the default `[inspection]` with `protocol_mismatch` and
//! `plaintext_credentials` set to `drop` and a table of [`MAX_FLOWS`] flows.
//!
//! Input: records of `[ctl][conn][aux][length: u16 BE][payload]` (the payload is cut where the
//! input ends).
//!
//! - `ctl & 1`: 0 from the peer (decrypted from the tunnel), 1 to the peer (from the TUN).
//! - `(ctl >> 1) & 7`, the kind: 0 data (ACK, PSH), 1 SYN, 2 SYN+ACK, 3 FIN+ACK, 4 RST,
//!   5 bare ACK, 6 the flags are `aux`, 7 the payload is a whole IP packet of its own.
//! - `(ctl >> 4) & 3`, the sequence number: 0 the sender's next, 1 the start of its previous
//!   segment (a retransmission), 2 `aux & 63` bytes past the next (a gap), 3 `aux & 63` bytes
//!   before it (an overlap).
//! - `ctl >> 6`: which of four peer addresses.
//! - `conn`: the low nibble picks the peer's port (and IPv6 when bit 3 is set), the high
//!   nibble the gateway's port from [`PORTS`].
//! - `aux >> 6`: seconds the clock moves on before this packet.
//!
//! After every packet: the table holds at most [`MAX_FLOWS`] flows, no more of them pending,
//! and no more reassembly bytes than they can hold. After the last: expiring the table far in
//! the future leaves no flow and no reassembly bytes.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::OnceLock;

use crmguard_core::config::{default_policy, LoginFailureRule, ViolationAction};
use crmguard_inspect::engine::{CLIENT_WINDOW, SERVER_WINDOW};
use crmguard_inspect::{Dir, Event, EventSink, InspectMetrics, Inspector, Policy, Tick};

use crate::packet::{self, Tcp};

/// The table's bound: small, so the input fills it.
pub const MAX_FLOWS: u32 = 8;

/// The gateway ports `conn >> 4` picks: each default service port, a few others.
pub const PORTS: [u16; 16] = [
    22, 25, 80, 443, 465, 587, 993, 995, 3306, 5432, 6379, 8080, 8443, 2222, 1234, 40_000,
];

/// Bytes of one record's header.
pub const RECORD_HEADER: usize = 5;

/// A bound on the reassembly bytes one pending flow holds: both windows, with the slack of a
/// growing `Vec` (up to twice what it holds) and the bitmap of written bytes.
const PER_FLOW_BYTES: usize = 4 * (CLIENT_WINDOW + SERVER_WINDOW);

struct Quiet;

impl EventSink for Quiet {
    fn event(&self, _event: Event) {}
}

fn policy() -> &'static Policy {
    static POLICY: OnceLock<Policy> = OnceLock::new();
    POLICY.get_or_init(|| {
        let mut config = default_policy().inspection;
        config.max_flows = MAX_FLOWS;
        config.protocol_mismatch = ViolationAction::Drop;
        config.plaintext_credentials = ViolationAction::Drop;
        config.login_failures = crate::parser::login_rules()
            .into_iter()
            .map(|rule| LoginFailureRule {
                method: rule.method,
                path: rule.path,
                status: rule.status,
            })
            .collect();
        Policy::new(&config)
    })
}

fn metrics() -> InspectMetrics {
    static METRICS: OnceLock<InspectMetrics> = OnceLock::new();
    METRICS
        .get_or_init(|| {
            InspectMetrics::unregistered()
                .unwrap_or_else(|e| panic!("the inspection metrics cannot be made: {e}"))
        })
        .clone()
}

/// The next and previous sequence numbers of one side of one connection.
#[derive(Clone, Copy)]
struct Side {
    next: u32,
    previous: u32,
}

/// One record, decoded.
struct Record<'a> {
    ctl: u8,
    conn: u8,
    aux: u8,
    payload: &'a [u8],
}

fn records(mut data: &[u8]) -> impl Iterator<Item = Record<'_>> {
    std::iter::from_fn(move || {
        if data.len() < RECORD_HEADER {
            return None;
        }
        let len = usize::from(crate::be16(data, 3));
        let end = (RECORD_HEADER + len).min(data.len());
        let record = Record {
            ctl: data[0],
            conn: data[1],
            aux: data[2],
            payload: &data[RECORD_HEADER..end],
        };
        data = &data[end..];
        Some(record)
    })
}

fn addresses(peer: u8, v6: bool) -> (IpAddr, IpAddr) {
    if v6 {
        (
            IpAddr::V6(Ipv6Addr::new(0xfd77, 0, 0, 0, 0, 0, 0, 2 + u16::from(peer))),
            IpAddr::V6(Ipv6Addr::new(0xfd77, 0, 0, 0, 0, 0, 0, 1)),
        )
    } else {
        (
            IpAddr::V4(Ipv4Addr::new(10, 77, 0, 2 + peer)),
            IpAddr::V4(Ipv4Addr::new(10, 77, 0, 1)),
        )
    }
}

/// Feeds `data` to one inspector and checks the table's bounds.
pub fn run(data: &[u8]) {
    let policy = policy();
    let inspector = Inspector::new(MAX_FLOWS, metrics(), Box::new(Quiet));
    let max = usize::try_from(MAX_FLOWS).unwrap_or(usize::MAX);
    // (peer, conn, from peer) -> that side's sequence numbers.
    let mut sides: HashMap<(u8, u8, bool), Side> = HashMap::new();
    let mut secs: u32 = 1_000;

    for record in records(data) {
        secs += u32::from(record.aux >> 6);
        let now = Tick {
            secs,
            unix: 1_800_000_000 + u64::from(secs),
        };
        let from_peer = record.ctl & 1 == 0;
        let dir = if from_peer {
            Dir::FromPeer
        } else {
            Dir::ToPeer
        };
        let kind = (record.ctl >> 1) & 7;
        if kind == 7 {
            inspector.packet(policy, dir, "alice", record.payload, now);
            check(&inspector, policy, max);
            continue;
        }
        let peer = record.ctl >> 6;
        let (peer_addr, gateway_addr) = addresses(peer, record.conn & 0x08 != 0);
        let peer_port = 40_000 + u16::from(record.conn & 0x0f);
        let gateway_port = PORTS[usize::from(record.conn >> 4)];
        let initial = |from_peer: bool| {
            let salt = u32::from(record.conn) * 7_919 + u32::from(peer) * 104_729;
            let next = if from_peer { 1_000 } else { u32::MAX - 3_000 }.wrapping_add(salt);
            Side {
                next,
                previous: next,
            }
        };
        let other = *sides
            .entry((peer, record.conn, !from_peer))
            .or_insert_with(|| initial(!from_peer));
        let side = sides
            .entry((peer, record.conn, from_peer))
            .or_insert_with(|| initial(from_peer));
        let flags = match kind {
            0 => 0x18,
            1 => 0x02,
            2 => 0x12,
            3 => 0x11,
            4 => 0x04,
            5 => 0x10,
            _ => record.aux,
        };
        let shift = u32::from(record.aux & 63);
        let seq = match (record.ctl >> 4) & 3 {
            0 => side.next,
            1 => side.previous,
            2 => side.next.wrapping_add(shift),
            _ => side.next.wrapping_sub(shift),
        };
        let len = u32::try_from(record.payload.len()).unwrap_or(u32::MAX);
        // SYN and FIN take a sequence number each.
        let used = len + u32::from(flags & 0x02 != 0) + u32::from(flags & 0x01 != 0);
        side.previous = seq;
        // The next byte moves on when this segment ends past it (modulo 2^32).
        let end = seq.wrapping_add(used);
        if end.wrapping_sub(side.next) < u32::MAX / 2 {
            side.next = end;
        }
        let tcp = Tcp {
            src_port: if from_peer { peer_port } else { gateway_port },
            dst_port: if from_peer { gateway_port } else { peer_port },
            seq,
            ack: other.next,
            flags,
        };
        let (src, dst) = if from_peer {
            (peer_addr, gateway_addr)
        } else {
            (gateway_addr, peer_addr)
        };
        let packet = packet::tcp(src, dst, tcp, record.payload);
        inspector.packet(policy, dir, "alice", &packet, now);
        check(&inspector, policy, max);
    }

    let later = secs + 100_000;
    inspector.expire(Tick {
        secs: later,
        unix: 1_800_000_000 + u64::from(later),
    });
    let status = inspector.status(policy);
    assert_eq!(status.flows, 0, "flows left after expiring every flow");
    assert_eq!(
        inspector.metrics().active(),
        0,
        "the active-flows gauge drifted from the table"
    );
    assert_eq!(
        status.reassembly_bytes, 0,
        "reassembly bytes held after expiring every flow"
    );
}

fn check(inspector: &Inspector, policy: &Policy, max: usize) {
    let status = inspector.status(policy);
    assert!(
        status.flows <= max,
        "{} flows in a table of {max}",
        status.flows
    );
    assert!(status.pending <= status.flows, "more pending than flows");
    assert!(
        status.reassembly_bytes <= status.pending * PER_FLOW_BYTES,
        "{} reassembly bytes held by {} pending flows",
        status.reassembly_bytes,
        status.pending
    );
}
