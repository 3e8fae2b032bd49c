//! Traffic and observation tools shared by the attack, limit, reload and monitor scenarios.
//!
//! The harness (`crmguard_tests`) gives namespaces, the agent and simple clients; the scenarios
//! here also need hand-made frames (IPv4 fragments, IPv6 extension header chains, WireGuard
//! messages), per-source accounting at the receiver, paced floods that know how long they ran,
//! many concurrent TCP connects, echo requests, a packet capture, a direct control-socket client
//! and exact counter deltas. Every socket is created inside its namespace; every thread stops and
//! is joined on drop.

// `unsafe`: poll(2) over the receivers' sockets and AF_PACKET frame injection.
#![allow(unsafe_code)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use crmguard_lab::agent::Agent;
use crmguard_lab::net::L2;
use crmguard_lab::netns::NetNs;
use crmguard_lab::topology::Topology;
use crmguard_lab::wait::wait_for;
use etherparse::{PacketBuilder, SlicedPacket, TransportSlice};
use nix::errno::Errno;
use nix::sys::socket::{
    self, sockopt, AddressFamily, SockFlag, SockProtocol, SockType, SockaddrStorage,
};
use serde_json::Value;

/// How long counters and receivers may take to reflect traffic already sent.
pub const SETTLE: Duration = Duration::from_secs(10);

/// How often worker threads look at their stop flag.
const STOP_POLL: Duration = Duration::from_millis(50);

pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_HOPOPTS: u8 = 0;
pub const IPPROTO_FRAGMENT: u8 = 44;
pub const IPPROTO_DSTOPTS: u8 = 60;
pub const IPPROTO_MH: u8 = 135;

/// An EtherType no stack handles: frames of it pass the filter as `non_ip` and are dropped by the
/// kernel after the packet taps saw them, which makes them markers in a capture.
const ETH_P_MARKER: u16 = 0x88b5;

// ---- frames ---------------------------------------------------------------------------------

