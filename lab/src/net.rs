//! Traffic inside network namespaces: real TCP/UDP sockets, and raw Ethernet frames.
//!
//! Every socket is created on a thread that entered the namespace (see [`NetNs::run_in`]); a
//! socket belongs to the namespace it was created in for its whole life, so the servers' and
//! receivers' worker threads need not enter it. Servers and receivers stop on drop.
//!
//! Raw frames are what reaches the XDP program when the kernel cannot produce the traffic
//! itself: this kernel has no 802.1Q module, so VLAN-tagged frames are built here with
//! etherparse and written to an `AF_PACKET` socket on the far end of the veth.

// `unsafe`: poll(2) on a borrowed socket, and AF_PACKET frame injection (sockaddr_ll, sendto).
#![allow(unsafe_code)]

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use etherparse::{IpHeaders, Ipv4Header, Ipv6Header, PacketBuilder, PacketBuilderStep, VlanId};
use nix::errno::Errno;
use nix::sys::socket::{
    self, sockopt, AddressFamily, Backlog, SockFlag, SockType, SockaddrStorage,
};

use crate::netns::NetNs;

/// How often stoppable worker threads look at their stop flag.
const STOP_POLL: Duration = Duration::from_millis(50);

/// A dual-stack socket bound to `[::]:port` (IPv4 arrives as v4-mapped addresses).
fn dual_stack_socket(ty: SockType, port: u16) -> Result<OwnedFd> {
    let fd = socket::socket(AddressFamily::Inet6, ty, SockFlag::SOCK_CLOEXEC, None)
        .context("creating an IPv6 socket")?;
    socket::setsockopt(&fd, sockopt::Ipv6V6Only, &false).context("clearing IPV6_V6ONLY")?;
    socket::setsockopt(&fd, sockopt::ReuseAddr, &true).context("setting SO_REUSEADDR")?;
    let addr = SockaddrStorage::from(SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), port));
    socket::bind(fd.as_raw_fd(), &addr).with_context(|| format!("binding [::]:{port}"))?;
    Ok(fd)
}

/// A stop flag plus the worker thread that watches it; stops and joins on drop.
#[derive(Debug)]
struct Worker {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Worker {
    fn spawn(name: &str, body: impl FnOnce(Arc<AtomicBool>) + Send + 'static) -> Result<Worker> {
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

    fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                eprintln!("a traffic worker thread panicked");
            }
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A TCP server on `[::]:port` in a namespace: it accepts every connection, writes its banner
/// and closes. Serves IPv4 and IPv6.
#[derive(Debug)]
pub struct TcpServer {
    accepted: Arc<AtomicU64>,
    _worker: Worker,
}

impl TcpServer {
    pub fn start(ns: &NetNs, port: u16, banner: &str) -> Result<TcpServer> {
        let fd = ns.run_in(|| -> Result<OwnedFd> {
            let fd = dual_stack_socket(SockType::Stream, port)?;
            socket::listen(&fd, Backlog::new(128)?).context("listen")?;
            Ok(fd)
        })??;
        let listener = TcpListener::from(fd);
        listener
            .set_nonblocking(true)
            .context("making the listener non-blocking")?;
        let accepted = Arc::new(AtomicU64::new(0));
        let count = Arc::clone(&accepted);
        let banner = banner.as_bytes().to_vec();
        let worker = Worker::spawn(&format!("tcp-server-{port}"), move |stop| {
            while !stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut stream, _)) => {
                        count.fetch_add(1, Ordering::Relaxed);
                        // The client may already be gone; that is its test's business.
                        let _ = stream.set_nonblocking(false);
                        let _ = stream.write_all(&banner);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        // Only to wait for the next connection or the stop flag's next look.
                        let _ = wait_ready(listener.as_fd(), libc::POLLIN, STOP_POLL);
                    }
                    Err(e) => {
                        eprintln!("tcp server on port {port}: accept failed: {e}");
                        return;
                    }
                }
            }
        })?;
        Ok(TcpServer {
            accepted,
            _worker: worker,
        })
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }
}

