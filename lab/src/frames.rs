//! Byte-exact frame builders, so that malformed variants are easy to make.
//!
//! Shared by the golden packets and the differential test of the privileged
//! suite, and by the unit tests of the core's reference model. Checksums are
//! left zero: the XDP program never reads them.

// The builders write lengths as the wire holds them, including deliberately wrong ones: a
// length that does not fit its field is truncated on purpose.
#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_possible_wrap,
    clippy::cast_sign_loss
)]

use std::net::{Ipv4Addr, Ipv6Addr};

pub const ETH_IP: u16 = 0x0800;
pub const ETH_IP6: u16 = 0x86dd;
pub const ETH_ARP: u16 = 0x0806;
pub const VLAN_Q: u16 = 0x8100;
pub const VLAN_AD: u16 = 0x88a8;

pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// The destination of the IPv4 and IPv6 builders unless told otherwise.
pub const DST4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
pub const DST6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 1);

/// An Ethernet frame with one 802.1Q/802.1ad tag (VLAN 100) per entry of
/// `tags`, each entry being the tag's TPID.
pub fn eth(tags: &[u16], ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2];
    for tpid in tags {
        f.extend_from_slice(&tpid.to_be_bytes());
        f.extend_from_slice(&100u16.to_be_bytes());
    }
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// An IPv4 header: `options` bytes of NOP options, the raw flags and
/// fragment offset field, and a total length off by `tot_len_extra`.
pub struct V4 {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub proto: u8,
    pub id: u16,
    pub options: usize,
    pub frag_off: u16,
    pub tot_len_extra: i32,
}

pub fn v4(src: &str, proto: u8) -> V4 {
    V4 {
        src: src.parse().expect("v4"),
        dst: DST4,
        proto,
        id: 0x1234,
        options: 0,
        frag_off: 0,
        tot_len_extra: 0,
    }
}

pub fn ipv4(h: V4, payload: &[u8]) -> Vec<u8> {
    let hl = 20 + h.options;
    let tot = (hl + payload.len()) as i32 + h.tot_len_extra;
    let mut p = vec![0x40 | (hl / 4) as u8, 0];
    p.extend_from_slice(&(tot as u16).to_be_bytes());
    p.extend_from_slice(&h.id.to_be_bytes());
    p.extend_from_slice(&h.frag_off.to_be_bytes());
    p.extend_from_slice(&[64, h.proto, 0, 0]);
    p.extend_from_slice(&h.src.octets());
    p.extend_from_slice(&h.dst.octets());
    p.extend(std::iter::repeat_n(1u8, h.options)); // NOP options
    p.extend_from_slice(payload);
    p
}

pub fn ipv6(src: &str, next: u8, payload: &[u8]) -> Vec<u8> {
    ipv6_between(src.parse().expect("v6"), DST6, next, payload)
}

pub fn ipv6_between(src: Ipv6Addr, dst: Ipv6Addr, next: u8, payload: &[u8]) -> Vec<u8> {
    let mut p = vec![0x60, 0, 0, 0];
    p.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    p.extend_from_slice(&[next, 64]);
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    p.extend_from_slice(payload);
    p
}

/// An extension header of 8 bytes (hop-by-hop, routing or destination options).
pub fn ext(next: u8) -> Vec<u8> {
    ext_sized(next, 0)
}

/// A hop-by-hop, routing or destination-options header of `(len + 1) * 8`
/// bytes (PadN options).
pub fn ext_sized(next: u8, len: u8) -> Vec<u8> {
    let mut h = vec![next, len, 1, 4, 0, 0, 0, 0];
    h.resize((usize::from(len) + 1) * 8, 0);
    h
}

/// An authentication header of `(len + 2) * 4` bytes.
pub fn ah(next: u8, len: u8) -> Vec<u8> {
    let mut h = vec![next, len, 0, 0, 0, 0, 0, 1];
    h.resize((usize::from(len) + 2) * 4, 0);
    h
}

/// An IPv6 fragment header: `offset` in bytes (a multiple of 8), the M flag
/// and the identification.
pub fn frag6(next: u8, offset: u16, more: bool, id: u32) -> Vec<u8> {
    let mut h = vec![next, 0];
    h.extend_from_slice(&((offset & 0xfff8) | u16::from(more)).to_be_bytes());
    h.extend_from_slice(&id.to_be_bytes());
    h
}

/// A TCP SYN from port 40000 with `doff` words of header (zero options).
pub fn tcp(dport: u16, doff: u8) -> Vec<u8> {
    tcp_segment(40000, dport, TCP_SYN, doff, 0)
}

pub fn tcp_segment(sport: u16, dport: u16, flags: u8, doff: u8, payload: usize) -> Vec<u8> {
    let mut t = Vec::new();
    t.extend_from_slice(&sport.to_be_bytes());
    t.extend_from_slice(&dport.to_be_bytes());
    t.extend_from_slice(&[
        0,
        0,
        0,
        1,
        0,
        0,
        0,
        0,
        doff << 4,
        flags,
        0xff,
        0xff,
        0,
        0,
        0,
        0,
    ]);
    t.extend(std::iter::repeat_n(
        0u8,
        (usize::from(doff) * 4).saturating_sub(20),
    ));
    t.extend(std::iter::repeat_n(0x5a, payload));
    t
}

/// A UDP datagram from port 40000.
pub fn udp(dport: u16, payload: &[u8]) -> Vec<u8> {
    udp_datagram(40000, dport, payload)
}

pub fn udp_datagram(sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut u = Vec::new();
    u.extend_from_slice(&sport.to_be_bytes());
    u.extend_from_slice(&dport.to_be_bytes());
    u.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    u.extend_from_slice(&[0, 0]);
    u.extend_from_slice(payload);
    u
}

/// An ICMP or ICMPv6 message of 8 bytes with identifier 1 and sequence 1.
pub fn icmp(t: u8, code: u8) -> Vec<u8> {
    icmp_echo(t, code, 1)
}

/// An ICMP or ICMPv6 message of 8 bytes with identifier `id`, sequence 1.
pub fn icmp_echo(t: u8, code: u8, id: u16) -> Vec<u8> {
    let mut m = vec![t, code, 0, 0];
    m.extend_from_slice(&id.to_be_bytes());
    m.extend_from_slice(&[0, 1]);
    m
}

/// A WireGuard-shaped message: type, reserved bytes, total length.
pub fn wg(msg_type: u8, reserved: u8, len: usize) -> Vec<u8> {
    let mut m = vec![msg_type, reserved, 0, 0];
    m.resize(len.max(4), 0xab);
    m.truncate(len);
    m
}

pub fn tcp4(src: &str, dport: u16) -> Vec<u8> {
    eth(&[], ETH_IP, &ipv4(v4(src, 6), &tcp(dport, 5)))
}

pub fn tcp6(src: &str, dport: u16) -> Vec<u8> {
    eth(&[], ETH_IP6, &ipv6(src, 6, &tcp(dport, 5)))
}

pub fn udp4(src: &str, dport: u16, payload: &[u8]) -> Vec<u8> {
    eth(&[], ETH_IP, &ipv4(v4(src, 17), &udp(dport, payload)))
}

pub fn udp6(src: &str, dport: u16, payload: &[u8]) -> Vec<u8> {
    eth(&[], ETH_IP6, &ipv6(src, 17, &udp(dport, payload)))
}

/// Lowercase hex, for failure messages.
pub fn hex(frame: &[u8]) -> String {
    frame.iter().map(|b| format!("{b:02x}")).collect()
}
