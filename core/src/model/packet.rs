//! Frame parsing for the reference model: the Rust mirror of `ebpf/parse.h`
//! and of `parse_l3` in `ebpf/verdict.h`.
//!
//! Pure code over a byte slice: Ethernet with up to two VLAN tags, IPv4 with
//! options, IPv6 with its extension header chain. Each check is the C check
//! of the same name, in the same order, with the same arithmetic (including
//! where the C relies on unsigned wrap-around), because the order decides
//! which reason a frame with several defects gets.
//!
//! Offsets into the frame stand where the C has pointers; "past the end"
//! means past the frame (`data_end`), and the IP lengths are checked
//! separately, exactly where the C checks them.

use crate::abi::Reason;

/// `CG_MAX_VLAN_TAGS`.
pub const MAX_VLAN_TAGS: usize = 2;
/// `CG_MAX_IPV6_EXT`.
pub const MAX_IPV6_EXT: usize = 6;

pub const ETH_HLEN: usize = 14;
pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88a8;

pub const IPPROTO_HOPOPTS: u8 = 0;
pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_ROUTING: u8 = 43;
pub const IPPROTO_FRAGMENT: u8 = 44;
pub const IPPROTO_NONE: u8 = 59;
pub const IPPROTO_AH: u8 = 51;
pub const IPPROTO_ICMPV6: u8 = 58;
pub const IPPROTO_DSTOPTS: u8 = 60;
pub const IPPROTO_MH: u8 = 135;

const IPV4_HLEN: usize = 20;
const IPV6_HLEN: usize = 40;
const IPV6_FRAG_HLEN: usize = 8;

/// What the decision needs to know about an IP packet (`struct pkt`).
///
/// IPv4 addresses are v4-mapped (`::ffff:a.b.c.d`) in `src` and `dst`, as in
/// the C, so that keys shared by both families have one shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet {
    /// 4 or 6.
    pub family: u8,
    pub src: [u8; 16],
    pub dst: [u8; 16],
    /// IPv4 only: the source as the IPv4 maps key it (network order).
    pub src4: [u8; 4],
    /// The upper-layer protocol (for IPv6, after the extension headers).
    pub proto: u8,
    /// The protocol fragments are keyed by: IPv4's protocol, or the next
    /// header named by IPv6's fragment header.
    pub frag_proto: u8,
    /// Transport header and payload, per the IP lengths. For IPv6 this is
    /// computed with the C's unsigned arithmetic and is at most 0xffff.
    pub l4_len: u32,
    /// IPv4: the identification in host order. IPv6: the four bytes of the
    /// fragment header's identification in host order, as the C stores it
    /// in `cg_frag_key.id`.
    pub frag_id: u32,
    /// The fragment offset in bytes; 0 for a first or unfragmented packet.
    pub frag_off: u32,
    pub more_frags: bool,
    /// Offset of the transport header in the frame.
    pub l4: usize,
}

fn be16(frame: &[u8], at: usize) -> Option<u16> {
    let bytes = frame.get(at..at + 2)?;
    Some(u16::from_be_bytes([bytes[0], bytes[1]]))
}

fn is_vlan(ethertype: u16) -> bool {
    ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD
}

/// `parse_ethernet`: the inner EtherType and the offset of the L3 header, or
/// None for a truncated frame or one with more than two tags.
pub fn parse_ethernet(frame: &[u8]) -> Option<(u16, usize)> {
    let mut ethertype = be16(frame, 12)?;
    let mut pos = ETH_HLEN;
    for _ in 0..MAX_VLAN_TAGS {
        if !is_vlan(ethertype) {
            break;
        }
        // The tag is 4 bytes: TCI, then the encapsulated EtherType.
        frame.get(pos..pos + 4)?;
        ethertype = be16(frame, pos + 2)?;
        pos += 4;
    }
    if is_vlan(ethertype) {
        return None;
    }
    Some((ethertype, pos))
}

/// `parse_l3` after `parse_ethernet`: Ok with the packet, or the reason the
/// frame cannot be judged further (`malformed`, `ipv6_ext_header`, or
/// `non_ip` for a frame that is not IP at all).
pub fn parse(frame: &[u8]) -> Result<Packet, Reason> {
    let Some((ethertype, l3)) = parse_ethernet(frame) else {
        return Err(Reason::Malformed);
    };
    match ethertype {
        ETH_P_IP => parse_ipv4(frame, l3).ok_or(Reason::Malformed),
        ETH_P_IPV6 => parse_ipv6(frame, l3),
        _ => Err(Reason::NonIp),
    }
}

