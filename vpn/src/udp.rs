//! The endpoint's one UDP socket, for every peer, IPv4 and IPv6.
//!
//! Dual-stack (`[::]:listen_port` with `IPV6_V6ONLY` off; IPv4 alone when the host has no
//! IPv6). Batched through quinn-udp: `recvmmsg` with UDP GRO on receive (one buffer may hold
//! many datagrams of one sender, `stride` bytes apart), UDP GSO on send (one `sendmsg` carries
//! many equal-sized datagrams to one destination). The socket is blocking with timeouts: a
//! receive waits in `recvmmsg` itself (`MSG_WAITFORONE`: for the first datagram, then takes what
//! is queued), so a wake costs one syscall and not a `poll` and a receive; the receive timeout
//! lets the receiving thread see its stop flag, the send timeout bounds a wait for room.
//!
//! Outer datagrams may be fragmented, as the kernel's WireGuard sends them: a full tunnel packet
//! (1420 bytes inside, 1452 of UDP payload) crosses a path of a smaller MTU in IP fragments
//! instead of being dropped. quinn-udp forbids fragmentation for QUIC's sake; the socket is set
//! back to `IP_PMTUDISC_DONT` (IPv4: no DF bit) and `IPV6_PMTUDISC_WANT` without
//! `IPV6_DONTFRAG` (IPv6: the sender fragments to the path MTU). A GSO send whose segments do
//! not fit the route's MTU is refused by the kernel (`EINVAL`); its datagrams then go one by
//! one, and batching stays on for every other peer.

use std::io::{self, IoSliceMut};
use std::net::{IpAddr, Ipv6Addr, SocketAddr, UdpSocket};
use std::os::fd::AsFd;
use std::time::Duration;

use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{
    self, sockopt, AddressFamily, ControlMessageOwned, MsgFlags, MultiHeaders, SockFlag, SockType,
    SockaddrLike, SockaddrStorage,
};
use nix::sys::time::TimeVal;
use quinn_udp::{RecvMeta, Transmit, UdpSockRef, UdpSocketState};

/// Socket buffer size asked for (the kernel caps it at `rmem_max`/`wmem_max` unless the agent
/// may force it, which it may as root).
const SOCKET_BUFFER: usize = 8 << 20;

/// The most datagrams (or GRO buffers) one receive returns.
pub const BATCH_SIZE: usize = quinn_udp::BATCH_SIZE;

/// How long a receive waits for a first datagram before it returns `WouldBlock`.
pub const RECV_TIMEOUT: Duration = Duration::from_millis(100);

/// How long one send waits for room in the send buffer.
const SEND_TIMEOUT: Duration = Duration::from_millis(100);

/// Room for the control messages of one received datagram: the GRO segment size and the local
/// address (`IP_PKTINFO` or `IPV6_PKTINFO`), with room to spare.
const CMSG_ROOM: usize = 128;

/// The largest UDP payload one GSO send may carry.
pub const MAX_GSO_BYTES: usize = 65_000;

/// Where a datagram goes: the peer's outside address, and the local address the peer last
/// reached us on (so replies leave from the address the peer talks to).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target {
    pub remote: SocketAddr,
    pub local: Option<IpAddr>,
}

pub struct Udp {
    socket: UdpSocket,
    state: UdpSocketState,
    v6: bool,
    port: u16,
    /// GSO segments per send, as found at bind: quinn-udp lowers its own count to 1 after a
    /// refused GSO send, which a path with a small MTU causes for one peer only.
    gso_segments: usize,
}

