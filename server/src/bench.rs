//! `llm-serve bench`: prompt-processing and generation speed on fixed token
//! ids: of one sequence (the work llama-bench's pp/tg tests do), or of a
//! batch of sequences processed together (llama-batched-bench's). It runs
//! on the serving engine (scheduler, model runner, sampler), so it times
//! the path requests take.

use crate::cli::BenchArgs;
use anyhow::{Context, Result};
use llm_serve_engine::{Engine, EngineConfig, EngineEvent, EngineRequest};
use llm_serve_engine::{SamplingParams, Tokenizer};
use llm_serve_models::{Model, ModelFiles};
use std::sync::Arc;
use std::time::Instant;

pub fn run(args: BenchArgs) -> Result<()> {
    let threads = llm_serve_kernels::threads::init(args.threads.unwrap_or(0));
    let files = ModelFiles::resolve(&args.model)?;
    let context = args.prompt_tokens.max(args.gen_tokens);
    let model = Arc::new(Model::load(&files, None)?);
    anyhow::ensure!(
        args.prompt_tokens > 0 && context < model.max_model_len(),
        "need 0 < prompt tokens, and prompt and generated tokens each within the model's context of {}",
        model.max_model_len()
    );
    let tokenizer = Arc::new(Tokenizer::load(&files, model.gguf_metadata())?);
    let vocab = model.config().vocab_size as u64;
    let batch = args.batch as usize;
    // Deterministic, spread-out token ids (no tokenizer needed), different
    // for every sequence.
    let ids: Vec<Vec<u32>> = (0..batch as u64)
        .map(|s| {
            (0..args.prompt_tokens as u64)
                .map(|i| ((s * 7919 + i * 2_654_435_761 + 17) % vocab) as u32)
                .collect()
        })
        .collect();
    let engine = Engine::start(
        model.clone(),
        tokenizer,
        bench_config(&model, batch, context),
    )?;
    // As llama-bench: the prompt test processes `prompt_tokens` of every
    // sequence from an empty cache in one step; the generation test decodes
    // `gen_tokens` one step at a time, also from an empty cache (a one-token
    // prompt and `gen_tokens` forward passes).
    let mut pp_rates = Vec::new();
    let mut tg_rates = Vec::new();
    for rep in 0..=args.repetitions.max(1) {
        let prompts = ids.iter().map(|p| request(p.clone(), 1)).collect();
        let pp = time_all(&engine, prompts)?;
        let tg = if args.gen_tokens > 0 {
            let steps = ids
                .iter()
                .map(|p| request(p[..1].to_vec(), args.gen_tokens))
                .collect();
            time_all(&engine, steps)?
        } else {
            0.0
        };
        // The first round warms caches and allocations up.
        if rep > 0 {
            pp_rates.push((batch * args.prompt_tokens) as f64 / pp);
            if args.gen_tokens > 0 {
                tg_rates.push((batch * args.gen_tokens) as f64 / tg);
            }
        }
    }
    let (pp_tps, pp_sd) = mean_sd(&pp_rates);
    let (tg_tps, tg_sd) = mean_sd(&tg_rates);
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "model": args.model,
                "threads": threads,
                "simd": llm_serve_kernels::cpu::simd_level().name(),
                "prompt_tokens": args.prompt_tokens,
                "gen_tokens": args.gen_tokens,
                "batch": batch,
                "prefill_tokens_per_s": pp_tps,
                "prefill_stddev": pp_sd,
                "decode_tokens_per_s": tg_tps,
                "decode_stddev": tg_sd,
                "repetitions": pp_rates.len(),
            })
        );
    } else {
        println!(
            "{}: {} threads ({}), batch {batch}, pp{}: {:.1} ± {:.1} tokens/s, tg{}: {:.1} ± {:.1} tokens/s",
            args.model,
            threads,
            llm_serve_kernels::cpu::simd_level().name(),
            args.prompt_tokens,
            pp_tps,
            pp_sd,
            args.gen_tokens,
            tg_tps,
            tg_sd
        );
    }
    Ok(())
}

/// An engine that runs `batch` sequences of up to `context` tokens in one
/// step each: every prompt scheduled at once.
fn bench_config(model: &Model, batch: usize, context: usize) -> EngineConfig {
    let cfg = EngineConfig::for_sequences(model, batch, context + 1);
    EngineConfig {
        max_num_batched_tokens: (batch * context).max(cfg.max_num_batched_tokens),
        ..cfg
    }
}

/// Greedy decoding of exactly `tokens` tokens.
fn request(prompt: Vec<u32>, tokens: usize) -> EngineRequest {
    EngineRequest {
        prompt,
        params: SamplingParams {
            temperature: 0.0,
            max_tokens: Some(tokens),
            ignore_eos: true,
            ..Default::default()
        },
        ..Default::default()
    }
}

/// Seconds from submitting `requests` together until all have finished.
fn time_all(engine: &Engine, requests: Vec<EngineRequest>) -> Result<f64> {
    let t = Instant::now();
    for mut s in engine.submit_all(requests)? {
        loop {
            match s.blocking_next().context("the engine stopped")? {
                EngineEvent::Finished { .. } => break,
                EngineEvent::Error(e) => anyhow::bail!("bench request failed: {e}"),
                _ => {}
            }
        }
    }
    Ok(t.elapsed().as_secs_f64())
}

/// Mean and sample standard deviation.
pub(crate) fn mean_sd(xs: &[f64]) -> (f64, f64) {
    if xs.is_empty() {
        return (0.0, 0.0);
    }
    let n = xs.len() as f64;
    let mean = xs.iter().sum::<f64>() / n;
    let var = if xs.len() > 1 {
        xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)
    } else {
        0.0
    };
    (mean, var.sqrt())
}
