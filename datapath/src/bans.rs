//! The kernel's ban maps, opened by path from where the loader pinned them: `cg_ban4` and
//! `cg_ban6` (single addresses, hash maps) and `cg_ban4_lpm` and `cg_ban6_lpm` (true
//! prefixes, LPM tries), each mapping a source to a `struct cg_ban`.
//!
//! The agent's ban list (`crmguard_core::bans`) is the truth; this module makes the maps equal to it
//! and reads them back. It also keeps `cg_ban_flags[0]`, which tells the XDP program which of
//! the four maps may hold entries so that it skips the lookups in the others: a map's bit is
//! set before the first entry goes into it and cleared once the map is empty. It writes
//! nothing else. The XDP program drops a packet whose source
//! matches a ban that has not expired on the kernel's clock, so an expired entry that is still in a
//! map drops nothing; removing it is housekeeping, not enforcement.

#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{Array, HashMap, Map, MapData, MapError};
use ipnet::IpNet;
use nix::time::{clock_gettime, ClockId};

use crmguard_core::abi;
use crmguard_core::bans::{BanStore, KernelKey, KernelValue};

/// The value of a ban map entry, `struct cg_ban`.
fn ban_entry(value: KernelValue) -> abi::Ban {
    abi::Ban {
        expires_ns: value.expires_ns,
        reason: value.reason,
        _pad: 0,
    }
}

/// The bit of `cg_ban_flags` for the map that holds `key`.
fn flag(key: &KernelKey) -> u32 {
    match key {
        KernelKey::Host4(_) => abi::BAN_HOSTS4,
        KernelKey::Host6(_) => abi::BAN_HOSTS6,
        KernelKey::Prefix4 { .. } => abi::BAN_PREFIXES4,
        KernelKey::Prefix6 { .. } => abi::BAN_PREFIXES6,
    }
}

/// How far apart two expiries may be and still count as the same. Each write converts the
/// wall-clock expiry with a fresh reading of both clocks, and the distance between the clocks
/// drifts a little (NTP slews the wall clock); rewriting every entry for that would be churn.
/// A step of the wall clock beyond this makes the next sync rewrite the entries, so that bans
/// end at the wall-clock time shown to the operator.
pub const EXPIRY_TOLERANCE: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum KernelBansError {
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
    #[error("cannot read CLOCK_MONOTONIC")]
    Clock(#[source] nix::Error),
}

/// One entry of a ban map, as read back from the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelEntry {
    pub net: IpNet,
    pub expires_ns: u64,
    pub reason: u32,
}

/// The time on the kernel's clock of ban expiries: CLOCK_MONOTONIC, which the XDP program
/// reads with `bpf_ktime_get_coarse_ns` (`ebpf/include/crmguard_abi.h`).
pub fn kernel_now() -> Result<Duration, KernelBansError> {
    clock_gettime(ClockId::CLOCK_MONOTONIC)
        .map(Duration::from)
        .map_err(KernelBansError::Clock)
}

/// Handles on the four pinned ban maps and their flags.
pub struct KernelBans {
    flags: Array<MapData, u32>,
    ban4: HashMap<MapData, [u8; 4], abi::Ban>,
    ban6: HashMap<MapData, [u8; 16], abi::Ban>,
    ban4_lpm: LpmTrie<MapData, [u8; 4], abi::Ban>,
    ban6_lpm: LpmTrie<MapData, [u8; 16], abi::Ban>,
}

