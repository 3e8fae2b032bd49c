//! The WireGuard endpoint before any handshake completes: [`Core::datagram`] over arbitrary
//! datagrams from arbitrary sources, with a snapshot of two admitted peers (alice and bob).
//!
//! Input: one flags byte (bit 0: answer every handshake with a cookie, as under load; bit 1:
//! the receive thread's buffers, which keep an admitted packet in place), then
//! records of a source byte (bits 0-1 pick the address, the rest the port), a big-endian
//! `u16` length and that many bytes of datagram.
//!
//! Checked, for every datagram: no panic; the outcome is a named one; nothing is delivered to
//! the TUN side (nor kept for it) and nothing is denied by the ACL (both need a decrypted
//! packet, and no session exists whose keys the fuzzer could know); answers go only to the
//! datagram's source, a handshake answer only for a 148-byte initiation and a cookie reply is
//! 64 bytes. After the datagrams, a packet to each peer goes to the source of an accepted
//! handshake, or nowhere: a peer's endpoint is learned from authenticated datagrams only.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use boringtun::noise::{Tunn, TunnResult};
use boringtun::x25519::{PublicKey, StaticSecret};
use crmguard_core::acl::{Acl, LocalTime, PortalListening};
use crmguard_core::config::{self, Config};
use crmguard_core::keys::{self, KeyPair};
use crmguard_core::peers::{self, Entry, Table};
use crmguard_inspect::{Inspector, Tick};
use crmguard_vpn::tunnel::{Action, Core, Held, Now, PeerCell, Rx, Scratch, Snapshot, Target, Tx};

const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
const PEERS: [(u8, Ipv4Addr); 2] = [
    (1, Ipv4Addr::new(10, 77, 0, 10)),
    (2, Ipv4Addr::new(10, 77, 0, 11)),
];
const PORTAL: u16 = 8443;
const GATEWAY_PRIVATE: [u8; 32] = [7; 32];

const NOW: Now = Now {
    wall: UNIX_EPOCH,
    local: LocalTime {
        weekday: 0,
        minute_of_day: 600,
    },
    tick: Tick { secs: 0, unix: 0 },
};

fn secret(n: u8) -> StaticSecret {
    StaticSecret::from([n; 32])
}

/// What stays the same between inputs: the configuration, its ACL and inspection policy, and
/// an inspector (which no datagram of an input reaches: there is no decrypted packet).
struct Fixed {
    config: Config,
    acl: Acl,
    inspect: crmguard_inspect::Policy,
    inspector: Arc<Inspector>,
}

fn fixed() -> &'static Fixed {
    static FIXED: OnceLock<Fixed> = OnceLock::new();
    FIXED.get_or_init(|| {
        let mut text = format!(
            "[vpn]\naddress = \"{GATEWAY}/24\"\n[mfa]\nportal_port = {PORTAL}\n\
             [[role]]\nname = \"dba\"\nallow = [\"tcp/5432\"]\n\
             [[role]]\nname = \"sales\"\nallow = [\"tcp/443\"]\nmfa = true\n"
        );
        for ((key, address), (name, role)) in PEERS.iter().zip([("alice", "dba"), ("bob", "sales")])
        {
            let public = PublicKey::from(&secret(*key)).to_bytes();
            text.push_str(&format!(
                "[[peer]]\nname = \"{name}\"\npublic_key = \"{}\"\naddress = \"{address}\"\nrole = \"{role}\"\n",
                keys::encode(&public)
            ));
        }
        let config = match config::parse(&text, Path::new("/etc/crmguard/crmguard.toml")) {
            Ok(config) => config,
            Err(e) => panic!("the fuzz target's configuration: {e}"),
        };
        let portal = Arc::new(PortalListening::default());
        portal.set(true);
        let acl = Acl::new(&config, GATEWAY, None, PORTAL, portal);
        let inspect = crmguard_inspect::Policy::new(&config.inspection);
        let metrics = crmguard_inspect::InspectMetrics::unregistered()
            .unwrap_or_else(|e| panic!("inspection metrics: {e}"));
        let inspector = Arc::new(Inspector::new(
            1024,
            metrics,
            Box::new(crmguard_inspect::event::Discard),
        ));
        Fixed {
            config,
            acl,
            inspect,
            inspector,
        }
    })
}

