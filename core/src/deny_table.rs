//! The IPv4 deny table of a policy slot (`cg_deny4_s`, `_m` or `_l`): the single addresses of the deny set,
//! and its prefixes when they have at most [`abi::DENY4_PROBES`] lengths, in an array of
//! buckets where every entry has two places ([`abi::deny4_places`]).
//!
//! XDP finds an entry with one multiplication hash and one or two array reads, where a hash map
//! costs a call and a jhash, and an LPM trie a walk. The table is built whole for each policy,
//! with cuckoo hashing: an entry goes to its first bucket, to its second when the first is full,
//! and when both are full takes the place of one of their entries, which moves to its other
//! bucket. A move never leaves a place empty, so an entry is in its first bucket or in its
//! second with the first full: a lookup that finds room in the first bucket is done. It has one of three sizes ([`abi::DENY4_SIZES`]), the
//! smallest the entries fill to at most 90% and in which they settle. The same policy always
//! gives the same table, so the agent can compare it with the kernel's.

use crate::abi;
use crate::policy::CompiledPolicy;

/// Moves tried for one entry before the table is built again larger.
const MAX_MOVES: usize = 500;

/// A built table: 2^`bits` buckets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deny4Table {
    pub bits: u8,
    pub buckets: Vec<abi::Deny4Bucket>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("the IPv4 deny set ({entries} entries) does not fit in a table of 2^{max_bits} buckets")]
pub struct TooLarge {
    pub entries: usize,
    pub max_bits: u8,
}

/// The most a table is filled: 90% of its places.
fn fits(entries: usize, bits: u8) -> bool {
    entries.saturating_mul(10) <= 9 * 4 * (1usize << bits)
}

/// The entries of the table of `policy`: every single address, and the prefixes of the lengths
/// its configuration probes (`deny4_len`).
#[must_use]
pub fn entries(policy: &CompiledPolicy) -> Vec<u64> {
    let probes = usize::from(policy.config.deny4_probes).min(abi::DENY4_PROBES);
    let lengths = &policy.config.deny4_len[..probes];
    let hosts = policy.deny4.keys().map(|addr| abi::deny4_entry(*addr, 32));
    let prefixes = policy
        .deny4_lpm
        .keys()
        .filter_map(|key| {
            u8::try_from(key.prefixlen)
                .ok()
                .map(|len| (len, key.addr_be))
        })
        .filter(|(len, _)| lengths.contains(len))
        .map(|(len, addr)| abi::deny4_entry(addr, len));
    hosts.chain(prefixes).collect()
}

/// The table of `policy`.
///
/// # Errors
/// [`TooLarge`] when the entries do not fit in 2^`DENY4_MAX_BITS` buckets, far beyond the
/// deny set's own limits.
pub fn build(policy: &CompiledPolicy) -> Result<Deny4Table, TooLarge> {
    build_from(&entries(policy))
}

/// The table of distinct `entries`.
///
/// # Errors
/// See [`build`].
pub fn build_from(entries: &[u64]) -> Result<Deny4Table, TooLarge> {
    build_in(entries, &abi::DENY4_SIZES)
}

/// The table of `entries` in the first of `sizes` that they fit and settle in.
fn build_in(entries: &[u64], sizes: &[u8]) -> Result<Deny4Table, TooLarge> {
    sizes
        .iter()
        .filter(|bits| fits(entries.len(), **bits))
        .find_map(|bits| place_all(entries, *bits))
        .ok_or(TooLarge {
            entries: entries.len(),
            max_bits: abi::DENY4_BITS_L,
        })
}

fn place_all(entries: &[u64], bits: u8) -> Option<Deny4Table> {
    let mut table = Deny4Table {
        bits,
        buckets: vec![abi::Deny4Bucket::default(); 1usize << bits],
    };
    for &entry in entries {
        table.place(entry)?;
    }
    Some(table)
}

impl Deny4Table {
    fn bucket(&mut self, index: u32) -> &mut abi::Deny4Bucket {
        // Both places are below 2^bits, the table's length.
        let index = usize::try_from(index).unwrap_or(0) % self.buckets.len();
        &mut self.buckets[index]
    }

    /// Puts `entry` in one of its places, moving others to their other place as needed.
    fn place(&mut self, entry: u64) -> Option<()> {
        let mut moving = entry;
        let mut from = None;
        for round in 0..MAX_MOVES {
            let places = abi::deny4_places(moving, self.bits);
            for index in places {
                if let Some(free) = self.bucket(index).entry.iter_mut().find(|e| **e == 0) {
                    *free = moving;
                    return Some(());
                }
            }
            // Both buckets are full: take a place in the one the entry did not just leave.
            let index = if from == Some(places[0]) {
                places[1]
            } else {
                places[0]
            };
            std::mem::swap(&mut self.bucket(index).entry[round % 4], &mut moving);
            from = Some(index);
        }
        None
    }

    /// Whether the table holds `entry`, looked up as XDP does: the second bucket only when the
    /// first is full.
    #[must_use]
    pub fn holds(&self, entry: u64) -> bool {
        let [first, second] =
            abi::deny4_places(entry, self.bits).map(|index| self.bucket_at(index));
        match first {
            Some(b) if b.entry.contains(&entry) => true,
            Some(b) if b.entry.iter().all(|e| *e != 0) => {
                second.is_some_and(|b| b.entry.contains(&entry))
            }
            _ => false,
        }
    }

