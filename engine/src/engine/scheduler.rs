//! The scheduler: which sequences run in the next step and how many of
//! their tokens, under vLLM's rules.
//!
//! Each step has a token budget (`max_num_batched_tokens`). Running
//! sequences are served first (a decode token each, or the next chunk of a
//! prompt still being prefilled), then waiting ones are admitted while the
//! budget, `max_num_seqs` and the free KV blocks allow. A prompt longer than
//! what is left of the budget is prefilled in chunks over several steps
//! (chunked prefill). When a running sequence needs a block and none is
//! free, the newest running sequence (the lowest priority one under the
//! `priority` policy) is preempted: its blocks are released and it goes
//! back to the front of the waiting queue, to be recomputed from its prompt
//! and the tokens generated so far. No new sequence is admitted in a step
//! that preempted one.

use super::blocks::{block_hash, full_block_hashes, BlockHash, BlockManager};
use std::collections::{HashMap, VecDeque};

/// A sequence's id inside the engine.
pub type SeqId = u64;

/// How waiting sequences are ordered.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SchedulingPolicy {
    /// First come, first served.
    #[default]
    Fcfs,
    /// Lower `priority` first, then arrival order; the lowest-priority
    /// running sequence is the one preempted.
    Priority,
}

impl std::str::FromStr for SchedulingPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "fcfs" => Ok(SchedulingPolicy::Fcfs),
            "priority" => Ok(SchedulingPolicy::Priority),
            other => Err(format!(
                "unknown scheduling_policy '{other}' (expected 'fcfs' or 'priority')"
            )),
        }
    }
}

/// The scheduler's limits.
#[derive(Clone, Debug)]
pub struct SchedulerConfig {
    pub max_num_seqs: usize,
    pub max_num_batched_tokens: usize,
    pub enable_chunked_prefill: bool,
    pub policy: SchedulingPolicy,
}

/// What the scheduler knows of a sequence.
#[derive(Clone, Debug)]
pub struct SeqState {
    pub id: SeqId,
    /// Prompt followed by the tokens generated so far.
    pub tokens: Vec<u32>,
    pub prompt_len: usize,
    /// Tokens whose K/V are in the cache (or being written this step).
    pub num_computed: usize,
    pub blocks: Vec<u32>,
    /// Hashes of the full blocks registered so far (a prefix of `blocks`).
    pub block_hashes: Vec<BlockHash>,
    pub adapter: Option<String>,
    pub priority: i32,
    /// Admission order (ties under the priority policy).
    pub arrival: u64,
    /// Prompt tokens found in the prefix cache when first scheduled.
    pub cached_prompt_tokens: Option<usize>,
    pub preemptions: u32,
}

impl SeqState {
    pub fn new(id: SeqId, prompt: Vec<u32>, adapter: Option<String>, priority: i32) -> Self {
        SeqState {
            id,
            prompt_len: prompt.len(),
            tokens: prompt,
            num_computed: 0,
            blocks: Vec::new(),
            block_hashes: Vec::new(),
            adapter,
            priority,
            arrival: 0,
            cached_prompt_tokens: None,
            preemptions: 0,
        }
    }

    fn order_key(&self) -> (i32, u64) {
        (self.priority, self.arrival)
    }
}

/// One sequence's share of a step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Scheduled {
    pub id: SeqId,
    /// Position of the first token computed this step.
    pub start: usize,
    pub len: usize,
    /// Whether this step computes the sequence's last known token, so the
    /// next one is sampled from its logits.
    pub sample: bool,
}

/// The plan for one step.
#[derive(Clone, Debug, Default)]
pub struct Schedule {
    pub seqs: Vec<Scheduled>,
    pub preempted: Vec<SeqId>,
}

impl Schedule {
    pub fn num_tokens(&self) -> usize {
        self.seqs.iter().map(|s| s.len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.seqs.is_empty()
    }
}

pub struct Scheduler {
    cfg: SchedulerConfig,
    blocks: BlockManager,
    seqs: HashMap<SeqId, SeqState>,
    running: Vec<SeqId>,
    waiting: VecDeque<SeqId>,
    next_arrival: u64,
    preemptions: u64,
}

impl Scheduler {
    pub fn new(cfg: SchedulerConfig, blocks: BlockManager) -> Self {
        Scheduler {
            cfg,
            blocks,
            seqs: HashMap::new(),
            running: Vec::new(),
            waiting: VecDeque::new(),
            next_arrival: 0,
            preemptions: 0,
        }
    }