/// Waits up to `timeout` for `events` on `fd`; true when they came.
fn wait_ready(fd: BorrowedFd<'_>, events: libc::c_short, timeout: Duration) -> Result<bool> {
    let mut pollfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events,
        revents: 0,
    };
    let millis = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
    // SAFETY: `pollfd` is one valid, initialised pollfd and the count passed is 1; `fd` is
    // borrowed, so it stays open for the duration of the call.
    let ready = unsafe { libc::poll(&mut pollfd, 1, millis) };
    if ready < 0 {
        return Err(std::io::Error::last_os_error()).context("poll");
    }
    Ok(ready > 0)
}

/// What a TCP connection attempt came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TcpOutcome {
    /// The handshake completed; `banner` is everything the server sent before closing.
    Connected { banner: String },
    /// The peer answered with a reset (a closed port, not a filter).
    Refused,
    /// Nothing answered within the timeout: what a dropping filter looks like.
    TimedOut,
}

/// Connects from `src` (any local address when `None`) to `dst` inside `ns`, and reads the
/// server's banner when the connection is established.
pub fn tcp_connect(
    ns: &NetNs,
    src: Option<IpAddr>,
    dst: SocketAddr,
    timeout: Duration,
) -> Result<TcpOutcome> {
    ns.run_in(|| connect_here(src, dst, timeout))?
        .with_context(|| format!("connecting from {src:?} to {dst} in netns {}", ns.name()))
}

fn connect_here(src: Option<IpAddr>, dst: SocketAddr, timeout: Duration) -> Result<TcpOutcome> {
    let family = match dst {
        SocketAddr::V4(_) => AddressFamily::Inet,
        SocketAddr::V6(_) => AddressFamily::Inet6,
    };
    let fd = socket::socket(
        family,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )
    .context("creating a TCP socket")?;
    if let Some(src) = src {
        let local = SockaddrStorage::from(SocketAddr::new(src, 0));
        socket::bind(fd.as_raw_fd(), &local).with_context(|| format!("binding to {src}"))?;
    }
    match socket::connect(fd.as_raw_fd(), &SockaddrStorage::from(dst)) {
        Ok(()) | Err(Errno::EINPROGRESS) => {}
        Err(Errno::ECONNREFUSED) => return Ok(TcpOutcome::Refused),
        Err(e) => return Err(e).context("connect"),
    }
    if !wait_ready(fd.as_fd(), libc::POLLOUT, timeout)? {
        return Ok(TcpOutcome::TimedOut);
    }
    match socket::getsockopt(&fd, sockopt::SocketError).context("SO_ERROR")? {
        0 => {}
        e if e == Errno::ECONNREFUSED as i32 => return Ok(TcpOutcome::Refused),
        e if e == Errno::ETIMEDOUT as i32 => return Ok(TcpOutcome::TimedOut),
        e => bail!("connect failed: {}", Errno::from_raw(e)),
    }
    let mut stream = TcpStream::from(fd);
    stream
        .set_nonblocking(false)
        .context("making the stream blocking")?;
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .context("setting a read timeout")?;
    let mut banner = Vec::new();
    stream
        .read_to_end(&mut banner)
        .context("connected, but reading the banner failed")?;
    Ok(TcpOutcome::Connected {
        banner: String::from_utf8_lossy(&banner).into_owned(),
    })
}

/// Sends `count` datagrams of `payload_len` bytes from `src` (ephemeral port) to `dst`, inside
/// `ns`. Every send must succeed.
pub fn udp_send(
    ns: &NetNs,
    src: IpAddr,
    dst: SocketAddr,
    count: u64,
    payload_len: usize,
) -> Result<()> {
    ns.run_in(|| -> Result<()> {
        let sock =
            UdpSocket::bind(SocketAddr::new(src, 0)).with_context(|| format!("binding {src}"))?;
        let payload = vec![0x5a; payload_len];
        for i in 0..count {
            let sent = sock
                .send_to(&payload, dst)
                .with_context(|| format!("sending datagram {i} to {dst}"))?;
            if sent != payload_len {
                bail!("datagram {i} to {dst}: sent {sent} of {payload_len} bytes");
            }
        }
        Ok(())
    })?
    .with_context(|| format!("sending UDP from {src} to {dst} in netns {}", ns.name()))
}

