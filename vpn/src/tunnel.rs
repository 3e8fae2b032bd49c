//! The tunnel core: what the endpoint does with each datagram, each packet from the TUN device
//! and each timer tick, without doing any IO itself.
//!
//! The endpoint's threads read bytes and the time, hand them to [`Core`] and carry out the
//! [`Action`]s it reports: send a datagram to an address, write a packet to the TUN device,
//! count and audit an ACL denial. The core owns the per-packet decisions: which peer a datagram
//! belongs to (by public key for a handshake initiation, by session index for the rest), the
//! endpoint-wide MAC and load check with its cookie replies, decryption and encryption under
//! the peer's own lock, roaming (a peer's endpoint is the source of its last authenticated
//! datagram), the source check and the identity ACL with its reject answers.
//!
//! It must not open sockets, touch the TUN device, read a clock (callers pass [`Now`]) or
//! allocate per packet: actions borrow the caller's buffers, and a data packet is decrypted
//! into the caller's buffer and handed back as a slice of it. The only allocation on the data
//! path is the reject answer to a denied packet, which is rare and bounded by the ACL.
//!
//! Shared state: the peer table with the ACL is an immutable [`Snapshot`] that a reload
//! replaces whole; each peer has its own mutex around its boringtun `Tunn`. No lock is shared
//! by all peers: a datagram locks only the peer it belongs to. The endpoint-wide counters are
//! atomics.

#![forbid(unsafe_code)]

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use boringtun::noise::errors::WireGuardError;
use boringtun::noise::handshake::parse_handshake_anon;
use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::noise::{HandshakeInit, Packet, Tunn, TunnResult};
use boringtun::x25519::PublicKey;

/// Where a datagram came from and where answers go; public so that callers outside the
/// endpoint (the fuzz targets) can hand the core a datagram as the UDP thread does.
pub use super::udp::Target;
use crmguard_core::acl::{reject, Acl, DenyReason, LocalTime, Reject, Verdict};
use crmguard_core::keys::KeyPair;
use crmguard_core::peers::{Entry, Table};
use crmguard_inspect::{Dir, Inspector, Policy, Tick};

use crate::hints::Hints;

/// Handshake messages per second the endpoint handles before it answers new ones with cookie
/// replies only.
pub const HANDSHAKES_BEFORE_COOKIES: u64 = 500;

/// One peer's WireGuard state: its session behind its own mutex.
pub struct PeerCell {
    pub(crate) index: u32,
    pub(crate) public_key: [u8; 32],
    session: Mutex<Session>,
    /// Whether the peer has an open MFA session (the ACL reads it on every packet).
    pub(crate) mfa_open: AtomicBool,
}

/// A peer's boringtun state, made when the peer first sends or is sent something.
///
/// A `Tunn` holds room for eight sessions inline (about 12 KiB) and costs a static
/// Diffie-Hellman to make; a gateway with tens of thousands of registered devices, most of
/// them not connected at any one time, would spend a gigabyte and seconds of its start on
/// devices that never show up. Until then the peer costs its keys and index only, and the
/// timers skip it: a `Tunn` that has never handshaken has nothing to retransmit or expire.
pub(crate) struct LazyTunn {
    tunn: Option<Box<Tunn>>,
    secret: boringtun::x25519::StaticSecret,
    peer: [u8; 32],
    index: u32,
}

impl LazyTunn {
    /// The peer's `Tunn`, made now if it was not yet.
    pub(crate) fn get(&mut self) -> &mut Tunn {
        self.tunn.get_or_insert_with(|| {
            Box::new(Tunn::new(
                self.secret.clone(),
                PublicKey::from(self.peer),
                None,
                None,
                self.index,
                None,
            ))
        })
    }

    /// The peer's `Tunn` if it has one.
    pub(crate) fn existing(&mut self) -> Option<&mut Tunn> {
        self.tunn.as_deref_mut()
    }
}

/// What the endpoint keeps of one peer's session.
pub struct Session {
    pub(crate) tunn: LazyTunn,
    /// Where the peer's last authenticated datagram came from, and where it was received.
    pub(crate) endpoint: Option<Target>,
    pub(crate) rx_bytes: u64,
    pub(crate) tx_bytes: u64,
    /// Decrypted packets the ACL let through: use of the tunnel, unlike keepalives and
    /// handshakes (what keeps an MFA session from going idle).
    pub(crate) inner_packets: u64,
    pub(crate) last_handshake: Option<SystemTime>,
    /// The endpoint or the handshake time changed since the state file was last written.
    pub(crate) dirty: bool,
}

