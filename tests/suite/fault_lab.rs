//! What the fault and endurance scenarios share: a tunnel user whose traffic is timed packet by
//! packet, denied floods with listeners that count what gets through, and a snapshot of what
//! the agent holds (descriptors, pins, TUN devices, memory) to compare over time.
//!
//! ```text
//!   netns out   wireguard-go 10.77.0.2 --udp seq--> 10.77.0.1:9000 echo   (host, via crmguard's TUN)
//!               10.X.Y.66 (denied) --UDP flood--> 10.X.Y.1:FLOOD_UDP  counting receiver
//!               10.X.Y.66 (denied) --TCP SYNs---> 10.X.Y.1:FLOOD_TCP  counting server
//! ```

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use crmguard_lab::agent::Agent;
use crmguard_lab::net::{TcpServer, UdpFlood, UdpReceiver};
use crmguard_lab::netns::NetNs;
use crmguard_lab::topology::Topology;

use crate::vpn::{ALLOWED_UDP, GATEWAY4};

/// The closed UDP port the denied source floods; a receiver counts what reaches it.
pub(crate) const FLOOD_UDP: u16 = 7777;
/// The closed TCP port the denied source opens connections to; a server counts accepts.
pub(crate) const FLOOD_TCP: u16 = 7778;

/// How often the tunnel user sends a probe.
const PROBE_EVERY: Duration = Duration::from_millis(20);

/// A small xorshift64 generator: seeded, so that a failing sequence can be run again.
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Rng {
        Rng(seed | 1)
    }

    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// A number from the environment, or `default`.
pub(crate) fn env_number(name: &str, default: u64) -> Result<u64> {
    match std::env::var(name) {
        Ok(text) => text
            .trim()
            .parse()
            .with_context(|| format!("{name}={text:?} is not a number")),
        Err(_) => Ok(default),
    }
}

/// A stop flag and a thread; stops and joins on drop.
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
            .with_context(|| format!("spawning {name}"))?;
        Ok(Worker {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A UDP echo service on `[::]:ALLOWED_UDP` in the host namespace, which the staff role reaches
/// through the tunnel.
pub(crate) struct Echo {
    _worker: Worker,
}

impl Echo {
    pub(crate) fn start(ns: &NetNs) -> Result<Echo> {
        let sock = ns
            .run_in(|| UdpSocket::bind(("::", ALLOWED_UDP)))?
            .context("binding the echo service")?;
        sock.set_read_timeout(Some(Duration::from_millis(50)))?;
        let worker = Worker::spawn("udp-echo", move |stop| {
            let mut buf = [0u8; 2048];
            while !stop.load(Ordering::Relaxed) {
                if let Ok((n, from)) = sock.recv_from(&mut buf) {
                    let _ = sock.send_to(&buf[..n], from);
                }
            }
        })?;
        Ok(Echo { _worker: worker })
    }
}

/// What the prober saw: when each probe left and when each answer came back.
#[derive(Default)]
struct ProbeLog {
    sent: Vec<Instant>,
    answered: Vec<(u64, Instant)>,
}

/// A tunnel user in the outside namespace sending a numbered datagram to the echo service every
/// 20 ms and noting when each answer arrives: the outage a user sees is read off these times.
pub(crate) struct Prober {
    log: Arc<Mutex<ProbeLog>>,
    _worker: Worker,
}

impl Prober {
    pub(crate) fn start(ns: &NetNs) -> Result<Prober> {
        let sock = ns
            .run_in(|| UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)))?
            .context("binding the prober")?;
        sock.set_read_timeout(Some(Duration::from_millis(5)))?;
        let dst = SocketAddr::new(IpAddr::V4(GATEWAY4), ALLOWED_UDP);
        let log = Arc::new(Mutex::new(ProbeLog::default()));
        let shared = Arc::clone(&log);
        let worker = Worker::spawn("tunnel-prober", move |stop| {
            let mut next = Instant::now();
            let mut buf = [0u8; 64];
            while !stop.load(Ordering::Relaxed) {
                let now = Instant::now();
                if now >= next {
                    let mut log = shared.lock().unwrap_or_else(|e| e.into_inner());
                    let seq = u64::try_from(log.sent.len()).unwrap_or(u64::MAX);
                    // No route while the tunnel is down is an outage like any other.
                    let _ = sock.send_to(&seq.to_le_bytes(), dst);
                    log.sent.push(now);
                    next = now + PROBE_EVERY;
                }
                if let Ok(n) = sock.recv(&mut buf) {
                    if n == 8 {
                        let mut seq = [0u8; 8];
                        seq.copy_from_slice(&buf[..8]);
                        let mut log = shared.lock().unwrap_or_else(|e| e.into_inner());
                        log.answered.push((u64::from_le_bytes(seq), Instant::now()));
                    }
                }
            }
        })?;
        Ok(Prober {
            log,
            _worker: worker,
        })
    }

    /// When the first answer to a probe sent at or after `since` arrived.
    pub(crate) fn first_answer_after(&self, since: Instant) -> Option<Instant> {
        let log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        log.answered
            .iter()
            .filter(|(seq, _)| {
                usize::try_from(*seq)
                    .ok()
                    .and_then(|i| log.sent.get(i))
                    .is_some_and(|sent| *sent >= since)
            })
            .map(|(_, at)| *at)
            .min()
    }

    /// When the last answer that arrived before `before` arrived.
    pub(crate) fn last_answer_before(&self, before: Instant) -> Option<Instant> {
        let log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        log.answered
            .iter()
            .map(|(_, at)| *at)
            .filter(|at| *at < before)
            .max()
    }

    /// Waits up to `timeout` for an answer to a probe sent from now on.
    pub(crate) fn wait_flowing(&self, timeout: Duration) -> Result<Duration> {
        let since = Instant::now();
        crmguard_lab::wait::wait_for(timeout, "tunnel traffic to be answered", || {
            Ok(self.first_answer_after(since).map(|at| at - since))
        })
    }

    /// Probes sent and answered so far.
    pub(crate) fn totals(&self) -> (usize, usize) {
        let log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        (log.sent.len(), log.answered.len())
    }
}

