//! The engine's settings (Ray Serve LLM's `engine_kwargs`, named as vLLM
//! names them) and how the KV cache is sized from a memory budget.

use super::scheduler::SchedulingPolicy;
use crate::error::{EngineError, Result};
use llm_serve_kernels::lora::MAX_RANK;
use llm_serve_models::{KvCache, LoraDtype, LoraOptions, Model};

/// Settings of one engine. Deserializes from Ray Serve LLM's
/// `engine_kwargs` (unknown keys are errors, absent ones take defaults).
#[derive(Clone, Debug, serde::Deserialize, serde::Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct EngineConfig {
    /// Tokens per KV block.
    pub block_size: usize,
    /// Bytes for the KV cache; when unset, `kv_cache_memory_fraction` of
    /// the memory available at start-up.
    pub kv_cache_memory_bytes: Option<usize>,
    pub kv_cache_memory_fraction: f64,
    pub max_num_seqs: usize,
    /// Token budget of one step.
    pub max_num_batched_tokens: usize,
    /// Context length; `None` takes the model's.
    pub max_model_len: Option<usize>,
    pub enable_chunked_prefill: bool,
    pub enable_prefix_caching: bool,
    pub scheduling_policy: SchedulingPolicy,
    /// The tool-call format `tool_choice: "auto"` parses; `None` reads it
    /// off the chat template.
    pub tool_call_parser: Option<crate::ToolCallFormat>,
    /// vLLM's `enable_lora`: serve LoRA adapters even without a
    /// `lora_config` (adapters then come from `lora_modules` and the load
    /// endpoint only).
    pub enable_lora: bool,
    /// The largest adapter rank accepted (vLLM's `max_lora_rank`).
    pub max_lora_rank: usize,
    /// vLLM's `max_loras` and `max_cpu_loras`: adapters kept loaded, when no
    /// `lora_config` says (its `max_num_adapters_per_replica` must equal
    /// them when both are given, as Ray Serve LLM asks). Every loaded
    /// adapter may run in the same step.
    pub max_loras: Option<usize>,
    pub max_cpu_loras: Option<usize>,
    /// How adapter weights are kept: `auto` (f32 files as f32, f16 and
    /// bf16 files as f16), `float16` or `float32`.
    pub lora_dtype: String,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            block_size: 16,
            kv_cache_memory_bytes: None,
            kv_cache_memory_fraction: 0.25,
            max_num_seqs: 256,
            max_num_batched_tokens: 512,
            max_model_len: None,
            enable_chunked_prefill: true,
            enable_prefix_caching: true,
            scheduling_policy: SchedulingPolicy::Fcfs,
            tool_call_parser: None,
            enable_lora: false,
            max_lora_rank: 16,
            max_loras: None,
            max_cpu_loras: None,
            lora_dtype: "auto".into(),
        }
    }
}

fn bad(param: &'static str, message: String) -> EngineError {
    EngineError::InvalidParam { param, message }
}

impl EngineConfig {
    /// Settings for exactly `num_seqs` sequences of up to `context` tokens
    /// each on `model` (the CLI's `generate` and `bench`): a context and a
    /// KV cache of just that size, and no prefix caching (nothing is
    /// shared, and a benchmark must recompute every repetition).
    pub fn for_sequences(model: &Model, num_seqs: usize, context: usize) -> Self {
        let defaults = EngineConfig::default();
        let context = context.clamp(1, model.max_model_len());
        let blocks = num_seqs.max(1) * context.div_ceil(defaults.block_size);
        let bytes_per_block = KvCache::bytes_per_block(
            model.config(),
            defaults.block_size,
            model.default_cache_dtype(),
        );
        EngineConfig {
            kv_cache_memory_bytes: Some(blocks * bytes_per_block),
            max_model_len: Some(context),
            max_num_seqs: num_seqs.max(1),
            enable_prefix_caching: false,
            ..defaults
        }
    }

    /// Reads `engine_kwargs` (a JSON object); errors name the key.
    pub fn from_kwargs(kwargs: &serde_json::Value) -> Result<Self> {
        serde_json::from_value(kwargs.clone())
            .map_err(|e| bad("engine_kwargs", format!("engine_kwargs: {e}")))
    }

