//! The WireGuard endpoint: one UDP socket, one TUN device and one boringtun `noise::Tunn` per
//! peer, driven by three plain threads. The threads do the IO; what happens to each datagram,
//! packet and timer tick is decided by the sans-IO core in [`super::tunnel`].
//!
//! - `vpn-rx` reads datagrams in batches (UDP GRO), finds the peer of each (by public key for a
//!   handshake initiation, by session index for everything else), decrypts it under that peer's
//!   lock, applies the source check and the identity ACL, and writes the admitted packets to the
//!   TUN device in batches (coalesced by flow).
//! - `vpn-tx` reads packets from the TUN device (super-packets split by segment), finds the
//!   peer that owns each destination, encrypts under that peer's lock and sends runs of
//!   equal-sized datagrams to one endpoint with one GSO send.
//! - `vpn-handshake` works through the handshake messages `vpn-rx` hands it (a bounded queue:
//!   beyond it they are dropped and counted as `rate_limited`), so that a flood of initiations
//!   does not hold up the peers' data.
//! - `vpn-timers` runs every peer's WireGuard timers (retransmitted and renewed handshakes,
//!   keepalives, expiry) four times a second, resets the handshake load counter every second,
//!   reads the local time for the ACL, and saves the peers' endpoints when they change.
//!
//! Shared state: the peer table (with the ACL) is an immutable snapshot that the control side
//! replaces whole on reload; each thread keeps its own reference and looks at a generation
//! counter once per batch. Each peer has its own mutex around its `Tunn`; no lock is shared by
//! all peers on the data path.
//!
//! Handshake initiations go through an endpoint-wide check first: the MAC that proves the
//! sender knows the gateway's public key, and under load (more than
//! `vpn.handshakes_before_cookies` a second, [`HANDSHAKES_BEFORE_COOKIES`] by default) a cookie reply to the datagram's real source address
//! instead of the expensive Diffie-Hellman work, so a spoofed flood costs little.
//!
//! Roaming: a peer's endpoint is the source address of its last authenticated datagram; replies
//! leave from the local address that datagram reached. Endpoints are saved in
//! `state_dir/vpn-endpoints.json`, and a starting endpoint sends a handshake initiation to every
//! remembered endpoint, so sessions come back within a round trip after a restart.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ipnet::{Ipv4Net, Ipv6Net};
use quinn_udp::RecvMeta;
use tun_rs::GROTable;

use super::handoff::Handoff;
use super::state::{self, Remembered};
use super::status::{
    DropCounts, ExcludedPeer, HandshakeCounts, VpnPeerStatus, VpnStatus, CONNECTED_FOR_SECS,
};
use super::tun::{self, Tun};
use super::tunnel::{Action, Core, Held, Now, PeerCell, Scratch, Snapshot, Tx};
use super::uapi_server::UapiServer;
use super::udp::{self, Target, Udp};
use crmguard_core::acl::{Acl, AclMetrics, LocalTime, PortalListening};
use crmguard_core::config::{Config, Role};
use crmguard_core::keys::{self, KeyError};
use crmguard_core::peers::{self, Conflict, Entry, PeerInfo, Table};
use crmguard_inspect::{Inspector, Policy, Tick};

pub use super::tunnel::HANDSHAKES_BEFORE_COOKIES;

/// How often the WireGuard timers run.
const TIMER_TICK: Duration = Duration::from_millis(250);

/// How long a thread waits for IO before it looks at its stop flag.
const POLL: Duration = Duration::from_millis(100);

/// Datagram buffers per receive (quinn-udp's batch).
const RX_BATCH: usize = 32;

/// While the WireGuard port is busy, how long the receive thread leaves datagrams to gather in
/// the socket before it takes them again: one wake then carries a larger batch (fewer
/// receives and TUN writes per packet, larger super-packets into the stack), as a network
/// card's interrupt moderation does. This is the most a packet waits for it.
const RX_HOLD: Duration = Duration::from_micros(50);

/// A wake that took at least this many datagrams finds the port busy, and the next receive
/// is held for [`RX_HOLD`]. A lone packet (a ping, an interactive keystroke) is never held.
const RX_BUSY: usize = 4;

/// After a wake that brought handshake messages and nothing else, the receive thread waits up
/// to this long for `vpn-handshake` to work through them before it takes more. Otherwise each
/// message of a storm wakes it, and on a gateway with one free CPU each wake preempts the
/// handshake thread to hand over a batch of one (two switches per handshake, a quarter of its
/// cost). This is the most a packet arriving in that moment waits for it.
const HANDSHAKE_HOLD: Duration = Duration::from_millis(1);

/// Timer slack of the receive thread, so that a hold ends close to [`RX_HOLD`] and not up to
/// the default 50 microseconds later.
const RX_TIMER_SLACK_NS: u64 = 5_000;

/// How long the receive thread pauses after a receive that failed without waiting.
const RX_ERROR_PAUSE: Duration = Duration::from_millis(10);

/// Bytes per receive buffer: room for a whole GRO batch.
const RX_BUFFER: usize = 65_536;