impl PeerCell {
    /// A peer with no session yet, whose sessions use the 24-bit session index `index`.
    pub fn new(keys: &KeyPair, public_key: [u8; 32], index: u32) -> PeerCell {
        PeerCell {
            index,
            public_key,
            session: Mutex::new(Session {
                tunn: LazyTunn {
                    tunn: None,
                    secret: keys.secret.clone(),
                    peer: public_key,
                    index,
                },
                endpoint: None,
                rx_bytes: 0,
                tx_bytes: 0,
                inner_packets: 0,
                last_handshake: None,
                dirty: false,
            }),
            mfa_open: AtomicBool::new(false),
        }
    }

    pub fn lock(&self) -> MutexGuard<'_, Session> {
        // A thread that panicked while holding the lock left a Tunn that is still memory-safe;
        // the worst it can be is out of step, which the protocol recovers from.
        self.session.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Session {
    /// Counts `datagram` as sent and reports it.
    fn send(&mut self, to: Target, datagram: &[u8], act: &mut impl FnMut(Action<'_>)) {
        self.tx_bytes += u64::try_from(datagram.len()).unwrap_or(u64::MAX);
        act(Action::Send { to, datagram });
    }
}

/// The peer table, the ACL and the inspection policy that go with one configuration.
pub struct Snapshot {
    pub table: Table<Arc<PeerCell>>,
    pub acl: Acl,
    pub inspect: Policy,
}

/// The time as the core needs it, read by the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Now {
    /// The wall clock: when a handshake completed.
    pub wall: SystemTime,
    /// The local time of the week: the ACL's hours.
    pub local: LocalTime,
    /// Inspection's clock: flow timeouts and when a violation was seen.
    pub tick: Tick,
}

/// What the caller must do. Every slice borrows a buffer the caller passed in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action<'a> {
    /// Send `datagram` to `to` (already counted in the peer's bytes sent, when it is a peer's).
    Send { to: Target, datagram: &'a [u8] },
    /// Write `packet`, admitted by the source check and the ACL, to the TUN device. (With
    /// [`Scratch::keeping_delivered`], an admitted packet stays in the scratch buffer instead.)
    Deliver(&'a [u8]),
    /// The ACL denied a packet that `peer` sent from the tunnel address `src`: count it and
    /// keep it for the audit log.
    Denied {
        peer: &'a str,
        src: IpAddr,
        verdict: Verdict<'a>,
    },
}

/// What became of a datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rx {
    /// A handshake message was accepted and answered.
    Handshake,
    /// A cookie reply went back instead of the handshake work: the endpoint or the peer's
    /// session is under load.
    Cookie,
    /// A decrypted packet passed the source check, the ACL and inspection: it went to
    /// [`Action::Deliver`], or waits in the scratch buffers for [`Scratch::take_delivered`].
    Delivered,
    /// Inspection ended the packet's flow: the packet was dropped and both sides were sent a
    /// TCP reset.
    Reset,
    /// The identity ACL denied the decrypted packet.
    Denied(DenyReason),
    /// Authenticated, nothing to deliver: a keepalive, or a cookie reply to the gateway's own
    /// initiation.
    Nothing,
    /// Dropped, for this reason.
    Dropped(Discard),
}

/// Why a datagram or a packet was dropped before the ACL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Discard {
    /// Not a WireGuard message of a known type and size.
    Malformed,
    /// A handshake message with a bad MAC, from an unknown key, or that its session refused.
    HandshakeRejected,
    /// A handshake message under load without an address to send a cookie to.
    RateLimited,
    /// A data or cookie message for a session index no admitted peer owns (removed peers'
    /// among them).
    UnknownSession,
    /// A data or cookie message that the peer's session could not authenticate: forged,
    /// replayed, or for a session that has ended.
    Unauthenticated,
    /// A decrypted packet whose inner source is not the sending peer's tunnel address.
    SourceCheck,
    /// A packet of a flow that inspection ended.
    Inspection,
}

