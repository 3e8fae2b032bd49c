//! Unit tests of the reference model: table-driven, one frame and the
//! (action, reason) it must get. The golden packets of the privileged suite
//! run through the model there too (`golden_cases_hold_in_the_model`).

use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::Path;

use super::*;
use crate::abi::Reason::*;
use crmguard_lab::frames::*;

const SEC: u64 = 1_000_000_000;
/// A CLOCK_MONOTONIC time well after boot.
const NOW: u64 = 1_000 * SEC;

const POLICY: &str = r#"
[firewall]
default = "drop"
icmp = "essential"
icmp_echo_per_source_pps = 1

[firewall.limits]
per_source_pps = 1
per_source_burst = 3
syn_per_source_per_s = 1
global_syn_per_s = 1000

[firewall.deny]
sources = ["203.0.113.66", "198.51.100.0/24", "2001:db8:bad::66", "2001:db8:dead::/48"]

[[firewall.service]]
name = "ssh"
proto = "tcp"
ports = [22]
from = ["192.0.2.0/24", "2001:db8:a::/48"]

[[firewall.service]]
name = "web"
proto = "tcp"
ports = [443]
new_conn_per_source_per_s = 1
per_source_pps = 2

[[firewall.service]]
name = "dns"
proto = "udp"
ports = [53]
from = ["192.0.2.0/24"]

[vpn]
listen_port = 51820
address = "10.77.0.1/24"
handshake_per_source_pps = 1
handshake_burst = 2
"#;

const ADMIN: &str = "192.0.2.5";
const STRANGER: &str = "203.0.113.5";
const ADMIN6: &str = "2001:db8:a::5";
const STRANGER6: &str = "2001:db8:b::5";

fn compiled(config: &str) -> CompiledPolicy {
    let config = crate::config::parse(config, Path::new("model.toml")).expect("config");
    let mut policy = crate::policy::compile(&config).expect("policy");
    policy.config.syn_per_cpu_per_s = policy.global_syn_per_s;
    policy
}

fn state() -> ModelState {
    ModelState::new(compiled(POLICY))
}

/// [`state`] with `[firewall.limits] ipv6_prefix` set.
fn state_with_v6_prefix(bits: u8) -> ModelState {
    let policy = POLICY.replace(
        "global_syn_per_s = 1000\n",
        &format!("global_syn_per_s = 1000\nipv6_prefix = {bits}\n"),
    );
    ModelState::new(compiled(&policy))
}

/// Rate limits off, so that tables of many frames from one source only test
/// what they are about.
fn unlimited() -> ModelState {
    let mut state = state();
    let cfg = &mut state.policy.config;
    cfg.src_pps = 0;
    cfg.src_syn_per_s = 0;
    cfg.syn_per_cpu_per_s = 0;
    cfg.icmp_echo_pps = 0;
    cfg.wg_handshake_pps = 0;
    for svc in state.policy.services.values_mut() {
        svc.src_pps = 0;
        svc.syn_pps = 0;
    }
    state
}

fn drop(reason: Reason) -> (Action, Reason) {
    (Action::Drop, reason)
}

fn pass(reason: Reason) -> (Action, Reason) {
    (Action::Pass, reason)
}

