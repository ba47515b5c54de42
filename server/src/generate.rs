//! `llm-serve generate`: one prompt, streamed to stdout, speeds to stderr.
//! It runs on the serving engine (one sequence, a KV cache sized for its
//! prompt and `max_tokens`), so what it prints is what a server would
//! answer.

use crate::cli::GenerateArgs;
use anyhow::{Context, Result};
use llm_serve_engine::{
    check_prompt_length, ChatTemplate, Engine, EngineConfig, SamplingParams, TemplateArgs,
    Tokenizer,
};
use llm_serve_models::{Model, ModelFiles};
use std::io::Write;
use std::sync::Arc;
use std::time::Instant;

pub fn run(args: GenerateArgs) -> Result<()> {
    let threads = llm_serve_kernels::threads::init(args.threads.unwrap_or(0));
    let t0 = Instant::now();
    let files = ModelFiles::resolve(&args.model)?;
    let model = Arc::new(Model::load(&files, args.max_model_len)?);
    let tokenizer = Arc::new(Tokenizer::load(&files, model.gguf_metadata())?);
    eprintln!(
        "loaded {} ({}, {} layers, {:.0} MB of weights) in {:.2}s; {} threads, {} kernels",
        args.model,
        model.config().arch.name(),
        model.config().num_layers,
        model.weights_bytes() as f64 / 1e6,
        t0.elapsed().as_secs_f64(),
        threads,
        llm_serve_kernels::cpu::simd_level().name(),
    );
    let prompt = match (&args.prompt, &args.chat) {
        (Some(p), _) => tokenizer.encode(p, true)?,
        (None, Some(user)) => {
            let template = ChatTemplate::of_tokenizer(&tokenizer)?
                .context("the model has no chat template; use --prompt")?;
            let mut messages = Vec::new();
            if let Some(system) = &args.system {
                messages.push(serde_json::json!({"role": "system", "content": system}));
            }
            messages.push(serde_json::json!({"role": "user", "content": user}));
            let text = template.render(
                &messages,
                &TemplateArgs {
                    add_generation_prompt: true,
                    ..Default::default()
                },
            )?;
            tokenizer.encode(&text, false)?
        }
        (None, None) => anyhow::bail!("give --prompt or --chat"),
    };
    let params = SamplingParams {
        temperature: args.temperature,
        top_p: args.top_p,
        top_k: args.top_k,
        min_p: args.min_p,
        presence_penalty: args.presence_penalty,
        frequency_penalty: args.frequency_penalty,
        repetition_penalty: args.repetition_penalty,
        seed: args.seed,
        stop: args.stop.clone(),
        stop_token_ids: args.stop_token_ids.clone(),
        min_tokens: args.min_tokens,
        ignore_eos: args.ignore_eos,
        max_tokens: Some(args.max_tokens),
        logprobs: args.logprobs,
        skip_special_tokens: !args.no_skip_special_tokens,
        ..Default::default()
    };
    params.validate(model.config().vocab_size)?;
    check_prompt_length(prompt.len(), params.max_tokens, model.max_model_len())?;
    let engine = Engine::start(
        model.clone(),
        tokenizer.clone(),
        EngineConfig::for_sequences(&model, 1, prompt.len() + args.max_tokens),
    )?;
    let mut stdout = std::io::stdout();
    let out = engine.generate(&prompt, &params, |text| {
        // A closed stdout (e.g. `| head`) is not worth failing over.
        let _ = stdout.write_all(text.as_bytes());
        let _ = stdout.flush();
    })?;
    let _ = writeln!(stdout);
    if args.logprobs.is_some() {
        for s in &out.logprobs {
            let alts: Vec<String> = s
                .top_logprobs
                .iter()
                .map(|(id, lp)| format!("{:?} {lp:.3}", tokenizer.token_text(*id)))
                .collect();
            eprintln!(
                "{:?} {:.4} [{}]",
                tokenizer.token_text(s.token),
                s.logprob,
                alts.join(", ")
            );
        }
    }
    let generated = out.tokens.len();
    let decode_tps = if generated > 1 && out.decode_secs > 0.0 {
        (generated - 1) as f64 / out.decode_secs
    } else {
        0.0
    };
    eprintln!(
        "prompt: {} tokens in {:.3}s ({:.1} tokens/s); generation: {} tokens in {:.3}s ({:.1} tokens/s); finish_reason: {}",
        out.prompt_tokens,
        out.prefill_secs,
        out.prompt_tokens as f64 / out.prefill_secs.max(1e-9),
        generated,
        out.decode_secs,
        decode_tps,
        out.finish_reason.as_openai(),
    );
    Ok(())
}
