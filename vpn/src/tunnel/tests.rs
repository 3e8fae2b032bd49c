//! Tests of the tunnel core at its boundary: boringtun clients on one side, datagrams, packets
//! and the time in, actions out. No socket, no TUN device, no root.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::UNIX_EPOCH;

use boringtun::x25519::StaticSecret;

use super::*;
use crmguard_core::config;
use crmguard_core::keys;
use crmguard_core::peers;

const GATEWAY: [u8; 4] = [10, 77, 0, 1];
const ALICE: [u8; 4] = [10, 77, 0, 10];
const BOB: [u8; 4] = [10, 77, 0, 11];
const NOBODY: [u8; 4] = [10, 77, 0, 99];
const PORTAL: u16 = 8443;

/// Monday 10:00.
const NOW: Now = Now {
    wall: UNIX_EPOCH,
    local: LocalTime {
        weekday: 0,
        minute_of_day: 600,
    },
    tick: crmguard_inspect::Tick { secs: 0, unix: 0 },
};

fn secret(n: u8) -> StaticSecret {
    StaticSecret::from([n; 32])
}

fn public(n: u8) -> [u8; 32] {
    PublicKey::from(&secret(n)).to_bytes()
}

fn gateway_keys() -> KeyPair {
    KeyPair::from_private([7; 32])
}

/// Alice is a DBA (PostgreSQL on the gateway), Bob is in sales (HTTPS with MFA).
/// An inspector whose events go nowhere.
fn inspector() -> Arc<crmguard_inspect::Inspector> {
    let metrics =
        crmguard_inspect::InspectMetrics::unregistered().unwrap_or_else(|e| panic!("{e}"));
    Arc::new(crmguard_inspect::Inspector::new(
        65_536,
        metrics,
        Box::new(crmguard_inspect::event::Discard),
    ))
}

fn config() -> config::Config {
    let text = format!(
        "[vpn]\naddress = \"10.77.0.1/24\"\n\
         [mfa]\nportal_port = {PORTAL}\n\
         [[role]]\nname = \"dba\"\nallow = [\"tcp/5432\"]\n\
         [[role]]\nname = \"sales\"\nallow = [\"tcp/443\"]\nmfa = true\n\
         [[peer]]\nname = \"alice\"\npublic_key = \"{}\"\naddress = \"10.77.0.10\"\nrole = \"dba\"\n\
         [[peer]]\nname = \"bob\"\npublic_key = \"{}\"\naddress = \"10.77.0.11\"\nrole = \"sales\"\n",
        keys::encode(&public(1)),
        keys::encode(&public(2)),
    );
    match config::parse(&text, Path::new("/etc/crmguard/crmguard.toml")) {
        Ok(config) => config,
        Err(errors) => panic!("{errors}"),
    }
}

/// What the core asked for, owned so that a test can compare it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Did {
    Send(SocketAddr, Vec<u8>),
    Deliver(Vec<u8>),
    Denied(String, DenyReason),
}

/// The gateway's side: the core, its snapshot and the cells by peer name.
struct Gateway {
    core: Core,
    snapshot: Snapshot,
    cells: Vec<(String, Arc<PeerCell>)>,
    scratch: Scratch,
    out: Vec<u8>,
}

impl Gateway {
    fn new(handshakes_before_cookies: u64) -> Gateway {
        let keys = gateway_keys();
        let config = config();
        let (admitted, _) = peers::admitted(&config, UNIX_EPOCH);
        let cells = admitted
            .iter()
            .zip(1u32..)
            .map(|(info, index)| {
                let cell = Arc::new(PeerCell::new(&keys, info.public_key, index));
                (info.name.clone(), cell)
            })
            .collect();
        let mut gateway = Gateway {
            core: Core::new(keys, handshakes_before_cookies, inspector()),
            snapshot: Snapshot {
                table: Table::default(),
                acl: Acl::new(&config, Ipv4Addr::from(GATEWAY), None, PORTAL, {
                    let portal = crmguard_core::acl::PortalListening::default();
                    portal.set(true);
                    Arc::new(portal)
                }),
                inspect: crmguard_inspect::Policy::new(&config.inspection),
            },
            cells,
            scratch: Scratch::new(),
            out: vec![0; 65_536],
        };
        gateway.publish(&["alice", "bob"]);
        gateway
    }

