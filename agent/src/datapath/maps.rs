//! The pinned maps of the XDP program, opened by path: writing a compiled
//! policy into them, comparing them with it, and reading the counters.
//!
//! Each policy map is brought to exactly the desired entries (stale entries
//! deleted, missing or different ones written) and `cg_config` is written
//! last, so the global settings never name a policy whose entries are not in
//! place yet.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{Array, HashMap, Map, MapData, MapError, PerCpuArray};
use aya::Pod;

use crate::abi::{self, Action, Reason};
use crate::policy::CompiledPolicy;

#[derive(Debug, thiserror::Error)]
pub enum MapsError {
    #[error("cannot open pinned map {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: MapError,
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
}

/// Names, types and sizes of every pinned map, checked on adoption: the
/// loader reuses a pinned map without comparing its definition.
pub struct MapSpec {
    pub name: &'static str,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
}

pub const MAP_SPECS: &[MapSpec] = &[
    spec::<u32, abi::Config>("cg_config", 1),
    spec::<u32, abi::Stats>("cg_stats", abi::STATS_ENTRIES),
    spec::<[u8; 4], abi::Rule>("cg_deny4", abi::DENY_HOST_MAX),
    spec::<abi::Addr6, abi::Rule>("cg_deny6", abi::DENY_HOST_MAX),
    spec::<abi::Lpm4, abi::Rule>("cg_deny4_lpm", abi::DENY_PREFIX_MAX),
    spec::<abi::Lpm6, abi::Rule>("cg_deny6_lpm", abi::DENY_PREFIX_MAX),
    spec::<abi::SvcKey, abi::Svc>("cg_svc", abi::SVC_MAX),
    spec::<abi::SvcLpm4, abi::Rule>("cg_svc_from4", abi::SVC_FROM_MAX),
    spec::<abi::SvcLpm6, abi::Rule>("cg_svc_from6", abi::SVC_FROM_MAX),
];

const fn spec<K, V>(name: &'static str, max_entries: u32) -> MapSpec {
    MapSpec {
        name,
        key_size: std::mem::size_of::<K>() as u32,
        value_size: std::mem::size_of::<V>() as u32,
        max_entries,
    }
}

/// Handles on the pinned maps.
pub struct PolicyMaps {
    config: Array<MapData, abi::Config>,
    stats: PerCpuArray<MapData, abi::Stats>,
    deny4: HashMap<MapData, [u8; 4], abi::Rule>,
    deny6: HashMap<MapData, [u8; 16], abi::Rule>,
    deny4_lpm: LpmTrie<MapData, [u8; 4], abi::Rule>,
    deny6_lpm: LpmTrie<MapData, [u8; 16], abi::Rule>,
    services: HashMap<MapData, abi::SvcKey, abi::Svc>,
    svc_from4: LpmTrie<MapData, [u8; 8], abi::Rule>,
    svc_from6: LpmTrie<MapData, [u8; 20], abi::Rule>,
}

fn open<T>(dir: &Path, name: &'static str) -> Result<T, MapsError>
where
    T: TryFrom<Map, Error = MapError>,
{
    let path = dir.join(name);
    let data = MapData::from_pin(&path).map_err(|source| MapsError::Open {
        path: path.clone(),
        source,
    })?;
    let map = Map::from_map_data(data).map_err(|source| MapsError::Open {
        path: path.clone(),
        source,
    })?;
    T::try_from(map).map_err(|source| MapsError::Open { path, source })
}

/// How many entries differ between the kernel and a policy, per map.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Divergence {
    pub entries: u64,
}

impl PolicyMaps {
    /// Opens every map pinned in `dir`.
    pub fn open(dir: &Path) -> Result<Self, MapsError> {
        Ok(Self {
            config: open(dir, "cg_config")?,
            stats: open(dir, "cg_stats")?,
            deny4: open(dir, "cg_deny4")?,
            deny6: open(dir, "cg_deny6")?,
            deny4_lpm: open(dir, "cg_deny4_lpm")?,
            deny6_lpm: open(dir, "cg_deny6_lpm")?,
            services: open(dir, "cg_svc")?,
            svc_from4: open(dir, "cg_svc_from4")?,
            svc_from6: open(dir, "cg_svc_from6")?,
        })
    }

    /// The settings the kernel enforces now.
    pub fn current_config(&self) -> Result<abi::Config, MapsError> {
        self.config.get(&0, 0).map_err(|source| MapsError::Read {
            map: "cg_config",
            source,
        })
    }

