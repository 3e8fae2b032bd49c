//! The per-packet entry point: [`Inspector::packet`] finds a packet's flow, feeds its bytes to
//! the reassembly and the parsers while the flow is being decided, applies the policy to what
//! they find, and answers pass, drop or reset.
//!
//! A decided flow costs one table lookup per packet (plus a look at the start of each segment
//! for the protocols whose logins repeat on one connection). Nothing here blocks on anything
//! but a shard's lock, allocates per packet once a flow is decided, or fails: a packet it cannot
//! read passes untouched (the ACL has already judged it).

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use crmguard_core::acl::packet::{self, Transport, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN};
use crmguard_core::config::{NoSniAction, ParserErrorAction, ViolationAction};

use crate::event::{Event, EventSink, Response, ViolationKind, What};
use crate::metrics::{Exception, InspectMetrics};
use crate::policy::{compatible, version_name, Policy};
use crate::proto::{self, Identified};
use crate::protocol::{Context, Progress, Protocol, Streams};
use crate::reasm::{Added, Reassembly};
use crate::table::{Flow, FlowKey, Pending, Stage, Table};

/// Bytes of each client stream kept for identification and analysis.
pub const CLIENT_WINDOW: usize = 8 * 1024;
/// Bytes of each server stream kept.
pub const SERVER_WINDOW: usize = 4 * 1024;
/// The reassembly buffers of all flows being decided, together.
pub const REASSEMBLY_BUDGET: usize = 64 * 1024 * 1024;
/// Violations kept for `crmguard status`.
const RECENT: usize = 16;

/// Which way a packet goes through the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    /// Decrypted from a peer, on its way to the TUN device.
    FromPeer,
    /// Read from the TUN device, on its way to a peer.
    ToPeer,
}

/// What becomes of a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Deliver it.
    Pass,
    /// Drop it: its flow was ended earlier.
    Drop,
    /// Drop it and end its flow with a TCP reset to both sides.
    Reset,
}

/// The caller's clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tick {
    /// Monotonic seconds: idle timeouts.
    pub secs: u32,
    /// Seconds since the Unix epoch: when a violation was seen, for `crmguard status`.
    pub unix: u64,
}

/// A violation kept for `crmguard status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recent {
    pub unix: u64,
    pub event: Event,
}

/// The flow table and the counters, shared by the endpoint's threads.
pub struct Inspector {
    table: Table,
    metrics: InspectMetrics,
    sink: Box<dyn EventSink>,
    budget_used: AtomicUsize,
    /// Flows in the table, all shards together: what `max_flows` bounds.
    count: AtomicUsize,
    recent: Mutex<VecDeque<Recent>>,
}

/// What one packet is, for its flow.
struct Segment<'a> {
    key: FlowKey,
    from_peer: bool,
    seq: u32,
    flags: u8,
    payload: &'a [u8],
    /// The addresses as the packet carries them and its TCP header and payload: what the
    /// checksum covers.
    src: IpAddr,
    dst: IpAddr,
    tcp: &'a [u8],
}

impl Segment<'_> {
    /// Whether any of `flags` is set.
    fn has(&self, flags: u8) -> bool {
        self.flags & flags != 0
    }
}

impl Inspector {
    /// An inspector whose table is laid out for `max_flows` (the bound itself is read from the
    /// policy of each call, so a reload can change it).
    pub fn new(max_flows: u32, metrics: InspectMetrics, sink: Box<dyn EventSink>) -> Inspector {
        Inspector {
            table: Table::new(max_flows),
            metrics,
            sink,
            budget_used: AtomicUsize::new(0),
            count: AtomicUsize::new(0),
            recent: Mutex::new(VecDeque::with_capacity(RECENT)),
        }
    }

    pub fn metrics(&self) -> &InspectMetrics {
        &self.metrics
    }