fn v4_mapped(addr: [u8; 4]) -> [u8; 16] {
    let mut out = [0u8; 16];
    out[10] = 0xff;
    out[11] = 0xff;
    out[12..].copy_from_slice(&addr);
    out
}

/// `parse_ipv4` and the IPv4 half of `parse_l3`.
fn parse_ipv4(frame: &[u8], l3: usize) -> Option<Packet> {
    let ip = frame.get(l3..l3 + IPV4_HLEN)?;
    let version = ip[0] >> 4;
    let ihl = ip[0] & 0x0f;
    if version != 4 || ihl < 5 {
        return None;
    }
    let hdr_len = usize::from(ihl) * 4;
    if l3 + hdr_len > frame.len() {
        return None;
    }
    let tot_len = u16::from_be_bytes([ip[2], ip[3]]);
    if usize::from(tot_len) < hdr_len || l3 + usize::from(tot_len) > frame.len() {
        return None;
    }
    let src4 = [ip[12], ip[13], ip[14], ip[15]];
    let dst4 = [ip[16], ip[17], ip[18], ip[19]];
    let frag = u16::from_be_bytes([ip[6], ip[7]]);
    Some(Packet {
        family: 4,
        src: v4_mapped(src4),
        dst: v4_mapped(dst4),
        src4,
        proto: ip[9],
        frag_proto: ip[9],
        // tot_len >= hdr_len was checked above.
        l4_len: u32::from(tot_len) - u32::from(ihl) * 4,
        frag_id: u32::from(u16::from_be_bytes([ip[4], ip[5]])),
        frag_off: u32::from(frag & 0x1fff) * 8,
        more_frags: frag & 0x2000 != 0,
        l4: l3 + hdr_len,
    })
}

/// What `walk_ipv6_ext` found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Walk {
    /// The upper-layer protocol, its offset and the fragment fields.
    Ok {
        next: u8,
        pos: usize,
        frag_off: u32,
        more: bool,
        frag_id: u32,
        frag_next: u8,
    },
    /// A header runs past the frame (`EXT_TRUNCATED`).
    Truncated,
    /// A header the walk refuses, or a seventh one (`EXT_REJECT`).
    Reject,
}

/// Mobility, HIP, Shim6 and the experimental numbers (`ipv6_is_unwalked_ext`).
fn is_unwalked_ext(next: u8) -> bool {
    matches!(next, IPPROTO_MH | 139 | 140 | 253 | 254)
}

/// `walk_ipv6_ext`: at most `MAX_IPV6_EXT` headers are walked; the loop
/// turns once more to look at what follows the last one, and a header found
/// on that turn is still parsed (so a truncated seventh header is
/// `Truncated`) before the walk rejects it.
fn walk_ipv6_ext(frame: &[u8], start: usize, first: u8) -> Walk {
    let mut next = first;
    let mut pos = start;
    let (mut frag_off, mut more, mut frag_id, mut frag_next) = (0u32, false, 0u32, 0u8);
    for _ in 0..=MAX_IPV6_EXT {
        let len = match next {
            IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS => {
                let Some(h) = frame.get(pos..pos + 2) else {
                    return Walk::Truncated;
                };
                (usize::from(h[1]) + 1) * 8
            }
            IPPROTO_AH => {
                let Some(h) = frame.get(pos..pos + 2) else {
                    return Walk::Truncated;
                };
                (usize::from(h[1]) + 2) * 4
            }
            IPPROTO_FRAGMENT => {
                let Some(f) = frame.get(pos..pos + IPV6_FRAG_HLEN) else {
                    return Walk::Truncated;
                };
                let off = u16::from_be_bytes([f[2], f[3]]);
                frag_off = u32::from(off & 0xfff8);
                more = off & 1 != 0;
                frag_id = u32::from_be_bytes([f[4], f[5], f[6], f[7]]);
                frag_next = f[0];
                IPV6_FRAG_HLEN
            }
            other if is_unwalked_ext(other) => return Walk::Reject,
            other => {
                return Walk::Ok {
                    next: other,
                    pos,
                    frag_off,
                    more,
                    frag_id,
                    frag_next,
                }
            }
        };
        if pos + len > frame.len() {
            return Walk::Truncated;
        }
        next = frame[pos];
        pos += len;
        // A later fragment carries payload, not headers: what follows its
        // fragment header is no header at all (IPPROTO_NONE).
        if frag_off != 0 {
            next = IPPROTO_NONE;
        }
    }
    Walk::Reject
}

