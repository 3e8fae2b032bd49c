//! Evasion attacks against the filter: fragments, IPv6 extension headers, overlapping and tiny
//! TCP fragments. Each frame is built by hand and injected raw on the outside end of the veth;
//! what the host receives is observed three ways: the filter's counters (exact deltas), a packet
//! capture on the host end (which sees only what the filter passed), and real sockets in the
//! host namespace (a UDP receiver, TCP servers whose SYN-ACKs a capture on the outside end sees).
//!
//! The sources are "phantom" addresses of the admin network that the outside does not own: the
//! host has permanent neighbour entries for them, so it can answer, and the outside discards the
//! answers without a reply that would move the counters. The outside has no IPv6 stack, so the
//! only frames the filter judges are the injected ones (and ARP).
//!
//! The policy: default drop; `ssh` tcp/22 and `syslog` udp/5514 from the admin network only.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use anyhow::{ensure, Result};
use crmguard_lab::agent::Agent;
use crmguard_lab::net::{RawSocket, TcpServer, Vlan, L2};
use crmguard_lab::privileged;
use crmguard_lab::topology::Topology;
use crmguard_lab::wait::wait_for;

use crate::traffic::{
    self, admin_addr, contains, expect, is_syn_ack, phantom_neighbour, tcp_syn_segment,
    udp_datagram, wait_delta, Capture, Ext, Receiver, IPPROTO_TCP, IPPROTO_UDP,
};

const SSH: u16 = 22;
const SYSLOG: u16 = 5514;
/// A TCP port with a listening server that no service admits.
const CLOSED_TCP: u16 = 8081;
/// A UDP port with a receiver that no service admits.
const CLOSED_UDP: u16 = 9;

/// How long a passed SYN may take to be answered.
const ANSWER: Duration = Duration::from_secs(5);

fn policy(t: &Topology) -> String {
    format!(
        r#"[[interface]]
name = "{iface}"
xdp_mode = "native"

[firewall]
default = "drop"

[[firewall.service]]
name = "ssh"
proto = "tcp"
ports = [{SSH}]
from = ["{admin4}", "{admin6}"]

[[firewall.service]]
name = "syslog"
proto = "udp"
ports = [{SYSLOG}]
from = ["{admin4}", "{admin6}"]
"#,
        iface = t.host_if.name(),
        admin4 = t.addrs.admin4,
        admin6 = t.addrs.admin6,
    )
}

/// The lab of one attack scenario: an IPv4-only outside, the host with an IPv6 address too, the
/// agent, an injector on the outside end and captures on both ends.
struct Lab<'t> {
    t: &'t Topology,
    agent: Agent<'t>,
    l2: L2,
    inject: RawSocket,
    host_capture: Capture,
    out_capture: Capture,
    host4: Ipv4Addr,
    host6: Ipv6Addr,
}