    /// Replaces the snapshot with one that admits only `names`, keeping their cells, as a
    /// reload does.
    fn publish(&mut self, names: &[&str]) {
        let config = config();
        let (admitted, _) = peers::admitted(&config, UNIX_EPOCH);
        let entries = admitted
            .into_iter()
            .filter(|info| names.contains(&info.name.as_str()))
            .map(|info| {
                let cell = Arc::clone(self.cell(&info.name));
                Entry {
                    info,
                    index: cell.index,
                    slot: cell,
                }
            })
            .collect();
        let (table, conflicts) = Table::build(entries);
        assert_eq!(conflicts, Vec::new());
        self.snapshot.table = table;
    }

    fn cell(&self, name: &str) -> &Arc<PeerCell> {
        match self.cells.iter().find(|(n, _)| n == name) {
            Some((_, cell)) => cell,
            None => panic!("no peer {name}"),
        }
    }

    fn endpoint(&self, name: &str) -> Option<SocketAddr> {
        self.cell(name).lock().endpoint.map(|t| t.remote)
    }

    fn receive(&mut self, datagram: &[u8], from: SocketAddr) -> (Rx, Vec<Did>) {
        let mut did = Vec::new();
        let rx = self.core.datagram(
            &self.snapshot,
            datagram,
            Target {
                remote: from,
                local: None,
            },
            NOW,
            &mut self.scratch,
            &mut |action| did.push(owned(action)),
        );
        (rx, did)
    }

    fn send(&mut self, packet: &[u8]) -> (Tx, Vec<u8>) {
        let mut held = Held::default();
        let tx = self.core.encrypt(
            &self.snapshot,
            &mut held,
            packet,
            NOW.tick,
            &mut self.out,
            &mut |_| {},
        );
        let bytes = match tx {
            Tx::Datagram { len, .. } => self.out[..len].to_vec(),
            Tx::Skipped(_) => Vec::new(),
        };
        (tx, bytes)
    }
}

fn owned(action: Action<'_>) -> Did {
    match action {
        Action::Send { to, datagram } => Did::Send(to.remote, datagram.to_vec()),
        Action::Deliver(packet) => Did::Deliver(packet.to_vec()),
        Action::Denied { peer, verdict, .. } => match verdict {
            Verdict::Deny { reason, .. } => Did::Denied(peer.to_owned(), reason),
            Verdict::Allow { .. } => panic!("an allowed packet reported as denied"),
        },
    }
}

/// A peer's WireGuard client: boringtun's own `Tunn`, as a peer's device runs it.
struct Client {
    tunn: Tunn,
    buf: Vec<u8>,
}

impl Client {
    fn new(key: u8, index: u32) -> Client {
        Client {
            tunn: Tunn::new(secret(key), gateway_keys().public, None, None, index, None),
            buf: vec![0; 65_536],
        }
    }

    fn initiation(&mut self) -> Vec<u8> {
        match self.tunn.format_handshake_initiation(&mut self.buf, true) {
            TunnResult::WriteToNetwork(init) => init.to_vec(),
            _ => panic!("no initiation"),
        }
    }

    /// What the client sends after receiving `datagram` (a handshake answer's keepalive).
    fn answer(&mut self, datagram: &[u8]) -> Option<Vec<u8>> {
        match self
            .tunn
            .decapsulate(Some(IpAddr::from(GATEWAY)), datagram, &mut self.buf)
        {
            TunnResult::WriteToNetwork(answer) => Some(answer.to_vec()),
            TunnResult::Done => None,
            _ => panic!("the client refused the gateway's datagram"),
        }
    }

