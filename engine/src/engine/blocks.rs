//! The KV block manager: which cache blocks each sequence holds, shared
//! full blocks found by content hash (automatic prefix caching), and the
//! free blocks, reused least-recently-freed first so cached prefixes live
//! as long as possible.
//!
//! A full block's key covers its token ids, its parent block's hash and the
//! LoRA adapter, so a block is reused only where the whole prefix up to it
//! and the adapter are the same.

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};

/// Content hash of a full block (chained through its parent).
pub type BlockHash = u64;

/// The hash chain of the full blocks of `tokens` (the trailing partial
/// block is left out).
pub fn full_block_hashes(
    tokens: &[u32],
    block_size: usize,
    adapter: Option<&str>,
) -> Vec<BlockHash> {
    let mut hashes = Vec::with_capacity(tokens.len() / block_size);
    let mut parent = 0;
    for chunk in tokens.chunks_exact(block_size) {
        parent = block_hash(parent, chunk, adapter);
        hashes.push(parent);
    }
    hashes
}

/// The hash of one full block given its parent's hash (0 for the first).
pub fn block_hash(parent: BlockHash, tokens: &[u32], adapter: Option<&str>) -> BlockHash {
    let mut h = DefaultHasher::new();
    parent.hash(&mut h);
    tokens.hash(&mut h);
    adapter.hash(&mut h);
    h.finish()
}

/// Counters of prefix-cache lookups, in tokens.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PrefixCacheCounters {
    /// Prompt tokens looked up.
    pub queries: u64,
    /// Of those, tokens found cached.
    pub hits: u64,
}

pub struct BlockManager {
    block_size: usize,
    ref_counts: Vec<u32>,
    /// The hash a block is registered under, if it is a cached full block.
    hash_of: Vec<Option<BlockHash>>,
    cached: HashMap<BlockHash, u32>,
    /// Free blocks by the tick they were freed at (oldest first).
    free: BTreeMap<u64, u32>,
    /// The tick of each free block (None while in use).
    free_tick: Vec<Option<u64>>,
    tick: u64,
    prefix_caching: bool,
    counters: PrefixCacheCounters,
}

impl BlockManager {
    pub fn new(num_blocks: usize, block_size: usize, prefix_caching: bool) -> Self {
        let mut m = BlockManager {
            block_size,
            ref_counts: vec![0; num_blocks],
            hash_of: vec![None; num_blocks],
            cached: HashMap::new(),
            free: BTreeMap::new(),
            free_tick: vec![None; num_blocks],
            tick: 0,
            prefix_caching,
            counters: PrefixCacheCounters::default(),
        };
        for b in 0..num_blocks as u32 {
            m.push_free(b);
        }
        m
    }

    pub fn block_size(&self) -> usize {
        self.block_size
    }

    pub fn num_blocks(&self) -> usize {
        self.ref_counts.len()
    }

    /// Blocks that can be handed out now (free, cached or not).
    pub fn num_free(&self) -> usize {
        self.free.len()
    }

    /// Blocks held by at least one sequence.
    pub fn num_used(&self) -> usize {
        self.num_blocks() - self.num_free()
    }

    pub fn ref_count(&self, block: u32) -> u32 {
        self.ref_counts[block as usize]
    }

    pub fn prefix_caching(&self) -> bool {
        self.prefix_caching
    }

    pub fn counters(&self) -> PrefixCacheCounters {
        self.counters
    }

    /// Blocks needed to hold `tokens` tokens.
    pub fn blocks_for(&self, tokens: usize) -> usize {
        tokens.div_ceil(self.block_size)
    }

    /// The cached blocks holding the longest prefix of `hashes`. Nothing is
    /// taken; see [`BlockManager::take_cached`].
    pub fn lookup(&self, hashes: &[BlockHash]) -> Vec<u32> {
        if !self.prefix_caching {
            return Vec::new();
        }
        hashes
            .iter()
            .map_while(|h| self.cached.get(h).copied())
            .collect()
    }

    /// Records a prefix lookup of `queried` prompt tokens, `hit` of them
    /// found cached.
    pub fn record_lookup(&mut self, queried: usize, hit: usize) {
        self.counters.queries += queried as u64;
        self.counters.hits += hit as u64;
    }

    /// How many of `blocks` (cached blocks from a lookup) are free now,
    /// i.e. taking them uses up free blocks.
    pub fn free_among(&self, blocks: &[u32]) -> usize {
        blocks
            .iter()
            .filter(|&&b| self.ref_counts[b as usize] == 0)
            .count()
    }

    /// Takes a reference to each of `blocks` (a lookup's result).
    pub fn take_cached(&mut self, blocks: &[u32]) {
        for &b in blocks {
            if self.ref_counts[b as usize] == 0 {
                self.pop_free(b);
            }
            self.ref_counts[b as usize] += 1;
        }
    }

    /// `n` fresh blocks, or `None` (and nothing taken) when fewer are free.
    /// A cached free block handed out loses its place in the cache.
    pub fn allocate(&mut self, n: usize) -> Option<Vec<u32>> {
        if n > self.free.len() {
            return None;
        }
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let (_, b) = self.free.pop_first()?;
            self.free_tick[b as usize] = None;
            if let Some(h) = self.hash_of[b as usize].take() {
                if self.cached.get(&h) == Some(&b) {
                    self.cached.remove(&h);
                }
            }
            self.ref_counts[b as usize] = 1;
            out.push(b);
        }
        Some(out)
    }

    /// Registers `block`, now full, under `hash` so later sequences can
    /// share it. A block already cached under that hash stays the one
    /// found.
    pub fn register(&mut self, block: u32, hash: BlockHash) {
        if !self.prefix_caching || self.hash_of[block as usize].is_some() {
            return;
        }
        if let std::collections::hash_map::Entry::Vacant(e) = self.cached.entry(hash) {
            e.insert(block);
            self.hash_of[block as usize] = Some(hash);
        }
    }

    /// Drops a sequence's references to `blocks`. Blocks nobody holds any
    /// more become free; the tail of a sequence is evicted before its head.
    pub fn release(&mut self, blocks: &[u32]) {
        for &b in blocks.iter().rev() {
            let rc = &mut self.ref_counts[b as usize];
            debug_assert!(*rc > 0, "block {b} released more often than taken");
            *rc = rc.saturating_sub(1);
            if *rc == 0 {
                self.push_free(b);
            }
        }
    }

    /// Forgets every cached hash (after a failed step whose blocks may
    /// not hold what their hashes say).
    pub fn reset_prefix_cache(&mut self) {
        self.cached.clear();
        for h in &mut self.hash_of {
            *h = None;
        }
    }

    fn push_free(&mut self, b: u32) {
        self.tick += 1;
        self.free.insert(self.tick, b);
        self.free_tick[b as usize] = Some(self.tick);
    }

    fn pop_free(&mut self, b: u32) {
        if let Some(t) = self.free_tick[b as usize].take() {
            self.free.remove(&t);
        }
    }
}
