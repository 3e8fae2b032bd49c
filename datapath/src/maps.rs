//! The pinned maps of the XDP program, opened by path: swapping in a compiled
//! policy, comparing the kernel with it, and reading the counters.
//!
//! A policy is applied as a new generation: fresh inner maps are created and
//! filled (in batches), placed in the slot that is not in force, the slot's
//! settings are written, and then `cg_active` is switched in one write. A
//! packet reads the slot once, so it sees the old policy or the new one,
//! never a mixture. The previous slot keeps its maps until the next apply
//! replaces them or `release_inactive` drops them.

use std::collections::BTreeMap;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use aya::maps::lpm_trie::LpmTrie;
use aya::maps::{Array, ArrayOfMaps, HashMap, Map, MapData, MapError, PerCpuArray};
use aya::Pod;

use super::sys;
use crmguard_core::abi::{self, Action, Reason};
use crmguard_core::deny_table::{self, Deny4Table};
use crmguard_core::policy::CompiledPolicy;

#[derive(Debug, thiserror::Error)]
pub enum MapsError {
    #[error(transparent)]
    DenyTable(deny_table::TooLarge),
    #[error("cannot open pinned map {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: MapError,
    },
    #[error("cannot create a map for {map}")]
    Create {
        map: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot fill a map for {map}")]
    Fill {
        map: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot update map {map}")]
    Update {
        map: &'static str,
        #[source]
        source: MapError,
    },
    #[error("cannot read map {map}")]
    Read {
        map: &'static str,
        #[source]
        source: MapError,
    },
    #[error("cannot count CPUs")]
    Cpus(#[source] std::io::Error),
}

/// Name, key size, value size and capacity of every map of the XDP object,
/// as this agent expects them. A unit test compares them with the object's
/// BTF; the pinned set's ABI stamp (stamp.rs) stands for them at runtime.
pub struct MapSpec {
    pub name: &'static str,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
}

// `try_from` is not const: the sizes are those of the ABI structs, far below 2^32.
#[allow(clippy::cast_possible_truncation)]
const fn spec<K, V>(name: &'static str, max_entries: u32) -> MapSpec {
    MapSpec {
        name,
        key_size: std::mem::size_of::<K>() as u32,
        value_size: std::mem::size_of::<V>() as u32,
        max_entries,
    }
}

pub const MAP_SPECS: &[MapSpec] = &[
    spec::<u32, u32>("cg_abi", 1),
    spec::<u32, u32>("cg_active", 1),
    spec::<u32, abi::Config>("cg_config", abi::POLICY_SLOTS),
    spec::<u32, u32>("cg_deny4_s", abi::POLICY_SLOTS),
    spec::<u32, u32>("cg_deny4_m", abi::POLICY_SLOTS),
    spec::<u32, u32>("cg_deny4_l", abi::POLICY_SLOTS),
    spec::<u32, u32>("cg_deny6", abi::POLICY_SLOTS),
    spec::<u32, u32>("cg_deny4_lpm", abi::POLICY_SLOTS),
    spec::<u32, u32>("cg_deny6_lpm", abi::POLICY_SLOTS),
    spec::<u32, u32>("cg_svc", abi::POLICY_SLOTS),
    spec::<u32, u32>("cg_svc_from4", abi::POLICY_SLOTS),
    spec::<u32, u32>("cg_svc_from6", abi::POLICY_SLOTS),
    spec::<[u8; 4], abi::Ban>("cg_ban4", abi::BAN_HOST_MAX),
    spec::<abi::Addr6, abi::Ban>("cg_ban6", abi::BAN_HOST_MAX),
    spec::<abi::Lpm4, abi::Ban>("cg_ban4_lpm", abi::BAN_PREFIX_MAX),
    spec::<abi::Lpm6, abi::Ban>("cg_ban6_lpm", abi::BAN_PREFIX_MAX),
    spec::<u32, u32>("cg_ban_flags", 1),
    spec::<u32, abi::RlSlot>("cg_rl", abi::RL_MAX),
    spec::<u32, abi::Rl>("cg_syn_budget", 1),
    spec::<u32, abi::Rl>("cg_rl_budget", 1),
    spec::<abi::FragKey, abi::Frag>("cg_frags", abi::FRAG_MAX),
    spec::<abi::Flow4Key, abi::Flow>("cg_flows4", abi::FLOW_MAX),
    spec::<u32, abi::Flow4Cached>("cg_flow4_cache", abi::FLOW4_CACHE_MAX),
    spec::<abi::FlowKey, abi::Flow>("cg_flows", abi::FLOW_MAX),
    spec::<abi::FlowKey, abi::Flow>("cg_dgram_flows", abi::DGRAM_FLOW_MAX),
    spec::<u32, abi::Stats>("cg_stats", abi::STATS_ENTRIES),
    spec::<u32, abi::EventBudget>("cg_event_budget", 1),
    spec::<(), ()>("cg_events", abi::EVENTS_BYTES),
    spec::<u32, abi::Clock>("cg_clock", 1),
];

/// One kind of per-slot policy map: its outer map and the shape of its
/// inner maps (which must equal the template in maps.h).
struct Kind {
    outer: &'static str,
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    flags: u32,
}

impl Kind {
    /// An array has every entry from its creation, all zero until written: the template's
    /// size is its only size (the verifier inlines lookups into it for that size), an entry
    /// is never deleted, and one of all zeros is no entry.
    fn is_array(&self) -> bool {
        self.map_type == sys::BPF_MAP_TYPE_ARRAY
    }
}

// `try_from` is not const: the sizes are those of the ABI structs, far below 2^32.
#[allow(clippy::cast_possible_truncation)]
const fn kind<K, V>(outer: &'static str, map_type: u32, max_entries: u32, flags: u32) -> Kind {
    Kind {
        outer,
        map_type,
        key_size: std::mem::size_of::<K>() as u32,
        value_size: std::mem::size_of::<V>() as u32,
        max_entries,
        flags,
    }
}

/// The IPv4 deny table (`crmguard_core::deny_table`) in each of its three sizes: an array of
/// buckets. A slot has a table in the outer map of its size only.
const DENY4_S: Kind = kind::<u32, abi::Deny4Bucket>(
    "cg_deny4_s",
    sys::BPF_MAP_TYPE_ARRAY,
    1 << abi::DENY4_BITS_S,
    0,
);
const DENY4_M: Kind = kind::<u32, abi::Deny4Bucket>(
    "cg_deny4_m",
    sys::BPF_MAP_TYPE_ARRAY,
    1 << abi::DENY4_BITS_M,
    0,
);
const DENY4_L: Kind = kind::<u32, abi::Deny4Bucket>(
    "cg_deny4_l",
    sys::BPF_MAP_TYPE_ARRAY,
    1 << abi::DENY4_BITS_L,
    0,
);
const DENY6: Kind = kind::<[u8; 16], abi::Rule>(
    "cg_deny6",
    sys::BPF_MAP_TYPE_HASH,
    abi::DENY_HOST_MAX,
    sys::BPF_F_NO_PREALLOC,
);
const DENY4_LPM: Kind = kind::<abi::Lpm4, abi::Rule>(
    "cg_deny4_lpm",
    sys::BPF_MAP_TYPE_LPM_TRIE,
    abi::DENY_PREFIX_MAX,
    sys::BPF_F_NO_PREALLOC,
);
const DENY6_LPM: Kind = kind::<abi::Lpm6, abi::Rule>(
    "cg_deny6_lpm",
    sys::BPF_MAP_TYPE_LPM_TRIE,
    abi::DENY_PREFIX_MAX,
    sys::BPF_F_NO_PREALLOC,
);
const SVC: Kind = kind::<u32, abi::Svc>("cg_svc", sys::BPF_MAP_TYPE_ARRAY, abi::SVC_PORTS, 0);
const SVC_FROM4: Kind = kind::<abi::SvcLpm4, abi::Rule>(
    "cg_svc_from4",
    sys::BPF_MAP_TYPE_LPM_TRIE,
    abi::SVC_FROM_MAX,
    sys::BPF_F_NO_PREALLOC,
);
const SVC_FROM6: Kind = kind::<abi::SvcLpm6, abi::Rule>(
    "cg_svc_from6",
    sys::BPF_MAP_TYPE_LPM_TRIE,
    abi::SVC_FROM_MAX,
    sys::BPF_F_NO_PREALLOC,
);

const KINDS: [&Kind; 9] = [
    &DENY4_S, &DENY4_M, &DENY4_L, &DENY6, &DENY4_LPM, &DENY6_LPM, &SVC, &SVC_FROM4, &SVC_FROM6,
];

/// Each kind's outer map, inner map type, key and value sizes, capacity and flags: what the
/// object's inner templates must be (a unit test compares them).
#[cfg(test)]
pub(crate) fn inner_kinds() -> impl Iterator<Item = (&'static str, u32, u32, u32, u32, u32)> {
    KINDS.iter().map(|k| {
        (
            k.outer,
            k.map_type,
            k.key_size,
            k.value_size,
            k.max_entries,
            k.flags,
        )
    })
}

/// The entries of one kind as raw key and value bytes, in key order.
struct Entries {
    keys: Vec<u8>,
    values: Vec<u8>,
    /// The slot has no map of this kind: a deny table of another size.
    absent: bool,
}

/// Inner maps up to this capacity are refilled in place on a reload.
const REUSE_MAX: u32 = 65_536;
/// The smallest inner map created.
const MIN_CAPACITY: u32 = 1024;

fn fill(inner: &MapData, kind: &Kind, entries: &Entries) -> Result<(), MapsError> {
    sys::update_all(
        inner.fd().as_fd(),
        usize::try_from(kind.key_size).unwrap_or(0),
        &entries.keys,
        usize::try_from(kind.value_size).unwrap_or(0),
        &entries.values,
    )
    .map_err(|source| MapsError::Fill {
        map: kind.outer,
        source,
    })
}

impl Entries {
    fn of<K: Pod, V: Pod>(map: &BTreeMap<K, V>) -> Entries {
        let mut keys = Vec::with_capacity(map.len() * std::mem::size_of::<K>());
        let mut values = Vec::with_capacity(map.len() * std::mem::size_of::<V>());
        for (k, v) in map {
            keys.extend_from_slice(sys::bytes_of(k));
            values.extend_from_slice(sys::bytes_of(v));
        }
        Entries {
            keys,
            values,
            absent: false,
        }
    }

    /// The table's buckets, when it has the size `bits`; else no map.
    fn of_table(table: &Deny4Table, bits: u8) -> Entries {
        let mut keys = Vec::new();
        let mut values = Vec::new();
        if table.bits == bits {
            for (index, bucket) in table.occupied() {
                keys.extend_from_slice(&index.to_ne_bytes());
                values.extend_from_slice(sys::bytes_of(bucket));
            }
        }
        Entries {
            keys,
            values,
            absent: table.bits != bits,
        }
    }

    fn count(&self, kind: &Kind) -> u32 {
        let ks = usize::try_from(kind.key_size).unwrap_or(1).max(1);
        u32::try_from(self.keys.len() / ks).unwrap_or(u32::MAX)
    }

    /// As a sorted map of key bytes to value bytes, for comparison.
    fn to_map(&self, kind: &Kind) -> BTreeMap<Vec<u8>, Vec<u8>> {
        let ks = usize::try_from(kind.key_size).unwrap_or(1).max(1);
        let vs = usize::try_from(kind.value_size).unwrap_or(1).max(1);
        self.keys
            .chunks(ks)
            .map(<[u8]>::to_vec)
            .zip(self.values.chunks(vs).map(<[u8]>::to_vec))
            .collect()
    }
}

/// The entries of every kind for `policy`, and the bits of its IPv4 deny table.
fn entries(policy: &CompiledPolicy) -> Result<([Entries; 9], u8), MapsError> {
    let table = deny_table::build(policy).map_err(MapsError::DenyTable)?;
    // The trie holds the prefixes only when the table does not (CFG_DENY4_PREFIXES).
    let trie4 = if policy.config.flags & abi::CFG_DENY4_PREFIXES == 0 {
        BTreeMap::new()
    } else {
        policy.deny4_lpm.clone()
    };
    let all = [
        Entries::of_table(&table, abi::DENY4_BITS_S),
        Entries::of_table(&table, abi::DENY4_BITS_M),
        Entries::of_table(&table, abi::DENY4_BITS_L),
        Entries::of(&policy.deny6),
        Entries::of(&trie4),
        Entries::of(&policy.deny6_lpm),
        Entries::of(
            &policy
                .services
                .iter()
                .map(|(key, svc)| (abi::svc_index(key), *svc))
                .collect(),
        ),
        Entries::of(&policy.svc_from4),
        Entries::of(&policy.svc_from6),
    ];
    Ok((all, table.bits))
}

/// How many entries differ between the kernel and a policy.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Divergence {
    pub entries: u64,
}

/// Handles on the pinned maps.
pub struct PolicyMaps {
    active: Array<MapData, u32>,
    config: Array<MapData, abi::Config>,
    outer: Vec<ArrayOfMaps<MapData, MapData>>,
    /// The same outer maps, for the commands aya does not offer.
    outer_fds: Vec<MapData>,
    /// The inner maps this process placed, by kind (as in `outer`) and slot. Looking an inner
    /// map up through its outer map yields only its id, and opening a map by id takes
    /// CAP_SYS_ADMIN, which the agent does not have: it reads and reuses the inner maps it
    /// holds. Inner maps it did not place (those of the agent before a restart) it replaces,
    /// unless it may open them by id.
    placed: Vec<Vec<Option<MapData>>>,
    stats: PerCpuArray<MapData, abi::Stats>,
    cpus: u32,
}

fn open_map(dir: &Path, name: &'static str) -> Result<Map, MapsError> {
    let path = dir.join(name);
    let data = MapData::from_pin(&path).map_err(|source| MapsError::Open {
        path: path.clone(),
        source,
    })?;
    Map::from_map_data(data).map_err(|source| MapsError::Open { path, source })
}

fn open<T>(dir: &Path, name: &'static str) -> Result<T, MapsError>
where
    T: TryFrom<Map, Error = MapError>,
{
    T::try_from(open_map(dir, name)?).map_err(|source| MapsError::Open {
        path: dir.join(name),
        source,
    })
}

impl PolicyMaps {
    /// Opens every map pinned in `dir`.
    pub fn open(dir: &Path) -> Result<Self, MapsError> {
        let mut outer = Vec::new();
        let mut outer_fds = Vec::new();
        for kind in KINDS {
            outer.push(open(dir, kind.outer)?);
            let path = dir.join(kind.outer);
            outer_fds
                .push(MapData::from_pin(&path).map_err(|source| MapsError::Open { path, source })?);
        }
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| MapsError::Cpus(e))?;
        let slots = usize::try_from(abi::POLICY_SLOTS).unwrap_or(2);
        let placed = KINDS
            .iter()
            .map(|_| (0..slots).map(|_| None).collect())
            .collect();
        Ok(Self {
            active: open(dir, "cg_active")?,
            config: open(dir, "cg_config")?,
            outer,
            outer_fds,
            placed,
            stats: open(dir, "cg_stats")?,
            cpus: u32::try_from(cpus).unwrap_or(1).max(1),
        })
    }

    /// The slot in force.
    pub fn active_slot(&self) -> Result<u32, MapsError> {
        let slot = self.active.get(&0, 0).map_err(|source| MapsError::Read {
            map: "cg_active",
            source,
        })?;
        Ok(slot % abi::POLICY_SLOTS)
    }

    /// The settings the kernel enforces now.
    pub fn current_config(&self) -> Result<abi::Config, MapsError> {
        let slot = self.active_slot()?;
        self.config.get(&slot, 0).map_err(|source| MapsError::Read {
            map: "cg_config",
            source,
        })
    }

    /// The settings as written to the kernel for `policy` at `generation`.
    fn kernel_config(
        &self,
        policy: &CompiledPolicy,
        generation: u32,
        deny4_bits: u8,
    ) -> abi::Config {
        let per_cpu = if policy.global_syn_per_s == 0 {
            0
        } else {
            (policy.global_syn_per_s / self.cpus).max(1)
        };
        abi::Config {
            generation,
            syn_per_cpu_per_s: per_cpu,
            deny4_bits,
            ..policy.config
        }
    }

    /// Swaps `policy` in as `generation`: the slot not in force gets the
    /// complete new policy, then one write of `cg_active` switches to it.
    ///
    /// Small maps of that slot are emptied and refilled in place. A map that
    /// is too small, or large (where refilling in place costs more than a
    /// fresh map), is replaced by a fresh one sized to the policy; replacing
    /// an inner map makes the kernel wait for an RCU grace period, which is
    /// why small reloads avoid it.
    pub fn apply(&mut self, policy: &CompiledPolicy, generation: u32) -> Result<(), MapsError> {
        let next = (self.active_slot()? + 1) % abi::POLICY_SLOTS;
        let next_index = usize::try_from(next).unwrap_or(0);
        let (all, deny4_bits) = entries(policy)?;
        for ((((kind, entries), outer), outer_fd), placed) in KINDS
            .iter()
            .zip(all)
            .zip(self.outer.iter_mut())
            .zip(self.outer_fds.iter())
            .zip(self.placed.iter_mut())
        {
            let count = entries.count(kind);
            let slot = &mut placed[next_index];
            if entries.absent {
                *slot = None;
                remove_inner(outer_fd, kind, next)?;
                continue;
            }
            // Else by id, which only an agent with CAP_SYS_ADMIN can open.
            let reusable = match slot.take().or_else(|| outer.get(&next, 0).ok()) {
                Some(inner) => {
                    let capacity = inner.info().map(|i| i.max_entries()).unwrap_or(0);
                    (!kind.is_array() && capacity >= count && capacity <= REUSE_MAX)
                        .then_some(inner)
                }
                None => None,
            };
            match reusable {
                Some(inner) => {
                    let present = read_raw(&inner, kind)?;
                    for key in present.keys() {
                        sys::delete_elem(inner.fd().as_fd(), key).map_err(|source| {
                            MapsError::Fill {
                                map: kind.outer,
                                source,
                            }
                        })?;
                    }
                    fill(&inner, kind, &entries)?;
                    *slot = Some(inner);
                }
                None => {
                    let capacity = if kind.is_array() {
                        kind.max_entries
                    } else {
                        count
                            .saturating_mul(2)
                            .max(MIN_CAPACITY)
                            .min(kind.max_entries)
                    };
                    let inner = sys::map_create(
                        kind.map_type,
                        kind.key_size,
                        kind.value_size,
                        capacity,
                        kind.flags,
                        kind.outer,
                    )
                    .map_err(|source| MapsError::Create {
                        map: kind.outer,
                        source,
                    })?;
                    let inner = MapData::from_fd(inner).map_err(|source| MapsError::Update {
                        map: kind.outer,
                        source,
                    })?;
                    fill(&inner, kind, &entries)?;
                    outer
                        .set(next, &inner, 0)
                        .map_err(|source| MapsError::Update {
                            map: kind.outer,
                            source,
                        })?;
                    *slot = Some(inner);
                }
            }
        }
        self.config
            .set(next, self.kernel_config(policy, generation, deny4_bits), 0)
            .map_err(|source| MapsError::Update {
                map: "cg_config",
                source,
            })?;
        // The switch: from here on every packet sees the new policy.
        self.active
            .set(0, next, 0)
            .map_err(|source| MapsError::Update {
                map: "cg_active",
                source,
            })?;
        Ok(())
    }

    /// Drops the large maps of the slot not in force, so that a big policy
    /// is not kept twice. Called well after a swap, so that no packet that
    /// read the old slot is still looking into it.
    pub fn release_inactive(&mut self) -> Result<(), MapsError> {
        let inactive = (self.active_slot()? + 1) % abi::POLICY_SLOTS;
        let inactive_index = usize::try_from(inactive).unwrap_or(0);
        for ((kind, outer_fd), placed) in KINDS
            .iter()
            .zip(self.outer_fds.iter())
            .zip(self.placed.iter_mut())
        {
            // An inner map of the slot this process did not place is at most one policy old
            // and replaced by the next apply.
            let Some(inner) = &placed[inactive_index] else {
                continue;
            };
            if inner.info().map(|i| i.max_entries()).unwrap_or(0) <= REUSE_MAX {
                continue;
            }
            placed[inactive_index] = None;
            remove_inner(outer_fd, kind, inactive)?;
        }
        Ok(())
    }

    /// Counts the entries in which the kernel's policy in force differs from
    /// `policy` at `generation`, without changing anything.
    pub fn divergence(
        &self,
        policy: &CompiledPolicy,
        generation: u32,
    ) -> Result<Divergence, MapsError> {
        let slot = self.active_slot()?;
        let slot_index = usize::try_from(slot).unwrap_or(0);
        let mut differ = 0u64;
        let (all, deny4_bits) = entries(policy)?;
        for (((kind, desired), outer), placed) in KINDS
            .iter()
            .zip(all)
            .zip(self.outer.iter())
            .zip(self.placed.iter())
        {
            let desired = desired.to_map(kind);
            // The map this process placed; else (before its first apply) by id, which only a
            // caller with CAP_SYS_ADMIN (the root CLI) can do.
            if let Some(inner) = &placed[slot_index] {
                differ += count_differences(&desired, &read_raw(inner, kind)?);
                continue;
            }
            let present = match outer.get(&slot, 0) {
                Ok(inner) => read_raw(&inner, kind)?,
                Err(MapError::KeyNotFound) => BTreeMap::new(),
                Err(source) => {
                    return Err(MapsError::Read {
                        map: kind.outer,
                        source,
                    })
                }
            };
            differ += count_differences(&desired, &present);
        }
        if self.config.get(&slot, 0).ok()
            != Some(self.kernel_config(policy, generation, deny4_bits))
        {
            differ += 1;
        }
        Ok(Divergence { entries: differ })
    }

    /// The packet and byte counters of one interface slot, summed over CPUs.
    pub fn read_counters(&self, slot: u32) -> Result<Vec<(Action, Reason, abi::Stats)>, MapsError> {
        read_stats(&self.stats, slot)
    }

    /// Zeroes the counters of a slot, for an interface newly given that slot.
    pub fn clear_counters(&mut self, slot: u32) -> Result<(), MapsError> {
        let cpus = usize::try_from(self.cpus).unwrap_or(1);
        for action in Action::ALL {
            for reason in Reason::ALL {
                let index = abi::stats_index(slot, action, reason);
                let zero = aya::maps::PerCpuValues::try_from(vec![abi::Stats::default(); cpus])
                    .map_err(MapsError::Cpus)?;
                self.stats
                    .set(index, zero, 0)
                    .map_err(|source| MapsError::Update {
                        map: "cg_stats",
                        source,
                    })?;
            }
        }
        Ok(())
    }
}

/// Takes the inner map of `slot` out of its outer map, if it has one.
fn remove_inner(outer_fd: &MapData, kind: &Kind, slot: u32) -> Result<(), MapsError> {
    match sys::delete_elem(outer_fd.fd().as_fd(), &slot.to_ne_bytes()) {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        Err(source) => Err(MapsError::Fill {
            map: kind.outer,
            source,
        }),
    }
}

fn count_differences(
    desired: &BTreeMap<Vec<u8>, Vec<u8>>,
    present: &BTreeMap<Vec<u8>, Vec<u8>>,
) -> u64 {
    let missing_or_wrong = desired
        .iter()
        .filter(|(k, v)| present.get(*k) != Some(*v))
        .count();
    let extra = present.keys().filter(|k| !desired.contains_key(*k)).count();
    u64::try_from(missing_or_wrong + extra).unwrap_or(u64::MAX)
}

/// Reads every entry of an inner map as raw bytes.
fn read_raw(inner: &MapData, kind: &Kind) -> Result<BTreeMap<Vec<u8>, Vec<u8>>, MapsError> {
    let read_err = |source| MapsError::Read {
        map: kind.outer,
        source,
    };
    // A second handle on the same map, which the typed readers consume: a duplicate of the
    // descriptor (opening it by id would take CAP_SYS_ADMIN).
    let fd = inner.fd().as_fd().try_clone_to_owned().map_err(|e| {
        read_err(MapError::from(aya::sys::SyscallError {
            call: "dup",
            io_error: e,
        }))
    })?;
    if kind.is_array() {
        let capacity = inner.info().map_or(kind.max_entries, |i| i.max_entries());
        return read_array(fd.as_fd(), kind, capacity);
    }
    let map = Map::from_map_data(MapData::from_fd(fd).map_err(read_err)?).map_err(read_err)?;
    let mut out = BTreeMap::new();
    macro_rules! collect {
        ($map:expr) => {
            for entry in $map.iter() {
                let (k, v) = entry.map_err(read_err)?;
                out.insert(sys::bytes_of(&k).to_vec(), sys::bytes_of(&v).to_vec());
            }
        };
    }
    match (kind.key_size, kind.value_size, kind.map_type) {
        (4, 4, sys::BPF_MAP_TYPE_HASH) => {
            collect!(HashMap::<_, [u8; 4], [u8; 4]>::try_from(map).map_err(read_err)?)
        }
        (16, 4, sys::BPF_MAP_TYPE_HASH) => {
            collect!(HashMap::<_, [u8; 16], [u8; 4]>::try_from(map).map_err(read_err)?)
        }
        (4, 16, sys::BPF_MAP_TYPE_HASH) => {
            collect!(HashMap::<_, [u8; 4], [u8; 16]>::try_from(map).map_err(read_err)?)
        }
        (8, 4, sys::BPF_MAP_TYPE_LPM_TRIE) => collect_trie::<[u8; 4]>(map, kind, &mut out)?,
        (20, 4, sys::BPF_MAP_TYPE_LPM_TRIE) => collect_trie::<[u8; 16]>(map, kind, &mut out)?,
        (12, 4, sys::BPF_MAP_TYPE_LPM_TRIE) => collect_trie::<[u8; 8]>(map, kind, &mut out)?,
        (24, 4, sys::BPF_MAP_TYPE_LPM_TRIE) => collect_trie::<[u8; 20]>(map, kind, &mut out)?,
        _ => {}
    }
    Ok(out)
}

/// The entries of an inner array that are not all zeros, keyed by index.
fn read_array(
    fd: std::os::fd::BorrowedFd<'_>,
    kind: &Kind,
    capacity: u32,
) -> Result<BTreeMap<Vec<u8>, Vec<u8>>, MapsError> {
    let value_size = usize::try_from(kind.value_size).unwrap_or(1).max(1);
    let values = sys::read_array(fd, value_size, capacity).map_err(|source| MapsError::Read {
        map: kind.outer,
        source: MapError::from(aya::sys::SyscallError {
            call: "bpf_map_lookup_batch",
            io_error: source,
        }),
    })?;
    Ok((0u32..)
        .zip(values.chunks(value_size))
        .filter(|(_, value)| value.iter().any(|b| *b != 0))
        .map(|(index, value)| (index.to_ne_bytes().to_vec(), value.to_vec()))
        .collect())
}

fn collect_trie<K: Pod>(
    map: Map,
    kind: &Kind,
    out: &mut BTreeMap<Vec<u8>, Vec<u8>>,
) -> Result<(), MapsError> {
    let read_err = |source| MapsError::Read {
        map: kind.outer,
        source,
    };
    let trie = LpmTrie::<_, K, [u8; 4]>::try_from(map).map_err(read_err)?;
    for entry in trie.iter() {
        let (k, v) = entry.map_err(read_err)?;
        let mut key = k.prefix_len().to_ne_bytes().to_vec();
        key.extend_from_slice(sys::bytes_of(&k.data()));
        out.insert(key, v.to_vec());
    }
    Ok(())
}

/// The packet and byte counters of one interface slot in `cg_stats`, summed over CPUs, for
/// every action and reason.
pub(crate) fn read_stats(
    stats: &PerCpuArray<MapData, abi::Stats>,
    slot: u32,
) -> Result<Vec<(Action, Reason, abi::Stats)>, MapsError> {
    let mut out = Vec::new();
    for action in Action::ALL {
        for reason in Reason::ALL {
            let index = abi::stats_index(slot, action, reason);
            let per_cpu = stats.get(&index, 0).map_err(|source| MapsError::Read {
                map: "cg_stats",
                source,
            })?;
            let mut total = abi::Stats::default();
            for s in per_cpu.iter() {
                total.packets = total.packets.wrapping_add(s.packets);
                total.bytes = total.bytes.wrapping_add(s.bytes);
            }
            out.push((action, reason, total));
        }
    }
    Ok(out)
}