    fn encrypt(&mut self, packet: &[u8]) -> Vec<u8> {
        match self.tunn.encapsulate(packet, &mut self.buf) {
            TunnResult::WriteToNetwork(datagram) => datagram.to_vec(),
            _ => panic!("the client has no session"),
        }
    }

    fn decrypt(&mut self, datagram: &[u8]) -> Vec<u8> {
        match self
            .tunn
            .decapsulate(Some(IpAddr::from(GATEWAY)), datagram, &mut self.buf)
        {
            TunnResult::WriteToTunnelV4(packet, _) => packet.to_vec(),
            _ => panic!("the client could not decrypt the gateway's datagram"),
        }
    }
}

fn outside(last: u8, port: u16) -> SocketAddr {
    SocketAddr::from(([192, 0, 2, last], port))
}

/// Runs a whole handshake from `client` at `from`; the gateway's session is confirmed.
fn connect(gateway: &mut Gateway, client: &mut Client, from: SocketAddr) {
    let init = client.initiation();
    let (rx, did) = gateway.receive(&init, from);
    assert_eq!(rx, Rx::Handshake);
    let [Did::Send(to, response)] = &did[..] else {
        panic!("expected one handshake response, got {did:?}");
    };
    assert_eq!(*to, from);
    let Some(keepalive) = client.answer(response) else {
        panic!("the client confirmed nothing");
    };
    assert_eq!(gateway.receive(&keepalive, from), (Rx::Nothing, Vec::new()));
}

/// An IPv4 packet from `src` to `dst` with protocol `proto` and `transport` as its payload.
fn ipv4(src: [u8; 4], dst: [u8; 4], proto: u8, transport: &[u8]) -> Vec<u8> {
    let total = 20 + transport.len();
    let mut p = vec![0u8; 20];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&u16::try_from(total).unwrap_or(u16::MAX).to_be_bytes());
    p[8] = 64;
    p[9] = proto;
    p[12..16].copy_from_slice(&src);
    p[16..20].copy_from_slice(&dst);
    let sum = p
        .chunks_exact(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum::<u32>();
    let folded = (sum & 0xffff) + (sum >> 16);
    let folded = (folded & 0xffff) + (folded >> 16);
    let checksum = !u16::try_from(folded).unwrap_or(u16::MAX);
    p[10..12].copy_from_slice(&checksum.to_be_bytes());
    p.extend_from_slice(transport);
    p
}

fn tcp_syn(src: [u8; 4], dst: [u8; 4], port: u16) -> Vec<u8> {
    let mut tcp = vec![0u8; 20];
    tcp[0..2].copy_from_slice(&40_000u16.to_be_bytes());
    tcp[2..4].copy_from_slice(&port.to_be_bytes());
    tcp[4..8].copy_from_slice(&1_000u32.to_be_bytes());
    tcp[12] = 0x50;
    tcp[13] = 0x02;
    tcp[14..16].copy_from_slice(&64_240u16.to_be_bytes());
    ipv4(src, dst, 6, &tcp)
}

fn udp(src: [u8; 4], dst: [u8; 4], port: u16) -> Vec<u8> {
    let mut udp = vec![0u8; 12];
    udp[0..2].copy_from_slice(&40_000u16.to_be_bytes());
    udp[2..4].copy_from_slice(&port.to_be_bytes());
    udp[4..6].copy_from_slice(&12u16.to_be_bytes());
    ipv4(src, dst, 17, &udp)
}

fn echo(src: [u8; 4], dst: [u8; 4]) -> Vec<u8> {
    ipv4(src, dst, 1, &[8, 0, 0xf7, 0xff, 0, 0, 0, 0])
}

