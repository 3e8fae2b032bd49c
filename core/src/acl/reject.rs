//! The answers the gateway sends back into the tunnel for packets the identity ACL denied
//! ([`crate::acl::Reject`]), so that a client's connection attempt fails at once instead of
//! timing out.
//!
//! Both builders take the denied packet as the peer sent it and return a whole IP packet to be
//! encrypted for that peer, or `None` when the packet must not be answered: it does not parse,
//! it is a fragment, its source or destination is not a unicast address, it is a TCP reset (a
//! reset is never answered, RFC 793) or an ICMP error (an ICMP error is never answered,
//! RFC 1122 and RFC 4443). They are pure: no IO and no clock. Rate limiting the answers is the
//! caller's business.

#![forbid(unsafe_code)]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::acl::packet::{
    self, Transport, PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN,
};

/// The TTL or hop limit of every answer.
const TTL: u8 = 64;
/// The smallest MTU of IPv6, which an ICMPv6 error must not exceed (RFC 4443 section 2.4).
const IPV6_MIN_MTU: usize = 1280;
const IPV4_HEADER_LEN: usize = 20;
const IPV6_HEADER_LEN: usize = 40;
const TCP_HEADER_LEN: usize = 20;
const ICMP_HEADER_LEN: usize = 8;
/// How much of the denied packet's payload an ICMPv4 error quotes after its IP header.
const ICMPV4_QUOTED_PAYLOAD: usize = 8;

/// ICMPv4 destination unreachable, code 13: communication administratively prohibited.
const ICMPV4_UNREACHABLE: u8 = 3;
const ICMPV4_ADMIN_PROHIBITED: u8 = 13;
/// ICMPv6 destination unreachable, code 1: communication with destination administratively
/// prohibited.
const ICMPV6_UNREACHABLE: u8 = 1;
const ICMPV6_ADMIN_PROHIBITED: u8 = 1;

/// A TCP reset for the TCP segment `original`, from its destination to its source, as RFC 793
/// section 3.4 asks: when the segment carries an ACK the reset has `SEQ = SEG.ACK` and no ACK;
/// otherwise (a SYN, typically) it has `SEQ = 0`, `ACK = SEG.SEQ + SEG.LEN` (SYN and FIN count
/// one each) and the flags RST and ACK. IPv4 answers have no options and DF set; the window is
/// zero.
pub fn tcp_reset(original: &[u8]) -> Option<Vec<u8>> {
    let parsed = packet::parse(original).ok()?;
    let Transport::Tcp(tcp) = parsed.transport else {
        return None;
    };
    if tcp.has(TCP_RST) || !is_unicast(parsed.src) || !is_unicast(parsed.dst) {
        return None;
    }
    let (seq, ack, flags) = if tcp.has(TCP_ACK) {
        (tcp.ack, 0, TCP_RST)
    } else {
        let payload = parsed
            .len
            .checked_sub(parsed.transport_offset + tcp.header_len)?;
        let segment_len = u32::try_from(payload).ok()?
            + u32::from(tcp.has(TCP_SYN))
            + u32::from(tcp.has(TCP_FIN));
        (0, tcp.seq.wrapping_add(segment_len), TCP_RST | TCP_ACK)
    };
    bare_segment(
        (parsed.dst, tcp.dst_port),
        (parsed.src, tcp.src_port),
        seq,
        ack,
        flags,
    )
}

/// An IP packet carrying a TCP header without options or payload from `from` to `to`.
fn bare_segment(
    (from, from_port): (IpAddr, u16),
    (to, to_port): (IpAddr, u16),
    seq: u32,
    ack: u32,
    flags: u8,
) -> Option<Vec<u8>> {
    let mut segment = [0u8; TCP_HEADER_LEN];
    segment[0..2].copy_from_slice(&from_port.to_be_bytes());
    segment[2..4].copy_from_slice(&to_port.to_be_bytes());
    segment[4..8].copy_from_slice(&seq.to_be_bytes());
    segment[8..12].copy_from_slice(&ack.to_be_bytes());
    segment[12] = 5 << 4; // data offset: 5 words, no options
    segment[13] = flags;
    // Window, checksum and urgent pointer stay zero; the checksum is filled in below.
    match (from, to) {
        (IpAddr::V4(from), IpAddr::V4(to)) => Some(ipv4(from, to, PROTO_TCP, &segment)),
        (IpAddr::V6(from), IpAddr::V6(to)) => Some(ipv6(from, to, PROTO_TCP, &segment)),
        _ => None,
    }
}

