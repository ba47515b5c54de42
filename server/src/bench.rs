//! `llm-serve bench`: prompt-processing and generation speed of one
//! sequence on fixed token ids (the work llama-bench's pp/tg tests do).

use crate::cli::BenchArgs;
use anyhow::Result;
use llm_serve_models::{KvCache, LogitsWanted, Model, ModelFiles, SeqInput};
use std::time::Instant;

const BLOCK_SIZE: usize = 16;

pub fn run(args: BenchArgs) -> Result<()> {
    let threads = llm_serve_kernels::threads::init(args.threads.unwrap_or(0));
    let files = ModelFiles::resolve(&args.model)?;
    let total = args.prompt_tokens + args.gen_tokens;
    let model = Model::load(&files, None)?;
    anyhow::ensure!(
        args.prompt_tokens > 0 && total <= model.max_model_len(),
        "need 0 < prompt + generated tokens <= the model's context of {}",
        model.max_model_len()
    );
    let vocab = model.config().vocab_size as u64;
    // Deterministic, spread-out token ids (no tokenizer needed).
    let ids: Vec<u32> = (0..total as u64)
        .map(|i| ((i * 2_654_435_761 + 17) % vocab) as u32)
        .collect();
    let table: Vec<u32> = (0..total.div_ceil(BLOCK_SIZE) as u32).collect();
    let mut cache = KvCache::new(model.config(), table.len(), BLOCK_SIZE, model.device())?;
    let mut best_pp = f64::MAX;
    let mut best_tg = f64::MAX;
    for rep in 0..=args.repetitions.max(1) {
        let t = Instant::now();
        model.forward(
            &[SeqInput {
                tokens: &ids[..args.prompt_tokens],
                start_pos: 0,
                block_table: &table,
                logits: LogitsWanted::Last,
            }],
            &mut cache,
        )?;
        let pp = t.elapsed().as_secs_f64();
        let t = Instant::now();
        for i in args.prompt_tokens..total {
            model.forward(
                &[SeqInput {
                    tokens: &ids[i..i + 1],
                    start_pos: i,
                    block_table: &table,
                    logits: LogitsWanted::Last,
                }],
                &mut cache,
            )?;
        }
        let tg = t.elapsed().as_secs_f64();
        if rep > 0 {
            best_pp = best_pp.min(pp);
            best_tg = best_tg.min(tg);
        }
    }
    let pp_tps = args.prompt_tokens as f64 / best_pp;
    let tg_tps = if args.gen_tokens > 0 {
        args.gen_tokens as f64 / best_tg
    } else {
        0.0
    };
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "model": args.model,
                "threads": threads,
                "simd": llm_serve_kernels::cpu::simd_level().name(),
                "prompt_tokens": args.prompt_tokens,
                "gen_tokens": args.gen_tokens,
                "prefill_tokens_per_s": pp_tps,
                "decode_tokens_per_s": tg_tps,
            })
        );
    } else {
        println!(
            "{}: {} threads ({}), pp{}: {:.1} tokens/s, tg{}: {:.1} tokens/s",
            args.model,
            threads,
            llm_serve_kernels::cpu::simd_level().name(),
            args.prompt_tokens,
            pp_tps,
            args.gen_tokens,
            tg_tps
        );
    }
    Ok(())
}