#[test]
fn handshake_and_data_both_ways() {
    let mut gateway = Gateway::new(HANDSHAKES_BEFORE_COOKIES);
    let mut alice = Client::new(1, 100);
    let home = outside(1, 40_001);
    // Before any handshake the gateway knows nowhere to send Alice's packets.
    let reply = tcp_syn(GATEWAY, ALICE, 40_000);
    assert_eq!(gateway.send(&reply).0, Tx::Skipped(TxSkip::NoEndpoint));
    connect(&mut gateway, &mut alice, home);
    assert_eq!(gateway.endpoint("alice"), Some(home));

    let packet = tcp_syn(ALICE, GATEWAY, 5432);
    let datagram = alice.encrypt(&packet);
    assert_eq!(
        gateway.receive(&datagram, home),
        (Rx::Delivered, vec![Did::Deliver(packet)])
    );

    let (tx, datagram) = gateway.send(&reply);
    let Tx::Datagram { to, data, .. } = tx else {
        panic!("nothing sent: {tx:?}");
    };
    assert_eq!((to.remote, data), (home, true));
    assert_eq!(alice.decrypt(&datagram), reply);

    let counters = gateway.core.counters();
    assert_eq!(counters.handshakes_ok.load(Ordering::Relaxed), 1);
    let session = gateway.cell("alice").lock();
    assert_eq!(session.inner_packets, 1);
    assert_eq!(session.last_handshake, Some(NOW.wall));
    assert!(session.rx_bytes > 0 && session.tx_bytes > 0);
}

#[test]
fn a_kept_packet_is_handed_over_in_its_buffer_and_the_buffer_given_back_is_reused() {
    const HEADROOM: usize = 10;
    let mut gateway = Gateway::new(HANDSHAKES_BEFORE_COOKIES);
    gateway.scratch = Scratch::keeping_delivered(HEADROOM);
    let mut alice = Client::new(1, 100);
    let home = outside(1, 40_001);
    connect(&mut gateway, &mut alice, home);

    // The queue's buffers start empty, and may come back shorter than the next packet.
    let mut queue = [Vec::new(), vec![7u8; 3]];
    let packets = [tcp_syn(ALICE, GATEWAY, 5432), echo(ALICE, GATEWAY)];
    for (packet, slot) in packets.iter().zip(queue.iter_mut()) {
        let datagram = alice.encrypt(packet);
        // Admitted, and not handed to an action: it waits where it was decrypted.
        assert_eq!(
            gateway.receive(&datagram, home),
            (Rx::Delivered, Vec::new())
        );
        assert!(gateway.scratch.take_delivered(slot));
        assert_eq!(&slot[HEADROOM..], &packet[..]);
        // Taken once.
        assert!(!gateway.scratch.take_delivered(&mut Vec::new()));
    }

    // A denied packet leaves nothing to take; an answer still goes back to the peer.
    let denied = tcp_syn(ALICE, GATEWAY, 22);
    let (rx, did) = gateway.receive(&alice.encrypt(&denied), home);
    assert!(matches!(rx, Rx::Denied(_)), "{rx:?}");
    assert!(!did.is_empty());
    assert!(!gateway.scratch.has_delivered());
    assert!(!gateway.scratch.take_delivered(&mut Vec::new()));

    // The buffer given back is only grown to what a datagram can write: junk grows it to no
    // more than a data message's minimum.
    gateway.scratch.out = Vec::new();
    for junk in [&[9u8; 4][..], &[1u8; 40][..], &[4u8; 20][..]] {
        assert_eq!(
            gateway.receive(junk, home),
            (Rx::Dropped(Discard::Malformed), Vec::new())
        );
        assert!(!gateway.scratch.has_delivered());
        assert!(gateway.scratch.out.len() <= HEADROOM + DATA_OUT_MIN);
    }
}

