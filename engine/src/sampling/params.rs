//! Sampling parameters, with vLLM's defaults and validation messages.

use crate::error::{invalid, Result};
use std::collections::HashMap;

/// The most `logprobs` / `top_logprobs` a request may ask for (vLLM's
/// default `--max-logprobs`).
pub const MAX_LOGPROBS: usize = 20;

#[derive(Clone, Debug, PartialEq)]
pub struct SamplingParams {
    /// Completions to generate for the prompt.
    pub n: usize,
    /// 0 means greedy.
    pub temperature: f32,
    pub top_p: f32,
    /// 0 or -1 disables.
    pub top_k: i32,
    pub min_p: f32,
    pub presence_penalty: f32,
    pub frequency_penalty: f32,
    pub repetition_penalty: f32,
    /// Added to the logits of the given tokens (clamped to [-100, 100]).
    pub logit_bias: HashMap<u32, f32>,
    /// Same seed + same request = same output.
    pub seed: Option<u64>,
    pub stop: Vec<String>,
    pub stop_token_ids: Vec<u32>,
    pub include_stop_str_in_output: bool,
    pub ignore_eos: bool,
    pub min_tokens: usize,
    /// None: up to the end of the context.
    pub max_tokens: Option<usize>,
    /// Top logprobs to return per generated token (None: no logprobs;
    /// Some(0): only the chosen token's).
    pub logprobs: Option<usize>,
    pub skip_special_tokens: bool,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            n: 1,
            temperature: 1.0,
            top_p: 1.0,
            top_k: 0,
            min_p: 0.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            repetition_penalty: 1.0,
            logit_bias: HashMap::new(),
            seed: None,
            stop: Vec::new(),
            stop_token_ids: Vec::new(),
            include_stop_str_in_output: false,
            ignore_eos: false,
            min_tokens: 0,
            max_tokens: Some(16),
            logprobs: None,
            skip_special_tokens: true,
        }
    }
}

/// Temperatures below this sample greedily.
pub(crate) const GREEDY_EPS: f32 = 1e-5;

impl SamplingParams {
    pub fn greedy() -> Self {
        SamplingParams {
            temperature: 0.0,
            ..Default::default()
        }
    }

    pub fn is_greedy(&self) -> bool {
        self.temperature < GREEDY_EPS
    }

    /// Checks ranges and consistency; `vocab_size` bounds token ids.
    pub fn validate(&self, vocab_size: usize) -> Result<()> {
        if self.n < 1 {
            return Err(invalid(
                "n",
                format!("n must be at least 1, got {}.", self.n),
            ));
        }
        if !(-2.0..=2.0).contains(&self.presence_penalty) {
            return Err(invalid(
                "presence_penalty",
                format!(
                    "presence_penalty must be in [-2, 2], got {}.",
                    self.presence_penalty
                ),
            ));
        }
        if !(-2.0..=2.0).contains(&self.frequency_penalty) {
            return Err(invalid(
                "frequency_penalty",
                format!(
                    "frequency_penalty must be in [-2, 2], got {}.",
                    self.frequency_penalty
                ),
            ));
        }
        if self.repetition_penalty.is_nan()
            || self.repetition_penalty <= 0.0
            || self.repetition_penalty > 2.0
        {
            return Err(invalid(
                "repetition_penalty",
                format!(
                    "repetition_penalty must be in (0, 2], got {}.",
                    self.repetition_penalty
                ),
            ));
        }
        if !self.temperature.is_finite() || self.temperature < 0.0 {
            return Err(invalid(
                "temperature",
                format!(
                    "temperature must be non-negative, got {}.",
                    self.temperature
                ),
            ));
        }
        if self.top_p.is_nan() || self.top_p <= 0.0 || self.top_p > 1.0 {
            return Err(invalid(
                "top_p",
                format!("top_p must be in (0, 1], got {}.", self.top_p),
            ));
        }
        if self.top_k < -1 {
            return Err(invalid(
                "top_k",
                format!(
                    "top_k must be 0 or -1 (disable), or at least 1, got {}.",
                    self.top_k
                ),
            ));
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return Err(invalid(
                "min_p",
                format!("min_p must be in [0, 1], got {}.", self.min_p),
            ));
        }
        if let Some(m) = self.max_tokens {
            if m < 1 {
                return Err(invalid(
                    "max_tokens",
                    format!("max_tokens must be at least 1, got {m}."),
                ));
            }
            if self.min_tokens > m {
                return Err(invalid(
                    "min_tokens",
                    format!(
                        "min_tokens must be less than or equal to max_tokens={m}, got {}.",
                        self.min_tokens
                    ),
                ));
            }
        }
        if let Some(n) = self.logprobs {
            if n > MAX_LOGPROBS {
                return Err(invalid(
                    "logprobs",
                    format!("Requested sample logprobs of {n}, which is greater than max allowed: {MAX_LOGPROBS}"),
                ));
            }
        }
        if self.stop.iter().any(String::is_empty) {
            return Err(invalid("stop", "stop cannot contain an empty string."));
        }
        if let Some(t) = self
            .stop_token_ids
            .iter()
            .find(|&&t| t as usize >= vocab_size)
        {
            return Err(invalid(
                "stop_token_ids",
                format!(
                    "stop_token_ids contains token id {t}, outside the vocabulary of {vocab_size}."
                ),
            ));
        }
        for (&t, &b) in &self.logit_bias {
            if t as usize >= vocab_size {
                return Err(invalid(
                    "logit_bias",
                    format!("token_id {t} in logit_bias contains out-of-vocab token id (vocabulary size {vocab_size})."),
                ));
            }
            if !b.is_finite() {
                return Err(invalid(
                    "logit_bias",
                    format!("logit_bias for token {t} is not a finite number."),
                ));
            }
        }
        Ok(())
    }
}
