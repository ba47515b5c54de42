//! `llm-serve bench-engine`: aggregate generation throughput of the serving
//! engine at several levels of concurrency (every request submitted at
//! once, fixed prompt and output lengths, end-of-sequence ignored).

use crate::bench::mean_sd;
use crate::cli::BenchEngineArgs;
use anyhow::{Context, Result};
use llm_serve_engine::{
    Engine, EngineConfig, EngineEvent, EngineRequest, SamplingParams, Tokenizer,
};
use llm_serve_models::{Model, ModelFiles};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub fn run(args: BenchEngineArgs) -> Result<()> {
    let threads = llm_serve_kernels::threads::init(args.threads.unwrap_or(0));
    let files = ModelFiles::resolve(&args.model)?;
    let model = Arc::new(Model::load(&files, None)?);
    let tokenizer = Arc::new(Tokenizer::load(&files, model.gguf_metadata())?);
    let vocab = model.config().vocab_size as u64;
    let max_c = args.concurrency.iter().copied().max().unwrap_or(1);
    let prompts: Vec<Vec<u32>> = match &args.prompts_file {
        Some(p) => {
            let text = std::fs::read_to_string(p).with_context(|| format!("{}", p.display()))?;
            serde_json::from_str(&text).with_context(|| {
                format!("{}: expected a JSON array of token-id arrays", p.display())
            })?
        }
        None => (0..max_c as u64)
            .map(|r| {
                (0..args.prompt_tokens as u64)
                    .map(|i| ((r * 7919 + i * 2_654_435_761 + 17) % vocab) as u32)
                    .collect()
            })
            .collect(),
    };
    anyhow::ensure!(!prompts.is_empty(), "no prompts");
    let engine = Engine::start(
        model,
        tokenizer,
        EngineConfig {
            max_num_seqs: max_c.max(1),
            max_num_batched_tokens: args.max_num_batched_tokens,
            // Each level's requests have prompts of their own: no reuse
            // across levels either.
            enable_prefix_caching: false,
            ..EngineConfig::default()
        },
    )?;
    let params = SamplingParams {
        temperature: 0.0,
        max_tokens: Some(args.gen_tokens),
        ignore_eos: true,
        ..SamplingParams::default()
    };
    // Warm-up: one short request.
    drain(engine.submit(EngineRequest {
        prompt: prompts[0][..prompts[0].len().min(8)].to_vec(),
        params: SamplingParams {
            max_tokens: Some(4),
            ..params.clone()
        },
        ..EngineRequest::default()
    })?)?;
    for &c in &args.concurrency {
        let start = Instant::now();
        let streams = (0..c)
            .map(|i| {
                engine.submit(EngineRequest {
                    prompt: prompts[i % prompts.len()].clone(),
                    params: params.clone(),
                    ..EngineRequest::default()
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let results: Vec<Result<Finished>> = std::thread::scope(|s| {
            let handles: Vec<_> = streams
                .into_iter()
                .map(|st| s.spawn(move || drain(st)))
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err(anyhow::anyhow!("a reader thread panicked")))
                })
                .collect()
        });
        let wall = start.elapsed().as_secs_f64();
        let results = results.into_iter().collect::<Result<Vec<_>>>()?;
        let generated: usize = results.iter().map(|r| r.completion_tokens).sum();
        let secs = |f: fn(&Finished) -> Duration| -> f64 {
            let v: Vec<f64> = results.iter().map(|r| f(r).as_secs_f64()).collect();
            mean_sd(&v).0
        };
        let ttft = secs(|r| r.ttft);
        let tpot = secs(|r| r.tpot);
        let tps = generated as f64 / wall;
        if args.json {
            println!(
                "{}",
                serde_json::json!({
                    "concurrency": c,
                    "threads": threads,
                    "prompt_tokens": args.prompt_tokens,
                    "gen_tokens": args.gen_tokens,
                    "generated": generated,
                    "wall_s": wall,
                    "gen_tokens_per_s": tps,
                    "mean_ttft_s": ttft,
                    "mean_tpot_s": tpot,
                })
            );
        } else {
            println!(
                "concurrency {c:>3}: {generated} tokens in {wall:.1} s = {tps:.1} tokens/s (mean TTFT {:.0} ms, TPOT {:.0} ms)",
                ttft * 1e3,
                tpot * 1e3
            );
        }
    }
    Ok(())
}

struct Finished {
    completion_tokens: usize,
    ttft: Duration,
    tpot: Duration,
}

fn drain(mut s: llm_serve_engine::RequestStream) -> Result<Finished> {
    while let Some(e) = s.blocking_next() {
        match e {
            EngineEvent::Finished { usage, times } => {
                return Ok(Finished {
                    completion_tokens: usage.completion_tokens,
                    ttft: times.ttft().unwrap_or_default(),
                    tpot: times.tpot(usage.completion_tokens).unwrap_or_default(),
                })
            }
            EngineEvent::Error(e) => anyhow::bail!("request failed: {e}"),
            _ => {}
        }
    }
    anyhow::bail!("the engine stopped before the request finished")
}
