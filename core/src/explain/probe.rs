//! The packets `crmguard explain` and the policy tests ask about, built as the wire carries
//! them: an Ethernet frame for the XDP filter's reference model, a bare IP packet for the
//! tunnel's ACL (which sees what WireGuard decrypted).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use etherparse::PacketBuilder;

use crate::config::Probe;

/// The destination of a packet from outside when none is given: the filter decides on the
/// source, protocol and port, not on which of the host's addresses is asked.
pub const HOST_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
/// [`HOST_V4`] for IPv6 sources.
pub const HOST_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);

/// The sender's port: one of Linux's ephemeral ports.
const SOURCE_PORT: u16 = 40_000;
/// The identifier of the echo request.
const ECHO_ID: u16 = 0x6367;
/// A WireGuard handshake initiation is 148 bytes, of which the first is its type, 1.
const WG_INITIATION_LEN: usize = 148;

/// The destination address of the family of `src` when the caller has none.
pub fn host_address(src: IpAddr) -> IpAddr {
    match src {
        IpAddr::V4(_) => IpAddr::V4(HOST_V4),
        IpAddr::V6(_) => IpAddr::V6(HOST_V6),
    }
}

/// What a probe carries: a handshake initiation of the right shape to the WireGuard port (the
/// only UDP the filter lets through there), a few zero bytes elsewhere, nothing over TCP.
fn payload(probe: Probe, wireguard_port: Option<u16>) -> Vec<u8> {
    match probe {
        Probe::Udp(port) if Some(port) == wireguard_port => {
            let mut initiation = vec![0u8; WG_INITIATION_LEN];
            initiation[0] = 1;
            initiation
        }
        Probe::Udp(_) => vec![0u8; 16],
        Probe::Tcp(_) | Probe::Icmp => Vec::new(),
    }
}

/// The IP packet of `probe` from `src` to `dst`: a SYN (or, without `syn`, an ACK of an open
/// connection), a UDP datagram or an echo request. `None` when the two addresses are of
/// different families.
pub fn ip_packet(
    src: IpAddr,
    dst: IpAddr,
    probe: Probe,
    syn: bool,
    wireguard_port: Option<u16>,
) -> Option<Vec<u8>> {
    let payload = payload(probe, wireguard_port);
    let mut out = Vec::with_capacity(64 + payload.len());
    match (src, dst) {
        (IpAddr::V4(src), IpAddr::V4(dst)) => {
            let ip = PacketBuilder::ipv4(src.octets(), dst.octets(), 64);
            match probe {
                Probe::Tcp(port) => {
                    let tcp = ip.tcp(SOURCE_PORT, port, 1, 64_240);
                    let tcp = if syn { tcp.syn() } else { tcp.ack(1) };
                    tcp.write(&mut out, &payload).ok()?;
                }
                Probe::Udp(port) => ip.udp(SOURCE_PORT, port).write(&mut out, &payload).ok()?,
                Probe::Icmp => ip
                    .icmpv4_echo_request(ECHO_ID, 1)
                    .write(&mut out, &payload)
                    .ok()?,
            }
        }
        (IpAddr::V6(src), IpAddr::V6(dst)) => {
            let ip = PacketBuilder::ipv6(src.octets(), dst.octets(), 64);
            match probe {
                Probe::Tcp(port) => {
                    let tcp = ip.tcp(SOURCE_PORT, port, 1, 64_240);
                    let tcp = if syn { tcp.syn() } else { tcp.ack(1) };
                    tcp.write(&mut out, &payload).ok()?;
                }
                Probe::Udp(port) => ip.udp(SOURCE_PORT, port).write(&mut out, &payload).ok()?,
                Probe::Icmp => ip
                    .icmpv6_echo_request(ECHO_ID, 1)
                    .write(&mut out, &payload)
                    .ok()?,
            }
        }
        _ => return None,
    }
    Some(out)
}

/// `ip` in an Ethernet frame, as it reaches the XDP program.
pub fn ethernet_frame(ip: &[u8]) -> Vec<u8> {
    let ethertype: u16 = if ip.first().is_some_and(|b| b >> 4 == 6) {
        0x86dd
    } else {
        0x0800
    };
    let mut frame = Vec::with_capacity(14 + ip.len());
    frame.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x01]);
    frame.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x02]);
    frame.extend_from_slice(&ethertype.to_be_bytes());
    frame.extend_from_slice(ip);
    frame
}