    fn bucket_at(&self, index: u32) -> Option<&abi::Deny4Bucket> {
        self.buckets.get(usize::try_from(index).ok()?)
    }

    /// The buckets that hold entries, by index: what is written to the kernel's array.
    pub fn occupied(&self) -> impl Iterator<Item = (u32, &abi::Deny4Bucket)> {
        (0u32..)
            .zip(self.buckets.iter())
            .filter(|(_, b)| b.entry.iter().any(|e| *e != 0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addresses(count: u32, from: u32) -> Vec<u64> {
        (from..from + count)
            .map(|a| abi::deny4_entry(a.to_be_bytes(), 32))
            .collect()
    }

    #[test]
    fn every_entry_is_found_in_one_of_its_places() {
        let entries = addresses(100_000, 0x0a00_0000);
        let table = build_from(&entries).expect("table");
        assert!(entries.iter().all(|e| table.holds(*e)));
        let held: usize = table
            .buckets
            .iter()
            .map(|b| b.entry.iter().filter(|e| **e != 0).count())
            .sum();
        assert_eq!(held, entries.len(), "each entry once");
    }

    /// Filled to 90%, many entries must take their second bucket: each of them has its first
    /// bucket full, and XDP's lookup finds every entry.
    #[test]
    fn an_entry_is_in_its_second_bucket_only_when_its_first_is_full() {
        let entries = addresses(3_600, 0x0a00_0000);
        let table = build_from(&entries).expect("table");
        assert_eq!(table.bits, abi::DENY4_BITS_S);
        let mut second = 0;
        for entry in &entries {
            let [first, other] = abi::deny4_places(*entry, table.bits)
                .map(|i| table.bucket_at(i).expect("a place inside the table"));
            if !first.entry.contains(entry) {
                assert!(other.entry.contains(entry));
                assert!(first.entry.iter().all(|e| *e != 0), "first bucket full");
                second += 1;
            }
        }
        assert!(second > 100, "only {second} entries in their second bucket");
        assert!(entries.iter().all(|e| table.holds(*e)));
    }

    #[test]
    fn entries_not_placed_are_not_found() {
        let table = build_from(&addresses(1_000, 0x0a00_0000)).expect("table");
        assert!(addresses(10_000, 0x0b00_0000)
            .iter()
            .all(|e| !table.holds(*e)));
        // The same address as a prefix is another entry.
        assert!(!table.holds(abi::deny4_entry([10, 0, 0, 0], 24)));
        assert!(table.holds(abi::deny4_entry([10, 0, 0, 0], 32)));
    }

    #[test]
    fn the_table_is_the_smallest_size_that_holds_the_entries() {
        assert_eq!(build_from(&[]).expect("table").bits, abi::DENY4_BITS_S);
        let table = build_from(&addresses(3_600, 1)).expect("table");
        assert_eq!(
            table.bits,
            abi::DENY4_BITS_S,
            "3,600 entries in 4,096 places"
        );
        let table = build_from(&addresses(3_700, 1)).expect("table");
        assert_eq!(
            table.bits,
            abi::DENY4_BITS_M,
            "more than 90% of the small size"
        );
        assert_eq!(
            build_from(&addresses(118_000, 1)).expect("table").bits,
            abi::DENY4_BITS_L
        );
    }

    #[test]
    fn the_same_entries_give_the_same_table() {
        let entries = addresses(5_000, 0xc0a8_0000);
        assert_eq!(build_from(&entries), build_from(&entries));
    }

    #[test]
    fn a_table_that_cannot_settle_is_built_in_the_next_size() {
        // 4 buckets hold at most 16 entries: that size cannot settle, the next one does.
        let entries = addresses(17, 7);
        assert!(place_all(&entries, 2).is_none());
        let table = build_in(&entries, &[2, 5]).expect("table");
        assert_eq!(table.bits, 5);
        assert!(entries.iter().all(|e| table.holds(*e)));
        assert_eq!(
            build_in(&entries, &[2]),
            Err(TooLarge {
                entries: 17,
                max_bits: abi::DENY4_BITS_L
            })
        );
    }

    #[test]
    fn an_entry_keeps_only_the_bits_of_its_length() {
        assert_eq!(
            abi::deny4_entry([198, 51, 100, 77], 24),
            abi::deny4_entry([198, 51, 100, 0], 24)
        );
        assert_eq!(abi::deny4_entry([1, 2, 3, 4], 0), 1 << 32);
        assert_eq!(abi::deny4_entry([1, 2, 3, 4], 32), (33 << 32) | 0x0102_0304);
    }

    #[test]
    fn places_are_inside_the_table() {
        for bits in abi::DENY4_SIZES {
            for a in 0..1000u32 {
                let places = abi::deny4_places(abi::deny4_entry(a.to_be_bytes(), 32), bits);
                assert!(places.iter().all(|p| *p < 1 << bits));
            }
        }
    }
}
