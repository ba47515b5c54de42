//! Latency and size distributions of requests, with vLLM's metric names
//! and buckets, for the API layer's `/metrics`.

use super::request::RequestTimes;
use std::time::{Duration, Instant};

/// `time_to_first_token_seconds` buckets.
const TTFT_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
];
/// `inter_token_latency_seconds` and per-output-token buckets.
const ITL_BUCKETS: &[f64] = &[
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
    40.0, 80.0,
];
/// Request-phase latency buckets (e2e, queue, inference, prefill, decode).
const LATENCY_BUCKETS: &[f64] = &[
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0,
    480.0, 960.0, 1920.0, 7680.0,
];
/// `iteration_tokens_total` buckets.
const ITERATION_BUCKETS: &[f64] = &[
    1.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0, 8192.0, 16384.0,
];
/// `request_params_n` buckets.
const N_BUCKETS: &[f64] = &[1.0, 2.0, 5.0, 10.0, 20.0];

/// A fixed-bucket histogram.
#[derive(Clone, Debug, PartialEq)]
pub struct Histogram {
    /// Upper bounds (the +Inf bucket is implied).
    pub bounds: Vec<f64>,
    /// Observations per bucket (not cumulative), `bounds.len() + 1` of them.
    pub counts: Vec<u64>,
    pub sum: f64,
}

impl Histogram {
    pub fn new(bounds: &[f64]) -> Self {
        Histogram {
            bounds: bounds.to_vec(),
            counts: vec![0; bounds.len() + 1],
            sum: 0.0,
        }
    }

    pub fn observe(&mut self, v: f64) {
        let i = self.bounds.partition_point(|&b| b < v);
        self.counts[i] += 1;
        self.sum += v;
    }

    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Takes `other`'s values into this histogram's buffers (the engine
    /// publishes after every step; no allocation there).
    fn copy_from(&mut self, other: &Histogram) {
        self.bounds.clone_from(&other.bounds);
        self.counts.clone_from(&other.counts);
        self.sum = other.sum;
    }
}

/// 1, 2, 5, 10, 20, 50, ... up to `max` (vLLM's `build_1_2_5_buckets`).
fn buckets_1_2_5(max: usize) -> Vec<f64> {
    let mut out = Vec::new();
    let mut exponent = 1usize;
    loop {
        for m in [1, 2, 5] {
            let v = m * exponent;
            if v > max {
                return out;
            }
            out.push(v as f64);
        }
        exponent *= 10;
    }
}

/// Every request-level histogram of one engine.
#[derive(Clone, Debug, PartialEq)]
pub struct EngineHistograms {
    pub time_to_first_token_seconds: Histogram,
    pub inter_token_latency_seconds: Histogram,
    pub request_time_per_output_token_seconds: Histogram,
    pub e2e_request_latency_seconds: Histogram,
    pub request_queue_time_seconds: Histogram,
    pub request_inference_time_seconds: Histogram,
    pub request_prefill_time_seconds: Histogram,
    pub request_decode_time_seconds: Histogram,
    pub request_prompt_tokens: Histogram,
    pub request_generation_tokens: Histogram,
    pub request_params_n: Histogram,
    pub request_params_max_tokens: Histogram,
    pub iteration_tokens_total: Histogram,
}

impl EngineHistograms {
    pub fn new(max_model_len: usize) -> Self {
        let tokens = buckets_1_2_5(max_model_len);
        EngineHistograms {
            time_to_first_token_seconds: Histogram::new(TTFT_BUCKETS),
            inter_token_latency_seconds: Histogram::new(ITL_BUCKETS),
            request_time_per_output_token_seconds: Histogram::new(ITL_BUCKETS),
            e2e_request_latency_seconds: Histogram::new(LATENCY_BUCKETS),
            request_queue_time_seconds: Histogram::new(LATENCY_BUCKETS),
            request_inference_time_seconds: Histogram::new(LATENCY_BUCKETS),
            request_prefill_time_seconds: Histogram::new(LATENCY_BUCKETS),
            request_decode_time_seconds: Histogram::new(LATENCY_BUCKETS),
            request_prompt_tokens: Histogram::new(&tokens),
            request_generation_tokens: Histogram::new(&tokens),
            request_params_n: Histogram::new(N_BUCKETS),
            request_params_max_tokens: Histogram::new(&tokens),
            iteration_tokens_total: Histogram::new(ITERATION_BUCKETS),
        }
    }