/// Floods from the denied address to two closed ports and counts what arrives: a UDP flood and a
/// stream of real TCP connection attempts (a SYN that got through would complete a handshake
/// with the counting server).
pub(crate) struct DeniedFloods {
    udp: Option<UdpFlood>,
    paced_udp: Option<PacedUdp>,
    receiver: UdpReceiver,
    server: TcpServer,
    syns: Arc<AtomicU64>,
    _syn_worker: Worker,
}

impl DeniedFloods {
    /// `tcp_every` paces the connection attempts (the socket of each stays open until the
    /// next, so an answer would complete the handshake); `udp_every` paces the datagrams, or
    /// `None` floods as fast as [`UdpFlood`] goes.
    pub(crate) fn start(
        t: &Topology,
        tcp_every: Duration,
        udp_every: Option<Duration>,
    ) -> Result<DeniedFloods> {
        let a = &t.addrs;
        let receiver = UdpReceiver::start(&t.host, FLOOD_UDP)?;
        let server = TcpServer::start(&t.host, FLOOD_TCP, "denied\n")?;
        let udp_dst = t.host_addr(a.denied4, FLOOD_UDP);
        let (udp, paced_udp) = match udp_every {
            None => (Some(UdpFlood::start(&t.out, a.denied4, udp_dst, 64)?), None),
            Some(every) => (
                None,
                Some(PacedUdp::start(&t.out, a.denied4, udp_dst, every)?),
            ),
        };
        let syns = Arc::new(AtomicU64::new(0));
        let count = Arc::clone(&syns);
        let out = t.out.open()?;
        let (src, dst) = (a.denied4, t.host_addr(a.denied4, FLOOD_TCP));
        let syn_worker = Worker::spawn("denied-syns", move |stop| {
            if let Err(e) = nix::sched::setns(&out, nix::sched::CloneFlags::CLONE_NEWNET) {
                eprintln!("denied SYNs: entering the outside namespace: {e}");
                return;
            }
            while !stop.load(Ordering::Relaxed) {
                if syn(src, dst).is_ok() {
                    count.fetch_add(1, Ordering::Relaxed);
                }
                // The socket stays open this long: an answer would complete the handshake.
                std::thread::sleep(tcp_every);
            }
        })?;
        Ok(DeniedFloods {
            udp,
            paced_udp,
            receiver,
            server,
            syns,
            _syn_worker: syn_worker,
        })
    }

    /// (UDP datagrams sent, TCP attempts made, datagrams received, connections accepted).
    pub(crate) fn counts(&self) -> (u64, u64, u64, u64) {
        (
            self.udp.as_ref().map_or(0, UdpFlood::sent)
                + self
                    .paced_udp
                    .as_ref()
                    .map_or(0, |p| p.sent.load(Ordering::Relaxed)),
            self.syns.load(Ordering::Relaxed),
            self.receiver.received(),
            self.server.accepted(),
        )
    }

    /// What got through so far (datagrams received plus connections accepted).
    pub(crate) fn passed(&self) -> u64 {
        self.receiver.received() + self.server.accepted()
    }
}

/// Datagrams from `src` to `dst` at a steady pace.
struct PacedUdp {
    sent: Arc<AtomicU64>,
    _worker: Worker,
}