    pub fn config(&self) -> &SchedulerConfig {
        &self.cfg
    }

    pub fn blocks(&self) -> &BlockManager {
        &self.blocks
    }

    pub fn blocks_mut(&mut self) -> &mut BlockManager {
        &mut self.blocks
    }

    pub fn num_running(&self) -> usize {
        self.running.len()
    }

    pub fn num_waiting(&self) -> usize {
        self.waiting.len()
    }

    pub fn has_work(&self) -> bool {
        !self.running.is_empty() || !self.waiting.is_empty()
    }

    pub fn preemptions(&self) -> u64 {
        self.preemptions
    }

    pub fn seq(&self, id: SeqId) -> Option<&SeqState> {
        self.seqs.get(&id)
    }

    pub fn seqs(&self) -> impl Iterator<Item = &SeqState> {
        self.seqs.values()
    }

    pub fn running(&self) -> &[SeqId] {
        &self.running
    }

    pub fn waiting(&self) -> &VecDeque<SeqId> {
        &self.waiting
    }

    /// Queues a new sequence.
    pub fn add(&mut self, mut seq: SeqState) {
        seq.arrival = self.next_arrival;
        self.next_arrival += 1;
        let id = seq.id;
        self.seqs.insert(id, seq);
        self.enqueue_waiting(id, false);
    }

    /// Appends a sampled token to a sequence (computed in a later step).
    pub fn append_token(&mut self, id: SeqId, token: u32) {
        if let Some(s) = self.seqs.get_mut(&id) {
            s.tokens.push(token);
        }
    }

    /// Removes a sequence (finished or aborted) and releases its blocks.
    pub fn remove(&mut self, id: SeqId) -> Option<SeqState> {
        let seq = self.seqs.remove(&id)?;
        self.running.retain(|&r| r != id);
        self.waiting.retain(|&w| w != id);
        self.blocks.release(&seq.blocks);
        Some(seq)
    }

    /// Plans the next step.
    pub fn schedule(&mut self) -> Schedule {
        let mut plan = Schedule::default();
        let mut budget = self.cfg.max_num_batched_tokens;
        let mut i = 0;
        while i < self.running.len() && budget > 0 {
            let id = self.running[i];
            let Some(seq) = self.seqs.get(&id) else {
                self.running.remove(i);
                continue;
            };
            let n = (seq.tokens.len() - seq.num_computed).min(budget);
            if n == 0 {
                i += 1;
                continue;
            }
            let end = seq.num_computed + n;
            let need = self.blocks.blocks_for(end).saturating_sub(seq.blocks.len());
            let new_blocks = loop {
                if let Some(b) = self.blocks.allocate(need) {
                    break Some(b);
                }
                let Some(&victim) = self.running.last() else {
                    break None;
                };
                self.preempt(victim);
                plan.preempted.push(victim);
                if victim == id {
                    break None;
                }
            };
            let Some(new_blocks) = new_blocks else { break };
            plan.seqs.push(self.advance(id, new_blocks, n, &[]));
            budget -= n;
            i += 1;
        }
        if plan.preempted.is_empty() {
            self.admit_waiting(&mut plan, budget);
        }
        plan
    }

    fn admit_waiting(&mut self, plan: &mut Schedule, mut budget: usize) {
        let bs = self.blocks.block_size();
        while budget > 0 && self.running.len() < self.cfg.max_num_seqs {
            let Some(&id) = self.waiting.front() else {
                break;
            };
            let Some(seq) = self.seqs.get(&id) else {
                self.waiting.pop_front();
                continue;
            };
            // The last token is always computed, so its logits exist.
            let lookup_len = seq.tokens.len() - 1;
            let hashes = if self.blocks.prefix_caching() {
                full_block_hashes(&seq.tokens[..lookup_len], bs, seq.adapter.as_deref())
            } else {
                Vec::new()
            };
            let hits = self.blocks.lookup(&hashes);
            let computed = hits.len() * bs;
            let want = seq.tokens.len() - computed;
            if !self.cfg.enable_chunked_prefill && want > budget {
                break;
            }
            let n = want.min(budget);
            let fresh = self.blocks.blocks_for(computed + n) - hits.len();
            if fresh + self.blocks.free_among(&hits) > self.blocks.num_free() {
                break;
            }
            self.blocks.take_cached(&hits);
            let Some(new_blocks) = self.blocks.allocate(fresh) else {
                self.blocks.release(&hits);
                break;
            };
            self.blocks.record_lookup(lookup_len, computed);
            self.waiting.pop_front();
            if let Some(seq) = self.seqs.get_mut(&id) {
                seq.blocks = hits.clone();
                seq.block_hashes = hashes[..hits.len()].to_vec();
                seq.num_computed = computed;
                seq.cached_prompt_tokens.get_or_insert(computed);
            }
            self.insert_running(id);
            plan.seqs.push(self.advance(id, new_blocks, n, &hashes));
            budget -= n;
        }
    }