/// A fresh endpoint: the core and a snapshot whose peers have no session yet.
fn endpoint(handshakes_before_cookies: u64) -> (Core, Snapshot) {
    let fixed = fixed();
    let keys = KeyPair::from_private(GATEWAY_PRIVATE);
    let (admitted, _) = peers::admitted(&fixed.config, SystemTime::now());
    let entries = admitted
        .into_iter()
        .zip(1u32..)
        .map(|(info, index)| Entry {
            slot: Arc::new(PeerCell::new(&keys, info.public_key, index)),
            info,
            index,
        })
        .collect();
    let (table, conflicts) = Table::build(entries);
    assert!(conflicts.is_empty(), "{conflicts:?}");
    let core = Core::new(
        keys,
        handshakes_before_cookies,
        Arc::clone(&fixed.inspector),
    );
    let snapshot = Snapshot {
        table,
        acl: fixed.acl.clone(),
        inspect: fixed.inspect.clone(),
    };
    (core, snapshot)
}

fn source(byte: u8) -> Target {
    let ip = match byte & 3 {
        0 => IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)),
        1 => IpAddr::V4(Ipv4Addr::new(198, 51, 100, 7)),
        2 => IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1)),
        _ => IpAddr::V6(Ipv4Addr::new(192, 0, 2, 1).to_ipv6_mapped()),
    };
    Target {
        remote: SocketAddr::new(ip, 51_000 + u16::from(byte >> 2)),
        local: None,
    }
}

/// An ICMP echo request from the gateway to `dst`, as the TUN device hands it over.
fn echo_to(dst: Ipv4Addr) -> Vec<u8> {
    let mut packet = vec![
        0x45, 0, 0, 28, 0, 0, 0x40, 0, 64, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 8, 0, 0, 0, 0, 1, 0, 1,
    ];
    packet[12..16].copy_from_slice(&GATEWAY.octets());
    packet[16..20].copy_from_slice(&dst.octets());
    let checksum = |bytes: &[u8]| {
        let mut sum: u32 = 0;
        for pair in bytes.chunks(2) {
            let word = u16::from_be_bytes([pair[0], pair.get(1).copied().unwrap_or(0)]);
            sum += u32::from(word);
        }
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        !u16::try_from(sum).unwrap_or(0)
    };
    let ip = checksum(&packet[..20]).to_be_bytes();
    packet[10..12].copy_from_slice(&ip);
    let icmp = checksum(&packet[20..]).to_be_bytes();
    packet[22..24].copy_from_slice(&icmp);
    packet
}

/// Feeds the datagrams of `data` to a fresh endpoint.
pub fn run(data: &[u8]) {
    let Some((&flags, mut rest)) = data.split_first() else {
        return;
    };
    let (core, snapshot) = endpoint(if flags & 1 == 1 { 0 } else { 1_000 });
    // The receive thread's buffers keep an admitted packet in place, behind a virtio header's
    // room; the handshake thread's and the tests' hand it to an action.
    let mut scratch = if flags & 2 == 2 {
        Scratch::keeping_delivered(10)
    } else {
        Scratch::new()
    };
    // The sources of accepted handshakes: the only places a peer's endpoint may be.
    let mut accepted: Vec<SocketAddr> = Vec::new();
    while let [from, high, low, tail @ ..] = rest {
        let len = usize::from(u16::from_be_bytes([*high, *low])).min(tail.len());
        let (datagram, after) = tail.split_at(len);
        rest = after;
        let from = source(*from);
        let mut sends: Vec<(Target, usize)> = Vec::new();
        let rx = core.datagram(
            &snapshot,
            datagram,
            from,
            NOW,
            &mut scratch,
            &mut |action| match action {
                Action::Send { to, datagram } => sends.push((to, datagram.len())),
                Action::Deliver(packet) => panic!(
                    "a packet of {} bytes delivered from a datagram no session authenticated",
                    packet.len()
                ),
                Action::Denied { peer, .. } => {
                    panic!("the ACL saw a packet of {peer} that no session decrypted")
                }
            },
        );
        for (to, _) in &sends {
            assert_eq!(*to, from, "an answer to someone else than the sender");
        }
        assert!(
            !scratch.has_delivered(),
            "a packet kept for the TUN device from a datagram no session authenticated"
        );
        match rx {
            Rx::Handshake => {
                assert!(
                    datagram.len() == 148 && datagram[0] == 1,
                    "a handshake accepted from a {}-byte datagram of type {}",
                    datagram.len(),
                    datagram[0]
                );
                assert!(
                    sends.iter().any(|&(_, len)| len == 92),
                    "an accepted initiation without a response"
                );
                accepted.push(from.remote);
            }
            Rx::Cookie => {
                assert_eq!(
                    sends.iter().map(|&(_, len)| len).collect::<Vec<_>>(),
                    [64],
                    "a cookie reply that is not one 64-byte message"
                );
            }
            Rx::Dropped(discard) => {
                assert!(!discard.as_str().is_empty());
                assert!(sends.is_empty(), "a dropped datagram answered: {discard:?}");
            }
            Rx::Delivered | Rx::Reset | Rx::Denied(_) | Rx::Nothing => {
                panic!("{rx:?} for a datagram no session authenticated")
            }
        }
    }
    // Where the endpoint would send each peer a packet now.
    let mut out = vec![0u8; 2048];
    for (_, address) in PEERS {
        let mut held = Held::default();
        let tx = core.encrypt(
            &snapshot,
            &mut held,
            &echo_to(address),
            NOW.tick,
            &mut out,
            &mut |_| panic!("a reset for an echo request"),
        );
        held.release();
        if let Tx::Datagram { to, .. } = tx {
            assert!(
                accepted.contains(&to.remote),
                "{address}'s endpoint {} was learned from no accepted handshake",
                to.remote
            );
        }
    }
}

