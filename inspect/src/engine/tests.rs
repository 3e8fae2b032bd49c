//! The engine on synthetic TCP connections: the flow's life, the exception policies, the
//! table's bound and the reassembly budget. What each parser finds is tested with its module;
//! here the parsers are only asked through the engine.

use std::sync::{Arc, Mutex};

use crmguard_core::config::{default_policy, Inspection, ViolationAction};
use etherparse::PacketBuilder;

use super::*;

const PEER: [u8; 4] = [10, 77, 0, 2];
const GATEWAY: [u8; 4] = [10, 77, 0, 1];

#[derive(Default, Clone)]
struct Recorder(Arc<Mutex<Vec<Event>>>);

impl EventSink for Recorder {
    fn event(&self, event: Event) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).push(event);
    }
}

impl Recorder {
    fn take(&self) -> Vec<Event> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

fn inspection() -> Inspection {
    default_policy().inspection
}

fn inspector(config: &Inspection) -> (Inspector, Policy, Recorder) {
    let recorder = Recorder::default();
    let metrics = InspectMetrics::unregistered().unwrap_or_else(|e| panic!("{e}"));
    let inspector = Inspector::new(config.max_flows, metrics, Box::new(recorder.clone()));
    (inspector, Policy::new(config), recorder)
}

/// One side of a TCP connection between the peer and the gateway.
struct Conn {
    peer_port: u16,
    gateway_port: u16,
    client_seq: u32,
    server_seq: u32,
}

impl Conn {
    fn new(peer_port: u16, gateway_port: u16) -> Conn {
        Conn {
            peer_port,
            gateway_port,
            client_seq: 1000,
            server_seq: 5000,
        }
    }

    fn up(&self, seq: u32, flags: &str, payload: &[u8]) -> Vec<u8> {
        tcp(
            PEER,
            GATEWAY,
            self.peer_port,
            self.gateway_port,
            seq,
            self.server_seq,
            flags,
            payload,
        )
    }

    fn down(&self, seq: u32, flags: &str, payload: &[u8]) -> Vec<u8> {
        tcp(
            GATEWAY,
            PEER,
            self.gateway_port,
            self.peer_port,
            seq,
            self.client_seq,
            flags,
            payload,
        )
    }
}

#[allow(clippy::too_many_arguments)]
fn tcp(
    src: [u8; 4],
    dst: [u8; 4],
    sport: u16,
    dport: u16,
    seq: u32,
    ack: u32,
    flags: &str,
    payload: &[u8],
) -> Vec<u8> {
    let mut b = PacketBuilder::ipv4(src, dst, 64).tcp(sport, dport, seq, 64_000);
    for flag in flags.chars() {
        b = match flag {
            'S' => b.syn(),
            'A' => b.ack(ack),
            'F' => b.fin(),
            'R' => b.rst(),
            'P' => b.psh(),
            _ => b,
        };
    }
    let mut out = Vec::with_capacity(b.size(payload.len()));
    b.write(&mut out, payload).unwrap_or_else(|e| panic!("{e}"));
    out
}

const T0: Tick = Tick {
    secs: 100,
    unix: 1_800_000_000,
};

fn run(inspector: &Inspector, policy: &Policy, packets: &[(Dir, Vec<u8>)]) -> Vec<Verdict> {
    packets
        .iter()
        .map(|(dir, p)| inspector.packet(policy, *dir, "alice-laptop", p, T0))
        .collect()
}

/// The handshake of `c`.
fn open(c: &Conn) -> Vec<(Dir, Vec<u8>)> {
    vec![
        (Dir::FromPeer, c.up(c.client_seq, "S", b"")),
        (Dir::ToPeer, c.down(c.server_seq, "SA", b"")),
        (Dir::FromPeer, c.up(c.client_seq + 1, "A", b"")),
    ]
}

#[test]
fn bytes_that_are_no_protocol_on_a_tls_service_end_the_flow_under_drop() {
    let mut config = inspection();
    config.protocol_mismatch = ViolationAction::Drop;
    let (inspector, policy, events) = inspector(&config);
    let c = Conn::new(40_000, 443);
    let mut packets = open(&c);
    let junk: Vec<u8> = (0u8..200)
        .map(|i| i.wrapping_mul(37).wrapping_add(11))
        .collect();
    packets.push((Dir::FromPeer, c.up(c.client_seq + 1, "AP", &junk)));
    packets.push((Dir::ToPeer, c.down(c.server_seq + 1, "AP", b"late answer")));
    let verdicts = run(&inspector, &policy, &packets);
    // The junk is unknown only once no parser can still want more, so the flow is judged on its
    // FIN at the latest; here every parser refuses the first bytes at once.
    assert_eq!(
        verdicts,
        [
            Verdict::Pass,
            Verdict::Pass,
            Verdict::Pass,
            Verdict::Reset,
            Verdict::Drop
        ]
    );
    let events = events.take();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].protocol, Protocol::Unknown);
    assert!(matches!(
        &events[0].what,
        What::Violation {
            kind: ViolationKind::ProtocolMismatch,
            response: Response::Reset,
            ..
        }
    ));
    assert_eq!(events[0].service(), "tcp/443");
    assert_eq!(
        inspector
            .metrics()
            .violations_of(ViolationKind::ProtocolMismatch),
        1
    );
    assert_eq!(inspector.metrics().flows_of(Protocol::Unknown), 1);
}