    /// Inspects `packet`, a whole IP packet going `dir` between the gateway and `peer`.
    pub fn packet(
        &self,
        policy: &Policy,
        dir: Dir,
        peer: &str,
        packet: &[u8],
        now: Tick,
    ) -> Verdict {
        if !policy.enabled {
            return Verdict::Pass;
        }
        let Some(segment) = segment(dir, packet) else {
            return Verdict::Pass;
        };
        let mut shard = self.table.shard(&segment.key);
        let opening = segment.has(TCP_SYN) && !segment.has(TCP_ACK);
        // The common packet belongs to a flow the table holds: one lookup of its key.
        if let Some(flow) = shard.flows.get_mut(&segment.key) {
            let checked =
                segment.from_peer && Self::matters(&segment, flow) && !checksum_ok(&segment);
            // A new connection on the 4-tuple of an old one starts a new flow; a retransmitted
            // SYN does not.
            if !(opening && !checked && !flow.opened_by(segment.from_peer, segment.seq)) {
                return self.on_flow(policy, flow, &segment, checked, peer, now);
            }
            if let Some(old) = shard.flows.remove(&segment.key) {
                self.forget(1, old.held());
            }
        }
        // A flow to start: the checksum of a first segment always matters.
        let checked = segment.from_peer && !checksum_ok(&segment);
        if checked || segment.has(TCP_RST) || (segment.payload.is_empty() && !segment.has(TCP_SYN))
        {
            // A reset, a bare ACK or a segment the receiver will discard (bad checksum)
            // starts nothing.
            return Verdict::Pass;
        }
        let max = usize::try_from(policy.max_flows).unwrap_or(usize::MAX);
        let count = self.count.load(Ordering::Relaxed);
        if count >= max && now.secs != shard.last_sweep {
            let need = count + 1 - max;
            let mut swept = shard.sweep(now.secs, need);
            if swept.expired + swept.evicted < need {
                // The idle flows may sit in other shards: sweep those that are free now
                // (never waiting on another shard's lock while holding this one).
                let more = self.table.sweep_others(
                    &segment.key,
                    now.secs,
                    need - swept.expired - swept.evicted,
                );
                swept.expired += more.expired;
                swept.evicted += more.evicted;
                swept.released += more.released;
            }
            self.forget(swept.expired + swept.evicted, swept.released);
            for _ in 0..swept.evicted {
                self.metrics.evicted();
            }
        }
        // The bound holds for the whole table: a flow is counted before it is inserted.
        if self.count.fetch_add(1, Ordering::Relaxed) >= max {
            self.count.fetch_sub(1, Ordering::Relaxed);
            self.metrics.exception(Exception::TableFull);
            return Verdict::Pass;
        }
        let flow = shard
            .flows
            .entry(segment.key)
            .insert_entry(self.new_flow(policy, &segment, now))
            .into_mut();
        self.metrics.flows_added(1);
        self.on_flow(policy, flow, &segment, false, peer, now)
    }

    /// Whether the checksum of `segment` matters: a decided flow's plain segments pass
    /// whatever their checksum, so the common packet costs none. Only what the parser reads or
    /// the flow's life follows is checked.
    fn matters(segment: &Segment<'_>, flow: &Flow) -> bool {
        segment.has(TCP_SYN | TCP_FIN | TCP_RST) || !matches!(flow.stage, Stage::Passing)
    }

    /// `segment` of `flow`, whose checksum was found wrong when `checked`.
    fn on_flow(
        &self,
        policy: &Policy,
        flow: &mut Flow,
        segment: &Segment<'_>,
        checked: bool,
        peer: &str,
        now: Tick,
    ) -> Verdict {
        if checked {
            // The service's stack drops a segment whose checksum is wrong: so does the parser,
            // or a decoy could show it bytes the service never gets.
            return Verdict::Pass;
        }
        flow.last_seen = now.secs;
        let verdict = self.on_segment(policy, flow, segment, peer, now);
        let from_client = segment.from_peer == flow.peer_is_client;
        if segment.has(TCP_FIN) {
            flow.fins |= if from_client { 1 } else { 2 };
        }
        if (segment.has(TCP_RST) || flow.fins == 3) && !matches!(flow.stage, Stage::Blocked) {
            // The connection is over: nothing but bare segments may follow (a stray reset, the
            // last ACK). The flow stays until it times out, so that data sent after a reset the
            // receiver may have ignored is not inspected from the middle as a new flow.
            self.set_stage(flow, Stage::Closed);
        }
        verdict
    }