#[test]
fn an_authenticated_datagram_moves_the_endpoint_and_a_forged_one_does_not() {
    let mut gateway = Gateway::new(HANDSHAKES_BEFORE_COOKIES);
    let mut alice = Client::new(1, 100);
    let home = outside(1, 40_001);
    let train = outside(2, 51_000);
    let attacker = outside(3, 666);
    connect(&mut gateway, &mut alice, home);

    let packet = echo(ALICE, GATEWAY);
    let datagram = alice.encrypt(&packet);
    assert_eq!(gateway.receive(&datagram, train).0, Rx::Delivered);
    assert_eq!(gateway.endpoint("alice"), Some(train));
    assert!(gateway.cell("alice").lock().dirty);

    // A replayed datagram and a forged one from elsewhere move nothing.
    assert_eq!(
        gateway.receive(&datagram, attacker),
        (Rx::Dropped(Discard::Unauthenticated), Vec::new())
    );
    let mut forged = alice.encrypt(&packet);
    if let Some(last) = forged.last_mut() {
        *last ^= 1;
    }
    assert_eq!(
        gateway.receive(&forged, attacker).0,
        Rx::Dropped(Discard::Unauthenticated)
    );
    assert_eq!(gateway.endpoint("alice"), Some(train));

    // The gateway's answers follow the peer.
    let (tx, _) = gateway.send(&echo(GATEWAY, ALICE));
    assert!(
        matches!(tx, Tx::Datagram { to, .. } if to.remote == train),
        "{tx:?}"
    );
}

#[test]
fn the_source_check_refuses_addresses_that_are_not_the_peers() {
    let mut gateway = Gateway::new(HANDSHAKES_BEFORE_COOKIES);
    let mut alice = Client::new(1, 100);
    let home = outside(1, 40_001);
    connect(&mut gateway, &mut alice, home);
    for src in [BOB, NOBODY] {
        let datagram = alice.encrypt(&tcp_syn(src, GATEWAY, 5432));
        assert_eq!(
            gateway.receive(&datagram, home),
            (Rx::Dropped(Discard::SourceCheck), Vec::new()),
            "{src:?}"
        );
    }
    let counters = gateway.core.counters();
    assert_eq!(counters.source_check.load(Ordering::Relaxed), 2);
    assert_eq!(gateway.cell("alice").lock().inner_packets, 0);
}

/// What the ACL must do with a packet: deliver it, or deny it with an answer of the given
/// IP protocol (6 for a TCP reset, 1 for ICMP) or none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    Deliver,
    Deny(DenyReason, Option<u8>),
}

#[test]
fn acl_decisions_and_their_answers() {
    let mut gateway = Gateway::new(HANDSHAKES_BEFORE_COOKIES);
    let mut alice = Client::new(1, 100);
    let mut bob = Client::new(2, 200);
    let alice_home = outside(1, 40_001);
    let bob_home = outside(2, 40_002);
    connect(&mut gateway, &mut alice, alice_home);
    connect(&mut gateway, &mut bob, bob_home);

    let check = |gateway: &mut Gateway,
                 client: &mut Client,
                 name: &str,
                 from: SocketAddr,
                 packet: Vec<u8>,
                 expected: Expect| {
        let datagram = client.encrypt(&packet);
        let (rx, did) = gateway.receive(&datagram, from);
        match expected {
            Expect::Deliver => {
                assert_eq!((rx, did), (Rx::Delivered, vec![Did::Deliver(packet)]));
            }
            Expect::Deny(reason, answer) => {
                assert_eq!(rx, Rx::Denied(reason), "{name}");
                assert_eq!(did.first(), Some(&Did::Denied(name.to_owned(), reason)));
                let sent: Vec<u8> = did[1..]
                    .iter()
                    .map(|d| match d {
                        Did::Send(to, datagram) => {
                            assert_eq!(*to, from);
                            client.decrypt(datagram)[9]
                        }
                        other => panic!("unexpected {other:?}"),
                    })
                    .collect();
                assert_eq!(sent, answer.into_iter().collect::<Vec<_>>(), "{name}");
            }
        }
    };
    let cases = [
        ("alice", tcp_syn(ALICE, GATEWAY, 5432), Expect::Deliver),
        ("alice", echo(ALICE, GATEWAY), Expect::Deliver),
        ("alice", tcp_syn(ALICE, GATEWAY, PORTAL), Expect::Deliver),
        (
            "alice",
            tcp_syn(ALICE, GATEWAY, 22),
            Expect::Deny(DenyReason::NotInRole, Some(6)),
        ),
        (
            "alice",
            udp(ALICE, GATEWAY, 53),
            Expect::Deny(DenyReason::NotInRole, Some(1)),
        ),
        (
            "alice",
            tcp_syn(ALICE, NOBODY, 5432),
            Expect::Deny(DenyReason::NotToGateway, Some(6)),
        ),
        (
            "alice",
            echo(ALICE, NOBODY),
            Expect::Deny(DenyReason::NotToGateway, None),
        ),
        (
            "bob",
            tcp_syn(BOB, GATEWAY, 443),
            Expect::Deny(DenyReason::MfaRequired, Some(6)),
        ),
    ];
    for (name, packet, expected) in cases {
        if name == "alice" {
            check(&mut gateway, &mut alice, name, alice_home, packet, expected);
        } else {
            check(&mut gateway, &mut bob, name, bob_home, packet, expected);
        }
    }
    // With an open MFA session, Bob reaches HTTPS.
    gateway.cell("bob").mfa_open.store(true, Ordering::Relaxed);
    check(
        &mut gateway,
        &mut bob,
        "bob",
        bob_home,
        tcp_syn(BOB, GATEWAY, 443),
        Expect::Deliver,
    );
}