/// A TCP reset that takes the place of the TCP segment `original`: from its source to its
/// destination, with `SEQ = SEG.SEQ` (the sequence number the receiver expects next, which
/// RFC 5961 requires of a reset it accepts at once) and the flag RST. It ends the connection
/// for the receiver of a segment the gateway drops. `None` as for [`tcp_reset`].
pub fn tcp_reset_onward(original: &[u8]) -> Option<Vec<u8>> {
    let parsed = packet::parse(original).ok()?;
    let Transport::Tcp(tcp) = parsed.transport else {
        return None;
    };
    if tcp.has(TCP_RST) || !is_unicast(parsed.src) || !is_unicast(parsed.dst) {
        return None;
    }
    let seq = if tcp.has(TCP_SYN) {
        tcp.seq.wrapping_add(1)
    } else {
        tcp.seq
    };
    bare_segment(
        (parsed.src, tcp.src_port),
        (parsed.dst, tcp.dst_port),
        seq,
        0,
        TCP_RST,
    )
}

/// An ICMP "administratively prohibited" from `gateway` to the source of `original`: ICMPv4
/// type 3 code 13 quoting the original IP header (with its options) and the first 8 bytes of its
/// payload, or ICMPv6 type 1 code 1 quoting as much of the original as fits in 1280 bytes.
/// `gateway` must be of the original's IP version.
pub fn icmp_admin_prohibited(original: &[u8], gateway: IpAddr) -> Option<Vec<u8>> {
    let parsed = packet::parse(original).ok()?;
    if !is_unicast(parsed.src) || !is_unicast(parsed.dst) {
        return None;
    }
    match parsed.transport {
        Transport::Fragment => return None,
        Transport::Icmp { kind, .. } if is_icmpv4_error(kind) => return None,
        // ICMPv6 error types are those below 128 (RFC 4443 section 2.1).
        Transport::Icmpv6 { kind, .. } if kind < 128 => return None,
        _ => {}
    }
    match (gateway, parsed.src) {
        (IpAddr::V4(from), IpAddr::V4(to)) => {
            let quoted = parsed
                .len
                .min(parsed.transport_offset + ICMPV4_QUOTED_PAYLOAD);
            let message = icmp_message(
                ICMPV4_UNREACHABLE,
                ICMPV4_ADMIN_PROHIBITED,
                &original[..quoted],
            );
            Some(ipv4(from, to, PROTO_ICMP, &message))
        }
        (IpAddr::V6(from), IpAddr::V6(to)) => {
            let room = IPV6_MIN_MTU - IPV6_HEADER_LEN - ICMP_HEADER_LEN;
            let message = icmp_message(
                ICMPV6_UNREACHABLE,
                ICMPV6_ADMIN_PROHIBITED,
                &original[..parsed.len.min(room)],
            );
            Some(ipv6(from, to, PROTO_ICMPV6, &message))
        }
        _ => None,
    }
}

/// ICMPv4 error types: destination unreachable, source quench, redirect, time exceeded and
/// parameter problem.
fn is_icmpv4_error(kind: u8) -> bool {
    matches!(kind, 3 | 4 | 5 | 11 | 12)
}

fn is_unicast(address: IpAddr) -> bool {
    match address {
        IpAddr::V4(address) => {
            !(address.is_multicast() || address.is_broadcast() || address.is_unspecified())
        }
        IpAddr::V6(address) => !(address.is_multicast() || address.is_unspecified()),
    }
}

/// An ICMP or ICMPv6 error message with a zero checksum: type, code, checksum, four unused
/// bytes, then `quoted`.
fn icmp_message(kind: u8, code: u8, quoted: &[u8]) -> Vec<u8> {
    let mut message = Vec::with_capacity(ICMP_HEADER_LEN + quoted.len());
    message.extend_from_slice(&[kind, code, 0, 0, 0, 0, 0, 0]);
    message.extend_from_slice(quoted);
    message
}

