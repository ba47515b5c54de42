//! What callers hand the engine and what it streams back.

use crate::error::{EngineError, Result};
use crate::output::FinishReason;
use crate::sampling::{Sampled, SamplingParams};
use crate::structured::Grammar;
use llm_serve_models::LoraAdapter;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A loaded LoRA adapter a request runs with.
#[derive(Clone)]
pub struct AdapterRef {
    pub name: String,
    /// Unique per load: a reloaded adapter of the same name never shares
    /// cached KV blocks with its earlier weights.
    pub load_id: u64,
    pub weights: Arc<LoraAdapter>,
}

impl AdapterRef {
    /// What the prefix cache's block hashes carry for this adapter.
    pub fn cache_key(&self) -> String {
        format!("{}#{}", self.name, self.load_id)
    }
}

impl std::fmt::Debug for AdapterRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AdapterRef({} #{})", self.name, self.load_id)
    }
}

/// A request for the engine: prompt token ids and how to sample.
#[derive(Clone, Debug, Default)]
pub struct EngineRequest {
    pub prompt: Vec<u32>,
    pub params: SamplingParams,
    /// Lower runs first under the `priority` scheduling policy.
    pub priority: i32,
    /// The LoRA adapter it runs with (`None`: the base model); KV blocks
    /// are never shared across adapters.
    pub adapter: Option<AdapterRef>,
    /// A compiled structured-output constraint every sample follows.
    pub grammar: Option<Grammar>,
}

/// Token counts of a finished request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: usize,
    /// Over all `n` samples.
    pub completion_tokens: usize,
    /// Prompt tokens found in the prefix cache (not recomputed).
    pub cached_prompt_tokens: usize,
}

/// When a request reached each stage.
#[derive(Clone, Copy, Debug)]
pub struct RequestTimes {
    pub arrival: Instant,
    /// First step that computed any of its tokens.
    pub scheduled: Option<Instant>,
    pub first_token: Option<Instant>,
    pub finished: Option<Instant>,
}

impl RequestTimes {
    pub fn new(arrival: Instant) -> Self {
        RequestTimes {
            arrival,
            scheduled: None,
            first_token: None,
            finished: None,
        }
    }

    /// Time spent waiting before the first step.
    pub fn queue_time(&self) -> Option<Duration> {
        Some(self.scheduled?.duration_since(self.arrival))
    }

    /// Time to first token.
    pub fn ttft(&self) -> Option<Duration> {
        Some(self.first_token?.duration_since(self.arrival))
    }

    /// Mean time per output token after the first.
    pub fn tpot(&self, completion_tokens: usize) -> Option<Duration> {
        if completion_tokens < 2 {
            return None;
        }
        let decode = self.finished?.duration_since(self.first_token?);
        Some(decode / (completion_tokens as u32 - 1))
    }

    pub fn e2e(&self) -> Option<Duration> {
        Some(self.finished?.duration_since(self.arrival))
    }
}

/// One step's output for one sample of a request.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenDelta {
    /// Which of the request's `n` samples.
    pub index: usize,
    pub token: u32,
    /// Text that became final with this token (may be empty).
    pub text: String,
    /// The chosen token's logprob and the top ones, when asked for.
    pub logprobs: Option<Sampled>,
    /// Set when this token ended the sample (a `SampleFinished` follows).
    pub finish: Option<FinishReason>,
}

/// What the engine streams for a request.
#[derive(Clone, Debug)]
pub enum EngineEvent {
    Token(TokenDelta),
    /// Sample `index` finished.
    SampleFinished {
        index: usize,
        reason: FinishReason,
        /// Its whole text (stop string removed unless asked for).
        text: String,
    },
    /// The request finished (every sample has): the last event.
    Finished {
        usage: Usage,
        times: RequestTimes,
    },
    /// The request failed; the last event.
    Error(String),
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