/// `parse_ipv6` and the IPv6 half of `parse_l3`.
fn parse_ipv6(frame: &[u8], l3: usize) -> Result<Packet, Reason> {
    let Some(ip6) = frame.get(l3..l3 + IPV6_HLEN) else {
        return Err(Reason::Malformed);
    };
    if ip6[0] >> 4 != 6 {
        return Err(Reason::Malformed);
    }
    let payload_len = u16::from_be_bytes([ip6[4], ip6[5]]);
    let payload = l3 + IPV6_HLEN;
    if payload + usize::from(payload_len) > frame.len() {
        return Err(Reason::Malformed);
    }
    let mut src = [0u8; 16];
    let mut dst = [0u8; 16];
    src.copy_from_slice(&ip6[8..24]);
    dst.copy_from_slice(&ip6[24..40]);
    let (next, pos, frag_off, more, frag_id, frag_next) =
        match walk_ipv6_ext(frame, payload, ip6[6]) {
            Walk::Ok {
                next,
                pos,
                frag_off,
                more,
                frag_id,
                frag_next,
            } => (next, pos, frag_off, more, frag_id, frag_next),
            Walk::Truncated => return Err(Reason::Malformed),
            Walk::Reject => return Err(Reason::Ipv6ExtHeader),
        };
    // The C subtracts in 32 bits: extension headers that run past the
    // payload length wrap around to a huge l4_len, which it rejects.
    let walked = u32::try_from(pos - payload).unwrap_or(u32::MAX);
    let l4_len = u32::from(payload_len).wrapping_sub(walked);
    if l4_len > 0xffff {
        return Err(Reason::Malformed);
    }
    Ok(Packet {
        family: 6,
        src,
        dst,
        src4: [0; 4],
        proto: next,
        frag_proto: frag_next,
        l4_len,
        frag_id,
        frag_off,
        more_frags: more,
        l4: pos,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eth(ethertype: u16, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![0u8; 12];
        f.extend_from_slice(&ethertype.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    #[test]
    fn ethernet_tags() {
        let check = |frame: &[u8], expected: Option<(u16, usize)>| {
            assert_eq!(parse_ethernet(frame), expected, "{frame:02x?}");
        };
        check(&[0u8; 13], None);
        check(&eth(ETH_P_IP, &[]), Some((ETH_P_IP, 14)));
        check(&eth(ETH_P_8021Q, &[0, 1, 0x08, 0x00]), Some((ETH_P_IP, 18)));
        check(&eth(ETH_P_8021Q, &[0, 1, 0x08]), None);
        check(
            &eth(ETH_P_8021AD, &[0, 1, 0x81, 0x00, 0, 2, 0x86, 0xdd]),
            Some((ETH_P_IPV6, 22)),
        );
        check(
            &eth(
                ETH_P_8021AD,
                &[0, 1, 0x81, 0x00, 0, 2, 0x81, 0x00, 0, 3, 8, 0],
            ),
            None,
        );
        // An unknown TPID is just an EtherType that is not IP.
        check(&eth(0x9100, &[0, 1, 8, 0]), Some((0x9100, 14)));
    }

    #[test]
    fn ipv6_l4_len_wraps_like_the_c() {
        // A hop-by-hop header of 8 bytes in a payload that claims 4.
        let mut ip6 = vec![0x60, 0, 0, 0, 0, 4, IPPROTO_HOPOPTS, 64];
        ip6.extend_from_slice(&[0u8; 32]);
        ip6.extend_from_slice(&[IPPROTO_TCP, 0, 0, 0, 0, 0, 0, 0]);
        let frame = eth(ETH_P_IPV6, &ip6);
        assert_eq!(parse(&frame), Err(Reason::Malformed));
    }
}