impl Discard {
    /// The name used in logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Discard::Malformed => "malformed",
            Discard::HandshakeRejected => "handshake_rejected",
            Discard::RateLimited => "rate_limited",
            Discard::UnknownSession => "unknown_session",
            Discard::Unauthenticated => "unauthenticated",
            Discard::SourceCheck => "source_check",
            Discard::Inspection => "inspection",
        }
    }
}

/// What became of a packet from the TUN device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tx {
    /// A datagram of `len` bytes now sits at the front of the output buffer, for `to`.
    /// `data` is false for a handshake initiation (the packet waits inside the session).
    Datagram { to: Target, len: usize, data: bool },
    /// Nothing to send, for this reason.
    Skipped(TxSkip),
}

/// Why a packet from the TUN device produced no datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxSkip {
    /// Not an IP packet.
    NotIp,
    /// No admitted peer owns the destination (counted when the destination is unicast).
    NoRoute,
    /// The peer has not reached the gateway yet: there is nowhere to send to.
    NoEndpoint,
    /// The session could not encrypt the packet, or queued it without sending anything.
    NotSent,
    /// A packet of a flow that inspection ended.
    Inspection,
}

/// Endpoint-wide counters, as `status` shows them.
#[derive(Debug, Default)]
pub struct Counters {
    pub handshakes_ok: AtomicU64,
    pub handshakes_rejected: AtomicU64,
    pub cookies: AtomicU64,
    pub rate_limited: AtomicU64,
    pub source_check: AtomicU64,
    pub no_route: AtomicU64,
    pub invalid: AtomicU64,
    /// Packets dropped because inspection ended their flow, both directions.
    pub inspection: AtomicU64,
    /// Flows inspection ended with resets.
    pub inspection_resets: AtomicU64,
    /// Handshake initiations that went straight to the peer that last authenticated from
    /// their address, without reading their static key first (see `hints`).
    pub initiations_hinted: AtomicU64,
}

fn inc(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

fn add_len(bytes: &mut u64, len: usize) {
    *bytes += u64::try_from(len).unwrap_or(u64::MAX);
}

/// The lock of the peer the previous packet from the TUN device went to, kept while the
/// following packets go to the same peer. Release it before blocking IO.
#[derive(Default)]
pub struct Held<'t> {
    guard: Option<(u32, MutexGuard<'t, Session>)>,
}

impl Held<'_> {
    pub fn release(&mut self) {
        self.guard = None;
    }
}

/// Bytes of each receive scratch buffer: the largest datagram a GRO batch may hold, plus room
/// for the encryption overhead.
const SCRATCH: usize = 65_536 + 256;

/// The longest answer a data message can produce (a cookie reply is 64 bytes).
const DATA_OUT_MIN: usize = 256;

/// The receive side's buffers, one set per thread: `out` receives decrypted packets and
/// handshake answers (what [`Action::Deliver`] and most [`Action::Send`]s borrow) at
/// `headroom` bytes into it, `reply` the encrypted answers to denied packets.
///
/// A thread that writes admitted packets to the TUN device keeps them where they were
/// decrypted ([`Scratch::keeping_delivered`]): it swaps the whole buffer into its write queue
/// with [`Scratch::take_delivered`] instead of copying the packet, and the buffer it gives back
/// is made long enough again before the next datagram.
pub struct Scratch {
    out: Vec<u8>,
    headroom: usize,
    /// Whether an admitted packet stays in `out` (see [`Scratch::take_delivered`]) rather
    /// than going to [`Action::Deliver`].
    keep: bool,
    /// The length of the admitted packet kept in `out`.
    delivered: Option<usize>,
    reply: Vec<u8>,
}

impl Scratch {
    pub fn new() -> Scratch {
        Scratch {
            out: vec![0; SCRATCH],
            headroom: 0,
            keep: false,
            delivered: None,
            reply: vec![0; SCRATCH],
        }
    }

    /// Buffers that keep each admitted packet in place, `headroom` bytes into its buffer,
    /// for [`Scratch::take_delivered`].
    pub fn keeping_delivered(headroom: usize) -> Scratch {
        Scratch {
            out: vec![0; headroom + SCRATCH],
            headroom,
            keep: true,
            ..Scratch::new()
        }
    }

