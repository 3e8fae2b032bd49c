//! The flow table: one entry per inner TCP connection, both directions in one entry, split
//! into shards that each have their own lock; `max_flows` bounds them together.
//!
//! An entry is small and fixed ([`Flow`], reported by `crmguard status` and the bench); the
//! reassembly buffers hang off it only while the flow is being identified and its rules
//! decided ([`Pending`]), and their total is bounded by a budget. Flows end on RST, on FIN from
//! both sides, and on an idle timeout; when a shard is full, a sweep removes the expired flows
//! and then evicts decided flows that have been idle a while, and a new flow that still finds
//! no room passes uninspected (counted).

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::net::IpAddr;
use std::sync::{Mutex, MutexGuard};

use crate::protocol::Protocol;
use crate::reasm::Reassembly;

/// How many shards the table has (fewer when `max_flows` is smaller).
pub const SHARDS: usize = 16;

/// Seconds an unidentified flow may stay idle.
pub const PENDING_IDLE: u32 = 300;
/// Seconds a flow ended by a violation, a reset or FINs stays, so that what still arrives is
/// recognised.
pub const CLOSED_IDLE: u32 = 60;
/// Seconds a decided flow may stay idle.
pub const DECIDED_IDLE: u32 = 600;
/// Seconds a decided flow must have been idle before a full shard evicts it.
pub const EVICTABLE_IDLE: u32 = 30;

/// The inner connection, as the peer and the gateway see it (not by who opened it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FlowKey {
    /// The peer's tunnel address.
    pub peer: IpAddr,
    /// The gateway's address.
    pub gateway: IpAddr,
    pub peer_port: u16,
    pub gateway_port: u16,
}

/// Where a flow is in its life.
#[derive(Debug)]
pub enum Stage {
    /// Being identified or analyzed: its first bytes are kept.
    Pending(Box<Pending>),
    /// Decided; each segment is still checked on its own (repeated logins).
    Watching,
    /// Decided; its packets pass after one lookup.
    Passing,
    /// Ended by a violation: what still arrives is dropped.
    Blocked,
    /// Ended by a reset or a FIN from both sides: bare segments pass, data is dropped.
    Closed,
}

/// One flow's fixed state.
#[derive(Debug)]
pub struct Flow {
    pub stage: Stage,
    /// `Unknown` until identified.
    pub protocol: Protocol,
    /// Whether identification is over.
    pub identified: bool,
    /// What the service should carry.
    pub expected: Option<Protocol>,
    /// Whether the peer opened the connection (sent the SYN).
    pub peer_is_client: bool,
    /// Whether the flow began before its SYN was seen.
    pub midstream: bool,
    /// FIN seen: bit 0 from the client, bit 1 from the server.
    pub fins: u8,
    /// Seconds (of the caller's monotonic clock) of the last packet.
    pub last_seen: u32,
}

/// The parser state of a flow being decided.
#[derive(Debug, Default)]
pub struct Pending {
    /// The client's bytes, once its first sequence number is known.
    pub client: Option<Reassembly>,
    pub server: Option<Reassembly>,
    /// What has been acted on already, so a re-run of the analysis reports nothing twice.
    pub client_hello_checked: bool,
    pub server_hello_checked: bool,
    pub credential_reported: bool,
    pub auth_failures_reported: u32,
    /// Bytes counted against the reassembly budget.
    pub held: usize,
}

impl Flow {
    /// Whether a SYN with sequence number `seq` (from the peer when `from_peer`) is the one
    /// that opened this flow, retransmitted.
    pub fn opened_by(&self, from_peer: bool, seq: u32) -> bool {
        match &self.stage {
            Stage::Pending(p) => {
                self.peer_is_client == from_peer
                    && p.client
                        .as_ref()
                        .is_none_or(|c| c.base() == seq.wrapping_add(1))
            }
            _ => false,
        }
    }

    fn idle_limit(&self) -> u32 {
        match self.stage {
            Stage::Pending(_) => PENDING_IDLE,
            Stage::Blocked | Stage::Closed => CLOSED_IDLE,
            Stage::Watching | Stage::Passing => DECIDED_IDLE,
        }
    }

    /// Whether the flow has been idle past its timeout at `now`.
    pub fn expired(&self, now: u32) -> bool {
        now.saturating_sub(self.last_seen) >= self.idle_limit()
    }

    /// The bytes of the budget the flow holds.
    pub fn held(&self) -> usize {
        match &self.stage {
            Stage::Pending(p) => p.held,
            _ => 0,
        }
    }
}

/// One shard's flows.
#[derive(Debug, Default)]
pub struct Shard {
    pub flows: HashMap<FlowKey, Flow>,
    /// When the shard was last swept, so a full shard under a flood of new flows sweeps at most
    /// once a second.
    pub last_sweep: u32,
}

/// What a sweep removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Swept {
    /// Flows past their idle timeout.
    pub expired: usize,
    /// Decided flows idle a while, removed to make room.
    pub evicted: usize,
    /// Budget bytes they held.
    pub released: usize,
}

