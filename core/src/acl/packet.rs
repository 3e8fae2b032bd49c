//! A bounds-checked parser of the IP packets that come out of the tunnel.
//!
//! It reads just enough of an IPv4 or IPv6 packet for the identity ACL and the reject builders:
//! the addresses, the transport protocol and its ports or ICMP type, and for TCP the sequence
//! numbers and flags. It allocates nothing and copies nothing but a few fixed-size fields, so it
//! can run on every decrypted packet. Every read is checked against the length the IP header
//! states, which must itself fit in the buffer; bytes after that length (WireGuard pads its
//! plaintext to a multiple of 16) are ignored.
//!
//! It must not decide anything: whether a packet is allowed is the ACL's business.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// IP protocol number of ICMP.
pub const PROTO_ICMP: u8 = 1;
/// IP protocol number of TCP.
pub const PROTO_TCP: u8 = 6;
/// IP protocol number of UDP.
pub const PROTO_UDP: u8 = 17;
/// IP protocol number of ICMPv6.
pub const PROTO_ICMPV6: u8 = 58;

/// The TCP FIN flag.
pub const TCP_FIN: u8 = 0x01;
/// The TCP SYN flag.
pub const TCP_SYN: u8 = 0x02;
/// The TCP RST flag.
pub const TCP_RST: u8 = 0x04;
/// The TCP ACK flag.
pub const TCP_ACK: u8 = 0x10;

/// The most IPv6 extension headers walked before a packet is called malformed, as in the XDP
/// program: real traffic carries one or two.
const MAX_IPV6_EXTENSION_HEADERS: usize = 8;

const IPV4_HEADER_LEN: usize = 20;
const IPV6_HEADER_LEN: usize = 40;
const TCP_HEADER_LEN: usize = 20;
const UDP_HEADER_LEN: usize = 8;
const ICMP_HEADER_LEN: usize = 8;

/// What the parser learnt about one packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packet {
    /// The source address.
    pub src: IpAddr,
    /// The destination address.
    pub dst: IpAddr,
    /// The transport header, or why there is none to read.
    pub transport: Transport,
    /// Where the IP header ends: for IPv4 its length with options, for IPv6 the end of the
    /// extension headers. For a fragment this is where the fragment's payload starts.
    pub transport_offset: usize,
    /// The packet's length as its IP header states it, never more than the buffer.
    pub len: usize,
}

/// The transport header of a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// A TCP segment.
    Tcp(Tcp),
    /// A UDP datagram.
    Udp {
        /// The source port.
        src_port: u16,
        /// The destination port.
        dst_port: u16,
    },
    /// An ICMP message in IPv4.
    Icmp {
        /// The ICMP type, such as 8 for an echo request.
        kind: u8,
        /// The ICMP code.
        code: u8,
    },
    /// An ICMPv6 message in IPv6.
    Icmpv6 {
        /// The ICMPv6 type, such as 128 for an echo request.
        kind: u8,
        /// The ICMPv6 code.
        code: u8,
    },
    /// A fragment (IPv4 with more fragments or an offset, IPv6 with a fragment header that is not
    /// an atomic fragment). Its transport header, if it holds one, is not read: a fragment cannot
    /// be matched to a service without reassembly.
    Fragment,
    /// Any other protocol, by its number (59 is IPv6's "no next header").
    Other(u8),
}

/// The fields of a TCP header that the ACL and the reset builder read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tcp {
    /// The source port.
    pub src_port: u16,
    /// The destination port.
    pub dst_port: u16,
    /// The sequence number.
    pub seq: u32,
    /// The acknowledgment number (meaningful only with [`TCP_ACK`]).
    pub ack: u32,
    /// The flags byte: CWR, ECE, URG, ACK, PSH, RST, SYN, FIN from high to low bit.
    pub flags: u8,
    /// The length of the TCP header with its options, at least 20.
    pub header_len: usize,
}

impl Tcp {
    /// Whether `flag` (one of the `TCP_*` constants) is set.
    pub fn has(&self, flag: u8) -> bool {
        self.flags & flag != 0
    }

