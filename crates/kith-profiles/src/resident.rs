//! The per-identifier facts held in memory: those changed since the last persist, and the most
//! recently used others, up to a bound.
//!
//! Every identifier that ever carried a trait, a consent or a figure has facts, and the server
//! used to hold all of them for as long as it ran: about 2 KB a customer, 1.4 GiB of the 3.7 GiB
//! a server held at rest over fifty million events. `profiles.db` has each identifier's facts as
//! of the last persist, so memory only needs what is newer than that (dirty entries, never
//! evicted) and what is in use. Others are read back from `profiles.db` when an event or a lookup
//! needs them; the store evicts after each persist, when the changes it writes are committed, so
//! an identifier missing here always has its latest facts on disk.

use std::sync::atomic::{AtomicU64, Ordering};

use hashbrown::hash_map::EntryRef;
use hashbrown::{HashMap, HashSet};
use kith_identity::Identifier;

use crate::facts::IdentifierFacts;

/// Identifiers whose facts stay in memory unless configured otherwise: about 90 MB with the
/// six or seven traits an identifier usually carries.
pub const DEFAULT_RESIDENT_FACTS: usize = 100_000;

/// Eviction goes this far below the bound, so it runs once per many persists, not at each.
const EVICT_TO_PERCENT: usize = 90;

struct Entry {
    facts: IdentifierFacts,
    /// The cache's clock when last used; atomic so readers under a shared lock can record it.
    last_used: AtomicU64,
}

pub(crate) struct ResidentFacts {
    entries: HashMap<Identifier, Entry>,
    capacity: usize,
    clock: AtomicU64,
}

impl ResidentFacts {
    /// At least one entry is kept, so the identifier an event is being applied to is never the
    /// one evicted.
    pub(crate) fn new(capacity: usize) -> ResidentFacts {
        ResidentFacts {
            entries: HashMap::new(),
            capacity: capacity.max(1),
            clock: AtomicU64::new(0),
        }
    }

    fn tick(&self) -> u64 {
        self.clock.fetch_add(1, Ordering::Relaxed)
    }

    pub(crate) fn get(&self, identifier: &Identifier) -> Option<&IdentifierFacts> {
        let entry = self.entries.get(identifier)?;
        entry.last_used.store(self.tick(), Ordering::Relaxed);
        Some(&entry.facts)
    }

    pub(crate) fn contains(&self, identifier: &Identifier) -> bool {
        self.entries.contains_key(identifier)
    }

    /// The facts held for `identifier`, after holding what `load` gives when none are.
    pub(crate) fn get_or_try_load<E>(
        &mut self,
        identifier: &Identifier,
        load: impl FnOnce() -> Result<IdentifierFacts, E>,
    ) -> Result<&mut IdentifierFacts, E> {
        let now = self.tick();
        let entry = match self.entries.entry_ref(identifier) {
            EntryRef::Occupied(held) => held.into_mut(),
            EntryRef::Vacant(missing) => missing.insert(Entry {
                facts: load()?,
                last_used: AtomicU64::new(now),
            }),
        };
        *entry.last_used.get_mut() = now;
        Ok(&mut entry.facts)
    }