impl PacedUdp {
    fn start(ns: &NetNs, src: IpAddr, dst: SocketAddr, every: Duration) -> Result<PacedUdp> {
        let sock = ns
            .run_in(|| UdpSocket::bind(SocketAddr::new(src, 0)))?
            .with_context(|| format!("binding {src}"))?;
        let sent = Arc::new(AtomicU64::new(0));
        let count = Arc::clone(&sent);
        let worker = Worker::spawn("paced-udp", move |stop| {
            let payload = [0xa5u8; 64];
            while !stop.load(Ordering::Relaxed) {
                if sock.send_to(&payload, dst).is_ok() {
                    count.fetch_add(1, Ordering::Relaxed);
                }
                std::thread::sleep(every);
            }
        })?;
        Ok(PacedUdp {
            sent,
            _worker: worker,
        })
    }
}

/// Starts one TCP connection from `src` to `dst` (one SYN on the wire) and leaves it to the
/// kernel; the socket is closed when the caller's pause is over.
fn syn(src: IpAddr, dst: SocketAddr) -> Result<()> {
    use nix::sys::socket::{self, AddressFamily, SockFlag, SockType, SockaddrStorage};
    use std::os::fd::AsRawFd;
    thread_local! {
        static OPEN: std::cell::RefCell<Option<std::os::fd::OwnedFd>> = const { std::cell::RefCell::new(None) };
    }
    let family = if src.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
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
        Ok(()) | Err(nix::errno::Errno::EINPROGRESS) => {}
        Err(e) => return Err(e.into()),
    }
    // Closing the previous attempt's socket now: it had the whole pause to be answered.
    OPEN.with(|open| *open.borrow_mut() = Some(fd));
    Ok(())
}

/// What one agent process holds, to compare between agents and over time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Holdings {
    pub(crate) fds: usize,
    pub(crate) pins: BTreeSet<String>,
    pub(crate) tun_devices: usize,
}

impl Holdings {
    pub(crate) fn of(agent: &Agent, ns: &NetNs) -> Result<Holdings> {
        let pid = agent.pid().context("no agent started")?;
        Ok(Holdings {
            fds: fd_count(pid)?,
            pins: pins(agent.bpffs_dir())?,
            tun_devices: tun_devices(ns)?,
        })
    }
}

/// The number of open descriptors of process `pid`.
pub(crate) fn fd_count(pid: u32) -> Result<usize> {
    let dir = format!("/proc/{pid}/fd");
    Ok(std::fs::read_dir(&dir)
        .with_context(|| format!("listing {dir}"))?
        .count())
}

/// The resident set of process `pid`, in KiB (`VmRSS` of /proc/PID/status).
pub(crate) fn rss_kib(pid: u32) -> Result<u64> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    text.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .with_context(|| format!("no VmRSS in {path}"))?
        .parse()
        .with_context(|| format!("VmRSS in {path}"))
}

/// Every entry under the pin directory, as paths relative to it.
pub(crate) fn pins(dir: &Path) -> Result<BTreeSet<String>> {
    let mut found = BTreeSet::new();
    let mut todo = vec![dir.to_owned()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).with_context(|| format!("listing {}", d.display()))? {
            let path = entry?.path();
            if path.is_dir() {
                todo.push(path.clone());
            }
            found.insert(
                path.strip_prefix(dir)
                    .unwrap_or(&path)
                    .display()
                    .to_string(),
            );
        }
    }
    Ok(found)
}

/// The TUN devices in `ns` (`ip -d link` says `tun type tun` for each).
pub(crate) fn tun_devices(ns: &NetNs) -> Result<usize> {
    let text = ns.ip(&["-d", "-o", "link", "show"])?;
    Ok(text.lines().filter(|l| l.contains(" tun type ")).count())
}

/// Namespaces that are not the lab's (every lab namespace is named `cg*`; tests running at the
/// same time make and remove theirs): crmguard makes none, so none may appear.
pub(crate) fn foreign_namespaces() -> BTreeSet<String> {
    crmguard_lab::netns::list()
        .into_iter()
        .filter(|n| !n.starts_with("cg"))
        .collect()
}

/// Lines of the agent's logs (every run's stderr) that report a panic.
pub(crate) fn panics(agent: &Agent) -> Result<Vec<String>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(agent.dir())? {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.starts_with("crmguard-run-") {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            found.extend(
                text.lines()
                    .filter(|l| l.contains("panicked"))
                    .map(|l| format!("{name}: {l}")),
            );
        }
    }
    Ok(found)
}

/// The median and the maximum of `values`.
pub(crate) fn median_max(values: &[Duration]) -> (Duration, Duration) {
    let mut sorted = values.to_vec();
    sorted.sort();
    let median = sorted.get(sorted.len() / 2).copied().unwrap_or_default();
    let max = sorted.last().copied().unwrap_or_default();
    (median, max)
}