    /// Whether this is the first segment of a connection: SYN without ACK.
    pub fn is_syn(&self) -> bool {
        self.has(TCP_SYN) && !self.has(TCP_ACK)
    }
}

/// Why a packet could not be parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// The buffer is shorter than the fixed IP header.
    #[error("shorter than an IP header")]
    Truncated,
    /// The version nibble is neither 4 nor 6.
    #[error("IP version {0}")]
    Version(u8),
    /// The IPv4 header length is below 20 bytes or past the packet.
    #[error("bad IPv4 header length")]
    HeaderLength,
    /// The length in the IP header is shorter than the header or longer than the buffer.
    #[error("bad IP total length")]
    TotalLength,
    /// The IPv6 extension headers run past the packet or are too many.
    #[error("bad IPv6 extension headers")]
    ExtensionHeaders,
    /// The TCP, UDP or ICMP header runs past the packet.
    #[error("truncated transport header")]
    TransportHeader,
}

/// Parses an IPv4 or IPv6 packet.
pub fn parse(packet: &[u8]) -> Result<Packet, ParseError> {
    let Some(&first) = packet.first() else {
        return Err(ParseError::Truncated);
    };
    match first >> 4 {
        4 => parse_ipv4(packet),
        6 => parse_ipv6(packet),
        version => Err(ParseError::Version(version)),
    }
}

fn parse_ipv4(packet: &[u8]) -> Result<Packet, ParseError> {
    if packet.len() < IPV4_HEADER_LEN {
        return Err(ParseError::Truncated);
    }
    let header_len = usize::from(packet[0] & 0x0f) * 4;
    if header_len < IPV4_HEADER_LEN || header_len > packet.len() {
        return Err(ParseError::HeaderLength);
    }
    let len = usize::from(be16(packet, 2).ok_or(ParseError::Truncated)?);
    if len < header_len || len > packet.len() {
        return Err(ParseError::TotalLength);
    }
    let fragment = be16(packet, 6).ok_or(ParseError::Truncated)?;
    let src = Ipv4Addr::from(array4(packet, 12).ok_or(ParseError::Truncated)?);
    let dst = Ipv4Addr::from(array4(packet, 16).ok_or(ParseError::Truncated)?);
    // More fragments (0x2000) or a fragment offset (0x1fff); DF and the reserved bit do not
    // make a fragment.
    let transport = if fragment & 0x3fff != 0 {
        Transport::Fragment
    } else {
        let proto = packet[9];
        parse_transport(&packet[..len], header_len, proto, PROTO_ICMP)?
    };
    Ok(Packet {
        src: IpAddr::V4(src),
        dst: IpAddr::V4(dst),
        transport,
        transport_offset: header_len,
        len,
    })
}

fn parse_ipv6(packet: &[u8]) -> Result<Packet, ParseError> {
    if packet.len() < IPV6_HEADER_LEN {
        return Err(ParseError::Truncated);
    }
    let payload_len = usize::from(be16(packet, 4).ok_or(ParseError::Truncated)?);
    let len = IPV6_HEADER_LEN + payload_len;
    if len > packet.len() {
        return Err(ParseError::TotalLength);
    }
    let packet = &packet[..len];
    let src = Ipv6Addr::from(array16(packet, 8).ok_or(ParseError::Truncated)?);
    let dst = Ipv6Addr::from(array16(packet, 24).ok_or(ParseError::Truncated)?);
    let mut next = packet[6];
    let mut offset = IPV6_HEADER_LEN;
    let mut walked = 0;
    let transport = loop {
        let header_len = match next {
            // Hop-by-hop options, routing, destination options: length in 8-byte units, not
            // counting the first 8 bytes.
            0 | 43 | 60 => (usize::from(byte(packet, offset + 1)?) + 1) * 8,
            // Authentication header: length in 4-byte units, not counting the first 8 bytes.
            51 => (usize::from(byte(packet, offset + 1)?) + 2) * 4,
            44 => {
                let field = be16(packet, offset + 2).ok_or(ParseError::ExtensionHeaders)?;
                // Offset (upper 13 bits) or the M flag (lowest bit) make a real fragment; without
                // them this is an atomic fragment (RFC 6946), a whole packet.
                if field & 0xfff9 != 0 {
                    break Transport::Fragment;
                }
                8
            }
            proto => break parse_transport(packet, offset, proto, PROTO_ICMPV6)?,
        };
        walked += 1;
        if walked > MAX_IPV6_EXTENSION_HEADERS {
            return Err(ParseError::ExtensionHeaders);
        }
        next = byte(packet, offset)?;
        offset += header_len;
        if offset > len {
            return Err(ParseError::ExtensionHeaders);
        }
    };
    Ok(Packet {
        src: IpAddr::V6(src),
        dst: IpAddr::V6(dst),
        transport,
        transport_offset: offset,
        len,
    })
}