    /// Removes the flows idle past their timeout; the endpoint's timer calls it every second
    /// or so, and each call sweeps every shard.
    pub fn expire(&self, now: Tick) {
        self.table.each_shard(|shard| {
            let swept = shard.sweep(now.secs, 0);
            self.forget(swept.expired, swept.released);
        });
    }

    /// Accounts for `flows` removed from the table, which held `bytes` of the budget.
    fn forget(&self, flows: usize, bytes: usize) {
        if flows > 0 {
            self.count.fetch_sub(flows, Ordering::Relaxed);
            self.metrics.flows_removed(flows);
        }
        self.release(bytes);
    }

    /// The table's state for `crmguard status`.
    pub fn status(&self, policy: &Policy) -> TableStatus {
        let mut flows = 0;
        let mut pending = 0;
        let mut by_protocol = [0usize; Protocol::ALL.len()];
        self.table.each_shard(|shard| {
            flows += shard.flows.len();
            for flow in shard.flows.values() {
                if matches!(flow.stage, Stage::Pending(_)) {
                    pending += 1;
                }
                by_protocol[flow.protocol.index()] += 1;
            }
        });
        let recent = self
            .recent
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .cloned()
            .collect();
        TableStatus {
            enabled: policy.enabled,
            flows,
            pending,
            max_flows: policy.max_flows,
            flow_bytes: std::mem::size_of::<Flow>() + std::mem::size_of::<FlowKey>(),
            reassembly_bytes: self.budget_used.load(Ordering::Relaxed),
            evictions: self.metrics.evictions(),
            table_full: self.metrics.exceptions_of(Exception::TableFull),
            midstream: self.metrics.exceptions_of(Exception::Midstream),
            open_by_protocol: Protocol::ALL
                .iter()
                .zip(by_protocol)
                .filter(|(_, n)| *n > 0)
                .map(|(p, n)| (*p, n))
                .collect(),
            recent,
        }
    }

    fn new_flow(&self, policy: &Policy, s: &Segment<'_>, now: Tick) -> Flow {
        let opening = s.has(TCP_SYN) && !s.has(TCP_ACK);
        let peer_is_client = if opening {
            s.from_peer
        } else if s.has(TCP_SYN) {
            // A SYN-ACK comes from the server.
            !s.from_peer
        } else {
            // Picked up midstream: peers are the clients of the gateway's services.
            true
        };
        if !opening {
            self.metrics.exception(Exception::Midstream);
        }
        Flow {
            stage: Stage::Pending(Box::default()),
            protocol: Protocol::Unknown,
            identified: false,
            expected: if peer_is_client {
                policy.expected(s.key.gateway_port)
            } else {
                None
            },
            peer_is_client,
            midstream: !opening,
            fins: 0,
            last_seen: now.secs,
        }
    }

    fn on_segment(
        &self,
        policy: &Policy,
        flow: &mut Flow,
        s: &Segment<'_>,
        peer: &str,
        now: Tick,
    ) -> Verdict {
        let from_client = s.from_peer == flow.peer_is_client;
        match &mut flow.stage {
            Stage::Blocked => Verdict::Drop,
            Stage::Passing => Verdict::Pass,
            // An ended connection carries no more data: whatever claims to is dropped.
            Stage::Closed if !s.payload.is_empty() => Verdict::Drop,
            Stage::Closed => Verdict::Pass,
            Stage::Watching => {
                if s.payload.is_empty() {
                    return Verdict::Pass;
                }
                let cx = Context {
                    login_rules: &policy.login_rules,
                };
                let watch = proto::watch(flow.protocol, !from_client, s.payload, &cx);
                let mut found = Found::default();
                if watch.auth_failure {
                    found.auth_failures = 1;
                }
                if let Some(credential) = watch.credential {
                    found.violation(
                        ViolationKind::PlaintextCredentials,
                        drops(policy.plaintext_credentials),
                        credential.as_str().to_owned(),
                    );
                }
                self.act(flow, s, peer, found, now)
            }
            Stage::Pending(pending) => {
                let added = feed(pending, s, from_client);
                let held = pending.client.as_ref().map_or(0, Reassembly::held)
                    + pending.server.as_ref().map_or(0, Reassembly::held);
                let before = pending.held;
                pending.held = held;
                if held > before {
                    let used = self.budget_used.fetch_add(held - before, Ordering::Relaxed)
                        + (held - before);
                    if used > REASSEMBLY_BUDGET {
                        self.metrics.exception(Exception::ReassemblyBudget);
                        self.release(held);
                        flow.stage = Stage::Passing;
                        return Verdict::Pass;
                    }
                } else {
                    self.release(before - held);
                }
                if added.conflict {
                    let mut found = Found::default();
                    found.violation(
                        ViolationKind::Overlap,
                        true,
                        "a segment rewrote bytes already seen".to_owned(),
                    );
                    return self.act(flow, s, peer, found, now);
                }
                if !added.grew {
                    return Verdict::Pass;
                }
                let found = self.decide(policy, flow);
                self.act(flow, s, peer, found, now)
            }
        }
    }

