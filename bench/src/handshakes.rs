//! Handshakes completed per second by a gateway on one CPU: crmguard against wireguard-go.
//!
//! Each gateway runs in its own namespace, pinned to one CPU, with the same `HANDSHAKE_PEERS`
//! peers configured; the bench process is the load generator in a client namespace across a
//! veth, on the other CPU. The generator holds one boringtun `Tunn` per handshake initiation
//! it will send (made before the timed window: building an initiation costs the client about
//! as much Diffie-Hellman work as answering one costs the gateway, so a generator that built
//! them on the fly would measure itself). In the window it sends the initiations round-robin
//! over the peers, each peer from its own UDP socket as each device has its own address and
//! port (behind a NAT, its own port), keeping `WINDOW` of them unanswered at most, and
//! keeps every handshake response (type 2) that names one of its initiations. After the window
//! each response is given to the `Tunn` that sent the initiation: only a response the client
//! accepts (a session is derived, a keepalive is due) counts as a completed handshake.
//!
//! What is measured is the cost of a handshake, not a limit in front of it:
//! - crmguard's XDP per-source handshake limit (`[vpn] handshake_per_source_pps`,
//!   `handshake_burst`) and its endpoint's cookie threshold (`[vpn] handshakes_before_cookies`)
//!   are set far above any rate reached here;
//! - wireguard-go has no such settings: it answers with cookie replies once its handshake queue
//!   holds 128 messages, and refuses a peer's initiations that come within 20 ms of each other.
//!   `WINDOW` (64) keeps its queue below 128, and the round-robin over 1,000 peers keeps each
//!   peer's initiations far more than 20 ms apart at the rates reached. Cookie replies are
//!   counted and printed, so a run where either gateway still answered with cookies shows it.

use std::collections::VecDeque;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use boringtun::noise::{Tunn, TunnResult};
use crmguard_core::keys::{self, KeyPair};
use crmguard_lab::cmd;
use crmguard_lab::netns::NetNs;
use crmguard_lab::process::Process;
use nix::poll::PollTimeout;
use nix::sched::{sched_setaffinity, CpuSet};
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags};
use nix::sys::resource::{getrlimit, setrlimit, Resource};
use nix::unistd::Pid;
use x25519_dalek::PublicKey;

use crate::memory::{gateway_address, peer_address, peer_entries, wait_admitted};
use crate::noise_ceiling::Noise;
use crate::profile::Profile;
use crate::vpn::{
    address_end, check_interrupt, cpu_seconds, keypair, median, start_userspace, wg, write_key,
    Agent, AgentSetup, Env, Userspace, IF_PREFIX, SETTLE, WG_PORT,
};

/// Client identities, each configured as a peer on both gateways.
pub(crate) const HANDSHAKE_PEERS: usize = 1_000;
/// The goal: crmguard completes at least this many times wireguard-go's handshakes a second.
pub(crate) const HANDSHAKE_TARGET: f64 = 2.0;
/// Initiations sent and not yet answered, at most (see the module doc for why 64).
const WINDOW: usize = 64;
/// An initiation not answered within this is given up (the gateway dropped it).
const LOST_AFTER: Duration = Duration::from_millis(250);
/// Initiations prepared per second of window: above what one CPU answers, so the window is
/// normally ended by the clock; when they run out first the rate is taken over the time to the
/// last response.
const POOL_PER_SECOND: usize = 12_000;
/// The CPU the gateway is pinned to, and the generator's.
pub(crate) const GATEWAY_CPU: usize = 1;
const GENERATOR_CPU: usize = 0;

const HANDSHAKE_RESPONSE: u32 = 2;
const COOKIE_REPLY: u32 = 3;
const HANDSHAKE_RESPONSE_LEN: usize = 92;

/// What answers the initiations: a gateway under load, or boringtun's `noise` alone in this
/// process ([`crate::noise_ceiling`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Side {
    WireguardGo,
    Crmguard,
    /// boringtun's responder with the peer of each initiation known beforehand.
    NoisePeerKnown,
    /// boringtun's responder with the peer found from the initiation, as a gateway finds it.
    NoisePeerFound,
}