#[test]
fn under_load_a_handshake_gets_a_cookie_and_succeeds_with_it() {
    // No handshake a second without a cookie: every initiation proves its address first.
    let mut gateway = Gateway::new(0);
    let mut alice = Client::new(1, 100);
    let home = outside(1, 40_001);

    let init = alice.initiation();
    let (rx, did) = gateway.receive(&init, home);
    assert_eq!(rx, Rx::Cookie);
    let [Did::Send(to, cookie)] = &did[..] else {
        panic!("expected a cookie reply, got {did:?}");
    };
    assert_eq!((*to, cookie.len(), cookie[0]), (home, 64, 3));
    // Nothing about the peer changed: the gateway did no Diffie-Hellman for it.
    assert_eq!(gateway.endpoint("alice"), None);
    assert_eq!(alice.answer(cookie), None);

    // The retried initiation carries the cookie's MAC, which is good only from `home`.
    let init = alice.initiation();
    assert_eq!(gateway.receive(&init, outside(9, 9)).0, Rx::Cookie);
    let (rx, did) = gateway.receive(&init, home);
    assert_eq!(rx, Rx::Handshake);
    let [Did::Send(_, response)] = &did[..] else {
        panic!("expected a handshake response, got {did:?}");
    };
    let Some(keepalive) = alice.answer(response) else {
        panic!("the client confirmed nothing");
    };
    assert_eq!(gateway.receive(&keepalive, home).0, Rx::Nothing);
    assert_eq!(gateway.endpoint("alice"), Some(home));
    let counters = gateway.core.counters();
    assert_eq!(counters.cookies.load(Ordering::Relaxed), 2);
    assert_eq!(counters.handshakes_ok.load(Ordering::Relaxed), 1);
}