/// A peer's own WireGuard client: boringtun's `Tunn`.
fn client(key: u8, index: u32) -> Tunn {
    let gateway = KeyPair::from_private(GATEWAY_PRIVATE).public;
    Tunn::new(secret(key), gateway, None, None, index, None)
}

fn initiation(tunn: &mut Tunn) -> Vec<u8> {
    let mut buf = vec![0u8; 2048];
    match tunn.format_handshake_initiation(&mut buf, true) {
        TunnResult::WriteToNetwork(init) => init.to_vec(),
        _ => panic!("boringtun made no initiation"),
    }
}

fn record(input: &mut Vec<u8>, from: u8, datagram: &[u8]) {
    input.push(from);
    input.extend_from_slice(&u16::try_from(datagram.len()).unwrap_or(0).to_be_bytes());
    input.extend_from_slice(datagram);
}

/// Real handshake initiations of both peers and of an unknown key, from IPv4 and IPv6
/// sources, with and without load; and a whole exchange with a gateway of the same keys: the
/// initiation, then the client's first data message (a keepalive, then a packet), which the
/// fuzzed endpoint (another session) cannot authenticate.
pub fn seeds() -> Vec<(String, Vec<u8>)> {
    let mut seeds = Vec::new();
    for (name, key, from, flags) in [
        ("alice-init", 1, 0, 0),
        ("bob-init-v6", 2, 2, 0),
        ("unknown-init", 9, 1, 0),
        ("alice-init-under-load", 1, 3, 1),
        ("alice-init-kept-in-place", 1, 0, 2),
    ] {
        let mut input = vec![flags];
        record(&mut input, from, &initiation(&mut client(key, 100)));
        seeds.push((format!("wg-{name}"), input));
    }

    let (core, snapshot) = endpoint(1_000);
    let mut scratch = Scratch::new();
    let mut alice = client(1, 200);
    let init = initiation(&mut alice);
    let from = source(0);
    let mut response = Vec::new();
    core.datagram(&snapshot, &init, from, NOW, &mut scratch, &mut |action| {
        if let Action::Send { datagram, .. } = action {
            response = datagram.to_vec();
        }
    });
    let mut buf = vec![0u8; 2048];
    let keepalive = match alice.decapsulate(Some(IpAddr::V4(GATEWAY)), &response, &mut buf) {
        TunnResult::WriteToNetwork(keepalive) => keepalive.to_vec(),
        _ => panic!("alice's client refused the gateway's response"),
    };
    let mut ping = echo_to(GATEWAY);
    ping[12..16].copy_from_slice(&PEERS[0].1.octets());
    ping[16..20].copy_from_slice(&GATEWAY.octets());
    let data = match alice.encapsulate(&ping, &mut buf) {
        TunnResult::WriteToNetwork(data) => data.to_vec(),
        _ => panic!("alice's client has no session"),
    };
    let mut input = vec![0];
    record(&mut input, 0, &init);
    record(&mut input, 0, &keepalive);
    record(&mut input, 0, &data);
    seeds.push(("wg-alice-exchange".to_owned(), input));
    let mut input = vec![0];
    record(&mut input, 0, &response);
    seeds.push(("wg-gateway-response".to_owned(), input));
    seeds
}
