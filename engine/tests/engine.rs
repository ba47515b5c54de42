//! The serving engine on the default model: outputs that do not depend on
//! the batch, prefix caching, cancellation, validation, `n > 1`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::needless_range_loop)]

mod common;
use llm_serve_engine::{
    Engine, EngineConfig, EngineError, EngineEvent, EngineRequest, EngineStats, FinishReason,
    RequestStream, SamplingParams, Usage,
};
use std::time::{Duration, Instant};

const MIB: usize = 1024 * 1024;

fn engine(cfg: EngineConfig) -> Engine {
    let (model, tokenizer) = common::default_model_shared();
    Engine::start(model, tokenizer, cfg).unwrap()
}

fn config() -> EngineConfig {
    EngineConfig {
        kv_cache_memory_bytes: Some(64 * MIB),
        ..EngineConfig::default()
    }
}

fn chat_prompt(engine: &Engine, question: &str) -> Vec<u32> {
    let tok = engine.tokenizer();
    let text = format!(
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n"
    );
    tok.encode(&text, false).unwrap()
}

fn greedy(max_tokens: usize) -> SamplingParams {
    SamplingParams {
        temperature: 0.0,
        max_tokens: Some(max_tokens),
        ignore_eos: true,
        ..Default::default()
    }
}

struct Outcome {
    tokens: Vec<Vec<u32>>,
    texts: Vec<String>,
    reasons: Vec<FinishReason>,
    usage: Usage,
}

fn collect(s: RequestStream, n: usize) -> Outcome {
    collect_after(Vec::new(), s, n)
}

/// Like `collect`, counting `seen`, the events already taken off `s`.
fn collect_after(seen: Vec<EngineEvent>, mut s: RequestStream, n: usize) -> Outcome {
    let mut out = Outcome {
        tokens: vec![Vec::new(); n],
        texts: vec![String::new(); n],
        reasons: vec![FinishReason::Abort; n],
        usage: Usage::default(),
    };
    let mut streamed = vec![String::new(); n];
    let mut seen = seen.into_iter();
    while let Some(e) = seen.next().or_else(|| s.blocking_next()) {
        match e {
            EngineEvent::Token(d) => {
                out.tokens[d.index].push(d.token);
                streamed[d.index].push_str(&d.text);
            }
            EngineEvent::SampleFinished {
                index,
                reason,
                text,
            } => {
                out.reasons[index] = reason;
                out.texts[index] = text;
            }
            EngineEvent::Finished { usage, .. } => out.usage = usage,
            EngineEvent::Error(e) => panic!("request failed: {e}"),
        }
    }
    assert_eq!(streamed, out.texts, "streamed deltas add up to the text");
    out
}