/// An untagged Ethernet frame around `payload`.
pub fn ethernet(l2: &L2, ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(14 + payload.len());
    frame.extend_from_slice(&l2.dst_mac);
    frame.extend_from_slice(&l2.src_mac);
    frame.extend_from_slice(&ethertype.to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

fn checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = bytes
        .chunks(2)
        .map(|pair| u32::from(u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !u16::try_from(sum).expect("the sum is folded to 16 bits")
}

/// An IPv4 packet (no options) carrying `payload` at fragment offset `offset` (bytes, a multiple
/// of 8), with the more-fragments flag `more`.
pub fn ipv4_packet(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    proto: u8,
    id: u16,
    offset: usize,
    more: bool,
    payload: &[u8],
) -> Result<Vec<u8>> {
    ensure!(
        offset.is_multiple_of(8),
        "fragment offset {offset} is not a multiple of 8"
    );
    let units = u16::try_from(offset / 8).context("fragment offset too large")?;
    ensure!(units < 0x2000, "fragment offset {offset} too large");
    let total = u16::try_from(20 + payload.len()).context("IPv4 packet too long")?;
    let flags = if more { 0x2000 } else { 0 };
    let mut packet = Vec::with_capacity(usize::from(total));
    packet.extend_from_slice(&[0x45, 0]);
    packet.extend_from_slice(&total.to_be_bytes());
    packet.extend_from_slice(&id.to_be_bytes());
    packet.extend_from_slice(&(flags | units).to_be_bytes());
    packet.extend_from_slice(&[64, proto, 0, 0]);
    packet.extend_from_slice(&src.octets());
    packet.extend_from_slice(&dst.octets());
    let sum = checksum(&packet);
    packet[10..12].copy_from_slice(&sum.to_be_bytes());
    packet.extend_from_slice(payload);
    Ok(packet)
}

/// One IPv6 extension header of a hand-made chain.
#[derive(Debug, Clone, Copy)]
pub enum Ext {
    /// Hop-by-hop options, 8 bytes of padding.
    HopByHop,
    /// Hop-by-hop options whose first bytes read `00 16`: port 22 to a parser that expects the
    /// transport header right after the fixed IPv6 header.
    HopByHopDecoy22,
    /// Destination options, 8 bytes of padding.
    DstOpts,
    /// A mobility header (8 bytes, binding refresh request).
    Mobility,
    /// A fragment header.
    Fragment { offset: usize, more: bool, id: u32 },
}

impl Ext {
    fn number(self) -> u8 {
        match self {
            Ext::HopByHop | Ext::HopByHopDecoy22 => IPPROTO_HOPOPTS,
            Ext::DstOpts => IPPROTO_DSTOPTS,
            Ext::Mobility => IPPROTO_MH,
            Ext::Fragment { .. } => IPPROTO_FRAGMENT,
        }
    }

    fn bytes(self, next: u8) -> Result<[u8; 8]> {
        Ok(match self {
            // PadN with four bytes of padding.
            Ext::HopByHop | Ext::DstOpts => [next, 0, 1, 4, 0, 0, 0, 0],
            // Pad1, then an unknown option of type 0x16 ("skip if unknown") with 3 bytes.
            Ext::HopByHopDecoy22 => [next, 0, 0x00, 0x16, 3, 0, 0, 0],
            // Payload proto, length 0 (8 bytes), MH type 0 (binding refresh request).
            Ext::Mobility => [next, 0, 0, 0, 0, 0, 0, 0],
            Ext::Fragment { offset, more, id } => {
                ensure!(
                    offset.is_multiple_of(8),
                    "fragment offset {offset} is not a multiple of 8"
                );
                let field =
                    u16::try_from(offset).context("fragment offset too large")? | u16::from(more);
                let [o0, o1] = field.to_be_bytes();
                let [i0, i1, i2, i3] = id.to_be_bytes();
                [next, 0, o0, o1, i0, i1, i2, i3]
            }
        })
    }
}

/// An IPv6 packet whose extension headers `exts` (in order) precede `upper` bytes of protocol
/// `upper_proto`.
pub fn ipv6_packet(
    src: Ipv6Addr,
    dst: Ipv6Addr,
    exts: &[Ext],
    upper_proto: u8,
    upper: &[u8],
) -> Result<Vec<u8>> {
    let mut chain = Vec::new();
    for (i, ext) in exts.iter().enumerate() {
        let next = exts.get(i + 1).map_or(upper_proto, |e| e.number());
        chain.extend_from_slice(&ext.bytes(next)?);
    }
    let first = exts.first().map_or(upper_proto, |e| e.number());
    let payload_len = u16::try_from(chain.len() + upper.len()).context("IPv6 payload too long")?;
    let mut packet = Vec::with_capacity(40 + usize::from(payload_len));
    packet.extend_from_slice(&[0x60, 0, 0, 0]);
    packet.extend_from_slice(&payload_len.to_be_bytes());
    packet.extend_from_slice(&[first, 64]);
    packet.extend_from_slice(&src.octets());
    packet.extend_from_slice(&dst.octets());
    packet.extend_from_slice(&chain);
    packet.extend_from_slice(upper);
    Ok(packet)
}

/// The transport bytes (header and payload, checksum valid for the addresses) that `build`
/// produces after the IP header.
fn transport_bytes(
    src: IpAddr,
    dst: IpAddr,
    payload: &[u8],
    build: impl FnOnce(
        etherparse::PacketBuilderStep<etherparse::IpHeaders>,
        &mut Vec<u8>,
        &[u8],
    ) -> Result<()>,
) -> Result<Vec<u8>> {
    let (step, ip_len) = match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => (PacketBuilder::ipv4(s.octets(), d.octets(), 64), 20),
        (IpAddr::V6(s), IpAddr::V6(d)) => (PacketBuilder::ipv6(s.octets(), d.octets(), 64), 40),
        _ => bail!("{src} and {dst} are of different families"),
    };
    let mut packet = Vec::new();
    build(step, &mut packet, payload)?;
    Ok(packet.split_off(ip_len))
}

/// A UDP header and `payload`, with the checksum of the whole datagram.
pub fn udp_datagram(src: SocketAddr, dst: SocketAddr, payload: &[u8]) -> Result<Vec<u8>> {
    transport_bytes(src.ip(), dst.ip(), payload, |step, out, payload| {
        step.udp(src.port(), dst.port()).write(out, payload)?;
        Ok(())
    })
}

/// A TCP SYN segment carrying `payload`, with the checksum of the whole segment.
pub fn tcp_syn_segment(src: SocketAddr, dst: SocketAddr, payload: &[u8]) -> Result<Vec<u8>> {
    transport_bytes(src.ip(), dst.ip(), payload, |step, out, payload| {
        step.tcp(src.port(), dst.port(), 0x2000_0000, 64240)
            .syn()
            .write(out, payload)?;
        Ok(())
    })
}

/// A frame of an EtherType no stack handles, carrying `tag`.
pub fn marker_frame(l2: &L2, tag: &[u8]) -> Vec<u8> {
    let mut payload = tag.to_vec();
    payload.resize(payload.len().max(46), 0);
    ethernet(l2, ETH_P_MARKER, &payload)
}

/// Whether `needle` occurs in `haystack`.
pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

/// Whether `frame` is a TCP SYN-ACK from port `sport` to port `dport`.
pub fn is_syn_ack(frame: &[u8], sport: u16, dport: u16) -> bool {
    let Ok(sliced) = SlicedPacket::from_ethernet(frame) else {
        return false;
    };
    matches!(sliced.transport, Some(TransportSlice::Tcp(tcp))
        if tcp.syn() && tcp.ack() && tcp.source_port() == sport && tcp.destination_port() == dport)
}

// ---- WireGuard messages -----------------------------------------------------------------------

/// A WireGuard message of `msg_type` and `len` bytes: three zero reserved bytes, then filler.
pub fn wg_message(msg_type: u8, len: usize) -> Vec<u8> {
    let mut msg: Vec<u8> = (0..len)
        .map(|i| i.to_le_bytes()[0].wrapping_mul(31) | 1)
        .collect();
    for (i, byte) in [msg_type, 0, 0, 0].into_iter().enumerate() {
        if let Some(slot) = msg.get_mut(i) {
            *slot = byte;
        }
    }
    msg
}

/// A handshake initiation: type 1, 148 bytes.
pub fn wg_initiation() -> Vec<u8> {
    wg_message(1, 148)
}

// ---- the lab around a topology ---------------------------------------------------------------

/// Gives the host a permanent neighbour entry that sends `addr` to the outside end, so that the
/// host can answer a source the outside does not own (the outside kernel then discards the
/// answer without replying, and only the captures see it).
pub fn phantom_neighbour(t: &Topology, addr: IpAddr) -> Result<()> {
    let lladdr = t
        .out_if
        .mac()?
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":");
    t.host.ip(&[
        "neigh",
        "replace",
        &addr.to_string(),
        "lladdr",
        &lladdr,
        "dev",
        t.host_if.name(),
        "nud",
        "permanent",
    ])?;
    Ok(())
}

/// The address `10.X.Y.last` (or `fd00:X:Y::last`) of the topology's admin network.
pub fn admin_addr(t: &Topology, v6: bool, last: u8) -> IpAddr {
    match (t.addrs.out4, t.addrs.out6, v6) {
        (IpAddr::V4(a), _, false) => {
            let [o0, o1, o2, _] = a.octets();
            IpAddr::V4(Ipv4Addr::new(o0, o1, o2, last))
        }
        (_, IpAddr::V6(a), true) => {
            let mut s = a.segments();
            s[7] = u16::from(last);
            IpAddr::V6(Ipv6Addr::from(s))
        }
        _ => unreachable!("the topology's out4 is IPv4 and out6 IPv6"),
    }
}

/// Adds `addr` to the outside end, so real sockets can send from it.
pub fn add_out_addr(t: &Topology, addr: IpAddr) -> Result<()> {
    let len = if addr.is_ipv4() { 24 } else { 64 };
    t.out_if.add_addr(&format!("{addr}/{len}"))
}

// ---- counters ----------------------------------------------------------------------------------

/// The interface's counters, packets by (action, reason).
pub type Counters = BTreeMap<(String, String), u64>;

/// A snapshot of `iface`'s counters, from the status the control socket gives (what
/// `crmguard status --json` prints; the socket is faster and does not read the config file,
/// which some tests break on purpose).
pub fn counters(agent: &Agent, iface: &str) -> Result<Counters> {
    let status = control(agent, r#"{"cmd":"status"}"#)?;
    ensure!(status["result"] == "status", "status refused: {status}");
    counters_of(&status, iface)
}

pub fn counters_of(status: &Value, iface: &str) -> Result<Counters> {
    let list = status["counters"]
        .as_array()
        .with_context(|| format!("status has no counters: {status}"))?;
    let mut out = Counters::new();
    for c in list.iter().filter(|c| c["interface"] == iface) {
        let key = (
            c["action"].as_str().unwrap_or_default().to_owned(),
            c["reason"].as_str().unwrap_or_default().to_owned(),
        );
        *out.entry(key).or_default() += c["packets"].as_u64().unwrap_or_default();
    }
    Ok(out)
}

/// What moved between two snapshots, without `non_ip` (ARP and the capture markers) and without
/// counters that did not move.
pub fn delta(before: &Counters, after: &Counters) -> Counters {
    after
        .iter()
        .filter(|((_, reason), _)| reason != "non_ip")
        .map(|(k, v)| {
            (
                k.clone(),
                v.saturating_sub(before.get(k).copied().unwrap_or(0)),
            )
        })
        .filter(|(_, v)| *v != 0)
        .collect()
}

/// The packets of one (action, reason) in a delta.
pub fn get(counters: &Counters, action: &str, reason: &str) -> u64 {
    counters
        .get(&(action.to_owned(), reason.to_owned()))
        .copied()
        .unwrap_or(0)
}

/// A delta written as a list, for expectations.
pub fn expect(entries: &[(&str, &str, u64)]) -> Counters {
    entries
        .iter()
        .filter(|(_, _, n)| *n != 0)
        .map(|(a, r, n)| (((*a).to_owned(), (*r).to_owned()), *n))
        .collect()
}

/// Waits until the counters moved by exactly `expected` since `before` (nothing else but
/// `non_ip` moved), and fails with the last delta seen when they do not within [`SETTLE`].
pub fn wait_delta(
    agent: &Agent,
    iface: &str,
    before: &Counters,
    expected: &Counters,
) -> Result<()> {
    let mut last = Counters::new();
    let waited = wait_for(SETTLE, "the counters to move as expected", || {
        last = delta(before, &counters(agent, iface)?);
        Ok((last == *expected).then_some(()))
    });
    waited.with_context(|| {
        format!("expected the counters to move by {expected:?}, they moved by {last:?}")
    })
}

/// Waits until `cond(delta since before)` holds and returns that delta.
pub fn wait_delta_until(
    agent: &Agent,
    iface: &str,
    before: &Counters,
    what: &str,
    mut cond: impl FnMut(&Counters) -> bool,
) -> Result<Counters> {
    let mut last = Counters::new();
    let waited = wait_for(SETTLE, what, || {
        last = delta(before, &counters(agent, iface)?);
        Ok(cond(&last).then(|| last.clone()))
    });
    waited.with_context(|| format!("the counters moved by {last:?}"))
}

// ---- the control socket ------------------------------------------------------------------------

/// Sends one request line to the agent's control socket and returns the parsed answer. Faster
/// than the CLI, and it does not read the config file (which may be broken on purpose).
pub fn control(agent: &Agent, request: &str) -> Result<Value> {
    let path = agent.dir().join("control.sock");
    let mut stream =
        UnixStream::connect(&path).with_context(|| format!("connecting to {}", path.display()))?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    stream.write_all(format!("{request}\n").as_bytes())?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line)?;
    serde_json::from_str(&line).with_context(|| format!("control socket answered {line:?}"))
}

/// Replaces the agent's config file in one rename, so the agent never reads half a file.
pub fn replace_config(agent: &Agent, text: &str) -> Result<()> {
    let path = agent.config_path();
    let tmp = path.with_extension("toml.new");
    std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming onto {}", path.display()))
}

// ---- a stoppable worker -------------------------------------------------------------------------

struct Worker<T> {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<T>>,
}

impl<T: Send + 'static> Worker<T> {
    fn spawn(name: &str, body: impl FnOnce(Arc<AtomicBool>) -> T + Send + 'static) -> Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || body(flag))
            .with_context(|| format!("spawning thread {name}"))?;
        Ok(Worker {
            stop,
            thread: Some(thread),
        })
    }

    fn finish(&mut self) -> Option<T> {
        self.stop.store(true, Ordering::Relaxed);
        let result = self.thread.take().map(JoinHandle::join);
        match result {
            Some(Ok(value)) => Some(value),
            Some(Err(_)) => {
                eprintln!("a traffic thread panicked");
                None
            }
            None => None,
        }
    }
}

