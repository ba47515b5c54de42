//! Logits processors: per-sequence adjustments of a row of logits before
//! the sampler picks from it, applied in list order. The built-in ones are
//! vLLM's (min_tokens, logit_bias, repetition, frequency and presence
//! penalties); a grammar mask goes in front of them.

use super::params::SamplingParams;
use std::collections::{HashMap, HashSet};

/// Where a constraining processor (a grammar) stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConstraintStatus {
    /// More tokens may follow.
    Open,
    /// The constraint is complete: the sequence ends here.
    Complete,
    /// The constraint cannot go on; the request fails with this message.
    Failed(String),
}

/// One adjustment of the logits, with whatever state it keeps per
/// sequence (it sees every token the sequence samples).
pub trait LogitsProcessor: Send {
    /// Changes this position's logits in place.
    fn process(&mut self, logits: &mut [f32]);
    /// Called with the token sampled from the processed logits.
    fn accept(&mut self, _token: u32) {}
    /// Whether `prepare` has work to do for the next position.
    fn wants_prepare(&self) -> bool {
        false
    }
    /// Work that needs no logits (a grammar's mask), which the runner may
    /// do while the forward pass runs; `process` does it otherwise.
    fn prepare(&mut self) {}
    fn status(&self) -> ConstraintStatus {
        ConstraintStatus::Open
    }
}

/// The built-in processors a request's parameters ask for, in vLLM's
/// order; parameters left at their defaults add none.
pub fn builtin(
    params: &SamplingParams,
    prompt: &[u32],
    eos_ids: &[u32],
) -> Vec<Box<dyn LogitsProcessor>> {
    let mut out: Vec<Box<dyn LogitsProcessor>> = Vec::new();
    if params.min_tokens > 0 {
        let mut stop_ids = params.stop_token_ids.clone();
        if !params.ignore_eos {
            stop_ids.extend_from_slice(eos_ids);
        }
        out.push(Box::new(MinTokens {
            stop_ids,
            remaining: params.min_tokens,
        }));
    }
    if !params.logit_bias.is_empty() {
        out.push(Box::new(LogitBias(
            params
                .logit_bias
                .iter()
                .map(|(&id, &b)| (id, b.clamp(-100.0, 100.0)))
                .collect(),
        )));
    }
    if params.repetition_penalty != 1.0 {
        out.push(Box::new(RepetitionPenalty {
            penalty: params.repetition_penalty,
            seen: prompt.iter().copied().collect(),
        }));
    }
    if params.frequency_penalty != 0.0 || params.presence_penalty != 0.0 {
        out.push(Box::new(FrequencyPresence {
            frequency: params.frequency_penalty,
            presence: params.presence_penalty,
            counts: HashMap::new(),
        }));
    }
    out
}

/// Bans the stop tokens until `min_tokens` have been generated.
struct MinTokens {
    stop_ids: Vec<u32>,
    remaining: usize,
}

impl LogitsProcessor for MinTokens {
    fn process(&mut self, logits: &mut [f32]) {
        // A grammar that allows only a stop token wins: banning it would
        // leave nothing to sample.
        let other_allowed = || {
            logits
                .iter()
                .enumerate()
                .any(|(i, v)| v.is_finite() && !self.stop_ids.contains(&(i as u32)))
        };
        if self.remaining > 0 && other_allowed() {
            for &id in &self.stop_ids {
                if let Some(v) = logits.get_mut(id as usize) {
                    *v = f32::NEG_INFINITY;
                }
            }
        }
    }

    fn accept(&mut self, _token: u32) {
        self.remaining = self.remaining.saturating_sub(1);
    }
}

/// Adds a fixed bias (clamped to ±100, as OpenAI) to some tokens.
struct LogitBias(Vec<(u32, f32)>);

impl LogitsProcessor for LogitBias {
    fn process(&mut self, logits: &mut [f32]) {
        for &(id, bias) in &self.0 {
            if let Some(v) = logits.get_mut(id as usize) {
                *v += bias;
            }
        }
    }
}

/// Divides positive and multiplies negative logits of every token seen in
/// the prompt or the output.
struct RepetitionPenalty {
    penalty: f32,
    seen: HashSet<u32>,
}

impl LogitsProcessor for RepetitionPenalty {
    fn process(&mut self, logits: &mut [f32]) {
        for &id in &self.seen {
            if let Some(v) = logits.get_mut(id as usize) {
                *v = if *v > 0.0 {
                    *v / self.penalty
                } else {
                    *v * self.penalty
                };
            }
        }
    }

    fn accept(&mut self, token: u32) {
        self.seen.insert(token);
    }
}

/// Subtracts `frequency * count + presence` from each generated token.
struct FrequencyPresence {
    frequency: f32,
    presence: f32,
    counts: HashMap<u32, u32>,
}

impl LogitsProcessor for FrequencyPresence {
    fn process(&mut self, logits: &mut [f32]) {
        for (&id, &c) in &self.counts {
            if let Some(v) = logits.get_mut(id as usize) {
                *v -= self.frequency * c as f32 + self.presence;
            }
        }
    }

    fn accept(&mut self, token: u32) {
        *self.counts.entry(token).or_insert(0) += 1;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn params() -> SamplingParams {
        SamplingParams::default()
    }

    #[test]
    fn defaults_add_no_processor() {
        assert!(builtin(&params(), &[1, 2], &[0]).is_empty());
    }

    #[test]
    fn min_tokens_bans_stop_tokens_until_enough_are_out() {
        let p = SamplingParams {
            min_tokens: 1,
            stop_token_ids: vec![3],
            ..params()
        };
        let mut procs = builtin(&p, &[], &[0]);
        let mut x = vec![1.0; 4];
        procs[0].process(&mut x);
        assert_eq!(x, [f32::NEG_INFINITY, 1.0, 1.0, f32::NEG_INFINITY]);
        procs[0].accept(1);
        let mut x = vec![1.0; 4];
        procs[0].process(&mut x);
        assert_eq!(x, [1.0; 4]);
    }

    #[test]
    fn min_tokens_yields_to_a_mask_that_allows_only_a_stop_token() {
        let p = SamplingParams {
            min_tokens: 3,
            ..params()
        };
        let mut procs = builtin(&p, &[], &[0]);
        let mut x = vec![2.0, f32::NEG_INFINITY, f32::NEG_INFINITY];
        procs[0].process(&mut x);
        assert_eq!(x[0], 2.0);
    }

    #[test]
    fn processors_run_in_vllm_order_and_track_output() {
        let p = SamplingParams {
            logit_bias: [(1u32, 500.0f32)].into_iter().collect(),
            repetition_penalty: 2.0,
            frequency_penalty: 1.0,
            ..params()
        };
        let mut procs = builtin(&p, &[2], &[0]);
        assert_eq!(procs.len(), 3);
        let mut x = vec![0.0, 0.0, 4.0, -4.0];
        for q in procs.iter_mut() {
            q.process(&mut x);
        }
        // Bias clamped to 100; token 2 (in the prompt) halved.
        assert_eq!(x, [0.0, 100.0, 2.0, -4.0]);
        for q in procs.iter_mut() {
            q.accept(3);
        }
        let mut x = vec![0.0, 0.0, 4.0, -4.0];
        for q in procs.iter_mut() {
            q.process(&mut x);
        }
        // Token 3 was generated: penalised by repetition, then frequency.
        assert_eq!(x, [0.0, 100.0, 2.0, -9.0]);
    }
}