fn wait_for(engine: &Engine, what: &str, cond: impl Fn(&EngineStats) -> bool) -> EngineStats {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let s = engine.stats();
        if cond(&s) {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {s:?}"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

const QUESTIONS: [&str; 16] = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "List three primary colors.",
    "What is 17 times 23?",
    "Explain what a hash map is in one sentence.",
    "Name a famous physicist.",
    "Translate 'good morning' into Spanish.",
    "What does a compiler do?",
    "Give me a synonym for happy.",
    "How many legs does a spider have?",
    "What is the boiling point of water in Celsius?",
    "Suggest a name for a pet turtle.",
    "Why is the sky blue? Keep it short.",
    "Count from one to five.",
    "What language is spoken in Brazil?",
    "Describe a cat in five words.",
];

/// Greedy outputs of 16 requests are the same alone, all at once, with
/// prefill chunked over a small token budget, and under preemption.
#[test]
fn greedy_outputs_do_not_depend_on_the_batch() {
    let max_tokens = 20;
    let reference = {
        let e = engine(config());
        QUESTIONS
            .iter()
            .map(|q| {
                let s = e
                    .submit(EngineRequest {
                        prompt: chat_prompt(&e, q),
                        params: greedy(max_tokens),
                        ..Default::default()
                    })
                    .unwrap();
                collect(s, 1).tokens.remove(0)
            })
            .collect::<Vec<_>>()
    };
    let scenarios = [
        ("16 concurrent", config()),
        (
            "chunked prefill, 24-token budget",
            EngineConfig {
                max_num_batched_tokens: 24,
                ..config()
            },
        ),
        (
            "preemption, 24 KV blocks of 16",
            EngineConfig {
                // 384 tokens hold the longest request (a 256-token
                // context) but not 16 requests of about 60 tokens.
                kv_cache_memory_bytes: Some({
                    let model = &common::default_model_shared().0;
                    llm_serve_models::KvCache::bytes_per_block(
                        model.config(),
                        16,
                        model.default_cache_dtype(),
                    ) * 24
                }),
                max_model_len: Some(256),
                ..config()
            },
        ),
    ];
    for (name, cfg) in scenarios {
        let e = engine(cfg);
        let streams: Vec<_> = QUESTIONS
            .iter()
            .map(|q| {
                e.submit(EngineRequest {
                    prompt: chat_prompt(&e, q),
                    params: greedy(max_tokens),
                    ..Default::default()
                })
                .unwrap()
            })
            .collect();
        let outs: Vec<_> = streams.into_iter().map(|s| collect(s, 1)).collect();
        for (i, o) in outs.iter().enumerate() {
            assert_eq!(
                o.tokens[0], reference[i],
                "{name}: request {i} differs from alone"
            );
            assert_eq!(o.usage.completion_tokens, max_tokens);
        }
        // Stats are published after the step that finished the last one.
        let stats = wait_for(&e, "an idle engine", |s| {
            s.kv_blocks_used == 0 && s.running + s.waiting == 0
        });
        if name.starts_with("preemption") {
            assert!(
                stats.preemptions > 0,
                "{name}: nothing was preempted: {stats:?}"
            );
        }
    }
}

/// A request sharing a long prefix with a finished one reports the shared
/// full blocks as cached and prefills only the rest.
#[test]
fn shared_prefix_is_served_from_the_cache() {
    let e = engine(config());
    let long = "Summarize the following notes. ".repeat(16);
    let first = chat_prompt(&e, &format!("{long} First question: what is this about?"));
    let second = chat_prompt(&e, &format!("{long} Second question: is it repetitive?"));
    let shared = first
        .iter()
        .zip(&second)
        .take_while(|(a, b)| a == b)
        .count();
    assert!(shared > 100, "prompts share {shared} tokens");
    let a = collect(
        e.submit(EngineRequest {
            prompt: first.clone(),
            params: greedy(4),
            ..Default::default()
        })
        .unwrap(),
        1,
    );
    assert_eq!(a.usage.cached_prompt_tokens, 0);
    let before = wait_for(&e, "idle", |s| s.running + s.waiting == 0);
    let b = collect(
        e.submit(EngineRequest {
            prompt: second.clone(),
            params: greedy(4),
            ..Default::default()
        })
        .unwrap(),
        1,
    );
    let after = wait_for(&e, "idle", |s| s.running + s.waiting == 0);
    let expected = shared / 16 * 16;
    assert_eq!(b.usage.cached_prompt_tokens, expected);
    assert_eq!(b.usage.prompt_tokens, second.len());
    assert_eq!(
        after.prefix_cache_hits - before.prefix_cache_hits,
        expected as u64
    );
    assert_eq!(
        after.prefix_cache_queries - before.prefix_cache_queries,
        (second.len() - 1) as u64
    );
    // Prefilled: the uncached rest of the prompt; then 3 decode tokens.
    assert_eq!(
        after.prompt_tokens - before.prompt_tokens,
        (second.len() - expected) as u64
    );
    // The cached prefix gives what a cold cache gives.
    let cold = engine(EngineConfig {
        enable_prefix_caching: false,
        ..config()
    });
    let c = collect(
        cold.submit(EngineRequest {
            prompt: second,
            params: greedy(4),
            ..Default::default()
        })
        .unwrap(),
        1,
    );
    assert_eq!(c.usage.cached_prompt_tokens, 0);
    assert_eq!(c.tokens, b.tokens);
}

/// Dropping a stream mid-decode frees its blocks within one step, while
/// another request keeps the engine busy.
#[test]
fn dropping_a_stream_mid_decode_frees_its_blocks() {
    let e = engine(config());
    let keep = e
        .submit(EngineRequest {
            prompt: chat_prompt(&e, "Tell me a long story about a dragon."),
            params: greedy(300),
            ..Default::default()
        })
        .unwrap();
    let mut cancel = e
        .submit(EngineRequest {
            prompt: chat_prompt(&e, "Tell me a long story about a knight."),
            params: greedy(300),
            ..Default::default()
        })
        .unwrap();
    for _ in 0..5 {
        assert!(matches!(
            cancel.blocking_next(),
            Some(EngineEvent::Token(_))
        ));
    }
    let held = wait_for(&e, "both running", |s| s.running == 2).kv_blocks_used;
    let at_drop = e.stats().steps;
    drop(cancel);
    let s = wait_for(&e, "the blocks back", |s| s.running == 1);
    assert!(
        s.steps <= at_drop + 1,
        "freed after {} steps",
        s.steps - at_drop
    );
    assert!(s.kv_blocks_used < held, "{held} blocks before, {s:?} after");
    assert_eq!(s.finished_abort, 1);
    drop(keep);
    let s = wait_for(&e, "idle", |s| s.running == 0);
    assert_eq!(s.kv_blocks_used, 0);
}

/// Dropping a stream while its prompt is still being prefilled (in chunks)
/// frees its blocks within one step.
#[test]
fn dropping_a_stream_mid_prefill_frees_its_blocks() {
    let e = engine(EngineConfig {
        max_num_batched_tokens: 16,
        ..config()
    });
    let prompt = chat_prompt(&e, &"Please read this carefully. ".repeat(40));
    assert!(prompt.len() > 200);
    let mut s = e
        .submit(EngineRequest {
            prompt,
            params: greedy(8),
            ..Default::default()
        })
        .unwrap();
    let mid = wait_for(&e, "prefill under way", |s| {
        s.steps >= 3 && s.kv_blocks_used > 0
    });
    assert!(s.try_next().is_none(), "no token before the prompt is done");
    let at_drop = e.stats().steps;
    drop(s);
    let after = wait_for(&e, "blocks back", |s| {
        s.kv_blocks_used == 0 && s.running == 0
    });
    assert!(after.steps <= at_drop + 1);
    assert!(mid.steps < 13, "the prompt was not still prefilling");
    assert_eq!(after.finished_abort, 1);
}

/// An explicit abort ends every sample with reason `abort` and a final
/// event with usage.
#[test]
fn explicit_abort_finishes_with_abort() {
    let e = engine(config());
    let mut s = e
        .submit(EngineRequest {
            prompt: chat_prompt(&e, "Count to one hundred."),
            params: greedy(500),
            ..Default::default()
        })
        .unwrap();
    let first = s.blocking_next().unwrap();
    assert!(matches!(first, EngineEvent::Token(_)));
    e.abort(s.id());
    let out = collect_after(vec![first], s, 1);
    assert_eq!(out.reasons[0], FinishReason::Abort);
    assert!(out.usage.completion_tokens >= 1 && out.usage.completion_tokens < 500);
}

/// `n > 1` samples share the prompt's full blocks; seeded sampling gives the
/// same samples whatever else runs.
#[test]
fn samples_share_the_prompt_and_seeds_repeat() {
    let e = engine(config());
    let prompt = chat_prompt(&e, &"Think of a random animal and describe it. ".repeat(8));
    let full_blocks = (prompt.len() - 1) / 16;
    let params = SamplingParams {
        n: 4,
        temperature: 0.9,
        seed: Some(7),
        max_tokens: Some(12),
        ignore_eos: true,
        ..Default::default()
    };
    let mut s = e
        .submit(EngineRequest {
            prompt: prompt.clone(),
            params: params.clone(),
            ..Default::default()
        })
        .unwrap();
    let first = s.blocking_next().unwrap();
    assert!(matches!(first, EngineEvent::Token(_)));
    let held = e.stats().kv_blocks_used;
    let unshared = 4 * (prompt.len() + 12).div_ceil(16);
    assert!(
        held <= full_blocks + 4 * 2,
        "{held} blocks held by 4 samples of a {}-token prompt ({unshared} unshared)",
        prompt.len()
    );
    let rest = collect_after(vec![first], s, 4);
    assert_eq!(rest.usage.completion_tokens, 48);
    let distinct: std::collections::HashSet<_> = rest.tokens.iter().collect();
    assert!(distinct.len() > 1, "4 samples at temperature 0.9 all equal");
    // The same seed alongside other traffic gives the same samples.
    let noise = e
        .submit(EngineRequest {
            prompt: chat_prompt(&e, "Hello!"),
            params: greedy(30),
            ..Default::default()
        })
        .unwrap();
    let again = collect(
        e.submit(EngineRequest {
            prompt,
            params,
            ..Default::default()
        })
        .unwrap(),
        4,
    );
    drop(noise);
    assert_eq!(again.tokens, rest.tokens);
}

/// Bad requests are refused before admission with the parameter named.
#[test]
fn invalid_requests_are_refused_with_the_parameter_named() {
    let e = engine(EngineConfig {
        max_model_len: Some(128),
        ..config()
    });
    let too_long = vec![1u32; 200];
    match e.submit(EngineRequest {
        prompt: too_long,
        params: greedy(4),
        ..Default::default()
    }) {
        Err(EngineError::InvalidPrompt { param, message }) => {
            assert_eq!(param, "input_tokens");
            assert!(message.contains("128"), "{message}");
        }
        Err(other) => panic!("wrong error: {other}"),
        Ok(_) => panic!("a 200-token prompt was accepted with a 128-token context"),
    }
    match e.submit(EngineRequest {
        prompt: vec![1; 100],
        params: greedy(50),
        ..Default::default()
    }) {
        Err(EngineError::InvalidPrompt { param, .. }) => assert_eq!(param, "max_tokens"),
        Err(other) => panic!("wrong error: {other}"),
        Ok(_) => panic!("100 + 50 tokens accepted with a 128-token context"),
    }
    let bad_temp = SamplingParams {
        temperature: -1.0,
        ..greedy(4)
    };
    match e.submit(EngineRequest {
        prompt: vec![1; 4],
        params: bad_temp,
        ..Default::default()
    }) {
        Err(EngineError::InvalidParam { param, .. }) => assert_eq!(param, "temperature"),
        Err(other) => panic!("wrong error: {other}"),
        Ok(_) => panic!("temperature -1 accepted"),
    }
    match e.submit(EngineRequest {
        prompt: vec![u32::MAX],
        params: greedy(4),
        ..Default::default()
    }) {
        Err(EngineError::InvalidPrompt { param, .. }) => assert_eq!(param, "prompt"),
        Err(other) => panic!("wrong error: {other}"),
        Ok(_) => panic!("an out-of-vocabulary token was accepted"),
    }
    // The engine still serves.
    let ok = collect(
        e.submit(EngineRequest {
            prompt: chat_prompt(&e, "Hi"),
            params: greedy(3),
            ..Default::default()
        })
        .unwrap(),
        1,
    );
    assert_eq!(ok.usage.completion_tokens, 3);
}

/// A KV budget that cannot hold one full-length request is refused at
/// start-up with the numbers.
#[test]
fn too_small_a_kv_cache_is_refused_at_start() {
    let (model, tokenizer) = common::default_model_shared();
    let err = Engine::start(
        model,
        tokenizer,
        EngineConfig {
            kv_cache_memory_bytes: Some(MIB),
            ..EngineConfig::default()
        },
    )
    .err()
    .expect("a 1 MiB cache was accepted for a 1024-token context");
    assert!(err.to_string().contains("max_model_len"), "{err}");
}

/// Every sample of a request is admitted at once, so `n` is bounded by
/// `max_num_seqs`: a billion samples is a refusal naming `n`, not an
/// allocation (and the engine keeps serving).
#[test]
fn n_is_bounded_by_max_num_seqs() {
    let e = engine(EngineConfig {
        max_num_seqs: 4,
        ..config()
    });
    for n in [5, 1_000_000_000] {
        let params = SamplingParams { n, ..greedy(2) };
        match e.submit(EngineRequest {
            prompt: vec![1; 8],
            params,
            ..Default::default()
        }) {
            Err(EngineError::InvalidParam { param, message }) => {
                assert_eq!(param, "n");
                assert!(message.contains("at most 4"), "{message}");
            }
            Err(other) => panic!("wrong error: {other}"),
            Ok(_) => panic!("n = {n} accepted with max_num_seqs 4"),
        }
    }
    let params = SamplingParams { n: 0, ..greedy(2) };
    assert!(e
        .submit(EngineRequest {
            prompt: vec![1; 8],
            params,
            ..Default::default()
        })
        .is_err());
    let params = SamplingParams { n: 4, ..greedy(2) };
    let out = collect(
        e.submit(EngineRequest {
            prompt: vec![1; 8],
            params,
            ..Default::default()
        })
        .unwrap(),
        4,
    );
    assert_eq!(out.usage.completion_tokens, 8);
}