    /// Checks the settings against the model's context length (the one in
    /// use, after `max_model_len`).
    pub fn validate(&self, max_model_len: usize) -> Result<()> {
        if !(1..=256).contains(&self.block_size) {
            return Err(bad(
                "block_size",
                format!("block_size must be in 1..=256, got {}", self.block_size),
            ));
        }
        if self.max_num_seqs == 0 {
            return Err(bad(
                "max_num_seqs",
                "max_num_seqs must be at least 1".into(),
            ));
        }
        if self.max_num_batched_tokens == 0 {
            return Err(bad(
                "max_num_batched_tokens",
                "max_num_batched_tokens must be at least 1".into(),
            ));
        }
        if !self.enable_chunked_prefill && self.max_num_batched_tokens < max_model_len {
            return Err(bad(
                "max_num_batched_tokens",
                format!(
                    "max_num_batched_tokens ({}) is smaller than max_model_len ({max_model_len}): without chunked prefill the longest prompt could never be scheduled. Raise max_num_batched_tokens, lower max_model_len, or enable chunked prefill.",
                    self.max_num_batched_tokens
                ),
            ));
        }
        self.validate_lora()?;
        if !(self.kv_cache_memory_fraction > 0.0 && self.kv_cache_memory_fraction <= 1.0) {
            return Err(bad(
                "kv_cache_memory_fraction",
                format!(
                    "kv_cache_memory_fraction must be in (0, 1], got {}",
                    self.kv_cache_memory_fraction
                ),
            ));
        }
        Ok(())
    }

    /// Checks the LoRA settings (also when a deploy config is checked).
    pub fn validate_lora(&self) -> Result<()> {
        if !(1..=MAX_RANK).contains(&self.max_lora_rank) {
            return Err(bad(
                "max_lora_rank",
                format!(
                    "max_lora_rank must be in 1..={MAX_RANK}, got {}",
                    self.max_lora_rank
                ),
            ));
        }
        for (param, v) in [
            ("max_loras", self.max_loras),
            ("max_cpu_loras", self.max_cpu_loras),
        ] {
            if v == Some(0) {
                return Err(bad(param, format!("{param} must be at least 1")));
            }
        }
        self.lora_options().map(drop)
    }

    /// The limits adapters are loaded with.
    pub fn lora_options(&self) -> Result<LoraOptions> {
        Ok(LoraOptions {
            max_rank: self.max_lora_rank,
            dtype: self
                .lora_dtype
                .parse::<LoraDtype>()
                .map_err(|e| bad("lora_dtype", e))?,
        })
    }

    /// How many adapters `max_loras` / `max_cpu_loras` keep loaded.
    pub fn max_loaded_adapters(&self) -> Option<usize> {
        match (self.max_loras, self.max_cpu_loras) {
            (None, None) => None,
            (a, b) => Some(a.unwrap_or(0).max(b.unwrap_or(0))),
        }
    }

    /// Number of KV blocks for blocks of `bytes_per_block`, given the
    /// memory available now (`available_bytes`, when known).
    pub fn num_blocks(
        &self,
        bytes_per_block: usize,
        available_bytes: Option<u64>,
    ) -> Result<usize> {
        let budget = match (self.kv_cache_memory_bytes, available_bytes) {
            (Some(b), _) => b as f64,
            (None, Some(avail)) => avail as f64 * self.kv_cache_memory_fraction,
            (None, None) => {
                return Err(bad(
                    "kv_cache_memory_bytes",
                    "the available memory could not be read; set kv_cache_memory_bytes".into(),
                ))
            }
        };
        let blocks = (budget / bytes_per_block as f64).floor() as usize;
        if blocks == 0 {
            return Err(bad(
                "kv_cache_memory_bytes",
                format!(
                    "a KV cache of {budget:.0} bytes holds no block (one block of {} tokens takes {bytes_per_block} bytes)",
                    self.block_size
                ),
            ));
        }
        Ok(blocks)
    }
}

/// The replica's share of the node's memory in bytes, set by the
/// controller from `ray_actor_options.memory`.
pub const MEMORY_LIMIT_ENV: &str = "LLM_SERVE_MEMORY_LIMIT_BYTES";

/// Memory the KV cache is sized from: what the OS reports available,
/// capped by the replica's share when the controller gave it one.
pub fn available_memory_bytes() -> Option<u64> {
    let limit = std::env::var(MEMORY_LIMIT_ENV)
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|&l| l > 0);
    match (os_available_memory_bytes(), limit) {
        (Some(a), Some(l)) => Some(a.min(l)),
        (a, None) => a,
        (None, l) => l,
    }
}

/// Memory the OS reports available (`MemAvailable`), where it can be read.
pub fn os_available_memory_bytes() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}