    /// Brings every map to `policy` and then publishes `generation`.
    /// Returns how many entries had to change.
    pub fn apply(
        &mut self,
        policy: &CompiledPolicy,
        generation: u32,
    ) -> Result<Divergence, MapsError> {
        let mut changed = 0;
        changed += sync_hash(&mut self.deny4, "cg_deny4", &policy.deny4)?;
        let deny6: BTreeMap<[u8; 16], abi::Rule> = policy.deny6.clone();
        changed += sync_hash(&mut self.deny6, "cg_deny6", &deny6)?;
        changed += sync_trie(&mut self.deny4_lpm, "cg_deny4_lpm", &lpm4_entries(policy))?;
        changed += sync_trie(&mut self.deny6_lpm, "cg_deny6_lpm", &lpm6_entries(policy))?;
        changed += sync_hash(&mut self.services, "cg_svc", &policy.services)?;
        changed += sync_trie(&mut self.svc_from4, "cg_svc_from4", &svc4_entries(policy))?;
        changed += sync_trie(&mut self.svc_from6, "cg_svc_from6", &svc6_entries(policy))?;
        let config = abi::Config {
            generation,
            ..policy.config
        };
        if self.current_config()? != config {
            changed += 1;
            self.config
                .set(0, config, 0)
                .map_err(|source| MapsError::Update {
                    map: "cg_config",
                    source,
                })?;
        }
        Ok(Divergence { entries: changed })
    }

    /// Counts the entries in which the kernel differs from `policy`, without
    /// changing anything.
    pub fn divergence(
        &self,
        policy: &CompiledPolicy,
        generation: u32,
    ) -> Result<Divergence, MapsError> {
        let mut entries = 0;
        entries += diff_hash(&self.deny4, "cg_deny4", &policy.deny4)?;
        entries += diff_hash(&self.deny6, "cg_deny6", &policy.deny6)?;
        entries += diff_trie(&self.deny4_lpm, "cg_deny4_lpm", &lpm4_entries(policy))?;
        entries += diff_trie(&self.deny6_lpm, "cg_deny6_lpm", &lpm6_entries(policy))?;
        entries += diff_hash(&self.services, "cg_svc", &policy.services)?;
        entries += diff_trie(&self.svc_from4, "cg_svc_from4", &svc4_entries(policy))?;
        entries += diff_trie(&self.svc_from6, "cg_svc_from6", &svc6_entries(policy))?;
        if self.current_config()?
            != (abi::Config {
                generation,
                ..policy.config
            })
        {
            entries += 1;
        }
        Ok(Divergence { entries })
    }