/// A UDP socket on `[::]:port` in a namespace that counts the datagrams it receives (IPv4 and
/// IPv6).
#[derive(Debug)]
pub struct UdpReceiver {
    received: Arc<AtomicU64>,
    _worker: Worker,
}

impl UdpReceiver {
    pub fn start(ns: &NetNs, port: u16) -> Result<UdpReceiver> {
        let fd = ns.run_in(|| dual_stack_socket(SockType::Datagram, port))??;
        let sock = UdpSocket::from(fd);
        sock.set_read_timeout(Some(STOP_POLL))
            .context("setting a read timeout")?;
        let received = Arc::new(AtomicU64::new(0));
        let count = Arc::clone(&received);
        let worker = Worker::spawn(&format!("udp-receiver-{port}"), move |stop| {
            let mut buf = [0u8; 65536];
            while !stop.load(Ordering::Relaxed) {
                match sock.recv_from(&mut buf) {
                    Ok(_) => {
                        count.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) => {}
                    Err(e) => {
                        eprintln!("udp receiver on port {port}: {e}");
                        return;
                    }
                }
            }
        })?;
        Ok(UdpReceiver {
            received,
            _worker: worker,
        })
    }

    /// Datagrams received so far.
    pub fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }
}

/// A paced UDP flood from `src` to `dst` inside a namespace until dropped or stopped: bursts of
/// 64 datagrams a millisecond apart (tens of thousands per second, leaving CPU to the agent).
#[derive(Debug)]
pub struct UdpFlood {
    sent: Arc<AtomicU64>,
    worker: Worker,
}

impl UdpFlood {
    pub fn start(ns: &NetNs, src: IpAddr, dst: SocketAddr, payload_len: usize) -> Result<UdpFlood> {
        let sock = ns
            .run_in(|| UdpSocket::bind(SocketAddr::new(src, 0)))?
            .with_context(|| format!("binding {src} in netns {}", ns.name()))?;
        let sent = Arc::new(AtomicU64::new(0));
        let count = Arc::clone(&sent);
        let worker = Worker::spawn(&format!("udp-flood-{dst}"), move |stop| {
            let payload = vec![0xa5; payload_len];
            while !stop.load(Ordering::Relaxed) {
                for _ in 0..64 {
                    // A full veth ring drops silently; only datagrams handed to the stack count.
                    if sock.send_to(&payload, dst).is_ok() {
                        count.fetch_add(1, Ordering::Relaxed);
                    }
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        })?;
        Ok(UdpFlood { sent, worker })
    }

    /// Datagrams sent so far.
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// Stops sending and returns the number of datagrams sent.
    pub fn stop(mut self) -> u64 {
        self.worker.stop();
        self.sent()
    }
}

/// An `AF_PACKET` socket that writes whole Ethernet frames onto one interface.
#[derive(Debug)]
pub struct RawSocket {
    fd: OwnedFd,
    ifindex: i32,
}

impl RawSocket {
    /// Opens a raw socket on interface `ifname` of `ns`. It only sends: protocol 0 receives
    /// nothing.
    pub fn open(ns: &NetNs, ifname: &str) -> Result<RawSocket> {
        let (fd, ifindex) = ns.run_in(|| -> Result<(OwnedFd, u32)> {
            let ifindex = nix::net::if_::if_nametoindex(ifname)
                .with_context(|| format!("no interface {ifname}"))?;
            let fd = socket::socket(
                AddressFamily::Packet,
                SockType::Raw,
                SockFlag::SOCK_CLOEXEC,
                None,
            )
            .context("creating an AF_PACKET socket")?;
            Ok((fd, ifindex))
        })??;
        let ifindex = i32::try_from(ifindex).context("ifindex out of range")?;
        Ok(RawSocket { fd, ifindex })
    }

    /// Writes one complete Ethernet frame (destination MAC first, no FCS).
    pub fn send(&self, frame: &[u8]) -> Result<()> {
        let [d0, d1, d2, d3, d4, d5, t0, t1] = match frame {
            [d0, d1, d2, d3, d4, d5, _, _, _, _, _, _, t0, t1, ..] => {
                [*d0, *d1, *d2, *d3, *d4, *d5, *t0, *t1]
            }
            _ => bail!("a frame of {} bytes has no Ethernet header", frame.len()),
        };
        // SAFETY: sockaddr_ll is plain old data; all-zero is a valid value.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::c_ushort::try_from(libc::AF_PACKET)?;
        // The EtherType as it appears on the wire: already in network byte order.
        addr.sll_protocol = u16::from_ne_bytes([t0, t1]);
        addr.sll_ifindex = self.ifindex;
        addr.sll_halen = 6;
        addr.sll_addr[..6].copy_from_slice(&[d0, d1, d2, d3, d4, d5]);
        // SAFETY: `frame` is valid for `frame.len()` bytes and `addr` is a properly initialised
        // sockaddr_ll whose size is passed along; the fd is a live AF_PACKET socket.
        let sent = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                std::ptr::from_ref(&addr).cast(),
                libc::socklen_t::try_from(std::mem::size_of::<libc::sockaddr_ll>())
                    .context("sockaddr_ll size")?,
            )
        };
        if sent < 0 {
            return Err(std::io::Error::last_os_error()).context("sendto on the AF_PACKET socket");
        }
        if usize::try_from(sent).ok() != Some(frame.len()) {
            bail!("sent {sent} of {} bytes", frame.len());
        }
        Ok(())
    }
}

