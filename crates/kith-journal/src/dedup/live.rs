//! The exact set of dedup keys whose records are still in journal segments.
//!
//! Every stored event inserts its key here once and removes it once its segment retires, and at
//! a few hundred thousand keys the set is far bigger than the cache. In a general-purpose hash
//! set each probe was two cache misses (control bytes, then the slot): about 0.3 µs of the
//! journal writer's 1 µs an event on the benchmark host. This table keeps keys inline with linear
//! probing, so a probe is one cache line, and it lets the writer prefetch the slots of a group's
//! keys ahead of inserting them ([`LiveKeys::prefetch`]), so the misses overlap instead of
//! following one another.
//!
//! Slots come from the key through a multiplier drawn at random per process: dedup keys are
//! unkeyed hashes of client-chosen message ids, and a fixed mapping would let a client craft ids
//! that pile up in one run of slots.

use std::hash::{BuildHasher, RandomState};

/// The table doubles once more than this fraction of its slots is taken: linear probing stays
/// within a cache line or two below it.
const MAX_LOAD_NUMERATOR: usize = 5;
const MAX_LOAD_DENOMINATOR: usize = 8;
const MIN_SLOTS: usize = 16;

/// A set of `u128` keys.
#[derive(Debug, Clone)]
pub(crate) struct LiveKeys {
    /// A power of two many slots (or none before the first insert); 0 marks an empty slot.
    slots: Vec<u128>,
    /// Keys in `slots`; the key 0, which cannot be stored there, is `has_zero`.
    in_slots: usize,
    has_zero: bool,
    /// Odd; a key's home slot is the top bits of its low half times this.
    multiplier: u64,
    /// 64 − log₂(slots).
    shift: u32,
}

impl Default for LiveKeys {
    fn default() -> Self {
        LiveKeys {
            slots: Vec::new(),
            in_slots: 0,
            has_zero: false,
            multiplier: RandomState::new().hash_one(0x6b69_7468u64) | 1,
            shift: 64,
        }
    }
}

impl LiveKeys {
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.in_slots + usize::from(self.has_zero)
    }

    #[cfg(test)]
    pub(crate) fn contains(&self, key: u128) -> bool {
        if key == 0 {
            return self.has_zero;
        }
        self.find(key).is_ok()
    }

    /// Adds `key`; false (and nothing changed) when it was there already.
    pub(crate) fn insert(&mut self, key: u128) -> bool {
        if key == 0 {
            return !std::mem::replace(&mut self.has_zero, true);
        }
        if (self.in_slots + 1) * MAX_LOAD_DENOMINATOR > self.slots.len() * MAX_LOAD_NUMERATOR {
            self.grow();
        }
        match self.find(key) {
            Ok(_) => false,
            Err(empty) => {
                self.slots[empty] = key;
                self.in_slots += 1;
                true
            }
        }
    }

    /// Takes `key` out; false when it was not there.
    pub(crate) fn remove(&mut self, key: u128) -> bool {
        if key == 0 {
            return std::mem::replace(&mut self.has_zero, false);
        }
        let Ok(found) = self.find(key) else {
            return false;
        };
        // Backward-shift deletion: later keys of the same run move into the hole when their home
        // slot lies at or before it, so every key stays reachable from its home without
        // tombstones.
        let mask = self.slots.len() - 1;
        let mut hole = found;
        let mut next = found;
        loop {
            next = (next + 1) & mask;
            let key = self.slots[next];
            if key == 0 {
                break;
            }
            let home = self.home(key);
            if next.wrapping_sub(home) & mask >= next.wrapping_sub(hole) & mask {
                self.slots[hole] = key;
                hole = next;
            }
        }
        self.slots[hole] = 0;
        self.in_slots -= 1;
        true
    }

    /// Starts loading the cache line where `key` would be, so that a later `insert`, `remove` or
    /// `contains` of it need not wait for memory.
    #[inline]
    pub(crate) fn prefetch(&self, key: u128) {
        if let Some(slot) = self.slots.get(self.home(key)) {
            prefetch(slot);
        }
    }

    fn home(&self, key: u128) -> usize {
        // Multiply-shift: the top bits of the product are the slot (0 when there are no slots).
        (key as u64)
            .wrapping_mul(self.multiplier)
            .checked_shr(self.shift)
            .unwrap_or(0) as usize
    }

    /// The slot holding `key` (not 0), or the empty slot where it would go.
    fn find(&self, key: u128) -> Result<usize, usize> {
        if self.slots.is_empty() {
            return Err(0);
        }
        let mask = self.slots.len() - 1;
        let mut at = self.home(key);
        loop {
            match self.slots[at] {
                0 => return Err(at),
                k if k == key => return Ok(at),
                _ => at = (at + 1) & mask,
            }
        }
    }

    fn grow(&mut self) {
        let slots = (self.slots.len() * 2).max(MIN_SLOTS);
        let old = std::mem::replace(&mut self.slots, vec![0; slots]);
        self.shift = 64 - slots.trailing_zeros();
        for key in old.into_iter().filter(|&k| k != 0) {
            // Keys are unique, so each finds an empty slot.
            if let Err(empty) = self.find(key) {
                self.slots[empty] = key;
            }
        }
    }
}