impl<T> Drop for Worker<T> {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

// ---- a UDP receiver that counts per source ------------------------------------------------------

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Tally {
    pub datagrams: u64,
    pub bytes: u64,
}

/// A UDP socket on `[::]:port` (IPv4 and IPv6) in a namespace, counting datagrams and bytes per
/// source address.
pub struct Receiver {
    tallies: Arc<Mutex<BTreeMap<IpAddr, Tally>>>,
    total: Arc<AtomicU64>,
    _worker: Worker<()>,
}

impl Receiver {
    pub fn start(ns: &NetNs, port: u16) -> Result<Receiver> {
        let sock = ns.run_in(|| -> Result<UdpSocket> {
            let fd = socket::socket(
                AddressFamily::Inet6,
                SockType::Datagram,
                SockFlag::SOCK_CLOEXEC,
                None,
            )
            .context("creating a UDP socket")?;
            socket::setsockopt(&fd, sockopt::Ipv6V6Only, &false)?;
            socket::setsockopt(&fd, sockopt::ReuseAddr, &true)?;
            // Room for a few seconds of a flood, so the count is the filter's, not the buffer's.
            socket::setsockopt(&fd, sockopt::RcvBufForce, &(8 << 20))?;
            let addr =
                SockaddrStorage::from(SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), port));
            socket::bind(fd.as_raw_fd(), &addr).with_context(|| format!("binding [::]:{port}"))?;
            Ok(UdpSocket::from(fd))
        })??;
        sock.set_read_timeout(Some(STOP_POLL))?;
        let tallies = Arc::new(Mutex::new(BTreeMap::<IpAddr, Tally>::new()));
        let total = Arc::new(AtomicU64::new(0));
        let (t, n) = (Arc::clone(&tallies), Arc::clone(&total));
        let worker = Worker::spawn(&format!("receiver-{port}"), move |stop| {
            let mut buf = vec![0u8; 65536];
            while !stop.load(Ordering::Relaxed) {
                match sock.recv_from(&mut buf) {
                    Ok((len, from)) => {
                        let mut map = t.lock().unwrap_or_else(|p| p.into_inner());
                        let tally = map.entry(from.ip().to_canonical()).or_default();
                        tally.datagrams += 1;
                        tally.bytes += len as u64;
                        n.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) => {}
                    Err(e) => {
                        eprintln!("receiver on port {port}: {e}");
                        return;
                    }
                }
            }
        })?;
        Ok(Receiver {
            tallies,
            total,
            _worker: worker,
        })
    }

    pub fn from(&self, src: IpAddr) -> Tally {
        self.tallies
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&src)
            .copied()
            .unwrap_or_default()
    }

    pub fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }
}