/// Bytes per packet buffer on the TUN read side (the MTU plus slack).
const TUN_PACKET_BUFFER: usize = 4_096;

/// Bytes of the decryption and encryption scratch buffers.
const SCRATCH: usize = 65_536 + 256;

#[derive(Debug, thiserror::Error)]
pub enum VpnError {
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error("cannot listen on udp/{port}")]
    Udp {
        port: u16,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot create the TUN device {name}")]
    Tun {
        name: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start a VPN thread")]
    Thread(#[source] std::io::Error),
}

/// What the endpoint needs from the configuration, beyond the peers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// The TUN device's name.
    pub interface: String,
    pub listen_port: u16,
    pub address: Ipv4Net,
    pub address6: Option<Ipv6Net>,
    pub private_key_file: PathBuf,
    /// `state_dir/vpn-endpoints.json`.
    pub state_file: PathBuf,
    /// `vpn.handshakes_before_cookies`.
    pub handshakes_before_cookies: u64,
}

impl Settings {
    /// The settings of `config`, `None` without `[vpn]`.
    pub fn of(config: &Config) -> Option<Settings> {
        let vpn = config.vpn.as_ref()?;
        Some(Settings {
            interface: super::interface_name(),
            listen_port: vpn.listen_port,
            address: vpn.address,
            address6: vpn.address6,
            private_key_file: vpn.private_key_file.clone(),
            state_file: config.agent.state_dir.join(state::FILE_NAME),
            handshakes_before_cookies: u64::from(vpn.handshakes_before_cookies),
        })
    }
}

/// What a reload compares to decide whether the peer table must be rebuilt.
///
/// The admitted peers are kept as their positions in `config_peers`, not as copies: each
/// admitted peer's [`PeerInfo`] is made from its configured peer, so equal configured peers
/// and equal positions are equal admitted peers, and a gateway with tens of thousands of
/// devices keeps one copy of their names and roles here instead of two.
#[derive(Debug, Clone, PartialEq)]
struct Inputs {
    admitted: Vec<usize>,
    excluded: Vec<(String, peers::Excluded)>,
    roles: Vec<Role>,
    config_peers: Vec<crmguard_core::config::Peer>,
    inspection: crmguard_core::config::Inspection,
    mfa_portal_port: u16,
}

impl Inputs {
    /// The inputs of `config` at `now`, and the peers it admits.
    fn of(config: &Config, now: SystemTime) -> (Inputs, Vec<PeerInfo>) {
        let (peers, excluded) = peers::admitted(config, now);
        // `admitted` keeps the configured order: each admitted peer is the next configured
        // peer it was made from.
        let mut admitted = Vec::with_capacity(peers.len());
        let mut next = peers.iter().peekable();
        for (at, peer) in config.peers.iter().enumerate() {
            if next.next_if(|info| made_from(info, peer)).is_some() {
                admitted.push(at);
            }
        }
        let inputs = Inputs {
            admitted,
            excluded,
            roles: config.roles.clone(),
            config_peers: config.peers.clone(),
            inspection: config.inspection.clone(),
            mfa_portal_port: config.mfa.portal_port,
        };
        (inputs, peers)
    }

    /// The admitted peers' configuration, in order.
    fn admitted_peers(&self) -> impl Iterator<Item = &crmguard_core::config::Peer> {
        self.admitted
            .iter()
            .filter_map(|&at| self.config_peers.get(at))
    }
}

/// Whether `info` is what [`peers::admitted`] makes of `peer`.
fn made_from(info: &PeerInfo, peer: &crmguard_core::config::Peer) -> bool {
    info.name == peer.name
        && info.public_key == peer.public_key
        && info.address == peer.address
        && info.address6 == peer.address6
        && info.role == peer.role
}

/// A value replaced whole by the control side and read by the data threads without a shared
/// lock: each reader keeps its own `Arc` and compares the generation once per batch.
struct Published<T> {
    generation: AtomicU64,
    current: Mutex<Arc<T>>,
}

impl<T> Published<T> {
    fn new(value: T) -> Published<T> {
        Published {
            generation: AtomicU64::new(1),
            current: Mutex::new(Arc::new(value)),
        }
    }

    fn publish(&self, value: T) {
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        *current = Arc::new(value);
        self.generation.fetch_add(1, Ordering::Release);
    }

    fn load(&self) -> (u64, Arc<T>) {
        let current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        (
            self.generation.load(Ordering::Acquire),
            Arc::clone(&current),
        )
    }
}

/// A reader's copy of a [`Published`] value.
struct Cached<T> {
    generation: u64,
    value: Arc<T>,
}

impl<T> Cached<T> {
    fn new(published: &Published<T>) -> Cached<T> {
        let (generation, value) = published.load();
        Cached { generation, value }
    }

    fn refresh(&mut self, published: &Published<T>) {
        if published.generation.load(Ordering::Acquire) != self.generation {
            let (generation, value) = published.load();
            self.generation = generation;
            self.value = value;
        }
    }
}

/// State shared by the endpoint's threads.
struct Shared {
    stop: AtomicBool,
    /// The per-packet logic, with the gateway's keys and the endpoint-wide counters.
    core: Core,
    udp: Udp,
    tun: Tun,
    snapshot: Published<Snapshot>,
    acl_metrics: AclMetrics,
    /// Whether the daemon's MFA portal listens; every ACL built reads it.
    portal: Arc<PortalListening>,
    /// The local time for the ACL, `weekday << 16 | minute_of_day`, refreshed every second.
    local_time: AtomicU32,
    state_file: PathBuf,
    /// The start of inspection's monotonic seconds.
    started: Instant,
    /// Handshake messages for `vpn-handshake`, handed over in batches; full means the endpoint
    /// is busy with them.
    handshakes: Handoff<HandshakeJob>,
}

impl Shared {
    fn local_time(&self) -> LocalTime {
        let packed = self.local_time.load(Ordering::Relaxed);
        LocalTime {
            weekday: u8::try_from(packed >> 16).unwrap_or(0),
            minute_of_day: u16::try_from(packed & 0xffff).unwrap_or(0),
        }
    }

    /// Inspection's clock, read now.
    fn tick(&self) -> Tick {
        Tick {
            secs: u32::try_from(self.started.elapsed().as_secs()).unwrap_or(u32::MAX),
            unix: unix_secs(SystemTime::now()).unwrap_or(0),
        }
    }

    fn refresh_local_time(&self) {
        match LocalTime::now() {
            Ok(now) => self.local_time.store(
                (u32::from(now.weekday) << 16) | u32::from(now.minute_of_day),
                Ordering::Relaxed,
            ),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the local time; the ACL keeps the last one it had")
            }
        }
    }

    /// Carries out what the core asks that needs no thread's own buffers: datagrams to send and
    /// ACL denials to count. Packets for the TUN device are the receive thread's to queue.
    fn carry_out(&self, action: Action<'_>) {
        match action {
            Action::Send { to, datagram } => {
                if let Err(e) = self.udp.send(&to, datagram, None) {
                    tracing::debug!(error = %e, "sending a WireGuard datagram failed");
                }
            }
            Action::Denied { peer, src, verdict } => self.acl_metrics.count(peer, src, &verdict),
            Action::Deliver(_) => {}
        }
    }
}

