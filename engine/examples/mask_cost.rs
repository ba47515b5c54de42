//! What a grammar's mask costs per token on a model's vocabulary: random
//! logits sampled through JSON Schema, regex and choice constraints, the
//! time of each mask computation recorded (p50 / p99 / max, in µs).
//!
//! `cargo run --release -p llm-serve-engine --example mask_cost [MODEL]`
//! (MODEL: a GGUF path or hub id; default: the default model).

use llm_serve_engine::structured::{Constraint, ConstraintKind, GrammarProcessor, Grammars};
use llm_serve_engine::{LogitsProcessor, SamplingParams, SequenceSampler, Tokenizer};
use llm_serve_models::{Model, ModelFiles};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::json;
use std::sync::Arc;
use std::time::Instant;

/// Times `prepare` (the mask) before handing each position to the
/// sampler's other processors.
struct Timed {
    inner: GrammarProcessor,
    micros: Vec<f64>,
}

impl LogitsProcessor for Timed {
    fn process(&mut self, logits: &mut [f32]) {
        let t = Instant::now();
        self.inner.prepare();
        self.micros.push(t.elapsed().as_secs_f64() * 1e6);
        self.inner.process(logits);
    }
    fn accept(&mut self, token: u32) {
        self.inner.accept(token);
    }
    fn status(&self) -> llm_serve_engine::ConstraintStatus {
        self.inner.status()
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let source = std::env::args()
        .nth(1)
        .unwrap_or_else(|| llm_serve_models::default_model_path().display().to_string());
    let files = ModelFiles::resolve(&source)?;
    let model = Model::load(&files, Some(1024))?;
    let tokenizer = Arc::new(Tokenizer::load(&files, model.gguf_metadata())?);
    let width = model.config().vocab_size;
    let eos = tokenizer.eos_token_ids().to_vec();
    let t = Instant::now();
    let grammars = Grammars::new(tokenizer.clone(), width, &eos)?;
    println!(
        "vocabulary {width} tokens; token trie built in {:?}",
        t.elapsed()
    );
    let constraints = [
        (
            "json_schema (object)",
            ConstraintKind::JsonSchema(json!({"type": "object", "properties": {
            "name": {"type": "string", "maxLength": 40}, "age": {"type": "integer", "minimum": 0, "maximum": 130},
            "tags": {"type": "array", "items": {"type": "string", "maxLength": 12}, "maxItems": 4}},
            "required": ["name", "age", "tags"], "additionalProperties": false})),
        ),
        ("json_object", ConstraintKind::JsonObject),
        (
            "regex",
            ConstraintKind::Regex("[a-z]{1,12}@[a-z]{2,8}\\.(com|org|net)".into()),
        ),
        (
            "choice",
            ConstraintKind::Choice(vec!["positive".into(), "negative".into(), "neutral".into()]),
        ),
    ];
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    for (name, kind) in constraints {
        let c = Constraint {
            kind,
            param: "response_format".into(),
            compact_json: false,
        };
        let t = Instant::now();
        let grammar = grammars.compile(&c)?;
        let compile = t.elapsed();
        let mut all = Vec::new();
        for seed in 0..20u64 {
            let params = SamplingParams {
                temperature: 1.0,
                seed: Some(seed),
                ..SamplingParams::default()
            };
            let mut sampler = SequenceSampler::new(&params, &[], &eos, 0);
            let mut timed = Timed {
                inner: GrammarProcessor::new(grammar.matcher()),
                micros: Vec::new(),
            };
            let mut tokens = 0;
            let mut logits = vec![0f32; width];
            loop {
                logits
                    .iter_mut()
                    .for_each(|v| *v = rng.random_range(-4.0..4.0));
                timed.process(&mut logits);
                let s = sampler.sample(&logits);
                timed.accept(s.token);
                tokens += 1;
                let done = eos.contains(&s.token)
                    || timed.status() != llm_serve_engine::ConstraintStatus::Open;
                if done || tokens >= 200 {
                    break;
                }
            }
            all.extend(timed.micros);
        }
        all.sort_by(f64::total_cmp);
        let q = |p: f64| all[((all.len() - 1) as f64 * p).round() as usize];
        println!(
            "{name:22} compile {:>8.2?}  masks {:>5}  p50 {:>7.1} µs  p99 {:>8.1} µs  max {:>8.1} µs",
            compile,
            all.len(),
            q(0.5),
            q(0.99),
            all[all.len() - 1]
        );
    }
    Ok(())
}