impl FromIterator<u128> for LiveKeys {
    fn from_iter<I: IntoIterator<Item = u128>>(keys: I) -> Self {
        let mut set = LiveKeys::default();
        for key in keys {
            set.insert(key);
        }
        set
    }
}

/// A hint to the CPU to start loading `value`'s cache line.
#[inline]
pub(crate) fn prefetch<T>(value: &T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `_mm_prefetch` is only a hint: it never faults, writes nothing and its result is
    // never observed; the pointer comes from a live reference. SSE is part of every x86-64 CPU.
    unsafe {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        _mm_prefetch::<_MM_HINT_T0>((value as *const T).cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = value;
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use proptest::prelude::*;

    use super::*;

    #[derive(Debug, Clone)]
    enum Op {
        Insert(u128),
        Remove(u128),
    }

    /// Keys from a small range so operations hit the same keys and runs of neighbouring slots
    /// often; 0 and wide keys too.
    fn key() -> impl Strategy<Value = u128> {
        prop_oneof![
            8 => 0u128..64,
            1 => any::<u128>(),
            1 => Just(0u128),
        ]
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => key().prop_map(Op::Insert),
            2 => key().prop_map(Op::Remove),
        ]
    }

    proptest! {
        /// Whatever is inserted and removed, the table answers like the standard library's set.
        #[test]
        fn behaves_like_a_set(ops in proptest::collection::vec(op(), 0..400)) {
            let mut table = LiveKeys::default();
            let mut model = HashSet::new();
            for op in ops {
                match op {
                    Op::Insert(k) => prop_assert_eq!(table.insert(k), model.insert(k)),
                    Op::Remove(k) => prop_assert_eq!(table.remove(k), model.remove(&k)),
                }
                prop_assert_eq!(table.len(), model.len());
            }
            for k in 0u128..64 {
                prop_assert_eq!(table.contains(k), model.contains(&k));
            }
            for k in &model {
                prop_assert!(table.contains(*k));
            }
        }
    }

    #[test]
    fn keys_crowded_into_one_run_of_slots_stay_findable_after_removals() {
        // Keys whose low halves are equal share a home slot whatever the multiplier: one long
        // run, with removals from its middle and start.
        let crowded: Vec<u128> = (1..=200u128).map(|high| (high << 64) | 7).collect();
        let mut table: LiveKeys = crowded.iter().copied().collect();
        assert_eq!(table.len(), 200);
        for key in crowded.iter().step_by(3) {
            assert!(table.remove(*key));
        }
        for (i, key) in crowded.iter().enumerate() {
            assert_eq!(table.contains(*key), i % 3 != 0, "key {i}");
        }
        table.prefetch(crowded[1]);
    }

    #[test]
    fn an_empty_table_answers_without_slots() {
        let mut table = LiveKeys::default();
        table.prefetch(5);
        assert!(!table.contains(5));
        assert!(!table.remove(5));
        assert!(table.insert(5));
        assert!(!table.insert(5));
        assert_eq!(table.slots.len(), MIN_SLOTS);
    }
}