/// The running endpoint. Dropping it stops its threads, saves the peers' endpoints and removes
/// the TUN device.
pub struct Endpoint {
    settings: Settings,
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
    uapi: Option<UapiServer>,
    /// The cells by public key, so a reload keeps the sessions of the peers it keeps.
    cells: HashMap<[u8; 32], Arc<PeerCell>>,
    /// Where the peers cut by a reload (disabled, removed) were last seen, so that a peer
    /// admitted again gets a handshake at once instead of waiting for its client's retry timer.
    departed: HashMap<[u8; 32], Target>,
    inputs: Option<Inputs>,
    next_index: u32,
}

impl Endpoint {
    /// Reads or creates the private key, opens the socket and the TUN device, admits the
    /// configured peers, starts the threads and initiates handshakes to the peers whose
    /// endpoints are remembered.
    pub fn start(
        settings: Settings,
        config: &Config,
        acl_metrics: AclMetrics,
        portal: Arc<PortalListening>,
        inspector: Arc<Inspector>,
    ) -> Result<Endpoint, VpnError> {
        let (keys, created) = keys::load_or_create(&settings.private_key_file)?;
        if created {
            tracing::info!(
                path = %settings.private_key_file.display(),
                public_key = %keys.public_base64(),
                "created the WireGuard private key"
            );
        }
        let udp = Udp::bind(settings.listen_port).map_err(|source| VpnError::Udp {
            port: settings.listen_port,
            source,
        })?;
        let tun = Tun::create(&settings.interface, settings.address, settings.address6).map_err(
            |source| VpnError::Tun {
                name: settings.interface.clone(),
                source,
            },
        )?;
        let acl = acl_for(config, &settings, &portal);
        acl_metrics.prepare(&acl);
        let shared = Arc::new(Shared {
            handshakes: Handoff::new(HANDSHAKE_QUEUE),
            stop: AtomicBool::new(false),
            core: Core::new(keys, settings.handshakes_before_cookies, inspector),
            udp,
            tun,
            snapshot: Published::new(Snapshot {
                table: Table::default(),
                acl,
                inspect: Policy::new(&config.inspection),
            }),
            acl_metrics,
            portal,
            local_time: AtomicU32::new(0),
            state_file: settings.state_file.clone(),
            started: Instant::now(),
        });
        shared.refresh_local_time();
        let mut endpoint = Endpoint {
            settings,
            shared,
            threads: Vec::new(),
            uapi: None,
            cells: HashMap::new(),
            departed: HashMap::new(),
            inputs: None,
            next_index: first_index(),
        };
        endpoint.update(config);
        endpoint.resume_remembered();
        for (name, body) in [
            ("vpn-rx", rx_thread as fn(Arc<Shared>)),
            ("vpn-tx", tx_thread),
            ("vpn-timers", timer_thread),
        ] {
            let shared = Arc::clone(&endpoint.shared);
            let handle = std::thread::Builder::new()
                .name(name.to_owned())
                .spawn(move || body(shared))
                .map_err(VpnError::Thread)?;
            endpoint.threads.push(handle);
        }
        let shared = Arc::clone(&endpoint.shared);
        let handle = std::thread::Builder::new()
            .name("vpn-handshake".to_owned())
            .spawn(move || handshake_thread(shared))
            .map_err(VpnError::Thread)?;
        endpoint.threads.push(handle);
        let info = Arc::clone(&endpoint.shared);
        endpoint.uapi = UapiServer::start(
            &endpoint.settings.interface,
            Box::new(move || device_info(&info)),
        );
        tracing::info!(
            interface = %endpoint.settings.interface,
            listen_port = endpoint.shared.udp.port(),
            public_key = %endpoint.shared.core.keys().public_base64(),
            peers = endpoint.cells.len(),
            offload = endpoint.shared.tun.offload(),
            gso_segments = endpoint.shared.udp.max_gso_segments(),
            gro_segments = endpoint.shared.udp.gro_segments(),
            "the WireGuard endpoint is up"
        );
        Ok(endpoint)
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Brings the peers and the ACL in line with `config`: peers that stay keep their
    /// sessions, new peers are admitted, removed, disabled and expired ones are cut at once.
    /// Cheap when nothing changed, so it may run periodically (keys expire with time).
    pub fn update(&mut self, config: &Config) {
        let (inputs, admitted) = Inputs::of(config, SystemTime::now());
        if self.inputs.as_ref() == Some(&inputs) {
            return;
        }
        let mut entries = Vec::with_capacity(admitted.len());
        let mut cells = HashMap::with_capacity(admitted.len());
        let mut returning = Vec::new();
        for info in admitted {
            let cell = match self.cells.get(&info.public_key) {
                Some(cell) => Arc::clone(cell),
                None => {
                    let index = self.allocate_index();
                    let cell = Arc::new(PeerCell::new(
                        self.shared.core.keys(),
                        info.public_key,
                        index,
                    ));
                    if self.inputs.is_some() {
                        tracing::info!(peer = %info.name, "VPN peer admitted");
                    }
                    if let Some(target) = self.departed.remove(&info.public_key) {
                        returning.push((Arc::clone(&cell), target));
                    }
                    cell
                }
            };
            cells.insert(info.public_key, Arc::clone(&cell));
            entries.push(Entry {
                info,
                index: cell.index,
                slot: cell,
            });
        }
        let (table, conflicts) = Table::build(entries);
        for conflict in conflicts {
            match conflict {
                Conflict::DuplicateKey { peer, first } => {
                    tracing::error!(%peer, %first, "two VPN peers share a public key; the second is left out")
                }
                Conflict::DuplicateIndex { peer } => {
                    tracing::error!(%peer, "internal: session index taken; the peer is left out")
                }
                Conflict::DuplicateAddress { peer, net } => {
                    tracing::error!(%peer, %net, "two VPN peers share a tunnel address; the first keeps it")
                }
            }
        }
        if self.inputs.is_some() {
            for (key, _) in self.cells.iter().filter(|(k, _)| !cells.contains_key(*k)) {
                let name = self
                    .inputs
                    .iter()
                    .flat_map(Inputs::admitted_peers)
                    .find(|p| p.public_key == *key)
                    .map_or_else(|| keys::encode(key), |p| p.name.clone());
                tracing::info!(peer = %name, "VPN peer removed; its session is cut");
            }
            for (key, cell) in self.cells.iter().filter(|(k, _)| !cells.contains_key(*k)) {
                if let Some(target) = cell.lock().endpoint {
                    self.departed.insert(*key, target);
                }
            }
        }
        for (name, why) in &inputs.excluded {
            tracing::debug!(peer = %name, reason = why.as_str(), "VPN peer not admitted");
        }
        let acl = acl_for(config, &self.settings, &self.shared.portal);
        self.shared.acl_metrics.prepare(&acl);
        self.shared.snapshot.publish(Snapshot {
            table,
            acl,
            inspect: Policy::new(&config.inspection),
        });
        self.cells = cells;
        self.inputs = Some(inputs);
        // After the publish, so that the answers find their peer.
        let mut buf = vec![0u8; 256];
        for (cell, target) in returning {
            self.initiate(&cell, target, &mut buf);
        }
    }

    /// Starts a handshake to `target` for `cell`; false when the session had nothing to send.
    fn initiate(&self, cell: &PeerCell, target: Target, buf: &mut [u8]) -> bool {
        self.shared.core.initiate(cell, target, buf, &mut |action| {
            self.shared.carry_out(action)
        })
    }

    /// Opens or closes `peer`'s MFA session as the ACL sees it. False when no such peer is
    /// admitted.
    pub fn set_mfa_session(&self, peer: &str, open: bool) -> bool {
        let (_, snapshot) = self.shared.snapshot.load();
        let Some(entry) = snapshot
            .table
            .entries()
            .iter()
            .find(|e| e.info.name == peer)
        else {
            return false;
        };
        entry.slot.mfa_open.store(open, Ordering::Relaxed);
        true
    }

    /// The endpoint's status.
    pub fn status(&self) -> VpnStatus {
        let (_, snapshot) = self.shared.snapshot.load();
        let now = SystemTime::now();
        let peers = snapshot
            .table
            .entries()
            .iter()
            .map(|entry| {
                let session = entry.slot.lock();
                let latest = session
                    .last_handshake
                    .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                    .map(|d| d.as_secs());
                let connected = session
                    .last_handshake
                    .and_then(|t| now.duration_since(t).ok())
                    .is_some_and(|age| age.as_secs() < CONNECTED_FOR_SECS);
                VpnPeerStatus {
                    name: entry.info.name.clone(),
                    role: entry.info.role.clone(),
                    public_key: keys::encode(&entry.info.public_key),
                    address: entry.info.address.to_string(),
                    address6: entry.info.address6.map(|a| a.to_string()),
                    endpoint: session.endpoint.map(|t| t.remote.to_string()),
                    latest_handshake: latest,
                    rx_bytes: session.rx_bytes,
                    tx_bytes: session.tx_bytes,
                    inner_packets: session.inner_packets,
                    connected,
                    mfa_session: entry.slot.mfa_open.load(Ordering::Relaxed),
                }
            })
            .collect();
        let c = self.shared.core.counters();
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        VpnStatus {
            running: true,
            error: None,
            interface: self.settings.interface.clone(),
            listen_port: self.shared.udp.port(),
            public_key: Some(self.shared.core.keys().public_base64()),
            offload: self.shared.tun.offload(),
            peers,
            excluded: self
                .inputs
                .iter()
                .flat_map(|i| i.excluded.iter())
                .map(|(name, why)| ExcludedPeer {
                    name: name.clone(),
                    reason: why.as_str().to_owned(),
                })
                .collect(),
            handshakes: HandshakeCounts {
                ok: get(&c.handshakes_ok),
                rejected: get(&c.handshakes_rejected),
                cookie: get(&c.cookies),
                rate_limited: get(&c.rate_limited),
            },
            dropped: DropCounts {
                source_check: get(&c.source_check),
                no_route: get(&c.no_route),
                invalid: get(&c.invalid),
            },
        }
    }

    /// A fresh 24-bit session index that no admitted peer uses.
    fn allocate_index(&mut self) -> u32 {
        loop {
            let index = self.next_index & 0x00ff_ffff;
            self.next_index = self.next_index.wrapping_add(1);
            if !self.cells.values().any(|c| c.index == index) {
                return index;
            }
        }
    }

    /// Restores the remembered endpoints and handshake times and starts a handshake to every
    /// remembered endpoint.
    fn resume_remembered(&self) {
        let remembered = match state::load(&self.settings.state_file) {
            Ok(map) => map,
            Err(e) => {
                tracing::warn!(path = %self.settings.state_file.display(), error = %e, "cannot read the remembered VPN endpoints; peers reconnect when they next send");
                return;
            }
        };
        let mut buf = vec![0u8; 256];
        let mut initiated = 0;
        for (key, entry) in &remembered {
            let Some(cell) = self.cells.get(key) else {
                continue;
            };
            let target = Target {
                remote: entry.endpoint,
                local: None,
            };
            cell.lock().last_handshake = entry
                .last_handshake
                .and_then(crmguard_core::time::from_unix_seconds);
            if self.initiate(cell, target, &mut buf) {
                initiated += 1;
            }
        }
        if initiated > 0 {
            tracing::info!(
                peers = initiated,
                "started handshakes to the remembered VPN endpoints"
            );
        }
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            if thread.join().is_err() {
                tracing::error!("a VPN thread panicked");
            }
        }
        self.uapi = None;
        save_endpoints(&self.shared, true);
        tracing::info!(interface = %self.settings.interface, "the WireGuard endpoint stopped");
    }
}