    /// Each histogram with its metric name (vLLM's, without a prefix)
    /// and vLLM's help text.
    pub fn named(&self) -> [(&'static str, &'static str, &Histogram); 13] {
        [
            (
                "time_to_first_token_seconds",
                "Histogram of time to first token in seconds.",
                &self.time_to_first_token_seconds,
            ),
            (
                "inter_token_latency_seconds",
                "Histogram of inter-token latency in seconds.",
                &self.inter_token_latency_seconds,
            ),
            (
                "request_time_per_output_token_seconds",
                "Histogram of time_per_output_token_seconds per request.",
                &self.request_time_per_output_token_seconds,
            ),
            (
                "e2e_request_latency_seconds",
                "Histogram of e2e request latency in seconds.",
                &self.e2e_request_latency_seconds,
            ),
            (
                "request_queue_time_seconds",
                "Histogram of time spent in WAITING phase for request.",
                &self.request_queue_time_seconds,
            ),
            (
                "request_inference_time_seconds",
                "Histogram of time spent in RUNNING phase for request.",
                &self.request_inference_time_seconds,
            ),
            (
                "request_prefill_time_seconds",
                "Histogram of time spent in PREFILL phase for request.",
                &self.request_prefill_time_seconds,
            ),
            (
                "request_decode_time_seconds",
                "Histogram of time spent in DECODE phase for request.",
                &self.request_decode_time_seconds,
            ),
            (
                "request_prompt_tokens",
                "Number of prefill tokens processed.",
                &self.request_prompt_tokens,
            ),
            (
                "request_generation_tokens",
                "Number of generation tokens processed.",
                &self.request_generation_tokens,
            ),
            (
                "request_params_n",
                "Histogram of the n request parameter.",
                &self.request_params_n,
            ),
            (
                "request_params_max_tokens",
                "Histogram of the max_tokens request parameter.",
                &self.request_params_max_tokens,
            ),
            (
                "iteration_tokens_total",
                "Histogram of number of tokens per engine_step.",
                &self.iteration_tokens_total,
            ),
        ]
    }

    /// Takes `other`'s values without allocating.
    pub(crate) fn copy_from(&mut self, other: &EngineHistograms) {
        let mine = [
            &mut self.time_to_first_token_seconds,
            &mut self.inter_token_latency_seconds,
            &mut self.request_time_per_output_token_seconds,
            &mut self.e2e_request_latency_seconds,
            &mut self.request_queue_time_seconds,
            &mut self.request_inference_time_seconds,
            &mut self.request_prefill_time_seconds,
            &mut self.request_decode_time_seconds,
            &mut self.request_prompt_tokens,
            &mut self.request_generation_tokens,
            &mut self.request_params_n,
            &mut self.request_params_max_tokens,
            &mut self.iteration_tokens_total,
        ];
        for (h, (_, _, o)) in mine.into_iter().zip(other.named()) {
            h.copy_from(o);
        }
    }

    /// A finished request's phases (vLLM's definitions: queue = arrival to
    /// first scheduled, prefill = scheduled to first token, decode = first
    /// to last token, inference = scheduled to last token).
    pub(crate) fn observe_finished(
        &mut self,
        times: &RequestTimes,
        last_token: Option<Instant>,
        prompt_tokens: usize,
        generation_tokens: usize,
        n: usize,
        max_tokens: Option<usize>,
    ) {
        let secs = |d: Option<Duration>| d.map(|d| d.as_secs_f64());
        if let Some(v) = secs(times.e2e()) {
            self.e2e_request_latency_seconds.observe(v);
        }
        if let Some(v) = secs(times.queue_time()) {
            self.request_queue_time_seconds.observe(v);
        }
        if let (Some(s), Some(f), Some(l)) = (times.scheduled, times.first_token, last_token) {
            self.request_prefill_time_seconds
                .observe(f.saturating_duration_since(s).as_secs_f64());
            self.request_decode_time_seconds
                .observe(l.saturating_duration_since(f).as_secs_f64());
            self.request_inference_time_seconds
                .observe(l.saturating_duration_since(s).as_secs_f64());
            let per_sample = generation_tokens / n.max(1);
            if per_sample > 1 {
                self.request_time_per_output_token_seconds.observe(
                    l.saturating_duration_since(f).as_secs_f64() / (per_sample - 1) as f64,
                );
            }
        }
        self.request_prompt_tokens.observe(prompt_tokens as f64);
        self.request_generation_tokens
            .observe(generation_tokens as f64);
        self.request_params_n.observe(n as f64);
        if let Some(m) = max_tokens {
            self.request_params_max_tokens.observe(m as f64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_follow_vllm() {
        assert_eq!(
            buckets_1_2_5(100),
            vec![1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0]
        );
        let mut h = Histogram::new(&[1.0, 2.0]);
        for v in [0.5, 1.0, 1.5, 3.0] {
            h.observe(v);
        }
        // Prometheus buckets are `le` (inclusive upper bounds).
        assert_eq!(h.counts, vec![2, 1, 1]);
        assert_eq!(h.count(), 4);
        assert_eq!(h.sum, 6.0);
    }
}