#[test]
fn under_alert_a_mismatch_is_recorded_and_the_flow_goes_on() {
    let (inspector, policy, events) = inspector(&inspection());
    let c = Conn::new(40_001, 443);
    let mut packets = open(&c);
    packets.push((Dir::FromPeer, c.up(c.client_seq + 1, "AP", &[0xee; 64])));
    packets.push((Dir::FromPeer, c.up(c.client_seq + 65, "AP", &[0xee; 64])));
    let verdicts = run(&inspector, &policy, &packets);
    assert!(verdicts.iter().all(|v| *v == Verdict::Pass), "{verdicts:?}");
    let events = events.take();
    assert!(matches!(
        &events[..],
        [Event {
            what: What::Violation {
                kind: ViolationKind::ProtocolMismatch,
                response: Response::Alert,
                ..
            },
            ..
        }]
    ));
}

#[test]
fn a_service_without_a_known_protocol_is_not_checked() {
    let (inspector, policy, events) = inspector(&inspection());
    let c = Conn::new(40_002, 9999);
    let mut packets = open(&c);
    packets.push((Dir::FromPeer, c.up(c.client_seq + 1, "AP", &[0xee; 64])));
    let verdicts = run(&inspector, &policy, &packets);
    assert!(verdicts.iter().all(|v| *v == Verdict::Pass));
    assert!(events.take().is_empty());
    assert_eq!(inspector.metrics().flows_of(Protocol::Unknown), 1);
}

#[test]
fn a_flow_picked_up_midstream_is_counted_and_never_a_mismatch() {
    let mut config = inspection();
    config.protocol_mismatch = ViolationAction::Drop;
    let (inspector, policy, events) = inspector(&config);
    let c = Conn::new(40_003, 443);
    let packets = vec![
        (
            Dir::FromPeer,
            c.up(77_777, "AP", &[0x17, 3, 3, 0, 5, 1, 2, 3, 4, 5]),
        ),
        (Dir::ToPeer, c.down(88_888, "AP", &[0x17, 3, 3, 0, 2, 9, 9])),
    ];
    let verdicts = run(&inspector, &policy, &packets);
    assert!(verdicts.iter().all(|v| *v == Verdict::Pass), "{verdicts:?}");
    assert!(events.take().is_empty());
    assert_eq!(inspector.metrics().exceptions_of(Exception::Midstream), 1);
}

#[test]
fn a_bare_ack_or_reset_of_an_unknown_flow_creates_nothing_and_rst_ends_a_flow() {
    let (inspector, policy, _) = inspector(&inspection());
    let c = Conn::new(40_004, 8080);
    run(
        &inspector,
        &policy,
        &[
            (Dir::FromPeer, c.up(5, "A", b"")),
            (Dir::FromPeer, c.up(5, "R", b"")),
        ],
    );
    assert_eq!(inspector.status(&policy).flows, 0);
    run(&inspector, &policy, &open(&c));
    assert_eq!(inspector.status(&policy).flows, 1);
    assert_eq!(inspector.metrics().active(), 1);
    run(
        &inspector,
        &policy,
        &[(Dir::ToPeer, c.down(c.server_seq + 1, "R", b""))],
    );
    assert_eq!(inspector.status(&policy).flows, 0);
    assert_eq!(inspector.metrics().active(), 0);
}

#[test]
fn fins_from_both_sides_end_a_flow() {
    let (inspector, policy, _) = inspector(&inspection());
    let c = Conn::new(40_005, 8080);
    let mut packets = open(&c);
    packets.push((Dir::FromPeer, c.up(c.client_seq + 1, "AF", b"")));
    packets.push((Dir::ToPeer, c.down(c.server_seq + 1, "AF", b"")));
    run(&inspector, &policy, &packets);
    assert_eq!(inspector.status(&policy).flows, 0);
}