/// The VLAN tagging of a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Vlan {
    Untagged,
    /// One 802.1Q tag (TPID 0x8100).
    Dot1Q(u16),
    /// 802.1ad QinQ: an outer service tag (TPID 0x88a8) over an inner 802.1Q tag.
    QinQ {
        outer: u16,
        inner: u16,
    },
}

/// The link layer of a built frame.
#[derive(Debug, Clone, Copy)]
pub struct L2 {
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    pub vlan: Vlan,
}

fn ip_headers(src: IpAddr, dst: IpAddr) -> Result<IpHeaders> {
    // Payload length, protocol and checksums are filled in by the builder.
    Ok(match (src, dst) {
        (IpAddr::V4(src), IpAddr::V4(dst)) => IpHeaders::Ipv4(
            Ipv4Header::new(0, 64, etherparse::IpNumber(0), src.octets(), dst.octets())?,
            Default::default(),
        ),
        (IpAddr::V6(src), IpAddr::V6(dst)) => IpHeaders::Ipv6(
            Ipv6Header {
                hop_limit: 64,
                source: src.octets(),
                destination: dst.octets(),
                ..Default::default()
            },
            Default::default(),
        ),
        _ => bail!("source {src} and destination {dst} are of different families"),
    })
}

fn builder(l2: &L2, src: IpAddr, dst: IpAddr) -> Result<PacketBuilderStep<IpHeaders>> {
    let ip = ip_headers(src, dst)?;
    let eth = PacketBuilder::ethernet2(l2.src_mac, l2.dst_mac);
    Ok(match l2.vlan {
        Vlan::Untagged => eth.ip(ip),
        Vlan::Dot1Q(id) => eth.single_vlan(VlanId::try_new(id)?).ip(ip),
        Vlan::QinQ { outer, inner } => eth
            .double_vlan(VlanId::try_new(outer)?, VlanId::try_new(inner)?)
            .ip(ip),
    })
}

/// A TCP SYN frame from `src` to `dst` with valid checksums.
pub fn tcp_syn_frame(l2: &L2, src: SocketAddr, dst: SocketAddr) -> Result<Vec<u8>> {
    let packet = builder(l2, src.ip(), dst.ip())?
        .tcp(src.port(), dst.port(), 0x1000_0000, 64240)
        .syn();
    let mut frame = Vec::with_capacity(packet.size(0));
    packet.write(&mut frame, &[])?;
    Ok(frame)
}

/// A UDP frame from `src` to `dst` carrying `payload`, with valid checksums.
pub fn udp_frame(l2: &L2, src: SocketAddr, dst: SocketAddr, payload: &[u8]) -> Result<Vec<u8>> {
    let packet = builder(l2, src.ip(), dst.ip())?.udp(src.port(), dst.port());
    let mut frame = Vec::with_capacity(packet.size(payload.len()));
    packet.write(&mut frame, payload)?;
    Ok(frame)
}

