//! Engine counters for the API layer's metrics (vLLM's names in comments).

use std::time::Duration;

/// A snapshot of the engine, refreshed after every step.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct EngineStats {
    /// `num_requests_running` (sequences).
    pub running: usize,
    /// `num_requests_waiting` (sequences).
    pub waiting: usize,
    pub kv_blocks_used: usize,
    pub kv_blocks_total: usize,
    /// `prefix_cache_queries` (tokens).
    pub prefix_cache_queries: u64,
    /// `prefix_cache_hits` (tokens).
    pub prefix_cache_hits: u64,
    /// `num_preemptions`.
    pub preemptions: u64,
    /// `prompt_tokens` computed (cache hits excluded, recomputation after
    /// preemption included).
    pub prompt_tokens: u64,
    /// `generation_tokens`.
    pub generation_tokens: u64,
    /// Forward steps run.
    pub steps: u64,
    /// Requests finished, by how.
    pub finished_stop: u64,
    pub finished_length: u64,
    pub finished_abort: u64,
    pub finished_error: u64,
    /// Time spent in forward passes and sampling.
    pub busy: Duration,
}

impl EngineStats {
    /// `kv_cache_usage_perc` in [0, 1].
    pub fn kv_cache_usage(&self) -> f64 {
        if self.kv_blocks_total == 0 {
            0.0
        } else {
            self.kv_blocks_used as f64 / self.kv_blocks_total as f64
        }
    }
}