// ---- UDP senders ----------------------------------------------------------------------------

/// Sends each of `payloads` once from `src` (ephemeral port) to `dst`; every send must succeed.
pub fn send_datagrams(
    ns: &NetNs,
    src: IpAddr,
    dst: SocketAddr,
    payloads: &[Vec<u8>],
) -> Result<()> {
    ns.run_in(|| -> Result<()> {
        let sock =
            UdpSocket::bind(SocketAddr::new(src, 0)).with_context(|| format!("binding {src}"))?;
        for (i, payload) in payloads.iter().enumerate() {
            let sent = sock
                .send_to(payload, dst)
                .with_context(|| format!("sending datagram {i} to {dst}"))?;
            ensure!(
                sent == payload.len(),
                "datagram {i}: sent {sent} of {} bytes",
                payload.len()
            );
        }
        Ok(())
    })?
}

/// What a [`Flood`] did.
#[derive(Debug, Clone, Copy)]
pub struct FloodReport {
    /// Datagrams the stack accepted.
    pub sent: u64,
    /// From the first to the last datagram sent.
    pub active: Duration,
}

/// A paced UDP sender: `batch` datagrams of `payload`, then a pause of `pause`, until stopped.
pub struct Flood {
    sent: Arc<AtomicU64>,
    worker: Worker<Option<(Instant, Instant)>>,
}