impl Udp {
    /// Binds `[::]:port` dual-stack, or `0.0.0.0:port` when IPv6 is unavailable.
    pub fn bind(port: u16) -> io::Result<Udp> {
        let (socket, v6) = match bind_v6(port) {
            Ok(socket) => (socket, true),
            Err(e) if e.raw_os_error() == Some(libc::EAFNOSUPPORT) => {
                (UdpSocket::bind(("0.0.0.0", port))?, false)
            }
            Err(e) => return Err(e),
        };
        let state = UdpSocketState::new(UdpSockRef::from(&socket))?;
        for (opt, name) in [(true, "receive"), (false, "send")] {
            let forced = if opt {
                socket::setsockopt(&socket, sockopt::RcvBufForce, &SOCKET_BUFFER)
            } else {
                socket::setsockopt(&socket, sockopt::SndBufForce, &SOCKET_BUFFER)
            };
            if forced.is_err() {
                let plain = if opt {
                    state.set_recv_buffer_size(UdpSockRef::from(&socket), SOCKET_BUFFER)
                } else {
                    state.set_send_buffer_size(UdpSockRef::from(&socket), SOCKET_BUFFER)
                };
                if let Err(e) = plain {
                    tracing::debug!(error = %e, "cannot enlarge the WireGuard socket's {name} buffer");
                }
            }
        }
        allow_fragments(&socket, v6)?;
        drop_unread_control_messages(&socket, v6)?;
        socket.set_nonblocking(false)?;
        socket::setsockopt(&socket, sockopt::ReceiveTimeout, &timeval(RECV_TIMEOUT))?;
        socket::setsockopt(&socket, sockopt::SendTimeout, &timeval(SEND_TIMEOUT))?;
        let port = socket.local_addr()?.port();
        let gso_segments = state.max_gso_segments();
        Ok(Udp {
            socket,
            state,
            v6,
            port,
            gso_segments,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// How many datagrams one received buffer may hold (GRO).
    pub fn gro_segments(&self) -> usize {
        self.state.gro_segments()
    }

    /// How many datagrams one send may carry (GSO); 1 without GSO.
    pub fn max_gso_segments(&self) -> usize {
        self.gso_segments
    }

    /// Receives a batch into `bufs`, one buffer (a datagram, or a GRO run of them `stride`
    /// bytes apart) per entry of `meta`. With `wait`, waits up to `RECV_TIMEOUT` for the first
    /// datagram and then takes what is queued; without, takes what is queued. `WouldBlock` when
    /// nothing came.
    pub fn recv(
        &self,
        bufs: &mut [Vec<u8>],
        meta: &mut [RecvMeta],
        wait: bool,
    ) -> io::Result<usize> {
        let flags = if wait {
            MsgFlags::MSG_WAITFORONE
        } else {
            MsgFlags::MSG_DONTWAIT
        };
        let count = bufs.len().min(meta.len());
        // Made for each receive: the kernel shortens each header's control length to what it
        // wrote, so headers kept from an earlier receive could cut a later one's messages.
        let mut headers: MultiHeaders<SockaddrStorage> =
            MultiHeaders::preallocate(count, Some(Vec::with_capacity(CMSG_ROOM)));
        let mut iovs: Vec<[IoSliceMut<'_>; 1]> = bufs[..count]
            .iter_mut()
            .map(|b| [IoSliceMut::new(&mut b[..])])
            .collect();
        let fd = std::os::fd::AsRawFd::as_raw_fd(&self.socket);
        let results = socket::recvmmsg(fd, &mut headers, iovs.iter_mut(), flags, None)?;
        let mut n = 0;
        for (received, m) in results.zip(meta.iter_mut()) {
            // Entry i of `meta` stays the buffer i's; a datagram without a source address
            // (which UDP always gives) is left empty rather than shifting the rest.
            let addr = received.address.as_ref().and_then(socket_addr);
            let mut stride = received.bytes;
            let mut dst_ip = None;
            if let Ok(cmsgs) = received.cmsgs() {
                for cmsg in cmsgs {
                    match cmsg {
                        ControlMessageOwned::UdpGroSegments(size) => {
                            stride = usize::try_from(size).unwrap_or(received.bytes).max(1);
                        }
                        ControlMessageOwned::Ipv4PacketInfo(info) => {
                            dst_ip = Some(IpAddr::from(
                                u32::from_be(info.ipi_addr.s_addr).to_be_bytes(),
                            ));
                        }
                        ControlMessageOwned::Ipv6PacketInfo(info) => {
                            dst_ip = Some(IpAddr::from(info.ipi6_addr.s6_addr));
                        }
                        _ => {}
                    }
                }
            }
            let mut filled = RecvMeta::default();
            if let Some(addr) = addr {
                filled.addr = addr;
                filled.len = received.bytes;
            }
            filled.stride = stride;
            filled.dst_ip = dst_ip;
            *m = filled;
            n += 1;
        }
        Ok(n)
    }

    /// Sends `contents` to `target`: one datagram, or with `segment` set, datagrams of
    /// `segment` bytes (the last may be shorter) in one GSO send. Waits for room in the send
    /// buffer (up to a second) rather than dropping.
    pub fn send(&self, target: &Target, contents: &[u8], segment: Option<usize>) -> io::Result<()> {
        let transmit = Transmit {
            destination: self.destination(target.remote),
            ecn: None,
            contents,
            segment_size: segment.filter(|s| *s < contents.len()),
            src_ip: target.local.map(|ip| ip.to_canonical()),
        };
        for _ in 0..10 {
            match self
                .state
                .try_send(UdpSockRef::from(&self.socket), &transmit)
            {
                // The send waited `SEND_TIMEOUT` for room; ten of them make a second.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if transmit.segment_size.is_some() && is_refused_gso(&e) => {
                    // The segments do not fit the route's MTU (or the device refuses GSO):
                    // each datagram on its own, fragmented by the kernel when it must be.
                    let size = transmit.segment_size.unwrap_or(contents.len()).max(1);
                    for datagram in contents.chunks(size) {
                        self.send(target, datagram, None)?;
                    }
                    return Ok(());
                }
                Err(e) if transmit.src_ip.is_some() && is_bad_source(&e) => {
                    // The local address the peer used is gone (an address was removed):
                    // let the kernel choose.
                    let mut again = transmit.clone();
                    again.src_ip = None;
                    return self.state.try_send(UdpSockRef::from(&self.socket), &again);
                }
                other => return other,
            }
        }
        Err(io::Error::from(io::ErrorKind::WouldBlock))
    }

    /// A v6 socket takes IPv4 destinations in their IPv4-mapped form.
    fn destination(&self, remote: SocketAddr) -> SocketAddr {
        match remote {
            SocketAddr::V4(v4) if self.v6 => {
                SocketAddr::new(IpAddr::V6(v4.ip().to_ipv6_mapped()), v4.port())
            }
            other => other,
        }
    }
}

/// A GSO send the kernel refused as a whole: segments larger than the route's MTU (`EINVAL`,
/// or `EMSGSIZE`), or a device without segmentation offload (`EIO`).
fn is_refused_gso(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EINVAL) | Some(libc::EMSGSIZE) | Some(libc::EIO)
    )
}

/// Lets the kernel fragment outer datagrams (see the module's documentation).
fn allow_fragments(socket: &UdpSocket, v6: bool) -> io::Result<()> {
    use rustix::net::sockopt::{self as opt, Ipv4PathMtuDiscovery, Ipv6PathMtuDiscovery};
    opt::set_ip_mtu_discover(socket, Ipv4PathMtuDiscovery::DONT)?;
    if v6 {
        opt::set_ipv6_mtu_discover(socket, Ipv6PathMtuDiscovery::WANT)?;
        socket::setsockopt(socket, sockopt::Ipv6DontFrag, &false)?;
    }
    Ok(())
}

/// Turns off the control messages quinn-udp asks for that the endpoint does not read: the
/// receive timestamp (`SO_TIMESTAMPNS`) and the outer traffic class (`IP_RECVTOS`,
/// `IPV6_RECVTCLASS`). Each is copied out with every received datagram, and while any socket
/// asks for timestamps the kernel stamps every packet the host receives, on every interface.
fn drop_unread_control_messages(socket: &UdpSocket, v6: bool) -> io::Result<()> {
    use rustix::net::sockopt as opt;
    socket::setsockopt(socket, sockopt::ReceiveTimestampns, &false)?;
    opt::set_ip_recvtos(socket, false)?;
    if v6 {
        opt::set_ipv6_recvtclass(socket, false)?;
    }
    Ok(())
}

fn is_bad_source(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EINVAL) | Some(libc::EADDRNOTAVAIL)
    )
}