    /// Gives `id` its new blocks, registers the blocks this step fills
    /// (`known`: hashes of its leading full blocks already computed by the
    /// prefix lookup) and moves its computed mark `n` tokens on.
    fn advance(
        &mut self,
        id: SeqId,
        new_blocks: Vec<u32>,
        n: usize,
        known: &[BlockHash],
    ) -> Scheduled {
        let bs = self.blocks.block_size();
        let Some(seq) = self.seqs.get_mut(&id) else {
            self.blocks.release(&new_blocks);
            return Scheduled {
                id,
                start: 0,
                len: 0,
                sample: false,
            };
        };
        seq.blocks.extend(new_blocks);
        let start = seq.num_computed;
        seq.num_computed += n;
        let full = if self.blocks.prefix_caching() {
            seq.num_computed / bs
        } else {
            0
        };
        while seq.block_hashes.len() < full {
            let i = seq.block_hashes.len();
            let h = match known.get(i) {
                Some(&h) => h,
                None => {
                    let parent = if i == 0 { 0 } else { seq.block_hashes[i - 1] };
                    block_hash(
                        parent,
                        &seq.tokens[i * bs..(i + 1) * bs],
                        seq.adapter.as_deref(),
                    )
                }
            };
            self.blocks.register(seq.blocks[i], h);
            seq.block_hashes.push(h);
        }
        Scheduled {
            id,
            start,
            len: n,
            sample: seq.num_computed == seq.tokens.len(),
        }
    }

    fn preempt(&mut self, id: SeqId) {
        self.running.retain(|&r| r != id);
        if let Some(seq) = self.seqs.get_mut(&id) {
            self.blocks.release(&seq.blocks);
            seq.blocks.clear();
            seq.block_hashes.clear();
            seq.num_computed = 0;
            seq.preemptions += 1;
        }
        self.preemptions += 1;
        self.enqueue_waiting(id, true);
    }

    fn enqueue_waiting(&mut self, id: SeqId, front: bool) {
        match self.cfg.policy {
            SchedulingPolicy::Fcfs => {
                if front {
                    self.waiting.push_front(id)
                } else {
                    self.waiting.push_back(id)
                }
            }
            SchedulingPolicy::Priority => {
                let pos = self.ordered_position(id, self.waiting.iter());
                self.waiting.insert(pos, id);
            }
        }
    }

    fn insert_running(&mut self, id: SeqId) {
        match self.cfg.policy {
            SchedulingPolicy::Fcfs => self.running.push(id),
            SchedulingPolicy::Priority => {
                let pos = self.ordered_position(id, self.running.iter());
                self.running.insert(pos, id);
            }
        }
    }