impl Flood {
    pub fn start(
        ns: &NetNs,
        src: IpAddr,
        dst: SocketAddr,
        payload: Vec<u8>,
        batch: u32,
        pause: Duration,
    ) -> Result<Flood> {
        let sock = ns
            .run_in(|| UdpSocket::bind(SocketAddr::new(src, 0)))?
            .with_context(|| format!("binding {src} in netns {}", ns.name()))?;
        let sent = Arc::new(AtomicU64::new(0));
        let count = Arc::clone(&sent);
        let worker = Worker::spawn(&format!("flood-{dst}"), move |stop| {
            let mut span: Option<(Instant, Instant)> = None;
            while !stop.load(Ordering::Relaxed) {
                for _ in 0..batch {
                    if sock.send_to(&payload, dst).is_ok() {
                        count.fetch_add(1, Ordering::Relaxed);
                        let now = Instant::now();
                        span = Some((span.map_or(now, |(first, _)| first), now));
                    }
                }
                std::thread::sleep(pause);
            }
            span
        })?;
        Ok(Flood { sent, worker })
    }

    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    pub fn stop(mut self) -> FloodReport {
        let span = self.worker.finish().flatten();
        FloodReport {
            sent: self.sent(),
            active: span.map_or(Duration::ZERO, |(first, last)| last - first),
        }
    }
}