impl<'t> Lab<'t> {
    fn start(t: &'t Topology) -> Result<Lab<'t>> {
        t.host_if.add_addr(&format!("{}/64", t.addrs.host6))?;
        let agent = Agent::start(&t.host, &policy(t))?;
        let (IpAddr::V4(host4), IpAddr::V6(host6)) = (t.addrs.host4, t.addrs.host6) else {
            unreachable!("the topology's host4 is IPv4 and host6 IPv6");
        };
        Ok(Lab {
            t,
            agent,
            l2: t.l2_to_host(Vlan::Untagged)?,
            inject: RawSocket::open(&t.out, t.out_if.name())?,
            host_capture: Capture::open(&t.host, t.host_if.name())?,
            out_capture: Capture::open(&t.out, t.out_if.name())?,
            host4,
            host6,
        })
    }

    fn iface(&self) -> &str {
        self.t.host_if.name()
    }

    fn send4(
        &self,
        src: Ipv4Addr,
        proto: u8,
        id: u16,
        offset: usize,
        more: bool,
        payload: &[u8],
    ) -> Result<()> {
        let packet = traffic::ipv4_packet(src, self.host4, proto, id, offset, more, payload)?;
        self.inject
            .send(&traffic::ethernet(&self.l2, 0x0800, &packet))
    }

    fn send6(&self, src: Ipv6Addr, exts: &[Ext], proto: u8, upper: &[u8]) -> Result<()> {
        let packet = traffic::ipv6_packet(src, self.host6, exts, proto, upper)?;
        self.inject
            .send(&traffic::ethernet(&self.l2, 0x86dd, &packet))
    }

    /// Fails if the host end saw a frame carrying any of `tags`. Call after [`Lab::sync`].
    fn assert_never_reached_host(&self, tags: &[&[u8]]) -> Result<()> {
        for tag in tags {
            let seen = self
                .host_capture
                .frames()
                .iter()
                .filter(|f| contains(f, tag))
                .count();
            ensure!(
                seen == 0,
                "{seen} frames carrying {:?} reached the host past the filter",
                String::from_utf8_lossy(tag)
            );
        }
        Ok(())
    }

    fn count_at_host(&self, tag: &[u8]) -> usize {
        self.host_capture
            .frames()
            .iter()
            .filter(|f| contains(f, tag))
            .count()
    }

    /// Waits until every frame injected so far has been judged and, if passed, captured.
    fn sync(&mut self, tag: &[u8]) -> Result<()> {
        self.host_capture.sync(&self.inject, &self.l2, tag)
    }

    fn wait_syn_ack(&mut self, from_port: u16, to_port: u16) -> Result<()> {
        self.out_capture.wait_for(
            ANSWER,
            &format!("a SYN-ACK from port {from_port} to port {to_port}"),
            |f| is_syn_ack(f, from_port, to_port),
        )
    }

    fn saw_syn_ack(&self, from_port: u16, to_port: u16) -> bool {
        self.out_capture
            .frames()
            .iter()
            .any(|f| is_syn_ack(f, from_port, to_port))
    }
}

/// A payload that starts with `tag` and is `len` bytes long.
fn tagged(tag: &[u8], len: usize) -> Vec<u8> {
    let mut payload = tag.to_vec();
    payload.resize(len, b'.');
    payload
}

/// The firewall-bypass through fragments: a filter that judges only packets with a transport
/// header lets a datagram to a closed port through in pieces. Here the first fragment's verdict
/// decides its later fragments: an admitted datagram is reassembled and delivered, a datagram to
/// a closed port never reaches the host in any piece, and a later fragment without a first one
/// is dropped as an orphan.
#[test]
fn fragments_do_not_carry_a_datagram_past_a_closed_port() -> Result<()> {
    if !privileged::require("attacks::fragments_do_not_carry_a_datagram_past_a_closed_port") {
        return Ok(());
    }
    let t = Topology::ipv4_only(120, 1)?;
    let mut lab = Lab::start(&t)?;
    let IpAddr::V4(src) = admin_addr(&t, false, 7) else {
        unreachable!()
    };
    phantom_neighbour(&t, IpAddr::V4(src))?;
    let syslog = Receiver::start(&t.host, SYSLOG)?;
    let closed = Receiver::start(&t.host, CLOSED_UDP)?;
    let before = traffic::counters(&lab.agent, lab.iface())?;

    // 24 bytes in the first fragment (the UDP header and 16 bytes), the rest in the second.
    let to = |port| SocketAddr::new(IpAddr::V4(lab.host4), port);
    let allowed = udp_datagram(
        SocketAddr::new(IpAddr::V4(src), 40001),
        to(SYSLOG),
        &tagged(b"ALLOWED1ALLOWED1ALLOWED2", 100),
    )?;
    let blocked = udp_datagram(
        SocketAddr::new(IpAddr::V4(src), 40002),
        to(CLOSED_UDP),
        &tagged(b"BLOCKED1BLOCKED1BLOCKED2", 100),
    )?;
    lab.send4(src, IPPROTO_UDP, 0x1111, 0, true, &allowed[..24])?;
    lab.send4(src, IPPROTO_UDP, 0x1111, 24, false, &allowed[24..])?;
    lab.send4(src, IPPROTO_UDP, 0x2222, 0, true, &blocked[..24])?;
    lab.send4(src, IPPROTO_UDP, 0x2222, 24, false, &blocked[24..])?;
    // A later fragment whose first fragment never came: an orphan, whatever it carries.
    lab.send4(
        src,
        IPPROTO_UDP,
        0x3333,
        24,
        false,
        &tagged(b"ORPHAN01", 40),
    )?;

    wait_delta(
        &lab.agent,
        lab.iface(),
        &before,
        &expect(&[
            ("pass", "service", 1),
            ("pass", "fragment", 1),
            ("drop", "default_drop", 2),
            ("drop", "fragment_orphan", 1),
        ]),
    )?;
    // The admitted datagram arrives whole, reassembled by the host: 8 bytes of header less.
    wait_for(
        traffic::SETTLE,
        "the reassembled datagram at udp/5514",
        || Ok((syslog.from(IpAddr::V4(src)).datagrams >= 1).then_some(())),
    )?;
    lab.sync(b"MARKER-fragments-v4")?;
    let got = syslog.from(IpAddr::V4(src));
    ensure!(
        got.datagrams == 1 && got.bytes == (allowed.len() - 8) as u64,
        "udp/{SYSLOG} received {got:?}, expected one datagram of {} bytes",
        allowed.len() - 8
    );
    ensure!(
        closed.total() == 0,
        "udp/{CLOSED_UDP} received {} datagrams",
        closed.total()
    );
    // Both pieces of the admitted datagram went past the filter, no piece of the others did.
    let pieces = (
        lab.count_at_host(b"ALLOWED1"),
        lab.count_at_host(b"ALLOWED2"),
    );
    ensure!(
        pieces == (1, 1),
        "the host saw {pieces:?} copies of the admitted datagram's two fragments"
    );
    lab.assert_never_reached_host(&[b"BLOCKED1", b"BLOCKED2", b"ORPHAN01"])?;
    Ok(())
}

/// Extension headers in front of the TCP header: the filter walks them and judges the real
/// transport header, not the bytes where a naive parser would look (here they read "port 22").
/// Chains of up to six headers are walked, a seventh or a mobility header is refused, and a
/// fragment header as the first extension header still exposes the TCP header of the first
/// fragment.
#[test]
fn ipv6_extension_headers_do_not_hide_the_transport_header() -> Result<()> {
    if !privileged::require("attacks::ipv6_extension_headers_do_not_hide_the_transport_header") {
        return Ok(());
    }
    let t = Topology::ipv4_only(120, 2)?;
    let _servers = [
        TcpServer::start(&t.host, SSH, "ssh\n")?,
        TcpServer::start(&t.host, CLOSED_TCP, "closed\n")?,
    ];
    let mut lab = Lab::start(&t)?;
    let IpAddr::V6(src) = admin_addr(&t, true, 7) else {
        unreachable!()
    };
    phantom_neighbour(&t, IpAddr::V6(src))?;
    let before = traffic::counters(&lab.agent, lab.iface())?;
    let host = IpAddr::V6(lab.host6);
    let syn = |sport: u16, dport: u16, tag: &[u8]| {
        tcp_syn_segment(
            SocketAddr::new(IpAddr::V6(src), sport),
            SocketAddr::new(host, dport),
            &tagged(tag, 16),
        )
    };
    let dst_opts = |n: usize| std::iter::repeat_n(Ext::DstOpts, n);

    // Hop-by-hop (whose first bytes read port 22) and destination options before a SYN to a
    // closed port: judged by the real port, dropped.
    lab.send6(
        src,
        &[Ext::HopByHopDecoy22, Ext::DstOpts],
        IPPROTO_TCP,
        &syn(41001, CLOSED_TCP, b"V6CLOSED")?,
    )?;
    // The same chain before a SYN to ssh from the admin network: admitted, and answered.
    lab.send6(
        src,
        &[Ext::HopByHopDecoy22, Ext::DstOpts],
        IPPROTO_TCP,
        &syn(41002, SSH, b"V6SSHOK!")?,
    )?;
    // Six extension headers: still walked.
    let six: Vec<Ext> = std::iter::once(Ext::HopByHop).chain(dst_opts(5)).collect();
    lab.send6(src, &six, IPPROTO_TCP, &syn(41003, SSH, b"V6SIXEXT")?)?;
    // Seven: refused, whatever follows.
    let seven: Vec<Ext> = std::iter::once(Ext::HopByHop).chain(dst_opts(6)).collect();
    lab.send6(src, &seven, IPPROTO_TCP, &syn(41004, SSH, b"V6SEVEN!")?)?;
    // A mobility header in the chain: refused.
    lab.send6(
        src,
        &[Ext::HopByHop, Ext::Mobility],
        IPPROTO_TCP,
        &syn(41005, SSH, b"V6MOBILE")?,
    )?;

    // A fragment header first, the TCP header in the first fragment (32 bytes: the 20-byte
    // header and 12 bytes of data), to ssh: admitted, the later fragment follows it, the host
    // reassembles the SYN and answers.
    let frag = tcp_syn_segment(
        SocketAddr::new(IpAddr::V6(src), 41006),
        SocketAddr::new(host, SSH),
        &tagged(b"V6FRAG-1....V6FRAG-2", 60),
    )?;
    let first = |id, more| Ext::Fragment {
        offset: 0,
        more,
        id,
    };
    let later = |id, offset| Ext::Fragment {
        offset,
        more: false,
        id,
    };
    lab.send6(src, &[first(0xa1, true)], IPPROTO_TCP, &frag[..32])?;
    lab.send6(src, &[later(0xa1, 32)], IPPROTO_TCP, &frag[32..])?;
    // The same to the closed port: both pieces dropped.
    let frag_closed = tcp_syn_segment(
        SocketAddr::new(IpAddr::V6(src), 41007),
        SocketAddr::new(host, CLOSED_TCP),
        &tagged(b"V6FRGC-1....V6FRGC-2", 60),
    )?;
    lab.send6(src, &[first(0xa2, true)], IPPROTO_TCP, &frag_closed[..32])?;
    lab.send6(src, &[later(0xa2, 32)], IPPROTO_TCP, &frag_closed[32..])?;
    // A later fragment without its first: an orphan.
    lab.send6(
        src,
        &[later(0xa3, 32)],
        IPPROTO_TCP,
        &tagged(b"V6ORPHAN", 40),
    )?;
    // A TCP later fragment that would overwrite the header (offset 16): malformed.
    lab.send6(
        src,
        &[first(0xa4, true)],
        IPPROTO_TCP,
        &syn(41008, SSH, b"V6OVER-1")?[..24],
    )?;
    lab.send6(
        src,
        &[later(0xa4, 16)],
        IPPROTO_TCP,
        &tagged(b"V6OVER-2", 24),
    )?;

    wait_delta(
        &lab.agent,
        lab.iface(),
        &before,
        &expect(&[
            // The SYNs to ssh behind two and six headers, the first fragments to ssh.
            ("pass", "service", 4),
            ("pass", "fragment", 1),
            // The SYN to the closed port and both fragments of the one to the closed port.
            ("drop", "default_drop", 3),
            ("drop", "ipv6_ext_header", 2),
            ("drop", "fragment_orphan", 1),
            ("drop", "malformed", 1),
        ]),
    )?;
    lab.wait_syn_ack(SSH, 41002)?;
    lab.wait_syn_ack(SSH, 41006)?;
    lab.sync(b"MARKER-extension-headers")?;
    lab.assert_never_reached_host(&[
        b"V6CLOSED",
        b"V6SEVEN!",
        b"V6MOBILE",
        b"V6FRGC-1",
        b"V6FRGC-2",
        b"V6ORPHAN",
        b"V6OVER-2",
    ])?;
    ensure!(
        !lab.saw_syn_ack(CLOSED_TCP, 41001),
        "the closed port answered the SYN behind extension headers"
    );
    ensure!(
        !lab.saw_syn_ack(CLOSED_TCP, 41007),
        "the closed port answered the fragmented SYN"
    );
    let pieces = (
        lab.count_at_host(b"V6FRAG-1"),
        lab.count_at_host(b"V6FRAG-2"),
    );
    ensure!(
        pieces == (1, 1),
        "the host saw {pieces:?} copies of the admitted fragmented SYN's two fragments"
    );
    Ok(())
}

/// RFC 1858: a later TCP fragment that overlaps the header (offset 8 or 16 bytes, where the
/// flags are) would let a harmless-looking first fragment be rewritten after the filter judged
/// it. Such fragments are malformed; a later fragment at offset 24 is ordinary fragmentation and
/// completes the datagram.
#[test]
fn tcp_fragments_that_overlap_the_header_are_malformed() -> Result<()> {
    if !privileged::require("attacks::tcp_fragments_that_overlap_the_header_are_malformed") {
        return Ok(());
    }
    let t = Topology::ipv4_only(120, 3)?;
    let _server = TcpServer::start(&t.host, SSH, "ssh\n")?;
    let mut lab = Lab::start(&t)?;
    let IpAddr::V4(src) = admin_addr(&t, false, 7) else {
        unreachable!()
    };
    phantom_neighbour(&t, IpAddr::V4(src))?;
    let before = traffic::counters(&lab.agent, lab.iface())?;

    let segment = tcp_syn_segment(
        SocketAddr::new(IpAddr::V4(src), 42001),
        SocketAddr::new(IpAddr::V4(lab.host4), SSH),
        &tagged(b"OVL-HEAD....OVL-TAIL", 44),
    )?;
    // The first fragment: the TCP header and 4 bytes, to ssh from the admin network.
    lab.send4(src, IPPROTO_TCP, 0x4444, 0, true, &segment[..24])?;
    // Rewrites of the header from offset 8 (sequence number onwards, flags included) and 16.
    let mut rewrite = segment[8..24].to_vec();
    rewrite[5] = 0x12; // byte 13 of the header: SYN+ACK instead of SYN
    rewrite.extend_from_slice(b"OVL-EVIL");
    lab.send4(src, IPPROTO_TCP, 0x4444, 8, true, &rewrite)?;
    lab.send4(src, IPPROTO_TCP, 0x4444, 16, true, &tagged(b"OVL-EVL2", 16))?;
    // The honest rest of the datagram.
    lab.send4(src, IPPROTO_TCP, 0x4444, 24, false, &segment[24..])?;

    wait_delta(
        &lab.agent,
        lab.iface(),
        &before,
        &expect(&[
            ("pass", "service", 1),
            ("pass", "fragment", 1),
            ("drop", "malformed", 2),
        ]),
    )?;
    // The host reassembled the original SYN, not the rewritten one, and answers it.
    lab.wait_syn_ack(SSH, 42001)?;
    lab.sync(b"MARKER-overlap")?;
    lab.assert_never_reached_host(&[b"OVL-EVIL", b"OVL-EVL2"])?;
    Ok(())
}

/// A tiny first fragment that cuts the TCP header after 8 bytes (ports and sequence number, no
/// flags) cannot be judged: it is malformed, and so are all its later fragments, the one that
/// carries the rest of the header and the ones beyond it.
#[test]
fn a_tiny_first_fragment_and_its_followers_are_malformed() -> Result<()> {
    if !privileged::require("attacks::a_tiny_first_fragment_and_its_followers_are_malformed") {
        return Ok(());
    }
    let t = Topology::ipv4_only(120, 4)?;
    let _server = TcpServer::start(&t.host, SSH, "ssh\n")?;
    let mut lab = Lab::start(&t)?;
    let IpAddr::V4(src) = admin_addr(&t, false, 7) else {
        unreachable!()
    };
    phantom_neighbour(&t, IpAddr::V4(src))?;
    let before = traffic::counters(&lab.agent, lab.iface())?;

    let segment = tcp_syn_segment(
        SocketAddr::new(IpAddr::V4(src), 43001),
        SocketAddr::new(IpAddr::V4(lab.host4), SSH),
        &tagged(b"TINY-MID........TINY-END", 36),
    )?;
    lab.send4(src, IPPROTO_TCP, 0x5555, 0, true, &segment[..8])?;
    lab.send4(src, IPPROTO_TCP, 0x5555, 8, true, &segment[8..32])?;
    lab.send4(src, IPPROTO_TCP, 0x5555, 32, false, &segment[32..])?;

    wait_delta(
        &lab.agent,
        lab.iface(),
        &before,
        &expect(&[("drop", "malformed", 3)]),
    )?;
    lab.sync(b"MARKER-tiny")?;
    lab.assert_never_reached_host(&[b"TINY-MID", b"TINY-END"])?;
    let first_seen = lab
        .host_capture
        .frames()
        .iter()
        .filter(|f| f.len() >= 34 && f[12..14] == [0x08, 0x00] && f[18..20] == [0x55, 0x55])
        .count();
    ensure!(
        first_seen == 0,
        "{first_seen} fragments of the tiny-fragment datagram reached the host"
    );
    ensure!(
        !lab.saw_syn_ack(SSH, 43001),
        "the host answered the SYN split into a tiny fragment"
    );
    Ok(())
}
