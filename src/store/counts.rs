//! Job counts kept as the state changes, so that `/status` and `/metrics` cost O(manifests
//! active), never O(jobs ever stored): per running manifest in memory, per ended manifest in
//! its record (written once, when it ends), and the sum of the ended ones as one total.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use crate::store::records::{JobV1, ManifestCounts, ManifestId};

/// Shared by every clone of a `Store`; a std mutex held only to add a few numbers.
#[derive(Debug, Default)]
pub struct Counters {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Manifests not ended (running, draining, or waiting on held jobs).
    active: HashMap<ManifestId, ManifestCounts>,
    /// The sum of every ended manifest's final counts.
    ended: ManifestCounts,
}

/// What status and metrics read: totals and the active manifests' counts.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CountsSnapshot {
    /// Every job ever stored, by state.
    pub totals: ManifestCounts,
    /// The manifests not ended, by id.
    pub active: Vec<(ManifestId, ManifestCounts)>,
}

impl Counters {
    /// Starts tracking an active manifest with these counts (registration, open, reopen).
    pub fn track(&self, mid: ManifestId, counts: ManifestCounts) {
        self.lock().active.insert(mid, counts);
    }

    /// Adds an ended manifest's final counts to the totals (at open).
    pub fn add_ended(&self, counts: &ManifestCounts) {
        self.lock().ended.add(counts);
    }

    /// The manifest ended: its counts leave the active set for the totals. Returns them.
    pub fn end(&self, mid: ManifestId) -> ManifestCounts {
        let mut inner = self.lock();
        let counts = inner.active.remove(&mid).unwrap_or_default();
        inner.ended.add(&counts);
        counts
    }

    /// An ended manifest runs again (replay): its final counts leave the totals.
    pub fn reopen(&self, mid: ManifestId, counts: ManifestCounts) {
        let mut inner = self.lock();
        inner.ended.sub(&counts);
        inner.active.insert(mid, counts);
    }

    /// A job changed from `old` to `new`.
    pub fn apply(&self, old: &JobV1, new: &JobV1) {
        let mut inner = self.lock();
        match inner.active.get_mut(&new.manifest) {
            Some(counts) => counts.apply(old, new),
            // A job of an ended manifest (an offline replay before `reopen`): keep the totals right.
            None => {
                let mut delta = ManifestCounts::default();
                delta.add_job(old);
                inner.ended.sub(&delta);
                let mut delta = ManifestCounts::default();
                delta.add_job(new);
                inner.ended.add(&delta);
            }
        }
    }

    /// The counts of one active manifest.
    pub fn of(&self, mid: ManifestId) -> Option<ManifestCounts> {
        self.lock().active.get(&mid).copied()
    }

    pub fn snapshot(&self) -> CountsSnapshot {
        let inner = self.lock();
        let mut totals = inner.ended;
        let mut active: Vec<(ManifestId, ManifestCounts)> =
            inner.active.iter().map(|(id, c)| (*id, *c)).collect();
        for (_, counts) in &active {
            totals.add(counts);
        }
        active.sort_unstable_by_key(|(id, _)| *id);
        CountsSnapshot { totals, active }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