/// How far apart the sender's clock and the filter's may be at either end of a flood: the
/// sender timestamps its own sends, the filter sees them a little later, by a scheduling delay
/// that on a loaded 2-core machine stays well under this.
const JITTER: Duration = Duration::from_millis(10);

/// The bounds of what a GCRA bucket of `rate` and `burst` admits from a source that sends faster
/// than `rate` for `active`: the burst at once, then one packet per 1/rate. Both bounds allow
/// [`JITTER`] worth of packets, and the upper one a packet more than the burst: the exact size
/// of a burst is `limits::a_burst_admits_exactly_its_size_back_to_back`'s business, so that the
/// rate tests check the rate alone.
// The bounds are whole packet counts rounded from non-negative products.
#[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
pub fn gcra_expected(rate: u32, burst: u32, active: Duration) -> (u64, u64) {
    let steady = f64::from(rate) * active.as_secs_f64();
    let slack = (f64::from(rate) * JITTER.as_secs_f64()).ceil() as u64;
    let low = (u64::from(burst) + steady.floor() as u64).saturating_sub(slack);
    let high = u64::from(burst) + 1 + steady.ceil() as u64 + slack;
    (low, high)
}

// ---- TCP connects ---------------------------------------------------------------------------

/// How a batch of concurrent connects ended.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Connects {
    pub connected: usize,
    pub refused: usize,
    pub timed_out: usize,
}

/// Opens `n` TCP connections at once from `src` to `dst` inside `ns` and waits up to `timeout`
/// for each; a connect still pending then counts as timed out.
pub fn connect_many(
    ns: &NetNs,
    src: IpAddr,
    dst: SocketAddr,
    n: usize,
    timeout: Duration,
) -> Result<Connects> {
    connect_from_each(ns, &vec![src; n], dst, timeout)
}

