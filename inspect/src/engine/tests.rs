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

fn setup(config: &Inspection) -> (Inspector, Policy, Recorder) {
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
    let (inspector, policy, events) = setup(&config);
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
    let (inspector, policy, events) = setup(&inspection());
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
    let (inspector, policy, events) = setup(&inspection());
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
    let (inspector, policy, events) = setup(&config);
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
fn a_bare_ack_or_reset_of_an_unknown_flow_creates_nothing_and_rst_closes_a_flow() {
    let (inspector, policy, _) = setup(&inspection());
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
    // After a reset the flow is closed: data claiming to be on it is dropped, and it goes
    // when its time is up.
    let verdicts = run(
        &inspector,
        &policy,
        &[
            (Dir::ToPeer, c.down(c.server_seq + 1, "R", b"")),
            (
                Dir::FromPeer,
                c.up(c.client_seq + 1, "AP", b"after the reset"),
            ),
            (Dir::FromPeer, c.up(c.client_seq + 1, "A", b"")),
        ],
    );
    assert_eq!(verdicts, [Verdict::Pass, Verdict::Drop, Verdict::Pass]);
    assert_eq!(inspector.status(&policy).flows, 1);
    inspector.expire(Tick {
        secs: T0.secs + crate::table::CLOSED_IDLE,
        unix: T0.unix,
    });
    assert_eq!(inspector.status(&policy).flows, 0);
    assert_eq!(inspector.metrics().active(), 0);
}

#[test]
fn a_new_connection_on_an_old_four_tuple_is_inspected_from_its_start() {
    let mut config = inspection();
    config.protocol_mismatch = ViolationAction::Drop;
    let (inspector, policy, events) = setup(&config);
    let c = Conn::new(40_010, 443);
    let hello = fixture("tls/curl-tls13-sni.client");
    let mut packets = open(&c);
    packets.push((Dir::FromPeer, c.up(c.client_seq + 1, "AP", &hello)));
    let verdicts = run(&inspector, &policy, &packets);
    assert!(verdicts.iter().all(|v| *v == Verdict::Pass));
    // The server closed long ago; the same source port now carries something else.
    let again = Conn {
        client_seq: 900_000,
        ..Conn::new(40_010, 443)
    };
    let mut packets = open(&again);
    packets.push((
        Dir::FromPeer,
        again.up(again.client_seq + 1, "AP", b"GET / HTTP/1.1\r\n\r\n"),
    ));
    let verdicts = run(&inspector, &policy, &packets);
    assert_eq!(verdicts[3], Verdict::Reset, "{verdicts:?}");
    assert_eq!(
        violations(&events.take()),
        [(ViolationKind::ProtocolMismatch, Response::Reset)]
    );
}

#[test]
fn a_decoy_with_a_bad_checksum_is_ignored_and_a_rewrite_ends_the_flow() {
    let mut config = inspection();
    config.sni_allow = vec![crmguard_core::config::SniPattern::Exact(
        "crm.example.com".into(),
    )];
    let forbidden = fixture("tls/chromium-mlkem.client");
    let allowed = fixture("tls/curl-tls13-sni.client");

    // The decoy (an allowed ClientHello) has a wrong checksum: the service drops it, so the
    // parser never sees it, and the real bytes that follow are judged.
    let (inspector, mut policy, events) = setup(&config);
    policy.sni_allow = vec![crmguard_core::config::SniPattern::Exact(
        "other.example.com".into(),
    )];
    let c = Conn::new(40_011, 443);
    let mut packets = open(&c);
    let mut decoy = c.up(c.client_seq + 1, "AP", &allowed);
    let last = decoy.len() - 1;
    decoy[last] ^= 0x55;
    packets.push((Dir::FromPeer, decoy));
    for (i, chunk) in forbidden.chunks(1380).enumerate() {
        let seq = c.client_seq + 1 + u32::try_from(i * 1380).unwrap_or(0);
        packets.push((Dir::FromPeer, c.up(seq, "AP", chunk)));
    }
    let verdicts = run(&inspector, &policy, &packets);
    assert!(verdicts.contains(&Verdict::Reset), "{verdicts:?}");
    assert_eq!(
        violations(&events.take()),
        [(ViolationKind::Sni, Response::Reset)]
    );

    // A valid segment that rewrites bytes already seen with others: no stack does that.
    let (inspector, policy, events) = setup(&config);
    let mut packets = open(&c);
    packets.push((Dir::FromPeer, c.up(c.client_seq + 1, "AP", &allowed[..100])));
    packets.push((
        Dir::FromPeer,
        c.up(c.client_seq + 1, "AP", &forbidden[..100]),
    ));
    let verdicts = run(&inspector, &policy, &packets);
    assert_eq!(verdicts[4], Verdict::Reset, "{verdicts:?}");
    assert_eq!(
        violations(&events.take()),
        [(ViolationKind::Overlap, Response::Reset)]
    );
}

#[test]
fn a_midstream_flow_is_still_held_to_the_rules_of_what_it_turns_out_to_be() {
    let mut config = inspection();
    config.sni_allow = vec![crmguard_core::config::SniPattern::Exact(
        "mail.example.com".into(),
    )];
    let (inspector, policy, events) = setup(&config);
    // No SYN seen (the agent started after it), from a low source port on an unlisted port.
    let c = Conn::new(1000, 8443);
    let hello = fixture("tls/curl-tls13-sni.client");
    let verdicts = run(
        &inspector,
        &policy,
        &[(Dir::FromPeer, c.up(c.client_seq + 1, "AP", &hello))],
    );
    assert_eq!(verdicts, [Verdict::Reset]);
    assert_eq!(
        violations(&events.take()),
        [(ViolationKind::Sni, Response::Reset)]
    );
}

#[test]
fn fins_from_both_sides_close_a_flow() {
    let (inspector, policy, _) = setup(&inspection());
    let c = Conn::new(40_005, 8080);
    let mut packets = open(&c);
    packets.push((Dir::FromPeer, c.up(c.client_seq + 1, "AF", b"")));
    packets.push((Dir::ToPeer, c.down(c.server_seq + 1, "AF", b"")));
    packets.push((Dir::FromPeer, c.up(c.client_seq + 2, "A", b"")));
    packets.push((
        Dir::FromPeer,
        c.up(c.client_seq + 2, "AP", b"data after both FINs"),
    ));
    let verdicts = run(&inspector, &policy, &packets);
    // The last ACK passes; data after both FINs is dropped.
    assert_eq!(verdicts[5..], [Verdict::Pass, Verdict::Drop]);
    assert_eq!(inspector.status(&policy).pending, 0);
}

#[test]
fn a_full_table_passes_new_flows_and_counts_them_and_never_grows() {
    let mut config = inspection();
    config.max_flows = 32;
    let (inspector, policy, _) = setup(&config);
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
    let (inspector, policy, _) = setup(&config);
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
    inspector.expire(much_later);
    assert_eq!(inspector.status(&policy).flows, 0);
    assert_eq!(inspector.metrics().active(), 0);
    assert_eq!(inspector.status(&policy).reassembly_bytes, 0);
}

#[test]
fn reassembly_buffers_are_released_when_flows_are_decided_or_end() {
    let (inspector, policy, _) = setup(&inspection());
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
    assert_eq!(
        (status.flows, status.pending, status.reassembly_bytes),
        (50, 0, 0)
    );
}

#[test]
fn inspection_off_passes_everything_without_a_flow() {
    let mut config = inspection();
    config.enabled = false;
    config.protocol_mismatch = ViolationAction::Drop;
    let (inspector, policy, _) = setup(&config);
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
    let (inspector, policy, _) = setup(&inspection());
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

// ---- real captures through the engine ---------------------------------------------------

fn fixture(path: &str) -> Vec<u8> {
    let full = format!("{}/fixtures/{path}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&full).unwrap_or_else(|e| panic!("{full}: {e}"))
}

/// The packets of a whole connection: the handshake, `client` in segments of `mss` bytes
/// (the first cut at `first` when given), then `server` in segments of `mss`.
fn connection(
    c: &Conn,
    client: &[u8],
    server: &[u8],
    mss: usize,
    first: Option<usize>,
) -> Vec<(Dir, Vec<u8>)> {
    let mut packets = open(c);
    let mut seq = c.client_seq + 1;
    let mut rest = client;
    if let Some(cut) = first {
        let (a, b) = rest.split_at(cut.min(rest.len()));
        packets.push((Dir::FromPeer, c.up(seq, "AP", a)));
        seq = seq.wrapping_add(u32::try_from(a.len()).unwrap_or(0));
        rest = b;
    }
    for chunk in rest.chunks(mss) {
        packets.push((Dir::FromPeer, c.up(seq, "AP", chunk)));
        seq = seq.wrapping_add(u32::try_from(chunk.len()).unwrap_or(0));
    }
    let mut seq = c.server_seq + 1;
    for chunk in server.chunks(mss) {
        packets.push((Dir::ToPeer, c.down(seq, "AP", chunk)));
        seq = seq.wrapping_add(u32::try_from(chunk.len()).unwrap_or(0));
    }
    packets
}

fn violations(events: &[Event]) -> Vec<(ViolationKind, Response)> {
    events
        .iter()
        .filter_map(|e| match &e.what {
            What::Violation { kind, response, .. } => Some((*kind, *response)),
            What::AuthFailure => None,
        })
        .collect()
}

#[test]
fn chromiums_two_segment_client_hello_is_identified_and_its_sni_checked_at_every_split() {
    let client = fixture("tls/chromium-mlkem.client");
    let server = fixture("tls/chromium-mlkem.server");
    let mut allowed = inspection();
    allowed.sni_allow = vec![crmguard_core::config::SniPattern::Exact(
        "crm.example.com".into(),
    )];
    let mut refused = allowed.clone();
    refused.sni_allow = vec![crmguard_core::config::SniPattern::Exact(
        "mail.example.com".into(),
    )];
    // The ClientHello is longer than one tunnel MSS (1380 bytes); cut it at every byte too.
    for cut in (1..client.len().min(2100)).step_by(7).chain([1380]) {
        let c = Conn::new(41_000, 443);
        let (inspector, policy, events) = setup(&allowed);
        let verdicts = run(
            &inspector,
            &policy,
            &connection(&c, &client, &server, 1380, Some(cut)),
        );
        assert!(
            verdicts.iter().all(|v| *v == Verdict::Pass),
            "cut {cut}: {verdicts:?}"
        );
        assert!(events.take().is_empty(), "cut {cut}");
        assert_eq!(inspector.metrics().flows_of(Protocol::Tls), 1, "cut {cut}");

        let (inspector, policy, events) = setup(&refused);
        let verdicts = run(
            &inspector,
            &policy,
            &connection(&c, &client, &server, 1380, Some(cut)),
        );
        assert!(
            verdicts.contains(&Verdict::Reset),
            "cut {cut}: {verdicts:?}"
        );
        assert_eq!(
            violations(&events.take()),
            [(ViolationKind::Sni, Response::Reset)],
            "cut {cut}"
        );
    }
}

#[test]
fn a_client_hello_whose_segments_arrive_reversed_is_read_once_both_are_there() {
    let client = fixture("tls/chromium-mlkem.client");
    let mut refused = inspection();
    refused.sni_allow = vec![crmguard_core::config::SniPattern::Exact(
        "mail.example.com".into(),
    )];
    let (inspector, policy, events) = setup(&refused);
    let c = Conn::new(41_001, 443);
    let mut packets = open(&c);
    let (a, b) = client.split_at(1380);
    packets.push((Dir::FromPeer, c.up(c.client_seq + 1 + 1380, "AP", b)));
    // A retransmission of the second segment changes nothing.
    packets.push((Dir::FromPeer, c.up(c.client_seq + 1 + 1380, "AP", b)));
    packets.push((Dir::FromPeer, c.up(c.client_seq + 1, "AP", a)));
    let verdicts = run(&inspector, &policy, &packets);
    assert_eq!(
        verdicts[3..],
        [Verdict::Pass, Verdict::Pass, Verdict::Reset]
    );
    assert_eq!(
        violations(&events.take()),
        [(ViolationKind::Sni, Response::Reset)]
    );
}

#[test]
fn tls_versions_come_from_the_client_offer_and_the_servers_choice() {
    // openssl -tls1_1 offers nothing acceptable at the default minimum, 1.2.
    let (inspector, policy, events) = setup(&inspection());
    let c = Conn::new(41_002, 443);
    let packets = connection(
        &c,
        &fixture("tls/openssl-tls11-refused.client"),
        &fixture("tls/openssl-tls11-refused.server"),
        1380,
        None,
    );
    let verdicts = run(&inspector, &policy, &packets);
    assert_eq!(verdicts[3], Verdict::Reset);
    assert_eq!(
        violations(&events.take()),
        [(ViolationKind::TlsVersion, Response::Reset)]
    );

    // A TLS 1.2 handshake passes at 1.2; at 1.3 the client's offer (1.2 only) is refused.
    let client = fixture("tls/openssl-tls12.client");
    let server = fixture("tls/openssl-tls12.server");
    let (inspector, policy, events) = setup(&inspection());
    let verdicts = run(
        &inspector,
        &policy,
        &connection(&c, &client, &server, 1380, None),
    );
    assert!(verdicts.iter().all(|v| *v == Verdict::Pass));
    assert!(events.take().is_empty());
    let mut strict = inspection();
    strict.tls_min_version = crmguard_core::config::TlsVersion::Tls13;
    let (inspector, policy, events) = setup(&strict);
    run(
        &inspector,
        &policy,
        &connection(&c, &client, &server, 1380, None),
    );
    assert_eq!(
        violations(&events.take()),
        [(ViolationKind::TlsVersion, Response::Reset)]
    );

    // Chromium offers 1.2 and 1.3; a server that chose 1.2 (its ServerHello from the
    // openssl capture) is what a 1.3 minimum refuses, on its way to the peer.
    let (inspector, policy, events) = setup(&strict);
    let packets = connection(
        &c,
        &fixture("tls/chromium-mlkem.client"),
        &fixture("tls/openssl-tls12.server"),
        1380,
        None,
    );
    let verdicts = run(&inspector, &policy, &packets);
    let reset_at = verdicts.iter().position(|v| *v == Verdict::Reset);
    assert!(
        matches!(reset_at, Some(i) if packets[i].0 == Dir::ToPeer),
        "{verdicts:?}"
    );
    assert_eq!(
        violations(&events.take()),
        [(ViolationKind::TlsVersion, Response::Reset)]
    );
}

#[test]
fn no_sni_follows_its_setting() {
    let client = fixture("tls/curl-ip-no-sni.client");
    let server = fixture("tls/curl-ip-no-sni.server");
    let c = Conn::new(41_003, 443);
    let (inspector, policy, events) = setup(&inspection());
    run(
        &inspector,
        &policy,
        &connection(&c, &client, &server, 1380, None),
    );
    assert!(events.take().is_empty());
    let mut strict = inspection();
    strict.no_sni = crmguard_core::config::NoSniAction::Drop;
    let (inspector, policy, events) = setup(&strict);
    run(
        &inspector,
        &policy,
        &connection(&c, &client, &server, 1380, None),
    );
    assert_eq!(
        violations(&events.take()),
        [(ViolationKind::NoSni, Response::Reset)]
    );
}

#[test]
fn basic_auth_over_plain_http_is_flagged_or_dropped_and_401s_are_failed_logins() {
    let client = fixture("http/curl-basic-401.client");
    let server = fixture("http/curl-basic-401.server");
    let c = Conn::new(41_004, 80);
    let (inspector, policy, events) = setup(&inspection());
    let verdicts = run(
        &inspector,
        &policy,
        &connection(&c, &client, &server, 1380, None),
    );
    assert!(verdicts.iter().all(|v| *v == Verdict::Pass));
    let events = events.take();
    assert_eq!(
        violations(&events),
        [(ViolationKind::PlaintextCredentials, Response::Alert)]
    );
    assert_eq!(
        events
            .iter()
            .filter(|e| e.what == What::AuthFailure)
            .count(),
        1
    );
    assert_eq!(inspector.metrics().auth_failures_of(Protocol::Http), 1);

    let mut strict = inspection();
    strict.plaintext_credentials = ViolationAction::Drop;
    let (inspector, policy, events) = setup(&strict);
    let verdicts = run(
        &inspector,
        &policy,
        &connection(&c, &client, &server, 1380, None),
    );
    assert_eq!(
        verdicts[3],
        Verdict::Reset,
        "the request never reaches the service"
    );
    assert!(verdicts[4..].iter().all(|v| *v == Verdict::Drop));
    assert_eq!(
        violations(&events.take()),
        [(ViolationKind::PlaintextCredentials, Response::Reset)]
    );
}

#[test]
fn failed_logins_on_a_kept_alive_connection_are_each_counted() {
    let client = fixture("http/curl-keepalive-401x2.client");
    let server = fixture("http/curl-keepalive-401x2.server");
    let c = Conn::new(41_005, 8080);
    let (inspector, policy, events) = setup(&inspection());
    // Each request and each answer in its own segment, in conversation order.
    let requests = split_messages(&client, b"GET ");
    let answers = split_messages(&server, b"HTTP/1.1 ");
    assert_eq!((requests.len(), answers.len()), (2, 2));
    let mut packets = open(&c);
    let (mut cseq, mut sseq) = (c.client_seq + 1, c.server_seq + 1);
    for (request, answer) in requests.iter().zip(&answers) {
        packets.push((Dir::FromPeer, c.up(cseq, "AP", request)));
        cseq = cseq.wrapping_add(u32::try_from(request.len()).unwrap_or(0));
        packets.push((Dir::ToPeer, c.down(sseq, "AP", answer)));
        sseq = sseq.wrapping_add(u32::try_from(answer.len()).unwrap_or(0));
    }
    run(&inspector, &policy, &packets);
    assert_eq!(
        events
            .take()
            .iter()
            .filter(|e| e.what == What::AuthFailure)
            .count(),
        2
    );
}

/// `bytes` cut before each occurrence of `start` at the start of a line.
fn split_messages(bytes: &[u8], start: &[u8]) -> Vec<Vec<u8>> {
    let mut cuts: Vec<usize> = (0..bytes.len())
        .filter(|&i| bytes[i..].starts_with(start) && (i == 0 || bytes[i - 1] == b'\n'))
        .collect();
    cuts.push(bytes.len());
    cuts.windows(2)
        .map(|w| bytes[w[0]..w[1]].to_vec())
        .collect()
}
