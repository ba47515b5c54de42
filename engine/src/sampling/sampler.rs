//! The per-sequence sampler: logits processors in vLLM's order, then
//! greedy or seeded random sampling, plus logprobs of the raw logits.
//!
//! Order: the logits processors (a grammar mask first when there is one,
//! then min_tokens, logit_bias, repetition, frequency and presence
//! penalties) -> greedy argmax, or temperature -> min_p -> top_k -> top_p
//! -> sample.

use super::params::SamplingParams;
use super::processors::{builtin, ConstraintStatus, LogitsProcessor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// The chosen token and, when asked for, logprobs of the raw logits.
#[derive(Clone, Debug, PartialEq)]
pub struct Sampled {
    pub token: u32,
    /// Log-probability of `token` under the model (unprocessed logits).
    pub logprob: f32,
    /// The most likely tokens and their log-probabilities, best first.
    pub top_logprobs: Vec<(u32, f32)>,
}

pub struct SequenceSampler {
    params: SamplingParams,
    rng: ChaCha8Rng,
    /// Applied in order to a copy of the raw logits before picking.
    processors: Vec<Box<dyn LogitsProcessor>>,
}

impl SequenceSampler {
    /// `index` distinguishes the `n` samples of one request: each gets its
    /// own stream from the same seed.
    pub fn new(params: &SamplingParams, prompt: &[u32], eos_ids: &[u32], index: usize) -> Self {
        let rng = match params.seed {
            Some(seed) => {
                let mut r = ChaCha8Rng::seed_from_u64(seed);
                r.set_stream(index as u64);
                r
            }
            None => ChaCha8Rng::from_os_rng(),
        };
        SequenceSampler {
            params: params.clone(),
            rng,
            processors: builtin(params, prompt, eos_ids),
        }
    }

    /// Puts `p` first in the list (where a grammar mask goes: before
    /// biases and penalties, as vLLM applies its bitmask).
    pub fn prepend_processor(&mut self, p: Box<dyn LogitsProcessor>) {
        self.processors.insert(0, p);
    }

    /// Whether a processor has work to do before the logits arrive.
    pub fn wants_prepare(&self) -> bool {
        self.processors.iter().any(|p| p.wants_prepare())
    }

    /// Does the processors' logits-free work for the next position (a
    /// grammar's mask); the runner calls it while the forward pass runs.
    pub fn prepare(&mut self) {
        for p in self.processors.iter_mut() {
            p.prepare();
        }
    }

    /// The first constraint that is complete or failed, else `Open`.
    pub fn constraint_status(&self) -> ConstraintStatus {
        self.processors
            .iter()
            .map(|p| p.status())
            .find(|s| *s != ConstraintStatus::Open)
            .unwrap_or(ConstraintStatus::Open)
    }

    /// Picks the next token from the model's raw logits for this position.
    pub fn sample(&mut self, logits: &[f32]) -> Sampled {
        let mut x = logits.to_vec();
        for p in self.processors.iter_mut() {
            p.process(&mut x);
        }
        let token = if self.params.is_greedy() {
            argmax(&x)
        } else {
            self.sample_random(&mut x)
        };
        let (logprob, top_logprobs) = match self.params.logprobs {
            Some(k) => raw_logprobs(logits, token, k),
            None => (0.0, Vec::new()),
        };
        for p in self.processors.iter_mut() {
            p.accept(token);
        }
        Sampled {
            token,
            logprob,
            top_logprobs,
        }
    }

    fn sample_random(&mut self, x: &mut [f32]) -> u32 {
        let p = &self.params;
        let inv_t = 1.0 / p.temperature;
        // Candidates sorted by logit, best first; filters cut the tail.
        let mut cand: Vec<(u32, f32)> = x
            .iter()
            .enumerate()
            .filter(|(_, v)| v.is_finite())
            .map(|(i, v)| (i as u32, v * inv_t))
            .collect();
        if cand.is_empty() {
            return argmax(x);
        }
        let k = if p.top_k > 0 {
            (p.top_k as usize).min(cand.len())
        } else {
            cand.len()
        };
        if k < cand.len() {
            cand.select_nth_unstable_by(k - 1, |a, b| b.1.total_cmp(&a.1));
            cand.truncate(k);
        }
        cand.sort_unstable_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        let max = cand[0].1;
        let mut probs: Vec<f64> = cand.iter().map(|c| ((c.1 - max) as f64).exp()).collect();
        let z: f64 = probs.iter().sum();
        probs.iter_mut().for_each(|q| *q /= z);
        // min_p: drop tokens less likely than min_p times the most likely
        // one, i.e. whose scaled logit is below max + ln(min_p). Relative to
        // the maximum, so it commutes with top-k.
        if p.min_p > 0.0 {
            let floor = max + p.min_p.ln();
            let cut = cand
                .iter()
                .position(|c| c.1 < floor)
                .unwrap_or(cand.len())
                .max(1);
            probs.truncate(cut);
            cand.truncate(cut);
        }
        if p.top_p < 1.0 {
            let total: f64 = probs.iter().sum();
            let mut cum = 0.0;
            let mut cut = probs.len();
            for (i, q) in probs.iter().enumerate() {
                if cum >= p.top_p as f64 * total {
                    cut = i;
                    break;
                }
                cum += q;
            }
            probs.truncate(cut.max(1));
            cand.truncate(cut.max(1));
        }
        let total: f64 = probs.iter().sum();
        let mut u = self.rng.random::<f64>() * total;
        for (c, q) in cand.iter().zip(&probs) {
            if u < *q {
                return c.0;
            }
            u -= q;
        }
        cand[cand.len() - 1].0
    }
}

/// First index of the maximum (ties go to the lower id, as torch.argmax).
fn argmax(x: &[f32]) -> u32 {
    let mut best = 0usize;
    for (i, v) in x.iter().enumerate() {
        if *v > x[best] {
            best = i;
        }
    }
    best as u32
}

/// Log-softmax of `logits` at `token`, and the `k` most likely tokens.
fn raw_logprobs(logits: &[f32], token: u32, k: usize) -> (f32, Vec<(u32, f32)>) {
    let max = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    let lse = max as f64
        + logits
            .iter()
            .map(|v| ((v - max) as f64).exp())
            .sum::<f64>()
            .ln();
    let lp = |v: f32| (v as f64 - lse) as f32;
    let chosen = logits
        .get(token as usize)
        .map(|&v| lp(v))
        .unwrap_or(f32::NEG_INFINITY);
    let mut top: Vec<(u32, f32)> = logits
        .iter()
        .enumerate()
        .map(|(i, &v)| (i as u32, v))
        .collect();
    let k = k.min(top.len());
    if k == 0 {
        return (chosen, Vec::new());
    }
    top.select_nth_unstable_by(k - 1, |a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    top.truncate(k);
    top.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    (chosen, top.into_iter().map(|(i, v)| (i, lp(v))).collect())
}
