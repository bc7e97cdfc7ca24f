//! An in-process per-key, per-second counter (for limits that need not be shared
//! between replicas, such as new WebSocket connections per IP).

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;

/// Counts events per key in the current wall-clock second.
pub struct PerSecond<K> {
    limit: u32,
    counts: Mutex<HashMap<K, (u64, u32)>>,
}

impl<K: Eq + Hash> PerSecond<K> {
    /// `limit` events per key per second; 0 means unlimited.
    pub fn new(limit: u32) -> Self {
        Self {
            limit,
            counts: Mutex::new(HashMap::new()),
        }
    }

    pub fn limit(&self) -> u32 {
        self.limit
    }

    /// Counts one event for `key`; returns what is left this second, or `None`
    /// when over the limit. Always `Some` when unlimited.
    pub fn take(&self, key: K) -> Option<u32> {
        let second = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        self.take_at(key, second)
    }

    /// [`PerSecond::take`] at a given Unix second.
    pub fn take_at(&self, key: K, second: u64) -> Option<u32> {
        if self.limit == 0 {
            return Some(u32::MAX);
        }
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        if counts.len() > 10_000 {
            counts.retain(|_, (s, _)| *s == second);
        }
        let entry = counts.entry(key).or_insert((second, 0));
        if entry.0 != second {
            *entry = (second, 0);
        }
        entry.1 = entry.1.saturating_add(1);
        self.limit.checked_sub(entry.1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_per_key_and_second_and_refuses_over_the_limit() {
        let l = PerSecond::new(3);
        let taken: Vec<_> = (0..4).map(|_| l.take_at("a", 100)).collect();
        assert_eq!(taken, vec![Some(2), Some(1), Some(0), None]);
        assert_eq!(l.take_at("b", 100), Some(2), "keys are counted apart");
        assert_eq!(l.take_at("a", 101), Some(2), "a new second starts over");
    }

    #[test]
    fn zero_is_unlimited() {
        let l = PerSecond::new(0);
        assert!((0..1000).all(|_| l.take(1).is_some()));
    }
}