/// [`connect_many`] with one connection from each of `sources`.
pub fn connect_from_each(
    ns: &NetNs,
    sources: &[IpAddr],
    dst: SocketAddr,
    timeout: Duration,
) -> Result<Connects> {
    ns.run_in(|| -> Result<Connects> {
        let family = if dst.is_ipv4() {
            AddressFamily::Inet
        } else {
            AddressFamily::Inet6
        };
        let mut pending = Vec::with_capacity(sources.len());
        for &src in sources {
            let fd = socket::socket(
                family,
                SockType::Stream,
                SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
                None,
            )?;
            socket::bind(
                fd.as_raw_fd(),
                &SockaddrStorage::from(SocketAddr::new(src, 0)),
            )?;
            match socket::connect(fd.as_raw_fd(), &SockaddrStorage::from(dst)) {
                Ok(()) | Err(Errno::EINPROGRESS) => pending.push(fd),
                Err(e) => return Err(e).context("connect"),
            }
        }
        let deadline = Instant::now() + timeout;
        let mut result = Connects::default();
        let mut done: Vec<OwnedFd> = Vec::new();
        while !pending.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            let mut fds: Vec<libc::pollfd> = pending
                .iter()
                .map(|fd| libc::pollfd {
                    fd: fd.as_raw_fd(),
                    events: libc::POLLOUT,
                    revents: 0,
                })
                .collect();
            let millis = libc::c_int::try_from(left.as_millis().max(1)).unwrap_or(libc::c_int::MAX);
            // SAFETY: `fds` is a valid array of initialised pollfds whose length is passed; every
            // fd in it is owned by `pending` and stays open for the call.
            let ready = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, millis) };
            if ready < 0 {
                return Err(std::io::Error::last_os_error()).context("poll");
            }
            let mut still = Vec::new();
            for (fd, p) in pending.into_iter().zip(&fds) {
                if p.revents == 0 {
                    still.push(fd);
                    continue;
                }
                match socket::getsockopt(&fd, sockopt::SocketError)? {
                    0 => result.connected += 1,
                    e if e == Errno::ECONNREFUSED as i32 => result.refused += 1,
                    _ => result.timed_out += 1,
                }
                // Kept open until the end, so no port is reused by a later connect.
                done.push(fd);
            }
            pending = still;
        }
        result.timed_out += pending.len();
        Ok(result)
    })?
}

// ---- ICMP echo ---------------------------------------------------------------------------------

/// A raw ICMP socket in a namespace that sends echo requests from one address and counts the
/// replies to them.
pub struct Pinger {
    fd: OwnedFd,
    id: u16,
    answered: std::collections::BTreeSet<u16>,
}

impl Pinger {
    pub fn open(ns: &NetNs, src: Ipv4Addr, id: u16) -> Result<Pinger> {
        let fd = ns.run_in(|| -> Result<OwnedFd> {
            let fd = socket::socket(
                AddressFamily::Inet,
                SockType::Raw,
                SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
                SockProtocol::Icmp,
            )
            .context("creating a raw ICMP socket")?;
            socket::bind(
                fd.as_raw_fd(),
                &SockaddrStorage::from(SocketAddr::new(IpAddr::V4(src), 0)),
            )?;
            socket::setsockopt(&fd, sockopt::RcvBufForce, &(4 << 20))?;
            Ok(fd)
        })??;
        Ok(Pinger {
            fd,
            id,
            answered: Default::default(),
        })
    }

    /// Sends echo request `seq` to `dst`.
    pub fn send(&self, dst: Ipv4Addr, seq: u16) -> Result<()> {
        let mut msg = vec![8, 0, 0, 0];
        msg.extend_from_slice(&self.id.to_be_bytes());
        msg.extend_from_slice(&seq.to_be_bytes());
        msg.extend_from_slice(b"crmguard echo test");
        let sum = checksum(&msg);
        msg[2..4].copy_from_slice(&sum.to_be_bytes());
        let to = SockaddrStorage::from(SocketAddr::new(IpAddr::V4(dst), 0));
        socket::sendto(self.fd.as_raw_fd(), &msg, &to, socket::MsgFlags::empty())
            .context("sending an echo request")?;
        Ok(())
    }

    /// The number of distinct requests answered so far.
    pub fn replies(&mut self) -> Result<usize> {
        let mut buf = [0u8; 2048];
        loop {
            match socket::recv(self.fd.as_raw_fd(), &mut buf, socket::MsgFlags::empty()) {
                Ok(len) => {
                    let packet = &buf[..len];
                    let ihl = usize::from(packet.first().copied().unwrap_or(0) & 0xf) * 4;
                    if let Some(icmp) = packet.get(ihl..ihl + 8) {
                        if icmp[0] == 0 && u16::from_be_bytes([icmp[4], icmp[5]]) == self.id {
                            self.answered.insert(u16::from_be_bytes([icmp[6], icmp[7]]));
                        }
                    }
                }
                Err(Errno::EAGAIN) => return Ok(self.answered.len()),
                Err(e) => return Err(e).context("receiving echo replies"),
            }
        }
    }
}

