//! A bounded table of per-key state: at most `max_len` keys and `max_weight` counted items
//! (timestamps, ports...) in all. When either bound is passed, the least recently used keys
//! go first, so an attacker who sprays addresses pushes out old state but never grows memory.

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;

/// State that knows how many counted items it holds.
pub(crate) trait Weigh {
    fn weight(&self) -> usize;
}

struct Slot<V> {
    value: V,
    stamp: u64,
    weight: usize,
}

pub(crate) struct Table<K, V> {
    slots: HashMap<K, Slot<V>>,
    /// Keys by the time of their last use (a counter, not the clock).
    order: BTreeMap<u64, K>,
    next_stamp: u64,
    weight: usize,
    max_len: usize,
    max_weight: usize,
}

impl<K: Hash + Eq + Clone, V: Weigh> Table<K, V> {
    pub(crate) fn new(max_len: usize, max_weight: usize) -> Self {
        Table {
            slots: HashMap::new(),
            order: BTreeMap::new(),
            next_stamp: 0,
            weight: 0,
            max_len: max_len.max(1),
            max_weight,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.slots.len()
    }

    /// The counted items of all keys.
    pub(crate) fn weight(&self) -> usize {
        self.weight
    }

    /// Runs `f` on the state of `key` (made by `make` when the key is new), marks the key as
    /// the most recently used, and evicts other keys while a bound is passed.
    pub(crate) fn with<R>(
        &mut self,
        key: &K,
        make: impl FnOnce() -> V,
        f: impl FnOnce(&mut V) -> R,
    ) -> R {
        let stamp = self.next_stamp;
        self.next_stamp = self.next_stamp.wrapping_add(1);
        let slot = match self.slots.get_mut(key) {
            Some(slot) => {
                self.order.remove(&slot.stamp);
                slot.stamp = stamp;
                slot
            }
            None => self.slots.entry(key.clone()).or_insert(Slot {
                value: make(),
                stamp,
                weight: 0,
            }),
        };
        self.order.insert(stamp, key.clone());
        let result = f(&mut slot.value);
        let weight = slot.value.weight();
        self.weight = self
            .weight
            .saturating_sub(slot.weight)
            .saturating_add(weight);
        slot.weight = weight;
        self.evict(stamp);
        result
    }

    pub(crate) fn remove(&mut self, key: &K) {
        if let Some(slot) = self.slots.remove(key) {
            self.order.remove(&slot.stamp);
            self.weight = self.weight.saturating_sub(slot.weight);
        }
    }

    /// Keeps only the keys whose state `keep` accepts.
    pub(crate) fn retain(&mut self, mut keep: impl FnMut(&V) -> bool) {
        let gone: Vec<K> = self
            .slots
            .iter()
            .filter(|(_, slot)| !keep(&slot.value))
            .map(|(key, _)| key.clone())
            .collect();
        for key in &gone {
            self.remove(key);
        }
    }

    /// Drops least recently used keys, never the one stamped `keep`, while a bound is passed.
    fn evict(&mut self, keep: u64) {
        while self.slots.len() > self.max_len || self.weight > self.max_weight {
            let Some((&oldest, _)) = self.order.iter().find(|(stamp, _)| **stamp != keep) else {
                return;
            };
            if let Some(key) = self.order.remove(&oldest) {
                if let Some(slot) = self.slots.remove(&key) {
                    self.weight = self.weight.saturating_sub(slot.weight);
                }
            }
        }
    }
}
