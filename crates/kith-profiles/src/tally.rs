//! What applying a set of events did to profiles, counted for whoever asked (an import, a merge).

use std::sync::atomic::{AtomicU64, Ordering};

/// The effect of one event on the profiles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProfileChange {
    /// None of its identifiers was known: a new profile.
    Created,
    /// It joined one existing profile and changed something there (an identifier or a trait).
    Updated,
    /// It joined two or more existing profiles into one.
    Merged,
    /// It would have joined existing profiles but a guard refused; the conflict is recorded.
    Conflict,
    /// It joined one existing profile and changed nothing.
    Unchanged,
    /// It carried no identifier, so it belongs to no profile.
    Unattributed,
}

/// Counts of [`ProfileChange`]s; shared between the writer of events and the unify thread.
#[derive(Debug, Default)]
pub struct ChangeTally {
    created: AtomicU64,
    updated: AtomicU64,
    merged: AtomicU64,
    conflict: AtomicU64,
    unchanged: AtomicU64,
    unattributed: AtomicU64,
}

/// A snapshot of a [`ChangeTally`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ChangeCounts {
    pub created: u64,
    pub updated: u64,
    pub merged: u64,
    pub conflict: u64,
    pub unchanged: u64,
    pub unattributed: u64,
}

impl ChangeTally {
    pub fn record(&self, change: ProfileChange) {
        let counter = match change {
            ProfileChange::Created => &self.created,
            ProfileChange::Updated => &self.updated,
            ProfileChange::Merged => &self.merged,
            ProfileChange::Conflict => &self.conflict,
            ProfileChange::Unchanged => &self.unchanged,
            ProfileChange::Unattributed => &self.unattributed,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn counts(&self) -> ChangeCounts {
        ChangeCounts {
            created: self.created.load(Ordering::Relaxed),
            updated: self.updated.load(Ordering::Relaxed),
            merged: self.merged.load(Ordering::Relaxed),
            conflict: self.conflict.load(Ordering::Relaxed),
            unchanged: self.unchanged.load(Ordering::Relaxed),
            unattributed: self.unattributed.load(Ordering::Relaxed),
        }
    }
}

impl std::ops::AddAssign for ChangeCounts {
    fn add_assign(&mut self, more: ChangeCounts) {
        self.created += more.created;
        self.updated += more.updated;
        self.merged += more.merged;
        self.conflict += more.conflict;
        self.unchanged += more.unchanged;
        self.unattributed += more.unattributed;
    }
}