    /// Where `id` goes in `queue` ordered by (priority, arrival).
    fn ordered_position<'a>(&self, id: SeqId, queue: impl Iterator<Item = &'a SeqId>) -> usize {
        let key = self.seqs.get(&id).map(SeqState::order_key);
        let mut len = 0;
        for (i, q) in queue.enumerate() {
            if self.seqs.get(q).map(SeqState::order_key) > key {
                return i;
            }
            len = i + 1;
        }
        len
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    //! The scheduler step on hand-made queues: no model, only queue state
    //! and block availability decide the plan.
    use super::*;

    fn scheduler(num_blocks: usize, budget: usize, max_seqs: usize, caching: bool) -> Scheduler {
        Scheduler::new(
            SchedulerConfig {
                max_num_seqs: max_seqs,
                max_num_batched_tokens: budget,
                enable_chunked_prefill: true,
                policy: SchedulingPolicy::Fcfs,
            },
            BlockManager::new(num_blocks, 4, caching),
        )
    }

    fn prompt(id: SeqId, len: usize) -> SeqState {
        SeqState::new(
            id,
            (0..len as u32).map(|t| t + 100 * id as u32).collect(),
            None,
            0,
        )
    }

    fn shape(plan: &Schedule) -> Vec<(SeqId, usize, usize, bool)> {
        plan.seqs
            .iter()
            .map(|s| (s.id, s.start, s.len, s.sample))
            .collect()
    }

    #[test]
    fn running_decodes_come_first_then_waiting_prompts_fill_the_budget() {
        let mut s = scheduler(16, 8, 8, false);
        s.add(prompt(1, 3));
        s.add(prompt(2, 3));
        assert_eq!(shape(&s.schedule()), [(1, 0, 3, true), (2, 0, 3, true)]);
        s.append_token(1, 7);
        s.append_token(2, 7);
        s.add(prompt(3, 10));
        // Two decode tokens, then 6 of the new prompt's 10 (chunked).
        assert_eq!(
            shape(&s.schedule()),
            [(1, 3, 1, true), (2, 3, 1, true), (3, 0, 6, false)]
        );
        assert_eq!(s.seq(3).map(|q| q.blocks.len()), Some(2));
    }

    #[test]
    fn a_long_prompt_is_prefilled_in_chunks_and_samples_only_at_its_end() {
        let mut s = scheduler(16, 8, 8, false);
        s.add(prompt(1, 20));
        assert_eq!(shape(&s.schedule()), [(1, 0, 8, false)]);
        assert_eq!(shape(&s.schedule()), [(1, 8, 8, false)]);
        assert_eq!(shape(&s.schedule()), [(1, 16, 4, true)]);
        assert_eq!(s.seq(1).map(|q| q.blocks.len()), Some(5));
    }

    #[test]
    fn max_num_seqs_holds_the_rest_back() {
        let mut s = scheduler(16, 64, 2, false);
        for id in 1..=3 {
            s.add(prompt(id, 2));
        }
        assert_eq!(shape(&s.schedule()), [(1, 0, 2, true), (2, 0, 2, true)]);
        assert_eq!((s.num_running(), s.num_waiting()), (2, 1));
        s.remove(1);
        assert_eq!(shape(&s.schedule()), [(3, 0, 2, true)]);
    }

    #[test]
    fn out_of_blocks_the_newest_running_sequence_is_preempted() {
        // 3 blocks of 4 tokens; two sequences of 4 tokens hold 2 of them.
        let mut s = scheduler(3, 64, 8, false);
        s.add(prompt(1, 4));
        s.add(prompt(2, 4));
        assert_eq!(s.schedule().seqs.len(), 2);
        s.append_token(1, 9);
        s.append_token(2, 9);
        // Each decode needs a fifth slot (a new block): one is free, so
        // sequence 1 gets it and sequence 2 is preempted to make room.
        let plan = s.schedule();
        assert_eq!(shape(&plan), [(1, 4, 1, true)]);
        assert_eq!(plan.preempted, [2]);
        let q = s
            .seq(2)
            .map(|q| (q.num_computed, q.blocks.len(), q.preemptions));
        assert_eq!(q, Some((0, 0, 1)));
        assert_eq!(s.num_waiting(), 1);
        // Once 1 is gone, 2 is recomputed from its prompt and its token.
        s.remove(1);
        assert_eq!(shape(&s.schedule()), [(2, 0, 5, true)]);
    }

    #[test]
    fn a_cached_prefix_is_not_recomputed() {
        let mut s = scheduler(16, 64, 8, true);
        s.add(prompt(1, 9));
        s.schedule();
        s.remove(1);
        // Same tokens: the two full blocks (8 tokens) come from the cache.
        let mut again = prompt(1, 9);
        again.id = 2;
        s.add(again);
        assert_eq!(shape(&s.schedule()), [(2, 8, 1, true)]);
        assert_eq!(s.seq(2).and_then(|q| q.cached_prompt_tokens), Some(8));
    }

    #[test]
    fn a_prompt_that_does_not_fit_the_free_blocks_waits() {
        let mut s = scheduler(2, 64, 8, false);
        s.add(prompt(1, 8));
        s.add(prompt(2, 4));
        assert_eq!(shape(&s.schedule()), [(1, 0, 8, true)]);
        assert_eq!(s.num_waiting(), 1);
        assert!(s.schedule().seqs.iter().all(|q| q.id == 1));
    }
}