    /// Identifies and analyzes a pending flow on its bytes so far; moves it on when decided.
    fn decide(&self, policy: &Policy, flow: &mut Flow) -> Found {
        let mut found = Found::default();
        let Stage::Pending(pending) = &mut flow.stage else {
            return found;
        };
        let streams = Streams {
            client: pending.client.as_ref().map_or(&[], Reassembly::bytes),
            server: pending.server.as_ref().map_or(&[], Reassembly::bytes),
            client_done: pending.client.as_ref().is_some_and(Reassembly::done),
            server_done: pending.server.as_ref().is_some_and(Reassembly::done),
        };
        if !flow.identified {
            match proto::identify(&streams) {
                Identified::More => return found,
                Identified::Known(protocol) => {
                    flow.identified = true;
                    flow.protocol = protocol;
                    self.metrics.flow(protocol);
                    if let Some(expected) = flow.expected {
                        // Also midstream: bytes identified as another protocol are that.
                        if !compatible(expected, protocol) {
                            found.violation(
                                ViolationKind::ProtocolMismatch,
                                drops(policy.protocol_mismatch),
                                format!("{protocol} on a {expected} service"),
                            );
                        }
                    }
                }
                Identified::Unknown => {
                    flow.identified = true;
                    flow.protocol = if flow.midstream {
                        Protocol::Midstream
                    } else {
                        Protocol::Unknown
                    };
                    self.metrics.flow(flow.protocol);
                    if let (Some(expected), false) = (flow.expected, flow.midstream) {
                        found.violation(
                            ViolationKind::ProtocolMismatch,
                            drops(policy.protocol_mismatch),
                            format!("unknown on a {expected} service"),
                        );
                    }
                    found.next = Some(Stage::Passing);
                    return found;
                }
            }
        }
        let cx = Context {
            login_rules: &policy.login_rules,
        };
        let analysis = proto::analyze(flow.protocol, &streams, &cx);
        if let (Some(hello), false) = (&analysis.client_hello, pending.client_hello_checked) {
            pending.client_hello_checked = true;
            let best = hello.versions.iter().copied().max().unwrap_or(0);
            if best < policy.tls_min {
                found.violation(
                    ViolationKind::TlsVersion,
                    true,
                    format!("client offers at most TLS {}", version_name(best)),
                );
            }
            match &hello.sni {
                Some(name) if !policy.sni_allowed(name) => {
                    found.violation(ViolationKind::Sni, true, printable(name));
                }
                None if policy.no_sni == NoSniAction::Drop => {
                    found.violation(ViolationKind::NoSni, true, String::new());
                }
                _ => {}
            }
        }
        if flow.protocol == Protocol::Tls
            && analysis.client_hello.is_none()
            && streams.client_done
            && !pending.client_hello_checked
        {
            // A ClientHello that does not fit in the window cannot be read: with rules on the
            // server name, it is refused rather than let through unread.
            pending.client_hello_checked = true;
            if !policy.sni_allow.is_empty() || policy.no_sni == NoSniAction::Drop {
                found.violation(
                    ViolationKind::Sni,
                    true,
                    format!("a ClientHello beyond the {CLIENT_WINDOW}-byte inspection window"),
                );
            }
        }
        if let (Some(hello), false) = (&analysis.server_hello, pending.server_hello_checked) {
            pending.server_hello_checked = true;
            if hello.version < policy.tls_min {
                found.violation(
                    ViolationKind::TlsVersion,
                    true,
                    format!("server chose TLS {}", version_name(hello.version)),
                );
            }
        }
        if let (Some(credential), false) = (analysis.credential, pending.credential_reported) {
            pending.credential_reported = true;
            found.violation(
                ViolationKind::PlaintextCredentials,
                drops(policy.plaintext_credentials),
                credential.as_str().to_owned(),
            );
        }
        if analysis.auth_failures > pending.auth_failures_reported {
            found.auth_failures = analysis.auth_failures - pending.auth_failures_reported;
            pending.auth_failures_reported = analysis.auth_failures;
        }
        let both_done = streams.client_done && streams.server_done;
        found.next = match analysis.progress {
            Progress::Done if watches(flow.protocol) => Some(Stage::Watching),
            Progress::Done | Progress::Encrypted => Some(Stage::Passing),
            Progress::Malformed => {
                if policy.parser_error == ParserErrorAction::Drop {
                    found.violation(
                        ViolationKind::ParserError,
                        true,
                        format!("{} parser", flow.protocol),
                    );
                } else {
                    self.metrics.exception(Exception::ParserError);
                }
                Some(Stage::Passing)
            }
            Progress::More if both_done => Some(Stage::Passing),
            Progress::More => None,
        };
        found
    }