    /// The packet and byte counters of one interface slot, summed over CPUs.
    pub fn read_counters(&self, slot: u32) -> Result<Vec<(Action, Reason, abi::Stats)>, MapsError> {
        let mut out = Vec::new();
        for action in Action::ALL {
            for reason in Reason::ALL {
                let index = abi::stats_index(slot, action, reason);
                let per_cpu = self
                    .stats
                    .get(&index, 0)
                    .map_err(|source| MapsError::Read {
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

    /// Zeroes the counters of a slot, for an interface newly given that slot.
    pub fn clear_counters(&mut self, slot: u32) -> Result<(), MapsError> {
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| MapsError::Read {
            map: "cg_stats",
            source: MapError::SyscallError(aya::sys::SyscallError {
                call: "nr_cpus",
                io_error: e,
            }),
        })?;
        for action in Action::ALL {
            for reason in Reason::ALL {
                let index = abi::stats_index(slot, action, reason);
                let zero = aya::maps::PerCpuValues::try_from(vec![abi::Stats::default(); cpus])
                    .map_err(|e| MapsError::Update {
                        map: "cg_stats",
                        source: MapError::SyscallError(aya::sys::SyscallError {
                            call: "percpu values",
                            io_error: e,
                        }),
                    })?;
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

fn lpm4_entries(policy: &CompiledPolicy) -> BTreeMap<(u32, [u8; 4]), abi::Rule> {
    policy
        .deny4_lpm
        .iter()
        .map(|(k, v)| ((k.prefixlen, k.addr_be), *v))
        .collect()
}

fn lpm6_entries(policy: &CompiledPolicy) -> BTreeMap<(u32, [u8; 16]), abi::Rule> {
    policy
        .deny6_lpm
        .iter()
        .map(|(k, v)| ((k.prefixlen, k.addr), *v))
        .collect()
}

fn svc4_entries(policy: &CompiledPolicy) -> BTreeMap<(u32, [u8; 8]), abi::Rule> {
    policy
        .svc_from4
        .iter()
        .map(|(k, v)| {
            let mut data = [0u8; 8];
            data[..4].copy_from_slice(&k.svc_id_be);
            data[4..].copy_from_slice(&k.addr_be);
            ((k.prefixlen, data), *v)
        })
        .collect()
}

fn svc6_entries(policy: &CompiledPolicy) -> BTreeMap<(u32, [u8; 20]), abi::Rule> {
    policy
        .svc_from6
        .iter()
        .map(|(k, v)| {
            let mut data = [0u8; 20];
            data[..4].copy_from_slice(&k.svc_id_be);
            data[4..].copy_from_slice(&k.addr);
            ((k.prefixlen, data), *v)
        })
        .collect()
}

fn sync_hash<K, V>(
    map: &mut HashMap<MapData, K, V>,
    name: &'static str,
    desired: &BTreeMap<K, V>,
) -> Result<u64, MapsError>
where
    K: Pod + Ord,
    V: Pod + PartialEq,
{
    let mut changed = 0;
    let present: Vec<K> = map
        .keys()
        .collect::<Result<_, _>>()
        .map_err(|source| MapsError::Read { map: name, source })?;
    for key in present {
        if !desired.contains_key(&key) {
            map.remove(&key)
                .map_err(|source| MapsError::Update { map: name, source })?;
            changed += 1;
        }
    }
    for (key, value) in desired {
        if map.get(key, 0).ok().as_ref() != Some(value) {
            map.insert(key, value, 0)
                .map_err(|source| MapsError::Update { map: name, source })?;
            changed += 1;
        }
    }
    Ok(changed)
}

fn diff_hash<K, V>(
    map: &HashMap<MapData, K, V>,
    name: &'static str,
    desired: &BTreeMap<K, V>,
) -> Result<u64, MapsError>
where
    K: Pod + Ord,
    V: Pod + PartialEq,
{
    let mut differ = 0;
    for key in map.keys() {
        let key = key.map_err(|source| MapsError::Read { map: name, source })?;
        if !desired.contains_key(&key) {
            differ += 1;
        }
    }
    for (key, value) in desired {
        if map.get(key, 0).ok().as_ref() != Some(value) {
            differ += 1;
        }
    }
    Ok(differ)
}

fn sync_trie<K, V>(
    map: &mut LpmTrie<MapData, K, V>,
    name: &'static str,
    desired: &BTreeMap<(u32, K), V>,
) -> Result<u64, MapsError>
where
    K: Pod + Ord,
    V: Pod + PartialEq,
{
    // An LPM lookup returns the longest match, which may be another entry, so
    // the present entries are read whole and compared exactly.
    let present = read_trie(map, name)?;
    let mut changed = 0;
    for (prefix_len, data) in present.keys() {
        if !desired.contains_key(&(*prefix_len, *data)) {
            map.remove(&Key::new(*prefix_len, *data))
                .map_err(|source| MapsError::Update { map: name, source })?;
            changed += 1;
        }
    }
    for ((prefix_len, data), value) in desired {
        if present.get(&(*prefix_len, *data)) == Some(value) {
            continue;
        }
        map.insert(&Key::new(*prefix_len, *data), value, 0)
            .map_err(|source| MapsError::Update { map: name, source })?;
        changed += 1;
    }
    Ok(changed)
}

fn read_trie<K, V>(
    map: &LpmTrie<MapData, K, V>,
    name: &'static str,
) -> Result<BTreeMap<(u32, K), V>, MapsError>
where
    K: Pod + Ord,
    V: Pod,
{
    let mut present = BTreeMap::new();
    for entry in map.iter() {
        let (key, value) = entry.map_err(|source| MapsError::Read { map: name, source })?;
        present.insert((key.prefix_len(), key.data()), value);
    }
    Ok(present)
}

fn diff_trie<K, V>(
    map: &LpmTrie<MapData, K, V>,
    name: &'static str,
    desired: &BTreeMap<(u32, K), V>,
) -> Result<u64, MapsError>
where
    K: Pod + Ord,
    V: Pod + PartialEq,
{
    let mut differ = 0;
    let present = read_trie(map, name)?;
    for (key, value) in &present {
        if desired.get(key) != Some(value) {
            differ += 1;
        }
    }
    differ += u64::try_from(desired.keys().filter(|k| !present.contains_key(k)).count())
        .unwrap_or(u64::MAX);
    Ok(differ)
}