impl Shard {
    /// Removes the expired flows; when that frees fewer than `room`, also up to as many decided
    /// flows idle for [`EVICTABLE_IDLE`] as are still needed.
    pub fn sweep(&mut self, now: u32, room: usize) -> Swept {
        let mut swept = Swept::default();
        self.last_sweep = now;
        self.flows.retain(|_, flow| {
            let gone = flow.expired(now);
            if gone {
                swept.expired += 1;
                swept.released += flow.held();
            }
            !gone
        });
        if swept.expired < room {
            let mut need = room - swept.expired;
            self.flows.retain(|_, flow| {
                let evictable = need > 0
                    && matches!(
                        flow.stage,
                        Stage::Passing | Stage::Watching | Stage::Blocked
                    )
                    && now.saturating_sub(flow.last_seen) >= EVICTABLE_IDLE;
                if evictable {
                    need -= 1;
                    swept.evicted += 1;
                    swept.released += flow.held();
                }
                !evictable
            });
        }
        swept
    }
}

/// The shards and the hasher that spreads flows over them.
#[derive(Debug)]
pub struct Table {
    shards: Box<[Mutex<Shard>]>,
    hasher: RandomState,
}

impl Table {
    /// A table whose `max_flows` is spread over at most [`SHARDS`] shards.
    pub fn new(max_flows: u32) -> Table {
        let count = SHARDS.min(usize::try_from(max_flows).unwrap_or(SHARDS).max(1));
        Table {
            shards: (0..count).map(|_| Mutex::new(Shard::default())).collect(),
            hasher: RandomState::new(),
        }
    }

    /// The shard of `key`, locked.
    pub fn shard(&self, key: &FlowKey) -> MutexGuard<'_, Shard> {
        lock(&self.shards[self.index(key)])
    }

    /// Sweeps every shard but `key`'s whose lock is free now, until `room` flows are gone.
    pub fn sweep_others(&self, key: &FlowKey, now: u32, room: usize) -> Swept {
        let mine = self.index(key);
        let mut total = Swept::default();
        for (i, shard) in self.shards.iter().enumerate() {
            let done = total.expired + total.evicted;
            if i == mine || done >= room {
                continue;
            }
            if let Ok(mut shard) = shard.try_lock() {
                let swept = shard.sweep(now, room - done);
                total.expired += swept.expired;
                total.evicted += swept.evicted;
                total.released += swept.released;
            }
        }
        total
    }

    fn index(&self, key: &FlowKey) -> usize {
        let hash = self.hasher.hash_one(key);
        usize::try_from(hash % (self.shards.len() as u64)).unwrap_or(0)
    }

    /// Every shard in turn, locked one at a time.
    pub fn each_shard(&self, mut f: impl FnMut(&mut Shard)) {
        for shard in self.shards.iter() {
            f(&mut lock(shard));
        }
    }
}

fn lock(shard: &Mutex<Shard>) -> MutexGuard<'_, Shard> {
    // A thread that panicked mid-update left flows that are still memory-safe; at worst one
    // flow's state is stale, which its timeout cleans up.
    shard
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn key(port: u16) -> FlowKey {
        FlowKey {
            peer: IpAddr::V4(Ipv4Addr::new(10, 77, 0, 2)),
            gateway: IpAddr::V4(Ipv4Addr::new(10, 77, 0, 1)),
            peer_port: port,
            gateway_port: 443,
        }
    }

    fn flow(stage: Stage, last_seen: u32) -> Flow {
        Flow {
            stage,
            protocol: Protocol::Tls,
            identified: true,
            expected: None,
            peer_is_client: true,
            midstream: false,
            fins: 0,
            last_seen,
        }
    }

    #[test]
    fn a_flow_entry_is_small() {
        assert!(
            std::mem::size_of::<Flow>() <= 32,
            "{}",
            std::mem::size_of::<Flow>()
        );
        assert!(std::mem::size_of::<FlowKey>() <= 40);
    }

    #[test]
    fn sweeps_expire_then_evict_idle_decided_flows_only() {
        let mut shard = Shard::default();
        shard.flows.insert(key(1), flow(Stage::Passing, 0));
        shard
            .flows
            .insert(key(2), flow(Stage::Pending(Box::default()), 590));
        shard.flows.insert(key(3), flow(Stage::Passing, 100));
        shard.flows.insert(key(4), flow(Stage::Passing, 620));
        let swept = shard.sweep(DECIDED_IDLE + 1, 0);
        assert_eq!((swept.expired, swept.evicted), (1, 0));
        // Room for one is needed: a decided flow idle long enough goes.
        let swept = shard.sweep(640, 1);
        assert_eq!((swept.expired, swept.evicted), (0, 1));
        assert!(!shard.flows.contains_key(&key(3)));
        assert!(
            shard.flows.contains_key(&key(2)),
            "a pending flow is never evicted"
        );
        assert!(
            shard.flows.contains_key(&key(4)),
            "a recently active flow stays"
        );
    }
}
