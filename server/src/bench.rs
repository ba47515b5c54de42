//! `llm-serve bench`: prompt-processing and generation speed on fixed token
//! ids: of one sequence (the work llama-bench's pp/tg tests do), or of a
//! batch of sequences processed together (llama-batched-bench's).

use crate::cli::BenchArgs;
use anyhow::Result;
use llm_serve_models::{KvCache, LogitsWanted, Model, ModelFiles, SeqInput};
use std::time::Instant;

const BLOCK_SIZE: usize = 16;

pub fn run(args: BenchArgs) -> Result<()> {
    let threads = llm_serve_kernels::threads::init(args.threads.unwrap_or(0));
    let files = ModelFiles::resolve(&args.model)?;
    let total = args.prompt_tokens + args.gen_tokens;
    let context = args.prompt_tokens.max(args.gen_tokens);
    let model = Model::load(&files, None)?;
    anyhow::ensure!(
        args.prompt_tokens > 0 && context <= model.max_model_len(),
        "need 0 < prompt tokens, and prompt and generated tokens each within the model's context of {}",
        model.max_model_len()
    );
    let vocab = model.config().vocab_size as u64;
    let batch = args.batch as usize;
    // Deterministic, spread-out token ids (no tokenizer needed), different
    // for every sequence.
    let ids: Vec<Vec<u32>> = (0..batch as u64)
        .map(|s| {
            (0..total as u64)
                .map(|i| ((s * 7919 + i * 2_654_435_761 + 17) % vocab) as u32)
                .collect()
        })
        .collect();
    let blocks_per_seq = context.div_ceil(BLOCK_SIZE);
    let tables: Vec<Vec<u32>> = (0..batch)
        .map(|s| ((s * blocks_per_seq) as u32..((s + 1) * blocks_per_seq) as u32).collect())
        .collect();
    let mut cache = KvCache::new(
        model.config(),
        batch * blocks_per_seq,
        BLOCK_SIZE,
        model.default_cache_dtype(),
        model.device(),
    )?;
    // As llama-bench: the prompt test processes `prompt_tokens` of every
    // sequence from an empty cache in one pass; the generation test decodes
    // `gen_tokens` one step at a time, also from an empty cache.
    let mut pp_rates = Vec::new();
    let mut tg_rates = Vec::new();
    for rep in 0..=args.repetitions.max(1) {
        let prompts: Vec<SeqInput> = (0..batch)
            .map(|s| SeqInput {
                tokens: &ids[s][..args.prompt_tokens],
                start_pos: 0,
                block_table: &tables[s],
                logits: LogitsWanted::Last,
            })
            .collect();
        let t = Instant::now();
        model.forward(&prompts, &mut cache)?;
        let pp = t.elapsed().as_secs_f64();
        let t = Instant::now();
        for i in 0..args.gen_tokens {
            let step: Vec<SeqInput> = (0..batch)
                .map(|s| SeqInput {
                    tokens: &ids[s][args.prompt_tokens + i..args.prompt_tokens + i + 1],
                    start_pos: i,
                    block_table: &tables[s],
                    logits: LogitsWanted::Last,
                })
                .collect();
            model.forward(&step, &mut cache)?;
        }
        let tg = t.elapsed().as_secs_f64();
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