/// Reads the transport header at `offset` of `packet`, which ends where the IP header says.
/// `icmp` is the ICMP protocol number of the packet's IP version.
fn parse_transport(
    packet: &[u8],
    offset: usize,
    proto: u8,
    icmp: u8,
) -> Result<Transport, ParseError> {
    let header = packet.get(offset..).ok_or(ParseError::TransportHeader)?;
    let field16 = |at: usize| be16(header, at).ok_or(ParseError::TransportHeader);
    let field32 = |at: usize| {
        array4(header, at)
            .map(u32::from_be_bytes)
            .ok_or(ParseError::TransportHeader)
    };
    match proto {
        PROTO_TCP => {
            if header.len() < TCP_HEADER_LEN {
                return Err(ParseError::TransportHeader);
            }
            let header_len = usize::from(header[12] >> 4) * 4;
            if header_len < TCP_HEADER_LEN || header_len > header.len() {
                return Err(ParseError::TransportHeader);
            }
            Ok(Transport::Tcp(Tcp {
                src_port: field16(0)?,
                dst_port: field16(2)?,
                seq: field32(4)?,
                ack: field32(8)?,
                flags: header[13],
                header_len,
            }))
        }
        PROTO_UDP => {
            if header.len() < UDP_HEADER_LEN {
                return Err(ParseError::TransportHeader);
            }
            Ok(Transport::Udp {
                src_port: field16(0)?,
                dst_port: field16(2)?,
            })
        }
        _ if proto == icmp => {
            if header.len() < ICMP_HEADER_LEN {
                return Err(ParseError::TransportHeader);
            }
            let (kind, code) = (header[0], header[1]);
            Ok(if icmp == PROTO_ICMP {
                Transport::Icmp { kind, code }
            } else {
                Transport::Icmpv6 { kind, code }
            })
        }
        other => Ok(Transport::Other(other)),
    }
}

fn byte(packet: &[u8], at: usize) -> Result<u8, ParseError> {
    packet.get(at).copied().ok_or(ParseError::ExtensionHeaders)
}

/// The big-endian `u16` at `at`, if the buffer holds it.
pub(crate) fn be16(bytes: &[u8], at: usize) -> Option<u16> {
    let end = at.checked_add(2)?;
    let field: [u8; 2] = bytes.get(at..end)?.try_into().ok()?;
    Some(u16::from_be_bytes(field))
}

fn array4(bytes: &[u8], at: usize) -> Option<[u8; 4]> {
    let end = at.checked_add(4)?;
    bytes.get(at..end)?.try_into().ok()
}