    /// Reports what was found and turns it into the packet's verdict.
    fn act(
        &self,
        flow: &mut Flow,
        s: &Segment<'_>,
        peer: &str,
        found: Found,
        now: Tick,
    ) -> Verdict {
        let (client, server) = ends(s);
        let event = |what| Event {
            peer: peer.to_owned(),
            client,
            server,
            protocol: flow.protocol,
            what,
        };
        for _ in 0..found.auth_failures {
            self.metrics.auth_failure(flow.protocol);
            self.sink.event(event(What::AuthFailure));
        }
        let reset = found.violations.iter().any(|(_, drop, _)| *drop);
        let response = if reset {
            Response::Reset
        } else {
            Response::Alert
        };
        for (kind, _, detail) in found.violations {
            self.metrics.violation(kind);
            let e = event(What::Violation {
                kind,
                response,
                detail,
            });
            self.remember(now, &e);
            self.sink.event(e);
        }
        if reset {
            self.set_stage(flow, Stage::Blocked);
            return Verdict::Reset;
        }
        if let Some(next) = found.next {
            self.set_stage(flow, next);
        }
        Verdict::Pass
    }

    fn set_stage(&self, flow: &mut Flow, stage: Stage) {
        self.release(flow.held());
        flow.stage = stage;
    }

    fn release(&self, bytes: usize) {
        if bytes > 0 {
            self.budget_used.fetch_sub(bytes, Ordering::Relaxed);
        }
    }

    fn remember(&self, now: Tick, event: &Event) {
        let mut recent = self
            .recent
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if recent.len() == RECENT {
            recent.pop_front();
        }
        recent.push_back(Recent {
            unix: now.unix,
            event: event.clone(),
        });
    }
}

/// What the policy made of a flow's new bytes.
#[derive(Default)]
struct Found {
    /// (kind, whether it ends the flow, detail).
    violations: Vec<(ViolationKind, bool, String)>,
    auth_failures: u32,
    /// The stage the flow moves to, if it moves.
    next: Option<Stage>,
}

impl Found {
    fn violation(&mut self, kind: ViolationKind, drop: bool, detail: String) {
        self.violations.push((kind, drop, detail));
    }
}

/// The table's state, as `crmguard status` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableStatus {
    pub enabled: bool,
    pub flows: usize,
    /// Flows still being identified or analyzed.
    pub pending: usize,
    pub max_flows: u32,
    /// Bytes of one entry (key and fixed state), without the hash table's own overhead.
    pub flow_bytes: usize,
    /// Bytes of reassembly buffers held now.
    pub reassembly_bytes: usize,
    pub evictions: u64,
    pub table_full: u64,
    pub midstream: u64,
    /// Open flows by protocol.
    pub open_by_protocol: Vec<(Protocol, usize)>,
    /// The last violations, oldest first.
    pub recent: Vec<Recent>,
}