// ---- a packet capture -----------------------------------------------------------------------

/// An `AF_PACKET` socket that sees every frame an interface receives (after the XDP program) and
/// sends.
pub struct Capture {
    fd: OwnedFd,
    frames: Vec<Vec<u8>>,
}

impl Capture {
    pub fn open(ns: &NetNs, ifname: &str) -> Result<Capture> {
        let fd = ns.run_in(|| -> Result<OwnedFd> {
            let ifindex = nix::net::if_::if_nametoindex(ifname)
                .with_context(|| format!("no interface {ifname}"))?;
            let fd = socket::socket(
                AddressFamily::Packet,
                SockType::Raw,
                SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
                SockProtocol::EthAll,
            )
            .context("creating an AF_PACKET socket")?;
            socket::setsockopt(&fd, sockopt::RcvBufForce, &(8 << 20))?;
            // SAFETY: sockaddr_ll is plain old data; all-zero is a valid value.
            let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            addr.sll_family = libc::c_ushort::try_from(libc::AF_PACKET).expect("AF_PACKET fits");
            addr.sll_protocol = u16::try_from(libc::ETH_P_ALL)
                .expect("an EtherType")
                .to_be();
            addr.sll_ifindex = i32::try_from(ifindex).context("ifindex out of range")?;
            // SAFETY: `addr` is an initialised sockaddr_ll and its size is passed; the fd is a live
            // AF_PACKET socket.
            let rc = unsafe {
                libc::bind(
                    fd.as_raw_fd(),
                    std::ptr::from_ref(&addr).cast(),
                    libc::socklen_t::try_from(std::mem::size_of::<libc::sockaddr_ll>())
                        .expect("a small struct"),
                )
            };
            if rc < 0 {
                return Err(std::io::Error::last_os_error()).context("binding the capture");
            }
            Ok(fd)
        })??;
        Ok(Capture {
            fd,
            frames: Vec::new(),
        })
    }

    fn read_available(&mut self) -> Result<()> {
        let mut buf = vec![0u8; 65536];
        loop {
            match socket::recv(self.fd.as_raw_fd(), &mut buf, socket::MsgFlags::empty()) {
                Ok(len) => self.frames.push(buf[..len].to_vec()),
                Err(Errno::EAGAIN) => return Ok(()),
                Err(e) => return Err(e).context("reading the capture"),
            }
        }
    }

    /// Reads frames until one satisfies `pred`, for up to `timeout`.
    pub fn wait_for(
        &mut self,
        timeout: Duration,
        what: &str,
        pred: impl Fn(&[u8]) -> bool,
    ) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            self.read_available()?;
            if self.frames.iter().any(|f| pred(f)) {
                return Ok(());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!(
                    "no frame with {what} within {timeout:?} ({} frames seen)",
                    self.frames.len()
                );
            }
            let mut pfd = libc::pollfd {
                fd: self.fd.as_fd().as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            let millis = libc::c_int::try_from(left.as_millis().clamp(1, 100)).unwrap_or(100);
            // SAFETY: one valid pollfd on an fd this capture owns.
            unsafe { libc::poll(&mut pfd, 1, millis) };
        }
    }

    /// Every frame seen so far.
    pub fn frames(&self) -> &[Vec<u8>] {
        &self.frames
    }

    /// Sends `tag` as a marker frame through `inject`, and reads until it arrives: every frame
    /// injected before it has then been through the filter and, if passed, seen here.
    pub fn sync(
        &mut self,
        inject: &crmguard_lab::net::RawSocket,
        l2: &L2,
        tag: &[u8],
    ) -> Result<()> {
        inject.send(&marker_frame(l2, tag))?;
        self.wait_for(SETTLE, "the capture marker", |f| contains(f, tag))
    }
}

/// The agent's config file with everything from the first `[[interface]]` on (the test's policy,
/// after the harness's `[agent]` and `[metrics]` sections) replaced by `body`.
pub fn config_with_body(agent: &Agent, body: &str) -> Result<String> {
    let text = std::fs::read_to_string(agent.config_path())?;
    let start = text
        .find("[[interface]]")
        .context("the config has no [[interface]] section")?;
    Ok(format!("{}{body}\n", &text[..start]))
}
