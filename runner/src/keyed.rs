//! Per-key state with a bound: the least recently seen key is evicted when
//! `max_keys` is reached, so memory stays flat however many keys arrive.
//! Used by every stateful transform and by the detectors.

use std::num::NonZeroUsize;

use lru::LruCache;

/// State of type `T` for each key, at most `max_keys` of them.
pub struct Keyed<T> {
    cache: LruCache<String, T, foldhash::fast::RandomState>,
    evicted: u64,
}

impl<T> Keyed<T> {
    /// Room for `max_keys` keys (at least one).
    pub fn new(max_keys: usize) -> Self {
        let cap = NonZeroUsize::new(max_keys.max(1)).unwrap_or(NonZeroUsize::MIN);
        Keyed { cache: LruCache::with_hasher(cap, foldhash::fast::RandomState::default()), evicted: 0 }
    }

    /// The state of `key`, created with `init` if absent (evicting the least
    /// recently used key when full).
    #[inline]
    pub fn get(&mut self, key: &str, init: impl FnOnce() -> T) -> &mut T {
        if self.cache.len() == self.cache.cap().get() && !self.cache.contains(key) {
            self.evicted += 1;
        }
        self.cache.get_or_insert_mut_ref(key, init)
    }

    /// Keys currently held.
    pub fn len(&self) -> usize {
        self.cache.len()
    }

    /// Whether no key is held.
    pub fn is_empty(&self) -> bool {
        self.cache.is_empty()
    }

    /// Keys evicted so far.
    pub fn evicted(&self) -> u64 {
        self.evicted
    }

    /// Every key's state, least recently used last.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (&String, &mut T)> {
        self.cache.iter_mut()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evicts_the_least_recently_used_key() {
        let mut k = Keyed::new(2);
        *k.get("a", || 0) += 1;
        *k.get("b", || 0) += 1;
        *k.get("a", || 0) += 1; // a is now the most recent
        *k.get("c", || 0) += 1; // evicts b
        assert_eq!(k.len(), 2);
        assert_eq!(k.evicted(), 1);
        assert_eq!(*k.get("a", || 100), 2);
        assert_eq!(*k.get("b", || 100), 100, "b was evicted and starts afresh");
    }
}