fn drops(action: ViolationAction) -> bool {
    action == ViolationAction::Drop
}

/// Whether a decided flow of `protocol` still has each segment looked at.
fn watches(protocol: Protocol) -> bool {
    matches!(protocol, Protocol::Http | Protocol::Redis | Protocol::Smtp)
}

/// A server name as it may be shown: printable ASCII, at most 255 bytes.
fn printable(name: &str) -> String {
    name.chars()
        .take(255)
        .map(|c| if c.is_ascii_graphic() { c } else { '?' })
        .collect()
}

fn ends(s: &Segment<'_>) -> (SocketAddr, SocketAddr) {
    (
        SocketAddr::new(s.key.peer, s.key.peer_port),
        SocketAddr::new(s.key.gateway, s.key.gateway_port),
    )
}

/// Adds a segment's bytes to its direction.
fn feed(pending: &mut Pending, s: &Segment<'_>, from_client: bool) -> Added {
    let window = if from_client {
        CLIENT_WINDOW
    } else {
        SERVER_WINDOW
    };
    let side = if from_client {
        &mut pending.client
    } else {
        &mut pending.server
    };
    // Data rides after the SYN's own sequence number.
    let data_seq = if s.has(TCP_SYN) {
        s.seq.wrapping_add(1)
    } else {
        s.seq
    };
    let stream = side.get_or_insert_with(|| Reassembly::new(data_seq, window));
    stream.add(data_seq, s.payload, s.has(TCP_FIN) || s.has(TCP_RST))
}

/// The flow key and TCP facts of `packet`, if it is a TCP segment.
fn segment(dir: Dir, packet: &[u8]) -> Option<Segment<'_>> {
    let parsed = packet::parse(packet).ok()?;
    let Transport::Tcp(tcp) = parsed.transport else {
        return None;
    };
    let start = parsed.transport_offset + tcp.header_len;
    let payload = packet.get(start..parsed.len).unwrap_or(&[]);
    let (peer, gateway, peer_port, gateway_port, from_peer) = match dir {
        Dir::FromPeer => (parsed.src, parsed.dst, tcp.src_port, tcp.dst_port, true),
        Dir::ToPeer => (parsed.dst, parsed.src, tcp.dst_port, tcp.src_port, false),
    };
    Some(Segment {
        key: FlowKey {
            peer: canonical(peer),
            gateway: canonical(gateway),
            peer_port,
            gateway_port,
        },
        from_peer,
        seq: tcp.seq,
        flags: tcp.flags,
        payload,
        src: parsed.src,
        dst: parsed.dst,
        tcp: packet
            .get(parsed.transport_offset..parsed.len)
            .unwrap_or(&[]),
    })
}

/// Whether the TCP checksum of `s` is right.
fn checksum_ok(s: &Segment<'_>) -> bool {
    let Ok(len) = u32::try_from(s.tcp.len()) else {
        return false;
    };
    let mut sum: u64 = 0;
    match (s.src, s.dst) {
        (IpAddr::V4(src), IpAddr::V4(dst)) => {
            sum = add_words(sum, &src.octets());
            sum = add_words(sum, &dst.octets());
        }
        (IpAddr::V6(src), IpAddr::V6(dst)) => {
            sum = add_words(sum, &src.octets());
            sum = add_words(sum, &dst.octets());
        }
        _ => return false,
    }
    sum += u64::from(packet::PROTO_TCP) + u64::from(len);
    sum = add_words(sum, s.tcp);
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum == 0xffff
}

/// `sum` plus the 16-bit big-endian words of `data` (an odd last byte padded with zero).
fn add_words(mut sum: u64, data: &[u8]) -> u64 {
    let mut chunks = data.chunks_exact(2);
    for pair in &mut chunks {
        sum += u64::from(u16::from_be_bytes([pair[0], pair[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u64::from(u16::from_be_bytes([*last, 0]));
    }
    sum
}

fn canonical(addr: IpAddr) -> IpAddr {
    addr.to_canonical()
}

#[cfg(test)]
mod tests;
