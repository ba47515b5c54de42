//! The policy of a replica's adapter cache, apart from loading: which
//! adapters are loaded (in least-recently-used order) or being loaded, how
//! many requests hold each, and what a request for an adapter must do.
//! At most `capacity` adapters are loaded or loading; an adapter a request
//! holds is never evicted; when every place is held, a request waits.
//! Serve's `@serve.multiplexed` LRU, with vLLM's rule that adapters in use
//! stay.

use std::collections::HashMap;

/// One adapter's place in the table.
#[derive(Debug)]
struct Entry<T> {
    /// Unique for the life of the table: a reload is a new entry.
    id: u64,
    /// Requests holding it (running, waiting in the engine, or waiting
    /// for it to load).
    users: usize,
    last_used: u64,
    /// `None` while loading.
    value: Option<T>,
    /// Unload once nobody holds it (an unload asked while in use).
    unload_when_idle: bool,
}

/// What a request for an adapter must do next. In every case but `Full`
/// the request now holds the entry (release it with its id).
#[derive(Debug, PartialEq, Eq)]
pub enum Admit<T> {
    /// Loaded: use it.
    Ready { id: u64, value: T },
    /// Another request is loading it: wait for that load.
    Loading { id: u64 },
    /// Not there: this request loads it, after `evicted` were dropped to
    /// make room.
    Load { id: u64, evicted: Vec<String> },
    /// Every place is held by requests: wait for one to be released.
    Full,
}

/// The adapters of one replica.
#[derive(Debug)]
pub struct AdapterTable<T> {
    capacity: usize,
    entries: HashMap<String, Entry<T>>,
    clock: u64,
    next_id: u64,
}

impl<T: Clone> AdapterTable<T> {
    /// A table of at most `capacity` adapters (at least one).
    pub fn new(capacity: usize) -> Self {
        AdapterTable {
            capacity: capacity.max(1),
            entries: HashMap::new(),
            clock: 0,
            next_id: 1,
        }
    }

    fn tick(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }

    /// A request for `name`.
    pub fn admit(&mut self, name: &str) -> Admit<T> {
        let now = self.tick();
        if let Some(e) = self.entries.get_mut(name) {
            e.users += 1;
            e.last_used = now;
            e.unload_when_idle = false;
            return match &e.value {
                Some(v) => Admit::Ready {
                    id: e.id,
                    value: v.clone(),
                },
                None => Admit::Loading { id: e.id },
            };
        }
        let mut evicted = Vec::new();
        while self.entries.len() >= self.capacity {
            let lru = self
                .entries
                .iter()
                .filter(|(_, e)| e.users == 0 && e.value.is_some())
                .min_by_key(|(_, e)| e.last_used)
                .map(|(n, _)| n.clone());
            match lru {
                Some(n) => {
                    self.entries.remove(&n);
                    evicted.push(n);
                }
                None => {
                    // Nothing evictable: undo nothing (nothing was
                    // evicted unless there was room to gain).
                    debug_assert!(evicted.is_empty());
                    return Admit::Full;
                }
            }
        }
        let id = self.next_id;
        self.next_id += 1;
        self.entries.insert(
            name.to_string(),
            Entry {
                id,
                users: 1,
                last_used: now,
                value: None,
                unload_when_idle: false,
            },
        );
        Admit::Load { id, evicted }
    }

    /// The load of entry `id` of `name` finished: with a value it is
    /// loaded; with none it failed and is dropped (its holders get the
    /// error from the loader and release nothing more).
    pub fn finish_load(&mut self, name: &str, id: u64, value: Option<T>) {
        let Some(e) = self.entries.get_mut(name).filter(|e| e.id == id) else {
            return;
        };
        match value {
            Some(v) => e.value = Some(v),
            None => {
                self.entries.remove(name);
            }
        }
    }

    /// A request let go of entry `id` of `name`; returns true when that
    /// unloaded it (an unload was asked while it was in use).
    pub fn release(&mut self, name: &str, id: u64) -> bool {
        let Some(e) = self.entries.get_mut(name).filter(|e| e.id == id) else {
            return false;
        };
        e.users = e.users.saturating_sub(1);
        if e.users == 0 && e.unload_when_idle && e.value.is_some() {
            self.entries.remove(name);
            return true;
        }
        false
    }

    /// Unloads `name` now if nobody holds it (true), else once the last
    /// holder lets go (false). `None`: it is not loaded.
    pub fn unload(&mut self, name: &str) -> Option<bool> {
        let e = self.entries.get_mut(name)?;
        if e.users == 0 && e.value.is_some() {
            self.entries.remove(name);
            Some(true)
        } else {
            e.unload_when_idle = true;
            Some(false)
        }
    }

    /// Drops `name` whoever holds it (a reload replaces it): holders keep
    /// what they have, and their releases no longer count. False when it
    /// was not there.
    pub fn forget(&mut self, name: &str) -> bool {
        self.entries.remove(name).is_some()
    }