impl Side {
    pub(crate) const BOTH: [Side; 2] = [Side::WireguardGo, Side::Crmguard];
    pub(crate) const NOISE: [Side; 2] = [Side::NoisePeerKnown, Side::NoisePeerFound];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Side::WireguardGo => "wireguard-go",
            Side::Crmguard => "crmguard",
            Side::NoisePeerKnown => "boringtun noise alone, peer known",
            Side::NoisePeerFound => "boringtun noise alone, peer found",
        }
    }

    pub(crate) fn key(self) -> &'static str {
        match self {
            Side::WireguardGo => "wireguard_go",
            Side::Crmguard => "crmguard",
            Side::NoisePeerKnown => "boringtun_noise_peer_known",
            Side::NoisePeerFound => "boringtun_noise_peer_found",
        }
    }

    /// Whether it is a gateway run in namespaces of its own (not boringtun in this process).
    fn is_gateway(self) -> bool {
        self.bed().is_some()
    }

    /// The gateway's namespace tag and outer subnet; `None` for boringtun alone.
    fn bed(self) -> Option<(&'static str, u8)> {
        match self {
            Side::WireguardGo => Some(("hw", 5)),
            Side::Crmguard => Some(("hc", 6)),
            Side::NoisePeerKnown | Side::NoisePeerFound => None,
        }
    }
}

/// One timed window against one gateway.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Window {
    /// Initiations sent.
    pub(crate) sent: u64,
    /// Handshake responses received for them.
    pub(crate) responses: u64,
    /// Responses the client accepted.
    pub(crate) completed: u64,
    /// Cookie replies received instead of responses.
    pub(crate) cookies: u64,
    pub(crate) seconds: f64,
    /// The gateway's CPU seconds (all threads) during the window.
    pub(crate) gateway_cpu_s: f64,
}

impl Window {
    pub(crate) fn per_second(&self) -> f64 {
        self.completed as f64 / self.seconds
    }
}

/// What one gateway gave, or why it gave nothing.
pub(crate) struct Outcome {
    pub(crate) side: Side,
    pub(crate) windows: Vec<Window>,
    pub(crate) error: Option<String>,
    /// The gateway's samples during one more window, not counted (crmguard only).
    pub(crate) profile: Option<std::result::Result<Profile, String>>,
}

impl Outcome {
    pub(crate) fn per_second(&self) -> Option<f64> {
        median(
            &self
                .windows
                .iter()
                .map(Window::per_second)
                .collect::<Vec<_>>(),
        )
    }

    /// Gateway CPU microseconds per completed handshake.
    pub(crate) fn cpu_us_per_handshake(&self) -> Option<f64> {
        median(
            &self
                .windows
                .iter()
                .filter(|w| w.completed > 0)
                .map(|w| w.gateway_cpu_s * 1e6 / w.completed as f64)
                .collect::<Vec<_>>(),
        )
    }
}

enum Gateway {
    WireguardGo(Process),
    Crmguard(Agent),
}

/// One gateway with the peers configured, and the generator's namespace. Fields drop in
/// order: the gateway first, the namespaces last.
struct Bed {
    side: Side,
    gateway: Gateway,
    client_ns: NetNs,
    _gateway_ns: NetNs,
    target: SocketAddr,
    gateway_public: PublicKey,
}