#[test]
fn a_peer_removed_mid_session_is_cut_at_its_next_packet() {
    let mut gateway = Gateway::new(HANDSHAKES_BEFORE_COOKIES);
    let mut alice = Client::new(1, 100);
    let mut bob = Client::new(2, 200);
    let alice_home = outside(1, 40_001);
    let bob_home = outside(2, 40_002);
    connect(&mut gateway, &mut alice, alice_home);
    connect(&mut gateway, &mut bob, bob_home);
    let packet = tcp_syn(ALICE, GATEWAY, 5432);
    let datagram = alice.encrypt(&packet);
    assert_eq!(gateway.receive(&datagram, alice_home).0, Rx::Delivered);

    gateway.publish(&["bob"]);
    let datagram = alice.encrypt(&packet);
    assert_eq!(
        gateway.receive(&datagram, alice_home),
        (Rx::Dropped(Discard::UnknownSession), Vec::new())
    );
    assert_eq!(
        gateway.receive(&alice.initiation(), alice_home),
        (Rx::Dropped(Discard::HandshakeRejected), Vec::new())
    );
    assert_eq!(
        gateway.send(&tcp_syn(GATEWAY, ALICE, 40_000)).0,
        Tx::Skipped(TxSkip::NoRoute)
    );
    // Bob's session goes on.
    let echo = echo(BOB, GATEWAY);
    let datagram = bob.encrypt(&echo);
    assert_eq!(
        gateway.receive(&datagram, bob_home),
        (Rx::Delivered, vec![Did::Deliver(echo)])
    );
}

fn hinted(gateway: &Gateway) -> u64 {
    gateway
        .core
        .counters()
        .initiations_hinted
        .load(Ordering::Relaxed)
}

/// A device renewing its session from where it last spoke goes straight to its peer's
/// session; an initiation from an address another peer last used is answered all the same, and
/// a hint never answers for a peer that is no longer admitted.
#[test]
fn an_initiation_from_a_peers_last_address_goes_straight_to_its_session() {
    let mut gateway = Gateway::new(HANDSHAKES_BEFORE_COOKIES);
    let mut alice = Client::new(1, 100);
    let mut bob = Client::new(2, 200);
    let shared = outside(1, 40_001);
    connect(&mut gateway, &mut alice, shared);
    assert_eq!(hinted(&gateway), 0, "a first initiation has no hint");
    connect(&mut gateway, &mut alice, shared);
    assert_eq!(hinted(&gateway), 1);

    // Bob from alice's address: the hint names alice, whose session refuses bob's key; the
    // key is read and bob is answered, once.
    let (rx, did) = gateway.receive(&bob.initiation(), shared);
    assert_eq!(rx, Rx::Handshake);
    let [Did::Send(to, response)] = &did[..] else {
        panic!("expected one handshake response, got {did:?}");
    };
    assert_eq!(*to, shared);
    let keepalive = bob.answer(response).expect("bob confirms");
    assert_eq!(gateway.receive(&keepalive, shared).0, Rx::Nothing);
    assert_eq!(gateway.endpoint("bob"), Some(shared));
    // Alice's session was not disturbed by bob's initiation.
    let packet = tcp_syn(ALICE, GATEWAY, 5432);
    assert_eq!(
        gateway.receive(&alice.encrypt(&packet), shared).0,
        Rx::Delivered
    );
    // The address is bob's now.
    connect(&mut gateway, &mut bob, shared);
    assert_eq!(hinted(&gateway), 2);

    // Bob removed: his hint answers nothing.
    gateway.publish(&["alice"]);
    assert_eq!(
        gateway.receive(&bob.initiation(), shared),
        (Rx::Dropped(Discard::HandshakeRejected), Vec::new())
    );
    assert_eq!(gateway.core.hints.get(shared), None);
    connect(&mut gateway, &mut alice, shared);
    assert_eq!(hinted(&gateway), 2);
}

#[test]
fn datagrams_that_are_not_wireguard_are_dropped_before_any_lookup() {
    let mut gateway = Gateway::new(HANDSHAKES_BEFORE_COOKIES);
    let from = outside(1, 1);
    let cases: [(&[u8], Discard); 5] = [
        (b"", Discard::Malformed),
        (b"GET / HTTP/1.1\r\n", Discard::Malformed),
        (&[1, 0, 0, 0, 0, 0, 0, 0], Discard::Malformed),
        (&[4; 32], Discard::Malformed),
        (
            &[
                4, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                0, 0, 0, 0, 0, 0, 0, 0,
            ],
            Discard::UnknownSession,
        ),
    ];
    for (datagram, discard) in cases {
        assert_eq!(
            gateway.receive(datagram, from),
            (Rx::Dropped(discard), Vec::new()),
            "{datagram:?}"
        );
    }
    let counters = gateway.core.counters();
    assert_eq!(counters.invalid.load(Ordering::Relaxed), 5);
}