    /// Loaded adapters, least recently used first.
    pub fn loaded(&self) -> Vec<String> {
        let mut v: Vec<(&String, u64)> = self
            .entries
            .iter()
            .filter(|(_, e)| e.value.is_some())
            .map(|(n, e)| (n, e.last_used))
            .collect();
        v.sort_by_key(|(_, t)| *t);
        v.into_iter().map(|(n, _)| n.clone()).collect()
    }

    /// Adapters being loaded.
    pub fn loading(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .entries
            .iter()
            .filter(|(_, e)| e.value.is_none())
            .map(|(n, _)| n.clone())
            .collect();
        v.sort();
        v
    }

    /// Requests holding `name`.
    pub fn users(&self, name: &str) -> usize {
        self.entries.get(name).map_or(0, |e| e.users)
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn load(t: &mut AdapterTable<u32>, name: &str, v: u32) -> (u64, Vec<String>) {
        match t.admit(name) {
            Admit::Load { id, evicted } => {
                t.finish_load(name, id, Some(v));
                (id, evicted)
            }
            other => panic!("{name}: {other:?}"),
        }
    }

    #[test]
    fn least_recently_used_idle_adapters_make_room() {
        let mut t = AdapterTable::new(2);
        let (a, _) = load(&mut t, "a", 1);
        t.release("a", a);
        let (b, _) = load(&mut t, "b", 2);
        t.release("b", b);
        // a, b, c, a: c evicts a (least recent), a evicts b.
        let (c, evicted) = load(&mut t, "c", 3);
        assert_eq!(evicted, ["a"]);
        t.release("c", c);
        let (a2, evicted) = load(&mut t, "a", 4);
        assert_eq!(evicted, ["b"]);
        assert_ne!(a2, a, "a reload is a new entry");
        assert_eq!(t.loaded(), ["c", "a"]);
        // A hit refreshes recency.
        t.release("a", a2);
        assert!(matches!(t.admit("c"), Admit::Ready { value: 3, .. }));
        t.release("c", c);
        let (_, evicted) = load(&mut t, "d", 5);
        assert_eq!(evicted, ["a"]);
    }

    #[test]
    fn adapters_in_use_are_never_evicted() {
        let mut t = AdapterTable::new(2);
        let (a, _) = load(&mut t, "a", 1);
        let (b, _) = load(&mut t, "b", 2);
        // Both held: a third waits, however often it asks.
        for _ in 0..100 {
            assert_eq!(t.admit("c"), Admit::Full);
        }
        assert_eq!(t.loaded(), ["a", "b"]);
        t.release("b", b);
        let (_, evicted) = load(&mut t, "c", 3);
        assert_eq!(evicted, ["b"]);
        assert_eq!(t.users("a"), 1);
        t.release("a", a);
        assert_eq!(t.users("a"), 0);
    }

    #[test]
    fn loading_entries_are_shared_and_failed_loads_dropped() {
        let mut t: AdapterTable<u32> = AdapterTable::new(2);
        let Admit::Load { id, .. } = t.admit("a") else {
            panic!()
        };
        // A second request for it waits for the same load.
        assert_eq!(t.admit("a"), Admit::Loading { id });
        assert_eq!(t.loading(), ["a"]);
        assert_eq!(t.users("a"), 2);
        // A loading entry is never evicted.
        let Admit::Load { id: b, .. } = t.admit("b") else {
            panic!()
        };
        assert_eq!(t.admit("c"), Admit::Full);
        t.finish_load("a", id, None);
        assert!(t.loading() == ["b"] && t.loaded().is_empty());
        // Releases of the failed entry change nothing.
        assert!(!t.release("a", id));
        t.finish_load("b", b, Some(7));
        assert_eq!(t.loaded(), ["b"]);
        // A stale id (an older load of the same name) is ignored.
        t.finish_load("b", id, None);
        assert_eq!(t.loaded(), ["b"]);
    }

    #[test]
    fn unloading_waits_for_the_last_holder() {
        let mut t = AdapterTable::new(4);
        let (a, _) = load(&mut t, "a", 1);
        assert_eq!(t.unload("a"), Some(false));
        assert_eq!(t.unload("zzz"), None);
        assert!(t.release("a", a));
        assert!(t.loaded().is_empty());
        let (b, _) = load(&mut t, "b", 2);
        t.release("b", b);
        assert_eq!(t.unload("b"), Some(true));
        // A request after an unload was asked keeps it.
        let (c, _) = load(&mut t, "c", 3);
        assert_eq!(t.unload("c"), Some(false));
        assert!(matches!(t.admit("c"), Admit::Ready { .. }));
        assert!(!t.release("c", c));
        assert!(!t.release("c", c));
        assert_eq!(t.loaded(), ["c"]);
        // A forgotten entry's holders release nothing of its successor.
        let Admit::Ready { id: c1, .. } = t.admit("c") else {
            panic!()
        };
        assert!(t.forget("c"));
        let (c2, _) = load(&mut t, "c", 9);
        assert!(!t.release("c", c1));
        assert_eq!(t.users("c"), 1);
        t.release("c", c2);
        assert_eq!(t.users("c"), 0);
    }
}