/// An IPv4 packet carrying `body`, whose checksum field (TCP's at 16, ICMP's at 2) is filled in.
fn ipv4(from: Ipv4Addr, to: Ipv4Addr, proto: u8, body: &[u8]) -> Vec<u8> {
    let total = IPV4_HEADER_LEN + body.len();
    let mut out = Vec::with_capacity(total);
    out.push(0x45); // version 4, header of 5 words
    out.push(0); // DSCP and ECN
    out.extend_from_slice(&length16(total).to_be_bytes());
    out.extend_from_slice(&[0, 0]); // identification: unused with DF
    out.extend_from_slice(&0x4000u16.to_be_bytes()); // DF, offset 0
    out.push(TTL);
    out.push(proto);
    out.extend_from_slice(&[0, 0]); // header checksum, below
    out.extend_from_slice(&from.octets());
    out.extend_from_slice(&to.octets());
    let header_sum = checksum(0, &out);
    out[10..12].copy_from_slice(&header_sum.to_be_bytes());
    out.extend_from_slice(body);
    let (at, sum) = if proto == PROTO_TCP {
        let mut pseudo = [0u8; 12];
        pseudo[0..4].copy_from_slice(&from.octets());
        pseudo[4..8].copy_from_slice(&to.octets());
        pseudo[9] = proto;
        pseudo[10..12].copy_from_slice(&length16(body.len()).to_be_bytes());
        (16, checksum(sum_words(0, &pseudo), body))
    } else {
        (2, checksum(0, body))
    };
    let at = IPV4_HEADER_LEN + at;
    out[at..at + 2].copy_from_slice(&sum.to_be_bytes());
    out
}

/// An IPv6 packet carrying `body` (TCP or ICMPv6), whose checksum is filled in.
fn ipv6(from: Ipv6Addr, to: Ipv6Addr, proto: u8, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(IPV6_HEADER_LEN + body.len());
    out.extend_from_slice(&[0x60, 0, 0, 0]); // version 6, traffic class 0, flow label 0
    out.extend_from_slice(&length16(body.len()).to_be_bytes());
    out.push(proto);
    out.push(TTL);
    out.extend_from_slice(&from.octets());
    out.extend_from_slice(&to.octets());
    let mut pseudo = [0u8; 40];
    pseudo[0..16].copy_from_slice(&from.octets());
    pseudo[16..32].copy_from_slice(&to.octets());
    pseudo[32..36].copy_from_slice(&length32(body.len()).to_be_bytes());
    pseudo[39] = proto;
    let sum = checksum(sum_words(0, &pseudo), body);
    out.extend_from_slice(body);
    let at = IPV6_HEADER_LEN + if proto == PROTO_TCP { 16 } else { 2 };
    out[at..at + 2].copy_from_slice(&sum.to_be_bytes());
    out
}

/// A length that fits 16 bits: every answer is at most 1280 bytes plus a 60-byte quote.
fn length16(len: usize) -> u16 {
    u16::try_from(len).unwrap_or(u16::MAX)
}

fn length32(len: usize) -> u32 {
    u32::try_from(len).unwrap_or(u32::MAX)
}

/// Adds `data` as big-endian 16-bit words to `sum`; an odd last byte is padded with zero.
fn sum_words(mut sum: u64, data: &[u8]) -> u64 {
    let mut words = data.chunks_exact(2);
    for word in &mut words {
        sum += u64::from(u16::from_be_bytes([word[0], word[1]]));
    }
    if let [last] = words.remainder() {
        sum += u64::from(u16::from_be_bytes([*last, 0]));
    }
    sum
}