/// The ACL of `config` for the gateway's tunnel addresses.
fn acl_for(config: &Config, settings: &Settings, portal: &Arc<PortalListening>) -> Acl {
    Acl::new(
        config,
        settings.address.addr(),
        settings.address6.map(|a| a.addr()),
        config.mfa.portal_port,
        Arc::clone(portal),
    )
}

/// A random starting point for session indexes, so that a restarted agent does not mistake
/// the data of its predecessor's sessions for its own.
fn first_index() -> u32 {
    keys::fresh_private_key()
        .map(|b| u32::from_le_bytes([b[1], b[2], b[3], 0]))
        .unwrap_or_else(|_| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(1)
        })
}

/// The unix seconds of `t`.
fn unix_secs(t: SystemTime) -> Option<u64> {
    t.duration_since(UNIX_EPOCH).ok().map(|d| d.as_secs())
}

/// Writes the state file when a peer's endpoint or handshake changed (or always, with
/// `force`).
fn save_endpoints(shared: &Shared, force: bool) {
    let (_, snapshot) = shared.snapshot.load();
    let mut dirty = force;
    let mut remembered = BTreeMap::new();
    for entry in snapshot.table.entries() {
        let mut session = entry.slot.lock();
        dirty |= std::mem::take(&mut session.dirty);
        if let Some(target) = session.endpoint {
            remembered.insert(
                entry.slot.public_key,
                Remembered {
                    endpoint: target.remote,
                    last_handshake: session.last_handshake.and_then(unix_secs),
                },
            );
        }
    }
    if !dirty {
        return;
    }
    if let Err(e) = state::save(&shared.state_file, &remembered) {
        tracing::warn!(path = %shared.state_file.display(), error = %e, "cannot save the VPN endpoints");
    }
}