fn array16(bytes: &[u8], at: usize) -> Option<[u8; 16]> {
    let end = at.checked_add(16)?;
    bytes.get(at..end)?.try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::PacketBuilder;

    fn v4(a: u8) -> [u8; 4] {
        [10, 77, 0, a]
    }

    fn v6(a: u8) -> [u8; 16] {
        let mut addr = [0u8; 16];
        addr[0] = 0xfd;
        addr[1] = 0x77;
        addr[15] = a;
        addr
    }

    fn tcp_v4(payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        PacketBuilder::ipv4(v4(10), v4(1), 64)
            .tcp(40000, 5432, 1000, 64240)
            .syn()
            .write(&mut out, payload)
            .unwrap_or_else(|e| panic!("{e}"));
        out
    }

    fn check(packet: &[u8], expected: Result<Transport, ParseError>) {
        assert_eq!(parse(packet).map(|p| p.transport), expected);
    }

    #[test]
    fn reads_tcp_over_ipv4() {
        let packet = tcp_v4(b"hello");
        let parsed = parse(&packet).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(parsed.src, IpAddr::from(v4(10)));
        assert_eq!(parsed.dst, IpAddr::from(v4(1)));
        assert_eq!(parsed.transport_offset, 20);
        assert_eq!(parsed.len, packet.len());
        let Transport::Tcp(tcp) = parsed.transport else {
            panic!("{parsed:?}");
        };
        assert_eq!((tcp.src_port, tcp.dst_port, tcp.seq), (40000, 5432, 1000));
        assert!(tcp.is_syn());
        assert_eq!(tcp.header_len, 20);
    }

    #[test]
    fn ignores_bytes_after_the_stated_length() {
        let mut packet = tcp_v4(b"");
        let len = packet.len();
        packet.extend_from_slice(&[0; 12]);
        assert_eq!(parse(&packet).map(|p| p.len), Ok(len));
    }

    #[test]
    fn reads_udp_and_icmp() {
        let mut udp = Vec::new();
        PacketBuilder::ipv6(v6(10), v6(1), 64)
            .udp(5353, 53)
            .write(&mut udp, b"q")
            .unwrap_or_else(|e| panic!("{e}"));
        check(
            &udp,
            Ok(Transport::Udp {
                src_port: 5353,
                dst_port: 53,
            }),
        );
        let mut ping = Vec::new();
        PacketBuilder::ipv4(v4(10), v4(1), 64)
            .icmpv4_echo_request(1, 2)
            .write(&mut ping, b"")
            .unwrap_or_else(|e| panic!("{e}"));
        check(&ping, Ok(Transport::Icmp { kind: 8, code: 0 }));
        let mut ping6 = Vec::new();
        PacketBuilder::ipv6(v6(10), v6(1), 64)
            .icmpv6_echo_request(1, 2)
            .write(&mut ping6, b"")
            .unwrap_or_else(|e| panic!("{e}"));
        check(&ping6, Ok(Transport::Icmpv6 { kind: 128, code: 0 }));
    }

    #[test]
    fn rejects_malformed_headers() {
        let good = tcp_v4(b"");
        check(&[], Err(ParseError::Truncated));
        check(&good[..19], Err(ParseError::Truncated));
        check(&[0x50; 40], Err(ParseError::Version(5)));
        let mut short_ihl = good.clone();
        short_ihl[0] = 0x44;
        check(&short_ihl, Err(ParseError::HeaderLength));
        let mut long_ihl = good.clone();
        long_ihl[0] = 0x4f;
        check(&long_ihl[..40], Err(ParseError::HeaderLength));
        let mut long_total = good.clone();
        long_total[2..4].copy_from_slice(&100u16.to_be_bytes());
        check(&long_total, Err(ParseError::TotalLength));
        let mut short_total = good.clone();
        short_total[2..4].copy_from_slice(&30u16.to_be_bytes());
        check(&short_total, Err(ParseError::TransportHeader));
        let mut bad_offset = good.clone();
        bad_offset[32] = 0x40;
        check(&bad_offset, Err(ParseError::TransportHeader));
        let mut past_end = good;
        past_end[32] = 0xf0;
        check(&past_end, Err(ParseError::TransportHeader));
    }

    #[test]
    fn marks_fragments() {
        let mut first = tcp_v4(b"");
        first[6] = 0x20; // more fragments
        check(&first, Ok(Transport::Fragment));
        let mut later = tcp_v4(b"");
        later[7] = 0x10; // offset 16 * 8
        check(&later, Ok(Transport::Fragment));
        let mut dont_fragment = tcp_v4(b"");
        dont_fragment[6] = 0x40;
        assert!(matches!(
            parse(&dont_fragment).map(|p| p.transport),
            Ok(Transport::Tcp(_))
        ));
    }

    /// An IPv6 packet with the given extension headers (each `(next header, bytes)`) before a
    /// UDP header.
    fn ipv6_with(exts: &[(u8, Vec<u8>)]) -> Vec<u8> {
        let mut body = Vec::new();
        let first = exts.first().map_or(PROTO_UDP, |(kind, _)| *kind);
        for (i, (_, bytes)) in exts.iter().enumerate() {
            let next = exts.get(i + 1).map_or(PROTO_UDP, |(kind, _)| *kind);
            let mut bytes = bytes.clone();
            bytes[0] = next;
            body.extend_from_slice(&bytes);
        }
        body.extend_from_slice(&[0x13, 0x88, 0x00, 0x35, 0, 8, 0, 0]);
        let mut packet = vec![0x60, 0, 0, 0];
        packet.extend_from_slice(&u16::try_from(body.len()).unwrap_or(0).to_be_bytes());
        packet.push(first);
        packet.push(64);
        packet.extend_from_slice(&v6(10));
        packet.extend_from_slice(&v6(1));
        packet.extend_from_slice(&body);
        packet
    }

    #[test]
    fn walks_ipv6_extension_headers() {
        let udp = Transport::Udp {
            src_port: 5000,
            dst_port: 53,
        };
        let options = (0u8, vec![0, 0, 1, 4, 0, 0, 0, 0]);
        let dest_long = (60u8, vec![0, 1, 1, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        let atomic = (44u8, vec![0, 0, 0, 0, 0, 0, 0, 1]);
        let auth = (51u8, vec![0, 1, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0]);
        check(&ipv6_with(&[]), Ok(udp));
        check(
            &ipv6_with(&[options.clone(), dest_long.clone(), atomic.clone(), auth]),
            Ok(udp),
        );
        let parsed = parse(&ipv6_with(&[options.clone(), dest_long]));
        assert_eq!(parsed.map(|p| p.transport_offset), Ok(40 + 8 + 16));
        let fragment = (44u8, vec![0, 0, 0, 1, 0, 0, 0, 1]);
        check(&ipv6_with(&[fragment]), Ok(Transport::Fragment));
        let later = (44u8, vec![0, 0, 0x01, 0, 0, 0, 0, 1]);
        check(&ipv6_with(&[later]), Ok(Transport::Fragment));
        let too_many = vec![options.clone(); 9];
        check(&ipv6_with(&too_many), Err(ParseError::ExtensionHeaders));
        let eight = vec![options; 8];
        check(&ipv6_with(&eight), Ok(udp));
        let mut past_end = ipv6_with(&[(60u8, vec![0, 0, 1, 4, 0, 0, 0, 0])]);
        past_end[41] = 200;
        check(&past_end, Err(ParseError::ExtensionHeaders));
        let mut no_next = ipv6_with(&[]);
        no_next[6] = 59;
        check(&no_next, Ok(Transport::Other(59)));
    }

    #[test]
    fn rejects_truncated_ipv6() {
        let packet = ipv6_with(&[]);
        check(&packet[..39], Err(ParseError::Truncated));
        check(&packet[..packet.len() - 1], Err(ParseError::TotalLength));
        let mut short = packet.clone();
        short[5] = 4;
        check(&short[..44], Err(ParseError::TransportHeader));
    }

    #[test]
    fn never_panics_on_any_prefix_or_mutation() {
        let mut packets = vec![tcp_v4(b"data"), ipv6_with(&[(0u8, vec![0; 8])])];
        let mut ping6 = Vec::new();
        PacketBuilder::ipv6(v6(10), v6(1), 64)
            .icmpv6_echo_request(1, 2)
            .write(&mut ping6, b"")
            .unwrap_or_else(|e| panic!("{e}"));
        packets.push(ping6);
        for packet in packets {
            for end in 0..=packet.len() {
                let _ = parse(&packet[..end]);
            }
            for at in 0..packet.len() {
                for value in [0u8, 1, 0x0f, 0x40, 0x7f, 0xff] {
                    let mut mutated = packet.clone();
                    mutated[at] = value;
                    let _ = parse(&mutated);
                }
            }
        }
    }
}