/// The Internet checksum (RFC 1071) of `data` on top of the partial sum `sum`.
fn checksum(sum: u64, data: &[u8]) -> u16 {
    let mut sum = sum_words(sum, data);
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    // The loop leaves at most 16 bits.
    !u16::try_from(sum).unwrap_or(u16::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::{NetSlice, PacketBuilder, SlicedPacket, TransportSlice};

    const CLIENT4: [u8; 4] = [10, 77, 0, 10];
    const GATEWAY4: [u8; 4] = [10, 77, 0, 1];
    const CLIENT6: [u8; 16] = [0xfd, 0x77, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10];
    const GATEWAY6: [u8; 16] = [0xfd, 0x77, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];

    fn build(
        builder: etherparse::PacketBuilderStep<etherparse::TcpHeader>,
        payload: &[u8],
    ) -> Vec<u8> {
        let mut out = Vec::new();
        builder
            .write(&mut out, payload)
            .unwrap_or_else(|e| panic!("{e}"));
        out
    }

    fn syn4(payload: &[u8]) -> Vec<u8> {
        build(
            PacketBuilder::ipv4(CLIENT4, GATEWAY4, 64)
                .tcp(40000, 5432, 0xffff_fff0, 64240)
                .syn(),
            payload,
        )
    }

    fn syn6() -> Vec<u8> {
        build(
            PacketBuilder::ipv6(CLIENT6, GATEWAY6, 64)
                .tcp(40000, 5432, 7, 64240)
                .syn(),
            b"",
        )
    }

    /// Whether the Internet checksum over `parts` (the stored checksum included) verifies.
    fn verifies(parts: &[&[u8]]) -> bool {
        let sum = parts.iter().fold(0, |sum, part| sum_words(sum, part));
        checksum(sum, &[]) == 0
    }

    fn sliced(packet: &[u8]) -> SlicedPacket<'_> {
        SlicedPacket::from_ip(packet).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Checks an IPv4 TCP answer: header checksum, TCP checksum (by etherparse and by
    /// recomputation), addresses and ports swapped; returns the TCP header.
    fn check_tcp4(reply: &[u8]) -> etherparse::TcpHeader {
        let packet = sliced(reply);
        let Some(NetSlice::Ipv4(ip)) = &packet.net else {
            panic!("not IPv4: {packet:?}");
        };
        let header = ip.header();
        assert_eq!(header.source(), GATEWAY4);
        assert_eq!(header.destination(), CLIENT4);
        assert_eq!(header.ttl(), TTL);
        assert!(header.dont_fragment());
        assert_eq!(
            header.header_checksum(),
            header.to_header().calc_header_checksum()
        );
        assert_eq!(usize::from(header.total_len()), reply.len());
        assert!(verifies(&[&reply[..20]]));
        let Some(TransportSlice::Tcp(tcp)) = &packet.transport else {
            panic!("not TCP: {packet:?}");
        };
        assert_eq!(
            tcp.checksum(),
            tcp.calc_checksum_ipv4(GATEWAY4, CLIENT4)
                .unwrap_or_else(|e| panic!("{e}"))
        );
        let pseudo = [&GATEWAY4[..], &CLIENT4[..], &[0, 6, 0, 20]].concat();
        assert!(verifies(&[&pseudo, &reply[20..]]));
        assert_eq!((tcp.source_port(), tcp.destination_port()), (5432, 40000));
        assert!(tcp.rst());
        assert!(!tcp.syn() && !tcp.fin());
        assert_eq!(tcp.window_size(), 0);
        tcp.to_header()
    }

    #[test]
    fn resets_a_syn_over_ipv4() {
        let reply = tcp_reset(&syn4(b"")).unwrap_or_else(|| panic!("no reset"));
        assert_eq!(reply.len(), 40);
        let tcp = check_tcp4(&reply);
        assert!(tcp.ack);
        assert_eq!(tcp.sequence_number, 0);
        assert_eq!(tcp.acknowledgment_number, 0xffff_fff1);
    }

    #[test]
    fn reset_acknowledges_syn_payload_and_fin_with_wraparound() {
        let packet = build(
            PacketBuilder::ipv4(CLIENT4, GATEWAY4, 64)
                .tcp(40000, 5432, 0xffff_fff0, 64240)
                .syn()
                .fin(),
            &[1; 20],
        );
        let reply = tcp_reset(&packet).unwrap_or_else(|| panic!("no reset"));
        let tcp = check_tcp4(&reply);
        // 0xfffffff0 + 20 bytes + SYN + FIN wraps to 6.
        assert_eq!(tcp.acknowledgment_number, 6);
    }

    #[test]
    fn reset_of_a_segment_with_ack_takes_its_sequence_from_the_ack() {
        let packet = build(
            PacketBuilder::ipv4(CLIENT4, GATEWAY4, 64)
                .tcp(40000, 5432, 100, 64240)
                .ack(123_456),
            b"data",
        );
        let reply = tcp_reset(&packet).unwrap_or_else(|| panic!("no reset"));
        let tcp = check_tcp4(&reply);
        assert!(!tcp.ack);
        assert_eq!(tcp.sequence_number, 123_456);
        assert_eq!(tcp.acknowledgment_number, 0);
    }

    #[test]
    fn resets_a_syn_over_ipv6() {
        let reply = tcp_reset(&syn6()).unwrap_or_else(|| panic!("no reset"));
        assert_eq!(reply.len(), 60);
        let packet = sliced(&reply);
        let Some(NetSlice::Ipv6(ip)) = &packet.net else {
            panic!("not IPv6: {packet:?}");
        };
        assert_eq!(ip.header().source(), GATEWAY6);
        assert_eq!(ip.header().destination(), CLIENT6);
        assert_eq!(ip.header().hop_limit(), TTL);
        let Some(TransportSlice::Tcp(tcp)) = &packet.transport else {
            panic!("not TCP: {packet:?}");
        };
        assert_eq!(
            tcp.checksum(),
            tcp.calc_checksum_ipv6(GATEWAY6, CLIENT6)
                .unwrap_or_else(|e| panic!("{e}"))
        );
        let pseudo = [&GATEWAY6[..], &CLIENT6[..], &[0, 0, 0, 20, 0, 0, 0, 6]].concat();
        assert!(verifies(&[&pseudo, &reply[40..]]));
        assert!(tcp.rst() && tcp.ack());
        assert_eq!(tcp.acknowledgment_number(), 8);
        assert_eq!((tcp.source_port(), tcp.destination_port()), (5432, 40000));
    }

    #[test]
    fn never_resets_a_reset_or_a_non_tcp_or_malformed_packet() {
        let rst = build(
            PacketBuilder::ipv4(CLIENT4, GATEWAY4, 64)
                .tcp(40000, 5432, 1, 0)
                .rst(),
            b"",
        );
        assert_eq!(tcp_reset(&rst), None);
        let mut udp = Vec::new();
        PacketBuilder::ipv4(CLIENT4, GATEWAY4, 64)
            .udp(1, 2)
            .write(&mut udp, b"")
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(tcp_reset(&udp), None);
        assert_eq!(tcp_reset(&syn4(b"")[..30]), None);
        let mut fragment = syn4(b"");
        fragment[6] = 0x20;
        assert_eq!(tcp_reset(&fragment), None);
        let multicast = build(
            PacketBuilder::ipv4(CLIENT4, [224, 0, 0, 1], 64)
                .tcp(1, 2, 3, 4)
                .syn(),
            b"",
        );
        assert_eq!(tcp_reset(&multicast), None);
    }

    #[test]
    fn prohibits_udp_over_ipv4_quoting_header_and_8_bytes() {
        let mut original = Vec::new();
        PacketBuilder::ipv4(CLIENT4, GATEWAY4, 64)
            .udp(5353, 53)
            .write(&mut original, &[7; 100])
            .unwrap_or_else(|e| panic!("{e}"));
        let reply = icmp_admin_prohibited(&original, IpAddr::from(GATEWAY4))
            .unwrap_or_else(|| panic!("no answer"));
        assert_eq!(reply.len(), 20 + 8 + 20 + 8);
        let packet = sliced(&reply);
        let Some(NetSlice::Ipv4(ip)) = &packet.net else {
            panic!("not IPv4: {packet:?}");
        };
        let header = ip.header();
        assert_eq!(header.source(), GATEWAY4);
        assert_eq!(header.destination(), CLIENT4);
        assert_eq!(header.protocol(), etherparse::IpNumber::ICMP);
        assert_eq!(
            header.header_checksum(),
            header.to_header().calc_header_checksum()
        );
        let Some(TransportSlice::Icmpv4(icmp)) = &packet.transport else {
            panic!("not ICMP: {packet:?}");
        };
        assert_eq!((icmp.type_u8(), icmp.code_u8()), (3, 13));
        assert_eq!(
            icmp.checksum(),
            icmp.header().icmp_type.calc_checksum(icmp.payload())
        );
        assert!(verifies(&[&reply[20..]]));
        assert_eq!(icmp.payload(), &original[..28]);
    }

    #[test]
    fn prohibition_quotes_ipv4_options_and_short_payloads_whole() {
        // IPv4 with 4 bytes of options (a NOP padding) and a TCP ACK segment.
        let plain = build(
            PacketBuilder::ipv4(CLIENT4, GATEWAY4, 64)
                .tcp(40000, 5432, 1, 100)
                .ack(5),
            b"",
        );
        let mut with_options = vec![0x46];
        with_options.extend_from_slice(&plain[1..20]);
        with_options.extend_from_slice(&[1, 1, 1, 0]);
        with_options.extend_from_slice(&plain[20..]);
        with_options[2..4].copy_from_slice(&44u16.to_be_bytes());
        let reply = icmp_admin_prohibited(&with_options, IpAddr::from(GATEWAY4))
            .unwrap_or_else(|| panic!("no answer"));
        assert_eq!(&reply[28..], &with_options[..24 + 8]);
        assert!(verifies(&[&reply[20..]]));
        // A packet with fewer than 8 payload bytes is quoted whole, padding excluded: here
        // protocol 99 with 4 bytes of payload and 4 bytes of padding after it.
        let mut short = plain[..24].to_vec();
        short[2..4].copy_from_slice(&24u16.to_be_bytes());
        short[9] = 99;
        short.extend_from_slice(&[0xaa; 4]);
        let reply = icmp_admin_prohibited(&short, IpAddr::from(GATEWAY4))
            .unwrap_or_else(|| panic!("no answer"));
        assert_eq!(&reply[28..], &short[..24]);
    }

    #[test]
    fn prohibits_over_ipv6_within_1280_bytes() {
        for payload in [10usize, 1232 - 48, 1400] {
            let mut original = Vec::new();
            PacketBuilder::ipv6(CLIENT6, GATEWAY6, 64)
                .udp(5353, 53)
                .write(&mut original, &vec![9; payload])
                .unwrap_or_else(|e| panic!("{e}"));
            let reply = icmp_admin_prohibited(&original, IpAddr::from(GATEWAY6))
                .unwrap_or_else(|| panic!("no answer"));
            assert_eq!(reply.len(), (48 + original.len()).min(1280));
            let packet = sliced(&reply);
            let Some(NetSlice::Ipv6(ip)) = &packet.net else {
                panic!("not IPv6: {packet:?}");
            };
            assert_eq!(ip.header().source(), GATEWAY6);
            assert_eq!(ip.header().destination(), CLIENT6);
            assert_eq!(usize::from(ip.header().payload_length()), reply.len() - 40);
            let Some(TransportSlice::Icmpv6(icmp)) = &packet.transport else {
                panic!("not ICMPv6: {packet:?}");
            };
            assert_eq!((icmp.type_u8(), icmp.code_u8()), (1, 1));
            assert!(icmp.is_checksum_valid(GATEWAY6, CLIENT6));
            let len = length32(reply.len() - 40).to_be_bytes();
            let pseudo = [&GATEWAY6[..], &CLIENT6[..], &len[..], &[0, 0, 0, 58]].concat();
            assert!(verifies(&[&pseudo, &reply[40..]]));
            assert_eq!(icmp.payload(), &original[..reply.len() - 48]);
        }
    }

    #[test]
    fn never_answers_icmp_errors_fragments_non_unicast_or_the_wrong_family() {
        let gateway4 = IpAddr::from(GATEWAY4);
        let gateway6 = IpAddr::from(GATEWAY6);
        let mut error = Vec::new();
        PacketBuilder::ipv4(CLIENT4, GATEWAY4, 64)
            .icmpv4_raw(3, 3, [0; 4])
            .write(&mut error, &[0; 28])
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(icmp_admin_prohibited(&error, gateway4), None);
        let mut error6 = Vec::new();
        PacketBuilder::ipv6(CLIENT6, GATEWAY6, 64)
            .icmpv6_raw(2, 0, [0, 0, 5, 0])
            .write(&mut error6, &[0; 48])
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(icmp_admin_prohibited(&error6, gateway6), None);
        let mut fragment = syn4(b"");
        fragment[7] = 1;
        assert_eq!(icmp_admin_prohibited(&fragment, gateway4), None);
        assert_eq!(icmp_admin_prohibited(&syn4(b""), gateway6), None);
        assert_eq!(icmp_admin_prohibited(&syn6(), gateway4), None);
        let broadcast = build(
            PacketBuilder::ipv4(CLIENT4, [255, 255, 255, 255], 64)
                .tcp(1, 2, 3, 4)
                .syn(),
            b"",
        );
        assert_eq!(icmp_admin_prohibited(&broadcast, gateway4), None);
        let unspecified = build(
            PacketBuilder::ipv4([0; 4], GATEWAY4, 64)
                .tcp(1, 2, 3, 4)
                .syn(),
            b"",
        );
        assert_eq!(icmp_admin_prohibited(&unspecified, gateway4), None);
        assert_eq!(icmp_admin_prohibited(&[0x45, 0, 0], gateway4), None);
        let mut echo6 = Vec::new();
        PacketBuilder::ipv6(CLIENT6, GATEWAY6, 64)
            .icmpv6_echo_request(1, 1)
            .write(&mut echo6, b"")
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(icmp_admin_prohibited(&echo6, gateway6).is_some());
    }

    #[test]
    fn checksum_matches_rfc_1071_example() {
        // The example of RFC 1071 section 3: the sum of these words is 0xddf2.
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(checksum(0, &data), !0xddf2);
        assert_eq!(checksum(0, &[0xff]), !0xff00);
    }
}