    /// Hands over the packet the last datagram admitted, if any: `buf` and the buffer holding
    /// it swap places, and `buf` ends with the packet (after the headroom). The buffer that
    /// was in `buf` is decrypted into next.
    pub fn take_delivered(&mut self, buf: &mut Vec<u8>) -> bool {
        let Some(len) = self.delivered.take() else {
            return false;
        };
        std::mem::swap(&mut self.out, buf);
        buf.truncate(self.headroom + len);
        true
    }

    /// Whether the last datagram left an admitted packet for [`Scratch::take_delivered`].
    pub fn has_delivered(&self) -> bool {
        self.delivered.is_some()
    }

    /// Makes `out` long enough for whatever `datagram` may produce: a data message decrypts
    /// to less than its own length, a handshake message may release queued packets, and
    /// anything else writes nothing there (a cookie reply, or a drop).
    fn prepare(&mut self, datagram: &[u8]) {
        self.delivered = None;
        let room = match (datagram.first(), datagram.len()) {
            (Some(4), len) => len.max(DATA_OUT_MIN),
            (Some(1), 148) | (Some(2), 92) => SCRATCH,
            _ => DATA_OUT_MIN,
        };
        let need = self.headroom + room;
        if self.out.len() < need {
            self.out.resize(need, 0);
        }
    }
}

impl Default for Scratch {
    fn default() -> Self {
        Scratch::new()
    }
}

/// The endpoint-wide part of the tunnel: the gateway's keys, the handshake check and the
/// counters. Everything per peer lives in the [`Snapshot`] passed to each call.
pub struct Core {
    keys: KeyPair,
    /// The endpoint-wide handshake check (MAC and load).
    limiter: RateLimiter,
    counters: Counters,
    /// Application-protocol inspection of the peers' TCP flows, both directions.
    inspector: Arc<Inspector>,
    /// The peer that last authenticated from each address.
    hints: Hints,
}

/// The peer a datagram belongs to, and whether only a hint says so (see [`Core::find_peer`]).
struct Found<'t> {
    entry: &'t Entry<Arc<PeerCell>>,
    hinted: bool,
}

impl<'t> From<&'t Entry<Arc<PeerCell>>> for Found<'t> {
    fn from(entry: &'t Entry<Arc<PeerCell>>) -> Self {
        Found {
            entry,
            hinted: false,
        }
    }
}

impl Core {
    /// A core that answers handshakes with cookie replies beyond `handshakes_before_cookies`
    /// a second (see [`Core::reset_load`]).
    pub fn new(keys: KeyPair, handshakes_before_cookies: u64, inspector: Arc<Inspector>) -> Core {
        let limiter = RateLimiter::new(&keys.public, handshakes_before_cookies);
        Core {
            keys,
            limiter,
            counters: Counters::default(),
            inspector,
            hints: Hints::default(),
        }
    }

    pub fn inspector(&self) -> &Inspector {
        &self.inspector
    }