#[test]
fn multicast_from_the_host_has_no_route_and_is_not_counted() {
    let gateway = Gateway::new(HANDSHAKES_BEFORE_COOKIES);
    let mut gateway = gateway;
    assert_eq!(
        gateway.send(&udp(GATEWAY, [224, 0, 0, 251], 5353)).0,
        Tx::Skipped(TxSkip::NoRoute)
    );
    assert_eq!(
        gateway.send(&udp(GATEWAY, NOBODY, 53)).0,
        Tx::Skipped(TxSkip::NoRoute)
    );
    assert_eq!(gateway.send(b"not ip").0, Tx::Skipped(TxSkip::NotIp));
    let counters = gateway.core.counters();
    assert_eq!(counters.no_route.load(Ordering::Relaxed), 1);
}

#[test]
fn the_gateway_initiates_to_a_remembered_endpoint() {
    let mut gateway = Gateway::new(HANDSHAKES_BEFORE_COOKIES);
    let mut alice = Client::new(1, 100);
    let home = outside(1, 40_001);
    let target = Target {
        remote: home,
        local: None,
    };
    let mut did = Vec::new();
    let mut buf = [0u8; 256];
    let cell = Arc::clone(gateway.cell("alice"));
    assert!(gateway
        .core
        .initiate(&cell, target, &mut buf, &mut |action| did
            .push(owned(action))));
    let [Did::Send(to, init)] = &did[..] else {
        panic!("expected one initiation, got {did:?}");
    };
    assert_eq!((*to, init[0]), (home, 1));

    // Alice's response finds the gateway's session by its index and completes it; the
    // gateway confirms with a keepalive.
    let Some(response) = alice.answer(init) else {
        panic!("the client did not answer");
    };
    let (rx, did) = gateway.receive(&response, home);
    assert_eq!(rx, Rx::Handshake);
    let [Did::Send(to, keepalive)] = &did[..] else {
        panic!("expected a keepalive, got {did:?}");
    };
    assert_eq!(*to, home);
    assert_eq!(alice.answer(keepalive), None);
    let packet = echo(ALICE, GATEWAY);
    let datagram = alice.encrypt(&packet);
    assert_eq!(
        gateway.receive(&datagram, home),
        (Rx::Delivered, vec![Did::Deliver(packet)])
    );
}

#[test]
fn a_peer_gets_its_session_state_when_it_first_handshakes() {
    let mut gateway = Gateway::new(HANDSHAKES_BEFORE_COOKIES);
    let tick = |gateway: &Gateway| {
        let mut buf = vec![0u8; 256];
        let mut did = Vec::new();
        gateway
            .core
            .tick(&gateway.snapshot, &mut buf, &mut |a| did.push(owned(a)));
        did
    };
    // Registered peers that never showed up hold no boringtun state, and the timers neither
    // make it nor send anything for them.
    assert!(tick(&gateway).is_empty());
    for name in ["alice", "bob"] {
        assert!(
            gateway.cell(name).lock().tunn.existing().is_none(),
            "{name}"
        );
    }
    let mut alice = Client::new(1, 100);
    connect(&mut gateway, &mut alice, outside(1, 40_001));
    assert!(gateway.cell("alice").lock().tunn.existing().is_some());
    assert!(gateway.cell("bob").lock().tunn.existing().is_none());
    // Alice's session works as before: her data gets through.
    let packet = tcp_syn(ALICE, GATEWAY, 5432);
    let datagram = alice.encrypt(&packet);
    assert_eq!(
        gateway.receive(&datagram, outside(1, 40_001)),
        (Rx::Delivered, vec![Did::Deliver(packet)])
    );
}
