//! LoRA adapters in the serving engine, on the default model with the
//! random adapters of fixtures/lora/smollm2: one step mixing the base
//! model and several adapters gives every sequence the greedy tokens it
//! gets alone; an adapter whose B matrices are zero gives the base model's
//! tokens; cached prompt blocks are never shared across adapters or across
//! two loads of one adapter.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use llm_serve_engine::{
    AdapterRef, Engine, EngineConfig, EngineEvent, EngineRequest, RequestStream, SamplingParams,
};
use llm_serve_models::LoraOptions;
use std::sync::Arc;

fn engine() -> Engine {
    let (model, tokenizer) = common::default_model_shared();
    let cfg = EngineConfig {
        kv_cache_memory_bytes: Some(64 * 1024 * 1024),
        ..EngineConfig::default()
    };
    Engine::start(model, tokenizer, cfg).unwrap()
}

fn adapter(name: &str, load_id: u64) -> AdapterRef {
    let (model, _) = common::default_model_shared();
    let dir = common::fixtures().join("lora/smollm2").join(name);
    AdapterRef {
        name: name.to_string(),
        load_id,
        weights: Arc::new(model.load_adapter(&dir, LoraOptions::default()).unwrap()),
    }
}

fn prompt(engine: &Engine, question: &str) -> Vec<u32> {
    let text = format!(
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n"
    );
    engine.tokenizer().encode(&text, false).unwrap()
}

fn request(engine: &Engine, question: &str, adapter: Option<&AdapterRef>) -> EngineRequest {
    EngineRequest {
        prompt: prompt(engine, question),
        params: SamplingParams {
            temperature: 0.0,
            max_tokens: Some(16),
            ignore_eos: true,
            ..Default::default()
        },
        adapter: adapter.cloned(),
        ..Default::default()
    }
}

/// The tokens of a finished request and its cached prompt tokens.
fn tokens(mut s: RequestStream) -> (Vec<u32>, usize) {
    let mut out = Vec::new();
    while let Some(e) = s.blocking_next() {
        match e {
            EngineEvent::Token(d) => out.push(d.token),
            EngineEvent::Finished { usage, .. } => return (out, usage.cached_prompt_tokens),
            EngineEvent::Error(e) => panic!("request failed: {e}"),
            EngineEvent::SampleFinished { .. } => {}
        }
    }
    panic!("the stream ended without Finished")
}

const QUESTIONS: [&str; 8] = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "List three primary colors.",
    "What is 17 times 23?",
    "Name a famous physicist.",
    "What does a compiler do?",
    "How many legs does a spider have?",
    "Describe a cat in five words.",
];

#[test]
fn one_step_mixing_adapters_gives_each_sequence_its_tokens_alone() {
    let adapters = [
        None,
        Some(adapter("qv-r8", 1)),
        Some(adapter("o-down-r4", 2)),
        Some(adapter("all-r2", 3)),
    ];
    let e = engine();
    let plan: Vec<(&str, Option<&AdapterRef>)> = QUESTIONS
        .iter()
        .enumerate()
        .map(|(i, q)| (*q, adapters[i % adapters.len()].as_ref()))
        .collect();
    let alone: Vec<Vec<u32>> = plan
        .iter()
        .map(|(q, a)| tokens(e.submit(request(&e, q, *a)).unwrap()).0)
        .collect();
    // Every request admitted before the same first step: one prefill step
    // mixes all four, then every decode step does.
    let streams = e
        .submit_all(plan.iter().map(|(q, a)| request(&e, q, *a)).collect())
        .unwrap();
    for (i, s) in streams.into_iter().enumerate() {
        let (got, _) = tokens(s);
        assert_eq!(
            got,
            alone[i],
            "request {i} ({:?})",
            plan[i].1.map(|a| &a.name)
        );
    }
    // The adapters do change the model: each differs from the base on the
    // same question somewhere.
    for a in adapters.iter().flatten() {
        let differs = QUESTIONS.iter().any(|q| {
            let base = tokens(e.submit(request(&e, q, None)).unwrap()).0;
            let adapted = tokens(e.submit(request(&e, q, Some(a))).unwrap()).0;
            base != adapted
        });
        assert!(differs, "{} gives the base model's tokens", a.name);
    }
}

#[test]
fn an_adapter_with_zero_b_gives_the_base_models_tokens() {
    let zero = adapter("zero-b", 1);
    let e = engine();
    for q in QUESTIONS {
        let base = tokens(e.submit(request(&e, q, None)).unwrap()).0;
        let streams = e
            .submit_all(vec![request(&e, q, Some(&zero)), request(&e, q, None)])
            .unwrap();
        let got: Vec<Vec<u32>> = streams.into_iter().map(|s| tokens(s).0).collect();
        assert_eq!(got[0], base, "{q}");
        assert_eq!(got[1], base, "{q}");
    }
}

#[test]
fn cached_prompt_blocks_are_not_shared_across_adapters_or_loads() {
    let e = engine();
    let q = "Explain what a hash map is in one sentence, then give an example in Python.";
    let first = adapter("qv-r8", 1);
    let (_, cached) = tokens(e.submit(request(&e, q, None)).unwrap());
    assert_eq!(cached, 0);
    // The base model's blocks are cached: the same prompt hits them...
    let (_, cached) = tokens(e.submit(request(&e, q, None)).unwrap());
    assert!(cached > 0);
    // ...an adapter does not.
    let (alone, cached) = tokens(e.submit(request(&e, q, Some(&first))).unwrap());
    assert_eq!(cached, 0);
    let (again, cached) = tokens(e.submit(request(&e, q, Some(&first))).unwrap());
    assert!(cached > 0);
    assert_eq!(again, alone);
    // A reload of the adapter (same name, another load) starts cold.
    let reloaded = adapter("qv-r8", 2);
    let (_, cached) = tokens(e.submit(request(&e, q, Some(&reloaded))).unwrap());
    assert_eq!(cached, 0);
}