fn bind_v6(port: u16) -> io::Result<UdpSocket> {
    let fd = socket::socket(
        AddressFamily::Inet6,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    socket::setsockopt(&fd, sockopt::Ipv6V6Only, &false)?;
    let addr = SockaddrStorage::from(SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), port));
    socket::bind(std::os::fd::AsRawFd::as_raw_fd(&fd), &addr)?;
    Ok(UdpSocket::from(fd))
}

/// Waits up to `timeout` for `flags` on `fd`; true when they came.
pub fn wait(fd: &impl AsFd, flags: PollFlags, timeout: Duration) -> io::Result<bool> {
    let mut fds = [PollFd::new(fd.as_fd(), flags)];
    let millis = u16::try_from(timeout.as_millis()).unwrap_or(u16::MAX);
    match nix::poll::poll(&mut fds, PollTimeout::from(millis)) {
        Ok(n) => Ok(n > 0),
        Err(nix::errno::Errno::EINTR) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

fn timeval(d: Duration) -> TimeVal {
    TimeVal::new(
        i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        i64::from(d.subsec_micros()),
    )
}

/// A received datagram's source address.
fn socket_addr(addr: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v6) = addr.as_sockaddr_in6() {
        return Some(SocketAddr::V6((*v6).into()));
    }
    addr.as_sockaddr_in()
        .map(|v4| SocketAddr::V4((*v4).into()))
        .filter(|_| addr.family() == Some(AddressFamily::Inet))
}

/// The canonical form of a datagram's source: IPv4-mapped IPv6 addresses as IPv4.
pub fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    /// Receives until `want` datagrams arrived (GRO may deliver several in one buffer), with
    /// the source and local address of each.
    fn receive(udp: &Udp, want: usize) -> Vec<(Vec<u8>, SocketAddr, Option<IpAddr>)> {
        let mut storage = [vec![0u8; 65_536], vec![0u8; 65_536], vec![0u8; 65_536]];
        let mut meta = [RecvMeta::default(); 3];
        let mut got = Vec::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while got.len() < want {
            assert!(
                std::time::Instant::now() < deadline,
                "only {} of {want} datagrams arrived",
                got.len()
            );
            let n = match udp.recv(&mut storage, &mut meta, true) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => panic!("recv: {e}"),
            };
            for (m, buf) in meta.iter().zip(storage.iter()).take(n) {
                let stride = if m.stride == 0 { m.len } else { m.stride };
                got.extend(
                    buf[..m.len]
                        .chunks(stride)
                        .map(|d| (d.to_vec(), canonical(m.addr), m.dst_ip)),
                );
            }
        }
        got
    }

    #[test]
    fn the_socket_asks_only_for_the_control_messages_it_reads() {
        let udp = Udp::bind(0).expect("bind");
        assert!(
            !socket::getsockopt(&udp.socket, sockopt::ReceiveTimestampns).expect("timestamps"),
            "receive timestamps stay off: with them the kernel stamps every packet of the host"
        );
        assert!(!rustix::net::sockopt::ip_recvtos(&udp.socket).expect("tos"));
        if udp.v6 {
            assert!(!rustix::net::sockopt::ipv6_recvtclass(&udp.socket).expect("tclass"));
        }
        // What the endpoint does read stays on.
        assert!(socket::getsockopt(&udp.socket, sockopt::UdpGroSegment).expect("gro"));
        assert!(udp.gro_segments() > 1);
    }

    #[test]
    fn one_send_carries_a_run_of_datagrams_over_ipv4_and_ipv6() {
        let a = Udp::bind(0).expect("bind a");
        let b = Udp::bind(0).expect("bind b");
        // Three full segments and a shorter last one.
        let mut contents = Vec::new();
        for i in 0..3u8 {
            contents.extend(std::iter::repeat_n(i, 100));
        }
        contents.extend(std::iter::repeat_n(9u8, 40));
        for ip in [
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(Ipv6Addr::LOCALHOST),
        ] {
            let target = Target {
                remote: SocketAddr::new(ip, b.port()),
                local: None,
            };
            a.send(&target, &contents, Some(100)).expect("send");
            let got = receive(&b, 4);
            assert_eq!(got.len(), 4, "{ip}");
            for (i, (d, from, local)) in got.iter().enumerate() {
                assert_eq!(*from, SocketAddr::new(ip, a.port()), "{ip}: the sender");
                assert_eq!(
                    local.map(|l| l.to_canonical()),
                    Some(ip),
                    "{ip}: the local address"
                );
                if i < 3 {
                    assert_eq!(d.len(), 100);
                    assert!(d.iter().all(|&x| usize::from(x) == i));
                }
            }
            assert_eq!(got[3].0, vec![9u8; 40]);
            // Nothing more is queued: a receive that does not wait says so at once.
            let mut storage = [vec![0u8; 2048]];
            let mut meta = [RecvMeta::default()];
            let err = b
                .recv(&mut storage, &mut meta, false)
                .expect_err("nothing queued");
            assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
            // One that waits gives up after its timeout, so its thread sees its stop flag.
            let started = std::time::Instant::now();
            let err = b
                .recv(&mut storage, &mut meta, true)
                .expect_err("nothing came");
            assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
            assert!(
                started.elapsed() < RECV_TIMEOUT * 10,
                "{:?}",
                started.elapsed()
            );
        }
        assert_eq!(
            canonical("[::ffff:10.1.2.3]:7".parse().expect("addr")),
            "10.1.2.3:7".parse::<SocketAddr>().expect("addr")
        );
    }
}