    pub(crate) fn iter_mut(&mut self) -> impl Iterator<Item = (&Identifier, &mut IdentifierFacts)> {
        self.entries
            .iter_mut()
            .map(|(identifier, entry)| (identifier, &mut entry.facts))
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// When more than the bound are held, drops the least recently used entries that are not
    /// in `dirty` until a tenth below it (dirty ones stay whatever their number: their changes
    /// are not on disk yet). Returns how many were dropped.
    pub(crate) fn evict_clean(&mut self, dirty: &HashSet<Identifier>) -> usize {
        if self.entries.len() <= self.capacity {
            return 0;
        }
        let target = self.capacity * EVICT_TO_PERCENT / 100;
        let mut clean: Vec<u64> = self
            .entries
            .iter()
            .filter(|(identifier, _)| !dirty.contains(*identifier))
            .map(|(_, entry)| entry.last_used.load(Ordering::Relaxed))
            .collect();
        let excess = (self.entries.len() - target).min(clean.len());
        if excess == 0 {
            return 0;
        }
        // Clock values are unique, so exactly the `excess` oldest are at or below the cut.
        let (_, cut, _) = clean.select_nth_unstable(excess - 1);
        let cut = *cut;
        let before = self.entries.len();
        self.entries.retain(|identifier, entry| {
            entry.last_used.load(Ordering::Relaxed) > cut || dirty.contains(identifier)
        });
        self.entries
            .shrink_to(self.capacity.max(self.entries.len()));
        before - self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use kith_identity::IdType;

    use super::*;

    fn id(n: usize) -> Identifier {
        Identifier::new(IdType::UserId, format!("user-{n}"))
    }

    fn facts(events: u64) -> IdentifierFacts {
        let mut facts = IdentifierFacts::default();
        facts.stats.event_count = events;
        facts
    }

    /// Holds `facts` for `identifier` unless something is held already.
    fn hold(resident: &mut ResidentFacts, identifier: Identifier, held: IdentifierFacts) {
        let loaded: Result<_, ()> = resident.get_or_try_load(&identifier, || Ok(held));
        assert!(loaded.is_ok());
    }

    #[test]
    fn nothing_is_evicted_within_the_bound() {
        let mut resident = ResidentFacts::new(3);
        for n in 0..3 {
            hold(&mut resident, id(n), facts(n as u64));
        }
        assert_eq!(resident.evict_clean(&HashSet::new()), 0);
        assert_eq!(resident.len(), 3);
    }

    #[test]
    fn the_least_recently_used_clean_entries_go_first_and_dirty_ones_stay() {
        let mut resident = ResidentFacts::new(10);
        for n in 0..20 {
            hold(&mut resident, id(n), facts(n as u64));
        }
        // Used again: 0 and 1 (read), 2 (changed). Dirty: 3 and 4, never used since.
        assert!(resident.get(&id(0)).is_some());
        assert!(resident.get(&id(1)).is_some());
        let changed: Result<_, ()> = resident.get_or_try_load(&id(2), || Ok(facts(100)));
        if let Ok(held) = changed {
            held.stats.event_count += 1;
        }
        let dirty: HashSet<Identifier> = [id(3), id(4)].into_iter().collect();
        // 20 held, bound 10: down to 9, keeping the two dirty ones.
        assert_eq!(resident.evict_clean(&dirty), 11);
        assert_eq!(resident.len(), 9);
        for kept in [0, 1, 2, 3, 4, 16, 17, 18, 19] {
            assert!(resident.contains(&id(kept)), "user-{kept} was evicted");
        }
        assert_eq!(resident.get(&id(2)).map(|f| f.stats.event_count), Some(3));
    }

    #[test]
    fn dirty_entries_stay_even_beyond_the_bound() {
        let mut resident = ResidentFacts::new(2);
        let dirty: HashSet<Identifier> = (0..5).map(id).collect();
        for n in 0..5 {
            hold(&mut resident, id(n), facts(0));
        }
        assert_eq!(resident.evict_clean(&dirty), 0);
        assert_eq!(resident.len(), 5);
    }

    #[test]
    fn held_facts_are_returned_and_load_runs_only_for_missing_ones() {
        let mut resident = ResidentFacts::new(2);
        hold(&mut resident, id(1), facts(1));
        let again: Result<_, &str> =
            resident.get_or_try_load(&id(1), || Err("loaded although held"));
        assert_eq!(again.map(|f| f.stats.event_count), Ok(1));
        let failed: Result<_, &str> = resident.get_or_try_load(&id(2), || Err("disk error"));
        assert_eq!(failed.map(|f| f.stats.event_count), Err("disk error"));
        assert!(!resident.contains(&id(2)), "a failed load holds nothing");
        assert_eq!(resident.len(), 1);
    }
}