#[test]
fn a_full_table_passes_new_flows_and_counts_them_and_never_grows() {
    let mut config = inspection();
    config.max_flows = 32;
    let (inspector, policy, _) = inspector(&config);
    for port in 0..100u16 {
        let c = Conn::new(30_000 + port, 9999);
        let verdicts = run(&inspector, &policy, &open(&c));
        assert!(verdicts.iter().all(|v| *v == Verdict::Pass));
    }
    let status = inspector.status(&policy);
    assert!(status.flows <= 32, "{}", status.flows);
    assert!(status.table_full >= 68, "{}", status.table_full);
}

#[test]
fn idle_flows_expire_and_a_full_shard_evicts_idle_decided_flows() {
    let mut config = inspection();
    config.max_flows = 16;
    let (inspector, policy, _) = inspector(&config);
    // One flow per shard at most 1 per shard: fill with decided flows (unknown on 9999).
    let mut opened = 0;
    for port in 0..200u16 {
        let c = Conn::new(20_000 + port, 9999);
        let mut packets = open(&c);
        packets.push((Dir::FromPeer, c.up(c.client_seq + 1, "AP", &[0xee; 16])));
        run(&inspector, &policy, &packets);
        opened += 1;
    }
    assert!(opened > 16);
    let full = inspector.status(&policy).flows;
    assert!(full <= 16);
    // Later than the eviction age: a new flow takes an idle one's place.
    let later = Tick {
        secs: T0.secs + crate::table::EVICTABLE_IDLE + 1,
        unix: T0.unix,
    };
    let c = Conn::new(29_999, 9999);
    inspector.packet(
        &policy,
        Dir::FromPeer,
        "alice-laptop",
        &c.up(1, "S", b""),
        later,
    );
    assert!(inspector.metrics().evictions() >= 1);
    // Past every timeout, the timer's sweep empties the table.
    let much_later = Tick {
        secs: T0.secs + crate::table::DECIDED_IDLE + 1,
        unix: T0.unix,
    };
    inspector.expire(much_later, policy.max_flows);
    assert_eq!(inspector.status(&policy).flows, 0);
    assert_eq!(inspector.metrics().active(), 0);
    assert_eq!(inspector.status(&policy).reassembly_bytes, 0);
}

#[test]
fn reassembly_buffers_are_released_when_flows_are_decided_or_end() {
    let (inspector, policy, _) = inspector(&inspection());
    for port in 0..50u16 {
        let c = Conn::new(10_000 + port, 9999);
        let mut packets = open(&c);
        // Bytes after a gap: held, and nothing to parse until the gap fills.
        packets.push((Dir::FromPeer, c.up(c.client_seq + 10, "AP", b"later")));
        run(&inspector, &policy, &packets);
    }
    assert!(inspector.status(&policy).reassembly_bytes > 0);
    for port in 0..50u16 {
        let c = Conn::new(10_000 + port, 9999);
        run(
            &inspector,
            &policy,
            &[(Dir::FromPeer, c.up(c.client_seq + 3, "R", b""))],
        );
    }
    let status = inspector.status(&policy);
    assert_eq!((status.flows, status.reassembly_bytes), (0, 0));
}

#[test]
fn inspection_off_passes_everything_without_a_flow() {
    let mut config = inspection();
    config.enabled = false;
    config.protocol_mismatch = ViolationAction::Drop;
    let (inspector, policy, _) = inspector(&config);
    let c = Conn::new(40_006, 443);
    let mut packets = open(&c);
    packets.push((Dir::FromPeer, c.up(c.client_seq + 1, "AP", &[0xee; 64])));
    assert!(run(&inspector, &policy, &packets)
        .iter()
        .all(|v| *v == Verdict::Pass));
    assert_eq!(inspector.status(&policy).flows, 0);
}

#[test]
fn malformed_and_non_tcp_packets_pass_untouched() {
    let (inspector, policy, _) = inspector(&inspection());
    for bytes in [&b""[..], &[0x45, 0, 0][..], &[0x60; 39][..]] {
        assert_eq!(
            inspector.packet(&policy, Dir::FromPeer, "alice-laptop", bytes, T0),
            Verdict::Pass
        );
    }
    let mut udp = Vec::new();
    PacketBuilder::ipv4(PEER, GATEWAY, 64)
        .udp(5353, 53)
        .write(&mut udp, b"query")
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        inspector.packet(&policy, Dir::FromPeer, "alice-laptop", &udp, T0),
        Verdict::Pass
    );
    assert_eq!(inspector.status(&policy).flows, 0);
}