/// Runs every frame of `cases` in order through one state at `NOW`.
fn check(state: &mut ModelState, cases: &[(&str, Vec<u8>, (Action, Reason))]) {
    let mut failures = Vec::new();
    for (name, frame, expected) in cases {
        let got = decide(state, frame, NOW);
        if got != *expected {
            failures.push(format!("{name}: got {got:?}, want {expected:?}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

fn with_ip_bytes(frame: Vec<u8>, at: usize, bytes: &[u8]) -> Vec<u8> {
    let mut f = frame;
    f[14 + at..14 + at + bytes.len()].copy_from_slice(bytes);
    f
}

#[test]
fn ethernet_and_ip_headers() {
    let tcp22 = ipv4(v4(ADMIN, 6), &tcp(22, 5));
    check(
        &mut unlimited(),
        &[
            ("empty frame", vec![], drop(Malformed)),
            ("13 bytes", vec![0; 13], drop(Malformed)),
            ("arp", eth(&[], ETH_ARP, &[0; 28]), pass(NonIp)),
            ("arp without payload", eth(&[], ETH_ARP, &[]), pass(NonIp)),
            (
                "two tags",
                eth(&[VLAN_AD, VLAN_Q], ETH_IP, &tcp22),
                pass(Service),
            ),
            (
                "three tags",
                eth(&[VLAN_AD, VLAN_Q, VLAN_Q], ETH_IP, &tcp22),
                drop(Malformed),
            ),
            (
                "an unknown TPID is not a tag",
                eth(&[0x9100], ETH_IP, &tcp22),
                pass(NonIp),
            ),
            (
                "ipv4 of 19 bytes",
                eth(&[], ETH_IP, &tcp22[..19]),
                drop(Malformed),
            ),
            (
                "ipv4 total length of 19",
                with_ip_bytes(eth(&[], ETH_IP, &tcp22), 2, &19u16.to_be_bytes()),
                drop(Malformed),
            ),
            (
                "ipv4 total length of exactly the header",
                with_ip_bytes(eth(&[], ETH_IP, &tcp22), 2, &20u16.to_be_bytes()),
                drop(Malformed),
            ),
            (
                "ipv4 with 40 bytes of options",
                eth(
                    &[],
                    ETH_IP,
                    &ipv4(
                        V4 {
                            options: 40,
                            ..v4(ADMIN, 6)
                        },
                        &tcp(22, 5),
                    ),
                ),
                pass(Service),
            ),
            (
                "ipv4 with trailing padding",
                {
                    let mut f = eth(&[], ETH_IP, &tcp22);
                    f.extend_from_slice(&[0xee; 30]);
                    f
                },
                pass(Service),
            ),
            (
                "ipv6 version 4",
                {
                    let mut p = ipv6(ADMIN6, 6, &tcp(22, 5));
                    p[0] = 0x40;
                    eth(&[], ETH_IP6, &p)
                },
                drop(Malformed),
            ),
            (
                "ipv6 header of 39 bytes",
                eth(&[], ETH_IP6, &ipv6(ADMIN6, 59, &[])[..39]),
                drop(Malformed),
            ),
            (
                "ipv6 no next header",
                eth(&[], ETH_IP6, &ipv6(STRANGER6, 59, &[])),
                drop(DefaultDrop),
            ),
            (
                "icmpv6 inside ipv4",
                eth(&[], ETH_IP, &ipv4(v4(STRANGER, 58), &icmp(128, 0))),
                drop(DefaultDrop),
            ),
        ],
    );
}

fn chain(headers: &[Vec<u8>], tail: &[u8]) -> Vec<u8> {
    let mut payload: Vec<u8> = headers.concat();
    payload.extend_from_slice(tail);
    payload
}

#[test]
fn ipv6_extension_chains() {
    let t = tcp(22, 5);
    let six: Vec<Vec<u8>> = (0..6).map(|i| ext(if i == 5 { 6 } else { 60 })).collect();
    let six_of_60: Vec<Vec<u8>> = (0..6).map(|_| ext(60)).collect();
    let seven: Vec<Vec<u8>> = (0..7).map(|i| ext(if i == 6 { 6 } else { 60 })).collect();
    let v6 = |first: u8, payload: Vec<u8>| eth(&[], ETH_IP6, &ipv6(ADMIN6, first, &payload));
    check(
        &mut unlimited(),
        &[
            ("six headers", v6(60, chain(&six, &t)), pass(Service)),
            (
                "seven headers",
                v6(60, chain(&seven, &t)),
                drop(Ipv6ExtHeader),
            ),
            (
                "a truncated seventh header is malformed, not refused",
                v6(60, chain(&six_of_60, &[6])),
                drop(Malformed),
            ),
            (
                "a seventh header running past the frame",
                v6(60, chain(&six_of_60, &[6, 0, 0, 0])),
                drop(Malformed),
            ),
            (
                "a complete seventh header is refused",
                v6(60, chain(&six_of_60, &ext(6))),
                drop(Ipv6ExtHeader),
            ),
            (
                "routing and authentication",
                v6(43, chain(&[ext(51), ah(6, 4)], &t)),
                pass(Service),
            ),
            (
                "a long destination-options header",
                v6(60, chain(&[ext_sized(6, 3)], &t)),
                pass(Service),
            ),
            (
                "a header past the frame",
                v6(0, ext_sized(6, 3)[..16].to_vec()),
                drop(Malformed),
            ),
            ("one byte of a header", v6(0, vec![6]), drop(Malformed)),
            (
                "authentication header past the frame",
                v6(51, vec![6, 10, 0, 0, 0, 0, 0, 0]),
                drop(Malformed),
            ),
            (
                "fragment header truncated",
                v6(44, vec![6, 0, 0, 0]),
                drop(Malformed),
            ),
            (
                "mobility",
                v6(135, chain(&[ext(6)], &t)),
                drop(Ipv6ExtHeader),
            ),
            ("hip", v6(139, t.clone()), drop(Ipv6ExtHeader)),
            ("shim6", v6(140, t.clone()), drop(Ipv6ExtHeader)),
            ("experimental 253", v6(253, t.clone()), drop(Ipv6ExtHeader)),
            (
                "experimental 254 behind hop-by-hop",
                v6(0, chain(&[ext(254)], &t)),
                drop(Ipv6ExtHeader),
            ),
            (
                "esp is an upper layer",
                v6(50, t.clone()),
                drop(DefaultDrop),
            ),
            (
                "headers longer than the payload length",
                {
                    let mut f = v6(0, chain(&[ext_sized(6, 3)], &[]));
                    // The payload length says 8, the frame holds 32.
                    f[18..20].copy_from_slice(&8u16.to_be_bytes());
                    f
                },
                drop(Malformed),
            ),
            (
                "payload length past the frame",
                {
                    let mut f = v6(6, t.clone());
                    f[18..20].copy_from_slice(&21u16.to_be_bytes());
                    f
                },
                drop(Malformed),
            ),
        ],
    );
}

#[test]
fn transport_bounds_use_frame_and_ip_lengths() {
    // IPv4 total length covers 19 bytes of TCP; the frame holds 20 and more.
    let short_tcp = {
        let mut payload = tcp(22, 5);
        payload.extend_from_slice(&[0; 8]);
        let mut f = eth(&[], ETH_IP, &ipv4(v4(ADMIN, 6), &payload));
        f[16..18].copy_from_slice(&(20u16 + 19).to_be_bytes());
        f
    };
    let udp_len_past_ip = {
        let mut u = udp(53, b"abc");
        u.extend_from_slice(&[0; 8]);
        let mut f = eth(&[], ETH_IP, &ipv4(v4(ADMIN, 17), &u));
        f[16..18].copy_from_slice(&(20u16 + 10).to_be_bytes());
        f
    };
    let icmp_short = {
        let mut f = eth(&[], ETH_IP, &ipv4(v4(STRANGER, 1), &icmp(8, 0)));
        f[16..18].copy_from_slice(&(20u16 + 3).to_be_bytes());
        f
    };
    check(
        &mut unlimited(),
        &[
            ("tcp beyond the ip length", short_tcp, drop(Malformed)),
            (
                "udp length beyond the ip length",
                udp_len_past_ip,
                drop(Malformed),
            ),
            ("icmp beyond the ip length", icmp_short, drop(Malformed)),
            (
                "tcp options beyond the ip length",
                {
                    let mut f = eth(&[], ETH_IP, &ipv4(v4(ADMIN, 6), &tcp(22, 6)));
                    f[16..18].copy_from_slice(&(20u16 + 20).to_be_bytes());
                    f
                },
                drop(Malformed),
            ),
            (
                "tcp doff of 15 fully present",
                eth(&[], ETH_IP, &ipv4(v4(ADMIN, 6), &tcp(22, 15))),
                pass(Service),
            ),
            (
                "syn-ack is not a new connection but is a service packet",
                eth(
                    &[],
                    ETH_IP,
                    &ipv4(v4(ADMIN, 6), &tcp_segment(1, 22, TCP_SYN | TCP_ACK, 5, 0)),
                ),
                pass(Service),
            ),
            (
                "udp of exactly 8 bytes",
                udp4(ADMIN, 53, &[]),
                pass(Service),
            ),
            (
                "tcp to the wireguard port",
                tcp4(STRANGER, 51820),
                drop(DefaultDrop),
            ),
        ],
    );
}

#[test]
fn wireguard_shapes() {
    let mut cases = Vec::new();
    let table: [(u8, u8, usize, Reason); 14] = [
        (1, 0, 148, Wireguard),
        (1, 0, 147, WgMalformed),
        (1, 0, 149, WgMalformed),
        (2, 0, 92, Wireguard),
        (2, 0, 93, WgMalformed),
        (3, 0, 64, Wireguard),
        (3, 0, 63, WgMalformed),
        (4, 0, 32, Wireguard),
        (4, 0, 1400, Wireguard),
        (4, 0, 31, WgMalformed),
        (4, 2, 64, WgMalformed),
        (0, 0, 64, WgMalformed),
        (5, 0, 64, WgMalformed),
        (4, 0, 3, WgMalformed),
    ];
    for (t, reserved, len, reason) in table {
        let expected = if reason.is_pass() {
            pass(reason)
        } else {
            drop(reason)
        };
        cases.push(("wg", udp4(STRANGER, 51820, &wg(t, reserved, len)), expected));
        cases.push((
            "wg6",
            udp6(STRANGER6, 51820, &wg(t, reserved, len)),
            expected,
        ));
    }
    check(&mut unlimited(), &cases);
}

fn ban(expires_ns: u64) -> abi::Ban {
    abi::Ban {
        expires_ns,
        reason: 1,
        _pad: 0,
    }
}

#[test]
fn bans_expire_and_the_longest_prefix_decides() {
    let mut state = unlimited();
    let bans = &mut state.bans;
    bans.flags = abi::BAN_HOSTS4 | abi::BAN_HOSTS6 | abi::BAN_PREFIXES4 | abi::BAN_PREFIXES6;
    bans.hosts4.insert([100, 64, 0, 1], ban(NOW + 1));
    bans.hosts4.insert([100, 64, 0, 2], ban(NOW));
    bans.hosts4.insert([100, 64, 0, 3], ban(0));
    let lpm4 = |a: [u8; 4], prefixlen| abi::Lpm4 {
        prefixlen,
        addr_be: a,
    };
    bans.prefixes4.insert(lpm4([100, 65, 0, 0], 16), ban(0));
    bans.prefixes4.insert(lpm4([100, 65, 7, 0], 24), ban(1));
    bans.prefixes4
        .insert(lpm4([100, 66, 0, 0], 15), ban(NOW + SEC));
    let six: Ipv6Addr = "2001:db8:ba::1".parse().expect("v6");
    bans.hosts6.insert(six.octets(), ban(0));
    let net6: Ipv6Addr = "2001:db8:bc::".parse().expect("v6");
    bans.prefixes6.insert(
        abi::Lpm6 {
            prefixlen: 47,
            addr: net6.octets(),
        },
        ban(NOW + 1),
    );
    check(
        &mut state,
        &[
            ("host ban in force", tcp4("100.64.0.1", 443), drop(Banned)),
            (
                "host ban ending now",
                tcp4("100.64.0.2", 443),
                pass(Service),
            ),
            (
                "host ban without end",
                tcp4("100.64.0.3", 443),
                drop(Banned),
            ),
            ("prefix ban", tcp4("100.65.1.1", 443), drop(Banned)),
            (
                "an expired longer prefix hides the shorter one",
                tcp4("100.65.7.1", 443),
                pass(Service),
            ),
            ("a /15", tcp4("100.67.255.1", 443), drop(Banned)),
            ("outside the /15", tcp4("100.68.0.1", 443), pass(Service)),
            ("ipv6 host", tcp6("2001:db8:ba::1", 443), drop(Banned)),
            (
                "below the ipv6 /47",
                tcp6("2001:db8:bb:1::1", 443),
                pass(Service),
            ),
            ("ipv6 /47", tcp6("2001:db8:bc:1::1", 443), drop(Banned)),
            (
                "ipv6 /47 upper half",
                tcp6("2001:db8:bd::1", 443),
                drop(Banned),
            ),
            (
                "above the ipv6 /47",
                tcp6("2001:db8:be::1", 443),
                pass(Service),
            ),
            (
                "deny comes before bans",
                tcp4("203.0.113.66", 443),
                drop(DeniedSource),
            ),
        ],
    );
}

fn frag4(src: &str, proto: u8, id: u16, frag_off: u16, payload: &[u8]) -> Vec<u8> {
    eth(
        &[],
        ETH_IP,
        &ipv4(
            V4 {
                id,
                frag_off,
                ..v4(src, proto)
            },
            payload,
        ),
    )
}

const MF: u16 = 0x2000;

#[test]
fn ban_maps_are_looked_into_only_when_flagged() {
    let mut state = unlimited();
    state.bans.hosts4.insert([100, 64, 0, 1], ban(0));
    let prefix = abi::Lpm4 {
        prefixlen: 16,
        addr_be: [100, 65, 0, 0],
    };
    state.bans.prefixes4.insert(prefix, ban(0));
    let host = tcp4("100.64.0.1", 443);
    let in_prefix = tcp4("100.65.0.1", 443);
    let table = [
        (0, [pass(Service), pass(Service)]),
        (abi::BAN_HOSTS4, [drop(Banned), pass(Service)]),
        (abi::BAN_PREFIXES4, [pass(Service), drop(Banned)]),
        (
            abi::BAN_HOSTS6 | abi::BAN_PREFIXES6,
            [pass(Service), pass(Service)],
        ),
    ];
    for (flags, expected) in table {
        state.bans.flags = flags;
        assert_eq!(
            decide(&mut state, &host, NOW),
            expected[0],
            "flags {flags:#x}"
        );
        assert_eq!(
            decide(&mut state, &in_prefix, NOW),
            expected[1],
            "flags {flags:#x}"
        );
    }
}

#[test]
fn fragments_take_the_first_fragments_verdict() {
    let data = [0u8; 24];
    check(
        &mut unlimited(),
        &[
            ("orphan", frag4(ADMIN, 6, 1, 3, &data), drop(FragmentOrphan)),
            (
                "first fragment to ssh",
                frag4(ADMIN, 6, 1, MF, &tcp(22, 5)),
                pass(Service),
            ),
            (
                "later fragment",
                frag4(ADMIN, 6, 1, 3, &data),
                pass(Fragment),
            ),
            (
                "last fragment",
                frag4(ADMIN, 6, 1, 100, &data),
                pass(Fragment),
            ),
            (
                "tcp fragment at offset 8",
                frag4(ADMIN, 6, 1, MF | 1, &data),
                drop(Malformed),
            ),
            (
                "tcp fragment at offset 16",
                frag4(ADMIN, 6, 1, 2, &data),
                drop(Malformed),
            ),
            (
                "another id",
                frag4(ADMIN, 6, 2, 3, &data),
                drop(FragmentOrphan),
            ),
            (
                "another protocol",
                frag4(ADMIN, 17, 1, 3, &data),
                drop(FragmentOrphan),
            ),
            (
                "first fragment of a stranger",
                frag4(STRANGER, 6, 7, MF, &tcp(22, 5)),
                drop(DefaultDrop),
            ),
            (
                "its later fragment",
                frag4(STRANGER, 6, 7, 10, &data),
                drop(DefaultDrop),
            ),
            (
                "a malformed first fragment",
                frag4(STRANGER, 6, 8, MF, &tcp(22, 5)[..10]),
                drop(Malformed),
            ),
            (
                "its later fragment",
                frag4(STRANGER, 6, 8, 10, &data),
                drop(Malformed),
            ),
            (
                "non-tcp fragment at offset 8",
                frag4(STRANGER, 1, 9, 1, &data),
                drop(FragmentOrphan),
            ),
            (
                "a udp first fragment: the udp length covers the whole datagram",
                {
                    let mut u = udp(53, &[0; 40]);
                    u.truncate(24);
                    frag4(ADMIN, 17, 10, MF, &u)
                },
                pass(Service),
            ),
            (
                "the rest of that datagram",
                frag4(ADMIN, 17, 10, 3, &data),
                pass(Fragment),
            ),
            (
                "a udp first fragment with a length below 8",
                {
                    let mut u = udp(53, &[0; 40]);
                    u[4..6].copy_from_slice(&7u16.to_be_bytes());
                    frag4(ADMIN, 17, 11, MF, &u)
                },
                drop(Malformed),
            ),
            (
                "a fragmented wireguard initiation",
                {
                    let mut u = udp(51820, &wg(1, 0, 148));
                    u.truncate(64);
                    frag4(STRANGER, 17, 12, MF, &u)
                },
                pass(Wireguard),
            ),
            (
                "an unfragmented packet with DF",
                frag4(ADMIN, 6, 11, 0x4000, &tcp(22, 5)),
                pass(Service),
            ),
        ],
    );
}

#[test]
fn fragment_verdicts_expire() {
    let mut state = unlimited();
    let first = frag4(ADMIN, 6, 1, MF, &tcp(22, 5));
    let later = frag4(ADMIN, 6, 1, 3, &[0; 24]);
    assert_eq!(decide(&mut state, &first, NOW), pass(Service));
    let expires = NOW + abi::FRAG_TIMEOUT_S * SEC;
    assert_eq!(decide(&mut state, &later, expires), pass(Fragment));
    assert_eq!(
        decide(&mut state, &later, expires + 1),
        drop(FragmentOrphan)
    );
}

#[test]
fn ipv6_fragments() {
    let data = [0u8; 24];
    let v6 = |src: &str, payload: Vec<u8>| eth(&[], ETH_IP6, &ipv6(src, 44, &payload));
    let mut state = unlimited();
    check(
        &mut state,
        &[
            (
                "first fragment",
                v6(ADMIN6, chain(&[frag6(6, 0, true, 7)], &tcp(22, 5))),
                pass(Service),
            ),
            (
                "later fragment",
                v6(ADMIN6, chain(&[frag6(6, 64, false, 7)], &data)),
                pass(Fragment),
            ),
            (
                "tcp at offset 16",
                v6(ADMIN6, chain(&[frag6(6, 16, true, 7)], &data)),
                drop(Malformed),
            ),
            (
                "an atomic fragment is a whole packet",
                v6(STRANGER6, chain(&[frag6(6, 0, false, 8)], &tcp(22, 5))),
                drop(DefaultDrop),
            ),
            (
                "first fragment behind destination options",
                v6(ADMIN6, chain(&[frag6(60, 0, true, 9), ext(6)], &tcp(22, 5))),
                pass(Service),
            ),
            // A later fragment's payload is never walked as headers: it
            // takes its first fragment's verdict, keyed by the fragment
            // header's next header.
            (
                "its later fragment, whose payload looks like a header then udp",
                v6(ADMIN6, chain(&[frag6(60, 64, false, 9), ext(17)], &[0; 16])),
                pass(Fragment),
            ),
            (
                "its later fragment, whose payload looks like a 56-byte header",
                v6(ADMIN6, chain(&[frag6(60, 64, false, 9)], &[6; 24])),
                pass(Fragment),
            ),
        ],
    );
    // The key holds the identification in host order.
    let key = state.frags.keys().next().expect("a remembered fragment");
    assert_eq!(key.id, 7);
    assert_eq!(key.family, 6);
}

fn flow(local: [u8; 16], remote: [u8; 16], lport: u16, rport: u16, proto: u8) -> abi::FlowKey {
    abi::FlowKey {
        local,
        remote,
        local_port_be: lport.to_be_bytes(),
        remote_port_be: rport.to_be_bytes(),
        proto,
        family: if local[..12] == [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff] {
            4
        } else {
            6
        },
        _pad: 0,
    }
}

fn mapped(a: &str) -> [u8; 16] {
    a.parse::<Ipv4Addr>().expect("v4").to_ipv6_mapped().octets()
}

#[test]
fn replies_to_own_connections() {
    let peer = "93.184.216.34";
    let peer6 = "2606:2800::1";
    let mut state = unlimited();
    state.policy.config.icmp = abi::ICMP_NONE;
    let local = mapped("192.0.2.1");
    state
        .flows
        .insert(flow(local, mapped(peer), 50000, 443, 6), NOW);
    state
        .dgram_flows
        .insert(flow(local, mapped("9.9.9.9"), 40000, 53, 17), NOW - 1);
    state
        .dgram_flows
        .insert(flow(local, mapped(peer), 77, 0, 1), 0);
    // Datagram flows are looked up in their own map only: this one, in the map of TCP
    // connections, lets nothing in.
    state
        .flows
        .insert(flow(local, mapped("9.9.9.9"), 40001, 53, 17), u64::MAX);
    state
        .dgram_flows
        .insert(flow(local, mapped("9.9.9.10"), 40002, 53, 17), u64::MAX);
    // Nor is a TCP connection found among the datagram flows.
    state
        .dgram_flows
        .insert(flow(local, mapped(peer), 50001, 443, 6), u64::MAX);
    state.dgram_flows.insert(
        flow(
            DST6.octets(),
            peer6.parse::<Ipv6Addr>().expect("v6").octets(),
            78,
            0,
            58,
        ),
        u64::MAX,
    );
    let reply = |src: &str, sport: u16, dport: u16, flags: u8| {
        eth(
            &[],
            ETH_IP,
            &ipv4(v4(src, 6), &tcp_segment(sport, dport, flags, 5, 0)),
        )
    };
    let cases = [
        (
            "tcp reply",
            reply(peer, 443, 50000, TCP_SYN | TCP_ACK),
            pass(Established),
        ),
        (
            "from another port",
            reply(peer, 444, 50000, TCP_ACK),
            drop(DefaultDrop),
        ),
        (
            "expired udp flow",
            eth(
                &[],
                ETH_IP,
                &ipv4(v4("9.9.9.9", 17), &udp_datagram(53, 40000, b"a")),
            ),
            drop(DefaultDrop),
        ),
        (
            "echo reply (a flow with expiry 0 has expired)",
            eth(&[], ETH_IP, &ipv4(v4(peer, 1), &icmp_echo(0, 0, 77))),
            drop(DefaultDrop),
        ),
        (
            "icmpv6 echo reply",
            eth(&[], ETH_IP6, &ipv6(peer6, 58, &icmp_echo(129, 0, 78))),
            pass(Established),
        ),
        (
            "icmpv6 echo reply with another id",
            eth(&[], ETH_IP6, &ipv6(peer6, 58, &icmp_echo(129, 0, 79))),
            drop(DefaultDrop),
        ),
        (
            "udp reply of a datagram flow",
            eth(
                &[],
                ETH_IP,
                &ipv4(v4("9.9.9.10", 17), &udp_datagram(53, 40002, b"a")),
            ),
            pass(Established),
        ),
        (
            "udp reply of a flow kept in the map of TCP connections",
            eth(
                &[],
                ETH_IP,
                &ipv4(v4("9.9.9.9", 17), &udp_datagram(53, 40001, b"a")),
            ),
            drop(DefaultDrop),
        ),
        (
            "tcp reply of a connection kept among the datagram flows",
            reply(peer, 443, 50001, TCP_ACK),
            drop(DefaultDrop),
        ),
        (
            "a reply to a service port is judged by the service",
            reply(STRANGER, 443, 22, TCP_ACK),
            drop(DefaultDrop),
        ),
    ];
    check(&mut state, &cases);
    state.policy.config.flags = 0;
    check(
        &mut state,
        &[(
            "replies not allowed",
            reply(peer, 443, 50000, TCP_ACK),
            drop(DefaultDrop),
        )],
    );
}

#[test]
fn icmp_settings() {
    let mut state = unlimited();
    let echo4 = eth(&[], ETH_IP, &ipv4(v4(STRANGER, 1), &icmp(8, 0)));
    let redirect = eth(&[], ETH_IP, &ipv4(v4(STRANGER, 1), &icmp(5, 0)));
    let frag_needed = eth(&[], ETH_IP, &ipv4(v4(STRANGER, 1), &icmp(3, 4)));
    let unreach = eth(&[], ETH_IP, &ipv4(v4(STRANGER, 1), &icmp(3, 1)));
    let mld = eth(&[], ETH_IP6, &ipv6(STRANGER6, 58, &icmp(143, 0)));
    let ns = eth(&[], ETH_IP6, &ipv6(STRANGER6, 58, &icmp(135, 0)));
    let redirect6 = eth(&[], ETH_IP6, &ipv6(STRANGER6, 58, &icmp(137, 0)));
    let nodeinfo = eth(&[], ETH_IP6, &ipv6(STRANGER6, 58, &icmp(139, 0)));
    let table = [
        (
            abi::ICMP_ESSENTIAL,
            [Icmp, DefaultDrop, Icmp, Icmp, Icmp, Icmp, Icmp, DefaultDrop],
        ),
        (
            abi::ICMP_NONE,
            [
                DefaultDrop,
                DefaultDrop,
                Icmp,
                DefaultDrop,
                DefaultDrop,
                Icmp,
                Icmp,
                DefaultDrop,
            ],
        ),
        (abi::ICMP_ALL, [Icmp; 8]),
    ];
    for (setting, reasons) in table {
        state.policy.config.icmp = setting;
        let frames = [
            &echo4,
            &redirect,
            &frag_needed,
            &unreach,
            &mld,
            &ns,
            &redirect6,
            &nodeinfo,
        ];
        for (frame, reason) in frames.iter().zip(reasons) {
            let expected = if reason.is_pass() {
                pass(reason)
            } else {
                drop(reason)
            };
            assert_eq!(
                decide(&mut state, frame, NOW),
                expected,
                "icmp {setting}: {}",
                hex(frame)
            );
        }
    }
}

#[test]
fn gcra_arithmetic() {
    // A burst of b lets b packets through back to back, then one per
    // interval.
    let mut bucket = abi::Rl::default();
    let rate = 4;
    let interval = SEC / 4;
    let mut passed = 0;
    for i in 0..10 {
        if gcra_allow(&mut bucket, NOW + i, rate, 3) {
            passed += 1;
        }
    }
    assert_eq!(passed, 3);
    assert!(!gcra_allow(&mut bucket, NOW + interval - 1, rate, 3));
    assert!(gcra_allow(&mut bucket, NOW + interval, rate, 3));
    assert!(!gcra_allow(&mut bucket, NOW + interval, rate, 3));
    // A bucket made for another rule starts afresh.
    assert!(gcra_allow(&mut bucket, NOW + interval + 2, rate, 1));
    assert_eq!((bucket.rate, bucket.burst), (rate, 1));
    assert!(!gcra_allow(&mut bucket, NOW + interval + 3, rate, 1));
    // A burst of 0 is a burst of 1.
    let mut zero = abi::Rl::default();
    assert!(gcra_allow(&mut zero, NOW, rate, 0));
    assert!(!gcra_allow(&mut zero, NOW, rate, 0));
    // More than 10^9 per second makes the interval 0: everything passes.
    let mut fast = abi::Rl::default();
    for _ in 0..3 {
        assert!(gcra_allow(&mut fast, NOW, 2_000_000_000, 1));
    }
}

#[test]
fn rate_limits() {
    let mut state = state();
    let syn = |src: &str, dport: u16| {
        eth(
            &[],
            ETH_IP,
            &ipv4(v4(src, 6), &tcp_segment(40000, dport, TCP_SYN, 5, 0)),
        )
    };
    let ack = |src: &str, dport: u16| {
        eth(
            &[],
            ETH_IP,
            &ipv4(v4(src, 6), &tcp_segment(40000, dport, TCP_ACK, 5, 0)),
        )
    };
    let now = std::cell::Cell::new(NOW);
    let run = |state: &mut ModelState, frame: &[u8]| {
        now.set(now.get() + 1);
        decide(state, frame, now.get()).1
    };
    // ssh: the global per-source SYN limit (1/s, burst 1).
    assert_eq!(run(&mut state, &syn(ADMIN, 22)), Service);
    assert_eq!(run(&mut state, &syn(ADMIN, 22)), SynFlood);
    // The same source's other packets: the global per-source rate (1/s,
    // burst 3), of which the first SYN took one; the refused one took none.
    assert_eq!(run(&mut state, &ack(ADMIN, 22)), Service);
    assert_eq!(run(&mut state, &ack(ADMIN, 22)), Service);
    assert_eq!(run(&mut state, &ack(ADMIN, 22)), RateLimited);
    // web: its own limits (1 new connection and 2 packets per second), in
    // their own buckets.
    assert_eq!(run(&mut state, &syn(ADMIN, 443)), Service);
    assert_eq!(run(&mut state, &syn(ADMIN, 443)), SynFlood);
    assert_eq!(run(&mut state, &ack(ADMIN, 443)), Service);
    assert_eq!(run(&mut state, &ack(ADMIN, 443)), RateLimited);
    // Echo requests: 1/s, burst 1.
    let echo = eth(&[], ETH_IP, &ipv4(v4(STRANGER, 1), &icmp(8, 0)));
    assert_eq!(run(&mut state, &echo), Icmp);
    assert_eq!(run(&mut state, &echo), IcmpRate);
    // WireGuard initiations: 1/s, burst 2; other messages are not limited.
    let init = udp4(STRANGER, 51820, &wg(1, 0, 148));
    assert_eq!(run(&mut state, &init), Wireguard);
    assert_eq!(run(&mut state, &init), Wireguard);
    assert_eq!(run(&mut state, &init), WgHandshakeRate);
    assert_eq!(
        run(&mut state, &udp4(STRANGER, 51820, &wg(4, 0, 32))),
        Wireguard
    );
    // One second later, one more of each.
    now.set(now.get() + SEC);
    assert_eq!(run(&mut state, &init), Wireguard);
    assert_eq!(run(&mut state, &init), WgHandshakeRate);
    assert_eq!(run(&mut state, &syn(ADMIN, 22)), Service);
    // The host's SYN budget, shared by every source.
    state.policy.config.syn_per_cpu_per_s = 1;
    state.policy.config.src_syn_per_s = 0;
    assert_eq!(run(&mut state, &syn("192.0.2.7", 22)), Service);
    assert_eq!(run(&mut state, &syn("192.0.2.8", 22)), SynFlood);
    assert_eq!(state.syn_budget.rate, 1);
}

#[test]
fn a_new_source_takes_an_idle_place_and_never_an_active_one() {
    let mut state = state();
    let key = |n: u32| abi::RlKey {
        addr: Ipv4Addr::from(0x0a00_0000 + n).to_ipv6_mapped().octets(),
        scope: abi::rl_scope(abi::RL_WG, 0),
    };
    let init = |n: u32| {
        let src = Ipv4Addr::from(0x0a00_0000 + n).to_string();
        udp4(&src, 51820, &wg(1, 0, 148))
    };
    let places = |n: u32| abi::rl_indexes(&key(n));
    let [a, b] = places(0);
    // Two sources holding source 0's two places, and a third whose places are those two.
    let holder_of = |place: u32| {
        (1..5_000_000)
            .find(|&n| {
                places(n)[0] == place && !places(n).contains(&(if place == a { b } else { a }))
            })
            .expect("a source placed there")
    };
    let (first, second) = (holder_of(a), holder_of(b));
    assert_eq!(decide(&mut state, &init(first), NOW).1, Wireguard);
    assert_eq!(decide(&mut state, &init(second), NOW).1, Wireguard);
    assert_eq!(state.buckets.get(&a).map(|s| s.key), Some(key(first)));
    assert_eq!(state.buckets.get(&b).map(|s| s.key), Some(key(second)));
    // While both holders are active, source 0 has no place: the table is busy for it.
    assert_eq!(decide(&mut state, &init(0), NOW).1, RlTableBusy);
    let unit = 1u64 << abi::RL_SEEN_SHIFT;
    let soon = NOW + unit;
    assert_eq!(decide(&mut state, &init(second), soon).1, Wireguard);
    // Once the first holder has been idle long enough, source 0 takes its place; the active
    // one keeps its own.
    let later = soon + unit;
    assert_eq!(decide(&mut state, &init(second), later).1, Wireguard);
    assert_eq!(decide(&mut state, &init(0), later).1, Wireguard);
    assert_eq!(state.buckets.get(&a).map(|s| s.key), Some(key(0)));
    assert_eq!(state.buckets.get(&b).map(|s| s.key), Some(key(second)));
    // The evicted one starts afresh wherever it finds room, or finds the table busy.
    let evicted = decide(&mut state, &init(first), later).1;
    assert!(matches!(evicted, Wireguard | RlTableBusy), "{evicted:?}");
}

#[test]
fn new_buckets_are_bounded_per_cpu_per_second() {
    let mut state = state();
    let init = |n: u32| {
        let src = Ipv4Addr::from(0x0a00_0000 + n).to_string();
        udp4(&src, 51820, &wg(1, 0, 148))
    };
    let budget = abi::RL_NEW_PER_CPU_PER_S;
    // A second's worth of new sources each get a bucket, and pass.
    for n in 0..budget {
        let (_, reason) = decide(&mut state, &init(n), NOW);
        assert_eq!(reason, Wireguard, "source {n}");
    }
    // Each in its slot, but for the few whose slot a later one took over.
    let slots = |state: &ModelState| state.buckets.len();
    let made = slots(&state);
    assert!(
        made <= usize::try_from(budget).expect("fits")
            && made + 64 >= usize::try_from(budget).expect("fits"),
        "{made} slots"
    );
    // The next new source finds the table busy, in every scope, and makes no bucket.
    assert_eq!(decide(&mut state, &init(budget), NOW).1, RlTableBusy);
    let echo = eth(&[], ETH_IP, &ipv4(v4("10.99.0.1", 1), &icmp(8, 0)));
    assert_eq!(decide(&mut state, &echo, NOW).1, RlTableBusy);
    let syn = eth(
        &[],
        ETH_IP,
        &ipv4(v4("10.99.0.2", 6), &tcp_segment(40000, 443, TCP_SYN, 5, 0)),
    );
    assert_eq!(decide(&mut state, &syn, NOW), drop(RlTableBusy));
    assert_eq!(slots(&state), made);
    // A source that has its bucket is judged by it as before.
    assert_eq!(decide(&mut state, &init(0), NOW).1, Wireguard);
    assert_eq!(decide(&mut state, &init(0), NOW).1, WgHandshakeRate);
    // The budget refills at its rate: one more new bucket after 1/budget of a second.
    let later = NOW + SEC / u64::from(budget);
    assert_eq!(decide(&mut state, &init(budget), later).1, Wireguard);
    assert_eq!(decide(&mut state, &init(budget + 1), later).1, RlTableBusy);
    assert_eq!(state.rl_budget.rate, budget);
}

#[test]
fn ipv6_sources_share_their_rate_limits_by_prefix() {
    let syn6 = |src: Ipv6Addr| {
        eth(
            &[],
            ETH_IP6,
            &ipv6_between(src, DST6, 6, &tcp_segment(40000, 22, TCP_SYN, 5, 0)),
        )
    };
    // 60 addresses of one /64 open SSH connections at once against 1 new connection per
    // second per source: under the default /64 key they are one source, so one connects.
    let rotating = |n: u16| Ipv6Addr::new(0x2001, 0xdb8, 0xa, 0, n, n, 0, 1);
    let connected = |state: &mut ModelState| {
        (1..=60u16)
            .filter(|&n| decide(state, &syn6(rotating(n)), NOW).1 == Service)
            .count()
    };
    let mut default = state();
    assert_eq!(default.policy.config.rl_v6_prefix, 64);
    assert_eq!(connected(&mut default), 1);
    // Another /64 has its own bucket.
    let neighbour = Ipv6Addr::new(0x2001, 0xdb8, 0xa, 1, 0, 0, 0, 1);
    assert_eq!(decide(&mut default, &syn6(neighbour), NOW).1, Service);
    // Keyed by whole addresses (128), each of the 60 is its own source.
    let mut whole = state_with_v6_prefix(128);
    assert_eq!(connected(&mut whole), 60);
    // An unaligned prefix masks inside a byte: /57 keeps 2001:db8:a:0000-007f::.
    let mut unaligned = state_with_v6_prefix(57);
    let close = Ipv6Addr::new(0x2001, 0xdb8, 0xa, 0x7f, 1, 2, 3, 4);
    let far = Ipv6Addr::new(0x2001, 0xdb8, 0xa, 0x80, 0, 0, 0, 1);
    assert_eq!(decide(&mut unaligned, &syn6(rotating(1)), NOW).1, Service);
    assert_eq!(decide(&mut unaligned, &syn6(close), NOW).1, SynFlood);
    assert_eq!(decide(&mut unaligned, &syn6(far), NOW).1, Service);
    // IPv4 sources are never masked.
    let mut state = state();
    for src in ["192.0.2.5", "192.0.2.6"] {
        let frame = eth(
            &[],
            ETH_IP,
            &ipv4(v4(src, 6), &tcp_segment(40000, 22, TCP_SYN, 5, 0)),
        );
        assert_eq!(decide(&mut state, &frame, NOW).1, Service);
    }
}

#[test]
fn monitor_mode_passes_what_it_would_drop() {
    let mut state = unlimited();
    state.policy.config.mode = abi::MODE_MONITOR;
    check(
        &mut state,
        &[
            (
                "denied",
                tcp4("203.0.113.66", 443),
                (Action::WouldDrop, DeniedSource),
            ),
            (
                "stranger to ssh",
                tcp4(STRANGER, 22),
                (Action::WouldDrop, DefaultDrop),
            ),
            ("truncated", vec![0; 10], (Action::WouldDrop, Malformed)),
            ("admin to ssh", tcp4(ADMIN, 22), pass(Service)),
        ],
    );
    state.policy.config.default_action = Action::Pass as u8;
    check(
        &mut state,
        &[("stranger to ssh", tcp4(STRANGER, 22), pass(DefaultAllow))],
    );
}
