//! The detectors over a sequence of observations made from the input: login failures, drops,
//! handshakes, byte counters and refusals outside hours, from a small pool of addresses and
//! peers, with a clock that mostly moves forward by varied steps and sometimes steps back.
//!
//! Checked after each observation: no panic, no action on the allowlist (10.9.0.0/16), every
//! ban a single address, and the state within the documented bounds.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crmguard_core::config::default_policy;
use crmguard_detect::{Action, Detectors, History, Input, Observation, MAX_KEYS, MAX_WEIGHT};

const PEERS: [&str; 4] = ["alice", "bob", "carol", "dave"];

fn address(selector: u8, low: u8) -> IpAddr {
    match selector % 4 {
        // The allowlist.
        0 => IpAddr::V4(Ipv4Addr::new(10, 9, low, 1)),
        1 => IpAddr::V4(Ipv4Addr::new(203, 0, 113, low)),
        2 => IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, u16::from(low), 0, 0, 0, 1)),
        _ => IpAddr::V6(Ipv4Addr::new(198, 51, 100, low).to_ipv6_mapped()),
    }
}

fn allowlisted(addr: IpAddr) -> bool {
    match addr {
        IpAddr::V4(v4) => v4.octets()[..2] == [10, 9],
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .is_some_and(|v4| v4.octets()[..2] == [10, 9]),
    }
}

/// Feeds the observations `data` describes, seven bytes each.
pub fn run(data: &[u8]) {
    let mut config = default_policy().detection;
    config.allowlist = vec!["10.9.0.0/16".parse().unwrap_or_else(|e| panic!("{e}"))];
    config.auth_failures.threshold = 3;
    config.auth_failures.per_peer_threshold = 2;
    config.port_scan.distinct_ports = 5;
    config.volume.per_peer_bytes_per_hour = 1 << 20;
    let mut detectors = Detectors::new(&config, History::default());
    let mut secs: u64 = 1_800_000_000;
    for chunk in data.chunks_exact(7) {
        let [op, a, b, c, d, e, step] = [
            chunk[0], chunk[1], chunk[2], chunk[3], chunk[4], chunk[5], chunk[6],
        ];
        secs = if step == 0xff {
            secs.saturating_sub(3_600)
        } else {
            secs + u64::from(step) * u64::from(step)
        };
        let at = UNIX_EPOCH + Duration::from_secs(secs);
        let peer = PEERS[usize::from(b % 4)].to_owned();
        let input = match op % 5 {
            0 => Input::LoginFailure {
                source: address(a, c),
                peer: (d % 2 == 0).then(|| peer.clone()),
                protocol: ["sshd", "postgresql", "redis"][usize::from(e % 3)].to_owned(),
                service: None,
                user: (e % 2 == 0).then(|| "root".to_owned()),
            },
            1 => Input::Dropped {
                source: address(a, c),
                dst_port: u16::from_be_bytes([d, e]),
                proto: [6, 17, 132, 1][usize::from(b % 4)],
            },
            2 => Input::Handshake {
                peer,
                endpoint: SocketAddr::new(address(a, c), u16::from_be_bytes([d, e])),
            },
            3 => Input::PeerBytes {
                peer,
                rx_total: u64::from(u32::from_be_bytes([a, c, d, e])) << 4,
                tx_total: u64::from(u32::from_be_bytes([e, d, c, a])) << 4,
            },
            _ => Input::AclDenied {
                peer,
                service: format!("tcp/{}", u16::from_be_bytes([d, e])),
                reason: ["outside_hours", "not_in_role", "mfa_required"][usize::from(c % 3)]
                    .to_owned(),
            },
        };
        for action in detectors.observe(Observation { at, input }) {
            match action {
                Action::Ban { net, .. } => {
                    assert!(
                        !allowlisted(net.addr()),
                        "an allowlisted address was banned: {net}"
                    );
                    // One source: an IPv4 address, or an IPv6 source's prefix.
                    let source_len = if net.max_prefix_len() == 32 {
                        32
                    } else {
                        config.source_prefix6
                    };
                    assert_eq!(
                        net.prefix_len(),
                        source_len,
                        "a ban wider or narrower than one source: {net}"
                    );
                }
                Action::Alert {
                    source: Some(source),
                    ..
                } => assert!(
                    !allowlisted(source),
                    "an alert about an allowlisted address"
                ),
                _ => {}
            }
        }
        let tracked = detectors.tracked();
        assert!(tracked.auth_keys <= MAX_KEYS && tracked.scan_sources <= MAX_KEYS);
        assert!(tracked.auth_failures <= MAX_WEIGHT && tracked.scan_ports <= MAX_WEIGHT);
    }
    let _ = SystemTime::now();
}