/// The answer to `wg show`: the device and its peers.
fn device_info(shared: &Shared) -> super::uapi::DeviceInfo {
    let (_, snapshot) = shared.snapshot.load();
    let peers = snapshot
        .table
        .entries()
        .iter()
        .map(|entry| {
            let session = entry.slot.lock();
            super::uapi::PeerInfo {
                public_key: entry.info.public_key,
                preshared_key: None,
                endpoint: session.endpoint.map(|t| t.remote),
                allowed_ips: entry.info.allowed_ips(),
                last_handshake: session.last_handshake,
                rx_bytes: session.rx_bytes,
                tx_bytes: session.tx_bytes,
                persistent_keepalive: 0,
            }
        })
        .collect();
    super::uapi::DeviceInfo {
        private_key: shared.core.keys().secret.to_bytes(),
        listen_port: shared.udp.port(),
        fwmark: None,
        peers,
    }
}

// ---- vpn-rx: UDP -> TUN ----------------------------------------------------------------------

/// The receive side's buffers.
struct RxBuffers {
    /// The core's decryption and reply buffers.
    scratch: Scratch,
    /// Admitted packets waiting for the next TUN write.
    queue: TunQueue,
}

/// Packets for the TUN device, each at `tun::WRITE_OFFSET` in its buffer, written in batches so
/// that the segments of one flow are coalesced.
struct TunQueue {
    bufs: Vec<Vec<u8>>,
    len: usize,
    gro: GROTable,
}