impl Bed {
    fn start(side: Side, env: &Env<'_>, clients: &[KeyPair]) -> Result<Bed> {
        let pid = std::process::id();
        let (tag, i) = side
            .bed()
            .with_context(|| format!("{} is not a gateway", side.name()))?;
        let (client_ns, gateway_ns, client_veth, gateway_veth) = crate::vpn::namespace_pair(tag)?;
        let outer_gateway = Ipv4Addr::new(10, 201, i, 1);
        client_veth.add_addr(&format!("10.201.{i}.2/24"))?;
        gateway_veth.add_addr(&format!("{outer_gateway}/24"))?;
        client_veth.up()?;
        gateway_veth.up()?;

        let work = env.work.join(tag);
        std::fs::create_dir_all(&work)?;
        let gateway_keys = keypair()?;
        let gateway_public = keys::decode(&gateway_keys.public).context("gateway key")?;
        let ifname = format!("{IF_PREFIX}{pid}{tag}");
        let address = gateway_address(clients.len())?;
        let publics: Vec<String> = clients.iter().map(KeyPair::public_base64).collect();

        let mut gateway = match side {
            Side::WireguardGo => {
                let daemon =
                    start_userspace(Userspace::WireguardGo, None, &gateway_ns, &ifname, &work)?;
                let key_file = work.join("gateway.key");
                write_key(&key_file, &gateway_keys.private)?;
                let mut conf = format!(
                    "[Interface]\nPrivateKey = {}\nListenPort = {WG_PORT}\n",
                    gateway_keys.private
                );
                for (n, public) in publics.iter().enumerate() {
                    conf.push_str(&format!(
                        "\n[Peer]\nPublicKey = {public}\nAllowedIPs = {}/32\n",
                        peer_address(n)?
                    ));
                }
                let conf_file = work.join("gateway.conf");
                write_key(&conf_file, &conf)?;
                let conf_file = conf_file.to_string_lossy().into_owned();
                eprintln!("$ wg setconf {ifname} {conf_file}");
                wg(&["setconf", &ifname, &conf_file])?;
                address_end(&gateway_ns, &ifname, &address)?;
                Gateway::WireguardGo(daemon)
            }
            Side::Crmguard => {
                let bin = env.crmguard.context("crmguard was not built")?;
                let peers = peer_entries(publics.iter().map(String::as_str))?;
                let mut agent = Agent::start(
                    bin,
                    &gateway_ns,
                    &work.join("agent"),
                    &AgentSetup {
                        interface: gateway_veth.name(),
                        tun: &ifname,
                        address: &address,
                        private_key: &gateway_keys.private,
                        peers: "",
                        peers_file: &peers,
                        inspection: true,
                        // Far above any rate reached here: the per-source limit of the XDP
                        // filter and the endpoint's cookie threshold stay out of the way, so
                        // the bench measures what a handshake costs.
                        vpn_extra: "handshake_per_source_pps = 1000000\n\
                                    handshake_burst = 1000000\n\
                                    handshakes_before_cookies = 1000000\n",
                        startup: SETTLE + Duration::from_secs(10),
                    },
                )?;
                wait_admitted(&mut agent, clients.len())?;
                Gateway::Crmguard(agent)
            }
            Side::NoisePeerKnown | Side::NoisePeerFound => {
                bail!("{} is not a gateway", side.name())
            }
        };
        let gateway_pid = gateway.daemon()?.id();
        pin_process(gateway_pid, GATEWAY_CPU)?;
        Ok(Bed {
            side,
            gateway,
            client_ns,
            _gateway_ns: gateway_ns,
            target: SocketAddr::V4(SocketAddrV4::new(outer_gateway, WG_PORT)),
            gateway_public: PublicKey::from(gateway_public),
        })
    }

    /// One timed window of `seconds`.
    fn window(&mut self, clients: &[KeyPair], seconds: u32, ticks_per_s: f64) -> Result<Window> {
        self.window_recorded(clients, seconds, ticks_per_s, None)
            .map(|(window, _)| window)
    }

    /// One timed window of `seconds`, under `perf record` (into `record`) when given.
    fn window_recorded(
        &mut self,
        clients: &[KeyPair],
        seconds: u32,
        ticks_per_s: f64,
        record: Option<&Path>,
    ) -> Result<(Window, Option<Profile>)> {
        self.gateway.daemon()?.check_alive()?;
        let pool = POOL_PER_SECOND * usize::try_from(seconds)?;
        let mut prepared = prepare(clients, &self.gateway_public, pool)?;
        let gateway_pid = self.gateway.daemon()?.id();
        let target = self.target;
        let recording = match record {
            Some(work) => Some(crate::profile::record(
                gateway_pid,
                seconds,
                work,
                "handshakes",
            )?),
            None => None,
        };
        let cpu0 = cpu_seconds(gateway_pid, ticks_per_s)?;
        let sent = self.client_ns.run_in(|| {
            send_window(
                &prepared.initiations,
                clients.len(),
                target,
                Duration::from_secs(seconds.into()),
            )
        })??;
        let cpu1 = cpu_seconds(gateway_pid, ticks_per_s)?;
        let profile = recording
            .map(crate::profile::Recording::finish)
            .transpose()?;
        self.gateway.daemon()?.check_alive()?;
        let completed = verify(&mut prepared.tunnels, &sent.responses);
        let responses = sent.responses.iter().filter(|r| r.is_some()).count();
        let window = Window {
            sent: u64::try_from(sent.sent)?,
            responses: u64::try_from(responses)?,
            completed: u64::try_from(completed)?,
            cookies: sent.cookies,
            seconds: sent.seconds,
            gateway_cpu_s: cpu1 - cpu0,
        };
        Ok((window, profile))
    }
}

