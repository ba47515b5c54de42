//! Generation for one request at a time over the model runtime (the
//! `llm-serve generate` command and model-level tests). The serving engine
//! batches many requests; this is the same token loop without a scheduler.

use crate::error::{invalid, EngineError, Result};
use crate::output::{FinishReason, OutputState};
use crate::sampling::{Sampled, SamplingParams, SequenceSampler};
use crate::tokenizer::Tokenizer;
use llm_serve_models::{KvCache, LogitsWanted, Model, SeqInput};
use std::time::Instant;

/// KV block size used by the generator.
const BLOCK_SIZE: usize = 16;
/// Prompt tokens per forward call while prefilling.
const PREFILL_CHUNK: usize = 512;

/// One finished generation.
#[derive(Clone, Debug)]
pub struct Generation {
    pub prompt_tokens: usize,
    pub tokens: Vec<u32>,
    pub text: String,
    pub finish_reason: FinishReason,
    /// Per generated token, when `logprobs` was asked for.
    pub logprobs: Vec<Sampled>,
    /// Seconds from start to the first generated token (prefill).
    pub prefill_secs: f64,
    /// Seconds spent generating the remaining tokens.
    pub decode_secs: f64,
}

pub struct Generator<'m> {
    model: &'m Model,
    tokenizer: &'m Tokenizer,
    cache: Option<KvCache>,
}

/// Checks a prompt against the context, as vLLM words it.
pub fn check_prompt_length(
    prompt_tokens: usize,
    max_tokens: Option<usize>,
    max_model_len: usize,
) -> Result<()> {
    if prompt_tokens == 0 {
        return Err(EngineError::InvalidPrompt {
            param: "prompt",
            message: "The prompt is empty.".into(),
        });
    }
    if prompt_tokens >= max_model_len {
        return Err(EngineError::InvalidPrompt {
            param: "input_tokens",
            message: format!(
                "This model's maximum context length is {max_model_len} tokens. However, your request has {prompt_tokens} input tokens. Please reduce the length of the input messages."
            ),
        });
    }
    if let Some(m) = max_tokens {
        if prompt_tokens + m > max_model_len {
            return Err(EngineError::InvalidPrompt {
                param: "max_tokens",
                message: format!(
                    "'max_tokens' or 'max_completion_tokens' is too large: {m}. This model's maximum context length is {max_model_len} tokens and your request has {prompt_tokens} input tokens ({m} > {max_model_len} - {prompt_tokens})."
                ),
            });
        }
    }
    Ok(())
}

impl<'m> Generator<'m> {
    pub fn new(model: &'m Model, tokenizer: &'m Tokenizer) -> Self {
        Generator {
            model,
            tokenizer,
            cache: None,
        }
    }

    fn cache_for(&mut self, tokens: usize) -> Result<&mut KvCache> {
        let blocks = tokens.div_ceil(BLOCK_SIZE);
        let fits = self
            .cache
            .as_ref()
            .is_some_and(|c| c.num_blocks() >= blocks);
        if !fits {
            self.cache = None;
            self.cache = Some(KvCache::new(
                self.model.config(),
                blocks,
                BLOCK_SIZE,
                self.model.default_cache_dtype(),
                self.model.device(),
            )?);
        }
        self.cache
            .as_mut()
            .ok_or_else(|| EngineError::Tokenizer("no KV cache".into()))
    }

    /// Generates from `prompt` (token ids), calling `on_text` with each
    /// piece of text as it becomes final.
    pub fn generate(
        &mut self,
        prompt: &[u32],
        params: &SamplingParams,
        mut on_text: impl FnMut(&str),
    ) -> Result<Generation> {
        let model = self.model;
        let tokenizer = self.tokenizer;
        let max_len = model.max_model_len();
        params.validate(model.config().vocab_size)?;
        if params.n != 1 {
            return Err(invalid(
                "n",
                "the generator produces one completion per call (n = 1)",
            ));
        }
        check_prompt_length(prompt.len(), params.max_tokens, max_len)?;
        let budget = params.max_tokens.unwrap_or(max_len - prompt.len());
        let total = prompt.len() + budget;
        let table: Vec<u32> = (0..total.div_ceil(BLOCK_SIZE) as u32).collect();
        let eos = tokenizer.eos_token_ids().to_vec();
        let mut sampler = SequenceSampler::new(params, prompt, &eos, 0);
        let mut out = OutputState::new(params, prompt, &eos, max_len);
        let cache = self.cache_for(total)?;
        let start = Instant::now();
        let mut logits = Vec::new();
        let mut pos = 0;
        while pos < prompt.len() {
            let end = (pos + PREFILL_CHUNK).min(prompt.len());
            let t = model.forward(
                &[SeqInput {
                    tokens: &prompt[pos..end],
                    start_pos: pos,
                    block_table: &table,
                    logits: if end == prompt.len() {
                        LogitsWanted::Last
                    } else {
                        LogitsWanted::None
                    },
                }],
                cache,
            )?;
            if end == prompt.len() {
                logits = t.flatten_all()?.to_vec1::<f32>()?;
            }
            pos = end;
        }
        let mut tokens = Vec::new();
        let mut logprobs = Vec::new();
        let mut prefill_secs = 0.0;
        loop {
            let s = sampler.sample(&logits);
            if tokens.is_empty() {
                prefill_secs = start.elapsed().as_secs_f64();
            }
            tokens.push(s.token);
            let update = out.push(tokenizer, s.token)?;
            if params.logprobs.is_some() {
                logprobs.push(s.clone());
            }
            if !update.text.is_empty() {
                on_text(&update.text);
            }
            if let Some(reason) = update.finished {
                return Ok(Generation {
                    prompt_tokens: prompt.len(),
                    tokens,
                    text: out.text().to_string(),
                    finish_reason: reason,
                    logprobs,
                    prefill_secs,
                    decode_secs: start.elapsed().as_secs_f64() - prefill_secs,
                });
            }
            let t = model.forward(
                &[SeqInput {
                    tokens: &[s.token],
                    start_pos: pos,
                    block_table: &table,
                    logits: LogitsWanted::Last,
                }],
                cache,
            )?;
            logits = t.flatten_all()?.to_vec1::<f32>()?;
            pos += 1;
        }
    }
}