impl RxBuffers {
    /// Buffers whose admitted packets are handed to the queue whole ([`RxBuffers::take`]).
    fn new() -> RxBuffers {
        RxBuffers {
            scratch: Scratch::keeping_delivered(tun::WRITE_OFFSET),
            queue: TunQueue::new(),
        }
    }

    /// Moves the packet the last datagram admitted, still where it was decrypted, into the
    /// queue: the buffers swap places, and nothing is copied. A full queue is written first.
    fn take(&mut self, tun: &Tun) {
        let RxBuffers { scratch, queue } = self;
        if !scratch.has_delivered() {
            return;
        }
        if queue.is_full() {
            queue.flush(tun);
        }
        if scratch.take_delivered(&mut queue.bufs[queue.len]) {
            queue.len += 1;
        }
    }
}

impl TunQueue {
    fn new() -> TunQueue {
        TunQueue {
            bufs: (0..tun::IDEAL_BATCH_SIZE)
                .map(|_| Vec::with_capacity(RX_BUFFER + tun::WRITE_OFFSET))
                .collect(),
            len: 0,
            gro: GROTable::default(),
        }
    }

    fn push(&mut self, packet: &[u8]) {
        let buf = &mut self.bufs[self.len];
        buf.clear();
        buf.resize(tun::WRITE_OFFSET, 0);
        buf.extend_from_slice(packet);
        self.len += 1;
    }

    fn is_full(&self) -> bool {
        self.len == self.bufs.len()
    }

    fn flush(&mut self, tun: &Tun) {
        if self.len == 0 {
            return;
        }
        if let Err(e) = tun.send(&mut self.gro, &mut self.bufs[..self.len]) {
            tracing::debug!(error = %e, "writing to the TUN device failed");
        }
        self.len = 0;
    }
}

