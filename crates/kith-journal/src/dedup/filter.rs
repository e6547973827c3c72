//! A blocked Bloom filter over dedup keys.
//!
//! Dedup keys are xxh3-128 hashes of message ids, so their bits are already uniform: the filter
//! takes its block and bit positions straight from the key instead of hashing again. Every
//! probe of one key lands in a single 64-byte block (one cache line), so asking costs one memory
//! access however large the filter is. With [`BITS_PER_KEY`] bits a key, about one absent key in
//! a few hundred is reported as maybe present; the run behind the filter then settles it on disk.
//!
//! The block comes from the key's high half, which orders keys (`u128` compares it first): runs
//! hold their keys ascending, so writing, merging and opening one fills its filter block after
//! block instead of missing the cache on every key.

/// Bits of filter per key: 2 bytes a key instead of the 16 an exact in-memory set needs.
pub(crate) const BITS_PER_KEY: u64 = 16;
/// Bits set per key, each taken from 9 bits of the key's low half.
const PROBES: u32 = 7;
/// 512 bits: one cache line.
const BLOCK_WORDS: usize = 8;

#[derive(Debug, Clone)]
pub(crate) struct KeyFilter {
    blocks: Vec<[u64; BLOCK_WORDS]>,
}

impl KeyFilter {
    /// An empty filter sized for `keys` keys.
    pub(crate) fn with_capacity(keys: u64) -> KeyFilter {
        let bits = keys.max(1) * BITS_PER_KEY;
        let blocks = bits.div_ceil(BLOCK_WORDS as u64 * 64) as usize;
        KeyFilter {
            blocks: vec![[0; BLOCK_WORDS]; blocks],
        }
    }

    fn block_of(&self, key: u128) -> usize {
        // Multiply-shift maps the high 64 bits onto the blocks without a division, keeping
        // their order.
        (((key >> 64) * self.blocks.len() as u128) >> 64) as usize
    }

    /// The (word, bit) of each probe.
    fn probes(key: u128) -> impl Iterator<Item = (usize, u32)> {
        let low = key as u64;
        (0..PROBES).map(move |i| {
            let position = ((low >> (i * 9)) & 511) as u32;
            ((position / 64) as usize, position % 64)
        })
    }

    pub(crate) fn insert(&mut self, key: u128) {
        let block = self.block_of(key);
        let words = &mut self.blocks[block];
        for (word, bit) in Self::probes(key) {
            words[word] |= 1 << bit;
        }
    }

    /// False: the key was never inserted. True: it probably was.
    pub(crate) fn may_contain(&self, key: u128) -> bool {
        let words = &self.blocks[self.block_of(key)];
        Self::probes(key).all(|(word, bit)| words[word] & (1 << bit) != 0)
    }

    /// Starts loading the block `key` falls in (see [`super::LiveKeys::prefetch`]).
    #[inline]
    pub(crate) fn prefetch(&self, key: u128) {
        if let Some(block) = self.blocks.get(self.block_of(key)) {
            super::live::prefetch(block);
        }
    }

    /// Heap bytes held.
    pub(crate) fn bytes(&self) -> usize {
        self.blocks.len() * BLOCK_WORDS * 8
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dedup::tests::keys;

    #[test]
    fn inserted_keys_are_always_found_and_absent_ones_rarely_are() {
        let inserted = keys(1, 100_000);
        let mut filter = KeyFilter::with_capacity(inserted.len() as u64);
        for key in &inserted {
            filter.insert(*key);
        }
        assert!(inserted.iter().all(|k| filter.may_contain(*k)));
        let absent = keys(2, 100_000);
        let false_positives = absent.iter().filter(|k| filter.may_contain(**k)).count();
        // Blocked, 16 bits a key, 7 probes: about 0.1–0.3 %.
        assert!(false_positives < 500, "{false_positives} false positives");
        assert_eq!(filter.bytes() as u64, 100_000 * BITS_PER_KEY / 8);
    }

    #[test]
    fn ascending_keys_fill_the_filter_block_after_block() {
        let mut sorted = keys(3, 10_000);
        sorted.sort_unstable();
        let filter = KeyFilter::with_capacity(sorted.len() as u64);
        let blocks: Vec<usize> = sorted.iter().map(|k| filter.block_of(*k)).collect();
        assert!(blocks.is_sorted(), "a run's keys would jump between blocks");
        assert_eq!(blocks.first(), Some(&0));
        assert_eq!(blocks.last(), Some(&(filter.blocks.len() - 1)));
    }

    #[test]
    fn an_empty_filter_holds_nothing() {
        let filter = KeyFilter::with_capacity(0);
        assert!(keys(3, 1_000).iter().all(|k| !filter.may_contain(*k)));
    }
}