fn open<T>(dir: &Path, name: &'static str) -> Result<T, KernelBansError>
where
    T: TryFrom<Map, Error = MapError>,
{
    let path = dir.join(name);
    let err = |source| KernelBansError::Open {
        path: path.clone(),
        source,
    };
    let data = MapData::from_pin(&path).map_err(err)?;
    let map = Map::from_map_data(data).map_err(err)?;
    T::try_from(map).map_err(err)
}

fn update_err(map: &'static str) -> impl Fn(MapError) -> KernelBansError {
    move |source| KernelBansError::Update { map, source }
}

fn read_err(map: &'static str) -> impl Fn(MapError) -> KernelBansError {
    move |source| KernelBansError::Read { map, source }
}

/// Whether a failed delete failed only because the entry was not there.
fn is_missing(error: &MapError) -> bool {
    match error {
        MapError::KeyNotFound => true,
        MapError::SyscallError(e) => e.io_error.raw_os_error() == Some(libc::ENOENT),
        _ => false,
    }
}

/// Whether the kernel's entry enforces the same ban as the desired one.
fn same(present: &abi::Ban, desired: &abi::Ban) -> bool {
    let tolerance = u64::try_from(EXPIRY_TOLERANCE.as_nanos()).unwrap_or(u64::MAX);
    let close = match (present.expires_ns, desired.expires_ns) {
        (0, 0) => true,
        (0, _) | (_, 0) => false,
        (a, b) => a.abs_diff(b) <= tolerance,
    };
    close && present.reason == desired.reason
}

impl KernelBans {
    /// Opens the ban maps pinned in `maps_dir` (`<bpffs_dir>/maps`).
    pub fn open(maps_dir: &Path) -> Result<Self, KernelBansError> {
        Ok(KernelBans {
            flags: open(maps_dir, "cg_ban_flags")?,
            ban4: open(maps_dir, "cg_ban4")?,
            ban6: open(maps_dir, "cg_ban6")?,
            ban4_lpm: open(maps_dir, "cg_ban4_lpm")?,
            ban6_lpm: open(maps_dir, "cg_ban6_lpm")?,
        })
    }

    /// Makes the maps hold exactly the entries of the bans of `bans` that are in force at
    /// `now_wall` (`now_kernel` is [`kernel_now`] read at the same moment): stale entries are
    /// deleted, missing or different ones written. Returns how many entries changed.
    pub fn sync(
        &mut self,
        bans: &BanStore,
        now_wall: SystemTime,
        now_kernel: Duration,
    ) -> Result<u64, KernelBansError> {
        let desired: BTreeMap<KernelKey, abi::Ban> = bans
            .kernel_entries(now_wall, now_kernel)
            .into_iter()
            .map(|(key, value)| (key, ban_entry(value)))
            .collect();
        let present = self.entries()?;
        let flags_before = self.flags()?;
        let wanted = desired.keys().fold(0, |bits, key| bits | flag(key));
        self.set_flags(flags_before | wanted)?;
        let mut changed = 0;
        for key in present.keys() {
            if !desired.contains_key(key) {
                self.delete(key)?;
                changed += 1;
            }
        }
        for (key, value) in &desired {
            if present.get(key).is_some_and(|p| same(p, value)) {
                continue;
            }
            self.write(key, value)?;
            changed += 1;
        }
        if self.settle_flags()? != flags_before {
            changed += 1;
        }
        Ok(changed)
    }

    /// Applies changes computed by `BanStore::kernel_changes`: each entry is written, or
    /// deleted when its value is `None` (an entry already gone is not an error).
    pub fn update(
        &mut self,
        changes: impl IntoIterator<Item = (KernelKey, Option<KernelValue>)>,
    ) -> Result<(), KernelBansError> {
        let mut deleted = false;
        for (key, value) in changes {
            match value {
                Some(value) => self.write(&key, &ban_entry(value))?,
                None => deleted |= self.delete(&key)?,
            }
        }
        if deleted {
            self.settle_flags()?;
        }
        Ok(())
    }

    /// The bits of `cg_ban_flags[0]` now.
    fn flags(&self) -> Result<u32, KernelBansError> {
        self.flags.get(&0, 0).map_err(read_err("cg_ban_flags"))
    }

    fn set_flags(&mut self, bits: u32) -> Result<(), KernelBansError> {
        if self.flags()? != bits {
            self.flags
                .set(0, bits, 0)
                .map_err(update_err("cg_ban_flags"))?;
        }
        Ok(())
    }

    /// Sets the flags to exactly the maps that hold entries, and returns them. A map whose
    /// emptiness cannot be read keeps its bit: a bit too many costs a lookup, a bit too few
    /// lifts bans.
    fn settle_flags(&mut self) -> Result<u32, KernelBansError> {
        // `next()` is `Some` for an entry and for an error alike.
        let holding = [
            (abi::BAN_HOSTS4, self.ban4.keys().next().is_some()),
            (abi::BAN_HOSTS6, self.ban6.keys().next().is_some()),
            (abi::BAN_PREFIXES4, self.ban4_lpm.keys().next().is_some()),
            (abi::BAN_PREFIXES6, self.ban6_lpm.keys().next().is_some()),
        ];
        let bits = holding
            .iter()
            .filter(|(_, holds)| *holds)
            .fold(0, |bits, (bit, _)| bits | bit);
        self.set_flags(bits)?;
        Ok(bits)
    }

    /// Every entry of the four maps, in key order (IPv4 hosts, IPv6 hosts, IPv4 prefixes,
    /// IPv6 prefixes). Entries whose key names no network are left out.
    pub fn list(&self) -> Result<Vec<KernelEntry>, KernelBansError> {
        Ok(self
            .entries()?
            .into_iter()
            .filter_map(|(key, value)| {
                Some(KernelEntry {
                    net: key.net()?,
                    expires_ns: value.expires_ns,
                    reason: value.reason,
                })
            })
            .collect())
    }

    fn entries(&self) -> Result<BTreeMap<KernelKey, abi::Ban>, KernelBansError> {
        let mut out = BTreeMap::new();
        for entry in self.ban4.iter() {
            let (addr, value) = entry.map_err(read_err("cg_ban4"))?;
            out.insert(KernelKey::Host4(addr), value);
        }
        for entry in self.ban6.iter() {
            let (addr, value) = entry.map_err(read_err("cg_ban6"))?;
            out.insert(KernelKey::Host6(addr), value);
        }
        for entry in self.ban4_lpm.iter() {
            let (key, value) = entry.map_err(read_err("cg_ban4_lpm"))?;
            let key = KernelKey::Prefix4 {
                len: key.prefix_len(),
                addr: key.data(),
            };
            out.insert(key, value);
        }
        for entry in self.ban6_lpm.iter() {
            let (key, value) = entry.map_err(read_err("cg_ban6_lpm"))?;
            let key = KernelKey::Prefix6 {
                len: key.prefix_len(),
                addr: key.data(),
            };
            out.insert(key, value);
        }
        Ok(out)
    }

    /// Writes one entry, after setting its map's flag so that the XDP program looks there.
    fn write(&mut self, key: &KernelKey, value: &abi::Ban) -> Result<(), KernelBansError> {
        let bits = self.flags()?;
        self.set_flags(bits | flag(key))?;
        let map = key.map_name();
        match *key {
            KernelKey::Host4(addr) => self.ban4.insert(addr, value, 0),
            KernelKey::Host6(addr) => self.ban6.insert(addr, value, 0),
            KernelKey::Prefix4 { len, addr } => {
                self.ban4_lpm.insert(&Key::new(len, addr), value, 0)
            }
            KernelKey::Prefix6 { len, addr } => {
                self.ban6_lpm.insert(&Key::new(len, addr), value, 0)
            }
        }
        .map_err(update_err(map))
    }

    /// Deletes one entry; returns whether it was there.
    fn delete(&mut self, key: &KernelKey) -> Result<bool, KernelBansError> {
        let map = key.map_name();
        let result = match *key {
            KernelKey::Host4(addr) => self.ban4.remove(&addr),
            KernelKey::Host6(addr) => self.ban6.remove(&addr),
            KernelKey::Prefix4 { len, addr } => self.ban4_lpm.remove(&Key::new(len, addr)),
            KernelKey::Prefix6 { len, addr } => self.ban6_lpm.remove(&Key::new(len, addr)),
        };
        match result {
            Ok(()) => Ok(true),
            Err(e) if is_missing(&e) => Ok(false),
            Err(e) => Err(update_err(map)(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiries_within_the_tolerance_are_the_same_ban() {
        let ban = |expires_ns, reason| abi::Ban {
            expires_ns,
            reason,
            _pad: 0,
        };
        let second = 1_000_000_000;
        let check = |present: abi::Ban, desired: abi::Ban, expected: bool| {
            assert_eq!(
                same(&present, &desired),
                expected,
                "{present:?} {desired:?}"
            );
        };
        check(ban(0, 1), ban(0, 1), true);
        check(ban(10 * second, 1), ban(10 * second + second, 1), true);
        check(ban(10 * second + second, 1), ban(10 * second, 1), true);
        check(ban(10 * second, 1), ban(10 * second + second + 1, 1), false);
        check(ban(0, 1), ban(10 * second, 1), false);
        check(ban(10 * second, 1), ban(0, 1), false);
        check(ban(10 * second, 1), ban(10 * second, 2), false);
    }

    #[test]
    fn the_kernel_clock_reads() {
        let a = kernel_now().expect("CLOCK_MONOTONIC");
        let b = kernel_now().expect("CLOCK_MONOTONIC");
        assert!(b >= a && !a.is_zero());
    }
}
