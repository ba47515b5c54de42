//! Property tests of the scheduler and block manager: random arrivals,
//! lengths and aborts over a deliberately small KV cache.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::needless_range_loop)]

use llm_serve_engine::engine::blocks::BlockManager;
use llm_serve_engine::engine::scheduler::{
    Scheduler, SchedulerConfig, SchedulingPolicy, SeqId, SeqState,
};
use proptest::prelude::*;
use std::collections::HashMap;

#[derive(Clone, Debug)]
struct Arrival {
    /// Step at which it arrives.
    at: usize,
    /// Which shared prefix it starts with, and how much of it.
    prefix: usize,
    prefix_len: usize,
    suffix_len: usize,
    max_new: usize,
    priority: i32,
    /// Abort after this many steps in the engine, if set.
    abort_after: Option<usize>,
}

fn arrival() -> impl Strategy<Value = Arrival> {
    (
        0usize..30,
        0usize..3,
        0usize..48,
        1usize..24,
        1usize..20,
        -2i32..3,
        prop::option::weighted(0.2, 0usize..12),
    )
        .prop_map(
            |(at, prefix, prefix_len, suffix_len, max_new, priority, abort_after)| Arrival {
                at,
                prefix,
                prefix_len,
                suffix_len,
                max_new,
                priority,
                abort_after,
            },
        )
}

#[derive(Clone, Debug)]
struct Setup {
    block_size: usize,
    num_blocks: usize,
    max_num_seqs: usize,
    max_num_batched_tokens: usize,
    chunked: bool,
    priority: bool,
    arrivals: Vec<Arrival>,
}

fn setup() -> impl Strategy<Value = Setup> {
    (
        prop::sample::select(vec![1usize, 2, 4, 16]),
        1usize..8,
        1usize..6,
        1usize..64,
        any::<bool>(),
        any::<bool>(),
        prop::collection::vec(arrival(), 1..24),
    )
        .prop_map(
            |(block_size, headroom, max_num_seqs, budget, chunked, priority, arrivals)| {
                // Every sequence must fit the cache alone: at most 48 + 24
                // + 20 tokens.
                let longest = 92usize;
                let num_blocks = longest.div_ceil(block_size) + headroom;
                let max_num_batched_tokens = if chunked { budget } else { longest + budget };
                Setup {
                    block_size,
                    num_blocks,
                    max_num_seqs,
                    max_num_batched_tokens,
                    chunked,
                    priority,
                    arrivals,
                }
            },
        )
}

/// Every block's reference count is the number of sequences holding it,
/// and a block held by several is the same registered prefix block in each.
fn check_blocks(s: &Scheduler) {
    let mut holders: HashMap<u32, Vec<(SeqId, usize)>> = HashMap::new();
    for q in s.seqs() {
        for (i, &b) in q.blocks.iter().enumerate() {
            holders.entry(b).or_default().push((q.id, i));
        }
    }
    let bm = s.blocks();
    let mut used = 0;
    for b in 0..bm.num_blocks() as u32 {
        let h = holders.get(&b).map(Vec::as_slice).unwrap_or(&[]);
        assert_eq!(bm.ref_count(b) as usize, h.len(), "block {b} ref count");
        if !h.is_empty() {
            used += 1;
        }
        if h.len() > 1 {
            let (first, i) = h[0];
            let hash = s.seq(first).unwrap().block_hashes.get(i).copied();
            assert!(
                hash.is_some(),
                "block {b} shared but not a full registered block"
            );
            for &(other, j) in &h[1..] {
                assert_eq!(i, j, "block {b} shared at different positions");
                let q = s.seq(other).unwrap();
                assert_eq!(
                    q.block_hashes.get(j).copied(),
                    hash,
                    "block {b} shared by different prefixes"
                );
            }
        }
    }
    assert_eq!(bm.num_used(), used);
}