impl Bed {
    /// One more window under `perf record`, started once the initiations are made.
    fn profiled_window(
        &mut self,
        clients: &[KeyPair],
        seconds: u32,
        env: &Env<'_>,
    ) -> Result<Profile> {
        let (_, profile) =
            self.window_recorded(clients, seconds, env.ticks_per_s, Some(env.work))?;
        profile.context("no profile was recorded")
    }
}

impl Gateway {
    fn daemon(&mut self) -> Result<&mut Process> {
        match self {
            Gateway::WireguardGo(d) => Ok(d),
            Gateway::Crmguard(agent) => agent.daemon(),
        }
    }
}

/// Pins every thread of `pid`, and the threads it starts later, to `cpu` (when the machine
/// has it).
fn pin_process(pid: u32, cpu: usize) -> Result<()> {
    if !has_cpu(cpu) {
        return Ok(());
    }
    let mut taskset = Command::new("taskset");
    taskset.args([
        "--all-tasks",
        "--cpu-list",
        "--pid",
        &cpu.to_string(),
        &pid.to_string(),
    ]);
    let out = cmd::output(&mut taskset)?;
    if !out.status.success() {
        bail!(
            "`{}` failed: {}",
            cmd::display(&taskset),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn has_cpu(cpu: usize) -> bool {
    std::thread::available_parallelism().is_ok_and(|n| n.get() > cpu)
}

/// Pins the calling thread to `cpu` (when the machine has it).
pub(crate) fn pin_thread(cpu: usize) -> Result<()> {
    if !has_cpu(cpu) {
        return Ok(());
    }
    let mut set = CpuSet::new();
    set.set(cpu)?;
    sched_setaffinity(Pid::from_raw(0), &set).context("sched_setaffinity")
}

/// Initiations made before the window, and the client state that accepts their responses.
pub(crate) struct Prepared {
    /// Initiation `j` is from peer `j % peers`, by `tunnels[j]`, whose session index is `j`.
    pub(crate) initiations: Vec<Vec<u8>>,
    tunnels: Vec<Tunn>,
}

/// Makes `count` initiations round-robin over the clients, on two threads. Each thread makes
/// all the initiations of half of the clients, in order: a client's initiations then carry
/// increasing timestamps in the order they are sent, so neither gateway may refuse one as a
/// replay of the one before, however far into the pool a window gets.
pub(crate) fn prepare(clients: &[KeyPair], gateway: &PublicKey, count: usize) -> Result<Prepared> {
    let made = std::thread::scope(|scope| {
        let handles = [0, 1].map(|half| {
            scope.spawn(move || -> Result<Vec<(usize, Vec<u8>, Tunn)>> {
                let mut out = Vec::with_capacity(count / 2 + 1);
                let mut buf = [0u8; 256];
                for j in (0..count).filter(|j| (j % clients.len()) % 2 == half) {
                    let client = &clients[j % clients.len()];
                    let index = u32::try_from(j)?;
                    let mut tunn =
                        Tunn::new(client.secret.clone(), *gateway, None, None, index, None);
                    match tunn.format_handshake_initiation(&mut buf, true) {
                        TunnResult::WriteToNetwork(packet) => {
                            out.push((j, packet.to_vec(), tunn));
                        }
                        _ => bail!("boringtun made no handshake initiation"),
                    }
                }
                Ok(out)
            })
        });
        handles.map(|h| {
            h.join()
                .map_err(|_| anyhow::anyhow!("a generator thread panicked"))
        })
    });
    let mut all = Vec::with_capacity(count);
    for half in made {
        all.extend(half??);
    }
    all.sort_unstable_by_key(|(j, _, _)| *j);
    let mut prepared = Prepared {
        initiations: Vec::with_capacity(count),
        tunnels: Vec::with_capacity(count),
    };
    for (_, initiation, tunn) in all {
        prepared.initiations.push(initiation);
        prepared.tunnels.push(tunn);
    }
    Ok(prepared)
}

/// What the timed window received.
struct Sent {
    sent: usize,
    /// The response to initiation `j`, if one came.
    responses: Vec<Option<Vec<u8>>>,
    cookies: u64,
    seconds: f64,
}

/// Sends the initiations with at most `WINDOW` unanswered, for `duration` or until they run
/// out; runs on a thread in the client namespace, pinned to the generator's CPU.
fn send_window(
    initiations: &[Vec<u8>],
    peers: usize,
    target: SocketAddr,
    duration: Duration,
) -> Result<Sent> {
    pin_thread(GENERATOR_CPU)?;
    // One socket per peer, so that a peer's endpoint is its own and does not move.
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    let need = u64::try_from(peers)? + 256;
    if hard < need {
        bail!("{peers} sockets need {need} open files; the hard limit is {hard}");
    }
    setrlimit(Resource::RLIMIT_NOFILE, need.max(1024), hard)?;
    let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?;
    let sockets = (0..peers)
        .map(|i| -> Result<UdpSocket> {
            let socket = UdpSocket::bind("0.0.0.0:0")?;
            socket.set_nonblocking(true)?;
            epoll.add(
                &socket,
                EpollEvent::new(EpollFlags::EPOLLIN, u64::try_from(i)?),
            )?;
            Ok(socket)
        })
        .collect::<Result<Vec<_>>>()?;
    let mut ready = vec![EpollEvent::empty(); 256];
    let mut responses: Vec<Option<Vec<u8>>> = vec![None; initiations.len()];
    // Initiations in flight, in the order sent.
    let mut in_flight: VecDeque<(usize, Instant)> = VecDeque::with_capacity(WINDOW);
    let mut unanswered = 0usize;
    let mut next = 0usize;
    let mut cookies = 0u64;
    let mut buf = [0u8; 2048];
    let start = Instant::now();
    let deadline = start + duration;
    let mut last_response = start;
    let mut now = start;
    while now < deadline && (next < initiations.len() || unanswered > 0) {
        check_interrupt()?;
        while unanswered < WINDOW && next < initiations.len() {
            let socket = &sockets[next % peers];
            match socket.send_to(&initiations[next], target) {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e).context("sending a handshake initiation"),
            }
            in_flight.push_back((next, now));
            unanswered += 1;
            next += 1;
        }
        let n = epoll.wait(&mut ready, PollTimeout::from(5u8))?;
        now = Instant::now();
        for event in &ready[..n] {
            let socket = &sockets[usize::try_from(event.data())?];
            loop {
                let len = match socket.recv_from(&mut buf) {
                    Ok((len, _)) => len,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) => return Err(e).context("receiving from the gateway"),
                };
                let Some(head) = buf.get(..len.min(12)).filter(|h| h.len() == 12) else {
                    continue;
                };
                let kind = u32::from_le_bytes([head[0], head[1], head[2], head[3]]);
                if kind == COOKIE_REPLY {
                    cookies += 1;
                }
                if kind != HANDSHAKE_RESPONSE || len != HANDSHAKE_RESPONSE_LEN {
                    continue;
                }
                let receiver = u32::from_le_bytes([head[8], head[9], head[10], head[11]]);
                let j = usize::try_from(receiver >> 8)?;
                if j < next && responses[j].is_none() && now < deadline {
                    responses[j] = Some(buf[..len].to_vec());
                    last_response = now;
                    if in_flight.iter().any(|&(k, _)| k == j) {
                        unanswered -= 1;
                    }
                    in_flight.retain(|&(k, _)| k != j);
                }
            }
        }
        while let Some(&(j, at)) = in_flight.front() {
            if now.duration_since(at) < LOST_AFTER {
                break;
            }
            in_flight.pop_front();
            if responses[j].is_none() {
                unanswered -= 1;
            }
        }
    }
    // Out of initiations before the deadline: the rate is over the time to the last response.
    let end = if now < deadline {
        last_response
    } else {
        deadline
    };
    let seconds = end.duration_since(start).as_secs_f64();
    if seconds <= 0.0 {
        bail!("the gateway answered no handshake initiation");
    }
    Ok(Sent {
        sent: next,
        responses,
        cookies,
        seconds,
    })
}

/// Gives each response to the client state that sent its initiation; counts those accepted.
fn verify(tunnels: &mut [Tunn], responses: &[Option<Vec<u8>>]) -> usize {
    let mid = tunnels.len() / 2;
    let (first, second) = tunnels.split_at_mut(mid);
    let (r1, r2) = responses.split_at(mid);
    std::thread::scope(|scope| {
        let count = |tunnels: &mut [Tunn], responses: &[Option<Vec<u8>>]| {
            let mut buf = [0u8; 256];
            let mut accepted = 0usize;
            for (tunn, response) in tunnels.iter_mut().zip(responses) {
                let Some(response) = response else { continue };
                if let TunnResult::WriteToNetwork(_) = tunn.decapsulate(None, response, &mut buf) {
                    accepted += 1;
                }
            }
            accepted
        };
        let other = scope.spawn(move || count(second, r2));
        let here = count(first, r1);
        here + other.join().unwrap_or(0)
    })
}

/// The gateways' outcomes, in the order of their beds. (A named type, not `impl Iterator`,
/// so that the borrow ends where the loop over it is left.)
fn gateways(
    outcomes: &mut [Outcome],
) -> std::iter::Filter<std::slice::IterMut<'_, Outcome>, fn(&&mut Outcome) -> bool> {
    outcomes.iter_mut().filter(|o| o.side.is_gateway())
}