fn rx_thread(shared: Arc<Shared>) {
    let mut storage: [Vec<u8>; RX_BATCH] = std::array::from_fn(|_| vec![0u8; RX_BUFFER]);
    let mut meta = [RecvMeta::default(); RX_BATCH];
    let mut bufs = RxBuffers::new();
    let mut snapshot = Cached::new(&shared.snapshot);
    // The handshake messages of one receive, handed to `vpn-handshake` together.
    let mut handshakes: Vec<HandshakeJob> = Vec::with_capacity(HANDSHAKE_QUEUE);
    if let Err(e) = nix::sys::prctl::set_timerslack(RX_TIMER_SLACK_NS) {
        tracing::debug!(error = %e, "cannot narrow the receive thread's timer slack");
    }
    while !shared.stop.load(Ordering::Relaxed) {
        let mut taken = 0;
        let mut handed_over = 0;
        // The first receive waits (up to `udp::RECV_TIMEOUT`, then the stop flag is looked
        // at); the next ones drain what is queued, a bounded number of batches. The TUN writes
        // wait until the socket is drained (or the queue is full), so that the segments of
        // several receives are coalesced into one super-packet.
        for round in 0..64 {
            let n = match shared.udp.recv(&mut storage, &mut meta, round == 0) {
                Ok(n) => n,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted
                    ) =>
                {
                    break
                }
                Err(e) => {
                    tracing::debug!(error = %e, "receiving from the WireGuard socket failed");
                    if round == 0 {
                        // The receive did not wait: a lasting error must not spin the thread.
                        std::thread::sleep(RX_ERROR_PAUSE);
                    }
                    break;
                }
            };
            if round == 0 {
                snapshot.refresh(&shared.snapshot);
            }
            let now = Now {
                wall: SystemTime::now(),
                local: shared.local_time(),
                tick: shared.tick(),
            };
            for (m, buf) in meta.iter().zip(storage.iter()).take(n) {
                let from = Target {
                    remote: udp::canonical(m.addr),
                    local: m.dst_ip.map(|ip| ip.to_canonical()),
                };
                let stride = if m.stride == 0 { m.len } else { m.stride };
                for datagram in buf[..m.len].chunks(stride.max(1)) {
                    taken += 1;
                    if let Some(job) = HandshakeJob::of(datagram, from, now) {
                        // Handshakes are worked through on their own thread, so that a
                        // flood of them (each may cost Diffie-Hellman work or a cookie reply)
                        // does not hold up the peers' data.
                        if handshakes.len() == handshakes.capacity() {
                            hand_over(&shared, &mut handshakes);
                        }
                        handshakes.push(job);
                        handed_over += 1;
                        continue;
                    }
                    let RxBuffers { scratch, queue } = &mut bufs;
                    shared.core.datagram(
                        &snapshot.value,
                        datagram,
                        from,
                        now,
                        scratch,
                        &mut |action| match action {
                            Action::Deliver(packet) => queue.push(packet),
                            action => shared.carry_out(action),
                        },
                    );
                    bufs.take(&shared.tun);
                    if bufs.queue.is_full() {
                        bufs.queue.flush(&shared.tun);
                    }
                }
            }
            hand_over(&shared, &mut handshakes);
            if n < RX_BATCH.min(udp::BATCH_SIZE) {
                // The socket's queue was empty before the batch was full: the next receive
                // waits, rather than ask again now for nothing.
                break;
            }
        }
        bufs.queue.flush(&shared.tun);
        if taken > 0 && handed_over == taken {
            // Handshake messages alone (a storm of devices reconnecting, or a flood): the next
            // ones gather in the socket while `vpn-handshake` works through these.
            shared.handshakes.wait_idle(HANDSHAKE_HOLD);
        } else if taken >= RX_BUSY {
            std::thread::sleep(RX_HOLD);
        }
    }
}

/// Hands the handshake messages of a receive to `vpn-handshake`, one wake for all of them.
/// Beyond the queue they are dropped and counted, as WireGuard does under load.
fn hand_over(shared: &Shared, handshakes: &mut Vec<HandshakeJob>) {
    for _ in 0..shared.handshakes.give(handshakes) {
        shared.core.handshake_dropped_for_load();
    }
}

// ---- vpn-handshake: handshake messages, off the data path -----------------------------------

/// Handshake messages waiting for `vpn-handshake`: a few hundred milliseconds of work at the
/// rate the endpoint answers them before it goes to cookies.
const HANDSHAKE_QUEUE: usize = 1024;

/// The longest handshake message: an initiation.
const HANDSHAKE_MAX: usize = 148;

/// One handshake message (initiation, response or cookie reply) and where it came from.
struct HandshakeJob {
    bytes: [u8; HANDSHAKE_MAX],
    len: usize,
    from: Target,
    now: Now,
}

impl HandshakeJob {
    /// The job for `datagram` when it is a handshake message; data and garbage stay on the
    /// data path, which drops what does not authenticate.
    fn of(datagram: &[u8], from: Target, now: Now) -> Option<HandshakeJob> {
        let kind = *datagram.first()?;
        if !(1..=3).contains(&kind) || datagram.len() > HANDSHAKE_MAX {
            return None;
        }
        let mut bytes = [0u8; HANDSHAKE_MAX];
        bytes[..datagram.len()].copy_from_slice(datagram);
        Some(HandshakeJob {
            bytes,
            len: datagram.len(),
            from,
            now,
        })
    }
}

fn handshake_thread(shared: Arc<Shared>) {
    let mut bufs = RxBuffers::new();
    let mut snapshot = Cached::new(&shared.snapshot);
    let mut jobs: Vec<HandshakeJob> = Vec::with_capacity(HANDSHAKE_QUEUE);
    while !shared.stop.load(Ordering::Relaxed) {
        jobs.clear();
        if !shared.handshakes.take(&mut jobs, POLL) {
            continue;
        }
        snapshot.refresh(&shared.snapshot);
        for job in &jobs {
            let RxBuffers { scratch, queue } = &mut bufs;
            shared.core.datagram(
                &snapshot.value,
                &job.bytes[..job.len],
                job.from,
                job.now,
                scratch,
                &mut |action| match action {
                    Action::Deliver(packet) => queue.push(packet),
                    action => shared.carry_out(action),
                },
            );
            bufs.take(&shared.tun);
            if bufs.queue.is_full() {
                bufs.queue.flush(&shared.tun);
            }
        }
        bufs.queue.flush(&shared.tun);
    }
}

// ---- vpn-tx: TUN -> UDP ----------------------------------------------------------------------