fn run(setup: Setup) {
    let cfg = SchedulerConfig {
        max_num_seqs: setup.max_num_seqs,
        max_num_batched_tokens: setup.max_num_batched_tokens,
        enable_chunked_prefill: setup.chunked,
        policy: if setup.priority {
            SchedulingPolicy::Priority
        } else {
            SchedulingPolicy::Fcfs
        },
    };
    let mut s = Scheduler::new(
        cfg,
        BlockManager::new(setup.num_blocks, setup.block_size, true),
    );
    let prefixes: Vec<Vec<u32>> = (0..3u32)
        .map(|p| (0..48u32).map(|i| p * 1000 + i).collect())
        .collect();
    let mut live: HashMap<SeqId, (usize, usize, Option<usize>)> = HashMap::new(); // id -> (generated, max_new, abort step)
    let mut ended = 0usize;
    let mut next_token = 100_000u32;
    let total = setup.arrivals.len();
    let mut step = 0;
    while ended < total {
        assert!(step < 5000, "requests never finished: {live:?}");
        for (i, a) in setup.arrivals.iter().enumerate() {
            if a.at == step {
                let mut prompt = prefixes[a.prefix][..a.prefix_len].to_vec();
                prompt.extend((0..a.suffix_len as u32).map(|t| 50_000 + i as u32 * 100 + t));
                s.add(SeqState::new(i as SeqId, prompt, None, a.priority));
                live.insert(i as SeqId, (0, a.max_new, a.abort_after.map(|x| step + x)));
            }
        }
        let aborts: Vec<SeqId> = live
            .iter()
            .filter(|(_, v)| v.2 == Some(step))
            .map(|(&k, _)| k)
            .collect();
        for id in aborts {
            s.remove(id).unwrap();
            live.remove(&id);
            ended += 1;
        }
        let plan = s.schedule();
        assert!(
            plan.num_tokens() <= setup.max_num_batched_tokens,
            "token budget exceeded"
        );
        assert!(s.num_running() <= setup.max_num_seqs);
        let mut seen = std::collections::HashSet::new();
        for p in &plan.seqs {
            assert!(seen.insert(p.id), "sequence scheduled twice in a step");
            assert!(p.len > 0);
            let q = s.seq(p.id).unwrap();
            assert_eq!(p.start + p.len, q.num_computed);
            assert!(
                q.blocks.len() * setup.block_size >= q.num_computed,
                "KV blocks do not cover the computed tokens"
            );
            if !setup.chunked && p.start < q.prompt_len {
                assert_eq!(
                    p.start + p.len,
                    q.tokens.len(),
                    "prefill chunked while chunking is off"
                );
            }
        }
        check_blocks(&s);
        for p in plan.seqs.iter().filter(|p| p.sample) {
            let e = live.get_mut(&p.id).unwrap();
            e.0 += 1;
            if e.0 >= e.1 {
                s.remove(p.id).unwrap();
                live.remove(&p.id);
                ended += 1;
            } else {
                s.append_token(p.id, next_token);
                next_token += 1;
            }
        }
        check_blocks(&s);
        step += 1;
    }
    assert!(!s.has_work());
    assert_eq!(s.blocks().num_used(), 0, "blocks still held when idle");
    assert_eq!(s.blocks().num_free(), setup.num_blocks);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]
    #[test]
    fn every_request_ends_and_every_block_returns(setup in setup()) {
        run(setup);
    }
}

/// A prompt sharing full blocks with a finished one is admitted with those
/// blocks cached and prefills only the rest.
#[test]
fn shared_prefix_is_found_after_the_first_request_ends() {
    let cfg = SchedulerConfig {
        max_num_seqs: 4,
        max_num_batched_tokens: 256,
        enable_chunked_prefill: true,
        policy: SchedulingPolicy::Fcfs,
    };
    let mut s = Scheduler::new(cfg, BlockManager::new(32, 4, true));
    let a: Vec<u32> = (0..30).collect();
    s.add(SeqState::new(0, a.clone(), None, 0));
    let plan = s.schedule();
    assert_eq!(plan.seqs[0].len, 30);
    s.remove(0);
    let mut b = a[..22].to_vec();
    b.extend([900, 901, 902]);
    s.add(SeqState::new(1, b, None, 0));
    let plan = s.schedule();
    // 22 shared tokens = 5 full blocks of 4.
    assert_eq!(plan.seqs[0].start, 20);
    assert_eq!(plan.seqs[0].len, 5);
    assert_eq!(s.seq(1).unwrap().cached_prompt_tokens, Some(20));
    // Another adapter shares nothing.
    s.add(SeqState::new(2, a[..22].to_vec(), Some("lora-a".into()), 0));
    let plan = s.schedule();
    assert_eq!(plan.seqs.iter().find(|p| p.id == 2).unwrap().start, 0);
}

/// When blocks run out, the newest running sequence is preempted, goes back
/// to the front of the queue and later resumes by recomputing.
#[test]
fn newest_running_sequence_is_preempted_first() {
    let cfg = SchedulerConfig {
        max_num_seqs: 4,
        max_num_batched_tokens: 64,
        enable_chunked_prefill: true,
        policy: SchedulingPolicy::Fcfs,
    };
    // 4 blocks of 4 tokens; two sequences of 8 tokens fill them.
    let mut s = Scheduler::new(cfg, BlockManager::new(4, 4, false));
    s.add(SeqState::new(0, (0..8).collect(), None, 0));
    s.add(SeqState::new(1, (100..108).collect(), None, 0));
    s.add(SeqState::new(2, (200..204).collect(), None, 0));
    let plan = s.schedule();
    assert_eq!(plan.seqs.len(), 2);
    s.append_token(0, 1000);
    s.append_token(1, 1001);
    // Sequence 0 needs a fifth block: sequence 1 (newer) is preempted.
    let plan = s.schedule();
    assert_eq!(plan.preempted, vec![1]);
    assert_eq!(plan.seqs.len(), 1);
    assert_eq!(plan.seqs[0].id, 0);
    assert_eq!(s.seq(1).unwrap().num_computed, 0);
    assert_eq!(s.num_waiting(), 2);
    assert_eq!(s.preemptions(), 1);
    s.remove(0);
    // The preempted sequence runs again before the one that waited all along.
    let plan = s.schedule();
    assert_eq!(plan.seqs[0].id, 1);
    assert_eq!(plan.seqs[0].len, 9);
}