/// Runs `rounds` windows of `seconds` against each gateway, alternating.
pub(crate) fn measure(env: &Env<'_>, rounds: usize, seconds: u32) -> Vec<Outcome> {
    let mut outcomes: Vec<Outcome> = Side::BOTH
        .iter()
        .chain(Side::NOISE.iter())
        .map(|&side| Outcome {
            side,
            windows: Vec::new(),
            error: None,
            profile: None,
        })
        .collect();
    let clients = match (0..HANDSHAKE_PEERS)
        .map(|_| keys::fresh_private_key().map(KeyPair::from_private))
        .collect::<std::io::Result<Vec<_>>>()
    {
        Ok(clients) => clients,
        Err(e) => {
            for outcome in &mut outcomes {
                outcome.error = Some(format!("reading /dev/urandom: {e}"));
            }
            return outcomes;
        }
    };
    let mut noise = match Noise::new(&clients) {
        Ok(noise) => Some(noise),
        Err(e) => {
            for outcome in outcomes.iter_mut().filter(|o| !o.side.is_gateway()) {
                outcome.error = Some(format!("{e:#}"));
            }
            None
        }
    };
    let mut beds: Vec<Option<Bed>> = Vec::new();
    for outcome in gateways(&mut outcomes) {
        match Bed::start(outcome.side, env, &clients) {
            Ok(bed) => beds.push(Some(bed)),
            Err(e) => {
                eprintln!(
                    "bench: the {} handshake gateway cannot start: {e:#}",
                    outcome.side.name()
                );
                outcome.error = Some(format!("{e:#}"));
                beds.push(None);
            }
        }
    }
    // A first window per gateway is not counted: the first handshake of each peer also costs
    // what follows it once (the peer's endpoint saved, its first handshake logged).
    for (bed, outcome) in beds.iter_mut().zip(gateways(&mut outcomes)) {
        let Some(b) = bed else { continue };
        if let Err(e) = b.window(&clients, seconds, env.ticks_per_s) {
            eprintln!("bench: handshakes against {} failed: {e:#}", b.side.name());
            outcome.error = Some(format!("{e:#}"));
            *bed = None;
        }
    }
    for round in 1..=rounds {
        let mut line = format!("  round {round}/{rounds}");
        for (bed, outcome) in beds.iter_mut().zip(gateways(&mut outcomes)) {
            let Some(b) = bed else { continue };
            match b.window(&clients, seconds, env.ticks_per_s) {
                Ok(w) => {
                    line.push_str(&format!(
                        "  {} {:.0}/s ({} sent, {} cookies)",
                        b.side.name(),
                        w.per_second(),
                        w.sent,
                        w.cookies
                    ));
                    outcome.windows.push(w);
                }
                Err(e) => {
                    eprintln!("bench: handshakes against {} failed: {e:#}", b.side.name());
                    outcome.error = Some(format!("{e:#}"));
                    *bed = None;
                }
            }
            if check_interrupt().is_err() {
                return outcomes;
            }
        }
        if let Some(n) = noise.as_mut() {
            for outcome in outcomes.iter_mut().filter(|o| !o.side.is_gateway()) {
                let find = outcome.side == Side::NoisePeerFound;
                match n.window(&clients, seconds, find) {
                    Ok(w) => {
                        line.push_str(&format!(
                            "  {} {:.0}/s",
                            outcome.side.name(),
                            w.per_second()
                        ));
                        outcome.windows.push(w);
                    }
                    Err(e) => outcome.error = Some(format!("{e:#}")),
                }
            }
        }
        eprintln!("{line}");
    }
    // One more window against crmguard under `perf record`, not counted: where a handshake's
    // CPU goes.
    for (bed, outcome) in beds.iter_mut().zip(gateways(&mut outcomes)) {
        let Some(b) = bed else { continue };
        if b.side != Side::Crmguard {
            continue;
        }
        outcome.profile = Some(
            b.profiled_window(&clients, seconds, env)
                .map_err(|e| format!("{e:#}")),
        );
    }
    outcomes
}