/// Datagrams gathered for one GSO send: equal-sized (the last may be shorter), one target.
/// The pending batch is `buf[start..end]`; the next datagram is encrypted at `end`.
struct TxBatch {
    buf: Vec<u8>,
    start: usize,
    end: usize,
    segment: usize,
    count: usize,
    target: Option<Target>,
}

impl TxBatch {
    /// Sends the pending datagrams; what lies after `end` is left alone.
    fn send_pending(&mut self, udp: &Udp) {
        if let (true, Some(target)) = (self.count > 0, self.target) {
            let segment = (self.count > 1).then_some(self.segment);
            if let Err(e) = udp.send(&target, &self.buf[self.start..self.end], segment) {
                tracing::debug!(error = %e, "sending to a VPN peer failed");
            }
        }
        self.start = self.end;
        self.count = 0;
        self.segment = 0;
        self.target = None;
    }

    /// Sends the pending datagrams and starts again at the front of the buffer.
    fn flush(&mut self, udp: &Udp) {
        self.send_pending(udp);
        self.start = 0;
        self.end = 0;
    }
}

fn tx_thread(shared: Arc<Shared>) {
    let mut scratch = vec![0u8; tun::VIRTIO_NET_HDR_LEN + 65_535];
    let mut packets: Vec<Vec<u8>> = (0..tun::IDEAL_BATCH_SIZE)
        .map(|_| vec![0u8; TUN_PACKET_BUFFER])
        .collect();
    let mut sizes = vec![0usize; tun::IDEAL_BATCH_SIZE];
    let mut batch = TxBatch {
        buf: vec![0u8; udp::MAX_GSO_BYTES + SCRATCH],
        start: 0,
        end: 0,
        segment: 0,
        count: 0,
        target: None,
    };
    let mut snapshot = Cached::new(&shared.snapshot);
    // Resets for the services whose flows inspection ends on their way to a peer.
    let mut resets = TunQueue::new();
    while !shared.stop.load(Ordering::Relaxed) {
        match shared.tun.wait_readable(POLL) {
            Ok(true) => {}
            Ok(false) => continue,
            Err(e) => {
                tracing::error!(error = %e, "waiting on the TUN device failed");
                std::thread::sleep(POLL);
                continue;
            }
        }
        snapshot.refresh(&shared.snapshot);
        let current = &*snapshot.value;
        for _ in 0..64 {
            let n = match shared.tun.recv(&mut scratch, &mut packets, &mut sizes) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    tracing::debug!(error = %e, "reading the TUN device failed");
                    break;
                }
            };
            let max_segments = shared.udp.max_gso_segments().max(1);
            let tick = shared.tick();
            // The lock of the peer of the previous packet, kept while packets go to it.
            let mut held = Held::default();
            for (packet, &size) in packets.iter().zip(sizes.iter()).take(n) {
                let packet = &packet[..size];
                if batch.buf.len() - batch.end < packet.len() + 256 {
                    batch.flush(&shared.udp);
                }
                let Tx::Datagram {
                    to: target,
                    len: written,
                    data: is_data,
                } = shared.core.encrypt(
                    current,
                    &mut held,
                    packet,
                    tick,
                    &mut batch.buf[batch.end..],
                    &mut |reset| {
                        if !resets.is_full() {
                            resets.push(reset);
                        }
                    },
                )
                else {
                    continue;
                };
                // Data goes out in GSO batches; a handshake initiation (no session yet, the
                // packet is queued inside the Tunn) goes alone.
                let joins = is_data
                    && batch.target == Some(target)
                    && batch.count < max_segments
                    && written <= batch.segment
                    && batch.end - batch.start + written <= udp::MAX_GSO_BYTES;
                if !joins {
                    batch.send_pending(&shared.udp);
                    batch.segment = written;
                    batch.target = Some(target);
                }
                batch.end += written;
                batch.count += 1;
                if !is_data || written < batch.segment {
                    // A handshake message, or a short datagram, which must end a GSO batch.
                    batch.send_pending(&shared.udp);
                }
            }
            held.release();
        }
        // The datagrams of several reads go out together: super-packets of full-sized
        // segments join one GSO send across reads.
        batch.flush(&shared.udp);
        resets.flush(&shared.tun);
    }
}

// ---- vpn-timers ------------------------------------------------------------------------------

fn timer_thread(shared: Arc<Shared>) {
    let mut buf = vec![0u8; SCRATCH];
    let mut snapshot = Cached::new(&shared.snapshot);
    let mut last_second = Instant::now();
    let mut last_save = Instant::now();
    while !shared.stop.load(Ordering::Relaxed) {
        std::thread::sleep(TIMER_TICK);
        snapshot.refresh(&shared.snapshot);
        shared.core.tick(&snapshot.value, &mut buf, &mut |action| {
            shared.carry_out(action)
        });
        if last_second.elapsed() >= Duration::from_secs(1) {
            last_second = Instant::now();
            shared.core.reset_load();
            shared.refresh_local_time();
            shared.core.inspector().expire(shared.tick());
        }
        if last_save.elapsed() >= Duration::from_secs(1) {
            last_save = Instant::now();
            save_endpoints(&shared, false);
        }
    }
}