/// Fetches `http://{addr}{path}` from inside `ns` with a plain HTTP/1.0 GET and returns the body
/// of a 200 answer.
pub fn http_get(ns: &NetNs, addr: SocketAddr, path: &str) -> Result<String> {
    ns.run_in(|| -> Result<String> {
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .with_context(|| format!("connecting to {addr}"))?;
        stream.set_read_timeout(Some(deadline.saturating_duration_since(Instant::now())))?;
        write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
        let mut response = String::new();
        stream.read_to_string(&mut response)?;
        let Some((head, body)) = response.split_once("\r\n\r\n") else {
            bail!("no end of headers in {response:?}");
        };
        let status = head.lines().next().unwrap_or_default();
        if status.split_whitespace().nth(1) != Some("200") {
            bail!("GET {path}: {status}");
        }
        Ok(body.to_owned())
    })?
    .with_context(|| format!("GET http://{addr}{path} in netns {}", ns.name()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::{NetSlice, SlicedPacket, TransportSlice};

    const L2_BASE: L2 = L2 {
        src_mac: [2, 0, 0, 0, 0, 1],
        dst_mac: [2, 0, 0, 0, 0, 2],
        vlan: Vlan::Untagged,
    };

    fn addr(text: &str) -> SocketAddr {
        text.parse().expect("a valid socket address")
    }

    /// The EtherTypes/TPIDs from byte 12 on: one per tag, then the payload's.
    fn ethertypes(frame: &[u8], count: usize) -> Vec<u16> {
        (0..count)
            .map(|i| u16::from_be_bytes([frame[12 + 4 * i], frame[13 + 4 * i]]))
            .collect()
    }

    #[test]
    fn udp_frames_carry_the_requested_tags() {
        let src = addr("10.1.2.2:4000");
        let dst = addr("10.1.2.1:9");
        let cases = [
            (Vlan::Untagged, vec![0x0800], 14 + 20 + 8 + 3),
            (Vlan::Dot1Q(7), vec![0x8100, 0x0800], 18 + 20 + 8 + 3),
            (
                Vlan::QinQ {
                    outer: 100,
                    inner: 7,
                },
                vec![0x88a8, 0x8100, 0x0800],
                22 + 20 + 8 + 3,
            ),
        ];
        for (vlan, types, len) in cases {
            let frame = udp_frame(&L2 { vlan, ..L2_BASE }, src, dst, b"abc").expect("frame");
            assert_eq!(frame.len(), len, "{vlan:?}");
            assert_eq!(ethertypes(&frame, types.len()), types, "{vlan:?}");
            let sliced = SlicedPacket::from_ethernet(&frame).expect("parses back");
            let Some(TransportSlice::Udp(udp)) = sliced.transport else {
                panic!("{vlan:?}: no UDP header");
            };
            assert_eq!((udp.source_port(), udp.destination_port()), (4000, 9));
        }
    }

    #[test]
    fn tcp_syn_frames_are_ipv6_when_asked() {
        let l2 = L2 {
            vlan: Vlan::Dot1Q(42),
            ..L2_BASE
        };
        let frame =
            tcp_syn_frame(&l2, addr("[fd00:1::66]:40000"), addr("[fd00:1::1]:22")).expect("frame");
        assert_eq!(ethertypes(&frame, 2), vec![0x8100, 0x86dd]);
        let sliced = SlicedPacket::from_ethernet(&frame).expect("parses back");
        let Some(NetSlice::Ipv6(ip)) = sliced.net else {
            panic!("not IPv6");
        };
        assert_eq!(
            ip.header().source_addr(),
            "fd00:1::66".parse::<std::net::Ipv6Addr>().expect("address")
        );
        let Some(TransportSlice::Tcp(tcp)) = sliced.transport else {
            panic!("no TCP header");
        };
        assert!(tcp.syn() && !tcp.ack());
        assert_eq!(tcp.destination_port(), 22);
    }

    #[test]
    fn mixed_families_are_refused() {
        assert!(udp_frame(&L2_BASE, addr("10.0.0.1:1"), addr("[::1]:2"), b"").is_err());
    }
}