    pub fn keys(&self) -> &KeyPair {
        &self.keys
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Counts a handshake message dropped because the endpoint is busy with others.
    pub fn handshake_dropped_for_load(&self) {
        inc(&self.counters.rate_limited);
    }

    /// Starts a new second of the handshake load count.
    pub fn reset_load(&self) {
        self.limiter.reset_count();
    }

    /// Handles one datagram that arrived from `from`. An admitted packet is delivered last,
    /// after every other action of the datagram.
    pub fn datagram(
        &self,
        snapshot: &Snapshot,
        datagram: &[u8],
        from: Target,
        now: Now,
        scratch: &mut Scratch,
        act: &mut impl FnMut(Action<'_>),
    ) -> Rx {
        scratch.prepare(datagram);
        let Some(kind) = message_type(datagram) else {
            inc(&self.counters.invalid);
            return Rx::Dropped(Discard::Malformed);
        };
        let out = &mut scratch.out[scratch.headroom..];
        let found = match self.find_peer(&snapshot.table, kind, datagram, from, out, act) {
            Ok(found) => found,
            Err(rx) => return rx,
        };
        let hinted = found.hinted.then_some(found.entry.slot.public_key);
        if let Some(rx) = self.receive(snapshot, found, kind, datagram, from, now, scratch, act) {
            return rx;
        }
        // The hinted peer's key is not the initiation's. The hint goes (until that peer
        // handshakes from here again), so that initiations forged from a peer's address cost
        // one wasted exchange, not one each; the key is read as without a hint.
        if let Some(key) = hinted {
            self.hints.forget(from.remote, key);
        }
        let Some(entry) = self.initiator(&snapshot.table, datagram) else {
            inc(&self.counters.handshakes_rejected);
            return Rx::Dropped(Discard::HandshakeRejected);
        };
        let found = Found {
            entry,
            hinted: false,
        };
        self.receive(snapshot, found, kind, datagram, from, now, scratch, act)
            .unwrap_or(Rx::Dropped(Discard::HandshakeRejected))
    }

    /// Hands `datagram` to the session of `found`'s peer and carries out the result. `None`
    /// when `found` was only a hint and the peer's session found the initiation is another
    /// peer's: nothing was done or counted.
    #[allow(clippy::too_many_arguments)]
    fn receive(
        &self,
        snapshot: &Snapshot,
        found: Found<'_>,
        kind: u8,
        datagram: &[u8],
        from: Target,
        now: Now,
        scratch: &mut Scratch,
        act: &mut impl FnMut(Action<'_>),
    ) -> Option<Rx> {
        let Scratch {
            out,
            headroom,
            keep,
            delivered,
            reply,
        } = scratch;
        let out = &mut out[*headroom..];
        let entry = found.entry;
        let mut session = entry.slot.lock();
        let datagram_len = datagram.len();
        // The length of a decrypted packet that passed the checks, at the front of `out`.
        let mut admitted = None;
        let (rx, authenticated) =
            match session
                .tunn
                .get()
                .decapsulate(Some(from.remote.ip()), datagram, out)
            {
                TunnResult::WriteToNetwork(answer) => {
                    let cookie = answer.len() == 64 && answer[0] == 3;
                    let len = answer.len();
                    add_len(&mut session.rx_bytes, datagram_len);
                    if cookie {
                        inc(&self.counters.cookies);
                        session.send(from, &out[..len], act);
                        (Rx::Cookie, false)
                    } else {
                        if kind == 1 || kind == 2 {
                            inc(&self.counters.handshakes_ok);
                            if found.hinted {
                                inc(&self.counters.initiations_hinted);
                            }
                            session.last_handshake = Some(now.wall);
                            session.dirty = true;
                        }
                        session.send(from, &out[..len], act);
                        // Packets queued while there was no session go out now.
                        while let TunnResult::WriteToNetwork(packet) =
                            session.tunn.get().decapsulate(None, &[], out)
                        {
                            let len = packet.len();
                            session.send(from, &out[..len], act);
                        }
                        (Rx::Handshake, true)
                    }
                }
                TunnResult::WriteToTunnelV4(packet, src) => {
                    let len = packet.len();
                    add_len(&mut session.rx_bytes, datagram_len);
                    let rx = self.admit(
                        snapshot,
                        entry,
                        &mut session,
                        IpAddr::V4(src),
                        &out[..len],
                        from,
                        now,
                        reply,
                        act,
                    );
                    admitted = (rx == Rx::Delivered).then_some(len);
                    (rx, true)
                }
                TunnResult::WriteToTunnelV6(packet, src) => {
                    let len = packet.len();
                    add_len(&mut session.rx_bytes, datagram_len);
                    let rx = self.admit(
                        snapshot,
                        entry,
                        &mut session,
                        IpAddr::V6(src),
                        &out[..len],
                        from,
                        now,
                        reply,
                        act,
                    );
                    admitted = (rx == Rx::Delivered).then_some(len);
                    (rx, true)
                }
                TunnResult::Done => {
                    // A keepalive, or a cookie reply to one of our initiations: nothing to
                    // deliver. A cookie reply says nothing about where the peer is now, so it
                    // moves nothing.
                    add_len(&mut session.rx_bytes, datagram_len);
                    (Rx::Nothing, kind != 3)
                }
                TunnResult::Err(WireGuardError::WrongKey) if found.hinted => return None,
                TunnResult::Err(e) => {
                    tracing::trace!(peer = %entry.info.name, error = ?e, "datagram refused");
                    let discard = if kind == 1 || kind == 2 {
                        inc(&self.counters.handshakes_rejected);
                        Discard::HandshakeRejected
                    } else {
                        inc(&self.counters.invalid);
                        Discard::Unauthenticated
                    };
                    (Rx::Dropped(discard), false)
                }
            };
        let previous = session.endpoint.map(|t| t.remote);
        let moved = previous != Some(from.remote);
        if authenticated && (moved || rx == Rx::Handshake) {
            self.hints
                .moved(entry.slot.public_key, previous, from.remote);
        }
        if authenticated && session.endpoint != Some(from) {
            if moved {
                tracing::debug!(peer = %entry.info.name, "VPN peer endpoint changed");
                session.dirty = true;
            }
            session.endpoint = Some(from);
        }
        if let Some(len) = admitted {
            if *keep {
                *delivered = Some(len);
            } else {
                act(Action::Deliver(&out[..len]));
            }
        }
        Some(rx)
    }

    /// Finds the peer of a datagram. Handshake messages pass the endpoint-wide MAC and load
    /// check first. An initiation names its sender only inside its encrypted static key, which
    /// costs a Diffie-Hellman to read: one from the address a peer last authenticated from is
    /// taken to be that peer's, a hint its session checks (see `hints`).
    fn find_peer<'t>(
        &self,
        table: &'t Table<Arc<PeerCell>>,
        kind: u8,
        datagram: &[u8],
        from: Target,
        out: &mut [u8],
        act: &mut impl FnMut(Action<'_>),
    ) -> Result<Found<'t>, Rx> {
        match (kind, datagram.len()) {
            (1, 148) | (2, 92) => {
                let packet = match self
                    .limiter
                    .verify_packet(Some(from.remote.ip()), datagram, out)
                {
                    Ok(packet) => packet,
                    Err(TunnResult::WriteToNetwork(cookie)) => {
                        inc(&self.counters.cookies);
                        act(Action::Send {
                            to: from,
                            datagram: cookie,
                        });
                        return Err(Rx::Cookie);
                    }
                    Err(TunnResult::Err(WireGuardError::UnderLoad)) => {
                        inc(&self.counters.rate_limited);
                        return Err(Rx::Dropped(Discard::RateLimited));
                    }
                    Err(_) => {
                        inc(&self.counters.handshakes_rejected);
                        return Err(Rx::Dropped(Discard::HandshakeRejected));
                    }
                };
                let found = match packet {
                    Packet::HandshakeInit(init) => {
                        if let Some(entry) = self.hinted(table, from.remote) {
                            return Ok(Found {
                                entry,
                                hinted: true,
                            });
                        }
                        self.sender(table, &init)
                    }
                    Packet::HandshakeResponse(response) => {
                        table.by_receiver_index(response.receiver_idx)
                    }
                    _ => None,
                };
                found.map(Found::from).ok_or_else(|| {
                    inc(&self.counters.handshakes_rejected);
                    Rx::Dropped(Discard::HandshakeRejected)
                })
            }
            (3, 64) | (4, 32..) => table
                .by_receiver_index(le_u32(datagram, 4))
                .map(Found::from)
                .ok_or_else(|| {
                    inc(&self.counters.invalid);
                    Rx::Dropped(Discard::UnknownSession)
                }),
            _ => {
                inc(&self.counters.invalid);
                Err(Rx::Dropped(Discard::Malformed))
            }
        }
    }

    /// The peer that last authenticated from `address`, if it is still in `table`.
    fn hinted<'t>(
        &self,
        table: &'t Table<Arc<PeerCell>>,
        address: SocketAddr,
    ) -> Option<&'t Entry<Arc<PeerCell>>> {
        let key = self.hints.get(address)?;
        let entry = table.by_key(&key);
        if entry.is_none() {
            self.hints.forget(address, key);
        }
        entry
    }

