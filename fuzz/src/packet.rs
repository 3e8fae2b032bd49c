//! Real IPv4 and IPv6 TCP packets, checksums included, as the gateway reads them from the
//! tunnel or the TUN device.

use std::net::IpAddr;

/// One TCP segment's header fields.
#[derive(Debug, Clone, Copy)]
pub struct Tcp {
    pub src_port: u16,
    pub dst_port: u16,
    pub seq: u32,
    pub ack: u32,
    pub flags: u8,
}

/// The IP packet carrying `tcp` and `payload` from `src` to `dst`; both addresses are of one
/// family. A payload too long for one packet is cut.
pub fn tcp(src: IpAddr, dst: IpAddr, tcp: Tcp, payload: &[u8]) -> Vec<u8> {
    // The TCP header, then the payload, then the checksum over the pseudo-header.
    let payload = &payload[..payload.len().min(usize::from(u16::MAX) - 60)];
    let mut segment = Vec::with_capacity(20 + payload.len());
    segment.extend_from_slice(&tcp.src_port.to_be_bytes());
    segment.extend_from_slice(&tcp.dst_port.to_be_bytes());
    segment.extend_from_slice(&tcp.seq.to_be_bytes());
    segment.extend_from_slice(&tcp.ack.to_be_bytes());
    segment.push(5 << 4);
    segment.push(tcp.flags);
    segment.extend_from_slice(&65_535u16.to_be_bytes());
    segment.extend_from_slice(&[0, 0, 0, 0]);
    segment.extend_from_slice(payload);
    let segment_len = u16::try_from(segment.len()).unwrap_or(u16::MAX);

    let mut packet = Vec::with_capacity(40 + segment.len());
    let mut pseudo = Vec::with_capacity(40);
    match (src, dst) {
        (IpAddr::V6(src), IpAddr::V6(dst)) => {
            packet.extend_from_slice(&[0x60, 0, 0, 0]);
            packet.extend_from_slice(&segment_len.to_be_bytes());
            packet.extend_from_slice(&[6, 64]);
            packet.extend_from_slice(&src.octets());
            packet.extend_from_slice(&dst.octets());
            pseudo.extend_from_slice(&src.octets());
            pseudo.extend_from_slice(&dst.octets());
            pseudo.extend_from_slice(&u32::from(segment_len).to_be_bytes());
            pseudo.extend_from_slice(&[0, 0, 0, 6]);
        }
        (src, dst) => {
            let (src, dst) = (v4(src), v4(dst));
            let total = segment_len.saturating_add(20);
            packet.extend_from_slice(&[0x45, 0]);
            packet.extend_from_slice(&total.to_be_bytes());
            packet.extend_from_slice(&[0, 0, 0x40, 0, 64, 6, 0, 0]);
            packet.extend_from_slice(&src);
            packet.extend_from_slice(&dst);
            let sum = checksum(&[&packet]);
            packet[10..12].copy_from_slice(&sum.to_be_bytes());
            pseudo.extend_from_slice(&src);
            pseudo.extend_from_slice(&dst);
            pseudo.extend_from_slice(&[0, 6]);
            pseudo.extend_from_slice(&segment_len.to_be_bytes());
        }
    }
    let sum = checksum(&[&pseudo, &segment]);
    segment[16..18].copy_from_slice(&sum.to_be_bytes());
    packet.extend_from_slice(&segment);
    packet
}

fn v4(addr: IpAddr) -> [u8; 4] {
    match addr {
        IpAddr::V4(a) => a.octets(),
        IpAddr::V6(a) => a.to_ipv4_mapped().map_or([0; 4], |a| a.octets()),
    }
}

/// The Internet checksum of the parts, taken as one run of bytes (each part but the last of
/// even length).
fn checksum(parts: &[&[u8]]) -> u16 {
    let mut sum: u32 = 0;
    for part in parts {
        for pair in part.chunks(2) {
            let word = match pair {
                [a, b] => u16::from_be_bytes([*a, *b]),
                [a] => u16::from_be_bytes([*a, 0]),
                _ => 0,
            };
            sum += u32::from(word);
        }
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !u16::try_from(sum).unwrap_or(0)
}