    /// The peer whose static key the initiation `init` carries.
    fn sender<'t>(
        &self,
        table: &'t Table<Arc<PeerCell>>,
        init: &HandshakeInit<'_>,
    ) -> Option<&'t Entry<Arc<PeerCell>>> {
        parse_handshake_anon(&self.keys.secret, &self.keys.public, init)
            .ok()
            .and_then(|half| table.by_key(&half.peer_static_public))
    }

    /// The peer whose static key the handshake initiation `datagram` carries (it passed the
    /// endpoint-wide check already).
    fn initiator<'t>(
        &self,
        table: &'t Table<Arc<PeerCell>>,
        datagram: &[u8],
    ) -> Option<&'t Entry<Arc<PeerCell>>> {
        match Tunn::parse_incoming_packet(datagram) {
            Ok(Packet::HandshakeInit(init)) => self.sender(table, &init),
            _ => None,
        }
    }

    /// The source check and the ACL for a decrypted `packet` from `entry`'s peer.
    #[allow(clippy::too_many_arguments)]
    fn admit(
        &self,
        snapshot: &Snapshot,
        entry: &Entry<Arc<PeerCell>>,
        session: &mut Session,
        src: IpAddr,
        packet: &[u8],
        from: Target,
        now: Now,
        reply: &mut [u8],
        act: &mut impl FnMut(Action<'_>),
    ) -> Rx {
        if !snapshot.table.source_belongs_to(src, entry.index) {
            inc(&self.counters.source_check);
            tracing::trace!(peer = %entry.info.name, %src, "inner source is not the peer's; dropped");
            return Rx::Dropped(Discard::SourceCheck);
        }
        let verdict = snapshot.acl.decide(
            &entry.info.name,
            packet,
            now.local,
            entry.slot.mfa_open.load(Ordering::Relaxed),
        );
        let Verdict::Deny { reason, reject, .. } = verdict else {
            session.inner_packets += 1;
            return match self.inspector.packet(
                &snapshot.inspect,
                Dir::FromPeer,
                &entry.info.name,
                packet,
                now.tick,
            ) {
                // The caller delivers the packet (see `Core::datagram`).
                crmguard_inspect::Verdict::Pass => Rx::Delivered,
                crmguard_inspect::Verdict::Drop => {
                    inc(&self.counters.inspection);
                    Rx::Dropped(Discard::Inspection)
                }
                crmguard_inspect::Verdict::Reset => {
                    inc(&self.counters.inspection);
                    inc(&self.counters.inspection_resets);
                    // The service's side: a reset in the peer's name, at the sequence number
                    // the service expects next.
                    if let Some(to_service) = reject::tcp_reset_onward(packet) {
                        act(Action::Deliver(&to_service));
                    }
                    // The peer's side: a reset answering its packet, through the tunnel.
                    if let Some(answer) = reject::tcp_reset(packet) {
                        if let TunnResult::WriteToNetwork(datagram) =
                            session.tunn.get().encapsulate(&answer, reply)
                        {
                            let n = datagram.len();
                            session.send(from, &reply[..n], act);
                        }
                    }
                    Rx::Reset
                }
            };
        };
        act(Action::Denied {
            peer: &entry.info.name,
            src,
            verdict,
        });
        let answer = match reject {
            Some(Reject::TcpReset) => reject::tcp_reset(packet),
            Some(Reject::IcmpAdminProhibited { source }) => {
                reject::icmp_admin_prohibited(packet, source)
            }
            None => None,
        };
        if let Some(answer) = answer {
            if let TunnResult::WriteToNetwork(datagram) =
                session.tunn.get().encapsulate(&answer, reply)
            {
                let n = datagram.len();
                session.send(from, &reply[..n], act);
            }
        }
        Rx::Denied(reason)
    }

    /// Encrypts `packet`, read from the TUN device, for the peer that owns its destination,
    /// into the front of `out` (which must hold the packet plus 32 bytes, or a handshake
    /// initiation). `held` keeps the peer's lock for the next packet. When inspection ends the
    /// packet's flow, the peer gets a reset instead of the packet and `to_service` is handed
    /// the reset for the service, to be written to the TUN device.
    pub fn encrypt<'t>(
        &self,
        snapshot: &'t Snapshot,
        held: &mut Held<'t>,
        packet: &[u8],
        tick: Tick,
        out: &mut [u8],
        to_service: &mut impl FnMut(&[u8]),
    ) -> Tx {
        let table = &snapshot.table;
        let Some(dst) = Tunn::dst_address(packet) else {
            return Tx::Skipped(TxSkip::NotIp);
        };
        let Some(entry) = table.by_address(dst) else {
            // The kernel's own multicast (neighbour and router solicitations, MLD) has
            // nowhere to go and is not worth counting.
            if is_unicast(dst) {
                inc(&self.counters.no_route);
            }
            return Tx::Skipped(TxSkip::NoRoute);
        };
        if held.guard.as_ref().map(|(i, _)| *i) != Some(entry.index) {
            held.guard = None;
            held.guard = Some((entry.index, entry.slot.lock()));
        }
        let Some((_, session)) = held.guard.as_mut() else {
            return Tx::Skipped(TxSkip::NotSent);
        };
        let Some(to) = session.endpoint else {
            return Tx::Skipped(TxSkip::NoEndpoint);
        };
        let reset;
        let packet = match self.inspector.packet(
            &snapshot.inspect,
            Dir::ToPeer,
            &entry.info.name,
            packet,
            tick,
        ) {
            crmguard_inspect::Verdict::Pass => packet,
            crmguard_inspect::Verdict::Drop => {
                inc(&self.counters.inspection);
                return Tx::Skipped(TxSkip::Inspection);
            }
            crmguard_inspect::Verdict::Reset => {
                inc(&self.counters.inspection);
                inc(&self.counters.inspection_resets);
                if let Some(answer) = reject::tcp_reset(packet) {
                    to_service(&answer);
                }
                let Some(onward) = reject::tcp_reset_onward(packet) else {
                    return Tx::Skipped(TxSkip::Inspection);
                };
                reset = onward;
                &reset
            }
        };
        let len = match session.tunn.get().encapsulate(packet, out) {
            TunnResult::WriteToNetwork(datagram) => datagram.len(),
            TunnResult::Err(e) => {
                tracing::trace!(peer = %entry.info.name, error = ?e, "cannot encrypt");
                return Tx::Skipped(TxSkip::NotSent);
            }
            _ => return Tx::Skipped(TxSkip::NotSent),
        };
        add_len(&mut session.tx_bytes, len);
        Tx::Datagram {
            to,
            len,
            data: out[0] == 4,
        }
    }

    /// Runs every peer's WireGuard timers (retransmitted and renewed handshakes, keepalives,
    /// expiry). `buf` must hold a handshake initiation.
    pub fn tick(&self, snapshot: &Snapshot, buf: &mut [u8], act: &mut impl FnMut(Action<'_>)) {
        for entry in snapshot.table.entries() {
            let mut session = entry.slot.lock();
            let Some(tunn) = session.tunn.existing() else {
                continue;
            };
            match tunn.update_timers(buf) {
                TunnResult::WriteToNetwork(datagram) => {
                    let len = datagram.len();
                    if let Some(to) = session.endpoint {
                        session.send(to, &buf[..len], act);
                    }
                }
                TunnResult::Err(WireGuardError::ConnectionExpired) => {}
                TunnResult::Err(e) => {
                    tracing::trace!(peer = %entry.info.name, error = ?e, "timer");
                }
                _ => {}
            }
        }
    }

    /// Starts a handshake to `to` for `cell`, which makes `to` its endpoint; false when the
    /// session had nothing to send. `buf` must hold a handshake initiation.
    pub fn initiate(
        &self,
        cell: &PeerCell,
        to: Target,
        buf: &mut [u8],
        act: &mut impl FnMut(Action<'_>),
    ) -> bool {
        let mut session = cell.lock();
        session.endpoint = Some(to);
        let TunnResult::WriteToNetwork(init) =
            session.tunn.get().format_handshake_initiation(buf, false)
        else {
            return false;
        };
        let len = init.len();
        session.send(to, &buf[..len], act);
        true
    }
}

/// What a datagram's first bytes say it is.
fn message_type(datagram: &[u8]) -> Option<u8> {
    if datagram.len() < 4 || datagram[1..4] != [0, 0, 0] {
        return None;
    }
    Some(datagram[0])
}

fn le_u32(bytes: &[u8], at: usize) -> u32 {
    let mut b = [0u8; 4];
    if let Some(s) = bytes.get(at..at + 4) {
        b.copy_from_slice(s);
    }
    u32::from_le_bytes(b)
}

/// Whether `addr` names one host (not multicast, broadcast or IPv6 link-local).
fn is_unicast(addr: IpAddr) -> bool {
    match addr {
        IpAddr::V4(a) => !(a.is_multicast() || a.is_broadcast()),
        IpAddr::V6(a) => !(a.is_multicast() || a.is_unicast_link_local()),
    }
}

#[cfg(test)]
mod tests;
